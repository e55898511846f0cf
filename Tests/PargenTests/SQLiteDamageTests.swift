import Foundation
import GRDB
import Pargen
import PargenSQLite
import PargenTesting
import Testing

/// A job store whose file is damaged under a running engine (a bad disk, a copy taken mid-write, another program
/// writing into it). No retry mends that: the engine must stop taking work and say what is wrong and where,
/// instead of trying to lease for ever.
@Suite struct SQLiteDamageTests {
    /// Enqueues `count` jobs, moves them from the write-ahead log into the file, then writes garbage over every
    /// page after the first two (the schema stays readable, the rows do not).
    func damagedStore(count: Int) async throws -> (SQLiteJobStore, String) {
        let path = temporaryDirectory().appendingPathComponent("jobs.sqlite").path
        let store = try SQLiteJobStore(path: path)
        _ = try await store.enqueue((0..<count).map { validated(.audio(prompt: "line \($0)", user: "u\($0 % 7)")) })
        try await DatabaseQueue(path: path).writeWithoutTransaction { db in
            try db.execute(sql: "PRAGMA wal_checkpoint(TRUNCATE)")
        }
        let handle = try #require(FileHandle(forUpdatingAtPath: path))
        let size = try handle.seekToEnd()
        #expect(size > 8 * 4096, "the jobs must span pages")
        try handle.seek(toOffset: 2 * 4096)
        try handle.write(contentsOf: Data(repeating: 0xAB, count: Int(size) - 2 * 4096))
        try handle.close()
        return (store, path)
    }

    @Test func aDamagedFileIsALocalFailureNamingTheStoreAndWhatSQLiteSaid() async throws {
        let (store, path) = try await damagedStore(count: 400)
        let error = await #expect(throws: StoreError.self) {
            _ = try await store.lease(limit: 50, owner: "w", duration: .seconds(60), excludingUsers: [])
        }
        let local = try #require(LocalResourceError.classify(error!, path: URL(fileURLWithPath: "/elsewhere"), operation: "lease"))
        #expect(local.path == path)
        #expect(local.description.contains("database disk image is malformed"), "\(local)")
        // What `pargen status` prints for it names the file and the damage too.
        #expect("\(error!)".contains("\(path): database disk image is malformed"), "\(error!)")
    }

    @Test func anEngineOnADamagedStoreStopsTakingWorkAndSaysWhy() async throws {
        let (store, path) = try await damagedStore(count: 400)
        let generator = ParallelGenerator(
            configuration: PargenConfiguration(),
            providers: [ScriptedProvider(name: "p")],
            store: store,
            outputDirectory: temporaryDirectory(),
            clock: .continuous
        )
        try await generator.start()
        // The engine leases on its own: it must halt, not poll for ever.
        let deadline = ContinuousClock.now + .seconds(20)
        while generator.haltReason == nil, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        try await generator.stop(immediately: true)
        let halt = try #require(generator.haltReason, "the engine kept trying a damaged store")
        #expect(halt.path == path)
        #expect(halt.description.contains("malformed"), "\(halt)")
    }
}
