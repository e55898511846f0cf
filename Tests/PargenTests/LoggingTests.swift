import Foundation
import Logging
import Pargen
import PargenTesting
import Testing

/// Records every log entry, with its level and metadata.
final class CapturedLogs: Sendable {
    struct Entry: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: [String: String]
    }

    let entries = Locked([Entry]())

    func logger(level: Logger.Level) -> Logger {
        var logger = Logger(label: "test") { _ in Handler(sink: self) }
        logger.logLevel = level
        return logger
    }

    func matching(_ message: String) -> [Entry] { entries.value.filter { $0.message == message } }

    struct Handler: LogHandler {
        let sink: CapturedLogs
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            var flat: [String: String] = [:]
            for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) {
                flat[key] = "\(value)"
            }
            sink.entries.withLock { $0.append(Entry(level: event.level, message: "\(event.message)", metadata: flat)) }
        }
    }
}

/// `--log-level trace` tells the story of a run (issue 9, item 8): every admission wait, admission, provider
/// error with what the engine decided, and state change, each with structured metadata; nothing at `info`.
@Suite struct LoggingTests {
    @Test func traceLogsAdmissionWaitsRetriesProviderErrorsAndStateChanges() async throws {
        let provider = ScriptedProvider(name: "p", quota: ProviderQuota(concurrentTasks: 1)) { _, call in
            call == 0
                ? .fail(GenerationError(.transient, "503 service unavailable", providerCode: "503"))
                : .succeed(latency: .milliseconds(20))
        }
        let logs = CapturedLogs()
        var configuration = PargenConfiguration(rateLimits: .unlimited)
        configuration.retry.baseDelay = .milliseconds(1)
        let generator = ParallelGenerator(
            configuration: configuration,
            providers: [provider],
            outputDirectory: temporaryDirectory(),
            clock: .continuous,
            logger: logs.logger(level: .trace)
        )
        try await generator.start()
        let results = try await generator.generate([.video(prompt: "one"), .video(prompt: "two")])
        try await generator.stop()
        #expect(results.allSatisfy { $0.succeeded })

        // One slot for two videos: one of them waits for it.
        let waits = logs.matching("waiting for admission")
        #expect(waits.contains { $0.level == .trace && $0.metadata["pargen.limit"] == "provider_slots" }, "\(waits)")
        let admitted = logs.matching("admitted")
        #expect(admitted.count == 3, "two jobs, one retried")
        #expect(admitted.allSatisfy { $0.metadata["pargen.provider"] == "p" && $0.metadata["pargen.job.id"] != nil })
        #expect(admitted.contains { $0.metadata["pargen.limit"] == "provider_slots" && $0.metadata["pargen.waited_ms"] != nil })

        let failure = try #require(logs.matching("provider call failed").first)
        #expect(failure.level == .debug)
        #expect(failure.metadata["pargen.error.code"] == "transient")
        #expect(failure.metadata["pargen.error.provider_code"] == "503")
        #expect(failure.metadata["pargen.disposition"] == "retry")
        #expect(failure.metadata["pargen.delay_ms"] != nil && failure.metadata["pargen.attempt_key"] != nil)

        for state in ["queued", "submitted", "retrying", "succeeded"] {
            #expect(!logs.matching("job \(state)").isEmpty, "no log of the \(state) state")
        }
        #expect(logs.entries.value.allSatisfy { $0.level <= .debug }, "a good run logs nothing at info or above")
    }
}
