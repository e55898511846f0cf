import ArgumentParser
import Foundation
import Logging
import Pargen
import PargenSQLite

/// Runs one campaign on the local providers with a live progress display and a final summary.
enum CampaignSession {
    static func run(
        file: CampaignFile?, storePath: String, configuration: PargenConfiguration, options: CampaignOptions, out: URL,
        logger: Logger
    ) async throws -> CampaignReport {
        let clock = PargenClock.continuous
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        let lock: StoreLock
        let store: SQLiteJobStore
        do {
            lock = try StoreLock(storePath: storePath)
            store = try SQLiteJobStore(path: storePath)
        } catch {
            FileHandle.standardError.write(Data("pargen: \(error)\n".utf8))
            throw ExitCode(2)
        }
        defer { withExtendedLifetime(lock) {} }
        // We hold the store alone: any lease in it belongs to a run that crashed.
        let orphans = try await store.rescueOrphanedLeases()
        let existing = try await store.counts().values.reduce(0, +)
        if existing > 0 {
            print("continuing the campaign in \(storePath): \(existing) jobs known, \(orphans) taken back from an earlier run")
        }
        // Fault injection for the crash test, read here because only the executable reads the environment.
        let environment = ProcessInfo.processInfo.environment
        let submitLog = environment["PARGEN_LOCAL_SUBMIT_LOG"].map { URL(fileURLWithPath: $0) }
        var hooks = EngineHooks()
        if let text = environment["PARGEN_TEST_CRASH_AFTER_SUBMIT"], let probability = Double(text), probability > 0 {
            hooks.afterProviderAccepted = { _ in
                if Double.random(in: 0..<1) < probability { kill(getpid(), SIGKILL) }
            }
        }
        let generator = ParallelGenerator(
            configuration: configuration,
            providers: LocalProvider.demoProviders(reliable: options.reliable, seed: options.seed, submitLog: submitLog),
            store: store, outputDirectory: out, clock: clock, logger: logger, hooks: hooks)
        let tracker = ProgressTracker(clock: clock)
        tracker.expect(file?.lines.count ?? existing)
        let token = generator.onEvent { tracker.record($0) }
        defer { generator.removeEventCallback(token) }
        try await generator.start()
        let terminal = isatty(STDOUT_FILENO) == 1
        let report = try await withThrowingTaskGroup(of: CampaignReport?.self) { group in
            if !options.noProgress {
                group.addTask {
                    // Redraws the bar on a terminal; prints a plain line every 2 s otherwise.
                    while !Task.isCancelled {
                        let line = ProgressText.bar(tracker.snapshot(), spend: generator.currentSpend())
                        if terminal { print("\r\u{1B}[2K" + line, terminator: "") } else { print(line) }
                        fflush(nil)
                        try? await Task.sleep(for: terminal ? .milliseconds(150) : .seconds(2))
                    }
                    return nil
                }
            }
            group.addTask {
                if let file {
                    return try await CampaignRunner.run(file, generator: generator, outputDirectory: out, clock: clock)
                }
                return try await CampaignRunner.resume(generator: generator, outputDirectory: out, clock: clock)
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
        let stats = await generator.systemStats()
        try await generator.stop()
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
        return report
    }
}
