import Foundation
import Pargen
import PargenPostgres
import PargenTesting
import PostgresNIO
import Synchronization
import Testing

/// What only a store shared by several processes must show: claims that race, migrations that race, the
/// database's clock, wake-ups and the housekeeping leader. (The contract every store keeps is in
/// ``JobStoreConformanceTests``, which runs on PostgreSQL too.)
@Suite struct PostgresStoreTests {
    @Test func workersClaimingTogetherNeverTakeAJobTwice() async throws {
        let schema = TestPostgres.freshSchema()
        let store = try await TestPostgres.store(schema: schema)
        var requests: [ValidatedRequest] = []
        for i in 0..<600 {
            requests.append(validated(.audio(prompt: "p\(i)", user: "u\(i % 13)"), id: "r\(i)"))
        }
        _ = try await store.enqueue(requests)
        // Eight workers, each with its own store object (as separate processes have), claim until nothing is left.
        let claims = try await withThrowingTaskGroup(of: [JobID].self) { group in
            for worker in 0..<8 {
                group.addTask {
                    let mine = try await TestPostgres.store(schema: schema)
                    var ids: [JobID] = []
                    while true {
                        let leased = try await mine.lease(
                            limit: 7,
                            owner: "w\(worker)",
                            duration: .seconds(60),
                            excludingUsers: []
                        )
                        if leased.isEmpty { break }
                        ids += leased.map(\.record.id)
                    }
                    return ids
                }
            }
            var all: [[JobID]] = []
            for try await ids in group { all.append(ids) }
            return all
        }
        let every = claims.flatMap { $0 }
        #expect(every.count == 600)
        #expect(Set(every).count == 600)
        #expect(claims.filter { !$0.isEmpty }.count > 1, "the claims were spread over the workers")
        #expect(try await store.counts() == [.running: 600])
    }

    /// A budget is kept by the store's ledger, so two workers on one campaign spend it together, exactly: 30 lines
    /// at $0.50 against a $5 campaign budget buy 10 lines between them, never more, whichever worker buys them.
    @Test func twoWorkersShareOneBudgetExactly() async throws {
        let schema = TestPostgres.freshSchema()
        var configuration = PargenConfiguration()
        configuration.rateLimits = .unlimited
        configuration.caching.enabled = false
        configuration.budgets.perCampaign["launch"] = .dollars(5)
        configuration.retry.baseDelay = .milliseconds(20)
        configuration.retry.maxDelay = .milliseconds(200)
        // Two calls at a time each, so that neither worker takes the whole campaign alone.
        configuration.resources.maxConcurrentJobs = 2
        var workers: [ParallelGenerator] = []
        // No call ends before both workers have one under way: both spend from the budget, however the machine
        // schedules them.
        let started = Locked(Set<Int>())
        for index in 0..<2 {
            // Each with its own store object, as separate processes have.
            workers.append(
                ParallelGenerator(
                    configuration: configuration,
                    providers: [
                        GatedProvider(
                            base: ScriptedProvider(name: "p", pricing: ProviderPricing(perRequest: .cents(50))) { _, _ in
                                .succeed(latency: .milliseconds(20))
                            },
                            open: {
                                started.withLock { _ = $0.insert(index) }
                                return started.value.count == 2
                            }
                        )
                    ],
                    store: try await TestPostgres.store(schema: schema),
                    outputDirectory: temporaryDirectory(),
                    clock: .continuous
                )
            )
        }
        for worker in workers { try await worker.start() }
        // Each worker brings half the campaign; both take from the one queue.
        var ids = try await workers[0].submit((0..<15).map { .audio(prompt: "line \($0)", campaign: "launch") })
        ids += try await workers[1].submit((15..<30).map { .audio(prompt: "line \($0)", campaign: "launch") })
        let lines = ids.count
        let store = try await TestPostgres.store(schema: schema)
        // Every line ends: bought, or dead-lettered once nothing pending can free the budget.
        try await waitUntil(seconds: 60) {
            let counts = try await store.counts()
            return counts[.succeeded, default: 0] + counts[.deadLettered, default: 0] == lines
        }
        for worker in workers { try await worker.stop() }
        let counts = try await store.counts()
        #expect(counts[.succeeded, default: 0] == 10, "\(counts)")
        let ledger = try await store.ledger(in: .campaign("launch"))
        #expect(ledger.charged == .dollars(5) && ledger.pending == .zero && ledger.balances, "\(ledger)")
        let bought = workers.map { $0.currentSpend() }
        #expect(bought.reduce(.zero, +) == .dollars(5), "what the two workers paid: \(bought)")
        #expect(bought.allSatisfy { $0 > .zero }, "both workers bought lines: \(bought)")
    }

    /// A budget limit set on one worker (as `PUT /v1/budgets` on one server does) holds on every worker of the
    /// store within a second: the other worker, whose configuration has no budget, buys two $0.50 lines against
    /// the $1 the first one set.
    @Test func aBudgetLimitSetOnOneWorkerHoldsOnEveryWorker() async throws {
        let schema = TestPostgres.freshSchema()
        var configuration = PargenConfiguration()
        configuration.rateLimits = .unlimited
        configuration.caching.enabled = false
        var workers: [ParallelGenerator] = []
        for _ in 0..<2 {
            workers.append(
                ParallelGenerator(
                    configuration: configuration,
                    providers: [ScriptedProvider(name: "p", pricing: ProviderPricing(perRequest: .cents(50)))],
                    store: try await TestPostgres.store(schema: schema),
                    outputDirectory: temporaryDirectory(),
                    clock: .continuous
                )
            )
        }
        for worker in workers { try await worker.start() }
        // Both are running (each read the store's limits as it started: none) before the limit is set.
        for worker in workers { #expect(try await worker.generate([.audio(prompt: "warm-up")]).allSatisfy { $0.succeeded }) }
        try await workers[0].setBudgetLimit(.dollars(1), for: .campaign("launch"))
        let follower = workers[1]
        try await waitUntil(seconds: 30) { follower.costMonitor.limit(of: .campaign("launch")) == .dollars(1) }
        // Only the second worker runs the lines: what it applies is what it read from the store.
        try await workers[0].stop()
        let results = try await workers[1].generate((0..<4).map { .audio(prompt: "line \($0)", campaign: "launch") })
        try await workers[1].stop()
        #expect(results.filter(\.succeeded).count == 2, "\(results.map { $0.error.map { "\($0.code)" } ?? "ok" })")
        #expect(results.filter { $0.error?.code == .budgetExceeded }.count == 2)
        let ledger = try await TestPostgres.store(schema: schema).ledger(in: .campaign("launch"))
        #expect(ledger.charged == .dollars(1) && ledger.balances)
    }

    /// Workers look at the queue least-served user first: a user with more calls admitted in the last minute (by
    /// any worker) comes after users with fewer, whatever the jobs' order. (Each worker also takes its users in
    /// turn; this spreads the turns across workers, so that no user of a busy project is left last in every
    /// worker's turn.)
    @Test func theQueueIsSeenLeastServedUserFirst() async throws {
        let schema = TestPostgres.freshSchema()
        let store = try await TestPostgres.store(schema: schema)
        // ann's jobs are older than ben's.
        let requests = (0..<3).map { validated(.audio(prompt: "a\($0)", user: "ann"), id: "a\($0)") }
            + (0..<3).map { validated(.audio(prompt: "b\($0)", user: "ben"), id: "b\($0)") }
        _ = try await store.enqueue(requests)
        func firstUsers() async throws -> [String] {
            try await store.peek(limit: 3, excludingUsers: [], excludingProjects: [], excludingJobs: [], kinds: [.audio])
                .map(\.request.user)
        }
        #expect(try await firstUsers() == ["ann", "ben", "ann"], "in turn, oldest first")
        // Two calls of ann's admitted in the last minute (by another worker, say).
        let client = try TestPostgres.requireClient()
        let table = "\"" + schema + "\".admissions"
        let now = "\"" + schema + "\".now_ns()"
        for job in ["x1", "x2"] {
            try await client.query(
                """
                INSERT INTO \(unescaped: table) (job_id, worker, provider, user_name, project, holds_slot, submits, admitted_at)
                VALUES (\(job), 'w', 'p', 'ann', 'default', false, true, \(unescaped: now))
                """
            )
        }
        #expect(try await firstUsers() == ["ben", "ben", "ann"], "ben is two calls behind")
    }

    @Test func processesStartingTogetherApplyEachMigrationOnce() async throws {
        let schema = TestPostgres.freshSchema()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<6 { group.addTask { _ = try await TestPostgres.store(schema: schema) } }
            try await group.waitForAll()
        }
        let client = try TestPostgres.requireClient()
        var versions: [Int] = []
        for try await version in try await client.query(
            "SELECT version FROM \(unescaped: "\"" + schema + "\"").schema_migrations ORDER BY version"
        ).decode(Int.self) {
            versions.append(version)
        }
        #expect(versions == [1, 2, 3, 4, 5, 6, 7, 8])
    }

    /// A schema written before the scopes' totals (version 6) gets them from its jobs when a newer worker opens
    /// it, and keeps them from then on.
    @Test func aSchemaFromBeforeTheTotalsGetsThemFromItsJobs() async throws {
        let schema = TestPostgres.freshSchema()
        let quoted = "\"" + schema + "\""
        let old = try await TestPostgres.store(schema: schema)
        _ = try await old.enqueue(["a", "b", "c"].map { validated(.audio(prompt: $0, project: "p", campaign: "k"), id: $0) })
        let leased = try await old.lease(limit: 3, owner: "w", duration: .seconds(60), excludingUsers: [])
        for job in leased { try await old.beginAttempt(job.lease, provider: "x", reserving: .dollars(2)) }
        var outcome = JobOutcome.test
        outcome.cost = .dollars(1)
        try await old.complete(leased[0].lease, outcome: outcome)
        try await old.complete(leased[1].lease, outcome: outcome)
        let expected = try await old.ledger(in: .project("p"))
        #expect(expected.charged == .dollars(2) && expected.pending == .dollars(2), "\(expected)")
        // Back to version 6, as that version left it.
        let client = try TestPostgres.requireClient()
        for statement in [
            "DROP TABLE \(quoted).scope_money, \(quoted).money_changes",
            "DROP FUNCTION \(quoted).record_money_change() CASCADE",
            "CREATE INDEX jobs_project_money ON \(quoted).jobs (project) INCLUDE (charged, pending)",
            "CREATE INDEX jobs_campaign_money ON \(quoted).jobs (campaign) INCLUDE (charged, pending)",
            "DELETE FROM \(quoted).schema_migrations WHERE version = 7",
        ] {
            _ = try await client.query(PostgresQuery(unsafeSQL: statement))
        }
        let new = try await TestPostgres.store(schema: schema)
        for scope in [BudgetScope.global, .project("p"), .campaign("k")] {
            #expect(try await new.ledger(in: scope) == expected, "\(scope)")
        }
        // The trigger is back: the third job's charge reaches the totals.
        try await new.complete(leased[2].lease, outcome: outcome)
        #expect(try await new.ledger(in: .project("p")).charged == .dollars(3))
        #expect(try await new.foldMoneyChanges() == 1)
        #expect(try await new.ledger(in: .global).charged == .dollars(3))
    }

    @Test func leasesExpireByTheDatabaseClock() async throws {
        // No injected clock: every time is the server's.
        let store = try await TestPostgres.store()
        _ = try await store.enqueue([
            validated(.audio(prompt: "a"), id: "a"), validated(.audio(prompt: "b"), id: "b"),
        ])
        let short = try #require(try await store.lease(limit: 1, owner: "w", duration: .zero, excludingUsers: []).first)
        let long = try #require(try await store.lease(limit: 1, owner: "w", duration: .seconds(3600), excludingUsers: []).first)
        #expect(try await store.rescueExpiredLeases() == 1)
        #expect(try await store.job(short.record.id)?.state == .available)
        #expect(try await store.job(long.record.id)?.state == .running)
        // The expired holder is fenced out; the live one renews.
        await #expect(throws: StoreError(.leaseLost, "")) { try await store.complete(short.lease, outcome: .test) }
        let renewed = try await store.heartbeat(long.lease, duration: .seconds(7200))
        #expect(renewed.expiresAt > long.lease.expiresAt)
    }

    /// A provider's shared window frees a window after the provider answered, not a window after the job's
    /// completion was written: a worker that took 2 s to save the answer says so, and the next call goes 2 s
    /// sooner than it would otherwise, and not sooner than the answer allows.
    @Test func aWindowPlaceIsDatedByTheAnswerNotByTheWrite() async throws {
        let clock = ManualClock()
        let store = try await TestPostgres.store(clock: clock)
        var limits = PargenConfiguration.RateLimits()
        limits.enabled = false
        let call = SharedCall(
            provider: "p", user: "u", project: "j", submits: true, holdsSlot: false,
            quota: ProviderQuota(requestsPerMinute: 1, window: .seconds(10), margin: .zero), limits: limits
        )
        let ids = try await store.enqueue([
            validated(.audio(prompt: "a"), id: "a"), validated(.audio(prompt: "b"), id: "b"),
        ]).map(\.jobID)
        guard case .claimed(let first) = try await store.claim(ids[0], owner: "w", duration: .seconds(60), for: call) else {
            Issue.record("the first call is admitted")
            return
        }
        try await store.beginAttempt(first.lease, provider: "p", reserving: .zero)
        // Answered at 1 s, written at 3 s.
        clock.advance(by: .seconds(3))
        try await store.complete(first.lease, outcome: .test, answeredAgo: .seconds(2))
        clock.advance(by: .milliseconds(7_900))  // 10.9 s: within a window of the answer
        guard case .wait(let wait, let limit) = try await store.claim(ids[1], owner: "w", duration: .seconds(60), for: call) else {
            Issue.record("the window is full until 11 s")
            return
        }
        #expect(limit == .providerWindow)
        #expect(wait == .milliseconds(100), "room comes a window after the answer (11 s), not after the write (13 s)")
        clock.advance(by: .milliseconds(100))
        guard case .claimed = try await store.claim(ids[1], owner: "w", duration: .seconds(60), for: call) else {
            Issue.record("the second call is admitted at 11 s")
            return
        }
    }

    /// The claim's decisions on PostgreSQL, at explicit times: the project bucket admits its capacity and then one
    /// call per emission interval (its arrival time moves with each admission), and a provider's cooldown holds
    /// back a call that counts nothing else.
    @Test func claimsFollowTheBucketAndTheCooldown() async throws {
        let clock = ManualClock()
        let store = try await TestPostgres.store(clock: clock)
        var limits = PargenConfiguration.RateLimits()
        limits.perUserRequestsPerMinute = 1_000
        limits.perProjectRequestsPerMinute = 60
        limits.tokenBucketCapacity = 2
        limits.maxBurst = 1_000
        let bucketed = SharedCall(
            provider: "p", user: "u", project: "j", submits: true, holdsSlot: false, quota: ProviderQuota(), limits: limits
        )
        var off = limits
        off.enabled = false
        let plain = SharedCall(provider: "q", user: "u", project: "j", submits: true, holdsSlot: false, quota: ProviderQuota(), limits: off)
        #expect(!plain.hasSharedLimits)
        let ids = try await store.enqueue((0..<5).map { validated(.audio(prompt: "\($0)"), id: "\($0)") }).map(\.jobID)
        func claim(_ index: Int, _ call: SharedCall) async throws -> ClaimDecision {
            try await store.claim(ids[index], owner: "w", duration: .seconds(60), for: call)
        }
        guard case .claimed = try await claim(0, bucketed), case .claimed = try await claim(1, bucketed) else {
            Issue.record("the bucket's capacity is admitted at once")
            return
        }
        #expect(try await claim(2, bucketed) == .wait(.seconds(1), limit: .projectBucket))
        clock.advance(by: .seconds(1))
        guard case .claimed = try await claim(2, bucketed) else {
            Issue.record("a call is admitted an emission interval later")
            return
        }
        #expect(try await claim(3, bucketed) == .wait(.seconds(1), limit: .projectBucket))
        // A provider's cooldown, from any worker, holds back even a call that counts nothing.
        try await store.coolDown(provider: "q", for: .seconds(5))
        #expect(try await claim(4, plain) == .wait(.seconds(5), limit: .providerCooldown))
        clock.advance(by: .seconds(5))
        guard case .claimed = try await claim(4, plain) else {
            Issue.record("the cooldown ends")
            return
        }
    }

    /// Several claims in one transaction decide as the same claims one after the other would: the bucket admits
    /// its capacity, the next call waits for it, a job another worker holds is gone; what was admitted is counted
    /// once, and a batch whose COMMIT reply is lost comes back whole when it is tried again.
    @Test func aBatchOfClaimsDecidesAsClaimsOneAfterTheOther() async throws {
        let clock = ManualClock()
        let schema = TestPostgres.freshSchema()
        let store = try await TestPostgres.store(clock: clock, schema: schema)
        var limits = PargenConfiguration.RateLimits()
        limits.perUserRequestsPerMinute = 1_000
        limits.perProjectRequestsPerMinute = 60
        limits.tokenBucketCapacity = 2
        limits.maxBurst = 1_000
        func call(_ project: String) -> SharedCall {
            SharedCall(provider: "p", user: "u", project: project, submits: true, holdsSlot: false, quota: ProviderQuota(), limits: limits)
        }
        let ids = try await store.enqueue((0..<5).map { validated(.audio(prompt: "\($0)"), id: "\($0)") }).map(\.jobID)
        guard case .claimed = try await store.claim(ids[4], owner: "other", duration: .seconds(60), for: nil) else {
            Issue.record("another worker holds job 4")
            return
        }
        store.loseCommitReplies(1)
        let decisions = try await store.claim(
            [
                ClaimRequest(id: ids[0], call: call("j")), ClaimRequest(id: ids[1], call: call("j")),
                ClaimRequest(id: ids[2], call: call("j")), ClaimRequest(id: ids[3], call: call("k")),
                ClaimRequest(id: ids[4], call: call("k")),
            ],
            owner: "w",
            duration: .seconds(60)
        )
        #expect(decisions.count == 5)
        let claimed = decisions.compactMap { if case .claimed(let job) = $0 { job.record.id } else { nil } }
        #expect(claimed == [ids[0], ids[1], ids[3]])
        #expect(decisions[2] == .wait(.seconds(1), limit: .projectBucket))
        #expect(decisions[4] == .gone)
        // The leases returned are the ones the store holds.
        for case .claimed(let job) in decisions {
            try await store.beginAttempt(job.lease, provider: "p", reserving: .zero)
        }
        let client = try TestPostgres.requireClient()
        var admitted: [String] = []
        for try await id in try await client.query(
            "SELECT job_id FROM \(unescaped: "\"" + schema + "\"").admissions ORDER BY job_id"
        ).decode(String.self) {
            admitted.append(id)
        }
        #expect(admitted == claimed.map(\.rawValue).sorted(), "each admitted call counted once")
        // The bucket moved twice: the next call of project j waits its emission interval from now.
        clock.advance(by: .seconds(1))
        guard case .claimed = try await store.claim(ids[2], owner: "w", duration: .seconds(60), for: call("j")) else {
            Issue.record("project j's bucket has room a second later")
            return
        }
    }

    /// A claim that committed while its reply was lost (a dropped connection, a query deadline) is tried again,
    /// and the try finds its own claim: the job is this worker's, counted once in the shared limits, instead of
    /// being reported gone while it sits in the worker's name until its lease expires.
    @Test func aClaimWhoseCommitReplyIsLostIsStillAClaim() async throws {
        let schema = TestPostgres.freshSchema()
        let store = try await TestPostgres.store(schema: schema)
        var limits = PargenConfiguration.RateLimits()
        limits.enabled = false
        let call = SharedCall(
            provider: "p", user: "u", project: "j", submits: true, holdsSlot: false,
            quota: ProviderQuota(requestsPerMinute: 10, window: .seconds(10)), limits: limits
        )
        let id = try await store.enqueue([validated(.audio(prompt: "a"), id: "a")])[0].jobID
        store.loseCommitReplies(1)
        guard case .claimed(let job) = try await store.claim(id, owner: "w", duration: .seconds(60), for: call) else {
            Issue.record("the claim that committed is this worker's")
            return
        }
        // The lease it returns is the one the store holds: the job's next transition goes through.
        try await store.beginAttempt(job.lease, provider: "p", reserving: .zero)
        try await store.complete(job.lease, outcome: .test)
        #expect(try await store.job(id)?.state == .succeeded)
        let client = try TestPostgres.requireClient()
        var admissions = 0
        for try await count in try await client.query(
            "SELECT count(*) FROM \(unescaped: "\"" + schema + "\"").admissions WHERE job_id = \(id.rawValue)"
        ).decode(Int.self) {
            admissions = count
        }
        #expect(admissions == 1, "counted once in the provider's window")
    }

    /// A holder cannot renew while the server is away, so time the server was down does not use up a lease: after
    /// a restart, a lease that ran out is taken back only once the server has been up for the lease's length
    /// (the holder renews within that, a dead holder does not). A lease that ran out with the server up goes back
    /// as before.
    @Test func aLeaseIsNotTakenBackUntilItsHolderHasHadTheServerForALease() async throws {
        let clock = ManualClock()
        let store = try await TestPostgres.store(clock: clock)
        _ = try await store.enqueue([
            validated(.audio(prompt: "a"), id: "a"), validated(.audio(prompt: "b"), id: "b"),
        ])
        let early = try #require(try await store.lease(limit: 1, owner: "w", duration: .seconds(6), excludingUsers: []).first)
        let zero = early.lease.expiresAt - .seconds(6)
        clock.advance(by: .seconds(1))
        let late = try #require(try await store.lease(limit: 1, owner: "w", duration: .seconds(6), excludingUsers: []).first)
        // The early call was on the wire: taken back, it would wait for a person.
        try await store.beginAttempt(early.lease, provider: "p", reserving: .cents(5))
        // The server is away from 2 s to 5 s; both leases run out while it is (at 6 s and 7 s) or just after.
        store.serverStarted(at: zero + .seconds(5))
        clock.advance(by: .seconds(9))  // 10 s: up for 5 s, less than a lease
        #expect(try await store.rescueExpiredLeases() == 0, "the holders have not had a lease's length to renew")
        // The late holder renews in time; the early one has died.
        let renewed = try await store.heartbeat(late.lease, duration: .seconds(6))
        clock.advance(by: .seconds(1))  // 11 s: up for a lease
        #expect(try await store.rescueExpiredLeases() == 1)
        #expect(try await store.job(early.record.id)?.state == .needsReconciliation)
        #expect(try await store.job(late.record.id)?.state == .running)
        // With the server up, a lease that runs out goes back when it does.
        clock.advance(by: .seconds(5))  // 16 s: the renewed lease ran out at 16 s
        #expect(renewed.expiresAt == zero + .seconds(16))
        #expect(try await store.rescueExpiredLeases() == 1)
        #expect(try await store.job(late.record.id)?.state == .available)
    }

    /// A claim that a stopping worker stopped waiting for before it began to commit rolls back: the job stays
    /// available, and the stop has nothing to wait for (a red run: a stop waited 6.7 s for a claim that hung
    /// after a restart).
    @Test func aClaimAbandonedBeforeItsCommitRollsBack() async throws {
        let store = try await TestPostgres.store()
        let id = try #require(try await store.enqueue([validated(.audio(prompt: "a"), id: "a")]).first?.jobID)
        store.delayCommits(by: .milliseconds(800))
        let claiming = Task { try await store.claim(id, owner: "w", duration: .seconds(60), for: nil) }
        // The stop: the claim's caller stops waiting at once, before the transaction's COMMIT.
        claiming.cancel()
        _ = try? await claiming.value
        #expect(await store.waitForAbandonedCommits(upTo: .zero), "nothing abandoned had begun to commit")
        // The transaction reaches its COMMIT after 800 ms and rolls back instead; its row locks go with it.
        try await Task.sleep(for: .seconds(1))
        store.delayCommits(by: nil)
        try await waitUntil(seconds: 10) {
            if case .claimed = try await store.claim(id, owner: "v", duration: .seconds(60), for: nil) { return true }
            return false
        }
        #expect(try await store.job(id)?.leaseOwner == "v", "the abandoned claim never committed")
    }

    /// A claim whose COMMIT was sent when its caller stopped waiting may still commit into the stopping worker's
    /// name: the stop waits for it before it takes back the leases left in that name, so the late claim is taken
    /// back too (a red run: a worker stopped just after a restart left such leases held).
    @Test func aClaimAbandonedWhileItCommitsIsWaitedForSoTheStopTakesItsLeaseBack() async throws {
        let store = try await TestPostgres.store()
        let id = try #require(try await store.enqueue([validated(.audio(prompt: "a"), id: "a")]).first?.jobID)
        // The reply's delay is long beside the time this test takes to see the commit and cancel (a loaded
        // fresh-clone run once took 745 ms of an 800 ms delay for that, leaving the wait 55 ms).
        store.delayCommitReplies(by: .seconds(5))
        let claiming = Task { try await store.claim(id, owner: "w", duration: .seconds(60), for: nil) }
        // The COMMIT is sent (the job is in "w"'s name), and its reply is slow: the caller stops waiting then.
        try await waitUntil(seconds: 10) { try await store.job(id)?.leaseOwner == "w" }
        claiming.cancel()
        _ = try? await claiming.value
        let waited = ContinuousClock.now
        #expect(await store.waitForAbandonedCommits(upTo: .seconds(20)))
        #expect(ContinuousClock.now - waited >= .milliseconds(300), "the wait lasted until the late reply")
        store.delayCommitReplies(by: nil)
        #expect(try await store.rescueLeases(heldBy: "w", maxCrashes: 5) == 1)
        #expect(try await store.job(id)?.state == .available)
    }

    /// A job's transition whose reply was lost after it committed is tried again by the store, and that try
    /// finds the change already made: an attempt begun is counted once, and a completion is not taken for a lost
    /// lease (which would have the worker say its result was not recorded).
    @Test func aTransitionWhoseCommitReplyIsLostIsAppliedOnce() async throws {
        let store = try await TestPostgres.store()
        _ = try await store.enqueue([validated(.audio(prompt: "a"), id: "a")])
        let leased = try #require(try await store.lease(limit: 1, owner: "w", duration: .seconds(60), excludingUsers: []).first)
        store.loseCommitReplies(1)
        try await store.beginAttempt(leased.lease, provider: "p", reserving: .cents(5))
        let begun = try #require(try await store.job(leased.record.id))
        #expect(begun.attempts == 1)
        #expect(begun.ledger.reserved == .cents(5))
        store.loseCommitReplies(1)
        try await store.complete(leased.lease, outcome: .test)
        #expect(try await store.job(leased.record.id)?.state == .succeeded)

        // An attempt begun within a budget is reserved once, and the retry is not refused by its own reservation.
        _ = try await store.enqueue([validated(.audio(prompt: "b", project: "r"), id: "b")])
        let second = try #require(try await store.lease(limit: 1, owner: "w", duration: .seconds(60), excludingUsers: []).first)
        store.loseCommitReplies(1)
        _ = try await store.beginAttempt(
            second.lease,
            provider: "p",
            reserving: .cents(60),
            idempotentSubmission: false,
            within: [Budget(scope: .project("r"), limit: .dollars(1))]
        )
        let reserved = try #require(try await store.job(second.record.id))
        #expect(reserved.attempts == 1)
        #expect(reserved.ledger.reserved == .cents(60))
    }

    /// A failover gives no new server start (a promoted replica started long before), so the workers' own record
    /// of reaching the server counts: after a gap longer than a housekeeping term in which no worker reached it, a
    /// lease that ran out is taken back only once its holder has had a lease's length to renew. With the workers
    /// reaching the server every round, a lease that runs out goes back when it does.
    @Test func aLeaseThatRanOutWhileNoWorkerReachedTheServerWaitsALeaseBeforeItIsTakenBack() async throws {
        let clock = ManualClock()
        let store = try await TestPostgres.store(clock: clock)
        _ = try await store.enqueue([
            validated(.audio(prompt: "a"), id: "a"), validated(.audio(prompt: "b"), id: "b"),
        ])
        let term = Duration.seconds(30)
        #expect(try await store.lead("housekeeping", holder: "h", for: term))
        let first = try #require(try await store.lease(limit: 1, owner: "w", duration: .seconds(60), excludingUsers: []).first)
        // No worker reaches the server for 5 minutes (a failover); the lease ran out during it.
        clock.advance(by: .seconds(300))
        #expect(try await store.lead("housekeeping", holder: "h", for: term))
        #expect(try await store.rescueExpiredLeases() == 0, "the holder has not had a lease's length to renew")
        // The workers reach it again, every 10 s.
        for _ in 0..<5 {
            clock.advance(by: .seconds(10))
            #expect(try await store.lead("housekeeping", holder: "h", for: term))
        }
        clock.advance(by: .seconds(9))
        #expect(try await store.lead("housekeeping", holder: "h", for: term))
        #expect(try await store.rescueExpiredLeases() == 0, "59 s after the gap")
        clock.advance(by: .seconds(2))
        #expect(try await store.rescueExpiredLeases() == 1, "a lease's length after the gap")
        #expect(try await store.job(first.record.id)?.state == .available)

        // With a worker reaching the server every 10 s, a lease that runs out goes back when it does.
        let second = try #require(try await store.lease(limit: 1, owner: "w", duration: .seconds(60), excludingUsers: []).first)
        for _ in 0..<6 {
            clock.advance(by: .seconds(10))
            _ = try await store.lead("housekeeping", holder: "h", for: term)
        }
        clock.advance(by: .seconds(1))
        #expect(try await store.rescueExpiredLeases() == 1)
        #expect(try await store.job(second.record.id)?.state == .available)
    }

    /// A store operation that the server refuses for want of resources says why: the server's own words and
    /// SQLSTATE reach the error a user sees (`pargen run` printed only "PostgreSQL could not enqueue" when the
    /// server's disk was full). A database whose temporary files are limited to 64 kB refuses a large enqueue
    /// as a full disk would (class 53).
    @Test func aServerShortOfResourcesIsNamedAsTheCause() async throws {
        let url = try #require(TestPostgres.url, "PARGEN_TEST_POSTGRES_URL")
        let admin = try TestPostgres.requireClient()
        let database = TestPostgres.freshSchema()
        try await admin.query("CREATE DATABASE \(unescaped: database)")
        try await admin.query("ALTER DATABASE \(unescaped: database) SET temp_file_limit = '64kB'")
        var location = try PostgresLocation(url: url)
        location.database = database
        let client = PostgresClient(configuration: location.clientConfiguration(maximumConnections: 4))
        let running = Task { await client.run() }
        do {
            let store = try await PostgresJobStore(client: client, schema: "pargen")
            let words = String(repeating: "word ", count: 400)
            let requests = (0..<3000).map { validated(.audio(prompt: "line \($0) \(words)"), id: "l\($0)") }
            let error = await #expect(throws: StoreError.self) { try await store.enqueue(requests) }
            let shown = String(describing: try #require(error))
            #expect(shown.contains("could not enqueue"), "\(shown)")
            #expect(shown.contains("temp_file_limit") && shown.contains("(53400)"), "\(shown)")
            #expect(shown.contains("short of resources"), "\(shown)")
            #expect(try await store.counts().isEmpty, "nothing was added")
        } catch {
            Issue.record("\(error)")
        }
        running.cancel()
        try await admin.query("DROP DATABASE \(unescaped: database) WITH (FORCE)")
    }

    /// Transitions made together are written in batches, and each is judged on its own: in a batch whose reply
    /// was lost, the completions of held jobs are found committed and counted once, and those whose leases were
    /// taken back fail with `leaseLost` without failing the others.
    @Test func transitionsWrittenTogetherAreEachJudgedOnTheirOwn() async throws {
        let store = try await TestPostgres.store()
        _ = try await store.enqueue((0..<40).map { validated(.audio(prompt: "p\($0)"), id: "j\($0)") })
        let kept = try await store.lease(limit: 20, owner: "kept", duration: .seconds(60), excludingUsers: [])
        let lost = try await store.lease(limit: 20, owner: "lost", duration: .seconds(60), excludingUsers: [])
        #expect(kept.count == 20 && lost.count == 20)
        for job in kept + lost { try await store.beginAttempt(job.lease, provider: "p", reserving: .cents(5)) }
        #expect(try await store.rescueLeases(heldBy: "lost", maxCrashes: 5) == 20)
        store.loseCommitReplies(1)
        let outcomes = await withTaskGroup(of: (String, Bool).self) { group in
            for job in kept + lost {
                group.addTask {
                    do {
                        try await store.complete(job.lease, outcome: .test)
                        return (job.record.id.rawValue, true)
                    } catch let error as StoreError where error.code == .leaseLost {
                        return (job.record.id.rawValue, false)
                    } catch {
                        Issue.record("\(job.record.id): \(error)")
                        return (job.record.id.rawValue, false)
                    }
                }
            }
            var outcomes: [String: Bool] = [:]
            for await (id, completed) in group { outcomes[id] = completed }
            return outcomes
        }
        #expect(store.changes.largestBatch > 1, "the completions were written in batches")
        for job in kept { #expect(outcomes[job.record.id.rawValue] == true, "\(job.record.id) completed") }
        for job in lost { #expect(outcomes[job.record.id.rawValue] == false, "\(job.record.id) lost its lease") }
        let counts = try await store.counts()
        #expect(counts[.succeeded] == 20, "\(counts)")
        #expect(try await store.ledgerTotals().charged == JobOutcome.test.cost * 20)
    }

    /// A record that cannot be read fails its own transition only, though it was read with others in one batch.
    @Test func anUnreadableRecordFailsOnlyItsOwnTransitionInABatch() async throws {
        let store = try await TestPostgres.store()
        _ = try await store.enqueue((0..<20).map { validated(.audio(prompt: "p\($0)"), id: "j\($0)") })
        let held = try await store.lease(limit: 20, owner: "w", duration: .seconds(60), excludingUsers: [])
        #expect(held.count == 20)
        let broken = held[7].record.id
        try await TestPostgres.requireClient().query(
            "UPDATE \(unescaped: "\"" + store.schema + "\"").jobs SET record = '{}'::jsonb WHERE id = \(broken.rawValue)"
        )
        let failed = await withTaskGroup(of: JobID?.self) { group in
            for job in held {
                group.addTask {
                    do {
                        try await store.complete(job.lease, outcome: .test)
                        return nil
                    } catch {
                        return job.record.id
                    }
                }
            }
            var failed: [JobID] = []
            for await id in group { if let id { failed.append(id) } }
            return failed
        }
        #expect(store.changes.largestBatch > 1, "the completions were written in batches")
        #expect(failed == [broken])
        #expect(try await store.counts()[.succeeded] == 19)
    }

    /// An enqueue whose reply was lost after it committed is tried again by the store, and the try answers as the
    /// first did: jobs without idempotency keys (a request to the service may have none) are not added twice.
    @Test func anEnqueueWhoseCommitReplyIsLostAddsItsJobsOnce() async throws {
        let store = try await TestPostgres.store()
        store.loseCommitReplies(1)
        let results = try await store.enqueue([
            validated(.audio(prompt: "a"), id: "a"), validated(.audio(prompt: "b"), id: "b"),
        ])
        #expect(try await store.counts() == [.available: 2])
        let stored = try await store.jobs(matching: JobQuery()).map(\.id)
        #expect(Set(results.map(\.jobID)) == Set(stored))
        #expect(results.allSatisfy { !$0.existing })
    }

    /// A worker that stops does not wait for a claim the server is holding up (a lock, or a connection that a
    /// restart left unanswered, until the query deadline): the cancelled caller stops waiting at once. The claim
    /// goes on by itself; here it commits once the lock goes, into the stopping worker's name, where the stop's
    /// rescue takes it back.
    @Test func aCancelledClaimIsNotWaitedFor() async throws {
        let store = try await TestPostgres.store()
        let job = try #require(try await store.enqueue([validated(.audio(prompt: "a"), id: "a")]).first).jobID
        let client = try TestPostgres.requireClient()
        let logger = Logger(label: "test")
        let table = "\"" + store.schema + "\".jobs"
        // Another session locks the jobs table, so a claim waits, until released (at the latest after 4 s).
        let (locked, lockedSignal) = AsyncStream<Void>.makeStream()
        let (released, release) = AsyncStream<Void>.makeStream()
        let holder = Task {
            try await client.withConnection { connection in
                try await connection.query("BEGIN", logger: logger)
                try await connection.query("LOCK TABLE \(unescaped: table) IN EXCLUSIVE MODE", logger: logger)
                lockedSignal.yield()
                for await _ in released { break }
                try await connection.query("ROLLBACK", logger: logger)
            }
        }
        let fallback = Task {
            try? await Task.sleep(for: .seconds(4))
            release.yield()
        }
        defer { fallback.cancel() }
        for await _ in locked { break }
        let claiming = Task { try await store.lease(limit: 1, owner: "w", duration: .seconds(60), excludingUsers: []) }
        // The claim is waiting for the lock.
        try await waitUntil(seconds: 10) {
            var waiting = 0
            for try await count in try await client.query(
                """
                SELECT count(*)::int FROM pg_stat_activity
                WHERE wait_event_type = 'Lock' AND query LIKE '%FOR UPDATE OF j SKIP LOCKED%' AND query LIKE \("%" + store.schema + "%")
                """
            ).decode(Int.self) {
                waiting = count
            }
            return waiting > 0
        }
        let cancelled = ContinuousClock.now
        claiming.cancel()
        let outcome = await claiming.result
        let waited = ContinuousClock.now - cancelled
        #expect(waited < .seconds(2), "the cancelled caller waited \(waited) for the lock")
        #expect(throws: StoreError.self) { try outcome.get() }
        release.yield()
        try await holder.value
        // The abandoned claim went on and committed; the stop's rescue gives the job back.
        try await waitUntil(seconds: 10) { try await store.job(job)?.state == .running }
        #expect(try await store.rescueLeases(heldBy: "w", maxCrashes: 5) == 1)
        #expect(try await store.job(job)?.state == .available)
    }

    /// Housekeeping prunes jobs that finished a week ago; what they charged stays in their project's ledger and
    /// budget (pruning used to give a long-running project its budget back every week).
    @Test func aPrunedJobsMoneyStaysCounted() async throws {
        let clock = ManualClock()
        let store = try await TestPostgres.store(clock: clock)
        _ = try await store.enqueue([validated(.audio(prompt: "a", project: "p"), id: "a")])
        let leased = try #require(try await store.lease(limit: 1, owner: "w", duration: .seconds(60), excludingUsers: []).first)
        try await store.beginAttempt(leased.lease, provider: "p", reserving: .cents(5))
        try await store.complete(leased.lease, outcome: .test)
        let before = try await store.ledger(in: .project("p"))
        #expect(before.charged == .cents(3))
        clock.advance(by: .seconds(8 * 86_400))
        #expect(try await store.prune(finishedBefore: .seconds(7 * 86_400), admissionsBefore: .seconds(3600)) == 1)
        #expect(try await store.job(leased.record.id) == nil)
        #expect(try await store.ledger(in: .project("p")) == before)
        #expect(try await store.ledgerTotals() == before)
    }

    /// A stopped worker takes back what is still in its name, live leases included, and nobody else's: a claim
    /// that committed after its caller stopped listening goes back at the stop, not when its lease expires.
    @Test func aStoppingWorkerTakesBackOnlyItsOwnLeases() async throws {
        let store = try await TestPostgres.store()
        _ = try await store.enqueue([
            validated(.audio(prompt: "a"), id: "a"), validated(.audio(prompt: "b"), id: "b"),
            validated(.audio(prompt: "c"), id: "c"),
        ])
        let mine = try await store.lease(limit: 2, owner: "w1", duration: .seconds(3600), excludingUsers: [])
        let theirs = try #require(try await store.lease(limit: 1, owner: "w2", duration: .seconds(3600), excludingUsers: []).first)
        #expect(mine.count == 2)
        // One of mine had begun its call: it is rescued as a crash would be, and set aside for reconciliation.
        try await store.beginAttempt(mine[1].lease, provider: "p", reserving: .cents(5))
        #expect(try await store.rescueLeases(heldBy: "w1", maxCrashes: 5) == 2)
        #expect(try await store.job(mine[0].record.id)?.state == .available)
        #expect(try await store.job(mine[1].record.id)?.state == .needsReconciliation)
        #expect(try await store.job(theirs.record.id)?.state == .running)
        #expect(try await store.rescueLeases(heldBy: "w1", maxCrashes: 5) == 0)
    }

    @Test func aJobThatBecomesAvailableWakesTheOtherWorkers() async throws {
        let schema = TestPostgres.freshSchema()
        let listener = try await TestPostgres.store(schema: schema)
        let writer = try await TestPostgres.store(schema: schema)
        let wakes = Atomic<Int>(0)
        let watching = Task { await listener.watchForWork { wakes.add(1, ordering: .relaxed) } }
        defer { watching.cancel() }
        // The watcher calls once when it starts listening (news may have been missed before).
        try await waitUntil(seconds: 10) { wakes.load(ordering: .relaxed) >= 1 }
        let before = wakes.load(ordering: .relaxed)
        _ = try await writer.enqueue([validated(.audio(prompt: "a"), id: "a")])
        try await waitUntil(seconds: 10) { wakes.load(ordering: .relaxed) > before }
        // A retry that frees the job announces it too.
        let leased = try #require(try await writer.lease(limit: 1, owner: "w", duration: .seconds(60), excludingUsers: []).first)
        let afterEnqueue = wakes.load(ordering: .relaxed)
        try await writer.retry(leased.lease, error: nil, after: .zero, spendAttempt: false, failedProvider: nil)
        try await waitUntil(seconds: 10) { wakes.load(ordering: .relaxed) > afterEnqueue }
    }

    @Test func oneWorkerLeadsHousekeepingUntilItsTermRunsOut() async throws {
        let clock = ManualClock()
        let store = try await TestPostgres.store(clock: clock)
        #expect(try await store.lead("rescue", holder: "a", for: .seconds(30)))
        #expect(try await !store.lead("rescue", holder: "b", for: .seconds(30)))
        clock.advance(by: .seconds(20))
        #expect(try await store.lead("rescue", holder: "a", for: .seconds(30)), "the leader renews its term")
        clock.advance(by: .seconds(20))
        #expect(try await !store.lead("rescue", holder: "b", for: .seconds(30)))
        clock.advance(by: .seconds(11))
        #expect(try await store.lead("rescue", holder: "b", for: .seconds(30)), "a silent leader loses the lead")
        #expect(try await !store.lead("rescue", holder: "a", for: .seconds(30)))
    }

    @Test func theURLsPasswordNeverShows() throws {
        let location = try PostgresLocation(url: "postgres://pargen:s3cr%40t@db.internal:6543/jobs?sslmode=require")
        #expect(location.password == "s3cr@t")
        #expect(location.port == 6543)
        #expect(location.database == "jobs")
        #expect(location.requireTLS)
        #expect(!location.redacted.contains("s3cr"))
        #expect(!"\(location)".contains("s3cr"))
        #expect(throws: PostgresLocation.Invalid.self) { try PostgresLocation(url: "mysql://x@h/db") }
        #expect(throws: PostgresLocation.Invalid.self) { try PostgresLocation(url: "postgres://u@h:99999/db") }
        let refused = try? PostgresLocation(url: "postgres://u:hunter2@h/db?sslmode=bogus")
        #expect(refused == nil)
        do {
            _ = try PostgresLocation(url: "postgres://u:hunter2@h/db?sslmode=bogus")
        } catch {
            #expect(!"\(error)".contains("hunter2"))
        }
    }
}

/// Polls `condition` until it holds, failing after `seconds` (a ceiling, not a pause).
func waitUntil(seconds: Int, _ condition: @Sendable () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(20))
    }
    Issue.record("the condition did not hold within \(seconds) s")
}

extension JobOutcome {
    static let test = JobOutcome(
        artifact: Artifact(
            url: URL(fileURLWithPath: "/tmp/x.wav"),
            format: .wav,
            contentType: "audio/wav",
            byteCount: 1,
            sha256: "ab",
            duration: .seconds(1),
            provider: "p",
            providerTaskID: "t"
        ),
        provider: "p",
        cost: .cents(3)
    )
}

/// The command line on a shared store: `enqueue`, `run`, `status` and `jobs` with `--postgres`, as a user runs them.
@Suite struct PostgresCommandLineTests {
    @Test func runEnqueueStatusAndJobsWorkOnASharedStoreAndNeverShowThePassword() async throws {
        guard let url = TestPostgres.url else { throw TestPostgres.Missing() }
        // The test server trusts loopback, so any password is accepted: one is given to check it never shows.
        let withPassword = url.replacingOccurrences(of: "postgres://postgres@", with: "postgres://postgres:Sup3rSecret@")
        let folder = temporaryDirectory()
        let schema = TestPostgres.freshSchema()
        var campaign = ""
        for line in 0..<12 { campaign += "{\"type\": \"audio\", \"prompt\": \"shared line \(line)\", \"user\": \"u\(line % 3)\"}\n" }
        let file = folder.appendingPathComponent("campaign.jsonl")
        try campaign.write(to: file, atomically: true, encoding: .utf8)
        let runner = LocalResourceTests()
        let store = ["--postgres", withPassword, "--postgres-schema", schema]

        let enqueued = try await runner.pargen(["enqueue", file.path] + store)
        #expect(enqueued.status == 0, "\(enqueued.output)")
        // Enqueuing the same file again adds nothing (each line's idempotency key).
        _ = try await runner.pargen(["enqueue", file.path] + store)
        let run = try await runner.pargen(["run", file.path, "--out", folder.appendingPathComponent("out").path, "--no-progress"] + store)
        #expect(run.status == 0, "\(run.output)")
        let manifest = try String(contentsOf: folder.appendingPathComponent("out/manifest.jsonl"), encoding: .utf8)
        #expect(manifest.split(separator: "\n").count == 12)
        let status = try await runner.pargen(["status"] + store)
        #expect(status.output.contains("jobs: 12"))
        #expect(status.output.contains("succeeded"))
        #expect(status.output.contains("ledger balances: yes"))
        let jobs = try await runner.pargen(["jobs", "--state", "succeeded"] + store)
        #expect(jobs.output.split(separator: "\n").count == 12)
        // A server that is not there: one line naming it without the password, exit 2.
        let refused = try await runner.pargen(["status", "--postgres", "postgres://u:Sup3rSecret@127.0.0.1:9/x"])
        #expect(refused.status == 2)
        #expect(refused.output.contains("postgres://u:***@127.0.0.1:9/x"))
        for output in [enqueued.output, run.output, status.output, jobs.output, refused.output] {
            #expect(!output.contains("Sup3rSecret"))
        }
    }
}

/// A provider whose calls wait (up to 60 s) until `open` says so, then go to `base`.
private struct GatedProvider: GenerationProvider {
    let base: ScriptedProvider
    let open: @Sendable () -> Bool

    var descriptor: ProviderDescriptor { base.descriptor }

    func generate(_ request: ValidatedRequest, context: ProviderCallContext) async throws -> ProviderOutput {
        let deadline = ContinuousClock.now + .seconds(60)
        while !open(), ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        return try await base.generate(request, context: context)
    }
}
