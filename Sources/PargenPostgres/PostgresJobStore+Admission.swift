import Foundation
public import Pargen
import PostgresNIO

/// The shared admission state: claim a job only in the transaction that admits its call.
///
/// Exactness: each limit key (a provider, a user, a project) has a row in `limit_keys`; a claim locks the rows of
/// its call's keys (in key order, so two claims cannot deadlock), reads the counts from `admissions`, decides with
/// ``SharedLimitState/decide(_:at:)``, and inserts its admission before it commits. Two workers admitting calls
/// that share a key are thereby serialised, and every decision sees every admission committed before it: no
/// window, slot, bucket or burst is exceeded by calls that workers admit together. All times are the database's.
extension PostgresJobStore: AdmittingJobStore {
    public func peek(
        limit: Int,
        excludingUsers: Set<String>,
        excludingProjects: Set<String>,
        excludingJobs: Set<JobID>,
        kinds: Set<GenerationKind>
    ) async throws -> [JobRecord] {
        guard limit > 0, !kinds.isEmpty else { return [] }
        let clock = injectedNow
        let kindNames = kinds.map(\.rawValue).sorted()
        let excluded = excludingUsers.sorted()
        let skipped = excludingJobs.map(\.rawValue)
        let projects = excludingProjects.sorted()
        return try await run("look at the queue") { [quoted] in
            let rows = try await self.allRows(
                """
                WITH clock AS (SELECT COALESCE(\(clock)::bigint, \(unescaped: quoted).now_ns()) AS now),
                served AS (
                    SELECT user_name, COUNT(*) AS calls FROM \(unescaped: quoted).admissions, clock
                    WHERE admitted_at > clock.now - 60000000000 GROUP BY user_name
                )
                SELECT \(unescaped: StoredJob.columns) FROM (
                    SELECT j.*, ROW_NUMBER() OVER (PARTITION BY priority, user_name ORDER BY seq)
                                + COALESCE(served.calls, 0) AS turn,
                           MIN(seq) OVER (PARTITION BY priority, user_name) AS first_seq
                    FROM \(unescaped: quoted).jobs j CROSS JOIN clock LEFT JOIN served USING (user_name)
                    WHERE state = 'available' AND run_at <= clock.now
                      AND kind = ANY(\(kindNames)::text[]) AND NOT (user_name = ANY(\(excluded)::text[]))
                      AND NOT (id = ANY(\(skipped)::text[])) AND NOT (project = ANY(\(projects)::text[]))
                ) ranked
                ORDER BY priority DESC, turn, first_seq
                LIMIT \(limit)
                """,
                logger: self.logger
            )
            var records: [JobRecord] = []
            for row in try rows.decode(StoredJob.Row.self) { records.append(try StoredJob(row).record) }
            return records
        }
    }

    public func claim(_ id: JobID, owner: String, duration: Duration, for call: SharedCall?) async throws -> ClaimDecision {
        let clock = injectedNow
        // One token for every try of this claim: a try that finds the job already under it is looking at its own
        // earlier try, which committed while its reply was lost, and takes that claim instead of calling it gone.
        let token = "\(owner):\(UUID().uuidString)"
        return try await run("claim a job") { [quoted] in
            try await self.transaction { connection in
                // The job first, skipping it if another worker is claiming it right now; with it, the provider's
                // cooldown, which is all that a call without shared limits waits for.
                var found: (StoredJob, Int64, Int64?)?
                for row in try await connection.allRows(
                    """
                    SELECT \(unescaped: StoredJob.columns), COALESCE(\(clock)::bigint, \(unescaped: quoted).now_ns()),
                        (SELECT cooldown_until FROM \(unescaped: quoted).limit_keys WHERE key = \("provider:" + (call?.provider ?? "")))
                    FROM \(unescaped: quoted).jobs
                    WHERE id = \(id.rawValue)
                      AND (state = 'available' AND run_at <= COALESCE(\(clock)::bigint, \(unescaped: quoted).now_ns())
                           OR state = 'running' AND lease_token = \(token))
                    FOR UPDATE OF jobs SKIP LOCKED
                    """,
                    logger: self.logger
                ).decode((String, String, String?, String?, Int64?, Int64, Int64, Int64?).self) {
                    let (timed, cooldown) = ((row.0, row.1, row.2, row.3, row.4, row.5, row.6), row.7)
                    let (job, now) = try StoredJob.timed(timed)
                    found = (job, now, cooldown)
                }
                guard let (stored, nowNanos, cooldown) = found else { return ClaimDecision.gone }
                if stored.record.state == .running, let expires = stored.record.leaseExpiresAt {
                    // Claimed by an earlier try of this call, its admission counted then.
                    return ClaimDecision.claimed(LeasedJob(record: stored.record, lease: JobLease(jobID: id, token: token, expiresAt: expires)))
                }
                let now = Duration.nanoseconds(nowNanos)
                // What the admission moves: the project bucket, and the call's row in the admissions log.
                var tat: Duration?
                var admitted = false
                if let call, !call.hasSharedLimits {
                    // Nothing to count: only a provider's cooldown (from a 429 seen by any worker) holds it back.
                    if let cooldown, cooldown > nowNanos {
                        return ClaimDecision.wait(.nanoseconds(cooldown - nowNanos), limit: .providerCooldown)
                    }
                } else if let call {
                    let limits = try await self.readLimits(call, now: nowNanos, on: connection)
                    switch limits.decide(call, at: now) {
                    case .wait(let wait, let limit, let startsBurst):
                        if startsBurst {
                            try await connection.allRows(
                                "UPDATE \(unescaped: quoted).limit_keys SET cooldown_until = \(nowNanos + call.limits.burstCooldown.nanoseconds) WHERE key = \("burst:" + call.project)",
                                logger: self.logger
                            )
                        }
                        return ClaimDecision.wait(wait, limit: limit)
                    case .admit(let moved):
                        tat = moved
                        admitted = true
                    }
                }
                // The bucket, the admission and the lease in one statement.
                let expires = nowNanos + duration.nanoseconds
                try await connection.allRows(
                    """
                    WITH bucket AS (
                        UPDATE \(unescaped: quoted).limit_keys SET tat = \(tat?.nanoseconds)
                        WHERE key = \("project:" + (call?.project ?? "")) AND \(tat?.nanoseconds)::bigint IS NOT NULL
                    ),
                    admission AS (
                        INSERT INTO \(unescaped: quoted).admissions
                            (job_id, worker, provider, user_name, project, holds_slot, submits, admitted_at)
                        SELECT \(id.rawValue), \(owner), \(call?.provider ?? ""), \(call?.user ?? ""), \(call?.project ?? ""),
                               \(call?.holdsSlot ?? false), \(call?.submits ?? false), \(nowNanos)
                        WHERE \(admitted)
                    )
                    UPDATE \(unescaped: quoted).jobs
                    SET state = 'running', lease_owner = \(owner), lease_token = \(token), lease_expires_at = \(expires),
                        version = version + 1
                    WHERE id = \(id.rawValue)
                    """,
                    logger: self.logger
                )
                var record = stored.record
                let lease = JobLease(jobID: id, token: token, expiresAt: .nanoseconds(expires))
                record.grantLease(token: token, owner: owner, expiresAt: lease.expiresAt)
                return ClaimDecision.claimed(LeasedJob(record: record, lease: lease))
            }
        }
    }

    /// Locks the call's limit keys (creating them on first use) and reads the counts its decision needs.
    private func readLimits(_ call: SharedCall, now: Int64, on connection: PostgresConnection) async throws -> SharedLimitState {
        let keys = ["provider:" + call.provider, "user:" + call.user, "project:" + call.project, "burst:" + call.project].sorted()
        let lock: PostgresQuery =
            "SELECT key, cooldown_until, tat FROM \(unescaped: quoted).limit_keys WHERE key = ANY(\(keys)::text[]) ORDER BY key FOR UPDATE"
        var locked = try await connection.allRows(lock, logger: logger)
        if locked.count < keys.count {
            // A key's first use: create the missing rows, then lock them all (in key order, as every claim does).
            try await connection.allRows(
                "INSERT INTO \(unescaped: quoted).limit_keys (key) SELECT unnest(\(keys)::text[]) ON CONFLICT (key) DO NOTHING",
                logger: logger
            )
            locked = try await connection.allRows(lock, logger: logger)
        }
        var state = SharedLimitState()
        for (key, cooldown, tat) in try locked.decode((String, Int64?, Int64?).self) {
            if key.hasPrefix("provider:") { state.providerCooldownUntil = cooldown.map { .nanoseconds($0) } }
            if key.hasPrefix("burst:") { state.burstCooldownUntil = cooldown.map { .nanoseconds($0) } }
            if key.hasPrefix("project:") { state.projectTAT = tat.map { .nanoseconds($0) } }
        }
        let span = (call.quota.window + call.quota.margin).nanoseconds
        let minute = Duration.seconds(60).nanoseconds
        let burst = call.limits.burstWindow.nanoseconds
        for (windowUsed, oldestDated, slots, userUsed, userOldest, burstUsed) in try await connection.allRows(
            """
            SELECT
                (SELECT count(*) FROM \(unescaped: quoted).admissions
                 WHERE provider = \(call.provider) AND submits
                   AND ((arrived_at IS NULL AND finished_at IS NULL)
                        OR COALESCE(arrived_at, finished_at) > \(now) - \(span))),
                (SELECT min(COALESCE(arrived_at, finished_at)) FROM \(unescaped: quoted).admissions
                 WHERE provider = \(call.provider) AND submits
                   AND COALESCE(arrived_at, finished_at) > \(now) - \(span)),
                (SELECT count(*) FROM \(unescaped: quoted).admissions
                 WHERE provider = \(call.provider) AND holds_slot AND finished_at IS NULL),
                (SELECT count(*) FROM \(unescaped: quoted).admissions
                 WHERE user_name = \(call.user) AND admitted_at > \(now) - \(minute)),
                (SELECT min(admitted_at) FROM \(unescaped: quoted).admissions
                 WHERE user_name = \(call.user) AND admitted_at > \(now) - \(minute)),
                (SELECT count(*) FROM \(unescaped: quoted).admissions
                 WHERE project = \(call.project) AND admitted_at > \(now) - \(burst))
            """,
            logger: logger
        ).decode((Int, Int64?, Int, Int, Int64?, Int).self) {
            state.providerWindowUsed = windowUsed
            state.providerOldestDated = oldestDated.map { .nanoseconds($0) }
            state.slotsUsed = slots
            state.userUsed = userUsed
            state.userOldest = userOldest.map { .nanoseconds($0) }
            state.burstUsed = burstUsed
        }
        return state
    }

    public func coolDown(provider: String, for duration: Duration) async throws {
        let clock = injectedNow
        _ = try await run("cool a provider down") { [quoted] in
            try await self.allRows(
                """
                INSERT INTO \(unescaped: quoted).limit_keys (key, cooldown_until)
                VALUES (\("provider:" + provider), COALESCE(\(clock)::bigint, \(unescaped: quoted).now_ns()) + \(duration.nanoseconds))
                ON CONFLICT (key) DO UPDATE
                SET cooldown_until = GREATEST(COALESCE(limit_keys.cooldown_until, 0), EXCLUDED.cooldown_until)
                """,
                logger: self.logger
            )
        }
    }
}
