import Foundation
import Pargen
import PargenPostgres
import PostgresNIO

/// Jobs per second through the whole durable lifecycle on one PostgreSQL, with 1, 2 and 3 workers in this process,
/// each with a connection pool of its own (as separate processes have), on an instant provider.
///
/// Three ways of taking work are timed on the same server: `claim` is what a worker on the shared store does (look
/// at the queue, then claim each job in the transaction that admits its call; several workers look at the same
/// jobs, so some claims find the job gone), for a provider without quotas; `claim, limits` is the same for calls
/// that every shared limit counts (a provider window, user windows, project buckets and bursts, none of them
/// binding: the claim locks the limit rows, counts and logs the admission), one transaction per job, and `batch`
/// the same 100 at a time in one transaction (as the engine claims a scheduling round's jobs); `lease` takes 100
/// jobs per statement with SKIP LOCKED (what a store without shared admission does), the baseline. Each job then begins its attempt, records its task id and
/// completes, 100 at a time in flight per worker, as the engine runs them; the store writes those transitions
/// together, up to 100 a statement (``TransitionBatching/grouped``). The last column leases as `lease` does but
/// writes each transition in a statement of its own (``TransitionBatching/oneByOne``, how the store wrote them
/// before), the baseline for grouping.
enum WorkersBench {
    static func run(url: String, jobs: Int) async throws {
        let location = try PostgresLocation(url: url)
        print("workers: \(jobs) jobs per run on \(location.redacted), instant provider")
        print("| workers | claim (shared admission) jobs/s | claim, limits counted jobs/s | batch of 100, limits counted jobs/s | lease (SKIP LOCKED batch) jobs/s | lease, transitions one by one jobs/s |")
        print("|---|---|---|---|---|---|")
        for workers in 1...3 {
            let claimed = try await measure(location: location, jobs: jobs, workers: workers, mode: .claim)
            let counted = try await measure(location: location, jobs: jobs, workers: workers, mode: .claimWithLimits)
            let batched = try await measure(location: location, jobs: jobs, workers: workers, mode: .batchWithLimits)
            let leased = try await measure(location: location, jobs: jobs, workers: workers, mode: .lease)
            let single = try await measure(location: location, jobs: jobs, workers: workers, mode: .lease, batching: .oneByOne)
            print("| \(workers) | \(Int(claimed)) | \(Int(counted)) | \(Int(batched)) | \(Int(leased)) | \(Int(single)) |")
        }
    }

    /// How a worker takes its jobs.
    enum Mode {
        case claim
        case claimWithLimits
        case batchWithLimits
        case lease
    }

    static func measure(
        location: PostgresLocation,
        jobs: Int,
        workers: Int,
        mode: Mode,
        batching: TransitionBatching = .grouped
    ) async throws -> Double {
        let schema = "bench_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(12)
        let clients = (0..<workers).map { _ in PostgresClient(configuration: location.clientConfiguration(maximumConnections: 40)) }
        let runners = clients.map { client in Task { await client.run() } }
        defer { for runner in runners { runner.cancel() } }
        var stores: [PostgresJobStore] = []
        for client in clients { stores.append(try await PostgresJobStore(client: client, schema: String(schema), batching: batching)) }
        for batch in stride(from: 0, to: jobs, by: 1000) {
            _ = try await stores[0].enqueue((batch..<min(jobs, batch + 1000)).map(StoreBench.request))
        }
        let start = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, store) in stores.enumerated() {
                group.addTask { try await work(store, owner: "bench-\(index)", mode: mode) }
            }
            try await group.waitForAll()
        }
        let seconds = (ContinuousClock.now - start).seconds
        let counts = try await stores[0].counts()
        precondition(counts == [.succeeded: jobs], "every job succeeded once: \(counts)")
        _ = try await clients[0].query("DROP SCHEMA \(unescaped: "\"" + schema + "\"") CASCADE")
        return Double(jobs) / seconds
    }

    /// The client limits and the provider's quota a mode's calls are counted in.
    static func settings(_ mode: Mode) -> (PargenConfiguration.RateLimits, ProviderQuota) {
        var limits = PargenConfiguration.RateLimits()
        guard mode == .claimWithLimits || mode == .batchWithLimits else {
            limits.enabled = false
            return (limits, ProviderQuota())
        }
        // Counted everywhere, binding nowhere.
        limits.perUserRequestsPerMinute = 1_000_000
        limits.perProjectRequestsPerMinute = 1_000_000
        limits.tokenBucketCapacity = 1_000_000
        limits.maxBurst = 1_000_000
        return (limits, ProviderQuota(requestsPerMinute: 1_000_000))
    }

    static func work(_ store: PostgresJobStore, owner: String, mode: Mode) async throws {
        let (limits, quota) = settings(mode)
        while true {
            var held: [LeasedJob] = []
            if mode != .lease {
                let seen = try await store.peek(
                    limit: 100,
                    excludingUsers: [],
                    excludingProjects: [],
                    excludingJobs: [],
                    kinds: Set(GenerationKind.allCases)
                )
                if seen.isEmpty { return }
                func call(_ record: JobRecord) -> SharedCall {
                    SharedCall(
                        provider: "p",
                        user: record.request.user,
                        project: record.request.project,
                        submits: true,
                        holdsSlot: false,
                        quota: quota,
                        limits: limits
                    )
                }
                if mode == .batchWithLimits {
                    let decisions = try await store.claim(
                        seen.map { ClaimRequest(id: $0.id, call: call($0)) },
                        owner: owner,
                        duration: .seconds(60)
                    )
                    held = decisions.compactMap { if case .claimed(let job) = $0 { job } else { nil } }
                } else {
                    held = try await withThrowingTaskGroup(of: LeasedJob?.self) { group in
                        for record in seen {
                            group.addTask {
                                if case .claimed(let job) = try await store.claim(record.id, owner: owner, duration: .seconds(60), for: call(record)) {
                                    return job
                                }
                                return nil
                            }
                        }
                        var jobs: [LeasedJob] = []
                        for try await job in group { if let job { jobs.append(job) } }
                        return jobs
                    }
                }
            } else {
                held = try await store.lease(limit: 100, owner: owner, duration: .seconds(60), excludingUsers: [])
                if held.isEmpty { return }
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for job in held { group.addTask { try await StoreBench.finish(job, in: store) } }
                try await group.waitForAll()
            }
        }
    }
}
