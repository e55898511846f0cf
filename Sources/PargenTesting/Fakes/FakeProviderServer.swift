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
        // A fixed time draws nothing: the seeded faults then fall on the same calls however the calls interleave.
        let seconds = range.lowerBound == range.upperBound ? range.lowerBound : state.uniform(range)
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
