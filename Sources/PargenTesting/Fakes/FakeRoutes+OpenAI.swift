// The fake's OpenAI protocol: its routes, answers and errors, as FakeRoutes registers them.
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Pargen
import ZIPFoundation

extension FakeRoutes {
    static func openAIError(
        _ status: HTTPResponse.Status,
        _ message: String,
        type: String,
        code: String?,
        headers: HTTPFields = [:]
    )
        -> Response
    {
        var error: [String: Any] = ["message": message, "type": type, "param": NSNull()]
        error["code"] = code ?? NSNull()
        return json(status, ["error": error], headers: headers)
    }

    static let openAIRefusals = Refusals(
        serverError: {
            openAIError(
                .internalServerError,
                "The server had an error while processing your request",
                type: "server_error",
                code: nil
            )
        },
        malformed: { text(.ok, "{\"truncated") },
        overRate: { wait in
            openAIError(
                .tooManyRequests,
                "Rate limit reached for requests",
                type: "requests",
                code: "rate_limit_exceeded",
                headers: retryAfter(wait)
            )
        },
        overConcurrency: {
            openAIError(
                .tooManyRequests,
                "Too many concurrent requests",
                type: "requests",
                code: "rate_limit_exceeded",
                headers: retryAfter(1)
            )
        },
        policy: {
            openAIError(
                .badRequest,
                "Your request was rejected by the safety system",
                type: "invalid_request_error",
                code: "moderation_blocked"
            )
        }
    )

    static func openAIBadKey() -> Response {
        openAIError(.unauthorized, "Incorrect API key provided", type: "invalid_request_error", code: "invalid_api_key")
    }

    func registerOpenAI(_ router: Router<BasicRequestContext>) {
        router.post("/v1/audio/speech") { request, _ -> Response in
            guard bearerOK(request) else {
                return Self.openAIBadKey()
            }
            let json = try await jsonBody(request) ?? [:]
            let input = json["input"] as? String ?? ""
            let format = json["response_format"] as? String ?? "mp3"
            guard !input.isEmpty, input.count <= 4096, json["voice"] is String else {
                return Self.openAIError(
                    .badRequest,
                    "input must be 1 to 4096 characters and voice is required",
                    type: "invalid_request_error",
                    code: nil
                )
            }
            if let refused = try await gate(request, "audio/speech", input, sync: true, Self.openAIRefusals) {
                return refused
            }
            defer { state.finishSync() }
            try await answerLatency(input)
            let types = [
                "mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac", "flac": "audio/flac", "wav": "audio/wav",
                "pcm": "audio/pcm",
            ]
            return media(video: false, contentType: types[format] ?? "audio/mpeg", format: format)
        }
        router.post("/v1/videos") { request, _ -> Response in
            guard bearerOK(request) else {
                return Self.openAIBadKey()
            }
            let boundary = Self.header(request, "Content-Type")?.components(separatedBy: "boundary=").last ?? ""
            let fields = Self.multipartFields(try await body(request), boundary: boundary)
            let prompt = fields["prompt"] ?? ""
            let seconds = fields["seconds"] ?? "4"
            let size = fields["size"] ?? "720x1280"
            guard !prompt.isEmpty, ["4", "8", "12"].contains(seconds),
                ["720x1280", "1280x720", "1024x1792", "1792x1024"].contains(size)
            else {
                return Self.openAIError(
                    .badRequest,
                    "Invalid video parameters: seconds \(seconds), size \(size), prompt of \(prompt.count) characters",
                    type: "invalid_request_error",
                    code: "invalid_value"
                )
            }
            if let refused = try await gate(request, "videos", prompt, sync: false, Self.openAIRefusals) {
                return refused
            }
            let task = state.createTask(prompt: prompt, video: true, prefix: "video_")
            try await hangIfChosen(prompt)
            return Self.json(.ok, openAIVideo(task, size: size, seconds: seconds))
        }
        router.get("/v1/videos/{id}") { request, context -> Response in
            guard bearerOK(request) else {
                return Self.openAIBadKey()
            }
            try await pause(options.latencySeconds)
            if state.chance(options.pollErrorRate) { return Self.text(.serviceUnavailable, "upstream busy") }
            guard let task = state.task(try context.parameters.require("id")) else {
                return Self.openAIError(.notFound, "Video not found", type: "invalid_request_error", code: "not_found")
            }
            var headers = HTTPFields()
            if let end = task.endsAt() {
                let hint = max(10, min(2000, Int((end - state.now) * 1000 / 2)))
                headers[HTTPField.Name("openai-poll-after-ms")!] = String(hint)
            }
            return Self.json(.ok, openAIVideo(task, size: "1280x720", seconds: "4"), headers: headers)
        }
        router.get("/v1/models") { request, _ -> Response in
            guard bearerOK(request) else {
                return Self.openAIBadKey()
            }
            return Self.json(
                .ok,
                [
                    "object": "list",
                    "data": [["id": "tts-1", "object": "model"], ["id": "sora-2", "object": "model"]],
                ]
            )
        }
        router.get("/v1/videos/{id}/content") { request, context -> Response in
            guard bearerOK(request) else {
                return Self.openAIBadKey()
            }
            let id = try context.parameters.require("id")
            guard let task = state.task(id), case .succeeded = phase(task) else {
                return Self.openAIError(
                    .notFound,
                    "Video content is not available",
                    type: "invalid_request_error",
                    code: "not_found"
                )
            }
            switch state.useLink(id) {
            case .expired, nil:
                return Self.openAIError(
                    .notFound,
                    "Video content has expired",
                    type: "invalid_request_error",
                    code: "expired"
                )
            case .truncated: return media(video: true, contentType: "video/mp4", truncate: true)
            case .trickled: return media(video: true, contentType: "video/mp4", truncate: false, trickle: true)
            case .whole: return media(video: true, contentType: "video/mp4", truncate: false)
            }
        }
    }

    func openAIVideo(_ task: FakeTask, size: String, seconds: String) -> [String: Any] {
        var object: [String: Any] = [
            "id": task.id, "object": "video", "model": "sora-2", "created_at": Int(task.submittedAt), "size": size,
            "seconds": seconds, "progress": 0,
        ]
        switch phase(task) {
        case .waiting: object["status"] = "queued"
        case .running(let fraction):
            object["status"] = "in_progress"
            object["progress"] = Int(fraction * 100)
        case .succeeded:
            object["status"] = "completed"
            object["progress"] = 100
        case .failed(let failure):
            object["status"] = "failed"
            switch failure {
            case .moderation:
                object["error"] = [
                    "code": "moderation_blocked", "message": "The generated video was blocked by moderation",
                ]
            case .generic:
                object["error"] = [
                    "code": "video_generation_failed", "message": "Video generation failed due to an internal error.",
                ]
            case .unknown:
                object["error"] = ["code": "unexpected_outcome_7", "message": "Something unexpected happened."]
            }
        case .cancelled:
            object["status"] = "failed"
            object["error"] = ["code": "cancelled", "message": "The video was cancelled"]
        }
        return object
    }

    static func multipartFields(_ data: Data, boundary: String) -> [String: String] {
        let text = String(decoding: data, as: UTF8.self)
        var fields: [String: String] = [:]
        for part in text.components(separatedBy: "--\(boundary)") {
            guard let split = part.range(of: "\r\n\r\n"),
                let nameStart = part.range(of: "name=\"")
            else { continue }
            let rest = part[nameStart.upperBound...]
            guard let quote = rest.firstIndex(of: "\"") else { continue }
            var value = String(part[split.upperBound...])
            if value.hasSuffix("\r\n") { value.removeLast() }  // "\r\n" is one Character
            fields[String(rest[..<quote])] = value
        }
        return fields
    }
}

// MARK: - ElevenLabs
