public import Foundation
import Logging
import NIOCore
import Pargen
public import PargenPostgres
import PostgresNIO

/// The service's records in the job store's PostgreSQL schema (its migration 3), so that several `pargen serve`
/// processes share keys, idempotency keys, webhooks and deliveries. Every operation goes through the job store's
/// retries (a restart of the server is waited out) and its query deadline.
public final class PostgresServiceStore: ServiceStore {
    let jobs: PostgresJobStore

    /// The service tables of `jobs`'s schema (created by its migrations).
    public init(jobs: PostgresJobStore) { self.jobs = jobs }

    private var quoted: String { jobs.quoted }

    public func addKey(_ key: APIKeyRecord) async throws {
        _ = try await jobs.run("add an API key") { [quoted, jobs] in
            try await jobs.allRows(
                """
                INSERT INTO \(unescaped: quoted).service_api_keys (hash, id, tenant, project, admin, created_at)
                VALUES (\(key.hash), \(key.id), \(key.tenant), \(key.project), \(key.admin), \(key.createdAt.timeIntervalSince1970))
                """,
                logger: jobs.logger
            )
        }
    }

    private static let keyColumns = "hash, id, tenant, project, admin, created_at"

    private static func key(_ row: (String, String, String, String, Bool, Double)) -> APIKeyRecord {
        APIKeyRecord(
            id: row.1,
            tenant: row.2,
            project: row.3,
            admin: row.4,
            hash: row.0,
            createdAt: Date(timeIntervalSince1970: row.5)
        )
    }

    public func key(hash: String) async throws -> APIKeyRecord? {
        try await jobs.run("read an API key") { [quoted, jobs] in
            try await jobs.allRows(
                "SELECT \(unescaped: Self.keyColumns) FROM \(unescaped: quoted).service_api_keys WHERE hash = \(hash)",
                logger: jobs.logger
            )
            .decode((String, String, String, String, Bool, Double).self).first.map(Self.key)
        }
    }

    public func keys(tenant: String?) async throws -> [APIKeyRecord] {
        try await jobs.run("list API keys") { [quoted, jobs] in
            try await jobs.allRows(
                """
                SELECT \(unescaped: Self.keyColumns) FROM \(unescaped: quoted).service_api_keys
                WHERE \(tenant)::text IS NULL OR tenant = \(tenant) ORDER BY created_at
                """,
                logger: jobs.logger
            )
            .decode((String, String, String, String, Bool, Double).self).map(Self.key)
        }
    }

    // MARK: Idempotency

    public func claimIdempotencyKey(
        scope: String,
        key: String,
        fingerprint: String,
        now: Date,
        lockTimeout: Duration,
        retention: Duration
    ) async throws -> IdempotencyClaim {
        let time = now.timeIntervalSince1970
        return try await jobs.run("claim an idempotency key") { [quoted, jobs] in
            try await jobs.transaction { connection in
                // A new key is taken by the insert; a known one is read under its row lock and decided by the rule.
                let inserted = try await connection.allRows(
                    """
                    INSERT INTO \(unescaped: quoted).service_idempotency (scope, key, fingerprint, created_at, locked_at)
                    VALUES (\(scope), \(key), \(fingerprint), \(time), \(time))
                    ON CONFLICT (scope, key) DO NOTHING RETURNING 1
                    """,
                    logger: jobs.logger
                )
                if !inserted.isEmpty { return .proceed }
                let rows = try await connection.allRows(
                    """
                    SELECT fingerprint, created_at, locked_at, status, content_type, location, body
                    FROM \(unescaped: quoted).service_idempotency WHERE scope = \(scope) AND key = \(key) FOR UPDATE
                    """,
                    logger: jobs.logger
                )
                .decode((String, Double, Double, Int?, String?, String?, ByteBuffer?).self)
                let existing = rows.first.map { row in
                    IdempotencyRow(
                        fingerprint: row.0,
                        createdAt: Date(timeIntervalSince1970: row.1),
                        lockedAt: Date(timeIntervalSince1970: row.2),
                        response: row.3.map { status in
                            StoredResponse(
                                status: status,
                                contentType: row.4 ?? "application/json",
                                location: row.5,
                                body: row.6.map { Array($0.readableBytesView) } ?? []
                            )
                        }
                    )
                }
                let (claim, row) = IdempotencyRow.claim(
                    existing,
                    fingerprint: fingerprint,
                    now: now,
                    lockTimeout: lockTimeout,
                    retention: retention
                )
                if let row {
                    try await connection.allRows(
                        """
                        UPDATE \(unescaped: quoted).service_idempotency
                        SET fingerprint = \(row.fingerprint), created_at = \(row.createdAt.timeIntervalSince1970),
                            locked_at = \(row.lockedAt.timeIntervalSince1970), status = NULL, content_type = NULL,
                            location = NULL, body = NULL
                        WHERE scope = \(scope) AND key = \(key)
                        """,
                        logger: jobs.logger
                    )
                }
                return claim
            }
        }
    }

    public func completeIdempotencyKey(scope: String, key: String, response: StoredResponse) async throws {
        _ = try await jobs.run("keep an idempotent answer") { [quoted, jobs] in
            try await jobs.allRows(
                """
                UPDATE \(unescaped: quoted).service_idempotency
                SET status = \(response.status), content_type = \(response.contentType), location = \(response.location),
                    body = \(ByteBuffer(bytes: response.body))
                WHERE scope = \(scope) AND key = \(key)
                """,
                logger: jobs.logger
            )
        }
    }

    public func releaseIdempotencyKey(scope: String, key: String) async throws {
        _ = try await jobs.run("release an idempotency key") { [quoted, jobs] in
            try await jobs.allRows(
                "DELETE FROM \(unescaped: quoted).service_idempotency WHERE scope = \(scope) AND key = \(key)",
                logger: jobs.logger
            )
        }
    }

    public func pruneIdempotencyKeys(before date: Date) async throws -> Int {
        let time = date.timeIntervalSince1970
        return try await jobs.run("prune idempotency keys") { [quoted, jobs] in
            try await jobs.allRows(
                """
                WITH gone AS (DELETE FROM \(unescaped: quoted).service_idempotency WHERE created_at < \(time) RETURNING 1)
                SELECT count(*) FROM gone
                """,
                logger: jobs.logger
            )
            .decode(Int.self).first ?? 0
        }
    }

    // MARK: Webhooks

    public func addWebhook(_ webhook: WebhookRecord) async throws {
        let events = String(decoding: try JSONEncoder().encode(webhook.events), as: UTF8.self)
        _ = try await jobs.run("add a webhook") { [quoted, jobs] in
            try await jobs.allRows(
                """
                INSERT INTO \(unescaped: quoted).service_webhooks (id, tenant, url, events, secret, created_at)
                VALUES (\(webhook.id), \(webhook.tenant), \(webhook.url), \(events), \(webhook.secret), \(webhook.createdAt.timeIntervalSince1970))
                """,
                logger: jobs.logger
            )
        }
    }

    public func webhooks(tenant: String?) async throws -> [WebhookRecord] {
        try await jobs.run("list webhooks") { [quoted, jobs] in
            try await jobs.allRows(
                """
                SELECT id, tenant, url, events, secret, created_at FROM \(unescaped: quoted).service_webhooks
                WHERE \(tenant)::text IS NULL OR tenant = \(tenant) ORDER BY created_at
                """,
                logger: jobs.logger
            )
            .decode((String, String, String, String, String, Double).self).map { row in
                WebhookRecord(
                    id: row.0,
                    tenant: row.1,
                    url: row.2,
                    events: (try? JSONDecoder().decode([String].self, from: Data(row.3.utf8))) ?? [],
                    secret: row.4,
                    createdAt: Date(timeIntervalSince1970: row.5)
                )
            }
        }
    }

    public func removeWebhook(id: String, tenant: String) async throws -> Bool {
        try await jobs.run("remove a webhook") { [quoted, jobs] in
            try await jobs.transaction { connection in
                let gone = try await connection.allRows(
                    "DELETE FROM \(unescaped: quoted).service_webhooks WHERE id = \(id) AND tenant = \(tenant) RETURNING 1",
                    logger: jobs.logger
                )
                guard !gone.isEmpty else { return false }
                try await connection.allRows(
                    "DELETE FROM \(unescaped: quoted).service_deliveries WHERE webhook_id = \(id)",
                    logger: jobs.logger
                )
                return true
            }
        }
    }

    public func addDeliveries(_ deliveries: [WebhookDelivery]) async throws {
        guard !deliveries.isEmpty else { return }
        try await jobs.run("add webhook deliveries") { [jobs] in
            try await jobs.transaction { connection in
                for delivery in deliveries { try await self.upsert(delivery, on: connection) }
            }
        }
    }

    public func saveDelivery(_ delivery: WebhookDelivery) async throws {
        try await jobs.run("save a webhook delivery") { [jobs] in
            try await jobs.client.withConnection { connection in try await self.upsert(delivery, on: connection) }
        }
    }

    private func upsert(_ delivery: WebhookDelivery, on connection: PostgresConnection) async throws {
        let attempts = String(decoding: try JSONEncoder().encode(delivery.attempts), as: UTF8.self)
        try await connection.allRows(
            """
            INSERT INTO \(unescaped: quoted).service_deliveries
                (id, webhook_id, tenant, event_type, payload, state, attempts, next_attempt_at, created_at)
            VALUES (\(delivery.id), \(delivery.webhookID), \(delivery.tenant), \(delivery.eventType),
                \(ByteBuffer(bytes: delivery.payload)), \(delivery.state.rawValue), \(attempts),
                \(delivery.nextAttemptAt?.timeIntervalSince1970), \(delivery.createdAt.timeIntervalSince1970))
            ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, attempts = EXCLUDED.attempts,
                next_attempt_at = EXCLUDED.next_attempt_at
            """,
            logger: jobs.logger
        )
    }

    private static let deliveryColumns =
        "id, webhook_id, tenant, event_type, payload, state, attempts, next_attempt_at, created_at"
    private typealias DeliveryRow = (String, String, String, String, ByteBuffer, String, String, Double?, Double)

    private static func delivery(_ row: DeliveryRow) -> WebhookDelivery {
        WebhookDelivery(
            id: row.0,
            webhookID: row.1,
            tenant: row.2,
            eventType: row.3,
            payload: Array(row.4.readableBytesView),
            state: WebhookDelivery.State(rawValue: row.5) ?? .failed,
            attempts: (try? JSONDecoder().decode([WebhookAttempt].self, from: Data(row.6.utf8))) ?? [],
            nextAttemptAt: row.7.map { Date(timeIntervalSince1970: $0) },
            createdAt: Date(timeIntervalSince1970: row.8)
        )
    }

    public func claimDueDeliveries(now: Date, limit: Int, holdFor: Duration) async throws -> [WebhookDelivery] {
        let time = now.timeIntervalSince1970
        let held = time + holdFor.seconds
        return try await jobs.run("claim webhook deliveries") { [quoted, jobs] in
            // SKIP LOCKED: several servers share the deliveries, and each is sent by one of them at a time.
            try await jobs.allRows(
                """
                WITH due AS (
                    SELECT id, next_attempt_at AS due_at FROM \(unescaped: quoted).service_deliveries
                    WHERE state = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= \(time))
                    ORDER BY next_attempt_at, created_at LIMIT \(limit) FOR UPDATE SKIP LOCKED
                )
                UPDATE \(unescaped: quoted).service_deliveries d SET next_attempt_at = \(held)
                FROM due WHERE d.id = due.id
                RETURNING d.id, d.webhook_id, d.tenant, d.event_type, d.payload, d.state, d.attempts, due.due_at, d.created_at
                """,
                logger: jobs.logger
            )
            .decode(DeliveryRow.self).map(Self.delivery)
            .sorted { ($0.nextAttemptAt ?? now, $0.createdAt) < ($1.nextAttemptAt ?? now, $1.createdAt) }
        }
    }

    public func delivery(id: String, tenant: String) async throws -> WebhookDelivery? {
        try await jobs.run("read a webhook delivery") { [quoted, jobs] in
            try await jobs.allRows(
                """
                SELECT \(unescaped: Self.deliveryColumns) FROM \(unescaped: quoted).service_deliveries
                WHERE id = \(id) AND tenant = \(tenant)
                """,
                logger: jobs.logger
            )
            .decode(DeliveryRow.self).first.map(Self.delivery)
        }
    }

    public func deliveries(webhookID: String, tenant: String, limit: Int) async throws -> [WebhookDelivery] {
        try await jobs.run("list webhook deliveries") { [quoted, jobs] in
            try await jobs.allRows(
                """
                SELECT \(unescaped: Self.deliveryColumns) FROM \(unescaped: quoted).service_deliveries
                WHERE webhook_id = \(webhookID) AND tenant = \(tenant) ORDER BY created_at DESC LIMIT \(limit)
                """,
                logger: jobs.logger
            )
            .decode(DeliveryRow.self).map(Self.delivery)
        }
    }
}
