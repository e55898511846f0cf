import Dispatch
import GRDB
@testable import PargenSQLite
import Synchronization
import Testing

/// Transitions that share one SQLite transaction: one that fails is undone alone, and the others commit, whether it
/// ran in a savepoint (several statements) or wrote with a single statement (no savepoint).
@Suite struct GroupCommitterTests {
    struct Refused: Error {}

    @Test func aFailedTransitionIsUndoneAloneAndTheOthersInItsTransactionCommit() async throws {
        let queue = try DatabaseQueue()
        try await queue.write { try $0.execute(sql: "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)") }
        let committer = GroupCommitter(writer: queue)
        // The first transition holds the writer until the others wait behind it, so they go in one transaction.
        let started = Atomic(false)
        let gate = DispatchSemaphore(value: 0)
        async let lead: Void = committer.write(.singleWrite) { db in
            started.store(true, ordering: .sequentiallyConsistent)
            gate.wait()
            try db.execute(sql: "INSERT INTO t VALUES (0, 'lead')")
        }
        while !started.load(ordering: .sequentiallyConsistent) { await Task.yield() }
        // Several statements, the last of which fails: its first insert must go too.
        async let partial: Void = committer.write(.savepoint) { db in
            try db.execute(sql: "INSERT INTO t VALUES (1, 'half')")
            try db.execute(sql: "INSERT INTO t VALUES (0, 'twice')")
        }
        // One statement that fails (NOT NULL): SQLite undoes it alone.
        async let refused: Void = committer.write(.singleWrite) { db in
            try db.execute(sql: "UPDATE t SET v = NULL")
        }
        async let thrown: Void = committer.write(.singleWrite) { _ in throw Refused() }
        async let single: Void = committer.write(.singleWrite) { db in try db.execute(sql: "INSERT INTO t VALUES (3, 'c')") }
        async let several: Void = committer.write(.savepoint) { db in
            try db.execute(sql: "INSERT INTO t VALUES (4, 'd')")
            try db.execute(sql: "INSERT INTO t VALUES (5, 'e')")
        }
        while committer.waiting < 5 { await Task.yield() }
        gate.signal()
        try await lead
        var errors: [(any Error)?] = [nil, nil, nil]
        do { try await partial } catch { errors[0] = error }
        do { try await refused } catch { errors[1] = error }
        do { try await thrown } catch { errors[2] = error }
        #expect(errors[0] is DatabaseError && errors[1] is DatabaseError && errors[2] is Refused)
        try await single
        try await several
        let rows = try queue.read { db in try Row.fetchAll(db, sql: "SELECT id, v FROM t ORDER BY id") }
        #expect(rows.map { $0["id"] as Int } == [0, 3, 4, 5])
        #expect(rows.map { $0["v"] as String } == ["lead", "c", "d", "e"])
    }
}
