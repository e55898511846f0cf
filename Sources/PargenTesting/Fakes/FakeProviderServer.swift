import Foundation
import HTTPTypes
import Hummingbird
public import Logging
import NIOCore
import Pargen
import ZIPFoundation

/// A local HTTP server that speaks one provider's protocol, with that provider's quotas, task lifecycle,
/// error bodies and injected faults. Binds to 127.0.0.1 only and stops by itself after
/// ``FakeProviderOptions/lifetime``.
///
/// ```swift
/// let fake = try await FakeProviderServer.start(FakeProviderOptions(wireProtocol: .runway, concurrentTasks: 2))
/// defer { Task { await fake.stop() } }
/// // point an adapter at fake.baseURL; afterwards inspect fake.state.submissions()
/// ```
public final class FakeProviderServer: Sendable {
    public let state: FakeProviderState
    public let port: Int
    private let task: Task<Void, any Error>

    public var baseURL: String { "http://127.0.0.1:\(port)" }

    private init(state: FakeProviderState, port: Int, task: Task<Void, any Error>) {
        self.state = state
        self.port = port
        self.task = task
    }

    /// Starts a fake on `port` (0 picks a free one) and returns once it accepts connections.
    public static func start(
        _ options: FakeProviderOptions,
        port: Int = 0,
        logger: Logger? = nil
    ) async throws
        -> FakeProviderServer
    {
        let state = FakeProviderState(options: options)
        let bound = Locked<Int?>(nil)
        let router = Router()
        FakeRoutes(state: state, port: { bound.withLock { $0 } ?? 0 }).register(on: router)
        var quiet = Logger(label: "pargen.fake.\(options.wireProtocol.rawValue)")
        quiet.logLevel = .critical
        let (actual, task) = try await LoopbackServer.start(
            router.buildResponder(),
            port: port,
            serverName: "pargen-fake",
            lifetime: options.lifetime,
            logger: logger ?? quiet,
            onBound: { port in bound.withLock { $0 = port } }
        )
        return FakeProviderServer(state: state, port: actual, task: task)
    }

    /// Stops the server.
    public func stop() async {
        task.cancel()
        _ = try? await task.value
    }

    /// Waits until the server stops (its lifetime ends or it is stopped).
    public func wait() async {
        _ = try? await task.value
    }
}

/// The routes of every protocol. Unknown paths answer 404.
struct FakeRoutes: Sendable {
    let state: FakeProviderState
    let port: @Sendable () -> Int

    var options: FakeProviderOptions { state.options }
    var base: String { "http://127.0.0.1:\(port())" }

    func register(on router: Router<BasicRequestContext>) {
        switch options.wireProtocol {
        case .openai: registerOpenAI(router)
        case .elevenlabs: registerElevenLabs(router)
        case .minimax: registerMiniMax(router)
        case .runway: registerRunway(router)
        case .azure: registerAzure(router)
        }
        // Signed result links (MiniMax files, Runway outputs): no auth, may expire or be cut short.
        router.get("/download/{id}") { request, context -> Response in
            let id = try context.parameters.require("id")
            guard let task = state.task(id), task.endsAt().map({ $0 <= state.now }) == true, !task.fails else {
                return Self.text(.notFound, "NoSuchKey")
            }
            switch state.useLink(id) {
            case .expired, nil:
                return Self.text(
                    .forbidden,
                    "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
                )
            case .truncated: return media(video: true, contentType: "video/mp4", truncate: true)
            case .trickled: return media(video: true, contentType: "video/mp4", truncate: false, trickle: true)
            case .whole: return media(video: true, contentType: "video/mp4", truncate: false)
            }
        }
    }

    // MARK: Shared pieces

    static func json(_ status: HTTPResponse.Status, _ object: [String: Any], headers: HTTPFields = [:]) -> Response {
        let data = (try? JSONSerialization.data(withJSONObject: object)) ?? Data("{}".utf8)
        var fields = headers
        fields[.contentType] = "application/json"
        return Response(status: status, headers: fields, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func text(_ status: HTTPResponse.Status, _ text: String) -> Response {
        Response(
            status: status,
            headers: [.contentType: "text/plain"],
            body: .init(byteBuffer: ByteBuffer(string: text))
        )
    }

    static func retryAfter(_ seconds: Double) -> HTTPFields {
        var fields = HTTPFields()
        fields[HTTPField.Name("Retry-After")!] = String(Int(seconds.rounded(.up)))
        fields[HTTPField.Name("retry-after-ms")!] = String(Int((seconds * 1000).rounded(.up)))
        return fields
    }

    static func header(_ request: Request, _ name: String) -> String? {
        HTTPField.Name(name).flatMap { request.headers[$0] }
    }

    func body(_ request: Request) async throws -> Data {
        var request = request
        let buffer = try await request.collectBody(upTo: 8 << 20)
        return Data(buffer.readableBytesView)
    }

    func jsonBody(_ request: Request) async throws -> [String: Any]? {
        try JSONSerialization.jsonObject(with: try await body(request)) as? [String: Any]
    }

    func bearerOK(_ request: Request) -> Bool {
        guard let key = options.apiKey else { return true }
        return Self.header(request, "Authorization") == "Bearer \(key)"
    }

    func keyOK(_ request: Request, header: String) -> Bool {
        guard let key = options.apiKey else { return true }
        return Self.header(request, header) == key
    }

    func pause(_ range: ClosedRange<Double>) async throws {
        let seconds = state.uniform(range)
        if seconds > 0 { try await Task.sleep(for: .milliseconds(Int64(seconds * 1000))) }
    }

    /// Faults injected before a submission is looked at: a hung connection, a 5xx, a malformed body.
    enum Fault { case none, error, malformed }

    func fault() async throws -> Fault {
        if state.chance(options.errorRate) { return .error }
        if state.chance(options.malformedRate) { return .malformed }
        return .none
    }

    /// How a protocol says no to a submission: its server error, a malformed body, over the request window (with
    /// the seconds until a place frees), over the concurrency cap.
    struct Refusals: Sendable {
        var serverError: @Sendable () -> Response
        var malformed: @Sendable () -> Response
        var overRate: @Sendable (Double) -> Response
        var overConcurrency: @Sendable () -> Response
        /// A prompt containing `[[reject]]`, refused for content policy after it was admitted.
        var policy: @Sendable () -> Response
    }

    /// Injects the submission faults, decides the submission against the quotas and logs it, then refuses a
    /// `[[reject]]` prompt for content policy; `nil` when it is accepted. With `queue`, a submission over the
    /// concurrency cap is accepted and waits (Runway).
    func gate(
        _ request: Request,
        _ endpoint: String,
        _ prompt: String,
        sync: Bool,
        queue: Bool = false,
        _ refusals: Refusals
    ) async throws -> Response? {
        try await pause(options.inboundDelaySeconds)
        switch try await fault() {
        case .error: return refusals.serverError()
        case .malformed: return refusals.malformed()
        case .none: break
        }
        let who = identity(request)
        switch state.admit(
            endpoint: endpoint,
            key: who.key,
            user: who.user,
            prompt: prompt,
            sync: sync,
            queueOverConcurrency: queue
        )
        {
        case .overRate(let wait): return refusals.overRate(wait)
        case .overConcurrency: return queue ? nil : refusals.overConcurrency()
        case .accepted: break
        }
        guard prompt.contains("[[reject]]") else {
            // Accepted: the provider has the work (and bills it). A hang from here on is "accepted, answer lost".
            if state.chance(options.hangRate) || (prompt.contains("[[hang]]") && state.firstHang(prompt)) {
                state.chooseHang(prompt)
            }
            return nil
        }
        state.refuseLast(prompt: prompt, reason: "policy")
        if sync { state.finishSync() } else { state.releaseTaskReservation() }
        return refusals.policy()
    }

    /// Called where an accepted submission's answer is about to be sent (after its task exists): if the gate chose
    /// to hang this one, the connection stays open with no answer until the fake stops. The provider has the task,
    /// and the client never learns its id.
    func hangIfChosen(_ prompt: String) async throws {
        if state.takeHang(prompt) { try await Task.sleep(for: options.lifetime) }
    }

    /// A synchronous answer's latency, or a hang if the gate chose one.
    func answerLatency(_ prompt: String) async throws {
        try await hangIfChosen(prompt)
        try await pause(options.latencySeconds)
    }

    /// The first bytes of a file in `format`, so that clients' format checks see the real signature.
    static func signature(_ format: String) -> [UInt8] {
        switch format {
        case "mp4": [0, 0, 0, 0x18] + Array("ftypisom".utf8) + [0, 0, 2, 0] + Array("isomiso2".utf8)
        case "wav": Array("RIFF".utf8) + [0, 0, 0, 0] + Array("WAVEfmt ".utf8)
        case "mp3": Array("ID3".utf8) + [4, 0, 0, 0, 0, 0, 0]
        case "opus", "ogg": Array("OggS".utf8)
        case "flac": Array("fLaC".utf8)
        default: []
        }
    }

    /// A whole small file in `format` of `size` bytes (hex speech, ZIP entries).
    static func mediaFile(_ format: String, size: Int) -> [UInt8] {
        let head = signature(format)
        return head + [UInt8](repeating: 0x55, count: max(0, size - head.count))
    }

    /// Media bytes with a real header for the format, streamed in chunks (a large video is never held whole);
    /// cut short after half when a truncation fault hits.
    func media(
        video: Bool,
        contentType: String,
        format: String = "mp4",
        truncate: Bool? = nil,
        trickle: Bool = false
    ) -> Response {
        let total = video ? options.videoBytes : options.audioBytes
        let truncate = truncate ?? state.truncateAnswer()
        let head = Self.signature(video ? "mp4" : format)
        let size = max(total, head.count)
        // A trickle sends 1 KiB at a time at the configured rate.
        let pace = trickle ? Duration.seconds(1024.0 / Double(max(1, options.trickleBytesPerSecond))) : nil
        let body = ResponseBody(contentLength: size) { writer in
            try await writer.write(ByteBuffer(bytes: head))
            var remaining = size - head.count
            let limit = truncate ? remaining / 2 : 0
            let chunk = ByteBuffer(repeating: 0x55, count: pace == nil ? 64 * 1024 : 1024)
            while remaining > limit {
                let n = min(remaining - limit, chunk.readableBytes)
                try await writer.write(chunk.getSlice(at: 0, length: n)!)
                remaining -= n
                if let pace { try await Task.sleep(for: pace) }
            }
            if truncate { throw CancellationError() }
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: [.contentType: contentType], body: body)
    }

    /// The engine's headers that identify a submission in the log.
    func identity(_ request: Request) -> (key: String?, user: String?) {
        (Self.header(request, "Idempotency-Key"), Self.header(request, "X-Pargen-User"))
    }

    /// Where a task stands now, for the protocols to name in their own words.
    enum Phase {
        case waiting
        case running(Double)
        case succeeded, cancelled
        case failed(FakeFailure)
    }

    func phase(_ task: FakeTask) -> Phase {
        if task.cancelled { return .cancelled }
        guard let start = task.startedAt else { return .waiting }
        let now = state.now
        if now >= start + task.seconds { return task.failure.map { .failed($0) } ?? .succeeded }
        return .running(min(0.99, max(0, (now - start) / task.seconds)))
    }
}

// MARK: - OpenAI

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

extension FakeRoutes {
    static func miniMax(_ code: Int, _ message: String, _ extra: [String: Any] = [:]) -> Response {
        var object = extra
        object["base_resp"] = ["status_code": code, "status_msg": message]
        object["trace_id"] = UUID().uuidString.lowercased()
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
            let hex = head.map { String(format: "%02x", $0) }.joined()
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

// MARK: - Runway

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

extension FakeRoutes {
    /// Real-time speech refuses with bare statuses.
    static let azureRefusals = Refusals(
        serverError: { Response(status: .serviceUnavailable) },
        malformed: { text(.ok, "<html>") },
        overRate: { wait in Response(status: .tooManyRequests, headers: retryAfter(wait)) },
        overConcurrency: { Response(status: .tooManyRequests, headers: retryAfter(1)) },
        policy: { Response(status: .badRequest) }
    )

    func registerAzure(_ router: Router<BasicRequestContext>) {
        router.post("/cognitiveservices/v1") { request, _ -> Response in
            guard keyOK(request, header: "Ocp-Apim-Subscription-Key") else { return Response(status: .unauthorized) }
            guard Self.header(request, "Content-Type")?.hasPrefix("application/ssml+xml") == true else {
                return Response(status: .unsupportedMediaType)
            }
            guard let outputFormat = Self.header(request, "X-Microsoft-OutputFormat") else {
                return Response(status: .badRequest)
            }
            let ssml = String(decoding: try await body(request), as: UTF8.self)
            guard let text = Self.ssmlText(ssml) else { return Response(status: .badRequest) }
            if let refused = try await gate(request, "cognitiveservices/v1", text, sync: true, Self.azureRefusals) {
                return refused
            }
            defer { state.finishSync() }
            try await answerLatency(text)
            let (type, format) =
                outputFormat.hasPrefix("riff")
                ? ("audio/x-wav", "wav")
                : outputFormat.contains("mp3")
                    ? ("audio/mpeg", "mp3")
                    : outputFormat.hasPrefix("ogg") ? ("audio/ogg", "ogg") : ("audio/pcm", "pcm")
            return media(video: false, contentType: type, format: format)
        }
        registerAzureBatch(router)
        router.get("/cognitiveservices/voices/list") { request, _ -> Response in
            guard keyOK(request, header: "Ocp-Apim-Subscription-Key") else { return Response(status: .unauthorized) }
            let data =
                (try? JSONSerialization.data(withJSONObject: [
                    ["ShortName": "en-US-AvaMultilingualNeural", "Locale": "en-US"]
                ])) ?? Data()
            return Response(
                status: .ok,
                headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(bytes: data))
            )
        }
    }

    /// The text inside the SSML's `<voice>` element, unescaped.
    static func ssmlText(_ ssml: String) -> String? {
        guard let open = ssml.range(of: "<voice"), let close = ssml.range(of: "</voice>"),
            let tagEnd = ssml[open.upperBound...].firstIndex(of: ">")
        else { return nil }
        let inner = ssml[ssml.index(after: tagEnd)..<close.lowerBound]
        return inner.replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(of: "&gt;", with: ">")
            .replacingOccurrences(of: "&apos;", with: "'").replacingOccurrences(of: "&quot;", with: "\"")
            .replacingOccurrences(of: "&amp;", with: "&")
    }
}

// MARK: - Azure batch synthesis

extension FakeRoutes {
    static func azureError(
        _ status: HTTPResponse.Status,
        _ code: String,
        _ message: String,
        headers: HTTPFields = [:]
    ) -> Response {
        json(status, ["error": ["code": code, "message": message]], headers: headers)
    }

    static let azureBatchRefusals = Refusals(
        serverError: { azureError(.internalServerError, "InternalServerError", "An internal error occurred.") },
        malformed: { text(.created, "{\"id\":") },
        overRate: { wait in
            azureError(.tooManyRequests, "TooManyRequests", "Too many requests.", headers: retryAfter(wait))
        },
        overConcurrency: {
            azureError(.tooManyRequests, "TooManyRequests", "Too many concurrent syntheses.", headers: retryAfter(1))
        },
        policy: { azureError(.badRequest, "ContentPolicyViolation", "An input was rejected by content filtering.") }
    )

    func registerAzureBatch(_ router: Router<BasicRequestContext>) {
        router.put("/texttospeech/batchsyntheses/{id}") { request, context -> Response in
            guard keyOK(request, header: "Ocp-Apim-Subscription-Key") else {
                return Self.azureError(.unauthorized, "Unauthorized", "Access denied due to invalid subscription key.")
            }
            let id = try context.parameters.require("id")
            let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
            guard (3...64).contains(id.count), id.allSatisfy({ allowed.contains($0) }),
                id.first!.isLetter || id.first!.isNumber,
                id.last!.isLetter || id.last!.isNumber
            else {
                return Self.azureError(.badRequest, "BadRequest", "The synthesis id \(id) is invalid.")
            }
            let json = try await jsonBody(request) ?? [:]
            let inputs = (json["inputs"] as? [[String: Any]]) ?? []
            guard !inputs.isEmpty else { return Self.azureError(.badRequest, "BadRequest", "The inputs is required.") }
            guard inputs.count <= 10_000 else {
                return Self.azureError(.badRequest, "BadRequest", "The number of inputs exceeds 10000.")
            }
            let texts = inputs.map { input -> String in
                let content = (input["content"] as? String) ?? (input["text"] as? String) ?? ""
                return Self.ssmlText(content) ?? content
            }
            let format =
                ((json["properties"] as? [String: Any])?["outputFormat"] as? String) ?? "riff-24khz-16bit-mono-pcm"
            if state.batch(id) != nil {
                return Self.azureError(.conflict, "Conflict", "A batch synthesis with id \(id) already exists.")
            }
            let prompt = texts.joined(separator: "\n")
            if let refused = try await gate(request, "batchsyntheses", prompt, sync: false, Self.azureBatchRefusals) {
                return refused
            }
            let task = state.createTask(prompt: prompt, video: false, prefix: "batch-")
            _ = state.registerBatch(FakeBatch(id: id, taskID: task.id, texts: texts, format: format))
            try await hangIfChosen(prompt)
            return Self.json(.created, azureBatch(id: id, task: task, count: texts.count, format: format))
        }
        router.get("/texttospeech/batchsyntheses/{id}") { request, context -> Response in
            guard keyOK(request, header: "Ocp-Apim-Subscription-Key") else {
                return Self.azureError(.unauthorized, "Unauthorized", "Access denied due to invalid subscription key.")
            }
            try await pause(options.latencySeconds)
            if state.chance(options.pollErrorRate) { return Self.text(.serviceUnavailable, "upstream busy") }
            // A missing id answers 204, as Azure does.
            guard let batch = state.batch(try context.parameters.require("id")), let task = state.task(batch.taskID)
            else {
                return Response(status: .noContent)
            }
            return Self.json(.ok, azureBatch(id: batch.id, task: task, count: batch.count, format: batch.format))
        }
        router.delete("/texttospeech/batchsyntheses/{id}") { request, context -> Response in
            guard keyOK(request, header: "Ocp-Apim-Subscription-Key") else {
                return Self.azureError(.unauthorized, "Unauthorized", "Access denied due to invalid subscription key.")
            }
            _ = state.deleteBatch(try context.parameters.require("id"))
            return Response(status: .noContent)
        }
        // The result ZIP behind its (fake) SAS link: 0001.wav, 0002.wav, ... and summary.json.
        router.get("/batch-results/{id}") { _, context -> Response in
            guard let batch = state.batch(try context.parameters.require("id")), let task = state.task(batch.taskID),
                case .succeeded = phase(task)
            else {
                return Self.text(.notFound, "<Error><Code>BlobNotFound</Code></Error>")
            }
            switch state.useLink(batch.taskID) {
            case .expired, nil:
                return Self.text(
                    .forbidden,
                    "<Error><Code>AuthenticationFailed</Code><Message>Signature not valid in the specified time frame</Message></Error>"
                )
            case .truncated, .trickled, .whole: break
            }
            let zip = try Self.batchZip(texts: batch.texts, bytes: options.audioBytes, format: batch.format)
            return Response(
                status: .ok,
                headers: [.contentType: "application/zip"],
                body: .init(byteBuffer: ByteBuffer(bytes: zip))
            )
        }
    }

    func azureBatch(id: String, task: FakeTask, count: Int, format: String) -> [String: Any] {
        var object: [String: Any] = [
            "id": id, "inputKind": "SSML", "createdDateTime": ISO8601DateFormatter().string(from: Date()),
            "properties": ["outputFormat": format, "timeToLiveInHours": 24],
        ]
        switch phase(task) {
        case .waiting: object["status"] = "NotStarted"
        case .running: object["status"] = "Running"
        case .succeeded:
            object["status"] = "Succeeded"
            object["outputs"] = ["result": "\(base)/batch-results/\(id)?sv=2024&sig=fake"]
            let failed = state.batch(id)?.texts.filter { $0.contains("[[fail]]") }.count ?? 0
            object["properties"] = [
                "outputFormat": format, "succeededAudioCount": count - failed, "failedAudioCount": failed,
                "billingDetails": ["neuralCharacters": task.prompt.count],
            ]
        case .failed, .cancelled:
            object["status"] = "Failed"
            object["error"] = [
                "code": "ContentPolicyViolation", "message": "An input was rejected by content filtering.",
            ]
        }
        return object
    }

    /// The results archive: file N holds the format's header, then input N's text, then padding to `bytes`, so
    /// that a client that splits the archive wrongly hands a job another input's audio, and a test can tell.
    static func batchZip(texts: [String], bytes: Int, format: String) throws -> Data {
        let archive = try Archive(accessMode: .create)
        let wav = format.hasPrefix("riff")
        // An input containing [[fail]] failed on its own (as one input of a batch can): it has no file.
        for (offset, text) in texts.enumerated() where !text.contains("[[fail]]") {
            let index = offset + 1
            let head = signature(wav ? "wav" : "mp3") + Array(text.utf8)
            let content = Data(head + [UInt8](repeating: 0x55, count: max(0, bytes - head.count)))
            try archive.addEntry(
                with: String(format: "%04d.%@", index, wav ? "wav" : "mp3"),
                type: .file,
                uncompressedSize: Int64(content.count),
                compressionMethod: .deflate
            ) { position, size in content.subdata(in: Int(position)..<Int(position) + size) }
        }
        let summary = Data(#"{"jobID":"fake","status":"Succeeded"}"#.utf8)
        try archive.addEntry(with: "summary.json", type: .file, uncompressedSize: Int64(summary.count)) {
            position,
            size in
            summary.subdata(in: Int(position)..<Int(position) + size)
        }
        return archive.data ?? Data()
    }
}
