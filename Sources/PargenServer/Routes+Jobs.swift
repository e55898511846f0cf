import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import NIOFoundationCompat
import Pargen

/// A route's answer before it becomes a response: kept as is under an idempotency key.
struct Answer: Sendable {
    var status: HTTPResponse.Status
    var body: JSONValue
    var location: String?
    var headers: HTTPFields = [:]

    var response: Response {
        var headers = self.headers
        if let location { headers[.location] = location }
        return JSON.response(status, body, headers: headers)
    }
}

extension HTTPField.Name {
    static let idempotencyKey = HTTPField.Name("Idempotency-Key")!
    static let idempotentReplayed = HTTPField.Name("Idempotent-Replayed")!
    static let prefer = HTTPField.Name("Prefer")!
    static let preferenceApplied = HTTPField.Name("Preference-Applied")!
    static let lastEventID = HTTPField.Name("Last-Event-ID")!
}

extension PargenServer {
    func addJobRoutes(_ api: RouterGroup<PargenRequestContext>) {
        api.post("jobs") { request, context -> Response in
            let principal = try context.requirePrincipal()
            try Problem.checkParameters(request, accepts: [])
            var request = request
            let body = try await request.collectBody(upTo: self.configuration.maxJSONBodyBytes)
            let wait = self.preferredWait(request)
            return try await self.idempotent(request, principal: principal, body: body) {
                try await self.createJobs(body, principal: principal, wait: wait)
            }
        }
        api.get("jobs") { request, context -> Response in
            let principal = try context.requirePrincipal()
            return try await self.listJobs(request, principal: principal).response
        }
        api.get("jobs/{id}") { _, context -> Response in
            let principal = try context.requirePrincipal()
            let record = try await self.ownedJob(context, principal)
            return JSON.response(.ok, self.render(record, principal))
        }
        api.post("jobs/{id}/cancel") { request, context -> Response in
            let principal = try context.requirePrincipal()
            var request = request
            let body = try await request.collectBody(upTo: self.configuration.maxJSONBodyBytes)
            return try await self.idempotent(request, principal: principal, body: body) {
                try await self.cancel(context, principal)
            }
        }
        api.get("jobs/{id}/artifact") { request, context -> Response in
            let principal = try context.requirePrincipal()
            let record = try await self.ownedJob(context, principal)
            return try await self.artifact(record, request: request, context: context)
        }
    }

    func render(_ record: JobRecord, _ principal: Principal) -> JSONValue {
        Resources.job(record, principal: principal, wallClock: generator.store.outlivesProcess)
    }

    /// The job named in the path, if it is the caller's to see: another tenant's job is not found, as an unknown
    /// one is (its existence is not told).
    func ownedJob(_ context: PargenRequestContext, _ principal: Principal) async throws -> JobRecord {
        let id = try context.parameters.require("id")
        guard id.utf8.count <= 200, let record = try await generator.store.job(JobID(id)),
            principal.owns(project: record.request.project)
        else { throw Problem.notFound("job \(id.prefix(200))") }
        return record
    }

    /// `Prefer: wait=N` (RFC 7240): seconds to hold a create for its result, at most the configured maximum. A
    /// preference that cannot be read is ignored, as the RFC asks.
    func preferredWait(_ request: Request) -> Duration? {
        for value in request.headers[values: .prefer] {
            for token in value.split(separator: ",") {
                let parts = token.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                guard parts.count == 2, parts[0].lowercased() == "wait", let seconds = Int(parts[1]), seconds >= 0
                else { continue }
                return min(.seconds(seconds), configuration.maxPreferWait)
            }
        }
        return nil
    }

    // MARK: Create

    func createJobs(_ body: ByteBuffer, principal: Principal, wait: Duration?) async throws -> Answer {
        let items: [JSONValue]
        let batch: Bool
        switch try JSON.parse(body) {
        case .object(let object):
            items = [.object(object)]
            batch = false
        case .array(let array):
            guard !array.isEmpty else { throw Problem.invalid("the array holds no jobs") }
            guard array.count <= configuration.maxBatch else {
                throw Problem.invalid("at most \(configuration.maxBatch) jobs per request, not \(array.count)")
            }
            items = array
            batch = true
        default:
            throw Problem.invalid("the body must be a job (a JSON object) or an array of jobs")
        }
        var accepted: [(index: Int, request: GenerationRequest)] = []
        var problems: [FieldProblem] = []
        for (index, item) in items.enumerated() {
            let prefix = batch ? "[\(index)]" : ""
            func field(_ name: String?) -> String? {
                guard let name else { return batch ? prefix : nil }
                return batch ? prefix + "." + name : name
            }
            switch makeRequest(item, index: index, principal: principal) {
            case .success(let request): accepted.append((index, request))
            case .failure(let error): problems.append(FieldProblem(field: field(error.field), message: error.message))
            }
        }
        if !batch, let problem = problems.first {
            throw Problem(
                .unprocessableContent,
                "Invalid Request",
                "\(problem.field.map { "\($0): " } ?? "")\(problem.message)",
                errors: [problem]
            )
        }
        let ids = accepted.isEmpty ? [] : try await generator.submit(accepted.map(\.request))
        var created: [(index: Int, id: JobID)] = []
        for ((index, request), id) in zip(accepted, ids) {
            if generator.isInvalidSubmission(id) {
                let error = await generator.result(for: id).error
                let name = error?.field
                let fieldName = batch ? "[\(index)]" + (name.map { "." + $0 } ?? "") : name
                problems.append(FieldProblem(field: fieldName, message: error?.message ?? "is not valid"))
            } else {
                remember(id, project: request.project, campaign: request.campaign ?? request.project)
                created.append((index, id))
            }
        }
        if created.isEmpty {
            let first = problems.first
            let detail =
                batch
                ? "no job in the array is valid"
                : "\(first?.field.map { "\($0): " } ?? "")\(first?.message ?? "the job is not valid")"
            throw Problem(.unprocessableContent, "Invalid Request", detail, errors: problems.sorted { ($0.field ?? "") < ($1.field ?? "") })
        }
        var applied: HTTPFields = [:]
        if let wait {
            await waitForResults(created.map(\.id), upTo: wait)
            applied[.preferenceApplied] = "wait=\(Int(wait.seconds))"
        }
        var records: [JobRecord] = []
        for (_, id) in created {
            if let record = try await generator.store.job(id) { records.append(record) }
        }
        let done = records.allSatisfy { $0.state.isFinal }
        let status: HTTPResponse.Status = done ? .ok : .accepted
        if !batch, let record = records.first {
            return Answer(
                status: status,
                body: render(record, principal),
                location: "/v1/jobs/\(record.id.rawValue)",
                headers: applied
            )
        }
        var body: [String: JSONValue] = [
            "object": .string("list"),
            "data": .array(records.map { render($0, principal) }),
        ]
        if !problems.isEmpty {
            body["errors"] = .array(
                problems.map { problem in
                    .object(["field": Resources.optional(problem.field), "message": .string(problem.message)])
                }
            )
        }
        return Answer(status: status, body: .object(body), headers: applied)
    }

    /// One job of a create: the JSONL line's fields; the project is the key's (an admin key may name another of
    /// its tenant's), the user the key's id unless given; project and campaign are qualified by the tenant.
    func makeRequest(_ item: JSONValue, index: Int, principal: Principal) -> Result<GenerationRequest, CampaignLineError> {
        guard case .object(var object) = item else {
            return .failure(CampaignLineError(line: index + 1, field: nil, message: "must be a JSON object"))
        }
        var project = principal.project
        if let value = object.removeValue(forKey: "project"), value != .null {
            guard case .string(let name) = value, APIKeys.validName(name) else {
                return .failure(
                    CampaignLineError(line: index + 1, field: "project", message: "must be 1 to 64 letters, digits, '.', '_' or '-'")
                )
            }
            guard principal.admin || name == principal.project else {
                return .failure(
                    CampaignLineError(line: index + 1, field: "project", message: "this key creates jobs in project \(principal.project) only")
                )
            }
            project = name
        }
        let userGiven = object["user"].map { $0 != .null } ?? false
        return CampaignFile.request(from: object, line: index + 1, defaultID: "").map { request in
            var request = request
            request.project = principal.qualified(project)
            request.campaign = request.campaign.map(principal.qualified)
            if !userGiven { request.user = principal.keyID }
            return request
        }
    }

    /// Waits until every job has its result, or `limit` passes.
    func waitForResults(_ ids: [JobID], upTo limit: Duration) async {
        guard limit > .zero else { return }
        let generator = self.generator
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for id in ids { _ = await generator.result(for: id) }
            }
            group.addTask { try? await Task.sleep(for: limit) }
            await group.next()
            group.cancelAll()
        }
    }

    // MARK: List

    func listJobs(_ request: Request, principal: Principal) async throws -> Answer {
        try Problem.checkParameters(request, accepts: ["project", "state", "user", "provider", "campaign", "limit", "cursor"])
        let parameters = request.uri.queryParameters
        var query = JobQuery()
        query.project = principal.qualified(try project(parameters["project"].map(String.init), principal))
        if let states = parameters["state"] {
            var set = Set<JobState>()
            for name in states.split(separator: ",") {
                guard let state = JobState(rawValue: String(name).trimmingCharacters(in: .whitespaces)) else {
                    throw Problem.invalid(
                        "state must be one or more of \(JobState.allCases.map(\.rawValue).joined(separator: ", ")), not \"\(name)\"",
                        field: "state"
                    )
                }
                set.insert(state)
            }
            query.states = set
        }
        query.user = parameters["user"].map(String.init)
        query.provider = parameters["provider"].map(String.init)
        query.campaign = parameters["campaign"].map { principal.qualified(String($0)) }
        var limit = 100
        if let text = parameters["limit"] {
            guard let value = Int(text), (1...1000).contains(value) else {
                throw Problem.invalid("limit must be a whole number from 1 to 1000", field: "limit")
            }
            limit = value
        }
        query.limit = limit
        if let cursor = parameters["cursor"] {
            guard let after = Int64(cursor), after >= 0 else {
                throw Problem.invalid("cursor must be a next_cursor from an earlier page", field: "cursor")
            }
            query.afterSequence = after
        }
        let records = try await generator.store.jobs(matching: query)
        let next: JSONValue = records.count == limit ? .string(String(records.last!.sequence)) : .null
        return Answer(
            status: .ok,
            body: .object([
                "object": .string("list"),
                "data": .array(records.map { render($0, principal) }),
                "next_cursor": next,
            ])
        )
    }

    /// The project a query names: the key's own by default; another of the tenant's for an admin key only.
    func project(_ name: String?, _ principal: Principal) throws -> String {
        guard let name, name != principal.project else { return principal.project }
        guard APIKeys.validName(name) else {
            throw Problem.invalid("project must be 1 to 64 letters, digits, '.', '_' or '-'", field: "project")
        }
        guard principal.admin else {
            throw Problem(.forbidden, "Forbidden", "this key sees project \(principal.project) only")
        }
        return name
    }

    // MARK: Cancel

    func cancel(_ context: PargenRequestContext, _ principal: Principal) async throws -> Answer {
        let record = try await ownedJob(context, principal)
        let outcome: CancelOutcome
        do {
            outcome = try await generator.cancel(record.id)
        } catch let error as StoreError where error.code == .invalidState {
            throw Problem(.conflict, "Conflict", "job \(record.id) can no longer be cancelled: \(error.message)")
        }
        switch outcome {
        case .cancelled:
            let updated = try await generator.store.job(record.id) ?? record
            return Answer(status: .ok, body: render(updated, principal))
        case .requested:
            // The provider stops the task; the job ends as cancelled when its call sees that (follow its events).
            let updated = try await generator.store.job(record.id) ?? record
            return Answer(status: .accepted, body: render(updated, principal))
        case .notCancellable(let reason):
            throw Problem(
                .conflict,
                "Conflict",
                "job \(record.id) is in a call to its provider that cannot be stopped (\(reason)); it runs to its end"
            )
        }
    }

    // MARK: Artifact

    func artifact(_ record: JobRecord, request: Request, context: PargenRequestContext) async throws -> Response {
        guard let outcome = record.outcome else {
            throw Problem(.notFound, "Not Found", "job \(record.id) has no artifact (it is \(record.state.rawValue))")
        }
        let artifact = outcome.artifact
        let path = artifact.url.path
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
            let size = (attributes[.size] as? NSNumber)?.int64Value
        else {
            throw Problem(.gone, "Gone", "the artifact of job \(record.id) is no longer on this server's disk")
        }
        var headers: HTTPFields = [
            .contentType: artifact.contentType,
            .acceptRanges: "bytes",
            .eTag: "\"\(artifact.sha256)\"",
        ]
        var status = HTTPResponse.Status.ok
        var range: ClosedRange<Int64> = 0...max(0, size - 1)
        if let header = request.headers[.range] {
            guard let requested = Self.byteRange(header, size: size) else {
                headers[.contentRange] = "bytes */\(size)"
                throw Problem(.rangeNotSatisfiable, "Range Not Satisfiable", "the file has \(size) bytes", headers: headers)
            }
            range = requested
            status = .partialContent
            headers[.contentRange] = "bytes \(range.lowerBound)-\(range.upperBound)/\(size)"
        }
        let length = size == 0 ? 0 : range.upperBound - range.lowerBound + 1
        headers[.contentLength] = String(length)
        guard length > 0 else { return Response(status: status, headers: headers, body: .init()) }
        let body = try await FileIO().loadFile(
            path: path,
            range: Int(range.lowerBound)...Int(range.upperBound),
            context: context
        )
        return Response(status: status, headers: headers, body: body)
    }

    /// One range of `bytes=A-B`, `bytes=A-` or `bytes=-N` within a file of `size` bytes; `nil` when it cannot
    /// be served (several ranges, none inside the file, not a byte range).
    static func byteRange(_ header: String, size: Int64) -> ClosedRange<Int64>? {
        let value = header.trimmingCharacters(in: .whitespaces)
        guard value.lowercased().hasPrefix("bytes="), size > 0 else { return nil }
        let spec = value.dropFirst(6)
        guard !spec.contains(","), let dash = spec.firstIndex(of: "-") else { return nil }
        let first = spec[..<dash].trimmingCharacters(in: .whitespaces)
        let last = spec[spec.index(after: dash)...].trimmingCharacters(in: .whitespaces)
        if first.isEmpty {
            guard let count = Int64(last), count > 0 else { return nil }
            return max(0, size - count)...(size - 1)
        }
        guard let start = Int64(first), start >= 0, start < size else { return nil }
        if last.isEmpty { return start...(size - 1) }
        guard let end = Int64(last), end >= start else { return nil }
        return start...min(end, size - 1)
    }

    // MARK: Idempotency

    /// Runs a create under its `Idempotency-Key`, if it has one (Stripe's semantics): the same key and body
    /// replay the first answer; a different body is 422; the first request still running is 409. Answers below
    /// 500 are kept (but 409 and 429, which say "try again"); a failure on the server forgets the key.
    func idempotent(
        _ request: Request,
        principal: Principal,
        body: ByteBuffer,
        _ run: () async throws -> Answer
    ) async throws -> Response {
        guard let key = request.headers[.idempotencyKey] else { return try await run().response }
        guard !key.isEmpty, key.utf8.count <= 255 else {
            throw Problem.invalid("Idempotency-Key must be 1 to 255 characters", field: "Idempotency-Key")
        }
        var hasher = SHA256()
        hasher.update(data: Data("\(request.method.rawValue) \(request.uri.path)?\(request.uri.query ?? "")\n".utf8))
        hasher.update(data: Data(buffer: body))
        let fingerprint = APIKeys.hex(hasher.finalize())
        switch try await serviceStore.claimIdempotencyKey(
            scope: principal.tenant,
            key: key,
            fingerprint: fingerprint,
            now: Date(),
            lockTimeout: configuration.idempotencyLockTimeout,
            retention: configuration.idempotencyRetention
        ) {
        case .replay(let stored):
            var headers: HTTPFields = [.contentType: stored.contentType, .idempotentReplayed: "true"]
            if let location = stored.location { headers[.location] = location }
            return Response(
                status: HTTPResponse.Status(code: stored.status),
                headers: headers,
                body: .init(byteBuffer: ByteBuffer(bytes: stored.body))
            )
        case .inProgress:
            throw Problem(
                .conflict,
                "Conflict",
                "a request with this Idempotency-Key is still being processed; retry once it has been answered",
                headers: [.retryAfter: "1"]
            )
        case .mismatch:
            throw Problem(
                .unprocessableContent,
                "Idempotency Key Reused",
                "this Idempotency-Key was used with a different request",
                errors: [FieldProblem(field: "Idempotency-Key", message: "was used with a different request")]
            )
        case .proceed:
            do {
                let answer = try await run()
                try await serviceStore.completeIdempotencyKey(
                    scope: principal.tenant,
                    key: key,
                    response: StoredResponse(
                        status: Int(answer.status.code),
                        contentType: "application/json",
                        location: answer.location,
                        body: JSON.bytes(answer.body)
                    )
                )
                return answer.response
            } catch let problem as Problem
                where problem.status.code < 500 && problem.status != .conflict && problem.status != .tooManyRequests
            {
                var object = problem.body
                object["instance"] = .string(request.uri.path)
                try await serviceStore.completeIdempotencyKey(
                    scope: principal.tenant,
                    key: key,
                    response: StoredResponse(
                        status: Int(problem.status.code),
                        contentType: "application/problem+json",
                        location: nil,
                        body: JSON.bytes(.object(object))
                    )
                )
                throw problem
            } catch {
                try? await serviceStore.releaseIdempotencyKey(scope: principal.tenant, key: key)
                throw error
            }
        }
    }
}
