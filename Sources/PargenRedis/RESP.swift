/// A RESP3 value (Redis serialization protocol 3, which also covers every RESP2 reply).
public enum RESPValue: Sendable, Hashable {
    case simpleString(String)
    case simpleError(String)
    case integer(Int64)
    /// `nil`: RESP2's null bulk string (`$-1`).
    case bulkString([UInt8]?)
    /// `nil`: RESP2's null array (`*-1`).
    case array([RESPValue]?)
    case null
    case boolean(Bool)
    case double(Double)
    case bigNumber(String)
    case bulkError(String)
    /// A verbatim string and its three-letter format (`txt`, `mkd`).
    case verbatimString(format: String, text: String)
    case map([(RESPValue, RESPValue)])
    case set([RESPValue])
    case push([RESPValue])

    public static func == (lhs: RESPValue, rhs: RESPValue) -> Bool {
        switch (lhs, rhs) {
        case (.simpleString(let a), .simpleString(let b)), (.simpleError(let a), .simpleError(let b)),
            (.bigNumber(let a), .bigNumber(let b)), (.bulkError(let a), .bulkError(let b)):
            return a == b
        case (.integer(let a), .integer(let b)): return a == b
        case (.bulkString(let a), .bulkString(let b)): return a == b
        case (.array(let a), .array(let b)): return a == b
        case (.null, .null): return true
        case (.boolean(let a), .boolean(let b)): return a == b
        case (.double(let a), .double(let b)): return a == b || (a.isNaN && b.isNaN)
        case (.verbatimString(let f, let t), .verbatimString(let g, let u)): return f == g && t == u
        case (.map(let a), .map(let b)): return a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        case (.set(let a), .set(let b)), (.push(let a), .push(let b)): return a == b
        default: return false
        }
    }

    public func hash(into hasher: inout Hasher) {
        switch self {
        case .simpleString(let s), .simpleError(let s), .bigNumber(let s), .bulkError(let s): hasher.combine(s)
        case .integer(let i): hasher.combine(i)
        case .bulkString(let b): hasher.combine(b)
        case .array(let a): hasher.combine(a)
        case .null: hasher.combine(0)
        case .boolean(let b): hasher.combine(b)
        case .double(let d): hasher.combine(d.isNaN ? 0 : d)
        case .verbatimString(let f, let t): hasher.combine(f); hasher.combine(t)
        case .map(let m): hasher.combine(m.count)
        case .set(let s), .push(let s): hasher.combine(s)
        }
    }

    /// The value as text, for replies that carry one (simple, bulk and verbatim strings).
    public var string: String? {
        switch self {
        case .simpleString(let s): s
        case .bulkString(let bytes?): String(decoding: bytes, as: UTF8.self)
        case .verbatimString(_, let text): text
        default: nil
        }
    }

    /// The error's text, for an error reply.
    public var error: String? {
        switch self {
        case .simpleError(let s), .bulkError(let s): s
        default: nil
        }
    }
}

/// What is wrong with bytes that claim to be RESP.
public struct RESPError: Error, Sendable, Hashable, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// Writes commands and reads replies in RESP.
public enum RESP {
    /// The longest bulk string, and the most elements of an aggregate, a reply may announce (Redis's own
    /// `proto-max-bulk-len` is 512 MB): a larger length is an error, never an allocation.
    public static let maxLength = 512 << 20
    /// How deep aggregates may nest.
    public static let maxDepth = 64

    /// A command as clients send it: an array of bulk strings.
    public static func command(_ arguments: [String]) -> [UInt8] {
        command(arguments.map { Array($0.utf8) })
    }

    public static func command(_ arguments: [[UInt8]]) -> [UInt8] {
        var out = Array("*\(arguments.count)\r\n".utf8)
        for argument in arguments {
            out += Array("$\(argument.count)\r\n".utf8)
            out += argument
            out += [0x0D, 0x0A]
        }
        return out
    }

    /// Reads one value from the start of `bytes`: the value and how many bytes it took, or `nil` when the
    /// bytes end before the value does (read more, then try again).
    ///
    /// - Throws: ``RESPError`` for bytes that are not RESP (an unknown type, a bad length or number, a length
    ///   over ``maxLength``, nesting deeper than ``maxDepth``).
    public static func parse(_ bytes: [UInt8], from start: Int = 0) throws(RESPError) -> (RESPValue, Int)? {
        var reader = Reader(bytes: bytes, index: start)
        guard let value = try reader.value(depth: 0) else { return nil }
        return (value, reader.index - start)
    }

    struct Reader {
        let bytes: [UInt8]
        var index: Int

        /// The line from `index` to its CRLF (exclusive), moving past the CRLF; `nil` without a CRLF yet.
        mutating func line() throws(RESPError) -> [UInt8]? {
            var cursor = index
            while cursor < bytes.count {
                if bytes[cursor] == 0x0A { throw RESPError("a LF without its CR") }
                if bytes[cursor] == 0x0D {
                    guard cursor + 1 < bytes.count else { return nil }
                    guard bytes[cursor + 1] == 0x0A else { throw RESPError("a CR not followed by LF") }
                    let text = Array(bytes[index..<cursor])
                    index = cursor + 2
                    return text
                }
                cursor += 1
            }
            return nil
        }

        func integer(_ text: [UInt8]) throws(RESPError) -> Int64 {
            guard !text.isEmpty, text.count <= 20, let value = Int64(String(decoding: text, as: UTF8.self)) else {
                throw RESPError("not an integer: \(String(decoding: text.prefix(40), as: UTF8.self))")
            }
            return value
        }

        func length(_ text: [UInt8]) throws(RESPError) -> Int? {
            let value = try integer(text)
            if value == -1 { return nil }
            guard value >= 0, value <= Int64(RESP.maxLength) else { throw RESPError("a length out of range: \(value)") }
            return Int(value)
        }

        /// `count` bytes and their CRLF; `nil` when they have not all arrived.
        mutating func blob(_ count: Int) throws(RESPError) -> [UInt8]? {
            guard bytes.count - index >= count + 2 else { return nil }
            guard bytes[index + count] == 0x0D, bytes[index + count + 1] == 0x0A else {
                throw RESPError("a bulk value longer than its length")
            }
            let value = Array(bytes[index..<(index + count)])
            index += count + 2
            return value
        }

        mutating func elements(_ count: Int, depth: Int) throws(RESPError) -> [RESPValue]? {
            var values: [RESPValue] = []
            values.reserveCapacity(min(count, 1024))
            for _ in 0..<count {
                guard let value = try value(depth: depth + 1) else { return nil }
                values.append(value)
            }
            return values
        }

        mutating func value(depth: Int) throws(RESPError) -> RESPValue? {
            guard depth <= RESP.maxDepth else { throw RESPError("aggregates nested deeper than \(RESP.maxDepth)") }
            guard index < bytes.count else { return nil }
            let type = bytes[index]
            let saved = index
            index += 1
            guard let text = try line() else {
                index = saved
                return nil
            }
            let result: RESPValue?
            switch type {
            case UInt8(ascii: "+"): result = .simpleString(String(decoding: text, as: UTF8.self))
            case UInt8(ascii: "-"): result = .simpleError(String(decoding: text, as: UTF8.self))
            case UInt8(ascii: ":"): result = .integer(try integer(text))
            case UInt8(ascii: "$"):
                if let count = try length(text) {
                    result = try blob(count).map { .bulkString($0) }
                } else {
                    result = .bulkString(nil)
                }
            case UInt8(ascii: "*"):
                if let count = try length(text) {
                    result = try elements(count, depth: depth).map { .array($0) }
                } else {
                    result = .array(nil)
                }
            case UInt8(ascii: "_"):
                guard text.isEmpty else { throw RESPError("a null with a value") }
                result = .null
            case UInt8(ascii: "#"):
                guard text == [UInt8(ascii: "t")] || text == [UInt8(ascii: "f")] else { throw RESPError("a boolean not t or f") }
                result = .boolean(text == [UInt8(ascii: "t")])
            case UInt8(ascii: ","):
                let literal = String(decoding: text, as: UTF8.self)
                let value: Double? =
                    switch literal {
                    case "inf": .infinity
                    case "-inf": -.infinity
                    case "nan": .nan
                    default: Double(literal)
                    }
                guard let value else { throw RESPError("not a double: \(literal.prefix(40))") }
                result = .double(value)
            case UInt8(ascii: "("):
                guard !text.isEmpty, text.enumerated().allSatisfy({ $0.element >= 0x30 && $0.element <= 0x39 || ($0.offset == 0 && $0.element == 0x2D) }) else {
                    throw RESPError("not a big number")
                }
                result = .bigNumber(String(decoding: text, as: UTF8.self))
            case UInt8(ascii: "!"):
                guard let count = try length(text) else { throw RESPError("a bulk error without a length") }
                result = try blob(count).map { .bulkError(String(decoding: $0, as: UTF8.self)) }
            case UInt8(ascii: "="):
                guard let count = try length(text) else { throw RESPError("a verbatim string without a length") }
                guard let body = try blob(count) else {
                    result = nil
                    break
                }
                guard body.count >= 4, body[3] == UInt8(ascii: ":") else { throw RESPError("a verbatim string without its format") }
                result = .verbatimString(
                    format: String(decoding: body[0..<3], as: UTF8.self),
                    text: String(decoding: body[4...], as: UTF8.self)
                )
            case UInt8(ascii: "%"):
                guard let count = try length(text), count <= RESP.maxLength / 2 else { throw RESPError("a map without a length") }
                guard let flat = try elements(count * 2, depth: depth) else {
                    result = nil
                    break
                }
                result = .map(stride(from: 0, to: flat.count, by: 2).map { (flat[$0], flat[$0 + 1]) })
            case UInt8(ascii: "~"):
                guard let count = try length(text) else { throw RESPError("a set without a length") }
                result = try elements(count, depth: depth).map { .set($0) }
            case UInt8(ascii: ">"):
                guard let count = try length(text) else { throw RESPError("a push without a length") }
                result = try elements(count, depth: depth).map { .push($0) }
            default:
                throw RESPError("an unknown type byte \(type)")
            }
            if result == nil { index = saved }
            return result
        }
    }
}
