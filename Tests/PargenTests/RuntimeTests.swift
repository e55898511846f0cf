import Foundation
import Pargen
import PargenPostgres
import PargenProviders
import PargenRuntime
import PargenSQLite
import PargenTesting
import ServiceLifecycle
import ServiceLifecycleTestKit
import Testing

/// `GenerationRuntime`: what `pargen run`, `worker` and `serve` are composed from.
@Suite(.timeLimit(.minutes(3)))
struct RuntimeTests {
    /// A runtime on the local providers and a manual clock that the test never moves: every call that starts stays
    /// in flight.
    static func open(_ path: String, folder: URL, clock: ManualClock) async throws -> GenerationRuntime {
        var options = GenerationRuntime.Options(outputDirectory: folder)
        options.clock = PargenClock(clock)
        return try await GenerationRuntime.open(setup: PargenSetup(), store: .sqlite(path: path), options: options)
    }

    @Test func aSQLiteStoreHasOneRunnerAndTheLeasesACrashedRunLeftAreTakenBack() async throws {
        let folder = temporaryDirectory()
        let path = folder.appendingPathComponent("campaign.sqlite").path
        // A run that crashed: three jobs, two of them leased by a worker that is gone.
        let crashed = try SQLiteJobStore(path: path)
        _ = try await crashed.enqueue((0..<3).map { validated(.audio(prompt: "line \($0)"), id: "line-\($0)") })
        let leased = try await crashed.lease(limit: 2, owner: "gone", duration: .seconds(3600), excludingUsers: [])
        #expect(leased.count == 2)

        let runtime = try await Self.open(path, folder: folder, clock: ManualClock())
        #expect(runtime.jobsAtOpen == 3)
        #expect(runtime.leasesRescuedAtOpen == 2)
        let counts = try await runtime.store.counts()
        #expect(counts[.running, default: 0] == 0 && counts[.available, default: 0] == 3, "\(counts)")

        // A second runner of the same store is refused, naming the lock, and takes nothing back.
        let second = await #expect(throws: RuntimeError.self) {
            _ = try await Self.open(path, folder: folder, clock: ManualClock())
        }
        #expect(second?.code == .storeBusy)
        #expect(second?.description.contains("campaign.sqlite.lock") == true, "\(String(describing: second))")

        // Closed, the store can be run again. (A process that another test starts at this moment holds a copy of
        // the lock's descriptor from its fork until its exec closes it, which under a loaded run can outlast the
        // close: a red run. The open is tried again for a few seconds while it is refused as busy.)
        await runtime.close()
        var reopened: GenerationRuntime?
        let deadline = ContinuousClock.now + .seconds(5)
        while reopened == nil {
            do {
                reopened = try await Self.open(path, folder: folder, clock: ManualClock())
            } catch let error as RuntimeError where error.code == .storeBusy && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
            }
        }
        let third = try #require(reopened)
        #expect(third.jobsAtOpen == 3 && third.leasesRescuedAtOpen == 0)
        await third.close()
    }

    @Test func aGracefulShutdownStopsTheEngineAtOnceAndGivesEveryLeaseBack() async throws {
        let folder = temporaryDirectory()
        let path = folder.appendingPathComponent("campaign.sqlite").path
        let clock = ManualClock()
        let runtime = try await Self.open(path, folder: folder, clock: clock)
        // 30 s videos: each renders for 0.45 s (local-fast) or 1.35 s (local-cheap) of clock time once submitted;
        // 12 of them fill the 10 video slots and leave 2 waiting.
        let lines = 12
        try await runtime.start()
        _ = try await runtime.generator.submit((0..<lines).map { .video(prompt: "scene \($0)", duration: .seconds(30)) })
        let store = runtime.store
        @Sendable func submitted() async throws -> Set<JobID> {
            Set(try await store.jobs(matching: JobQuery(states: [.running])).filter { $0.providerTaskID != nil }.map(\.id))
        }
        // The clock moves 2 ms for every 10 ms of real time while the test runs: enough for calls to be submitted
        // (40 to 150 ms), far from enough for a render to end before the stop reaches it.
        let ticker = Task {
            while !Task.isCancelled {
                clock.advance(by: .milliseconds(2))
                try? await Task.sleep(for: .milliseconds(10))
            }
        }
        defer { ticker.cancel() }
        var rendering: Set<JobID> = []
        try await testGracefulShutdown { trigger in
            try await withThrowingTaskGroup(of: Bool.self) { group in
                group.addTask {
                    try await runtime.run()
                    return true
                }
                try await waitUntil(seconds: 60) { try await !submitted().isEmpty }
                rendering = try await submitted()
                trigger.triggerGracefulShutdown()
                // A stop that drained would wait for every render: this one ends at once.
                group.addTask {
                    try await Task.sleep(for: .seconds(30))
                    return false
                }
                let stoppedInTime = try await group.next()!
                group.cancelAll()
                #expect(stoppedInTime, "the runtime did not stop within 30 s of the graceful shutdown")
            }
        }
        ticker.cancel()
        let records = try await store.jobs(matching: JobQuery())
        let counts = try await store.counts()
        #expect(records.count == lines)
        #expect(counts[.running, default: 0] == 0, "every lease is given back: \(counts)")
        for record in records where rendering.contains(record.id) {
            // Cut off while rendering: given back with its task id, so the next run resumes it (never paid twice).
            #expect(record.state == .available && record.providerTaskID != nil, "\(record.id): \(record.state)")
        }
        #expect(
            counts[.available, default: 0] + counts[.succeeded, default: 0] == lines,
            "nothing failed, nothing lost: \(counts)"
        )
        await runtime.close()
    }

    /// A PostgreSQL server that refuses who we are or what we ask for says so at once, in its own words; one
    /// that never answers is waited for, and the wait's end names the last cause. The pool alone only logged the
    /// refusal and tried again for ever, so `pargen status --postgres` waited 30 s and said "no answer".
    @Test func aPostgreSQLServerThatRefusesUsIsNamedAtOnce() async throws {
        let url = try #require(TestPostgres.url, "PARGEN_TEST_POSTGRES_URL")
        var location = try PostgresLocation(url: url)
        for (change, expected) in [
            ({ (l: inout PostgresLocation) in l.database = "pargen_no_such_database" }, "(3D000)"),
            ({ (l: inout PostgresLocation) in l.username = "pargen_no_such_role" }, "(28000)"),
        ] {
            var wrong = location
            change(&wrong)
            let started = ContinuousClock.now
            let error = await #expect(throws: RuntimeError.self) {
                _ = try await PostgresStoreConnection.open(url: wrong.redacted, schema: nil, timeout: .seconds(20))
            }
            let shown = "\(try #require(error))"
            #expect(shown.contains("server: ") && shown.contains(expected), "\(shown)")
            #expect(ContinuousClock.now - started < .seconds(10), "refused at once, not at the end of the wait")
        }
        // Nothing listens on the port: the wait runs out, naming the last attempt's cause.
        location.port = 1
        let error = await #expect(throws: RuntimeError.self) {
            _ = try await PostgresStoreConnection.open(url: location.redacted, schema: nil, timeout: .seconds(2))
        }
        let shown = "\(try #require(error))"
        #expect(shown.contains("no answer within 2.0 seconds (the last attempt: ") && shown.contains("refused"), "\(shown)")
    }

    @Test func aMissingKeyIsNamedAndNothingIsLeftOpen() async throws {
        let folder = temporaryDirectory()
        let path = folder.appendingPathComponent("campaign.sqlite").path
        // ELEVENLABS_API_KEY is unset in the test environment (the run's scripts never set it).
        let setup = PargenSetup(providers: [ProviderSettings.defaults(for: .elevenlabs)])
        let error = await #expect(throws: RuntimeError.self) {
            _ = try await GenerationRuntime.open(
                setup: setup,
                store: .sqlite(path: path),
                options: GenerationRuntime.Options(outputDirectory: folder)
            )
        }
        #expect(error?.code == .configuration)
        #expect(error?.problems == ["providers.elevenlabs.apiKeyEnv: environment variable ELEVENLABS_API_KEY is not set"])
        // The store's lock went with the failed runtime.
        let runtime = try await Self.open(path, folder: folder, clock: ManualClock())
        await runtime.close()
    }
}
