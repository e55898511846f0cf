/// The state of one provider's circuit.
public enum CircuitState: String, Sendable, Hashable, Codable {
    /// Calls flow.
    case closed
    /// Calls are refused until the open period ends.
    case open
    /// One canary call is let through; its outcome closes or re-opens the circuit.
    case halfOpen = "half_open"
}

/// A per-provider circuit breaker, as a pure state machine over explicit times.
///
/// Opens after `failureThreshold` consecutive failures, or when the error rate over the recent window
/// reaches `errorRateThreshold` with at least `minimumSamples` outcomes. After `openDuration` it lets one
/// canary through (half-open): success closes it, failure opens it again.
public struct CircuitBreaker: Sendable, Hashable {
    public let configuration: PargenConfiguration.Balancing
    public private(set) var state: CircuitState = .closed
    public private(set) var consecutiveFailures = 0
    public private(set) var openedAt: Duration?
    public private(set) var timesOpened = 0
    private var outcomes: [Bool] = []  // true = success, most recent last
    private var canaryInFlight = false

    public init(configuration: PargenConfiguration.Balancing) { self.configuration = configuration }

    /// Whether a call may go out at `now`. In half-open, reserves the single canary slot.
    public mutating func allowCall(at now: Duration) -> Bool {
        switch state {
        case .closed:
            return true
        case .open:
            guard let openedAt, now >= openedAt + configuration.openDuration else { return false }
            state = .halfOpen
            canaryInFlight = true
            return true
        case .halfOpen:
            if canaryInFlight { return false }
            canaryInFlight = true
            return true
        }
    }

    /// Whether a call could go out at `now`, without reserving anything.
    public func wouldAllow(at now: Duration) -> Bool {
        switch state {
        case .closed: true
        case .open: openedAt.map { now >= $0 + configuration.openDuration } ?? true
        case .halfOpen: !canaryInFlight
        }
    }

    /// When an open circuit lets its canary through.
    public var reopensAt: Duration? { state == .open ? openedAt.map { $0 + configuration.openDuration } : nil }

    public mutating func recordSuccess() {
        consecutiveFailures = 0
        remember(true)
        if state == .halfOpen {
            state = .closed
            canaryInFlight = false
            outcomes.removeAll()
        }
    }

    public mutating func recordFailure(at now: Duration) {
        consecutiveFailures += 1
        remember(false)
        switch state {
        case .halfOpen:
            open(at: now)
        case .closed:
            let failures = outcomes.filter { !$0 }.count
            let rateTripped =
                outcomes.count >= configuration.minimumSamples
                && Double(failures) / Double(outcomes.count) >= configuration.errorRateThreshold
            if consecutiveFailures >= configuration.failureThreshold || rateTripped { open(at: now) }
        case .open:
            break
        }
    }

    /// The canary did not report (cancelled): free the slot without judging.
    public mutating func releaseCanary() { canaryInFlight = false }

    public var errorRate: Double {
        outcomes.isEmpty ? 0 : Double(outcomes.filter { !$0 }.count) / Double(outcomes.count)
    }

    private mutating func open(at now: Duration) {
        state = .open
        openedAt = now
        canaryInFlight = false
        timesOpened += 1
        outcomes.removeAll()
    }

    private mutating func remember(_ success: Bool) {
        outcomes.append(success)
        if outcomes.count > configuration.healthWindow {
            outcomes.removeFirst(outcomes.count - configuration.healthWindow)
        }
    }
}
