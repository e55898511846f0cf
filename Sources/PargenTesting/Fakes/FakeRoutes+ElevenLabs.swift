// The fake's ElevenLabs protocol: its routes, answers and errors, as FakeRoutes registers them.
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Pargen
import ZIPFoundation

extension FakeRoutes {
    static func elevenLabsError(
        _ status: HTTPResponse.Status,
        _ code: String,
        _ message: String,
        headers: HTTPFields = [:]
    ) -> Response {
        json(status, ["detail": ["status": code, "message": message]], headers: headers)
    }

    var elevenLabsRefusals: Refusals {
        let cap = options.concurrentTasks ?? 0
        return Refusals(
            serverError: { Self.elevenLabsError(.internalServerError, "internal_error", "An internal error occurred") },
            malformed: { Self.text(.ok, "{\"detail\": ") },
            overRate: { wait in
                Self.json(
                    .tooManyRequests,
                    ["detail": ["code": "rate_limit_exceeded", "message": "Rate limit exceeded"]],
                    headers: Self.retryAfter(wait)
                )
            },
            overConcurrency: {
                Self.elevenLabsError(
                    .tooManyRequests,
                    "too_many_concurrent_requests",
                    "Too many concurrent requests. Your current subscription is associated with a maximum of \(cap) concurrent requests."
                )
            },
            policy: {
                Self.elevenLabsError(.badRequest, "content_policy_violation", "The text violates the terms of service")
            }
        )
    }

    func registerElevenLabs(_ router: Router<BasicRequestContext>) {
        @Sendable func synthesize(
            _ request: Request,
            endpoint: String,
            text: String,
            sound: Double?
        ) async throws -> Response {
            guard keyOK(request, header: "xi-api-key") else {
                return Self.elevenLabsError(.unauthorized, "invalid_api_key", "Invalid API key")
            }
            if let sound, !(0.5...30).contains(sound) {
                return Self.json(
                    HTTPResponse.Status(code: 422),
                    [
                        "detail": [
                            [
                                "loc": ["body", "duration_seconds"], "msg": "must be between 0.5 and 30",
                                "type": "value_error",
                            ]
                        ]
                    ]
                )
            }
            guard !text.isEmpty, text.count <= 10_000 else {
                return Self.elevenLabsError(
                    .badRequest,
                    "max_character_limit_exceeded",
                    "Text is longer than the model allows"
                )
            }
            if let refused = try await gate(request, endpoint, text, sync: true, elevenLabsRefusals) { return refused }
            defer { state.finishSync() }
            try await answerLatency(text)
            let format = request.uri.queryParameters.get("output_format") ?? "mp3_44100_128"
            let kind = format.split(separator: "_").first.map(String.init) ?? "mp3"
            let types = [
                "mp3": "audio/mpeg", "wav": "audio/wav", "pcm": "audio/pcm", "opus": "audio/opus",
                "ulaw": "audio/basic",
            ]
            var response = media(video: false, contentType: types[kind] ?? "audio/mpeg", format: kind)
            response.headers[HTTPField.Name("character-cost")!] = String(text.count)
            return response
        }
        router.post("/v1/text-to-speech/{voice}") { request, _ -> Response in
            let json = try await jsonBody(request) ?? [:]
            return try await synthesize(
                request,
                endpoint: "text-to-speech",
                text: json["text"] as? String ?? "",
                sound: nil
            )
        }
        router.post("/v1/sound-generation") { request, _ -> Response in
            let json = try await jsonBody(request) ?? [:]
            return try await synthesize(
                request,
                endpoint: "sound-generation",
                text: json["text"] as? String ?? "",
                sound: (json["duration_seconds"] as? Double) ?? 5
            )
        }
        router.get("/v1/user") { request, _ -> Response in
            guard keyOK(request, header: "xi-api-key") else {
                return Self.elevenLabsError(.unauthorized, "invalid_api_key", "Invalid API key")
            }
            return Self.json(
                .ok,
                ["subscription": ["tier": "creator", "character_count": 0, "character_limit": 100_000]]
            )
        }
    }
}

// MARK: - MiniMax
