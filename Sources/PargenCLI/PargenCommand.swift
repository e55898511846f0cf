import ArgumentParser
import Foundation
import Logging
import Pargen
import PargenProviders
import PargenRuntime

@main
struct PargenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pargen",
        abstract: "Parallel audio and video generation across providers, within quotas and budgets.",
        discussion: """
            Start with `pargen demo`: about 100 mixed requests through the whole pipeline on the local \
            providers, with no network, credentials or servers. Then `pargen run FILE` for your own campaign, \
            with `--config pargen.yaml` to use OpenAI, ElevenLabs, MiniMax, Runway or Azure (`pargen providers` \
            lists them; `pargen providers check` tries each key). `pargen serve` puts it all behind an HTTP API \
            with a dashboard (`pargen keys create` makes its keys); `pargen worker` runs jobs from a shared \
            PostgreSQL store.
            """,
        subcommands: [
            Demo.self, Run.self, Enqueue.self, Worker.self, Serve.self, Keys.self, Simulate.self, Status.self, Jobs.self, DLQ.self,
            Providers.self,
            FakeProvider.self,
        ]
    )
}

/// Options every campaign command shares.
struct CampaignOptions: ParsableArguments {
    @Option(help: "Folder for media files, manifests and the errors file.")
    var out: String?

    @Option(
        help: ArgumentHelp(
            "Configuration file (YAML or JSON): providers, quotas, prices, limits, budgets. PARGEN_* variables override it.",
            valueName: "file"
        )
    )
    var config: String?

    @Option(help: "Seed of every random choice, for reproducible runs.")
    var seed: UInt64 = 0x5eed

    @Flag(help: "demo: turn off the local providers' injected failures and throttling (run has none unless --inject-faults).")
    var reliable = false

    @Flag(help: "run: make the local providers throttle and fail now and then, as `pargen demo` does.")
    var injectFaults = false

    /// Whether the local providers inject faults: always in the demo (unless --reliable), in `run` only when asked.
    func faultsInjected(demo: Bool) -> Bool { demo ? !reliable : injectFaults }

    @Option(
        name: .customLong("project-budget"),
        help: ArgumentHelp("A project's budget in dollars, as NAME=AMOUNT (repeatable).", valueName: "name=amount")
    )
    var projectBudgets: [String] = []

    @Option(name: .customLong("global-budget"), help: "A budget in dollars for everything.")
    var globalBudget: String?

    @Option(help: "Requests per minute per user (sliding window).")
    var perUserRpm: Int?

    @Flag(help: "Print no progress bar or periodic progress lines.")
    var noProgress = false

    @Option(help: "Log level (or LOG_LEVEL), to standard error: debug logs every state change, admission and provider error with what was decided; trace adds every admission wait and task progress; default warning.")
    var logLevel: String?

    func apply(to configuration: inout PargenConfiguration) throws {
        configuration.randomSeed = seed
        for entry in projectBudgets {
            let parts = entry.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty, let amount = Money(parsing: parts[1]), amount >= .zero else {
                throw ValidationError(
                    "--project-budget takes NAME=AMOUNT with an amount of 0 or more dollars, such as social=2.50; got \(entry)"
                )
            }
            configuration.budgets.perProject[parts[0]] = amount
        }
        if let globalBudget {
            guard let amount = Money(parsing: globalBudget), amount >= .zero else {
                throw ValidationError("--global-budget takes an amount of 0 or more dollars, such as 25 or 12.50; got \(globalBudget)")
            }
            configuration.budgets.global = amount
        }
        if let perUserRpm {
            guard perUserRpm > 0 else { throw ValidationError("--per-user-rpm must be at least 1") }
            configuration.rateLimits.perUserRequestsPerMinute = perUserRpm
        }
    }

    /// The configuration file's setup (engine configuration and providers), or the local providers alone.
    /// A file with problems prints each one with its path and exits 2.
    func loadSetup() async throws -> PargenSetup { try await loadConfiguredSetup(config) }

    func bootstrapLogging() -> Logger {
        let name = logLevel ?? ProcessInfo.processInfo.environment["LOG_LEVEL"] ?? "warning"
        let level = Logger.Level(rawValue: name.lowercased()) ?? .warning
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        return Logger(label: "pargen")
    }
}

struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a demo campaign of about 100 mixed requests on the local providers.",
        discussion: """
            Writes the campaign (demo-campaign.jsonl), the media, manifest.jsonl, manifest.csv and errors.jsonl \
            into --out (default ./pargen-demo). Two lines of the campaign are bad on purpose, and the `social` \
            project has a $2 budget, to show errors and budget holds; bursts are capped at 12 per project per second \
            (2 s cooldown) so rate-limit waits show. Exits 0 when the demo ran.
            """
    )

    @OptionGroup var options: CampaignOptions

    @Option(help: "Number of requests in the demo campaign (at least 10).")
    var count = 100

    func run() async throws {
        let logger = options.bootstrapLogging()
        let out = URL(fileURLWithPath: options.out ?? "pargen-demo")
        do {
            try GenerationRuntime.createOutputFolder(out)
        } catch {
            fail(error.description)
        }
        if options.config != nil {
            throw ValidationError(
                "demo runs on the local providers; use `pargen run FILE --config FILE` for your providers"
            )
        }
        let campaign = out.appendingPathComponent("demo-campaign.jsonl")
        try Data(DemoCampaign.jsonl(count: count, seed: options.seed).utf8).write(to: campaign)
        var configuration = DemoCampaign.configuration
        try options.apply(to: &configuration)
        // The demo starts afresh each time: a new campaign, a new store.
        let storePath = out.appendingPathComponent("campaign.sqlite").path
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: storePath + suffix) }
        print("pargen demo: \(count) requests from \(campaign.path)")
        _ = try await CampaignSession.run(
            file: CampaignFile.load(campaign),
            storage: .sqlite(path: storePath),
            setup: PargenSetup(configuration: configuration),
            options: options,
            injectFaults: options.faultsInjected(demo: true),
            out: out,
            logger: logger
        )
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a campaign from a JSONL or CSV file, durably.",
        discussion: """
            Each line (or CSV row) is one request with the fields type (audio|video), prompt, priority \
            (low|normal|high|urgent), duration (seconds), format, resolution, voice, model, provider, user, project, \
            campaign, idempotency_key, id and metadata (a JSON object; in CSV, extra columns become metadata). \
            A bad line is reported with its line number, field and reason in errors.jsonl and the manifest, and \
            the good lines still run.

            The campaign is kept in a SQLite store (--store, default campaign.sqlite in --out). Running the same \
            command again after a crash or Ctrl-C continues it: finished lines are not redone, submitted tasks are \
            resumed, the rest run. `pargen run --resume --out DIR` continues without the file. With --postgres \
            URL (or PARGEN_POSTGRES_URL, or postgres.url in --config) the campaign goes to a shared PostgreSQL \
            store instead, where `pargen worker` processes on other machines work on it too.

            Without --config the lines run on the local providers, which do not fail (--inject-faults makes them \
            throttle and fail now and then, as in the demo); with --config FILE, on the providers the file \
            configures (see `pargen providers --config FILE`).

            Exit status: 0 when every line succeeded, 1 when any line was invalid, failed or dead-lettered, 2 when \
            the file, the output folder or the store could not be read or written (a full disk stops the run: \
            free space and run the same command again), 130 when stopped by Ctrl-C or SIGTERM.
            """
    )

    @Argument(help: "The campaign file (.jsonl, or .csv as exported from a spreadsheet).")
    var file: String?

    @Flag(help: "Continue the campaign in the store without reading a file.")
    var resume = false

    @Flag(
        help: """
            Cancel the store's waiting jobs of campaign lines that the file no longer has (removed, or edited: an \
            edited line is a new job, and its old version would still run and be paid for). Jobs under way or \
            done are left. For a store that holds this file's campaign alone.
            """
    )
    var cancelRemoved = false

    @OptionGroup var storeOptions: StoreOptions

    @OptionGroup var options: CampaignOptions

    func validate() throws {
        if file == nil && !resume {
            throw ValidationError("give a campaign file, or --resume to continue the one in the store")
        }
        if cancelRemoved && file == nil {
            throw ValidationError("--cancel-removed compares the store with a campaign file: give the file")
        }
    }

    func run() async throws {
        let logger = options.bootstrapLogging()
        let campaign = file.map(loadCampaign)
        var setup = try await options.loadSetup()
        try options.apply(to: &setup.configuration)
        let out = URL(fileURLWithPath: options.out ?? "pargen-out")
        let report = try await CampaignSession.run(
            file: campaign,
            storage: storeOptions.postgresURL(setup: setup).map { .postgres(url: $0, schema: storeOptions.postgresSchema ?? setup.postgresSchema) }
                ?? .sqlite(path: storeOptions.path(out: out)),
            setup: setup,
            options: options,
            injectFaults: options.faultsInjected(demo: false),
            out: out,
            cancelRemoved: cancelRemoved,
            logger: logger
        )
        if report.exitCode != 0 { throw ExitCode(report.exitCode) }
    }
}
