public import Foundation

/// The cache tiers shared between processes and between runs (Redis, then an object store behind a CDN), which
/// the engine consults after its memory LRU. `PargenCacheTiers` implements it on Redis and S3-compatible storage.
///
/// Its failure policy is the engine's: a lookup never throws and never waits past the tier's short time-out, so
/// no job fails because a cache is away. A lookup says whether the tiers answered: a line they answered is
/// absent is generated; a line no tier could answer for may exist, so the engine asks again shortly, and pays
/// for it only after ``ParallelGenerator/sharedTierTries`` unanswered lookups and failed fetches. Only
/// ``publish(_:fingerprint:cost:)`` and ``fetch(_:to:)`` report errors, and the engine decides what they mean.
public protocol SharedArtifactCache: Sendable {
    /// What the tiers hold for `fingerprint`: the artifact any process generated, that they hold none, or that
    /// none of them could say (errors or time-outs).
    func lookup(_ fingerprint: String) async -> SharedLookup

    /// Fetches the shared artifact's media into `file`, checked against its length and SHA-256.
    func fetch(_ shared: SharedArtifact, to file: URL) async throws

    /// Uploads a newly generated artifact (content-addressed: its fingerprint and hash) and records it for
    /// every process, with what it cost.
    func publish(_ artifact: Artifact, fingerprint: String, cost: Money) async throws -> SharedArtifact

    /// Asks to be the one process that generates `fingerprint` now (a lock with a time-to-live).
    func claim(_ fingerprint: String) async -> SharedFlightClaim

    /// Gives a claim back once its artifact is published (or its attempt failed).
    func release(_ claim: SharedFlightClaim) async

    func stats() async -> SharedCacheStats
}

/// What the shared tiers answered about one fingerprint.
public enum SharedLookup: Sendable, Equatable {
    /// The artifact some process generated for it.
    case found(SharedArtifact)
    /// The tiers answered that no process has recorded it (the durable tier said so; a record evicted from a
    /// faster tier alone is not absent).
    case absent
    /// No tier could say (each erred or timed out): it may exist.
    case unanswered

    /// The artifact, when one was found.
    public var artifact: SharedArtifact? {
        if case .found(let artifact) = self { return artifact }
        return nil
    }
}

/// One artifact in the shared tiers.
public struct SharedArtifact: Sendable, Hashable, Codable {
    public var fingerprint: String
    /// The object's key in the bucket: `media/<fingerprint>/<sha256>.<format>`.
    public var key: String
    /// Where a team's apps fetch it (the CDN in front of the bucket), when a public base URL is configured.
    public var publicURL: URL?
    public var format: MediaFormat
    public var contentType: String
    public var byteCount: Int64
    public var sha256: String
    public var durationSeconds: Double
    public var provider: String
    /// What generating it cost: each reuse saves this much.
    public var cost: Money
    /// The tier that answered the lookup (`redis` or `object-store`); not stored.
    public var tier: String?

    public init(
        fingerprint: String,
        key: String,
        publicURL: URL?,
        format: MediaFormat,
        contentType: String,
        byteCount: Int64,
        sha256: String,
        durationSeconds: Double,
        provider: String,
        cost: Money,
        tier: String? = nil
    ) {
        self.fingerprint = fingerprint
        self.key = key
        self.publicURL = publicURL
        self.format = format
        self.contentType = contentType
        self.byteCount = byteCount
        self.sha256 = sha256
        self.durationSeconds = durationSeconds
        self.provider = provider
        self.cost = cost
        self.tier = tier
    }

    /// The shared record of a generated artifact, stored under `key`.
    public init(_ artifact: Artifact, fingerprint: String, key: String, publicURL: URL?, cost: Money) {
        self.init(
            fingerprint: fingerprint,
            key: key,
            publicURL: publicURL,
            format: artifact.format,
            contentType: artifact.contentType,
            byteCount: artifact.byteCount,
            sha256: artifact.sha256,
            durationSeconds: artifact.duration.seconds,
            provider: artifact.provider,
            cost: cost
        )
    }

    /// `media/<fingerprint>/<sha256>.<format>`.
    public static func key(fingerprint: String, sha256: String, format: MediaFormat) -> String {
        "media/\(fingerprint)/\(sha256).\(format.name)"
    }
}

/// The answer to ``SharedArtifactCache/claim(_:)``.
public enum SharedFlightClaim: Sendable, Hashable {
    /// This process generates it; `fence` grows with every claim granted on the fingerprint.
    case leader(fingerprint: String, owner: String, fence: Int64)
    /// Another process is generating it: wait for its result.
    case heldElsewhere
    /// The lock could not be asked for (the tier is away): generate without it.
    case unavailable
}

/// What the shared tiers did, as seen by this process.
public struct SharedCacheStats: Sendable, Hashable, Codable {
    public var redisHits = 0
    public var objectStoreHits = 0
    public var misses = 0
    /// Calls to a tier that did not answer in time or answered with an error: lookups (one per tier asked) and
    /// writes of records to Redis.
    public var lookupErrors = 0
    /// Lookups no tier could answer (counted in ``misses`` too): the line may exist, so the engine asked again.
    public var unansweredLookups = 0
    public var uploads = 0
    public var uploadFailures = 0
    public var bytesUploaded: Int64 = 0
    public var bytesDownloaded: Int64 = 0
    /// Claims found held by another process (its result was waited for).
    public var heldElsewhere = 0
    /// Claims Redis did not answer in time: the job went on without the lock, so another process may generate
    /// the same request at the same time.
    public var lockErrors = 0
    /// Fetches of a shared artifact that failed after the object store's tries.
    public var fetchFailures = 0
    /// Publishes whose records were not written (to Redis or the object store) because a holder with a later
    /// fencing token had recorded the line since.
    public var staleWritesRefused = 0

    public init() {}

    public var hits: Int { redisHits + objectStoreHits }
}
