import Foundation
import Pargen
import PargenProviders
import PargenTesting
import Testing

/// A campaign across three fakes whose quotas are tight enough to bind all the time: the engine must keep
/// to each provider's window and concurrency exactly as the provider counts them, and the fakes' own logs
/// are the proof.
@Suite(.timeLimit(.minutes(3))) struct QuotaTests {
    @Test func severalHundredRequestsAcrossThreeFakesCauseNoQuotaViolation() async throws {
        let window = Duration.seconds(2)
        let rpm = 24
        let slots = 3
        var benches: [FakeBench] = []
        for wire in [ProviderProtocol.openai, .minimax, .runway] {
            benches.append(
                try await FakeBench.start(
                    wire,
                    options: {
                        $0.requestsPerWindow = rpm
                        $0.window = window
                        $0.concurrentTasks = slots
                        $0.latencySeconds = 0.005...0.03
                        $0.taskSeconds = 0.1...0.3
                    },
                    quota: ProviderQuota(
                        requestsPerMinute: rpm,
                        concurrentTasks: slots,
                        window: window,
                        margin: .milliseconds(100),
                        concurrencyKinds: wire == .runway ? [.audio, .video] : [.video]
                    ),
                    http: sharedTestHTTPClient
                )
            )
        }
        // 300 requests, pinned so that each provider gets 100; several users and every priority.
        var requests: [GenerationRequest] = []
        let priorities = GenerationPriority.allCases
        for i in 0..<300 {
            let user = "user\(i % 7)"
            let priority = priorities[i % priorities.count]
            switch i % 3 {
            case 0:
                requests.append(
                    i % 2 == 0
                        ? .audio(prompt: "openai line \(i)", priority: priority, provider: "openai", user: user)
                        : .video(
                            prompt: "openai clip \(i)",
                            priority: priority,
                            duration: .seconds(4),
                            resolution: .p720,
                            provider: "openai",
                            user: user
                        )
                )
            case 1:
                requests.append(
                    i % 2 == 0
                        ? .audio(prompt: "minimax line \(i)", priority: priority, provider: "minimax", user: user)
                        : .video(
                            prompt: "minimax clip \(i)",
                            priority: priority,
                            duration: .seconds(6),
                            provider: "minimax",
                            user: user
                        )
                )
            default:
                requests.append(
                    .video(
                        prompt: "runway clip \(i)",
                        priority: priority,
                        duration: .seconds(5),
                        resolution: .p720,
                        provider: "runway",
                        user: user
                    )
                )
            }
        }
        var configuration = fakeTestConfiguration()
        configuration.resources.maxConcurrentJobs = 400
        configuration.resources.maxAPICalls = 400
        let (results, stats) = try await runAgainstFakes(
            benches.map(\.provider),
            requests,
            configuration: configuration
        )
        #expect(results.allSatisfy { $0.succeeded }, "\(results.compactMap { $0.error?.description }.prefix(3))")
        for bench in benches {
            let name = bench.settings.name
            // The fake's log is the provider's view: a refusal for rate or concurrency, or a task accepted over the
            // concurrency quota, is a violation by the client.
            #expect(
                bench.fake.state.quotaViolations() == 0,
                "\(name): \(bench.fake.state.submissions().filter { $0.refusal != nil }.prefix(3))"
            )
            Self.expectEachJobAcceptedOnceUnlessItFailed(bench, results: results, jobs: 100)
        }
        #expect(stats.providers.values.reduce(0) { $0 + $1.throttled } == 0)
        for bench in benches { await bench.fake.stop() }
    }

    /// Every job reached the fake, and a job was accepted more than once only under distinct attempt keys
    /// (`JOB:ATTEMPT`), and at most once more than the failed calls its history shows (on a loaded machine a call
    /// can time out after the fake accepted it; the engine then tries again under a new attempt).
    static func expectEachJobAcceptedOnceUnlessItFailed(_ bench: FakeBench, results: [GenerationResult], jobs: Int) {
        let name = bench.settings.name
        let accepted = bench.fake.state.submissions().filter(\.accepted)
        let keysPerJob = Dictionary(grouping: accepted.compactMap(\.key), by: { String($0.split(separator: ":")[0]) })
        #expect(keysPerJob.count == jobs, "\(name): every request submitted")
        for (job, keys) in keysPerJob where keys.count > 1 {
            #expect(Set(keys).count == keys.count, "\(name): \(job) accepted twice under one key: \(keys)")
            let result = results.first { $0.jobID?.description == job }
            let failures = result?.errorHistory.filter { $0.code != .rateLimited }.count ?? 0
            #expect(
                keys.count <= 1 + failures,
                "\(name): \(job) accepted \(keys.count) times after \(failures) failed calls"
            )
        }
    }

    /// Submissions take up to 0.5 s on their way in (longer than the engine's 100 ms margin), so the fake counts
    /// each one later than the engine sent it. The engine counts its window from the provider's answer, which
    /// comes after the fake counted the call, so however long the way in, no window of the fake holds more than
    /// the quota.
    @Test func aDelayOnTheWayInNeverPutsTwoWindowsIntoOne() async throws {
        let window = Duration.seconds(2)
        let rpm = 8
        let bench = try await FakeBench.start(
            .openai,
            options: {
                $0.requestsPerWindow = rpm
                $0.window = window
                $0.inboundDelaySeconds = 0...0.5
                $0.latencySeconds = 0.001...0.01
            },
            quota: ProviderQuota(requestsPerMinute: rpm, window: window, margin: .milliseconds(100)),
            http: sharedTestHTTPClient
        )
        let requests = (0..<40).map { GenerationRequest.audio(prompt: "delayed line \($0)", user: "u\($0 % 3)") }
        let (results, _) = try await runAgainstFakes([bench.provider], requests)
        #expect(results.allSatisfy { $0.succeeded }, "\(results.compactMap { $0.error?.description }.prefix(3))")
        #expect(
            bench.fake.state.quotaViolations() == 0,
            "\(bench.fake.state.submissions().filter { $0.refusal != nil }.map(\.time).prefix(5))"
        )
        Self.expectEachJobAcceptedOnceUnlessItFailed(bench, results: results, jobs: 40)
        await bench.fake.stop()
    }
}

/// A provider's slot frees when its task ends, not when the engine has fetched and saved the file: a slot the
/// provider gave back is not kept taken for the download.
@Suite(.timeLimit(.minutes(1))) struct SlotReleaseTests {
    /// One video slot; each call's task ends at once, then its download waits until the test lets it go.
    final class HeldDownloads: GenerationProvider, Sendable {
        let descriptor = ScriptedProvider(
            name: "p",
            kinds: [.video],
            quota: ProviderQuota(requestsPerMinute: 1_000, concurrentTasks: 1, concurrencyKinds: [.video])
        ).descriptor
        /// Each call, as its download begins.
        let downloads = AsyncStream<Int>.makeStream()
        private let calls = Locked(0)
        private let released = Locked(false)

        func release() { released.withLock { $0 = true } }

        func generate(_ request: ValidatedRequest, context: ProviderCallContext) async throws -> ProviderOutput {
            let call = calls.withLock { $0 += 1; return $0 }
            try await context.reportSubmitted(taskID: "task-\(call)")
            context.reportAnswered()
            context.reportDownloading()
            downloads.continuation.yield(call)
            while !released.value { try await Task.sleep(for: .milliseconds(5)) }
            try Data("GIF89a held download \(call)".utf8).write(to: context.destination)
            return ProviderOutput(format: .gif, duration: request.duration, providerTaskID: "task-\(call)")
        }
    }

    @Test func theNextTaskStartsWhileTheLastOneIsStillDownloading() async throws {
        let provider = HeldDownloads()
        let generator = ParallelGenerator(
            configuration: PargenConfiguration(rateLimits: .unlimited),
            providers: [provider],
            outputDirectory: temporaryDirectory(),
            clock: .continuous
        )
        try await generator.start()
        let ids = try await generator.submit(
            (1...2).map { .video(prompt: "clip \($0)", duration: .seconds(2), resolution: .p720) }
        )
        // The second call begins while the first download is held: within 5 s, or never (it waits for the slot).
        let second = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                var seen = 0
                for await _ in provider.downloads.stream {
                    seen += 1
                    if seen == 2 { return true }
                }
                return false
            }
            group.addTask {
                try? await Task.sleep(for: .seconds(5))
                return false
            }
            let first = await group.next()!
            group.cancelAll()
            provider.downloads.continuation.finish()
            return first
        }
        provider.release()
        #expect(second, "the second task waited for the first one's download to end")
        for id in ids { #expect(await generator.result(for: id).succeeded) }
        try await generator.stop()
    }
}
