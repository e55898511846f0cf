/// One provider call as a shared store's admission sees it: who asks, where it goes, and the limits that apply.
public struct SharedCall: Sendable, Hashable {
    public var provider: String
    public var user: String
    public var project: String
    /// The call submits work (a resumed task only polls, and takes no place in the provider's window).
    public var submits: Bool
    /// The call holds one of the provider's task slots (``ProviderQuota/holdsSlot(_:)``).
    public var holdsSlot: Bool
    public var quota: ProviderQuota
    public var limits: PargenConfiguration.RateLimits

    /// Whether any shared limit counts this call (a provider window or slots, or the user and project limits);
    /// a call that none counts needs no admission record, only a look at the provider's cooldown.
    public var hasSharedLimits: Bool {
        limits.enabled || (submits && quota.requestsPerMinute != nil) || (holdsSlot && quota.concurrentTasks != nil)
    }

    public init(
        provider: String,
        user: String,
        project: String,
        submits: Bool,
        holdsSlot: Bool,
        quota: ProviderQuota,
        limits: PargenConfiguration.RateLimits
    ) {
        self.provider = provider
        self.user = user
        self.project = project
        self.submits = submits
        self.holdsSlot = holdsSlot
        self.quota = quota
        self.limits = limits
    }
}

/// What the shared limits say about a call at one instant, read under the limits' row locks.
///
/// A pure value: ``decide(_:at:)`` is the whole rule, tested without a database; the store reads the counts,
/// asks, and writes what was decided in the same transaction.
public struct SharedLimitState: Sendable, Hashable {
    /// The provider's cooldown (a 429, THROTTLED or 1002 seen by any worker), if any.
    public var providerCooldownUntil: Duration?
    /// Places in the provider's window: calls admitted and not yet answered count now; answered ones count until
    /// a window after their answer (the provider counts a call when it receives it, which is never after its
    /// answer, so this count is never below the provider's own).
    public var providerWindowUsed: Int
    /// The earliest answer time among the dated places in the window (when room comes next).
    public var providerOldestDated: Duration?
    /// Calls holding one of the provider's task slots now.
    public var slotsUsed: Int
    /// The user's calls admitted in the last minute, and the oldest of them.
    public var userUsed: Int
    public var userOldest: Duration?
    /// The project's calls admitted within the burst window.
    public var burstUsed: Int
    /// The project's burst cooldown, if one runs.
    public var burstCooldownUntil: Duration?
    /// The project bucket's theoretical arrival time (GCRA), if the bucket was used.
    public var projectTAT: Duration?

    public init(
        providerCooldownUntil: Duration? = nil,
        providerWindowUsed: Int = 0,
        providerOldestDated: Duration? = nil,
        slotsUsed: Int = 0,
        userUsed: Int = 0,
        userOldest: Duration? = nil,
        burstUsed: Int = 0,
        burstCooldownUntil: Duration? = nil,
        projectTAT: Duration? = nil
    ) {
        self.providerCooldownUntil = providerCooldownUntil
        self.providerWindowUsed = providerWindowUsed
        self.providerOldestDated = providerOldestDated
        self.slotsUsed = slotsUsed
        self.userUsed = userUsed
        self.userOldest = userOldest
        self.burstUsed = burstUsed
        self.burstCooldownUntil = burstCooldownUntil
        self.projectTAT = projectTAT
    }

    /// The outcome of a check.
    public enum Decision: Sendable, Hashable {
        /// Every limit allows the call: take it, moving the project bucket to `projectTAT`.
        case admit(projectTAT: Duration?)
        /// A limit holds the call back for `wait` (all or nothing: nothing is taken). `startsBurstCooldown` says
        /// the burst was found used up, and the project's cooldown runs until `now + cooldown`.
        case wait(Duration, limit: Limit, startsBurstCooldown: Bool)
    }

    /// The limit that held a call back.
    public enum Limit: String, Sendable, Hashable {
        case providerCooldown = "provider_cooldown"
        case providerWindow = "provider_window"
        case providerSlots = "provider_slots"
        case userWindow = "user_window"
        case projectBucket = "project_bucket"
        case burstCooldown = "burst_cooldown"

        /// Whether the limit holds back every call to the provider (not only this user's or project's).
        public var isProviderWide: Bool { self == .providerCooldown || self == .providerWindow || self == .providerSlots }

        /// Whether the limit holds back every call of the project (its bucket or burst guard).
        public var isProjectWide: Bool { self == .projectBucket || self == .burstCooldown }
    }

    /// How long a worker waits before asking again when room comes at a time no one can know yet (a slot frees
    /// when a call ends; a pending window place is dated when its answer comes).
    public static let recheck: Duration = .milliseconds(250)

    /// Decides whether `call` may go at `now`: the provider's cooldown, window and slots, then the user's window,
    /// the project's bucket and burst guard; the longest wait wins.
    public func decide(_ call: SharedCall, at now: Duration) -> Decision {
        var worst: (Duration, Limit)?
        func deny(_ wait: Duration, _ limit: Limit) {
            let wait = max(wait, .milliseconds(1))
            if worst == nil || wait > worst!.0 { worst = (wait, limit) }
        }
        if let until = providerCooldownUntil, until > now { deny(until - now, .providerCooldown) }
        if call.submits, let limit = call.quota.requestsPerMinute, providerWindowUsed >= limit {
            let span = call.quota.window + call.quota.margin
            deny(providerOldestDated.map { $0 + span - now } ?? Self.recheck, .providerWindow)
        }
        if call.holdsSlot, let slots = call.quota.concurrentTasks, slotsUsed >= slots {
            deny(Self.recheck, .providerSlots)
        }
        guard call.limits.enabled else {
            if let (wait, limit) = worst { return .wait(wait, limit: limit, startsBurstCooldown: false) }
            return .admit(projectTAT: nil)
        }
        if userUsed >= call.limits.perUserRequestsPerMinute {
            deny(userOldest.map { $0 + .seconds(60) - now } ?? Self.recheck, .userWindow)
        }
        let bucket = GCRA(capacity: call.limits.tokenBucketCapacity, perMinute: call.limits.perProjectRequestsPerMinute)
        let tat = max(projectTAT ?? now, now)
        let allowedAt = tat - bucket.tolerance
        if allowedAt > now { deny(allowedAt - now, .projectBucket) }
        var startsBurst = false
        if let until = burstCooldownUntil, until > now {
            deny(until - now, .burstCooldown)
        } else if worst == nil, burstUsed >= call.limits.maxBurst {
            // Found used up with nothing else holding the call back: the cooldown starts now (as the engine's own
            // burst guard does).
            startsBurst = true
            deny(call.limits.burstCooldown, .burstCooldown)
        }
        if let (wait, limit) = worst { return .wait(wait, limit: limit, startsBurstCooldown: startsBurst) }
        return .admit(projectTAT: tat + bucket.emissionInterval)
    }
}

/// A job to claim and the call it would make (`nil`: a claim without a provider call).
public struct ClaimRequest: Sendable, Hashable {
    public var id: JobID
    public var call: SharedCall?

    public init(id: JobID, call: SharedCall?) {
        self.id = id
        self.call = call
    }
}

/// The answer of a shared store to a claim.
public enum ClaimDecision: Sendable, Hashable {
    /// The job is this worker's, and the call is admitted and counted in every shared limit.
    case claimed(LeasedJob)
    /// Another worker took the job, or it is not due (nothing to do).
    case gone
    /// A shared limit holds the call back for the wait (nothing was taken; the job stays available).
    case wait(Duration, limit: SharedLimitState.Limit)
}

/// A store whose jobs the engine looks at without taking, and takes one at a time when it starts it: a job
/// waiting for a quota is not held by anyone (no lease to renew, nothing to rescue after a crash).
public protocol ClaimingJobStore: JobStore {
    /// Due available jobs in claim order (priority, round-robin across users, age), without claiming them.
    func peek(
        limit: Int,
        excludingUsers: Set<String>,
        excludingProjects: Set<String>,
        excludingJobs: Set<JobID>,
        kinds: Set<GenerationKind>
    ) async throws -> [JobRecord]

    /// Leases job `id` to `owner` for `duration` if it is still available and due; `nil` if it is not (another
    /// process took it, it was cancelled, or it is not due).
    func claim(_ id: JobID, owner: String, duration: Duration) async throws -> LeasedJob?
}

/// A store that keeps the admission state that several workers share (provider windows, slots and cooldowns, user
/// windows, project buckets and bursts) and claims a job only in the same transaction that admits its call.
///
/// A worker on such a store never holds a job it cannot submit: it looks at the queue without taking
/// (``ClaimingJobStore/peek(limit:excludingUsers:excludingProjects:excludingJobs:kinds:)``), decides locally what
/// to try, and claims each job with the call it would make (``claim(_:owner:duration:for:)``). The local
/// admission state is a first guess; the shared state, read and written under row locks, decides.
public protocol AdmittingJobStore: ClaimingJobStore {
    /// Claims job `id` for `owner` if it is still available and due and, for a `call`, every shared limit admits
    /// the call now; counts the call in every limit in the same transaction. `call: nil` claims without a
    /// provider call (a cache hit, a job to dead-letter).
    func claim(_ id: JobID, owner: String, duration: Duration, for call: SharedCall?) async throws -> ClaimDecision

    /// Claims several jobs in one transaction, deciding their calls in the order given as
    /// ``claim(_:owner:duration:for:)`` would one after the other (``SharedLimitBook``); one decision per request,
    /// in the same order.
    func claim(_ requests: [ClaimRequest], owner: String, duration: Duration) async throws -> [ClaimDecision]

    /// Holds every worker's calls to `provider` back for `duration` (it throttled a call).
    func coolDown(provider: String, for duration: Duration) async throws

    /// Finishes a job successfully (``JobStore/complete(_:outcome:)``) whose provider answered `answeredAgo`
    /// before this call: its place in the provider's shared window is dated by that answer, not by this write,
    /// so that the window frees as soon as the provider's own does. The time is a duration on the caller's
    /// clock, not an instant: workers' clocks need not agree with the store's. An answer is never before the
    /// provider received the call, so a window dated by it is never shorter than the provider's.
    @discardableResult
    func complete(_ lease: JobLease, outcome: JobOutcome, answeredAgo: Duration) async throws -> JobRecord
}

extension AdmittingJobStore {
    /// Claims without a provider call.
    public func claim(_ id: JobID, owner: String, duration: Duration) async throws -> LeasedJob? {
        guard case .claimed(let job) = try await claim(id, owner: owner, duration: duration, for: nil) else { return nil }
        return job
    }
}

/// The shared limits' counts for calls decided together, one after the other in a given order: each admitted
/// call is counted before the next is decided, so a batch decides exactly as the same calls claimed one at a
/// time, in that order, would (``SharedLimitState/decide(_:at:)`` for each).
///
/// A shared store reads these counts once for a batch, under the locks of every key the batch uses.
public struct SharedLimitBook: Sendable, Hashable {
    /// A provider's window places, task slots and cooldown.
    public struct ProviderCounts: Sendable, Hashable {
        public var windowUsed = 0
        public var oldestDated: Duration?
        public var slotsUsed = 0
        public var cooldownUntil: Duration?
        public init() {}
    }

    /// A user's calls admitted in the last minute, and the oldest of them.
    public struct UserCounts: Sendable, Hashable {
        public var used = 0
        public var oldest: Duration?
        public init() {}
    }

    /// A project's calls in the burst window, its burst cooldown and its bucket's arrival time.
    public struct ProjectCounts: Sendable, Hashable {
        public var burstUsed = 0
        public var burstCooldownUntil: Duration?
        public var tat: Duration?
        public init() {}
    }

    public var providers: [String: ProviderCounts] = [:]
    public var users: [String: UserCounts] = [:]
    public var projects: [String: ProjectCounts] = [:]

    public init() {}

    /// What the limits say about `call` now, from the counts (keys never seen count nothing).
    public func state(for call: SharedCall) -> SharedLimitState {
        let provider = providers[call.provider] ?? ProviderCounts()
        let user = users[call.user] ?? UserCounts()
        let project = projects[call.project] ?? ProjectCounts()
        return SharedLimitState(
            providerCooldownUntil: provider.cooldownUntil,
            providerWindowUsed: provider.windowUsed,
            providerOldestDated: provider.oldestDated,
            slotsUsed: provider.slotsUsed,
            userUsed: user.used,
            userOldest: user.oldest,
            burstUsed: project.burstUsed,
            burstCooldownUntil: project.burstCooldownUntil,
            projectTAT: project.tat
        )
    }

    /// Decides `call` at `now` and counts what the decision takes: an admitted call's place in its provider's
    /// window (if it submits) and slot (if it holds one), in its user's window and its project's burst, and its
    /// project bucket's move; a burst found used up starts the project's cooldown.
    public mutating func decide(_ call: SharedCall, at now: Duration) -> SharedLimitState.Decision {
        let decision = state(for: call).decide(call, at: now)
        switch decision {
        case .admit(let tat):
            if call.submits { providers[call.provider, default: ProviderCounts()].windowUsed += 1 }
            if call.holdsSlot { providers[call.provider, default: ProviderCounts()].slotsUsed += 1 }
            users[call.user, default: UserCounts()].used += 1
            users[call.user, default: UserCounts()].oldest = min(users[call.user]?.oldest ?? now, now)
            projects[call.project, default: ProjectCounts()].burstUsed += 1
            if let tat { projects[call.project, default: ProjectCounts()].tat = tat }
        case .wait(_, _, let startsBurst):
            if startsBurst {
                projects[call.project, default: ProjectCounts()].burstCooldownUntil = now + call.limits.burstCooldown
            }
        }
        return decision
    }
}
