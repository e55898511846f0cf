import Foundation

/// The shared cache tiers from the configuration file: `artifacts.*` (the S3-compatible object store and the CDN
/// URL in front of it) and `cache.redis.*`. Credentials are never in the file: the access keys come from the
/// variables it names, and a Redis password from `cache.redis.passwordEnv` or the URL given in
/// `PARGEN_CACHE_REDIS_URL`. None of them is ever printed.
public struct SharedCacheSettings: Sendable, Hashable {
    /// `artifacts.endpoint`: `https://s3.eu-west-1.amazonaws.com`, `https://ACCOUNT.r2.cloudflarestorage.com`,
    /// `http://127.0.0.1:9000` (MinIO).
    public var endpoint: String?
    /// `artifacts.bucket`: setting it turns the shared tiers on.
    public var bucket: String?
    /// `artifacts.region`. Default `us-east-1` (R2: `auto`).
    public var region = "us-east-1"
    /// `artifacts.accessKeyEnv`, `artifacts.secretKeyEnv`, `artifacts.sessionTokenEnv`: the variables holding the
    /// credentials. Defaults: AWS's own names.
    public var accessKeyEnvironment = "AWS_ACCESS_KEY_ID"
    public var secretKeyEnvironment = "AWS_SECRET_ACCESS_KEY"
    public var sessionTokenEnvironment = "AWS_SESSION_TOKEN"
    /// `artifacts.prefix`: a folder in the bucket for everything Pargen stores.
    public var objectPrefix = ""
    /// `artifacts.publicBaseURL`: where a CDN serves the bucket; results, manifests and the service carry
    /// `publicBaseURL + key`.
    public var publicBaseURL: String?
    /// `artifacts.multipartThresholdMB` (default 16) and `artifacts.partSizeMB` (default 8, at least 5).
    public var multipartThresholdMB = 16
    public var partSizeMB = 8
    /// `artifacts.lookupTimeoutMilliseconds`: the longest a lookup waits for the object store. Default 2,000.
    public var lookupTimeout: Duration = .seconds(2)

    /// `cache.redis.url` (`redis://host:port/db`, no password in a file) or `PARGEN_CACHE_REDIS_URL` (which may
    /// carry one). Without it the tiers are the memory LRU and the object store.
    public var redisURL: String?
    /// `cache.redis.passwordEnv`: the variable holding Redis's password.
    public var redisPasswordEnvironment: String?
    /// `cache.redis.timeoutMilliseconds`: the command time-out, past which a lookup is a miss. Default 250.
    public var redisTimeout: Duration = .milliseconds(250)
    /// `cache.redis.poolSize`. Default 4.
    public var redisPoolSize = 4
    /// `cache.redis.lockSeconds`: how long a single-flight lock lasts if its holder crashed. Default 600.
    public var lockTimeToLive: Duration = .seconds(600)
    /// `cache.redis.keyPrefix`. Default `pargen:`.
    public var redisPrefix = "pargen:"

    public init() {}

    public var isConfigured: Bool { bucket != nil }
}

extension ValueReader {
    func readSharedCache() -> SharedCacheSettings {
        var settings = SharedCacheSettings()
        settings.endpoint = endpoint("artifacts.endpoint")
        settings.bucket = string("artifacts.bucket")
        if let bucket = settings.bucket,
            bucket.count < 3 || bucket.count > 63
                || !bucket.allSatisfy({ $0.isLowercase || $0.isNumber || $0 == "-" || $0 == "." })
        {
            problems.append("artifacts.bucket: expected 3 to 63 lowercase letters, digits, '-' or '.', not \(bucket)")
            settings.bucket = nil
        }
        if settings.bucket != nil, settings.endpoint == nil {
            problems.append("artifacts.endpoint: required with artifacts.bucket (the S3-compatible service's URL)")
        }
        if let v = string("artifacts.region") { settings.region = v }
        if let v = string("artifacts.accessKeyEnv") { settings.accessKeyEnvironment = v }
        if let v = string("artifacts.secretKeyEnv") { settings.secretKeyEnvironment = v }
        if let v = string("artifacts.sessionTokenEnv") { settings.sessionTokenEnvironment = v }
        if let v = string("artifacts.prefix") {
            settings.objectPrefix = v.isEmpty || v.hasSuffix("/") ? v : v + "/"
        }
        if let v = endpoint("artifacts.publicBaseURL") { settings.publicBaseURL = v }
        if let v = int("artifacts.multipartThresholdMB", min: 5, max: 5_000) { settings.multipartThresholdMB = v }
        if let v = int("artifacts.partSizeMB", min: 5, max: 5_000) { settings.partSizeMB = v }
        if let v = double("artifacts.lookupTimeoutMilliseconds", in: 1...60_000) {
            settings.lookupTimeout = .milliseconds(Int64(v))
        }
        if let v = string("cache.redis.url") { settings.redisURL = v }
        if let v = string("cache.redis.passwordEnv") { settings.redisPasswordEnvironment = v }
        if let v = double("cache.redis.timeoutMilliseconds", in: 1...60_000) { settings.redisTimeout = .milliseconds(Int64(v)) }
        if let v = int("cache.redis.poolSize", min: 1, max: 256) { settings.redisPoolSize = v }
        if let v = seconds("cache.redis.lockSeconds") { settings.lockTimeToLive = v }
        if let v = string("cache.redis.keyPrefix") { settings.redisPrefix = v }
        if settings.redisURL != nil, settings.bucket == nil {
            problems.append(
                "cache.redis.url: needs artifacts.bucket too (Redis says where each artifact is; the media itself lives in the object store every worker can reach)"
            )
        }
        return settings
    }
}
