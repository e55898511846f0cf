/// An exact amount of money in nano-units of one currency (10⁻⁹ dollars), never a `Double`.
///
/// Prices per character are fractions of a cent, so micro-units are not fine enough; an `Int64`
/// of nano-units still holds nine billion dollars.
public struct Money: Sendable, Hashable, Codable, Comparable, CustomStringConvertible, AdditiveArithmetic {
    public var nanos: Int64

    public init(nanos: Int64) { self.nanos = nanos }

    public static let zero = Money(nanos: 0)

    /// Whole dollars.
    public static func dollars(_ value: Int) -> Money { Money(nanos: 1_000_000_000) * Int64(value) }
    /// Whole cents.
    public static func cents(_ value: Int) -> Money { Money(nanos: 10_000_000) * Int64(value) }
    /// Micro-dollars (10⁻⁶).
    public static func micros(_ value: Int64) -> Money { Money(nanos: 1000) * value }

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

    // Arithmetic saturates at the bounds of `Int64` nano-units (about ±9.2 billion dollars) instead of trapping:
    // prices and quantities come from configuration files, campaigns and provider answers, and a sum beyond any
    // budget must be refused by the budget, not crash the process.

    public static func + (lhs: Money, rhs: Money) -> Money {
        let (sum, overflow) = lhs.nanos.addingReportingOverflow(rhs.nanos)
        return overflow ? saturated(positive: rhs.nanos > 0) : Money(nanos: sum)
    }

    public static func - (lhs: Money, rhs: Money) -> Money {
        let (difference, overflow) = lhs.nanos.subtractingReportingOverflow(rhs.nanos)
        return overflow ? saturated(positive: rhs.nanos < 0) : Money(nanos: difference)
    }

    public static func * (lhs: Money, rhs: Int64) -> Money {
        let (product, overflow) = lhs.nanos.multipliedReportingOverflow(by: rhs)
        return overflow ? saturated(positive: (lhs.nanos < 0) == (rhs < 0)) : Money(nanos: product)
    }

    public static func < (lhs: Money, rhs: Money) -> Bool { lhs.nanos < rhs.nanos }

    private static func saturated(positive: Bool) -> Money { Money(nanos: positive ? .max : .min) }

    /// Multiplies by a quantity given in thousandths (for example milliseconds of media), rounding up
    /// to the next nano-unit so that an estimate never undercounts. Saturates like the operators.
    public func times(thousandths quantity: Int64) -> Money {
        let whole = Money(nanos: nanos / 1000) * quantity
        let (part, overflow) = (nanos % 1000).multipliedReportingOverflow(by: quantity)
        if overflow { return Self.saturated(positive: (nanos < 0) == (quantity < 0)) }
        let (q, r) = part.quotientAndRemainder(dividingBy: 1000)
        return whole + Money(nanos: q + (r > 0 ? 1 : 0))
    }

    /// `self × numerator ÷ denominator`, rounded toward zero, without an intermediate overflow; saturates when
    /// the result does not fit. `denominator` must be positive.
    public func scaled(by numerator: Int64, over denominator: Int64) -> Money {
        precondition(denominator > 0)
        // Past about nine billion dollars (checked in floating point, with a margin) the result saturates;
        // below it the exact 128-bit product divides without a trap.
        let estimate = Double(nanos) * Double(numerator) / Double(denominator)
        guard abs(estimate) < 9.0e18 else { return Self.saturated(positive: estimate > 0) }
        return Money(nanos: denominator.dividingFullWidth(nanos.multipliedFullWidth(by: numerator)).quotient)
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
