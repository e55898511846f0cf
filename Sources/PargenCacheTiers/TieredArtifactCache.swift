public import Foundation
public import Logging
public import Pargen
public import PargenRedis
public import PargenS3
import Synchronization

/// The shared cache tiers on Redis and an S3-compatible object store (behind a CDN URL), after the engine's
/// memory LRU.
///
/// - **Object store** (required): the media, under content-addressed keys (`media/<fingerprint>/<sha256>.<format>`),
///   and one small record per fingerprint (`entries/<fingerprint>.json`) saying which object it is, what it cost
///   and when it was made. It outlives Redis: a campaign run again next week finds its media here.
/// - **Redis** (optional): the same records under `<prefix>cache:<fingerprint>`, with the time-to-live, so that a
///   lookup is one round trip on the local network; and the single-flight locks (`<prefix>flight:<fingerprint>`,
///   `SET NX PX` with fencing tokens) that let one process generate a request while the others wait for it.
///   Size it with `maxmemory` and an LRU policy (`allkeys-lru`): an evicted record is found again in the object
///   store and written back.
///
/// Failure policy: a lookup asks Redis within its command time-out (250 ms by default) and the object store within
/// ``Settings/lookupTimeout`` (three tries); a Redis that fails, is slow or is down is passed over, and an object
/// store that does too makes the lookup ``SharedLookup/unanswered`` (both counted in
/// ``SharedCacheStats/lookupErrors``). Redis's client refuses at once while it waits to reconnect. No lookup
/// throws; none waits past those time-outs. Claims on a Redis that is away answer ``SharedFlightClaim/unavailable`` (the job goes on alone).
public final class TieredArtifactCache: SharedArtifactCache {
    public struct Settings: Sendable {
        /// Records older than this are misses (and Redis drops them by itself). Default 24 h.
        public var timeToLive: Duration
        /// How long a single-flight lock lasts if its holder never gives it back (it crashed). Default 10 min.
        public var lockTimeToLive: Duration
        /// Prefix of every Redis key. Default `pargen:`.
        public var redisPrefix: String
        /// Prefix of every object key (`team-a/` puts everything under `team-a/media/…`). Default none.
        public var objectPrefix: String
        /// Where a CDN serves the bucket: `https://cdn.example.com/` makes `media/…` into
        /// `https://cdn.example.com/media/…`.
        public var publicBaseURL: URL?
        /// The longest a lookup waits for the object store. Default 2 s.
        public var lookupTimeout: Duration

        public init(
            timeToLive: Duration = .seconds(86_400),
            lockTimeToLive: Duration = .seconds(600),
            redisPrefix: String = "pargen:",
            objectPrefix: String = "",
            publicBaseURL: URL? = nil,
            lookupTimeout: Duration = .seconds(2)
        ) {
            self.timeToLive = timeToLive
            self.lockTimeToLive = lockTimeToLive
            self.redisPrefix = redisPrefix
            self.objectPrefix = objectPrefix
            self.publicBaseURL = publicBaseURL
            self.lookupTimeout = lookupTimeout
        }
    }

    /// One record, as stored in Redis and in the object store.
    struct Record: Codable {
        var artifact: SharedArtifact
        /// Seconds since 1970.
        var createdAt: Double
    }

    public let settings: Settings
    let redis: RedisClient?
    let objects: S3Client
    /// The same bucket, for lookups: three tries, each within the lookup time-out.
    let lookups: S3Client
    let logger: Logger
    let counters = Mutex(SharedCacheStats())
    /// Claims this process holds, by fingerprint.
    let held = Mutex([String: RedisLock]())

    public init(objects: S3Client, redis: RedisClient?, settings: Settings = .init(), logger: Logger = Logger(label: "pargen.cache")) {
        self.objects = objects
        self.redis = redis
        self.settings = settings
        self.logger = logger
        var quick = objects.configuration
        quick.maxAttempts = 3
        quick.requestTimeout = settings.lookupTimeout
        self.lookups = S3Client(configuration: quick, httpClient: objects.http, logger: logger, sleep: objects.sleep)
    }

    func redisKey(_ fingerprint: String) -> String { settings.redisPrefix + "cache:" + fingerprint }
    func recordKey(_ fingerprint: String) -> String { settings.objectPrefix + "entries/" + fingerprint + ".json" }

    public func mediaKey(fingerprint: String, sha256: String, format: MediaFormat) -> String {
        settings.objectPrefix + SharedArtifact.key(fingerprint: fingerprint, sha256: sha256, format: format)
    }

    /// The URL a CDN serves `key` at, under ``Settings/publicBaseURL``.
    public func publicURL(for key: String) -> URL? {
        guard let base = settings.publicBaseURL else { return nil }
        var text = base.absoluteString
        if !text.hasSuffix("/") { text += "/" }
        return URL(string: text + key)
    }

    // MARK: - SharedArtifactCache

    /// Redis first, then the object store, which is the one that can say a record is absent (Redis may have
    /// evicted it): a lookup whose object store call failed is ``SharedLookup/unanswered``.
    public func lookup(_ fingerprint: String) async -> SharedLookup {
        let now = Date().timeIntervalSince1970
        if let redis {
            do {
                if let text = try await redis.get(redisKey(fingerprint)), let record = decode(Data(text.utf8)),
                    fresh(record, now: now)
                {
                    counters.withLock { $0.redisHits += 1 }
                    var found = record.artifact
                    found.tier = "redis"
                    return .found(found)
                }
            } catch {
                counters.withLock { $0.lookupErrors += 1 }
            }
        }
        let data: Data?
        do {
            data = try await lookups.getData(key: recordKey(fingerprint))
        } catch {
            counters.withLock {
                $0.lookupErrors += 1
                $0.unansweredLookups += 1
                $0.misses += 1
            }
            return .unanswered
        }
        if let data, let record = decode(data), fresh(record, now: now) {
            counters.withLock { $0.objectStoreHits += 1 }
            // Back into Redis for the next process that asks, for the rest of its lifetime.
            if let redis, let text = String(data: (try? JSONEncoder().encode(record)) ?? Data(), encoding: .utf8) {
                let left = settings.timeToLive.seconds - (now - record.createdAt)
                if left > 1 { try? await redis.set(redisKey(fingerprint), text, ttl: .milliseconds(Int64(left * 1000))) }
            }
            var found = record.artifact
            found.tier = "object-store"
            return .found(found)
        }
        counters.withLock { $0.misses += 1 }
        return .absent
    }

    public func fetch(_ shared: SharedArtifact, to file: URL) async throws {
        do {
            let written = try await objects.getObject(key: shared.key, to: file, expectedSHA256: shared.sha256)
            counters.withLock { $0.bytesDownloaded += written }
        } catch {
            counters.withLock { $0.fetchFailures += 1 }
            throw error
        }
    }

    public func publish(_ artifact: Artifact, fingerprint: String, cost: Money) async throws -> SharedArtifact {
        let key = mediaKey(fingerprint: fingerprint, sha256: artifact.sha256, format: artifact.format)
        let shared = SharedArtifact(artifact, fingerprint: fingerprint, key: key, publicURL: publicURL(for: key), cost: cost)
        do {
            // Content-addressed: a second upload of the same key writes the same bytes (no HEAD first: one request
            // fewer per artifact, and the object store is the slowest part of a miss).
            try await objects.putObject(key: key, file: artifact.url, contentType: artifact.contentType)
            counters.withLock { $0.bytesUploaded += artifact.byteCount }
            let record = Record(artifact: shared, createdAt: Date().timeIntervalSince1970)
            let data = try JSONEncoder().encode(record)
            // Redis first when this process holds the line's claim: a holder whose lock ran out while it worked,
            // and whose line a later holder has recorded since, writes neither record, so Redis and the object
            // store name the same artifact. (Its media stays: content-addressed, no record points to it.)
            if let redis {
                do {
                    let text = String(decoding: data, as: UTF8.self)
                    if let lock = held.withLock({ $0[fingerprint] }) {
                        // Written under the claim's fencing token.
                        let answer = try await redis.evaluate(
                            Self.fencedWrite,
                            keys: [redisKey(fingerprint), redisKey(fingerprint) + ":fence"],
                            arguments: [text, String(lock.fence), String(max(1, Int64(settings.timeToLive.seconds * 1000)))]
                        )
                        if answer != .integer(1) {
                            counters.withLock { $0.staleWritesRefused += 1 }
                            return shared
                        }
                    } else {
                        try await redis.set(redisKey(fingerprint), text, ttl: settings.timeToLive)
                    }
                } catch {
                    // The object store has it; Redis learns it at the next lookup that reaches the object store.
                    counters.withLock { $0.lookupErrors += 1 }
                }
            }
            try await objects.putData(key: recordKey(fingerprint), data: data, contentType: "application/json")
            counters.withLock { $0.uploads += 1 }
            return shared
        } catch {
            counters.withLock { $0.uploadFailures += 1 }
            throw error
        }
    }

    /// Sets the record (KEYS[1]) unless a holder with a larger fencing token has set it (KEYS[2] keeps the
    /// token of the last write); ARGV: the record, the token, the time-to-live in milliseconds.
    static let fencedWrite = RedisScript(
        """
        local last = tonumber(redis.call('GET', KEYS[2]) or '0')
        if tonumber(ARGV[2]) < last then return 0 end
        redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
        return 1
        """
    )

    public func claim(_ fingerprint: String) async -> SharedFlightClaim {
        guard let redis else { return .unavailable }
        do {
            guard let lock = try await redis.lock(settings.redisPrefix + "flight:" + fingerprint, ttl: settings.lockTimeToLive)
            else {
                counters.withLock { $0.heldElsewhere += 1 }
                return .heldElsewhere
            }
            held.withLock { $0[fingerprint] = lock }
            return .leader(fingerprint: fingerprint, owner: lock.owner, fence: lock.fence)
        } catch {
            counters.withLock { $0.lockErrors += 1 }
            return .unavailable
        }
    }

    public func release(_ claim: SharedFlightClaim) async {
        guard case .leader(let fingerprint, let owner, _) = claim, let redis else { return }
        let lock = held.withLock { held -> RedisLock? in
            guard held[fingerprint]?.owner == owner else { return nil }
            return held.removeValue(forKey: fingerprint)
        }
        guard let lock else { return }
        // A lock that cannot be given back now ends by its time-to-live.
        _ = try? await redis.unlock(lock)
    }

    public func stats() async -> SharedCacheStats { counters.withLock { $0 } }

    // MARK: - Records

    func decode(_ data: Data) -> Record? {
        // A record that is not ours or is damaged is a miss, never an error.
        // Its numbers are checked too: a duration of 1e300 seconds stopped the process that turned it into a
        // Duration, and the record comes from whoever can write to the shared Redis or bucket.
        guard let record = try? JSONDecoder().decode(Record.self, from: data), !record.artifact.key.isEmpty,
            record.artifact.sha256.count == 64, (0...86_400).contains(record.artifact.durationSeconds),
            record.artifact.byteCount >= 0, record.createdAt.isFinite
        else { return nil }
        return record
    }

    func fresh(_ record: Record, now: Double) -> Bool { now - record.createdAt < settings.timeToLive.seconds }
}
