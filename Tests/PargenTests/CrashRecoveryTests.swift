import Foundation
import Pargen
import PargenSQLite
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Kills a real `pargen run` with SIGKILL at random moments, restarts it each time, and checks the
/// invariants of a durable campaign at the end, Jepsen-style, from the store and the providers' submit log.
@Suite(.timeLimit(.minutes(5))) struct CrashRecoveryTests {
    @Test func aCampaignSurvivesRepeatedSIGKILLWithoutPayingTwice() async throws {
        let folder = temporaryDirectory()
        let campaign = folder.appendingPathComponent("campaign.jsonl")
        var lines: [String] = []
        for i in 0..<240 {
            lines.append(
                i % 4 == 3
                    ? "{\"type\": \"video\", \"prompt\": \"scene \(i)\", \"duration\": 2, \"resolution\": \"360p\", \"user\": \"u\(i % 5)\"}"
                    : "{\"type\": \"audio\", \"prompt\": \"line \(i)\", \"duration\": 6, \"user\": \"u\(i % 5)\"}"
            )
        }
        try Data((lines.joined(separator: "\n") + "\n").utf8).write(to: campaign)
        let out = folder.appendingPathComponent("out")
        let submitLog = folder.appendingPathComponent("submits.tsv")
        var rng = SplitMix64(seed: 42)
        var kills = 0
        var runs = 0
        var crashesInTheWindow = 0
        while true {
            runs += 1
            // Kill at random moments until 10 SIGKILLs have landed, then let one run finish.
            let crashing = kills < 10
            var environment = ProcessInfo.processInfo.environment
            environment["PARGEN_LOCAL_SUBMIT_LOG"] = submitLog.path
            // Every third run may also kill itself between the provider accepting a task and its id being stored.
            let hooked = crashing && runs % 3 == 0
            if hooked { environment["PARGEN_TEST_CRASH_AFTER_SUBMIT"] = "0.2" }
            let process = Process()
            process.executableURL = CommandLineTests.executable
            process.arguments = ["run", campaign.path, "--out", out.path, "--reliable", "--no-progress"]
            process.environment = environment
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            if crashing {
                // A hooked run is given time to crash itself in the submit-to-persist window.
                let deadline = ContinuousClock.now + .milliseconds(hooked ? 3000 : 100 + Int(rng.next() % 500))
                while process.isRunning && ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(5))
                }
                let killedItself = !process.isRunning
                if process.isRunning { kill(process.processIdentifier, SIGKILL) }
                process.waitUntilExit()
                if process.terminationReason == .uncaughtSignal {
                    kills += 1
                    if killedItself { crashesInTheWindow += 1 }
                }
            } else {
                process.waitUntilExit()
                #expect(process.terminationReason == .exit)
                break
            }
            #expect(runs < 60, "the campaign must finish")
            if runs >= 60 { break }
        }
        #expect(kills >= 10, "killed \(kills) times")
        #expect(
            crashesInTheWindow >= 1,
            "at least one crash between a provider accepting a task and its id being stored"
        )

        // 1. Every job ended: succeeded, dead-lettered or waiting for reconciliation; none lost.
        let store = try SQLiteJobStore(path: out.appendingPathComponent("campaign.sqlite").path)
        let jobs = try await store.jobs(matching: JobQuery())
        #expect(jobs.count == 240)
        #expect(
            jobs.allSatisfy { $0.state == .succeeded || $0.state == .deadLettered || $0.state == .needsReconciliation }
        )
        let succeeded = jobs.filter { $0.state == .succeeded }
        #expect(succeeded.count >= 200, "\(succeeded.count) succeeded")

        // 2. The provider saw each job submitted at most once: resumed jobs polled, unknown ones were not resubmitted.
        let submissions = try String(contentsOf: submitLog, encoding: .utf8).split(separator: "\n")
        let perJob = Dictionary(grouping: submissions, by: { $0.split(separator: ":").first.map(String.init) ?? "" })
        let twice = perJob.filter { $0.value.count > 1 }
        #expect(twice.isEmpty, "submitted twice: \(twice.keys.sorted().prefix(5))")

        // 3. The ledger balances; what is still pending belongs to jobs needing reconciliation.
        let ledger = try await store.ledgerTotals()
        #expect(ledger.balances)
        let pendingInReconciliation = jobs.filter { $0.state == .needsReconciliation }.reduce(Money.zero) {
            $0 + $1.ledger.pending
        }
        #expect(ledger.pending == pendingInReconciliation)
        #expect(ledger.reserved == ledger.charged + ledger.released + pendingInReconciliation)

        // 4. No partial artifacts: nothing in staging, and every finished file is whole.
        let staging =
            (try? FileManager.default.contentsOfDirectory(atPath: out.appendingPathComponent(".staging").path)) ?? []
        #expect(staging.isEmpty)
        for job in succeeded {
            let artifact = try #require(job.outcome?.artifact)
            #expect(try sha256sum(artifact.url) == artifact.sha256)
        }
        print(
            "crash test: \(runs) runs, \(kills) SIGKILLs (\(crashesInTheWindow) between submit and persist), \(succeeded.count) succeeded, "
                + "\(jobs.filter { $0.state == .needsReconciliation }.count) need reconciliation, \(submissions.count) submissions"
        )
    }

    @Test func ctrlCStopsGracefullyAndTheNextRunContinues() async throws {
        let folder = temporaryDirectory()
        let campaign = folder.appendingPathComponent("campaign.jsonl")
        let lines = (0..<120).map {
            "{\"type\": \"audio\", \"prompt\": \"line \($0)\", \"duration\": 6, \"user\": \"u\($0 % 6)\"}"
        }
        try Data((lines.joined(separator: "\n") + "\n").utf8).write(to: campaign)
        let out = folder.appendingPathComponent("out")
        let submitLog = folder.appendingPathComponent("submits.tsv")
        func start() throws -> Process {
            let process = Process()
            process.executableURL = CommandLineTests.executable
            process.arguments = ["run", campaign.path, "--out", out.path, "--reliable", "--no-progress"]
            var environment = ProcessInfo.processInfo.environment
            environment["PARGEN_LOCAL_SUBMIT_LOG"] = submitLog.path
            process.environment = environment
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            return process
        }
        let first = try start()
        try await Task.sleep(for: .milliseconds(1200))
        #expect(first.isRunning, "the campaign is still running when interrupted")
        kill(first.processIdentifier, SIGINT)
        first.waitUntilExit()
        #expect(first.terminationReason == .exit && first.terminationStatus == 130)
        let store = try SQLiteJobStore(path: out.appendingPathComponent("campaign.sqlite").path)
        let counts = try await store.counts()
        #expect(counts[.running] == nil, "every lease was given back: \(counts)")
        #expect((counts[.succeeded] ?? 0) < 120)
        let second = try start()
        second.waitUntilExit()
        #expect(second.terminationStatus == 0)
        #expect(try await store.counts() == [.succeeded: 120])
        let submissions = try String(contentsOf: submitLog, encoding: .utf8).split(separator: "\n")
        #expect(
            Set(submissions.map { $0.split(separator: ":").first! }).count == submissions.count,
            "no job submitted twice"
        )
        #expect(try await store.ledgerTotals().pending == .zero)
    }
}
