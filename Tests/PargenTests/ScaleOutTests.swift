import Foundation
import Pargen
import PargenPostgres
import PargenTesting
import PostgresNIO
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Several `pargen worker` processes on one PostgreSQL store, against fake providers that enforce their quotas:
/// real processes, a real database, the providers' real protocol on the wire.
extension SoloTests {
    /// 3 workers, 3 fake OpenAI providers, 2,000 jobs from 12 users in 3 projects, with provider windows, user
    /// windows and project buckets that all bind. From the fakes' own logs and the stored admission times: no
    /// quota refusal, no window or bucket exceeded, no line submitted twice, and the ledger balances.
    @Test(.timeLimit(.minutes(6))) func threeWorkersShareOneCampaignWithinEveryGlobalLimit() async throws {
        guard let url = TestPostgres.url else { throw TestPostgres.Missing() }
        let folder = temporaryDirectory()
        let schema = TestPostgres.freshSchema()
        let providerWindow = 10.0
        let providerLimit = 100  // per 10 s window, each
        let userLimit = 100  // per minute
        let bucketCapacity = 40
        let bucketPerMinute = 600
        let users = 12
        let lines = 2_000

        // Three fakes, each logging every submission it receives.
        let fakes = try await startFakes(in: folder, ["--rpm", "\(providerLimit)", "--window", "\(providerWindow)"])
        defer { for fake in fakes where fake.process.isRunning { kill(fake.process.processIdentifier, SIGTERM) } }
        let config = folder.appendingPathComponent("pargen.yaml")
        var yaml = "localProviders: false\nproviders:\n"
        for (index, fake) in fakes.enumerated() {
            yaml += """
                  fake\(index):
                    protocol: openai
                    baseURL: \(fake.baseURL)
                    apiKeyEnv: FAKE_API_KEY
                    requestsPerMinute: \(providerLimit)
                    quotaWindowSeconds: \(Int(providerWindow))

                """
        }
        yaml += """
            rateLimits:
              perUserRequestsPerMinute: \(userLimit)
              perProjectRequestsPerMinute: \(bucketPerMinute)
              tokenBucketCapacity: \(bucketCapacity)
              maxBurst: 10000

            """
        try yaml.write(to: config, atomically: true, encoding: .utf8)
        var campaign = ""
        for line in 0..<lines {
            campaign += "{\"type\": \"audio\", \"prompt\": \"scale-out line \(line)\", \"user\": \"user\(line % users)\", \"project\": \"project\(line % 3)\"}\n"
        }
        let campaignFile = folder.appendingPathComponent("campaign.jsonl")
        try campaign.write(to: campaignFile, atomically: true, encoding: .utf8)
        let environment = ["FAKE_API_KEY": "test-key", "PARGEN_POSTGRES_URL": url]
        let store = ["--postgres-schema", schema, "--config", config.path]

        let enqueue = try launch(["enqueue", campaignFile.path] + store, output: folder.appendingPathComponent("enqueue.out"), environment: environment)
        try await CrashRecoveryTests.waitForExit(enqueue, within: .seconds(60))
        #expect(enqueue.terminationStatus == 0)

        let started = ContinuousClock.now
        let workers = try (0..<3).map { index in
            try launch(
                ["worker", "--out", folder.appendingPathComponent("out\(index)").path] + store,
                output: folder.appendingPathComponent("worker\(index).out"),
                environment: environment
            )
        }
        defer { for worker in workers where worker.isRunning { kill(worker.processIdentifier, SIGKILL) } }
        let jobs = try await TestPostgres.store(schema: schema)
        try await waitUntil(seconds: 300) { try await jobs.counts()[.succeeded, default: 0] == lines }
        let makespan = ContinuousClock.now - started
        for worker in workers { kill(worker.processIdentifier, SIGTERM) }
        for worker in workers { try await CrashRecoveryTests.waitForExit(worker, within: .seconds(30)) }
        for fake in fakes { kill(fake.process.processIdentifier, SIGTERM) }
        for fake in fakes { try await CrashRecoveryTests.waitForExit(fake.process, within: .seconds(30)) }

        // Every line succeeded, each submitted and accepted exactly once, and no fake refused a call for quota.
        #expect(try await jobs.counts() == [.succeeded: lines])
        var accepted: [String: Int] = [:]
        var refusedForQuota = 0
        var perFake: [Int] = []
        for fake in fakes {
            let submissions = try fake.submissions()
            refusedForQuota += submissions.filter(\.refusedForQuota).count
            for submission in submissions where submission.accepted { accepted[submission.prompt, default: 0] += 1 }
            perFake.append(submissions.filter(\.accepted).count)
            // The busiest window of the fake's own clock.
            let times = submissions.filter(\.accepted).map(\.time).sorted()
            var start = 0
            for end in times.indices {
                while times[end] - times[start] >= providerWindow { start += 1 }
                #expect(end - start + 1 <= providerLimit, "fake window over its quota at \(times[end]) s")
            }
        }
        #expect(refusedForQuota == 0)
        #expect(accepted.count == lines)
        #expect(accepted.values.allSatisfy { $0 == 1 }, "no line submitted twice")
        #expect(perFake.allSatisfy { $0 > lines / 10 }, "every provider took a share: \(perFake)")

        // The stored admission times: no user window, no project bucket exceeded.
        let client = try TestPostgres.requireClient()
        var byUser: [String: [Int64]] = [:]
        var byProject: [String: [Int64]] = [:]
        var byWorker: [String: Int] = [:]
        for try await (user, project, worker, admitted) in try await client.query(
            "SELECT user_name, project, worker, admitted_at FROM \(unescaped: "\"" + schema + "\"").admissions ORDER BY admitted_at"
        ).decode((String, String, String, Int64).self) {
            byUser[user, default: []].append(admitted)
            byProject[project, default: []].append(admitted)
            byWorker[worker, default: 0] += 1
        }
        #expect(byWorker.count == 3, "every worker made calls: \(byWorker)")
        let minute: Int64 = 60_000_000_000
        for (user, times) in byUser where times.count > userLimit {
            for index in userLimit..<times.count {
                #expect(times[index] - times[index - userLimit] >= minute, "\(user) had more than \(userLimit) calls in a minute")
            }
        }
        let perSecond = Double(bucketPerMinute) / 60
        for (project, times) in byProject {
            var worst = 0.0
            for i in times.indices {
                for j in i..<times.count {
                    let allowed = Double(bucketCapacity) + perSecond * Double(times[j] - times[i]) / 1e9 + 1
                    worst = max(worst, Double(j - i + 1) - allowed)
                }
            }
            #expect(worst <= 0, "\(project) took \(worst) calls more than its bucket allows")
        }
        let ledger = try await jobs.ledgerTotals()
        #expect(ledger.balances)
        #expect(ledger.pending == .zero)
        #expect(ledger.charged > .zero)
        // The bound: no schedule, however clever, starts its last call sooner (``lowerBound``).
        let bound = Self.lowerBound(
            lines: lines,
            users: users,
            userLimit: userLimit,
            bucketCapacity: bucketCapacity,
            bucketPerMinute: bucketPerMinute,
            providers: 3,
            providerLimit: providerLimit,
            providerWindow: providerWindow
        )
        let ratio = makespan.secondsDouble / bound
        // The target is 1.05; this guards against the regressions seen on the way (1.5 against this bound with a
        // spinning scheduler and local limits counting refused claims).
        #expect(ratio < 1.25, "makespan \(makespan) against a bound of \(bound) s")
        print("scale-out: \(lines) jobs, 3 workers, makespan \(makespan.secondsDouble) s, bound \(bound) s, ratio \(ratio); per provider \(perFake); per worker \(byWorker)")
    }

    /// Faults in a shared campaign: one worker killed with SIGKILL, PostgreSQL restarted, another worker stopped
    /// with SIGTERM, while 3 workers run 600 jobs against 3 quota-enforcing fakes. The killed worker's jobs finish
    /// on the others within one lease and one housekeeping round; the restart pauses work and nothing is lost; the
    /// stopped worker gives its leases back at once; no line is submitted twice.
    @Test(.timeLimit(.minutes(6))) func sharedCampaignSurvivesAKilledWorkerARestartedDatabaseAndASIGTERM() async throws {
        guard let url = TestPostgres.url, let pgdir = ProcessInfo.processInfo.environment["PARGEN_TEST_POSTGRES_DIR"] else {
            throw TestPostgres.Missing()
        }
        let folder = temporaryDirectory()
        let schema = TestPostgres.freshSchema()
        let lines = 600
        let lease = 6.0
        let fakes = try await startFakes(in: folder, ["--rpm", "40", "--window", "5", "--task-seconds", "3-5"])
        defer { for fake in fakes where fake.process.isRunning { kill(fake.process.processIdentifier, SIGTERM) } }
        var yaml = "localProviders: false\nleaseSeconds: \(lease)\nproviders:\n"
        for (index, fake) in fakes.enumerated() {
            yaml += """
                  fake\(index):
                    protocol: openai
                    baseURL: \(fake.baseURL)
                    apiKeyEnv: FAKE_API_KEY
                    requestsPerMinute: 40
                    quotaWindowSeconds: 5

                """
        }
        yaml += "rateLimits:\n  enabled: false\n"
        let config = folder.appendingPathComponent("pargen.yaml")
        try yaml.write(to: config, atomically: true, encoding: .utf8)
        var campaign = ""
        for line in 0..<lines {
            // Every tenth line a video: its task runs for seconds at the provider, so a killed worker holds some.
            let kind = line % 10 == 0 ? "\"type\": \"video\", \"duration\": 4" : "\"type\": \"audio\""
            campaign += "{\(kind), \"prompt\": \"fault line \(line)\", \"user\": \"user\(line % 10)\", \"project\": \"project\(line % 3)\"}\n"
        }
        let campaignFile = folder.appendingPathComponent("campaign.jsonl")
        try campaign.write(to: campaignFile, atomically: true, encoding: .utf8)
        // Debug logs name each job a worker handles, for the failure messages below.
        let environment = ["FAKE_API_KEY": "test-key", "PARGEN_POSTGRES_URL": url, "LOG_LEVEL": "debug"]
        let store = ["--postgres-schema", schema, "--config", config.path]
        let enqueue = try launch(["enqueue", campaignFile.path] + store, output: folder.appendingPathComponent("enqueue.out"), environment: environment)
        try await CrashRecoveryTests.waitForExit(enqueue, within: .seconds(60))
        #expect(enqueue.terminationStatus == 0)

        let workers = try (0..<3).map { index in
            try launch(
                ["worker", "--out", folder.appendingPathComponent("out\(index)").path] + store,
                output: folder.appendingPathComponent("worker\(index).out"),
                environment: environment
            )
        }
        defer { for worker in workers where worker.isRunning { kill(worker.processIdentifier, SIGKILL) } }
        let jobs = try await TestPostgres.store(schema: schema)
        @Sendable func finished() async throws -> Int {
            let counts = try await jobs.counts()
            return counts[.succeeded, default: 0] + counts[.needsReconciliation, default: 0] + counts[.deadLettered, default: 0]
        }
        @Sendable func held(by owner: String) async throws -> [JobID] {
            try await jobs.jobs(matching: JobQuery(states: [.running])).filter { $0.leaseOwner?.hasPrefix(owner) == true }.map(\.id)
        }
        /// What a failed expectation needs to be understood: each job's record, and the workers' log lines that
        /// name it (a worker logs them at LOG_LEVEL=debug).
        func describe(_ ids: [JobID]) async throws -> String {
            var text = ""
            for id in ids {
                guard let record = try await jobs.job(id) else { continue }
                text += "\n\(id): \(record.state.rawValue), owner \(record.leaseOwner ?? "none"), attempts \(record.attempts), "
                text += "recovery point \(record.recoveryPoint?.rawValue ?? "none"), in call \(record.inCall ?? false), "
                text += "errors \(record.errors.map(\.description))"
                for index in 0..<3 {
                    let log = (try? String(contentsOf: folder.appendingPathComponent("worker\(index).out"), encoding: .utf8)) ?? ""
                    for line in log.split(separator: "\n") where line.contains("=\(id) ") || line.contains("=\(id)\n") {
                        text += "\n  worker\(index): \(line)"
                    }
                }
            }
            return text
        }
        func workerID(_ index: Int) throws -> String {
            let text = try String(contentsOf: folder.appendingPathComponent("worker\(index).out"), encoding: .utf8)
            let line = text.split(separator: "\n").first { $0.contains(": working on") } ?? ""
            return String(line.split(separator: ":").first ?? "")
        }

        // 1. SIGKILL worker 0 once a fifth is done, at a moment when it holds jobs.
        try await waitUntil(seconds: 120) { try await finished() >= lines / 5 }
        let killedID = try workerID(0)
        try await waitUntil(seconds: 60) { try await !held(by: killedID).isEmpty }
        print("faults: SIGKILL \(killedID) at \(try await finished()) finished")
        kill(workers[0].processIdentifier, SIGKILL)
        let killedAt = ContinuousClock.now
        try await CrashRecoveryTests.waitForExit(workers[0], within: .seconds(10))
        let orphans = try await held(by: killedID)
        #expect(!orphans.isEmpty, "the killed worker held jobs (its video tasks run for seconds)")
        // Its jobs are taken back by housekeeping once their leases expire: within one lease and one round
        // (lease / 3), plus a second for the polls.
        try await waitUntil(seconds: 60) { try await held(by: killedID).isEmpty }
        let rescuedAfter = ContinuousClock.now - killedAt
        #expect(rescuedAfter.secondsDouble <= lease + lease / 3 + 2, "the killed worker's leases came back after \(rescuedAfter)")

        // 2. Restart PostgreSQL (immediate shutdown, as a crash) once two fifths are done.
        try await waitUntil(seconds: 120) { try await finished() >= 2 * lines / 5 }
        // The script's own exit status goes to a file: the restarted server is a grandchild that keeps the
        // script's descriptors, and Foundation's Process does not always see such a script end.
        let restartLog = folder.appendingPathComponent("restart.out")
        let restartStatus = folder.appendingPathComponent("restart.status")
        let restart = Process()
        restart.executableURL = URL(fileURLWithPath: "/bin/bash")
        restart.arguments = ["-c", "bash scripts/postgres.sh restart \"$0\" >\"$1\" 2>&1 </dev/null; echo $? >\"$2\"", pgdir, restartLog.path, restartStatus.path]
        restart.currentDirectoryURL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        print("faults: restarting PostgreSQL at \(try await finished()) finished")
        try restart.run()
        try await waitUntil(seconds: 60) { FileManager.default.fileExists(atPath: restartStatus.path) }
        #expect((try? String(contentsOf: restartStatus, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) == "0")
        print("faults: PostgreSQL restarted")

        // 3. SIGTERM worker 1 once three fifths are done: its leases come back at once.
        try await waitUntil(seconds: 120) { try await finished() >= 3 * lines / 5 }
        let stoppedID = try workerID(1)
        let stopping = ContinuousClock.now
        print("faults: SIGTERM \(stoppedID) at \(try await finished()) finished")
        kill(workers[1].processIdentifier, SIGTERM)
        try await CrashRecoveryTests.waitForExit(workers[1], within: .seconds(30))
        let stopTime = ContinuousClock.now - stopping
        #expect(workers[1].terminationStatus == 0)
        let stillHeld = try await held(by: stoppedID)
        let stillHeldText = try await describe(stillHeld)
        #expect(stillHeld.isEmpty, "a stopped worker holds no lease: \(stillHeldText)")

        // 4. Worker 2 finishes the campaign alone.
        try await waitUntil(seconds: 240) { try await finished() == lines }
        kill(workers[2].processIdentifier, SIGTERM)
        try await CrashRecoveryTests.waitForExit(workers[2], within: .seconds(30))
        for fake in fakes { kill(fake.process.processIdentifier, SIGTERM) }
        for fake in fakes { try await CrashRecoveryTests.waitForExit(fake.process, within: .seconds(30)) }

        var accepted: [String: Int] = [:]
        var refusedForQuota = 0
        for fake in fakes {
            let submissions = try fake.submissions()
            refusedForQuota += submissions.filter(\.refusedForQuota).count
            for submission in submissions where submission.accepted { accepted[submission.prompt, default: 0] += 1 }
        }
        #expect(accepted.values.allSatisfy { $0 == 1 }, "no line submitted twice: \(accepted.filter { $0.value > 1 })")
        #expect(refusedForQuota == 0)
        let counts = try await jobs.counts()
        // Only a call the killed worker had on the wire before its task id was stored may wait for reconciliation
        // (OpenAI has no idempotency key, so it is never made again blindly); its submitted video tasks were
        // resumed by the others; everything else succeeded.
        let unreconciled = try await jobs.jobs(matching: JobQuery(states: [.needsReconciliation])).map(\.id)
        let unexpected = Array(Set(unreconciled).subtracting(orphans)).sorted { $0.rawValue < $1.rawValue }
        let unexpectedText = try await describe(unexpected)
        #expect(unexpected.isEmpty, "only the killed worker's calls wait for reconciliation: \(unexpectedText)")
        #expect(counts[.succeeded, default: 0] + unreconciled.count == lines)
        #expect(counts[.deadLettered, default: 0] == 0)
        let ledger = try await jobs.ledgerTotals()
        #expect(ledger.balances)
        print("faults: killed worker's \(orphans.count) leases back after \(rescuedAfter.secondsDouble) s (lease \(lease) s); SIGTERM stop took \(stopTime.secondsDouble) s; \(unreconciled.count) need reconciliation; succeeded \(counts[.succeeded, default: 0])")
    }

    /// A lower bound on when the last of `lines` calls can start, whatever the schedule (calls taking no time),
    /// for 3 projects with buckets of `bucketCapacity` refilled at `bucketPerMinute`, `users` users of `userLimit`
    /// calls a minute, and `providers` providers of `providerLimit` calls per `providerWindow`. Each term is a
    /// count that no schedule can beat:
    /// - a project's bucket admits at most `capacity + rate * t` calls by `t`;
    /// - the providers admit at most `providers * providerLimit` calls per window, so call `n` starts no sooner than
    ///   `(ceil(n / (providers * providerLimit)) - 1)` windows in;
    /// - at most `users * userLimit` calls start in the first minute; each call beyond them needs a place that a
    ///   call at `s` frees at `s + 60`, so `excess` calls after the first minute need `excess` calls by `T - 60`,
    ///   which the buckets and the providers bound as above.
    static func lowerBound(
        lines: Int,
        users: Int,
        userLimit: Int,
        bucketCapacity: Int,
        bucketPerMinute: Int,
        providers: Int,
        providerLimit: Int,
        providerWindow: Double
    ) -> Double {
        let rate = Double(bucketPerMinute) / 60
        let perProject = Double((lines + 2) / 3)
        let bucket = (perProject - Double(bucketCapacity)) / rate
        let perWindow = Double(providers * providerLimit)
        func providerBound(_ calls: Double) -> Double { ((calls / perWindow).rounded(.up) - 1) * providerWindow }
        var bound = max(bucket, providerBound(Double(lines)))
        let excess = Double(lines - users * userLimit)
        if excess > 0 {
            let carried = max((excess - 3 * Double(bucketCapacity)) / (3 * rate), providerBound(excess))
            bound = max(bound, 60 + carried)
        }
        return bound
    }

    /// A fake provider started by ``startFakes(in:_:)``.
    struct Fake {
        var process: Process
        var log: URL
        var baseURL: String

        /// Every submission the fake logged.
        func submissions() throws -> [FakeSubmission] {
            try String(contentsOf: log, encoding: .utf8).split(separator: "\n").map {
                try JSONDecoder().decode(FakeSubmission.self, from: Data($0.utf8))
            }
        }
    }

    /// Starts 3 `pargen fake-provider` OpenAI fakes with `arguments`, each logging every submission it receives.
    func startFakes(in folder: URL, _ arguments: [String]) async throws -> [Fake] {
        var fakes: [Fake] = []
        for index in 0..<3 {
            let log = folder.appendingPathComponent("fake\(index).jsonl")
            let output = folder.appendingPathComponent("fake\(index).out")
            let process = try launch(
                ["fake-provider", "--protocol", "openai", "--lifetime", "600", "--log", log.path] + arguments,
                output: output
            )
            let baseURL = try await waitForLine(in: output, containing: "listening on") { line in
                line.split(separator: " ").first { $0.hasPrefix("http://") }.map(String.init)
            }
            fakes.append(Fake(process: process, log: log, baseURL: baseURL))
        }
        return fakes
    }

    /// Starts `pargen` with its output in a file.
    func launch(_ arguments: [String], output: URL, environment: [String: String] = [:]) throws -> Process {
        let process = Process()
        process.executableURL = CommandLineTests.executable
        process.arguments = arguments
        // A worker ends with this test process even if the test is stopped before its own cleanup runs.
        process.environment = ProcessInfo.processInfo.environment
            .merging(["SWIFT_BACKTRACE": "enable=no", "PARGEN_TEST_EXIT_WITH_PARENT": "1"]) { $1 }
            .merging(environment) { $1 }
        _ = FileManager.default.createFile(atPath: output.path, contents: nil)
        let handle = try FileHandle(forWritingTo: output)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        return process
    }

    /// Polls `file` until a line contains `marker` and `parse` reads a value from it (a ceiling of 30 s).
    func waitForLine(in file: URL, containing marker: String, _ parse: (String) -> String?) async throws -> String {
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            let text = (try? String(contentsOf: file, encoding: .utf8)) ?? ""
            for line in text.split(separator: "\n") where line.contains(marker) {
                if let value = parse(String(line)) { return value }
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw TestPostgres.Missing()
    }
}

extension FakeSubmission {
    /// Refused for the provider's quota (a 429, MiniMax's 1002, Runway's THROTTLED).
    var refusedForQuota: Bool { ["rate", "concurrency", "throttled"].contains(refusal ?? "") }
}

extension Duration {
    var secondsDouble: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
