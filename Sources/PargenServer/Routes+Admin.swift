import Foundation
import Hummingbird
import NIOCore
import Pargen

extension PargenServer {
    func addAdminRoutes(_ api: RouterGroup<PargenRequestContext>) {
        api.get("dead-letters") { request, context -> Response in
            let principal = try context.requirePrincipal()
            try Problem.checkParameters(request, accepts: ["project"])
            let project = try self.project(request.uri.queryParameters["project"].map(String.init), principal)
            let records = try await self.generator.store.jobs(
                matching: JobQuery(
                    states: [.deadLettered, .needsReconciliation],
                    project: principal.qualified(project),
                    limit: 1000
                )
            )
            return JSON.response(
                .ok,
                .object(["object": .string("list"), "data": .array(records.map { self.render($0, principal) })])
            )
        }
        api.post("dead-letters/{id}/retry") { _, context -> Response in
            let principal = try context.requirePrincipal()
            let record = try await self.ownedJob(context, principal)
            guard record.state == .deadLettered || record.state == .needsReconciliation else {
                throw Problem(.conflict, "Conflict", "job \(record.id) is \(record.state.rawValue), not a dead letter")
            }
            try await self.generator.requeue(record.id)
            let updated = try await self.generator.store.job(record.id) ?? record
            return JSON.response(.ok, self.render(updated, principal))
        }
        api.delete("dead-letters/{id}") { _, context -> Response in
            let principal = try context.requirePrincipal()
            let record = try await self.ownedJob(context, principal)
            guard principal.admin else {
                throw Problem(.forbidden, "Forbidden", "purging dead letters takes an admin key")
            }
            guard record.state == .deadLettered || record.state == .needsReconciliation else {
                throw Problem(.conflict, "Conflict", "job \(record.id) is \(record.state.rawValue), not a dead letter")
            }
            _ = try await self.generator.store.purge([record.id])
            return Response(status: .noContent)
        }
        api.get("providers") { _, context -> Response in
            return JSON.response(.ok, await self.providers())
        }
        api.get("stats") { request, context -> Response in
            let principal = try context.requirePrincipal()
            try Problem.checkParameters(request, accepts: ["project"])
            let project = try self.project(request.uri.queryParameters["project"].map(String.init), principal)
            return JSON.response(.ok, try await self.stats(project: project, principal: principal))
        }
        api.get("budgets") { _, context -> Response in
            let principal = try context.requirePrincipal()
            return JSON.response(.ok, await self.budgets(principal))
        }
        api.put("budgets") { request, context -> Response in
            let principal = try context.requirePrincipal()
            guard principal.admin else { throw Problem(.forbidden, "Forbidden", "setting budgets takes an admin key") }
            var request = request
            let body = try await request.collectBody(upTo: self.configuration.maxJSONBodyBytes)
            try await self.setBudget(body, principal: principal)
            return JSON.response(.ok, await self.budgets(principal))
        }
    }

    /// Each provider: health and circuit, window and slot use, cooldown, calls and 429s, latency and prices.
    func providers() async -> JSONValue {
        let stats = await generator.systemStats()
        let health = Dictionary(uniqueKeysWithValues: stats.loadBalancer.map { ($0.name, $0) })
        var items: [JSONValue] = []
        for descriptor in generator.providerDescriptors {
            let name = descriptor.name
            let slots = stats.resourcePool.providers[name]
            let activity = stats.providers[name] ?? ProviderActivity()
            var object: [String: JSONValue] = [
                "name": .string(name),
                "kinds": .array(GenerationKind.allCases.filter { descriptor.capabilities.kinds.contains($0) }.map { .string($0.rawValue) }),
                "prices": .object([
                    "per_request": Resources.money(descriptor.pricing.perRequest),
                    "per_character": Resources.money(descriptor.pricing.perCharacter),
                    "per_audio_second": Resources.money(descriptor.pricing.perAudioSecond),
                    "per_video_second": Resources.money(descriptor.pricing.perVideoSecond),
                ]),
                "succeeded": .number(Double(activity.succeeded)),
                "failed_calls": .number(Double(activity.failedCalls)),
                "throttled": .number(Double(activity.throttled)),
                "latency_p50_seconds": Resources.seconds(activity.latency.p50),
                "latency_p95_seconds": Resources.seconds(activity.latency.p95),
            ]
            if let health = health[name] {
                object["circuit"] = .string(health.circuit.rawValue)
                object["error_rate"] = .number(health.errorRate)
                object["calls"] = .number(Double(health.calls))
            }
            if let slots {
                object["slots"] = .object([
                    "in_use": .number(Double(slots.inFlight)),
                    "limit": .number(Double(slots.limit)),
                    "peak": .number(Double(slots.peak)),
                ])
                object["window"] = .object([
                    "limit": slots.windowLimit.map { .number(Double($0)) } ?? .null,
                    "room": slots.windowRoom.map { .number(Double($0)) } ?? .null,
                ])
                object["cooldown_seconds"] = slots.cooldownLeft.map(Resources.seconds) ?? .null
            }
            items.append(.object(object))
        }
        return .object(["object": .string("list"), "data": .array(items)])
    }

    /// A project's jobs by state and money, and the service's admission figures.
    func stats(project: String, principal: Principal) async throws -> JSONValue {
        let records = try await generator.store.jobs(matching: JobQuery(project: principal.qualified(project)))
        let summary = CampaignSummary(records)
        let ledger = summary.ledger
        var counts: [String: JSONValue] = [:]
        for state in JobState.allCases { counts[state.rawValue] = .number(Double(summary.counts[state, default: 0])) }
        let limiter = await generator.systemStats().rateLimiter
        return .object([
            "object": .string("stats"),
            "project": .string(project),
            "jobs": .object(counts),
            "cost": Resources.ledger(ledger),
            "saved": Resources.money(summary.saved),
            "reused": .number(Double(summary.reused)),
            "admissions": .object([
                "admitted": .number(Double(limiter.admitted)),
                "waiting": .number(Double(limiter.waiting)),
                "denied": .object(
                    Dictionary(uniqueKeysWithValues: limiter.denied.map { ("\($0.key)", .number(Double($0.value))) })
                ),
            ]),
        ])
    }

    /// The tenant's budgets (its projects' and campaigns'), with what is charged and reserved against each.
    func budgets(_ principal: Principal) async -> JSONValue {
        let monitor = generator.costMonitor
        let usage = Dictionary(uniqueKeysWithValues: await generator.budgetUsage().map { ($0.scope, $0) })
        var scopes = Set(monitor.limits().keys)
        scopes.formUnion(usage.keys)
        var items: [JSONValue] = []
        for scope in scopes.sorted(by: { $0.description < $1.description }) {
            guard scope.kind != .global, let name = principal.local(scope.name) else { continue }
            if scope.kind == .project, !principal.admin, name != principal.project { continue }
            let used = usage[scope]
            let limit = monitor.limit(of: scope)
            items.append(
                .object([
                    "scope": .string(scope.kind.rawValue),
                    "name": .string(name),
                    "limit": limit.map(Resources.money) ?? .null,
                    "charged": Resources.money(used?.charged ?? .zero),
                    "reserved": Resources.money(used?.reserved ?? .zero),
                    "held": .number(Double(used?.held ?? 0)),
                    "utilization": used?.utilization.map { .number($0) } ?? .null,
                ])
            )
        }
        return .object(["object": .string("list"), "data": .array(items)])
    }

    /// `PUT /v1/budgets` with `{"scope": "project" | "campaign", "name": N, "limit": "12.50" | null}`.
    func setBudget(_ body: ByteBuffer, principal: Principal) async throws {
        guard case .object(let object) = try JSON.parse(body) else {
            throw Problem.invalid("the body must be a JSON object with scope, name and limit")
        }
        if let unknown = object.keys.sorted().first(where: { !["scope", "name", "limit"].contains($0) }) {
            throw Problem.invalid("\(unknown) is not a known field", field: unknown)
        }
        guard case .string(let kind) = object["scope"], kind == "project" || kind == "campaign" else {
            throw Problem.invalid("scope must be \"project\" or \"campaign\"", field: "scope")
        }
        guard case .string(let name) = object["name"], APIKeys.validName(name) else {
            throw Problem.invalid("name must be 1 to 64 letters, digits, '.', '_' or '-'", field: "name")
        }
        var limit: Money?
        switch object["limit"] {
        case .null: limit = nil
        case .string(let text):
            guard let amount = Money(parsing: text), amount >= .zero else {
                throw Problem.invalid("limit must be an amount in dollars such as \"12.50\", or null", field: "limit")
            }
            limit = amount
        case .number(let value):
            // Formatted with 9 decimals (nano-dollars), not `String(value)`: that writes 0.00001 as "1e-05".
            guard value.isFinite, value >= 0, value < 1e9, let amount = Money(parsing: String(format: "%.9f", value)) else {
                throw Problem.invalid("limit must be an amount in dollars such as \"12.50\", or null", field: "limit")
            }
            limit = amount
        default:
            throw Problem.invalid("limit is required: an amount in dollars such as \"12.50\", or null", field: "limit")
        }
        let qualified = principal.qualified(name)
        try await generator.setBudgetLimit(limit, for: kind == "project" ? .project(qualified) : .campaign(qualified))
    }
}
