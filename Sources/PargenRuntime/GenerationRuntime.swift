public import AsyncHTTPClient
public import Foundation
public import Logging
public import Pargen
import PargenPostgres
public import PargenProviders
import PargenSQLite
public import ServiceLifecycle
import Synchronization

/// Everything one process runs campaigns with, composed once: the job store (and, for SQLite, the lock that makes
/// this process its only runner and the rescue of what a crashed run left leased), the providers from the
/// configuration, the shared cache tiers, the engine on top, and on PostgreSQL the housekeeping that rescues
/// other workers' expired leases.
///
/// `pargen run`, `pargen worker` and `pargen serve` are each this type plus what they add (a campaign's wait, an
/// HTTP server). Run it as a service in one `ServiceGroup`, before the services that use its ``generator``:
///
/// ```swift
/// let runtime = try await GenerationRuntime.open(
///     setup: try await PargenSetup.load(file: "pargen.yaml"),
///     store: .sqlite(path: "out/campaign.sqlite"),
///     options: .init(outputDirectory: URL(fileURLWithPath: "out"))
/// )
/// try await runtime.start()  // so that the services after it can submit at once
/// try await ServiceGroup(
///     configuration: .init(
///         services: [.init(service: runtime), .init(service: myWork, successTerminationBehavior: .gracefullyShutdownGroup)],
///         gracefulShutdownSignals: [.sigterm, .sigint],
///         logger: logger
///     )
/// ).run()
/// await runtime.close()
/// ```
///
/// On graceful shutdown (SIGTERM, Ctrl-C, or the group ending) the runtime's ``run()`` stops the engine at once:
/// a call about to go out gets its attempt back, a submitted task keeps its id and is resumed by the next run (never
/// paid twice), and every lease is given back. The group shuts its services down in reverse order, so the services
/// after the runtime (a campaign's wait, an HTTP server) finish first.
public final class GenerationRuntime: Service, Sendable {
    /// Where the jobs are kept.
    public enum StoreLocation: Sendable {
        /// A SQLite file that this process holds alone (a lock beside it), for one machine.
        case sqlite(path: String)
        /// A PostgreSQL database shared with other processes; `schema` defaults to `pargen`.
        case postgres(url: String, schema: String?)
        /// Memory only: everything is lost when the process ends.
        case memory
    }

    /// How the runtime is put together, beyond the configuration.
    public struct Options: Sendable {
        /// Where media, staging files and manifests go.
        public var outputDirectory: URL
        /// The local providers' seed (when the setup includes them).
        public var seed: UInt64 = 1
        /// Whether the local providers inject faults (the demo's failures, throttling and latency spikes).
        public var injectFaults = false
        /// A file where the local providers log every task they accept and what they bill.
        public var submitLog: URL?
        /// The engine's hooks (crash tests).
        public var hooks = EngineHooks()
        /// The clock every wait and expiry reads.
        public var clock = PargenClock.continuous
        /// How long PostgreSQL has to answer (and migrate) when the store is opened.
        public var connectTimeout: Duration = .seconds(30)
        /// The level of the PostgreSQL pool's own log; the logger's level when `nil`.
        public var postgresPoolLogLevel: Logger.Level?
        /// How long a stop may take before ``onStopTimeout`` is called (default: a lease, at least 20 s).
        public var stopDeadline: Duration?
        /// Called with what is still under way when a stop has not ended within ``stopDeadline`` (a database that
        /// does not answer, a call that ignores cancellation). A command exits the process here: the leases not
        /// given back expire and are rescued, so nothing is lost. The default logs an error and lets the stop go on.
        public var onStopTimeout: (@Sendable (String) -> Void)?

        public init(outputDirectory: URL) {
            self.outputDirectory = outputDirectory
        }
    }

    /// The engine.
    public let generator: ParallelGenerator
    /// The job store the engine runs on.
    public let store: any JobStore
    /// The PostgreSQL connection, when the store is there.
    public let postgres: PostgresStoreConnection?
    /// Where the jobs are kept.
    public let location: StoreLocation
    /// The store for messages: a path, `memory`, or the server and schema without the password.
    public let storeDescription: String
    /// Jobs in the store when it was opened (a campaign being continued), and leases taken back from a crashed run
    /// of a SQLite store.
    public let jobsAtOpen: Int
    public let leasesRescuedAtOpen: Int
    /// The one HTTP client of every provider adapter and the object store.
    public let httpClient: HTTPClient
    private let lock: Mutex<StoreLock?>
    private let options: Options
    /// The logger of the engine, the store and the runtime's own messages.
    public let logger: Logger
    private let housekeeper: PostgresHousekeeper?

    private init(
        generator: ParallelGenerator,
        store: any JobStore,
        postgres: PostgresStoreConnection?,
        location: StoreLocation,
        storeDescription: String,
        jobsAtOpen: Int,
        leasesRescuedAtOpen: Int,
        httpClient: HTTPClient,
        lock: StoreLock?,
        options: Options,
        logger: Logger,
        housekeeper: PostgresHousekeeper?
    ) {
        self.generator = generator
        self.store = store
        self.postgres = postgres
        self.location = location
        self.storeDescription = storeDescription
        self.jobsAtOpen = jobsAtOpen
        self.leasesRescuedAtOpen = leasesRescuedAtOpen
        self.httpClient = httpClient
        self.lock = Mutex(lock)
        self.options = options
        self.logger = logger
        self.housekeeper = housekeeper
    }

    /// Opens the store, makes the providers and the shared cache, and builds the engine (not started).
    ///
    /// On a SQLite store, takes its lock (one runner per store) and takes back every lease in it, since any lease
    /// there belongs to a run that crashed. On PostgreSQL, other workers' leases are theirs; expired ones are taken
    /// back by housekeeping while the runtime runs.
    ///
    /// - Throws: ``RuntimeError`` with a line per problem: the output folder, the store, a provider's key or a
    ///   credential variable missing. Nothing is left open when it throws.
    public static func open(
        setup: PargenSetup,
        store location: StoreLocation,
        options: Options,
        logger: Logger = Logger(label: "pargen")
    ) async throws(RuntimeError) -> GenerationRuntime {
        try createOutputFolder(options.outputDirectory)
        let configuration = setup.configuration
        let store: any JobStore
        var lock: StoreLock?
        var postgres: PostgresStoreConnection?
        var rescued = 0
        let description: String
        switch location {
        case .sqlite(let path):
            lock = try StoreLock(storePath: path)
            do {
                let sqlite = try SQLiteJobStore(path: path)
                // This process holds the store alone: any lease in it belongs to a run that crashed.
                rescued = try await sqlite.rescueOrphanedLeases(maxCrashes: configuration.retry.maxCrashes)
                store = sqlite
            } catch {
                throw RuntimeError(.store, "cannot open the campaign store \(path): \(RuntimeError.reason(error))")
            }
            description = path
        case .postgres(let url, let schema):
            let connection = try await PostgresStoreConnection.open(
                url: url,
                schema: schema,
                logger: logger,
                poolLogLevel: options.postgresPoolLogLevel,
                timeout: options.connectTimeout
            )
            postgres = connection
            store = connection.store
            description = "\(connection.location.redacted) schema \(connection.store.schema)"
        case .memory:
            store = MemoryJobStore()
            description = "memory"
        }
        let existing: Int
        do {
            existing = try await store.counts().values.reduce(0, +)
        } catch {
            postgres?.close()
            throw RuntimeError(.store, "cannot read the job store \(description): \(RuntimeError.reason(error))")
        }
        let http = ProviderConnection.makeHTTPClient()
        let generator: ParallelGenerator
        do {
            generator = ParallelGenerator(
                configuration: configuration,
                providers: try makeProviders(setup: setup, options: options, httpClient: http),
                store: store,
                sharedCache: try makeSharedCache(setup: setup, http: http, logger: logger),
                outputDirectory: options.outputDirectory,
                clock: options.clock,
                logger: logger,
                hooks: options.hooks
            )
        } catch {
            try? await http.shutdown()
            postgres?.close()
            throw error
        }
        return GenerationRuntime(
            generator: generator,
            store: store,
            postgres: postgres,
            location: location,
            storeDescription: description,
            jobsAtOpen: existing,
            leasesRescuedAtOpen: rescued,
            httpClient: http,
            lock: lock,
            options: options,
            logger: logger,
            housekeeper: postgres?.housekeeper(
                holder: generator.workerID,
                configuration: configuration,
                logger: logger,
                clock: options.clock
            )
        )
    }

    /// The configured providers' adapters, and the local ones when the setup includes them.
    ///
    /// - Throws: ``RuntimeError`` with one line per provider whose key is missing.
    public static func makeProviders(
        setup: PargenSetup,
        options: Options,
        httpClient: HTTPClient
    ) throws(RuntimeError) -> [any GenerationProvider] {
        var providers: [any GenerationProvider]
        do {
            providers = try PargenSetup(
                configuration: setup.configuration,
                providers: setup.providers,
                includeLocalProviders: false
            )
            .makeProviders(httpClient: httpClient)
        } catch let error as ConfigurationFileError {
            throw RuntimeError(.configuration, error.problems)
        } catch {
            throw RuntimeError(.configuration, "\(error)")
        }
        if setup.includeLocalProviders {
            providers += LocalProvider.demoProviders(
                reliable: !options.injectFaults,
                seed: options.seed,
                submitLog: options.submitLog
            )
        }
        return providers
    }

    /// Starts the engine (idempotent): call it before the group runs when the services after the runtime submit
    /// work as soon as they start. ``run()`` starts it too.
    ///
    /// - Throws: What the engine's `start()` throws (an output folder that cannot be written).
    public func start() async throws {
        try await generator.start()
    }

    /// Runs the engine, and on PostgreSQL the housekeeping, until graceful shutdown or cancellation; then stops
    /// the engine at once, giving every lease back (see ``Options/stopDeadline``).
    public func run() async throws {
        try await start()
        await withDiscardingTaskGroup { group in
            if let housekeeper {
                group.addTask { await housekeeper.run() }
            }
            // Returns on graceful shutdown, throws on cancellation: the engine stops either way.
            try? await gracefulShutdown()
            group.cancelAll()
        }
        try await stop()
    }

    /// Stops the engine at once (idempotent): calls not yet sent get their attempt back, submitted tasks keep
    /// their ids, every lease is given back. A stop that does not end within ``Options/stopDeadline`` calls
    /// ``Options/onStopTimeout``.
    public func stop() async throws {
        let deadline = options.stopDeadline ?? max(generator.configuration.leaseDuration, .seconds(20))
        // Unstructured on purpose: the watchdog must outlive a stop that never returns.
        let watchdog = Task {
            try await options.clock.sleep(for: deadline)
            var diagnostics = "the engine did not stop within \(deadline) (\(generator.stopDiagnostics())"
            if let slow = postgres?.store.slowOperations().prefix(5), !slow.isEmpty {
                diagnostics += "; store operations under way: \(slow.joined(separator: "; "))"
            }
            diagnostics += ")"
            if let onTimeout = options.onStopTimeout {
                onTimeout(diagnostics)
            } else {
                logger.error("\(diagnostics)")
            }
        }
        defer { watchdog.cancel() }
        try await generator.stop(immediately: true)
        // Every job the engine knew of is back in the store. A lease still held in this worker's name is one
        // whose answer never arrived (a claim that committed as the stop cut its reply off): it goes back now
        // rather than when it expires.
        if let postgres {
            // A claim the stop abandoned rolls back unless its COMMIT was already sent; such a claim may still
            // commit into this worker's name, and is waited for (its COMMIT has a 5 s deadline) so that the rescue
            // below sees it. Usually none is.
            if await !postgres.store.waitForAbandonedCommits(upTo: .seconds(15)) {
                logger.warning("a claim's COMMIT was still unanswered after 15 s; its leases expire and are rescued")
            }
            do {
                let rescued = try await postgres.store.rescueLeases(
                    heldBy: generator.workerID,
                    maxCrashes: generator.configuration.retry.maxCrashes
                )
                if rescued > 0 {
                    logger.warning(
                        "gave back leases the engine had lost track of",
                        metadata: ["pargen.count": "\(rescued)"]
                    )
                }
            } catch {
                logger.warning(
                    "could not give back the leases left in this worker's name; they expire and are rescued",
                    metadata: ["pargen.error": "\(error)"]
                )
            }
        }
    }

    /// Releases what the runtime holds: the HTTP client, the PostgreSQL pool, the SQLite store's lock. Call it
    /// once, after the engine has stopped.
    public func close() async {
        try? await httpClient.shutdown()
        postgres?.close()
        // The SQLite file alone then holds the campaign (its write-ahead log is folded in and emptied); a store
        // that cannot do so (a full disk) keeps the log, which SQLite reads on the next open.
        if let sqlite = store as? SQLiteJobStore {
            do {
                try await sqlite.checkpoint()
            } catch {
                logger.warning("the job store's log could not be folded into its file", metadata: ["pargen.error": "\(error)"])
            }
        }
        lock.withLock { $0 = nil }
    }
}

extension GenerationRuntime {
    /// Makes the output folder (and its parents), or says why it cannot be one: a path that is a file is named as
    /// such instead of the system's "File exists".
    public static func createOutputFolder(_ folder: URL) throws(RuntimeError) {
        var isFolder: ObjCBool = false
        if FileManager.default.fileExists(atPath: folder.path, isDirectory: &isFolder), !isFolder.boolValue {
            throw RuntimeError(.outputFolder, "cannot use \(folder.path) as the output folder: it is a file, not a folder")
        }
        do {
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        } catch {
            throw RuntimeError(.outputFolder, "cannot create the output folder \(folder.path): \(RuntimeError.reason(error))")
        }
    }
}
