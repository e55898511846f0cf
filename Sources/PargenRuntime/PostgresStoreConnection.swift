public import Logging
public import Pargen
public import PargenPostgres
public import PostgresNIO
import Foundation

/// A PostgreSQL job store and the client pool under it.
///
/// The pool runs in a task of its own from ``open(url:schema:logger:poolLogLevel:timeout:)`` until ``close()``:
/// the store must be reachable (and migrated) before anything else starts, so its client cannot wait for a
/// service group to run it.
public final class PostgresStoreConnection: Sendable {
    public let client: PostgresClient
    public let store: PostgresJobStore
    /// Where the server is; its ``PostgresLocation/redacted`` form is what messages show (never the password).
    public let location: PostgresLocation
    private let runner: Task<Void, Never>

    private init(client: PostgresClient, store: PostgresJobStore, location: PostgresLocation, runner: Task<Void, Never>) {
        self.client = client
        self.store = store
        self.location = location
        self.runner = runner
    }

    /// Connects and applies migrations. Throws ``RuntimeError`` naming the server without its password if the URL
    /// is bad or the server cannot be reached within `timeout`.
    ///
    /// - Parameter poolLogLevel: The level of the pool's own log (connections made and lost), apart from
    ///   `logger`'s; `logger`'s level when `nil`.
    public static func open(
        url: String,
        schema: String?,
        logger: Logger = Logger(label: "pargen.postgres"),
        poolLogLevel: Logger.Level? = nil,
        timeout: Duration = .seconds(30)
    ) async throws(RuntimeError) -> PostgresStoreConnection {
        let location: PostgresLocation
        do {
            location = try PostgresLocation(url: url)
        } catch {
            throw RuntimeError(.configuration, "\(error)")
        }
        var poolLogger = Logger(label: "pargen.postgres.pool")
        poolLogger.logLevel = poolLogLevel ?? logger.logLevel
        let client = PostgresClient(configuration: location.clientConfiguration(), backgroundLogger: poolLogger)
        // Unstructured: the pool must run before (and while) the store is opened, and until close().
        let runner = Task { await client.run() }
        let schemaName = schema ?? "pargen"
        // Beside the pool, which tries again for ever and only logs why, a connection of our own every second
        // says why the server does not take us: a refusal that will not change (a role or password it does not
        // know, a database that is not there) ends the wait at once, and a wait that runs out names the last cause.
        let lastRefusal = Locked<PostgresLocation.Refusal?>(nil)
        let probeLogger = poolLogger
        let opened: Result<PostgresJobStore, any Error> = await withTaskGroup(of: Result<PostgresJobStore, any Error>?.self) { group in
            group.addTask {
                do {
                    return .success(try await PostgresJobStore(client: client, schema: schemaName, logger: logger))
                } catch {
                    return .failure(error)
                }
            }
            group.addTask {
                while !Task.isCancelled {
                    guard let refusal = await location.probe(logger: probeLogger) else {
                        // The server takes us: the pool will too, and opening the store (migrations) takes its
                        // course; no more connections of our own.
                        lastRefusal.withLock { $0 = nil }
                        return nil
                    }
                    if refusal.permanent { return .failure(refusal) }
                    lastRefusal.withLock { $0 = refusal }
                    try? await Task.sleep(for: .seconds(1))
                }
                return nil
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                let cause = lastRefusal.withLock { $0 }.map { " (the last attempt: \($0.reason))" } ?? ""
                return .failure(StoreError(.unavailable, "no answer within \(timeout)\(cause)"))
            }
            // The first answer decides: the store, a permanent refusal, or the end of the wait.
            var first: Result<PostgresJobStore, any Error>?
            while first == nil, let next = await group.next() { first = next }
            group.cancelAll()
            return first!
        }
        switch opened {
        case .success(let store):
            return PostgresStoreConnection(client: client, store: store, location: location, runner: runner)
        case .failure(let error):
            runner.cancel()
            throw RuntimeError(
                .store,
                "cannot open the job store in PostgreSQL at \(location.redacted): \(RuntimeError.reason(error))"
            )
        }
    }

    /// Stops the pool: every connection is closed.
    public func close() { runner.cancel() }

    /// Housekeeping for the worker `holder` (rescue, pruning and folding the money changes into the budgets'
    /// totals, when it holds the lead): a round every third of a lease.
    public func housekeeper(
        holder: String,
        configuration: PargenConfiguration,
        logger: Logger,
        clock: PargenClock = .continuous
    ) -> PostgresHousekeeper {
        PostgresHousekeeper(
            store: store,
            holder: holder,
            interval: configuration.leaseDuration / 3,
            maxCrashes: configuration.retry.maxCrashes,
            logger: logger,
            clock: clock
        )
    }
}
