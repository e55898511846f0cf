import Foundation
import Logging
import Pargen
import PargenProviders
import PargenTesting
import Synchronization
import Testing

/// A provider's hint for the next look at a task (OpenAI's `openai-poll-after-ms`) is outside input: it is
/// followed within bounds. A hint of zero or less polled without pause, and one of years gave a running task up
/// as timed out at once (dead-lettered for a person, though the provider was still making it).
@Suite struct TaskPollerTests {
    @Test func aPollHintIsFollowedWithinBounds() async throws {
        let clock = ImmediateClock()
        let connection = ProviderConnection(
            baseURL: "http://127.0.0.1:9",
            apiKey: nil,
            httpClient: sharedTestHTTPClient,
            pollInterval: .seconds(5),
            taskTimeout: .seconds(1800)
        )
        let context = ProviderCallContext(
            destination: temporaryDirectory().appendingPathComponent("x"),
            clock: PargenClock(clock),
            attempt: 1,
            idempotencyKey: "k",
            logger: .init(label: "t")
        )
        let poller = TaskPoller(http: ProviderHTTP(provider: "p", connection: connection), context: context)
        let hints: [Duration] = [.milliseconds(-5), .zero, .seconds(2), .milliseconds(Int64.max / 2), .seconds(30)]
        let looks = Mutex<[ManualClock.Instant]>([])
        let result = try await poller.run(taskID: "t") { () -> PollStep<String> in
            let count = looks.withLock { $0.append(clock.now); return $0.count }
            return count <= hints.count ? .running(progress: nil, after: hints[count - 1]) : .done("made")
        }
        #expect(result == "made", "a hint of years does not give the task up")
        let times = looks.withLock { $0 }
        let waits = zip(times.dropFirst(), times).map { $0.offset - $1.offset }
        #expect(waits == [.milliseconds(100), .milliseconds(100), .seconds(2), .seconds(60), .seconds(30)], "\(waits)")
    }
}
