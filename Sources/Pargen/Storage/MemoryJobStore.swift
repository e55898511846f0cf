import DequeModule
import HeapModule
import Synchronization

/// The in-process job store: the reference behaviour of ``JobStore``, and the store of the embedded engine.
///
/// Ready jobs sit in one queue per priority and user, served round-robin across users; jobs waiting for a
/// time sit in a heap. Leasing, completion and requeueing are O(log n) or better.
public final class MemoryJobStore: ClaimingJobStore {
    private struct UserQueues {
        var order: Deque<String> = []
        var queues: [String: Deque<JobID>] = [:]

        mutating func push(_ id: JobID, user: String, front: Bool) {
            if queues[user] == nil {
                queues[user] = []
                order.append(user)
            }
            if front { queues[user]!.prepend(id) } else { queues[user]!.append(id) }
        }

        /// Takes `id` out of its user's queue (claimed out of turn); the users' order is kept.
        mutating func remove(_ id: JobID, user: String) {
            guard let index = queues[user]?.firstIndex(of: id) else { return }
            queues[user]!.remove(at: index)
            if queues[user]!.isEmpty {
                queues[user] = nil
                if let position = order.firstIndex(of: user) { order.remove(at: position) }
            }
        }
    }

    private struct Scheduled: Comparable {
        var runAt: Duration
        var sequence: Int64
        var id: JobID
        static func < (lhs: Self, rhs: Self) -> Bool { (lhs.runAt, lhs.sequence) < (rhs.runAt, rhs.sequence) }
    }

    /// Jobs by their sequence number (a job's id is the store's prefix and its sequence): an array holds a
    /// queued job in its own size, where a dictionary at its load factor holds it in up to three times that.
    struct JobTable {
        private var records: [JobRecord?] = []
        private let prefix: Substring

        init(prefix: String) { self.prefix = Substring(prefix + "-") }

        private func index(_ id: JobID) -> Int? {
            let text = id.rawValue
            guard text.hasPrefix(prefix), let sequence = Int(text.dropFirst(prefix.count)), sequence >= 1,
                sequence <= records.count
            else { return nil }
            return sequence - 1
        }

        subscript(id: JobID) -> JobRecord? {
            get { index(id).flatMap { records[$0] } }
            set {
                guard let index = index(id) else { return }
                records[index] = newValue
            }
        }

        /// Adds the job whose sequence is the next one.
        mutating func append(_ record: JobRecord) { records.append(record) }

        var values: [JobRecord] { records.compactMap { $0 } }
    }

    private struct PurgedScope: Hashable {
        var project: String
        var campaign: String
    }

    private struct State {
        var jobs: JobTable
        /// Ready jobs by priority, then kind (its index in `GenerationKind.allCases`).
        var ready: [[UserQueues]] = Array(
            repeating: Array(repeating: UserQueues(), count: GenerationKind.allCases.count),
            count: GenerationPriority.allCases.count
        )
        var scheduled = Heap<Scheduled>()
        var idempotency: [String: JobID] = [:]
        var running: Set<JobID> = []
        var counts: [JobState: Int] = [:]
        /// The ledgers of purged jobs, per project and campaign: what they charged still counts in budgets.
        var purged: [PurgedScope: CostLedger] = [:]
        var sequence: Int64 = 0
        var tokens: UInt64 = 0

        /// Moves the scheduled jobs that are due by `now` to the front of their ready queues.
        mutating func promoteDue(now: Duration) {
            while let first = scheduled.min, first.runAt <= now {
                let entry = scheduled.removeMin()
                guard let job = jobs[entry.id], job.state == .available, job.runAt == entry.runAt else { continue }
                ready[job.request.priority.rawValue][job.request.kind.index]
                    .push(entry.id, user: job.request.user, front: true)
            }
        }

        /// Leases job `id` to `owner` (it is available).
        mutating func grant(_ id: JobID, owner: String, duration: Duration, now: Duration) -> LeasedJob {
            tokens += 1
            let lease = JobLease(jobID: id, token: "\(owner):\(tokens)", expiresAt: now + duration)
            transition(id, now: now) { $0.grantLease(token: lease.token, owner: owner, expiresAt: lease.expiresAt) }
            return LeasedJob(record: jobs[id]!, lease: lease)
        }

        /// Applies a transition to a job and keeps the counts, the running set and the queues in step.
        mutating func transition(_ id: JobID, now: Duration, _ change: (inout JobRecord) -> Void) {
            let before = jobs[id]!
            change(&jobs[id]!)
            let after = jobs[id]!
            if before.state != after.state {
                counts[before.state, default: 0] -= 1
                counts[after.state, default: 0] += 1
            }
            if after.state == .running { running.insert(id) } else { running.remove(id) }
            if after.state == .available && (before.state != .available || before.runAt != after.runAt) {
                if after.runAt <= now {
                    ready[after.request.priority.rawValue][after.request.kind.index]
                        .push(id, user: after.request.user, front: true)
                } else {
                    scheduled.insert(Scheduled(runAt: after.runAt, sequence: after.sequence, id: id))
                }
            }
        }
    }

    private let clock: PargenClock
    private let idPrefix: String

    public var outlivesProcess: Bool { false }
    private let state: Mutex<State>

    /// - Parameters:
    ///   - clock: The clock for leases and due times.
    ///   - idPrefix: Prefix of the job ids this store makes.
    public init(clock: PargenClock = .continuous, idPrefix: String = "job") {
        self.clock = clock
        self.idPrefix = idPrefix
        state = Mutex(State(jobs: JobTable(prefix: idPrefix)))
    }

    public func enqueue(_ requests: [ValidatedRequest]) async throws -> [EnqueueResult] {
        let now = clock.now
        return state.withLock { state in
            requests.map { request in
                if let key = request.idempotencyKey, let existing = state.idempotency["\(request.project)\u{0}\(key)"] {
                    return EnqueueResult(jobID: existing, existing: true)
                }
                state.sequence += 1
                let id = JobID("\(idPrefix)-\(state.sequence)")
                state.jobs.append(JobRecord(id: id, request: request, sequence: state.sequence, now: now))
                state.counts[.available, default: 0] += 1
                if let key = request.idempotencyKey { state.idempotency["\(request.project)\u{0}\(key)"] = id }
                state.ready[request.priority.rawValue][request.kind.index].push(id, user: request.user, front: false)
                return EnqueueResult(jobID: id, existing: false)
            }
        }
    }

    public func lease(
        limit: Int,
        owner: String,
        duration: Duration,
        excludingUsers: Set<String>,
        kinds: Set<GenerationKind>
    ) async throws -> [LeasedJob] {
        let now = clock.now
        return state.withLock { state in
            state.promoteDue(now: now)
            var leased: [LeasedJob] = []
            for priority in stride(from: state.ready.count - 1, through: 0, by: -1) where leased.count < limit {
                for kind in GenerationKind.allCases where kinds.contains(kind) && leased.count < limit {
                    var queues = state.ready[priority][kind.index]
                    var skipped = 0
                    while leased.count < limit, skipped < queues.order.count, let user = queues.order.popFirst() {
                        if excludingUsers.contains(user) {
                            queues.order.append(user)
                            skipped += 1
                            continue
                        }
                        skipped = 0
                        let id = queues.queues[user]!.removeFirst()
                        if queues.queues[user]!.isEmpty { queues.queues[user] = nil } else { queues.order.append(user) }
                        guard state.jobs[id]?.state == .available else { continue }
                        leased.append(state.grant(id, owner: owner, duration: duration, now: now))
                    }
                    state.ready[priority][kind.index] = queues
                }
            }
            return leased
        }
    }

    /// Due available jobs in the order ``lease(limit:owner:duration:excludingUsers:kinds:)`` would take them
    /// (highest priority first; within a priority and kind, round-robin across users, each user's oldest first),
    /// without taking them.
    public func peek(
        limit: Int,
        excludingUsers: Set<String>,
        excludingProjects: Set<String>,
        excludingJobs: Set<JobID>,
        kinds: Set<GenerationKind>
    ) async throws -> [JobRecord] {
        guard limit > 0, !kinds.isEmpty else { return [] }
        let now = clock.now
        return state.withLock { state in
            state.promoteDue(now: now)
            var found: [JobRecord] = []
            // A job cancelled while queued and then requeued can stand twice in its user's queue.
            var seen: Set<JobID> = []
            for priority in stride(from: state.ready.count - 1, through: 0, by: -1) where found.count < limit {
                for kind in GenerationKind.allCases where kinds.contains(kind) && found.count < limit {
                    let queues = state.ready[priority][kind.index]
                    // One turn per user per round, as leasing serves them; a user leaves the rounds when their
                    // queue has nothing more to offer.
                    var turns = queues.order.filter { !excludingUsers.contains($0) }.map { ($0, 0) }
                    while found.count < limit, !turns.isEmpty {
                        var next: [(String, Int)] = []
                        for (user, start) in turns where found.count < limit {
                            let queue = queues.queues[user]!
                            var position = start
                            while position < queue.count {
                                let id = queue[position]
                                position += 1
                                guard let job = state.jobs[id], job.state == .available, !excludingJobs.contains(id),
                                    !excludingProjects.contains(job.request.project), seen.insert(id).inserted
                                else { continue }
                                found.append(job)
                                break
                            }
                            if position < queue.count { next.append((user, position)) }
                        }
                        turns = next
                    }
                }
            }
            return found
        }
    }

    /// Leases job `id` if it is still available and due.
    public func claim(_ id: JobID, owner: String, duration: Duration) async throws -> LeasedJob? {
        let now = clock.now
        return state.withLock { state in
            guard let job = state.jobs[id], job.state == .available, job.runAt <= now else { return nil }
            state.ready[job.request.priority.rawValue][job.request.kind.index].remove(id, user: job.request.user)
            return state.grant(id, owner: owner, duration: duration, now: now)
        }
    }

    public func timeUntilNextDue() async throws -> Duration? {
        let now = clock.now
        return state.withLock { state in state.scheduled.min.map { max(.zero, $0.runAt - now) } }
    }

    public func heartbeat(_ lease: JobLease, duration: Duration) async throws -> JobLease {
        let now = clock.now
        return try withHeld(lease) { state in
            state.jobs[lease.jobID]!.leaseExpiresAt = now + duration
            return JobLease(jobID: lease.jobID, token: lease.token, expiresAt: now + duration)
        }
    }

    public func beginAttempt(
        _ lease: JobLease,
        provider: String,
        reserving estimate: Money,
        idempotentSubmission: Bool
    )
        async throws
    {
        try withHeld(lease) { state in
            state.transition(lease.jobID, now: clock.now) {
                $0.beginAttempt(provider: provider, reserving: estimate, idempotentSubmission: idempotentSubmission)
            }
        }
    }

    public func beginAttempt(
        _ lease: JobLease,
        provider: String,
        reserving estimate: Money,
        idempotentSubmission: Bool,
        within budgets: [Budget]
    ) async throws -> [BudgetScope: Money] {
        let checked = try withHeld(lease) { state -> Result<[BudgetScope: Money], BudgetRefusal> in
            var trial = state.jobs[lease.jobID]!
            trial.beginAttempt(provider: provider, reserving: estimate, idempotentSubmission: idempotentSubmission)
            var others: [BudgetScope: (committed: Money, pending: Money)] = [:]
            for budget in budgets { others[budget.scope] = (.zero, .zero) }
            func count(_ ledger: CostLedger, project: String, campaign: String) {
                for budget in budgets where budget.scope.contains(project: project, campaign: campaign) {
                    let sum = others[budget.scope]!
                    others[budget.scope] = (sum.committed + ledger.charged + ledger.pending, sum.pending + ledger.pending)
                }
            }
            for record in state.jobs.values where record.id != lease.jobID {
                count(record.ledger, project: record.request.project, campaign: record.request.campaign)
            }
            for (scope, ledger) in state.purged { count(ledger, project: scope.project, campaign: scope.campaign) }
            let result = Budget.check(budgets, others: others, own: trial.ledger.charged + trial.ledger.pending)
            if case .success = result { state.transition(lease.jobID, now: clock.now) { $0 = trial } }
            return result
        }
        return try checked.get()
    }

    public func ledger(in scope: BudgetScope) async throws -> CostLedger {
        state.withLock { state in
            let live = state.jobs.values.reduce(CostLedger()) { scope.contains($1.request) ? $0 + $1.ledger : $0 }
            return state.purged.reduce(live) {
                scope.contains(project: $1.key.project, campaign: $1.key.campaign) ? $0 + $1.value : $0
            }
        }
    }

    public func recordSubmission(_ lease: JobLease, taskID: String) async throws {
        try withHeld(lease) { state in
            state.transition(lease.jobID, now: clock.now) { $0.recordSubmission(taskID: taskID) }
        }
    }

    @discardableResult
    public func complete(_ lease: JobLease, outcome: JobOutcome) async throws -> JobRecord {
        let now = clock.now
        return try withHeld(lease) { state in
            state.transition(lease.jobID, now: now) { $0.complete(outcome, now: now) }
            return state.jobs[lease.jobID]!
        }
    }

    public func retry(
        _ lease: JobLease,
        error: GenerationError?,
        after delay: Duration,
        spendAttempt: Bool,
        failedProvider: String?
    ) async throws {
        let now = clock.now
        try withHeld(lease) { state in
            state.transition(lease.jobID, now: now) {
                $0.scheduleRetry(
                    error: error,
                    runAt: now + max(.zero, delay),
                    spendAttempt: spendAttempt,
                    failedProvider: failedProvider
                )
            }
        }
    }

    @discardableResult
    public func deadLetter(_ lease: JobLease, error: GenerationError) async throws -> JobRecord {
        let now = clock.now
        return try withHeld(lease) { state in
            state.transition(lease.jobID, now: now) { $0.deadLetter(error, now: now) }
            return state.jobs[lease.jobID]!
        }
    }

    public func release(_ lease: JobLease, leaving trace: CallTrace) async throws {
        let now = clock.now
        try withHeld(lease) { state in state.transition(lease.jobID, now: now) { $0.release(now: now, leaving: trace) } }
    }

    public func rescueExpiredLeases(maxCrashes: Int) async throws -> Int {
        let now = clock.now
        return rescue(now: now, maxCrashes: maxCrashes) { $0.leaseExpiresAt.map { $0 <= now } ?? true }
    }

    public func rescueOrphanedLeases(maxCrashes: Int) async throws -> Int {
        rescue(now: clock.now, maxCrashes: maxCrashes) { _ in true }
    }

    /// Applies the rescue transition to every running job that `selected` picks.
    private func rescue(now: Duration, maxCrashes: Int, _ selected: (JobRecord) -> Bool) -> Int {
        state.withLock { state in
            let chosen = state.running.filter { selected(state.jobs[$0]!) }
            for id in chosen { state.transition(id, now: now) { $0.rescue(now: now, maxCrashes: maxCrashes) } }
            return chosen.count
        }
    }

    public func purge(_ ids: [JobID]) async throws -> Int {
        state.withLock { state in
            var removed = 0
            for id in ids {
                guard let job = state.jobs[id], job.state.isFinal else { continue }
                state.jobs[id] = nil
                state.counts[job.state, default: 0] -= 1
                let scope = PurgedScope(project: job.request.project, campaign: job.request.campaign)
                state.purged[scope, default: CostLedger()] = state.purged[scope, default: CostLedger()] + job.ledger
                if let key = job.request.idempotencyKey { state.idempotency["\(job.request.project)\u{0}\(key)"] = nil }
                removed += 1
            }
            return removed
        }
    }

    public func job(_ id: JobID) async throws -> JobRecord? { state.withLock { $0.jobs[id] } }

    public func jobs(matching query: JobQuery) async throws -> [JobRecord] {
        state.withLock { state in
            var result = state.jobs.values.filter(query.matches).sorted { $0.sequence < $1.sequence }
            if let limit = query.limit, result.count > limit { result.removeLast(result.count - limit) }
            return result
        }
    }

    public func requeue(_ id: JobID) async throws {
        let now = clock.now
        try state.withLock { state in
            guard var job = state.jobs[id] else { throw StoreError(.notFound, "no job \(id)") }
            try job.requeue(now: now)
            state.transition(id, now: now) { $0 = job }
        }
    }

    public func cancel(_ id: JobID) async throws {
        let now = clock.now
        try state.withLock { state in
            guard var job = state.jobs[id] else { throw StoreError(.notFound, "no job \(id)") }
            try job.cancel(now: now)
            state.transition(id, now: now) { $0 = job }
        }
    }

    public func counts() async throws -> [JobState: Int] { state.withLock { $0.counts.filter { $0.value > 0 } } }

    public func ledgerTotals() async throws -> CostLedger { try await ledger(in: .global) }

    // MARK: - Helpers

    private func withHeld<R>(_ lease: JobLease, _ body: (inout State) throws -> R) throws -> R {
        try state.withLock { state in
            guard let job = state.jobs[lease.jobID] else { throw StoreError(.notFound, "no job \(lease.jobID)") }
            guard job.isHeld(by: lease) else {
                throw StoreError(.leaseLost, "the lease on \(lease.jobID) is no longer held")
            }
            return try body(&state)
        }
    }
}

extension JobStore where Self == MemoryJobStore {
    /// An in-process store: fast, and gone with the process.
    public static var memory: MemoryJobStore { MemoryJobStore() }
}
