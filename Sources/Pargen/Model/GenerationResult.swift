public import Foundation

/// A generated media file, complete and checked.
public struct Artifact: Sendable, Hashable, Codable {
    /// Where the file is (a file URL for local storage).
    public var url: URL
    public var format: MediaFormat
    public var contentType: String
    public var byteCount: Int64
    /// Hex SHA-256 of the file's bytes.
    public var sha256: String
    /// Length of the media.
    public var duration: Duration
    public var provider: String
    /// The provider's task or request id, where it has one.
    public var providerTaskID: String?
    /// Where a team's apps fetch it, when it is published to an object store behind a CDN
    /// (``SharedArtifactCache``).
    public var publicURL: URL?
    /// Its key in the object store.
    public var objectKey: String?

    public init(
        url: URL,
        format: MediaFormat,
        contentType: String,
        byteCount: Int64,
        sha256: String,
        duration: Duration,
        provider: String,
        providerTaskID: String? = nil
    ) {
        self.url = url
        self.format = format
        self.contentType = contentType
        self.byteCount = byteCount
        self.sha256 = sha256
        self.duration = duration
        self.provider = provider
        self.providerTaskID = providerTaskID
    }
}

/// Identifies a job in the job store.
public struct JobID: Sendable, Hashable, Codable, Comparable, CustomStringConvertible {
    public let rawValue: String
    public init(_ rawValue: String) { self.rawValue = rawValue }
    public var description: String { rawValue }
    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// The final outcome of one request.
public struct GenerationResult: Sendable {
    public var requestID: String
    public var jobID: JobID?
    public var outcome: Result<Artifact, GenerationError>
    /// The provider that produced the artifact, or the last one tried.
    public var provider: String?
    /// What was charged for this request, every billed call included: zero for cache hits and de-duplicated
    /// requests, and for failures unless the provider billed an answer that was then lost.
    public var actualCost: Money
    /// Provider calls made for this request (rate-limit snoozes do not count).
    public var attempts: Int
    public var servedFromCache: Bool
    /// Served by another identical request's generation.
    public var deduplicated: Bool
    /// From enqueue to the final state.
    public var latency: Duration
    /// Every error met on the way, oldest first.
    public var errorHistory: [GenerationError]
    /// For a request served by a cache or an identical request: what generating it would have cost.
    public var saved: Money = .zero

    public init(
        requestID: String,
        jobID: JobID?,
        outcome: Result<Artifact, GenerationError>,
        provider: String?,
        actualCost: Money,
        attempts: Int,
        servedFromCache: Bool = false,
        deduplicated: Bool = false,
        latency: Duration = .zero,
        errorHistory: [GenerationError] = []
    ) {
        self.requestID = requestID
        self.jobID = jobID
        self.outcome = outcome
        self.provider = provider
        self.actualCost = actualCost
        self.attempts = attempts
        self.servedFromCache = servedFromCache
        self.deduplicated = deduplicated
        self.latency = latency
        self.errorHistory = errorHistory
    }

    public var artifact: Artifact? { if case .success(let a) = outcome { a } else { nil } }
    public var error: GenerationError? { if case .failure(let e) = outcome { e } else { nil } }
    public var succeeded: Bool { artifact != nil }

    /// How many provider tasks the request used: each task id in its error history and its result's, once.
    /// A synchronous call (speech) has no task id and counts none.
    public var tasks: Int {
        var ids = Set(errorHistory.compactMap(\.taskID))
        if let id = artifact?.providerTaskID { ids.insert(id) }
        return ids.count
    }

    /// The last failure on the way, even when a later attempt succeeded.
    public var lastFailure: GenerationError? { errorHistory.last { $0.code != .rateLimited } }
}
