import Foundation
import GRDB
public import Pargen

/// A durable job store in one SQLite file (WAL mode), through GRDB: the default store of the command line.
///
/// A row holds the job's request as JSON, written once at enqueue, and every field that changes in a column of its
/// own (see ``JobRow``). Every transition reads the row, checks the lease token (fencing), applies the same
/// transition functions the memory store applies, and writes the changed columns back. Transitions that arrive
/// together share one write transaction and so one fsync (group commit), each undone alone if it fails (in a
/// savepoint of its own when it writes with more than one statement), and each returns only once that transaction
/// has committed. Times are wall-clock nanoseconds since the Unix epoch, so leases and due times survive a restart.
public final class SQLiteJobStore: ClaimingJobStore, BudgetLimitStore {
    public var outlivesProcess: Bool { true }

    private let writer: any DatabaseWriter
    /// Every transition goes through it: transitions that arrive together commit in one transaction.
    private let committer: GroupCommitter
    private let now: @Sendable () -> Duration
    private let idPrefix: String
    /// Requests already decoded, by the text they were decoded from.
    private let requests = DecodedRequests()
    /// The rows of the jobs under way as this store last wrote them (see ``withHeld(_:_:)``).
    private let recent = RecentRows()
    /// The database file (`:memory:` for a store in memory).
    public let path: String

    /// How far a committed transaction survives.
    public enum Durability: String, Sendable {
        /// `PRAGMA synchronous = FULL`: every commit is on disk before it returns (the WAL is fsynced on each
        /// commit), so a committed transition survives a power loss or a kernel crash. The default.
        case full
        /// `PRAGMA synchronous = NORMAL` (what WAL mode otherwise runs with): a commit survives the process
        /// crashing, but the last commits may be lost if the machine loses power before a checkpoint.
        case normal

        var pragma: String { self == .full ? "FULL" : "NORMAL" }
    }

    /// Opens (or creates) the store at `path` in WAL mode.
    ///
    /// - Parameters:
    ///   - path: The database file.
    ///   - idPrefix: Prefix of the job ids this store makes.
    ///   - now: The wall clock, as time since the Unix epoch (injected in tests).
    ///   - durability: ``Durability/full`` unless a lost commit after a power cut is acceptable.
    /// - Throws: ``StoreError/Code/unavailable`` when the file cannot be opened or migrated.
    public init(
        path: String,
        idPrefix: String = "job",
        durability: Durability = .full,
        now: @escaping @Sendable () -> Duration = SQLiteJobStore.wallClock
    )
        throws
    {
        var configuration = Configuration()
        configuration.busyMode = .timeout(10)
        do {
            let pool = try DatabasePool(path: path, configuration: configuration)
            // GRDB sets NORMAL when it turns WAL on; the writer connection is the one whose commits must last.
            try pool.writeWithoutTransaction { try $0.execute(sql: "PRAGMA synchronous = \(durability.pragma)") }
            writer = pool
            committer = GroupCommitter(writer: pool)
        } catch {
            throw StoreError(.unavailable, "cannot open the job store at \(path)", underlying: error)
        }
        self.now = now
        self.idPrefix = idPrefix
        self.path = path
        try migrate()
    }

    /// The writer connection's `PRAGMA synchronous`: 2 for FULL, 1 for NORMAL.
    public func synchronousSetting() async throws -> Int {
        try await writer.write { try Int.fetchOne($0, sql: "PRAGMA synchronous") ?? -1 }
    }

    /// A store in memory (tests): the same SQL, gone with the process.
    public init(
        inMemoryWithIDPrefix idPrefix: String = "job",
        now: @escaping @Sendable () -> Duration = SQLiteJobStore.wallClock
    )
        throws
    {
        do {
            let queue = try DatabaseQueue()
            writer = queue
            committer = GroupCommitter(writer: queue)
        } catch {
            throw StoreError(.unavailable, "cannot open an in-memory job store", underlying: error)
        }
        path = ":memory:"
        self.now = now
        self.idPrefix = idPrefix
        try migrate()
    }

    /// Time since the Unix epoch.
    public static let wallClock: @Sendable () -> Duration = {
        .nanoseconds(Int64((Date().timeIntervalSince1970 * 1e9).rounded()))
    }

    private func migrate() throws {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1-jobs") { db in
            try db.execute(
                sql: """
                    CREATE TABLE jobs (
                        seq INTEGER PRIMARY KEY,
                        id TEXT NOT NULL UNIQUE,
                        state TEXT NOT NULL,
                        priority INTEGER NOT NULL,
                        user TEXT NOT NULL,
                        project TEXT NOT NULL,
                        campaign TEXT NOT NULL,
                        provider TEXT,
                        idempotency_key TEXT,
                        run_at INTEGER NOT NULL,
                        lease_expires_at INTEGER,
                        reserved INTEGER NOT NULL DEFAULT 0,
                        charged INTEGER NOT NULL DEFAULT 0,
                        released INTEGER NOT NULL DEFAULT 0,
                        pending INTEGER NOT NULL DEFAULT 0,
                        record TEXT NOT NULL
                    );
                    CREATE UNIQUE INDEX jobs_idempotency ON jobs(project, idempotency_key) WHERE idempotency_key IS NOT NULL;
                    CREATE INDEX jobs_ready ON jobs(state, priority, run_at, seq);
                    CREATE INDEX jobs_campaign ON jobs(campaign, state);
                    CREATE INDEX jobs_leases ON jobs(state, lease_expires_at);
                    """
            )
        }
        migrator.registerMigration("v2-kind") { db in
            // The scheduler leases each kind from its own queue.
            try db.execute(
                sql: """
                    ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'audio';
                    UPDATE jobs SET kind = COALESCE(json_extract(record, '$.request.kind'), 'audio');
                    CREATE INDEX jobs_ready_kind ON jobs(state, kind, priority, run_at, seq);
                    """
            )
        }
        migrator.registerMigration("v3-budget-sums") { db in
            // Budgets are checked against the jobs' own ledgers: a scope's charged and pending, summed from an
            // index that covers them (the global sum scans the narrower of the two).
            try db.execute(
                sql: """
                    CREATE INDEX jobs_project_money ON jobs(project, charged, pending);
                    CREATE INDEX jobs_campaign_money ON jobs(campaign, charged, pending);
                    """
            )
        }
        migrator.registerMigration("v4-budget-limits") { db in
            // Limits set while running (PUT /v1/budgets), kept for the next run: a NULL limit is one removed.
            try db.execute(
                sql: """
                    CREATE TABLE budget_limits (
                        kind TEXT NOT NULL,
                        name TEXT NOT NULL,
                        limit_nanos INTEGER,
                        PRIMARY KEY (kind, name)
                    )
                    """
            )
        }
        migrator.registerMigration("v5-due-index") { db in
            // What the claim query reads, for the available jobs only: it orders them without touching the table,
            // and a transition between two other states (begin, submit, complete) leaves this index alone.
            try db.execute(
                sql: """
                    CREATE INDEX jobs_due ON jobs(kind, priority, user, seq, run_at, project, id)
                        WHERE state = 'available';
                    DROP INDEX jobs_ready_kind;
                    """
            )
        }
        migrator.registerMigration("v6-columns") { db in
            // Each field a transition changes in a column of its own, and the request (which never changes) as
            // JSON: a transition no longer decodes and encodes the whole record, which was most of its cost.
            try db.execute(
                sql: """
                    ALTER TABLE jobs ADD COLUMN request TEXT NOT NULL DEFAULT '';
                    ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
                    ALTER TABLE jobs ADD COLUMN snoozes INTEGER NOT NULL DEFAULT 0;
                    ALTER TABLE jobs ADD COLUMN enqueued_at INTEGER NOT NULL DEFAULT 0;
                    ALTER TABLE jobs ADD COLUMN finished_at INTEGER;
                    ALTER TABLE jobs ADD COLUMN lease_token TEXT;
                    ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
                    ALTER TABLE jobs ADD COLUMN recovery_point TEXT;
                    ALTER TABLE jobs ADD COLUMN idempotent_submission INTEGER NOT NULL DEFAULT 0;
                    ALTER TABLE jobs ADD COLUMN provider_task_id TEXT;
                    ALTER TABLE jobs ADD COLUMN failed_providers TEXT;
                    ALTER TABLE jobs ADD COLUMN errors TEXT;
                    ALTER TABLE jobs ADD COLUMN outcome TEXT;
                    ALTER TABLE jobs ADD COLUMN crashes INTEGER;
                    ALTER TABLE jobs ADD COLUMN in_call INTEGER;
                    """
            )
            // The jobs of a store written before move into the columns, a page at a time.
            var after: Int64 = 0
            while true {
                let page = try Row.fetchAll(
                    db,
                    sql: "SELECT seq, id, record FROM jobs WHERE seq > ? ORDER BY seq LIMIT 1000",
                    arguments: [after]
                )
                guard let last = page.last else { break }
                after = try last.decode(atIndex: 0)
                for row in page {
                    let id: String = try row.decode(atIndex: 1)
                    let record: JobRecord
                    do {
                        record = try JSONDecoder().decode(JobRecord.self, from: Data((try row.decode(String.self, atIndex: 2)).utf8))
                    } catch {
                        throw StoreError(.invalidState, "the stored job \(id) could not be read", underlying: error)
                    }
                    // Prepared once for the whole conversion, not parsed again for every job.
                    let row = JobRow(new: record)
                    try db.cachedStatement(sql: JobRow.updateBeforeTokens).execute(
                        arguments: row.updateArguments(try row.encoded(), token: nil)
                    )
                    try db.cachedStatement(sql: "UPDATE jobs SET request = ?, enqueued_at = ? WHERE id = ?").execute(
                        arguments: [try JobRow.json(record.request), record.enqueuedAt.nanoseconds, id]
                    )
                }
            }
            try db.execute(sql: "ALTER TABLE jobs DROP COLUMN record")
        }
        migrator.registerMigration("v7-available-at") { db in
            // The next due time is read from the available jobs only: an index of them changes when a job becomes
            // or stops being available, where one over every job's state, priority and due time changed at every
            // state change (lease, completion), one more B-tree written on each.
            try db.execute(
                sql: """
                    CREATE INDEX jobs_available_at ON jobs(run_at) WHERE state = 'available';
                    DROP INDEX jobs_ready;
                    """
            )
        }
        migrator.registerMigration("v8-money-totals") { db in
            // The money of each project and campaign pair as a running total, which every write of a job's row
            // that changes its ledger updates in the same transaction (``save(_:_:)``, one upsert): a reservation
            // within budgets sums a scope's pairs (few: one per campaign) instead of the scope's jobs, which cost a
            // scan of the scope per reservation inside the single writer. Deleting (purging) a job leaves its
            // money in the totals: what it charged was spent, and what it still reserves may be billed. The two
            // indexes the sums read go. (Triggers did the same, but slowed every transition by 15 to 20 %, money
            // or not.)
            try db.execute(
                sql: """
                    CREATE TABLE money_totals (
                        project TEXT NOT NULL,
                        campaign TEXT NOT NULL,
                        reserved INTEGER NOT NULL,
                        charged INTEGER NOT NULL,
                        released INTEGER NOT NULL,
                        pending INTEGER NOT NULL,
                        PRIMARY KEY (project, campaign)
                    ) WITHOUT ROWID;
                    INSERT INTO money_totals (project, campaign, reserved, charged, released, pending)
                    SELECT project, campaign, SUM(reserved), SUM(charged), SUM(released), SUM(pending) FROM jobs
                    GROUP BY project, campaign;
                    DROP INDEX jobs_project_money;
                    DROP INDEX jobs_campaign_money;
                    """
            )
        }
        migrator.registerMigration("v9-change-tokens") { db in
            // Every write of a job's row sets a fresh random token, so that a transition can be made from the copy
            // this store kept of its last write and applied only if the row still has that token (``RecentRows``):
            // the single writer then neither reads nor decodes the row.
            try db.execute(sql: "ALTER TABLE jobs ADD COLUMN change_token INTEGER NOT NULL DEFAULT 0")
        }
        do {
            try migrator.migrate(writer)
        } catch {
            throw StoreError(.unavailable, "cannot prepare the job store's tables", underlying: error)
        }
    }

    /// Adds a change of a job's ledger to its project and campaign's row of `money_totals`.
    static let addToTotals = """
        INSERT INTO money_totals (project, campaign, reserved, charged, released, pending) VALUES (?, ?, ?, ?, ?, ?)
        ON CONFLICT (project, campaign) DO UPDATE SET
            reserved = reserved + excluded.reserved, charged = charged + excluded.charged,
            released = released + excluded.released, pending = pending + excluded.pending
        """

    // MARK: - JobStore

    public func enqueue(_ requests: [ValidatedRequest]) async throws -> [EnqueueResult] {
        let now = now()
        let prefix = idPrefix
        return try await write { db in
            var sequence = try Int64.fetchOne(db, sql: "SELECT COALESCE(MAX(seq), 0) FROM jobs") ?? 0
            var results: [EnqueueResult] = []
            results.reserveCapacity(requests.count)
            for request in requests {
                if let key = request.idempotencyKey,
                    let existing = try String.fetchOne(
                        db.cachedStatement(sql: "SELECT id FROM jobs WHERE project = ? AND idempotency_key = ?"),
                        arguments: [request.project, key]
                    )
                {
                    results.append(EnqueueResult(jobID: JobID(existing), existing: true))
                    continue
                }
                sequence += 1
                let record = JobRecord(
                    id: JobID("\(prefix)-\(sequence)"),
                    request: request,
                    sequence: sequence,
                    now: now
                )
                let text = try JobRow.json(request)
                self.requests.remember(record.id.rawValue, text, request)
                try db.cachedStatement(
                    sql: """
                        INSERT INTO jobs (seq, id, state, priority, user, project, campaign, idempotency_key, run_at,
                                          enqueued_at, kind, request)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                        """
                ).execute(
                    arguments: [
                        sequence, record.id.rawValue, record.state.rawValue, request.priority.rawValue, request.user,
                        request.project, request.campaign, request.idempotencyKey, record.runAt.nanoseconds,
                        record.enqueuedAt.nanoseconds, request.kind.rawValue, text,
                    ]
                )
                results.append(EnqueueResult(jobID: record.id, existing: false))
            }
            return results
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
        let now = now()
        let granted = try await write { db in
            try self.dueInClaimOrder(db, now: now, kinds: kinds, excludingUsers: excludingUsers, limit: limit).map {
                try self.grant($0, to: owner, until: now + duration, db)
            }
        }
        for (_, row) in granted { recent.keep(row) }
        return granted.map(\.leased)
    }

    public func peek(
        limit: Int,
        excludingUsers: Set<String>,
        excludingProjects: Set<String>,
        excludingJobs: Set<JobID>,
        kinds: Set<GenerationKind>
    ) async throws -> [JobRecord] {
        guard limit > 0, !kinds.isEmpty else { return [] }
        let now = now()
        return try await read { db in
            try self.dueInClaimOrder(
                db,
                now: now,
                kinds: kinds,
                excludingUsers: excludingUsers,
                excludingProjects: excludingProjects,
                excludingJobs: excludingJobs,
                limit: limit
            ).map(\.record)
        }
    }

    /// Due available jobs of `kinds` in claim order: highest priority first; within a priority, round-robin
    /// across users (each user's oldest first, users ordered by their oldest waiting job).
    ///
    /// Everything before the last step reads only the due-jobs index (a partial index of the available jobs that
    /// covers every column filtered on), and only the `limit` jobs chosen are read from the table. With up to
    /// ``queueScanLimit`` (kind, priority, user) queues waiting, it costs a seek per queue and at most `limit`
    /// index entries per queue, whatever the backlog (see ``dueByQueue``); with more, one pass over the due jobs
    /// counts each queue (see ``dueByGrouping``). Both give the same order.
    private func dueInClaimOrder(
        _ db: Database,
        now: Duration,
        kinds: Set<GenerationKind>,
        excludingUsers: Set<String>,
        excludingProjects: Set<String> = [],
        excludingJobs: Set<JobID> = [],
        limit: Int
    ) throws -> [JobRow] {
        let due = try DueFilter(
            now: now,
            kinds: kinds,
            excludingUsers: excludingUsers,
            excludingProjects: excludingProjects,
            excludingJobs: excludingJobs
        )
        let chosen =
            try dueByQueue(db, due, limit: limit) ?? dueByGrouping(db, due, limit: limit)
        let read = try db.cachedStatement(sql: "SELECT \(JobRow.columns) FROM jobs WHERE seq = ?")
        var jobs: [JobRow] = []
        jobs.reserveCapacity(chosen.count)
        for sequence in chosen {
            guard let row = try Row.fetchOne(read, arguments: [sequence]) else { continue }
            jobs.append(try JobRow(row, requests: requests))
        }
        return jobs
    }

    /// What makes an available job due for a lease or a look.
    private struct DueFilter {
        var kinds: Set<String>
        var excludingUsers: Set<String>
        /// The rest of the filter, checked on the index: due time, projects and jobs left out.
        var sql = """
            state = 'available' AND run_at <= ?
              AND project NOT IN (SELECT value FROM json_each(?))
              AND id NOT IN (SELECT value FROM json_each(?))
            """
        var arguments: StatementArguments

        init(
            now: Duration,
            kinds: Set<GenerationKind>,
            excludingUsers: Set<String>,
            excludingProjects: Set<String>,
            excludingJobs: Set<JobID>
        ) throws {
            self.kinds = Set(kinds.map(\.rawValue))
            self.excludingUsers = excludingUsers
            arguments = [
                now.nanoseconds, try Self.list(excludingProjects), try Self.list(Set(excludingJobs.map(\.rawValue))),
            ]
        }

        /// `values` as a JSON array, for `json_each`.
        static func list(_ values: Set<String>) throws -> String { try JobRow.json(values.sorted()) }
    }

    /// The most (kind, priority, user) queues ``dueByQueue`` visits before it leaves the choice to
    /// ``dueByGrouping``.
    static let queueScanLimit = 512

    /// The sequence numbers of the first `limit` due jobs in claim order, found queue by queue; `nil` when more
    /// than ``queueScanLimit`` queues wait.
    ///
    /// The queues are found by skipping through the index (one seek each). Each (priority, user) queue first
    /// gives up to `limit / queues` of its due jobs; a queue that gave all it was asked for and would give more
    /// in the claim order is asked again for up to `limit`. A queue's count is used only up to the point where
    /// it is known whole (across kinds, up to the lowest last job of a kind cut short), so the round-robin over
    /// the counts is the same as over the whole backlog.
    private func dueByQueue(_ db: Database, _ due: DueFilter, limit: Int) throws -> [Int64]? {
        struct Key: Hashable {
            var priority: Int
            var user: String
        }
        let next = try db.cachedStatement(
            sql: """
                SELECT kind, priority, user FROM jobs INDEXED BY jobs_due
                WHERE state = 'available' AND (kind, priority, user) > (?, ?, ?)
                ORDER BY kind, priority, user LIMIT 1
                """
        )
        var kindsOf: [Key: [String]] = [:]
        var cursor: (String, Int, String) = ("", Int.min, "")
        var visited = 0
        while let row = try Row.fetchOne(next, arguments: [cursor.0, cursor.1, cursor.2]) {
            visited += 1
            if visited > Self.queueScanLimit { return nil }
            cursor = (try row.decode(atIndex: 0), try row.decode(atIndex: 1), try row.decode(atIndex: 2))
            guard due.kinds.contains(cursor.0), !due.excludingUsers.contains(cursor.2) else { continue }
            kindsOf[Key(priority: cursor.1, user: cursor.2), default: []].append(cursor.0)
        }
        guard !kindsOf.isEmpty else { return [] }
        let first = try db.cachedStatement(
            sql: """
                SELECT seq FROM jobs INDEXED BY jobs_due
                WHERE \(due.sql) AND kind = ? AND priority = ? AND user = ? ORDER BY seq LIMIT ?
                """
        )
        /// A queue's first due jobs, up to `cap` of each kind, as far as they are known whole; `cut` when a kind
        /// had more.
        func fetch(_ key: Key, cap: Int) throws -> (sequences: [Int64], cut: Bool) {
            var merged: [Int64] = []
            var bound = Int64.max
            for kind in kindsOf[key] ?? [] {
                var arguments = due.arguments
                arguments += [kind, key.priority, key.user, cap]
                let sequences = try Int64.fetchAll(first, arguments: arguments)
                if sequences.count == cap, let last = sequences.last { bound = min(bound, last) }
                merged += sequences
            }
            merged.sort()
            return bound == .max ? (merged, false) : (merged.filter { $0 <= bound }, true)
        }
        let share = max(1, (limit + kindsOf.count - 1) / kindsOf.count)
        var fetched: [Key: (sequences: [Int64], cut: Bool, cap: Int)] = [:]
        for key in kindsOf.keys {
            let (sequences, cut) = try fetch(key, cap: share)
            if !sequences.isEmpty { fetched[key] = (sequences, cut, share) }
        }
        while true {
            let queues = fetched.map { key, value in
                ClaimOrder.Queue(
                    priority: key.priority,
                    user: key.user,
                    firstSequence: value.sequences[0],
                    due: value.sequences.count
                )
            }
            let turns = ClaimOrder.turns(queues, limit: limit)
            // A queue cut short that gives every job it was asked for may have more to give: ask it again, whole.
            let short = turns.compactMap { queue, count -> Key? in
                let key = Key(priority: queue.priority, user: queue.user)
                guard let value = fetched[key], value.cut, value.cap < limit, count == value.sequences.count else {
                    return nil
                }
                return key
            }
            if short.isEmpty {
                return ClaimOrder.order(turns) { queue, count in
                    Array(fetched[Key(priority: queue.priority, user: queue.user)]!.sequences.prefix(count))
                }
            }
            for key in short {
                let (sequences, cut) = try fetch(key, cap: limit)
                fetched[key] = (sequences, cut, limit)
            }
        }
    }

    /// The sequence numbers of the first `limit` due jobs in claim order, from one pass over the due jobs that
    /// counts each (priority, user) queue: for backlogs of many queues.
    private func dueByGrouping(_ db: Database, _ due: DueFilter, limit: Int) throws -> [Int64] {
        let filter = """
            \(due.sql)
              AND kind IN (SELECT value FROM json_each(?))
              AND user NOT IN (SELECT value FROM json_each(?))
            """
        var arguments = due.arguments
        arguments += [try DueFilter.list(due.kinds), try DueFilter.list(due.excludingUsers)]
        let queues = try Row.fetchAll(
            db.cachedStatement(
                sql: """
                    SELECT priority, user, MIN(seq), COUNT(*)
                    FROM jobs INDEXED BY jobs_due WHERE \(filter) GROUP BY priority, user
                    """
            ),
            arguments: arguments
        ).map {
            ClaimOrder.Queue(
                priority: try $0.decode(atIndex: 0),
                user: try $0.decode(atIndex: 1),
                firstSequence: try $0.decode(atIndex: 2),
                due: try $0.decode(atIndex: 3)
            )
        }
        let first = try db.cachedStatement(
            sql: """
                SELECT seq FROM jobs INDEXED BY jobs_due
                WHERE \(filter) AND priority = ? AND user = ? ORDER BY seq LIMIT ?
                """
        )
        return try ClaimOrder.order(ClaimOrder.turns(queues, limit: limit)) { queue, count in
            var queueArguments = arguments
            queueArguments += [queue.priority, queue.user, count]
            return try Int64.fetchAll(first, arguments: queueArguments)
        }
    }

    public func claim(_ id: JobID, owner: String, duration: Duration) async throws -> LeasedJob? {
        let now = now()
        let granted = try await write(.singleWrite) { db -> (leased: LeasedJob, row: JobRow)? in
            guard
                let row = try Row.fetchOne(
                    db.cachedStatement(
                        sql: "SELECT \(JobRow.columns) FROM jobs WHERE id = ? AND state = 'available' AND run_at <= ?"
                    ),
                    arguments: [id.rawValue, now.nanoseconds]
                )
            else { return nil }
            return try self.grant(try JobRow(row, requests: self.requests), to: owner, until: now + duration, db)
        }
        if let granted { recent.keep(granted.row) }
        return granted?.leased
    }

    /// Leases the job to `owner` until `expiresAt` under a new token, and saves it; returns the row as written too,
    /// to keep once the transaction has committed.
    private func grant(
        _ job: JobRow,
        to owner: String,
        until expiresAt: Duration,
        _ db: Database
    ) throws -> (leased: LeasedJob, row: JobRow) {
        var job = job
        let lease = JobLease(jobID: job.record.id, token: "\(owner):\(UUID.random().uuidString)", expiresAt: expiresAt)
        job.record.grantLease(token: lease.token, owner: owner, expiresAt: expiresAt)
        let written = try save(db, job)
        return (LeasedJob(record: job.record, lease: lease), written)
    }

    public func timeUntilNextDue() async throws -> Duration? {
        let now = now()
        // Jobs already due count too (as zero): one may have come due since the caller's last lease.
        let next = try await read { db in
            try Int64.fetchOne(
                db,
                sql: "SELECT MIN(run_at) FROM jobs INDEXED BY jobs_available_at WHERE state = 'available'"
            )
        }
        return next.map { max(.zero, .nanoseconds($0) - now) }
    }

    public func heartbeat(_ lease: JobLease, duration: Duration) async throws -> JobLease {
        let expiresAt = now() + duration
        try await withHeld(lease) { $0.leaseExpiresAt = expiresAt }
        return JobLease(jobID: lease.jobID, token: lease.token, expiresAt: expiresAt)
    }

    public func beginAttempt(
        _ lease: JobLease,
        provider: String,
        reserving estimate: Money,
        idempotentSubmission: Bool
    )
        async throws
    {
        try await withHeld(lease) {
            $0.beginAttempt(provider: provider, reserving: estimate, idempotentSubmission: idempotentSubmission)
        }
    }

    public func beginAttempt(
        _ lease: JobLease,
        provider: String,
        reserving estimate: Money,
        idempotentSubmission: Bool,
        within budgets: [Budget]
    ) async throws -> [BudgetScope: Money] {
        // One write: the sums and the reservation commit together, and the store's single writer orders them.
        // Reads, then writes once (``save`` is the last step).
        let checked = try await write(.singleWrite) { db -> (Result<[BudgetScope: Money], BudgetRefusal>, JobRow?) in
            var job = try self.load(db, lease.jobID)
            guard job.record.isHeld(by: lease) else {
                throw StoreError(.leaseLost, "the lease on \(lease.jobID) is no longer held")
            }
            let before = job.record.ledger
            job.record.beginAttempt(provider: provider, reserving: estimate, idempotentSubmission: idempotentSubmission)
            var others: [BudgetScope: (committed: Money, pending: Money)] = [:]
            for budget in budgets {
                let total = try Self.scopeSums(db, budget.scope)
                // Every job but this one: its own stored ledger comes off the scope's sum.
                others[budget.scope] = (
                    total.committed - (before.charged + before.pending),
                    total.pending - before.pending
                )
            }
            let result = Budget.check(budgets, others: others, own: job.record.ledger.charged + job.record.ledger.pending)
            guard case .success = result else { return (result, nil) }
            return (result, try self.save(db, job))
        }
        if let written = checked.1 { recent.keep(written) }
        return try checked.0.get()
    }

    public func ledger(in scope: BudgetScope) async throws -> CostLedger {
        try await read { db in
            var totals = CostLedger()
            let (filter, arguments) = Self.filter(scope)
            if let row = try Row.fetchOne(
                db.cachedStatement(
                    sql: """
                        SELECT COALESCE(SUM(reserved), 0), COALESCE(SUM(charged), 0), COALESCE(SUM(released), 0),
                               COALESCE(SUM(pending), 0) FROM money_totals\(filter)
                        """
                ),
                arguments: arguments
            ) {
                totals.reserved = Money(nanos: try row.decode(atIndex: 0))
                totals.charged = Money(nanos: try row.decode(atIndex: 1))
                totals.released = Money(nanos: try row.decode(atIndex: 2))
                totals.pending = Money(nanos: try row.decode(atIndex: 3))
            }
            return totals
        }
    }

    /// A scope's `charged + pending` and `pending`: its jobs', and those of the jobs purged from it.
    private static func scopeSums(_ db: Database, _ scope: BudgetScope) throws -> (committed: Money, pending: Money) {
        let (filter, arguments) = filter(scope)
        guard
            let row = try Row.fetchOne(
                db.cachedStatement(
                    sql: "SELECT COALESCE(SUM(charged + pending), 0), COALESCE(SUM(pending), 0) FROM money_totals\(filter)"
                ),
                arguments: arguments
            )
        else { return (.zero, .zero) }
        return (Money(nanos: try row.decode(atIndex: 0)), Money(nanos: try row.decode(atIndex: 1)))
    }

    /// The `WHERE` clause that picks a scope's rows of `money_totals` (one per project and campaign).
    private static func filter(_ scope: BudgetScope) -> (String, StatementArguments) {
        switch scope.kind {
        case .global: ("", [])
        case .project: (" WHERE project = ?", [scope.name])
        case .campaign: (" WHERE campaign = ?", [scope.name])
        }
    }

    public func recordSubmission(_ lease: JobLease, taskID: String) async throws {
        try await withHeld(lease) { $0.recordSubmission(taskID: taskID) }
    }

    @discardableResult
    public func complete(_ lease: JobLease, outcome: JobOutcome) async throws -> JobRecord {
        let now = now()
        return try await withHeld(lease) { $0.complete(outcome, now: now) }
    }

    public func retry(
        _ lease: JobLease,
        error: GenerationError?,
        after delay: Duration,
        spendAttempt: Bool,
        failedProvider: String?
    ) async throws {
        let runAt = now() + max(.zero, delay)
        try await withHeld(lease) {
            $0.scheduleRetry(error: error, runAt: runAt, spendAttempt: spendAttempt, failedProvider: failedProvider)
        }
    }

    @discardableResult
    public func deadLetter(_ lease: JobLease, error: GenerationError) async throws -> JobRecord {
        let now = now()
        return try await withHeld(lease) { $0.deadLetter(error, now: now) }
    }

    public func release(_ lease: JobLease, leaving trace: CallTrace) async throws {
        let now = now()
        try await withHeld(lease) { $0.release(now: now, leaving: trace) }
    }

    /// Moves every committed transaction from the write-ahead log into the database file and empties the log
    /// (`PRAGMA wal_checkpoint(TRUNCATE)`), so that the file alone holds the campaign: a copy of it, without its
    /// `-wal` beside it, then misses nothing. The runtime calls it when it closes; it waits for readers to end.
    public func checkpoint() async throws {
        do {
            _ = try await writer.writeWithoutTransaction { try $0.checkpoint(.truncate) }
        } catch {
            throw storeError(error, "the job store could not checkpoint", operation: "write the job store")
        }
    }

    /// Tests: from now on the database file can grow no more, as on a full disk. A write that needs a new page
    /// fails with SQLite's own `SQLITE_FULL` (`PRAGMA max_page_count` on the writer connection, set to the
    /// file's size now); a store opened afresh on the file has no such limit.
    package func stopGrowing() async throws {
        try await writer.write { db in
            let pages = try Int.fetchOne(db, sql: "PRAGMA page_count") ?? 0
            try db.execute(sql: "PRAGMA max_page_count = \(max(pages, 1))")
        }
    }

    public func rescueExpiredLeases(maxCrashes: Int) async throws -> Int {
        let now = now()
        return try await rescue(
            "SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at <= ?",
            [now.nanoseconds],
            now: now,
            maxCrashes: maxCrashes
        )
    }

    public func rescueOrphanedLeases(maxCrashes: Int) async throws -> Int {
        try await rescue("SELECT id FROM jobs WHERE state = 'running'", [], now: now(), maxCrashes: maxCrashes)
    }

    /// Applies the rescue transition to every job the query selects, in one transaction.
    private func rescue(
        _ sql: String,
        _ arguments: StatementArguments,
        now: Duration,
        maxCrashes: Int
    ) async throws -> Int {
        try await write { db in
            let ids = try String.fetchAll(db, sql: sql, arguments: arguments)
            for id in ids {
                var job = try self.load(db, JobID(id))
                job.record.rescue(now: now, maxCrashes: maxCrashes)
                try self.save(db, job)
            }
            return ids.count
        }
    }

    public func purge(_ ids: [JobID]) async throws -> Int {
        try await write { db in
            var removed = 0
            for id in ids {
                // Its money stays in `money_totals`: what it charged was spent, and what it still reserves may be
                // billed.
                try db.execute(
                    sql:
                        "DELETE FROM jobs WHERE id = ? AND state IN ('succeeded', 'dead_lettered', 'needs_reconciliation')",
                    arguments: [id.rawValue]
                )
                removed += db.changesCount
            }
            return removed
        }
    }

    public func job(_ id: JobID) async throws -> JobRecord? {
        try await read { db in
            try self.find(db, id)?.record
        }
    }

    public func jobs(matching query: JobQuery) async throws -> [JobRecord] {
        var clauses: [String] = []
        var arguments: StatementArguments = []
        if let states = query.states {
            clauses.append("state IN (\(states.map { _ in "?" }.joined(separator: ", ")))")
            for state in states.sorted(by: { $0.rawValue < $1.rawValue }) { arguments += [state.rawValue] }
        }
        for (column, value) in [
            ("campaign", query.campaign), ("project", query.project), ("user", query.user),
            ("provider", query.provider),
        ] {
            if let value {
                clauses.append("\(column) = ?")
                arguments += [value]
            }
        }
        if let after = query.afterSequence {
            clauses.append("seq > ?")
            arguments += [after]
        }
        var sql = "SELECT \(JobRow.columns) FROM jobs"
        if !clauses.isEmpty { sql += " WHERE " + clauses.joined(separator: " AND ") }
        sql += " ORDER BY seq"
        if let limit = query.limit {
            sql += " LIMIT ?"
            arguments += [limit]
        }
        let finalSQL = sql
        let finalArguments = arguments
        return try await read { db in
            try Row.fetchAll(db, sql: finalSQL, arguments: finalArguments).map { row in
                try JobRow(row, requests: self.requests, remember: false).record
            }
        }
    }

    public func requeue(_ id: JobID) async throws {
        let now = now()
        try await write { db in
            var job = try self.load(db, id)
            try job.record.requeue(now: now)
            try self.save(db, job)
        }
    }

    public func cancel(_ id: JobID) async throws {
        let now = now()
        try await write { db in
            var job = try self.load(db, id)
            try job.record.cancel(now: now)
            try self.save(db, job)
        }
    }

    public func counts() async throws -> [JobState: Int] {
        try await read { db in
            var counts: [JobState: Int] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state") {
                if let state = JobState(rawValue: row["state"]) { counts[state] = row["n"] }
            }
            return counts
        }
    }

    public func ledgerTotals() async throws -> CostLedger { try await ledger(in: .global) }

    // MARK: - Budget limits

    public func budgetLimits() async throws -> [BudgetScope: Money?] {
        try await read { db in
            var limits: [BudgetScope: Money?] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT kind, name, limit_nanos FROM budget_limits") {
                guard let kind = BudgetScope.Kind(rawValue: row["kind"]) else { continue }
                let name: String = row["name"]
                let nanos: Int64? = row["limit_nanos"]
                limits[BudgetScope(kind: kind, name: name)] = .some(nanos.map { Money(nanos: $0) })
            }
            return limits
        }
    }

    public func setBudgetLimit(_ limit: Money?, for scope: BudgetScope) async throws {
        let nanos = limit?.nanos
        try await write { db in
            try db.execute(
                sql: """
                    INSERT INTO budget_limits (kind, name, limit_nanos) VALUES (?, ?, ?)
                    ON CONFLICT (kind, name) DO UPDATE SET limit_nanos = excluded.limit_nanos
                    """,
                arguments: [scope.kind.rawValue, scope.name, nanos]
            )
        }
    }

    // MARK: - Helpers

    /// Applies `change` to the job `lease` holds, in one write.
    ///
    /// When this store kept the row as it last wrote it (``RecentRows``), the change is made on that copy and
    /// encoded before the write, which only checks the row's change token and updates it: the single writer
    /// neither reads nor decodes the row. A row changed since by anyone else is read as before.
    ///
    /// - Returns: The record as written.
    @discardableResult
    private func withHeld(
        _ lease: JobLease,
        _ change: @escaping @Sendable (inout JobRecord) -> Void
    ) async throws -> JobRecord {
        let id = lease.jobID.rawValue
        var guess: (row: JobRow, encoded: JobRow.Encoded, token: Int64, arguments: StatementArguments)?
        if var row = recent.row(id), row.record.isHeld(by: lease) {
            let kept = row.changeToken
            change(&row.record)
            let encoded = try row.encoded()
            let token = JobRow.newToken()
            var arguments = row.updateArguments(encoded, token: token)
            arguments += [kept]
            guess = (row, encoded, token, arguments)
        }
        let prepared = guess
        do {
            // Reads (when it must), then writes: the row's update is the last statement that can refuse the
            // transition alone (a money total that fails after it rolls back the whole group).
            let written = try await write(.singleWrite) { db -> JobRow in
                if let prepared {
                    try db.cachedStatement(sql: JobRow.updateIfUnchanged).execute(arguments: prepared.arguments)
                    if db.changesCount == 1 {
                        try self.addToTotals(afterWriting: db, prepared.row)
                        return prepared.row.written(prepared.encoded, token: prepared.token)
                    }
                }
                var job = try self.load(db, lease.jobID)
                guard job.record.isHeld(by: lease) else {
                    throw StoreError(.leaseLost, "the lease on \(lease.jobID) is no longer held")
                }
                change(&job.record)
                return try self.save(db, job)
            }
            recent.keep(written)
            return written.record
        } catch {
            recent.forget(id)
            throw error
        }
    }

    /// The job `id`, which must exist.
    private func load(_ db: Database, _ id: JobID) throws -> JobRow {
        guard let job = try find(db, id) else { throw StoreError(.notFound, "no job \(id)") }
        return job
    }

    private func find(_ db: Database, _ id: JobID) throws -> JobRow? {
        try Row.fetchOne(
            db.cachedStatement(sql: "SELECT \(JobRow.columns) FROM jobs WHERE id = ?"),
            arguments: [id.rawValue]
        ).map { try JobRow($0, requests: requests) }
    }

    /// Writes a job's row, and the change of its ledger since it was read to its pair's money total: every
    /// transition writes through here, so the totals are the jobs' ledgers (plus the purged jobs').
    ///
    /// - Returns: The row as written, to keep once the transaction has committed.
    @discardableResult
    private func save(_ db: Database, _ job: JobRow) throws -> JobRow {
        let encoded = try job.encoded()
        let token = JobRow.newToken()
        // Prepared once per connection: a transition is a read and this write, and preparing (parsing, GRDB's
        // authorizer) cost as much as running them.
        try db.cachedStatement(sql: JobRow.update).execute(arguments: job.updateArguments(encoded, token: token))
        try addToTotals(afterWriting: db, job)
        return job.written(encoded, token: token)
    }

    /// Adds the change of `job`'s ledger since it was read (or last written) to its pair's money total, after the
    /// job's row was written: a failure throws ``GroupCommitter/PartlyWritten``, which rolls back the whole group
    /// transaction (the row's write cannot be undone alone).
    private func addToTotals(afterWriting db: Database, _ job: JobRow) throws {
        let (now, then) = (job.record.ledger, job.storedLedger)
        guard now != then else { return }
        do {
            try db.cachedStatement(sql: Self.addToTotals).execute(
                arguments: [
                    job.record.request.project, job.record.request.campaign,
                    (now.reserved - then.reserved).nanos, (now.charged - then.charged).nanos,
                    (now.released - then.released).nanos, (now.pending - then.pending).nanos,
                ]
            )
        } catch {
            throw GroupCommitter.PartlyWritten(underlying: error)
        }
    }

    /// Runs a write transaction, mapping database errors to ``StoreError``.
    private func write<T: Sendable>(
        _ isolation: GroupCommitter.Isolation = .savepoint,
        _ body: @escaping @Sendable (Database) throws -> T
    ) async throws -> T {
        do {
            return try await committer.write(isolation, body)
        } catch {
            throw storeError(error, "the job store failed a write", operation: "write the job store")
        }
    }

    /// `error` as a ``StoreError``: one already is one; a database error is `unavailable`, with the local
    /// resource failure it stands for (a full disk, a damaged file) as its cause when it is one.
    private func storeError(_ error: any Error, _ message: String, operation: String) -> any Error {
        if error is StoreError { return error }
        return StoreError(.unavailable, message, underlying: localFailure(error, operation: operation) ?? error)
    }

    /// The local resource failure a database error stands for: a full disk, a read-only or vanished file, an
    /// I/O error, a damaged file. The engine stops taking work on one instead of retrying: no retry mends them.
    private func localFailure(_ error: any Error, operation: String) -> LocalResourceError? {
        guard let database = error as? DatabaseError else { return nil }
        switch database.resultCode {
        case .SQLITE_FULL: return LocalResourceError(path: path, operation: operation, errorNumber: ENOSPC)
        case .SQLITE_READONLY: return LocalResourceError(path: path, operation: operation, errorNumber: EROFS)
        case .SQLITE_CANTOPEN: return LocalResourceError(path: path, operation: operation, errorNumber: EACCES)
        case .SQLITE_IOERR: return LocalResourceError(path: path, operation: operation, errorNumber: EIO)
        case .SQLITE_CORRUPT, .SQLITE_NOTADB:
            // SQLite's own words ("database disk image is malformed", "file is not a database"), not EIO's.
            return LocalResourceError(
                path: path,
                operation: operation,
                errorNumber: EIO,
                detail: (database.message ?? "the database file is damaged")
                    + " (restore it from a backup, or move it aside to start the campaign again)"
            )
        default: return nil
        }
    }

    private func read<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        do {
            return try await writer.read(body)
        } catch {
            throw storeError(error, "the job store failed a read", operation: "read the job store")
        }
    }
}

extension JobStore where Self == SQLiteJobStore {
    /// A durable store in one SQLite file.
    public static func sqlite(path: String) throws -> SQLiteJobStore { try SQLiteJobStore(path: path) }
}

extension Duration {
    /// Whole nanoseconds, for storage.
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}

extension JobStoreBackend {
    /// The durable single-machine store in a SQLite file (created if missing): `ParallelGenerator(store:
    /// .sqlite(path: "campaign.sqlite"))`.
    public static func sqlite(path: String, durability: SQLiteJobStore.Durability = .full) -> JobStoreBackend {
        JobStoreBackend { _ in try SQLiteJobStore(path: path, durability: durability) }
    }
}

/// The order in which due jobs are claimed: highest priority first; within a priority, round-robin across users
/// (a user's jobs oldest first, users in the order of their oldest due job).
enum ClaimOrder {
    /// One user's due jobs at one priority.
    struct Queue: Hashable {
        var priority: Int
        var user: String
        var firstSequence: Int64
        var due: Int
    }

    /// Where a queue's `turn`-th job stands in the claim order.
    struct Position: Comparable {
        var queue: Queue
        var turn: Int

        static func < (a: Position, b: Position) -> Bool {
            if a.queue.priority != b.queue.priority { return a.queue.priority > b.queue.priority }
            if a.turn != b.turn { return a.turn < b.turn }
            return a.queue.firstSequence < b.queue.firstSequence
        }
    }

    /// The jobs that `turns` gives, in claim order: `first(queue, count)` names a queue's first `count` due jobs.
    static func order(
        _ turns: [(Queue, Int)],
        first: (Queue, Int) throws -> [Int64]
    ) rethrows -> [Int64] {
        var chosen: [(position: Position, sequence: Int64)] = []
        for (queue, count) in turns {
            for (index, sequence) in try first(queue, count).enumerated() {
                chosen.append((Position(queue: queue, turn: index + 1), sequence))
            }
        }
        return chosen.sorted { $0.position < $1.position }.map(\.sequence)
    }

    /// How many jobs each queue gives to the first `limit` of the claim order (queues that give none are left
    /// out).
    static func turns(_ queues: [Queue], limit: Int) -> [(Queue, Int)] {
        let ordered = queues.sorted { ($0.priority, -$0.firstSequence) > ($1.priority, -$1.firstSequence) }
        var taken = Array(repeating: 0, count: ordered.count)
        var remaining = limit
        var start = 0
        // One priority at a time: turn after turn, each queue that still has a job due gives one, oldest queue
        // first, until the limit is reached or the priority has nothing left.
        while start < ordered.count, remaining > 0 {
            var end = start
            while end < ordered.count, ordered[end].priority == ordered[start].priority { end += 1 }
            let deepest = ordered[start..<end].map(\.due).max() ?? 0
            var turn = 1
            while turn <= deepest, remaining > 0 {
                for index in start..<end where ordered[index].due >= turn && remaining > 0 {
                    taken[index] += 1
                    remaining -= 1
                }
                turn += 1
            }
            start = end
        }
        return zip(ordered, taken).filter { $0.1 > 0 }
    }
}
