import Foundation
import GRDB
import Pargen
import PargenSQLite
import Testing

/// The SQLite store makes a transition from the copy it kept of the row it last wrote, and the write applies only
/// if the row still has that write's change token: a row that anyone else wrote since is read again, and a lease
/// taken back meanwhile is refused, never overwritten.
@Suite struct SQLiteKeptRowsTests {
    @Test func aTransitionFromAKeptRowIsRefusedOnceAnotherWriterHasTakenTheLease() async throws {
        let path = temporaryDirectory().appendingPathComponent("jobs.sqlite").path
        // Two stores on one file: two processes, each with its own kept rows.
        let first = try SQLiteJobStore(path: path)
        let second = try SQLiteJobStore(path: path)
        _ = try await first.enqueue([validated(.audio(prompt: "a", project: "p"), id: "a")])
        let held = try #require(try await first.lease(limit: 1, owner: "one", duration: .seconds(60), excludingUsers: []).first)
        // The first store renews from its copy.
        let renewed = try await first.heartbeat(held.lease, duration: .seconds(60))

        // The second takes the lease back (the first looks dead to it) and leases the job to itself.
        #expect(try await second.rescueOrphanedLeases(maxCrashes: 5) == 1)
        let taken = try #require(try await second.lease(limit: 1, owner: "two", duration: .seconds(60), excludingUsers: []).first)

        // The first store's copy still says it holds the lease: the write must find the row changed.
        await #expect(throws: StoreError.self) {
            try await first.beginAttempt(renewed, provider: "p", reserving: .cents(5))
        }
        await #expect(throws: StoreError.self) {
            try await first.complete(renewed, outcome: .test)
        }
        let untouched = try #require(try await second.job(taken.record.id))
        #expect(untouched.leaseOwner == "two")
        #expect(untouched.attempts == 0)
        #expect(untouched.ledger == CostLedger())

        // The second store's own transitions go through, and the money lands once in the totals.
        try await second.beginAttempt(taken.lease, provider: "p", reserving: .cents(5))
        try await second.complete(taken.lease, outcome: .test)
        let done = try #require(try await first.job(taken.record.id))
        #expect(done.state == .succeeded)
        #expect(try await first.ledger(in: .project("p")) == done.ledger)

        // A job the second store enqueued is leased by the first, which keeps its row.
        _ = try await second.enqueue([validated(.audio(prompt: "b", project: "p"), id: "b")])
        let again = try #require(try await first.lease(limit: 1, owner: "one", duration: .seconds(60), excludingUsers: []).first)
        try await first.beginAttempt(again.lease, provider: "p", reserving: .cents(5))
        // Another writer renews the same lease in between: the first store's copy is out of date, and its next
        // transition reads the row (still held under the same token) instead.
        let other = try await second.heartbeat(again.lease, duration: .seconds(30))
        #expect(other.token == again.lease.token)
        try await first.recordSubmission(again.lease, taskID: "t")
        try await first.complete(again.lease, outcome: .test)
        let finished = try #require(try await second.job(again.record.id))
        #expect(finished.state == .succeeded)
        #expect(finished.providerTaskID == "t")
        #expect(try await second.ledger(in: .project("p")).charged == done.ledger.charged + finished.ledger.charged)
    }

    /// A transition writes its row and then its money total: when the second statement fails (here a trigger
    /// refuses it, as a full disk would), the first must not stay written. The whole group transaction is rolled
    /// back and every transition in it is told, so the row, the total and the caller agree.
    @Test func aTransitionWhoseMoneyTotalFailsLeavesNoRowWritten() async throws {
        let path = temporaryDirectory().appendingPathComponent("jobs.sqlite").path
        let store = try SQLiteJobStore(path: path)
        _ = try await store.enqueue((0..<4).map { validated(.audio(prompt: "line \($0)", project: "p"), id: "l\($0)") })
        let held = try await store.lease(limit: 4, owner: "w", duration: .seconds(60), excludingUsers: [])
        #expect(held.count == 4)
        let other = try DatabaseQueue(path: path)
        try await other.write { db in
            try db.execute(
                sql: """
                    CREATE TRIGGER refuse_money_insert BEFORE INSERT ON money_totals BEGIN SELECT RAISE(ABORT, 'no room'); END;
                    CREATE TRIGGER refuse_money_update BEFORE UPDATE ON money_totals BEGIN SELECT RAISE(ABORT, 'no room'); END;
                    """
            )
        }
        // One transition that moves money, among three that do not, all at once (one group transaction).
        let outcomes = await withTaskGroup(of: (Int, Bool).self) { group in
            for (index, job) in held.enumerated() {
                group.addTask {
                    do {
                        if index == 0 {
                            try await store.beginAttempt(job.lease, provider: "p", reserving: .cents(5))
                        } else {
                            _ = try await store.heartbeat(job.lease, duration: .seconds(60))
                        }
                        return (index, true)
                    } catch {
                        return (index, false)
                    }
                }
            }
            return await group.reduce(into: [Int: Bool]()) { $0[$1.0] = $1.1 }
        }
        #expect(outcomes[0] == false, "the transition whose total failed is refused")
        let first = try #require(try await store.job(held[0].record.id))
        #expect(first.attempts == 0, "its row is as before")
        #expect(first.ledger == CostLedger())
        #expect(try await store.ledger(in: .project("p")) == CostLedger())
        // Whatever the others were told, their rows say the same.
        for index in 1..<4 {
            let job = try #require(try await store.job(held[index].record.id))
            #expect((job.leaseExpiresAt != held[index].lease.expiresAt) == outcomes[index], "job \(index)")
        }
        try await other.write { db in
            try db.execute(sql: "DROP TRIGGER refuse_money_insert; DROP TRIGGER refuse_money_update")
        }
        // The store goes on.
        try await store.beginAttempt(held[0].lease, provider: "p", reserving: .cents(5))
        #expect(try await store.ledger(in: .project("p")).reserved == .cents(5))
    }
}
