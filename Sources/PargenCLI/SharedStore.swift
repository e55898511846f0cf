import Foundation
import Logging
import Pargen
import PargenProviders
import PargenRuntime

/// Opens a PostgreSQL store for a command; a bad URL or a server that cannot be reached within `timeout` ends the
/// command (exit 2, one line naming the server without its password).
func openSharedStore(
    url: String,
    schema: String?,
    logger: Logger = Logger(label: "pargen.postgres"),
    timeout: Duration = .seconds(30)
) async -> PostgresStoreConnection {
    do {
        return try await PostgresStoreConnection.open(
            url: url,
            schema: schema,
            logger: logger,
            poolLogLevel: poolLogLevel,
            timeout: timeout
        )
    } catch {
        fail(error.description)
    }
}

/// The PostgreSQL pool's own log level (connections made and lost), from PARGEN_POSTGRES_LOG_LEVEL, apart from
/// pargen's.
private var poolLogLevel: Logger.Level? {
    ProcessInfo.processInfo.environment["PARGEN_POSTGRES_LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0) }
}

/// The runtime a command runs on: the store, its lock or housekeeping, the providers (the local ones faultless
/// unless `injectFaults`), the shared cache and the engine, with the test hooks the environment names (debug
/// builds). Any problem ends the command (exit 2) with one line per problem. A stop that does not end within a
/// lease ends the process (exit 1): the leases not given back expire and are rescued, so nothing is lost.
func openRuntime(
    setup: PargenSetup,
    store: GenerationRuntime.StoreLocation,
    options: CampaignOptions,
    injectFaults: Bool,
    out: URL,
    logger: Logger
) async -> GenerationRuntime {
    let (hooks, submitLog) = TestHooks.fromEnvironment()
    var runtimeOptions = GenerationRuntime.Options(outputDirectory: out)
    runtimeOptions.seed = options.seed
    runtimeOptions.injectFaults = injectFaults
    runtimeOptions.submitLog = submitLog
    runtimeOptions.hooks = hooks
    runtimeOptions.postgresPoolLogLevel = poolLogLevel
    runtimeOptions.onStopTimeout = { diagnostics in
        FileHandle.standardError.write(Data("pargen: \(diagnostics); leaving its remaining leases to expire\n".utf8))
        _exit(1)
    }
    do {
        let runtime = try await GenerationRuntime.open(setup: setup, store: store, options: runtimeOptions, logger: logger)
        TestHooks.attach(store: runtime.store)
        return runtime
    } catch {
        for problem in error.problems { FileHandle.standardError.write(Data("pargen: \(problem)\n".utf8)) }
        Foundation.exit(2)
    }
}
