import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Pargen

extension PargenServer {
    /// The event types a webhook may ask for.
    static let eventTypes: Set<String> = ["job.status", "job.finished", "quota.hold", "budget.hold", "budget.alert", "*"]

    func addWebhookRoutes(_ api: RouterGroup<PargenRequestContext>) {
        api.post("webhooks") { request, context -> Response in
            let principal = try self.requireAdmin(context, "registering webhooks")
            var request = request
            let body = try await request.collectBody(upTo: self.configuration.maxJSONBodyBytes)
            return try await self.idempotent(request, principal: principal, body: body) {
                try await self.createWebhook(body, principal: principal)
            }
        }
        api.get("webhooks") { _, context -> Response in
            let principal = try self.requireAdmin(context, "listing webhooks")
            let hooks = try await self.serviceStore.webhooks(tenant: principal.tenant)
            return JSON.response(.ok, .object(["object": .string("list"), "data": .array(hooks.map { Self.render($0, secret: false) })]))
        }
        api.delete("webhooks/{id}") { _, context -> Response in
            let principal = try self.requireAdmin(context, "removing webhooks")
            let id = try context.parameters.require("id")
            guard try await self.serviceStore.removeWebhook(id: id, tenant: principal.tenant) else {
                throw Problem.notFound("webhook \(id.prefix(64))")
            }
            self.webhooks.webhooksChanged()
            return Response(status: .noContent)
        }
        api.get("webhooks/{id}/deliveries") { _, context -> Response in
            let principal = try self.requireAdmin(context, "reading webhook deliveries")
            let id = try context.parameters.require("id")
            guard try await self.serviceStore.webhooks(tenant: principal.tenant).contains(where: { $0.id == id }) else {
                throw Problem.notFound("webhook \(id.prefix(64))")
            }
            let deliveries = try await self.serviceStore.deliveries(webhookID: id, tenant: principal.tenant, limit: 200)
            return JSON.response(.ok, .object(["object": .string("list"), "data": .array(deliveries.map(Self.render))]))
        }
        api.post("webhooks/{id}/deliveries/{delivery}/redeliver") { _, context -> Response in
            let principal = try self.requireAdmin(context, "redelivering webhooks")
            let id = try context.parameters.require("id")
            let deliveryID = try context.parameters.require("delivery")
            guard var delivery = try await self.serviceStore.delivery(id: deliveryID, tenant: principal.tenant),
                delivery.webhookID == id
            else { throw Problem.notFound("delivery \(deliveryID.prefix(64)) of webhook \(id.prefix(64))") }
            delivery.state = .pending
            delivery.nextAttemptAt = Date()
            try await self.serviceStore.saveDelivery(delivery)
            self.webhooks.poke()
            return JSON.response(.accepted, Self.render(delivery))
        }
    }

    func requireAdmin(_ context: PargenRequestContext, _ what: String) throws -> Principal {
        let principal = try context.requirePrincipal()
        guard principal.admin else { throw Problem(.forbidden, "Forbidden", "\(what) takes an admin key") }
        return principal
    }

    /// `POST /v1/webhooks` with `{"url": U, "events": ["job.finished", ...]}` (every event when `events` is left
    /// out). The answer carries the signing secret, this once.
    func createWebhook(_ body: ByteBuffer, principal: Principal) async throws -> Answer {
        guard case .object(let object) = try JSON.parse(body) else {
            throw Problem.invalid("the body must be a JSON object with url and events")
        }
        if let unknown = object.keys.sorted().first(where: { !["url", "events"].contains($0) }) {
            throw Problem.invalid("\(unknown) is not a known field", field: unknown)
        }
        guard case .string(let url) = object["url"] else { throw Problem.invalid("url is required", field: "url") }
        if let refusal = WebhookTarget.check(url, allowPrivate: configuration.allowPrivateWebhookTargets) {
            throw Problem.invalid("url \(refusal)", field: "url")
        }
        var events = ["*"]
        switch object["events"] {
        case nil, .null: break
        case .array(let values):
            events = []
            for value in values {
                guard case .string(let name) = value, Self.eventTypes.contains(name) else {
                    throw Problem.invalid(
                        "events must name some of \(Self.eventTypes.sorted().joined(separator: ", "))",
                        field: "events"
                    )
                }
                events.append(name)
            }
            if events.isEmpty { throw Problem.invalid("events must name at least one event type", field: "events") }
        default:
            throw Problem.invalid("events must be an array of event types", field: "events")
        }
        let hook = WebhookRecord(
            id: "wh_" + APIKeys.hex((0..<8).map { _ in UInt8.random(in: 0...255) }),
            tenant: principal.tenant,
            url: url,
            events: events,
            secret: WebhookSignature.makeSecret(),
            createdAt: Date().storable
        )
        try await serviceStore.addWebhook(hook)
        webhooks.webhooksChanged()
        return Answer(status: .created, body: Self.render(hook, secret: true), location: "/v1/webhooks/\(hook.id)")
    }

    static func render(_ hook: WebhookRecord, secret: Bool) -> JSONValue {
        var object: [String: JSONValue] = [
            "object": .string("webhook"),
            "id": .string(hook.id),
            "url": .string(hook.url),
            "events": .array(hook.events.map(JSONValue.string)),
            "created_at": .string(Resources.date(.seconds(hook.createdAt.timeIntervalSince1970))),
        ]
        if secret { object["secret"] = .string(hook.secret) }
        return .object(object)
    }

    static func render(_ delivery: WebhookDelivery) -> JSONValue {
        .object([
            "object": .string("webhook_delivery"),
            "id": .string(delivery.id),
            "webhook_id": .string(delivery.webhookID),
            "event_type": .string(delivery.eventType),
            "state": .string(delivery.state.rawValue),
            "next_attempt_at": delivery.nextAttemptAt.map { .string(Resources.date(.seconds($0.timeIntervalSince1970))) } ?? .null,
            "attempts": .array(
                delivery.attempts.map { attempt in
                    .object([
                        "at": .string(Resources.date(.seconds(attempt.at.timeIntervalSince1970))),
                        "status": attempt.status.map { .number(Double($0)) } ?? .null,
                        "error": Resources.optional(attempt.error),
                        "milliseconds": .number(Double(attempt.milliseconds)),
                    ])
                }
            ),
            "payload": (try? JSONDecoder().decode(JSONValue.self, from: Data(delivery.payload))) ?? .null,
        ])
    }
}
