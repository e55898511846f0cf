import Foundation
import GRDB
import Pargen
@testable import PargenSQLite
import Testing

/// The SQLite store keeps each changing field in a column of its own. A store written by an earlier version, with
/// every job's whole record as JSON, is converted when it is opened, and no field of any job is lost on the way.
@Suite struct SQLiteLayoutTests {
    static let start: Duration = .seconds(1_767_225_600)

    /// A job with every field set: one step into a second attempt, held by a lease.
    static func busyRecord() -> JobRecord {
        var record = JobRecord(
            id: JobID("job-7"),
            request: validated(.video(prompt: "a boat at dawn", duration: .seconds(6), user: "ann", project: "p"), id: "r7"),
            sequence: 7,
            now: start
        )
        record.grantLease(token: "old:1", owner: "old", expiresAt: start + .seconds(60))
        record.beginAttempt(provider: "runway", reserving: .cents(40), idempotentSubmission: true)
        record.scheduleRetry(
            error: GenerationError(.transient, "runway answered 503", provider: "runway", providerCode: "503"),
            runAt: start + .seconds(5),
            spendAttempt: true,
            failedProvider: "runway"
        )
        record.snoozes = 2
        record.crashes = 1
        record.grantLease(token: "w:2", owner: "w", expiresAt: start + .seconds(600))
        record.beginAttempt(provider: "minimax", reserving: .cents(35), idempotentSubmission: false)
        record.recordSubmission(taskID: "task-42")
        return record
    }

    @Test func aStoreWrittenAsWholeRecordsOpensWithEveryFieldOfEveryJob() async throws {
        let path = temporaryDirectory().appendingPathComponent("v5.sqlite").path
        let busy = Self.busyRecord()
        let done = {
            var done = JobRecord(
                id: JobID("job-8"),
                request: validated(.audio(prompt: "welcome", user: "bob", project: "q"), id: "r8"),
                sequence: 8,
                now: Self.start
            )
            done.grantLease(token: "w:3", owner: "w", expiresAt: Self.start + .seconds(60))
            done.beginAttempt(provider: "openai", reserving: .cents(2))
            done.complete(JobOutcome.test, now: Self.start + .seconds(3))
            return done
        }()
        let queued = JobRecord(
            id: JobID("job-9"),
            request: validated(.audio(prompt: "later", user: "cy", project: "p"), id: "r9"),
            sequence: 9,
            now: Self.start + .seconds(1)
        )
        // The layout of the version before the columns, as its migrations left it.
        let old = try DatabaseQueue(path: path)
        try await old.write { db in
            try db.execute(
                sql: """
                    CREATE TABLE grdb_migrations (identifier TEXT NOT NULL PRIMARY KEY);
                    INSERT INTO grdb_migrations VALUES ('v1-jobs'), ('v2-kind'), ('v3-budget-sums'), ('v4-budget-limits'),
                                                       ('v5-due-index');
                    CREATE TABLE jobs (
                        seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, state TEXT NOT NULL, priority INTEGER NOT NULL,
                        user TEXT NOT NULL, project TEXT NOT NULL, campaign TEXT NOT NULL, provider TEXT,
                        idempotency_key TEXT, run_at INTEGER NOT NULL, lease_expires_at INTEGER,
                        reserved INTEGER NOT NULL DEFAULT 0, charged INTEGER NOT NULL DEFAULT 0,
                        released INTEGER NOT NULL DEFAULT 0, pending INTEGER NOT NULL DEFAULT 0, record TEXT NOT NULL,
                        kind TEXT NOT NULL DEFAULT 'audio'
                    );
                    CREATE UNIQUE INDEX jobs_idempotency ON jobs(project, idempotency_key) WHERE idempotency_key IS NOT NULL;
                    CREATE INDEX jobs_ready ON jobs(state, priority, run_at, seq);
                    CREATE INDEX jobs_campaign ON jobs(campaign, state);
                    CREATE INDEX jobs_leases ON jobs(state, lease_expires_at);
                    CREATE INDEX jobs_project_money ON jobs(project, charged, pending);
                    CREATE INDEX jobs_campaign_money ON jobs(campaign, charged, pending);
                    CREATE TABLE budget_limits (kind TEXT NOT NULL, name TEXT NOT NULL, limit_nanos INTEGER,
                                                PRIMARY KEY (kind, name));
                    CREATE INDEX jobs_due ON jobs(kind, priority, user, seq, run_at, project, id) WHERE state = 'available';
                    """
            )
            for record in [busy, done, queued] {
                try db.execute(
                    sql: """
                        INSERT INTO jobs (seq, id, state, priority, user, project, campaign, provider, run_at,
                                          lease_expires_at, reserved, charged, released, pending, record, kind)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                        """,
                    arguments: [
                        record.sequence, record.id.rawValue, record.state.rawValue, record.request.priority.rawValue,
                        record.request.user, record.request.project, record.request.campaign, record.provider,
                        record.runAt.nanoseconds, record.leaseExpiresAt?.nanoseconds, record.ledger.reserved.nanos,
                        record.ledger.charged.nanos, record.ledger.released.nanos, record.ledger.pending.nanos,
                        String(decoding: try JSONEncoder().encode(record), as: UTF8.self), record.request.kind.rawValue,
                    ]
                )
            }
        }
        try old.close()

        let store = try SQLiteJobStore(path: path, now: { Self.start + .seconds(10) })
        for record in [busy, done, queued] {
            let read = try #require(try await store.job(record.id))
            #expect(read == record)
            // Errors compare by code: their words and provider must have come through too.
            #expect(read.errors.map(\.description) == record.errors.map(\.description))
            #expect(read.outcome?.artifact == record.outcome?.artifact)
        }
        // The budgets' totals are the jobs' ledgers, summed when the file was converted.
        #expect(try await store.ledger(in: .project("p")) == busy.ledger)
        #expect(try await store.ledger(in: .project("q")) == done.ledger)
        #expect(try await store.ledger(in: .global).charged == busy.ledger.charged + done.ledger.charged)
        #expect(try await store.ledger(in: .global).pending == busy.ledger.pending && busy.ledger.pending > .zero)
        // The converted jobs go on: the held one completes under its lease, the queued one is leased.
        let lease = JobLease(jobID: busy.id, token: "w:2", expiresAt: Self.start + .seconds(600))
        try await store.complete(lease, outcome: JobOutcome.test)
        #expect(try await store.ledger(in: .project("p")).pending == .zero)
        #expect(try await store.ledger(in: .global).charged == done.ledger.charged + .cents(3) + busy.ledger.charged)
        let finished = try #require(try await store.job(busy.id))
        #expect(finished.state == .succeeded && finished.ledger.balances)
        #expect(finished.ledger.charged == .cents(3) && finished.ledger.released == .cents(72))
        #expect(finished.errors.map(\.description) == busy.errors.map(\.description))
        let next = try await store.lease(limit: 5, owner: "n", duration: .seconds(60), excludingUsers: [])
        #expect(next.map(\.record.id) == [queued.id])
        #expect(try await store.counts() == [.succeeded: 2, .running: 1])
    }

    /// Every field a transition sets reaches its column and comes back, through a reopened file.
    @Test func everyFieldOfABusyJobSurvivesReopeningTheFile() async throws {
        let path = temporaryDirectory().appendingPathComponent("jobs.sqlite").path
        let now: @Sendable () -> Duration = { Self.start }
        do {
            let store = try SQLiteJobStore(path: path, now: now)
            _ = try await store.enqueue([validated(.audio(prompt: "one", user: "u"), id: "a")])
            let job = try await store.lease(limit: 1, owner: "w", duration: .seconds(60), excludingUsers: [])[0]
            try await store.beginAttempt(job.lease, provider: "azure", reserving: .cents(7), idempotentSubmission: true)
            try await store.retry(
                job.lease,
                error: GenerationError(.rateLimited, "slow down", provider: "azure", retryAfter: .seconds(3)),
                after: .zero,
                spendAttempt: false,
                failedProvider: "azure"
            )
            let again = try await store.lease(limit: 1, owner: "w", duration: .seconds(60), excludingUsers: [])[0]
            try await store.beginAttempt(again.lease, provider: "openai", reserving: .cents(3), idempotentSubmission: false)
            try await store.recordSubmission(again.lease, taskID: "t-1")
        }
        let reopened = try SQLiteJobStore(path: path, now: now)
        let record = try #require(try await reopened.jobs(matching: JobQuery()).first)
        #expect(record.state == .running && record.leaseOwner == "w" && record.provider == "openai")
        #expect(record.providerTaskID == "t-1" && record.recoveryPoint == .submitted && record.inCall == true)
        #expect(record.failedProviders == ["azure"] && record.idempotentSubmission == false)
        #expect(record.errors.map(\.description) == [GenerationError(.rateLimited, "slow down", provider: "azure").description])
        #expect(record.errors.first?.retryAfter == .seconds(3))
        #expect(record.ledger.reserved == .cents(10) && record.ledger.released == .cents(7) && record.ledger.pending == .cents(3))
        #expect(record.attempts == 1 && record.enqueuedAt == Self.start)
    }
}

/// Budgets read each scope's money from running totals that triggers keep: after any mix of transitions and
/// purges, each total is what summing the jobs' ledgers (and the purged ones') gives.
@Suite struct SQLiteScopeMoneyTests {
    @Test(arguments: [1, 2, 3])
    func everyScopesTotalIsTheSumOfItsJobsLedgers(seed: UInt64) async throws {
        let path = temporaryDirectory().appendingPathComponent("money.sqlite").path
        let store = try SQLiteJobStore(path: path)
        var random = SplitMix64(seed: seed)
        let requests = (0..<60).map { i in
            validated(
                .audio(prompt: "line \(i)", user: "u\(i % 4)", project: "p\(i % 3)", campaign: "c\(i % 2)"),
                id: "r\(i)"
            )
        }
        _ = try await store.enqueue(requests)
        var finished: [JobID] = []
        for round in 0..<12 {
            for job in try await store.lease(limit: 8, owner: "w", duration: .seconds(60), excludingUsers: []) {
                try await store.beginAttempt(
                    job.lease, provider: "p", reserving: .cents(Int.random(in: 1...50, using: &random))
                )
                switch Int.random(in: 0..<5, using: &random) {
                case 0, 1:
                    var outcome = JobOutcome.test
                    outcome.cost = .cents(Int.random(in: 0...80, using: &random))
                    try await store.complete(job.lease, outcome: outcome)
                    finished.append(job.record.id)
                case 2:
                    try await store.retry(
                        job.lease, error: GenerationError(.transient, "503"), after: .zero,
                        spendAttempt: true, failedProvider: nil
                    )
                case 3:
                    try await store.deadLetter(job.lease, error: GenerationError(.invalidRequest, "no"))
                    finished.append(job.record.id)
                default:
                    // Its call went out and its answer is awaited: the reservation stays pending.
                    try await store.recordSubmission(job.lease, taskID: "t-\(round)")
                }
            }
            if round % 4 == 3, !finished.isEmpty {
                _ = try await store.purge(Array(finished.prefix(3)))
                finished.removeFirst(min(3, finished.count))
            }
            try await expectTotalsMatch(store, path: path)
        }
        #expect(try await store.ledger(in: .global).charged > .zero)
    }

    /// Each scope's ledger from the store against a sum over the file's jobs and purged ledgers.
    func expectTotalsMatch(_ store: SQLiteJobStore, path: String) async throws {
        let file = try DatabaseQueue(path: path, configuration: { var c = Configuration(); c.readonly = true; return c }())
        let sums = try await file.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT kind, name, SUM(reserved), SUM(charged), SUM(released), SUM(pending) FROM (
                        SELECT 'global' AS kind, '*' AS name, reserved, charged, released, pending FROM jobs
                        UNION ALL SELECT 'global', '*', reserved, charged, released, pending FROM purged_ledgers
                        UNION ALL SELECT 'project', project, reserved, charged, released, pending FROM jobs
                        UNION ALL SELECT 'project', project, reserved, charged, released, pending FROM purged_ledgers
                        UNION ALL SELECT 'campaign', campaign, reserved, charged, released, pending FROM jobs
                        UNION ALL SELECT 'campaign', campaign, reserved, charged, released, pending FROM purged_ledgers
                    ) GROUP BY kind, name
                    """
            ).map { row -> (BudgetScope, CostLedger) in
                var ledger = CostLedger()
                ledger.reserved = Money(nanos: row[2])
                ledger.charged = Money(nanos: row[3])
                ledger.released = Money(nanos: row[4])
                ledger.pending = Money(nanos: row[5])
                return (BudgetScope(kind: BudgetScope.Kind(rawValue: row[0])!, name: row[1]), ledger)
            }
        }
        try file.close()
        #expect(sums.count == 1 + 3 + 2)
        for (scope, summed) in sums {
            #expect(try await store.ledger(in: scope) == summed, "\(scope)")
        }
    }
}
