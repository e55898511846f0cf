import Dispatch
public import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A provider that makes real media on this machine, with no network and no credentials.
///
/// Audio is a WAV file synthesised from the prompt (the same prompt and seed give the same bytes) at the
/// requested duration and sample rate (`metadata["sample_rate"]`, 8000 to 48000, default 24000). Video is
/// an animated GIF of the requested size and duration, at 5 frames per second, that browsers and media
/// players open. Latency, price, quotas and a rate of each kind of failure are configurable, so several local
/// providers show balancing, failover, throttling and retries at work.
public struct LocalProvider: GenerationProvider {
    public struct Configuration: Sendable, Hashable {
        public var name: String
        public var kinds: Set<GenerationKind>
        /// Time to accept a task.
        public var submitLatency: Duration
        /// Time to generate one second of media.
        public var latencyPerMediaSecond: Duration
        /// Random spread of the latencies, as a fraction (0.3 = ±30 %).
        public var latencyJitter: Double
        /// Fraction of calls that fail with a transient error (HTTP 503-like).
        public var transientFailureRate: Double
        /// Fraction of calls that are throttled (HTTP 429-like), with ``throttleRetryAfter``.
        public var throttleRate: Double
        public var throttleRetryAfter: Duration
        /// Fraction of prompts refused for good (content policy). A policy judges the content, so the choice
        /// is by the prompt (a stable hash of it), not by chance: the same prompt is refused every time.
        public var terminalFailureRate: Double
        public var pricing: ProviderPricing
        public var quota: ProviderQuota
        public var maxResolution: Resolution
        public var maxAudioDuration: Duration
        public var maxVideoDuration: Duration
        public var seed: UInt64
        /// Appends one line per accepted submission (`idempotency key<TAB>task id<TAB>request id<TAB>billed
        /// nano-dollars`), as a provider's billing log: crash tests read it to prove nothing was submitted twice
        /// and that the ledger charged what the provider billed.
        public var submitLog: URL?

        public init(
            name: String,
            kinds: Set<GenerationKind> = [.audio, .video],
            submitLatency: Duration = .milliseconds(50),
            latencyPerMediaSecond: Duration = .milliseconds(20),
            latencyJitter: Double = 0.3,
            transientFailureRate: Double = 0,
            throttleRate: Double = 0,
            throttleRetryAfter: Duration = .seconds(1),
            terminalFailureRate: Double = 0,
            pricing: ProviderPricing = ProviderPricing(perCharacter: Money(nanos: 15_000), perVideoSecond: .cents(5)),
            quota: ProviderQuota = ProviderQuota(requestsPerMinute: 600, concurrentTasks: 8),
            maxResolution: Resolution = .p1080,
            maxAudioDuration: Duration = .seconds(600),
            maxVideoDuration: Duration = .seconds(60),
            seed: UInt64 = 1
        ) {
            self.name = name
            self.kinds = kinds
            self.submitLatency = submitLatency
            self.latencyPerMediaSecond = latencyPerMediaSecond
            self.latencyJitter = latencyJitter
            self.transientFailureRate = transientFailureRate
            self.throttleRate = throttleRate
            self.throttleRetryAfter = throttleRetryAfter
            self.terminalFailureRate = terminalFailureRate
            self.pricing = pricing
            self.quota = quota
            self.maxResolution = maxResolution
            self.maxAudioDuration = maxAudioDuration
            self.maxVideoDuration = maxVideoDuration
            self.seed = seed
        }
    }

    public let configuration: Configuration
    public let descriptor: ProviderDescriptor

    /// Three local providers with different speed, price and reliability, as the demo uses them:
    /// `local-fast` (quick, dearer, occasionally throttles), `local-cheap` (slow, cheap, fails now and then)
    /// and `local-studio` (audio only, mid-priced, steady).
    ///
    /// - Parameter reliable: Turn every injected failure off.
    public static func demoProviders(reliable: Bool = false, seed: UInt64 = 1, submitLog: URL? = nil) -> [LocalProvider]
    {
        let failures = reliable ? 0.0 : 1.0
        return [
            LocalProvider(
                configuration: Configuration(
                    name: "local-fast",
                    submitLatency: .milliseconds(40),
                    latencyPerMediaSecond: .milliseconds(15),
                    throttleRate: 0.04 * failures,
                    throttleRetryAfter: .milliseconds(800),
                    pricing: ProviderPricing(
                        perRequest: .cents(1),
                        perCharacter: Money(nanos: 30_000),
                        perVideoSecond: .cents(8)
                    ),
                    quota: ProviderQuota(requestsPerMinute: 300, concurrentTasks: 6),
                    seed: seed
                )
            ),
            LocalProvider(
                configuration: Configuration(
                    name: "local-cheap",
                    submitLatency: .milliseconds(120),
                    latencyPerMediaSecond: .milliseconds(45),
                    transientFailureRate: 0.12 * failures,
                    terminalFailureRate: 0.01 * failures,
                    pricing: ProviderPricing(perCharacter: Money(nanos: 10_000), perVideoSecond: .cents(3)),
                    quota: ProviderQuota(requestsPerMinute: 120, concurrentTasks: 4),
                    maxResolution: .p720,
                    seed: seed &+ 1
                )
            ),
            LocalProvider(
                configuration: Configuration(
                    name: "local-studio",
                    kinds: [.audio],
                    submitLatency: .milliseconds(80),
                    latencyPerMediaSecond: .milliseconds(25),
                    transientFailureRate: 0.03 * failures,
                    pricing: ProviderPricing(perCharacter: Money(nanos: 20_000), perAudioSecond: Money(nanos: 100_000)),
                    quota: ProviderQuota(requestsPerMinute: 200, concurrentTasks: 5),
                    seed: seed &+ 2
                )
            ),
        ].map { provider in
            var configuration = provider.configuration
            configuration.submitLog = submitLog
            return LocalProvider(configuration: configuration)
        }
    }

    public init(configuration: Configuration) {
        self.configuration = configuration
        descriptor = ProviderDescriptor(
            name: configuration.name,
            capabilities: ProviderCapabilities(
                kinds: configuration.kinds,
                audioFormats: configuration.kinds.contains(.audio) ? [.wav] : [],
                videoFormats: configuration.kinds.contains(.video) ? [.gif] : [],
                maxAudioDuration: configuration.maxAudioDuration,
                maxVideoDuration: configuration.maxVideoDuration,
                maxResolution: configuration.kinds.contains(.video) ? configuration.maxResolution : nil,
                maxPromptLength: 10_000
            ),
            pricing: configuration.pricing,
            quota: configuration.quota,
            // The same idempotency key is the same task (its id and media derive from the key), charged once.
            idempotentSubmission: true
        )
    }

    public func generate(_ request: ValidatedRequest, context: ProviderCallContext) async throws -> ProviderOutput {
        // As a provider's API answers 400: a sample rate it cannot make is refused, not replaced by the default.
        if request.kind == .audio, let rate = request.metadata["sample_rate"],
            !(rate.exactInt.map(LocalMedia.sampleRates.contains) ?? false)
        {
            throw GenerationError(
                .invalidRequest,
                "must be a whole number of hertz from 8000 to 48000, not \(rate)",
                provider: descriptor.name,
                providerCode: "400",
                field: "metadata.sample_rate"
            )
        }
        var rng = SplitMix64(seed: SplitMix64.stableHash(String(configuration.seed), context.idempotencyKey))
        func jittered(_ value: Duration) -> Duration {
            let spread = configuration.latencyJitter
            let unit = Double(rng.next() >> 11) / Double(1 << 53)
            let factor: Double = 1 - spread + 2 * spread * unit
            return value * factor
        }
        try await context.clock.sleep(for: jittered(configuration.submitLatency))
        let roll = Double(rng.next() >> 11) / Double(1 << 53)
        let threshold = configuration.throttleRate
        if roll < threshold {
            throw GenerationError(
                .rateLimited,
                "too many requests",
                provider: descriptor.name,
                providerCode: "429",
                retryAfter: configuration.throttleRetryAfter
            )
        }
        let contentRoll = Double(SplitMix64.stableHash(descriptor.name, request.prompt) % 1_000_000) / 1_000_000
        if contentRoll < configuration.terminalFailureRate {
            throw GenerationError(
                .terminal,
                "the prompt was refused by the content policy",
                provider: descriptor.name,
                providerCode: "content_policy_violation"
            )
        }
        let failsMidway = roll < threshold + configuration.transientFailureRate
        let taskID = "\(descriptor.name)-\(SplitMix64.stableHash(context.idempotencyKey))"
        if let submitLog = configuration.submitLog {
            // A key this provider saw before is the same task: no new submission. (Another provider knows nothing
            // of it: a key sent to a second provider is a second task, billed again.)
            let seen =
                (try? String(contentsOf: submitLog, encoding: .utf8))?
                .contains("\(context.idempotencyKey)\t\(descriptor.name)-") ?? false
            if !seen {
                let billed = configuration.pricing.estimate(request).nanos
                Self.append("\(context.idempotencyKey)\t\(taskID)\t\(request.id)\t\(billed)\n", to: submitLog)
            }
        }
        try await context.reportSubmitted(taskID: taskID)
        return try await run(request, taskID: taskID, context: context, failsMidway: failsMidway, rng: &rng)
    }

    public func resume(
        taskID: String,
        request: ValidatedRequest,
        context: ProviderCallContext
    ) async throws
        -> ProviderOutput
    {
        var rng = SplitMix64(seed: SplitMix64.stableHash(String(configuration.seed), taskID))
        return try await run(request, taskID: taskID, context: context, failsMidway: false, rng: &rng)
    }

    private func run(
        _ request: ValidatedRequest,
        taskID: String,
        context: ProviderCallContext,
        failsMidway: Bool,
        rng: inout SplitMix64
    ) async throws -> ProviderOutput {
        let spread = configuration.latencyJitter
        let unit = Double(rng.next() >> 11) / Double(1 << 53)
        let factor: Double = (1 - spread + 2 * spread * unit) * request.duration.seconds
        let total = configuration.latencyPerMediaSecond * factor
        let steps = 4
        for step in 1...steps {
            try await context.clock.sleep(for: total / steps)
            if failsMidway && step == 2 {
                throw GenerationError(
                    .transient,
                    "the service is temporarily unavailable",
                    provider: descriptor.name,
                    providerCode: "503"
                )
            }
            context.reportProgress(Double(step) / Double(steps))
        }
        context.reportDownloading()
        let format = descriptor.capabilities.outputFormat(for: request)
        let destination = context.destination
        let seed = SplitMix64.stableHash(String(configuration.seed), request.fingerprint)
        // Rendering is CPU-heavy: off the cooperative pool.
        try await BlockingIO.run {
            try LocalResourceError.checking(destination, "write") {
                switch request.kind {
                case .audio: try LocalMedia.renderAudio(request, seed: seed, to: destination)
                case .video: try LocalMedia.renderVideo(request, seed: seed, to: destination)
                }
            }
        }
        return ProviderOutput(format: format, duration: request.duration, providerTaskID: taskID)
    }

    /// Appends a line with one `write` on an `O_APPEND` descriptor, so lines from processes killed at any
    /// moment never interleave.
    private static func append(_ line: String, to url: URL) {
        let descriptor = open(url.path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { return }
        defer { close(descriptor) }
        var bytes = Array(line.utf8)
        _ = write(descriptor, &bytes, bytes.count)
    }
}

/// The synthesisers behind ``LocalProvider``.
enum LocalMedia {
    /// The audio sample rates it makes, in hertz (`metadata["sample_rate"]`; 24000 when not given).
    static let sampleRates = 8_000...48_000

    static func renderAudio(_ request: ValidatedRequest, seed: UInt64, to url: URL) throws {
        let sampleRate = request.metadata["sample_rate"]?.exactInt.flatMap { sampleRates.contains($0) ? $0 : nil } ?? 24_000
        var rng = SplitMix64(seed: seed)
        // A pentatonic melody from the prompt's words: one note per word, looping, with a soft pad under it.
        let scale = [0, 2, 4, 7, 9, 12, 14, 16]
        let root = 48 + Int(rng.next() % 12)
        let words = request.prompt.split(separator: " ")
        let notes = words.map { word in root + scale[Int(SplitMix64.stableHash(String(word)) % UInt64(scale.count))] }
        let noteLength = 0.25 + Double(rng.next() % 4) * 0.05
        let samplesPerNote = Int(Double(sampleRate) * noteLength)
        let count = Int(request.duration.seconds * Double(sampleRate))
        let twoPi = 2 * Double.pi
        let padFrequency = 440 * Foundation.pow(2, Double(root - 12 - 69) / 12)
        try WAVWriter.write(to: url, sampleRate: sampleRate, sampleCount: count) { index in
            let t = Double(index) / Double(sampleRate)
            let noteIndex = index / max(1, samplesPerNote)
            let note = notes.isEmpty ? root : notes[noteIndex % notes.count]
            let frequency = 440 * Foundation.pow(2, Double(note - 69) / 12)
            let inNote = Double(index % max(1, samplesPerNote)) / Double(max(1, samplesPerNote))
            let envelope = min(1, inNote * 20) * (1 - inNote) * (1 - inNote)
            let fadeIn = min(1, t / 0.05)
            let fadeOut = min(1, (Double(count - index) / Double(sampleRate)) / 0.05)
            let voice = Foundation.sin(twoPi * frequency * t) * 0.45 + Foundation.sin(twoPi * frequency * 2 * t) * 0.1
            let pad = Foundation.sin(twoPi * padFrequency * t) * 0.12
            return (voice * envelope + pad) * fadeIn * fadeOut
        }
    }

    static func renderVideo(_ request: ValidatedRequest, seed: UInt64, to url: URL) throws {
        let resolution = request.resolution ?? .p720
        let width = resolution.width
        let height = resolution.height
        var rng = SplitMix64(seed: seed)
        func colour() -> (Double, Double, Double) {
            (Double(rng.next() % 200) + 30, Double(rng.next() % 200) + 30, Double(rng.next() % 200) + 30)
        }
        let top = colour()
        let bottom = colour()
        let ball = colour()
        // Palette: 0-191 a vertical gradient, 192-255 shades of the ball colour.
        var palette: [(UInt8, UInt8, UInt8)] = []
        for i in 0..<192 {
            let f = Double(i) / 191
            palette.append(
                (
                    UInt8(top.0 + (bottom.0 - top.0) * f), UInt8(top.1 + (bottom.1 - top.1) * f),
                    UInt8(top.2 + (bottom.2 - top.2) * f)
                )
            )
        }
        for i in 0..<64 {
            let f = 0.5 + Double(i) / 126
            palette.append(
                (UInt8(min(255, ball.0 * f + 20)), UInt8(min(255, ball.1 * f + 20)), UInt8(min(255, ball.2 * f + 20)))
            )
        }
        let writer = try GIFWriter(url: url, width: width, height: height, palette: palette)
        let background: (Int, Int) -> UInt8 = { _, y in UInt8(min(191, y * 192 / max(1, height))) }
        let framesPerSecond = 5
        let frames = max(1, Int((request.duration.seconds * Double(framesPerSecond)).rounded()))
        let radius = max(4, min(width, height) / 12)
        let phase = Double(rng.next() % 628) / 100
        func centre(_ frame: Int) -> (Int, Int) {
            let t = Double(frame) / Double(max(1, frames - 1))
            let x = radius + Int(Double(width - 2 * radius) * t)
            let y = height / 2 + Int(Double(height / 2 - radius) * 0.8 * Foundation.sin(phase + t * 4 * Double.pi))
            return (x, y)
        }
        func inBall(_ px: Int, _ py: Int, _ c: (Int, Int)) -> UInt8? {
            let dx = px - c.0
            let dy = py - c.1
            let d2 = dx * dx + dy * dy
            guard d2 <= radius * radius else { return nil }
            return UInt8(255 - min(63, d2 * 63 / max(1, radius * radius)))
        }
        // First frame: the whole picture. Then only the rectangle the ball leaves and enters.
        let first = centre(0)
        try writer.addFrame(x: 0, y: 0, w: width, h: height, delayCentiseconds: 100 / framesPerSecond) { px, py in
            inBall(px, py, first) ?? background(px, py)
        }
        var previous = first
        for frame in 1..<max(1, frames) {
            let current = centre(frame)
            let x0 = max(0, min(previous.0, current.0) - radius)
            let y0 = max(0, min(previous.1, current.1) - radius)
            let x1 = min(width, max(previous.0, current.0) + radius + 1)
            let y1 = min(height, max(previous.1, current.1) + radius + 1)
            try writer.addFrame(x: x0, y: y0, w: x1 - x0, h: y1 - y0, delayCentiseconds: 100 / framesPerSecond) {
                px,
                py in
                inBall(px, py, current) ?? background(px, py)
            }
            previous = current
        }
        try writer.finish()
    }
}
