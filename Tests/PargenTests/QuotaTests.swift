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
            #expect(
                bench.fake.state.quotaViolations() == 0,
                "\(name): \(bench.fake.state.submissions().filter { $0.refusal != nil }.prefix(3))"
            )
            #expect(
                bench.fake.state.busiestWindow() <= rpm,
                "\(name): the log itself never shows more than the quota in a window"
            )
            #expect(bench.fake.state.peakConcurrency <= slots, "\(name)")
            // Every request reached the fake; a job reached it twice only after a failed call the engine saw
            // (on a loaded machine a call can time out after the fake accepted it).
            let accepted = bench.fake.state.submissions().filter(\.accepted)
            let perJob = Dictionary(
                accepted.map { (String(($0.key ?? "?").split(separator: ":")[0]), 1) },
                uniquingKeysWith: +
            )
            #expect(perJob.count == 100, "\(name): every request submitted")
            for (job, count) in perJob where count > 1 {
                let result = results.first { $0.jobID?.description == job }
                #expect(
                    result?.errorHistory.isEmpty == false,
                    "\(name): \(job) submitted \(count) times without a failure"
                )
            }
        }
        #expect(stats.providers.values.reduce(0) { $0 + $1.throttled } == 0)
        for bench in benches { await bench.fake.stop() }
    }
}
