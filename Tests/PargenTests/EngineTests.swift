import Foundation
import Pargen
import PargenSQLite
import PargenTesting
import Testing

@Suite(.timeLimit(.minutes(3))) struct EngineTests {
    func makeGenerator(
        _ providers: [any GenerationProvider],
        configuration: PargenConfiguration = .init(),
        clock: ImmediateClock = ImmediateClock()
    ) -> ParallelGenerator {
        ParallelGenerator(
            configuration: configuration,
            providers: providers,
            outputDirectory: temporaryDirectory(),
            clock: PargenClock(clock)
        )
    }

    /// A job still waiting when the engine stops is not run by it any more, so waiting for its result must end:
    /// a waiter gets a `cancelled` result saying the engine stopped (the job stays in the store for a later run),
    /// and one who comes after the stop gets it at once. A job that did finish still gives its real result.
    @Test func waitingForAJobTheStoppedEngineWillNotRunEnds() async throws {
        let provider = ScriptedProvider(name: "p", quota: ProviderQuota(concurrentTasks: 1)) { _, _ in
            .succeed(latency: .milliseconds(200))
        }
        let generator = ParallelGenerator(
            configuration: .init(),
            providers: [provider],
            outputDirectory: temporaryDirectory(),
            clock: .continuous
        )
        try await generator.start()
        let ids = try await generator.submit((0..<6).map { .audio(prompt: "line \($0)") })
        let waiting = Task { await generator.result(for: ids[5]) }
        while provider.calls.isEmpty { try await Task.sleep(for: .milliseconds(5)) }
        try await generator.stop()
        let timeout = Task {
            try await Task.sleep(for: .seconds(10))
            waiting.cancel()
        }
        let early = await waiting.value
        timeout.cancel()
        #expect(early.error?.code == .cancelled && early.error?.message.contains("engine stopped") == true, "\(early)")
        let late = await generator.result(for: ids[5])
        #expect(late.error?.code == .cancelled && late.error?.message.contains("engine stopped") == true, "\(late)")
        // The job in flight at the stop finished, and says so.
        #expect(await generator.result(for: ids[0]).artifact != nil)
    }

    @Test func generatesEveryRequestInInputOrderWithRealFiles() async throws {
        let generator = makeGenerator(LocalProvider.demoProviders(reliable: true))
        try await generator.start()
        let requests: [GenerationRequest] = (0..<12).map { i in
            i % 3 == 0
                ? .video(prompt: "scene \(i)", duration: .seconds(1), resolution: .p360, user: "u\(i % 2)")
                : .audio(prompt: "line number \(i)", duration: .seconds(1), user: "u\(i % 2)")
        }
        let results = try await generator.generate(requests)
        try await generator.stop()
        #expect(results.map(\.requestID) == (1...12).map { "request-\($0)" })
        for (request, result) in zip(requests, results) {
            let artifact = try #require(result.artifact, "\(result.error?.description ?? "")")
            let data = try Data(contentsOf: artifact.url)
            #expect(Int64(data.count) == artifact.byteCount)
            #expect(data.starts(with: Array((request.kind == .audio ? "RIFF" : "GIF8").utf8)))
            #expect(try sha256sum(artifact.url) == artifact.sha256, "checked by coreutils, independently")
            #expect(result.actualCost > .zero)
        }
        let stats = await generator.systemStats()
        #expect(stats.queue[.succeeded] == 12)
        #expect(stats.costMonitor.ledgerBalances)
        #expect(stats.costMonitor.outstanding == .zero)
        #expect(stats.costMonitor.charged == results.reduce(Money.zero) { $0 + $1.actualCost })
        let ledger = try await generator.store.ledgerTotals()
        #expect(ledger.charged == stats.costMonitor.charged)
        #expect(ledger.pending == .zero && ledger.reserved == ledger.charged + ledger.released)
    }

    @Test func identicalRequestsAreGeneratedOnceAndThenServedFromCache() async throws {
        let provider = ScriptedProvider(name: "p")
        let generator = makeGenerator([provider])
        try await generator.start()
        let same = (0..<5).map { GenerationRequest.audio(prompt: "the same line", user: "user\($0)") }
        let first = try await generator.generate(same)
        #expect(first.allSatisfy { $0.succeeded })
        #expect(provider.calls.count == 1)
        #expect(first.filter { $0.deduplicated }.count + first.filter { $0.servedFromCache }.count == 4)
        #expect(Set(first.compactMap { $0.artifact?.url }).count == 5, "each requester gets its own file")
        let again = try await generator.generate([.audio(prompt: "the   same line ", user: "late")])
        #expect(again[0].servedFromCache)
        #expect(again[0].actualCost == .zero)
        #expect(provider.calls.count == 1)
        let stats = await generator.systemStats()
        #expect(stats.cache.hits >= 1)
        try await generator.stop()
    }

    @Test func transientFailureFailsOverToAnotherProvider() async throws {
        let flaky = ScriptedProvider(name: "flaky", pricing: ProviderPricing(perRequest: .cents(1))) { _, _ in
            .fail(GenerationError(.transient, "503 service unavailable", providerCode: "503"))
        }
        let steady = ScriptedProvider(name: "steady", pricing: ProviderPricing(perRequest: .cents(50)))
        let generator = makeGenerator([flaky, steady])
        try await generator.start()
        let results = try await generator.generate((0..<6).map { .audio(prompt: "line \($0)") })
        try await generator.stop()
        #expect(results.allSatisfy { $0.provider == "steady" && $0.succeeded })
        for result in results where result.attempts == 2 {
            #expect(result.errorHistory.map(\.providerCode) == ["503"])
            #expect(result.errorHistory.first?.provider == "flaky")
        }
        #expect(flaky.calls.count >= 1)
    }

    @Test func terminalErrorsAreDeadLetteredWithTheProviderCodeAndCanBeRequeued() async throws {
        let refusing = Locked(true)
        let provider = ScriptedProvider(name: "p") { _, _ in
            refusing.value
                ? .fail(GenerationError(.terminal, "content policy", providerCode: "content_policy_violation"))
                : .succeed()
        }
        let generator = makeGenerator([provider])
        try await generator.start()
        let result = try await generator.generate([.audio(prompt: "forbidden")])[0]
        #expect(result.error?.code == .terminal)
        #expect(result.error?.providerCode == "content_policy_violation")
        #expect(result.attempts == 1)
        let dead = try await generator.deadLetters()
        #expect(dead.map(\.id) == [result.jobID!])
        #expect(dead[0].errors.count == 1)
        refusing.withLock { $0 = false }
        try await generator.requeue(result.jobID!)
        let retried = await generator.result(for: result.jobID!)
        #expect(retried.succeeded)
        try await generator.stop()
    }

    @Test func throttlingSnoozesWithoutSpendingAnAttempt() async throws {
        let provider = ScriptedProvider(name: "p") { _, call in
            call < 3
                ? .fail(GenerationError(.rateLimited, "429", providerCode: "429", retryAfter: .seconds(2))) : .succeed()
        }
        let generator = makeGenerator([provider], configuration: .init(retry: .init(maxAttempts: 2)))
        try await generator.start()
        let result = try await generator.generate([.audio(prompt: "hello")])[0]
        try await generator.stop()
        #expect(result.succeeded, "three 429s with two attempts allowed: snoozes spend no attempt")
        #expect(result.attempts == 1)
        #expect(provider.calls.count == 4)
        // The provider cooldown holds the next call back for the Retry-After.
        let times = provider.calls.map(\.time)
        for (earlier, later) in zip(times, times.dropFirst()) { #expect(later - earlier >= .seconds(2)) }
    }

    @Test func retriesExhaustIntoTheDeadLetterQueue() async throws {
        let provider = ScriptedProvider(name: "p") { _, _ in
            .fail(GenerationError(.transient, "timeout", providerCode: "timeout"))
        }
        let generator = makeGenerator([provider], configuration: .init(retry: .init(maxAttempts: 3)))
        try await generator.start()
        let result = try await generator.generate([.audio(prompt: "hello")])[0]
        try await generator.stop()
        #expect(result.error?.code == .attemptsExhausted)
        #expect(result.attempts == 3)
        #expect(result.errorHistory.count == 3)
        #expect(provider.calls.count == 3)
    }

    @Test func brokenOutputIsRetriedNotAccepted() async throws {
        let provider = ScriptedProvider(name: "p") { _, call in call == 0 ? .emptyFile : .succeed() }
        let generator = makeGenerator([provider])
        try await generator.start()
        let result = try await generator.generate([.audio(prompt: "hello")])[0]
        try await generator.stop()
        #expect(result.succeeded)
        #expect(result.errorHistory.map(\.code) == [.artifactInvalid])
    }

    @Test func invalidRequestsFailAloneWithTheirField() async throws {
        let generator = makeGenerator([ScriptedProvider(name: "p", kinds: [.audio])])
        try await generator.start()
        let results = try await generator.generate([
            .audio(prompt: "fine"),
            .audio(prompt: "   "),
            .audio(prompt: "too long", duration: .seconds(10_000)),
            .video(prompt: "no video provider"),
            .audio(prompt: "pinned", provider: "nope"),
            .audio(prompt: "a format no provider makes", format: .mp4),
            .audio(prompt: "pinned, in a format it does not make", format: .mp4, provider: "p"),
        ])
        try await generator.stop()
        #expect(results[0].succeeded)
        #expect(results[1].error?.field == "prompt")
        #expect(results[2].error?.field == "duration")
        // The field at fault is the one every provider refuses: the kind of media, or the format.
        #expect(results[3].error?.code == .noCapableProvider && results[3].error?.field == "type")
        #expect(results[4].error?.field == "provider")
        #expect(results[5].error?.code == .noCapableProvider && results[5].error?.field == "format")
        #expect(results[6].error?.field == "format", "the provider is there; the format is what it cannot make")
        #expect(await generator.systemStats().invalid == 6)
    }

    /// One call at a time, so that each is admitted in its own scheduling round: the urgent lines are admitted
    /// first and reserve first. (Calls admitted together in one round reserve in the order they reach the store;
    /// README, "Budgets", says so. A test with every line in one round would pass or fail by task scheduling.)
    @Test func budgetHoldsBackWorkAndNeverOverspends() async throws {
        let provider = ScriptedProvider(
            name: "p",
            pricing: ProviderPricing(perRequest: .dollars(1)),
            quota: ProviderQuota(concurrentTasks: 1)
        )
        let generator = makeGenerator(
            [provider],
            configuration: .init(budgets: .init(perProject: ["ads": .dollars(3)]))
        )
        try await generator.start()
        var requests = (0..<4).map { GenerationRequest.audio(prompt: "low \($0)", priority: .low, project: "ads") }
        requests += (0..<2).map { GenerationRequest.audio(prompt: "urgent \($0)", priority: .urgent, project: "ads") }
        let results = try await generator.generate(requests)
        try await generator.stop()
        #expect(results.filter { $0.succeeded }.count == 3)
        #expect(results.suffix(2).allSatisfy { $0.succeeded }, "urgent work is budgeted first")
        #expect(results.filter { $0.error?.code == .budgetExceeded }.count == 3)
        let stats = await generator.systemStats()
        #expect(stats.costMonitor.charged == .dollars(3))
        #expect(stats.costMonitor.ledgerBalances && stats.costMonitor.outstanding == .zero)
        #expect(stats.costMonitor.alerts.contains { $0.scope == .project("ads") })
    }

    /// A limit set while running is kept in the SQLite store: the next run on the file applies it, with no
    /// limit in its configuration, and removing it is kept too.
    @Test func aBudgetLimitSetWhileRunningIsKeptForTheNextRun() async throws {
        let path = temporaryDirectory().appendingPathComponent("jobs.sqlite").path
        func run(_ lines: Range<Int>, setting limit: Money?? = nil) async throws -> [GenerationResult] {
            let generator = try ParallelGenerator(
                configuration: .init(rateLimits: .unlimited),
                providers: [ScriptedProvider(name: "p", pricing: ProviderPricing(perRequest: .cents(50)))],
                store: .sqlite(path: path),
                outputDirectory: temporaryDirectory(),
                clock: PargenClock(ImmediateClock())
            )
            try await generator.start()
            if let limit { try await generator.setBudgetLimit(limit, for: .campaign("spring")) }
            let results = try await generator.generate(lines.map { .audio(prompt: "line \($0)", campaign: "spring") })
            try await generator.stop()
            return results
        }
        _ = try await run(0..<0, setting: .some(.dollars(1)))
        // A new run: its configuration has no budget, the store's $1 holds ($0.50 a line: two lines).
        let limited = try await run(0..<4)
        #expect(limited.filter(\.succeeded).count == 2)
        #expect(limited.filter { $0.error?.code == .budgetExceeded }.count == 2)
        _ = try await run(0..<0, setting: .some(nil))
        #expect(try await run(4..<8).allSatisfy { $0.succeeded }, "the limit removed is kept removed")
    }

    /// On a clock the test moves by hand, the provider's own call log shows each user at most 5 calls until a
    /// minute has passed, and the rest right after. (Pargen's own event times on a clock that jumps could agree
    /// with a broken limiter.)
    /// Charges above the estimate, with four calls in flight at once, against each kind of budget. A budget
    /// is checked at reservation against what is charged plus what is reserved, so the only overspend possible
    /// is the overrun of calls already in flight when the budget filled: at most 4 × $0.50 here. The ledger
    /// balances and every job ends succeeded or budget_exceeded.
    @Test(arguments: ["global", "campaign", "defaultPerProject"])
    func budgetsHoldUnderConcurrencyWhenChargesExceedTheEstimate(_ scope: String) async throws {
        let provider = ScriptedProvider(
            name: "p",
            pricing: ProviderPricing(perRequest: .dollars(1)),
            quota: ProviderQuota(concurrentTasks: 4)
        ) { _, _ in .succeed(latency: .seconds(1), cost: Money(parsing: "1.50")!) }
        var configuration = PargenConfiguration(rateLimits: .unlimited)
        switch scope {
        case "global": configuration.budgets.global = .dollars(10)
        case "campaign": configuration.budgets.perCampaign["spring"] = .dollars(10)
        default: configuration.budgets.defaultPerProject = .dollars(10)
        }
        let generator = makeGenerator([provider], configuration: configuration)
        try await generator.start()
        let results = try await generator.generate(
            (0..<20).map { GenerationRequest.audio(prompt: "line \($0)", project: "ads", campaign: "spring") }
        )
        try await generator.stop()
        let succeeded = results.filter(\.succeeded).count
        let charged = results.reduce(Money.zero) { $0 + $1.actualCost }
        #expect(charged == Money(parsing: "1.50")! * Int64(succeeded))
        #expect(charged <= .dollars(12), "\(scope): charged \(charged) against a $10 budget")
        #expect(succeeded >= 6, "\(scope): the budget was used (\(succeeded) succeeded)")
        #expect(results.allSatisfy { $0.succeeded || $0.error?.code == .budgetExceeded })
        #expect(provider.calls.count == succeeded, "no call was made that the budget refused")
        let stats = await generator.systemStats()
        #expect(stats.costMonitor.ledgerBalances && stats.costMonitor.outstanding == .zero)
        let ledger = try await generator.store.ledgerTotals()
        #expect(ledger.balances && ledger.charged == charged && ledger.pending == .zero)
    }

    /// A provider call that runs five times longer than a lease, on a store whose leases can be rescued (SQLite,
    /// on the test's clock): the engine renews the lease while the call runs, so the rescuer never hands the job
    /// to a second run, and the provider sees one call.
    @Test func aCallThatOutlivesItsLeaseIsNeverRunTwice() async throws {
        let scenario = try await LongCallScenario(callTime: .seconds(15))
        // Half-second steps until the job is done, at most 200 s of clock time.
        try await scenario.step(400)
        #expect(scenario.done.value, "the job finished within 200 s of clock time")
        guard let results = try await scenario.finish() else { return }
        #expect(results[0].succeeded, "\(String(describing: results[0].error))")
        #expect(results[0].attempts == 1)
        #expect(scenario.provider.calls.count == 1, "the provider saw \(scenario.provider.calls.count) calls for one job")
    }

    /// A store that cannot renew a lease for a while (down, or the lease taken): the engine tries again at a set
    /// pace instead of on every turn of its loop, and once the store answers again the lease is renewed in time,
    /// so the call still runs once.
    @Test func aFailingRenewalIsTriedAgainAtAPaceAndTheLeaseIsKept() async throws {
        let scenario = try await LongCallScenario(callTime: .seconds(10))
        try await scenario.untilTheCallRuns()
        // The store fails every renewal for 1.5 s of clock time (less than the 3 s lease)...
        scenario.store.failing.withLock { $0 = true }
        try await scenario.step(3)
        scenario.store.failing.withLock { $0 = false }
        let failed = scenario.store.failedRenewals.value
        // ...then answers again, and the call runs to its end.
        try await scenario.step(40)
        #expect(scenario.done.value, "the job finished")
        guard let results = try await scenario.finish() else { return }
        // A renewal a tenth of the lease (0.3 s) after each failure: about 5 in 1.5 s, not one per turn of the loop.
        #expect(failed >= 1, "the failing store was asked")
        #expect(failed <= 8, "\(failed) renewals tried in 1.5 s of clock time")
        #expect(results[0].succeeded, "\(String(describing: results[0].error))")
        #expect(scenario.provider.calls.count == 1, "the provider saw \(scenario.provider.calls.count) calls for one job")
    }

    /// A store that answers that the lease is lost (it expired and another run holds the job): asking again cannot
    /// bring it back, so the engine asks once and never again.
    @Test func aLostLeaseIsNotAskedForAgain() async throws {
        let scenario = try await LongCallScenario(callTime: .seconds(10))
        try await scenario.untilTheCallRuns()
        scenario.store.answerLost.withLock { $0 = true }
        scenario.store.failing.withLock { $0 = true }
        try await scenario.step(43)
        // The store under the fault still lets the lease expire, so the job may be taken again under a new lease,
        // which is lost in turn: each lease is asked for once.
        let asked = scenario.store.failedPerLease.value
        #expect(!asked.isEmpty && asked.values.allSatisfy { $0 == 1 }, "renewals asked per lost lease: \(asked.values.sorted())")
        scenario.run.cancel()
        try await scenario.generator.stop(immediately: true)
    }

    @Test func perUserLimitHoldsForEverySubmissionAcrossTheWholePipeline() async throws {
        let clock = ManualClock()
        let provider = ScriptedProvider(name: "p") { _, _ in .succeed(latency: .zero) }
        var configuration = PargenConfiguration(rateLimits: .init(perUserRequestsPerMinute: 5, maxBurst: 1000))
        configuration.batching.pacingJitter = .zero
        let generator = ParallelGenerator(
            configuration: configuration,
            providers: [provider],
            outputDirectory: temporaryDirectory(),
            clock: PargenClock(clock)
        )
        try await generator.start()
        // 10 requests from each of three users.
        let requests = (0..<30).map { GenerationRequest.audio(prompt: "line \($0)", user: "u\($0 % 3)") }
        let run = Task { try await generator.generate(requests) }
        /// Waits (in real time, at most 60 s: a ceiling for a loaded machine, not a pause) until the provider has
        /// `count` calls, then 300 ms more, and returns the count then: more calls than expected show up too.
        func calls(reaching count: Int) async throws -> Int {
            let deadline = ContinuousClock.now + .seconds(60)
            while provider.calls.count < count && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(5))
            }
            try await Task.sleep(for: .milliseconds(300))
            return provider.calls.count
        }
        func perUser() -> [String: Int] { Dictionary(provider.calls.map { ($0.user, 1) }, uniquingKeysWith: +) }
        #expect(try await calls(reaching: 15) == 15, "5 per user in the first minute")
        #expect(perUser() == ["u0": 5, "u1": 5, "u2": 5])
        clock.advance(by: .seconds(59))
        #expect(try await calls(reaching: 15) == 15, "nobody gets a 6th call within the minute")
        clock.advance(by: .seconds(1) + .milliseconds(1))
        // Any sleeper the engine set for the window's end has come due; move on until all calls are made.
        for _ in 0..<200 where provider.calls.count < 30 {
            clock.advanceToNextDeadline()
            try await Task.sleep(for: .milliseconds(5))
        }
        let results = try await run.value
        try await generator.stop()
        #expect(results.allSatisfy { $0.succeeded })
        #expect(perUser() == ["u0": 10, "u1": 10, "u2": 10])
        // From the provider's own clock readings: no user has 6 calls in any 60 s.
        for (_, calls) in Dictionary(grouping: provider.calls, by: \.user) {
            let times = calls.map(\.time).sorted()
            for (i, start) in times.enumerated() {
                #expect(times[i...].prefix { $0 - start < .seconds(60) }.count <= 5)
            }
        }
    }

    @Test func providerConcurrencyQuotaIsNeverExceeded() async throws {
        let provider = ScriptedProvider(name: "p", quota: ProviderQuota(concurrentTasks: 3)) { _, _ in
            .succeed(latency: .seconds(5))
        }
        let generator = makeGenerator([provider], configuration: .init(rateLimits: .unlimited))
        try await generator.start()
        let results = try await generator.generate((0..<20).map { .audio(prompt: "line \($0)") })
        try await generator.stop()
        #expect(results.allSatisfy { $0.succeeded })
        #expect(provider.peakConcurrency <= 3)
        #expect(provider.peakConcurrency >= 2)
    }

    /// A job waiting for its provider's window holds no job slot: only the jobs admitted hold one.
    ///
    /// On the real clock with a 1 s window: on the immediate clock (time jumps whenever anyone waits) the test
    /// spun ever longer as the machine got busier, and ran past its time limit three times in a day of full runs.
    @Test func aJobHoldsNoSlotWhileItWaitsForAQuota() async throws {
        let window: Duration = .seconds(1)
        let provider = ScriptedProvider(
            name: "p",
            quota: ProviderQuota(requestsPerMinute: 3, window: window, margin: .zero)
        ) { _, _ in
            .succeed(latency: .milliseconds(50))
        }
        let generator = ParallelGenerator(
            configuration: .init(rateLimits: .unlimited, resources: .init(maxConcurrentJobs: 50, minimumFraction: 1)),
            providers: [provider],
            outputDirectory: temporaryDirectory(),
            clock: .continuous
        )
        try await generator.start()
        let results = try await generator.generate((0..<15).map { .audio(prompt: "line \($0)") })
        let stats = await generator.systemStats()
        try await generator.stop()
        #expect(results.allSatisfy { $0.succeeded })
        // Fifteen jobs, three per window: the three of one window may still be finishing (recording their
        // results) when the next three start, so at most two windows' worth ever held a job slot at once, where
        // jobs that waited holding one would reach fifteen.
        #expect(stats.resourcePool.resources[.jobSlots]!.peak <= 6)
        let times = provider.calls.map(\.time)
        for time in times { #expect(times.filter { $0 >= time && $0 < time + window }.count <= 3) }
        #expect(stats.rateLimiter.waitTime[.providerQuota, default: .zero] > .zero)
    }

    /// On the SQLite store and the in-memory one a job is taken only when its call is admitted: the jobs waiting
    /// for the provider's window stay available in the store (no lease to renew, nothing for a crash to leave
    /// behind, and a cancel finds them there), and the three admitted are the only ones ever taken.
    @Test(arguments: ["sqlite", "memory"])
    func aJobWaitingForAQuotaIsNotTakenFromTheStore(_ kind: String) async throws {
        let clock = ManualClock()
        let provider = ScriptedProvider(
            name: "p",
            quota: ProviderQuota(requestsPerMinute: 3, window: .seconds(60), margin: .zero)
        ) { _, _ in .succeed(latency: .zero) }
        let generator = try ParallelGenerator(
            configuration: .init(rateLimits: .unlimited),
            providers: [provider],
            store: kind == "memory" ? .memory : .sqlite(path: temporaryDirectory().appendingPathComponent("jobs.sqlite").path),
            outputDirectory: temporaryDirectory(),
            clock: PargenClock(clock)
        )
        try await generator.start()
        let ids = try await generator.submit((0..<12).map { .audio(prompt: "line \($0)") })
        for id in ids.prefix(3) { _ = await generator.result(for: id) }
        // The first window's three are done; give the scheduler a moment (real time) to take anything more.
        try await Task.sleep(for: .milliseconds(300))
        let counts = try await generator.store.counts()
        #expect(provider.calls.count == 3)
        #expect(counts[.succeeded] == 3)
        #expect(counts[.available] == 9, "\(counts)")
        #expect(counts[.running, default: 0] == 0, "jobs waiting for the window were taken: \(counts)")
        try await generator.stop(immediately: true)
    }

    /// Ten lines admitted to one provider as one batch, with a budget for nine: the member the budget refuses
    /// never calls, and the engine says so to the batch (``BatchMembership/departed``), so the nine that call,
    /// each waiting for the batch's other members as Azure's adapter does, go on at once instead of waiting for a
    /// member that will never come.
    @Test func aMemberThatLeavesItsBatchWithoutCallingIsCountedAsGone() async throws {
        let provider = BatchGatheringProvider(
            base: ScriptedProvider(name: "p", kinds: [.audio], pricing: ProviderPricing(perRequest: .dollars(1)))
        )
        var configuration = PargenConfiguration(rateLimits: .unlimited)
        configuration.budgets.global = Money(parsing: "9.50")
        configuration.batching.maxJobsPerBatch = 10
        configuration.resources.minimumFraction = 1
        let generator = makeGenerator([provider], configuration: configuration)
        try await generator.start()
        let results = try await generator.generate((0..<10).map { GenerationRequest.audio(prompt: "line \($0)") })
        try await generator.stop()
        #expect(results.filter(\.succeeded).count == 9, "\(results.compactMap { $0.error?.description })")
        #expect(results.filter { $0.error?.code == .budgetExceeded }.count == 1)
        let batches = provider.batches.value
        #expect(batches.count == 9 && batches.allSatisfy { $0?.size == 10 }, "the nine calls were one batch of ten: \(batches)")
    }

    /// An engine on `store` and the real clock, without rate limits.
    static func engine(
        _ provider: ScriptedProvider,
        store: any JobStore,
        sharedCache: (any SharedArtifactCache)? = nil,
        maxConcurrentJobs: Int? = nil
    ) -> ParallelGenerator {
        var configuration = PargenConfiguration(rateLimits: .unlimited)
        if let maxConcurrentJobs { configuration.resources.maxConcurrentJobs = maxConcurrentJobs }
        return ParallelGenerator(
            configuration: configuration,
            providers: [provider],
            store: store,
            sharedCache: sharedCache,
            outputDirectory: temporaryDirectory(),
            clock: .continuous
        )
    }

    /// An engine on a fresh SQLite store and the real clock, with shared tiers and no rate limits.
    static func onSQLite(_ provider: ScriptedProvider, sharedCache: any SharedArtifactCache) throws -> ParallelGenerator {
        engine(
            provider,
            store: try SQLiteJobStore(path: temporaryDirectory().appendingPathComponent("jobs.sqlite").path),
            sharedCache: sharedCache
        )
    }

    /// A job only looked at (not claimed) stays in view while its shared-cache lookup runs: the next look at the
    /// queue does not bring it again, so each line is looked up once and taken once. (A lookup slower than the
    /// scheduler's second between looks brought every line back, looked it up again and queued it twice; under
    /// a loaded machine's slow lookups, `pargen run` with shared tiers hung.)
    @Test func aJobBeingLookedUpInTheSharedCacheIsNotLookedAtAgain() async throws {
        let cache = SlowMissingCache(delay: .milliseconds(1500))
        let provider = ScriptedProvider(name: "p")
        let generator = try Self.onSQLite(provider, sharedCache: cache)
        try await generator.start()
        let results = try await generator.generate((0..<20).map { .audio(prompt: "line \($0)") })
        try await generator.stop()
        #expect(results.allSatisfy { $0.succeeded })
        #expect(provider.calls.count == 20)
        let lookups = cache.lookups.value
        #expect(lookups.count == 20 && lookups.values.allSatisfy { $0 == 1 }, "lookups per line: \(lookups.values.sorted())")
    }

    /// A lookup no shared tier could answer is not a miss: the line may be there, so it is asked for again a
    /// second later, and the provider is paid only after ``ParallelGenerator/sharedTierTries`` such answers.
    /// (An answer lost to a flaky object store was a miss: CI once paid for a line the tiers held, while a loaded
    /// machine's Redis connection was reconnecting and the bucket's proxy failed a fifth of its calls.)
    @Test(arguments: [0, 2, Int.max])
    func aLookupNoSharedTierAnsweredIsAskedAgainBeforeTheLineIsPaidFor(unanswered: Int) async throws {
        let shared = MemorySharedTiers()
        let requests = (0..<5).map { GenerationRequest.audio(prompt: "line \($0)") }
        func run(_ tiers: MemorySharedTiers) async throws -> (results: [GenerationResult], calls: Int) {
            let provider = ScriptedProvider(name: "p")
            let generator = try Self.onSQLite(provider, sharedCache: tiers)
            try await generator.start()
            let results = try await generator.generate(requests)
            try await generator.stop()
            return (results, provider.calls.count)
        }
        let first = try await run(shared)
        #expect(first.calls == 5 && shared.published.value.count == 5)
        // A second process on the same tiers, whose lookups go unanswered `unanswered` times per line first.
        let flaky = MemorySharedTiers(sharing: shared, unansweredLookups: unanswered)
        let second = try await run(flaky)
        #expect(second.results.allSatisfy { $0.succeeded }, "\(second.results.compactMap(\.error))")
        let lookups = flaky.lookups.value
        if unanswered < ParallelGenerator.sharedTierTries {
            #expect(second.calls == 0 && second.results.allSatisfy { $0.servedFromCache }, "paid for \(second.calls) lines the tiers held")
            #expect(lookups.values.allSatisfy { $0 == unanswered + 1 }, "lookups per line: \(lookups.values.sorted())")
        } else {
            // Tiers that never answer cost each line its tries, then the line is generated: nothing waits for ever.
            #expect(second.calls == 5)
            #expect(lookups.values.allSatisfy { $0 == ParallelGenerator.sharedTierTries }, "lookups per line: \(lookups.values.sorted())")
        }
    }

    /// A job admitted but not yet claimed stays in view while its claim runs: the next look at the queue does not
    /// bring it again. (It did, between the round that admitted it and the claim's answer: a slow claim had each
    /// job shown, and queued for admission, twice.)
    @Test func aJobBeingClaimedIsNotLookedAtAgain() async throws {
        let store = SlowClaimStore(delay: .milliseconds(1500))
        let provider = ScriptedProvider(name: "p")
        let generator = ParallelGenerator(
            configuration: .init(rateLimits: .unlimited),
            providers: [provider],
            store: store,
            outputDirectory: temporaryDirectory(),
            clock: .continuous
        )
        try await generator.start()
        let results = try await generator.generate((0..<5).map { .audio(prompt: "line \($0)") })
        try await generator.stop()
        #expect(results.allSatisfy { $0.succeeded })
        #expect(provider.calls.count == 5)
        let shown = store.shown.value
        #expect(shown.count == 5 && shown.values.allSatisfy { $0 == 1 }, "times each job was shown: \(shown.values.sorted())")
    }

    /// A job admitted takes its job slot with the admission, not once its claim answers: the rounds that run while
    /// claims are slow see the slot taken, so this process never holds more jobs than it has slots. (Before, each
    /// round read the free slots before the claims had taken them; with one slot and claims 1.2 s long, all three
    /// jobs were claimed, two of them only to wait for the slot, out of other workers' reach.)
    @Test func aJobIsClaimedOnlyWithASlotToRunIn() async throws {
        let store = SlowClaimStore(delay: .milliseconds(1200))
        let provider = ScriptedProvider(name: "p")
        let generator = Self.engine(provider, store: store, maxConcurrentJobs: 1)
        try await generator.start()
        let results = try await generator.generate((0..<3).map { .audio(prompt: "line \($0)") })
        try await generator.stop()
        #expect(results.allSatisfy { $0.succeeded })
        #expect(provider.calls.count == 3)
        #expect(store.mostRunning.value == 1, "most jobs claimed at once with one job slot: \(store.mostRunning.value)")
    }

    /// On a shared store, a process has one claim in flight at a time: the jobs admitted while it is out go
    /// together in the next. (Claims started for every round at once queued behind each other's row locks in
    /// PostgreSQL, one or two jobs each: 981 waits of 40 ms to 2.6 s for 2,000 jobs, and the 3-worker makespan
    /// 1.07 to 1.10 times its bound on a loaded machine.)
    @Test func aSharedStoreIsClaimedOneBatchAtATime() async throws {
        let store = SlowAdmittingStore(delay: .milliseconds(100))
        let provider = ScriptedProvider(name: "p") { _, _ in .succeed(latency: .milliseconds(30)) }
        let generator = Self.engine(provider, store: store, maxConcurrentJobs: 8)
        try await generator.start()
        let results = try await generator.generate((0..<40).map { .audio(prompt: "line \($0)") })
        try await generator.stop()
        #expect(results.allSatisfy { $0.succeeded })
        #expect(provider.calls.count == 40)
        #expect(store.mostClaiming.value == 1, "claims in flight at once: \(store.mostClaiming.value)")
        let batches = store.batches.value
        #expect(batches.reduce(0, +) == 40)
        #expect(batches.contains { $0 > 1 }, "jobs admitted during a claim go together: \(batches)")
    }

    /// The store is chosen at the call site, as the design shows: `.memory` or `.sqlite(path:)`.
    @Test func theStoreIsChosenAtTheCallSite() async throws {
        let folder = temporaryDirectory()
        let path = folder.appendingPathComponent("c.sqlite").path
        for backend in [JobStoreBackend.memory, .sqlite(path: path)] {
            let generator = try ParallelGenerator(
                configuration: .init(rateLimits: .unlimited),
                providers: [ScriptedProvider(name: "p")],
                store: backend,
                outputDirectory: folder,
                clock: PargenClock(ImmediateClock())
            )
            try await generator.start()
            let results = try await generator.generate([.audio(prompt: "hello")])
            try await generator.stop()
            #expect(results.allSatisfy { $0.succeeded })
        }
        #expect(FileManager.default.fileExists(atPath: path))
        let missing = folder.appendingPathComponent("no/such/dir/c.sqlite").path
        #expect(throws: (any Error).self) { _ = try ParallelGenerator(store: .sqlite(path: missing)) }
    }

    @Test func progressReportsEveryStepAndGenerateRequiresStart() async throws {
        let generator = makeGenerator([ScriptedProvider(name: "p")])
        await #expect(throws: EngineError.notRunning) { try await generator.generate([.audio(prompt: "x")]) }
        try await generator.start()
        let seen = Locked([ProgressStatus]())
        _ = try await generator.generate([.audio(prompt: "x")]) { update in seen.withLock { $0.append(update.status) } }
        try await generator.stop()
        #expect(seen.value.first == .queued)
        #expect(seen.value.contains(.submitted))
        #expect(seen.value.contains(.running))
        #expect(seen.value.last == .succeeded)
    }

    @Test func submitStreamsResults() async throws {
        let generator = makeGenerator([ScriptedProvider(name: "p")])
        try await generator.start()
        let stream = generator.results()
        let ids = try await generator.submit((0..<3).map { .audio(prompt: "line \($0)") })
        var seen: Set<JobID> = []
        for await result in stream {
            seen.insert(result.jobID!)
            if seen.count == 3 { break }
        }
        #expect(seen == Set(ids))
        try await generator.stop()
    }

    @Test func immediateStopGivesEveryLeaseBackAndKeepsSubmittedTaskIDs() async throws {
        let clock = ManualClock()
        let provider = ScriptedProvider(name: "p") { _, _ in .succeed(latency: .seconds(100)) }
        let store = MemoryJobStore(clock: PargenClock(clock))
        let generator = ParallelGenerator(
            providers: [provider],
            store: store,
            outputDirectory: temporaryDirectory(),
            clock: PargenClock(clock)
        )
        try await generator.start()
        _ = try await generator.submit((0..<3).map { .audio(prompt: "line \($0)", voice: "same") })
        // Every call has reported its task (the provider reports it, then waits out its latency). Three sleepers
        // on the clock did not say so: another part of the engine may be one of them, and a loaded machine once
        // stopped the run while the third call had not reported yet.
        try await waitUntil(seconds: 120) {
            try await store.jobs(matching: JobQuery()).filter { $0.providerTaskID != nil }.count == 3
        }
        try await generator.stop(immediately: true)
        let jobs = try await store.jobs(matching: JobQuery())
        #expect(jobs.count == 3)
        for job in jobs {
            #expect(job.state == .available, "nothing is lost")
            #expect(
                job.recoveryPoint == .submitted && job.providerTaskID != nil,
                "the next lease resumes, never resubmits"
            )
        }
    }

    @Test func stopRightAfterStartReturns() async throws {
        let generator = makeGenerator([ScriptedProvider(name: "p")])
        try await generator.start()
        try await generator.stop()
        try await generator.start()
        let result = try await generator.generate([.audio(prompt: "after a restart")])[0]
        #expect(result.succeeded)
        try await generator.stop()
    }

    @Test func runsOnTheSQLiteStoreAndItsResultsOutliveTheGenerator() async throws {
        let path = temporaryDirectory().appendingPathComponent("campaign.sqlite").path
        let provider = ScriptedProvider(name: "p") { _, call in
            call == 0
                ? .fail(GenerationError(.transient, "503", providerCode: "503")) : .succeed(latency: .milliseconds(5))
        }
        let generator = ParallelGenerator(
            providers: [provider],
            store: try SQLiteJobStore(path: path),
            outputDirectory: temporaryDirectory()
        )
        try await generator.start()
        let results = try await generator.generate((0..<8).map { .audio(prompt: "durable \($0)", user: "u\($0 % 3)") })
        try await generator.stop()
        #expect(results.allSatisfy { $0.succeeded })
        #expect(results.map(\.attempts).reduce(0, +) == 9, "one retry after the 503")
        let reopened = try SQLiteJobStore(path: path)
        #expect(try await reopened.counts() == [.succeeded: 8])
        let record = try #require(try await reopened.job(results[0].jobID!))
        #expect(record.outcome?.artifact.sha256 == results[0].artifact?.sha256)
    }
}

/// One long provider call on a SQLite store whose leases (3 s) expire by a manual clock, behind a store that can
/// be told to fail renewals; the test moves the clock only while the engine is idle.
private struct LongCallScenario {
    let clock = ManualClock()
    let provider: ScriptedProvider
    let store: RenewalFaultStore
    let generator: ParallelGenerator
    let done = Locked(false)
    let run: Task<[GenerationResult], any Error>

    init(callTime: Duration) async throws {
        let clock = clock
        provider = ScriptedProvider(name: "p") { _, _ in .succeed(latency: callTime) }
        var configuration = PargenConfiguration(rateLimits: .unlimited)
        configuration.leaseDuration = .seconds(3)
        configuration.batching.pacingJitter = .zero
        store = RenewalFaultStore(
            try SQLiteJobStore(
                path: temporaryDirectory().appendingPathComponent("jobs.sqlite").path,
                now: { .seconds(1_767_225_600) + clock.now.offset }
            )
        )
        let generator = ParallelGenerator(
            configuration: configuration,
            providers: [provider],
            store: store,
            outputDirectory: temporaryDirectory(),
            clock: PargenClock(clock)
        )
        self.generator = generator
        try await generator.start()
        let done = done
        run = Task {
            defer { done.withLock { $0 = true } }
            return try await generator.generate([.audio(prompt: "a long call")])
        }
    }

    /// Waits (in real time) until the provider has the call.
    func untilTheCallRuns() async throws {
        while provider.calls.isEmpty { try await Task.sleep(for: .milliseconds(2)) }
    }

    /// Moves the clock on by `steps` half seconds, or until the job is done. Time moves only when the engine is
    /// idle: while the call runs, the call and the scheduler's heartbeat sleep on the clock, and a step that woke
    /// the heartbeat waits until it sleeps again (its lease renewed). Stepping on a timer instead let a loaded
    /// machine miss renewals the engine was never given the chance to make.
    func step(_ steps: Int) async throws {
        var taken = 0
        var starved = 0
        while taken < steps && !done.value {
            try await Task.sleep(for: .milliseconds(2))
            if clock.sleeperCount >= 2 || starved >= 100 {
                starved = 0
                taken += 1
                clock.advance(by: .milliseconds(500))
            } else {
                starved += 1  // Fewer sleepers for 100 polls in a row: the engine waits on the clock alone.
            }
        }
    }

    /// The results if the job is done, after an immediate stop; `nil` (everything cancelled) if it is not.
    ///
    /// Nothing is left running when the one job is done, unless it was run twice: then the other call still sleeps
    /// on the test's clock, and an immediate stop cancels it instead of waiting for time that never comes.
    func finish() async throws -> [GenerationResult]? {
        guard done.value else {
            run.cancel()
            try await generator.stop(immediately: true)
            return nil
        }
        let results = try await run.value
        try await generator.stop(immediately: true)
        return results
    }
}

/// A job store that forwards every call to `base`; a test's store overrides the calls it studies.
protocol ForwardingJobStore: JobStore {
    var base: any JobStore { get }
}

extension ForwardingJobStore {
    var outlivesProcess: Bool { base.outlivesProcess }
    func enqueue(_ requests: [ValidatedRequest]) async throws -> [EnqueueResult] { try await base.enqueue(requests) }
    func lease(
        limit: Int,
        owner: String,
        duration: Duration,
        excludingUsers: Set<String>,
        kinds: Set<GenerationKind>
    ) async throws -> [LeasedJob] {
        try await base.lease(limit: limit, owner: owner, duration: duration, excludingUsers: excludingUsers, kinds: kinds)
    }
    func timeUntilNextDue() async throws -> Duration? { try await base.timeUntilNextDue() }
    func heartbeat(_ lease: JobLease, duration: Duration) async throws -> JobLease {
        try await base.heartbeat(lease, duration: duration)
    }
    func beginAttempt(_ lease: JobLease, provider: String, reserving estimate: Money, idempotentSubmission: Bool)
        async throws
    {
        try await base.beginAttempt(lease, provider: provider, reserving: estimate, idempotentSubmission: idempotentSubmission)
    }
    func beginAttempt(
        _ lease: JobLease,
        provider: String,
        reserving estimate: Money,
        idempotentSubmission: Bool,
        within budgets: [Budget]
    ) async throws -> [BudgetScope: Money] {
        try await base.beginAttempt(
            lease,
            provider: provider,
            reserving: estimate,
            idempotentSubmission: idempotentSubmission,
            within: budgets
        )
    }
    func ledger(in scope: BudgetScope) async throws -> CostLedger { try await base.ledger(in: scope) }
    func recordSubmission(_ lease: JobLease, taskID: String) async throws {
        try await base.recordSubmission(lease, taskID: taskID)
    }
    func complete(_ lease: JobLease, outcome: JobOutcome) async throws -> JobRecord {
        try await base.complete(lease, outcome: outcome)
    }
    func retry(_ lease: JobLease, error: GenerationError?, after: Duration, spendAttempt: Bool, failedProvider: String?)
        async throws
    {
        try await base.retry(lease, error: error, after: after, spendAttempt: spendAttempt, failedProvider: failedProvider)
    }
    func deadLetter(_ lease: JobLease, error: GenerationError) async throws -> JobRecord {
        try await base.deadLetter(lease, error: error)
    }
    func release(_ lease: JobLease, leaving trace: CallTrace) async throws {
        try await base.release(lease, leaving: trace)
    }
    func rescueExpiredLeases(maxCrashes: Int) async throws -> Int { try await base.rescueExpiredLeases(maxCrashes: maxCrashes) }
    func rescueOrphanedLeases(maxCrashes: Int) async throws -> Int {
        try await base.rescueOrphanedLeases(maxCrashes: maxCrashes)
    }
    func purge(_ ids: [JobID]) async throws -> Int { try await base.purge(ids) }
    func job(_ id: JobID) async throws -> JobRecord? { try await base.job(id) }
    func jobs(matching query: JobQuery) async throws -> [JobRecord] { try await base.jobs(matching: query) }
    func requeue(_ id: JobID) async throws { try await base.requeue(id) }
    func cancel(_ id: JobID) async throws { try await base.cancel(id) }
    func counts() async throws -> [JobState: Int] { try await base.counts() }
    func ledgerTotals() async throws -> CostLedger { try await base.ledgerTotals() }
}

/// A job store that forwards to another, and fails every lease renewal while `failing` is set.
private final class RenewalFaultStore: ForwardingJobStore {
    struct Unavailable: Error {}
    let base: any JobStore
    let failing = Locked(false)
    /// Whether a failing renewal answers that the lease is lost (another run holds the job) rather than unavailable.
    let answerLost = Locked(false)
    let failedRenewals = Locked(0)
    /// Failed renewals per lease (its token): a job taken again after its lease expired has a new one.
    let failedPerLease = Locked<[String: Int]>([:])

    init(_ base: any JobStore) { self.base = base }

    func heartbeat(_ lease: JobLease, duration: Duration) async throws -> JobLease {
        if failing.value {
            failedRenewals.withLock { $0 += 1 }
            failedPerLease.withLock { $0[lease.token, default: 0] += 1 }
            if answerLost.value { throw StoreError(.leaseLost, "the lease on \(lease.jobID) is no longer held") }
            throw Unavailable()
        }
        return try await base.heartbeat(lease, duration: duration)
    }
}

/// A claiming store (an in-memory one underneath) whose claims answer late, as a loaded database's do; it counts
/// how often each job was shown by `peek`.
private final class SlowClaimStore: ForwardingJobStore, ClaimingJobStore {
    let memory: MemoryJobStore
    let delay: Duration
    let shown = Locked([JobID: Int]())
    var base: any JobStore { memory }

    init(delay: Duration) {
        self.memory = MemoryJobStore()
        self.delay = delay
    }

    func peek(
        limit: Int,
        excludingUsers: Set<String>,
        excludingProjects: Set<String>,
        excludingJobs: Set<JobID>,
        kinds: Set<GenerationKind>
    ) async throws -> [JobRecord] {
        let found = try await memory.peek(
            limit: limit,
            excludingUsers: excludingUsers,
            excludingProjects: excludingProjects,
            excludingJobs: excludingJobs,
            kinds: kinds
        )
        shown.withLock { for record in found { $0[record.id, default: 0] += 1 } }
        return found
    }

    /// The most jobs the store had running just after a claim answered.
    let mostRunning = Locked(0)

    func claim(_ id: JobID, owner: String, duration: Duration) async throws -> LeasedJob? {
        try await Task.sleep(for: delay)
        let claimed = try await memory.claim(id, owner: owner, duration: duration)
        let running = try await memory.counts()[.running, default: 0]
        mostRunning.withLock { $0 = max($0, running) }
        return claimed
    }
}

/// A shared store stand-in over the memory store: every batch claim takes `delay`, and it counts the claims in
/// flight at once and each batch's size. Every call is admitted (it keeps no shared limits).
private final class SlowAdmittingStore: ForwardingJobStore, AdmittingJobStore {
    let memory = MemoryJobStore()
    let delay: Duration
    let claiming = Locked(0)
    let mostClaiming = Locked(0)
    let batches = Locked([Int]())
    var base: any JobStore { memory }

    init(delay: Duration) { self.delay = delay }

    func peek(
        limit: Int,
        excludingUsers: Set<String>,
        excludingProjects: Set<String>,
        excludingJobs: Set<JobID>,
        kinds: Set<GenerationKind>
    ) async throws -> [JobRecord] {
        try await memory.peek(
            limit: limit,
            excludingUsers: excludingUsers,
            excludingProjects: excludingProjects,
            excludingJobs: excludingJobs,
            kinds: kinds
        )
    }

    func claim(_ id: JobID, owner: String, duration: Duration, for call: SharedCall?) async throws -> ClaimDecision {
        try await claim([ClaimRequest(id: id, call: call)], owner: owner, duration: duration)[0]
    }

    func claim(_ requests: [ClaimRequest], owner: String, duration: Duration) async throws -> [ClaimDecision] {
        let now = claiming.withLock { $0 += 1; return $0 }
        mostClaiming.withLock { $0 = max($0, now) }
        batches.withLock { $0.append(requests.count) }
        defer { claiming.withLock { $0 -= 1 } }
        try await Task.sleep(for: delay)
        var decisions: [ClaimDecision] = []
        for request in requests {
            if let job = try await memory.claim(request.id, owner: owner, duration: duration) {
                decisions.append(.claimed(job))
            } else {
                decisions.append(.gone)
            }
        }
        return decisions
    }

    func coolDown(provider: String, for duration: Duration) async throws {}

    func complete(_ lease: JobLease, outcome: JobOutcome, answeredAgo: Duration) async throws -> JobRecord {
        try await memory.complete(lease, outcome: outcome)
    }
}

/// Shared tiers that never have anything and answer each lookup late; they count the lookups per fingerprint.
private final class SlowMissingCache: SharedArtifactCache {
    let delay: Duration
    let lookups = Locked([String: Int]())

    init(delay: Duration) { self.delay = delay }

    func lookup(_ fingerprint: String) async -> SharedLookup {
        lookups.withLock { $0[fingerprint, default: 0] += 1 }
        try? await Task.sleep(for: delay)
        return .absent
    }

    func fetch(_ shared: SharedArtifact, to file: URL) async throws { throw CancellationError() }

    func publish(_ artifact: Artifact, fingerprint: String, cost: Money) async throws -> SharedArtifact {
        SharedArtifact(artifact, fingerprint: fingerprint, key: "media/\(fingerprint)", publicURL: nil, cost: cost)
    }

    func claim(_ fingerprint: String) async -> SharedFlightClaim { .unavailable }
    func release(_ claim: SharedFlightClaim) async {}
    func stats() async -> SharedCacheStats { SharedCacheStats() }
}

/// A provider that, like Azure's batch synthesis, makes a batched call wait until every other member of its batch
/// has called or left the batch (for at most 10 s of real time, then it fails the call), then answers as `base`.
private final class BatchGatheringProvider: GenerationProvider {
    let base: ScriptedProvider
    /// The batch of each call, in call order.
    let batches = Locked<[BatchMembership?]>([])
    private let arrivals = Locked<[String: Int]>([:])

    init(base: ScriptedProvider) { self.base = base }

    var descriptor: ProviderDescriptor { base.descriptor }

    func generate(_ request: ValidatedRequest, context: ProviderCallContext) async throws -> ProviderOutput {
        batches.withLock { $0.append(context.batch) }
        if let batch = context.batch {
            arrivals.withLock { $0[batch.id, default: 0] += 1 }
            let deadline = ContinuousClock.now + .seconds(10)
            while arrivals.withLock({ $0[batch.id]! }) + batch.departed < batch.size {
                guard ContinuousClock.now < deadline else {
                    throw GenerationError(.terminal, "batch \(batch.id) waited 10 s for a member that never came")
                }
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        return try await base.generate(request, context: context)
    }

    func resume(taskID: String, request: ValidatedRequest, context: ProviderCallContext) async throws -> ProviderOutput {
        try await base.resume(taskID: taskID, request: request, context: context)
    }
}

/// Shared tiers in memory, for engine tests: what is published is kept (its bytes too) and found; a tier made
/// with `unansweredLookups` answers each fingerprint's first lookups ``SharedLookup/unanswered``.
private final class MemorySharedTiers: SharedArtifactCache {
    let published: Locked<[String: (artifact: SharedArtifact, bytes: Data)]>
    let unansweredLookups: Int
    let lookups = Locked([String: Int]())

    init() {
        published = Locked([:])
        unansweredLookups = 0
    }

    /// Tiers holding what `other` holds now.
    init(sharing other: MemorySharedTiers, unansweredLookups: Int) {
        published = Locked(other.published.value)
        self.unansweredLookups = unansweredLookups
    }

    func lookup(_ fingerprint: String) async -> SharedLookup {
        let asked = lookups.withLock { lookups -> Int in
            lookups[fingerprint, default: 0] += 1
            return lookups[fingerprint]!
        }
        if asked <= unansweredLookups { return .unanswered }
        return published.value[fingerprint].map { .found($0.artifact) } ?? .absent
    }

    func fetch(_ shared: SharedArtifact, to file: URL) async throws {
        guard let bytes = published.value[shared.fingerprint]?.bytes else { throw CancellationError() }
        try bytes.write(to: file)
    }

    func publish(_ artifact: Artifact, fingerprint: String, cost: Money) async throws -> SharedArtifact {
        let shared = SharedArtifact(artifact, fingerprint: fingerprint, key: "media/\(fingerprint)/\(artifact.sha256)", publicURL: nil, cost: cost)
        let bytes = try Data(contentsOf: artifact.url)
        published.withLock { $0[fingerprint] = (shared, bytes) }
        return shared
    }

    func claim(_ fingerprint: String) async -> SharedFlightClaim { .unavailable }
    func release(_ claim: SharedFlightClaim) async {}
    func stats() async -> SharedCacheStats { SharedCacheStats() }
}
