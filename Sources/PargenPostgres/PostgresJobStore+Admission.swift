import Foundation
public import Pargen
import PostgresNIO

/// The shared admission state: claim a job only in the transaction that admits its call.
///
/// Exactness: each limit key (a provider, a user, a project) has a row in `limit_keys`; a claim (of one job or of
/// a batch) locks the rows of its calls' keys (in key order, so two claims cannot deadlock), reads the counts from
/// `admissions`, decides each call in turn with ``SharedLimitBook`` (``SharedLimitState/decide(_:at:)`` on counts
/// that include the calls admitted before it), and inserts the admissions before it commits. Two workers
/// admitting calls that share a key are thereby serialised, and every decision sees every admission committed
/// before it: no window, slot, bucket or burst is exceeded by calls that workers admit together. All times are
/// the database's.
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
        return try await run("look at the queue", abandonedOnCancel: true) { [quoted] in
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
        try await claim([ClaimRequest(id: id, call: call)], owner: owner, duration: duration)[0]
    }

    public func claim(_ requests: [ClaimRequest], owner: String, duration: Duration) async throws -> [ClaimDecision] {
        guard !requests.isEmpty else { return [] }
        let clock = injectedNow
        // One token per job for every try of this claim: a try that finds a job already under its token is looking
        // at its own earlier try, which committed while its reply was lost, and takes that claim instead of calling
        // the job gone.
        let tokens = requests.map { _ in "\(owner):\(UUID.random().uuidString)" }
        return try await run("claim jobs", abandonedOnCancel: true) { [quoted] in
            try await self.transaction { connection in
                // The jobs first, skipping those another worker is claiming right now.
                var found: [JobID: StoredJob] = [:]
                var nowNanos: Int64 = 0
                for row in try await connection.allRows(
                    """
                    SELECT \(unescaped: StoredJob.columns), COALESCE(\(clock)::bigint, \(unescaped: quoted).now_ns())
                    FROM \(unescaped: quoted).jobs
                    WHERE id = ANY(\(requests.map(\.id.rawValue))::text[])
                      AND (state = 'available' AND run_at <= COALESCE(\(clock)::bigint, \(unescaped: quoted).now_ns())
                           OR state = 'running' AND lease_token = ANY(\(tokens)::text[]))
                    FOR UPDATE SKIP LOCKED
                    """,
                    logger: self.logger
                ).decode(StoredJob.TimedRow.self) {
                    let (job, time) = try StoredJob.timed(row)
                    found[job.record.id] = job
                    nowNanos = time
                }
                guard !found.isEmpty else { return requests.map { _ in ClaimDecision.gone } }
                let now = Duration.nanoseconds(nowNanos)
                let fresh = requests.filter { found[$0.id]?.record.state == .available }
                var book = try await self.readLimits(
                    fresh.compactMap(\.call),
                    now: nowNanos,
                    on: connection
                )
                let read = book
                var decisions: [ClaimDecision] = []
                var leased: [(id: String, token: String)] = []
                var admissions: [(SharedCall, JobID)] = []
                var startedBursts: Set<String> = []
                let expires = nowNanos + duration.nanoseconds
                for (request, token) in zip(requests, tokens) {
                    guard let stored = found[request.id] else {
                        decisions.append(.gone)
                        continue
                    }
                    if stored.record.state == .running {
                        // Claimed by an earlier try of this call, its admission counted then.
                        let lease = JobLease(jobID: request.id, token: token, expiresAt: stored.record.leaseExpiresAt ?? .nanoseconds(expires))
                        decisions.append(.claimed(LeasedJob(record: stored.record, lease: lease)))
                        continue
                    }
                    if let call = request.call {
                        if !call.hasSharedLimits {
                            // Nothing to count: only a provider's cooldown (from a 429 seen by any worker) holds it back.
                            if let until = book.providers[call.provider]?.cooldownUntil, until > now {
                                decisions.append(.wait(until - now, limit: .providerCooldown))
                                continue
                            }
                        } else {
                            switch book.decide(call, at: now) {
                            case .wait(let wait, let limit, let startsBurst):
                                if startsBurst { startedBursts.insert(call.project) }
                                decisions.append(.wait(wait, limit: limit))
                                continue
                            case .admit:
                                admissions.append((call, request.id))
                            }
                        }
                    }
                    leased.append((request.id.rawValue, token))
                    var record = stored.record
                    let lease = JobLease(jobID: request.id, token: token, expiresAt: .nanoseconds(expires))
                    record.grantLease(token: token, owner: owner, expiresAt: lease.expiresAt)
                    decisions.append(.claimed(LeasedJob(record: record, lease: lease)))
                }
                guard !leased.isEmpty || !startedBursts.isEmpty else { return decisions }
                // What the decisions moved, in one statement: the buckets, the bursts found used up, the
                // admissions' rows and the leases.
                let buckets = book.projects.compactMap { project, counts -> (String, Int64)? in
                    guard let tat = counts.tat, tat != read.projects[project]?.tat else { return nil }
                    return ("project:" + project, tat.nanoseconds)
                }
                let bursts = startedBursts.sorted().map { project in
                    ("burst:" + project, book.projects[project]?.burstCooldownUntil?.nanoseconds ?? nowNanos)
                }
                try await connection.allRows(
                    """
                    WITH buckets AS (
                        UPDATE \(unescaped: quoted).limit_keys k SET tat = b.tat
                        FROM unnest(\(buckets.map(\.0))::text[], \(buckets.map(\.1))::bigint[]) AS b(key, tat)
                        WHERE k.key = b.key
                    ),
                    bursts AS (
                        UPDATE \(unescaped: quoted).limit_keys k SET cooldown_until = b.until
                        FROM unnest(\(bursts.map(\.0))::text[], \(bursts.map(\.1))::bigint[]) AS b(key, until)
                        WHERE k.key = b.key
                    ),
                    admitted AS (
                        INSERT INTO \(unescaped: quoted).admissions
                            (job_id, worker, provider, user_name, project, holds_slot, submits, admitted_at)
                        SELECT a.job_id, \(owner), a.provider, a.user_name, a.project, a.holds_slot, a.submits, \(nowNanos)
                        FROM unnest(
                            \(admissions.map(\.1.rawValue))::text[], \(admissions.map(\.0.provider))::text[],
                            \(admissions.map(\.0.user))::text[], \(admissions.map(\.0.project))::text[],
                            \(admissions.map(\.0.holdsSlot))::boolean[], \(admissions.map(\.0.submits))::boolean[]
                        ) AS a(job_id, provider, user_name, project, holds_slot, submits)
                    )
                    UPDATE \(unescaped: quoted).jobs j
                    SET state = 'running', lease_owner = \(owner), lease_token = l.token, lease_expires_at = \(expires),
                        lease_nanos = \(duration.nanoseconds),
                        version = j.version + 1
                    FROM unnest(\(leased.map(\.id))::text[], \(leased.map(\.token))::text[]) AS l(id, token)
                    WHERE j.id = l.id
                    """,
                    logger: self.logger
                )
                return decisions
            }
        }
    }

    /// Locks the limit keys of `calls` (creating them on first use) and reads the counts their decisions need;
    /// the providers' cooldowns are read for every call, counted or not.
    private func readLimits(_ calls: [SharedCall], now: Int64, on connection: PostgresConnection) async throws -> SharedLimitBook {
        var book = SharedLimitBook()
        guard !calls.isEmpty else { return book }
        let counted = calls.filter(\.hasSharedLimits)
        var keys = Set(calls.map { "provider:" + $0.provider })
        for call in counted {
            keys.formUnion(["user:" + call.user, "project:" + call.project, "burst:" + call.project])
        }
        let sorted = keys.sorted()
        // Only counted calls lock (in key order, as every claim does); a call that counts nothing reads its
        // provider's cooldown as it stands.
        let lock: PostgresQuery =
            counted.isEmpty
            ? "SELECT key, cooldown_until, tat FROM \(unescaped: quoted).limit_keys WHERE key = ANY(\(sorted)::text[])"
            : "SELECT key, cooldown_until, tat FROM \(unescaped: quoted).limit_keys WHERE key = ANY(\(sorted)::text[]) ORDER BY key FOR UPDATE"
        var rows = try await connection.allRows(lock, logger: logger)
        if !counted.isEmpty, rows.count < sorted.count {
            // A key's first use: create the missing rows, then lock them all.
            try await connection.allRows(
                "INSERT INTO \(unescaped: quoted).limit_keys (key) SELECT unnest(\(sorted)::text[]) ON CONFLICT (key) DO NOTHING",
                logger: logger
            )
            rows = try await connection.allRows(lock, logger: logger)
        }
        for (key, cooldown, tat) in try rows.decode((String, Int64?, Int64?).self) {
            if key.hasPrefix("provider:") {
                book.providers[String(key.dropFirst("provider:".count)), default: .init()].cooldownUntil = cooldown.map { .nanoseconds($0) }
            } else if key.hasPrefix("burst:") {
                book.projects[String(key.dropFirst("burst:".count)), default: .init()].burstCooldownUntil = cooldown.map { .nanoseconds($0) }
            } else if key.hasPrefix("project:") {
                book.projects[String(key.dropFirst("project:".count)), default: .init()].tat = tat.map { .nanoseconds($0) }
            }
        }
        guard !counted.isEmpty else { return book }
        // The counts, after the locks: each provider's window (its span is its window and margin) and slots, each
        // user's last minute, each project's burst window.
        var spans: [String: Int64] = [:]
        for call in counted { spans[call.provider] = (call.quota.window + call.quota.margin).nanoseconds }
        let providers = spans.keys.sorted()
        let users = Set(counted.map(\.user)).sorted()
        let projects = Set(counted.map(\.project)).sorted()
        let minute = Duration.seconds(60).nanoseconds
        let burst = counted[0].limits.burstWindow.nanoseconds
        for (kind, key, used, oldest, slots) in try await connection.allRows(
            """
            SELECT 'provider', p.key,
                (SELECT count(*) FROM \(unescaped: quoted).admissions
                 WHERE provider = p.key AND submits
                   AND ((arrived_at IS NULL AND finished_at IS NULL) OR COALESCE(arrived_at, finished_at) > \(now) - p.span)),
                (SELECT min(COALESCE(arrived_at, finished_at)) FROM \(unescaped: quoted).admissions
                 WHERE provider = p.key AND submits AND COALESCE(arrived_at, finished_at) > \(now) - p.span),
                (SELECT count(*) FROM \(unescaped: quoted).admissions WHERE provider = p.key AND holds_slot AND finished_at IS NULL)
            FROM unnest(\(providers)::text[], \(providers.map { spans[$0]! })::bigint[]) AS p(key, span)
            UNION ALL
            SELECT 'user', u.key,
                (SELECT count(*) FROM \(unescaped: quoted).admissions WHERE user_name = u.key AND admitted_at > \(now) - \(minute)),
                (SELECT min(admitted_at) FROM \(unescaped: quoted).admissions WHERE user_name = u.key AND admitted_at > \(now) - \(minute)),
                NULL::bigint
            FROM unnest(\(users)::text[]) AS u(key)
            UNION ALL
            SELECT 'project', j.key,
                (SELECT count(*) FROM \(unescaped: quoted).admissions WHERE project = j.key AND admitted_at > \(now) - \(burst)),
                NULL::bigint, NULL::bigint
            FROM unnest(\(projects)::text[]) AS j(key)
            """,
            logger: logger
        ).decode((String, String, Int64, Int64?, Int64?).self) {
            switch kind {
            case "provider":
                book.providers[key, default: .init()].windowUsed = Int(used)
                book.providers[key, default: .init()].oldestDated = oldest.map { .nanoseconds($0) }
                book.providers[key, default: .init()].slotsUsed = Int(slots ?? 0)
            case "user":
                book.users[key, default: .init()].used = Int(used)
                book.users[key, default: .init()].oldest = oldest.map { .nanoseconds($0) }
            default:
                book.projects[key, default: .init()].burstUsed = Int(used)
            }
        }
        return book
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
