import Foundation
import Pargen
import PargenPostgres
import PargenSQLite
import PargenTesting
import Testing

/// Makes a fresh store on a manual clock. Every ``JobStore`` implementation adds itself to
/// ``JobStoreConformanceTests/factories`` and must pass every test of the suite.
struct StoreFactory: Sendable, CustomTestStringConvertible {
    var name: String
    var make: @Sendable (ManualClock) async throws -> any JobStore
    var testDescription: String { name }

    static let memory = StoreFactory(name: "memory") { clock in MemoryJobStore(clock: PargenClock(clock)) }

    /// A real file in WAL mode; the wall clock starts at 2026-01-01 and moves with the manual clock.
    static let sqlite = StoreFactory(name: "sqlite") { clock in
        let path = temporaryDirectory().appendingPathComponent("jobs.sqlite").path
        return try SQLiteJobStore(path: path, now: { .seconds(1_767_225_600) + clock.now.offset })
    }

    /// A fresh schema in the test run's PostgreSQL server, on the same shifted manual clock.
    static let postgres = StoreFactory(name: "postgres") { clock in try await TestPostgres.store(clock: clock) }
}

@Suite struct JobStoreConformanceTests {
    static let factories: [StoreFactory] = [.memory, .sqlite, .postgres]

    let outcome = JobOutcome.test

    func lease(
        _ store: any JobStore,
        _ limit: Int = 1,
        owner: String = "w",
        excluding: Set<String> = []
    ) async throws
        -> [LeasedJob]
    {
        try await store.lease(limit: limit, owner: owner, duration: .seconds(60), excludingUsers: excluding)
    }

    /// Budgets are checked against the job records' own ledgers, in the transition that reserves.
    @Test(arguments: factories)
    func aReservationFitsItsBudgetsByTheJobLedgersOrIsRefused(_ factory: StoreFactory) async throws {
        let store = try await factory.make(ManualClock())
        let requests = ["a", "b", "c"].map { validated(.audio(prompt: $0, project: "p"), id: $0) }
            + [validated(.audio(prompt: "d", project: "q"), id: "d")]
        _ = try await store.enqueue(requests)
        let leased = try await lease(store, 4)
        let byID = Dictionary(uniqueKeysWithValues: leased.map { ($0.record.request.id, $0.lease) })
        let budgets = [Budget(scope: .global, limit: .dollars(100)), Budget(scope: .project("p"), limit: .dollars(10))]
        func begin(_ id: String, _ amount: Money, _ budgets: [Budget]) async throws -> [BudgetScope: Money] {
            try await store.beginAttempt(byID[id]!, provider: "x", reserving: amount, idempotentSubmission: false, within: budgets)
        }
        #expect(try await begin("a", .dollars(4), budgets) == [.global: .dollars(4), .project("p"): .dollars(4)])
        #expect(try await begin("b", .dollars(4), budgets) == [.global: .dollars(8), .project("p"): .dollars(8)])
        let refusal = await #expect(throws: BudgetRefusal.self) { try await begin("c", .dollars(4), budgets) }
        #expect(
            refusal == BudgetRefusal(scope: .project("p"), limit: .dollars(10), committed: .dollars(8), needed: .dollars(4), canFree: true)
        )
        // Refused: nothing reserved, no attempt begun.
        let c = try #require(try await store.job(byID["c"]!.jobID))
        #expect(c.ledger == CostLedger() && c.attempts == 0, "\(c.ledger) \(c.attempts)")
        // Another project's job counts against the global budget only.
        #expect(
            try await begin("d", .dollars(4), [Budget(scope: .global, limit: .dollars(100)), Budget(scope: .project("q"), limit: .dollars(4))])
                == [.global: .dollars(12), .project("q"): .dollars(4)]
        )
        // a is charged less than it reserved, b's call failed: c now fits (3 charged + 4).
        var outcome = self.outcome
        outcome.cost = .dollars(3)
        try await store.complete(byID["a"]!, outcome: outcome)
        try await store.retry(byID["b"]!, error: nil, after: .seconds(60), spendAttempt: true, failedProvider: nil)
        #expect(try await begin("c", .dollars(4), budgets) == [.global: .dollars(11), .project("p"): .dollars(7)])
        let p = try await store.ledger(in: .project("p"))
        #expect(p.charged == .dollars(3) && p.pending == .dollars(4) && p.released == .dollars(5) && p.balances, "\(p)")
        #expect(try await store.ledger(in: .global).pending == .dollars(8))
        let campaign = try await store.ledger(in: .campaign(requests[0].campaign))
        #expect(campaign.reserved == .dollars(12), "a, b and c (d is of another campaign): \(campaign)")
        // With nothing pending in the scope, a refusal says that nothing can free it.
        _ = try await store.enqueue([validated(.audio(prompt: "e", project: "r"), id: "e")])
        let e = try #require(try await lease(store, 1).first)
        let final = await #expect(throws: BudgetRefusal.self) {
            try await store.beginAttempt(
                e.lease,
                provider: "x",
                reserving: .dollars(2),
                idempotentSubmission: false,
                within: [Budget(scope: .project("r"), limit: .dollars(1))]
            )
        }
        #expect(final?.canFree == false)
    }

    /// A finishing transition returns the record as it wrote it: the engine hands that to the job's waiters
    /// instead of reading the job again, so it must be what a read would give.
    @Test(arguments: factories)
    func aFinishingTransitionReturnsTheRecordAReadGives(_ factory: StoreFactory) async throws {
        let store = try await factory.make(ManualClock())
        _ = try await store.enqueue(["a", "b", "c"].map { validated(.audio(prompt: $0, project: "p"), id: $0) })
        let leased = Dictionary(uniqueKeysWithValues: try await lease(store, 3).map { ($0.record.request.id, $0.lease) })
        for lease in leased.values { try await store.beginAttempt(lease, provider: "x", reserving: .dollars(2)) }
        var outcome = self.outcome
        outcome.cost = .dollars(1)
        let completed = try await store.complete(leased["a"]!, outcome: outcome)
        let failure = GenerationError(.terminal, "refused", provider: "x")
        let deadLettered = try await store.deadLetter(leased["b"]!, error: failure)
        #expect(completed.state == .succeeded && completed.ledger.charged == .dollars(1))
        #expect(deadLettered.state == .deadLettered && deadLettered.errors.last?.message == "refused")
        #expect(try await store.job(completed.id) == completed)
        #expect(try await store.job(deadLettered.id) == deadLettered)
        if let admitting = store as? any AdmittingJobStore {
            let answered = try await admitting.complete(leased["c"]!, outcome: outcome, answeredAgo: .milliseconds(300))
            #expect(try await store.job(answered.id) == answered)
        }
    }

    /// A purged job's money stays counted: in the ledger of every scope it was in, and against the budgets a later
    /// reservation must fit in. Purging a campaign's finished jobs does not give its budget back.
    @Test(arguments: factories)
    func aPurgedJobsMoneyStaysInItsBudgets(_ factory: StoreFactory) async throws {
        let store = try await factory.make(ManualClock())
        let requests = ["a", "b", "c"].map { validated(.audio(prompt: $0, project: "p", campaign: "k"), id: $0) }
        _ = try await store.enqueue(requests)
        let leased = try await lease(store, 3)
        let byID = Dictionary(uniqueKeysWithValues: leased.map { ($0.record.request.id, $0) })
        let budget = [Budget(scope: .project("p"), limit: .dollars(10))]
        // a is charged $6; b's answer was lost, so its $3 stays reserved (it may be billed).
        for (id, amount) in [("a", Money.dollars(6)), ("b", .dollars(3))] {
            _ = try await store.beginAttempt(byID[id]!.lease, provider: "x", reserving: amount, idempotentSubmission: false, within: budget)
        }
        var outcome = self.outcome
        outcome.cost = .dollars(6)
        try await store.complete(byID["a"]!.lease, outcome: outcome)
        try await store.deadLetter(byID["b"]!.lease, error: GenerationError(.needsReconciliation, "answer lost"))
        let before = try await store.ledger(in: .project("p"))
        #expect(before.charged == .dollars(6) && before.pending == .dollars(3), "\(before)")

        #expect(try await store.purge([byID["a"]!.record.id, byID["b"]!.record.id]) == 2)
        #expect(try await store.job(byID["a"]!.record.id) == nil)
        for scope in [BudgetScope.project("p"), .campaign("k"), .global] {
            let after = try await store.ledger(in: scope)
            #expect(after == before && after.balances, "\(scope): \(after)")
        }
        #expect(try await store.ledger(in: .project("q")) == CostLedger())
        // $9 of $10 is still committed: c's $2 does not fit.
        let refusal = await #expect(throws: BudgetRefusal.self) {
            try await store.beginAttempt(byID["c"]!.lease, provider: "x", reserving: .dollars(2), idempotentSubmission: false, within: budget)
        }
        #expect(refusal?.committed == .dollars(9))
    }

    /// Each scope's money (which the SQL stores keep as running totals, not sums) is what its jobs' ledgers and
    /// its purged jobs' ledgers add up to, after any mix of transitions, purges and (on PostgreSQL) folds.
    @Test(arguments: factories.flatMap { factory in [1, 2, 3].map { (factory, UInt64($0)) } })
    func everyScopesMoneyIsTheSumOfItsJobsLedgers(_ factory: StoreFactory, seed: UInt64) async throws {
        let store = try await factory.make(ManualClock())
        var random = SplitMix64(seed: seed)
        _ = try await store.enqueue(
            (0..<60).map { i in
                validated(.audio(prompt: "line \(i)", user: "u\(i % 4)", project: "p\(i % 3)", campaign: "c\(i % 2)"), id: "r\(i)")
            }
        )
        var purged: [BudgetScope: CostLedger] = [:]
        var finished: [JobID] = []
        for round in 0..<12 {
            for job in try await lease(store, 8) {
                try await store.beginAttempt(job.lease, provider: "p", reserving: .cents(Int.random(in: 1...50, using: &random)))
                switch Int.random(in: 0..<5, using: &random) {
                case 0, 1:
                    var outcome = self.outcome
                    outcome.cost = .cents(Int.random(in: 0...80, using: &random))
                    try await store.complete(job.lease, outcome: outcome)
                    finished.append(job.record.id)
                case 2:
                    try await store.retry(job.lease, error: GenerationError(.transient, "503"), after: .zero, spendAttempt: true, failedProvider: nil)
                case 3:
                    try await store.deadLetter(job.lease, error: GenerationError(.invalidRequest, "refused"))
                    finished.append(job.record.id)
                default:
                    // Its call went out and its answer is awaited: the reservation stays pending.
                    try await store.recordSubmission(job.lease, taskID: "t-\(round)")
                }
            }
            if round % 4 == 3 {
                let gone = Array(finished.prefix(3))
                finished.removeFirst(gone.count)
                for id in gone {
                    let record = try #require(try await store.job(id))
                    for scope in Self.scopes(of: record) { purged[scope, default: CostLedger()] = purged[scope, default: CostLedger()] + record.ledger }
                }
                #expect(try await store.purge(gone) == gone.count)
            }
            if let postgres = store as? PostgresJobStore, Bool.random(using: &random) {
                _ = try await postgres.foldMoneyChanges()
            }
            var expected = purged
            for record in try await store.jobs(matching: JobQuery()) {
                for scope in Self.scopes(of: record) { expected[scope, default: CostLedger()] = expected[scope, default: CostLedger()] + record.ledger }
            }
            #expect(expected.count == 1 + 3 + 2)
            for (scope, sum) in expected {
                #expect(try await store.ledger(in: scope) == sum, "round \(round), \(scope)")
            }
        }
        #expect(try await store.ledger(in: .global).charged > .zero)
    }

    static func scopes(of record: JobRecord) -> [BudgetScope] {
        [.global, .project(record.request.project), .campaign(record.request.campaign)]
    }

    /// Reservations made at once never take a budget past its limit: on PostgreSQL, from many connections.
    @Test(arguments: factories)
    func reservationsMadeAtOnceNeverExceedTheBudget(_ factory: StoreFactory) async throws {
        let store = try await factory.make(ManualClock())
        let count = 40
        _ = try await store.enqueue((0..<count).map { validated(.audio(prompt: "line \($0)", project: "p"), id: "j\($0)") })
        let leases = try await lease(store, count).map(\.lease)
        #expect(leases.count == count)
        let budgets = [Budget(scope: .project("p"), limit: .dollars(10))]
        let admitted = try await withThrowingTaskGroup(of: Bool.self) { group in
            for lease in leases {
                group.addTask {
                    do {
                        _ = try await store.beginAttempt(lease, provider: "x", reserving: .dollars(1), idempotentSubmission: false, within: budgets)
                        return true
                    } catch is BudgetRefusal {
                        return false
                    }
                }
            }
            return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        #expect(admitted == 10)
        #expect(try await store.ledger(in: .project("p")).pending == .dollars(10))
    }

    @Test(arguments: factories)
    func leasesByPriorityThenRoundRobinAcrossUsers(_ factory: StoreFactory) async throws {
        let store = try await factory.make(ManualClock())
        var requests: [ValidatedRequest] = []
        for i in 0..<4 { requests.append(validated(.audio(prompt: "a\(i)", user: "alice"), id: "a\(i)")) }
        for i in 0..<2 { requests.append(validated(.audio(prompt: "b\(i)", user: "bob"), id: "b\(i)")) }
        requests.append(validated(.audio(prompt: "urgent", priority: .urgent, user: "carol"), id: "c0"))
        _ = try await store.enqueue(requests)
        #expect(try await lease(store, 5).map(\.record.request.id) == ["c0", "a0", "b0", "a1", "b1"])
        #expect(try await lease(store, 5, excluding: ["alice"]).isEmpty)
        #expect(try await lease(store, 5).map(\.record.request.id) == ["a2", "a3"])
        #expect(try await store.counts() == [.running: 7])
    }

    @Test(arguments: factories)
    func idempotencyKeyIsUniquePerProject(_ factory: StoreFactory) async throws {
        let store = try await factory.make(ManualClock())
        let first = try await store.enqueue([validated(.audio(prompt: "x", project: "p", idempotencyKey: "k"))])
        let again = try await store.enqueue([validated(.audio(prompt: "y", project: "p", idempotencyKey: "k"))])
        let other = try await store.enqueue([validated(.audio(prompt: "y", project: "q", idempotencyKey: "k"))])
        #expect(again[0] == EnqueueResult(jobID: first[0].jobID, existing: true))
        #expect(other[0].existing == false)
        #expect(try await store.counts() == [.available: 2])
    }

    @Test(arguments: factories)
    func recordsRoundTripEveryField(_ factory: StoreFactory) async throws {
        let store = try await factory.make(ManualClock())
        let request = validated(
            .video(
                prompt: "Birds",
                priority: .high,
                duration: .milliseconds(2500),
                resolution: .p480,
                model: "m",
                user: "u",
                project: "p",
                campaign: "c",
                metadata: ["scene": .number(3), "tags": .array([.string("a")])]
            )
        )
        let id = try await store.enqueue([request])[0].jobID
        let record = try #require(try await store.job(id))
        #expect(record.request == request)
        #expect(record.state == .available && record.attempts == 0)
    }

    /// A store that hands jobs over only when their calls are admitted: `peek` shows the due available jobs in
    /// claim order (priority, then round-robin across users, each user's oldest first) without taking them, and
    /// `claim` takes one that is still available and due, once.
    @Test(arguments: factories)
    func peekShowsWithoutTakingAndClaimTakesOnce(_ factory: StoreFactory) async throws {
        let clock = ManualClock()
        let store = try #require(try await factory.make(clock) as? any ClaimingJobStore)
        let specs: [(String, String, String, GenerationPriority)] = [
            ("a1", "a", "p", .normal), ("a2", "a", "p", .normal), ("a3", "a", "p", .normal), ("b1", "b", "p", .normal),
            ("u1", "c", "p", .urgent), ("h1", "d", "held", .normal),
        ]
        let ids = try await store.enqueue(
            specs.map { validated(.audio(prompt: $0.0, priority: $0.3, user: $0.1, project: $0.2), id: $0.0) }
        ).map(\.jobID)
        let byName = Dictionary(uniqueKeysWithValues: zip(specs.map(\.0), ids))
        func peek(users: Set<String> = [], projects: Set<String> = [], jobs: Set<String> = []) async throws -> [String] {
            try await store.peek(
                limit: 10,
                excludingUsers: users,
                excludingProjects: projects,
                excludingJobs: Set(jobs.map { byName[$0]! }),
                kinds: [.audio]
            ).map(\.request.id)
        }
        #expect(try await peek() == ["u1", "a1", "b1", "h1", "a2", "a3"])
        #expect(try await peek() == ["u1", "a1", "b1", "h1", "a2", "a3"], "looking takes nothing")
        #expect(try await store.counts() == [.available: 6])
        #expect(try await peek(users: ["b"], projects: ["held"], jobs: ["a1"]) == ["u1", "a2", "a3"])
        #expect(try await store.peek(limit: 2, excludingUsers: [], excludingProjects: [], excludingJobs: [], kinds: [.video]).isEmpty)

        let claimed = try #require(try await store.claim(byName["a1"]!, owner: "w1", duration: .seconds(60)))
        #expect(claimed.record.state == .running && claimed.record.leaseOwner == "w1")
        #expect(try await store.claim(byName["a1"]!, owner: "w2", duration: .seconds(60)) == nil, "claimed once")
        #expect(try await peek() == ["u1", "a2", "b1", "h1", "a3"])
        // A job put back for later is neither shown nor claimable until it is due.
        let b1 = try #require(try await store.claim(byName["b1"]!, owner: "w1", duration: .seconds(60)))
        try await store.retry(b1.lease, error: nil, after: .seconds(30), spendAttempt: false, failedProvider: nil)
        #expect(try await peek() == ["u1", "a2", "h1", "a3"])
        #expect(try await store.claim(byName["b1"]!, owner: "w1", duration: .seconds(60)) == nil, "not due")
        clock.advance(by: .seconds(31))
        // Due again (where b's turn falls among the users is the store's to choose).
        let due = try await peek()
        #expect(due.first == "u1" && Set(due) == ["u1", "a2", "b1", "h1", "a3"] && due.count == 5, "\(due)")
        #expect(try await store.claim(byName["b1"]!, owner: "w1", duration: .seconds(60)) != nil)
        // Leasing takes in the same order, and skips what was claimed.
        #expect(try await lease(store, 10).map(\.record.request.id) == ["u1", "a2", "h1", "a3"])
    }

    /// On random backlogs (priorities, users, projects, kinds, and what the caller leaves out), every store
    /// shows and leases the due jobs in the claim order, computed here from the backlog: highest priority first;
    /// within a priority turn by turn, each user's oldest job, users in the order of their oldest due job.
    /// The memory store keeps each kind's queue apart and a user's place from their first job even when the
    /// caller leaves that job out, so it is held to the order on one kind with only users left out (what the
    /// engine asks of it); SQLite and PostgreSQL to all of it.
    /// A user with many jobs of two kinds, against a user with one: the claim order takes the first user's jobs
    /// oldest first across both kinds, although a store that reads each kind's queue a part at a time sees the
    /// video jobs before it has seen every audio job.
    @Test(arguments: [StoreFactory.sqlite, .postgres])
    func aUsersJobsOfTwoKindsAreTakenOldestFirstAcrossKinds(_ factory: StoreFactory) async throws {
        let store = try #require(try await factory.make(ManualClock()) as? any ClaimingJobStore)
        let requests =
            (1...4).map { validated(.audio(prompt: "a\($0)", user: "a"), id: "a\($0)") }
            + (1...4).map { validated(.video(prompt: "v\($0)", user: "a"), id: "v\($0)") }
            + [validated(.audio(prompt: "b1", user: "b"), id: "b1")]
        _ = try await store.enqueue(requests)
        let shown = try await store.peek(
            limit: 6,
            excludingUsers: [],
            excludingProjects: [],
            excludingJobs: [],
            kinds: [.audio, .video]
        ).map(\.request.id)
        #expect(shown == ["a1", "b1", "a2", "a3", "a4", "v1"])
        let leased = try await store.lease(
            limit: 6,
            owner: "w",
            duration: .seconds(60),
            excludingUsers: [],
            kinds: [.audio, .video]
        ).map(\.record.request.id)
        #expect(leased == ["a1", "b1", "a2", "a3", "a4", "v1"])
    }

    @Test(arguments: factories)
    func theClaimOrderHoldsOnRandomBacklogs(_ factory: StoreFactory) async throws {
        var random = SplitMix64(seed: 20_261_201)
        let priorities: [GenerationPriority] = [.low, .normal, .high, .urgent]
        for round in 0..<12 {
            let store = try #require(try await factory.make(ManualClock()) as? any ClaimingJobStore)
            let whole = !(store is MemoryJobStore)
            let users = (0..<Int.random(in: 1...6, using: &random)).map { "u\($0)" }
            struct Spec {
                var id: String
                var priority: GenerationPriority
                var user: String
                var project: String
                var kind: GenerationKind
            }
            let specs = (0..<Int.random(in: 0...70, using: &random)).map { index in
                Spec(
                    id: "r\(round)-\(index)",
                    priority: priorities.randomElement(using: &random)!,
                    user: users.randomElement(using: &random)!,
                    project: ["p", "q", "r"].randomElement(using: &random)!,
                    kind: Int.random(in: 0..<4, using: &random) == 0 ? .video : .audio
                )
            }
            let ids = try await store.enqueue(
                specs.map { spec in
                    switch spec.kind {
                    case .video:
                        validated(.video(prompt: spec.id, priority: spec.priority, user: spec.user, project: spec.project), id: spec.id)
                    default:
                        validated(.audio(prompt: spec.id, priority: spec.priority, user: spec.user, project: spec.project), id: spec.id)
                    }
                }
            ).map(\.jobID)
            let jobIDs = Dictionary(uniqueKeysWithValues: zip(specs.map(\.id), ids))
            for look in 0..<4 {
                let kinds: Set<GenerationKind> = look % 2 == 0 || !whole ? [.audio] : [.audio, .video]
                let leftOutUsers = Set(users.filter { _ in Int.random(in: 0..<4, using: &random) == 0 })
                var leftOutProjects: Set<String> = Int.random(in: 0..<3, using: &random) == 0 ? ["q"] : []
                var leftOutJobs = Set(specs.map(\.id).filter { _ in Int.random(in: 0..<5, using: &random) == 0 })
                if !whole {
                    leftOutProjects = []
                    leftOutJobs = []
                }
                let limit = Int.random(in: 1...80, using: &random)
                // The reference: the due jobs in enqueue order, numbered within (priority, user).
                let due = specs.filter {
                    kinds.contains($0.kind) && !leftOutUsers.contains($0.user) && !leftOutProjects.contains($0.project)
                        && !leftOutJobs.contains($0.id)
                }
                var turn: [String: Int] = [:]
                var first: [String: Int] = [:]
                var queued: [String: Int] = [:]
                for (index, spec) in due.enumerated() {
                    let queue = "\(spec.priority.rawValue)/\(spec.user)"
                    queued[queue, default: 0] += 1
                    turn[spec.id] = queued[queue]!
                    if first[queue] == nil { first[queue] = index }
                }
                let expected = due.sorted {
                    let a = ($0.priority.rawValue, -turn[$0.id]!, -first["\($0.priority.rawValue)/\($0.user)"]!)
                    let b = ($1.priority.rawValue, -turn[$1.id]!, -first["\($1.priority.rawValue)/\($1.user)"]!)
                    return a > b
                }.prefix(limit).map(\.id)
                let shown = try await store.peek(
                    limit: limit,
                    excludingUsers: leftOutUsers,
                    excludingProjects: leftOutProjects,
                    excludingJobs: Set(leftOutJobs.map { jobIDs[$0]! }),
                    kinds: kinds
                ).map(\.request.id)
                #expect(shown == expected, "round \(round), look \(look): \(specs.count) jobs, limit \(limit)")
            }
            // Leasing takes in the same order.
            let all = specs.filter { $0.kind == .audio }
            let expected = all.sorted { a, b in
                func key(_ spec: Spec) -> (Int, Int, Int) {
                    let mine = all.filter { $0.priority == spec.priority && $0.user == spec.user }
                    let first = all.firstIndex { $0.priority == spec.priority && $0.user == spec.user }!
                    return (spec.priority.rawValue, -(mine.firstIndex { $0.id == spec.id }! + 1), -first)
                }
                return key(a) > key(b)
            }.map(\.id)
            let leased = try await store.lease(limit: 100, owner: "w", duration: .seconds(60), excludingUsers: [], kinds: [.audio])
            #expect(leased.map(\.record.request.id) == expected, "round \(round): lease")
        }
    }

    @Test(arguments: factories)
    func completionIsFencedByTheLeaseToken(_ factory: StoreFactory) async throws {
        let clock = ManualClock()
        let store = try await factory.make(clock)
        _ = try await store.enqueue([validated(.audio(prompt: "x"))])
        let first = try await lease(store, owner: "w1")[0]
        try await store.beginAttempt(first.lease, provider: "p", reserving: .cents(5))
        try await store.recordSubmission(first.lease, taskID: "task-1")
        clock.advance(by: .seconds(61))
        #expect(try await store.rescueExpiredLeases() == 1)
        let second = try await lease(store, owner: "w2")[0]
        #expect(second.record.providerTaskID == "task-1", "a rescued job keeps its task id to resume polling")
        #expect(second.record.recoveryPoint == .submitted)
        await #expect(throws: StoreError(.leaseLost, "")) { try await store.complete(first.lease, outcome: outcome) }
        await #expect(throws: StoreError(.leaseLost, "")) {
            _ = try await store.heartbeat(first.lease, duration: .seconds(60))
        }
        try await store.complete(second.lease, outcome: outcome)
        let record = try #require(try await store.job(second.record.id))
        #expect(record.state == .succeeded)
        #expect(record.outcome == outcome)
    }

    @Test(arguments: factories)
    func heartbeatsKeepALeaseFromBeingRescued(_ factory: StoreFactory) async throws {
        let clock = ManualClock()
        let store = try await factory.make(clock)
        _ = try await store.enqueue([validated(.audio(prompt: "x"))])
        let job = try await lease(store)[0]
        clock.advance(by: .seconds(40))
        _ = try await store.heartbeat(job.lease, duration: .seconds(60))
        clock.advance(by: .seconds(40))
        #expect(try await store.rescueExpiredLeases() == 0)
        clock.advance(by: .seconds(21))
        #expect(try await store.rescueExpiredLeases() == 1)
    }

    @Test(arguments: factories)
    func crashBetweenSubmitAndPersistNeedsReconciliation(_ factory: StoreFactory) async throws {
        let clock = ManualClock()
        let store = try await factory.make(clock)
        _ = try await store.enqueue([validated(.audio(prompt: "x"))])
        let job = try await lease(store)[0]
        try await store.beginAttempt(job.lease, provider: "p", reserving: .cents(5))
        clock.advance(by: .seconds(61))
        _ = try await store.rescueExpiredLeases()
        #expect(try await store.job(job.record.id)?.state == .needsReconciliation)
        #expect(try await lease(store).isEmpty, "never resubmitted blindly")
    }

    /// A call given back before it went out (a stop) leaves no trace of it: the next holder that is lost before
    /// it begins a call of its own (a lease taken and left to expire) gives the job back to the queue, and it is
    /// never set aside as a call that may have reached its provider.
    @Test(arguments: factories)
    func aCallGivenBackBeforeItWentOutIsNotReconciledLater(_ factory: StoreFactory) async throws {
        let clock = ManualClock()
        let store = try await factory.make(clock)
        _ = try await store.enqueue([validated(.audio(prompt: "x"))])
        let first = try await lease(store)[0]
        try await store.beginAttempt(first.lease, provider: "p", reserving: .cents(5))
        try await store.release(first.lease)
        let released = try #require(try await store.job(first.record.id))
        #expect(released.recoveryPoint == nil)
        #expect(released.attempts == 0)
        let second = try await lease(store)[0]
        #expect(second.record.id == first.record.id)
        clock.advance(by: .seconds(61))
        #expect(try await store.rescueExpiredLeases() == 1)
        #expect(try await store.job(first.record.id)?.state == .available)
        #expect(try await lease(store).map(\.record.id) == [first.record.id])
    }

    @Test(arguments: factories)
    func retriesSnoozesDeadLettersAndRequeues(_ factory: StoreFactory) async throws {
        let clock = ManualClock()
        let store = try await factory.make(clock)
        let id = try await store.enqueue([validated(.audio(prompt: "x"))])[0].jobID
        var job = try await lease(store)[0]
        try await store.beginAttempt(job.lease, provider: "p", reserving: .cents(5))
        try await store.retry(
            job.lease,
            error: GenerationError(.rateLimited, "429"),
            after: .seconds(5),
            spendAttempt: false,
            failedProvider: nil
        )
        #expect(try await store.job(id)?.attempts == 0)
        #expect(try await store.job(id)?.snoozes == 1)
        #expect(try await store.timeUntilNextDue() == .seconds(5))
        #expect(try await lease(store).isEmpty)
        clock.advance(by: .seconds(6))
        #expect(try await store.timeUntilNextDue() == .zero, "a job already due counts as due now")
        job = try await lease(store)[0]
        try await store.beginAttempt(job.lease, provider: "p", reserving: .cents(5))
        try await store.retry(
            job.lease,
            error: GenerationError(.transient, "503"),
            after: .zero,
            spendAttempt: true,
            failedProvider: "p"
        )
        job = try await lease(store)[0]
        #expect(job.record.failedProviders == ["p"])
        try await store.beginAttempt(job.lease, provider: "q", reserving: .cents(5))
        try await store.deadLetter(job.lease, error: GenerationError(.terminal, "no", providerCode: "policy"))
        let record = try #require(try await store.job(id))
        #expect(record.state == .deadLettered)
        #expect(record.attempts == 2)
        #expect(record.errors.map(\.code) == [.rateLimited, .transient, .terminal])
        #expect(record.errors.last?.providerCode == "policy")
        #expect(try await store.jobs(matching: JobQuery(states: [.deadLettered])).map(\.id) == [id])
        try await store.requeue(id)
        #expect(try await store.counts() == [.available: 1])
        await #expect(throws: StoreError(.invalidState, "")) { try await store.requeue(id) }
    }

    @Test(arguments: factories)
    func releaseRestoresTheAttemptOnlyBeforeSubmission(_ factory: StoreFactory) async throws {
        let store = try await factory.make(ManualClock())
        let ids = try await store.enqueue([validated(.audio(prompt: "x")), validated(.audio(prompt: "y"))]).map(\.jobID)
        let jobs = try await lease(store, 2)
        for job in jobs { try await store.beginAttempt(job.lease, provider: "p", reserving: .cents(5)) }
        try await store.recordSubmission(jobs[1].lease, taskID: "t")
        for job in jobs { try await store.release(job.lease) }
        #expect(try await store.job(ids[0])?.attempts == 0)
        let submitted = try #require(try await store.job(ids[1]))
        #expect(submitted.attempts == 1 && submitted.providerTaskID == "t" && submitted.state == .available)
    }

    /// A call given back after it went out (a stop, or the store failing to record its task id) is never made
    /// again where the provider could bill it twice: an accepted task is resumed, a call to a provider that
    /// de-duplicates by key is made again there under the same key, and only a call that never went out, or one
    /// no task is known for at a provider without keys, gives its attempt back.
    @Test(arguments: factories)
    func releaseKeepsWhatTheCallLeftAtItsProvider(_ factory: StoreFactory) async throws {
        let store = try await factory.make(ManualClock())
        let ids = try await store.enqueue((0..<4).map { validated(.audio(prompt: "r\($0)")) }).map(\.jobID)
        let jobs = try await lease(store, 4)
        let byID = Dictionary(uniqueKeysWithValues: jobs.map { ($0.record.id, $0) })
        let traces: [CallTrace] = [.notSent, .accepted(taskID: "t-1"), .sent, .sent]
        for (index, id) in ids.enumerated() {
            try await store.beginAttempt(
                byID[id]!.lease,
                provider: "p",
                reserving: .cents(5),
                idempotentSubmission: index != 3
            )
            try await store.release(byID[id]!.lease, leaving: traces[index])
        }
        var records: [JobRecord] = []
        for id in ids { records.append(try #require(try await store.job(id))) }
        #expect(records.allSatisfy { $0.state == .available })
        // Never sent: no trace, the reservation goes back.
        #expect(records[0].attempts == 0 && records[0].recoveryPoint == nil && records[0].ledger.pending == .zero)
        // Accepted: the task is resumed where it is, and may still charge.
        #expect(records[1].attempts == 1 && records[1].recoveryPoint == .submitted)
        #expect(records[1].providerTaskID == "t-1" && records[1].provider == "p" && records[1].ledger.pending == .cents(5))
        // Sent to a provider with keys: the next call reuses the key (the same attempt number) at the same provider.
        #expect(records[2].attempts == 0 && records[2].recoveryPoint == .cutOff && records[2].provider == "p")
        // Sent to a provider without keys, no task known: nothing to resume or to call again under.
        #expect(records[3].attempts == 0 && records[3].recoveryPoint == nil)
    }

    @Test(arguments: factories)
    func queriesByCampaignStateUserAndProvider(_ factory: StoreFactory) async throws {
        let store = try await factory.make(ManualClock())
        _ = try await store.enqueue([
            validated(.audio(prompt: "1", user: "ann", campaign: "spring")),
            validated(.audio(prompt: "2", user: "bob", campaign: "spring")),
            validated(.audio(prompt: "3", user: "ann", campaign: "fall")),
        ])
        let job = try await lease(store)[0]
        try await store.beginAttempt(job.lease, provider: "p", reserving: .cents(5))
        try await store.complete(job.lease, outcome: outcome)
        #expect(try await store.jobs(matching: JobQuery(campaign: "spring")).count == 2)
        #expect(try await store.jobs(matching: JobQuery(user: "ann")).count == 2)
        #expect(try await store.jobs(matching: JobQuery(states: [.succeeded], provider: "p")).count == 1)
        #expect(try await store.jobs(matching: JobQuery(limit: 1)).count == 1)
    }

    @Test(arguments: factories)
    func pagesFollowInsertionOrderAfterACursor(_ factory: StoreFactory) async throws {
        let store = try await factory.make(ManualClock())
        _ = try await store.enqueue((0..<5).map { validated(.audio(prompt: "p\($0)"), id: "r\($0)") })
        let first = try await store.jobs(matching: JobQuery(limit: 2))
        #expect(first.map(\.request.id) == ["r0", "r1"])
        let second = try await store.jobs(matching: JobQuery(afterSequence: first.last!.sequence, limit: 2))
        #expect(second.map(\.request.id) == ["r2", "r3"])
        let last = try await store.jobs(matching: JobQuery(afterSequence: second.last!.sequence, limit: 2))
        #expect(last.map(\.request.id) == ["r4"])
    }

    @Test(arguments: factories)
    func cancelTakesOnlyAWaitingJobOutOfTheQueue(_ factory: StoreFactory) async throws {
        let store = try await factory.make(ManualClock())
        let ids = try await store.enqueue([validated(.audio(prompt: "a")), validated(.audio(prompt: "b"))]).map(\.jobID)
        let running = try await lease(store)[0]
        let waiting = ids.first { $0 != running.record.id }!
        try await store.cancel(waiting)
        let cancelled = try #require(try await store.job(waiting))
        #expect(cancelled.state == .deadLettered && cancelled.errors.last?.code == .cancelled)
        #expect(try await lease(store).isEmpty)
        await #expect(throws: StoreError(.invalidState, "")) { try await store.cancel(running.record.id) }
        await #expect(throws: StoreError(.invalidState, "")) { try await store.cancel(waiting) }
        await #expect(throws: StoreError(.notFound, "")) { try await store.cancel(JobID("nope")) }
        try await store.requeue(waiting)
        #expect(try await lease(store).map(\.record.id) == [waiting])
    }

    /// The README promises that a committed transition survives a power cut: that needs `synchronous = FULL`
    /// on the connection that commits (WAL mode otherwise runs with NORMAL).
    @Test func sqliteCommitsWithSynchronousFULLByDefault() async throws {
        let path = temporaryDirectory().appendingPathComponent("jobs.sqlite").path
        #expect(try await SQLiteJobStore(path: path).synchronousSetting() == 2)
        let relaxed = temporaryDirectory().appendingPathComponent("normal.sqlite").path
        #expect(try await SQLiteJobStore(path: relaxed, durability: .normal).synchronousSetting() == 1)
    }

    @Test func sqliteJobsSurviveReopeningTheFile() async throws {
        let clock = ManualClock()
        let path = temporaryDirectory().appendingPathComponent("jobs.sqlite").path
        let now: @Sendable () -> Duration = { .seconds(1_767_225_600) + clock.now.offset }
        var store: SQLiteJobStore? = try SQLiteJobStore(path: path, now: now)
        let id = try await store!.enqueue([validated(.audio(prompt: "keep me"))])[0].jobID
        let job = try await store!.lease(limit: 1, owner: "w", duration: .seconds(60), excludingUsers: [])[0]
        try await store!.beginAttempt(job.lease, provider: "p", reserving: .cents(5))
        try await store!.recordSubmission(job.lease, taskID: "task-9")
        store = nil
        // The process "crashed" holding the lease; a new one opens the file and rescues the job.
        clock.advance(by: .seconds(61))
        let reopened = try SQLiteJobStore(path: path, now: now)
        #expect(try await reopened.rescueExpiredLeases() == 1)
        let resumed = try await reopened.lease(limit: 1, owner: "w2", duration: .seconds(60), excludingUsers: [])[0]
        #expect(resumed.record.id == id)
        #expect(resumed.record.providerTaskID == "task-9" && resumed.record.attempts == 1)
    }

    /// The SQLite store keeps the requests it decoded: a job another process changed is read as it is now, never
    /// as this store last saw it, and a transition on it starts from the changed job.
    @Test func sqliteReadsARecordAnotherStoreChangedAsItIsNow() async throws {
        let clock = ManualClock()
        let path = temporaryDirectory().appendingPathComponent("jobs.sqlite").path
        let now: @Sendable () -> Duration = { .seconds(1_767_225_600) + clock.now.offset }
        let mine = try SQLiteJobStore(path: path, now: now)
        let other = try SQLiteJobStore(path: path, now: now)
        let id = try await mine.enqueue([validated(.audio(prompt: "shared"))])[0].jobID
        #expect(try await mine.job(id)?.state == .available)
        // The other store (another process on the file) leases the job and starts its call.
        let job = try await other.lease(limit: 1, owner: "other", duration: .seconds(60), excludingUsers: [])[0]
        try await other.beginAttempt(job.lease, provider: "p", reserving: .cents(5), idempotentSubmission: true)
        let seen = try #require(try await mine.job(id))
        #expect(seen.state == .running && seen.attempts == 1 && seen.ledger.pending == .cents(5))
        #expect(try await mine.jobs(matching: JobQuery(states: [.running])).map(\.id) == [id])
        // This store's transitions start from the stored record too: its rescue, once the other's lease has
        // expired, gives back the other's reservation (its call was cut off before a task id, under a key).
        clock.advance(by: .seconds(61))
        #expect(try await mine.rescueExpiredLeases() == 1)
        let rescued = try #require(try await mine.job(id))
        #expect(rescued.state == .available && rescued.ledger.pending == .zero && rescued.ledger.released == .cents(5))
    }

    /// A transition is fenced by the row as stored, not by what this store last wrote: a lease that expired and that
    /// another process rescued and took is refused, although this store last saw it held.
    @Test func sqliteRefusesALeaseAnotherStoreTookOverThoughItLastSawItHeld() async throws {
        let clock = ManualClock()
        let path = temporaryDirectory().appendingPathComponent("jobs.sqlite").path
        let now: @Sendable () -> Duration = { .seconds(1_767_225_600) + clock.now.offset }
        let mine = try SQLiteJobStore(path: path, now: now)
        let other = try SQLiteJobStore(path: path, now: now)
        let id = try await mine.enqueue([validated(.audio(prompt: "fenced"))])[0].jobID
        let stale = try await mine.lease(limit: 1, owner: "mine", duration: .seconds(60), excludingUsers: [])[0]
        clock.advance(by: .seconds(61))
        #expect(try await other.rescueExpiredLeases() == 1)
        let taken = try await other.lease(limit: 1, owner: "other", duration: .seconds(60), excludingUsers: [])[0]
        await #expect(throws: StoreError.self) { try await mine.recordSubmission(stale.lease, taskID: "stale") }
        try await other.recordSubmission(taken.lease, taskID: "fresh")
        let record = try #require(try await mine.job(id))
        #expect(record.providerTaskID == "fresh" && record.leaseOwner == "other")
    }

    @Test(arguments: factories)
    func theLedgerMovesWithEveryTransitionAndBalances(_ factory: StoreFactory) async throws {
        let clock = ManualClock()
        let store = try await factory.make(clock)
        _ = try await store.enqueue((0..<4).map { validated(.audio(prompt: "line \($0)"), id: "r\($0)") })
        let jobs = try await lease(store, 4)
        for job in jobs { try await store.beginAttempt(job.lease, provider: "p", reserving: .cents(10)) }
        // Charged under the estimate, over the estimate (topped up), a failure, and a submitted task given back.
        var cheaper = outcome
        cheaper.cost = .cents(7)
        try await store.complete(jobs[0].lease, outcome: cheaper)
        var dearer = outcome
        dearer.cost = .cents(12)
        try await store.complete(jobs[1].lease, outcome: dearer)
        try await store.deadLetter(jobs[2].lease, error: GenerationError(.terminal, "no"))
        try await store.recordSubmission(jobs[3].lease, taskID: "t")
        try await store.release(jobs[3].lease)
        var totals = try await store.ledgerTotals()
        #expect(totals.charged == .cents(19))
        #expect(totals.released == .cents(13))
        #expect(totals.pending == .cents(10), "a submitted task may still charge")
        #expect(totals.reserved == .cents(42))
        #expect(totals.balances)
        // The resumed task completes: nothing pending, reserved = charged + released.
        let resumed = try await lease(store)[0]
        try await store.complete(resumed.lease, outcome: outcome)
        totals = try await store.ledgerTotals()
        #expect(totals.pending == .zero)
        #expect(totals.reserved == totals.charged + totals.released)
    }

    /// A job whose provider call was under way each time its process stopped is dead-lettered once it has
    /// been taken back more than `maxCrashes` times (counted across restarts, in the record); a job that only
    /// waited in the stopped process's backlog is not blamed, and `requeue` forgives.
    @Test(arguments: factories)
    func aJobWhoseCallKeepsBringingTheProcessDownIsDeadLetteredAfterMaxCrashes(_ factory: StoreFactory) async throws {
        let store = try await factory.make(ManualClock())
        let ids = try await store.enqueue([validated(.audio(prompt: "poison"), id: "p"), validated(.audio(prompt: "bystander"), id: "b")])
            .map(\.jobID)
        for crash in 1...3 {
            let jobs = try await lease(store, 2)
            #expect(jobs.count == 2, "crash \(crash): both jobs come back")
            let poison = try #require(jobs.first { $0.record.id == ids[0] })
            // Idempotent by key: a cut-off call is made again, so only the crash count can end the loop.
            try await store.beginAttempt(poison.lease, provider: "p", reserving: .cents(1), idempotentSubmission: true)
            #expect(try await store.rescueOrphanedLeases(maxCrashes: 3) == 2)
            #expect(try await store.job(ids[0])?.crashes == crash)
            #expect(try await store.job(ids[0])?.state == .available)
            #expect(try await store.job(ids[1])?.crashes == nil, "the bystander held a lease but made no call")
        }
        let jobs = try await lease(store, 2)
        let poison = try #require(jobs.first { $0.record.id == ids[0] })
        try await store.beginAttempt(poison.lease, provider: "p", reserving: .cents(1), idempotentSubmission: true)
        _ = try await store.rescueOrphanedLeases(maxCrashes: 3)
        let dead = try #require(try await store.job(ids[0]))
        // Set aside for a person: the call was under way, so the provider may bill it (the reservation stays).
        #expect(dead.state == .needsReconciliation)
        #expect(dead.crashes == 4)
        #expect(dead.errors.last?.providerCode == "crash_loop")
        #expect(dead.errors.last?.message.contains("stopped 4 times") == true, "\(dead.errors.last?.message ?? "")")
        #expect(dead.ledger.balances && dead.ledger.pending == .cents(1))
        #expect(try await store.job(ids[1])?.state == .available)
        try await store.requeue(ids[0])
        #expect(try await store.job(ids[0])?.crashes == nil)
    }

    /// A resumed task that is being polled counts as a call under way (the engine records its task again as it
    /// resumes); a rescue of a job that finished its call and went back does not.
    @Test(arguments: factories)
    func aResumedTaskCountsAsACallUnderWayAndAFinishedCallDoesNot(_ factory: StoreFactory) async throws {
        let store = try await factory.make(ManualClock())
        let id = try await store.enqueue([validated(.video(prompt: "v"), id: "v")])[0].jobID
        var job = try #require(try await lease(store, 1).first)
        try await store.beginAttempt(job.lease, provider: "p", reserving: .cents(1))
        try await store.recordSubmission(job.lease, taskID: "t1")
        _ = try await store.rescueOrphanedLeases(maxCrashes: 5)
        #expect(try await store.job(id)?.crashes == 1)
        job = try #require(try await lease(store, 1).first)
        #expect(job.record.recoveryPoint == .submitted && job.record.inCall == nil)
        _ = try await store.rescueOrphanedLeases(maxCrashes: 5)
        #expect(try await store.job(id)?.crashes == 1, "leased, not yet polled: not blamed")
        job = try #require(try await lease(store, 1).first)
        try await store.recordSubmission(job.lease, taskID: "t1")
        _ = try await store.rescueOrphanedLeases(maxCrashes: 5)
        #expect(try await store.job(id)?.crashes == 2)
    }

    @Test(arguments: factories)
    func orphanedLeasesAreRescuedAtOnceAndFinishedJobsPurged(_ factory: StoreFactory) async throws {
        let store = try await factory.make(ManualClock())
        let ids = try await store.enqueue((0..<3).map { validated(.audio(prompt: "o\($0)"), id: "o\($0)") }).map(
            \.jobID
        )
        let jobs = try await lease(store, 3)
        try await store.beginAttempt(jobs[0].lease, provider: "p", reserving: .cents(1))
        try await store.beginAttempt(jobs[1].lease, provider: "p", reserving: .cents(1))
        try await store.recordSubmission(jobs[1].lease, taskID: "t1")
        #expect(try await store.rescueOrphanedLeases() == 3, "not expired, but orphaned")
        #expect(try await store.job(ids[0])?.state == .needsReconciliation)
        #expect(try await store.job(ids[1])?.state == .available)
        #expect(try await store.job(ids[2])?.state == .available)
        #expect(try await store.purge(ids) == 1, "only finished jobs are purged")
        #expect(try await store.job(ids[0]) == nil)
    }

    @Test(arguments: factories)
    func aCutOffCallToAnIdempotentProviderIsMadeAgainWithTheSameKey(_ factory: StoreFactory) async throws {
        let clock = ManualClock()
        let store = try await factory.make(clock)
        let id = try await store.enqueue([validated(.audio(prompt: "x"))])[0].jobID
        let job = try await lease(store)[0]
        try await store.beginAttempt(job.lease, provider: "p", reserving: .cents(4), idempotentSubmission: true)
        clock.advance(by: .seconds(61))
        #expect(try await store.rescueExpiredLeases() == 1)
        let record = try #require(try await store.job(id))
        #expect(record.state == .available)
        #expect(record.attempts == 0, "the next call is attempt 1 again, so its idempotency key is the same")
        #expect(record.ledger.pending == .zero && record.ledger.released == .cents(4))
    }
}

/// A record's outcome is kept boxed, and encodes exactly as a plain optional: absent when nil, so records
/// written before and after read the same.
@Test func aRecordWithoutAnOutcomeEncodesWithoutTheKeyAndReadsBack() throws {
    let request = try RequestValidator(configuration: .init()).validate(.audio(prompt: "hi"), fallbackID: "r1")
    var record = JobRecord(id: JobID("job-1"), request: request, sequence: 1, now: .zero)
    let plain = String(decoding: try JSONEncoder().encode(record), as: UTF8.self)
    #expect(!plain.contains("\"outcome\""))
    #expect(try JSONDecoder().decode(JobRecord.self, from: Data(plain.utf8)) == record)
    let artifact = Artifact(
        url: URL(fileURLWithPath: "/tmp/a.wav"),
        format: .wav,
        contentType: "audio/wav",
        byteCount: 10,
        sha256: String(repeating: "0", count: 64),
        duration: .seconds(1),
        provider: "p"
    )
    record.outcome = JobOutcome(artifact: artifact, provider: "p", cost: .cents(1))
    let full = try JSONEncoder().encode(record)
    #expect(String(decoding: full, as: UTF8.self).contains("\"outcome\""))
    #expect(try JSONDecoder().decode(JobRecord.self, from: full) == record)
}
