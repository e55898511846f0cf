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
