import Foundation
import NIOCore
import NIOHTTP1
public import Pargen

/// Azure AI Speech: real-time text to speech (`POST /cognitiveservices/v1` with an SSML body, the format in
/// `X-Microsoft-OutputFormat` and the key in `Ocp-Apim-Subscription-Key`; the answer is the audio itself),
/// and batch synthesis (`PUT /texttospeech/batchsyntheses/{id}` on the `batchBaseURL` host) for groups of
/// at least `batchThreshold` compatible lines arriving together: one call for the group instead of one each.
public struct AzureSpeechProvider: AccessCheckable {
    public let descriptor: ProviderDescriptor
    private let http: ProviderHTTP
    private let settings: ProviderSettings
    private let batch: AzureBatchClient?
    private let coalescer: AzureBatchCoalescer?

    public init(settings: ProviderSettings, connection: ProviderConnection) {
        self.settings = settings
        self.http = ProviderHTTP(provider: settings.name, connection: connection)
        if let batchBase = settings.batchBaseURL, settings.batchThreshold > 0 {
            var batchConnection = connection
            batchConnection.baseURL = batchBase.hasSuffix("/") ? String(batchBase.dropLast()) : batchBase
            let client = AzureBatchClient(
                http: ProviderHTTP(provider: settings.name, connection: batchConnection),
                apiKey: connection.apiKey
            )
            batch = client
            coalescer = AzureBatchCoalescer(
                batch: client,
                threshold: max(2, settings.batchThreshold),
                memberWait: settings.batchMemberWait
            )
        } else {
            batch = nil
            coalescer = nil
        }
        descriptor = ProviderDescriptor(
            name: settings.name,
            capabilities: ProviderCapabilities(
                kinds: [.audio],
                audioFormats: [.wav, .mp3, .opus, .pcm],
                maxAudioDuration: .seconds(600),
                maxPromptLength: 10_000
            ),
            pricing: settings.pricing,
            quota: settings.quota
        )
    }

    /// The `X-Microsoft-OutputFormat` value for a format.
    static func outputFormat(_ format: MediaFormat) -> String {
        switch format {
        case .mp3: "audio-24khz-160kbitrate-mono-mp3"
        case .opus: "ogg-24khz-16bit-mono-opus"
        case .pcm: "raw-24khz-16bit-mono-pcm"
        default: "riff-24khz-16bit-mono-pcm"
        }
    }

    /// The SSML document for a line of speech, with the text escaped.
    static func ssml(text: String, voice: String) -> String {
        let parts = voice.split(separator: "-")
        let language = parts.count >= 2 ? "\(parts[0])-\(parts[1])" : "en-US"
        return "<speak version='1.0' xml:lang='\(xmlEscaped(language))'><voice name='\(xmlEscaped(voice))'>"
            + xmlEscaped(text) + "</voice></speak>"
    }

    static func xmlEscaped(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.count)
        for character in text {
            switch character {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "'": out += "&apos;"
            case "\"": out += "&quot;"
            default: out.append(character)
            }
        }
        return out
    }

    public func generate(_ request: ValidatedRequest, context: ProviderCallContext) async throws -> ProviderOutput {
        let format = descriptor.capabilities.outputFormat(for: request)
        var headers = HTTPHeaders()
        if let key = http.connection.apiKey { headers.add(name: "Ocp-Apim-Subscription-Key", value: key.secret) }
        headers.add(name: "Content-Type", value: "application/ssml+xml")
        headers.add(name: "X-Microsoft-OutputFormat", value: Self.outputFormat(format))
        headers.add(name: "Idempotency-Key", value: context.idempotencyKey)
        let voice = request.voice ?? settings.voice ?? "en-US-AvaMultilingualNeural"
        if let coalescer, format != .pcm,
            case .done(let output) = try await coalescer.join(request, voice: voice, format: format, context: context)
        {
            return output
        }
        _ = try await SyncMediaCall(http: http, classify: classify).post(
            http.url("/cognitiveservices/v1"),
            headers: headers,
            body: ByteBuffer(string: Self.ssml(text: request.prompt, voice: voice)),
            context: context,
            accepting: ["audio/", "application/octet-stream"]
        )
        return ProviderOutput(format: format, duration: request.duration)
    }

    /// Lists the voices of the region: free, and proves the key.
    public func checkAccess() async -> AccessCheck {
        var headers = HTTPHeaders()
        if let key = http.connection.apiKey { headers.add(name: "Ocp-Apim-Subscription-Key", value: key.secret) }
        return await http.checkAccess("/cognitiveservices/voices/list", headers: headers)
    }

    /// Continues a line of a batch synthesis (task id `SYNTHESIS#N`); real-time calls have no task.
    public func resume(
        taskID: String,
        request: ValidatedRequest,
        context: ProviderCallContext
    ) async throws
        -> ProviderOutput
    {
        guard let batch else {
            throw GenerationError(.terminal, "real-time speech has no task to resume", provider: descriptor.name)
        }
        return try await batch.resume(
            taskID: taskID,
            request: request,
            format: descriptor.capabilities.outputFormat(for: request),
            context: context
        )
    }

    /// Real-time errors usually have no body: the status says it all (429 quota, 400/401/415 terminal,
    /// 502/503 transient). Batch synthesis answers `{"error": {"code", "message"}}`.
    package func classify(_ answer: HTTPExchange) -> GenerationError {
        let error = answer.json?["error"]
        let message =
            error?["message"]?.string
            ?? (answer.text.isEmpty ? "HTTP \(answer.status.code)" : String(answer.text.prefix(200)))
        return http.classify(answer, code: error?["code"]?.string, message: message)
    }
}
