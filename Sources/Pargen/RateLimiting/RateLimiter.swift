import Synchronization

/// A provider's own quota, as the engine enforces it before calling the provider.
///
/// Modelled the way providers meter: a sliding window of submissions (60 s unless the provider documents
/// another, such as Azure batch synthesis' 100 per 10 s), and concurrent-task slots held from submit until the
/// task ends, polling and download included.
public struct ProviderQuota: Sendable, Hashable, Codable {
    /// Submissions in any sliding ``window``; `nil` for none. (Named for the usual 60 s window.)
    public var requestsPerMinute: Int?
    /// Tasks running at once, held from submit until the task ends (polling included).
    public var concurrentTasks: Int?
    /// The window ``requestsPerMinute`` counts in. Default 60 s.
    public var window: Duration
    /// Added to ``window`` on our side, so that a request admitted here a moment before it reaches the provider
    /// still falls outside the provider's window (the window is counted from each call's answer, so this only absorbs
    /// rounding in how the provider keeps time). Default 100 ms.
    public var margin: Duration
    /// The kinds of media whose calls take a concurrent-task slot. OpenAI and MiniMax count video tasks only
    /// (speech is a plain request); ElevenLabs and Azure count every request. Default: every kind.
    public var concurrencyKinds: Set<GenerationKind>
    /// How long a slot-holding task is expected to take, submit to end, until one has been seen: it sizes the
    /// window room kept for slot holders in the first window. `nil` takes half the window.
    public var expectedTaskTime: Duration?

    public init(
        requestsPerMinute: Int? = nil,
        concurrentTasks: Int? = nil,
        window: Duration = .seconds(60),
        margin: Duration = .milliseconds(100),
        concurrencyKinds: Set<GenerationKind> = Set(GenerationKind.allCases),
        expectedTaskTime: Duration? = nil
    ) {
        self.requestsPerMinute = requestsPerMinute
        self.concurrentTasks = concurrentTasks
        self.window = window
        self.margin = margin
        self.concurrencyKinds = concurrencyKinds
        self.expectedTaskTime = expectedTaskTime
    }

    /// Whether a call for `kind` holds one of the ``concurrentTasks`` slots.
    public func holdsSlot(_ kind: GenerationKind) -> Bool { concurrentTasks != nil && concurrencyKinds.contains(kind) }

    var slidingWindow: SlidingWindowLog? {
        requestsPerMinute.map { SlidingWindowLog(limit: $0, window: window + margin) }
    }
}

/// Multi-dimensional rate limiting, checked all-or-nothing before every provider call.
///
/// The dimensions are a per-user sliding window, a per-project token bucket (GCRA), per-project burst
/// protection with a cooldown, and each provider's requests-per-minute quota and cooldowns (set from the
/// provider's own 429 / throttling answers). A request is admitted only when every dimension admits it; a
/// denied request consumes nothing and learns how long to wait. ``acquire(user:project:provider:clock:onWait:)``
/// waits for its turn: a request is never failed for being early.
public final class RateLimiter: Sendable {
    /// Which limit held a request back.
    public enum LimitKind: String, Sendable, Hashable, CaseIterable, Codable {
        case userWindow = "user_window"
        case projectBucket = "project_bucket"
        case burstCooldown = "burst_cooldown"
        case providerQuota = "provider_quota"
        case providerCooldown = "provider_cooldown"
        /// Every one of the provider's task slots was taken (its quota's, or its adaptive limit's).
        case providerSlots = "provider_slots"
    }

    public enum Decision: Sendable, Hashable {
        case admitted
        case denied(retryAfter: Duration, limit: LimitKind)
    }

    private struct State {
        var clients: ClientLimits
        var providerWindows: [String: SlidingWindowLog] = [:]
        var providerCooldowns: [String: Duration] = [:]
        var admitted = 0
        var denied: [LimitKind: Int] = [:]
        var waited: [LimitKind: Duration] = [:]
        var waiting = 0
    }

    public let configuration: PargenConfiguration.RateLimits
    private let providerQuotas: Mutex<[String: ProviderQuota]>
    private let state: Mutex<State>

    public init(
        configuration: PargenConfiguration.RateLimits,
        providerQuotas: [String: ProviderQuota] = [:]
    ) {
        self.configuration = configuration
        self.providerQuotas = Mutex(providerQuotas)
        state = Mutex(State(clients: ClientLimits(configuration: configuration)))
    }

    /// Sets or replaces a provider's quota.
    public func setQuota(_ quota: ProviderQuota, for provider: String) {
        providerQuotas.withLock { $0[provider] = quota }
    }

    /// Checks every dimension at `now`; on admission, records it in all of them.
    ///
    /// - Parameters:
    ///   - confirmsArrival: The caller will call ``confirmArrival(provider:admittedAt:at:)`` once the call has
    ///     reached the provider; until then the admission counts in the provider's window whatever its age.
    ///     Without it the admission is dated now.
    public func tryAcquire(
        user: String,
        project: String,
        provider: String?,
        confirmsArrival: Bool = false,
        at now: Duration
    ) -> Decision {
        let quota = provider.flatMap { name in providerQuotas.withLock { $0[name] } }
        return state.withLock { state in
            var worst: (Duration, LimitKind)?
            func deny(_ wait: Duration?, _ kind: LimitKind) {
                guard let wait, wait > .zero else { return }
                if worst == nil || wait > worst!.0 { worst = (wait, kind) }
            }
            if let provider {
                if let until = state.providerCooldowns[provider], until > now { deny(until - now, .providerCooldown) }
                if let quota, let fresh = quota.slidingWindow {
                    deny(state.providerWindows[provider, default: fresh].retryAfter(at: now), .providerQuota)
                }
            }
            if let (wait, kind) = state.clients.check(user: user, project: project, heldElsewhere: worst != nil, at: now) {
                deny(wait, kind)
            }
            if let (wait, kind) = worst {
                state.denied[kind, default: 0] += 1
                return .denied(retryAfter: wait, limit: kind)
            }
            // Every dimension checked above was stored by its mutating check, except the stateless GCRA read.
            if let provider, let fresh = quota?.slidingWindow {
                if confirmsArrival {
                    // Counted as on its way until the caller confirms when it reached the provider.
                    state.providerWindows[provider, default: fresh].recordPending(at: now)
                } else {
                    state.providerWindows[provider, default: fresh].record(at: now)
                }
            }
            state.clients.record(user: user, project: project, at: now)
            state.admitted += 1
            return .admitted
        }
    }

    /// When a request was admitted, and how long it waited for it.
    public struct Admission: Sendable, Hashable {
        public var time: Duration
        public var waited: Duration
    }

    /// Dates a provider submission admitted at `admittedAt` (with `confirmsArrival`) by `time`, when the call
    /// is known to have reached the provider (its answer arrived, or the call ended). The provider counts the call when it arrives, which is after we
    /// admitted it; counting it from the answer on our side keeps the two windows apart however long the
    /// way there took, so no delay can make us exceed the provider's window.
    public func confirmArrival(provider: String, admittedAt: Duration, at time: Duration) {
        state.withLock { state in
            state.providerWindows[provider]?.confirm(admittedAt: admittedAt, arrivedAt: time)
        }
    }

    /// Waits until every dimension admits the request, then admits it.
    ///
    /// - Parameter onWait: Called once, with the limit, the first time the request has to wait.
    /// - Returns: When it was admitted and the time spent waiting.
    /// - Throws: `CancellationError` if the task is cancelled while waiting.
    @discardableResult
    public func acquire(
        user: String,
        project: String,
        provider: String?,
        confirmsArrival: Bool = false,
        clock: PargenClock,
        onWait: @Sendable (LimitKind, Duration) -> Void = { _, _ in }
    ) async throws -> Admission {
        var waitedTotal = Duration.zero
        var told = false
        while true {
            try Task.checkCancellation()
            let now = clock.now
            switch tryAcquire(
                user: user,
                project: project,
                provider: provider,
                confirmsArrival: confirmsArrival,
                at: now
            ) {
            case .admitted:
                return Admission(time: now, waited: waitedTotal)
            case .denied(let retryAfter, let kind):
                if !told {
                    told = true
                    onWait(kind, retryAfter)
                }
                state.withLock { $0.waiting += 1 }
                defer { state.withLock { $0.waiting -= 1 } }
                try await clock.sleep(until: now + retryAfter)
                let waited = clock.now - now
                waitedTotal += waited
                state.withLock { $0.waited[kind, default: .zero] += waited }
            }
        }
    }

    /// Holds back every request to `provider` until `until` (a provider's 429 with Retry-After, MiniMax 1002,
    /// Runway THROTTLED). Later deadlines win; earlier ones are ignored.
    public func cooldown(provider: String, until: Duration) {
        state.withLock { state in
            if let existing = state.providerCooldowns[provider], existing >= until { return }
            state.providerCooldowns[provider] = until
        }
    }

    /// When `provider` may be called again, if it is cooling down at `now`.
    public func cooldownEnd(provider: String, at now: Duration) -> Duration? {
        state.withLock { state in state.providerCooldowns[provider].flatMap { $0 > now ? $0 : nil } }
    }

    /// How long a request from `user` in `project` would wait at `now`, without consuming anything
    /// (used to skip users who are held back when leasing work).
    public func userDelay(user: String, project: String, at now: Duration) -> Duration? {
        state.withLock { $0.clients.userDelay(user: user, project: project, at: now) }
    }

    /// Users whose own window is full at `now`, and when the first of them frees up: their jobs are left
    /// in the queue instead of holding worker slots while they wait.
    public func blockedUsers(at now: Duration) -> (users: Set<String>, until: Duration?) {
        state.withLock { $0.clients.blockedUsers(at: now) }
    }

    public func stats() -> RateLimiterStats {
        state.withLock { state in
            RateLimiterStats(
                admitted: state.admitted,
                denied: state.denied,
                waitTime: state.waited,
                waiting: state.waiting,
                burstCooldowns: state.clients.burstCooldowns,
                trackedUsers: state.clients.trackedUsers,
                trackedProjects: state.clients.trackedProjects
            )
        }
    }
}

/// What the rate limiter has done so far.
public struct RateLimiterStats: Sendable, Hashable, Codable {
    public var admitted: Int
    /// Denials per limit (one request may be denied several times before it is admitted).
    public var denied: [RateLimiter.LimitKind: Int]
    /// Time requests spent waiting, per limit.
    public var waitTime: [RateLimiter.LimitKind: Duration]
    /// Requests waiting right now.
    public var waiting: Int
    public var burstCooldowns: Int
    public var trackedUsers: Int
    public var trackedProjects: Int
}
