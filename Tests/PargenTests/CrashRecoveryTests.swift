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
        let marker = folder.appendingPathComponent("crash-marker.txt")
        let config = folder.appendingPathComponent("pargen.yaml")
        try Data("retry:\n  maxCrashes: 1000\n".utf8).write(to: config)
        var rng = SplitMix64(seed: 42)
        var kills = 0
        var runs = 0
        var crashesInTheWindow = 0
        var markedJobs: [String] = []
        while true {
            runs += 1
            // Kill at random moments until 10 SIGKILLs have landed, then let one run finish.
            let crashing = kills < 10
            var environment = ProcessInfo.processInfo.environment
            environment["PARGEN_LOCAL_SUBMIT_LOG"] = submitLog.path
            // A crash must end the process at once (Swift's backtracer would hold it for seconds).
            environment["SWIFT_BACKTRACE"] = "enable=no"
            // Every third run may also kill itself between the provider accepting a task and its id being stored;
            // it writes the job's id to the marker file first.
            let hooked = crashing && runs % 3 == 0
            if hooked {
                environment["PARGEN_TEST_CRASH_AFTER_SUBMIT"] = "0.2"
                environment["PARGEN_TEST_CRASH_MARKER"] = marker.path
            }
            let markersBefore = Self.lines(of: marker).count
            let process = Process()
            process.executableURL = CommandLineTests.executable
            // Ten kills within seconds find the same jobs at the head of the queue under way each time, which is
            // what retry.maxCrashes (default 5) sets aside as a crash loop (CrashLoopTests); this test checks the
            // other promise, that every job survives the kills, so it allows more.
            process.arguments = [
                "run", campaign.path, "--out", out.path, "--reliable", "--no-progress", "--config", config.path,
            ]
            // While killing, each run may submit at most 20 new jobs (4 a minute for each of the 5 users), so the
            // campaign cannot finish before the 10 kills have landed, however fast or loaded the machine; the
            // last run is unlimited.
            if crashing { process.arguments! += ["--per-user-rpm", "4"] }
            process.environment = environment
            process.standardOutput = FileHandle.nullDevice
            // What a run says on its way out, for the failure message of a run that ends by itself.
            let errors = folder.appendingPathComponent("run-\(runs).stderr")
            _ = FileManager.default.createFile(atPath: errors.path, contents: nil)
            let errorHandle = try FileHandle(forWritingTo: errors)
            defer { try? errorHandle.close() }
            process.standardError = errorHandle
            try process.run()
            if crashing {
                // A hooked run is given time to crash itself in the submit-to-persist window (under a loaded
                // test run a debug build can take seconds before its first submission).
                let deadline = ContinuousClock.now + .milliseconds(hooked ? 8000 : 100 + Int(rng.next() % 500))
                while process.isRunning && ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(5))
                }
                let killedItself = !process.isRunning
                if process.isRunning { kill(process.processIdentifier, SIGKILL) }
                try await Self.waitForExit(process)
                if killedItself {
                    // Only the hook may end a run early, and only by SIGKILL after naming its job: a trap (SIGILL),
                    // a segfault or an exit is a failure, not a crash the test wanted.
                    #expect(
                        process.terminationReason == .uncaughtSignal && process.terminationStatus == SIGKILL,
                        "run \(runs) ended by itself: reason \(process.terminationReason.rawValue), status \(process.terminationStatus): \((try? String(contentsOf: errors, encoding: .utf8))?.suffix(600) ?? "")"
                    )
                    let marked = Self.lines(of: marker)
                    #expect(marked.count == markersBefore + 1, "the hook names the job it dies on")
                    if marked.count == markersBefore + 1 {
                        crashesInTheWindow += 1
                        markedJobs.append(marked.last!)
                    }
                    kills += 1
                } else {
                    #expect(process.terminationReason == .uncaughtSignal && process.terminationStatus == SIGKILL)
                    // The hook may have fired in the instant between the last look and the kill.
                    let marked = Self.lines(of: marker)
                    if marked.count > markersBefore {
                        crashesInTheWindow += 1
                        markedJobs.append(marked.last!)
                    }
                    kills += 1
                }
            } else {
                try await Self.waitForExit(process, within: .seconds(120))
                #expect(process.terminationReason == .exit && process.terminationStatus == 0)
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

        // 1. With reliable providers every job succeeds: a crash may cost time, never a job.
        let store = try SQLiteJobStore(path: out.appendingPathComponent("campaign.sqlite").path)
        let jobs = try await store.jobs(matching: JobQuery())
        #expect(jobs.count == 240)
        let succeeded = jobs.filter { $0.state == .succeeded }
        #expect(succeeded.count == 240, "\(succeeded.count) succeeded: \(Dictionary(grouping: jobs, by: \.state).mapValues(\.count))")

        // 2. The provider saw each job submitted exactly once: resumed jobs polled, and a job cut off between
        //    submit and persist was made again under the same key, which the provider de-duplicates.
        let submissions = Self.lines(of: submitLog).map { $0.split(separator: "\t").map(String.init) }
        #expect(submissions.allSatisfy { $0.count == 4 }, "key, task, request, billed")
        let perJob = Dictionary(grouping: submissions, by: { $0[0].split(separator: ":").first.map(String.init) ?? "" })
        #expect(perJob.count == 240, "every job reached the provider")
        let twice = perJob.filter { $0.value.count != 1 }
        #expect(twice.isEmpty, "submitted more than once: \(twice.keys.sorted().prefix(5))")
        #expect(Set(jobs.map(\.id.description)) == Set(perJob.keys), "the log's jobs are the store's")
        // The jobs the hook died on were accepted by the provider (the window is real) and still succeeded.
        for job in markedJobs {
            #expect(perJob[job] != nil, "\(job) was accepted before the crash")
            #expect(jobs.first { $0.id.description == job }?.state == .succeeded)
        }

        // 3. The ledger balances, and what it charged is what the provider billed.
        let ledger = try await store.ledgerTotals()
        #expect(ledger.balances)
        #expect(ledger.pending == .zero)
        let billed = submissions.reduce(Int64(0)) { $0 + (Int64($1[3]) ?? -1_000_000_000_000) }
        #expect(ledger.charged.nanos == billed, "charged \(ledger.charged), billed \(Money(nanos: billed))")
        #expect(ledger.reserved == ledger.charged + ledger.released)

        // 4. No partial artifacts: nothing in staging, and every file is whole by its own structure.
        let staging =
            (try? FileManager.default.contentsOfDirectory(atPath: out.appendingPathComponent(".staging").path)) ?? []
        #expect(staging.isEmpty)
        for job in succeeded {
            let artifact = try #require(job.outcome?.artifact)
            let data = try Data(contentsOf: artifact.url)
            switch job.request.kind {
            case .audio:
                let wav = try MediaCheck.wav(data)
                #expect(wav.channels == 1 && wav.bitsPerSample == 16 && wav.sampleRate == 24_000)
                #expect(abs(wav.seconds - 6) < 0.001, "\(job.id): \(wav.seconds) s of audio")
            case .video:
                let gif = try MediaCheck.gif(data)
                #expect(gif == MediaCheck.GIF(width: 640, height: 360, frames: 10), "\(job.id)")
            }
            #expect(try sha256sum(artifact.url) == artifact.sha256)
        }
        print(
            "crash test: \(runs) runs, \(kills) SIGKILLs (\(crashesInTheWindow) between submit and persist), \(succeeded.count) succeeded, "
                + "\(submissions.count) submissions, charged \(ledger.charged)"
        )
    }

    /// SIGKILL at each recovery point of a provider call (the fault matrix's "SIGKILL at each recovery point"):
    /// the attempt recorded and the call about to go out, the task accepted and its id stored, the media
    /// downloaded but not checked, the media in place but the store not told. The next run recovers each: the
    /// cut-off call is made again under its key, the task is resumed by its id, the staging file is dropped and
    /// fetched again, the file in place is replaced; every line succeeds, nothing is billed twice, the ledger
    /// charges what was billed, and every file is whole.
    @Test(arguments: EngineHooks.Checkpoint.allCases)
    func aKillAtEachRecoveryPointLosesNothingAndPaysNothingTwice(_ point: EngineHooks.Checkpoint) async throws {
        try await stopAt(point, signal: SIGKILL)
    }

    /// SIGTERM at each stage of a call (the fault matrix's "SIGTERM during each stage"), while other lines wait
    /// for admission: the run stops taking work, records what is under way, gives every lease back and exits
    /// 130 with a manifest that says what the store says (`succeeded` or `pending`); the next run finishes
    /// without paying twice.
    @Test(arguments: EngineHooks.Checkpoint.allCases)
    func aTermAtEachStageStopsCleanlyAndTheNextRunFinishes(_ point: EngineHooks.Checkpoint) async throws {
        try await stopAt(point, signal: SIGTERM)
    }

    func stopAt(_ point: EngineHooks.Checkpoint, signal: Int32) async throws {
        let folder = temporaryDirectory()
        let campaign = folder.appendingPathComponent("c.jsonl")
        let lines = (1...30).map { i in
            i % 3 == 0
                ? "{\"type\": \"video\", \"prompt\": \"scene \(i)\", \"duration\": 2, \"resolution\": \"360p\"}"
                : "{\"type\": \"audio\", \"prompt\": \"line \(i)\", \"duration\": 2}"
        }
        try Data(lines.joined(separator: "\n").utf8).write(to: campaign)
        let out = folder.appendingPathComponent("out")
        let submitLog = folder.appendingPathComponent("submits.tsv")
        let marker = folder.appendingPathComponent("marker.txt")
        func run(killing: Bool) async throws -> Process {
            var environment = ProcessInfo.processInfo.environment
            environment["PARGEN_LOCAL_SUBMIT_LOG"] = submitLog.path
            environment["SWIFT_BACKTRACE"] = "enable=no"
            if killing {
                environment[signal == SIGKILL ? "PARGEN_TEST_KILL_AT" : "PARGEN_TEST_TERM_AT"] = "\(point.rawValue):3"
                environment["PARGEN_TEST_CRASH_MARKER"] = marker.path
            }
            let process = Process()
            process.executableURL = CommandLineTests.executable
            process.arguments = ["run", campaign.path, "--out", out.path, "--reliable", "--no-progress"]
            process.environment = environment
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            try await Self.waitForExit(process, within: .seconds(60))
            return process
        }
        let killed = try await run(killing: true)
        let victim = try #require(Self.lines(of: marker).first, "\(point): no job reached the checkpoint 3 times")
        if signal == SIGKILL {
            #expect(killed.terminationReason == .uncaughtSignal && killed.terminationStatus == SIGKILL, "\(point): the run was not killed")
        } else {
            // Stopped gracefully: exit 130 with lines left (0 if the last ones finished as it stopped), and the
            // manifest says what the store says.
            let stopped = try SQLiteJobStore(path: out.appendingPathComponent("campaign.sqlite").path)
            let records = try await stopped.jobs(matching: JobQuery())
            let rows = try String(contentsOf: out.appendingPathComponent("manifest.jsonl"), encoding: .utf8)
                .split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
            #expect(rows.count == 30)
            for row in rows {
                let record = records.first { $0.id.description == row["job_id"] as? String }
                let status = row["status"] as? String
                #expect(
                    status == (record?.state == .succeeded ? "succeeded" : "pending"),
                    "\(point): line \(row["line"] ?? "?") is \(status ?? "?") in the manifest, \(record?.state.rawValue ?? "missing") in the store"
                )
                #expect(record?.state != .running, "\(point): a lease was not given back")
            }
            let pending = rows.contains { $0["status"] as? String == "pending" }
            #expect(killed.terminationReason == .exit && killed.terminationStatus == (pending ? 130 : 0), "\(point): exit \(killed.terminationStatus)")
            print("SIGTERM at \(point.rawValue): exit \(killed.terminationStatus), \(rows.filter { $0["status"] as? String == "pending" }.count) of 30 lines pending")
        }
        let finished = try await run(killing: false)
        #expect(finished.terminationReason == .exit && finished.terminationStatus == 0, "\(point): second run")

        let store = try SQLiteJobStore(path: out.appendingPathComponent("campaign.sqlite").path)
        let jobs = try await store.jobs(matching: JobQuery())
        #expect(jobs.count == 30 && jobs.allSatisfy { $0.state == .succeeded }, "\(point): \(jobs.map(\.state))")
        #expect(jobs.first { $0.id.description == victim }?.state == .succeeded, "\(point): \(victim)")
        let submissions = Self.lines(of: submitLog).map { $0.split(separator: "\t").map(String.init) }
        let perJob = Dictionary(grouping: submissions, by: { $0[0].split(separator: ":").first.map(String.init) ?? "" })
        #expect(perJob.count == 30 && perJob.values.allSatisfy { $0.count == 1 }, "\(point): billed \(perJob.mapValues(\.count))")
        let ledger = try await store.ledgerTotals()
        let billed = submissions.reduce(Int64(0)) { $0 + (Int64($1[3]) ?? -1_000_000_000_000) }
        #expect(ledger.balances && ledger.pending == .zero)
        #expect(ledger.charged.nanos == billed, "\(point): charged \(ledger.charged), billed \(Money(nanos: billed))")
        let staging = (try? FileManager.default.contentsOfDirectory(atPath: out.appendingPathComponent(".staging").path)) ?? []
        #expect(staging.isEmpty, "\(point): \(staging)")
        for job in jobs {
            let artifact = try #require(job.outcome?.artifact)
            let data = try Data(contentsOf: artifact.url)
            switch job.request.kind {
            case .audio: #expect(abs(try MediaCheck.wav(data).seconds - 2) < 0.001, "\(point): \(job.id)")
            case .video: #expect(try MediaCheck.gif(data).frames > 0, "\(point): \(job.id)")
            }
            #expect(try sha256sum(artifact.url) == artifact.sha256, "\(point): \(job.id)")
        }
        // The manifest says what the store says.
        let manifest = try String(contentsOf: out.appendingPathComponent("manifest.jsonl"), encoding: .utf8)
        #expect(manifest.split(separator: "\n").count == 30 && !manifest.contains("\"pending\""))
    }

    /// Waits for `process` to end, at most `limit`; then kills it and fails the test. Never blocks a thread.
    static func waitForExit(_ process: Process, within limit: Duration = .seconds(30)) async throws {
        let deadline = ContinuousClock.now + limit
        while process.isRunning && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        if process.isRunning {
            Issue.record("pargen (pid \(process.processIdentifier)) did not end within \(limit)")
            kill(process.processIdentifier, SIGKILL)
            while process.isRunning { try await Task.sleep(for: .milliseconds(5)) }
        }
    }

    static func lines(of url: URL) -> [String] {
        ((try? String(contentsOf: url, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
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
        func start(slow: Bool = false) throws -> Process {
            let process = Process()
            process.executableURL = CommandLineTests.executable
            process.arguments = ["run", campaign.path, "--out", out.path, "--reliable", "--no-progress"]
            // 8 calls a minute per user: 48 in the first minute, so the run is certainly still going when the
            // 40th submission is seen, however loaded the machine (unlimited, it could end first).
            if slow { process.arguments! += ["--per-user-rpm", "8"] }
            var environment = ProcessInfo.processInfo.environment
            environment["PARGEN_LOCAL_SUBMIT_LOG"] = submitLog.path
            environment["SWIFT_BACKTRACE"] = "enable=no"
            process.environment = environment
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            return process
        }
        let first = try start(slow: true)
        // Interrupt once the provider has seen 40 submissions, so the signal lands mid-campaign on any machine,
        // with some lines finished and some not.
        let deadline = ContinuousClock.now + .seconds(60)
        while Self.lines(of: submitLog).count < 40 && first.isRunning && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(2))
        }
        #expect(Self.lines(of: submitLog).count >= 40, "submissions appeared")
        #expect(first.isRunning, "the campaign is still running when interrupted")
        kill(first.processIdentifier, SIGINT)
        try await Self.waitForExit(first)
        #expect(first.terminationReason == .exit && first.terminationStatus == 130)
        let store = try SQLiteJobStore(path: out.appendingPathComponent("campaign.sqlite").path)
        let counts = try await store.counts()
        #expect(counts[.running] == nil, "every lease was given back: \(counts)")
        #expect((counts[.succeeded] ?? 0) < 120)
        #expect((counts[.succeeded] ?? 0) > 0, "some lines finished before the signal: \(counts)")
        // The manifest written on the way out says what the store says, line by line (it used to call every
        // unfinished wait "pending", jobs the store had finished included).
        let manifest = try String(contentsOf: out.appendingPathComponent("manifest.jsonl"), encoding: .utf8)
            .split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        let states = Dictionary(
            uniqueKeysWithValues: try await store.jobs(matching: JobQuery()).map { ($0.id.description, $0.state) }
        )
        #expect(manifest.count == 120)
        for row in manifest {
            let id = row["job_id"] as? String ?? ""
            let status = row["status"] as? String ?? ""
            let expected = states[id].map { $0 == .succeeded ? "succeeded" : $0.isFinal ? $0.rawValue : "pending" }
            #expect(status == expected, "\(id): manifest \(status), store \(String(describing: states[id]))")
        }
        let second = try start()
        try await Self.waitForExit(second, within: .seconds(120))
        #expect(second.terminationStatus == 0)
        #expect(try await store.counts() == [.succeeded: 120])
        let submissions = Self.lines(of: submitLog)
        let submittedJobs = Set(submissions.map { $0.split(separator: ":").first.map(String.init) ?? "" })
        #expect(submissions.count == 120 && submittedJobs.count == 120, "each job submitted exactly once")
        #expect(try await store.ledgerTotals().pending == .zero)
    }
}
