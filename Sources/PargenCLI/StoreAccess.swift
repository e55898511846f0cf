import ArgumentParser
import Foundation
import Pargen
import PargenProviders
import PargenRuntime
import PargenSQLite

#if canImport(Glibc)
import Glibc
#endif

/// Where a campaign's store is: a SQLite file (one machine), or a PostgreSQL database that several workers share.
struct StoreOptions: ParsableArguments {
    @Option(help: "The campaign's SQLite store (default: campaign.sqlite in the output folder).")
    var store: String?

    @Option(
        help: ArgumentHelp(
            "Keep the jobs in this PostgreSQL database, shared with other workers (postgres://user:password@host:port/database; also PARGEN_POSTGRES_URL or postgres.url in --config).",
            valueName: "url"
        )
    )
    var postgres: String?

    @Option(help: "The PostgreSQL schema for Pargen's tables (default pargen; also postgres.schema in --config).")
    var postgresSchema: String?

    func path(out: URL) -> String { store ?? out.appendingPathComponent("campaign.sqlite").path }

    /// The PostgreSQL URL from the option, the environment or the configuration file, in that order.
    func postgresURL(setup: PargenSetup? = nil) -> String? {
        postgres ?? ProcessInfo.processInfo.environment["PARGEN_POSTGRES_URL"].flatMap { $0.isEmpty ? nil : $0 }
            ?? setup?.postgresURL
    }

    /// Opens the store for reading or administration: PostgreSQL when a URL is given, else the SQLite file.
    func openForAdministration(out: URL, config: String? = nil) async throws -> OpenedStore {
        var setup: PargenSetup?
        if let config { setup = try await loadConfiguredSetup(config) }
        if let url = postgresURL(setup: setup) {
            let shared = await openSharedStore(url: url, schema: postgresSchema ?? setup?.postgresSchema)
            return OpenedStore(store: shared.store, shared: shared)
        }
        return OpenedStore(store: try openStore(path(out: out)), shared: nil)
    }
}

/// A store opened by a command, and the PostgreSQL client to stop when the command ends.
struct OpenedStore {
    var store: any JobStore
    var shared: PostgresStoreConnection?

    func close() { shared?.close() }
}

/// Opens a store for reading or administration (no lock: SQLite's WAL lets a running campaign go on). A store
/// that cannot be opened ends the command with exit 2 and one line naming it.
func openStore(_ path: String) throws -> SQLiteJobStore {
    var isFolder: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isFolder) else {
        throw ValidationError("no campaign store at \(path) (give --out or --store)")
    }
    // Opening migrates: an empty file would be made a store by a command that only reads.
    if isFolder.boolValue { fail("cannot open the campaign store \(path): it is a folder, not a store") }
    let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? nil
    if size == 0 { fail("cannot open the campaign store \(path): the file is empty, not a store") }
    do {
        let store = try SQLiteJobStore(path: path)
        return store
    } catch {
        fail("cannot open the campaign store \(path): \(reason(error))")
    }
}

/// Reads a campaign file for a command. One that cannot be read, or that holds no line at all (an empty export,
/// the wrong file), ends the command with exit 2, as an empty upload is refused by the service.
func loadCampaign(_ path: String) -> CampaignFile {
    let campaign: CampaignFile
    do {
        campaign = try CampaignFile.load(URL(fileURLWithPath: path))
    } catch {
        fail("\(error)")
    }
    if campaign.lines.isEmpty && campaign.errors.isEmpty {
        fail("\(path) has no lines: a campaign is one request per line (JSONL), or a header and a row per request (CSV)")
    }
    return campaign
}

/// Ends the command: one line on standard error, exit status 2 (what could not be read or written).
func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("pargen: \(message)\n".utf8))
    Foundation.exit(2)
}

/// A short reason for a file-system or store error: the operating system's words where there are some, never a
/// dump of the error object.
func reason(_ error: any Error) -> String { RuntimeError.reason(error) }

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a campaign's progress, spend and dead letters."
    )

    @Option(help: "The campaign's output folder.")
    var out: String = "pargen-out"

    @OptionGroup var storeOptions: StoreOptions

    @Option(help: "A configuration file (for postgres.url).")
    var config: String?

    func run() async throws {
        let opened = try await storeOptions.openForAdministration(out: URL(fileURLWithPath: out), config: config)
        defer { opened.close() }
        let store = opened.store
        let counts = try await store.counts()
        let total = counts.values.reduce(0, +)
        print("jobs: \(total)")
        for state in JobState.allCases where counts[state, default: 0] > 0 {
            print("  \(state.rawValue.padding(toLength: 22, withPad: " ", startingAt: 0)) \(counts[state]!)")
        }
        let ledger = try await store.ledgerTotals()
        print(
            "spend: \(ledger.charged) charged, \(ledger.released) released, \(ledger.pending) pending, \(ledger.reserved) reserved"
        )
        print("ledger balances: \(ledger.balances ? "yes" : "NO")")
        let reused = try await store.jobs(matching: JobQuery(states: [.succeeded])).compactMap { $0.outcome?.saved }
            .filter { $0 > .zero }
        if !reused.isEmpty {
            print("saved: \(reused.reduce(Money.zero, +)) by reusing \(reused.count) artifacts (caches and identical requests)")
        }
        let reconcile = try await store.jobs(matching: JobQuery(states: [.needsReconciliation]))
        if !reconcile.isEmpty {
            print(
                "needs reconciliation (submitted to a provider before a crash, task id unknown; check the provider, then `pargen dlq retry ID` or `pargen dlq purge ID`):"
            )
            for job in reconcile { print("  \(job.id)  \(job.request.id)  provider \(job.provider ?? "-")") }
        }
    }
}

struct Jobs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List a campaign's jobs.")

    @Option(help: "The campaign's output folder.")
    var out: String = "pargen-out"
    @OptionGroup var storeOptions: StoreOptions
    @Option(help: "Only jobs in this state (available, running, succeeded, dead_lettered, needs_reconciliation).")
    var state: String?
    @Option(help: "Only this user's jobs.") var user: String?
    @Option(help: "Only this project's jobs.") var project: String?
    @Option(help: "Only this campaign's jobs.") var campaign: String?
    @Option(help: "Only jobs that went to this provider.") var provider: String?
    @Option(help: "At most this many jobs.") var limit: Int = 100
    @Option(help: "A configuration file (for postgres.url).") var config: String?

    func validate() throws {
        // A limit of 0 or less read as no limit in the store's query and listed every job.
        guard (1...100_000).contains(limit) else { throw ValidationError("--limit must be from 1 to 100000, not \(limit)") }
    }

    func run() async throws {
        var states: Set<JobState>?
        if let state {
            guard let parsed = JobState(rawValue: state) else {
                throw ValidationError(
                    "--state must be one of \(JobState.allCases.map(\.rawValue).joined(separator: ", "))"
                )
            }
            states = [parsed]
        }
        let opened = try await storeOptions.openForAdministration(out: URL(fileURLWithPath: out), config: config)
        defer { opened.close() }
        let jobs = try await opened.store.jobs(
            matching: JobQuery(
                states: states,
                campaign: campaign,
                project: project,
                user: user,
                provider: provider,
                limit: limit
            )
        )
        for job in jobs {
            let cost = job.outcome?.cost.description ?? "-"
            let error = job.errors.last.map { " \($0.code): \($0.message)" } ?? ""
            print(
                "\(job.id)\t\(job.request.id)\t\(job.state.rawValue)\t\(job.attempts)\t\(job.provider ?? "-")\t\(cost)\(error)"
            )
        }
    }
}

struct DLQ: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dlq",
        abstract: "List, retry or purge dead-lettered jobs.",
        subcommands: [List.self, Retry.self, Purge.self]
    )

    struct Target: ParsableArguments {
        @Option(help: "The campaign's output folder.")
        var out: String = "pargen-out"
        @OptionGroup var storeOptions: StoreOptions
        @Option(help: "A configuration file (for postgres.url).") var config: String?

        func open() async throws -> OpenedStore {
            try await storeOptions.openForAdministration(out: URL(fileURLWithPath: out), config: config)
        }

        func selected(_ ids: [String], all: Bool, in store: any JobStore) async throws -> [JobID] {
            let dead = try await store.jobs(matching: JobQuery(states: [.deadLettered, .needsReconciliation])).map(\.id)
            if all { return dead }
            guard !ids.isEmpty else { throw ValidationError("name job ids, or give --all") }
            return ids.map(JobID.init)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List dead-lettered jobs with their errors.")
        @OptionGroup var target: Target

        func run() async throws {
            let opened = try await target.open()
            defer { opened.close() }
            let jobs = try await opened.store.jobs(matching: JobQuery(states: [.deadLettered, .needsReconciliation]))
            for job in jobs {
                let tasks = Set(job.errors.compactMap(\.taskID)).count
                print("\(job.id)\t\(job.request.id)\t\(job.state.rawValue)\tattempts \(job.attempts)\ttasks \(tasks)")
                for error in job.errors {
                    let attempt = error.attemptKey.map { "[\($0)] " } ?? ""
                    let cost = error.charged.map { " (charged \($0))" } ?? ""
                    print("    \(attempt)\(error)\(cost)")
                }
            }
            print("\(jobs.count) dead-lettered")
        }
    }

    struct Retry: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Put dead-lettered jobs back in the queue; the next `pargen run` runs them."
        )
        @OptionGroup var target: Target
        @Argument(help: "Job ids.") var ids: [String] = []
        @Flag(help: "Every dead-lettered job.") var all = false

        func run() async throws {
            let opened = try await target.open()
            defer { opened.close() }
            let store = opened.store
            let ids = try await target.selected(ids, all: all, in: store)
            for id in ids { try await store.requeue(id) }
            print("re-queued \(ids.count) jobs")
        }
    }

    struct Purge: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete dead-lettered jobs.")
        @OptionGroup var target: Target
        @Argument(help: "Job ids.") var ids: [String] = []
        @Flag(help: "Every dead-lettered job.") var all = false

        func run() async throws {
            let opened = try await target.open()
            defer { opened.close() }
            let store = opened.store
            let removed = try await store.purge(try await target.selected(ids, all: all, in: store))
            print("purged \(removed) jobs")
        }
    }
}
