/// Where a job is in its life.
public enum JobState: String, Sendable, Hashable, Codable, CaseIterable {
    /// Waiting to be leased (now or at its `runAt`).
    case available
    /// Leased by a worker.
    case running
    case succeeded
    /// Failed for good; kept with its error history and can be re-queued.
    case deadLettered = "dead_lettered"
    /// Crashed between submitting to a provider and recording the provider's task id: a person decides.
    case needsReconciliation = "needs_reconciliation"

    public var isFinal: Bool { self == .succeeded || self == .deadLettered || self == .needsReconciliation }
}

/// How far a job got with its current provider call (for never paying twice).
public enum RecoveryPoint: String, Sendable, Hashable, Codable {
    /// The call is about to go out; no task id is known yet.
    case submitting
    /// The provider accepted the task and its id is recorded: resume by polling.
    case submitted
    /// A call to a provider that de-duplicates by idempotency key was cut off before its task id was recorded:
    /// make it again at the same provider (``JobRecord/provider``) with the same key, so that the provider
    /// answers with the task it may already have, and bills it once. Any other provider would bill it again.
    case cutOff = "cut_off"
}

/// What a provider call given back unjudged (a stop, or this machine's storage failing) may have left at its
/// provider, as far as the process that made it knows. ``JobRecord/release(now:leaving:)`` keeps what the next
/// holder needs so that the provider never bills the job twice.
public enum CallTrace: Sendable, Hashable {
    /// The call never went out: its attempt is given back.
    case notSent
    /// The call went out and no task id came back (cut off, or an answer that was not a task). At a provider
    /// that de-duplicates by idempotency key it is made again there, under the same key
    /// (``RecoveryPoint/cutOff``); elsewhere its attempt is given back, as no task is known.
    case sent
    /// The provider accepted the call as task `taskID`, which the store may not have recorded yet: the next
    /// holder resumes polling it.
    case accepted(taskID: String)
}

/// The final result stored with a succeeded job.
public struct JobOutcome: Sendable, Hashable, Codable {
    public var artifact: Artifact
    public var provider: String
    public var cost: Money
    public var servedFromCache: Bool
    public var deduplicated: Bool
    /// What generating it again would have cost, for a job served by a cache or an identical request.
    public var saved: Money?

    public init(
        artifact: Artifact,
        provider: String,
        cost: Money,
        servedFromCache: Bool = false,
        deduplicated: Bool = false,
        saved: Money? = nil
    ) {
        self.saved = saved
        self.artifact = artifact
        self.provider = provider
        self.cost = cost
        self.servedFromCache = servedFromCache
        self.deduplicated = deduplicated
    }
}

/// Everything the store knows about one job.
public struct JobRecord: Sendable, Hashable, Codable {
    public var id: JobID
    public var request: ValidatedRequest
    public var state: JobState
    /// Provider calls begun (a throttled call gives its attempt back).
    public var attempts: Int
    /// Rate-limit and budget waits.
    public var snoozes: Int
    /// Store time (the store's own clock) from which the job may be leased.
    public var runAt: Duration
    public var enqueuedAt: Duration
    @Boxed public var finishedAt: Duration?
    /// Insertion order, for first-in first-out within a priority and user.
    public var sequence: Int64
    // Set only while a job runs or once it has: kept on the heap, so that a queued job stays small.
    @Boxed public var leaseToken: String?
    @Boxed public var leaseOwner: String?
    @Boxed public var leaseExpiresAt: Duration?
    public var recoveryPoint: RecoveryPoint?
    /// Whether the current call's provider de-duplicates by idempotency key (safe to make again after a crash).
    public var idempotentSubmission: Bool = false
    @Boxed public var provider: String?
    @Boxed public var providerTaskID: String?
    /// Providers that failed this job, avoided on the next attempt while others can serve it.
    public var failedProviders: [String]
    /// Every error met, oldest first.
    public var errors: [GenerationError]
    /// Kept on the heap: a queued job has none, and most of the store's jobs are queued.
    @Boxed public var outcome: JobOutcome?
    /// The job's money, kept in the same record (and so the same transaction) as its state.
    public var ledger: CostLedger = CostLedger()
    /// Times the job was taken back from a process that stopped while its provider call was under way (a
    /// crash, a kill, a power cut, a lease left to expire); `nil` for none. Past the limit the job is
    /// dead-lettered, so that a job whose call brings the process down cannot stop a campaign for good.
    public var crashes: Int?
    /// Whether the holder had a provider call of this job under way (set when a call begins or a task is
    /// resumed, cleared by every transition that ends the call): a rescue counts a crash only then, so a job
    /// that merely waited in a crashed process's backlog is not blamed.
    public var inCall: Bool?
}

/// One job's money: what was reserved before calls, charged on success and released on failure.
///
/// `reserved == charged + released + pending` always; with nothing pending, `reserved == charged + released`.
public struct CostLedger: Sendable, Hashable, Codable {
    /// Every reservation, with top-ups when a charge exceeded its reservation.
    public var reserved: Money = .zero
    public var charged: Money = .zero
    public var released: Money = .zero
    /// Reserved for the call in progress (or a submitted task that may still charge).
    public var pending: Money = .zero

    public init() {}

    public var balances: Bool { reserved == charged + released + pending }

    public static func + (lhs: CostLedger, rhs: CostLedger) -> CostLedger {
        var sum = CostLedger()
        sum.reserved = lhs.reserved + rhs.reserved
        sum.charged = lhs.charged + rhs.charged
        sum.released = lhs.released + rhs.released
        sum.pending = lhs.pending + rhs.pending
        return sum
    }
}

/// Proof that a worker holds a job. Every state change is fenced by its token.
public struct JobLease: Sendable, Hashable, Codable {
    public var jobID: JobID
    public var token: String
    /// In the store's own clock; opaque to the engine.
    public var expiresAt: Duration

    public init(jobID: JobID, token: String, expiresAt: Duration) {
        self.jobID = jobID
        self.token = token
        self.expiresAt = expiresAt
    }
}

public struct LeasedJob: Sendable, Hashable {
    public var record: JobRecord
    public var lease: JobLease

    public init(record: JobRecord, lease: JobLease) {
        self.record = record
        self.lease = lease
    }
}

/// The result of enqueuing one request.
public struct EnqueueResult: Sendable, Hashable {
    public var jobID: JobID
    /// The request's idempotency key matched an earlier job in the same project, which is returned instead.
    public var existing: Bool

    public init(jobID: JobID, existing: Bool) {
        self.jobID = jobID
        self.existing = existing
    }
}

/// Selects jobs for ``JobStore/jobs(matching:)``.
public struct JobQuery: Sendable, Hashable {
    public var states: Set<JobState>?
    public var campaign: String?
    public var project: String?
    public var user: String?
    public var provider: String?
    /// Only jobs inserted after the one with this ``JobRecord/sequence`` (a page's cursor).
    public var afterSequence: Int64?
    public var limit: Int?

    public init(
        states: Set<JobState>? = nil,
        campaign: String? = nil,
        project: String? = nil,
        user: String? = nil,
        provider: String? = nil,
        afterSequence: Int64? = nil,
        limit: Int? = nil
    ) {
        self.states = states
        self.campaign = campaign
        self.project = project
        self.user = user
        self.provider = provider
        self.afterSequence = afterSequence
        self.limit = limit
    }

    public func matches(_ job: JobRecord) -> Bool {
        (states?.contains(job.state) ?? true) && (campaign.map { $0 == job.request.campaign } ?? true)
            && (project.map { $0 == job.request.project } ?? true) && (user.map { $0 == job.request.user } ?? true)
            && (provider.map { $0 == job.provider } ?? true) && (afterSequence.map { job.sequence > $0 } ?? true)
    }
}

extension JobStore {
    /// Gives back a job whose current call never went out (see ``release(_:leaving:)``).
    public func release(_ lease: JobLease) async throws { try await release(lease, leaving: .notSent) }

    /// Begins an attempt at a provider that does not de-duplicate submissions.
    public func beginAttempt(_ lease: JobLease, provider: String, reserving estimate: Money) async throws {
        try await beginAttempt(lease, provider: provider, reserving: estimate, idempotentSubmission: false)
    }
}

extension JobStore {
    /// Leases up to `limit` due jobs of any kind (see ``lease(limit:owner:duration:excludingUsers:kinds:)``).
    public func lease(
        limit: Int,
        owner: String,
        duration: Duration,
        excludingUsers: Set<String>
    ) async throws -> [LeasedJob] {
        try await lease(
            limit: limit,
            owner: owner,
            duration: duration,
            excludingUsers: excludingUsers,
            kinds: Set(GenerationKind.allCases)
        )
    }
}

/// Errors of a ``JobStore``. Equality compares the code.
public struct StoreError: Error, Sendable, Hashable, CustomStringConvertible {
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        private enum Base: String, Sendable, Hashable { case notFound, leaseLost, invalidState, unavailable }
        private let base: Base
        private init(_ base: Base) { self.base = base }
        public static let notFound = Code(.notFound)
        /// The lease expired or was taken over: this worker must stop working on the job (fencing).
        public static let leaseLost = Code(.leaseLost)
        public static let invalidState = Code(.invalidState)
        public static let unavailable = Code(.unavailable)
        public var description: String { base.rawValue }
    }

    public var code: Code
    public var message: String
    public var underlying: (any Error)?

    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }
    /// The code and message, and the cause when it can be shown (``ShownCause``: what this machine's storage
    /// said, a full disk or a damaged file; what the database server said), so that `pargen status` on a broken
    /// store, or a run that cannot enqueue, says what is wrong.
    public var description: String {
        if let cause = underlying as? any ShownCause { return "\(code): \(message): \(cause)" }
        return "\(code): \(message)"
    }
}

/// An error whose description is safe to show to the user as the cause of a ``StoreError``: it names what
/// failed and why, and never holds a secret (a password, a query's parameters).
public protocol ShownCause: Error, CustomStringConvertible {}

extension LocalResourceError: ShownCause {}

/// Durable (or, for the memory store, process-lifetime) storage of jobs with leases and fenced transitions.
///
/// Every transition of a running job takes its ``JobLease``; a worker whose lease expired or was taken
/// over gets ``StoreError/Code/leaseLost`` and must stop. Memory is the reference implementation; SQLite
/// and PostgreSQL implement the same contract.
public protocol JobStore: Sendable {
    /// Whether jobs outlive this process (a database), so that leases need heartbeats and a rescuer.
    /// An in-process store's leases all belong to this process.
    var outlivesProcess: Bool { get }

    /// Adds jobs. An idempotency key already used in the same project returns the existing job.
    func enqueue(_ requests: [ValidatedRequest]) async throws -> [EnqueueResult]

    /// Leases up to `limit` due jobs of the given kinds: highest priority first, then round-robin across users,
    /// then oldest first; jobs of `excludingUsers` are left for later. The scheduler takes each kind's own
    /// queue, so that work late in a campaign file is seen as early as work near its top.
    func lease(
        limit: Int,
        owner: String,
        duration: Duration,
        excludingUsers: Set<String>,
        kinds: Set<GenerationKind>
    ) async throws -> [LeasedJob]

    /// How long until the earliest available job is due (zero if one already is), or `nil` when none is
    /// waiting.
    ///
    /// Times cross this protocol only as durations relative to now: a durable store keeps wall-clock times,
    /// the engine its own monotonic clock.
    func timeUntilNextDue() async throws -> Duration?

    /// Extends a lease. Throws ``StoreError/Code/leaseLost`` if it is no longer held.
    func heartbeat(_ lease: JobLease, duration: Duration) async throws -> JobLease

    /// Records, before a provider call, that it is about to be made: counts the attempt, reserves its estimated
    /// cost in the job's ledger, and notes whether the provider de-duplicates by idempotency key.
    func beginAttempt(
        _ lease: JobLease,
        provider: String,
        reserving estimate: Money,
        idempotentSubmission: Bool
    )
        async throws

    /// Begins an attempt as ``beginAttempt(_:provider:reserving:idempotentSubmission:)`` does, if the reservation
    /// fits every budget in `budgets`: what the jobs of each budget's scope have been charged plus what they have
    /// reserved and not yet settled (the job records' own ledgers), with this job's reservation, may not exceed
    /// the budget's limit. The check and the reservation are one transaction, so a budget holds exactly however
    /// many engines share the store.
    ///
    /// - Returns: What each budget's scope has committed (charged plus pending) once the reservation is made.
    /// - Throws: ``BudgetRefusal`` for the first budget that would be exceeded (nothing reserved, the attempt not
    ///   begun); ``StoreError/Code/leaseLost`` as the other transitions.
    func beginAttempt(
        _ lease: JobLease,
        provider: String,
        reserving estimate: Money,
        idempotentSubmission: Bool,
        within budgets: [Budget]
    ) async throws -> [BudgetScope: Money]

    /// The ledgers of the jobs in `scope`, summed.
    func ledger(in scope: BudgetScope) async throws -> CostLedger

    /// Records the provider's task id right after submission, before polling.
    func recordSubmission(_ lease: JobLease, taskID: String) async throws

    /// Finishes a job successfully.
    ///
    /// - Returns: The job's record as written: what its waiters are given, without reading it again.
    @discardableResult
    func complete(_ lease: JobLease, outcome: JobOutcome) async throws -> JobRecord

    /// Puts a job back to run `after` from now, recording `error`. `spendAttempt: false` gives back the
    /// attempt of the current call (throttling). `failedProvider` is avoided next time while others can serve.
    func retry(
        _ lease: JobLease,
        error: GenerationError?,
        after: Duration,
        spendAttempt: Bool,
        failedProvider: String?
    )
        async throws

    /// Finishes a job as failed, keeping its error history.
    ///
    /// - Returns: The job's record as written.
    @discardableResult
    func deadLetter(_ lease: JobLease, error: GenerationError) async throws -> JobRecord

    /// Gives a job back without judging it (a stop, or this machine's storage failing). What its current call
    /// left at the provider decides what the next holder does (see ``JobRecord/release(now:leaving:)``): a call
    /// that never went out gives its attempt back; a task the provider accepted is resumed; a call that went out
    /// to a provider that de-duplicates by key is made again there under the same key.
    func release(_ lease: JobLease, leaving trace: CallTrace) async throws

    /// Returns expired leases' jobs to the queue; returns how many. A job taken back more than `maxCrashes`
    /// times is dead-lettered (see ``JobRecord/rescue(now:maxCrashes:)``).
    func rescueExpiredLeases(maxCrashes: Int) async throws -> Int

    /// Rescues every lease, expired or not: for a process that holds the store exclusively (so every lease
    /// in it belongs to a run that crashed). Jobs that may have been submitted without their task id being
    /// recorded go to ``JobState/needsReconciliation``; a job taken back more than `maxCrashes` times is
    /// dead-lettered.
    func rescueOrphanedLeases(maxCrashes: Int) async throws -> Int

    /// Deletes finished jobs (succeeded, dead-lettered or needing reconciliation); returns how many. Their money
    /// stays counted in ``ledger(in:)`` and in budget checks: what they charged was spent, and what a job needing
    /// reconciliation still reserves may yet be billed.
    func purge(_ ids: [JobID]) async throws -> Int

    func job(_ id: JobID) async throws -> JobRecord?
    func jobs(matching query: JobQuery) async throws -> [JobRecord]

    /// Puts a dead-lettered job back in the queue with fresh attempts.
    func requeue(_ id: JobID) async throws

    /// Takes a queued job out of the queue: it is dead-lettered with a ``GenerationError/Code/cancelled`` error
    /// (so ``requeue(_:)`` can bring it back). Throws ``StoreError/Code/invalidState`` for a job that is not
    /// waiting (running or finished) and ``StoreError/Code/notFound`` for an unknown one.
    func cancel(_ id: JobID) async throws

    func counts() async throws -> [JobState: Int]

    /// The sum of every job's ledger.
    func ledgerTotals() async throws -> CostLedger
}

extension JobStore {
    /// ``rescueExpiredLeases(maxCrashes:)`` with no limit on how often a job may be taken back.
    public func rescueExpiredLeases() async throws -> Int { try await rescueExpiredLeases(maxCrashes: .max) }

    /// ``rescueOrphanedLeases(maxCrashes:)`` with no limit on how often a job may be taken back.
    public func rescueOrphanedLeases() async throws -> Int { try await rescueOrphanedLeases(maxCrashes: .max) }
}

/// A store that other processes write to, and that can tell this one when work arrives (PostgreSQL's
/// LISTEN/NOTIFY), so that a worker does not wait for its next poll.
///
/// The engine still polls (about once a second when its queues look empty): a notification only makes it look
/// sooner, so a lost one delays work by a poll at most.
public protocol JobNotifying: Sendable {
    /// Calls `onWork` each time a job becomes available, until the task is cancelled.
    func watchForWork(_ onWork: @escaping @Sendable () -> Void) async
}
