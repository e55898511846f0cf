/// An exact amount of money in nano-units of one currency (10⁻⁹ dollars), never a `Double`.
///
/// Prices per character are fractions of a cent, so micro-units are not fine enough; an `Int64`
/// of nano-units still holds nine billion dollars.
public struct Money: Sendable, Hashable, Codable, Comparable, CustomStringConvertible, AdditiveArithmetic {
    public var nanos: Int64

    public init(nanos: Int64) { self.nanos = nanos }

    public static let zero = Money(nanos: 0)

    /// Whole dollars.
    public static func dollars(_ value: Int) -> Money { Money(nanos: Int64(value) * 1_000_000_000) }
    /// Whole cents.
    public static func cents(_ value: Int) -> Money { Money(nanos: Int64(value) * 10_000_000) }
    /// Micro-dollars (10⁻⁶).
    public static func micros(_ value: Int64) -> Money { Money(nanos: value * 1000) }

    /// Parses a decimal amount such as `"0.015"`, `"$12"` or `"300.5"`, exactly, to at most nine decimals.
    public init?(parsing text: String) {
        var value = Substring(text.trimmingWhitespace())
        if value.hasPrefix("$") { value = value.dropFirst() }
        var negative = false
        if value.hasPrefix("-") {
            negative = true
            value = value.dropFirst()
        }
        let parts = value.split(separator: ".", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), !parts[0].isEmpty || parts.count == 2,
            parts.allSatisfy({ $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) })
        else { return nil }
        guard let whole = parts[0].isEmpty ? 0 : Int64(parts[0]), whole < 9_000_000_000 else { return nil }
        var fraction: Int64 = 0
        if parts.count == 2 {
            let digits = parts[1]
            guard digits.count <= 9 else { return nil }
            fraction = Int64(digits.isEmpty ? "0" : String(digits))! * Self.pow10(9 - digits.count)
        }
        let total = whole * 1_000_000_000 + fraction
        nanos = negative ? -total : total
    }

    private static func pow10(_ n: Int) -> Int64 { (0..<n).reduce(1) { acc, _ in acc * 10 } }

    public static func + (lhs: Money, rhs: Money) -> Money { Money(nanos: lhs.nanos + rhs.nanos) }
    public static func - (lhs: Money, rhs: Money) -> Money { Money(nanos: lhs.nanos - rhs.nanos) }
    public static func * (lhs: Money, rhs: Int64) -> Money { Money(nanos: lhs.nanos * rhs) }
    public static func < (lhs: Money, rhs: Money) -> Bool { lhs.nanos < rhs.nanos }

    /// Multiplies by a quantity given in thousandths (for example milliseconds of media), rounding up
    /// to the next nano-unit so that an estimate never undercounts.
    public func times(thousandths quantity: Int64) -> Money {
        let whole = (nanos / 1000) * quantity
        let (q, r) = ((nanos % 1000) * quantity).quotientAndRemainder(dividingBy: 1000)
        return Money(nanos: whole + q + (r > 0 ? 1 : 0))
    }

    /// `part / whole` as a fraction for display and thresholds.
    public func ratio(to whole: Money) -> Double {
        whole.nanos == 0 ? 0 : Double(nanos) / Double(whole.nanos)
    }

    /// `$12.345678`: six decimals, or two for whole cents.
    public var description: String {
        let sign = nanos < 0 ? "-" : ""
        let value = nanos.magnitude
        let whole = value / 1_000_000_000
        let fraction = value % 1_000_000_000
        if fraction % 10_000_000 == 0 {
            return "\(sign)$\(whole).\(Self.pad(fraction / 10_000_000, 2))"
        }
        let micros = (fraction + 500) / 1000
        return "\(sign)$\(whole).\(Self.pad(micros, 6))"
    }

    /// `12.345678` (no sign symbol), for CSV and JSON outputs.
    public var decimalString: String {
        let sign = nanos < 0 ? "-" : ""
        let value = nanos.magnitude
        var fraction = Self.pad(value % 1_000_000_000, 9)
        while fraction.count > 2, fraction.hasSuffix("0") { fraction.removeLast() }
        return "\(sign)\(value / 1_000_000_000).\(fraction)"
    }

    private static func pad(_ value: UInt64, _ width: Int) -> String {
        let text = String(value)
        return String(repeating: "0", count: max(0, width - text.count)) + text
    }
}
