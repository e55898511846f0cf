package import Logging
package import NIOCore
package import PostgresNIO
import Synchronization

// Every query's rows are read whole, through postgres-nio's `EventLoopFuture` API (`PSQLRowStream.all()`), which
// asks for more rows as soon as rows arrive. A row stream read through the async sequence waits for its consumer
// between reads, and if the server closes the connection then (a restart), NIO delivers the last reads without
// being asked and postgres-nio 1.33's RowStreamStateMachine stops the process on a precondition
// ("How can we receive a body part, after a channelReadComplete, but no read has been forwarded yet"); a worker
// must survive a database restart.
//
// Every query also has a deadline (``queryDeadline``): a query written to a connection that the server had just
// closed (seen right after a restart) may never be answered, and would hold its caller and its pooled connection
// for good. At the deadline the connection is closed (the server rolls back whatever it was doing, and the pool
// makes a new one) and the query fails with ``QueryDeadlineExceeded``, which the store treats like a lost connection: it
// runs the operation again, reading its state afresh.
extension PostgresConnection {
    /// How long a query may take before its connection is given up.
    static let queryDeadline: TimeAmount = .seconds(5)

    /// Runs `query` and returns all its rows.
    @discardableResult
    package func allRows(
        _ query: PostgresQuery,
        logger: Logger,
        deadline limit: TimeAmount = PostgresConnection.queryDeadline
    ) async throws -> [PostgresRow] {
        let loop = self.eventLoop
        let promise = loop.makePromise(of: PostgresQueryResult.self)
        let settled = LoopFlag()
        let result: EventLoopFuture<PostgresQueryResult> = self.query(query, logger: logger)
        let deadline = loop.scheduleTask(in: limit) {
            guard !settled.value else { return }
            settled.value = true
            promise.fail(QueryDeadlineExceeded())
            let closing: EventLoopFuture<Void> = self.close()
            closing.whenComplete { _ in }
        }
        result.hop(to: loop).whenComplete { outcome in
            deadline.cancel()
            guard !settled.value else { return }
            settled.value = true
            promise.completeWith(outcome)
        }
        return try await promise.futureResult.get().rows
    }
}

/// A query that got no answer before ``PostgresConnection/queryDeadline``.
struct QueryDeadlineExceeded: Error, CustomStringConvertible {
    var description: String { "no answer from PostgreSQL within \(PostgresConnection.queryDeadline)" }
}

/// A flag read and written on one event loop only (the connection's), so it needs no lock.
private final class LoopFlag: @unchecked Sendable {
    var value = false
}

extension PostgresJobStore {
    /// Runs `query` on a connection of the pool and returns all its rows.
    @discardableResult
    package func allRows(_ query: PostgresQuery, logger: Logger) async throws -> [PostgresRow] {
        try await client.withConnection { connection in try await connection.allRows(query, logger: logger) }
    }
}

extension Array where Element == PostgresRow {
    /// Each row decoded as `type`.
    package func decode<each Column: PostgresDecodable>(
        _ type: (repeat each Column).Type,
        file: String = #fileID,
        line: Int = #line
    ) throws -> [(repeat each Column)] {
        try map { try $0.decode(type, file: file, line: line) }
    }
}

extension PostgresJobStore {
    /// Runs `body` in a transaction on one pooled connection: BEGIN, then COMMIT if it returns or ROLLBACK if it
    /// throws, each through ``PostgresConnection/allRows(_:logger:)`` and so under its deadline (postgres-nio's
    /// own `withTransaction` sends them without one).
    package func transaction<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        try await client.withConnection { connection in
            try await connection.allRows("BEGIN", logger: logger)
            let value: T
            do {
                value = try await body(connection)
            } catch {
                _ = try? await connection.allRows("ROLLBACK", logger: logger)
                throw error
            }
            if let delay = commitDelay.withLock({ $0.before }) { try await Task.sleep(for: delay) }
            // An operation whose caller has left rolls back here rather than commit (a stopping worker's claim).
            do {
                try Abandonment.current?.beginCommit()
            } catch {
                _ = try? await connection.allRows("ROLLBACK", logger: logger)
                throw error
            }
            try await connection.allRows("COMMIT", logger: logger)
            if let delay = commitDelay.withLock({ $0.after }) { try? await Task.sleep(for: delay) }
            try loseReplyIfAsked()
            return value
        }
    }

    /// Tests (``loseCommitReplies(_:)``): fails a write that has committed as if its reply had been lost.
    func loseReplyIfAsked() throws {
        if commitRepliesToLose.load(ordering: .relaxed) > 0, commitRepliesToLose.subtract(1, ordering: .relaxed).newValue >= 0 {
            throw QueryDeadlineExceeded()
        }
    }
}
