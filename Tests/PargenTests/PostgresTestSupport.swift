import Foundation
import Logging
import Pargen
import PargenPostgres
import PargenTesting
import PostgresNIO

/// The PostgreSQL server of the test run: `scripts/test.sh` starts one on loopback and names it in
/// `PARGEN_TEST_POSTGRES_URL`. Each store gets a schema of its own, so tests never see each other's jobs.
enum TestPostgres {
    struct Missing: Error, CustomStringConvertible {
        var description: String {
            "PARGEN_TEST_POSTGRES_URL is not set: run the tests with scripts/test.sh, which starts PostgreSQL on 127.0.0.1 and sets it (or start one with scripts/postgres.sh start DIR and export its URL)"
        }
    }

    static let url: String? = ProcessInfo.processInfo.environment["PARGEN_TEST_POSTGRES_URL"]

    /// One client for the whole test process, running until the process ends.
    static let client: PostgresClient? = {
        guard let url, let location = try? PostgresLocation(url: url) else { return nil }
        let client = PostgresClient(configuration: location.clientConfiguration(maximumConnections: 40))
        Task.detached { await client.run() }
        return client
    }()

    static func requireClient() throws -> PostgresClient {
        guard let client else { throw Missing() }
        return client
    }

    /// A fresh schema's name.
    static func freshSchema() -> String { "t_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased() }

    /// A store in a fresh schema; with `clock`, its time is 2026-01-01 plus the clock's.
    static func store(clock: ManualClock? = nil, schema: String = freshSchema()) async throws -> PostgresJobStore {
        var now: (@Sendable () -> Duration)?
        if let clock { now = { Duration.seconds(1_767_225_600) + clock.now.offset } }
        return try await PostgresJobStore(client: try requireClient(), schema: schema, now: now)
    }
}
