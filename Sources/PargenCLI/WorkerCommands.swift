import ArgumentParser
import AsyncHTTPClient
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import Pargen
import PargenProviders
import PargenRuntime
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
        let runtime = await openRuntime(
            setup: setup,
            store: .postgres(url: url, schema: storeOptions.postgresSchema ?? setup.postgresSchema),
            options: options,
            injectFaults: options.faultsInjected(demo: false),
            out: out,
            logger: logger
        )
        let generator = runtime.generator
        // SIGTERM or Ctrl-C shuts the group down gracefully: the runtime stops taking work and gives its leases
        // back. The group hears one signal; the watcher hears them all and exits at the second, however soon it
        // comes (nothing is lost: every state change is committed, and a lease not given back expires and is
        // rescued).
        let signals = SignalWatcher()
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [
                    .init(service: runtime),
                    .init(service: WorkerAnnouncement(runtime: runtime), successTerminationBehavior: .gracefullyShutdownGroup),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        do {
            try await group.run()
        } catch {
            await runtime.close()
            fail("\(error)")
        }
        signals.exitOnNextSignal()
        await runtime.close()
        let stats = await generator.systemStats()
        let succeeded = stats.providers.values.reduce(0) { $0 + $1.succeeded }
        print("\(generator.workerID): stopped; this worker's calls succeeded \(succeeded) times and cost \(stats.costMonitor.charged)")
        if let halt = generator.haltReason {
            fail("stopped taking work: \(halt)")
        }
    }
}

/// Says what a `pargen worker` works on, waits for the group's graceful shutdown (SIGTERM or Ctrl-C), then says
/// that it stops; the runtime before it in the group then gives every lease back.
struct WorkerAnnouncement: Service {
    let runtime: GenerationRuntime

    func run() async throws {
        let worker = runtime.generator.workerID
        print("\(worker): working on \(runtime.storeDescription); SIGTERM or Ctrl-C stops it")
        fflush(nil)
        // Returns when the group shuts down gracefully (or throws when it is cancelled).
        try? await gracefulShutdown()
        print("\(worker): stopping; giving the leases back")
        fflush(nil)
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
        let campaign = loadCampaign(file)
        var setup = try await options.loadSetup()
        try options.apply(to: &setup.configuration)
        let out = URL(fileURLWithPath: options.out ?? "pargen-out")
        let store: any JobStore
        var shared: PostgresStoreConnection?
        if let url = storeOptions.postgresURL(setup: setup) {
            shared = await openSharedStore(url: url, schema: storeOptions.postgresSchema ?? setup.postgresSchema, logger: logger)
            store = shared!.store
        } else {
            do {
                try GenerationRuntime.createOutputFolder(out)
            } catch {
                fail(error.description)
            }
            do {
                store = try SQLiteJobStore(path: storeOptions.path(out: out))
            } catch {
                fail("cannot open the campaign store \(storeOptions.path(out: out)): \(reason(error))")
            }
        }
        defer { shared?.close() }
        let http = ProviderConnection.makeHTTPClient()
        // The providers decide which lines can run at all (a pinned provider must be configured).
        let providers: [any GenerationProvider]
        do {
            providers = try GenerationRuntime.makeProviders(
                setup: setup,
                options: GenerationRuntime.Options(outputDirectory: out),
                httpClient: http
            )
        } catch {
            try? await http.shutdown()
            for problem in error.problems { FileHandle.standardError.write(Data("pargen: \(problem)\n".utf8)) }
            throw ExitCode(2)
        }
        let generator = ParallelGenerator(
            configuration: setup.configuration,
            providers: providers,
            store: store,
            outputDirectory: out,
            logger: logger
        )
        let ids: [JobID]
        do {
            let keys = try await CampaignRunner.lineKeys(in: store)
            ids = try await generator.submit(CampaignRunner.requests(of: campaign, keys: keys))
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
