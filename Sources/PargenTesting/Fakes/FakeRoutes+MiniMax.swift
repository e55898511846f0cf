// The fake's MiniMax protocol: its routes, answers and errors, as FakeRoutes registers them.
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Pargen
import ZIPFoundation

extension FakeRoutes {
    static func miniMax(_ code: Int, _ message: String, _ extra: [String: Any] = [:]) -> Response {
        var object = extra
        object["base_resp"] = ["status_code": code, "status_msg": message]
        object["trace_id"] = UUID.random().uuidString.lowercased()
        return json(.ok, object)
    }

    /// MiniMax answers throttling on HTTP 200, in `base_resp`.
    static let miniMaxRefusals = Refusals(
        serverError: { text(.serviceUnavailable, "upstream unavailable") },
        malformed: { text(.ok, "{\"base_resp\": {\"status_code\"") },
        overRate: { _ in miniMax(1002, "rate limit exceeded(RPM)") },
        overConcurrency: { miniMax(1041, "conn limit") },
        policy: { miniMax(1026, "input new_sensitive") }
    )

    func registerMiniMax(_ router: Router<BasicRequestContext>) {
        @Sendable func admitted(
            _ request: Request,
            endpoint: String,
            prompt: String,
            sync: Bool
        ) async throws -> Response? {
            guard bearerOK(request) else {
                return Self.miniMax(
                    1004,
                    "login fail: Please carry the API secret key in the 'Authorization' field of the request header"
                )
            }
            return try await gate(request, endpoint, prompt, sync: sync, Self.miniMaxRefusals)
        }
        router.post("/v1/t2a_v2") { request, _ -> Response in
            let json = try await jsonBody(request) ?? [:]
            let text = json["text"] as? String ?? ""
            guard !text.isEmpty, text.count < 10_000, json["model"] is String else {
                return Self.miniMax(2013, "invalid params, text and model are required")
            }
            if let refused = try await admitted(request, endpoint: "t2a_v2", prompt: text, sync: true) {
                return refused
            }
            defer { state.finishSync() }
            try await answerLatency(text)
            let format = (json["audio_setting"] as? [String: Any])?["format"] as? String ?? "mp3"
            let head = Self.mediaFile(format, size: options.audioBytes)
            let hex = SHA256Hasher.hex(Array(head))
            return Self.miniMax(
                0,
                "success",
                [
                    "data": ["audio": hex, "status": 2],
                    "extra_info": [
                        "audio_length": 1000 * max(1, text.count / 15), "audio_sample_rate": 32000,
                        "audio_size": head.count,
                        // The fake bills by its own count (UTF-8 bytes), which differs from a client's estimate for
                        // any text that is not ASCII, so a client that charges its estimate is caught.
                        "bitrate": 128000, "usage_characters": text.utf8.count, "audio_format": format,
                        "audio_channel": 1,
                    ],
                ]
            )
        }
        router.post("/v1/video_generation") { request, _ -> Response in
            let json = try await jsonBody(request) ?? [:]
            let prompt = json["prompt"] as? String ?? ""
            let duration = json["duration"] as? Int ?? 6
            let resolution = json["resolution"] as? String ?? "768P"
            guard !prompt.isEmpty, prompt.count <= 2000, [6, 10].contains(duration),
                ["768P", "1080P"].contains(resolution),
                !(duration == 10 && resolution == "1080P")
            else {
                return Self.miniMax(2013, "invalid params: prompt, duration or resolution")
            }
            if let refused = try await admitted(request, endpoint: "video_generation", prompt: prompt, sync: false) {
                return refused
            }
            let task = state.createTask(prompt: prompt, video: true, prefix: "17684386271")
            try await hangIfChosen(prompt)
            return Self.miniMax(0, "success", ["task_id": task.id])
        }
        router.get("/v1/query/video_generation") { request, _ -> Response in
            guard bearerOK(request) else { return Self.miniMax(1004, "login fail") }
            try await pause(options.latencySeconds)
            if state.chance(options.pollErrorRate) { return Self.text(.serviceUnavailable, "upstream busy") }
            guard let id = request.uri.queryParameters.get("task_id"), let task = state.task(id) else {
                return Self.miniMax(2013, "invalid params: task_id")
            }
            switch phase(task) {
            case .waiting: return Self.miniMax(0, "success", ["task_id": id, "status": "Queueing"])
            case .running(let fraction):
                return Self.miniMax(
                    0,
                    "success",
                    ["task_id": id, "status": fraction < 0.1 ? "Preparing" : "Processing"]
                )
            case .succeeded:
                return Self.miniMax(
                    0,
                    "success",
                    ["task_id": id, "status": "Success", "file_id": "f\(id)", "video_width": 1366, "video_height": 768]
                )
            case .failed(.moderation), .cancelled:
                return Self.miniMax(1027, "output new_sensitive", ["task_id": id, "status": "Fail"])
            case .failed(.generic):
                return Self.miniMax(1024, "internal error", ["task_id": id, "status": "Fail"])
            case .failed(.unknown):
                return Self.miniMax(0, "success", ["task_id": id, "status": "Fail"])
            }
        }
        router.get("/v1/files") { request, _ -> Response in
            guard bearerOK(request) else { return Self.miniMax(1004, "login fail") }
            return Self.miniMax(0, "success", ["files": []])
        }
        router.get("/v1/files/retrieve") { request, _ -> Response in
            guard bearerOK(request) else { return Self.miniMax(1004, "login fail") }
            guard let file = request.uri.queryParameters.get("file_id"), file.hasPrefix("f"),
                state.task(String(file.dropFirst())) != nil
            else {
                return Self.miniMax(2013, "invalid params: file_id")
            }
            let id = String(file.dropFirst())
            return Self.miniMax(
                0,
                "success",
                [
                    "file": [
                        "file_id": file, "bytes": options.videoBytes, "created_at": Int(Date().timeIntervalSince1970),
                        "filename": "output_aigc.mp4", "purpose": "video_generation",
                        "download_url":
                            "\(base)/download/\(id)?Expires=\(Int(Date().timeIntervalSince1970) + 32400)&Signature=fake",
                    ]
                ]
            )
        }
    }
}
