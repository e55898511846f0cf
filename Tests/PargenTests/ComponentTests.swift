import Foundation
import Pargen
import PargenTesting
import Testing

@Suite struct BatcherTests {
    func candidate(
        _ i: Int,
        _ request: GenerationRequest,
        cost: Money = .dollars(1)
    )
        -> BatchCandidate
    {
        BatchCandidate(
            jobID: JobID("j\(i)"),
            request: validated(request, id: "r\(i)"),
            estimatedCost: cost
        )
    }

    @Test func groupsCompatibleJobsUnderTheCaps() {
        let batcher = Batcher(
            configuration: .init(
                maxJobsPerBatch: 3,
                maxTotalCostPerBatch: .dollars(10),
                maxTotalDurationPerBatch: .seconds(300)
            )
        )
        var jobs = (0..<7).map {
            candidate(
                $0,
                .audio(prompt: "line \($0)", duration: .seconds(10), format: .wav, voice: "alloy")
            )
        }
        jobs.append(candidate(7, .video(prompt: "a video", duration: .seconds(5))))
        let batches = batcher.makeBatches(jobs)
        #expect(batches.map(\.members.count) == [1, 3, 3, 1])
        #expect(batches[0].members[0].request.kind == .video, "longest work first within a priority")
        #expect(batches.allSatisfy { Set($0.members.map(\.request.kind)).count == 1 })
    }

    @Test func costAndDurationCapsSplitBatches() {
        let batcher = Batcher(
            configuration: .init(
                maxJobsPerBatch: 25,
                maxTotalCostPerBatch: .dollars(5),
                maxTotalDurationPerBatch: .seconds(25)
            )
        )
        let byCost = (0..<4).map {
            candidate($0, .audio(prompt: "p\($0)", duration: .seconds(1)), cost: .dollars(2))
        }
        #expect(batcher.makeBatches(byCost).map(\.members.count) == [2, 2])
        let byDuration = (0..<4).map { candidate($0, .audio(prompt: "p\($0)", duration: .seconds(10))) }
        #expect(batcher.makeBatches(byDuration).map(\.members.count) == [2, 2])
    }

    @Test func duplicatesCollapseAndDoNotCountTowardCaps() {
        let batcher = Batcher(configuration: .init(maxJobsPerBatch: 2))
        let jobs = (0..<5).map { candidate($0, .audio(prompt: "same words", user: "u\($0)")) }
        let batches = batcher.makeBatches(jobs)
        #expect(batches.count == 1)
        #expect(batches[0].members.count == 1)
        #expect(batches[0].duplicates.count == 4)
    }

    @Test func priorityAndSimilarityKeepUnlikeJobsApart() {
        let a = validated(.audio(prompt: "x", priority: .low, format: .wav))
        let b = validated(.audio(prompt: "y", priority: .urgent, format: .wav))
        let c = validated(.audio(prompt: "z", priority: .normal, format: .mp3, voice: "other"))
        #expect(Batcher.similarity(a, b) == 0)
        #expect(Batcher.similarity(a, c) < 0.8)
        #expect(Batcher.similarity(a, a) == 1)
        let batches = Batcher(configuration: .init()).makeBatches([
            candidate(0, .audio(prompt: "x", priority: .low)),
            candidate(1, .audio(prompt: "y", priority: .urgent)),
        ])
        #expect(
            batches.first?.members.first?.request.priority == .urgent,
            "highest priority is batched first"
        )
    }
}

@Suite struct CircuitBreakerTests {
    func allow(_ breaker: inout CircuitBreaker, _ now: Duration) -> Bool {
        breaker.allowCall(at: now)
    }

    @Test func opensAfterConsecutiveFailuresThenLetsOneCanaryThrough() {
        var breaker = CircuitBreaker(
            configuration: .init(failureThreshold: 3, openDuration: .seconds(30))
        )
        for t in 0..<3 {
            let allowed1 = allow(&breaker, .seconds(t))
            #expect(allowed1)
            breaker.recordFailure(at: .seconds(t))
        }
        #expect(breaker.state == .open)
        let allowed2 = allow(&breaker, .seconds(10))
        #expect(!allowed2)
        let allowed3 = allow(&breaker, .seconds(32))
        #expect(allowed3)
        #expect(breaker.state == .halfOpen)
        let allowed4 = allow(&breaker, .seconds(32))
        #expect(!allowed4, "only one canary")
        breaker.recordFailure(at: .seconds(33))
        #expect(breaker.state == .open)
        let allowed5 = allow(&breaker, .seconds(63))
        #expect(allowed5)
        breaker.recordSuccess()
        #expect(breaker.state == .closed)
        #expect(breaker.timesOpened == 2)
    }

    @Test func opensOnErrorRateWithEnoughSamples() {
        var breaker = CircuitBreaker(
            configuration: .init(failureThreshold: 100, errorRateThreshold: 0.5, minimumSamples: 10)
        )
        for i in 0..<9 {
            if i % 2 == 0 { breaker.recordSuccess() } else { breaker.recordFailure(at: .zero) }
        }
        #expect(breaker.state == .closed)
        breaker.recordFailure(at: .zero)
        #expect(breaker.state == .open)
    }
}

@Suite struct LoadBalancerTests {
    func descriptor(
        _ name: String,
        price: Money,
        kinds: Set<GenerationKind> = [.audio]
    )
        -> ProviderDescriptor
    {
        ProviderDescriptor(
            name: name,
            capabilities: ProviderCapabilities(
                kinds: kinds,
                audioFormats: [.wav],
                videoFormats: [.gif],
                maxResolution: .p1080
            ),
            pricing: ProviderPricing(perRequest: price),
            quota: ProviderQuota()
        )
    }

    @Test func prefersCheaperHealthyProvidersAndFailsOver() {
        let balancer = LoadBalancer(
            providers: [descriptor("cheap", price: .cents(1)), descriptor("dear", price: .cents(10))],
            configuration: .init(),
            seed: 7
        )
        let request = validated(.audio(prompt: "hello"))
        var picks: [String: Int] = [:]
        for _ in 0..<1000 {
            guard case .provider(let name) = balancer.choose(for: request, at: .zero) else { continue }
            picks[name, default: 0] += 1
        }
        #expect(picks["cheap", default: 0] > picks["dear", default: 0] * 5)
        #expect(picks["dear", default: 0] > 0, "weighted, not winner-takes-all")
        #expect(balancer.choose(for: request, excluding: ["cheap"], at: .zero) == .provider("dear"))
    }

    @Test func skipsOpenCircuitsAndWaitsWhenAllAreOpen() {
        let balancer = LoadBalancer(
            providers: [descriptor("a", price: .cents(1)), descriptor("b", price: .cents(1))],
            configuration: .init(failureThreshold: 2, openDuration: .seconds(30))
        )
        let request = validated(.audio(prompt: "hello"))
        balancer.recordFailure("a", at: .zero)
        balancer.recordFailure("a", at: .zero)
        for _ in 0..<20 { #expect(balancer.choose(for: request, at: .seconds(1)) == .provider("b")) }
        balancer.recordFailure("b", at: .seconds(2))
        balancer.recordFailure("b", at: .seconds(2))
        #expect(balancer.choose(for: request, at: .seconds(3)) == .wait(until: .seconds(30)))
    }

    @Test func explainsWhyNobodyCanServe() {
        let balancer = LoadBalancer(
            providers: [descriptor("a", price: .cents(1))],
            configuration: .init()
        )
        let video = validated(.video(prompt: "x"))
        guard case .noneCapable(let reason) = balancer.choose(for: video, at: .zero) else {
            Issue.record("expected noneCapable")
            return
        }
        #expect(reason.contains("a does not generate video"))
        #expect(
            balancer.refusal(for: validated(.audio(prompt: "x", provider: "zzz")))?.contains(
                "no provider named zzz"
            ) == true
        )
    }
}

@Suite struct CacheTests {
    func artifact(_ name: String) -> Artifact {
        Artifact(
            url: URL(fileURLWithPath: "/nonexistent/\(name)"),
            format: .wav,
            contentType: "audio/wav",
            byteCount: 1,
            sha256: "x",
            duration: .seconds(1),
            provider: "p"
        )
    }

    @Test func evictsTheLeastRecentlyUsed() async {
        let cache = MemoryLRUCache(capacity: 2, checkFiles: false)
        await cache.put("a", artifact("a"))
        await cache.put("b", artifact("b"))
        #expect(await cache.get("a") != nil)
        await cache.put("c", artifact("c"))
        #expect(await cache.get("b") == nil)
        #expect(cache.keysByRecency() == ["c", "a"])
        let stats = await cache.stats()
        #expect(stats.evictions == 1)
        #expect(stats.hits == 1 && stats.misses == 1)
        #expect(stats.hitRatio == 0.5)
    }

    @Test func expiresByTimeToLiveAndInvalidates() async {
        let clock = ManualClock()
        let cache = MemoryLRUCache(
            capacity: 10,
            timeToLive: .seconds(60),
            clock: PargenClock(clock),
            checkFiles: false
        )
        await cache.put("a", artifact("a"))
        await cache.put("b", artifact("b"))
        clock.advance(by: .seconds(59))
        #expect(await cache.get("a") != nil)
        clock.advance(by: .seconds(1))
        #expect(await cache.get("a") == nil)
        await cache.invalidate("b")
        #expect(await cache.get("b") == nil)
        #expect(await cache.stats().expirations == 1)
    }

    @Test func missingFilesAreMisses() async {
        let cache = MemoryLRUCache(capacity: 10)
        await cache.put("gone", artifact("gone"))
        #expect(await cache.get("gone") == nil)
        #expect(await cache.stats().entries == 0)
    }

    @Test func singleFlightHandsTheLeadersValueToFollowers() async {
        let flight = SingleFlight<Int>()
        guard case .leader = await flight.join("k") else {
            Issue.record("first caller leads")
            return
        }
        let followers = (0..<5).map { _ in Task { await flight.join("k") } }
        // Wait until every follower is registered (bounded), then finish: each must get the leader's value.
        let deadline = ContinuousClock.now + .seconds(10)
        while flight.followerCount("k") < 5 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(1))
        }
        #expect(flight.followerCount("k") == 5)
        flight.finish("k", with: 42)
        for follower in followers {
            guard case .follower(let value) = await follower.value else {
                Issue.record("expected a follower")
                continue
            }
            #expect(value == 42)
        }
        guard case .leader = await flight.join("k") else {
            Issue.record("a finished key is led anew")
            return
        }
    }
}

@Suite struct RetryPolicyTests {
    @Test func backoffIsExponentialCappedAndFullyJittered() {
        let policy = RetryPolicy(
            configuration: .init(
                maxAttempts: 5,
                baseDelay: .seconds(1),
                multiplier: 2,
                maxDelay: .seconds(10)
            )
        )
        #expect(
            (1...6).map { policy.ceiling(afterAttempt: $0) } == [
                .seconds(1), .seconds(2), .seconds(4), .seconds(8), .seconds(10), .seconds(10),
            ]
        )
        #expect(policy.delay(afterAttempt: 3, unit: 0) == .zero)
        #expect(policy.delay(afterAttempt: 3, unit: 0.5) == .seconds(2))
    }

    @Test func classifiesErrors() {
        let policy = RetryPolicy(configuration: .init(maxAttempts: 3, maxSnoozes: 2))
        let throttled = GenerationError(.rateLimited, "429", retryAfter: .seconds(7))
        #expect(
            policy.disposition(for: throttled, attempts: 1, snoozes: 0, unit: 0.5)
                == .snooze(for: .seconds(7))
        )
        #expect(
            policy.disposition(for: throttled, attempts: 3, snoozes: 2, unit: 0.5) == .deadLetter,
            "snoozes are bounded too"
        )
        let transient = GenerationError(.transient, "503")
        #expect(
            policy.disposition(for: transient, attempts: 1, snoozes: 0, unit: 1)
                == .retry(after: .seconds(1))
        )
        #expect(policy.disposition(for: transient, attempts: 3, snoozes: 0, unit: 1) == .deadLetter)
        #expect(
            policy.disposition(
                for: GenerationError(.terminal, "policy"),
                attempts: 1,
                snoozes: 0,
                unit: 0
            ) == .deadLetter
        )
    }
}

@Suite struct CostMonitorTests {
    @Test func theBudgetsOfAJobAreItsScopesThatHaveALimit() {
        let monitor = CostMonitor(configuration: .init(global: .dollars(100), defaultPerProject: .dollars(10)))
        let request = validated(.audio(prompt: "x", project: "p", campaign: "spring"))
        #expect(
            monitor.budgets(for: request)
                == [Budget(scope: .global, limit: .dollars(100)), Budget(scope: .project("p"), limit: .dollars(10))]
        )
        monitor.setLimit(.dollars(5), for: .campaign("spring"))
        monitor.setLimit(nil, for: .global)
        #expect(
            monitor.budgets(for: request)
                == [Budget(scope: .project("p"), limit: .dollars(10)), Budget(scope: .campaign("spring"), limit: .dollars(5))]
        )
    }

    @Test func alertsOnceAtTheThresholdAndOnceWhenTheLimitIsReached() {
        let monitor = CostMonitor(
            configuration: .init(global: .dollars(10), alertThreshold: 0.8),
            clock: PargenClock(ManualClock())
        )
        #expect(monitor.reserved([.global: .dollars(7)]).isEmpty)
        #expect(monitor.reserved([.global: .dollars(8)]).map(\.exhausted) == [false])
        #expect(monitor.reserved([.global: .dollars(9)]).isEmpty, "once")
        #expect(monitor.reserved([.global: .dollars(10)]).map(\.exhausted) == [true])
        let refusal = BudgetRefusal(scope: .global, limit: .dollars(10), committed: .dollars(10), needed: .dollars(1), canFree: true)
        #expect(monitor.refused(refusal).isEmpty, "already exhausted")
        #expect(monitor.stats().budgets.first { $0.scope == .global }?.held == 1)
        // A new limit may alert again.
        monitor.setLimit(.dollars(20), for: .global)
        #expect(monitor.reserved([.global: .dollars(16)]).map(\.exhausted) == [false])
        #expect(monitor.refused(refusal).map(\.exhausted) == [true])
    }

    @Test func aProviderThatBillsAboveItsEstimateIsExpectedToCostMoreFromThenOn() {
        let monitor = CostMonitor(configuration: .init())
        #expect(monitor.expectedCost(.dollars(1), provider: "x") == .dollars(1))
        monitor.charged(.dollars(3), provider: "x", estimate: .dollars(2))
        #expect(monitor.expectedCost(.dollars(1), provider: "x") == .cents(150))
        #expect(monitor.expectedCost(.dollars(1), provider: "y") == .dollars(1))
        monitor.charged(.dollars(1), provider: "x", estimate: .dollars(2))
        #expect(monitor.expectedCost(.dollars(1), provider: "x") == .cents(150), "never down")
        #expect(monitor.chargedHere == .dollars(4))
    }

    @Test func trendComparesTheHalvesOfTheWindow() {
        let clock = ManualClock()
        let monitor = CostMonitor(
            configuration: .init(trendWindow: .seconds(60)),
            clock: PargenClock(clock)
        )
        for i in 0..<6 {
            monitor.charged(.dollars(i < 2 ? 1 : 3), provider: "x", estimate: .dollars(1))
            clock.advance(by: .seconds(10))
        }
        #expect(monitor.stats().trend == .increasing)
        #expect(monitor.stats().providers.first?.jobs == 6)
    }
}

@Suite struct MoneyTests {
    @Test func parsesAndPrintsExactly() {
        #expect(Money(parsing: "0.015") == Money(nanos: 15_000_000))
        #expect(Money(parsing: "$12") == .dollars(12))
        #expect(Money(parsing: "1.0000000001") == nil)
        #expect(Money(parsing: "abc") == nil)
        #expect(Money.cents(150).description == "$1.50")
        #expect(Money(nanos: 15_000).description == "$0.000015")
        #expect(Money(nanos: 1).times(thousandths: 1) == Money(nanos: 1), "rounds up")
        #expect(Money.micros(30).times(thousandths: 1500) == Money.micros(45))
    }

    /// Prices come from configuration files and provider answers: no sum or product of them may trap. Money
    /// saturates at about nine billion dollars, which no budget allows, so a runaway estimate is refused by the
    /// budget instead of crashing the process.
    @Test func arithmeticSaturatesInsteadOfTrapping() {
        let most = Money(nanos: .max)
        #expect(most + .cents(1) == most)
        #expect(Money(nanos: .min) - .cents(1) == Money(nanos: .min))
        #expect(Money.dollars(8_000_000_000) * 600 == most)
        #expect(Money.dollars(8_000_000_000) * -600 == Money(nanos: .min))
        #expect(Money.dollars(8_000_000_000).times(thousandths: 600_000) == most)
        #expect(Money(nanos: 999).times(thousandths: .max) == most)
        #expect(Money.dollars(1_000_000_000) * 3 == .dollars(3_000_000_000), "exact below the limit")
        // The largest price the configuration accepts, for the longest request, estimates without a trap.
        var pricing = ProviderPricing()
        pricing.perVideoSecond = Money(parsing: "8999999999.999999999")!
        pricing.perRequest = Money(parsing: "8999999999")!
        let request = validated(.video(prompt: "long", duration: .seconds(60)))
        #expect(pricing.estimate(request) == most)
        // Cost per media minute of $200,000 charged over 100 minutes: the plain product overflowed Int64.
        #expect(Money.dollars(200_000).scaled(by: 60_000, over: 6_000_000) == .dollars(2_000))
        #expect(most.scaled(by: 60_000, over: 1) == most)
        #expect(Money(nanos: -7).scaled(by: 1, over: 2) == Money(nanos: -3))
    }
}
