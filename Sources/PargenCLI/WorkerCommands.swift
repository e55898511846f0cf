import ArgumentParser
import AsyncHTTPClient
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import Pargen
import PargenPostgres
import PargenProviders
import PargenSQLite
import ServiceLifecycle
import UnixSignals

struct Worker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run jobs from a shared PostgreSQL store until stopped.",
        discussion: """
            Every worker pointed at the same database (--postgres URL, PARGEN_POSTGRES_URL or postgres.url in \
            --config) takes jobs from one queue, and they share one ledger, one set of idempotency keys and the \
            same provider quotas, user windows and project buckets. Campaigns come in with `pargen enqueue` or \
            `pargen run FILE --postgres URL`.

            SIGTERM or Ctrl-C stops taking work and gives every lease back at once: a call about to go out gets \
            its attempt back, a submitted task keeps its id, and another worker resumes it (it is never paid \
            twice). A second signal exits at once; nothing is lost either way. A worker that dies without \
            stopping loses its leases when they expire, and housekeeping (one worker at a time) gives its jobs to \
            the others.

            Media files go to --out on this machine.
            """
    )

    @OptionGroup var storeOptions: StoreOptions
    @OptionGroup var options: CampaignOptions

    func run() async throws {
        TestHooks.exitWithParentIfAsked()
        let logger = options.bootstrapLogging()
        var setup = try await options.loadSetup()
        try options.apply(to: &setup.configuration)
        guard let url = storeOptions.postgresURL(setup: setup) else {
            throw ValidationError("pargen worker needs --postgres URL (or PARGEN_POSTGRES_URL, or postgres.url in --config)")
        }
        let out = URL(fileURLWithPath: options.out ?? "pargen-out")
        let shared = await SharedStore.open(url: url, schema: storeOptions.postgresSchema ?? setup.postgresSchema, logger: logger)
        defer { shared.close() }
        let http = ProviderConnection.makeHTTPClient()
        let configuration = setup.configuration
        let generator = try makeServingGenerator(
            setup: setup,
            options: options,
            store: shared.store,
            out: out,
            logger: logger,
            http: http
        )
        // Started outside the group: the engine's own tasks must not inherit its graceful shutdown, which would
        // make the engine drain its calls instead of giving every lease back at once (the stop below).
        do {
            try await generator.start()
        } catch {
            try? await http.shutdown()
            fail("\(error)")
        }
        let worker = WorkerService(
            generator: generator,
            housekeeper: shared.housekeeper(for: generator, configuration: configuration, logger: logger),
            shared: shared,
            stopDeadline: max(configuration.leaseDuration, .seconds(20))
        )
        // SIGTERM or Ctrl-C shuts the group down gracefully: the worker stops taking work and gives its leases back.
        // The group hears one signal; the watcher hears them all and exits at the second, however soon it comes
        // (nothing is lost: every state change is committed, and a lease not given back expires and is rescued).
        let signals = SignalWatcher()
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [.init(service: worker, successTerminationBehavior: .gracefullyShutdownGroup)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        try await group.run()
        signals.exitOnNextSignal()
        try? await http.shutdown()
        let stats = await generator.systemStats()
        let succeeded = stats.providers.values.reduce(0) { $0 + $1.succeeded }
        print("\(generator.workerID): stopped; this worker's calls succeeded \(succeeded) times and cost \(stats.costMonitor.charged)")
        if let halt = generator.haltReason {
            fail("stopped taking work: \(halt)")
        }
    }
}

/// A `pargen worker`'s work as a service: housekeeping runs beside the started engine until the group shuts down
/// gracefully (SIGTERM or Ctrl-C), then the engine gives every lease back at once. A second signal exits at once.
struct WorkerService: Service {
    let generator: ParallelGenerator
    let housekeeper: PostgresHousekeeper
    let shared: SharedStore
    /// How long the stop may take before the process leaves anyway.
    let stopDeadline: Duration

    func run() async throws {
        print("\(generator.workerID): working on \(shared.location.redacted) (schema \(shared.store.schema)); SIGTERM or Ctrl-C stops it")
        fflush(nil)
        await withDiscardingTaskGroup { group in
            group.addTask { await housekeeper.run() }
            // Returns when the group shuts down gracefully (or throws when it is cancelled): stop either way.
            try? await gracefulShutdown()
            group.cancelAll()
        }
        print("\(generator.workerID): stopping; giving the leases back")
        fflush(nil)
        // A stop that does not end within a lease (the database unreachable, a call that ignores cancellation)
        // ends the process anyway: the leases not given back expire, and housekeeping gives their jobs to the
        // other workers (a submitted task keeps its id, so it is resumed, never paid twice). Unstructured on
        // purpose: it must outlive a stop that never returns.
        let deadline = stopDeadline
        let watchdog = Task {
            try await Task.sleep(for: deadline)
            FileHandle.standardError.write(
                Data(
                    "pargen: the worker did not stop within \(deadline) (\(generator.stopDiagnostics()); store operations under way: \(shared.store.slowOperations().prefix(5).joined(separator: "; "))); leaving its remaining leases to expire\n"
                        .utf8
                )
            )
            _exit(1)
        }
        defer { watchdog.cancel() }
        try await generator.stop(immediately: true)
    }
}

struct Enqueue: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Add a campaign's lines to a store and return; workers run them.",
        discussion: """
            Lines are checked as `pargen run` checks them: a bad line is reported on standard error with its line \
            number, field and reason, and the good lines are added. Each line has an idempotency key (its own, or \
            one made from its number and fields), so enqueuing the same file again adds nothing twice.

            With --postgres URL (or PARGEN_POSTGRES_URL, or postgres.url in --config) the jobs go to the shared \
            store that `pargen worker` runs; otherwise to the SQLite store in --out, which `pargen run --resume` \
            runs.

            Exit status: 0 when every line was added (or already known), 1 when any line was invalid, 2 when the \
            file or the store could not be read or written.
            """
    )

    @Argument(help: "The campaign file (.jsonl or .csv).")
    var file: String

    @OptionGroup var storeOptions: StoreOptions
    @OptionGroup var options: CampaignOptions

    func run() async throws {
        let logger = options.bootstrapLogging()
        let campaign: CampaignFile
        do {
            campaign = try CampaignFile.load(URL(fileURLWithPath: file))
        } catch {
            fail("cannot read \(file): \(error.localizedDescription)")
        }
        var setup = try await options.loadSetup()
        try options.apply(to: &setup.configuration)
        let out = URL(fileURLWithPath: options.out ?? "pargen-out")
        let store: any JobStore
        var shared: SharedStore?
        if let url = storeOptions.postgresURL(setup: setup) {
            shared = await SharedStore.open(url: url, schema: storeOptions.postgresSchema ?? setup.postgresSchema, logger: logger)
            store = shared!.store
        } else {
            do {
                try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
                store = try SQLiteJobStore(path: storeOptions.path(out: out))
            } catch {
                fail("cannot open the campaign store \(storeOptions.path(out: out)): \(reason(error))")
            }
        }
        defer { shared?.close() }
        let http = ProviderConnection.makeHTTPClient()
        // The providers decide which lines can run at all (a pinned provider must be configured).
        let providers = try makeProviders(setup: setup, seed: options.seed, injectFaults: false, submitLog: nil, http: http)
        let generator = ParallelGenerator(
            configuration: setup.configuration,
            providers: providers,
            store: store,
            outputDirectory: out,
            logger: logger
        )
        let ids: [JobID]
        do {
            ids = try await generator.submit(CampaignRunner.requests(of: campaign))
            try? await http.shutdown()
        } catch {
            try? await http.shutdown()
            fail("cannot add the campaign to the store: \(reason(error))")
        }
        var invalid = campaign.errors.count
        for error in campaign.errors {
            FileHandle.standardError.write(Data("line \(error.line): \(error.field.map { "\($0): " } ?? "")\(error.message)\n".utf8))
        }
        for (line, id) in zip(campaign.lines, ids) where generator.isInvalidSubmission(id) {
            invalid += 1
            let result = await generator.result(for: id)
            let field = result.error?.field.map { "\($0): " } ?? ""
            FileHandle.standardError.write(Data("line \(line.line): \(field)\(result.error?.message ?? "invalid")\n".utf8))
        }
        let added = ids.count - (invalid - campaign.errors.count)
        print("enqueued \(added) lines (\(invalid) invalid)")
        if invalid > 0 { throw ExitCode(1) }
    }
}
