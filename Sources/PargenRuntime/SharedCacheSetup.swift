public import AsyncHTTPClient
public import Foundation
public import Logging
public import Pargen
import PargenCacheTiers
public import PargenProviders
import PargenRedis
import PargenS3

/// The shared cache tiers the configuration asks for (`artifacts.*`, `cache.redis.*`), or `nil`.
///
/// A credential variable that is unset or a Redis URL that cannot be read throws ``RuntimeError`` with one line per
/// problem (never a secret).
public func makeSharedCache(
    setup: PargenSetup,
    http: HTTPClient,
    logger: Logger,
    environment: [String: String] = ProcessInfo.processInfo.environment
) throws(RuntimeError) -> (any SharedArtifactCache)? {
    let settings = setup.sharedCache
    guard setup.configuration.caching.enabled, let bucket = settings.bucket, let endpointText = settings.endpoint,
        let endpoint = URL(string: endpointText)
    else { return nil }
    var problems: [String] = []
    let access = environment[settings.accessKeyEnvironment] ?? ""
    let secret = environment[settings.secretKeyEnvironment] ?? ""
    if access.isEmpty { problems.append("artifacts: \(settings.accessKeyEnvironment) (the object store's access key id) is not set") }
    if secret.isEmpty { problems.append("artifacts: \(settings.secretKeyEnvironment) (the object store's secret key) is not set") }
    var redis: RedisClient?
    if let url = environment["PARGEN_CACHE_REDIS_URL"] ?? settings.redisURL {
        do {
            var configuration = try RedisConfiguration(url: url)
            if let variable = settings.redisPasswordEnvironment {
                guard let password = environment[variable], !password.isEmpty else {
                    throw RedisError(.configuration, "\(variable) (Redis's password) is not set")
                }
                configuration.password = password
            }
            configuration.commandTimeout = settings.redisTimeout
            // A connection (and its hello) gets at least as long as a command: a loaded machine that takes over a
            // second to connect would otherwise have Redis marked away and skipped for its backoff.
            configuration.connectTimeout = max(configuration.connectTimeout, settings.redisTimeout)
            configuration.poolSize = settings.redisPoolSize
            redis = RedisClient(configuration: configuration, logger: logger)
        } catch {
            problems.append("cache.redis.url: \(error)")
        }
    }
    guard problems.isEmpty else { throw RuntimeError(.configuration, problems) }
    let token = environment[settings.sessionTokenEnvironment].flatMap { $0.isEmpty ? nil : $0 }
    let objects = S3Client(
        configuration: S3Configuration(
            endpoint: endpoint,
            bucket: bucket,
            region: settings.region,
            credentials: AWSCredentials(accessKeyID: access, secretAccessKey: secret, sessionToken: token),
            multipartThreshold: Int64(settings.multipartThresholdMB) << 20,
            partSize: settings.partSizeMB << 20
        ),
        httpClient: http,
        logger: logger
    )
    return TieredArtifactCache(
        objects: objects,
        redis: redis,
        settings: TieredArtifactCache.Settings(
            timeToLive: setup.configuration.caching.timeToLive ?? .seconds(86_400 * 365),
            lockTimeToLive: settings.lockTimeToLive,
            redisPrefix: settings.redisPrefix,
            objectPrefix: settings.objectPrefix,
            publicBaseURL: settings.publicBaseURL.flatMap(URL.init(string:)),
            lookupTimeout: settings.lookupTimeout
        ),
        logger: logger
    )
}
