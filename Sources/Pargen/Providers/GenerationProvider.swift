public import Foundation
public import Logging

/// What a provider can produce.
public struct ProviderCapabilities: Sendable, Hashable {
    public var kinds: Set<GenerationKind>
    /// Audio formats; the first is the native default.
    public var audioFormats: [MediaFormat]
    /// Video formats; the first is the native default.
    public var videoFormats: [MediaFormat]
    public var maxAudioDuration: Duration
    public var maxVideoDuration: Duration
    /// Largest frame the provider renders; `nil` for no video.
    public var maxResolution: Resolution?
    public var maxPromptLength: Int
    /// Voices the provider knows; `nil` accepts any name.
    public var voices: Set<String>?
    /// Models the provider offers; the first is its default. Empty accepts any name.
    public var models: [String]
    /// The only video lengths the provider makes (OpenAI 4, 8 or 12 s); `nil` for any up to the maximum.
    public var videoDurations: [Duration]?
    /// The only frame sizes the provider renders; `nil` for any up to ``maxResolution``.
    public var videoResolutions: [Resolution]?
    /// Shortest audio the provider makes, for providers that take a duration (sound effects).
    public var minAudioDuration: Duration

    public init(
        kinds: Set<GenerationKind>,
        audioFormats: [MediaFormat] = [],
        videoFormats: [MediaFormat] = [],
        maxAudioDuration: Duration = .seconds(600),
        maxVideoDuration: Duration = .seconds(60),
        maxResolution: Resolution? = nil,
        maxPromptLength: Int = 5_000,
        voices: Set<String>? = nil,
        models: [String] = [],
        videoDurations: [Duration]? = nil,
        videoResolutions: [Resolution]? = nil,
        minAudioDuration: Duration = .zero
    ) {
        self.videoDurations = videoDurations
        self.videoResolutions = videoResolutions
        self.minAudioDuration = minAudioDuration
        self.kinds = kinds
        self.audioFormats = audioFormats
        self.videoFormats = videoFormats
        self.maxAudioDuration = maxAudioDuration
        self.maxVideoDuration = maxVideoDuration
        self.maxResolution = maxResolution
        self.maxPromptLength = maxPromptLength
        self.voices = voices
        self.models = models
    }

    /// Why this provider cannot serve `request`, or `nil` when it can.
    public func refusal(for request: ValidatedRequest) -> String? { refusedField(for: request)?.reason }

    /// Which field of `request` this provider cannot serve (`type`, `format`, `duration`, `resolution`, `prompt`,
    /// `voice` or `model`) and why, or `nil` when it can serve it.
    public func refusedField(for request: ValidatedRequest) -> (field: String, reason: String)? {
        guard kinds.contains(request.kind) else { return ("type", "does not generate \(request.kind)") }
        let formats = request.kind == .audio ? audioFormats : videoFormats
        if let format = request.format, !formats.contains(format) {
            return ("format", "cannot produce \(format) (it produces \(formats.map(\.name).joined(separator: ", ")))")
        }
        let longest = request.kind == .audio ? maxAudioDuration : maxVideoDuration
        if request.duration > longest {
            return ("duration", "cannot make \(request.kind) longer than \(longest.seconds.formatted1) s")
        }
        if request.kind == .audio, request.duration < minAudioDuration {
            return ("duration", "cannot make audio shorter than \(minAudioDuration.seconds.formatted1) s")
        }
        if request.kind == .video, let allowed = videoDurations, !allowed.contains(request.duration) {
            let list = allowed.map { "\($0.seconds.formatted1) s" }.joined(separator: ", ")
            return ("duration", "makes videos of \(list) only, not \(request.duration.seconds.formatted1) s")
        }
        if request.kind == .video, let resolution = request.resolution {
            guard let maxResolution else { return ("resolution", "does not render video") }
            if resolution.width > maxResolution.width || resolution.height > maxResolution.height {
                return ("resolution", "renders at most \(maxResolution)")
            }
            if let allowed = videoResolutions, !allowed.contains(resolution) {
                return ("resolution", "renders \(allowed.map(\.description).joined(separator: ", ")) only, not \(resolution)")
            }
        }
        if request.prompt.count > maxPromptLength {
            return ("prompt", "accepts prompts of at most \(maxPromptLength) characters")
        }
        if let voice = request.voice, let voices, !voices.contains(voice) { return ("voice", "has no voice \(voice)") }
        if let model = request.model, !models.isEmpty, !models.contains(model) { return ("model", "has no model \(model)") }
        return nil
    }

    /// The format the provider will produce for `request`.
    public func outputFormat(for request: ValidatedRequest) -> MediaFormat {
        request.format ?? (request.kind == .audio ? audioFormats.first : videoFormats.first) ?? .wav
    }
}

/// A provider's price list, in exact money.
public struct ProviderPricing: Sendable, Hashable {
    public var perRequest: Money
    public var perCharacter: Money
    public var perAudioSecond: Money
    public var perVideoSecond: Money
    /// Prices of particular models, replacing these.
    public var models: [String: ProviderPricing]

    public init(
        perRequest: Money = .zero,
        perCharacter: Money = .zero,
        perAudioSecond: Money = .zero,
        perVideoSecond: Money = .zero,
        models: [String: ProviderPricing] = [:]
    ) {
        self.perRequest = perRequest
        self.perCharacter = perCharacter
        self.perAudioSecond = perAudioSecond
        self.perVideoSecond = perVideoSecond
        self.models = models
    }

    /// The price of `request`: per request, plus per character of speech, plus per second of media.
    public func estimate(_ request: ValidatedRequest) -> Money {
        if let model = request.model, let special = models[model] { return special.estimate(request) }
        var total = perRequest
        let milliseconds = request.duration.milliseconds
        switch request.kind {
        case .audio:
            total =
                total + perCharacter * Int64(request.characterCount) + perAudioSecond.times(thousandths: milliseconds)
        case .video:
            total = total + perVideoSecond.times(thousandths: milliseconds)
        }
        return total
    }
}

/// Everything the engine needs to know about a provider before calling it.
public struct ProviderDescriptor: Sendable, Hashable {
    /// Unique name, used in requests, configuration, logs and results.
    public var name: String
    public var capabilities: ProviderCapabilities
    public var pricing: ProviderPricing
    public var quota: ProviderQuota
    /// The provider de-duplicates submissions by idempotency key (the same key is the same task, charged
    /// once). A call cut off by a crash before its task id was recorded is then simply made again with the
    /// same key; for any other provider the job waits in ``JobState/needsReconciliation``.
    public var idempotentSubmission: Bool

    public init(
        name: String,
        capabilities: ProviderCapabilities,
        pricing: ProviderPricing,
        quota: ProviderQuota,
        idempotentSubmission: Bool = false
    ) {
        self.name = name
        self.capabilities = capabilities
        self.pricing = pricing
        self.quota = quota
        self.idempotentSubmission = idempotentSubmission
    }
}

/// What a provider returns once the media is written to ``ProviderCallContext/destination``.
public struct ProviderOutput: Sendable, Hashable {
    public var format: MediaFormat
    public var duration: Duration
    /// The provider's task or request id.
    public var providerTaskID: String?
    /// What the provider says it charged, when it says; otherwise the estimate is charged.
    public var reportedCost: Money?

    public init(format: MediaFormat, duration: Duration, providerTaskID: String? = nil, reportedCost: Money? = nil) {
        self.format = format
        self.duration = duration
        self.providerTaskID = providerTaskID
        self.reportedCost = reportedCost
    }
}

/// What the engine hands a provider for one call.
public struct ProviderCallContext: Sendable {
    /// Write the media here (the engine checks it, hashes it and moves it into place).
    public var destination: URL
    public var clock: PargenClock
    /// 1 for the first call of a job.
    public var attempt: Int
    /// Deterministic per job and attempt: send it where the provider supports idempotency.
    public var idempotencyKey: String
    public var logger: Logger
    /// The batch the engine admitted this call with, when it admitted several compatible calls to this provider
    /// together (``Batcher``): an adapter that can make one provider request of several lines (Azure's batch
    /// synthesis) waits for the batch's other members instead of guessing from when the calls arrive.
    public var batch: BatchMembership?
    private let submitted: @Sendable (String) async throws -> Void
    private let progress: @Sendable (Double) -> Void
    private let downloading: @Sendable () -> Void
    private let throttled: @Sendable (Duration?) -> Void
    private let answered: @Sendable () -> Void
    private let billed: @Sendable () -> Void

    public init(
        destination: URL,
        clock: PargenClock,
        attempt: Int,
        idempotencyKey: String,
        logger: Logger,
        batch: BatchMembership? = nil,
        submitted: @escaping @Sendable (String) async throws -> Void = { _ in },
        progress: @escaping @Sendable (Double) -> Void = { _ in },
        downloading: @escaping @Sendable () -> Void = {},
        throttled: @escaping @Sendable (Duration?) -> Void = { _ in },
        answered: @escaping @Sendable () -> Void = {},
        billed: @escaping @Sendable () -> Void = {}
    ) {
        self.throttled = throttled
        self.answered = answered
        self.billed = billed
        self.destination = destination
        self.clock = clock
        self.attempt = attempt
        self.idempotencyKey = idempotencyKey
        self.logger = logger
        self.batch = batch
        self.submitted = submitted
        self.progress = progress
        self.downloading = downloading
    }

    /// Call right after the provider accepted the task, before polling: the engine persists the task id so
    /// that a crash resumes polling instead of paying again.
    public func reportSubmitted(taskID: String) async throws { try await submitted(taskID) }
    /// Progress of the running task, 0...1.
    public func reportProgress(_ fraction: Double) { progress(min(1, max(0, fraction))) }
    /// The provider has answered the submission (its response head arrived), so the call has certainly
    /// reached it: the engine counts the provider's request window from here.
    public func reportAnswered() { answered() }
    /// A synchronous call's answer is the media the provider made and billed (a `200` whose body is the audio):
    /// if the answer is then cut short, unusable or cannot be saved, the engine still charges it, and retrying
    /// the line buys it again (``PargenConfiguration/Retry/payAgainForLostAnswers``).
    public func reportBilled() { billed() }
    /// The result is being fetched.
    public func reportDownloading() { downloading() }
    /// The provider accepted the task but holds it back for load (Runway `THROTTLED`): the engine lowers its
    /// concurrency towards this provider without failing the call.
    public func reportThrottled(retryAfter: Duration? = nil) { throttled(retryAfter) }
}

/// A call's place in a batch the engine admitted to one provider at once.
///
/// The engine keeps one promise about a batch: each member either calls its provider or leaves the batch
/// without calling (its budget refused it, its lease was lost, the engine stopped), and a member that leaves is
/// counted in ``departed`` and reported to ``whenMemberLeaves(_:)``. So an adapter that waits for a batch's
/// members can wait for exactly `size - departed` calls, however long a loaded machine takes to bring them.
public struct BatchMembership: Sendable, Hashable {
    /// The same for every member of the batch, and different from every other batch of this process.
    public var id: String
    /// How many calls the batch has, this one included.
    public var size: Int
    private let departures: BatchDepartures

    public init(id: String, size: Int) {
        self.id = id
        self.size = size
        self.departures = BatchDepartures()
    }

    /// Members that have left the batch without calling their provider, so far.
    public var departed: Int { departures.count }

    /// Calls `body` each time a member leaves the batch without calling its provider from now on (never for
    /// departures that ``departed`` already counts).
    public func whenMemberLeaves(_ body: @escaping @Sendable () -> Void) {
        departures.observe(body)
    }

    /// Tells the batch that one of its members will not call its provider. The engine does this; once per member.
    public func memberLeft() {
        departures.leave()
    }

    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.id == rhs.id && lhs.size == rhs.size }
    public func hash(into hasher: inout Hasher) {
        hasher.combine(id)
        hasher.combine(size)
    }
}

/// The departures of one batch, shared by its members' copies of ``BatchMembership``.
private final class BatchDepartures: Sendable {
    private struct State {
        var count = 0
        var observers: [@Sendable () -> Void] = []
    }
    private let state = Locked(State())

    var count: Int { state.withLock { $0.count } }

    func observe(_ body: @escaping @Sendable () -> Void) {
        state.withLock { $0.observers.append(body) }
    }

    func leave() {
        let observers = state.withLock { state in
            state.count += 1
            return state.observers
        }
        // Outside the lock: an observer may read ``count``.
        for observer in observers { observer() }
    }
}

/// A media generation backend: a commercial API adapter, a local synthesizer, or a test double.
///
/// Throw ``GenerationError`` with the right code: ``GenerationError/Code/rateLimited`` (with
/// `retryAfter` when the provider gives one), ``GenerationError/Code/transient`` or
/// ``GenerationError/Code/terminal``. Any other error counts as transient.
public protocol GenerationProvider: Sendable {
    var descriptor: ProviderDescriptor { get }

    /// Generates the media for `request` into `context.destination`.
    func generate(_ request: ValidatedRequest, context: ProviderCallContext) async throws -> ProviderOutput

    /// Continues a task submitted earlier (after a crash) by polling it; never submits again.
    func resume(taskID: String, request: ValidatedRequest, context: ProviderCallContext) async throws -> ProviderOutput

    /// Asks the provider to stop a task it accepted (see the default, which cannot).
    func cancelTask(taskID: String) async throws -> Bool
}

extension GenerationProvider {
    /// Cancels a task the provider accepted. The default cannot: most providers have no such call.
    ///
    /// - Returns: `true` when the provider was asked to stop the task (its next poll reports the end), `false`
    ///   when this provider cannot cancel tasks.
    public func cancelTask(taskID: String) async throws -> Bool { false }

    public func resume(
        taskID: String,
        request: ValidatedRequest,
        context: ProviderCallContext
    ) async throws
        -> ProviderOutput
    {
        throw GenerationError(
            .terminal,
            "provider cannot resume task \(taskID)",
            provider: descriptor.name
        )
    }
}

extension Double {
    package var formatted1: String {
        let scaled = (self * 10).rounded() / 10
        return scaled == scaled.rounded() ? String(Int(scaled)) : String(scaled)
    }
}
