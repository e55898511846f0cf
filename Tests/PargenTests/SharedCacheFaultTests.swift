import Foundation
import Pargen
import PargenCacheTiers
import PargenProviders
import PargenRedis
import PargenS3
import PargenTesting
import Testing

/// The shared tiers' failure policy, on real servers: an object store that fails a share of its calls or cuts
/// uploads short, and a Redis that stops mid-campaign and comes back.
@Suite(.timeLimit(.minutes(4))) struct SharedCacheFaultTests {
    let http = sharedTestHTTPClient
    /// Answers the provider billed that the engines of this test lost (a call that timed out on a loaded machine
    /// is one: the provider may have made it, so it is charged, and the line's retry buys it again). Every
    /// submission the fake accepted beyond one per generation must be one of these.
    let lostAnswers = Locked(0)

    static func lines(_ tag: String, _ range: ClosedRange<Int>) -> [GenerationRequest] {
        range.map { .audio(prompt: "\(tag) line \($0)", duration: .seconds(2)) }
    }

    func generator(
        _ provider: any GenerationProvider,
        _ shared: TieredArtifactCache,
        publishRetryHorizon: Duration = .seconds(300)
    ) -> ParallelGenerator {
        var configuration = fakeTestConfiguration()
        configuration.caching.publishRetryHorizon = publishRetryHorizon
        configuration.rateLimits.enabled = false
        configuration.caching.enabled = true
        return ParallelGenerator(
            configuration: configuration,
            providers: [provider],
            sharedCache: shared,
            outputDirectory: temporaryDirectory(),
            clock: .continuous
        )
    }

    /// A fake speech provider, and a bucket reached through a fault proxy: the object store's client
    /// configuration points at the proxy (`maxAttempts` tries per request; the client's default without it).
    func faultyStore(
        _ faults: FaultyHTTPProxy.Faults = .init(),
        maxAttempts: Int? = nil
    ) async throws -> (bench: FakeBench, proxy: FaultyHTTPProxy, configuration: S3Configuration) {
        let bench = try await FakeBench.start(.openai, options: { $0.latencySeconds = 0.005...0.01 }, http: http)
        let direct = try await TestS3.client(try TestS3.configuration())
        let proxy = try await FaultyHTTPProxy.start(
            upstream: direct.configuration.endpoint.absoluteString,
            faults: faults,
            httpClient: http
        )
        var configuration = direct.configuration
        configuration.endpoint = URL(string: proxy.baseURL)!
        if let maxAttempts { configuration.maxAttempts = maxAttempts }
        return (bench, proxy, configuration)
    }

    func run(_ generator: ParallelGenerator, _ requests: [GenerationRequest]) async throws -> [GenerationResult] {
        try await generator.start()
        let results = try await generator.generate(requests)
        await countLostAnswers(generator)
        try await generator.stop()
        return results
    }

    func countLostAnswers(_ generator: ParallelGenerator) async {
        let lost = await generator.systemStats().providers.values.reduce(0) { $0 + $1.billedAnswersLost }
        lostAnswers.withLock { $0 += lost }
    }

    @Test func truncatedUploadsAreCaughtAndSentAgain() async throws {
        let direct = try await TestS3.client(try TestS3.configuration())
        let proxy = try await FaultyHTTPProxy.start(
            upstream: direct.configuration.endpoint.absoluteString,
            faults: .init(truncatedUploads: 2),
            httpClient: http
        )
        var configuration = direct.configuration
        configuration.endpoint = URL(string: proxy.baseURL)!
        let s3 = S3Client(configuration: configuration, httpClient: http)
        let file = try randomFile(200_000, seed: 9)
        try await s3.putObject(key: "cut/twice.wav", file: file, contentType: "audio/wav")
        #expect(proxy.seen.truncated == 2, "both cut uploads reached the server")
        // What the bucket holds is the whole file (read around the proxy).
        let back = temporaryDirectory().appendingPathComponent("twice.wav")
        try await direct.getObject(key: "cut/twice.wav", to: back, expectedSHA256: try sha256Hex(file))
        #expect(try Data(contentsOf: back) == Data(contentsOf: file))
        await proxy.stop()
    }

    @Test func aBucketIsCreatedThroughAnOutageThatEnds() async throws {
        // CI once failed here: a loaded S3 server reset the connection of a create, which was tried only once.
        let direct = try TestS3.configuration()
        let proxy = try await FaultyHTTPProxy.start(upstream: direct.endpoint.absoluteString, faults: .init(), httpClient: http)
        var configuration = direct
        configuration.endpoint = URL(string: proxy.baseURL)!
        configuration.baseDelay = .milliseconds(200)
        configuration.maxAttempts = 8
        // The outage ends while the client waits out its backoff after a failed try (its injected sleep), so the
        // create meets it whatever the machine's load (it ended after 300 ms of wall time, which a loaded
        // machine's first try could miss).
        let s3 = S3Client(configuration: configuration, httpClient: http) { _ in proxy.setFailing(false) }
        proxy.setFailing(true)
        try await s3.createBucket()
        #expect(proxy.seen.errors >= 1 && proxy.seen.forwarded == 1, "\(proxy.seen)")
        // The bucket is there: an object goes in.
        try await s3.putObject(key: "after/outage.bin", file: try randomFile(2_000, seed: 4), contentType: "application/octet-stream")
        await proxy.stop()
    }

    @Test func anObjectStoreFailingAFifthOfItsCallsLosesNothingAndPaysForNothingTwice() async throws {
        let (bench, proxy, configuration) = try await faultyStore(
            .init(errorRate: 0.2, truncatedUploads: 5, seed: 42),
        )
        let redis = RedisClient(configuration: try TestRedis.configuration())
        func tiers() -> TieredArtifactCache {
            TieredArtifactCache(
                objects: S3Client(configuration: configuration, httpClient: http),
                redis: redis,
                settings: .init(
                    redisPrefix: TestRedis.prefix(),
                    publicBaseURL: URL(string: "https://cdn.example.test/"),
                    lookupTimeout: .seconds(30)
                )
            )
        }
        let prefixKeyed = tiers()
        let requests = Self.lines("flaky store", 1...80)
        let first = try await run(generator(bench.provider, prefixKeyed), requests)
        #expect(first.allSatisfy { $0.succeeded }, "\(first.compactMap(\.error))")
        let published = await prefixKeyed.stats()
        #expect(proxy.seen.errors > 0 && proxy.seen.truncated == 5, "\(proxy.seen)")
        // Every line published once in the end (a publish whose tries all failed is tried again by the engine).
        #expect(published.uploads == 80, "\(published)")
        #expect(first.allSatisfy { $0.artifact?.publicURL?.absoluteString.hasPrefix("https://cdn.example.test/media/") == true })
        // A second process (its own memory, the same Redis and bucket) serves every line from the shared tiers,
        // fetching each object through the same faults.
        let second = try await run(generator(bench.provider, prefixKeyed), requests)
        let afterSecond = await prefixKeyed.stats()
        print("flaky store: after the first run \(published); after the second \(afterSecond); proxy \(proxy.seen)")
        #expect(
            second.allSatisfy { $0.succeeded && $0.servedFromCache },
            "\(second.filter { !$0.servedFromCache }.map(\.requestID)) not served from the tiers: \(second.compactMap(\.error))"
        )
        let accepted = bench.fake.state.submissions().filter(\.accepted).map(\.prompt)
        #expect(
            accepted.count == 80 + lostAnswers.value && Set(accepted).count == 80,
            "each line paid for once, but for \(lostAnswers.value) lost answers: \(accepted.count)"
        )
        for (a, b) in zip(first, second) { #expect(a.artifact?.sha256 == b.artifact?.sha256) }
        await proxy.stop()
        await bench.fake.stop()
    }

    @Test func aPublishThatFailsIsTriedAgainWithoutPayingTheProviderAgain() async throws {
        // One try per publish in the client: the tries seen here are the engine's settlement trying again.
        let (bench, proxy, configuration) = try await faultyStore(maxAttempts: 1)
        let tiers = TieredArtifactCache(
            objects: S3Client(configuration: configuration, httpClient: http),
            redis: RedisClient(configuration: try TestRedis.configuration()),
            settings: .init(
                    redisPrefix: TestRedis.prefix(),
                    publicBaseURL: URL(string: "https://cdn.example.test/"),
                    lookupTimeout: .seconds(30)
                )
        )
        // The object store is down when the line is generated, and back 2.5 s later.
        proxy.setFailing(true)
        let engine = generator(bench.provider, tiers)
        try await engine.start()
        let pending = Task { try await engine.generate(Self.lines("outage", 1...1)) }
        // Back once the line is generated and two of its publishing tries have failed (however slowly a loaded
        // machine gets there).
        let deadline = ContinuousClock.now + .seconds(90)
        while await tiers.stats().uploadFailures < 2 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        proxy.setFailing(false)
        let results = try await pending.value
        await countLostAnswers(engine)
        try await engine.stop()
        let result = try #require(results.first)
        #expect(result.succeeded, "\(result.error?.description ?? "")")
        #expect(result.artifact?.publicURL != nil, "published once the store came back")
        let stats = await tiers.stats()
        #expect(stats.uploadFailures >= 2 && stats.uploads == 1, "\(stats)")
        #expect(bench.fake.state.submissions().filter(\.accepted).count == 1 + lostAnswers.value, "the provider was paid once, but for lost answers")
        await proxy.stop()
        await bench.fake.stop()
    }

    @Test func anArtifactThatCannotBeFetchedIsTriedThreeTimesBeforeItsLineIsGeneratedAgain() async throws {
        let (bench, proxy, configuration) = try await faultyStore(maxAttempts: 1)
        let redis = RedisClient(configuration: try TestRedis.configuration())
        let prefix = TestRedis.prefix()
        func tiers() -> TieredArtifactCache {
            TieredArtifactCache(
                objects: S3Client(configuration: configuration, httpClient: http),
                redis: redis,
                settings: .init(redisPrefix: prefix, lookupTimeout: .seconds(30))
            )
        }
        let requests = Self.lines("unfetchable", 1...4)
        let first = try await run(generator(bench.provider, tiers()), requests)
        #expect(first.allSatisfy { $0.succeeded })
        // Redis still says where each artifact is, but the object store now fails every call.
        proxy.setFailing(true)
        let reader = tiers()
        // (Publishing what it generates fails too: given up at once here.)
        let second = try await run(generator(bench.provider, reader, publishRetryHorizon: .zero), requests)
        #expect(second.allSatisfy { $0.succeeded && !$0.servedFromCache }, "generated again, in the end")
        let stats = await reader.stats()
        #expect(stats.redisHits >= 12 && stats.fetchFailures == 12, "three fetches per line first: \(stats)")
        #expect(bench.fake.state.submissions().filter(\.accepted).count == 8 + lostAnswers.value, "\(lostAnswers.value) answers lost")
        await proxy.stop()
        await bench.fake.stop()
    }

    @Test func aHolderWhoseLockRanOutDoesNotOverwriteALaterHoldersRecord() async throws {
        let s3 = try await TestS3.client(try TestS3.configuration())
        let redis = RedisClient(configuration: try TestRedis.configuration())
        let prefix = TestRedis.prefix()
        let a = TieredArtifactCache(objects: s3, redis: redis, settings: .init(redisPrefix: prefix, lookupTimeout: .seconds(30)))
        let b = TieredArtifactCache(objects: s3, redis: redis, settings: .init(redisPrefix: prefix, lookupTimeout: .seconds(30)))
        func artifact(_ seed: UInt64, provider: String) throws -> Artifact {
            let file = try randomFile(5000, seed: seed)
            return Artifact(url: file, format: .wav, contentType: "audio/wav", byteCount: 5000,
                sha256: try sha256Hex(file), duration: .seconds(1), provider: provider)
        }
        let fingerprint = "fp" + String(UInt32.random(in: 0...UInt32.max))
        guard case .leader(_, _, let early) = await a.claim(fingerprint) else { Issue.record("a leads"); return }
        // A's lock runs out while it works (brought forward here), and B claims the line.
        try await redis.send(["PEXPIRE", prefix + "flight:" + fingerprint, "1"])
        while try await redis.send(["EXISTS", prefix + "flight:" + fingerprint]) != .integer(0) {
            try await Task.sleep(for: .milliseconds(5))
        }
        let claim = await b.claim(fingerprint)
        guard case .leader(_, _, let late) = claim else { Issue.record("b leads"); return }
        #expect(late > early)
        _ = try await b.publish(try artifact(1, provider: "b"), fingerprint: fingerprint, cost: .cents(1))
        await b.release(claim)
        // A finishes late: its record replaces B's neither in Redis nor in the object store.
        _ = try await a.publish(try artifact(2, provider: "a"), fingerprint: fingerprint, cost: .cents(1))
        let (statsA, statsB) = (await a.stats(), await b.stats())
        #expect(statsA.staleWritesRefused == 1, "A: \(statsA); B: \(statsB)")
        let settings = TieredArtifactCache.Settings(redisPrefix: prefix, lookupTimeout: .seconds(30))
        let found = await TieredArtifactCache(objects: s3, redis: redis, settings: settings).lookup(fingerprint).artifact
        #expect(found?.provider == "b" && found?.tier == "redis", "\(String(describing: found)); A: \(statsA); B: \(statsB)")
        let stored = await TieredArtifactCache(objects: s3, redis: nil, settings: settings).lookup(fingerprint).artifact
        #expect(stored?.provider == "b" && stored?.tier == "object-store", "\(String(describing: stored))")
    }

    /// The tiers tell a line they do not hold from one they could not look for: a Redis miss is not an answer
    /// (it evicts), the object store's is; an object store that fails every try leaves the lookup unanswered.
    @Test func aLookupTellsAnAbsentLineFromOneNoTierCouldAnswerFor() async throws {
        let (bench, proxy, configuration) = try await faultyStore(maxAttempts: 1)
        let redis = RedisClient(configuration: try TestRedis.configuration())
        let prefix = TestRedis.prefix()
        let tiers = TieredArtifactCache(
            objects: S3Client(configuration: configuration, httpClient: http),
            redis: redis,
            settings: .init(redisPrefix: prefix, lookupTimeout: .seconds(30))
        )
        let fingerprint = "fp" + String(UInt64.random(in: 0...UInt64.max))
        #expect(await tiers.lookup(fingerprint) == .absent)
        proxy.setFailing(true)
        #expect(await tiers.lookup(fingerprint) == .unanswered)
        let stats = await tiers.stats()
        #expect(stats.unansweredLookups == 1 && stats.misses == 2, "\(stats)")
        // Held only in the object store (Redis evicted it): found there, whatever Redis says.
        proxy.setFailing(false)
        let file = try randomFile(4_000, seed: 7)
        let artifact = Artifact(
            url: file, format: .wav, contentType: "audio/wav", byteCount: 4_000, sha256: try sha256Hex(file),
            duration: .seconds(1), provider: "p"
        )
        // Setting up, not under test: the artifact goes in past the proxy, with the client's retries and a short
        // limit per try. (A fresh-clone run once saw this single-try upload through the proxy wait out its 60 s
        // limit while the loaded parallel phase kept moto busy.)
        var direct = configuration
        direct.endpoint = try TestS3.configuration().endpoint
        direct.maxAttempts = 5
        direct.requestTimeout = .seconds(15)
        let writer = TieredArtifactCache(
            objects: S3Client(configuration: direct, httpClient: http),
            redis: redis,
            settings: .init(redisPrefix: prefix, lookupTimeout: .seconds(30))
        )
        _ = try await writer.publish(artifact, fingerprint: fingerprint, cost: .cents(1))
        #expect(await tiers.lookup(fingerprint).artifact?.tier == "redis")
        try await redis.delete(prefix + "cache:" + fingerprint)
        #expect(await tiers.lookup(fingerprint).artifact?.tier == "object-store")
        await proxy.stop()
        await bench.fake.stop()
    }

    @Test func redisStoppingMidCampaignFailsNoJobAndItsHitsComeBackAfterARestart() async throws {
        // A Redis of this test's own, to stop and start.
        let folder = temporaryDirectory().appendingPathComponent("redis")
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("scripts/redis.sh").path
        // Polled, not waited for: a thread of the test's executor is never blocked.
        @Sendable func redisScript(_ arguments: [String]) async throws -> String {
            let output = temporaryDirectory().appendingPathComponent("redis-script.txt")
            _ = FileManager.default.createFile(atPath: output.path, contents: nil)
            let handle = try FileHandle(forWritingTo: output)
            defer { try? handle.close() }
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/bash")
            process.arguments = [script] + arguments
            process.standardOutput = handle
            try process.run()
            // A started server is a child that outlives the script, and Foundation may see the script as running
            // for as long as it does: `start` and `restart` are done when they print the URL.
            let deadline = ContinuousClock.now + .seconds(30)
            while process.isRunning && ContinuousClock.now < deadline {
                let text = (try? String(contentsOf: output, encoding: .utf8)) ?? ""
                if text.hasPrefix("redis://") && text.hasSuffix("\n") { break }
                try await Task.sleep(for: .milliseconds(20))
            }
            return try String(contentsOf: output, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let url = try await redisScript(["start", folder.path])
        var redisConfiguration = try RedisConfiguration(url: url)
        redisConfiguration.maxReconnectDelay = .milliseconds(500)
        // Far longer than any lookup takes on a loaded machine: a lookup that waited on the stopped Redis would
        // wait this long, and the phase below would outlast its bound.
        redisConfiguration.commandTimeout = .seconds(180)
        let redis = RedisClient(configuration: redisConfiguration)
        let bench = try await FakeBench.start(.openai, options: { $0.latencySeconds = 0.005...0.01 }, http: http)
        let s3 = try await TestS3.client(try TestS3.configuration())
        let tiers = TieredArtifactCache(objects: s3, redis: redis, settings: .init(redisPrefix: "fault:", lookupTimeout: .seconds(30)))
        let all = Self.lines("redis fault", 1...60)
        // Generated once, by an earlier process.
        let generated = try await run(generator(bench.provider, tiers), all)
        #expect(generated.allSatisfy { $0.succeeded })

        let reader = TieredArtifactCache(objects: s3, redis: redis, settings: .init(redisPrefix: "fault:", lookupTimeout: .seconds(30)))
        let engine = generator(bench.provider, reader)
        try await engine.start()
        func phase(_ range: ClosedRange<Int>) async throws -> (results: [GenerationResult], stats: SharedCacheStats) {
            let before = await reader.stats()
            let results = try await engine.generate(Array(all[(range.lowerBound - 1)...(range.upperBound - 1)]))
            var after = await reader.stats()
            after.redisHits -= before.redisHits
            after.objectStoreHits -= before.objectStoreHits
            after.lookupErrors -= before.lookupErrors
            return (results, after)
        }
        let up = try await phase(1...20)
        #expect(up.results.allSatisfy { $0.succeeded && $0.servedFromCache })
        #expect(up.stats.redisHits == 20)

        _ = try await redisScript(["stop", folder.path])
        let started = ContinuousClock.now
        let down = try await phase(21...40)
        #expect(down.results.allSatisfy { $0.succeeded && $0.servedFromCache }, "no job fails")
        #expect(down.stats.redisHits == 0 && down.stats.objectStoreHits == 20, "\(down.stats)")
        #expect(down.stats.lookupErrors == 20)
        // Not a timing: 20 lines take a few seconds, and up to a minute under the parallel phase's load (43 s seen);
        // one lookup waiting on the stopped Redis would take the command time-out, 180 s.
        #expect(ContinuousClock.now - started < .seconds(120), "no lookup waited on the stopped Redis")

        _ = try await redisScript(["restart", folder.path])
        // The client tries again within its longest backoff (500 ms here).
        try await Task.sleep(for: .seconds(1))
        let back = try await phase(41...60)
        #expect(back.results.allSatisfy { $0.succeeded && $0.servedFromCache })
        #expect(back.stats.lookupErrors == 0 && back.stats.objectStoreHits + back.stats.redisHits == 20, "\(back.stats)")
        // The restarted Redis is empty (nothing is saved to disk): the object store answers, and writes each
        // record back, so the next lookups are Redis hits again.
        let again = await reader.lookup(validated(all[40]).fingerprint).artifact
        #expect(again?.tier == "redis")
        await countLostAnswers(engine)
        try await engine.stop()
        #expect(
            bench.fake.state.submissions().filter(\.accepted).count == 60 + lostAnswers.value,
            "nothing generated twice, but for \(lostAnswers.value) lost answers"
        )
        await bench.fake.stop()
        _ = try await redisScript(["stop", folder.path])
    }
}
