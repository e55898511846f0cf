// The fake's Runway protocol: its routes, answers and errors, as FakeRoutes registers them.
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Pargen
import ZIPFoundation

extension FakeRoutes {
    /// Runway does not refuse over its concurrency: the task waits as THROTTLED (see ``gate``'s `queue`).
    static let runwayRefusals = Refusals(
        serverError: { json(.serviceUnavailable, ["error": "Service temporarily unavailable"]) },
        malformed: { text(.ok, "{\"id\": ") },
        overRate: { wait in
            json(
                .tooManyRequests,
                ["error": "You have exceeded the rate limit for task creation"],
                headers: retryAfter(wait)
            )
        },
        overConcurrency: { json(.tooManyRequests, ["error": "Too many tasks"]) },
        policy: { json(.badRequest, ["error": "Your prompt was flagged by our content moderation system"]) }
    )

    func registerRunway(_ router: Router<BasicRequestContext>) {
        @Sendable func create(_ request: Request, endpoint: String) async throws -> Response {
            guard bearerOK(request) else { return Self.json(.unauthorized, ["error": "Invalid API key"]) }
            guard Self.header(request, "X-Runway-Version") == "2024-11-06" else {
                return Self.json(
                    .badRequest,
                    ["error": "The X-Runway-Version header is required and must be 2024-11-06"]
                )
            }
            let json = try await jsonBody(request) ?? [:]
            let prompt = json["promptText"] as? String ?? ""
            let ratio = json["ratio"] as? String ?? ""
            let duration = json["duration"] as? Int ?? 0
            guard !prompt.isEmpty, prompt.utf16.count <= 1000 else {
                return Self.json(
                    .badRequest,
                    ["error": "promptText must be 1 to 1000 characters", "issues": [["path": ["promptText"]]]]
                )
            }
            guard ["1280:720", "720:1280"].contains(ratio), (2...10).contains(duration) else {
                return Self.json(
                    .badRequest,
                    ["error": "Invalid ratio or duration", "issues": [["path": ["ratio"]], ["path": ["duration"]]]]
                )
            }
            if endpoint == "image_to_video", json["promptImage"] == nil {
                return Self.json(
                    .badRequest,
                    ["error": "promptImage is required", "issues": [["path": ["promptImage"]]]]
                )
            }
            if let refused = try await gate(request, endpoint, prompt, sync: false, queue: true, Self.runwayRefusals) {
                return refused
            }
            let task = state.createTask(prompt: prompt, video: true, prefix: "")
            try await hangIfChosen(prompt)
            return Self.json(.ok, ["id": "7f3a\(task.id)-0000-4000-8000-000000000000"].mapValues { $0 as Any })
        }
        router.post("/v1/text_to_video") { request, _ in try await create(request, endpoint: "text_to_video") }
        router.post("/v1/image_to_video") { request, _ in try await create(request, endpoint: "image_to_video") }
        router.get("/v1/tasks/{id}") { request, context -> Response in
            guard bearerOK(request) else { return Self.json(.unauthorized, ["error": "Invalid API key"]) }
            try await pause(options.latencySeconds)
            if state.chance(options.pollErrorRate) { return Self.text(.serviceUnavailable, "upstream busy") }
            let full = try context.parameters.require("id")
            guard let id = Self.runwayTaskNumber(full), let task = state.task(id) else {
                return Self.json(.notFound, ["error": "Task not found"])
            }
            var object: [String: Any] = ["id": full, "createdAt": ISO8601DateFormatter().string(from: Date())]
            switch phase(task) {
            case .waiting: object["status"] = "THROTTLED"
            case .running(let fraction):
                object["status"] = fraction < 0.05 ? "PENDING" : "RUNNING"
                object["progress"] = fraction
            case .succeeded:
                object["status"] = "SUCCEEDED"
                object["output"] = ["\(base)/download/\(id)?_jwt=fake"]
            case .failed(.moderation):
                object["status"] = "FAILED"
                object["failure"] = "The output was flagged by content moderation"
                object["failureCode"] = "SAFETY.OUTPUT.VIDEO"
            case .failed(.generic):
                object["status"] = "FAILED"
                object["failure"] = "An unexpected error occurred."
                object["failureCode"] = "INTERNAL.BAD_OUTPUT.CODE01"
            case .failed(.unknown):
                object["status"] = "FAILED"
                object["failure"] = "The task could not be completed."
            case .cancelled: object["status"] = "CANCELLED"
            }
            return Self.json(.ok, object)
        }
        router.delete("/v1/tasks/{id}") { request, context -> Response in
            guard bearerOK(request) else { return Self.json(.unauthorized, ["error": "Invalid API key"]) }
            guard let id = Self.runwayTaskNumber(try context.parameters.require("id")), state.cancel(id) else {
                return Self.json(.notFound, ["error": "Task not found"])
            }
            return Response(status: .noContent)
        }
        router.get("/v1/organization") { request, _ -> Response in
            guard bearerOK(request) else { return Self.json(.unauthorized, ["error": "Invalid API key"]) }
            return Self.json(.ok, ["creditBalance": 1000, "tier": ["maxMonthlyCreditSpend": 200_000]])
        }
    }

    /// The fake's task number inside a Runway-style UUID (`7f3aN-0000-…`).
    static func runwayTaskNumber(_ id: String) -> String? {
        guard id.hasPrefix("7f3a"), let dash = id.firstIndex(of: "-") else { return nil }
        return String(id[id.index(id.startIndex, offsetBy: 4)..<dash])
    }
}

// MARK: - Azure
