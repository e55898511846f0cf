import AsyncHTTPClient
import Foundation
import Pargen
import PargenCacheTiers
import PargenRedis
import PargenS3
import PargenTesting

/// The shared cache tiers on real servers (a Redis and an S3-compatible server on loopback, started by
/// `scripts/bench.sh cache`):
///
/// 1. Lookup latency per tier, p50 and p99 over sequential lookups: the memory LRU, a Redis hit, an object-store
///    hit (the same bucket without Redis), and a miss through both.
/// 2. A campaign's throughput when 90 % of its lines were generated before (by another process, found in the
///    shared tiers) against the same campaign with none, on a provider that takes 200 ms a call and runs 50 at a
///    time (a fast speech API).
enum CacheBench {
    static func percentiles(_ samples: [Duration]) -> (p50: Double, p99: Double) {
        let sorted = samples.sorted()
        func at(_ p: Double) -> Double {
            let value = sorted[min(sorted.count - 1, Int((Double(sorted.count - 1) * p).rounded(.up)))]
            return Double(value.components.attoseconds) / 1e15 + Double(value.components.seconds) * 1000
        }
        return (at(0.5), at(0.99))
    }

    static func run(redisURL: String, s3Endpoint: String, lines: Int) async throws {
        let http = HTTPClient(eventLoopGroupProvider: .singleton)
        let bucket = "bench-\(UInt32.random(in: 0...UInt32.max))"
        let s3 = S3Client(
            configuration: S3Configuration(
                endpoint: URL(string: s3Endpoint)!,
                bucket: bucket,
                credentials: AWSCredentials(accessKeyID: "bench", secretAccessKey: "bench-secret")
            ),
            httpClient: http
        )
        try await s3.createBucket()
        let redis = RedisClient(configuration: try RedisConfiguration(url: redisURL))
        let prefix = "bench\(UInt32.random(in: 0...UInt32.max)):"
        let tiers = TieredArtifactCache(objects: s3, redis: redis, settings: .init(redisPrefix: prefix))
        let objectOnly = TieredArtifactCache(objects: s3, redis: nil, settings: .init(redisPrefix: prefix))
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("pargen-cache-bench-\(getpid())")
        defer { try? FileManager.default.removeItem(at: scratch) }

        // A provider like a fast speech API: 200 ms a call, 50 at a time.
        let provider = ScriptedProvider(name: "speech", kinds: [.audio], quota: ProviderQuota(concurrentTasks: 50)) { _, _ in
            .succeed(latency: .milliseconds(200))
        }
        var configuration = PargenConfiguration(
            rateLimits: .unlimited,
            batching: .init(pacingJitter: .zero),
            resources: .init(maxAPICalls: 10_000, maxConcurrentJobs: 50, maxMemoryMB: 1 << 30, maxStorageGB: 1 << 20, minimumFraction: 1)
        )
        configuration.retry.maxAttempts = 1
        func requests(_ range: Range<Int>, _ tag: String) -> [GenerationRequest] {
            range.map { .audio(prompt: "\(tag) line \($0)", duration: .seconds(1)) }
        }
        func campaign(_ requests: [GenerationRequest], into folder: String, shared: Bool = true) async throws
            -> (Duration, [GenerationResult])
        {
            let generator = ParallelGenerator(
                configuration: configuration,
                providers: [provider],
                sharedCache: shared ? tiers : nil,
                outputDirectory: scratch.appendingPathComponent(folder),
                clock: .continuous
            )
            try await generator.start()
            let started = ContinuousClock.now
            let results = try await generator.generate(requests)
            let elapsed = ContinuousClock.now - started
            try await generator.stop()
            return (elapsed, results)
        }

        // An earlier process generates and publishes 90 % of the second campaign's lines.
        let seeded = lines * 9 / 10
        let (_, published) = try await campaign(requests(0..<seeded, "cached"), into: "seed")
        guard published.allSatisfy(\.succeeded) else { print("seeding failed"); return }

        // 1. Lookup latency per tier.
        let validator = RequestValidator()
        let fingerprints = requests(0..<seeded, "cached").map { request in
            (try? validator.validate(request, fallbackID: "x").fingerprint) ?? ""
        }
        let memory = MemoryLRUCache(capacity: lines, timeToLive: nil)
        for (i, result) in published.enumerated() { await memory.put(fingerprints[i], result.artifact!) }
        var samples: [String: [Duration]] = [:]
        let rounds = min(2000, fingerprints.count)
        for i in 0..<rounds {
            let fingerprint = fingerprints[i % fingerprints.count]
            var t = ContinuousClock.now
            _ = await memory.get(fingerprint)
            samples["memory LRU", default: []].append(ContinuousClock.now - t)
            t = ContinuousClock.now
            let viaRedis = await tiers.lookup(fingerprint).artifact
            samples["Redis hit", default: []].append(ContinuousClock.now - t)
            t = ContinuousClock.now
            let viaObjects = await objectOnly.lookup(fingerprint).artifact
            samples["object-store hit", default: []].append(ContinuousClock.now - t)
            t = ContinuousClock.now
            let missing = await tiers.lookup("0000\(i)")
            samples["miss (Redis, then object store)", default: []].append(ContinuousClock.now - t)
            guard viaRedis?.tier == "redis", viaObjects?.tier == "object-store", missing == .absent else {
                print("lookup \(i) answered from the wrong tier")
                return
            }
        }
        print("shared cache lookups, \(rounds) each, sequential (Redis and moto on loopback):")
        for name in ["memory LRU", "Redis hit", "object-store hit", "miss (Redis, then object store)"] {
            let (p50, p99) = percentiles(samples[name]!)
            print("  \(name.padding(toLength: 34, withPad: " ", startingAt: 0)) p50 \(String(format: "%8.3f", p50)) ms   p99 \(String(format: "%8.3f", p99)) ms")
        }

        // 2. Throughput: 90 % hits against none (fresh lines), the same campaign size.
        let hits = requests(0..<seeded, "cached") + requests(0..<(lines - seeded), "fresh")
        let none = requests(0..<lines, "none")
        let calls = provider.calls.count
        let (withHits, hitResults) = try await campaign(hits.shuffled(), into: "hits")
        let paid = provider.calls.count - calls
        let (without, _) = try await campaign(none, into: "none")
        let (local, _) = try await campaign(requests(0..<lines, "local"), into: "local", shared: false)
        let rate = { (elapsed: Duration) in Double(lines) / (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18) }
        print("campaign of \(lines) lines, provider 200 ms/call, 50 at a time:")
        print("  90 % in the shared tiers: \(String(format: "%.0f", rate(withHits))) lines/s (\(paid) provider calls, \(hitResults.filter(\.servedFromCache).count) served from the tiers)")
        print("  none cached:              \(String(format: "%.0f", rate(without))) lines/s (\(lines) provider calls)")
        print("  no shared tiers at all:   \(String(format: "%.0f", rate(local))) lines/s (the memory LRU only)")
        print(String(format: "  ratio 90 %% hits / none: %.2fx; none / no tiers: %.2fx (the cost of looking up and publishing)",
            rate(withHits) / rate(without), rate(without) / rate(local)))
        try? await http.shutdown()
    }
}
