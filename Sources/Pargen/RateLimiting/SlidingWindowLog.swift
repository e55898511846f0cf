import DequeModule

/// An exact sliding-window limit: at most `limit` admissions in any window `(t - window, t]`.
///
/// Keeps one timestamp per admission, which is cheap for per-minute limits of a few hundred and has none
/// of the fixed-window double-burst or the approximate sliding-counter errors.
public struct SlidingWindowLog: Sendable, Hashable {
    public let limit: Int
    public let window: Duration
    private var admissions: Deque<Duration> = []
    /// Admissions whose time of arrival is not known yet (a provider call on its way): they count until
    /// ``confirm(admittedAt:arrivedAt:)`` dates them, however long that takes, so a call held up longer than the
    /// window cannot slip out of it before it has even arrived.
    private var pending: [Duration] = []

    public init(limit: Int, window: Duration) {
        precondition(limit > 0 && window > .zero, "a sliding window needs a limit above 0 and a window above zero")
        self.limit = limit
        self.window = window
    }

    /// Admissions still inside the window ending at `now`.
    public mutating func count(at now: Duration) -> Int {
        prune(now)
        return admissions.count + pending.count
    }

    /// `nil` when one more admission fits at `now`; otherwise how long until one does.
    ///
    /// - Parameter whilePending: The answer when room depends on admissions still on their way (their
    ///   arrival dates them): by default a short poll; a caller told of arrivals can pass the window, the
    ///   earliest such room could come.
    public mutating func retryAfter(at now: Duration, cost: Int = 1, whilePending: Duration = .milliseconds(50))
        -> Duration?
    {
        prune(now)
        guard admissions.count + pending.count + cost > limit else { return nil }
        // The oldest admission whose expiry makes room for `cost` more.
        let index = admissions.count + pending.count + cost - limit - 1
        // Room depends on calls still on their way: look again shortly.
        guard index < admissions.count else { return pending.isEmpty ? window : whilePending }
        return admissions[index] + window - now
    }

    public mutating func record(at now: Duration, cost: Int = 1) {
        for _ in 0..<cost { admissions.append(now) }
    }

    /// Records an admission whose arrival time is not known yet; it counts until it is confirmed.
    public mutating func recordPending(at now: Duration) {
        pending.append(now)
    }

    /// Whether nothing is remembered (the log may be dropped).
    public mutating func isIdle(at now: Duration) -> Bool {
        prune(now)
        return admissions.isEmpty && pending.isEmpty
    }

    /// Dates a pending admission made at `admittedAt` by when the call is known to have arrived (its answer,
    /// or the end of the call), keeping the log in order. Does nothing if no such admission is pending.
    public mutating func confirm(admittedAt: Duration, arrivedAt: Duration) {
        guard let index = pending.lastIndex(of: admittedAt) else { return }
        pending.remove(at: index)
        let time = max(admittedAt, arrivedAt)
        let position = admissions.lastIndex { $0 <= time }.map { $0 + 1 } ?? 0
        admissions.insert(time, at: position)
    }

    /// Forgets a pending admission made at `admittedAt` whose call was never made.
    public mutating func cancelPending(admittedAt: Duration) {
        guard let index = pending.lastIndex(of: admittedAt) else { return }
        pending.remove(at: index)
    }

    private mutating func prune(_ now: Duration) {
        while let first = admissions.first, first + window <= now { admissions.removeFirst() }
    }
}

/// The generic cell rate algorithm: a token bucket of `capacity` refilled at `rate`, in one number.
///
/// Admits at `now` when `now >= TAT - tolerance`, then moves the theoretical arrival time (TAT) on by one
/// emission interval per unit of cost. Over any interval of length L it admits at most `capacity + rate * L`.
public struct GCRA: Sendable, Hashable {
    /// Time to earn one token.
    public let emissionInterval: Duration
    /// `(capacity - 1) * emissionInterval`: how far ahead of time the bucket lets arrivals run.
    public let tolerance: Duration
    public let capacity: Int
    private var theoreticalArrival: Duration?

    /// - Parameters:
    ///   - capacity: Tokens the bucket holds.
    ///   - perMinute: Tokens earned per minute.
    public init(capacity: Int, perMinute: Int) {
        precondition(capacity > 0 && perMinute > 0)
        self.capacity = capacity
        // Round the interval up so the refill is never faster than configured.
        let nanos = (60_000_000_000 + Int64(perMinute) - 1) / Int64(perMinute)
        emissionInterval = .nanoseconds(nanos)
        tolerance = .nanoseconds(nanos * Int64(capacity - 1))
    }

    public func retryAfter(at now: Duration, cost: Int = 1) -> Duration? {
        let tat = max(theoreticalArrival ?? now, now)
        let newTAT = tat + emissionInterval * (cost - 1)
        let allowedAt = newTAT - tolerance
        return allowedAt <= now ? nil : allowedAt - now
    }

    public mutating func record(at now: Duration, cost: Int = 1) {
        theoreticalArrival = max(theoreticalArrival ?? now, now) + emissionInterval * cost
    }

    /// Whole tokens available at `now`.
    public func available(at now: Duration) -> Int {
        let tat = max(theoreticalArrival ?? now, now)
        let used = (tat - now) / emissionInterval
        return max(0, capacity - Int(used.rounded(.up)))
    }
}

/// Burst protection: at most `maxBurst` admissions in `window`; the one after starts a cooldown during which
/// nothing is admitted.
public struct BurstGuard: Sendable, Hashable {
    public let cooldown: Duration
    private var log: SlidingWindowLog
    public private(set) var cooldownUntil: Duration?
    public private(set) var cooldownsStarted = 0

    public init(maxBurst: Int, window: Duration, cooldown: Duration) {
        log = SlidingWindowLog(limit: maxBurst, window: window)
        self.cooldown = cooldown
    }

    /// `nil` when admission is allowed; otherwise the wait. Starts a cooldown when the burst is used up.
    public mutating func retryAfter(at now: Duration) -> Duration? {
        if let until = cooldownUntil {
            if now < until { return until - now }
            cooldownUntil = nil
        }
        if log.retryAfter(at: now) != nil {
            cooldownUntil = now + cooldown
            cooldownsStarted += 1
            return cooldown
        }
        return nil
    }

    public mutating func record(at now: Duration) { log.record(at: now) }

    public func isCoolingDown(at now: Duration) -> Bool { cooldownUntil.map { now < $0 } ?? false }
}
