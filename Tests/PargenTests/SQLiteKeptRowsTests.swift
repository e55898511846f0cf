import Foundation
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
}
