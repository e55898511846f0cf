import DequeModule
import HeapModule
import Synchronization

/// The in-process job store: the reference behaviour of ``JobStore``, and the store of the embedded engine.
///
/// Ready jobs sit in one queue per priority and user, served round-robin across users; jobs waiting for a
/// time sit in a heap. Leasing, completion and requeueing are O(log n) or better.
public final class MemoryJobStore: JobStore {
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
    }

    private struct Scheduled: Comparable {
        var runAt: Duration
        var sequence: Int64
        var id: JobID
        static func < (lhs: Self, rhs: Self) -> Bool { (lhs.runAt, lhs.sequence) < (rhs.runAt, rhs.sequence) }
    }

    private struct State {
        var jobs: [JobID: JobRecord] = [:]
        var ready: [UserQueues] = Array(repeating: UserQueues(), count: GenerationPriority.allCases.count)
        var scheduled = Heap<Scheduled>()
        var idempotency: [String: JobID] = [:]
        var running: Set<JobID> = []
        var counts: [JobState: Int] = [:]
        var sequence: Int64 = 0
        var tokens: UInt64 = 0

        mutating func setState(_ id: JobID, _ new: JobState) {
            let old = jobs[id]!.state
            counts[old, default: 0] -= 1
            counts[new, default: 0] += 1
            jobs[id]!.state = new
        }

        mutating func makeAvailable(_ id: JobID, now: Duration, front: Bool) {
            let job = jobs[id]!
            if job.runAt <= now {
                ready[job.request.priority.rawValue].push(id, user: job.request.user, front: front)
            } else {
                scheduled.insert(Scheduled(runAt: job.runAt, sequence: job.sequence, id: id))
            }
        }
    }

    private let clock: PargenClock
    private let idPrefix: String

    public var outlivesProcess: Bool { false }
    private let state = Mutex(State())

    /// - Parameters:
    ///   - clock: The clock for leases and due times.
    ///   - idPrefix: Prefix of the job ids this store makes.
    public init(clock: PargenClock = .continuous, idPrefix: String = "job") {
        self.clock = clock
        self.idPrefix = idPrefix
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
                state.jobs[id] = JobRecord(
                    id: id, request: request, state: .available, attempts: 0, snoozes: 0, runAt: now, enqueuedAt: now,
                    sequence: state.sequence, failedProviders: [], errors: [])
                state.counts[.available, default: 0] += 1
                if let key = request.idempotencyKey { state.idempotency["\(request.project)\u{0}\(key)"] = id }
                state.ready[request.priority.rawValue].push(id, user: request.user, front: false)
                return EnqueueResult(jobID: id, existing: false)
            }
        }
    }

    public func lease(limit: Int, owner: String, duration: Duration, excludingUsers: Set<String>) async throws
        -> [LeasedJob]
    {
        let now = clock.now
        return state.withLock { state in
            while let first = state.scheduled.min, first.runAt <= now {
                let entry = state.scheduled.removeMin()
                guard let job = state.jobs[entry.id], job.state == .available, job.runAt == entry.runAt else { continue }
                state.ready[job.request.priority.rawValue].push(entry.id, user: job.request.user, front: true)
            }
            var leased: [LeasedJob] = []
            for priority in stride(from: state.ready.count - 1, through: 0, by: -1) where leased.count < limit {
                var queues = state.ready[priority]
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
                    state.tokens += 1
                    let lease = JobLease(jobID: id, token: "\(owner):\(state.tokens)", expiresAt: now + duration)
                    state.setState(id, .running)
                    state.jobs[id]!.leaseToken = lease.token
                    state.jobs[id]!.leaseOwner = owner
                    state.jobs[id]!.leaseExpiresAt = lease.expiresAt
                    state.running.insert(id)
                    leased.append(LeasedJob(record: state.jobs[id]!, lease: lease))
                }
                state.ready[priority] = queues
            }
            return leased
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

    public func beginAttempt(_ lease: JobLease, provider: String) async throws {
        try withHeld(lease) { state in
            state.jobs[lease.jobID]!.attempts += 1
            state.jobs[lease.jobID]!.provider = provider
            state.jobs[lease.jobID]!.providerTaskID = nil
            state.jobs[lease.jobID]!.recoveryPoint = .submitting
        }
    }

    public func recordSubmission(_ lease: JobLease, taskID: String) async throws {
        try withHeld(lease) { state in
            state.jobs[lease.jobID]!.providerTaskID = taskID
            state.jobs[lease.jobID]!.recoveryPoint = .submitted
        }
    }

    public func complete(_ lease: JobLease, outcome: JobOutcome) async throws {
        let now = clock.now
        try withHeld(lease) { state in
            state.jobs[lease.jobID]!.outcome = outcome
            state.jobs[lease.jobID]!.provider = outcome.provider
            finish(&state, lease.jobID, as: .succeeded, now: now)
        }
    }

    public func retry(
        _ lease: JobLease, error: GenerationError?, after delay: Duration, spendAttempt: Bool, failedProvider: String?
    ) async throws {
        let now = clock.now
        try withHeld(lease) { state in
            var job = state.jobs[lease.jobID]!
            if let error { job.errors.append(error) }
            if !spendAttempt {
                job.snoozes += 1
                if job.recoveryPoint != nil { job.attempts = max(0, job.attempts - 1) }
            }
            if let failedProvider, !job.failedProviders.contains(failedProvider) { job.failedProviders.append(failedProvider) }
            job.runAt = now + max(.zero, delay)
            job.recoveryPoint = nil
            job.providerTaskID = nil
            state.jobs[lease.jobID] = job
            unlease(&state, lease.jobID)
            state.setState(lease.jobID, .available)
            state.makeAvailable(lease.jobID, now: now, front: true)
        }
    }

    public func deadLetter(_ lease: JobLease, error: GenerationError) async throws {
        let now = clock.now
        try withHeld(lease) { state in
            state.jobs[lease.jobID]!.errors.append(error)
            finish(&state, lease.jobID, as: .deadLettered, now: now)
        }
    }

    public func release(_ lease: JobLease) async throws {
        let now = clock.now
        try withHeld(lease) { state in
            if state.jobs[lease.jobID]!.recoveryPoint == .submitting {
                state.jobs[lease.jobID]!.attempts = max(0, state.jobs[lease.jobID]!.attempts - 1)
            }
            unlease(&state, lease.jobID)
            state.setState(lease.jobID, .available)
            state.makeAvailable(lease.jobID, now: now, front: true)
        }
    }

    public func rescueExpiredLeases() async throws -> Int {
        let now = clock.now
        return state.withLock { state in
            let expired = state.running.filter { state.jobs[$0]!.leaseExpiresAt.map { $0 <= now } ?? true }
            for id in expired {
                let job = state.jobs[id]!
                unlease(&state, id)
                if job.recoveryPoint == .submitting && job.providerTaskID == nil {
                    // Submitted or not, nobody knows: never resubmit blindly.
                    finish(&state, id, as: .needsReconciliation, now: now)
                } else {
                    state.setState(id, .available)
                    state.makeAvailable(id, now: now, front: true)
                }
            }
            return expired.count
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
            guard let job = state.jobs[id] else { throw StoreError(.notFound, "no job \(id)") }
            guard job.state == .deadLettered || job.state == .needsReconciliation else {
                throw StoreError(.invalidState, "job \(id) is \(job.state.rawValue), not dead-lettered")
            }
            state.jobs[id]!.attempts = 0
            state.jobs[id]!.snoozes = 0
            state.jobs[id]!.runAt = now
            state.jobs[id]!.finishedAt = nil
            state.jobs[id]!.recoveryPoint = nil
            state.jobs[id]!.failedProviders = []
            state.setState(id, .available)
            state.makeAvailable(id, now: now, front: false)
        }
    }

    public func counts() async throws -> [JobState: Int] { state.withLock { $0.counts.filter { $0.value > 0 } } }

    // MARK: - Helpers

    private func withHeld<R>(_ lease: JobLease, _ body: (inout State) throws -> R) throws -> R {
        try state.withLock { state in
            guard let job = state.jobs[lease.jobID] else { throw StoreError(.notFound, "no job \(lease.jobID)") }
            // An expired lease stays valid until the rescuer takes the job (which changes the token): fencing
            // is by token, so a slow worker is stopped exactly when someone else may start.
            guard job.state == .running, job.leaseToken == lease.token
            else { throw StoreError(.leaseLost, "the lease on \(lease.jobID) is no longer held") }
            return try body(&state)
        }
    }

    private func unlease(_ state: inout State, _ id: JobID) {
        state.jobs[id]!.leaseToken = nil
        state.jobs[id]!.leaseOwner = nil
        state.jobs[id]!.leaseExpiresAt = nil
        state.running.remove(id)
    }

    private func finish(_ state: inout State, _ id: JobID, as final: JobState, now: Duration) {
        unlease(&state, id)
        state.jobs[id]!.finishedAt = now
        state.jobs[id]!.recoveryPoint = nil
        state.setState(id, final)
    }
}

extension JobStore where Self == MemoryJobStore {
    /// An in-process store: fast, and gone with the process.
    public static var memory: MemoryJobStore { MemoryJobStore() }
}
