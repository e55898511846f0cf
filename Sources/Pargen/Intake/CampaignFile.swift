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

    /// Reads a campaign file; the format follows the extension (`.csv`, else JSONL).
    ///
    /// - Throws: Only when the file cannot be read at all (missing, unreadable, not UTF-8).
    public static func load(_ url: URL) throws -> CampaignFile {
        let data = try Data(contentsOf: url)
        guard let text = String(data: data, encoding: .utf8) else {
            throw CocoaError(.fileReadInapplicableStringEncoding, userInfo: [NSFilePathErrorKey: url.path])
        }
        return parse(text, format: url.pathExtension.lowercased() == "csv" ? .csv : .jsonl)
    }

    public static func parse(_ text: String, format: Format) -> CampaignFile {
        var body = Substring(text)
        if body.hasPrefix("\u{FEFF}") { body = body.dropFirst() }
        switch format {
        case .jsonl: return parseJSONL(body)
        case .csv: return parseCSV(body)
        }
    }

    // MARK: - JSONL

    private static func parseJSONL(_ text: Substring) -> CampaignFile {
        var file = CampaignFile(format: .jsonl, lines: [], errors: [])
        let decoder = JSONDecoder()
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let lineNumber = index + 1
            let line = rawLine.hasSuffix("\r") ? rawLine.dropLast() : rawLine
            guard !line.allSatisfy(\.isWhitespace) else { continue }
            guard let object = try? decoder.decode([String: JSONValue].self, from: Data(line.utf8)) else {
                file.errors.append(CampaignLineError(line: lineNumber, field: nil, message: "is not a JSON object"))
                continue
            }
            if let unknown = object.keys.sorted().first(where: { !knownFields.contains($0) }) {
                file.errors.append(CampaignLineError(line: lineNumber, field: unknown, message: "is not a known field"))
                continue
            }
            switch makeRequest(object, line: lineNumber, extraMetadata: [:]) {
            case .success(let request): file.lines.append(CampaignLine(line: lineNumber, request: request))
            case .failure(let error): file.errors.append(error)
            }
        }
        return file
    }

    // MARK: - CSV

    private static func parseCSV(_ text: Substring) -> CampaignFile {
        var file = CampaignFile(format: .csv, lines: [], errors: [])
        let records = CSVReader.records(text)
        guard let header = records.first else { return file }
        let columns = header.fields.map {
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
        for record in records.dropFirst() {
            if record.fields.allSatisfy({ $0.trimmingWhitespace().isEmpty }) { continue }
            if record.fields.count > columns.count {
                file.errors.append(
                    CampaignLineError(
                        line: record.line,
                        field: nil,
                        message: "has \(record.fields.count) values but the header has \(columns.count) columns"
                    )
                )
                continue
            }
            var object: [String: JSONValue] = [:]
            var extra: [String: JSONValue] = [:]
            for (column, value) in zip(columns, record.fields) {
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
        extraMetadata: [String: JSONValue]
    ) -> Result<GenerationRequest, CampaignLineError> {
        func fail(_ field: String, _ message: String) -> Result<GenerationRequest, CampaignLineError> {
            .failure(CampaignLineError(line: line, field: field, message: message))
        }
        func text(_ field: String) -> Result<String?, CampaignLineError> {
            switch object[field] {
            case nil, .null: return .success(nil)
            case .string(let value): return .success(value.trimmingWhitespace().isEmpty ? nil : value)
            case .number(let value): return .success(value == value.rounded() ? String(Int(value)) : String(value))
            default: return .failure(CampaignLineError(line: line, field: field, message: "must be a string"))
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
            request.id = try text("id").get()?.trimmingWhitespace() ?? "line-\(line)"
            var metadata = extraMetadata
            switch object["metadata"] {
            case nil, .null: break
            case .object(let value): metadata.merge(value) { _, new in new }
            case .string(let raw):
                let trimmed = raw.trimmingWhitespace()
                if !trimmed.isEmpty {
                    guard let value = try? JSONDecoder().decode([String: JSONValue].self, from: Data(trimmed.utf8))
                    else {
                        return fail("metadata", "must be a JSON object")
                    }
                    metadata.merge(value) { _, new in new }
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
        guard let seconds = Double(String(number).trimmingWhitespace()), seconds.isFinite, seconds >= 0, seconds < 1e7
        else {
            return nil
        }
        return .fromSeconds(seconds * scale)
    }
}

/// RFC 4180 CSV with the habits of spreadsheet exports: a byte-order mark, CRLF, quoted fields with
/// doubled quotes and line breaks, and `;` or tab as the separator when the header uses them.
enum CSVReader {
    struct Record {
        var line: Int
        var fields: [String]
    }

    static func records(_ text: Substring) -> [Record] {
        let firstLine = text.prefix { $0 != "\n" && $0 != "\r" }
        let separator: Character =
            firstLine.contains(",") ? "," : firstLine.contains(";") ? ";" : firstLine.contains("\t") ? "\t" : ","
        var records: [Record] = []
        var fields: [String] = []
        var field = ""
        var inQuotes = false
        var line = 1
        var recordLine = 1
        var index = text.startIndex
        var fieldStarted = false
        while index < text.endIndex {
            let char = text[index]
            if inQuotes {
                if char == "\"" {
                    let next = text.index(after: index)
                    if next < text.endIndex, text[next] == "\"" {
                        field.append("\"")
                        index = next
                    } else {
                        inQuotes = false
                    }
                } else {
                    if char == "\n" || char == "\r\n" { line += 1 }
                    field.append(char)
                }
            } else if char == "\"" && !fieldStarted {
                inQuotes = true
                fieldStarted = true
            } else if char == separator {
                fields.append(field)
                field = ""
                fieldStarted = false
            } else if char == "\n" || char == "\r\n" || char == "\r" {
                fields.append(field)
                records.append(Record(line: recordLine, fields: fields))
                fields = []
                field = ""
                fieldStarted = false
                line += 1
                recordLine = line
            } else {
                field.append(char)
                fieldStarted = true
            }
            index = text.index(after: index)
        }
        if !field.isEmpty || !fields.isEmpty {
            fields.append(field)
            records.append(Record(line: recordLine, fields: fields))
        }
        return records
    }
}
