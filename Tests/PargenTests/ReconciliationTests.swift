import Foundation
import Pargen
import PargenSQLite
import PargenTesting
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Runs `pargen` as a subprocess without blocking a thread of the test's executor (the fakes it talks to run in
/// this process): the output goes to a file, and the exit is awaited by polling, up to `limit` (then the
/// process is killed and an issue recorded).
func pargenAsync(
    _ arguments: [String],
    environment extra: [String: String] = [:],
    within limit: Duration = .seconds(120)
) async throws -> CommandLineTests.Outcome {
    let output = temporaryDirectory().appendingPathComponent("output.txt")
    _ = FileManager.default.createFile(atPath: output.path, contents: nil)
    let handle = try FileHandle(forWritingTo: output)
    defer { try? handle.close() }
    let process = Process()
    process.executableURL = CommandLineTests.executable
    process.arguments = arguments
    process.environment = ProcessInfo.processInfo.environment.merging(extra) { _, new in new }
        .merging(["SWIFT_BACKTRACE": "enable=no"]) { old, _ in old }
    process.standardOutput = handle
    process.standardError = handle
    try process.run()
    let deadline = ContinuousClock.now + limit
    while process.isRunning && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
    if process.isRunning {
        Issue.record("pargen \(arguments.first ?? "") did not end within \(limit)")
        kill(process.processIdentifier, SIGKILL)
        while process.isRunning { try await Task.sleep(for: .milliseconds(10)) }
    }
    return CommandLineTests.Outcome(
        status: process.terminationStatus,
        output: (try? String(contentsOf: output, encoding: .utf8)) ?? ""
    )
}

/// The path a person takes when a provider that does not de-duplicate submissions accepted a task but its answer
/// was lost: the job waits in `needs_reconciliation` (never submitted again by itself), `status` and `dlq list`
/// name it, and `dlq retry` or `dlq purge` settle it, all through the real command line.
@Suite(.timeLimit(.minutes(3))) struct ReconciliationTests {
    @Test func aLostAnswerWaitsForAPersonThenDLQRetryAndPurgeSettleIt() async throws {
        let key = "rw-test-key-0123456789"
        let fake = try await FakeProviderServer.start(
            FakeProviderOptions(wireProtocol: .runway, apiKey: key, taskSeconds: 0.05...0.1, lifetime: .seconds(150))
        )
        let folder = temporaryDirectory()
        // The first run waits 10 s for an answer (the lost ones cost that, at once; 3 s was too short for the
        // answered clip on a machine running every suite at once); the run after the person's decision
        // waits up to 20 s, so that a loaded machine cannot turn a slow answer into a second lost one.
        func config(_ name: String, timeout: Int) throws -> URL {
            let url = folder.appendingPathComponent(name)
            try Data(
                """
                providers:
                  runway:
                    baseURL: \(fake.baseURL)
                    apiKeyEnv: TEST_RUNWAY_KEY
                    requestTimeoutSeconds: \(timeout)
                    pollIntervalSeconds: 0.02
                """.utf8
            ).write(to: url)
            return url
        }
        let firstConfig = try config("first.yaml", timeout: 10)
        let laterConfig = try config("later.yaml", timeout: 20)
        let campaign = folder.appendingPathComponent("campaign.jsonl")
        try Data(
            """
            {"type": "video", "prompt": "answered clip", "duration": 5, "resolution": "720p", "id": "a"}
            {"type": "video", "prompt": "lost answer one [[hang]]", "duration": 5, "resolution": "720p", "id": "b"}
            {"type": "video", "prompt": "lost answer two [[hang]]", "duration": 5, "resolution": "720p", "id": "c"}

            """.utf8
        ).write(to: campaign)
        let out = folder.appendingPathComponent("out").path
        let environment = ["TEST_RUNWAY_KEY": key]
        let arguments = ["--out", out, "--no-progress"]

        let first = try await pargenAsync(
            ["run", campaign.path, "--config", firstConfig.path] + arguments,
            environment: environment
        )
        #expect(first.status == 1, "\(first.output)")
        let store = try SQLiteJobStore(path: out + "/campaign.sqlite")
        var jobs = Dictionary(uniqueKeysWithValues: try await store.jobs(matching: JobQuery()).map { ($0.request.id, $0) })
        #expect(jobs["a"]?.state == .succeeded)
        #expect(jobs["b"]?.state == .needsReconciliation)
        #expect(jobs["c"]?.state == .needsReconciliation)
        // The provider holds exactly one task for each line: nothing was submitted blindly a second time.
        let accepted = fake.state.submissions().filter(\.accepted)
        #expect(accepted.count == 3, "\(accepted.map(\.prompt))")
        #expect(fake.state.taskDurations().count == 3)

        let b = try #require(jobs["b"]).id.description
        let c = try #require(jobs["c"]).id.description
        let status = try await pargenAsync(["status", "--out", out])
        #expect(status.output.contains("needs_reconciliation   2"), "\(status.output)")
        #expect(status.output.contains(b) && status.output.contains(c))
        let list = try await pargenAsync(["dlq", "list", "--out", out])
        #expect(list.output.contains("\(b)\tb\tneeds_reconciliation"), "\(list.output)")
        let manifest = try String(contentsOfFile: out + "/manifest.jsonl", encoding: .utf8)
        #expect(manifest.contains("\"needs_reconciliation\""), "the manifest agrees with the store")

        // A person checked the provider and decided: submit b again, drop c.
        let retry = try await pargenAsync(["dlq", "retry", b, "--out", out])
        #expect(retry.output.contains("re-queued 1 jobs"), "\(retry.output)")
        let purge = try await pargenAsync(["dlq", "purge", c, "--out", out])
        #expect(purge.output.contains("purged 1 jobs"), "\(purge.output)")
        let second = try await pargenAsync(
            ["run", "--resume", "--config", laterConfig.path] + arguments,
            environment: environment
        )
        #expect(second.status == 0, "\(second.output)")
        jobs = Dictionary(uniqueKeysWithValues: try await store.jobs(matching: JobQuery()).map { ($0.request.id, $0) })
        #expect(jobs.keys.sorted() == ["a", "b"])
        #expect(jobs["b"]?.state == .succeeded)
        let after = fake.state.submissions().filter(\.accepted).map(\.prompt)
        #expect(after.filter { $0.hasPrefix("lost answer one") }.count == 2, "b was submitted again, as asked")
        #expect(after.filter { $0.hasPrefix("lost answer two") }.count == 1, "c was not")
        let finalStatus = try await pargenAsync(["status", "--out", out])
        #expect(!finalStatus.output.contains("needs reconciliation"), "\(finalStatus.output)")
        #expect(finalStatus.output.contains("ledger balances: yes"))
        await fake.stop()
    }
}

/// The command line's store lock, `--resume` and `providers check`, as a user meets them.
@Suite(.timeLimit(.minutes(3))) struct CommandLineStoreTests {
    /// While one `pargen run` holds a campaign's store, a second is refused with exit 2 and a message naming the
    /// lock; after the first is interrupted, `run --resume` (no file) finishes the campaign, each line submitted
    /// once.
    @Test func aSecondRunIsRefusedAndResumeFinishesTheCampaign() async throws {
        let folder = temporaryDirectory()
        let campaign = folder.appendingPathComponent("campaign.jsonl")
        let lines = (0..<80).map { "{\"type\": \"audio\", \"prompt\": \"locked line \($0)\", \"duration\": 8}" }
        try Data((lines.joined(separator: "\n") + "\n").utf8).write(to: campaign)
        let out = folder.appendingPathComponent("out").path
        let submitLog = folder.appendingPathComponent("submits.tsv")
        var environment = ProcessInfo.processInfo.environment
        environment["PARGEN_LOCAL_SUBMIT_LOG"] = submitLog.path
        environment["SWIFT_BACKTRACE"] = "enable=no"
        let first = Process()
        first.executableURL = CommandLineTests.executable
        // The first run is held to 20 lines a minute, so that it is still going however slowly this test's own
        // polling is scheduled on a loaded machine; the resumed run goes at full speed (the default per-user
        // window, 60 a minute, would hold the 80 lines of this one user for a minute).
        let slow = ["--out", out, "--reliable", "--no-progress", "--per-user-rpm", "20"]
        let options = ["--out", out, "--reliable", "--no-progress", "--per-user-rpm", "1000"]
        first.arguments = ["run", campaign.path] + slow
        first.environment = environment
        first.standardOutput = FileHandle.nullDevice
        first.standardError = FileHandle.nullDevice
        try first.run()
        let deadline = ContinuousClock.now + .seconds(60)
        while CrashRecoveryTests.lines(of: submitLog).isEmpty && first.isRunning && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        #expect(first.isRunning, "the first run is still going")
        let second = try await pargenAsync(
            ["run", campaign.path] + slow,
            environment: ["PARGEN_LOCAL_SUBMIT_LOG": submitLog.path]
        )
        #expect(second.status == 2, "\(second.output)")
        #expect(second.output.contains("another pargen is running this campaign"), "\(second.output)")
        kill(first.processIdentifier, SIGINT)
        try await CrashRecoveryTests.waitForExit(first)
        #expect(first.terminationStatus == 130)
        let resumed = try await pargenAsync(
            ["run", "--resume"] + options,
            environment: ["PARGEN_LOCAL_SUBMIT_LOG": submitLog.path]
        )
        #expect(resumed.status == 0, "\(resumed.output)")
        #expect(resumed.output.contains("continuing the campaign"), "\(resumed.output)")
        #expect(resumed.output.contains("80 succeeded"), "\(resumed.output)")
        let jobs = Set(CrashRecoveryTests.lines(of: submitLog).map { $0.split(separator: ":")[0] })
        #expect(jobs.count == 80 && CrashRecoveryTests.lines(of: submitLog).count == 80, "each line submitted once")
    }

    /// `providers check` makes one authenticated call per provider: exit 0 when every key works; exit 1 naming
    /// the provider and the provider's answer when one does not, and the key never appears.
    @Test func providersCheckTriesEachKeyAndNeverPrintsIt() async throws {
        let key = "sk-check-key-0123456789abcdef"
        let openai = try await FakeProviderServer.start(FakeProviderOptions(wireProtocol: .openai, apiKey: key))
        let runway = try await FakeProviderServer.start(FakeProviderOptions(wireProtocol: .runway, apiKey: key))
        let config = temporaryDirectory().appendingPathComponent("pargen.yaml")
        try Data(
            """
            providers:
              openai:
                baseURL: \(openai.baseURL)
                apiKeyEnv: CHECK_OPENAI_KEY
              runway:
                baseURL: \(runway.baseURL)
                apiKeyEnv: CHECK_RUNWAY_KEY
            """.utf8
        ).write(to: config)
        let good = try await pargenAsync(
            ["providers", "check", "--config", config.path],
            environment: ["CHECK_OPENAI_KEY": key, "CHECK_RUNWAY_KEY": key]
        )
        #expect(good.status == 0, "\(good.output)")
        let wrong = "rw-wrong-key-9876543210"
        let bad = try await pargenAsync(
            ["providers", "check", "--config", config.path],
            environment: ["CHECK_OPENAI_KEY": key, "CHECK_RUNWAY_KEY": wrong]
        )
        #expect(bad.status == 1, "\(bad.output)")
        #expect(bad.output.contains("runway") && bad.output.contains("401"), "\(bad.output)")
        #expect(!bad.output.contains(wrong) && !bad.output.contains(key), "no key in the output")
        await openai.stop()
        await runway.stop()
    }
}
