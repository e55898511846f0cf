import Foundation
import Pargen
import PargenProviders
import PargenTesting
import Testing

/// Measurements that other work on the machine would confound: resident memory, and makespans in real time.
/// `scripts/test.sh` runs this suite on its own, after the parallel run of every other suite, and its tests one
/// after another.
@Suite(.serialized, .timeLimit(.minutes(3))) struct SoloTests {
    /// A 128 MB video goes to disk in chunks: the process grows by a small fraction of it.
    @Test(
        .enabled(
            if: FileManager.default.fileExists(atPath: "/proc/self/statm"),
            "SKIPPED: no /proc/self/statm, so resident memory cannot be measured here"
        )
    )
    func aLargeDownloadIsStreamedWithBoundedMemory() async throws {
        let size = 128 << 20
        let bench = try await FakeBench.start(.runway, options: { $0.videoBytes = size }, http: sharedTestHTTPClient)
        let before = residentBytes()
        #expect(before > 0, "resident memory is measurable")
        let peak = Locked(before)
        let sampler = Task {
            while !Task.isCancelled {
                let now = residentBytes()
                peak.withLock { $0 = max($0, now) }
                try? await Task.sleep(for: .milliseconds(5))
            }
        }
        let (results, _) = try await runAgainstFakes(
            [bench.provider],
            [.video(prompt: "a long take", duration: .seconds(10), resolution: .p720)]
        )
        sampler.cancel()
        let artifact = try #require(results[0].artifact, "\(results[0].error?.description ?? "")")
        #expect(artifact.byteCount == Int64(size))
        let growth = peak.value - before
        #expect(growth < 40 << 20, "resident memory grew \(growth >> 20) MB for a \(size >> 20) MB download")
        try? FileManager.default.removeItem(at: artifact.url)
        await bench.fake.stop()
    }

    /// Speech and videos on one provider whose slots are the scarce resource (bound: the slots' work, 6 s, against
    /// 4 s for the window). A freed slot must find room in the window, which is what keeping submissions back for
    /// slot holders is for: without it, speech takes the window at the start and every slot idles about a second
    /// in each window (about 1.35 times the bound). The makespan is read from the fake's own log.
    @Test func slotHoldersGetWindowRoomSoTheMakespanStaysNearTheBound() async throws {
        let window = Duration.seconds(2)
        let rpm = 10
        let slots = 2
        let bench = try await FakeBench.start(
            .openai,
            options: {
                $0.requestsPerWindow = rpm
                $0.window = window
                $0.concurrentTasks = slots
                $0.taskSeconds = 1...1
                $0.latencySeconds = 0.002...0.01
            },
            quota: ProviderQuota(
                requestsPerMinute: rpm,
                concurrentTasks: slots,
                window: window,
                margin: .milliseconds(100),
                concurrencyKinds: [.video]
            ),
            http: sharedTestHTTPClient
        )
        var requests: [GenerationRequest] = (0..<18).map { .audio(prompt: "speech \($0)", user: "u\($0 % 4)") }
        requests += (0..<12).map {
            .video(prompt: "clip \($0)", duration: .seconds(4), resolution: .p720, user: "u\($0 % 4)")
        }
        var configuration = fakeTestConfiguration()
        configuration.resources.maxConcurrentJobs = 100
        configuration.resources.maxAPICalls = 100
        let (results, _) = try await runAgainstFakes([bench.provider], requests, configuration: configuration)
        #expect(results.allSatisfy { $0.succeeded }, "\(results.compactMap { $0.error?.description }.prefix(3))")
        #expect(bench.fake.state.quotaViolations() == 0)
        let log = bench.fake.state.submissions().filter(\.accepted)
        let start = try #require(log.map(\.time).min())
        let end = max(log.map(\.time).max() ?? 0, bench.fake.state.taskSpans().map(\.end).max() ?? 0)
        let makespan = end - start
        let taskSeconds = 12.0 * 1.0
        let slotBound = taskSeconds / Double(slots)
        let bound = max(Double((requests.count - 1) / rpm) * window.seconds, slotBound, 1)
        let slotWorkEnd = (bench.fake.state.taskSpans().map(\.end).max() ?? 0) - start
        print(
            "slot holders: makespan \(makespan) s, bound \(bound) s, ratio \(makespan / bound); "
                + "slot work ends at \(slotWorkEnd) s against \(slotBound) s, ratio \(slotWorkEnd / slotBound)"
        )
        if ProcessInfo.processInfo.environment["PARGEN_TRACE_QUOTA"] != nil {
            for entry in bench.fake.state.submissions() {
                print("  \(String(format: "%.2f", entry.time - start)) \(entry.endpoint) \(entry.accepted) \(entry.refusal ?? "")")
            }
            for span in bench.fake.state.taskSpans() {
                print("  task \(String(format: "%.2f", span.start - start))-\(String(format: "%.2f", span.end - start))")
            }
        }
        // The slots never idle for want of window room: the videos' work ends within 10 % of what two slots
        // need (1.02 to 1.08 measured with the slot freed when a task ends; 1.05 to 1.09 when it was kept through
        // the download; 1.38 with nothing kept back for slot holders).
        #expect(slotWorkEnd <= slotBound * 1.1, "slot work ended at \(slotWorkEnd) s against \(slotBound) s")
        // The whole campaign: the speech that was kept back comes after the videos. Measured 1.05 to 1.06 (1.20 to
        // 1.25 before the engine issue's work); 1.38 with nothing kept back. The assertion catches gross regressions.
        #expect(makespan <= bound * 1.35, "makespan \(makespan) s against a bound of \(bound) s")
        await bench.fake.stop()
    }
}
