/// The limits on who asks: a sliding window per user, a token bucket (GCRA) per project, and per-project burst
/// protection with a cooldown.
///
/// A pure value: ``check(user:project:at:)`` says whether a call may go at a given time without taking
/// anything; ``record(user:project:at:)`` takes it. A check that passes on every dimension is what makes the
/// admission all-or-nothing together with the provider's own ``ProviderAdmission``.
public struct ClientLimits: Sendable {
    public let configuration: PargenConfiguration.RateLimits
    private var users: [String: SlidingWindowLog] = [:]
    private var projects: [String: GCRA] = [:]
    private var bursts: [String: BurstGuard] = [:]
    private var decisions = 0

    public init(configuration: PargenConfiguration.RateLimits) {
        self.configuration = configuration
    }

    /// `nil` when a call from `user` in `project` may go at `now`; otherwise the wait and the limit.
    ///
    /// The burst guard is looked at last, and only when nothing else holds the call back (`heldElsewhere` says
    /// another limit already does), because finding the burst used up starts its cooldown.
    public mutating func check(
        user: String,
        project: String,
        heldElsewhere: Bool = false,
        at now: Duration
    ) -> (Duration, RateLimiter.LimitKind)? {
        guard configuration.enabled else { return nil }
        decisions += 1
        if decisions % 4096 == 0 { dropIdle(at: now) }
        var worst: (Duration, RateLimiter.LimitKind)?
        func deny(_ wait: Duration?, _ kind: RateLimiter.LimitKind) {
            guard let wait, wait > .zero else { return }
            if worst == nil || wait > worst!.0 { worst = (wait, kind) }
        }
        deny(users[user]?.retryAfter(at: now), .userWindow)
        deny(projects[project]?.retryAfter(at: now), .projectBucket)
        if worst == nil && !heldElsewhere {
            // In place: a copy of the guard would copy its log.
            if bursts[project] == nil { bursts[project] = makeBurst() }
            deny(bursts[project]!.retryAfter(at: now), .burstCooldown)
        } else if let guardState = bursts[project], guardState.isCoolingDown(at: now) {
            deny(guardState.cooldownUntil! - now, .burstCooldown)
        }
        return worst
    }

    /// Takes one call from every dimension.
    public mutating func record(user: String, project: String, at now: Duration) {
        guard configuration.enabled else { return }
        users[user, default: SlidingWindowLog(limit: configuration.perUserRequestsPerMinute, window: .seconds(60))]
            .record(at: now)
        projects[
            project,
            default: GCRA(capacity: configuration.tokenBucketCapacity, perMinute: configuration.perProjectRequestsPerMinute)
        ].record(at: now)
        if bursts[project] == nil { bursts[project] = makeBurst() }
        bursts[project]!.record(at: now)
    }

    /// How long a call from `user` in `project` would wait at `now` for the user's own window or the project's
    /// burst cooldown, without taking anything.
    public mutating func userDelay(user: String, project: String, at now: Duration) -> Duration? {
        guard configuration.enabled else { return nil }
        var wait = users[user]?.retryAfter(at: now)
        if let burst = bursts[project], burst.isCoolingDown(at: now) {
            wait = max(wait ?? .zero, burst.cooldownUntil! - now)
        }
        return wait
    }

    /// Users whose own window is full at `now`, and when the first of them has room again.
    public mutating func blockedUsers(at now: Duration) -> (users: Set<String>, until: Duration?) {
        guard configuration.enabled else { return ([], nil) }
        var blocked: Set<String> = []
        var until: Duration?
        for key in Array(users.keys) {
            if let wait = users[key]!.retryAfter(at: now) {
                blocked.insert(key)
                until = min(until ?? now + wait, now + wait)
            }
        }
        return (blocked, until)
    }

    public var burstCooldowns: Int { bursts.values.reduce(0) { $0 + $1.cooldownsStarted } }
    public var trackedUsers: Int { users.count }
    public var trackedProjects: Int { projects.count }

    private func makeBurst() -> BurstGuard {
        BurstGuard(
            maxBurst: configuration.maxBurst,
            window: configuration.burstWindow,
            cooldown: configuration.burstCooldown
        )
    }

    private mutating func dropIdle(at now: Duration) {
        for key in Array(users.keys) where users[key]!.isIdle(at: now) { users[key] = nil }
    }
}
