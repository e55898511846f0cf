import Foundation
import Pargen
import PargenProviders
import PargenTesting
import Testing

/// A task the provider accepted and then reported as failed: tried again on a new task when the reason may
/// pass, dead-lettered at once when it is a refusal, and given at most `retry.failedTasks` new tasks when the
/// reason is one no adapter knows. The fakes fail tasks in each provider's own codes.
@Suite(.timeLimit(.minutes(2))) struct FailedTaskTests {
    static let wires: [ProviderProtocol] = [.openai, .minimax, .runway]

    func video(_ wire: ProviderProtocol, _ prompt: String) -> GenerationRequest {
        let seconds: Int64 = wire == .minimax ? 6 : wire == .openai ? 4 : 5
        return .video(prompt: prompt, duration: .seconds(seconds), resolution: .p720)
    }

    func accepted(_ bench: FakeBench) -> [FakeSubmission] { bench.fake.state.submissions().filter(\.accepted) }

    @Test(arguments: wires)
    func anInternalFailureIsTriedAgainOnANewTaskAndSucceeds(_ wire: ProviderProtocol) async throws {
        let bench = try await FakeBench.start(wire, http: sharedTestHTTPClient)
        let (results, _) = try await runAgainstFakes([bench.provider], [video(wire, "first task fails [[fail-once]]")])
        let result = results[0]
        #expect(result.succeeded, "\(String(describing: result.error))")
        #expect(result.attempts == 2 && result.tasks == 2)
        // The failed task is its own record: its attempt key, its task id, its code, and no charge.
        let failure = try #require(result.errorHistory.first)
        #expect(result.errorHistory.count == 1)
        #expect(failure.code == .transient)
        let expected = ["openai": "video_generation_failed", "minimax": "1024", "runway": "INTERNAL.BAD_OUTPUT.CODE01"]
        #expect(failure.providerCode == expected[wire.rawValue])
        #expect(failure.attemptKey?.hasSuffix(":1") == true && failure.taskID != nil && failure.charged == .zero)
        #expect(failure.taskID != result.artifact?.providerTaskID, "the success is a new task")
        let keys = accepted(bench).compactMap(\.key)
        #expect(keys.count == 2 && Set(keys).count == 2, "two submissions, each under its own key: \(keys)")
        // Only the task that succeeded is charged.
        let request = validated(video(wire, "first task fails [[fail-once]]"))
        #expect(result.actualCost == bench.settings.pricing.estimate(request))
        await bench.fake.stop()
    }

    @Test(arguments: wires)
    func aModerationFailureIsDeadLetteredAfterOneTask(_ wire: ProviderProtocol) async throws {
        let bench = try await FakeBench.start(wire, http: sharedTestHTTPClient)
        let (results, _) = try await runAgainstFakes([bench.provider], [video(wire, "refused [[fail]]")])
        #expect(results[0].error?.code == .terminal, "\(String(describing: results[0].error))")
        #expect(results[0].attempts == 1 && results[0].tasks == 1)
        #expect(accepted(bench).count == 1)
        await bench.fake.stop()
    }

    @Test(arguments: wires)
    func anUnknownFailureStopsAfterTheConfiguredNewTasks(_ wire: ProviderProtocol) async throws {
        for failedTasks in [0, 2] {
            let bench = try await FakeBench.start(wire, http: sharedTestHTTPClient)
            var configuration = fakeTestConfiguration()
            configuration.retry.failedTasks = failedTasks
            configuration.retry.maxAttempts = 6
            let (results, _) = try await runAgainstFakes(
                [bench.provider],
                [video(wire, "fails for no known reason [[fail-unknown]]")],
                configuration: configuration
            )
            let result = results[0]
            #expect(result.error?.code == .attemptsExhausted, "\(String(describing: result.error))")
            #expect(result.error?.message.contains("retry.failedTasks is \(failedTasks)") == true)
            #expect(result.tasks == failedTasks + 1, "\(failedTasks) new tasks: \(result.tasks) used")
            #expect(accepted(bench).count == failedTasks + 1)
            #expect(result.errorHistory.allSatisfy { $0.charged == .zero })
            await bench.fake.stop()
        }
    }

    /// One provider per protocol failing 10 % of its video tasks with its internal failure: every line ends
    /// succeeded, each retried line's tasks are in its history, and the ledger charges only the tasks that worked.
    @Test func tenPercentOfTasksFailingStillFinishesEveryLine() async throws {
        var benches: [FakeBench] = []
        for wire in Self.wires {
            benches.append(
                try await FakeBench.start(
                    wire,
                    options: {
                        $0.taskFailureRate = 0.1
                        $0.seed = UInt64(wire.rawValue.count)
                    },
                    http: sharedTestHTTPClient
                )
            )
        }
        var requests: [GenerationRequest] = []
        for (index, wire) in Self.wires.enumerated() {
            for i in 0..<30 {
                var request = video(wire, "clip \(i) for \(wire.rawValue)")
                request.provider = benches[index].settings.name
                requests.append(request)
            }
        }
        var configuration = fakeTestConfiguration()
        configuration.resources.maxConcurrentJobs = 100
        let (results, _) = try await runAgainstFakes(benches.map(\.provider), requests, configuration: configuration)
        #expect(results.allSatisfy { $0.succeeded }, "\(results.compactMap { $0.error?.description }.prefix(3))")
        let retried = results.filter { $0.tasks > 1 }
        #expect(!retried.isEmpty, "some tasks failed")
        for result in retried {
            #expect(result.errorHistory.filter { $0.taskID != nil }.count == result.tasks - 1)
        }
        let tasks = benches.reduce(0) { $0 + $1.fake.state.taskIDs().count }
        #expect(tasks == results.reduce(0) { $0 + $1.tasks }, "every task the fakes made is in a history")
        print("10 % failing tasks: \(results.count) lines, \(tasks) tasks, \(retried.count) lines tried again")
        for bench in benches { await bench.fake.stop() }
    }
}
