import ArgumentParser
import AsyncHTTPClient
import Foundation
import Pargen
import PargenProviders
import PargenTesting

struct Providers: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the configured providers with their capabilities, quotas and prices.",
        discussion: """
            Reads --config (YAML or JSON); without one, lists the local providers that `pargen demo` and \
            `pargen run` use by default. `pargen providers check` makes one free authenticated call to each \
            provider and reports whether its key works. Keys are read from the environment variables the \
            configuration names and are never printed.
            """,
        subcommands: [List.self, Check.self],
        defaultSubcommand: List.self
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the providers (the default).")

        @Option(help: ArgumentHelp("Configuration file (YAML or JSON).", valueName: "file"))
        var config: String?

        func run() async throws {
            let setup = try await loadConfiguredSetup(config)
            let environment = ProcessInfo.processInfo.environment
            let http = ProviderConnection.makeHTTPClient()
            for settings in setup.providers {
                let keyState =
                    settings.apiKeyEnvironment.isEmpty
                    ? "no key"
                    : environment[settings.apiKeyEnvironment].map { $0.isEmpty ? "empty" : "set" } ?? "NOT SET"
                let adapter = PargenSetup.adapter(
                    settings,
                    connection: settings.connection(apiKey: nil, httpClient: http)
                )
                print(
                    "\(settings.name)  (\(settings.wireProtocol) at \(settings.baseURL); key \(settings.apiKeyEnvironment): \(keyState))"
                )
                describe(adapter.descriptor)
            }
            if setup.includeLocalProviders {
                for provider in LocalProvider.demoProviders(reliable: true) {
                    print("\(provider.descriptor.name)  (local, offline)")
                    describe(provider.descriptor)
                }
            }
            try? await http.shutdown()
        }

        func describe(_ descriptor: ProviderDescriptor) {
            let c = descriptor.capabilities
            var kinds: [String] = []
            if c.kinds.contains(.audio) {
                kinds.append(
                    "audio \(c.audioFormats.map(\.name).joined(separator: "/")) up to \(c.maxAudioDuration.seconds.formatted1) s"
                )
            }
            if c.kinds.contains(.video) {
                let lengths =
                    c.videoDurations.map { $0.map { $0.seconds.formatted1 }.joined(separator: "/") + " s" }
                    ?? "up to \(c.maxVideoDuration.seconds.formatted1) s"
                let sizes =
                    c.videoResolutions.map { $0.map(\.description).joined(separator: ", ") }
                    ?? "up to \(c.maxResolution?.description ?? "-")"
                kinds.append("video \(c.videoFormats.map(\.name).joined(separator: "/")) \(lengths), \(sizes)")
            }
            print("  makes:   \(kinds.joined(separator: "; ")); prompts up to \(c.maxPromptLength) characters")
            let q = descriptor.quota
            var quota: [String] = []
            if let rpm = q.requestsPerMinute { quota.append("\(rpm) submissions per \(q.window.seconds.formatted1) s") }
            if let slots = q.concurrentTasks {
                quota.append(
                    "\(slots) concurrent (\(q.concurrencyKinds.map(\.rawValue).sorted().joined(separator: ", ")))"
                )
            }
            print("  quota:   \(quota.isEmpty ? "none" : quota.joined(separator: ", "))")
            let p = descriptor.pricing
            var prices: [String] = []
            if p.perRequest > .zero { prices.append("\(p.perRequest)/request") }
            if p.perCharacter > .zero { prices.append("\(p.perCharacter.decimalString)/character") }
            if p.perAudioSecond > .zero { prices.append("\(p.perAudioSecond.decimalString)/audio s") }
            if p.perVideoSecond > .zero { prices.append("\(p.perVideoSecond.decimalString)/video s") }
            for (model, special) in p.models.sorted(by: { $0.key < $1.key }) {
                let unit =
                    special.perCharacter > .zero
                    ? "\(special.perCharacter.decimalString)/character"
                    : special.perVideoSecond > .zero
                        ? "\(special.perVideoSecond.decimalString)/video s"
                        : "\(special.perAudioSecond.decimalString)/audio s"
                prices.append("\(model) \(unit)")
            }
            print("  prices:  \(prices.isEmpty ? "free" : prices.joined(separator: ", ")) (USD)")
        }
    }

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make one free authenticated call to each configured provider.",
            discussion: "Exit status: 0 when every provider answered and accepted its key, 1 otherwise."
        )

        @Option(help: ArgumentHelp("Configuration file (YAML or JSON).", valueName: "file"))
        var config: String?

        func run() async throws {
            let setup = try await loadConfiguredSetup(config)
            guard !setup.providers.isEmpty else {
                print("no providers configured (give --config FILE); the local providers need no check")
                return
            }
            let environment = ProcessInfo.processInfo.environment
            let http = ProviderConnection.makeHTTPClient()
            var failures = 0
            for settings in setup.providers {
                var key: APIKey?
                if !settings.apiKeyEnvironment.isEmpty {
                    guard let value = environment[settings.apiKeyEnvironment], !value.isEmpty else {
                        print("\(settings.name): FAILED: environment variable \(settings.apiKeyEnvironment) is not set")
                        failures += 1
                        continue
                    }
                    key = APIKey(value)
                }
                let adapter = PargenSetup.adapter(
                    settings,
                    connection: settings.connection(apiKey: key, httpClient: http)
                )
                guard let checkable = adapter as? any AccessCheckable else { continue }
                let outcome = await checkable.checkAccess()
                if !outcome.ok { failures += 1 }
                print("\(settings.name): \(outcome.ok ? "ok" : "FAILED"): \(outcome.detail)")
            }
            try? await http.shutdown()
            if failures > 0 { throw ExitCode(1) }
        }
    }
}

/// The configuration file's setup, or the local providers alone without one. A file with problems prints
/// each one with its path and exits 2.
func loadConfiguredSetup(_ path: String?) async throws -> PargenSetup {
    guard let path else { return PargenSetup() }
    do {
        return try await PargenSetup.load(file: path)
    } catch let error as ConfigurationFileError {
        FileHandle.standardError.write(Data("pargen: \(path) has \(error.problems.count) problem(s):\n".utf8))
        for problem in error.problems { FileHandle.standardError.write(Data("  \(problem)\n".utf8)) }
        throw ExitCode(2)
    }
}

struct FakeProvider: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fake-provider",
        abstract: "Run a local fake of a provider's API, with its quotas and injected faults.",
        discussion: """
            Serves the provider's real protocol on 127.0.0.1 (only): OpenAI (speech, Sora video), ElevenLabs \
            (speech, sound effects), MiniMax (hex speech, video with files/retrieve), Runway (tasks with \
            THROTTLED), Azure (SSML speech and batch synthesis). Quotas are enforced the provider's way (429 with Retry-After, \
            MiniMax 1002 on HTTP 200, Runway THROTTLED tasks). It stops by itself after --lifetime seconds, or \
            on Ctrl-C, and appends each submission it receives to --log as it arrives. Point a provider's baseURL \
            at the printed address.
            """
    )

    @Option(name: .customLong("protocol"), help: "openai, elevenlabs, minimax, runway or azure.")
    var wireProtocol: String

    @Option(help: "Port on 127.0.0.1 (0 picks a free one).")
    var port = 0

    @Option(help: "The API key clients must send (none: any is accepted).")
    var apiKey: String?

    @Option(help: "Submissions allowed per window.")
    var rpm: Int?

    @Option(help: "Length of the quota window in seconds.")
    var window: Double = 60

    @Option(help: "Tasks running at once.")
    var concurrent: Int?

    @Option(help: "Seconds an asynchronous task runs, as MIN-MAX.")
    var taskSeconds = "2-5"

    @Option(help: "Share of submissions answered with a server error (0-1).")
    var errorRate: Double = 0

    @Option(help: "Share of submissions whose connection hangs (0-1).")
    var hangRate: Double = 0

    @Option(help: "Share of submissions answered with a malformed body (0-1).")
    var malformedRate: Double = 0

    @Option(help: "Share of downloads cut short (0-1).")
    var truncateRate: Double = 0

    @Option(help: "Share of result links expired on first use (0-1).")
    var expiredRate: Double = 0

    @Option(help: "Share of video tasks that end in the provider's internal failure, in its own codes (0-1).")
    var taskFailureRate: Double = 0

    @Option(help: "Seconds until the fake stops by itself.")
    var lifetime: Double = 600

    @Option(help: "Append each submission (JSON lines: time, endpoint, key, user, prompt, accepted, refusal) here.")
    var log: String?

    func run() async throws {
        guard let wire = FakeProtocol(rawValue: wireProtocol.lowercased()) else {
            throw ValidationError(
                "--protocol must be one of \(FakeProtocol.allCases.map(\.rawValue).joined(separator: ", "))"
            )
        }
        let bounds = taskSeconds.split(separator: "-").compactMap { Double($0) }
        guard bounds.count == 2, bounds[0] >= 0, bounds[0] <= bounds[1], bounds[1] <= 86_400 else {
            throw ValidationError("--task-seconds takes MIN-MAX, such as 2-5, within 0 to 86400 seconds")
        }
        // Every number is checked before it becomes a port or a length of time: 70000 listened on 4464, and a
        // window of 1e300 seconds or a lifetime of nan stopped the process converting them to milliseconds.
        guard (0...65535).contains(port) else { throw ValidationError("--port must be from 0 to 65535, not \(port)") }
        guard (0.001...86_400).contains(window) else {
            throw ValidationError("--window must be from 0.001 to 86400 seconds, not \(window)")
        }
        guard (0...31_536_000).contains(lifetime) else {
            throw ValidationError("--lifetime must be from 0 to 31536000 seconds, not \(lifetime)")
        }
        for (name, value) in [("--rpm", rpm), ("--concurrent", concurrent)] {
            if let value, !(1...10_000_000).contains(value) {
                throw ValidationError("\(name) must be from 1 to 10000000, not \(value)")
            }
        }
        for (name, rate) in [
            ("--error-rate", errorRate), ("--hang-rate", hangRate), ("--malformed-rate", malformedRate),
            ("--truncate-rate", truncateRate), ("--expired-rate", expiredRate), ("--task-failure-rate", taskFailureRate),
        ] where !(0...1).contains(rate) {
            throw ValidationError("\(name) must be between 0 and 1")
        }
        var options = FakeProviderOptions(
            wireProtocol: wire,
            apiKey: apiKey,
            requestsPerWindow: rpm,
            window: .milliseconds(Int64(window * 1000)),
            concurrentTasks: concurrent,
            taskSeconds: bounds[0]...bounds[1],
            errorRate: errorRate,
            hangRate: hangRate,
            malformedRate: malformedRate,
            truncateRate: truncateRate,
            expiredLinkRate: expiredRate,
            lifetime: .milliseconds(Int64(lifetime * 1000)),
            logFile: log.map { URL(fileURLWithPath: $0) }
        )
        options.taskFailureRate = taskFailureRate
        let fake = try await FakeProviderServer.start(options, port: port)
        print("fake \(wire.rawValue) listening on \(fake.baseURL) for \(lifetime.formatted1) s (Ctrl-C stops it)")
        fflush(nil)
        // Ctrl-C or SIGTERM end the process (the log is written as submissions arrive); otherwise it ends
        // by itself after its lifetime.
        await fake.wait()
        let submissions = fake.state.submissions()
        print(
            "stopped: \(submissions.count) submissions, \(submissions.filter(\.accepted).count) accepted, "
                + "\(fake.state.quotaViolations()) over quota, busiest window \(fake.state.busiestWindow())"
        )
    }
}
