/// Where and why a text is not JSON as RFC 8259 defines it, for error messages: Foundation's decoder says only
/// "The given data was not valid JSON", which leaves a user with a 2,000-line campaign nothing to go on.
///
/// It also finds what the decoder accepts without a word but which this project refuses, since the request it
/// stands for would be a guess: a key that appears twice in one object (which of the two `type`s did the user
/// mean?), a lone UTF-16 surrogate escape, a number too large for a `Double`.
package enum JSONSyntax {
    /// The first problem in a text, and where it is.
    package struct Problem: Error, Sendable, Hashable, CustomStringConvertible {
        /// 1-based line of the text (a JSONL line is always line 1 of itself).
        package var line: Int
        /// 1-based column, in characters (Unicode scalars) from the start of the line.
        package var column: Int
        /// The key of the outermost object whose value holds the problem, when there is one: the request's field.
        package var field: String?
        package var reason: String
        /// Whether the text breaks JSON's grammar (else it is JSON that this project refuses: a key twice).
        package var isSyntax: Bool

        /// The problem as the end of a sentence whose subject is the text: "is not valid JSON at column 12:
        /// ...", or "has ... (at column 12)".
        package var description: String {
            let place = line == 1 ? "column \(column)" : "line \(line), column \(column)"
            return isSyntax ? "is not valid JSON at \(place): \(reason)" : "\(reason) (at \(place))"
        }
    }

    /// How deep arrays and objects may nest (Foundation's own limit is 512).
    package static let maximumDepth = 512

    /// The JSON value `bytes` hold (nothing but whitespace around it, every object's keys distinct), or the
    /// first problem in them. The one reading of a campaign line, a metadata cell or a request body: the value is
    /// read as Foundation's decoder reads it into ``JSONValue``, so no second parse is needed.
    package static func parse(_ bytes: [UInt8]) -> Result<JSONValue, Problem> {
        var scanner = Scanner(bytes: bytes)
        do throws(Failure) {
            scanner.skipWhitespace()
            let value = try scanner.value(depth: 0)
            scanner.skipWhitespace()
            if scanner.index < bytes.count { throw scanner.fail("unexpected text after the JSON value") }
            return .success(value)
        } catch {
            return .failure(error.problem(in: bytes))
        }
    }

    /// The first problem in `bytes`, or `nil` when they are one JSON value (``parse(_:)``).
    package static func problem(in bytes: [UInt8]) -> Problem? {
        if case .failure(let problem) = parse(bytes) { return problem }
        return nil
    }

    /// What a value is, for "is an array, not an object".
    package static func kind(of value: JSONValue) -> String {
        switch value {
        case .null: "null"
        case .bool: "a boolean"
        case .number: "a number"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }

    private struct Failure: Error {
        let offset: Int
        let field: String?
        let reason: String
        var isSyntax = true

        func problem(in bytes: [UInt8]) -> Problem {
            var line = 1
            var lineStart = 0
            for index in 0..<min(offset, bytes.count) where bytes[index] == UInt8(ascii: "\n") {
                line += 1
                lineStart = index + 1
            }
            // Characters, not bytes: a continuation byte (10xxxxxx) does not start one.
            let column = bytes[lineStart..<min(offset, bytes.count)].count(where: { $0 & 0xC0 != 0x80 }) + 1
            return Problem(line: line, column: column, field: field, reason: reason, isSyntax: isSyntax)
        }
    }

    private struct Scanner {
        let bytes: [UInt8]
        var index = 0
        /// The key of the outermost object's member being read.
        var field: String?

        init(bytes: [UInt8]) { self.bytes = bytes }

        func fail(_ reason: String, at offset: Int? = nil) -> Failure {
            Failure(offset: offset ?? index, field: field, reason: reason)
        }

        var current: UInt8? { index < bytes.count ? bytes[index] : nil }

        mutating func skipWhitespace() {
            while let byte = current, byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D { index += 1 }
        }

        /// What stands at the current position, for "expected a value, found ...".
        func found() -> String {
            guard let byte = current else { return "the end of the text" }
            if byte < 0x20 || byte == 0x7F { return "a control character" }
            if byte >= 0x80 { return "a non-ASCII character" }
            return "'\(Character(Unicode.Scalar(byte)))'"
        }

        mutating func value(depth: Int) throws(Failure) -> JSONValue {
            guard let byte = current else { throw fail("expected a value, found the end of the text") }
            switch byte {
            case UInt8(ascii: "{"): return .object(try object(depth: depth + 1))
            case UInt8(ascii: "["): return .array(try array(depth: depth + 1))
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try number())
            case UInt8(ascii: "t"):
                try literal("true")
                return .bool(true)
            case UInt8(ascii: "f"):
                try literal("false")
                return .bool(false)
            case UInt8(ascii: "n"):
                try literal("null")
                return .null
            case UInt8(ascii: "'"): throw fail("strings take double quotes, not single quotes")
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"):
                throw fail(
                    "expected a value, found \(found()) (text takes double quotes; true, false and null are lower case)"
                )
            default: throw fail("expected a value, found \(found())")
            }
        }

        mutating func literal(_ word: String) throws(Failure) {
            let start = index
            for expected in word.utf8 {
                guard current == expected else {
                    throw fail("expected \(word) (true, false and null are lower case and unquoted)", at: start)
                }
                index += 1
            }
        }

        mutating func object(depth: Int) throws(Failure) -> [String: JSONValue] {
            guard depth <= maximumDepth else { throw fail("objects and arrays nest more than \(maximumDepth) deep") }
            index += 1
            var members: [String: JSONValue] = [:]
            skipWhitespace()
            if current == UInt8(ascii: "}") {
                index += 1
                return members
            }
            while true {
                skipWhitespace()
                let keyStart = index
                guard current == UInt8(ascii: "\"") else {
                    throw fail("expected a key in double quotes, found \(found())")
                }
                let key = try string()
                if depth == 1 { field = key }
                guard members[key] == nil else {
                    var failure = fail("has the key \"\(key)\" more than once in one object", at: keyStart)
                    failure.isSyntax = false
                    throw failure
                }
                skipWhitespace()
                guard current == UInt8(ascii: ":") else { throw fail("expected ':' after a key, found \(found())") }
                index += 1
                skipWhitespace()
                members[key] = try value(depth: depth)
                if try closes(at: "}", after: "member") {
                    if depth == 1 { field = nil }
                    return members
                }
            }
        }

        mutating func array(depth: Int) throws(Failure) -> [JSONValue] {
            guard depth <= maximumDepth else { throw fail("objects and arrays nest more than \(maximumDepth) deep") }
            index += 1
            var elements: [JSONValue] = []
            skipWhitespace()
            if current == UInt8(ascii: "]") {
                index += 1
                return elements
            }
            while true {
                skipWhitespace()
                elements.append(try value(depth: depth))
                if try closes(at: "]", after: "value") { return elements }
            }
        }

        /// Reads what follows a member or value: a comma (false: another follows) or the closing bracket
        /// (true, the bracket read).
        mutating func closes(at bracket: Unicode.Scalar, after item: String) throws(Failure) -> Bool {
            skipWhitespace()
            switch current {
            case UInt8(ascii: ","):
                index += 1
                skipWhitespace()
                if current == UInt8(bracket.value) { throw fail("a comma before '\(bracket)' (no \(item) follows it)") }
                return false
            case UInt8(bracket.value):
                index += 1
                return true
            default:
                throw fail("expected ',' or '\(bracket)' after a \(item), found \(found())")
            }
        }

        /// Reads a string (the cursor on its opening quote) and returns it, escapes resolved.
        mutating func string() throws(Failure) -> String {
            let start = index
            index += 1
            var scalars = String.UnicodeScalarView()
            var plain: [UInt8] = []
            func flush() {
                guard !plain.isEmpty else { return }
                scalars.append(contentsOf: String(decoding: plain, as: UTF8.self).unicodeScalars)
                plain.removeAll(keepingCapacity: true)
            }
            while true {
                guard let byte = current else { throw fail("a string that is never closed", at: start) }
                switch byte {
                case UInt8(ascii: "\""):
                    index += 1
                    flush()
                    return String(scalars)
                case UInt8(ascii: "\\"):
                    flush()
                    scalars.append(try escape())
                case 0x00..<0x20:
                    throw fail("a control character (U+\(hex(UInt32(byte)))) in a string; write it as an escape")
                default:
                    plain.append(byte)
                    index += 1
                }
            }
        }

        /// Reads an escape (the cursor on its backslash).
        mutating func escape() throws(Failure) -> Unicode.Scalar {
            let start = index
            index += 1
            guard let byte = current else { throw fail("a string that is never closed", at: start) }
            index += 1
            switch byte {
            case UInt8(ascii: "\""): return "\""
            case UInt8(ascii: "\\"): return "\\"
            case UInt8(ascii: "/"): return "/"
            case UInt8(ascii: "b"): return "\u{08}"
            case UInt8(ascii: "f"): return "\u{0C}"
            case UInt8(ascii: "n"): return "\n"
            case UInt8(ascii: "r"): return "\r"
            case UInt8(ascii: "t"): return "\t"
            case UInt8(ascii: "u"):
                let unit = try hex4(escapeAt: start)
                switch unit {
                case 0xD800...0xDBFF:
                    // A high surrogate must be followed by a low one: together they are one character.
                    let next = index
                    guard current == UInt8(ascii: "\\"), index + 1 < bytes.count, bytes[index + 1] == UInt8(ascii: "u")
                    else {
                        throw fail(lonelySurrogate(unit), at: start)
                    }
                    index += 2
                    let low = try hex4(escapeAt: next)
                    guard (0xDC00...0xDFFF).contains(low) else { throw fail(lonelySurrogate(unit), at: start) }
                    return Unicode.Scalar(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))!
                case 0xDC00...0xDFFF:
                    throw fail(lonelySurrogate(unit), at: start)
                default:
                    return Unicode.Scalar(unit)!
                }
            default:
                throw fail(
                    "\\\(Character(Unicode.Scalar(byte < 0x80 ? byte : UInt8(ascii: "?")))) is not an escape "
                        + "(use \\\", \\\\, \\/, \\b, \\f, \\n, \\r, \\t or \\uXXXX)",
                    at: start
                )
            }
        }

        func lonelySurrogate(_ unit: UInt32) -> String {
            "\\u\(hex(unit)) is half of a surrogate pair, without its other half"
        }

        mutating func hex4(escapeAt start: Int) throws(Failure) -> UInt32 {
            var value: UInt32 = 0
            for _ in 0..<4 {
                guard let byte = current, let digit = hexValue(byte) else {
                    throw fail("\\u takes four hexadecimal digits", at: start)
                }
                value = value << 4 | digit
                index += 1
            }
            return value
        }

        /// Four hexadecimal digits, upper case.
        func hex(_ value: UInt32) -> String {
            let digits = String(value, radix: 16, uppercase: true)
            return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
        }

        func hexValue(_ byte: UInt8) -> UInt32? {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): UInt32(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): UInt32(byte - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): UInt32(byte - UInt8(ascii: "A") + 10)
            default: nil
            }
        }

        mutating func number() throws(Failure) -> Double {
            let start = index
            func digits() -> Int {
                let first = index
                while let byte = current, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) { index += 1 }
                return index - first
            }
            if current == UInt8(ascii: "-") { index += 1 }
            if current == UInt8(ascii: "0") {
                index += 1
                if let byte = current, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) {
                    throw fail("a number does not start with 0 unless it is 0 (no leading zeros)", at: start)
                }
            } else if digits() == 0 {
                throw fail("expected a digit after '-', found \(found())")
            }
            if current == UInt8(ascii: ".") {
                index += 1
                guard digits() > 0 else { throw fail("expected a digit after the decimal point, found \(found())") }
            }
            if current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
                index += 1
                if current == UInt8(ascii: "+") || current == UInt8(ascii: "-") { index += 1 }
                guard digits() > 0 else { throw fail("expected a digit in the exponent, found \(found())") }
            }
            let text = String(decoding: bytes[start..<index], as: UTF8.self)
            // The grammar above is a subset of what `Double` reads, so the conversion cannot fail.
            let value = Double(text) ?? .nan
            guard value.isFinite else { throw fail("the number \(text) is too large (beyond ±1.8e308)", at: start) }
            return value
        }
    }
}
