public import Foundation

/// The fate of one campaign line, as the manifest, `pargen status` and the summary name it.
public enum ManifestStatus: String, Sendable, Hashable, Codable, CaseIterable, CustomStringConvertible {
    case succeeded
    /// The line was refused before it became a job (a bad field, or no provider can serve it).
    case invalid
    case deadLettered = "dead_lettered"
    /// Crashed between a provider accepting a task and its id being recorded: a person decides.
    case needsReconciliation = "needs_reconciliation"
    /// The run stopped before the line finished; running the campaign again continues it.
    case pending

    public var description: String { rawValue }
}

/// One row of a campaign manifest: the fate of one input line.
public struct ManifestRow: Sendable, Hashable, Codable {
    public var line: Int
    public var requestID: String
    public var jobID: String?
    public var status: ManifestStatus
    public var type: String?
    public var outputPath: String?
    public var provider: String?
    public var cost: String
    public var attempts: Int
    public var cached: Bool
    public var deduplicated: Bool
    public var sha256: String?
    public var errorCode: String?
    public var errorField: String?
    public var error: String?
    /// Provider tasks the line used (a task that failed and the one that succeeded are two).
    public var tasks: Int = 0
    /// Why the last failed attempt failed, even when a later one succeeded.
    public var lastFailure: String?
    /// Where a team's apps fetch the media (the CDN URL of its object in the shared store), when published.
    public var url: String?
    /// For a line served by a cache or an identical request: what generating it would have cost.
    public var saved: String?

    enum CodingKeys: String, CodingKey {
        case line
        case requestID = "request_id"
        case jobID = "job_id"
        case status, type
        case outputPath = "output_path"
        case provider, cost,
            attempts, cached, deduplicated, sha256
        case errorCode = "error_code"
        case errorField = "error_field"
        case error, tasks
        case lastFailure = "last_failure"
        case url, saved
    }

    static let csvHeader = [
        "line", "request_id", "job_id", "status", "type", "output_path", "provider", "cost", "attempts", "cached",
        "deduplicated", "sha256", "error_code", "error_field", "error", "tasks", "last_failure", "url", "saved",
    ]

    var csvFields: [String] {
        [
            String(line), requestID, jobID ?? "", status.rawValue, type ?? "", outputPath ?? "", provider ?? "", cost,
            String(attempts), String(cached), String(deduplicated), sha256 ?? "", errorCode ?? "", errorField ?? "",
            error ?? "", String(tasks), lastFailure ?? "", url ?? "", saved ?? "",
        ]
    }
}

/// What a campaign run produced.
public struct CampaignReport: Sendable {
    public var rows: [ManifestRow]
    public var manifestJSONL: URL
    public var manifestCSV: URL
    public var errorsFile: URL
    public var elapsed: Duration
    /// The campaign file's bad lines, as written to ``errorsFile``.
    public var lineErrors: [CampaignLineError] = []

    public var succeeded: Int { rows.filter { $0.status == .succeeded }.count }
    public var invalid: Int { rows.filter { $0.status == .invalid }.count }
    public var failed: Int { rows.filter { $0.status == .deadLettered || $0.status == .needsReconciliation }.count }

    /// Lines not finished when the run was stopped; the next run continues them.
    public var pending: Int { rows.filter { $0.status == .pending }.count }

    /// 0 when every line succeeded, 1 when any was invalid, failed or dead-lettered.
    public var exitCode: Int32 { succeeded == rows.count ? 0 : 1 }
}

/// Runs a campaign file through a generator and writes its manifests.
public enum CampaignRunner {
    /// Submits every good line, waits for all results, and writes `manifest.jsonl`, `manifest.csv` and
    /// `errors.jsonl` (one object per bad line: line, field, message) into `outputDirectory`.
    public static func run(
        _ file: CampaignFile,
        generator: ParallelGenerator,
        outputDirectory: URL,
        clock: PargenClock = .continuous
    ) async throws -> CampaignReport {
        let started = clock.now
        try LocalResourceError.checking(outputDirectory, "create the folder") {
            try FileManager.default.createDirectory(at: outputDirectory, withIntermediateDirectories: true)
        }
        let ids = try await generator.submit(requests(of: file, keys: try await lineKeys(in: generator.store)))
        var rows: [ManifestRow] = []
        var errors = file.errors
        for error in file.errors {
            rows.append(
                ManifestRow(
                    line: error.line,
                    requestID: "line-\(error.line)",
                    status: .invalid,
                    cost: Money.zero.decimalString,
                    attempts: 0,
                    cached: false,
                    deduplicated: false,
                    errorCode: GenerationError.Code.invalidRequest.description,
                    errorField: error.field,
                    error: error.message
                )
            )
        }
        var seen: Set<JobID> = []
        for (line, id) in zip(file.lines, ids) {
            let result = await generator.result(for: id)
            let invalid = generator.isInvalidSubmission(id)
            if invalid {
                errors.append(
                    CampaignLineError(line: line.line, field: result.error?.field, message: result.error?.message ?? "")
                )
            }
            let made = row(
                line: line.line,
                requestID: line.request.id,
                jobID: invalid ? nil : id,
                kind: line.request.kind,
                result: result,
                invalid: invalid
            )
            rows.append(invalid || seen.insert(id).inserted ? made : repeated(made, requestID: line.request.id))
        }
        rows.sort { $0.line < $1.line }
        errors.sort { $0.line < $1.line }
        return try write(rows: rows, errors: errors, to: outputDirectory, elapsed: clock.now - started)
    }

    /// The manifest row of one line's result.
    static func row(
        line: Int,
        requestID: String,
        jobID: JobID?,
        kind: GenerationKind,
        result: GenerationResult,
        invalid: Bool
    ) -> ManifestRow {
        ManifestRow(
            line: line,
            requestID: result.requestID.isEmpty ? requestID : result.requestID,
            jobID: jobID?.rawValue,
            status: status(of: result, invalid: invalid),
            type: kind.rawValue,
            outputPath: result.artifact?.url.path,
            provider: result.provider,
            cost: result.actualCost.decimalString,
            attempts: result.attempts,
            cached: result.servedFromCache,
            deduplicated: result.deduplicated,
            sha256: result.artifact?.sha256,
            errorCode: result.error?.code.description,
            errorField: result.error?.field,
            error: result.error.map(describe),
            tasks: result.tasks,
            lastFailure: result.lastFailure?.description,
            url: result.artifact?.publicURL?.absoluteString,
            saved: result.saved == .zero ? nil : result.saved.decimalString
        )
    }

    /// The line's status from its result (`pending` when the run stopped first).
    static func status(of result: GenerationResult, invalid: Bool) -> ManifestStatus {
        if result.succeeded { return .succeeded }
        if invalid { return .invalid }
        switch result.error?.code {
        case .needsReconciliation?: return .needsReconciliation
        case .cancelled?: return .pending
        default: return .deadLettered
        }
    }

    /// How a campaign's lines are keyed in the store.
    public enum LineKeys: Sendable, Hashable {
        /// `line:<hash of the line's fields>:<occurrence>`: a line is the same job wherever it moves in the file;
        /// a changed line is a new job; the second of two identical lines is a job of its own.
        case content
        /// `line-N-<hash>`, as stores made before content keys have them: kept for those stores, so that a
        /// campaign begun there goes on with the same jobs instead of paying for every line again.
        case lineNumbers
    }

    /// The campaign's requests, each with a deterministic idempotency key (unless the line has its own), so that
    /// submitting the same campaign again to the same store continues it: finished lines are not redone, and
    /// workers that enqueue the same file together add each line once.
    ///
    /// With ``LineKeys/content`` (the default) a line's key does not depend on where it is in the file: inserting,
    /// removing or moving lines of a half-done campaign leaves every other line the job it was (with line numbers
    /// in the key, a line inserted at the top made every line after it a new job, bought again).
    public static func requests(of file: CampaignFile, keys: LineKeys = .content) -> [GenerationRequest] {
        zip(file.lines, lineKeys(of: file, keys: keys)).map { line, key in
            var request = line.request
            if request.idempotencyKey == nil { request.idempotencyKey = key }
            return request
        }
    }

    /// The key of each line of `file` (whether or not the line names a key of its own), in order.
    public static func lineKeys(of file: CampaignFile, keys: LineKeys = .content) -> [String] {
        var occurrences: [String: Int] = [:]
        return file.lines.map { line in
            switch keys {
            case .content:
                let digest = contentDigest(line)
                occurrences[digest, default: 0] += 1
                return "line:\(digest):\(occurrences[digest]!)"
            case .lineNumbers:
                return "line-\(line.line)-\(digest(of: line.request))"
            }
        }
    }

    /// The keys the lines of a campaign get in `store`: ``LineKeys/lineNumbers`` when the store's first job has a
    /// key of that form (a store from before content keys), else ``LineKeys/content``.
    public static func lineKeys(in store: any JobStore) async throws -> LineKeys {
        let first = try await store.jobs(matching: JobQuery(limit: 1)).first
        return first?.request.idempotencyKey.map(isLineNumberKey) == true ? .lineNumbers : .content
    }

    /// Cancels the jobs that lines of a campaign made in `store` and that `file` no longer has: a line removed,
    /// or edited (an edited line is a new job, and its old version would still run and be paid for). Only jobs
    /// still waiting are cancelled, as ``JobStore/cancel(_:)`` allows; one under way, finished, or whose task a
    /// provider holds is left as it is. Only jobs keyed as campaign lines are looked at (`line:` keys, or the
    /// `line-N-` keys of an older store): a job with an idempotency key of its own, or from the HTTP API, is never
    /// touched. Meant for a store that holds this campaign's jobs alone: lines of another file enqueued into the
    /// same store look removed too.
    ///
    /// - Returns: The jobs cancelled, as they were before.
    public static func cancelRemovedLines(of file: CampaignFile, in store: any JobStore) async throws -> [JobRecord] {
        let kept = Set(requests(of: file, keys: try await lineKeys(in: store)).compactMap(\.idempotencyKey))
        var cancelled: [JobRecord] = []
        for job in try await waitingLines(in: store, isLine: isLineKey, notIn: kept) {
            do {
                try await store.cancel(job.id)
                cancelled.append(job)
            } catch let error as StoreError where error.code == .invalidState || error.code == .notFound {
                // Taken by a worker, or finished, since it was read: it runs or ran; leave it.
                continue
            }
        }
        return cancelled
    }

    /// The waiting jobs in `store` (of `campaign`, if given) whose idempotency key `isLine` calls a campaign line's
    /// and that `kept` does not hold: what a campaign that no longer has those lines would cancel.
    public static func waitingLines(
        in store: any JobStore,
        campaign: String? = nil,
        isLine: (String) -> Bool,
        notIn kept: Set<String>
    ) async throws -> [JobRecord] {
        var found: [JobRecord] = []
        var cursor: Int64?
        while true {
            let page = try await store.jobs(
                matching: JobQuery(states: [.available], campaign: campaign, afterSequence: cursor, limit: 1_000)
            )
            guard let last = page.last else { break }
            cursor = last.sequence
            found += page.filter { job in
                job.request.idempotencyKey.map { isLine($0) && !kept.contains($0) } ?? false
            }
        }
        return found
    }

    /// Whether `key` is a campaign line's key, of either form (`line:<16 hex digits>:<copy>`, or `line-N-<16 hex
    /// digits>`).
    public static func isLineKey(_ key: String) -> Bool {
        if key.hasPrefix("line:") {
            let parts = key.split(separator: ":", omittingEmptySubsequences: false)
            return parts.count == 3 && parts[1].count == 16 && parts[1].allSatisfy(\.isHexDigit) && Int(parts[2]) != nil
        }
        return isLineNumberKey(key)
    }

    /// Whether `key` is a `line-N-<16 hex digits>` key.
    static func isLineNumberKey(_ key: String) -> Bool {
        let parts = key.split(separator: "-", omittingEmptySubsequences: false)
        return parts.count == 3 && parts[0] == "line" && Int(parts[1]) != nil && parts[2].count == 16
            && parts[2].allSatisfy(\.isHexDigit)
    }

    /// The hash of a line's fields, without its line number: the id `line-N` that a line without an id is given
    /// is left out, so the line hashes alike wherever it is.
    static func contentDigest(_ line: CampaignLine) -> String {
        var request = line.request
        if request.id == "line-\(line.line)" { request.id = "" }
        return digest(of: request)
    }

    /// 16 hex digits of SHA-256 over the request's fields, each length-prefixed.
    static func digest(of r: GenerationRequest) -> String {
        let fields: [String] = [
            r.kind.rawValue, r.prompt, r.priority.description, r.duration.map { String($0.milliseconds) } ?? "-",
            r.format?.name ?? "-", r.resolution?.description ?? "-", r.voice ?? "-", r.model ?? "-", r.provider ?? "-",
            r.user, r.project, r.campaign ?? "-", r.id, JSONValue.object(r.metadata).description,
        ]
        return String(SHA256Hasher.hex(of: fields.map { "\($0.utf8.count):\($0)" }.joined(separator: "|")).prefix(16))
    }

    /// The row of a line whose idempotency key names the job of an earlier line (asking for the same media): it
    /// shares that job's file, and shows no cost or attempts of its own, as a line served by an identical request
    /// does, so that the manifest's costs add up to what the store charged.
    static func repeated(_ row: ManifestRow, requestID: String) -> ManifestRow {
        var row = row
        row.requestID = requestID
        if row.cost != Money.zero.decimalString { row.saved = row.cost }
        row.cost = Money.zero.decimalString
        row.attempts = 0
        row.tasks = 0
        row.deduplicated = true
        return row
    }

    /// Waits for every job already in the store (a campaign resumed without its file) and writes the manifests.
    public static func resume(
        generator: ParallelGenerator,
        outputDirectory: URL,
        clock: PargenClock = .continuous
    ) async throws -> CampaignReport {
        let started = clock.now
        try LocalResourceError.checking(outputDirectory, "create the folder") {
            try FileManager.default.createDirectory(at: outputDirectory, withIntermediateDirectories: true)
        }
        var rows: [ManifestRow] = []
        for record in try await generator.store.jobs(matching: JobQuery()) {
            let result = await generator.result(for: record.id)
            let line = Int(record.request.id.split(separator: "-").last ?? "") ?? 0
            rows.append(
                row(
                    line: line,
                    requestID: record.request.id,
                    jobID: record.id,
                    kind: record.request.kind,
                    result: result,
                    invalid: false
                )
            )
        }
        rows.sort { $0.line < $1.line }
        return try write(rows: rows, errors: [], to: outputDirectory, elapsed: clock.now - started)
    }

    /// Rewrites the manifests of a stopped run from the store: a line the run left `pending` whose job has
    /// since finished (a call that completed while the engine stopped) takes the store's final state, so that
    /// the manifest, `status`, `jobs` and the store say the same thing once the run has ended.
    public static func settle(_ report: CampaignReport, generator: ParallelGenerator) async throws -> CampaignReport {
        guard report.pending > 0 else { return report }
        var rows = report.rows
        // The line that owns each job: the first whose row names it (the rows are in line order).
        var owner: [String: Int] = [:]
        for row in rows { if let id = row.jobID, owner[id] == nil { owner[id] = row.line } }
        for index in rows.indices where rows[index].status == .pending {
            guard let id = rows[index].jobID, let record = try await generator.store.job(JobID(id)),
                record.state.isFinal
            else { continue }
            let settled = row(
                line: rows[index].line,
                requestID: rows[index].requestID,
                jobID: record.id,
                kind: record.request.kind,
                result: generator.makeResult(record),
                invalid: false
            )
            rows[index] =
                owner[id] == rows[index].line ? settled : repeated(settled, requestID: rows[index].requestID)
        }
        return try write(
            rows: rows,
            errors: report.lineErrors,
            to: report.manifestJSONL.deletingLastPathComponent(),
            elapsed: report.elapsed
        )
    }

    static func write(
        rows: [ManifestRow],
        errors: [CampaignLineError],
        to outputDirectory: URL,
        elapsed: Duration
    )
        throws -> CampaignReport
    {
        let report = CampaignReport(
            rows: rows,
            manifestJSONL: outputDirectory.appendingPathComponent("manifest.jsonl"),
            manifestCSV: outputDirectory.appendingPathComponent("manifest.csv"),
            errorsFile: outputDirectory.appendingPathComponent("errors.jsonl"),
            elapsed: elapsed,
            lineErrors: errors
        )
        try writeJSONLines(rows, to: report.manifestJSONL)
        try writeJSONLines(errors, to: report.errorsFile)
        var csv = ManifestRow.csvHeader.joined(separator: ",") + "\r\n"
        for row in rows { csv += row.csvFields.map(csvEscape).joined(separator: ",") + "\r\n" }
        try LocalResourceError.checking(report.manifestCSV, "write") {
            try Data(csv.utf8).write(to: report.manifestCSV, options: .atomic)
        }
        return report
    }

    static func describe(_ error: GenerationError) -> String {
        guard let code = error.providerCode else { return error.message }
        return "\(error.message) (provider code \(code))"
    }

    static func writeJSONLines<T: Encodable>(_ values: [T], to url: URL) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var data = Data()
        for value in values {
            data.append(try encoder.encode(value))
            data.append(0x0A)
        }
        try LocalResourceError.checking(url, "write") { try data.write(to: url, options: .atomic) }
    }

    static func csvEscape(_ field: String) -> String {
        guard field.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) else { return field }
        return "\"" + field.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}
