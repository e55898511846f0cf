import Foundation
import Synchronization
public import Logging
public import Pargen
public import PostgresNIO

/// The job store that several `pargen` processes share: jobs, leases, the ledger and idempotency keys in one
/// PostgreSQL database, through postgres-nio's `PostgresClient` pool.
///
/// - **Claiming** is one statement: a CTE ranks the due jobs (priority, then round-robin across users, then
///   age), locks them with `FOR UPDATE SKIP LOCKED` (so that workers claiming together never wait on each other
///   nor take the same job), and sets state, owner, lease token and expiry together.
/// - **Times** are the database's (`now_ns()`, nanoseconds since the Unix epoch): a lease expires by the same
///   clock on every worker. Tests may inject a clock instead.
/// - **Every other transition** reads the record, applies the same pure transition the memory and SQLite
///   stores apply (``JobRecord``'s), and writes it back only if the row's `version` is unchanged and, for a
///   held job, its lease token still matches (fencing): a worker whose lease was rescued gets
///   ``StoreError/Code/leaseLost`` and cannot overwrite the job. The ledger is part of the record, so money and
///   state change in the same statement. The transitions of held jobs that arrive while a write is under way
///   are read and written together, up to 100 a statement (``TransitionBatching``), each judged on its own.
/// - **Idempotency keys** are unique per project by a unique index, not by a read-then-insert.
/// - **Wake-ups**: a job that becomes available is announced with `NOTIFY` in the statement that frees it;
///   ``watchForWork(_:)`` listens on a dedicated connection.
///
/// The client must be running (`client.run()`, or a `ServiceGroup` that runs it) for as long as the store is used.
public final class PostgresJobStore: JobStore, JobNotifying, BudgetLimitStore {
    public var outlivesProcess: Bool { true }

    public let client: PostgresClient
    /// The schema that holds the tables.
    public let schema: String
    package let quoted: String
    package let logger: Logger
    private let idPrefix: String
    /// The injected clock (tests), or `nil` for the database's.
    private let now: (@Sendable () -> Duration)?
    /// The channel `NOTIFY` uses for this schema.
    let channel: String
    /// Tests: how many of the next transactions commit and then fail as if the server's reply to COMMIT had been
    /// lost (``loseCommitReplies(_:)``).
    let commitRepliesToLose = Atomic<Int>(0)

    /// Tests on an injected clock: when, on that clock, the server last started (``serverStarted(at:)``).
    let injectedServerStart = Mutex<Duration?>(nil)

    /// Tests on an injected clock: the server started at `time` on that clock, so leases that ran out before
    /// `time` plus their length are not yet taken back.
    package func serverStarted(at time: Duration) {
        injectedServerStart.withLock { $0 = time }
    }

    /// Tests: the next `count` transactions commit and then fail as if the server's reply to COMMIT had been lost
    /// (the ambiguous outcome that a dropped connection or a query deadline gives); the store tries them again.
    package func loseCommitReplies(_ count: Int) {
        commitRepliesToLose.store(count, ordering: .relaxed)
    }

    /// Tests: how long every transaction waits before its COMMIT, and after it (``delayCommits(by:)``,
    /// ``delayCommitReplies(by:)``).
    let commitDelay = Mutex<(before: Duration?, after: Duration?)>((nil, nil))

    /// Tests: every transaction from now on waits `delay` before its COMMIT (a server slow to answer).
    package func delayCommits(by delay: Duration?) {
        commitDelay.withLock { $0.before = delay }
    }

    /// Tests: every transaction from now on waits `delay` after its COMMIT has been sent, before its reply is
    /// read (a reply slow to come back).
    package func delayCommitReplies(by delay: Duration?) {
        commitDelay.withLock { $0.after = delay }
    }
    /// Abandoned operations that had begun to commit when their callers stopped waiting (a claim whose COMMIT
    /// was sent): they may still commit into a stopping worker's name.
    private let abandonedCommitting = Atomic<Int>(0)

    /// Waits, up to `limit`, until no operation that its caller abandoned while it was committing is still
    /// running: such a claim may still commit into a stopping worker's name, and the stop's
    /// ``rescueLeases(heldBy:maxCrashes:)`` must come after it to take it back. An operation abandoned before it
    /// began to commit never commits (``Abandonment``), so it is not waited for; and each query has a deadline
    /// (``PostgresConnection/queryDeadline``), so none runs for ever.
    ///
    /// - Returns: Whether every such operation had ended.
    @discardableResult
    public func waitForAbandonedCommits(upTo limit: Duration) async -> Bool {
        let deadline = ContinuousClock.now + limit
        while abandonedCommitting.load(ordering: .sequentiallyConsistent) > 0 {
            guard ContinuousClock.now < deadline else { return false }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return true
    }

    /// Whether the caller of an operation run with `abandonedOnCancel` has stopped waiting for it, and whether
    /// the operation has begun to commit; the operation reads it through ``current`` (a task-local value).
    ///
    /// A transaction asks ``beginCommit()`` right before its COMMIT: once its caller has left, it rolls back
    /// instead, so that a stopping worker's claim does not take jobs after the stop gave its leases back. One that
    /// began to commit first is counted (``waitForAbandonedCommits(upTo:)``) until it ends.
    final class Abandonment: Sendable {
        @TaskLocal static var current: Abandonment?

        private let state = Mutex((abandoned: false, committing: false, ended: false, counted: false))
        private let store: PostgresJobStore

        init(_ store: PostgresJobStore) { self.store = store }

        /// Called right before the operation's COMMIT (or its one auto-committed statement). Throws
        /// `CancellationError` if the caller has left; the transaction then rolls back.
        func beginCommit() throws {
            let abandoned = state.withLock { state -> Bool in
                if !state.abandoned { state.committing = true }
                return state.abandoned
            }
            if abandoned { throw CancellationError() }
        }

        /// The caller stopped waiting.
        func abandon() {
            let counts = state.withLock { state -> Bool in
                guard !state.ended, !state.abandoned else { return false }
                state.abandoned = true
                state.counted = state.committing
                return state.counted
            }
            if counts { store.abandonedCommitting.add(1, ordering: .sequentiallyConsistent) }
        }

        /// The operation ended (however).
        func end() {
            let counted = state.withLock { state -> Bool in
                state.ended = true
                return state.counted
            }
            if counted { store.abandonedCommitting.subtract(1, ordering: .sequentiallyConsistent) }
        }
    }

    /// When ``warnShortOfResources(_:operation:)`` last logged.
    private let lastResourceWarning = Mutex<ContinuousClock.Instant?>(nil)

    /// Transitions waiting to be written together (``change(_:_:lease:answeredAgo:_:)``).
    package let changes: ChangeQueue

    /// Operations under way, for a worker that cannot stop to say what it waits for.
    private let inProgress = Mutex((next: 0, operations: [Int: (name: String, since: ContinuousClock.Instant, tries: Int)]()))

    /// The operations under way that began more than a second ago: name, age and tries.
    package func slowOperations() -> [String] {
        let now = ContinuousClock.now
        return inProgress.withLock { state in
            state.operations.values.filter { now - $0.since > .seconds(1) }.map { "\($0.name) for \(now - $0.since) (\($0.tries) tries)" }
        }
    }
    /// How long an operation keeps trying while the server is unreachable before it fails as
    /// ``StoreError/Code/unavailable`` (default 5 minutes: a restart or failover pauses work, nothing fails).
    public let outageTolerance: Duration

    /// Opens the store in `schema`, applying any migration it lacks.
    ///
    /// - Parameters:
    ///   - client: A running client.
    ///   - schema: The schema for Pargen's tables (created if missing).
    ///   - idPrefix: Prefix of the job ids this store makes.
    ///   - outageTolerance: How long an operation keeps trying while the server is unreachable.
    ///   - now: A clock for tests (time since the Unix epoch); `nil` uses the database's clock.
    ///   - batching: How the transitions of held jobs are grouped into statements.
    /// - Throws: ``StoreError/Code/unavailable`` when the database cannot be reached or migrated.
    public init(
        client: PostgresClient,
        schema: String = "pargen",
        idPrefix: String = "job",
        logger: Logger = Logger(label: "pargen.postgres", factory: { _ in SwiftLogNoOpLogHandler() }),
        outageTolerance: Duration = .seconds(300),
        now: (@Sendable () -> Duration)? = nil,
        batching: TransitionBatching = .grouped
    ) async throws {
        self.client = client
        self.changes = ChangeQueue(batching)
        self.outageTolerance = outageTolerance
        self.schema = schema
        self.quoted = PostgresSchema.quote(schema)
        self.logger = logger
        self.idPrefix = idPrefix
        self.now = now
        self.channel = "pargen_jobs_" + String(schema.unicodeScalars.map { $0.properties.isAlphabetic || ("0"..."9").contains($0) ? Character($0) : "_" })
        do {
            try await PostgresSchema.migrate(client: client, schema: schema, logger: logger)
        } catch {
            throw StoreError(.unavailable, "cannot prepare the job store in PostgreSQL schema \(schema)", underlying: PostgresFailure(error))
        }
    }

    /// The injected time, or `nil` for the database's (bound as `$n::bigint` and read by `COALESCE`).
    var injectedNow: Int64? { now.map { $0().nanoseconds } }

    // MARK: - JobStore

    public func enqueue(_ requests: [ValidatedRequest]) async throws -> [EnqueueResult] {
        guard !requests.isEmpty else { return [] }
        let prefix = idPrefix
        let clock = injectedNow
        // Made once per call: a try that finds it knows an earlier try committed, though its reply was lost, and
        // answers as that try did instead of adding the jobs again.
        let token = UUID.random().uuidString
        return try await run("enqueue") { [quoted, channel] in
            try await self.transaction { connection in
                for (ids, existing) in try await connection.allRows(
                    "SELECT job_ids, existing FROM \(unescaped: quoted).enqueues WHERE token = \(token)",
                    logger: self.logger
                ).decode(([String], [Bool]).self) {
                    return zip(ids, existing).map { EnqueueResult(jobID: JobID($0), existing: $1) }
                }
                var stamp: Int64 = 0
                var sequences: [Int64] = []
                sequences.reserveCapacity(requests.count)
                for (sequence, time) in try await connection.allRows(
                    "SELECT nextval('\(unescaped: quoted).job_seq'), COALESCE(\(clock)::bigint, \(unescaped: quoted).now_ns()) FROM generate_series(1, \(requests.count))",
                    logger: self.logger
                ).decode((Int64, Int64).self) {
                    sequences.append(sequence)
                    stamp = time
                }
                var columns = EnqueueColumns()
                var records: [JobRecord] = []
                for (request, sequence) in zip(requests, sequences) {
                    let record = JobRecord(
                        id: JobID("\(prefix)-\(sequence)"),
                        request: request,
                        sequence: sequence,
                        now: .nanoseconds(stamp)
                    )
                    records.append(record)
                    try columns.append(record)
                }
                var inserted: Set<String> = []
                for id in try await connection.allRows(
                    """
                    INSERT INTO \(unescaped: quoted).jobs
                        (seq, id, state, kind, priority, user_name, project, campaign, idempotency_key, run_at, record)
                    SELECT seq, id, 'available', kind, priority, user_name, project, campaign,
                           CASE WHEN has_key THEN idempotency_key END, \(stamp), record::jsonb
                    FROM unnest(\(columns.seq)::bigint[], \(columns.id)::text[], \(columns.kind)::text[],
                                \(columns.priority)::integer[], \(columns.user)::text[], \(columns.project)::text[],
                                \(columns.campaign)::text[], \(columns.key)::text[], \(columns.hasKey)::boolean[],
                                \(columns.record)::text[])
                         AS t(seq, id, kind, priority, user_name, project, campaign, idempotency_key, has_key, record)
                    ORDER BY seq
                    ON CONFLICT (project, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
                    RETURNING id
                    """,
                    logger: self.logger
                ).decode(String.self) {
                    inserted.insert(id)
                }
                var results: [EnqueueResult] = []
                results.reserveCapacity(records.count)
                for record in records {
                    if inserted.contains(record.id.rawValue) {
                        results.append(EnqueueResult(jobID: record.id, existing: false))
                        continue
                    }
                    // A key already used in the project (before this call, or earlier in it): the job that has it.
                    let key = record.request.idempotencyKey ?? ""
                    var existing: String?
                    for id in try await connection.allRows(
                        "SELECT id FROM \(unescaped: quoted).jobs WHERE project = \(record.request.project) AND idempotency_key = \(key)",
                        logger: self.logger
                    ).decode(String.self) {
                        existing = id
                    }
                    guard let existing else {
                        throw StoreError(.invalidState, "job \(record.id) was neither added nor found by its idempotency key")
                    }
                    results.append(EnqueueResult(jobID: JobID(existing), existing: true))
                }
                if !inserted.isEmpty {
                    try await connection.allRows("SELECT pg_notify(\(channel), 'enqueued')", logger: self.logger)
                }
                try await connection.allRows(
                    """
                    INSERT INTO \(unescaped: quoted).enqueues (token, job_ids, existing, at)
                    VALUES (\(token), \(results.map(\.jobID.rawValue)), \(results.map(\.existing)), \(stamp))
                    """,
                    logger: self.logger
                )
                return results
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
        guard limit > 0, !kinds.isEmpty else { return [] }
        let clock = injectedNow
        let kindNames = kinds.map(\.rawValue).sorted()
        let excluded = excludingUsers.sorted()
        let nanos = duration.nanoseconds
        return try await run("claim jobs", abandonedOnCancel: true) { [quoted] in
            // One statement, committed as it runs: a caller that has left gets no claim started for it.
            try Abandonment.current?.beginCommit()
            // Highest priority first; within a priority, round-robin across users (each user's oldest first,
            // users ordered by their oldest waiting job). The ranked rows are locked with SKIP LOCKED, so two
            // workers claiming at once split the jobs instead of queueing behind each other's locks.
            let rows = try await self.allRows(
                """
                WITH clock AS (SELECT COALESCE(\(clock)::bigint, \(unescaped: quoted).now_ns()) AS now),
                ranked AS (
                    SELECT seq, priority,
                           ROW_NUMBER() OVER (PARTITION BY priority, user_name ORDER BY seq) AS turn,
                           MIN(seq) OVER (PARTITION BY priority, user_name) AS first_seq
                    FROM \(unescaped: quoted).jobs, clock
                    WHERE state = 'available' AND run_at <= clock.now
                      AND kind = ANY(\(kindNames)::text[]) AND NOT (user_name = ANY(\(excluded)::text[]))
                    ORDER BY priority DESC, turn, first_seq
                    LIMIT \(limit)
                ),
                picked AS (
                    SELECT j.seq, r.priority, r.turn, r.first_seq
                    FROM \(unescaped: quoted).jobs j JOIN ranked r ON r.seq = j.seq
                    WHERE j.state = 'available'
                    FOR UPDATE OF j SKIP LOCKED
                )
                UPDATE \(unescaped: quoted).jobs j
                SET state = 'running', lease_owner = \(owner),
                    lease_token = \(owner) || ':' || gen_random_uuid()::text,
                    lease_expires_at = clock.now + \(nanos), lease_nanos = \(nanos), version = j.version + 1
                FROM picked, clock
                WHERE j.seq = picked.seq
                RETURNING j.record::text, j.state, j.lease_token, j.lease_owner, j.lease_expires_at, j.version,
                          picked.priority, picked.turn, picked.first_seq
                """,
                logger: self.logger
            )
            var claimed: [(rank: (Int, Int64, Int64), job: LeasedJob)] = []
            for (text, state, token, leaseOwner, expires, version, priority, turn, first) in try rows.decode(
                (String, String, String?, String?, Int64?, Int64, Int, Int64, Int64).self
            ) {
                let stored = try StoredJob(text: text, state: state, token: token, owner: leaseOwner, expiresAt: expires, version: version)
                let lease = JobLease(jobID: stored.record.id, token: token ?? "", expiresAt: .nanoseconds(expires ?? 0))
                claimed.append(((-priority, turn, first), LeasedJob(record: stored.record, lease: lease)))
            }
            return claimed.sorted { $0.rank < $1.rank }.map(\.job)
        }
    }

    public func timeUntilNextDue() async throws -> Duration? {
        let clock = injectedNow
        return try await run("find the next due job", abandonedOnCancel: true) { [quoted] in
            let rows = try await self.allRows(
                """
                SELECT MIN(run_at) - COALESCE(\(clock)::bigint, \(unescaped: quoted).now_ns())
                FROM \(unescaped: quoted).jobs WHERE state = 'available'
                """,
                logger: self.logger
            )
            let wait: Int64? = try rows.decode(Int64?.self).last ?? nil
            return wait.map { max(Duration.zero, .nanoseconds($0)) }
        }
    }

    public func heartbeat(_ lease: JobLease, duration: Duration) async throws -> JobLease {
        let clock = injectedNow
        let nanos = duration.nanoseconds
        return try await run("renew a lease", abandonedOnCancel: true) { [quoted] in
            let rows = try await self.allRows(
                """
                UPDATE \(unescaped: quoted).jobs
                SET lease_expires_at = COALESCE(\(clock)::bigint, \(unescaped: quoted).now_ns()) + \(nanos), lease_nanos = \(nanos)
                WHERE id = \(lease.jobID.rawValue) AND state = 'running' AND lease_token = \(lease.token)
                RETURNING lease_expires_at
                """,
                logger: self.logger
            )
            if let renewed = try rows.decode(Int64.self).last { return JobLease(jobID: lease.jobID, token: lease.token, expiresAt: .nanoseconds(renewed)) }
            throw StoreError(.leaseLost, "the lease on \(lease.jobID) is no longer held")
        }
    }

    public func beginAttempt(
        _ lease: JobLease,
        provider: String,
        reserving estimate: Money,
        idempotentSubmission: Bool
    ) async throws {
        try await withHeld(lease, "begin an attempt") { record, _ in
            record.beginAttempt(provider: provider, reserving: estimate, idempotentSubmission: idempotentSubmission)
        }
    }

    public func beginAttempt(
        _ lease: JobLease,
        provider: String,
        reserving estimate: Money,
        idempotentSubmission: Bool,
        within budgets: [Budget]
    ) async throws -> [BudgetScope: Money] {
        let clock = injectedNow
        let keys = Set(budgets.map { "pargen-budget:\(schema):\($0.scope.kind.rawValue):\($0.scope.name)" }).sorted()
        // As in ``change(_:_:lease:answeredAgo:_:)``: a retry whose earlier try committed finds its own change.
        let token = UUID.random().uuidString
        let checked = try await run("begin an attempt within budgets") { [quoted] in
            try await self.transaction { connection -> Result<[BudgetScope: Money], BudgetRefusal> in
                // Every reservation in a budget's scope takes the scope's lock (in key order, so two cannot
                // deadlock) until it commits: the sums below see every reservation committed before, whichever
                // worker made it.
                for key in keys {
                    try await connection.allRows("SELECT pg_advisory_xact_lock(hashtextextended(\(key), 0))", logger: self.logger)
                }
                var loaded: StoredJob?
                var applied = false
                for row in try await connection.allRows(
                    """
                    SELECT \(unescaped: StoredJob.columns), COALESCE(\(clock)::bigint, \(unescaped: quoted).now_ns()),
                           last_change IS NOT DISTINCT FROM \(token)
                    FROM \(unescaped: quoted).jobs WHERE id = \(lease.jobID.rawValue) FOR UPDATE
                    """,
                    logger: self.logger
                ).decode(StoredJob.ChangedRow.self) {
                    loaded = try StoredJob.timed(row).job
                    applied = row.7
                }
                guard var job = loaded else { throw StoreError(.notFound, "no job \(lease.jobID)") }
                // Begun by an earlier try whose reply was lost (what the budgets had left is not known again).
                if applied { return .success([:]) }
                guard job.record.isHeld(by: lease) else {
                    throw StoreError(.leaseLost, "the lease on \(lease.jobID) is no longer held")
                }
                let before = job.record.ledger
                job.record.beginAttempt(provider: provider, reserving: estimate, idempotentSubmission: idempotentSubmission)
                var others: [BudgetScope: (committed: Money, pending: Money)] = [:]
                for budget in budgets {
                    // The scope's money but this job's stored ledger.
                    for (_, charged, _, pending) in try await connection.allRows(
                        Self.scopeMoney(in: budget.scope, quoted),
                        logger: self.logger
                    ).decode((Int64, Int64, Int64, Int64).self) {
                        others[budget.scope] = (
                            Money(nanos: charged + pending) - (before.charged + before.pending),
                            Money(nanos: pending) - before.pending
                        )
                    }
                }
                let ledger = job.record.ledger
                let result = Budget.check(budgets, others: others, own: ledger.charged + ledger.pending)
                if case .success = result {
                    guard try await self.save(job, on: connection, change: token) else {
                        throw StoreError(.unavailable, "job \(lease.jobID) changed while its row was locked")
                    }
                }
                return result
            }
        }
        return try checked.get()
    }

    public func ledger(in scope: BudgetScope) async throws -> CostLedger {
        return try await run("sum the ledger", abandonedOnCancel: true) { [quoted] in
            var totals = CostLedger()
            for (reserved, charged, released, pending) in try await self.allRows(
                Self.scopeMoney(in: scope, quoted),
                logger: self.logger
            ).decode((Int64, Int64, Int64, Int64).self) {
                totals.reserved = Money(nanos: reserved)
                totals.charged = Money(nanos: charged)
                totals.released = Money(nanos: released)
                totals.pending = Money(nanos: pending)
            }
            return totals
        }
    }

    /// A scope's reserved, charged, released and pending money: its folded total and its changes since, in one
    /// statement (one snapshot, so a fold that commits meanwhile is seen whole or not at all).
    static func scopeMoney(in scope: BudgetScope, _ quoted: String) -> PostgresQuery {
        let name = scope.kind == .global ? "*" : scope.name
        return """
            SELECT COALESCE(SUM(reserved), 0)::bigint, COALESCE(SUM(charged), 0)::bigint,
                   COALESCE(SUM(released), 0)::bigint, COALESCE(SUM(pending), 0)::bigint FROM (
                SELECT reserved, charged, released, pending FROM \(unescaped: quoted).scope_money
                WHERE kind = \(scope.kind.rawValue) AND name = \(name)
                UNION ALL SELECT reserved, charged, released, pending FROM \(unescaped: quoted).money_changes
                WHERE \(unescaped: scopeColumn(scope)) = \(name)
            ) AS scope
            """
    }

    /// A query of `(kind, name, reserved, charged, released, pending)` per scope (the global scope, each project,
    /// each campaign) over the rows of `source`, which has a project, a campaign and the four amounts.
    static func scopeSums(_ source: String) -> String {
        let sums = "SUM(reserved), SUM(charged), SUM(released), SUM(pending)"
        return """
            SELECT * FROM (
                SELECT 'global', '*', \(sums) FROM \(source) HAVING count(*) > 0
                UNION ALL SELECT 'project', project, \(sums) FROM \(source) GROUP BY project
                UNION ALL SELECT 'campaign', campaign, \(sums) FROM \(source) GROUP BY campaign
            ) AS sums
            """
    }

    /// Folds the money changes the jobs' trigger appended into each scope's total, in one statement (it moves
    /// what it sees, so a retry after a lost reply moves only what came since); returns how many changes went.
    /// Housekeeping runs it, so a scope's changes since its last fold stay few.
    public func foldMoneyChanges() async throws -> Int {
        try await run("fold money changes") { [quoted] in
            try await self.allRows(
                """
                WITH moved AS (
                    DELETE FROM \(unescaped: quoted).money_changes
                    RETURNING project, campaign, reserved, charged, released, pending
                ), folded AS (
                    INSERT INTO \(unescaped: quoted).scope_money AS m (kind, name, reserved, charged, released, pending)
                    \(unescaped: Self.scopeSums("moved"))
                    ON CONFLICT (kind, name) DO UPDATE SET
                        reserved = m.reserved + EXCLUDED.reserved, charged = m.charged + EXCLUDED.charged,
                        released = m.released + EXCLUDED.released, pending = m.pending + EXCLUDED.pending
                )
                SELECT count(*)::bigint FROM moved
                """,
                logger: self.logger
            ).decode(Int64.self).last.map(Int.init) ?? 0
        }
    }

    // MARK: - Budget limits

    public func budgetLimits() async throws -> [BudgetScope: Money?] {
        try await run("read the budget limits", abandonedOnCancel: true) { [quoted] in
            var limits: [BudgetScope: Money?] = [:]
            for (kind, name, nanos) in try await self.allRows(
                "SELECT kind, name, limit_nanos FROM \(unescaped: quoted).budget_limits",
                logger: self.logger
            ).decode((String, String, Int64?).self) {
                guard let kind = BudgetScope.Kind(rawValue: kind) else { continue }
                limits[BudgetScope(kind: kind, name: name)] = .some(nanos.map { Money(nanos: $0) })
            }
            return limits
        }
    }

    public func setBudgetLimit(_ limit: Money?, for scope: BudgetScope) async throws {
        let nanos = limit?.nanos
        _ = try await run("set a budget limit") { [quoted] in
            try await self.allRows(
                """
                INSERT INTO \(unescaped: quoted).budget_limits (kind, name, limit_nanos)
                VALUES (\(scope.kind.rawValue), \(scope.name), \(nanos))
                ON CONFLICT (kind, name) DO UPDATE SET limit_nanos = EXCLUDED.limit_nanos, updated_at = now()
                """,
                logger: self.logger
            )
        }
    }

    public func recordSubmission(_ lease: JobLease, taskID: String) async throws {
        try await withHeld(lease, "record a submission") { record, _ in record.recordSubmission(taskID: taskID) }
    }

    @discardableResult
    public func complete(_ lease: JobLease, outcome: JobOutcome) async throws -> JobRecord {
        try await complete(lease, outcome: outcome, answeredAgo: .zero)
    }

    @discardableResult
    public func complete(_ lease: JobLease, outcome: JobOutcome, answeredAgo: Duration) async throws -> JobRecord {
        try await withHeld(lease, "complete a job", answeredAgo: answeredAgo) { record, now in
            record.complete(outcome, now: now)
        }
    }

    public func retry(
        _ lease: JobLease,
        error: GenerationError?,
        after delay: Duration,
        spendAttempt: Bool,
        failedProvider: String?
    ) async throws {
        try await withHeld(lease, "retry a job") { record, now in
            record.scheduleRetry(
                error: error,
                runAt: now + max(.zero, delay),
                spendAttempt: spendAttempt,
                failedProvider: failedProvider
            )
        }
    }

    @discardableResult
    public func deadLetter(_ lease: JobLease, error: GenerationError) async throws -> JobRecord {
        try await withHeld(lease, "dead-letter a job") { record, now in record.deadLetter(error, now: now) }
    }

    public func release(_ lease: JobLease, leaving trace: CallTrace) async throws {
        try await withHeld(lease, "release a job") { record, now in record.release(now: now, leaving: trace) }
    }

    public func rescueExpiredLeases(maxCrashes: Int) async throws -> Int {
        try await rescue(expiredOnly: true, maxCrashes: maxCrashes)
    }

    public func rescueOrphanedLeases(maxCrashes: Int) async throws -> Int {
        try await rescue(expiredOnly: false, maxCrashes: maxCrashes)
    }

    /// Takes back at once, as a rescue does, every lease that `owner` still holds: a stopped worker's engine has
    /// given back every job it knew of, so a lease left here is one whose answer it lost (a claim or a transition
    /// that committed while its reply did not arrive). Without this the job would wait for its lease to expire.
    ///
    /// - Returns: How many leases were taken back.
    public func rescueLeases(heldBy owner: String, maxCrashes: Int) async throws -> Int {
        try await rescue(expiredOnly: false, owner: owner, maxCrashes: maxCrashes)
    }

    /// Applies the rescue transition to every running job (whose lease expired, with `expiredOnly`; held by
    /// `owner`, when given), in one transaction; rows another worker is changing right now are skipped (they are
    /// not abandoned).
    ///
    /// A lease counts as expired only once the server has also been up for the lease's length: a holder cannot
    /// renew while the server is away, so a restart or a crash of PostgreSQL does not take every lease that ran
    /// out meanwhile from a worker that is alive (a call of those would wait for reconciliation). A promoted
    /// replica reports when it started, not when it was promoted, so the workers' own record counts too: after a
    /// gap longer than a housekeeping term in which no worker reached the server (``lead(_:holder:for:)`` notes
    /// each round), a lease that ran out is not taken back until the lease's length after the gap ended. A gap
    /// shorter than a term gets no grace: a holder renews well within its lease, so a lease longer than a term
    /// and a renewal interval does not run out within one.
    private func rescue(expiredOnly: Bool, owner: String? = nil, maxCrashes: Int) async throws -> Int {
        let clock = injectedNow
        // With an injected clock the server's own start is on another clock: a test says when it "restarted".
        let serverStart: Int64? = clock == nil ? nil : (injectedServerStart.withLock { $0 }?.nanoseconds ?? 0)
        return try await run("rescue leases") { [quoted, channel] in
            try await self.transaction { connection in
                let rows = try await connection.allRows(
                    """
                    SELECT \(unescaped: StoredJob.columns), COALESCE(\(clock)::bigint, \(unescaped: quoted).now_ns())
                    FROM \(unescaped: quoted).jobs
                    WHERE state = 'running'
                      AND (NOT \(expiredOnly) OR (
                          lease_expires_at <= COALESCE(\(clock)::bigint, \(unescaped: quoted).now_ns())
                          -- A holder cannot renew while the server is away: a lease is not taken back until the
                          -- server has been up for the lease's length (a restart or crash pauses its clock).
                          AND COALESCE(
                              \(serverStart)::bigint,
                              (extract(epoch FROM pg_postmaster_start_time()) * 1000000000)::bigint
                          ) + COALESCE(lease_nanos, 0) <= COALESCE(\(clock)::bigint, \(unescaped: quoted).now_ns())
                          -- Nor until the workers have reached it for the lease's length after a gap in which
                          -- none did (a failover: a promoted replica's start is not when it took over).
                          AND COALESCE((SELECT up_since FROM \(unescaped: quoted).reachability), 0)
                              + COALESCE(lease_nanos, 0) <= COALESCE(\(clock)::bigint, \(unescaped: quoted).now_ns())
                      ))
                      AND (\(owner)::text IS NULL OR lease_owner = \(owner))
                    FOR UPDATE SKIP LOCKED
                    """,
                    logger: self.logger
                )
                var rescued: [StoredJob] = []
                var now: Duration = .zero
                for row in try rows.decode(StoredJob.TimedRow.self) {
                    let (job, time) = try StoredJob.timed(row)
                    rescued.append(job)
                    now = .nanoseconds(time)
                }
                for index in rescued.indices {
                    let record = rescued[index].record
                    let holder = record.leaseOwner ?? "none"
                    let expired = record.leaseExpiresAt.map { "\(now - $0) ago" } ?? "never"
                    rescued[index].record.rescue(now: now, maxCrashes: maxCrashes)
                    self.logger.debug(
                        "took back a lease",
                        metadata: [
                            "pargen.job.id": "\(record.id)", "pargen.holder": "\(holder)",
                            "pargen.expired": "\(expired)", "pargen.state": "\(rescued[index].record.state.rawValue)",
                        ]
                    )
                }
                if !rescued.isEmpty {
                    // One statement for all of them; it also finishes their open admissions (they no longer run).
                    let saved = try await self.saveAll(rescued.map { (job: $0, change: nil, answeredAgo: .zero) }, on: connection)
                    guard saved.count == rescued.count else {
                        throw StoreError(.invalidState, "\(rescued.count - saved.count) rescued jobs changed while they were locked")
                    }
                    try await connection.allRows("SELECT pg_notify(\(channel), 'rescued')", logger: self.logger)
                }
                return rescued.count
            }
        }
    }

    /// The column that a scope's name is compared with, in `money_changes`: the global scope's name (`*`) is
    /// compared with itself, which the planner reads as no filter.
    static func scopeColumn(_ scope: BudgetScope) -> String {
        switch scope.kind {
        case .global: "'*'"
        case .project: "project"
        case .campaign: "campaign"
        }
    }

    public func purge(_ ids: [JobID]) async throws -> Int {
        guard !ids.isEmpty else { return 0 }
        return try await run("purge jobs") { [quoted] in
            let rows = try await self.allRows(
                """
                WITH gone AS (
                    DELETE FROM \(unescaped: quoted).jobs
                    WHERE id = ANY(\(ids.map(\.rawValue))::text[])
                      AND state IN ('succeeded', 'dead_lettered', 'needs_reconciliation')
                    RETURNING 1
                )
                SELECT count(*) FROM gone
                """,
                logger: self.logger
            )
            return try rows.decode(Int.self).last ?? 0
        }
    }

    /// Deletes succeeded and dead-lettered jobs that finished more than `age` ago, and the admissions that no
    /// window looks at any more, with the enqueues' answers as old (housekeeping); returns how many jobs went.
    /// Their money stays in the budgets' totals (`scope_money` and `money_changes`, which deletions leave alone).
    public func prune(finishedBefore age: Duration, admissionsBefore window: Duration) async throws -> Int {
        let clock = injectedNow
        return try await run("prune finished jobs") { [quoted] in
            try await self.allRows(
                """
                DELETE FROM \(unescaped: quoted).enqueues
                WHERE at < COALESCE(\(clock)::bigint, \(unescaped: quoted).now_ns()) - \(window.nanoseconds)
                """,
                logger: self.logger
            )
            try await self.allRows(
                """
                DELETE FROM \(unescaped: quoted).admissions
                WHERE finished_at IS NOT NULL
                  AND COALESCE(arrived_at, admitted_at) < COALESCE(\(clock)::bigint, \(unescaped: quoted).now_ns()) - \(window.nanoseconds)
                """,
                logger: self.logger
            )
            let rows = try await self.allRows(
                """
                WITH gone AS (
                    DELETE FROM \(unescaped: quoted).jobs
                    WHERE state IN ('succeeded', 'dead_lettered')
                      AND finished_at < COALESCE(\(clock)::bigint, \(unescaped: quoted).now_ns()) - \(age.nanoseconds)
                    RETURNING 1
                )
                SELECT count(*) FROM gone
                """,
                logger: self.logger
            )
            return try rows.decode(Int.self).last ?? 0
        }
    }

    public func job(_ id: JobID) async throws -> JobRecord? {
        try await run("read a job", abandonedOnCancel: true) { [quoted] in
            let rows = try await self.allRows(
                "SELECT \(unescaped: StoredJob.columns) FROM \(unescaped: quoted).jobs WHERE id = \(id.rawValue)",
                logger: self.logger
            )
            var record: JobRecord?
            for row in try rows.decode(StoredJob.Row.self) { record = try StoredJob(row).record }
            return record
        }
    }

    public func jobs(matching query: JobQuery) async throws -> [JobRecord] {
        let states = query.states.map { $0.map(\.rawValue).sorted() }
        return try await run("read jobs", abandonedOnCancel: true) { [quoted] in
            let rows = try await self.allRows(
                """
                SELECT \(unescaped: StoredJob.columns) FROM \(unescaped: quoted).jobs
                WHERE (\(states)::text[] IS NULL OR state = ANY(\(states)::text[]))
                  AND (\(query.campaign)::text IS NULL OR campaign = \(query.campaign))
                  AND (\(query.project)::text IS NULL OR project = \(query.project))
                  AND (\(query.user)::text IS NULL OR user_name = \(query.user))
                  AND (\(query.provider)::text IS NULL OR provider = \(query.provider))
                  AND (\(query.afterSequence)::bigint IS NULL OR seq > \(query.afterSequence))
                ORDER BY seq
                LIMIT \(query.limit.map { Int64($0) })
                """,
                logger: self.logger
            )
            var records: [JobRecord] = []
            for row in try rows.decode(StoredJob.Row.self) { records.append(try StoredJob(row).record) }
            return records
        }
    }

    public func requeue(_ id: JobID) async throws {
        try await change(id, "requeue a job", lease: nil) { record, now in try record.requeue(now: now) }
    }

    public func cancel(_ id: JobID) async throws {
        try await change(id, "cancel a job", lease: nil) { record, now in try record.cancel(now: now) }
    }

    public func counts() async throws -> [JobState: Int] {
        try await run("count jobs", abandonedOnCancel: true) { [quoted] in
            var counts: [JobState: Int] = [:]
            for (state, count) in try await self.allRows(
                "SELECT state, count(*) FROM \(unescaped: quoted).jobs GROUP BY state",
                logger: self.logger
            ).decode((String, Int).self) {
                if let state = JobState(rawValue: state) { counts[state] = count }
            }
            return counts
        }
    }

    public func ledgerTotals() async throws -> CostLedger { try await ledger(in: .global) }

    // MARK: - Wake-ups

    /// Calls `onWork` each time a job becomes available in this schema (added, retried, released, rescued), from
    /// `LISTEN` on a connection of its own; reconnects after a lost connection (calling `onWork` once then, since
    /// news may have been missed). Returns when the task is cancelled.
    public func watchForWork(_ onWork: @escaping @Sendable () -> Void) async {
        while !Task.isCancelled {
            do {
                try await client.withConnection { connection in
                    try await connection.listen(on: self.channel) { notifications in
                        onWork()
                        for try await _ in notifications { onWork() }
                    }
                }
            } catch {
                if Task.isCancelled { return }
                logger.debug("lost the LISTEN connection", metadata: ["error": "\(PostgresFailure(error))"])
            }
            try? await Task.sleep(for: .seconds(1))
        }
    }

    // MARK: - Housekeeping's leader

    /// Takes or renews the lead of `duty` for `duration`; `true` while this `holder` leads. A holder that stops
    /// renewing loses the lead when its term runs out, and another takes it.
    ///
    /// Every call, led or not, also notes that a worker reached the server; a call that comes more than
    /// `duration` after the one before (no worker reached the server in between) starts the leases' grace
    /// again (see ``rescueExpiredLeases(maxCrashes:)``).
    public func lead(_ duty: String, holder: String, for duration: Duration) async throws -> Bool {
        let clock = injectedNow
        return try await run("elect a leader") { [quoted] in
            let rows = try await self.allRows(
                """
                WITH clock AS (SELECT COALESCE(\(clock)::bigint, \(unescaped: quoted).now_ns()) AS now),
                -- This worker reaches the server: after a gap longer than a term (no worker reached it), the
                -- leases' grace starts again from now (see `rescue`).
                seen AS (
                    INSERT INTO \(unescaped: quoted).reachability AS r (id, last_seen, up_since)
                    SELECT true, clock.now, 0 FROM clock
                    ON CONFLICT (id) DO UPDATE
                    SET up_since = CASE WHEN EXCLUDED.last_seen - r.last_seen > \(duration.nanoseconds)
                                        THEN EXCLUDED.last_seen ELSE r.up_since END,
                        last_seen = GREATEST(r.last_seen, EXCLUDED.last_seen)
                )
                INSERT INTO \(unescaped: quoted).leaders (duty, holder, expires_at)
                SELECT \(duty), \(holder), clock.now + \(duration.nanoseconds) FROM clock
                ON CONFLICT (duty) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
                WHERE leaders.holder = EXCLUDED.holder OR leaders.expires_at < (SELECT now FROM clock)
                RETURNING holder
                """,
                logger: self.logger
            )
            return !rows.isEmpty
        }
    }

    // MARK: - Helpers

    /// Changes a held job: fenced by its lease token and the row's version, and written in one statement with the
    /// other transitions waiting at the same time (``change(_:_:lease:answeredAgo:_:)``).
    ///
    /// - Returns: The record as this transition wrote it. (A batch that runs again after a lost reply and finds
    ///   the change already applied does not apply it twice: the record is the one written the first time.)
    @discardableResult
    private func withHeld(
        _ lease: JobLease,
        _ operation: String,
        answeredAgo: Duration = .zero,
        _ change: @escaping @Sendable (inout JobRecord, Duration) throws -> Void
    ) async throws -> JobRecord {
        let written = Locked<JobRecord?>(nil)
        try await self.change(lease.jobID, operation, lease: lease, answeredAgo: answeredAgo) { record, now in
            try change(&record, now)
            let copy = record
            written.withLock { $0 = copy }
        }
        if let record = written.withLock({ $0 }) { return record }
        guard let record = try await job(lease.jobID) else { throw StoreError(.notFound, "no job \(lease.jobID)") }
        return record
    }

    /// Writes `job` back if its version is still the one read (``saveAll(_:on:)`` for one job).
    private func save(
        _ job: StoredJob,
        on connection: PostgresConnection,
        answeredAgo: Duration = .zero,
        change: String? = nil
    ) async throws -> Bool {
        try await saveAll([(job: job, change: change, answeredAgo: answeredAgo)], on: connection).count == 1
    }

    /// Runs a database operation, keeping the store's own errors and turning the driver's into
    /// ``StoreError/Code/unavailable``.
    ///
    /// An operation that failed because the server went away (a restart, a failover, a dropped connection) or
    /// because of a serialisation conflict is run again, with backoff, for up to ``outageTolerance``: work pauses
    /// while PostgreSQL is away and resumes when it is back. Running an operation again is safe: a job's
    /// transition that did commit before its answer was lost finds its own change on the job and is not applied
    /// twice, a claim finds its own leases, an enqueue finds its own answer, and a renewal or a rescue sets what it
    /// sets whatever was there.
    ///
    /// The operation runs in a task of its own, shielded from the caller's cancellation: a transaction cut off
    /// between BEGIN and COMMIT would go back to the pool still open, holding its row locks. A caller that is
    /// cancelled waits for it to end, unless `abandonedOnCancel` (reads, claims and renewals, which a stopping
    /// worker need not wait for): it then stops waiting at once, and the operation ends on its own. An abandoned
    /// claim either never commits (the process exits first, and the server rolls it back) or commits into the
    /// stopping worker's name, where the stop's ``rescueLeases(heldBy:maxCrashes:)`` or, at worst, the lease's
    /// expiry takes it back.
    package func run<T: Sendable>(
        _ operation: String,
        abandonedOnCancel: Bool = false,
        _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        let started = ContinuousClock.now
        let ticket = inProgress.withLock { state -> Int in
            state.next += 1
            state.operations[state.next] = (operation, started, 0)
            return state.next
        }
        defer { inProgress.withLock { _ = $0.operations.removeValue(forKey: ticket) } }
        var delay = Duration.milliseconds(50)
        while true {
            inProgress.withLock { $0.operations[ticket]?.tries += 1 }
            do {
                return try await shielded(body, abandonedOnCancel: abandonedOnCancel)
            } catch let error as StoreError {
                throw error
            } catch {
                guard Self.isTransient(error), !Task.isCancelled, ContinuousClock.now - started < outageTolerance else {
                    let failure = PostgresFailure(error)
                    if failure.isShortOfResources { warnShortOfResources(failure, operation: operation) }
                    throw StoreError(.unavailable, "PostgreSQL could not \(operation)", underlying: failure)
                }
                logger.debug(
                    "PostgreSQL unavailable; trying again",
                    metadata: ["operation": "\(operation)", "error": "\(PostgresFailure(error))"]
                )
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(2))
            }
        }
    }

    /// When the last warning that the server is short of resources was logged.
    private static let resourceWarningInterval: Duration = .seconds(10)

    /// Logs, at most every 10 s, that the server refused work for want of resources (a full disk): the work
    /// waits, and only the server's operator can free it, so this is said where the user sees it (a worker's
    /// standard error), not only in a debug log.
    private func warnShortOfResources(_ failure: PostgresFailure, operation: String) {
        let now = ContinuousClock.now
        let due = lastResourceWarning.withLock { last -> Bool in
            if let last, now - last < Self.resourceWarningInterval { return false }
            last = now
            return true
        }
        guard due else { return }
        logger.warning(
            "PostgreSQL refused work: it is short of resources",
            metadata: ["operation": "\(operation)", "error": "\(failure)"]
        )
    }

    /// Runs `body` in a task of its own, which the caller's cancellation does not reach; the caller waits for its
    /// result or, `abandonedOnCancel`, for its own cancellation, whichever comes first. An abandoned body that has
    /// not begun to commit rolls back (``Abandonment``); one that has is counted until it ends
    /// (``waitForAbandonedCommits(upTo:)``).
    func shielded<T: Sendable>(
        _ body: @escaping @Sendable () async throws -> T,
        abandonedOnCancel: Bool
    ) async throws -> T {
        guard abandonedOnCancel else { return try await Task { try await body() }.value }
        let race = FirstOutcome<T>()
        let abandonment = Abandonment(self)
        Task {
            do {
                let value = try await Abandonment.$current.withValue(abandonment) { try await body() }
                race.settle(.success(value))
            } catch {
                race.settle(.failure(error))
            }
            abandonment.end()
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { race.await($0) }
        } onCancel: {
            abandonment.abandon()
            race.settle(.failure(CancellationError()))
        }
    }

    /// Whether an error means the server was away or a transaction lost a race (worth running again), not that
    /// the operation is wrong.
    static func isTransient(_ error: any Error) -> Bool {
        if error is QueryDeadlineExceeded { return true }
        guard let psql = error as? PSQLError else { return false }
        switch psql.code {
        case .connectionError, .serverClosedConnection, .clientClosedConnection, .uncleanShutdown:
            return true
        case .server:
            // Class 08 (connection), 57P01-57P03 (shutting down, starting up), 40001 and 40P01 (serialisation
            // failure, deadlock).
            let state = psql.serverInfo?[.sqlState] ?? ""
            return state.hasPrefix("08") || ["57P01", "57P02", "57P03", "40001", "40P01"].contains(state)
        default:
            return false
        }
    }
}

/// The first of several outcomes, handed to one waiting continuation exactly once (whether it waits before or
/// after the outcome comes).
final class FirstOutcome<T: Sendable>: Sendable {
    private let state = Mutex<(waiting: CheckedContinuation<T, any Error>?, outcome: Result<T, any Error>?)>((nil, nil))

    /// Settles with `outcome` unless an earlier outcome did.
    func settle(_ outcome: Result<T, any Error>) {
        let waiting = state.withLock { state -> CheckedContinuation<T, any Error>? in
            guard state.outcome == nil else { return nil }
            state.outcome = outcome
            defer { state.waiting = nil }
            return state.waiting
        }
        waiting?.resume(with: outcome)
    }

    /// Hands the outcome to `continuation`, now if it has come, else when it comes.
    func await(_ continuation: CheckedContinuation<T, any Error>) {
        let outcome = state.withLock { state -> Result<T, any Error>? in
            if state.outcome == nil { state.waiting = continuation }
            return state.outcome
        }
        if let outcome { continuation.resume(with: outcome) }
    }
}

/// A row of the jobs table: the record with the lease columns laid over it (they are the truth for the lease).
struct StoredJob {
    typealias Row = (String, String, String?, String?, Int64?, Int64)
    /// ``columns`` followed by the store's time (`COALESCE(clock, now_ns())`).
    typealias TimedRow = (String, String, String?, String?, Int64?, Int64, Int64)
    static let columns = "record::text, state, lease_token, lease_owner, lease_expires_at, version"

    /// ``TimedRow`` followed by whether the job's last change is the one a write is trying again.
    typealias ChangedRow = (String, String, String?, String?, Int64?, Int64, Int64, Bool)

    /// A row of ``columns`` and the store's time, in nanoseconds since the Unix epoch.
    static func timed(_ row: TimedRow) throws -> (job: StoredJob, now: Int64) {
        (try StoredJob((row.0, row.1, row.2, row.3, row.4, row.5)), row.6)
    }

    /// A ``ChangedRow``: its job and the store's time.
    static func timed(_ row: ChangedRow) throws -> (job: StoredJob, now: Int64) {
        try timed((row.0, row.1, row.2, row.3, row.4, row.5, row.6))
    }

    var record: JobRecord
    var version: Int64

    init(_ row: Row) throws {
        try self.init(text: row.0, state: row.1, token: row.2, owner: row.3, expiresAt: row.4, version: row.5)
    }

    init(text: String, state: String, token: String?, owner: String?, expiresAt: Int64?, version: Int64) throws {
        do {
            record = try JSONDecoder().decode(JobRecord.self, from: Data(text.utf8))
        } catch {
            throw StoreError(.invalidState, "a stored job could not be read", underlying: error)
        }
        guard let state = JobState(rawValue: state) else {
            throw StoreError(.invalidState, "job \(record.id) has an unknown state \(state)")
        }
        record.state = state
        record.leaseToken = token
        record.leaseOwner = owner
        record.leaseExpiresAt = expiresAt.map { .nanoseconds($0) }
        self.version = version
    }

    static func encode(_ record: JobRecord) throws -> String {
        String(decoding: try JSONEncoder().encode(record), as: UTF8.self)
    }
}

/// The columns of a batch insert, as arrays for `unnest`.
private struct EnqueueColumns {
    var seq: [Int64] = []
    var id: [String] = []
    var kind: [String] = []
    var priority: [Int] = []
    var user: [String] = []
    var project: [String] = []
    var campaign: [String] = []
    var key: [String] = []
    var hasKey: [Bool] = []
    var record: [String] = []

    mutating func append(_ job: JobRecord) throws {
        seq.append(job.sequence)
        id.append(job.id.rawValue)
        kind.append(job.request.kind.rawValue)
        priority.append(job.request.priority.rawValue)
        user.append(job.request.user)
        project.append(job.request.project)
        campaign.append(job.request.campaign)
        key.append(job.request.idempotencyKey ?? "")
        hasKey.append(job.request.idempotencyKey != nil)
        record.append(try StoredJob.encode(job))
    }
}

/// A driver error, described without the query text or connection details (which may name the database's
/// user; the password is never part of either), and without the server's detail (which may quote a row's
/// values).
struct PostgresFailure: ShownCause {
    let underlying: any Error
    init(_ underlying: any Error) { self.underlying = underlying }

    /// Whether the server refused for want of resources (SQLSTATE class 53: a full disk, memory, connections,
    /// a configured limit).
    var isShortOfResources: Bool {
        (underlying as? PSQLError)?.serverInfo?[.sqlState]?.hasPrefix("53") == true
    }

    var description: String {
        if let psql = underlying as? PSQLError {
            if let message = psql.serverInfo?[.message] {
                let state = psql.serverInfo?[.sqlState]
                let code = state.map { " (\($0))" } ?? ""
                // Class 53, insufficient resources: the server, not this worker, must be seen to.
                let hint = state == "53100"
                    ? "; the PostgreSQL server is out of disk space (free space on it)"
                    : isShortOfResources ? "; the PostgreSQL server is short of resources" : ""
                return "server: \(message)\(code)\(hint)"
            }
            return "\(psql.code)"
        }
        return String(describing: type(of: underlying))
    }
}

extension Duration {
    /// Whole nanoseconds, for storage.
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
