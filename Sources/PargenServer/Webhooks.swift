import Crypto
public import Foundation
import Pargen
#if canImport(Glibc)
import Glibc
#endif

/// A tenant's webhook: where its events go, which ones, and the secret that signs them.
public struct WebhookRecord: Sendable, Hashable, Codable {
    /// `wh_` and 16 hex digits.
    public var id: String
    public var tenant: String
    public var url: String
    /// Event types to send (`job.finished`, `budget.alert`, ...); `*` for every one.
    public var events: [String]
    /// `whsec_` and the base64 of 32 random bytes: the HMAC key of the signatures (Standard Webhooks).
    public var secret: String
    public var createdAt: Date

    public init(id: String, tenant: String, url: String, events: [String], secret: String, createdAt: Date) {
        self.id = id
        self.tenant = tenant
        self.url = url
        self.events = events
        self.secret = secret
        self.createdAt = createdAt
    }

    func wants(_ type: String) -> Bool { events.contains("*") || events.contains(type) }
}

/// One try at sending a delivery.
public struct WebhookAttempt: Sendable, Hashable, Codable {
    public var at: Date
    /// The receiver's HTTP status, if it answered.
    public var status: Int?
    /// Why the try failed, if it did.
    public var error: String?
    public var milliseconds: Int

    public init(at: Date, status: Int?, error: String?, milliseconds: Int) {
        self.at = at
        self.status = status
        self.error = error
        self.milliseconds = milliseconds
    }
}

/// One event on its way to one webhook. Its id (`webhook-id`) stays the same across retries, so a receiver
/// can drop a message it has already handled.
public struct WebhookDelivery: Sendable, Hashable, Codable {
    public enum State: String, Sendable, Hashable, Codable { case pending, delivered, failed }

    /// `msg_` and 24 hex digits.
    public var id: String
    public var webhookID: String
    public var tenant: String
    public var eventType: String
    /// The exact bytes sent (and signed) on every try.
    public var payload: [UInt8]
    public var state: State
    public var attempts: [WebhookAttempt]
    public var nextAttemptAt: Date?
    public var createdAt: Date

    public init(
        id: String,
        webhookID: String,
        tenant: String,
        eventType: String,
        payload: [UInt8],
        state: State,
        attempts: [WebhookAttempt],
        nextAttemptAt: Date?,
        createdAt: Date
    ) {
        self.id = id
        self.webhookID = webhookID
        self.tenant = tenant
        self.eventType = eventType
        self.payload = payload
        self.state = state
        self.attempts = attempts
        self.nextAttemptAt = nextAttemptAt
        self.createdAt = createdAt
    }
}

/// Standard Webhooks signatures: `v1,` and the base64 HMAC-SHA256, keyed by the secret's bytes, of
/// `{webhook-id}.{webhook-timestamp}.{body}`.
public enum WebhookSignature {
    /// A new secret: `whsec_` and the base64 of 32 random bytes.
    public static func makeSecret() -> String {
        var generator = SystemRandomNumberGenerator()
        return "whsec_" + Data((0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }).base64EncodedString()
    }

    /// The `webhook-signature` header's value.
    public static func sign(id: String, timestamp: Int, body: [UInt8], secret: String) -> String {
        let key = SymmetricKey(data: Data(base64Encoded: String(secret.dropFirst("whsec_".count))) ?? Data(secret.utf8))
        var signed = Data("\(id).\(timestamp).".utf8)
        signed.append(contentsOf: body)
        let mac = HMAC<SHA256>.authenticationCode(for: signed, using: key)
        return "v1," + Data(mac).base64EncodedString()
    }

    /// Checks a delivery as a receiver does: one of the header's signatures matches, and the timestamp is
    /// within `tolerance` of `now` (replays of old messages are refused).
    public static func verify(
        id: String,
        timestamp: String,
        signatures: String,
        body: [UInt8],
        secret: String,
        now: Date = Date(),
        tolerance: TimeInterval = 300
    ) -> Bool {
        guard let seconds = Int(timestamp), abs(now.timeIntervalSince1970 - Double(seconds)) <= tolerance else {
            return false
        }
        let expected = sign(id: id, timestamp: seconds, body: body, secret: secret)
        return signatures.split(separator: " ").contains { candidate in
            // Constant time: the comparison does not stop at the first differing byte.
            let given = Array(candidate.utf8)
            let wanted = Array(expected.utf8)
            guard given.count == wanted.count else { return false }
            return zip(given, wanted).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
        }
    }
}

/// When a failed delivery is tried again: Svix's schedule (at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h),
/// which spans more than 24 h, each delay with up to 10 % jitter.
public struct WebhookSchedule: Sendable, Hashable {
    /// The delay before each try; the first is the first delivery's.
    public var delays: [Duration]

    public static let standard = WebhookSchedule(delays: [
        .zero, .seconds(5), .seconds(300), .seconds(1800), .seconds(7200), .seconds(18_000), .seconds(36_000),
        .seconds(36_000),
    ])

    public init(delays: [Duration]) { self.delays = delays.isEmpty ? [.zero] : delays }

    /// The delay before try `attempt + 1` after `attempt` failed ones, or `nil` when none is left.
    public func delay(afterFailures attempt: Int, jitter: Double = Double.random(in: 0...0.1)) -> Duration? {
        guard attempt < delays.count else { return nil }
        let base = delays[attempt]
        return base + base * jitter
    }

    /// From the first try to the last.
    public var span: Duration { delays.reduce(.zero, +) }
}

/// Refuses webhook targets that would let a tenant reach the server's own network (SSRF): only http and
/// https, and no loopback, private, link-local (cloud metadata), carrier-grade NAT, multicast or unspecified
/// address, as written or as the name resolves, unless the configuration allows them.
enum WebhookTarget {
    static func check(_ text: String, allowPrivate: Bool) -> String? {
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased(),
            scheme == "http" || scheme == "https", let host = components.host, !host.isEmpty
        else { return "must be an http or https URL" }
        guard text.utf8.count <= 2000 else { return "must be at most 2000 characters" }
        if components.user != nil || components.password != nil { return "must not carry a user or password" }
        if allowPrivate { return nil }
        let bare = host.hasPrefix("[") ? String(host.dropFirst().dropLast()) : host
        let addresses = resolve(bare)
        guard !addresses.isEmpty else { return "names a host that does not resolve" }
        if let blocked = addresses.first(where: isPrivate) {
            return "resolves to \(blocked), a private, loopback or link-local address"
        }
        return nil
    }

    /// Every address the name resolves to (or the address itself).
    static func resolve(_ host: String) -> [String] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &result) == 0, let first = result else { return [] }
        defer { freeaddrinfo(first) }
        var addresses: [String] = []
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let info = cursor {
            var buffer = [CChar](repeating: 0, count: Int(NI_MAXHOST))
            if getnameinfo(info.pointee.ai_addr, info.pointee.ai_addrlen, &buffer, socklen_t(buffer.count), nil, 0, NI_NUMERICHOST) == 0 {
                addresses.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
            }
            cursor = info.pointee.ai_next
        }
        return addresses
    }

    static func isPrivate(_ address: String) -> Bool {
        if address.contains(":") {
            let lower = address.lowercased()
            if lower == "::1" || lower == "::" { return true }
            if lower.hasPrefix("fe8") || lower.hasPrefix("fe9") || lower.hasPrefix("fea") || lower.hasPrefix("feb") { return true }
            if lower.hasPrefix("fc") || lower.hasPrefix("fd") || lower.hasPrefix("ff") { return true }
            if lower.hasPrefix("::ffff:") { return isPrivate(String(lower.dropFirst(7))) }
            return false
        }
        let parts = address.split(separator: ".").compactMap { UInt8($0) }
        guard parts.count == 4 else { return true }
        switch (parts[0], parts[1]) {
        case (0, _), (10, _), (127, _): return true
        case (169, 254): return true
        case (172, 16...31): return true
        case (192, 168): return true
        case (100, 64...127): return true
        case (224...255, _): return true
        default: return false
        }
    }
}
