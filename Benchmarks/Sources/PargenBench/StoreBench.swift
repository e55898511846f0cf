import Foundation
import Pargen
import PargenPostgres
import PargenSQLite
import PostgresNIO

/// Durable job-store figures for issue notes, each against a baseline in this process.
enum StoreBench {
    static func request(_ i: Int) -> ValidatedRequest {
        try! RequestValidator().validate(
            .audio(
                prompt: "line \(i) of the campaign",
                user: "user\(i % 50)",
                project: "p",
                idempotencyKey: "line-\(i)"
            ),
            fallbackID: "line-\(i)"
        )
    }

    /// Enqueue then lease, begin, record the task id and complete every job, 100 leased at a time: one job after
    /// the other, or (`concurrent`) the 100 at once, as the engine runs them.
    static func lifecycle(
        _ store: any JobStore,
        jobs: Int,
        concurrent: Bool = false,
        within budgets: [Budget] = []
    ) async throws -> Double {
        let start = ContinuousClock.now
        for batch in stride(from: 0, to: jobs, by: 1000) {
            _ = try await store.enqueue((batch..<min(jobs, batch + 1000)).map(request))
        }
        var done = 0
        while done < jobs {
            let leased = try await store.lease(limit: 100, owner: "bench", duration: .seconds(60), excludingUsers: [])
            if concurrent {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for job in leased { group.addTask { try await finish(job, in: store, within: budgets) } }
                    try await group.waitForAll()
                }
            } else {
                for job in leased { try await finish(job, in: store, within: budgets) }
            }
            done += leased.count
        }
        return (ContinuousClock.now - start).seconds
    }

    /// Enqueue, then take and finish every job the way the engine does: look at the due jobs (a read), claim each
    /// one alone (a write), then begin, record the task id and complete it, with `inFlight` jobs under way at all
    /// times: a job that ends makes room for the next, and more are looked at once a quarter of the room is free.
    static func engineShaped(_ store: any ClaimingJobStore, jobs: Int, inFlight: Int = 100) async throws -> Double {
        let start = ContinuousClock.now
        for batch in stride(from: 0, to: jobs, by: 1000) {
            _ = try await store.enqueue((batch..<min(jobs, batch + 1000)).map(request))
        }
        try await withThrowingTaskGroup(of: (JobID, Bool).self) { group in
            var underWay: Set<JobID> = []
            var done = 0
            while done < jobs {
                if inFlight - underWay.count >= max(1, inFlight / 4) || underWay.isEmpty {
                    let due = try await store.peek(
                        limit: inFlight - underWay.count,
                        excludingUsers: [],
                        excludingProjects: [],
                        excludingJobs: underWay,
                        kinds: [.audio]
                    )
                    for record in due {
                        underWay.insert(record.id)
                        group.addTask {
                            guard let job = try await store.claim(record.id, owner: "bench", duration: .seconds(60)) else {
                                return (record.id, false)
                            }
                            try await finish(job, in: store)
                            return (record.id, true)
                        }
                    }
                }
                guard let (id, finished) = try await group.next() else { continue }
                underWay.remove(id)
                if finished { done += 1 }
            }
        }
        return (ContinuousClock.now - start).seconds
    }

    /// A leased job's call on an instant provider: begin (within `budgets`, when there are any), record the
    /// task id, complete.
    static func finish(_ job: LeasedJob, in store: any JobStore, within budgets: [Budget] = []) async throws {
        if budgets.isEmpty {
            try await store.beginAttempt(job.lease, provider: "p", reserving: .cents(1))
        } else {
            // The budgets never bind: a refusal would throw.
            _ = try await store.beginAttempt(
                job.lease, provider: "p", reserving: .cents(1), idempotentSubmission: false, within: budgets
            )
        }
        try await store.recordSubmission(job.lease, taskID: "t")
        try await store.complete(job.lease, outcome: outcome)
    }

    static let outcome = JobOutcome(
        artifact: Artifact(
            url: URL(fileURLWithPath: "/tmp/x.wav"),
            format: .wav,
            contentType: "audio/wav",
            byteCount: 1,
            sha256: "00",
            duration: .seconds(1),
            provider: "p"
        ),
        provider: "p",
        cost: .cents(1)
    )

    /// The SQLite store (synchronous FULL) with 100 jobs in flight, against the memory store the same way.
    static func runGrouped(jobs: Int, scratch: URL) async throws {
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        let store = try SQLiteJobStore(path: scratch.appendingPathComponent("grouped.sqlite").path, durability: .full)
        let seconds = try await lifecycle(store, jobs: jobs, concurrent: true)
        let memorySeconds = try await lifecycle(MemoryJobStore(), jobs: jobs, concurrent: true)
        let shaped = try SQLiteJobStore(path: scratch.appendingPathComponent("shaped.sqlite").path, durability: .full)
        let shapedSeconds = try await engineShaped(shaped, jobs: jobs)
        let memoryShapedSeconds = try await engineShaped(MemoryJobStore(), jobs: jobs)
        print("store: \(jobs) jobs enqueued, leased, begun, submitted and completed, 100 leased at a time and in flight")
        print(String(format: "  sqlite    %8.0f jobs/s  (%.2f s)  synchronous FULL", Double(jobs) / seconds, seconds))
        print(String(format: "  memory    %8.0f jobs/s  (%.2f s)", Double(jobs) / memorySeconds, memorySeconds))
        print("store: the same, each job looked at, claimed alone, begun, submitted and completed, 100 in flight")
        print(String(format: "  sqlite    %8.0f jobs/s  (%.2f s)  synchronous FULL", Double(jobs) / shapedSeconds, shapedSeconds))
        print(String(format: "  memory    %8.0f jobs/s  (%.2f s)", Double(jobs) / memoryShapedSeconds, memoryShapedSeconds))
    }

    /// The SQLite lifecycle with 100 in flight, each reservation within a global and a project budget (which
    /// never bind), against the same without budgets, at two sizes: a reservation's cost must not grow with the
    /// jobs already in its scope.
    ///
    /// With a PostgreSQL URL, the same on PostgreSQL (one store, a fresh schema per run, folded as housekeeping
    /// would every 10 s).
    static func runBudgets(jobs: Int, scratch: URL, postgres url: String? = nil) async throws {
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        let budgets = [Budget(scope: .global, limit: .dollars(1_000_000)), Budget(scope: .project("p"), limit: .dollars(1_000_000))]
        let location = try url.map { try PostgresLocation(url: $0) }
        let client = location.map { PostgresClient(configuration: $0.clientConfiguration(maximumConnections: 40)) }
        let runner = client.map { client in Task { await client.run() } }
        defer { runner?.cancel() }
        print(
            "store: the \(location == nil ? "SQLite" : "PostgreSQL") lifecycle, 100 in flight, "
                + "each reservation within a global and a project budget or not"
        )
        for size in [jobs / 10, jobs] {
            func make(_ name: String) async throws -> any JobStore {
                if let client {
                    let schema = "bench_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(12)
                    return try await PostgresJobStore(client: client, schema: String(schema))
                }
                return try SQLiteJobStore(path: scratch.appendingPathComponent("\(name)-\(size).sqlite").path)
            }
            let plain = try await make("plain")
            let plainSeconds = try await lifecycle(plain, jobs: size, concurrent: true)
            let budgeted = try await make("budgets")
            let folding = (budgeted as? PostgresJobStore).map { store in
                Task {
                    while (try? await Task.sleep(for: .seconds(10))) != nil { _ = try? await store.foldMoneyChanges() }
                }
            }
            let budgetSeconds = try await lifecycle(budgeted, jobs: size, concurrent: true, within: budgets)
            folding?.cancel()
            let ledger = try await budgeted.ledger(in: .project("p"))
            precondition(ledger.charged == .cents(size), "every job charged once: \(ledger)")
            print(
                String(
                    format: "  %6d jobs: within budgets %8.0f jobs/s, without %8.0f jobs/s, ratio %.3f",
                    size,
                    Double(size) / budgetSeconds,
                    Double(size) / plainSeconds,
                    plainSeconds / budgetSeconds
                )
            )
        }
    }

    static func run(jobs: Int, campaign: Int, scratch: URL) async throws {
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        let memorySeconds = try await lifecycle(MemoryJobStore(), jobs: jobs)
        let sqlite = try SQLiteJobStore(path: scratch.appendingPathComponent("bench.sqlite").path, durability: .full)
        let synchronous = try await sqlite.synchronousSetting()
        precondition(synchronous == 2, "the store runs with synchronous FULL")
        let sqliteSeconds = try await lifecycle(sqlite, jobs: jobs)
        let normal = try SQLiteJobStore(path: scratch.appendingPathComponent("normal.sqlite").path, durability: .normal)
        let normalSeconds = try await lifecycle(normal, jobs: jobs)
        let grouped = try SQLiteJobStore(path: scratch.appendingPathComponent("grouped.sqlite").path, durability: .full)
        let groupedSeconds = try await lifecycle(grouped, jobs: jobs, concurrent: true)
        let groupedMemorySeconds = try await lifecycle(MemoryJobStore(), jobs: jobs, concurrent: true)
        print("store: \(jobs) jobs enqueued, leased, begun, submitted and completed, 100 leased at a time")
        print(
            String(
                format: "  sqlite, 100 in flight   %8.0f jobs/s  (%.2f s)  synchronous FULL; transitions that arrive together share a commit",
                Double(jobs) / groupedSeconds,
                groupedSeconds
            )
        )
        print(String(format: "  memory, 100 in flight   %8.0f jobs/s  (%.2f s)", Double(jobs) / groupedMemorySeconds, groupedMemorySeconds))
        print("  one job after the other (each transition waits for the one before):")
        print(
            String(
                format: "  sqlite    %8.0f jobs/s  (%.2f s)  WAL, synchronous FULL (PRAGMA reads %d): survives a power cut",
                Double(jobs) / sqliteSeconds,
                sqliteSeconds,
                synchronous
            )
        )
        print(
            String(
                format: "  normal    %8.0f jobs/s  (%.2f s)  WAL, synchronous NORMAL: survives a process crash only",
                Double(jobs) / normalSeconds,
                normalSeconds
            )
        )
        print(String(format: "  memory    %8.0f jobs/s  (%.2f s)", Double(jobs) / memorySeconds, memorySeconds))
        print(String(format: "  ratio     %8.3f  (sqlite FULL / memory)", memorySeconds / sqliteSeconds))
        print(String(format: "  ratio     %8.3f  (sqlite FULL / NORMAL): what surviving a power cut costs", normalSeconds / sqliteSeconds))

        // Resuming: a campaign of `campaign` jobs whose run crashed holding 75 leases.
        let path = scratch.appendingPathComponent("campaign.sqlite").path
        do {
            let store = try SQLiteJobStore(path: path)
            for batch in stride(from: 0, to: campaign, by: 1000) {
                _ = try await store.enqueue((batch..<min(campaign, batch + 1000)).map(request))
            }
            _ = try await store.lease(limit: 75, owner: "old", duration: .seconds(60), excludingUsers: [])
        }
        // What `pargen run` does when started again: open, rescue orphans, re-enqueue every line (all known),
        // and lease the first work.
        let start = ContinuousClock.now
        let store = try SQLiteJobStore(path: path)
        let rescued = try await store.rescueOrphanedLeases()
        var known = 0
        for batch in stride(from: 0, to: campaign, by: 1000) {
            known += try await store.enqueue((batch..<min(campaign, batch + 1000)).map(request)).filter(\.existing)
                .count
        }
        let first = try await store.lease(limit: 75, owner: "new", duration: .seconds(60), excludingUsers: [])
        let resumeSeconds = (ContinuousClock.now - start).seconds
        // Baseline: starting the same campaign from nothing (enqueue every line into an empty store).
        let freshStart = ContinuousClock.now
        let fresh = try SQLiteJobStore(path: scratch.appendingPathComponent("fresh.sqlite").path)
        for batch in stride(from: 0, to: campaign, by: 1000) {
            _ = try await fresh.enqueue((batch..<min(campaign, batch + 1000)).map(request))
        }
        _ = try await fresh.lease(limit: 75, owner: "new", duration: .seconds(60), excludingUsers: [])
        let freshSeconds = (ContinuousClock.now - freshStart).seconds
        precondition(known == campaign && first.count == 75 && rescued == 75)
        print("resume: a \(campaign)-job campaign in SQLite, \(rescued) leases orphaned by a crash")
        print(
            String(
                format: "  resume    %8.2f s  open, rescue, re-enqueue %d known lines, lease the first 75",
                resumeSeconds,
                known
            )
        )
        print(String(format: "  baseline  %8.2f s  the same campaign started from an empty store", freshSeconds))
        print(String(format: "  ratio     %8.2f  (resume / fresh start)", resumeSeconds / freshSeconds))
    }
}
