import Foundation
import NIOCore
import NIOHTTP1
public import Pargen

/// OpenAI: speech (`POST /v1/audio/speech`, binary body) and Sora video (`POST /v1/videos`, polled with
/// `GET /v1/videos/{id}` at the server's `openai-poll-after-ms`, fetched from `GET /v1/videos/{id}/content`).
///
/// OpenAI documents no idempotency key, so a submit cut off by a crash waits for reconciliation.
public struct OpenAIProvider: AccessCheckable {
    public static let speechModels = ["gpt-4o-mini-tts", "tts-1", "tts-1-hd"]
    public static let videoModels = ["sora-2", "sora-2-pro"]
    public static let voices: Set<String> = [
        "alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse", "marin",
        "cedar",
    ]
    public static let videoSizes = [
        Resolution(width: 1280, height: 720), Resolution(width: 720, height: 1280),
        Resolution(width: 1792, height: 1024), Resolution(width: 1024, height: 1792),
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
                kinds: [.audio, .video],
                audioFormats: [.mp3, .opus, .aac, .flac, .wav, .pcm],
                videoFormats: [.mp4],
                maxAudioDuration: .seconds(600),
                maxVideoDuration: .seconds(12),
                maxResolution: Resolution(width: 1792, height: 1792),
                maxPromptLength: 4096,
                voices: Self.voices,
                models: Self.speechModels + Self.videoModels,
                videoDurations: [.seconds(4), .seconds(8), .seconds(12)],
                videoResolutions: Self.videoSizes
            ),
            pricing: settings.pricing,
            quota: settings.quota
        )
    }

    private var authorization: HTTPHeaders {
        var headers = HTTPHeaders()
        if let key = http.connection.apiKey { headers.add(name: "Authorization", value: "Bearer \(key.secret)") }
        return headers
    }

    public func generate(_ request: ValidatedRequest, context: ProviderCallContext) async throws -> ProviderOutput {
        switch request.kind {
        case .audio: return try await speech(request, context: context)
        case .video: return try await video(request, context: context)
        }
    }

    public func resume(
        taskID: String,
        request: ValidatedRequest,
        context: ProviderCallContext
    ) async throws
        -> ProviderOutput
    {
        guard request.kind == .video else {
            throw GenerationError(.terminal, "speech calls have no task to resume", provider: descriptor.name)
        }
        return try await finishVideo(taskID, request: request, context: context)
    }

    // MARK: Speech

    private func speech(_ request: ValidatedRequest, context: ProviderCallContext) async throws -> ProviderOutput {
        let format = descriptor.capabilities.outputFormat(for: request)
        let model = request.model ?? settings.speechModel ?? Self.speechModels[0]
        guard Self.speechModels.contains(model) else {
            throw GenerationError(
                .invalidRequest,
                "\(model) is not a speech model",
                provider: descriptor.name,
                field: "model"
            )
        }
        let body: [String: JSONValue] = [
            "model": .string(model), "input": .string(request.prompt),
            "voice": .string(request.voice ?? settings.voice ?? "alloy"), "response_format": .string(format.name),
        ]
        var headers = authorization
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Accept", value: "application/octet-stream")
        headers.add(name: "Idempotency-Key", value: context.idempotencyKey)
        // The speech endpoint answers with the audio itself: it is streamed to disk.
        _ = try await SyncMediaCall(http: http, classify: classify).post(
            http.url("/v1/audio/speech"),
            headers: headers,
            body: ByteBuffer(json: body),
            context: context,
            accepting: ["audio/", "application/octet-stream"]
        )
        return ProviderOutput(format: format, duration: request.duration)
    }

    // MARK: Video

    private func video(_ request: ValidatedRequest, context: ProviderCallContext) async throws -> ProviderOutput {
        let model = request.model ?? settings.videoModel ?? Self.videoModels[0]
        guard Self.videoModels.contains(model) else {
            throw GenerationError(
                .invalidRequest,
                "\(model) is not a video model",
                provider: descriptor.name,
                field: "model"
            )
        }
        let size = request.resolution ?? Self.videoSizes[0]
        var form = MultipartForm()
        form.add("prompt", request.prompt)
        form.add("model", model)
        form.add("seconds", String(Int(request.duration.seconds)))
        form.add("size", size.description)
        var headers = authorization
        headers.add(name: "Content-Type", value: form.contentType)
        headers.add(name: "Idempotency-Key", value: context.idempotencyKey)
        let answer = try await http.send(
            .POST,
            http.url("/v1/videos"),
            headers: headers,
            body: form.buffer,
            ambiguousIsUnsafe: true,
            answered: { context.reportAnswered() }
        )
        guard answer.isSuccess, let json = answer.json, let id = json["id"]?.string else {
            throw answer.isSuccess
                ? GenerationError(
                    .needsReconciliation,
                    "video create answered without an id",
                    provider: descriptor.name,
                    providerCode: "malformed"
                )
                : classify(answer)
        }
        try await context.reportSubmitted(taskID: id)
        return try await finishVideo(id, request: request, context: context)
    }

    private func finishVideo(
        _ id: String,
        request: ValidatedRequest,
        context: ProviderCallContext
    ) async throws
        -> ProviderOutput
    {
        let poller = TaskPoller(http: http, context: context)
        try await poller.run(taskID: id) { () async throws -> PollStep<Void> in
            let answer = try await http.send(.GET, http.url("/v1/videos/\(id)"), headers: authorization)
            guard answer.isSuccess else { throw classify(answer) }
            guard let json = answer.json, let status = json["status"]?.string?.lowercased() else {
                throw GenerationError(
                    .transient,
                    "malformed video status",
                    provider: descriptor.name,
                    providerCode: "malformed"
                )
            }
            let hint = answer.headers.first(name: "openai-poll-after-ms").flatMap(Int64.init).map {
                Duration.milliseconds($0)
            }
            switch status {
            case "completed": return .done(())
            case "failed":
                let code = json["error"]?["code"]?.string
                let message = json["error"]?["message"]?.string ?? "video generation failed"
                return .failed(
                    TaskFailures.error(
                        TaskFailures.openAI(code: code, message: message),
                        task: id,
                        reason: message,
                        provider: descriptor.name,
                        providerCode: code ?? "failed"
                    )
                )
            default:
                // queued, in_progress, or a state this adapter does not know: still running.
                return .running(progress: json["progress"]?.double.map { $0 / 100 }, after: hint)
            }
        }
        context.reportDownloading()
        _ = try await http.fetchResult(
            taskID: id,
            to: context.destination,
            accepting: ["video/", "application/octet-stream", "application/binary"],
            headers: authorization,
            clock: context.clock
        ) { _ in http.url("/v1/videos/\(id)/content?variant=video") }
        return ProviderOutput(format: .mp4, duration: request.duration, providerTaskID: id)
    }

    // MARK: Errors

    /// `{"error": {"message", "type", "code"}}`; a 429 without Retry-After can be a billing stop, which no
    /// wait will fix, so `insufficient_quota` is terminal.
    package func classify(_ answer: HTTPExchange) -> GenerationError {
        let error = answer.json?["error"]
        let code = error?["code"]?.string ?? error?["type"]?.string
        let message = error?["message"]?.string ?? "HTTP \(answer.status.code)"
        if answer.status.code == 429, code == "insufficient_quota" || code == "billing_hard_limit_reached" {
            return GenerationError(.terminal, message, provider: descriptor.name, providerCode: code)
        }
        return http.classify(answer, code: code, message: message)
    }

    /// Lists the models: free, and proves the key.
    public func checkAccess() async -> AccessCheck { await http.checkAccess("/v1/models", headers: authorization) }
}
