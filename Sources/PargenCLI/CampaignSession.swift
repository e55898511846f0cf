import ArgumentParser
import AsyncHTTPClient
import Dispatch
import Foundation
import Logging
import Pargen
import PargenProviders
import PargenRuntime
import ServiceLifecycle
import UnixSignals

/// Runs one campaign on the configured providers (the local ones by default) with a live progress display and
/// a final summary.
enum CampaignSession {
    static func run(
        file: CampaignFile?,
        storage: GenerationRuntime.StoreLocation,
        setup: PargenSetup,
        options: CampaignOptions,
        injectFaults: Bool,
        out: URL,
        cancelRemoved: Bool = false,
        logger: Logger
    ) async throws -> CampaignReport {
        let runtime = await openRuntime(
            setup: setup,
            store: storage,
            options: options,
            injectFaults: injectFaults,
            out: out,
            logger: logger
        )
        do {
            let report = try await run(
                file: file,
                runtime: runtime,
                options: options,
                out: out,
                cancelRemoved: cancelRemoved
            )
            await runtime.close()
            return report
        } catch {
            await runtime.close()
            throw error
        }
    }

    private static func run(
        file: CampaignFile?,
        runtime: GenerationRuntime,
        options: CampaignOptions,
        out: URL,
        cancelRemoved: Bool
    ) async throws -> CampaignReport {
        let generator = runtime.generator
        let clock = generator.clock
        if case .sqlite(let path) = runtime.location, runtime.jobsAtOpen > 0 {
            print(
                "continuing the campaign in \(path): \(runtime.jobsAtOpen) jobs known, \(runtime.leasesRescuedAtOpen) taken back from an earlier run"
            )
        }
        let tracker = ProgressTracker(clock: clock)
        tracker.expect(file?.lines.count ?? runtime.jobsAtOpen)
        let token = generator.onEvent { tracker.record($0) }
        defer { generator.removeEventCallback(token) }
        // Before the engine starts, so that none of them is taken first.
        if cancelRemoved, let file {
            let cancelled: [JobRecord]
            do {
                cancelled = try await CampaignRunner.cancelRemovedLines(of: file, in: generator.store)
            } catch {
                fail("cannot cancel the lines no longer in the file: \(error)")
            }
            print("cancelled \(cancelled.count) waiting job(s) of lines no longer in the file")
            for job in cancelled.prefix(10) {
                print("  cancelled \(job.id): \(job.request.kind.rawValue) \"\(job.request.prompt.prefix(60))\"")
            }
            if cancelled.count > 10 {
                print("  and \(cancelled.count - 10) more (pargen jobs --state dead_lettered lists them)")
            }
        }
        // Started before the group, so that the campaign's wait can submit at once.
        do {
            try await runtime.start()
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
        // The first SIGTERM or Ctrl-C shuts the group down gracefully, in reverse order: the wait ends and the
        // runner writes what is done (the rest stays pending in the store), then the runtime stops the engine and
        // gives every lease back. The group hears one signal; the watcher hears them all and exits at the second,
        // however soon it comes.
        let signals = SignalWatcher()
        try await ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [
                    .init(service: runtime),
                    .init(service: wait, successTerminationBehavior: .gracefullyShutdownGroup),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: runtime.logger
            )
        ).run()
        signals.exitOnNextSignal()
        // The engine has stopped; if the group ended otherwise, stop it here (idempotent).
        try await runtime.stop()
        let finished: CampaignReport
        do {
            finished = try wait.outcome.value!.get()
        } catch let error as LocalResourceError {
            // The manifest could not be written: what is done is in the store, and the next run writes it again.
            fail(stoppedMessage(error, halt: generator.haltReason))
        }
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
