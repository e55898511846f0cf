import Foundation
import NIOCore
import NIOHTTP1
public import Pargen

/// ElevenLabs: text to speech (`POST /v1/text-to-speech/{voice_id}?output_format=…`) and sound effects
/// (`POST /v1/sound-generation`, chosen with the model `eleven_text_to_sound_v2`). Both answer with the audio
/// itself, streamed to disk. Authenticates with `xi-api-key`.
///
/// Concurrency is the plan's quota (Creator 5): above it ElevenLabs queues briefly, then answers 429
/// `concurrent_limit_exceeded`.
public struct ElevenLabsProvider: AccessCheckable {
    public static let soundModel = "eleven_text_to_sound_v2"
    /// Characters per request, per model.
    public static let characterLimits: [String: Int] = [
        "eleven_v3": 3_000, "eleven_flash_v2_5": 40_000, "eleven_turbo_v2_5": 40_000, "eleven_flash_v2": 30_000,
        "eleven_turbo_v2": 30_000, "eleven_multilingual_v2": 10_000,
    ]

    public let descriptor: ProviderDescriptor
    private let http: ProviderHTTP
    private let settings: ProviderSettings

    public init(settings: ProviderSettings, connection: ProviderConnection) {
        self.settings = settings
        self.http = ProviderHTTP(provider: settings.name, connection: connection)
        descriptor = ProviderDescriptor(
            name: settings.name,
            capabilities: ProviderCapabilities(
                kinds: [.audio],
                audioFormats: [.mp3, .wav, .pcm, .opus],
                maxAudioDuration: .seconds(600),
                maxPromptLength: 40_000,
                models: [settings.speechModel ?? "eleven_multilingual_v2"]
                    + (Self.characterLimits.keys.sorted() + [Self.soundModel]).filter { $0 != settings.speechModel }
            ),
            pricing: settings.pricing,
            quota: settings.quota
        )
    }

    /// The `output_format` query value for a format.
    static func outputFormat(_ format: MediaFormat) -> String {
        switch format {
        case .wav: "wav_24000"
        case .pcm: "pcm_24000"
        case .opus: "opus_48000_64"
        default: "mp3_44100_128"
        }
    }

    public func generate(_ request: ValidatedRequest, context: ProviderCallContext) async throws -> ProviderOutput {
        let format = descriptor.capabilities.outputFormat(for: request)
        let model = request.model ?? settings.speechModel ?? "eleven_multilingual_v2"
        let limit = Self.characterLimits[model] ?? 10_000
        guard request.prompt.count <= limit else {
            throw GenerationError(
                .invalidRequest,
                "\(model) takes at most \(limit) characters, the prompt has \(request.prompt.count)",
                provider: descriptor.name,
                providerCode: "max_character_limit_exceeded",
                field: "prompt"
            )
        }
        var headers = HTTPHeaders()
        if let key = http.connection.apiKey { headers.add(name: "xi-api-key", value: key.secret) }
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Accept", value: format.contentType)
        headers.add(name: "Idempotency-Key", value: context.idempotencyKey)
        let query = "?output_format=\(Self.outputFormat(format))"
        let url: String
        let body: [String: JSONValue]
        if model == Self.soundModel {
            let seconds = request.duration.seconds
            guard (0.5...30).contains(seconds) else {
                throw GenerationError(
                    .invalidRequest,
                    "sound effects last 0.5 to 30 s, not \(seconds.formatted1) s",
                    provider: descriptor.name,
                    field: "duration"
                )
            }
            url = http.url("/v1/sound-generation" + query)
            body = ["text": .string(request.prompt), "duration_seconds": .number(seconds), "model_id": .string(model)]
        } else {
            let voice = request.voice ?? settings.voice ?? "21m00Tcm4TlvDq8ikWAM"
            let escaped = voice.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed) ?? voice
            url = http.url("/v1/text-to-speech/\(escaped)" + query)
            body = ["text": .string(request.prompt), "model_id": .string(model)]
        }
        _ = try await SyncMediaCall(http: http, classify: classify).post(
            url,
            headers: headers,
            body: ByteBuffer(json: body),
            context: context,
            accepting: ["audio/", "application/octet-stream"]
        )
        return ProviderOutput(format: format, duration: request.duration)
    }

    /// Reads the subscription: free, and proves the key.
    public func checkAccess() async -> AccessCheck {
        var headers = HTTPHeaders()
        if let key = http.connection.apiKey { headers.add(name: "xi-api-key", value: key.secret) }
        return await http.checkAccess("/v1/user", headers: headers)
    }

    /// `{"detail": {"code" | "status", "message"}}`, or FastAPI's `{"detail": [{"msg"}]}` on 422.
    package func classify(_ answer: HTTPExchange) -> GenerationError {
        let detail = answer.json?["detail"]
        let code = detail?["code"]?.string ?? detail?["status"]?.string
        let message =
            detail?["message"]?.string ?? detail?.array?.first?["msg"]?.string ?? detail?.string
            ?? "HTTP \(answer.status.code)"
        switch code {
        case "quota_exceeded", "invalid_api_key", "voice_not_found", "max_character_limit_exceeded":
            return GenerationError(.terminal, message, provider: descriptor.name, providerCode: code)
        default:
            return http.classify(answer, code: code, message: message)
        }
    }
}
