import Foundation
import Hummingbird
import NIOCore
import NIOFoundationCompat
import Pargen

extension PargenServer {
    func addCampaignRoutes(_ api: RouterGroup<PargenRequestContext>) {
        api.post("campaigns") { request, context -> Response in
            let principal = try context.requirePrincipal()
            try Problem.checkParameters(request, accepts: ["cancel_removed", "name", "project"])
            var request = request
            let body = try await request.collectBody(upTo: self.configuration.maxUploadBytes)
            return try await self.idempotent(request, principal: principal, body: body) {
                try await self.upload(body, request: request, principal: principal)
            }
        }
        api.get("campaigns/{id}") { request, context -> Response in
            let principal = try context.requirePrincipal()
            let name = try context.parameters.require("id")
            return try await self.campaign(name, request: request, principal: principal).response
        }
    }

    /// `POST /v1/campaigns?name=NAME`: a CSV (`text/csv`) or JSONL (`application/jsonl`,
    /// `application/x-ndjson`) file, checked line by line as `pargen run` checks it. Good lines become jobs in
    /// the campaign; each bad one is reported with its line, field and reason.
    func upload(_ body: ByteBuffer, request: Request, principal: Principal) async throws -> Answer {
        let contentType = (request.headers[.contentType] ?? "").lowercased()
        let format: CampaignFile.Format
        if contentType.hasPrefix("text/csv") {
            format = .csv
        } else if contentType.hasPrefix("application/jsonl") || contentType.hasPrefix("application/x-ndjson")
            || contentType.hasPrefix("application/json-lines")
        {
            format = .jsonl
        } else {
            throw Problem(
                .unsupportedMediaType,
                "Unsupported Media Type",
                "send the campaign as text/csv or application/jsonl, not \(contentType.isEmpty ? "no Content-Type" : contentType)"
            )
        }
        let parameters = request.uri.queryParameters
        guard let name = parameters["name"].map(String.init), APIKeys.validName(name) else {
            throw Problem.invalid("name (the campaign's) must be 1 to 64 letters, digits, '.', '_' or '-'", field: "name")
        }
        let project = try project(parameters["project"].map(String.init), principal)
        let cancelRemoved: Bool
        switch parameters["cancel_removed"].map(String.init) {
        case nil, "false"?: cancelRemoved = false
        case "true"?: cancelRemoved = true
        case let other?:
            throw Problem.invalid("cancel_removed must be true or false, not \(other.prefix(32))", field: "cancel_removed")
        }
        let file = CampaignFile.parse(Data(buffer: body), format: format)
        var problems = file.errors.map { FieldProblem(field: $0.field, message: $0.message, line: $0.line) }
        var requests: [(line: Int, request: GenerationRequest)] = []
        // Uploading the same file again adds nothing twice (as `pargen enqueue` does), and a line is keyed by what
        // it asks for, not where it is: an edited file re-uploaded adds its new and changed lines only. A campaign
        // begun with `NAME:line-N` keys (before content keys) keeps them.
        let earlier = try await generator.store.jobs(matching: JobQuery(campaign: principal.qualified(name), limit: 1))
        let byLineNumber = earlier.first?.request.idempotencyKey?.hasPrefix("\(name):line-") == true
        for (line, key) in zip(file.lines, CampaignRunner.lineKeys(of: file)) {
            var request = line.request
            // A line's own project is not the tenant's to choose here: the upload's project holds every line.
            request.project = principal.qualified(project)
            request.campaign = principal.qualified(name)
            if request.idempotencyKey == nil {
                request.idempotencyKey = byLineNumber ? "\(name):line-\(line.line)" : "\(name):\(key)"
            }
            requests.append((line.line, request))
        }
        // The campaign's waiting jobs of lines this upload no longer has (removed, or the old version of an edited
        // line), when asked: cancelled before the new lines go in. Lines with keys of their own are left.
        var cancelled: [JSONValue] = []
        if cancelRemoved && !requests.isEmpty {
            let kept = Set(requests.compactMap(\.request.idempotencyKey))
            cancelled = try await cancelRemovedLines(of: principal.qualified(name), name: name, keeping: kept).map {
                .string($0.rawValue)
            }
        }
        let ids = requests.isEmpty ? [] : try await generator.submit(requests.map(\.request))
        var created: [JSONValue] = []
        for ((line, request), id) in zip(requests, ids) {
            if generator.isInvalidSubmission(id) {
                let error = await generator.result(for: id).error
                problems.append(FieldProblem(field: error?.field, message: error?.message ?? "is not valid", line: line))
            } else {
                remember(id, project: request.project, campaign: request.campaign ?? request.project)
                created.append(.string(id.rawValue))
            }
        }
        problems.sort { ($0.line ?? 0) < ($1.line ?? 0) }
        if created.isEmpty {
            let detail = problems.isEmpty ? "the file has no lines (send one request per line)" : "no line of the file is valid"
            throw Problem(.unprocessableContent, "Invalid Campaign", detail, errors: problems)
        }
        return Answer(
            status: .accepted,
            body: .object([
                "object": .string("campaign_upload"),
                "campaign": .string(name),
                "project": .string(project),
                "accepted": .number(Double(created.count)),
                "job_ids": .array(created),
                "cancelled_job_ids": .array(cancelled),
                "errors": .array(
                    problems.map {
                        .object([
                            "line": $0.line.map { .number(Double($0)) } ?? .null,
                            "field": Resources.optional($0.field),
                            "message": .string($0.message),
                        ])
                    }
                ),
            ]),
            location: "/v1/campaigns/\(name)"
        )
    }

    /// Cancels the waiting jobs of `campaign` keyed as its lines (`NAME:` and a line key) whose keys are not in
    /// `kept`; a job under way, done, or whose call cannot be stopped is left, as `DELETE /v1/jobs/{id}` would.
    func cancelRemovedLines(of campaign: String, name: String, keeping kept: Set<String>) async throws -> [JobID] {
        // `NAME:` and a line key, or the `NAME:line-N` keys of a campaign uploaded before content keys.
        let prefix = "\(name):"
        let removed = try await CampaignRunner.waitingLines(
            in: generator.store,
            campaign: campaign,
            isLine: { key in
                guard key.hasPrefix(prefix) else { return false }
                let line = String(key.dropFirst(prefix.count))
                return CampaignRunner.isLineKey(line) || line.hasPrefix("line-")
            },
            notIn: kept
        )
        var cancelled: [JobID] = []
        for job in removed {
            do {
                if case .cancelled = try await generator.cancel(job.id) { cancelled.append(job.id) }
            } catch let error as StoreError where error.code == .invalidState || error.code == .notFound {
                // Taken by a worker, or finished, since it was read: it runs or ran; leave it. Any other failure
                // (the store unreachable) is the upload's, not a silent "nothing to cancel".
                continue
            }
        }
        return cancelled
    }

    /// A campaign's progress, spend, reserved and projected cost, and ETA.
    ///
    /// Projected cost is what is charged and reserved now, plus each job still to run at the average charge of
    /// the campaign's succeeded jobs (unknown until one has succeeded). The ETA is the jobs still to run at the
    /// rate jobs have finished since the campaign's first one was created (durable stores only: they keep wall
    /// times).
    func campaign(_ name: String, request: Request, principal: Principal) async throws -> Answer {
        guard APIKeys.validName(name) else { throw Problem.notFound("campaign \(name.prefix(64))") }
        try Problem.checkParameters(request, accepts: ["project"])
        let project = try project(request.uri.queryParameters["project"].map(String.init), principal)
        let records = try await generator.store.jobs(
            matching: JobQuery(campaign: principal.qualified(name), project: principal.qualified(project))
        )
        guard !records.isEmpty else { throw Problem.notFound("campaign \(name)") }
        let summary = CampaignSummary(records)
        let (counts, ledger, finished, remaining) = (summary.counts, summary.ledger, summary.finished, summary.remaining)
        let projected = summary.projected.map(Resources.money) ?? .null
        var eta: JSONValue = .null
        if remaining == 0 {
            eta = .number(0)
        } else if generator.store.outlivesProcess, finished > 0 {
            let now = Date().timeIntervalSince1970
            let first = records.map(\.enqueuedAt.seconds).min() ?? now
            let elapsed = max(0.001, now - first)
            eta = .number((Double(remaining) / (Double(finished) / elapsed)).rounded())
        }
        let budget = generator.costMonitor.limit(of: .campaign(principal.qualified(name)))
        return Answer(
            status: .ok,
            body: .object([
                "object": .string("campaign"),
                "id": .string(name),
                "project": .string(project),
                "jobs": .number(Double(records.count)),
                "counts": .object(
                    Dictionary(uniqueKeysWithValues: JobState.allCases.map { ($0.rawValue, .number(Double(counts[$0, default: 0]))) })
                ),
                "progress": .number(Double(finished) / Double(records.count)),
                "spent": Resources.money(ledger.charged),
                "saved": Resources.money(summary.saved),
                "reused": .number(Double(summary.reused)),
                "reserved": Resources.money(ledger.pending),
                "projected": projected,
                "budget": budget.map(Resources.money) ?? .null,
                "eta_seconds": eta,
            ])
        )
    }
}
