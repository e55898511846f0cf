import ArgumentParser
import AsyncHTTPClient
import Dispatch
import Foundation
import Logging
import Pargen
import PargenPostgres
import PargenProviders
import PargenSQLite
import ServiceLifecycle
import UnixSignals

/// Where a campaign's jobs are kept.
enum CampaignStorage {
    /// A SQLite file that this process holds alone.
    case sqlite(path: String)
    /// A PostgreSQL database shared with other workers.
    case postgres(url: String, schema: String?)
}

/// Runs one campaign on the configured providers (the local ones by default) with a live progress display and
/// a final summary.
enum CampaignSession {
    static func run(
        file: CampaignFile?,
        storage: CampaignStorage,
        setup: PargenSetup,
        options: CampaignOptions,
        injectFaults: Bool,
        out: URL,
        logger: Logger
    ) async throws -> CampaignReport {
        // One HTTP client for every provider adapter, shut down however the session ends.
        let http = ProviderConnection.makeHTTPClient()
        do {
            let report = try await run(
                file: file,
                storage: storage,
                setup: setup,
                options: options,
                injectFaults: injectFaults,
                out: out,
                logger: logger,
                http: http
            )
            try? await http.shutdown()
            return report
        } catch {
            try? await http.shutdown()
            throw error
        }
    }

    private static func run(
        file: CampaignFile?,
        storage: CampaignStorage,
        setup: PargenSetup,
        options: CampaignOptions,
        injectFaults: Bool,
        out: URL,
        logger: Logger,
        http: HTTPClient
    ) async throws -> CampaignReport {
        let clock = PargenClock.continuous
        do {
            try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        } catch {
            fail("cannot create the output folder \(out.path): \(reason(error))")
        }
        let store: any JobStore
        var lock: StoreLock?
        var shared: SharedStore?
        var existing = 0
        switch storage {
        case .sqlite(let storePath):
            let sqlite: SQLiteJobStore
            do {
                lock = try StoreLock(storePath: storePath)
                sqlite = try SQLiteJobStore(path: storePath)
            } catch let error as ValidationError {
                fail(error.message)
            } catch {
                fail("cannot open the campaign store \(storePath): \(reason(error))")
            }
            store = sqlite
            // We hold the store alone: any lease in it belongs to a run that crashed.
            let orphans = try await sqlite.rescueOrphanedLeases(maxCrashes: setup.configuration.retry.maxCrashes)
            existing = try await sqlite.counts().values.reduce(0, +)
            if existing > 0 {
                print(
                    "continuing the campaign in \(storePath): \(existing) jobs known, \(orphans) taken back from an earlier run"
                )
            }
        case .postgres(let url, let schema):
            // Shared with other workers: their leases are theirs; expired ones are rescued by housekeeping.
            let opened = await SharedStore.open(url: url, schema: schema, logger: logger)
            shared = opened
            store = opened.store
            existing = try await opened.store.counts().values.reduce(0, +)
        }
        defer {
            shared?.close()
            withExtendedLifetime(lock) {}
        }
        let (hooks, submitLog) = TestHooks.fromEnvironment()
        let providers = try makeProviders(
            setup: setup,
            seed: options.seed,
            injectFaults: injectFaults,
            submitLog: submitLog,
            http: http
        )
        let configuration = setup.configuration
        let generator = ParallelGenerator(
            configuration: configuration,
            providers: providers,
            store: store,
            sharedCache: try makeSharedCache(setup: setup, http: http, logger: logger),
            outputDirectory: out,
            clock: clock,
            logger: logger,
            hooks: hooks
        )
        let housekeeping = shared?.startHousekeeping(for: generator, configuration: configuration, logger: logger)
        defer { housekeeping?.cancel() }
        let tracker = ProgressTracker(clock: clock)
        tracker.expect(file?.lines.count ?? existing)
        let token = generator.onEvent { tracker.record($0) }
        defer { generator.removeEventCallback(token) }
        do {
            try await generator.start()
        } catch {
            fail("\(error)")
        }
        let terminal = isatty(STDOUT_FILENO) == 1
        var progress: (@Sendable () async -> Void)?
        if !options.noProgress {
            progress = { @Sendable in
                // Redraws the bar on a terminal; prints a plain line every 2 s otherwise.
                while !Task.isCancelled {
                    let line = ProgressText.bar(tracker.snapshot(), spend: generator.currentSpend())
                    if terminal { print("\r\u{1B}[2K" + line, terminator: "") } else { print(line) }
                    fflush(nil)
                    try? await Task.sleep(for: terminal ? .milliseconds(150) : .seconds(2))
                }
            }
        }
        let wait = CampaignWait(progress: progress, terminal: terminal) {
            if let file {
                return try await CampaignRunner.run(file, generator: generator, outputDirectory: out, clock: clock)
            }
            return try await CampaignRunner.resume(generator: generator, outputDirectory: out, clock: clock)
        }
        // The first SIGTERM or Ctrl-C shuts the group down gracefully: the wait ends, the runner writes what is done,
        // and the rest stays pending in the store. The group hears one signal; the watcher hears them all and exits
        // at the second, however soon it comes.
        let signals = SignalWatcher()
        try await ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [.init(service: wait, successTerminationBehavior: .gracefullyShutdownGroup)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        ).run()
        let finished: CampaignReport
        do {
            finished = try wait.outcome.value!.get()
        } catch let error as LocalResourceError {
            // The manifest could not be written: what is done is in the store, and the next run writes it again.
            try? await generator.stop(immediately: true)
            fail(stoppedMessage(error, halt: generator.haltReason))
        }
        signals.exitOnNextSignal()
        // Stop every job: submissions in progress are persisted first, every lease is given back.
        try await generator.stop(immediately: finished.pending > 0)
        // Calls that completed while the engine stopped are in the store now: the manifest takes them from there.
        let report: CampaignReport
        do {
            report = try await CampaignRunner.settle(finished, generator: generator)
        } catch let error as LocalResourceError {
            fail(stoppedMessage(error, halt: generator.haltReason))
        }
        let stats = await generator.systemStats()
        if !options.noProgress {
            let line = ProgressText.bar(tracker.snapshot(), spend: stats.costMonitor.charged)
            print(terminal ? "\r\u{1B}[2K" + line : line)
        }
        print("")
        print(ProgressText.summary(stats, report: report))
        print("")
        print("media:     \(out.path)/audio, \(out.path)/video")
        print("manifest:  \(report.manifestJSONL.path), \(report.manifestCSV.path)")
        print("errors:    \(report.errorsFile.path)")
        if let halt = generator.haltReason {
            // This machine's storage failed: what is done is kept, the rest waits in the store (exit 2, as for
            // any file that could not be written).
            FileHandle.standardError.write(
                Data(
                    "pargen: stopped taking work: \(halt). \(report.pending) of \(report.rows.count) lines not finished; they wait in the store. Fix this, then run the same command again to continue.\n"
                        .utf8
                )
            )
            throw ExitCode(2)
        }
        if report.pending > 0 {
            print("stopped: \(report.pending) lines not finished; run the same command again to continue")
            throw ExitCode(130)
        }
        return report
    }
}

/// The configured providers' adapters, and the local ones when the setup includes them; a provider whose key is
/// missing ends the command (exit 2) with one line per problem.
func makeProviders(
    setup: PargenSetup,
    seed: UInt64,
    injectFaults: Bool,
    submitLog: URL?,
    http: HTTPClient
) throws -> [any GenerationProvider] {
    var providers: [any GenerationProvider]
    do {
        providers = try PargenSetup(
            configuration: setup.configuration,
            providers: setup.providers,
            includeLocalProviders: false
        )
        .makeProviders(httpClient: http)
    } catch let error as ConfigurationFileError {
        for problem in error.problems { FileHandle.standardError.write(Data("pargen: \(problem)\n".utf8)) }
        throw ExitCode(2)
    }
    if setup.includeLocalProviders {
        providers += LocalProvider.demoProviders(reliable: !injectFaults, seed: seed, submitLog: submitLog)
    }
    return providers
}

/// An engine for a long-running command (`pargen worker`, `pargen serve`) on the configured providers (the local
/// ones without faults unless asked), with the test hooks the environment names.
func makeServingGenerator(
    setup: PargenSetup,
    options: CampaignOptions,
    store: any JobStore,
    out: URL,
    logger: Logger,
    http: HTTPClient
) throws -> ParallelGenerator {
    let (hooks, submitLog) = TestHooks.fromEnvironment()
    let providers = try makeProviders(
        setup: setup,
        seed: options.seed,
        injectFaults: options.faultsInjected(demo: false),
        submitLog: submitLog,
        http: http
    )
    return ParallelGenerator(
        configuration: setup.configuration,
        providers: providers,
        store: store,
        sharedCache: try makeSharedCache(setup: setup, http: http, logger: logger),
        outputDirectory: out,
        clock: .continuous,
        logger: logger,
        hooks: hooks
    )
}

/// The one line for a run that could not write its manifest, and why the engine stopped, if it did.
private func stoppedMessage(_ error: LocalResourceError, halt: LocalResourceError?) -> String {
    var message = "\(error)"
    if let halt, halt != error { message += " (the run had stopped taking work: \(halt))" }
    return message + "; what is done is kept in the store: fix this, then run the same command again to continue"
}

/// A campaign's wait for its report, as a service: it ends when the report is written, or, when the group shuts
/// down gracefully (the first SIGTERM or Ctrl-C), as soon as the runner has written what is done.
struct CampaignWait: Service {
    let progress: (@Sendable () async -> Void)?
    let terminal: Bool
    let body: @Sendable () async throws -> CampaignReport
    /// The report, or what the runner threw; set when ``run()`` returns.
    let outcome = Locked<Result<CampaignReport, any Error>?>(nil)

    func run() async {
        let result: Result<CampaignReport, any Error>
        do {
            result = .success(
                try await withThrowingTaskGroup(of: CampaignReport?.self) { group in
                    if let progress {
                        group.addTask {
                            await progress()
                            return nil
                        }
                    }
                    group.addTask {
                        try await withGracefulShutdownHandler {
                            // Cancelled on graceful shutdown: the runner then writes what is done and returns.
                            try await cancelWhenGracefulShutdown { try await body() }
                        } onGracefulShutdown: {
                            if terminal { print("") }
                            print("pargen: stopping; press Ctrl-C again to stop at once (nothing is lost either way)")
                        }
                    }
                    var report: CampaignReport?
                    while let next = try await group.next() {
                        if let next {
                            report = next
                            group.cancelAll()
                        }
                    }
                    return report!
                }
            )
        } catch {
            result = .failure(error)
        }
        outcome.withLock { $0 = result }
    }
}

/// Makes the second SIGINT or SIGTERM exit at once (the first is the `ServiceGroup`'s graceful shutdown, which
/// hears one signal only), or the next one after ``exitOnNextSignal()``.
// @unchecked: `sources` is written once in init and only kept alive afterwards; the rest is Sendable.
final class SignalWatcher: @unchecked Sendable {
    private let sources: [any DispatchSourceSignal]
    private let exitNow = Locked(false)

    init() {
        var sources: [any DispatchSourceSignal] = []
        for number in [SIGINT, SIGTERM] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            sources.append(source)
        }
        self.sources = sources
        for source in sources {
            source.setEventHandler { [exitNow] in
                // Every state change is a committed transaction and the next start rescues orphaned leases,
                // so leaving at once loses nothing.
                if exitNow.value { _exit(130) }
                exitNow.withLock { $0 = true }
            }
            source.resume()
        }
    }

    /// From now on, the next signal exits the process at once.
    func exitOnNextSignal() { exitNow.withLock { $0 = true } }
}
