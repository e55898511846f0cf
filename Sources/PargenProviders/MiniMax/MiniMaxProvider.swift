package import Foundation
import NIOCore
import NIOHTTP1
public import Pargen

/// MiniMax: speech (`POST /v1/t2a_v2`, hex audio in the JSON answer) and video (`POST /v1/video_generation`,
/// polled with `GET /v1/query/video_generation`, located with `GET /v1/files/retrieve`, then downloaded from
/// the signed link without auth).
///
/// MiniMax reports most errors on HTTP 200 as `base_resp.status_code`; every answer is checked. 1002 (RPM),
/// 1039 (TPM), 1041 (connections) and 2045 (rate growth) are throttling.
public struct MiniMaxProvider: AccessCheckable {
    public static let speechModels = [
        "speech-2.8-hd", "speech-2.8-turbo", "speech-2.6-hd", "speech-2.6-turbo", "speech-02-hd", "speech-02-turbo",
    ]
    public static let videoModels = ["MiniMax-Hailuo-2.3", "MiniMax-Hailuo-02", "T2V-01-Director", "T2V-01"]

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
                audioFormats: [.mp3, .wav, .flac, .pcm],
                videoFormats: [.mp4],
                maxAudioDuration: .seconds(600),
                maxVideoDuration: .seconds(10),
                maxResolution: .p1080,
                maxPromptLength: 9_999,
                models: Self.speechModels + Self.videoModels,
                videoDurations: [.seconds(6), .seconds(10)]
            ),
            pricing: settings.pricing,
            quota: settings.quota
        )
    }

    private var headers: HTTPHeaders {
        var headers = HTTPHeaders()
        if let key = http.connection.apiKey { headers.add(name: "Authorization", value: "Bearer \(key.secret)") }
        headers.add(name: "Content-Type", value: "application/json")
        return headers
    }

    /// Headers of a submission: the usual ones plus the engine's idempotency key, which MiniMax ignores but
    /// which identifies the call in logs and fakes.
    private func submitHeaders(_ context: ProviderCallContext) -> HTTPHeaders {
        var headers = self.headers
        headers.add(name: "Idempotency-Key", value: context.idempotencyKey)
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
        let body: [String: JSONValue] = [
            "model": .string(model), "text": .string(request.prompt), "stream": .bool(false),
            "output_format": .string("hex"),
            "voice_setting": .object([
                "voice_id": .string(request.voice ?? settings.voice ?? "English_expressive_narrator"),
                "speed": .number(1),
            ]),
            "audio_setting": .object([
                "sample_rate": .number(32000), "bitrate": .number(128000), "format": .string(format.name),
                "channel": .number(1),
            ]),
        ]
        let answer = try await http.send(
            .POST,
            http.url("/v1/t2a_v2"),
            headers: submitHeaders(context),
            body: ByteBuffer(json: body),
            answered: { context.reportAnswered() }
        )
        let json = try check(answer)
        // base_resp says success: MiniMax bills the characters (extra_info.usage_characters) from here on.
        context.reportBilled()
        guard let audio = json["data"]?["audio"]?.string, !audio.isEmpty else {
            throw GenerationError(
                .transient,
                "speech answer has no audio",
                provider: descriptor.name,
                providerCode: "malformed"
            )
        }
        if audio.hasPrefix("http") {
            // output_format=url: a 24 h link.
            context.reportDownloading()
            _ = try await http.fetchResult(
                taskID: json["trace_id"]?.string ?? "speech",
                to: context.destination,
                accepting: ["audio/", "application/octet-stream"],
                clock: context.clock
            ) { _ in audio }
        } else {
            guard let bytes = Self.hexDecoded(audio) else {
                throw GenerationError(
                    .transient,
                    "speech audio is not hex",
                    provider: descriptor.name,
                    providerCode: "malformed"
                )
            }
            try LocalResourceError.checking(context.destination, "write") { try bytes.write(to: context.destination) }
        }
        // The answer's own figures are used only when they can be true: a negative count would credit the ledger
        // and a negative length make a negative duration; the estimate and the request's length stand instead.
        let billed = json["extra_info"]?["usage_characters"]?.int.flatMap { (0...10_000_000).contains($0) ? $0 : nil }
        let milliseconds = json["extra_info"]?["audio_length"]?.int.flatMap { (0...86_400_000).contains($0) ? $0 : nil }
        return ProviderOutput(
            format: format,
            duration: milliseconds.map { .milliseconds($0) } ?? request.duration,
            reportedCost: billed.map { settings.pricing.perCharacter * Int64($0) }
        )
    }

    package static func hexDecoded(_ text: String) -> Data? {
        let utf8 = Array(text.utf8)
        guard utf8.count % 2 == 0 else { return nil }
        var bytes = [UInt8]()
        bytes.reserveCapacity(utf8.count / 2)
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: c - 48
            case 97...102: c - 87
            case 65...70: c - 55
            default: nil
            }
        }
        var index = 0
        while index < utf8.count {
            guard let high = nibble(utf8[index]), let low = nibble(utf8[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        return Data(bytes)
    }

    // MARK: Video

    /// MiniMax names resolutions by height: 768P (the default) or 1080P (6 s only).
    static func resolutionName(_ resolution: Resolution?) -> String {
        guard let resolution else { return "768P" }
        return min(resolution.width, resolution.height) <= 768 ? "768P" : "1080P"
    }

    private func video(_ request: ValidatedRequest, context: ProviderCallContext) async throws -> ProviderOutput {
        let model = request.model ?? settings.videoModel ?? Self.videoModels[0]
        let seconds = Int(request.duration.seconds)
        let resolution = Self.resolutionName(request.resolution)
        if seconds == 10 && resolution == "1080P" {
            throw GenerationError(
                .invalidRequest,
                "MiniMax renders 10 s videos at 768P only",
                provider: descriptor.name,
                field: "resolution"
            )
        }
        let body: [String: JSONValue] = [
            "model": .string(model), "prompt": .string(request.prompt), "duration": .number(Double(seconds)),
            "resolution": .string(resolution),
        ]
        let answer = try await http.send(
            .POST,
            http.url("/v1/video_generation"),
            headers: submitHeaders(context),
            body: ByteBuffer(json: body),
            ambiguousIsUnsafe: true,
            answered: { context.reportAnswered() }
        )
        let json = try check(answer)
        guard let id = json["task_id"]?.string, !id.isEmpty else {
            throw GenerationError(
                .needsReconciliation,
                "video submit answered without a task id",
                provider: descriptor.name,
                providerCode: "malformed"
            )
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
        let encoded = id.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? id
        let fileID = try await TaskPoller(http: http, context: context).run(taskID: id) {
            () async throws -> PollStep<String> in
            let answer = try await http.send(
                .GET,
                http.url("/v1/query/video_generation?task_id=\(encoded)"),
                headers: headers
            )
            // A failed task is the task's end, whatever base_resp says: its code is the reason, not a failed look.
            if answer.isSuccess, let failed = answer.json, let status = failed["status"]?.string?.lowercased(),
                status == "fail" || status == "failed"
            {
                let code = failed["base_resp"]?["status_code"]?.int
                let reason = failed["base_resp"]?["status_msg"]?.string ?? "no reason given"
                return .failed(
                    TaskFailures.error(
                        TaskFailures.miniMax(statusCode: code),
                        task: id,
                        reason: code.map { "MiniMax \($0): \(reason)" } ?? reason,
                        provider: descriptor.name,
                        providerCode: code.map(String.init) ?? "Fail"
                    )
                )
            }
            let json = try check(answer)
            switch json["status"]?.string?.lowercased() {
            case "success":
                guard let file = json["file_id"]?.string else {
                    throw GenerationError(
                        .transient,
                        "finished task has no file id",
                        provider: descriptor.name,
                        providerCode: "malformed"
                    )
                }
                return .done(file)
            default:
                // Preparing, Queueing, Processing, Unknown, or anything new: still running.
                return .running(progress: nil, after: nil)
            }
        }
        context.reportDownloading()
        _ = try await http.fetchResult(
            taskID: id,
            to: context.destination,
            accepting: ["video/", "application/octet-stream", "binary/octet-stream"],
            clock: context.clock
        ) { _ in
            // Each attempt asks for a fresh signed link: an expired one is simply replaced.
            let answer = try await http.send(.GET, http.url("/v1/files/retrieve?file_id=\(fileID)"), headers: headers)
            guard let link = try check(answer)["file"]?["download_url"]?.string else {
                throw GenerationError(
                    .terminal,
                    "file \(fileID) has no download link",
                    provider: descriptor.name,
                    providerCode: "result_unavailable"
                )
            }
            return link
        }
        return ProviderOutput(format: .mp4, duration: request.duration, providerTaskID: id)
    }

    /// Lists the account's files: free, and proves the key (MiniMax answers a bad key with 1004 on HTTP 200).
    public func checkAccess() async -> AccessCheck {
        await http.checkAccess("/v1/files?purpose=video_generation", headers: headers, miniMax: true)
    }

    // MARK: Errors

    /// The answer's JSON if both the HTTP status and `base_resp.status_code` say success.
    package func check(_ answer: HTTPExchange) throws -> JSONValue {
        guard answer.isSuccess else {
            throw http.classify(answer, code: nil, message: String(answer.text.prefix(200)))
        }
        guard let json = answer.json else {
            throw GenerationError(
                .transient,
                "answer is not JSON",
                provider: descriptor.name,
                providerCode: "malformed"
            )
        }
        let code = json["base_resp"]?["status_code"]?.int ?? 0
        guard code == 0 else {
            throw Self.error(
                code: code,
                message: json["base_resp"]?["status_msg"]?.string ?? "",
                provider: descriptor.name
            )
        }
        return json
    }

    /// The class of a `base_resp.status_code`, per MiniMax's error code page.
    package static func error(code: Int, message: String, provider: String) -> GenerationError {
        let text = "MiniMax \(code): \(message)"
        switch code {
        case 1002, 1039, 1041, 2045, 2056:
            return GenerationError(.rateLimited, text, provider: provider, providerCode: String(code))
        case 1000, 1001, 1013, 1024, 1033:
            return GenerationError(.transient, text, provider: provider, providerCode: String(code))
        default:
            // 1004/2049 auth, 1008 balance, 1026/1027 content, 2013 parameters, 1042 characters, ...
            return GenerationError(.terminal, text, provider: provider, providerCode: String(code))
        }
    }
}
