import Foundation
import Pargen
import PostgresNIO
import Synchronization

// Group commit for the transitions of jobs (begin an attempt, record a submission, complete, retry, dead-letter,
// release, and a requeue or a cancellation, which no lease fences). A worker with a hundred calls in flight makes hundreds of such transitions a second,
// each of them a read and a fenced write. Made one by one, each costs two round trips and one commit (a WAL flush);
// made together, the transitions that wait while a batch is under way cost two round trips and one commit for the
// whole next batch. A transition that finds no batch under way starts one at once, so a lone transition waits for
// nothing.
//
// Each transition in a batch is judged on its own, exactly as a lone one is: read with the batch, fenced by its
// lease token (a held job's) and by its row's version, marked with its own change token (so a batch whose reply was lost and that
// is run again finds which of its changes committed), and answered with its own outcome. A transition whose row
// changed between the batch's read and its write is read and applied again in the next round, as a lone one is.

/// How a ``PostgresJobStore`` writes the transitions of held jobs: up to `limit` in one statement, and up to
/// `concurrent` such statements at once.
public struct TransitionBatching: Sendable {
    /// The most transitions one statement writes.
    public var limit: Int
    /// The most statements under way at once (each on a pooled connection).
    public var concurrent: Int

    public init(limit: Int, concurrent: Int) {
        self.limit = limit
        self.concurrent = concurrent
    }

    /// Up to 100 transitions a statement, 4 statements at once.
    public static let grouped = TransitionBatching(limit: 100, concurrent: 4)
    /// One transition a statement, up to 40 at once: how the store wrote before it grouped them (a baseline for
    /// the benchmarks).
    public static let oneByOne = TransitionBatching(limit: 1, concurrent: 40)
}

extension PostgresJobStore {
    /// A transition of a held job waiting for its batch.
    struct PendingChange: Sendable {
        let job: JobID
        /// The lease the change is fenced by; `nil` for a change of a job that nobody need hold (requeue, cancel).
        let lease: JobLease?
        let operation: String
        let answeredAgo: Duration
        /// Made once per transition: a batch run again finds it on the row if an earlier try committed.
        let token: String
        let change: @Sendable (inout JobRecord, Duration) throws -> Void
        let continuation: CheckedContinuation<Void, any Error>
    }

    /// The transitions waiting for a batch, and how many batches are under way.
    package final class ChangeQueue: Sendable {
        /// The most transitions one batch carries.
        let batchLimit: Int
        /// The most batches under way at once: each holds one pooled connection while it writes.
        let concurrentBatches: Int

        init(_ batching: TransitionBatching) {
            batchLimit = max(1, batching.limit)
            concurrentBatches = max(1, batching.concurrent)
        }

        private let state = Mutex((waiting: [PendingChange](), running: 0, largest: 0))

        /// The most transitions one batch has carried so far.
        package var largestBatch: Int { state.withLock { $0.largest } }

        /// Adds `change`; returns whether the caller must start a batch (none is running that will take it).
        func add(_ change: PendingChange) -> Bool {
            state.withLock { state in
                state.waiting.append(change)
                guard state.running < concurrentBatches else { return false }
                state.running += 1
                return true
            }
        }

        /// The next batch: up to `batchLimit` waiting transitions, at most one per job (a job's second
        /// transition waits for its first to be answered), oldest first. Empty when nothing waits, and the
        /// caller's batch runner then ends.
        func next() -> [PendingChange] {
            state.withLock { state in
                var batch: [PendingChange] = []
                var jobs: Set<JobID> = []
                var left: [PendingChange] = []
                // Looks no further than a full batch: what lies beyond it keeps its order, untouched.
                var index = 0
                while index < state.waiting.count, batch.count < batchLimit {
                    let change = state.waiting[index]
                    if jobs.insert(change.job).inserted { batch.append(change) } else { left.append(change) }
                    index += 1
                }
                left.append(contentsOf: state.waiting[index...])
                state.waiting = left
                if batch.isEmpty { state.running -= 1 }
                state.largest = max(state.largest, batch.count)
                return batch
            }
        }
    }

    /// Each transition's outcome in a batch, `nil` until it is settled.
    final class Outcomes: Sendable {
        let state: Mutex<[Result<Void, any Error>?]>
        init(count: Int) { state = Mutex(Array(repeating: nil, count: count)) }
    }

    /// Applies `change` to job `id`, written with the other transitions waiting at the same time
    /// (``ChangeQueue``): fenced by the row's version and, for a held job, by `lease`'s token.
    func change(
        _ id: JobID,
        _ operation: String,
        lease: JobLease?,
        answeredAgo: Duration = .zero,
        _ change: @escaping @Sendable (inout JobRecord, Duration) throws -> Void
    ) async throws {
        try await withCheckedThrowingContinuation { continuation in
            let pending = PendingChange(
                job: id,
                lease: lease,
                operation: operation,
                answeredAgo: answeredAgo,
                token: UUID.random().uuidString,
                change: change,
                continuation: continuation
            )
            if changes.add(pending) {
                Task { await self.runBatches() }
            }
        }
    }

    /// Runs batches until no transition waits.
    private func runBatches() async {
        while true {
            let batch = changes.next()
            if batch.isEmpty { return }
            await runBatch(batch)
        }
    }

    /// Runs one batch and answers each of its transitions.
    private func runBatch(_ batch: [PendingChange]) async {
        let outcomes = Outcomes(count: batch.count)
        let operation = batch.count == 1 ? batch[0].operation : "change \(batch.count) jobs"
        do {
            try await run(operation) {
                try await self.applyBatch(batch, outcomes: outcomes)
            }
        } catch {
            outcomes.state.withLock { outcomes in
                for index in outcomes.indices where outcomes[index] == nil { outcomes[index] = .failure(error) }
            }
        }
        let settled = outcomes.state.withLock { $0 }
        for (pending, outcome) in zip(batch, settled) {
            pending.continuation.resume(with: outcome ?? .failure(StoreError(.unavailable, "PostgreSQL could not \(pending.operation)")))
        }
    }

    /// Reads the batch's jobs, applies each transition that still holds its lease, and writes them back in one
    /// statement; rounds again for those whose rows changed in between. Sets an outcome for each transition it
    /// settles; run again after a lost reply, it skips those and finds its committed changes by their tokens.
    private func applyBatch(_ batch: [PendingChange], outcomes: Outcomes) async throws {
        let clock = injectedNow
        for _ in 0..<16 {
            let open = outcomes.state.withLock { outcomes in batch.indices.filter { outcomes[$0] == nil } }
            if open.isEmpty { return }
            let ids = open.map { batch[$0].job.rawValue }
            let tokens = open.map { batch[$0].token }
            // Each row read on its own: a record that cannot be read fails its own transition, not the batch's.
            var loaded: [String: Result<(job: StoredJob, now: Duration, applied: Bool), any Error>] = [:]
            for row in try await allRows(
                """
                SELECT id, \(unescaped: StoredJob.columns), COALESCE(\(clock)::bigint, \(unescaped: quoted).now_ns()),
                       last_change IS NOT NULL AND last_change = ANY(\(tokens)::text[])
                FROM \(unescaped: quoted).jobs WHERE id = ANY(\(ids)::text[])
                """,
                logger: logger
            ) {
                let id = try PostgresRandomAccessRow(row)[0].decode(String.self, context: .default)
                loaded[id] = Result {
                    let (_, text, state, token, owner, expiresAt, version, time, applied) = try row.decode(
                        (String, String, String, String?, String?, Int64?, Int64, Int64, Bool).self
                    )
                    let job = try StoredJob(text: text, state: state, token: token, owner: owner, expiresAt: expiresAt, version: version)
                    return (job, .nanoseconds(time), applied)
                }
            }
            var settled: [(Int, Result<Void, any Error>)] = []
            var writes: [(index: Int, job: StoredJob)] = []
            for index in open {
                let pending = batch[index]
                let stored: StoredJob, now: Duration, applied: Bool
                switch loaded[pending.job.rawValue] {
                case nil:
                    settled.append((index, .failure(StoreError(.notFound, "no job \(pending.job)"))))
                    continue
                case .failure(let error):
                    settled.append((index, .failure(error)))
                    continue
                case .success(let row):
                    (stored, now, applied) = row
                }
                // This transition's own token: an earlier try of the batch committed it, though its reply was lost.
                if applied {
                    settled.append((index, .success(())))
                    continue
                }
                if let lease = pending.lease, !stored.record.isHeld(by: lease) {
                    settled.append((index, .failure(StoreError(.leaseLost, "the lease on \(lease.jobID) is no longer held"))))
                    continue
                }
                var job = stored
                do {
                    try pending.change(&job.record, now)
                    writes.append((index, job))
                } catch {
                    settled.append((index, .failure(error)))
                }
            }
            outcomes.state.withLock { outcomes in for (index, outcome) in settled { outcomes[index] = outcome } }
            if writes.isEmpty { continue }
            let saved = try await client.withConnection { connection in
                try await self.saveAll(
                    writes.map { (job: $0.job, change: batch[$0.index].token, answeredAgo: batch[$0.index].answeredAgo) },
                    on: connection
                )
            }
            try loseReplyIfAsked()
            outcomes.state.withLock { outcomes in
                for write in writes where saved.contains(write.job.record.id.rawValue) {
                    outcomes[write.index] = Result<Void, any Error>.success(())
                }
            }
        }
        let stuck = outcomes.state.withLock { outcomes in batch.indices.filter { outcomes[$0] == nil } }
        outcomes.state.withLock { outcomes in
            for index in stuck {
                outcomes[index] = .failure(StoreError(
                    .unavailable,
                    "job \(batch[index].job) kept changing while this worker tried to \(batch[index].operation)"
                ))
            }
        }
    }

    /// Writes each job back if its version is still the one read, in one statement; announces any that became
    /// available, and dates and ends their calls' shared admissions. `change` names the change each applies
    /// (a retry finds it on the row, ``change(_:_:lease:answeredAgo:_:)``); `answeredAgo` says how long before
    /// now the provider answered the call (never later than now, never before the call was admitted).
    ///
    /// - Returns: The ids of the jobs written.
    func saveAll(
        _ writes: [(job: StoredJob, change: String?, answeredAgo: Duration)],
        on connection: PostgresConnection
    ) async throws -> Set<String> {
        var columns = ChangeColumns()
        for write in writes { try columns.append(write.job, change: write.change, answeredAgo: write.answeredAgo) }
        let now = injectedNow
        let rows = try await connection.allRows(
            """
            WITH input AS (
                SELECT * FROM unnest(
                    \(columns.id)::text[], \(columns.version)::bigint[], \(columns.state)::text[],
                    \(columns.provider)::text[], \(columns.hasProvider)::boolean[], \(columns.runAt)::bigint[],
                    \(columns.leaseToken)::text[], \(columns.hasToken)::boolean[],
                    \(columns.leaseOwner)::text[], \(columns.hasOwner)::boolean[],
                    \(columns.leaseExpiresAt)::bigint[], \(columns.hasExpiry)::boolean[],
                    \(columns.finishedAt)::bigint[], \(columns.hasFinished)::boolean[],
                    \(columns.reserved)::bigint[], \(columns.charged)::bigint[], \(columns.released)::bigint[],
                    \(columns.pending)::bigint[], \(columns.record)::text[], \(columns.change)::text[],
                    \(columns.hasChange)::boolean[], \(columns.ends)::boolean[], \(columns.answered)::boolean[],
                    \(columns.ago)::bigint[]
                ) AS i(id, version, state, provider, has_provider, run_at, lease_token, has_token, lease_owner,
                       has_owner, lease_expires_at, has_expiry, finished_at, has_finished, reserved, charged,
                       released, pending, record, change, has_change, ends, answered, ago)
            ),
            saved AS (
                UPDATE \(unescaped: quoted).jobs AS j
                SET state = i.state, provider = CASE WHEN i.has_provider THEN i.provider END, run_at = i.run_at,
                    lease_token = CASE WHEN i.has_token THEN i.lease_token END,
                    lease_owner = CASE WHEN i.has_owner THEN i.lease_owner END,
                    lease_expires_at = CASE WHEN i.has_expiry THEN i.lease_expires_at END,
                    finished_at = CASE WHEN i.has_finished THEN i.finished_at END,
                    reserved = i.reserved, charged = i.charged, released = i.released, pending = i.pending,
                    record = i.record::jsonb, last_change = CASE WHEN i.has_change THEN i.change END,
                    version = j.version + 1
                FROM input AS i
                WHERE j.id = i.id AND j.version = i.version
                RETURNING j.id, j.state
            ),
            announced AS (
                SELECT pg_notify(\(channel), 'available') FROM (SELECT 1 FROM saved WHERE state = 'available' LIMIT 1) AS a
            ),
            -- Each call's shared admission: dated by the provider's answer (a recorded task id, or the end of the
            -- call, less how long before it the answer came), and finished, freeing its slot, when the call ends.
            dated AS (
                UPDATE \(unescaped: quoted).admissions AS a
                SET arrived_at = COALESCE(
                        a.arrived_at,
                        GREATEST(a.admitted_at, COALESCE(\(now)::bigint, \(unescaped: quoted).now_ns()) - i.ago)
                    ),
                    finished_at = CASE WHEN i.ends THEN COALESCE(\(now)::bigint, \(unescaped: quoted).now_ns()) END
                FROM input AS i JOIN saved AS s ON s.id = i.id
                WHERE a.job_id = i.id AND a.finished_at IS NULL AND (i.ends OR i.answered)
            )
            SELECT id, (SELECT count(*) FROM announced) FROM saved
            """,
            logger: logger
        )
        return Set(try rows.decode((String, Int).self).map(\.0))
    }
}

/// The columns of a batch of transitions, as arrays for `unnest` (a nullable column with a flag beside it).
private struct ChangeColumns {
    var id: [String] = []
    var version: [Int64] = []
    var state: [String] = []
    var provider: [String] = []
    var hasProvider: [Bool] = []
    var runAt: [Int64] = []
    var leaseToken: [String] = []
    var hasToken: [Bool] = []
    var leaseOwner: [String] = []
    var hasOwner: [Bool] = []
    var leaseExpiresAt: [Int64] = []
    var hasExpiry: [Bool] = []
    var finishedAt: [Int64] = []
    var hasFinished: [Bool] = []
    var reserved: [Int64] = []
    var charged: [Int64] = []
    var released: [Int64] = []
    var pending: [Int64] = []
    var record: [String] = []
    var change: [String] = []
    var hasChange: [Bool] = []
    var ends: [Bool] = []
    var answered: [Bool] = []
    var ago: [Int64] = []

    mutating func append(_ job: StoredJob, change token: String?, answeredAgo: Duration) throws {
        let record = job.record
        id.append(record.id.rawValue)
        version.append(job.version)
        state.append(record.state.rawValue)
        provider.append(record.provider ?? "")
        hasProvider.append(record.provider != nil)
        runAt.append(record.runAt.nanoseconds)
        leaseToken.append(record.leaseToken ?? "")
        hasToken.append(record.leaseToken != nil)
        leaseOwner.append(record.leaseOwner ?? "")
        hasOwner.append(record.leaseOwner != nil)
        leaseExpiresAt.append(record.leaseExpiresAt?.nanoseconds ?? 0)
        hasExpiry.append(record.leaseExpiresAt != nil)
        finishedAt.append(record.finishedAt?.nanoseconds ?? 0)
        hasFinished.append(record.finishedAt != nil)
        reserved.append(record.ledger.reserved.nanos)
        charged.append(record.ledger.charged.nanos)
        released.append(record.ledger.released.nanos)
        pending.append(record.ledger.pending.nanos)
        self.record.append(try StoredJob.encode(record))
        change.append(token ?? "")
        hasChange.append(token != nil)
        ends.append(record.state != .running)
        answered.append(record.providerTaskID != nil)
        // Never later than now, and never before the call was admitted (the statement's GREATEST).
        ago.append(max(answeredAgo, .zero).nanoseconds)
    }
}
