import DequeModule
public import Foundation
import Synchronization

/// The protocols the fakes speak (the same as `ProviderProtocol` in PargenProviders, which this target does
/// not import).
public enum FakeProtocol: String, Sendable, CaseIterable, Codable {
    case openai, elevenlabs, minimax, runway, azure
}

/// How a fake provider behaves: its quotas, its timing and the faults it injects.
public struct FakeProviderOptions: Sendable {
    public var wireProtocol: FakeProtocol
    /// The key clients must send; `nil` accepts any (or none).
    public var apiKey: String?
    /// Submissions allowed in any sliding ``window``; `nil` for none.
    public var requestsPerWindow: Int?
    public var window: Duration
    /// Tasks (and synchronous calls) running at once; `nil` for none.
    public var concurrentTasks: Int?
    /// A task waiting over ``concurrentTasks`` (Runway's `THROTTLED`) starts only after a status poll has seen it
    /// waiting, so that a client's poll, however late a loaded machine makes it, sees the throttling. Runway may
    /// hold a task back as long as it likes; by default the fake starts it as soon as a slot is free.
    public var throttledTasksWaitForAPoll = false
    /// Whether synchronous calls (speech) take a concurrency slot too: ElevenLabs and Azure count every
    /// request, OpenAI and MiniMax only their video tasks.
    public var syncCallsHoldSlots: Bool
    /// How long an asynchronous task runs, in seconds (uniform in the range).
    public var taskSeconds: ClosedRange<Double>
    /// How long a synchronous call (speech) or an API answer takes, in seconds.
    public var latencySeconds: ClosedRange<Double>
    /// How long a submission takes on its way in before the quota counts it, in seconds (a slow network or a
    /// provider's load balancer): the client cannot know when its call is counted.
    public var inboundDelaySeconds: ClosedRange<Double> = 0...0
    /// Size of a generated video file.
    public var videoBytes: Int
    /// Size of generated audio.
    public var audioBytes: Int
    /// Share of submissions answered with the provider's 5xx (or MiniMax 1024 on HTTP 200).
    public var errorRate: Double
    /// Share of submissions accepted (the task is created and billed) whose answer never comes: the connection
    /// hangs after admission, as when an answer is lost on its way back. A prompt containing `[[hang]]` hangs
    /// on its first submission only.
    public var hangRate: Double
    /// Share of submissions answered with a malformed body.
    public var malformedRate: Double
    /// Share of status polls answered with a 503 (the task itself is unaffected).
    public var pollErrorRate: Double
    /// Share of asynchronous tasks that end in the provider's internal failure (a new task may succeed).
    public var taskFailureRate: Double = 0
    /// Share of downloads cut short after half the bytes.
    public var truncateRate: Double
    /// Share of result links that are expired on first use (403), as signed links are after their lifetime.
    public var expiredLinkRate: Double
    /// Share of result downloads that trickle: the bytes come at ``trickleBytesPerSecond``, as from a congested
    /// link or a stalled CDN node.
    public var trickleRate: Double = 0
    public var trickleBytesPerSecond: Int = 4096
    /// Most download faults (expired, truncated) injected into one result; later fetches are whole.
    public var maxFaultsPerResult: Int
    public var seed: UInt64
    /// The fake stops by itself after this long (a forgotten fake never outlives its test run).
    public var lifetime: Duration
    /// Each submission is appended here as a JSON line when it is decided, if set.
    public var logFile: URL?

    public init(
        wireProtocol: FakeProtocol,
        apiKey: String? = nil,
        requestsPerWindow: Int? = nil,
        window: Duration = .seconds(60),
        concurrentTasks: Int? = nil,
        taskSeconds: ClosedRange<Double> = 0.05...0.15,
        latencySeconds: ClosedRange<Double> = 0.0...0.01,
        videoBytes: Int = 64 * 1024,
        audioBytes: Int = 8 * 1024,
        errorRate: Double = 0,
        hangRate: Double = 0,
        malformedRate: Double = 0,
        truncateRate: Double = 0,
        expiredLinkRate: Double = 0,
        maxFaultsPerResult: Int = .max,
        pollErrorRate: Double = 0,
        seed: UInt64 = 1,
        lifetime: Duration = .seconds(3600),
        logFile: URL? = nil
    ) {
        self.logFile = logFile
        self.maxFaultsPerResult = maxFaultsPerResult
        self.pollErrorRate = pollErrorRate
        self.wireProtocol = wireProtocol
        self.apiKey = apiKey
        self.requestsPerWindow = requestsPerWindow
        self.window = window
        self.concurrentTasks = concurrentTasks
        self.syncCallsHoldSlots = wireProtocol == .elevenlabs || wireProtocol == .azure
        self.syncCallsHoldSlots = wireProtocol == .elevenlabs || wireProtocol == .azure
        self.taskSeconds = taskSeconds
        self.latencySeconds = latencySeconds
        self.videoBytes = videoBytes
        self.audioBytes = audioBytes
        self.errorRate = errorRate
        self.hangRate = hangRate
        self.malformedRate = malformedRate
        self.truncateRate = truncateRate
        self.expiredLinkRate = expiredLinkRate
        self.seed = seed
        self.lifetime = lifetime
    }
}

/// One submission the fake received, accepted or not.
public struct FakeSubmission: Sendable, Hashable, Codable {
    /// Seconds since the fake started.
    public var time: Double
    public var endpoint: String
    /// The client's `Idempotency-Key` header (Pargen sends `JOB:ATTEMPT`), if any.
    public var key: String?
    /// The `X-Pargen-User` header, if any.
    public var user: String?
    public var prompt: String
    public var accepted: Bool
    /// Why it was refused: `rate`, `concurrency`, `auth`, `fault`, `invalid`, `policy`; `throttled` for a
    /// Runway task accepted over the concurrency quota.
    public var refusal: String?
    public var taskID: String?
}

/// What a fake decided about one submission.
enum FakeAdmission {
    case accepted
    case overRate(retryAfter: Double)
    case overConcurrency
}

/// An Azure batch synthesis: its task and how many files it makes.
struct FakeBatch: Sendable {
    var id: String
    var taskID: String
    /// The inputs' texts, in order: file N of the results is input N.
    var texts: [String]
    var format: String
    var count: Int { texts.count }
}

/// Why a fake's task fails, each rendered in its protocol's own codes and words.
enum FakeFailure: Sendable {
    /// A content refusal (OpenAI moderation_blocked, MiniMax 1027, Runway SAFETY.OUTPUT.VIDEO): terminal.
    case moderation
    /// The provider's own internal failure (OpenAI video_generation_failed, MiniMax 1024, Runway
    /// INTERNAL.BAD_OUTPUT.CODE01): a new task may succeed.
    case generic
    /// A failure the provider names with a code no client knows.
    case unknown
}

/// A task the fake is running.
struct FakeTask: Sendable {
    var id: String
    var video: Bool
    var prompt: String
    var submittedAt: Double
    /// When it started running; `nil` while it waits (Runway `THROTTLED`).
    var startedAt: Double?
    var seconds: Double
    /// How the task ends in failure, if it does.
    var failure: FakeFailure?
    var fails: Bool { failure != nil }
    var cancelled = false
    /// A status poll has seen it waiting (``FakeProviderOptions/throttledTasksWaitForAPoll``).
    var seenWaiting = false
    var linkUses = 0
    var faults = 0

    func endsAt() -> Double? { startedAt.map { $0 + seconds } }
}

/// The state of a fake provider: its submission log, quota windows and tasks. Thread-safe.
public final class FakeProviderState: Sendable {
    public let options: FakeProviderOptions
    private let started = ContinuousClock.now

    private struct State {
        var log: [FakeSubmission] = []
        var window: Deque<Double> = []
        var tasks: [String: FakeTask] = [:]
        var taskOrder: [String] = []
        var syncInFlight = 0
        var peakConcurrency = 0
        var nextID = 1
        var random: UInt64
        var pollCount = 0
        var downloads = 0
        var batches: [String: FakeBatch] = [:]
        /// Accepted task submissions whose task is not created yet: they hold a slot already, so two concurrent
        /// submissions cannot both see the last slot free.
        var reservedTasks = 0
        /// Prompts whose next answer hangs (chosen at admission), and prompts that have hung once.
        var hangs: [String: Int] = [:]
        var hungOnce: Set<String> = []
        var failedOnce: Set<String> = []
    }

    private let state: Mutex<State>
    private let logHandle: FileHandle?

    public init(options: FakeProviderOptions) {
        self.options = options
        state = Mutex(State(random: options.seed))
        if let file = options.logFile {
            _ = FileManager.default.createFile(atPath: file.path, contents: nil)
            logHandle = try? FileHandle(forWritingTo: file)
        } else {
            logHandle = nil
        }
    }

    /// Appends a submission to the log file (under the state lock, so lines never interleave).
    private func writeLog(_ entry: FakeSubmission) {
        guard let logHandle else { return }
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        guard let data = try? encoder.encode(entry) else { return }
        try? logHandle.write(contentsOf: data + Data("\n".utf8))
    }

    /// Seconds since the fake started.
    public var now: Double {
        let elapsed = ContinuousClock.now - started
        return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }

    // MARK: Reading the log

    public func submissions() -> [FakeSubmission] { state.withLock { $0.log } }

    /// Uses of result links so far (each fetch of a task's result, whole or not).
    public func downloadCount() -> Int { state.withLock { $0.downloads } }

    /// Submissions refused for quota (`rate`, `concurrency`) or accepted over it (`throttled`): each one is a
    /// quota the client exceeded.
    public func quotaViolations() -> Int {
        state.withLock { $0.log.filter { ["rate", "concurrency", "throttled"].contains($0.refusal ?? "") }.count }
    }

    /// The most accepted submissions in any window of the quota's length, from the log.
    public func busiestWindow() -> Int {
        let times = state.withLock { $0.log.filter(\.accepted).map(\.time) }.sorted()
        let window = options.window.secondsDouble
        var best = 0
        var start = 0
        for end in times.indices {
            while times[end] - times[start] >= window { start += 1 }
            best = max(best, end - start + 1)
        }
        return best
    }

    /// How long each task ran (or will run), in seconds, in creation order.
    public func taskDurations() -> [Double] {
        state.withLock { state in state.taskOrder.compactMap { state.tasks[$0]?.seconds } }
    }

    /// Every task's id, in creation order.
    public func taskIDs() -> [String] { state.withLock { $0.taskOrder } }

    /// How long each task runs, by its id.
    public func taskSecondsByID() -> [String: Double] { state.withLock { $0.tasks.mapValues(\.seconds) } }

    /// Each task's start and end, in seconds since the fake started, in creation order.
    public func taskSpans() -> [(start: Double, end: Double)] {
        state.withLock { state in
            state.taskOrder.compactMap { id in state.tasks[id].flatMap { t in t.startedAt.map { ($0, $0 + t.seconds) } }
            }
        }
    }

    /// The most tasks and synchronous calls that ever ran at once.
    public var peakConcurrency: Int { state.withLock { $0.peakConcurrency } }
    public var polls: Int { state.withLock { $0.pollCount } }

    /// Accepted submissions per prompt that came more than once (nothing should).
    public func duplicatePrompts() -> [String: Int] {
        let counts = state.withLock { state in
            Dictionary(state.log.filter(\.accepted).map { ($0.prompt, 1) }, uniquingKeysWith: +)
        }
        return counts.filter { $0.value > 1 }
    }

    // MARK: Deciding

    func random() -> Double {
        state.withLock { state in
            state.random &+= 0x9E37_79B9_7F4A_7C15
            var z = state.random
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            z ^= z >> 31
            return Double(z >> 11) / Double(1 << 53)
        }
    }

    func chance(_ rate: Double) -> Bool { rate > 0 && random() < rate }

    func uniform(_ range: ClosedRange<Double>) -> Double {
        range.lowerBound + (range.upperBound - range.lowerBound) * random()
    }

    /// Running work at `now`: tasks started and not ended, plus synchronous calls.
    private static func running(_ state: State, now: Double) -> Int {
        state.syncInFlight + state.reservedTasks
            + state.tasks.values.filter { task in
                guard let start = task.startedAt, !task.cancelled else { return false }
                return start <= now && now < start + task.seconds
            }.count
    }

    /// Starts throttled tasks whose turn has come (in submission order, as Runway does).
    private func promote(_ state: inout State, now: Double) {
        guard let cap = options.concurrentTasks else { return }
        for id in state.taskOrder where state.tasks[id]?.startedAt == nil && state.tasks[id]?.cancelled == false {
            if options.throttledTasksWaitForAPoll && !state.tasks[id]!.seenWaiting { break }
            // The earliest moment a slot is free: now, if one is.
            if Self.running(state, now: now) < cap {
                state.tasks[id]!.startedAt = now
            } else {
                break
            }
        }
    }

    /// Records a submission and decides on it against the quotas. Tasks hold a slot from creation until they
    /// end; synchronous calls (`sync`) hold one until ``finishSync()``.
    func admit(
        endpoint: String,
        key: String?,
        user: String?,
        prompt: String,
        sync: Bool,
        queueOverConcurrency: Bool = false
    ) -> FakeAdmission {
        let now = self.now
        return state.withLock { state in
            promote(&state, now: now)
            var entry = FakeSubmission(
                time: now,
                endpoint: endpoint,
                key: key,
                user: user,
                prompt: prompt,
                accepted: false,
                refusal: nil
            )
            let window = options.window.secondsDouble
            while let first = state.window.first, now - first >= window { state.window.removeFirst() }
            if let limit = options.requestsPerWindow, state.window.count >= limit {
                entry.refusal = "rate"
                state.log.append(entry)
                writeLog(entry)
                return .overRate(retryAfter: max(0.001, state.window.first! + window - now))
            }
            if let cap = options.concurrentTasks, !sync || options.syncCallsHoldSlots,
                Self.running(state, now: now) >= cap
            {
                if !queueOverConcurrency {
                    entry.refusal = "concurrency"
                    state.log.append(entry)
                    writeLog(entry)
                    return .overConcurrency
                }
                entry.refusal = "throttled"
            }
            state.window.append(now)
            entry.accepted = true
            state.log.append(entry)
            writeLog(entry)
            if sync && options.syncCallsHoldSlots { state.syncInFlight += 1 }
            if !sync && options.concurrentTasks != nil && entry.refusal == nil { state.reservedTasks += 1 }
            state.peakConcurrency = max(state.peakConcurrency, Self.running(state, now: now))
            return .accepted
        }
    }

    /// Marks the last logged submission with its refusal (a fault or a policy refusal after admission).
    func refuseLast(prompt: String, reason: String) {
        state.withLock { state in
            if let index = state.log.lastIndex(where: { $0.prompt == prompt && $0.accepted }) {
                state.log[index].accepted = false
                state.log[index].refusal = reason
            }
        }
    }

    /// Gives back the slot an accepted task submission reserved, when no task follows (a policy refusal).
    func releaseTaskReservation() {
        guard options.concurrentTasks != nil else { return }
        state.withLock { $0.reservedTasks = max(0, $0.reservedTasks - 1) }
    }

    /// Whether `prompt` has not failed before (and marks it as having failed).
    func firstFailure(_ prompt: String) -> Bool { state.withLock { $0.failedOnce.insert(prompt).inserted } }

    /// Whether `prompt` has not hung before (and marks it as having hung).
    func firstHang(_ prompt: String) -> Bool { state.withLock { $0.hungOnce.insert(prompt).inserted } }

    func chooseHang(_ prompt: String) { state.withLock { $0.hangs[prompt, default: 0] += 1 } }

    /// Whether the answer for `prompt` was chosen to hang (once per choice).
    func takeHang(_ prompt: String) -> Bool {
        state.withLock { state in
            guard let count = state.hangs[prompt], count > 0 else { return false }
            state.hangs[prompt] = count == 1 ? nil : count - 1
            return true
        }
    }

    func finishSync() {
        guard options.syncCallsHoldSlots else { return }
        state.withLock { $0.syncInFlight -= 1 }
    }

    /// Creates a task for an accepted submission. Over the concurrency quota (Runway) it waits, `THROTTLED`.
    func createTask(prompt: String, video: Bool, prefix: String) -> FakeTask {
        let now = self.now
        let seconds = uniform(options.taskSeconds)
        let randomFailure = chance(options.taskFailureRate)
        // Prompt markers: [[fail]] a content refusal, [[fail-unknown]] an unknown failure (every task),
        // [[fail-once]] an internal failure of the prompt's first task only. A batch (several inputs, one per line)
        // fails only input by input.
        var failure: FakeFailure?
        if !prompt.contains("\n") {
            if prompt.contains("[[fail]]") {
                failure = .moderation
            } else if prompt.contains("[[fail-unknown]]") {
                failure = .unknown
            } else if prompt.contains("[[fail-once]]") && firstFailure(prompt) {
                failure = .generic
            } else if randomFailure {
                failure = .generic
            }
        }
        return state.withLock { state in
            // This submission's own log entry: it says whether admission reserved a slot for it (no refusal), or
            // let it in over the cap to wait (Runway's "throttled").
            let entry = state.log.lastIndex(where: { $0.prompt == prompt && $0.accepted && $0.taskID == nil })
            let refusal = entry.flatMap { state.log[$0].refusal }
            let wasReserved = options.concurrentTasks != nil && entry != nil && refusal == nil
            if wasReserved { state.reservedTasks = max(0, state.reservedTasks - 1) }
            let id = "\(prefix)\(state.nextID)"
            state.nextID += 1
            var task = FakeTask(
                id: id,
                video: video,
                prompt: prompt,
                submittedAt: now,
                startedAt: nil,
                seconds: seconds,
                failure: failure
            )
            let slotFree = options.concurrentTasks.map { Self.running(state, now: now) < $0 } ?? true
            // A task admitted over the cap waits its turn (THROTTLED), as its log entry says, even if a slot has
            // freed since.
            if slotFree && refusal != "throttled" { task.startedAt = now }
            state.tasks[id] = task
            state.taskOrder.append(id)
            if let index = entry {
                state.log[index].taskID = id
                // A task that admission let through (its slot reserved) but that finds no slot free: the
                // submissions raced past the quota. Never queue it quietly: it is a violation in the log.
                if !slotFree && wasReserved { state.log[index].refusal = "concurrency" }
            }
            state.peakConcurrency = max(state.peakConcurrency, Self.running(state, now: now))
            return task
        }
    }

    /// The task as of now (throttled tasks promoted first), or `nil` if unknown.
    func task(_ id: String) -> FakeTask? {
        let now = self.now
        return state.withLock { state in
            state.pollCount += 1
            promote(&state, now: now)
            guard let task = state.tasks[id] else { return nil }
            // This poll sees it waiting (THROTTLED).
            if task.startedAt == nil { state.tasks[id]!.seenWaiting = true }
            return task
        }
    }

    func cancel(_ id: String) -> Bool {
        state.withLock { state in
            guard state.tasks[id] != nil else { return false }
            state.tasks[id]!.cancelled = true
            return true
        }
    }

    /// What a use of a task's result link gets: refused as expired (only ever on the first use), cut short,
    /// or whole; at most ``FakeProviderOptions/maxFaultsPerResult`` faults per result.
    enum LinkUse { case expired, truncated, trickled, whole }

    func useLink(_ id: String) -> LinkUse? {
        let expire = chance(options.expiredLinkRate)
        let truncate = chance(options.truncateRate)
        let trickle = chance(options.trickleRate)
        return state.withLock { state in
            guard var task = state.tasks[id] else { return nil }
            task.linkUses += 1
            state.downloads += 1
            var use = LinkUse.whole
            if task.faults < options.maxFaultsPerResult {
                if expire && task.linkUses == 1 {
                    use = .expired
                } else if truncate {
                    use = .truncated
                } else if trickle {
                    use = .trickled
                }
            }
            if use != .whole { task.faults += 1 }
            state.tasks[id] = task
            return use
        }
    }

    /// Records an Azure batch synthesis under its client-chosen id; `false` if the id is taken.
    func registerBatch(_ batch: FakeBatch) -> Bool {
        state.withLock { state in
            guard state.batches[batch.id] == nil else { return false }
            state.batches[batch.id] = batch
            return true
        }
    }

    func batch(_ id: String) -> FakeBatch? { state.withLock { $0.batches[id] } }

    func deleteBatch(_ id: String) -> Bool { state.withLock { $0.batches.removeValue(forKey: id) != nil } }

    /// Decides a truncation fault for a synchronous answer (speech).
    func truncateAnswer() -> Bool { chance(options.truncateRate) }
}

extension Duration {
    var secondsDouble: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
