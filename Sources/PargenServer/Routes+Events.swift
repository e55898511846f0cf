import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Pargen
import ServiceLifecycle

extension PargenServer {
    func addEventRoutes(_ api: RouterGroup<PargenRequestContext>) {
        api.get("events") { request, context -> Response in
            let principal = try context.requirePrincipal()
            return try self.eventStream(request, principal: principal)
        }
    }

    /// `GET /v1/events`: Server-Sent Events of the caller's tenant (`job`, `campaign` and `project` filter them),
    /// from after `Last-Event-ID` (header, or `last_event_id` in the query) when given, else from now.
    func eventStream(_ request: Request, principal: Principal) throws -> Response {
        try Problem.checkParameters(request, accepts: ["job", "campaign", "project", "last_event_id"])
        let parameters = request.uri.queryParameters
        let job = parameters["job"].map(String.init)
        let campaign = parameters["campaign"].map { principal.qualified(String($0)) }
        let project = try parameters["project"].map { principal.qualified(try self.project(String($0), principal)) }
        var start = events.lastID
        if let text = request.headers[.lastEventID] ?? parameters["last_event_id"].map(String.init) {
            guard let id = UInt64(text.trimmingCharacters(in: .whitespaces)) else {
                throw Problem.invalid("Last-Event-ID must be an event id from this stream", field: "Last-Event-ID")
            }
            start = id
        }
        let events = self.events
        let first = start
        let heartbeat = configuration.eventHeartbeat
        let body = ResponseBody { writer in
            try await withGracefulShutdownHandler {
                var cursor = first
                try await writer.write(ByteBuffer(string: "retry: 2000\n\n"))
                var told = false
                while !events.isClosed {
                    let (batch, gap) = events.events(after: cursor)
                    if gap && !told {
                        // Events after the client's last were dropped: it should re-read what it follows.
                        try await writer.write(ByteBuffer(string: "event: reset\ndata: {\"type\":\"reset\"}\n\n"))
                    }
                    told = true
                    if batch.isEmpty {
                        await events.wait(after: cursor, timeout: heartbeat)
                        if events.events(after: cursor, limit: 1).events.isEmpty {
                            try await writer.write(ByteBuffer(string: ": keep-alive\n\n"))
                        }
                        continue
                    }
                    var chunk = ""
                    for event in batch {
                        cursor = event.id
                        guard event.visible(to: principal, job: job, project: project, campaign: campaign) else { continue }
                        let data = String(decoding: JSON.bytes(event.data(for: principal)), as: UTF8.self)
                        chunk += "id: \(event.id)\nevent: \(event.type)\ndata: \(data)\n\n"
                    }
                    if !chunk.isEmpty { try await writer.write(ByteBuffer(string: chunk)) }
                }
                try await writer.finish(nil)
            } onGracefulShutdown: {
                // Streams never end by themselves: shutdown ends them all, so the server can finish.
                events.close()
            }
        }
        return Response(
            status: .ok,
            headers: [.contentType: "text/event-stream", .cacheControl: "no-store", HTTPField.Name("X-Accel-Buffering")!: "no"],
            body: body
        )
    }

    func addOperationRoutes(_ router: Router<PargenRequestContext>) {
        router.get("healthz") { _, _ -> Response in JSON.response(.ok, .object(["status": .string("ok")])) }
        router.get("readyz") { _, _ -> Response in
            // Ready when the store answers within 2 s and the engine takes work.
            let store = self.generator.store
            let answered = await withTaskGroup(of: Bool.self) { group in
                group.addTask { (try? await store.counts()) != nil }
                group.addTask {
                    try? await Task.sleep(for: .seconds(2))
                    return false
                }
                let first = await group.next() ?? false
                group.cancelAll()
                return first
            }
            guard answered else {
                throw Problem(.serviceUnavailable, "Service Unavailable", "the job store does not answer")
            }
            if let halt = self.generator.haltReason {
                throw Problem(.serviceUnavailable, "Service Unavailable", "the engine stopped taking work: \(halt)")
            }
            return JSON.response(.ok, .object(["status": .string("ready")]))
        }
        router.get("metrics") { request, _ -> Response in
            if let token = self.configuration.metricsToken, request.headers[.authorization] != "Bearer \(token)" {
                throw Problem(.unauthorized, "Unauthorized", "the metrics take the configured bearer token")
            }
            return Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(string: await self.metrics.scrape(generator: self.generator)))
            )
        }
        router.get("openapi.yaml") { _, _ -> Response in
            Response(
                status: .ok,
                headers: [.contentType: "application/yaml"],
                body: .init(byteBuffer: ByteBuffer(string: OpenAPIDocument.yaml))
            )
        }
    }
}
