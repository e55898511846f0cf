import Foundation

/// A JSON value, for free-form request metadata.
public enum JSONValue: Sendable, Hashable, Codable, CustomStringConvertible {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Double.self) {
            self = .number(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let v): try container.encode(v)
        case .number(let v): try container.encode(v)
        case .string(let v): try container.encode(v)
        case .array(let v): try container.encode(v)
        case .object(let v): try container.encode(v)
        }
    }

    public var description: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(self) else { return "null" }
        return String(decoding: data, as: UTF8.self)
    }

    /// A scalar as plain text: a whole number without a decimal point (`42`, not `42.0`), any other number as
    /// Swift prints it (`1e+300`), a string as it is. Never traps, whatever the size of the number.
    public var plainText: String {
        switch self {
        case .number(let value):
            if let whole = Int64(exactly: value) { return String(whole) }
            return String(value)
        case .string(let value): return value
        default: return description
        }
    }

    /// Its length in bytes as compact JSON, counted without encoding it (a check on every request's metadata
    /// must not cost an encoder): numbers as ``plainText`` writes them, escapes at their written length.
    package var encodedSize: Int {
        switch self {
        case .null: return 4
        case .bool(let value): return value ? 4 : 5
        case .number: return plainText.utf8.count
        case .string(let text): return Self.encodedSize(of: text)
        case .array(let elements): return 2 + max(0, elements.count - 1) + elements.reduce(0) { $0 + $1.encodedSize }
        case .object(let members):
            return 2 + max(0, members.count - 1)
                + members.reduce(0) { $0 + Self.encodedSize(of: $1.key) + 1 + $1.value.encodedSize }
        }
    }

    private static func encodedSize(of text: String) -> Int {
        text.utf8.reduce(2) { size, byte in
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), 0x08, 0x09, 0x0A, 0x0C, 0x0D: size + 2
            case 0x00..<0x20: size + 6
            default: size + 1
            }
        }
    }

    /// The value as an `Int` when it is a number that is exactly a whole `Int`; `nil` otherwise (a fraction,
    /// or a number beyond `Int`'s range such as `1e300`).
    public var exactInt: Int? {
        guard case .number(let value) = self else { return nil }
        return Int(exactly: value)
    }
}
