public import Foundation

/// A problem with one line of a campaign file.
public struct CampaignLineError: Error, Sendable, Hashable, Codable, CustomStringConvertible {
    /// 1-based line number in the file (for CSV, the line where the record starts).
    public var line: Int
    /// The field at fault, when one is.
    public var field: String?
    public var message: String

    public init(line: Int, field: String?, message: String) {
        self.line = line
        self.field = field
        self.message = message
    }

    public var description: String {
        field.map { "line \(line): \($0): \(message)" } ?? "line \(line): \(message)"
    }
}

/// A campaign file that cannot be read at all (its lines are never the cause: a bad line is a
/// ``CampaignLineError`` of its own).
public struct CampaignFileError: Error, Sendable, Hashable, CustomStringConvertible {
    public var path: String
    /// Why, such as "No such file or directory" or "it is a folder, not a campaign file".
    public var reason: String

    public init(path: String, reason: String) {
        self.path = path
        self.reason = reason
    }

    public var description: String { "cannot read \(path): \(reason)" }
}

/// One good line of a campaign file.
public struct CampaignLine: Sendable {
    public var line: Int
    public var request: GenerationRequest
}

/// A campaign read from a JSONL or CSV file: the good lines, and an error for each bad one.
///
/// Fields: `type` (audio|video, required), `prompt` (required), `priority` (low|normal|high|urgent),
/// `duration` (seconds: `30`, `2.5`, `30s`, `1500ms`, `2m`), `format`, `resolution` (`720p`, `1920x1080`),
/// `voice`, `model`, `provider`, `user`, `project`, `campaign`, `idempotency_key`, `id`, and `metadata`
/// (a JSON object). In CSV, any other column goes into the metadata; in JSONL an unknown field is an error.
public struct CampaignFile: Sendable {
    public enum Format: String, Sendable { case jsonl, csv }

    public var format: Format
    public var lines: [CampaignLine]
    public var errors: [CampaignLineError]
    /// Data lines read (blank lines and the CSV header excluded).
    public var recordCount: Int { lines.count + errors.count }

    static let knownFields: Set<String> = [
        "type", "prompt", "priority", "duration", "format", "resolution", "voice", "model", "provider", "user",
        "project", "campaign", "idempotency_key", "metadata", "id",
    ]

    /// The most bytes a campaign file may have: it is read whole and parsed in memory (a million lines of
    /// 200 bytes are 200 MB).
    public static let maximumFileBytes = 1 << 30

    /// Reads a campaign file (a regular file, or a pipe such as `/dev/stdin`); the format follows the extension
    /// (`.csv`, else JSONL).
    ///
    /// - Throws: ``CampaignFileError`` only when the file cannot be read at all: missing, unreadable, a folder or
    ///   a device, or larger than ``maximumFileBytes``. Bytes that are not UTF-8 make an error on their own
    ///   line, not on the file.
    public static func load(_ url: URL) throws(CampaignFileError) -> CampaignFile {
        let bytes = try readFile(url.path, limit: maximumFileBytes)
        return parse(Data(bytes), format: url.pathExtension.lowercased() == "csv" ? .csv : .jsonl)
    }

    /// The bytes of the campaign file at `path`, at most `limit` of them.
    package static func readFile(_ path: String, limit: Int) throws(CampaignFileError) -> [UInt8] {
        do {
            return try BoundedFile.read(path, limit: limit, kind: "campaign file")
        } catch {
            let split = error.reason.hasPrefix("it is larger") ? "; split the campaign into several files" : ""
            throw CampaignFileError(path: path, reason: error.reason + split)
        }
    }

    public static func parse(_ text: String, format: Format) -> CampaignFile {
        parse(Data(text.utf8), format: format)
    }

    /// Parses the file's bytes. Lines are split on bytes (LF, CRLF or a lone CR), so that line ends never
    /// depend on how Swift groups `"\r\n"` into one `Character`, and each line is decoded on its own.
    public static func parse(_ data: Data, format: Format) -> CampaignFile {
        var bytes = [UInt8](data)
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes.removeFirst(3) }
        switch format {
        case .jsonl: return parseJSONL(bytes)
        case .csv: return parseCSV(bytes)
        }
    }

    // MARK: - JSONL

    private static func parseJSONL(_ bytes: [UInt8]) -> CampaignFile {
        var file = CampaignFile(format: .jsonl, lines: [], errors: [])
        for (index, raw) in ByteLines.split(bytes).enumerated() {
            let lineNumber = index + 1
            guard let line = String(validating: raw, as: UTF8.self) else {
                file.errors.append(CampaignLineError(line: lineNumber, field: nil, message: "is not valid UTF-8"))
                continue
            }
            guard !line.allSatisfy(\.isWhitespace) else { continue }
            let object: [String: JSONValue]
            switch JSONSyntax.parse(Array(raw)) {
            case .success(.object(let members)):
                object = members
            case .success(let value):
                let kind = JSONSyntax.kind(of: value)
                file.errors.append(CampaignLineError(line: lineNumber, field: nil, message: "is \(kind), not a JSON object"))
                continue
            case .failure(let problem):
                file.errors.append(
                    CampaignLineError(line: lineNumber, field: problem.field, message: problem.description)
                )
                continue
            }
            switch request(from: object, line: lineNumber) {
            case .success(let request): file.lines.append(CampaignLine(line: lineNumber, request: request))
            case .failure(let error): file.errors.append(error)
            }
        }
        return file
    }

    /// Reads one request from a JSON object with a JSONL line's fields (the HTTP API's job body): unknown
    /// fields and wrong types are errors naming the field.
    ///
    /// - Parameters:
    ///   - line: The number errors carry (a line, or an item's position in a batch).
    ///   - defaultID: The request id when the object has none (`line-N` when `nil`).
    public static func request(
        from object: [String: JSONValue],
        line: Int,
        defaultID: String? = nil
    ) -> Result<GenerationRequest, CampaignLineError> {
        if let unknown = object.keys.sorted().first(where: { !knownFields.contains($0) }) {
            return .failure(CampaignLineError(line: line, field: unknown, message: "is not a known field"))
        }
        return makeRequest(object, line: line, extraMetadata: [:], defaultID: defaultID)
    }

    // MARK: - CSV

    private static func parseCSV(_ bytes: [UInt8]) -> CampaignFile {
        var file = CampaignFile(format: .csv, lines: [], errors: [])
        var records = CSVReader.records(bytes)
        guard !records.isEmpty else { return file }
        let header = records.removeFirst()
        guard case .fields(let headerFields) = header.content else {
            file.errors.append(CampaignLineError(line: header.line, field: nil, message: header.problem))
            return file
        }
        let columns = headerFields.map {
            $0.trimmingWhitespace().lowercased().replacingOccurrences(of: " ", with: "_")
        }
        if let duplicate = Dictionary(grouping: columns, by: { $0 }).first(where: {
            $0.value.count > 1 && !$0.key.isEmpty
        }) {
            file.errors.append(
                CampaignLineError(line: header.line, field: duplicate.key, message: "column appears more than once")
            )
            return file
        }
        for record in records {
            guard case .fields(let fields) = record.content else {
                file.errors.append(CampaignLineError(line: record.line, field: nil, message: record.problem))
                continue
            }
            if fields.allSatisfy({ $0.trimmingWhitespace().isEmpty }) { continue }
            if fields.count > columns.count {
                file.errors.append(
                    CampaignLineError(
                        line: record.line,
                        field: nil,
                        message: "has \(fields.count) values but the header has \(columns.count) columns"
                    )
                )
                continue
            }
            var object: [String: JSONValue] = [:]
            var extra: [String: JSONValue] = [:]
            for (column, value) in zip(columns, fields) {
                let trimmed = value.trimmingWhitespace()
                guard !trimmed.isEmpty, !column.isEmpty else { continue }
                if knownFields.contains(column) {
                    object[column] = .string(value)
                } else {
                    extra[column] = .string(trimmed)
                }
            }
            switch makeRequest(object, line: record.line, extraMetadata: extra) {
            case .success(let request): file.lines.append(CampaignLine(line: record.line, request: request))
            case .failure(let error): file.errors.append(error)
            }
        }
        return file
    }

    // MARK: - Fields

    private static func makeRequest(
        _ object: [String: JSONValue],
        line: Int,
        extraMetadata: [String: JSONValue],
        defaultID: String? = nil
    ) -> Result<GenerationRequest, CampaignLineError> {
        func fail(_ field: String, _ message: String) -> Result<GenerationRequest, CampaignLineError> {
            .failure(CampaignLineError(line: line, field: field, message: message))
        }
        func text(_ field: String) -> Result<String?, CampaignLineError> {
            switch object[field] {
            case nil, .null: return .success(nil)
            case .string(let value): return .success(value.trimmingWhitespace().isEmpty ? nil : value)
            case .number(let value): return .success(JSONValue.number(value).plainText)
            case let other?:
                return .failure(
                    CampaignLineError(line: line, field: field, message: "must be text or a number, not \(JSONSyntax.kind(of: other))")
                )
            }
        }
        do {
            guard let type = try text("type").get() else { return fail("type", "is required (audio or video)") }
            guard let kind = GenerationKind(rawValue: type.trimmingWhitespace().lowercased()) else {
                return fail("type", "must be audio or video, not \"\(type)\"")
            }
            guard let prompt = try text("prompt").get() else { return fail("prompt", "is required") }
            var request = GenerationRequest(kind: kind, prompt: prompt)
            if let value = try text("priority").get() {
                guard let priority = GenerationPriority(name: value.trimmingWhitespace()) else {
                    return fail("priority", "must be low, normal, high or urgent, not \"\(value)\"")
                }
                request.priority = priority
            }
            if let value = try text("duration").get() {
                guard let duration = parseDuration(value) else {
                    return fail("duration", "must be a number of seconds (30, 2.5, 30s, 1500ms, 2m), not \"\(value)\"")
                }
                request.duration = duration
            }
            if let value = try text("format").get() { request.format = MediaFormat(value.trimmingWhitespace()) }
            if let value = try text("resolution").get() {
                guard let resolution = Resolution(parsing: value) else {
                    return fail("resolution", "must be like 720p, 1080p, 4k or 1920x1080, not \"\(value)\"")
                }
                request.resolution = resolution
            }
            request.voice = try text("voice").get()
            request.model = try text("model").get()
            request.provider = try text("provider").get()
            if let value = try text("user").get() { request.user = value }
            if let value = try text("project").get() { request.project = value }
            request.campaign = try text("campaign").get()
            request.idempotencyKey = try text("idempotency_key").get()
            request.id = try text("id").get()?.trimmingWhitespace() ?? defaultID ?? "line-\(line)"
            var metadata = extraMetadata
            switch object["metadata"] {
            case nil, .null: break
            case .object(let value): metadata.merge(value) { _, new in new }
            case .string(let raw):
                let trimmed = raw.trimmingWhitespace()
                if !trimmed.isEmpty {
                    switch JSONSyntax.parse(Array(trimmed.utf8)) {
                    case .success(.object(let value)): metadata.merge(value) { _, new in new }
                    case .success(let value):
                        return fail("metadata", "must be a JSON object, not \(JSONSyntax.kind(of: value))")
                    case .failure(let problem): return fail("metadata", "must be a JSON object; the text \(problem)")
                    }
                }
            default: return fail("metadata", "must be a JSON object")
            }
            request.metadata = metadata
            return .success(request)
        } catch {
            return .failure(error)
        }
    }

    /// Parses `30`, `2.5`, `30s`, `1500ms` or `2m`.
    public static func parseDuration(_ text: String) -> Duration? {
        let value = text.trimmingWhitespace().lowercased()
        var number = Substring(value)
        var scale = 1.0
        if number.hasSuffix("ms") {
            number = number.dropLast(2)
            scale = 0.001
        } else if number.hasSuffix("s") {
            number = number.dropLast()
        } else if number.hasSuffix("m") {
            number = number.dropLast()
            scale = 60
        }
        let digits = String(number).trimmingWhitespace()
        // Decimal only: Double also reads hexadecimal ("0x10" is 16) and "nan" or "infinity".
        guard digits.allSatisfy({ $0.isASCII && ($0.isNumber || ".eE+-".contains($0)) }),
            let seconds = Double(digits), seconds.isFinite, seconds >= 0, seconds < 1e7
        else {
            return nil
        }
        return .fromSeconds(seconds * scale)
    }
}

/// Splits bytes into lines at LF, CRLF or a lone CR, without the line ends.
enum ByteLines {
    static func split(_ bytes: [UInt8]) -> [ArraySlice<UInt8>] {
        var lines: [ArraySlice<UInt8>] = []
        var start = 0
        var index = 0
        while index < bytes.count {
            let byte = bytes[index]
            if byte == 0x0A || byte == 0x0D {
                lines.append(bytes[start..<index])
                if byte == 0x0D, index + 1 < bytes.count, bytes[index + 1] == 0x0A { index += 1 }
                start = index + 1
            }
            index += 1
        }
        if start < bytes.count { lines.append(bytes[start...]) }
        return lines
    }
}

/// RFC 4180 CSV with the habits of spreadsheet exports: a byte-order mark, CRLF, quoted fields with
/// doubled quotes and line breaks, and `;` or tab as the separator when the header uses them.
///
/// It reads bytes: every byte that matters to CSV is ASCII, and UTF-8 never uses those values inside a
/// character, so a record's fields are decoded only once it is whole, and a record that is not UTF-8 is an
/// error on its own line. A quote that is never closed makes its record an error, and reading starts again
/// on the line after the one where that record began, so that no later row is swallowed.
enum CSVReader {
    struct Record {
        enum Content {
            case fields([String])
            case notUTF8
            case unterminatedQuote
        }

        /// The line where the record starts.
        var line: Int
        var content: Content

        var problem: String {
            switch content {
            case .fields: ""
            case .notUTF8: "is not valid UTF-8"
            case .unterminatedQuote: "has a quote that is never closed"
            }
        }
    }

    private static let quote: UInt8 = 0x22
    private static let newline: UInt8 = 0x0A
    private static let carriageReturn: UInt8 = 0x0D

    /// The separator the header line uses most outside quotes: `,`, `;` or tab (`,` on a tie).
    static func separator(_ bytes: [UInt8]) -> UInt8 {
        var counts: [UInt8: Int] = [0x2C: 0, 0x3B: 0, 0x09: 0]
        var inQuotes = false
        for byte in bytes {
            if byte == quote {
                inQuotes.toggle()
            } else if !inQuotes {
                if byte == newline || byte == carriageReturn { break }
                if counts[byte] != nil { counts[byte]! += 1 }
            }
        }
        let best = counts.max { a, b in a.value < b.value || (a.value == b.value && a.key != 0x2C && b.key == 0x2C) }
        return best.map { $0.value > 0 ? $0.key : 0x2C } ?? 0x2C
    }

    static func records(_ bytes: [UInt8]) -> [Record] {
        let separator = separator(bytes)
        var records: [Record] = []
        var fields: [[UInt8]] = []
        var field: [UInt8] = []
        var inQuotes = false
        var fieldStarted = false
        var line = 1
        var recordLine = 1
        var recordStart = 0
        var index = 0

        func endRecord() {
            fields.append(field)
            var decoded: [String] = []
            decoded.reserveCapacity(fields.count)
            for raw in fields {
                guard let text = String(validating: raw, as: UTF8.self) else {
                    records.append(Record(line: recordLine, content: .notUTF8))
                    fields = []
                    field = []
                    fieldStarted = false
                    return
                }
                decoded.append(text)
            }
            records.append(Record(line: recordLine, content: .fields(decoded)))
            fields = []
            field = []
            fieldStarted = false
        }

        while index < bytes.count {
            let byte = bytes[index]
            if inQuotes {
                if byte == quote {
                    if index + 1 < bytes.count, bytes[index + 1] == quote {
                        field.append(quote)
                        index += 1
                    } else {
                        inQuotes = false
                    }
                } else {
                    if byte == newline || (byte == carriageReturn && bytes[safe: index + 1] != newline) { line += 1 }
                    field.append(byte)
                }
            } else if byte == quote && !fieldStarted {
                inQuotes = true
                fieldStarted = true
            } else if byte == separator {
                fields.append(field)
                field = []
                fieldStarted = false
            } else if byte == newline || byte == carriageReturn {
                if byte == carriageReturn, bytes[safe: index + 1] == newline { index += 1 }
                endRecord()
                line += 1
                recordLine = line
                recordStart = index + 1
            } else {
                field.append(byte)
                fieldStarted = true
            }
            index += 1
            if index == bytes.count && inQuotes {
                // The quote never closed: this record is the error; read again from the line after its start.
                records.append(Record(line: recordLine, content: .unterminatedQuote))
                inQuotes = false
                fields = []
                field = []
                fieldStarted = false
                var next = recordStart
                while next < bytes.count, bytes[next] != newline, bytes[next] != carriageReturn { next += 1 }
                if next < bytes.count, bytes[next] == carriageReturn, bytes[safe: next + 1] == newline { next += 1 }
                index = next + 1
                line = recordLine + 1
                recordLine = line
                recordStart = index
            }
        }
        if !field.isEmpty || !fields.isEmpty { endRecord() }
        return records
    }
}

extension Array {
    fileprivate subscript(safe index: Int) -> Element? { indices.contains(index) ? self[index] : nil }
}
