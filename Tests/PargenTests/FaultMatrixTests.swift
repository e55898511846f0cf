import Foundation
import Pargen
import PargenProviders
import PargenSQLite
import PargenTesting
import Testing

/// The fault matrix (issue 9): one campaign of speech and video lines through the engine, on a SQLite store
/// and a real output folder, against the OpenAI protocol fake with one fault turned up per scenario. Every
/// scenario checks the same promises:
///
/// - every line ends `succeeded`, `dead_lettered` or `needs_reconciliation` (or, when this machine's storage
///   failed, `pending` in the store for the next run), and nothing is lost;
/// - nothing is paid twice: the fake accepted each job once, or once more per failed call in its history,
///   never twice under one key;
/// - the ledger balances, and what it charged is what the results say;
/// - the manifest, the results and the store say the same thing for every line;
///
/// and each states its own promise on top. SIGKILL at each recovery point and SIGTERM during each stage are
/// run against the real `pargen` process by `CrashRecoveryTests`, `CrashLoopTests` and `LocalResourceTests`
/// (see RELIABILITY.md).
@Suite(.timeLimit(.minutes(3))) struct FaultMatrixTests {
    struct Scenario: Sendable, CustomTestStringConvertible {
        var name: String
        var promise: String
        var options: @Sendable (inout FakeProviderOptions) -> Void
        var requestTimeout: Duration = .seconds(10)
        var downloadTimeout: Duration? = nil
        /// Every line must succeed (otherwise it may also end dead-lettered or waiting for reconciliation).
        var allSucceed = true
        /// A second provider that refuses connections (nothing listens on its port) comes first.
        var deadProviderFirst = false
        var testDescription: String { name }
    }

    /// Every scenario, or only the one `PARGEN_FAULT_SCENARIO` names.
    static let scenarios: [Scenario] = allScenarios.filter {
        ProcessInfo.processInfo.environment["PARGEN_FAULT_SCENARIO"].map($0.name.hasPrefix) ?? true
    }

    static let allScenarios: [Scenario] = [
        Scenario(
            name: "429 storm",
            promise: "a provider that throttles most calls only slows the campaign: every line succeeds, none is paid twice",
            options: {
                $0.requestsPerWindow = 3
                $0.window = .milliseconds(400)
            }
        ),
        Scenario(
            name: "5xx burst",
            promise: "calls answered 5xx (30 % of them) are retried with backoff until they succeed",
            options: { $0.errorRate = 0.3 }
        ),
        Scenario(
            name: "connection refused",
            promise: "a provider nobody answers for fails over to the one that answers; nothing is lost",
            options: { _ in },
            deadProviderFirst: true
        ),
        Scenario(
            name: "hung socket",
            promise: "a call whose answer never comes times out; a video the provider may hold waits for a person, never resubmitted blindly",
            options: { $0.hangRate = 0.3 },
            requestTimeout: .milliseconds(600),
            allSucceed: false
        ),
        Scenario(
            name: "slow trickle download",
            promise: "a result that trickles in past the download limit is fetched again by its task id, never bought again",
            options: {
                $0.trickleRate = 1
                $0.trickleBytesPerSecond = 8 * 1024
                $0.maxFaultsPerResult = 1
            },
            downloadTimeout: .milliseconds(800)
        ),
        Scenario(
            name: "truncated bodies",
            promise: "a download cut short is fetched again; a speech answer cut short is charged and bought again, visibly",
            options: {
                $0.truncateRate = 0.4
                $0.maxFaultsPerResult = 2
            }
        ),
        Scenario(
            name: "malformed bodies",
            promise: "an answer that is not what the protocol says is a classified error, never a crash; the line is retried or set aside",
            options: { $0.malformedRate = 0.3 },
            allSucceed: false
        ),
        Scenario(
            name: "expired result links",
            promise: "an expired signed link is fetched again, never resubmitted",
            options: { $0.expiredLinkRate = 1 }
        ),
    ]

    /// Seven speech lines and three videos, from a campaign file.
    static let campaign: CampaignFile = {
        var lines: [String] = []
        for index in 1...10 {
            lines.append(
                index % 3 == 0
                    ? "{\"type\": \"video\", \"prompt\": \"scene \(index)\", \"duration\": 4, \"resolution\": \"720x1280\"}"
                    : "{\"type\": \"audio\", \"prompt\": \"speech line \(index)\", \"duration\": 2}"
            )
        }
        return CampaignFile.parse(lines.joined(separator: "\n"), format: .jsonl)
    }()

    @Test(arguments: scenarios)
    func aFaultKeepsEveryPromise(_ scenario: Scenario) async throws {
        let http = sharedTestHTTPClient
        let bench = try await Self.bench(
            scenario.options,
            requestTimeout: scenario.requestTimeout,
            downloadTimeout: scenario.downloadTimeout
        )
        var providers: [any GenerationProvider] = [bench.provider]
        if scenario.deadProviderFirst {
            // A port nothing listens on: bind one, note it, close it.
            var settings = ProviderSettings.defaults(for: .openai)
            settings.name = "refusing"
            settings.baseURL = "http://127.0.0.1:\(try Self.closedPort())"
            settings.quota = ProviderQuota()
            settings.pricing = ProviderPricing(perRequest: .zero)  // the cheapest, so it is tried first
            providers.insert(
                PargenSetup.adapter(settings, connection: settings.connection(apiKey: APIKey(FakeBench.key), httpClient: http)),
                at: 0
            )
        }
        let folder = temporaryDirectory()
        let store = try SQLiteJobStore(path: folder.appendingPathComponent("jobs.sqlite").path)
        var configuration = fakeTestConfiguration()
        // A circuit opened by a burst of failures stays open 30 s by default; half a second here.
        configuration.balancing.openDuration = .milliseconds(500)
        // Twelve attempts: a line that fails twelve times in a row at 30 % would be one in two million.
        configuration.retry.maxAttempts = 12
        let generator = ParallelGenerator(
            configuration: configuration,
            providers: providers,
            store: store,
            outputDirectory: folder.appendingPathComponent("out"),
            clock: .continuous
        )
        try await generator.start()
        let started = ContinuousClock.now
        let report = try await CampaignRunner.run(
            Self.campaign,
            generator: generator,
            outputDirectory: folder.appendingPathComponent("out")
        )
        try await generator.stop()
        let elapsed = ContinuousClock.now - started
        let records = try await store.jobs(matching: JobQuery())
        let results = records.map { generator.makeResult($0) }
        Self.expectPromises(scenario.name, report: report, records: records, results: results, bench: bench)
        let log = bench.fake.state.submissions()
        print(
            "fault matrix | \(scenario.name) | \(report.succeeded) succeeded, \(report.rows.filter { $0.status == .deadLettered }.count) dead-lettered, \(report.rows.filter { $0.status == .needsReconciliation }.count) to reconcile | \(log.filter(\.accepted).count) accepted, \(log.filter { !$0.accepted }.count) refused, \(bench.fake.state.downloadCount()) result fetches | \(elapsed.formatted(.units(allowed: [.seconds], fractionalPart: .show(length: 1))))"
        )
        if scenario.allSucceed {
            #expect(report.succeeded == 10, "\(scenario.name): \(report.rows.filter { $0.status != .succeeded }.map { $0.error ?? "" })")
        }
        switch scenario.name {
        case "429 storm":
            #expect(bench.fake.state.submissions().contains { $0.refusal == "rate" }, "the storm must have thrown 429s")
        case "connection refused":
            #expect(results.allSatisfy { $0.provider == bench.settings.name })
        case "hung socket":
            // No video whose answer was lost is submitted again: it waits for a person.
            for record in records where record.state == .needsReconciliation {
                #expect(record.request.kind == .video, "\(record.request.prompt)")
            }
        case "slow trickle download", "expired result links":
            let videos = bench.fake.state.submissions().filter { $0.accepted && $0.endpoint == "videos" }
            #expect(videos.count == 3, "each video task made once: \(videos.count)")
            #expect(bench.fake.state.downloadCount() > 3, "at least one result was fetched again")
        default: break
        }
        await bench.fake.stop()
    }

    /// This machine's storage fails mid-run (issue 9, item 2): from the 4th provider call on, every write to a
    /// staging file fails with ENOSPC (`/dev/full`), or the staging folder becomes a plain file. The run stops
    /// taking work and says why; every line is succeeded or pending in the store, never lost or failed for it;
    /// a second run on the same store, with the disk fixed, finishes the campaign without paying twice.
    @Test(arguments: ["disk fills mid-download", "unwritable output folder"])
    func aStorageFailureStopsTheRunAndTheNextOneFinishes(_ scenario: String) async throws {
        let bench = try await Self.bench { _ in }
        let folder = temporaryDirectory()
        let out = folder.appendingPathComponent("out")
        let storePath = folder.appendingPathComponent("jobs.sqlite").path
        let calls = Locked(0)
        let full = scenario.hasPrefix("disk")
        let hooks = EngineHooks(beforeProviderCall: { _, staging in
            let count = calls.withLock { count -> Int in
                count += 1
                return count
            }
            guard count >= 4 else { return }
            if full {
                try? FileManager.default.removeItem(at: staging)
                try? FileManager.default.createSymbolicLink(atPath: staging.path, withDestinationPath: "/dev/full")
            } else {
                let staging = staging.deletingLastPathComponent()
                var isFolder: ObjCBool = false
                if FileManager.default.fileExists(atPath: staging.path, isDirectory: &isFolder), isFolder.boolValue {
                    try? FileManager.default.removeItem(at: staging)
                    _ = FileManager.default.createFile(atPath: staging.path, contents: Data("x".utf8))
                }
            }
        })
        var configuration = fakeTestConfiguration()
        configuration.balancing.openDuration = .milliseconds(500)
        let first = ParallelGenerator(
            configuration: configuration,
            providers: [bench.provider],
            store: try SQLiteJobStore(path: storePath),
            outputDirectory: out,
            clock: .continuous,
            hooks: hooks
        )
        try await first.start()
        let stopped = try await CampaignRunner.run(Self.campaign, generator: first, outputDirectory: out)
        try await first.stop(immediately: true)
        let halt = try #require(first.haltReason, "\(scenario): the run did not stop")
        #expect(halt.errorNumber == (full ? ENOSPC : ENOTDIR), "\(halt)")
        #expect(halt.path.hasPrefix(out.appendingPathComponent(".staging").path), "\(halt)")
        #expect(stopped.rows.allSatisfy { $0.status == .succeeded || $0.status == .pending }, "\(stopped.rows.map(\.status))")
        #expect(stopped.pending > 0)
        let store = try SQLiteJobStore(path: storePath)
        for record in try await store.jobs(matching: JobQuery()) {
            #expect(record.state == .succeeded || record.state == .available, "\(record.request.prompt): \(record.state)")
            #expect(record.ledger.balances)
        }

        if !full { try FileManager.default.removeItem(at: out.appendingPathComponent(".staging")) }
        let (second, report) = try await Self.runCampaign(on: store, bench: bench, configuration: configuration, out: out)
        #expect(second.haltReason == nil)
        let records = try await store.jobs(matching: JobQuery())
        let results = records.map { second.makeResult($0) }
        Self.expectPromises(scenario, report: report, records: records, results: results, bench: bench)
        #expect(report.succeeded == 10, "\(report.rows.filter { $0.status != .succeeded }.map { $0.error ?? "" })")
        // The video tasks accepted before the disk failed were fetched again by their ids, not bought again.
        let videos = bench.fake.state.submissions().filter { $0.accepted && $0.endpoint == "videos" }
        #expect(videos.count == 3, "\(scenario): \(videos.count) video tasks for 3 videos")
        await bench.fake.stop()
    }

    /// The job store's disk fills right as a provider accepts a video task: the task id cannot be recorded, and
    /// the run stops. The job goes back with the id it was given, so the next run fetches that task instead of
    /// buying the video again (OpenAI's video submissions take no idempotency key: a new call is a new bill).
    @Test func aTaskAcceptedWhileTheStoreCannotRecordItIsResumedNotBoughtAgain() async throws {
        let bench = try await Self.bench { _ in }
        let folder = temporaryDirectory()
        let out = folder.appendingPathComponent("out")
        let storePath = folder.appendingPathComponent("jobs.sqlite").path
        let store = try SQLiteJobStore(path: storePath)
        // Speech is synchronous: only the video tasks are recorded; the second one meets a full disk.
        let failing = SubmissionFaultStore(store, failingFrom: 2, path: storePath)
        let configuration = fakeTestConfiguration()
        let first = Self.engine(on: failing, bench: bench, configuration: configuration, out: out)
        try await first.start()
        let stopped = try await CampaignRunner.run(Self.campaign, generator: first, outputDirectory: out)
        try await first.stop(immediately: true)
        let halt = try #require(first.haltReason, "the run did not stop")
        #expect(halt.errorNumber == ENOSPC && halt.path == storePath, "\(halt)")
        #expect(stopped.rows.allSatisfy { $0.status == .succeeded || $0.status == .pending })
        let refused = try #require(failing.refusedTask.value, "no task id was refused")
        let held = try await store.jobs(matching: JobQuery()).filter { $0.providerTaskID == refused }
        #expect(held.count == 1 && held.first?.recoveryPoint == .submitted, "\(held.map(\.recoveryPoint))")

        let (_, report) = try await Self.runCampaign(on: store, bench: bench, configuration: configuration, out: out)
        #expect(report.succeeded == 10, "\(report.rows.filter { $0.status != .succeeded }.map { $0.error ?? "" })")
        let videos = bench.fake.state.submissions().filter { $0.accepted && $0.endpoint == "videos" }
        #expect(videos.count == 3, "\(videos.count) video tasks for 3 videos")
        await bench.fake.stop()
    }

    /// A stop comes while a video submission hangs after the provider accepted it (OpenAI takes no idempotency
    /// key). Its answer is lost when the request times out during the stop: the job is set aside for a person, as
    /// it is without a stop, and a later run does not buy the video again.
    @Test func aSubmissionLostDuringAStopIsSetAsideNotBoughtAgain() async throws {
        let bench = try await Self.bench({ _ in }, requestTimeout: .seconds(1))
        let store = MemoryJobStore()
        let first = Self.engine(on: store, bench: bench)
        try await first.start()
        let ids = try await first.submit([
            .video(prompt: "a scene [[hang]]", duration: .seconds(4), resolution: Resolution(width: 720, height: 1280))
        ])
        let deadline = ContinuousClock.now + .seconds(10)
        while bench.fake.state.submissions().filter({ $0.accepted && $0.endpoint == "videos" }).isEmpty,
            ContinuousClock.now < deadline
        {
            try await Task.sleep(for: .milliseconds(10))
        }
        // The provider has the task; its answer hangs until the 1 s request time-out. A stop that cancels the
        // calls in flight (SIGTERM's) still lets a submission end, so that its task id can be recorded.
        try await first.stop(immediately: true)
        let record = try #require(try await store.job(ids[0]))
        #expect(record.state == .needsReconciliation, "\(record.state): \(record.errors.map(\.description))")

        let second = Self.engine(on: store, bench: bench)
        try await second.start()
        try await Task.sleep(for: .milliseconds(500))
        try await second.stop()
        let videos = bench.fake.state.submissions().filter { $0.accepted && $0.endpoint == "videos" }
        #expect(videos.count == 1, "\(videos.count) video tasks bought for one line")
        await bench.fake.stop()
    }

    /// An engine on `store` against the bench's provider, on the real clock.
    static func engine(
        on store: any JobStore,
        bench: FakeBench,
        configuration: PargenConfiguration = fakeTestConfiguration(),
        out: URL = temporaryDirectory()
    ) -> ParallelGenerator {
        ParallelGenerator(
            configuration: configuration,
            providers: [bench.provider],
            store: store,
            outputDirectory: out,
            clock: .continuous
        )
    }

    /// Runs the campaign to its end on `store` with a new engine (a next run), against the bench's provider.
    static func runCampaign(
        on store: any JobStore,
        bench: FakeBench,
        configuration: PargenConfiguration,
        out: URL
    ) async throws -> (ParallelGenerator, CampaignReport) {
        let generator = engine(on: store, bench: bench, configuration: configuration, out: out)
        try await generator.start()
        let report = try await CampaignRunner.run(Self.campaign, generator: generator, outputDirectory: out)
        try await generator.stop()
        return (generator, report)
    }

    /// The OpenAI protocol fake with short tasks and small videos, and `fault` on top.
    static func bench(
        _ fault: @escaping @Sendable (inout FakeProviderOptions) -> Void,
        requestTimeout: Duration = .seconds(10),
        downloadTimeout: Duration? = nil
    ) async throws -> FakeBench {
        try await FakeBench.start(
            .openai,
            options: {
                $0.taskSeconds = 0.1...0.3
                $0.latencySeconds = 0.005...0.02
                $0.videoBytes = 48 * 1024
                $0.seed = 7
                fault(&$0)
            },
            requestTimeout: requestTimeout,
            downloadTimeout: downloadTimeout,
            http: sharedTestHTTPClient
        )
    }

    /// The promises every scenario keeps.
    static func expectPromises(
        _ name: String,
        report: CampaignReport,
        records: [JobRecord],
        results: [GenerationResult],
        bench: FakeBench
    ) {
        // Nothing lost: a row per line, a record per row, every record final.
        #expect(report.rows.count == 10, "\(name)")
        #expect(records.count == 10, "\(name)")
        for record in records {
            #expect(record.state.isFinal, "\(name): \(record.request.prompt) is \(record.state)")
        }
        // Manifest and store agree on every line.
        for row in report.rows {
            let record = records.first { $0.id.description == row.jobID }
            let expected: ManifestStatus? =
                switch record?.state {
                case .succeeded?: .succeeded
                case .deadLettered?: .deadLettered
                case .needsReconciliation?: .needsReconciliation
                default: nil
                }
            #expect(row.status == expected, "\(name): line \(row.line) is \(row.status) in the manifest, \(record?.state.rawValue ?? "missing") in the store")
            #expect(row.cost == (record?.ledger.charged ?? .zero).decimalString, "\(name): line \(row.line) cost")
        }
        // Nothing paid twice: a job accepted more than once was accepted under a new key each time, at most once
        // per failed call in its history; every line that succeeded was accepted (no cache here).
        let accepted = bench.fake.state.submissions().filter(\.accepted)
        let keysPerJob = Dictionary(grouping: accepted.compactMap(\.key), by: { String($0.split(separator: ":")[0]) })
        for record in records where record.state == .succeeded {
            #expect(keysPerJob[record.id.description] != nil, "\(name): \(record.id) succeeded without a call")
        }
        for (job, keys) in keysPerJob where keys.count > 1 {
            #expect(Set(keys).count == keys.count, "\(name): \(job) accepted twice under one key: \(keys)")
            let failures = results.first { $0.jobID?.description == job }?.errorHistory
                .filter { $0.code != .rateLimited }.count ?? 0
            #expect(keys.count <= 1 + failures, "\(name): \(job) accepted \(keys.count) times after \(failures) failed calls")
        }
        // The ledger balances, and charges what the results say.
        var total = CostLedger()
        for record in records {
            #expect(record.ledger.balances, "\(name): \(record.request.prompt)")
            total = total + record.ledger
        }
        #expect(total.charged == results.reduce(Money.zero) { $0 + $1.actualCost }, "\(name)")
        // A succeeded line has its whole file.
        for result in results where result.succeeded {
            let size = (try? FileManager.default.attributesOfItem(atPath: result.artifact!.url.path)[.size] as? Int) ?? 0
            #expect(size > 0 && Int64(size) == result.artifact!.byteCount, "\(name): \(result.requestID)")
        }
    }

    /// A local port that was just closed: connecting to it is refused.
    static func closedPort() throws -> Int {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(descriptor) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) }
        }
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

/// A job store whose disk is full for recording task ids: from the `failingFrom`-th submission on, recording
/// one fails as SQLite's `SQLITE_FULL` does, as a local storage error naming the store.
private final class SubmissionFaultStore: ForwardingJobStore {
    let base: any JobStore
    let failingFrom: Int
    let path: String
    let submissions = Locked(0)
    /// The task id the first failing record was for.
    let refusedTask = Locked<String?>(nil)

    init(_ base: any JobStore, failingFrom: Int, path: String) {
        self.base = base
        self.failingFrom = failingFrom
        self.path = path
    }

    func recordSubmission(_ lease: JobLease, taskID: String) async throws {
        let count = submissions.withLock { count -> Int in
            count += 1
            return count
        }
        guard count >= failingFrom else { return try await base.recordSubmission(lease, taskID: taskID) }
        refusedTask.withLock { $0 = $0 ?? taskID }
        throw StoreError(
            .unavailable,
            "database or disk is full",
            underlying: LocalResourceError(path: path, operation: "write the job store", errorNumber: ENOSPC)
        )
    }
}
