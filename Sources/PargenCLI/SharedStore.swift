import ArgumentParser
import Foundation
import Logging
import Pargen
import PargenPostgres
import PostgresNIO

/// A PostgreSQL store opened by a command: the client's pool runs in a task of its own until ``close()``.
final class SharedStore: Sendable {
    let client: PostgresClient
    let store: PostgresJobStore
    let location: PostgresLocation
    private let runner: Task<Void, Never>

    private init(client: PostgresClient, store: PostgresJobStore, location: PostgresLocation, runner: Task<Void, Never>) {
        self.client = client
        self.store = store
        self.location = location
        self.runner = runner
    }

    /// Connects and applies migrations; ends the command (exit 2, one line naming the server without its
    /// password) if the URL is bad or the server cannot be reached within `timeout`.
    static func open(
        url: String,
        schema: String?,
        logger: Logger = Logger(label: "pargen.postgres"),
        timeout: Duration = .seconds(30)
    ) async -> SharedStore {
        let location: PostgresLocation
        do {
            location = try PostgresLocation(url: url)
        } catch {
            fail("\(error)")
        }
        // The pool's own log (connections made and lost) at PARGEN_POSTGRES_LOG_LEVEL, apart from pargen's.
        var poolLogger = Logger(label: "pargen.postgres.pool")
        poolLogger.logLevel =
            ProcessInfo.processInfo.environment["PARGEN_POSTGRES_LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0) } ?? logger.logLevel
        let client = PostgresClient(configuration: location.clientConfiguration(), backgroundLogger: poolLogger)
        let runner = Task { await client.run() }
        let schemaName = schema ?? "pargen"
        let opened: Result<PostgresJobStore, any Error> = await withTaskGroup(of: Result<PostgresJobStore, any Error>?.self) { group in
            group.addTask {
                do {
                    return .success(try await PostgresJobStore(client: client, schema: schemaName, logger: logger))
                } catch {
                    return .failure(error)
                }
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            let first = await group.next()!
            group.cancelAll()
            return first ?? .failure(StoreError(.unavailable, "no answer within \(timeout)"))
        }
        switch opened {
        case .success(let store):
            return SharedStore(client: client, store: store, location: location, runner: runner)
        case .failure(let error):
            runner.cancel()
            fail("cannot open the job store in PostgreSQL at \(location.redacted): \(reason(error))")
        }
    }

    func close() { runner.cancel() }

    /// Housekeeping for `generator`'s worker (rescue and pruning, when this worker holds the lead): a round every
    /// third of a lease.
    func housekeeper(
        for generator: ParallelGenerator,
        configuration: PargenConfiguration,
        logger: Logger
    ) -> PostgresHousekeeper {
        PostgresHousekeeper(
            store: store,
            holder: generator.workerID,
            interval: configuration.leaseDuration / 3,
            maxCrashes: configuration.retry.maxCrashes,
            logger: logger
        )
    }

    /// Runs ``housekeeper(for:configuration:logger:)`` until the returned task is cancelled.
    func startHousekeeping(
        for generator: ParallelGenerator,
        configuration: PargenConfiguration,
        logger: Logger
    ) -> Task<Void, Never> {
        let housekeeper = housekeeper(for: generator, configuration: configuration, logger: logger)
        return Task { await housekeeper.run() }
    }
}
