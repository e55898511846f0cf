import Crypto
public import Foundation
import Pargen
import Synchronization

/// Who a request acts for: the tenant and project of its API key.
public struct Principal: Sendable, Hashable {
    public var keyID: String
    public var tenant: String
    public var project: String
    public var admin: Bool

    public init(keyID: String, tenant: String, project: String, admin: Bool) {
        self.keyID = keyID
        self.tenant = tenant
        self.project = project
        self.admin = admin
    }

    /// The store's name for one of this tenant's projects or campaigns: tenants never share a name, so they
    /// never share a job, an idempotency key, a budget or a rate-limit bucket.
    func qualified(_ name: String) -> String { tenant + "/" + name }

    /// The tenant's own name for a stored project or campaign, or `nil` when it is another tenant's.
    func local(_ stored: String) -> String? {
        let prefix = tenant + "/"
        return stored.hasPrefix(prefix) ? String(stored.dropFirst(prefix.count)) : nil
    }

    /// Whether a job stored under `project` is this key's to see.
    func owns(project stored: String) -> Bool {
        guard let name = local(stored) else { return false }
        return admin || name == project
    }
}

/// Makes and checks API keys. A key is shown once; the service keeps only its SHA-256.
public enum APIKeys {
    /// Tenant and project names: letters, digits, `.`, `_` and `-`, 1 to 64 characters.
    public static func validName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 64
            && name.utf8.allSatisfy { byte in
                (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                    || byte == 0x2E || byte == 0x5F || byte == 0x2D
            }
    }

    /// A new key for `tenant`'s `project`: the secret to show once, and the record to keep.
    public static func make(tenant: String, project: String, admin: Bool, now: Date = Date()) throws -> (
        secret: String, record: APIKeyRecord
    ) {
        guard validName(tenant) else {
            throw APIKeyError("tenant must be 1 to 64 letters, digits, '.', '_' or '-', not \"\(tenant)\"")
        }
        guard validName(project) else {
            throw APIKeyError("project must be 1 to 64 letters, digits, '.', '_' or '-', not \"\(project)\"")
        }
        var generator = SystemRandomNumberGenerator()
        let id = "key_" + hex((0..<6).map { _ in UInt8.random(in: 0...255, using: &generator) })
        let secret = id + "_" + hex((0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) })
        let record = APIKeyRecord(
            id: id,
            tenant: tenant,
            project: project,
            admin: admin,
            hash: hash(secret),
            createdAt: now.storable
        )
        return (secret, record)
    }

    /// Hex SHA-256 of a secret. A key has 256 random bits, so a fast hash is as safe as a slow one.
    public static func hash(_ secret: String) -> String { hex(SHA256.hash(data: Data(secret.utf8))) }

    static func hex(_ bytes: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

extension Date {
    /// This time to the millisecond, as the stores keep it (seconds since 1970 in a double): a record reads back
    /// equal to the one written.
    var storable: Date { Date(timeIntervalSince1970: (timeIntervalSince1970 * 1000).rounded() / 1000) }
}

public struct APIKeyError: Error, Sendable, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// Finds the key behind a bearer token, remembering answers for a minute (so a request costs one hash, not a
/// store read).
final class KeyRing: Sendable {
    private let store: any ServiceStore
    private let known = Mutex<[String: (APIKeyRecord, Date)]>([:])

    init(store: any ServiceStore) { self.store = store }

    func principal(for token: String) async throws -> Principal? {
        // Secrets are `key_` + 12 + `_` + 64 hex digits; anything else is not looked up.
        guard token.utf8.count == 81, token.hasPrefix("key_") else { return nil }
        let digest = APIKeys.hash(token)
        let now = Date()
        if let (record, seen) = known.withLock({ $0[digest] }), now.timeIntervalSince(seen) < 60 {
            return Principal(keyID: record.id, tenant: record.tenant, project: record.project, admin: record.admin)
        }
        guard let record = try await store.key(hash: digest) else { return nil }
        known.withLock { $0[digest] = (record, now) }
        return Principal(keyID: record.id, tenant: record.tenant, project: record.project, admin: record.admin)
    }
}
