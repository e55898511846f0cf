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
        var fakes: [(process: Process, log: URL, baseURL: String)] = []
        defer { for fake in fakes where fake.process.isRunning { kill(fake.process.processIdentifier, SIGTERM) } }
        for index in 0..<3 {
            let log = folder.appendingPathComponent("fake\(index).jsonl")
            let output = folder.appendingPathComponent("fake\(index).out")
            let process = try launch(
                ["fake-provider", "--protocol", "openai", "--rpm", "\(providerLimit)", "--window", "\(providerWindow)",
                    "--lifetime", "600", "--log", log.path],
                output: output
            )
            let baseURL = try await waitForLine(in: output, containing: "listening on") { line in
                line.split(separator: " ").first { $0.hasPrefix("http://") }.map(String.init)
            }
            fakes.append((process, log, baseURL))
        }
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
        var workers: [Process] = []
        defer { for worker in workers where worker.isRunning { kill(worker.processIdentifier, SIGKILL) } }
        for index in 0..<3 {
            workers.append(
                try launch(
                    ["worker", "--out", folder.appendingPathComponent("out\(index)").path] + store,
                    output: folder.appendingPathComponent("worker\(index).out"),
                    environment: environment
                )
            )
        }
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
            let submissions = try String(contentsOf: fake.log, encoding: .utf8).split(separator: "\n").map {
                try JSONDecoder().decode(FakeSubmission.self, from: Data($0.utf8))
            }
            refusedForQuota += submissions.filter { ["rate", "concurrency", "throttled"].contains($0.refusal ?? "") }.count
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
        // The bound: the tightest of the limits (each project's bucket, the users' windows, the providers' windows).
        let bucketBound = (Double(lines) / 3 - Double(bucketCapacity)) / perSecond
        let providerBound = (Double(lines) / 3 / Double(providerLimit) - 1) * providerWindow
        let userBound = Double(lines / users / userLimit) * 60
        let bound = max(bucketBound, providerBound, userBound)
        let ratio = makespan.secondsDouble / bound
        print("scale-out: \(lines) jobs, 3 workers, makespan \(makespan.secondsDouble) s, bound \(bound) s, ratio \(ratio); per provider \(perFake); per worker \(byWorker)")
    }

    /// Starts `pargen` with its output in a file.
    func launch(_ arguments: [String], output: URL, environment: [String: String] = [:]) throws -> Process {
        let process = Process()
        process.executableURL = CommandLineTests.executable
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(["SWIFT_BACKTRACE": "enable=no"]) { $1 }
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

extension Duration {
    var secondsDouble: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
