/// One provider's admission state: its sliding window of submissions, its task slots, its cooldown and its
/// adaptive concurrency limit.
///
/// A pure value: every method takes the time and changes nothing but the value, so each decision can be
/// tested synchronously with explicit time. The engine keeps one per provider inside ``AdmissionState``.
///
/// Calls are of two sorts here. A call *uses a slot* when the provider's concurrency quota counts its kind
/// (``ProviderQuota/holdsSlot(_:)``), or when the provider has no concurrency quota, so that the adaptive limit
/// alone bounds its calls. A call *holds a slot* for a long time (a video task, from submit to its end) when the
/// quota counts its kind but not every kind: that is the work the window keeps room for.
public struct ProviderAdmission: Sendable, Hashable {
    /// What held a call back.
    public enum Block: Sendable, Hashable {
        /// The provider is cooling down after throttling until then.
        case cooldown(until: Duration)
        /// No slot is free; one frees when a call ends.
        case slots
        /// The window is full (keeping room for slot holders); room comes at that time.
        case window(until: Duration)
    }

    /// How a call ended, as far as the provider's load is concerned.
    public enum Outcome: Sendable, Hashable {
        /// Admitted but never made (a cache hit, an identical request in flight, a budget hold).
        case notCalled
        /// The provider answered and the call succeeded.
        case succeeded(latency: Duration)
        /// The provider throttled the call (429, 1002, THROTTLED); it may be called again after `retryAfter`.
        case throttled(retryAfter: Duration?)
        /// The call timed out.
        case timedOut
        /// The call failed for any other reason.
        case failed
    }

    public let name: String
    public let quota: ProviderQuota
    private var window: SlidingWindowLog?
    public private(set) var adaptive: AdaptiveConcurrencyLimit
    public private(set) var slotsInUse = 0
    public private(set) var peakSlots = 0
    public private(set) var cooldownUntil: Duration?
    /// Smoothed time a slot-holding task takes, submit to end, in seconds; `nil` until one has ended.
    public private(set) var taskSeconds: Double?
    /// When each slot-holding call running now started, by ticket.
    private var holders: [UInt64: Duration] = [:]
    /// When each call whose arrival is not known yet was admitted, by ticket.
    private var onTheWay: [UInt64: Duration] = [:]

    /// - Parameter adaptiveMaximum: The ceiling of the adaptive limit when the quota sets no concurrency.
    public init(name: String, quota: ProviderQuota, adaptiveMaximum: Int = 64) {
        self.name = name
        self.quota = quota
        window = quota.slidingWindow
        adaptive = AdaptiveConcurrencyLimit(maximum: max(1, quota.concurrentTasks ?? adaptiveMaximum))
    }

    /// Whether a call for `kind` takes one of the slots (the quota's, or the adaptive limit's).
    public func usesSlot(_ kind: GenerationKind) -> Bool {
        quota.holdsSlot(kind) || quota.concurrentTasks == nil
    }

    /// Whether a call for `kind` is long slot-holding work on a provider that also takes plain calls, for which
    /// the window keeps room.
    public func holdsSlot(_ kind: GenerationKind) -> Bool {
        quota.holdsSlot(kind) && quota.concurrencyKinds.count < GenerationKind.allCases.count
    }

    /// Slots free now under the adaptive limit.
    public var freeSlots: Int { max(0, adaptive.current - slotsInUse) }

    /// Submissions that fit in the window at `now` (`Int.max` without a window).
    public mutating func windowRoom(at now: Duration) -> Int {
        // Mutated in place: a copy of the log would copy every admission it holds.
        guard window != nil else { return .max }
        return max(0, window!.limit - window!.count(at: now))
    }

    /// Whether a call can go at `now`.
    ///
    /// - Parameters:
    ///   - usesSlot: The call takes a slot (``usesSlot(_:)``).
    ///   - needsWindow: The call submits (a resumed task only polls, and takes nothing from the window).
    ///   - keptBack: Submissions the call must leave in the window for slot holders.
    /// - Returns: `nil` when it can go; otherwise what holds it back.
    public mutating func check(usesSlot: Bool, needsWindow: Bool, keptBack: Int = 0, at now: Duration) -> Block? {
        if let until = cooldownUntil {
            if until > now { return .cooldown(until: until) }
            cooldownUntil = nil
        }
        if usesSlot && slotsInUse >= adaptive.current { return .slots }
        if needsWindow, window != nil {
            // Room that waits on calls still on their way comes no sooner than a window after they arrive, and
            // their arrival is news the owner hears of.
            let span = window!.window
            if let wait = window!.retryAfter(at: now, cost: 1 + max(0, keptBack), whilePending: span) {
                return .window(until: now + wait)
            }
        }
        return nil
    }

    /// Takes what a call needs: a pending place in the window (dated when ``arrived(admittedAt:at:)`` says the
    /// call reached the provider) and a slot. Call only after ``check(usesSlot:needsWindow:keptBack:at:)``
    /// returned `nil`.
    public mutating func admit(ticket: UInt64, usesSlot: Bool, holdsSlot: Bool, needsWindow: Bool, at now: Duration) {
        if needsWindow, window != nil {
            window!.recordPending(at: now)
            onTheWay[ticket] = now
        }
        if usesSlot {
            slotsInUse += 1
            peakSlots = max(peakSlots, slotsInUse)
        }
        if holdsSlot { holders[ticket] = now }
    }

    /// Dates the window place of a call by when it is known to have reached the provider (its answer, or the
    /// end of the call), so that no delay on the way can put two windows into one. Only the first news counts.
    public mutating func arrived(ticket: UInt64, at now: Duration) {
        guard let admittedAt = onTheWay.removeValue(forKey: ticket) else { return }
        window?.confirm(admittedAt: admittedAt, arrivedAt: now)
    }

    /// Ends a call: frees its slot, gives back a window place never used, and learns from the outcome.
    public mutating func finish(ticket: UInt64, usesSlot: Bool, outcome: Outcome, at now: Duration) {
        if usesSlot { slotsInUse = max(0, slotsInUse - 1) }
        if let started = holders.removeValue(forKey: ticket), outcome != .notCalled {
            let seconds = max(0.001, (now - started).seconds)
            taskSeconds = taskSeconds.map { $0 * 0.8 + seconds * 0.2 } ?? seconds
        }
        if outcome == .notCalled, let admittedAt = onTheWay.removeValue(forKey: ticket) {
            window?.cancelPending(admittedAt: admittedAt)
        } else {
            arrived(ticket: ticket, at: now)
        }
        switch outcome {
        case .notCalled, .failed: break
        case .succeeded(let latency): if usesSlot { adaptive.recordSuccess(latency: latency) }
        case .throttled(let retryAfter):
            throttled(until: now + (retryAfter ?? .seconds(1)))
            if usesSlot { adaptive.recordThrottled() }
        case .timedOut: if usesSlot { adaptive.recordTimeout() }
        }
    }

    /// Holds every call back until `until` (a later deadline wins).
    public mutating func throttled(until: Duration) {
        if let existing = cooldownUntil, existing >= until { return }
        cooldownUntil = until
    }

    /// The provider held a running task back (Runway's THROTTLED): fewer calls at once.
    public mutating func taskHeldBack() { adaptive.recordThrottled() }

    /// How many slot-holding calls can start here in `(now, now + window]`: each free slot starts one now and
    /// another each expected task time; each running one frees its slot at its expected end and starts more after.
    /// The task time is the one seen so far. Until a task has ended, it is known only to be at least as long as
    /// the oldest running task has run, and the count is the most that allows, capped by the quota's expected
    /// task time (or half the window): a guess alone, when too long, kept no room for tasks that then ended early,
    /// and the slot holders missed the window. The room so kept shrinks as the running tasks age, and each running
    /// task counts as freeing its slot within the window at least once.
    public func startsWithinWindow(at now: Duration) -> Int {
        let span = quota.window.seconds
        let guess = quota.expectedTaskTime?.seconds ?? span / 2
        // Until a task has ended, all that is known is that a task takes at least as long as the oldest running
        // one has run: the count is the most that this allows.
        let oldest = holders.values.min().map { (now - $0).seconds } ?? 0
        let task = max(0.001, taskSeconds ?? min(guess, oldest))
        func starts(after wait: Double) -> Int {
            let left = span - wait
            return left > 0 ? Int((left / task).rounded(.up)) : 0
        }
        var total = freeSlots * starts(after: 0)
        for started in holders.values {
            let ends = max(0, (started - now).seconds + task)
            // Until a task has ended here, its time is a guess: each running task may end within the window.
            total += taskSeconds == nil ? max(1, starts(after: ends)) : starts(after: ends)
        }
        return total
    }

    /// Room to keep back for `waiting` slot holders: never more than wait, nor more than can start within the
    /// window, and always leaving one submission for plain work.
    public func keepBack(waiting: Int, at now: Duration) -> Int {
        guard let limit = quota.requestsPerMinute, waiting > 0, quota.concurrentTasks != nil else { return 0 }
        return max(0, min(waiting, startsWithinWindow(at: now), limit - 1))
    }

    /// Whether nothing runs and nothing is remembered (the state may be dropped and made afresh).
    public var isIdle: Bool { slotsInUse == 0 && holders.isEmpty && onTheWay.isEmpty && cooldownUntil == nil }
}
