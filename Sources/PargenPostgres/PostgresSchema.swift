import Logging
import PostgresNIO
import Foundation

/// The tables of a Pargen schema in PostgreSQL, as numbered migrations applied in order at start.
///
/// Every process that opens a store runs ``migrate(client:schema:logger:)``; the first takes a session advisory
/// lock on the schema's name, so processes that start together apply each migration once, and the others wait
/// for it and find it applied.
enum PostgresSchema {
    struct Migration {
        var version: Int
        var name: String
        var statements: [String]
    }

    /// The migrations, oldest first. `S` stands for the schema's quoted name. Never edit one that has shipped:
    /// add the next.
    static let migrations: [Migration] = [
        Migration(
            version: 1,
            name: "jobs",
            statements: [
                // Times are nanoseconds since the Unix epoch on the database's clock (`now_ns()`), so every
                // worker's leases expire by the same clock whatever its own says.
                """
                CREATE FUNCTION S.now_ns() RETURNS bigint LANGUAGE sql VOLATILE
                AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000000000)::bigint $$
                """,
                "CREATE SEQUENCE S.job_seq",
                // The record is the whole `JobRecord` as JSON; the columns are what claiming, fencing and queries
                // use. The lease columns are the truth for the lease (a claim sets them without rewriting the
                // JSON); `version` makes every read-modify-write of a record optimistic and exact.
                """
                CREATE TABLE S.jobs (
                    seq bigint PRIMARY KEY,
                    id text NOT NULL UNIQUE,
                    state text NOT NULL,
                    kind text NOT NULL,
                    priority integer NOT NULL,
                    user_name text NOT NULL,
                    project text NOT NULL,
                    campaign text NOT NULL,
                    provider text,
                    idempotency_key text,
                    run_at bigint NOT NULL,
                    lease_token text,
                    lease_owner text,
                    lease_expires_at bigint,
                    finished_at bigint,
                    version bigint NOT NULL DEFAULT 0,
                    reserved bigint NOT NULL DEFAULT 0,
                    charged bigint NOT NULL DEFAULT 0,
                    released bigint NOT NULL DEFAULT 0,
                    pending bigint NOT NULL DEFAULT 0,
                    record jsonb NOT NULL
                )
                """,
                "CREATE UNIQUE INDEX jobs_idempotency ON S.jobs (project, idempotency_key) WHERE idempotency_key IS NOT NULL",
                "CREATE INDEX jobs_ready ON S.jobs (kind, priority DESC, run_at, seq) WHERE state = 'available'",
                "CREATE INDEX jobs_leases ON S.jobs (lease_expires_at) WHERE state = 'running'",
                "CREATE INDEX jobs_campaign ON S.jobs (campaign, state)",
                "CREATE INDEX jobs_finished ON S.jobs (finished_at) WHERE finished_at IS NOT NULL",
                // Housekeeping's leader: one row per duty, held by the worker whose lease on it is current.
                """
                CREATE TABLE S.leaders (
                    duty text PRIMARY KEY,
                    holder text NOT NULL,
                    expires_at bigint NOT NULL
                )
                """,
            ]
        ),
        Migration(
            version: 2,
            name: "admission",
            statements: [
                // One row per limit key (a provider's pool, a user, a project): the row lock that serialises the
                // admissions of that key across workers, and its scalar state (a cooldown, a bucket's TAT).
                """
                CREATE TABLE S.limit_keys (
                    key text PRIMARY KEY,
                    cooldown_until bigint,
                    tat bigint
                )
                """,
                // Every admitted call: the window logs (provider, user, burst) count these rows, and the slots
                // count those not yet finished. `arrived_at` dates a provider window place by the provider's
                // answer; until then the place counts as taken now.
                """
                CREATE TABLE S.admissions (
                    id bigserial PRIMARY KEY,
                    job_id text NOT NULL,
                    worker text NOT NULL,
                    provider text NOT NULL,
                    user_name text NOT NULL,
                    project text NOT NULL,
                    holds_slot boolean NOT NULL,
                    submits boolean NOT NULL,
                    admitted_at bigint NOT NULL,
                    arrived_at bigint,
                    finished_at bigint
                )
                """,
                "CREATE INDEX admissions_provider ON S.admissions (provider, admitted_at)",
                "CREATE INDEX admissions_open ON S.admissions (provider) WHERE finished_at IS NULL",
                "CREATE INDEX admissions_user ON S.admissions (user_name, admitted_at)",
                "CREATE INDEX admissions_project ON S.admissions (project, admitted_at)",
                "CREATE INDEX admissions_job ON S.admissions (job_id) WHERE finished_at IS NULL",
            ]
        ),
        Migration(
            version: 3,
            name: "service",
            statements: [
                // The HTTP service's records (PargenServer's PostgresServiceStore): API keys by the SHA-256 of
                // their secret, idempotency keys with the answer they got, webhooks and their deliveries. Times
                // are seconds since 1970 (the service's wall clock).
                """
                CREATE TABLE S.service_api_keys (
                    hash text PRIMARY KEY,
                    id text NOT NULL UNIQUE,
                    tenant text NOT NULL,
                    project text NOT NULL,
                    admin boolean NOT NULL,
                    created_at double precision NOT NULL
                )
                """,
                """
                CREATE TABLE S.service_idempotency (
                    scope text NOT NULL,
                    key text NOT NULL,
                    fingerprint text NOT NULL,
                    created_at double precision NOT NULL,
                    locked_at double precision NOT NULL,
                    status integer,
                    content_type text,
                    location text,
                    body bytea,
                    PRIMARY KEY (scope, key)
                )
                """,
                "CREATE INDEX service_idempotency_age ON S.service_idempotency (created_at)",
                """
                CREATE TABLE S.service_webhooks (
                    id text PRIMARY KEY,
                    tenant text NOT NULL,
                    url text NOT NULL,
                    events text NOT NULL,
                    secret text NOT NULL,
                    created_at double precision NOT NULL
                )
                """,
                """
                CREATE TABLE S.service_deliveries (
                    id text PRIMARY KEY,
                    webhook_id text NOT NULL,
                    tenant text NOT NULL,
                    event_type text NOT NULL,
                    payload bytea NOT NULL,
                    state text NOT NULL,
                    attempts text NOT NULL,
                    next_attempt_at double precision,
                    created_at double precision NOT NULL
                )
                """,
                "CREATE INDEX service_deliveries_due ON S.service_deliveries (next_attempt_at) WHERE state = 'pending'",
                "CREATE INDEX service_deliveries_hook ON S.service_deliveries (webhook_id, created_at)",
            ]
        ),
        Migration(
            version: 4,
            name: "budget-sums-and-recent-admissions",
            statements: [
                // Budgets are checked against the jobs' own ledgers: a scope's charged and pending, summed from
                // indexes that cover them.
                "CREATE INDEX jobs_project_money ON S.jobs (project) INCLUDE (charged, pending)",
                "CREATE INDEX jobs_campaign_money ON S.jobs (campaign) INCLUDE (charged, pending)",
                // The queue is looked at least-served user first: the last minute's admissions per user.
                "CREATE INDEX admissions_recent ON S.admissions (admitted_at) INCLUDE (user_name)",
            ]
        ),
        Migration(
            version: 5,
            name: "budget-limits",
            statements: [
                // Limits set while running (PUT /v1/budgets), for every worker: a NULL limit is one removed.
                """
                CREATE TABLE S.budget_limits (
                    kind text NOT NULL,
                    name text NOT NULL,
                    limit_nanos bigint,
                    updated_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (kind, name)
                )
                """
            ]
        ),
        Migration(
            version: 6,
            name: "lease-lengths-changes-and-enqueues",
            statements: [
                // The length of each lease at its last grant or renewal. A lease that ran out while the server was
                // away is not taken back until its holder has had that long with the server up to renew it.
                "ALTER TABLE S.jobs ADD COLUMN lease_nanos bigint",
                // The change a record was last written by: a retry whose earlier try committed, but whose reply
                // was lost, finds its own change there and does not apply it again.
                "ALTER TABLE S.jobs ADD COLUMN last_change text",
                // Each enqueue's answer, for an hour: an enqueue tried again after its reply was lost finds it
                // instead of adding its jobs a second time (jobs without idempotency keys would be).
                """
                CREATE TABLE S.enqueues (
                    token text PRIMARY KEY,
                    job_ids text[] NOT NULL,
                    existing boolean[] NOT NULL,
                    at bigint NOT NULL
                )
                """,
            ]
        ),
        Migration(
            version: 7,
            name: "scope-money",
            statements: [
                // Each scope's money (global, each project, each campaign) without summing its jobs: folded totals,
                // and the changes since the last fold. A trigger appends every change of a job's ledger to
                // `money_changes` (an insert, so workers never queue on a shared row); housekeeping folds them
                // into `scope_money` in one statement. A scope's money is its folded row plus its changes since,
                // read in one statement (one snapshot). A deleted (pruned or purged) job's money stays counted.
                """
                CREATE TABLE S.scope_money (
                    kind text NOT NULL,
                    name text NOT NULL,
                    reserved bigint NOT NULL,
                    charged bigint NOT NULL,
                    released bigint NOT NULL,
                    pending bigint NOT NULL,
                    PRIMARY KEY (kind, name)
                )
                """,
                """
                CREATE TABLE S.money_changes (
                    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    project text NOT NULL,
                    campaign text NOT NULL,
                    reserved bigint NOT NULL,
                    charged bigint NOT NULL,
                    released bigint NOT NULL,
                    pending bigint NOT NULL
                )
                """,
                """
                CREATE FUNCTION S.record_money_change() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF TG_OP = 'INSERT' THEN
                        IF NEW.reserved <> 0 OR NEW.charged <> 0 OR NEW.released <> 0 OR NEW.pending <> 0 THEN
                            INSERT INTO S.money_changes (project, campaign, reserved, charged, released, pending)
                            VALUES (NEW.project, NEW.campaign, NEW.reserved, NEW.charged, NEW.released, NEW.pending);
                        END IF;
                    ELSIF (NEW.reserved, NEW.charged, NEW.released, NEW.pending)
                        IS DISTINCT FROM (OLD.reserved, OLD.charged, OLD.released, OLD.pending)
                    THEN
                        INSERT INTO S.money_changes (project, campaign, reserved, charged, released, pending)
                        VALUES (NEW.project, NEW.campaign, NEW.reserved - OLD.reserved, NEW.charged - OLD.charged,
                                NEW.released - OLD.released, NEW.pending - OLD.pending);
                    END IF;
                    RETURN NULL;
                END
                $$
                """,
                // Creating the trigger locks the jobs table against writes until this migration commits, so the
                // totals below see every change committed before it and the trigger every change after.
                """
                CREATE TRIGGER jobs_money AFTER INSERT OR UPDATE OF reserved, charged, released, pending ON S.jobs
                FOR EACH ROW EXECUTE FUNCTION S.record_money_change()
                """,
                """
                INSERT INTO S.scope_money (kind, name, reserved, charged, released, pending)
                \(PostgresJobStore.scopeSums("S.jobs"))
                """,
                "DROP INDEX S.jobs_project_money",
                "DROP INDEX S.jobs_campaign_money",
            ]
        ),
        Migration(
            version: 8,
            name: "reachability",
            statements: [
                // When some worker last reached the server, and since when workers have reached it without a gap
                // longer than a housekeeping leader's term. Every worker's housekeeper writes it on each round
                // (``PostgresJobStore/lead(_:holder:for:)``). After a gap (the server away, restarted, or replaced
                // by a promoted replica, or every worker cut off from it) a lease that ran out is not taken back
                // until its holder has had the server for the lease's length again.
                """
                CREATE TABLE S.reachability (
                    id boolean PRIMARY KEY DEFAULT true CHECK (id),
                    last_seen bigint NOT NULL,
                    up_since bigint NOT NULL
                )
                """,
            ]
        ),
    ]

    /// Applies every migration `schema` lacks, under an advisory lock.
    static func migrate(client: PostgresClient, schema: String, logger: Logger) async throws {
        let quoted = quote(schema)
        try await client.withConnection { connection in
            let key = "pargen-migrate:\(schema)"
            try await connection.allRows("SELECT pg_advisory_lock(hashtext(\(key)))", logger: logger, deadline: .seconds(300))
            do {
                try await connection.allRows("CREATE SCHEMA IF NOT EXISTS \(unescaped: quoted)", logger: logger, deadline: .seconds(300))
                try await connection.allRows(
                    """
                    CREATE TABLE IF NOT EXISTS \(unescaped: quoted).schema_migrations (
                        version integer PRIMARY KEY,
                        name text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now()
                    )
                    """,
                    logger: logger,
                    deadline: .seconds(300)
                )
                var applied: Set<Int> = []
                for version in try await connection.allRows(
                    "SELECT version FROM \(unescaped: quoted).schema_migrations",
                    logger: logger,
                    deadline: .seconds(300)
                ).decode(Int.self) {
                    applied.insert(version)
                }
                for migration in migrations where !applied.contains(migration.version) {
                    // One transaction per migration, each statement under the same generous deadline.
                    try await connection.allRows("BEGIN", logger: logger, deadline: .seconds(300))
                    do {
                        for statement in migration.statements {
                            let sql = statement.replacingOccurrences(of: "S.", with: "\(quoted).")
                            try await connection.allRows(PostgresQuery(unsafeSQL: sql), logger: logger, deadline: .seconds(300))
                        }
                        try await connection.allRows(
                            "INSERT INTO \(unescaped: quoted).schema_migrations (version, name) VALUES (\(migration.version), \(migration.name))",
                            logger: logger,
                            deadline: .seconds(300)
                        )
                        try await connection.allRows("COMMIT", logger: logger, deadline: .seconds(300))
                    } catch {
                        _ = try? await connection.allRows("ROLLBACK", logger: logger, deadline: .seconds(300))
                        throw error
                    }
                    logger.info(
                        "applied migration",
                        metadata: ["version": "\(migration.version)", "name": "\(migration.name)", "schema": "\(schema)"]
                    )
                }
            } catch {
                _ = try? await connection.allRows("SELECT pg_advisory_unlock(hashtext(\(key)))", logger: logger, deadline: .seconds(300))
                throw error
            }
            try await connection.allRows("SELECT pg_advisory_unlock(hashtext(\(key)))", logger: logger, deadline: .seconds(300))
        }
    }

    /// The schema name as a quoted identifier.
    static func quote(_ identifier: String) -> String {
        "\"" + identifier.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}
