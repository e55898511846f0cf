public import Foundation
import GRDB
import Pargen

/// API keys and idempotency keys in a SQLite file: the job store's own file (`pargen.sqlite` in `--out`), in
/// tables of their own, through a connection pool of their own (WAL lets both write the one file).
public final class SQLiteServiceStore: ServiceStore {
    private let pool: DatabasePool

    /// Opens (and creates where missing) the service's tables in the file at `path`.
    public init(path: String) throws {
        var configuration = Configuration()
        configuration.busyMode = .timeout(10)
        do {
            pool = try DatabasePool(path: path, configuration: configuration)
            try pool.writeWithoutTransaction { db in
                try db.execute(sql: "PRAGMA synchronous = FULL")
                try db.execute(
                    sql: """
                        CREATE TABLE IF NOT EXISTS service_api_keys (
                            hash TEXT PRIMARY KEY,
                            id TEXT NOT NULL UNIQUE,
                            tenant TEXT NOT NULL,
                            project TEXT NOT NULL,
                            admin INTEGER NOT NULL,
                            created_at REAL NOT NULL
                        );
                        CREATE TABLE IF NOT EXISTS service_idempotency (
                            scope TEXT NOT NULL,
                            key TEXT NOT NULL,
                            fingerprint TEXT NOT NULL,
                            created_at REAL NOT NULL,
                            locked_at REAL NOT NULL,
                            status INTEGER,
                            content_type TEXT,
                            location TEXT,
                            body BLOB,
                            PRIMARY KEY (scope, key)
                        );
                        CREATE INDEX IF NOT EXISTS service_idempotency_age ON service_idempotency(created_at);
                        CREATE TABLE IF NOT EXISTS service_webhooks (
                            id TEXT PRIMARY KEY,
                            tenant TEXT NOT NULL,
                            url TEXT NOT NULL,
                            events TEXT NOT NULL,
                            secret TEXT NOT NULL,
                            created_at REAL NOT NULL
                        );
                        CREATE TABLE IF NOT EXISTS service_deliveries (
                            id TEXT PRIMARY KEY,
                            webhook_id TEXT NOT NULL,
                            tenant TEXT NOT NULL,
                            event_type TEXT NOT NULL,
                            payload BLOB NOT NULL,
                            state TEXT NOT NULL,
                            attempts TEXT NOT NULL,
                            next_attempt_at REAL,
                            created_at REAL NOT NULL
                        );
                        CREATE INDEX IF NOT EXISTS service_deliveries_due ON service_deliveries(state, next_attempt_at);
                        CREATE INDEX IF NOT EXISTS service_deliveries_hook ON service_deliveries(webhook_id, created_at);
                        """
                )
            }
        } catch {
            throw StoreError(.unavailable, "cannot open the service tables in \(path)", underlying: error)
        }
    }

    public func addKey(_ key: APIKeyRecord) async throws {
        try await pool.write { db in
            try db.execute(
                sql: "INSERT INTO service_api_keys (hash, id, tenant, project, admin, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                arguments: [
                    key.hash, key.id, key.tenant, key.project, key.admin, key.createdAt.timeIntervalSince1970,
                ]
            )
        }
    }

    public func key(hash: String) async throws -> APIKeyRecord? {
        try await pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM service_api_keys WHERE hash = ?", arguments: [hash]).map(Self.key)
        }
    }

    public func keys(tenant: String?) async throws -> [APIKeyRecord] {
        try await pool.read { db in
            try Row.fetchAll(
                db,
                sql: "SELECT * FROM service_api_keys WHERE ? IS NULL OR tenant = ? ORDER BY created_at",
                arguments: [tenant, tenant]
            )
            .map(Self.key)
        }
    }

    private static func key(_ row: Row) -> APIKeyRecord {
        APIKeyRecord(
            id: row["id"],
            tenant: row["tenant"],
            project: row["project"],
            admin: row["admin"],
            hash: row["hash"],
            createdAt: Date(timeIntervalSince1970: row["created_at"])
        )
    }

    public func claimIdempotencyKey(
        scope: String,
        key: String,
        fingerprint: String,
        now: Date,
        lockTimeout: Duration,
        retention: Duration
    ) async throws -> IdempotencyClaim {
        try await pool.write { db in
            let existing = try Row.fetchOne(
                db,
                sql: "SELECT * FROM service_idempotency WHERE scope = ? AND key = ?",
                arguments: [scope, key]
            )
            .map { row -> IdempotencyRow in
                let status: Int? = row["status"]
                return IdempotencyRow(
                    fingerprint: row["fingerprint"],
                    createdAt: Date(timeIntervalSince1970: row["created_at"]),
                    lockedAt: Date(timeIntervalSince1970: row["locked_at"]),
                    response: status.map { status in
                        StoredResponse(
                            status: status,
                            contentType: row["content_type"] ?? "application/json",
                            location: row["location"],
                            body: [UInt8]((row["body"] as Data?) ?? Data())
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
                try db.execute(
                    sql: """
                        INSERT INTO service_idempotency (scope, key, fingerprint, created_at, locked_at)
                        VALUES (?, ?, ?, ?, ?)
                        ON CONFLICT (scope, key) DO UPDATE SET
                            fingerprint = excluded.fingerprint, created_at = excluded.created_at,
                            locked_at = excluded.locked_at, status = NULL, content_type = NULL, location = NULL,
                            body = NULL
                        """,
                    arguments: [
                        scope, key, row.fingerprint, row.createdAt.timeIntervalSince1970,
                        row.lockedAt.timeIntervalSince1970,
                    ]
                )
            }
            return claim
        }
    }

    public func completeIdempotencyKey(scope: String, key: String, response: StoredResponse) async throws {
        try await pool.write { db in
            try db.execute(
                sql: """
                    UPDATE service_idempotency SET status = ?, content_type = ?, location = ?, body = ?
                    WHERE scope = ? AND key = ?
                    """,
                arguments: [response.status, response.contentType, response.location, Data(response.body), scope, key]
            )
        }
    }

    public func releaseIdempotencyKey(scope: String, key: String) async throws {
        try await pool.write { db in
            try db.execute(sql: "DELETE FROM service_idempotency WHERE scope = ? AND key = ?", arguments: [scope, key])
        }
    }

    public func pruneIdempotencyKeys(before date: Date) async throws -> Int {
        try await pool.write { db in
            try db.execute(
                sql: "DELETE FROM service_idempotency WHERE created_at < ?",
                arguments: [date.timeIntervalSince1970]
            )
            return db.changesCount
        }
    }

    // MARK: Webhooks

    public func addWebhook(_ webhook: WebhookRecord) async throws {
        let events = String(decoding: try JSONEncoder().encode(webhook.events), as: UTF8.self)
        try await pool.write { db in
            try db.execute(
                sql: "INSERT INTO service_webhooks (id, tenant, url, events, secret, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                arguments: [
                    webhook.id, webhook.tenant, webhook.url, events, webhook.secret,
                    webhook.createdAt.timeIntervalSince1970,
                ]
            )
        }
    }

    public func webhooks(tenant: String?) async throws -> [WebhookRecord] {
        try await pool.read { db in
            try Row.fetchAll(
                db,
                sql: "SELECT * FROM service_webhooks WHERE ? IS NULL OR tenant = ? ORDER BY created_at",
                arguments: [tenant, tenant]
            )
            .map { row in
                WebhookRecord(
                    id: row["id"],
                    tenant: row["tenant"],
                    url: row["url"],
                    events: (try? JSONDecoder().decode([String].self, from: Data((row["events"] as String).utf8))) ?? [],
                    secret: row["secret"],
                    createdAt: Date(timeIntervalSince1970: row["created_at"])
                )
            }
        }
    }

    public func removeWebhook(id: String, tenant: String) async throws -> Bool {
        try await pool.write { db in
            try db.execute(sql: "DELETE FROM service_webhooks WHERE id = ? AND tenant = ?", arguments: [id, tenant])
            guard db.changesCount > 0 else { return false }
            try db.execute(sql: "DELETE FROM service_deliveries WHERE webhook_id = ?", arguments: [id])
            return true
        }
    }

    public func addDeliveries(_ deliveries: [WebhookDelivery]) async throws {
        guard !deliveries.isEmpty else { return }
        try await pool.write { db in
            for delivery in deliveries { try Self.upsert(delivery, db) }
        }
    }

    public func saveDelivery(_ delivery: WebhookDelivery) async throws {
        try await pool.write { db in try Self.upsert(delivery, db) }
    }

    private static func upsert(_ delivery: WebhookDelivery, _ db: Database) throws {
        let attempts = String(decoding: try JSONEncoder().encode(delivery.attempts), as: UTF8.self)
        try db.execute(
            sql: """
                INSERT INTO service_deliveries
                    (id, webhook_id, tenant, event_type, payload, state, attempts, next_attempt_at, created_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (id) DO UPDATE SET state = excluded.state, attempts = excluded.attempts,
                    next_attempt_at = excluded.next_attempt_at
                """,
            arguments: [
                delivery.id, delivery.webhookID, delivery.tenant, delivery.eventType, Data(delivery.payload),
                delivery.state.rawValue, attempts, delivery.nextAttemptAt?.timeIntervalSince1970,
                delivery.createdAt.timeIntervalSince1970,
            ]
        )
    }

    private static func delivery(_ row: Row) -> WebhookDelivery {
        let next: Double? = row["next_attempt_at"]
        return WebhookDelivery(
            id: row["id"],
            webhookID: row["webhook_id"],
            tenant: row["tenant"],
            eventType: row["event_type"],
            payload: [UInt8]((row["payload"] as Data?) ?? Data()),
            state: WebhookDelivery.State(rawValue: row["state"]) ?? .failed,
            attempts: (try? JSONDecoder().decode([WebhookAttempt].self, from: Data((row["attempts"] as String).utf8))) ?? [],
            nextAttemptAt: next.map { Date(timeIntervalSince1970: $0) },
            createdAt: Date(timeIntervalSince1970: row["created_at"])
        )
    }

    public func claimDueDeliveries(now: Date, limit: Int, holdFor: Duration) async throws -> [WebhookDelivery] {
        try await pool.write { db in
            let due = try Row.fetchAll(
                db,
                sql: """
                    SELECT * FROM service_deliveries
                    WHERE state = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= ?)
                    ORDER BY next_attempt_at, created_at LIMIT ?
                    """,
                arguments: [now.timeIntervalSince1970, limit]
            )
            .map(Self.delivery)
            let held = now.timeIntervalSince1970 + holdFor.seconds
            for delivery in due {
                try db.execute(
                    sql: "UPDATE service_deliveries SET next_attempt_at = ? WHERE id = ?",
                    arguments: [held, delivery.id]
                )
            }
            return due
        }
    }

    public func delivery(id: String, tenant: String) async throws -> WebhookDelivery? {
        try await pool.read { db in
            try Row.fetchOne(
                db,
                sql: "SELECT * FROM service_deliveries WHERE id = ? AND tenant = ?",
                arguments: [id, tenant]
            )
            .map(Self.delivery)
        }
    }

    public func deliveries(webhookID: String, tenant: String, limit: Int) async throws -> [WebhookDelivery] {
        try await pool.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT * FROM service_deliveries WHERE webhook_id = ? AND tenant = ?
                    ORDER BY created_at DESC LIMIT ?
                    """,
                arguments: [webhookID, tenant, limit]
            )
            .map(Self.delivery)
        }
    }
}
