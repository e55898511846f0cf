public import Foundation
import Pargen
import Synchronization

/// An API key as the service keeps it: who it belongs to, and the SHA-256 of its secret (never the secret).
public struct APIKeyRecord: Sendable, Hashable, Codable {
    /// The key's public name (`key_` and 12 hex digits), shown in lists and logs; the secret starts with it.
    public var id: String
    public var tenant: String
    /// The project that jobs created with the key go to (an admin key may name another of its tenant's).
    public var project: String
    /// May act on every project of its tenant, set budgets and purge dead letters.
    public var admin: Bool
    /// Hex SHA-256 of the whole secret.
    public var hash: String
    public var createdAt: Date

    public init(id: String, tenant: String, project: String, admin: Bool, hash: String, createdAt: Date) {
        self.id = id
        self.tenant = tenant
        self.project = project
        self.admin = admin
        self.hash = hash
        self.createdAt = createdAt
    }
}

/// A response kept under an idempotency key, replayed byte for byte to a retry with the same body.
public struct StoredResponse: Sendable, Hashable, Codable {
    public var status: Int
    public var contentType: String
    public var location: String?
    public var body: [UInt8]

    public init(status: Int, contentType: String, location: String?, body: [UInt8]) {
        self.status = status
        self.contentType = contentType
        self.location = location
        self.body = body
    }
}

/// What an `Idempotency-Key` says about a request (Stripe's semantics).
public enum IdempotencyClaim: Sendable, Hashable {
    /// First use (or the first holder stopped without an answer): this request runs, and its answer is kept.
    case proceed
    /// The same key with the same body is still running: answer 409.
    case inProgress
    /// The same key came with a different body: answer 422.
    case mismatch
    /// The same key and body already have an answer: send it again.
    case replay(StoredResponse)
}

/// What the service keeps besides jobs: API keys and idempotency keys. SQLite keeps them in the job store's
/// file; memory keeps them for the process's life (tests, benchmarks).
public protocol ServiceStore: Sendable {
    func addKey(_ key: APIKeyRecord) async throws
    func key(hash: String) async throws -> APIKeyRecord?
    /// Every key, or a tenant's.
    func keys(tenant: String?) async throws -> [APIKeyRecord]

    /// Claims `key` in `scope` for a request whose body hashes to `fingerprint`.
    ///
    /// A claim older than `retention` is forgotten (a new request). A claim without an answer whose holder
    /// took longer than `lockTimeout` (a crash, a stop) is taken over.
    func claimIdempotencyKey(
        scope: String,
        key: String,
        fingerprint: String,
        now: Date,
        lockTimeout: Duration,
        retention: Duration
    ) async throws -> IdempotencyClaim

    /// Keeps the answer of a claimed key.
    func completeIdempotencyKey(scope: String, key: String, response: StoredResponse) async throws

    /// Forgets a claim whose request failed without an answer worth keeping (a 5xx), so a retry runs again.
    func releaseIdempotencyKey(scope: String, key: String) async throws

    /// Forgets keys first used before `date`; returns how many.
    func pruneIdempotencyKeys(before date: Date) async throws -> Int

    func addWebhook(_ webhook: WebhookRecord) async throws
    /// A tenant's webhooks, or every one.
    func webhooks(tenant: String?) async throws -> [WebhookRecord]
    /// Removes a tenant's webhook and its deliveries; `false` when it has none of that id.
    func removeWebhook(id: String, tenant: String) async throws -> Bool

    func addDeliveries(_ deliveries: [WebhookDelivery]) async throws
    /// Pending deliveries due by `now`, oldest first; each is held (its next try moved `holdFor` ahead) so that a
    /// second look does not send it again while it is being sent.
    func claimDueDeliveries(now: Date, limit: Int, holdFor: Duration) async throws -> [WebhookDelivery]
    /// Stores a delivery after a try (its state, attempts and next try).
    func saveDelivery(_ delivery: WebhookDelivery) async throws
    func delivery(id: String, tenant: String) async throws -> WebhookDelivery?
    /// A webhook's deliveries, newest first.
    func deliveries(webhookID: String, tenant: String, limit: Int) async throws -> [WebhookDelivery]
}

/// The claim rule both stores apply to the row they hold for a key.
struct IdempotencyRow: Sendable, Hashable {
    var fingerprint: String
    var createdAt: Date
    var lockedAt: Date
    var response: StoredResponse?

    /// What a new request with `fingerprint` at `now` gets, and the row to keep (`nil`: keep it as it is).
    static func claim(
        _ existing: IdempotencyRow?,
        fingerprint: String,
        now: Date,
        lockTimeout: Duration,
        retention: Duration
    ) -> (IdempotencyClaim, IdempotencyRow?) {
        let fresh = IdempotencyRow(fingerprint: fingerprint, createdAt: now, lockedAt: now, response: nil)
        guard let existing, now.timeIntervalSince(existing.createdAt) < retention.seconds else {
            return (.proceed, fresh)
        }
        guard existing.fingerprint == fingerprint else { return (.mismatch, nil) }
        if let response = existing.response { return (.replay(response), nil) }
        guard now.timeIntervalSince(existing.lockedAt) >= lockTimeout.seconds else { return (.inProgress, nil) }
        var taken = existing
        taken.lockedAt = now
        return (.proceed, taken)
    }
}

/// Keys and idempotency records for the process's life.
public final class MemoryServiceStore: ServiceStore {
    private struct State {
        var keys: [String: APIKeyRecord] = [:]
        var idempotency: [String: IdempotencyRow] = [:]
        var webhooks: [String: WebhookRecord] = [:]
        var deliveries: [String: WebhookDelivery] = [:]
    }

    private let state = Mutex(State())

    public init() {}

    public func addKey(_ key: APIKeyRecord) async throws { state.withLock { $0.keys[key.hash] = key } }

    public func key(hash: String) async throws -> APIKeyRecord? { state.withLock { $0.keys[hash] } }

    public func keys(tenant: String?) async throws -> [APIKeyRecord] {
        state.withLock { state in
            state.keys.values.filter { tenant == nil || $0.tenant == tenant }.sorted { $0.createdAt < $1.createdAt }
        }
    }

    public func claimIdempotencyKey(
        scope: String,
        key: String,
        fingerprint: String,
        now: Date,
        lockTimeout: Duration,
        retention: Duration
    ) async throws -> IdempotencyClaim {
        let name = scope + "\u{0}" + key
        return state.withLock { state in
            let (claim, row) = IdempotencyRow.claim(
                state.idempotency[name],
                fingerprint: fingerprint,
                now: now,
                lockTimeout: lockTimeout,
                retention: retention
            )
            if let row { state.idempotency[name] = row }
            return claim
        }
    }

    public func completeIdempotencyKey(scope: String, key: String, response: StoredResponse) async throws {
        state.withLock { $0.idempotency[scope + "\u{0}" + key]?.response = response }
    }

    public func releaseIdempotencyKey(scope: String, key: String) async throws {
        _ = state.withLock { $0.idempotency.removeValue(forKey: scope + "\u{0}" + key) }
    }

    public func pruneIdempotencyKeys(before date: Date) async throws -> Int {
        state.withLock { state in
            let old = state.idempotency.filter { $0.value.createdAt < date }.map(\.key)
            for name in old { state.idempotency[name] = nil }
            return old.count
        }
    }

    public func addWebhook(_ webhook: WebhookRecord) async throws { state.withLock { $0.webhooks[webhook.id] = webhook } }

    public func webhooks(tenant: String?) async throws -> [WebhookRecord] {
        state.withLock { state in
            state.webhooks.values.filter { tenant == nil || $0.tenant == tenant }.sorted { $0.createdAt < $1.createdAt }
        }
    }

    public func removeWebhook(id: String, tenant: String) async throws -> Bool {
        state.withLock { state in
            guard state.webhooks[id]?.tenant == tenant else { return false }
            state.webhooks[id] = nil
            state.deliveries = state.deliveries.filter { $0.value.webhookID != id }
            return true
        }
    }

    public func addDeliveries(_ deliveries: [WebhookDelivery]) async throws {
        state.withLock { state in for delivery in deliveries { state.deliveries[delivery.id] = delivery } }
    }

    public func claimDueDeliveries(now: Date, limit: Int, holdFor: Duration) async throws -> [WebhookDelivery] {
        state.withLock { state in
            let due = state.deliveries.values
                .filter { $0.state == .pending && ($0.nextAttemptAt ?? now) <= now }
                .sorted { ($0.nextAttemptAt ?? now, $0.createdAt) < ($1.nextAttemptAt ?? now, $1.createdAt) }
                .prefix(limit)
            let held = now.addingTimeInterval(holdFor.seconds)
            for delivery in due { state.deliveries[delivery.id]?.nextAttemptAt = held }
            return Array(due)
        }
    }

    public func saveDelivery(_ delivery: WebhookDelivery) async throws {
        state.withLock { $0.deliveries[delivery.id] = delivery }
    }

    public func delivery(id: String, tenant: String) async throws -> WebhookDelivery? {
        state.withLock { state in state.deliveries[id].flatMap { $0.tenant == tenant ? $0 : nil } }
    }

    public func deliveries(webhookID: String, tenant: String, limit: Int) async throws -> [WebhookDelivery] {
        state.withLock { state in
            Array(
                state.deliveries.values.filter { $0.webhookID == webhookID && $0.tenant == tenant }
                    .sorted { $0.createdAt > $1.createdAt }.prefix(limit)
            )
        }
    }
}
