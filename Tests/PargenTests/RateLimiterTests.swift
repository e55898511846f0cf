import Pargen
import PargenTesting
import Testing

@Suite struct SlidingWindowLogTests {
    @Test func admitsUpToLimitThenWaitsForOldestToExpire() {
        var log = SlidingWindowLog(limit: 3, window: .seconds(60))
        for t in [0, 10, 20] {
            #expect(log.retryAfter(at: .seconds(t)) == nil)
            log.record(at: .seconds(t))
        }
        #expect(log.retryAfter(at: .seconds(30)) == .seconds(30))
        // The window is (t - 60, t]: the admission at 0 leaves it exactly at 60.
        #expect(log.retryAfter(at: .seconds(59)) == .seconds(1))
        #expect(log.retryAfter(at: .seconds(60)) == nil)
    }

    @Test func costAboveOneWaitsForEnoughExpiries() {
        var log = SlidingWindowLog(limit: 3, window: .seconds(10))
        log.record(at: .seconds(0))
        log.record(at: .seconds(2))
        log.record(at: .seconds(4))
        #expect(log.retryAfter(at: .seconds(5), cost: 2) == .seconds(7))
    }
}

/// A provider call held up longer than the window (a queue on the way, a slow network) must still count
/// when it finally arrives: pending admissions do not expire; confirmed ones expire a window after arrival.
@Suite struct PendingArrivalTests {
    @Test func aPendingAdmissionCountsUntilConfirmedThenAWindowFromArrival() {
        var log = SlidingWindowLog(limit: 2, window: .seconds(10))
        log.recordPending(at: .seconds(0))
        log.recordPending(at: .seconds(1))
        #expect(log.retryAfter(at: .seconds(30)) != nil, "both still on their way at 30 s: no room")
        log.confirm(admittedAt: .seconds(0), arrivedAt: .seconds(31))
        #expect(log.retryAfter(at: .seconds(32)) != nil, "the first arrived at 31 s and counts until 41 s")
        log.confirm(admittedAt: .seconds(1), arrivedAt: .seconds(2))
        #expect(log.retryAfter(at: .seconds(32)) == nil, "the second arrived at 2 s and has expired")
        log.record(at: .seconds(32))
        #expect(log.retryAfter(at: .seconds(40)) == .seconds(1))
        #expect(log.retryAfter(at: .seconds(41)) == nil)
    }

    @Test func theLimiterKeepsUnconfirmedProviderCallsInTheWindow() {
        let limiter = RateLimiter(
            configuration: .unlimited,
            providerQuotas: ["p": ProviderQuota(requestsPerMinute: 1, margin: .zero)]
        )
        #expect(
            limiter.tryAcquire(user: "u", project: "x", provider: "p", confirmsArrival: true, at: .zero) == .admitted
        )
        #expect(limiter.tryAcquire(user: "u", project: "x", provider: "p", at: .seconds(120)) != .admitted)
        limiter.confirmArrival(provider: "p", admittedAt: .zero, at: .seconds(100))
        #expect(limiter.tryAcquire(user: "u", project: "x", provider: "p", at: .seconds(159)) != .admitted)
        #expect(limiter.tryAcquire(user: "u", project: "x", provider: "p", at: .seconds(160)) == .admitted)
    }
}

@Suite struct GCRATests {
    @Test func fullBucketThenSteadyRate() {
        var bucket = GCRA(capacity: 300, perMinute: 300)
        #expect(bucket.emissionInterval == .milliseconds(200))
        for _ in 0..<300 {
            #expect(bucket.retryAfter(at: .zero) == nil)
            bucket.record(at: .zero)
        }
        #expect(bucket.retryAfter(at: .zero) == .milliseconds(200))
        #expect(bucket.retryAfter(at: .milliseconds(200)) == nil)
        #expect(bucket.available(at: .seconds(60)) == 300)
    }
}

@Suite struct BurstGuardTests {
    @Test func cooldownAfterBurstAdmitsNothingUntilItEnds() {
        var burst = BurstGuard(maxBurst: 50, window: .seconds(1), cooldown: .seconds(5))
        for i in 0..<50 {
            #expect(burst.retryAfter(at: .milliseconds(i)) == nil)
            burst.record(at: .milliseconds(i))
        }
        #expect(burst.retryAfter(at: .milliseconds(60)) == .seconds(5))
        #expect(burst.retryAfter(at: .milliseconds(2000)) == .milliseconds(3060))
        #expect(burst.retryAfter(at: .milliseconds(5060)) == nil)
        #expect(burst.cooldownsStarted == 1)
    }
}

/// Checks the limiter's invariants over randomized arrival schedules.
@Suite struct RateLimiterPropertyTests {
    struct Admission {
        var time: Duration
        var user: String
        var project: String
        var provider: String
    }

    /// Replays `count` requests arriving at random times; each denied request comes back at its retry-after
    /// (as `acquire` does), so every request is eventually admitted.
    static func simulate(
        seed: UInt64,
        count: Int,
        limits: PargenConfiguration.RateLimits,
        quota: ProviderQuota,
        maxGapMs: Int = 50,
        longGapPercent: Int = 20
    ) -> (admissions: [Admission], limiter: RateLimiter, cooldowns: [(project: String, from: Duration, to: Duration)]) {
        var rng = SplitMix64(seed: seed)
        let limiter = RateLimiter(configuration: limits, providerQuotas: ["p1": quota, "p2": quota])
        let users = (0..<Int.random(in: 2...6, using: &rng)).map { "u\($0)" }
        let projects = ["a", "b"]
        // Pending requests ordered by their next attempt time.
        var pending: [(time: Duration, user: String, project: String, provider: String)] = []
        var t = Duration.zero
        for _ in 0..<count {
            // Bursty arrivals: mostly clustered, sometimes long gaps.
            let gap =
                Int.random(in: 0..<100, using: &rng) >= longGapPercent
                ? Int.random(in: 0...maxGapMs, using: &rng) : Int.random(in: 0...20_000, using: &rng)
            t += .milliseconds(gap)
            let user = users.randomElement(using: &rng)!
            let project = projects.randomElement(using: &rng)!
            pending.append((t, user, project, Bool.random(using: &rng) ? "p1" : "p2"))
        }
        var admissions: [Admission] = []
        var cooldowns: [(project: String, from: Duration, to: Duration)] = []
        var guardCounter = 0
        while !pending.isEmpty {
            guardCounter += 1
            precondition(guardCounter < count * 1000, "simulation does not converge")
            let index = pending.indices.min { pending[$0].time < pending[$1].time }!
            let request = pending.remove(at: index)
            switch limiter.tryAcquire(
                user: request.user,
                project: request.project,
                provider: request.provider,
                at: request.time
            ) {
            case .admitted:
                admissions.append(
                    Admission(
                        time: request.time,
                        user: request.user,
                        project: request.project,
                        provider: request.provider
                    )
                )
            case .denied(let retryAfter, let kind):
                #expect(retryAfter > .zero)
                if kind == .burstCooldown {
                    cooldowns.append((request.project, request.time, request.time + retryAfter))
                }
                pending.append((request.time + retryAfter, request.user, request.project, request.provider))
            }
        }
        return (admissions, limiter, cooldowns)
    }

    static func maxInAnyWindow(_ times: [Duration], window: Duration) -> Int {
        let sorted = times.sorted()
        var best = 0
        var start = 0
        for end in sorted.indices {
            while sorted[end] - sorted[start] >= window { start += 1 }
            best = max(best, end - start + 1)
        }
        return best
    }

    @Test(arguments: Array(UInt64(1)...UInt64(12)))
    func invariantsHoldOverRandomSchedules(seed: UInt64) {
        let limits = PargenConfiguration.RateLimits(
            perUserRequestsPerMinute: 60,
            perProjectRequestsPerMinute: 300,
            tokenBucketCapacity: 300,
            maxBurst: 50,
            burstWindow: .seconds(1),
            burstCooldown: .seconds(5)
        )
        let quota = ProviderQuota(requestsPerMinute: 200)
        let (admissions, _, _) = Self.simulate(seed: seed, count: 2_000, limits: limits, quota: quota)
        #expect(admissions.count == 2_000, "every request is admitted in the end")

        // Per user: at most 60 in any 60 s window.
        for (_, group) in Dictionary(grouping: admissions, by: \.user) {
            #expect(Self.maxInAnyWindow(group.map(\.time), window: .seconds(60)) <= 60)
        }
        // Per provider quota: at most 200 in any 60 s window.
        for (_, group) in Dictionary(grouping: admissions, by: \.provider) {
            #expect(Self.maxInAnyWindow(group.map(\.time), window: .seconds(60)) <= 200)
        }
        for (_, group) in Dictionary(grouping: admissions, by: \.project) {
            let times = group.map(\.time).sorted()
            // Burst: at most 50 in any 1 s window.
            #expect(Self.maxInAnyWindow(times, window: .seconds(1)) <= 50)
            // Token bucket: in any interval [t1, t2], at most capacity + rate * (t2 - t1).
            for i in stride(from: 0, to: times.count, by: 7) {
                for j in i..<times.count {
                    let length = (times[j] - times[i]).seconds
                    #expect(Double(j - i + 1) <= 300 + 5 * length + 1e-9)
                }
            }
        }
    }

    @Test(arguments: Array(UInt64(20)...UInt64(25)))
    func nothingAdmittedDuringACooldown(seed: UInt64) {
        let limits = PargenConfiguration.RateLimits(
            perUserRequestsPerMinute: 10_000,
            perProjectRequestsPerMinute: 100_000,
            tokenBucketCapacity: 10_000,
            maxBurst: 20,
            burstWindow: .seconds(1),
            burstCooldown: .seconds(5)
        )
        let (admissions, limiter, cooldowns) = Self.simulate(
            seed: seed,
            count: 1_000,
            limits: limits,
            quota: ProviderQuota(),
            maxGapMs: 15,
            longGapPercent: 2
        )
        #expect(admissions.count == 1_000)
        #expect(limiter.stats().burstCooldowns > 0)
        #expect(!cooldowns.isEmpty)
        // Every denial for a cooldown names an interval in which its project admitted nothing.
        for cooldown in cooldowns {
            let inside = admissions.filter {
                $0.project == cooldown.project && $0.time > cooldown.from && $0.time < cooldown.to
            }
            #expect(inside.isEmpty)
        }
        for (_, group) in Dictionary(grouping: admissions, by: \.project) {
            #expect(Self.maxInAnyWindow(group.map(\.time), window: .seconds(1)) <= 20)
        }
    }

    @Test func deniedRequestConsumesNothing() {
        let limiter = RateLimiter(
            configuration: .init(perUserRequestsPerMinute: 1, tokenBucketCapacity: 5),
            providerQuotas: ["p": ProviderQuota(requestsPerMinute: 100)]
        )
        #expect(limiter.tryAcquire(user: "u", project: "x", provider: "p", at: .zero) == .admitted)
        // The user window denies; the project bucket and the provider window must not be charged.
        for _ in 0..<10 {
            guard case .denied(_, .userWindow) = limiter.tryAcquire(user: "u", project: "x", provider: "p", at: .zero)
            else {
                Issue.record("expected a user-window denial")
                return
            }
        }
        for i in 0..<4 {
            #expect(limiter.tryAcquire(user: "v\(i)", project: "x", provider: "p", at: .zero) == .admitted)
        }
        guard case .denied(_, .projectBucket) = limiter.tryAcquire(user: "w", project: "x", provider: "p", at: .zero)
        else {
            Issue.record("expected the bucket to be exactly used up")
            return
        }
    }

    @Test func providerCooldownHoldsEveryone() {
        let limiter = RateLimiter(configuration: .unlimited)
        limiter.cooldown(provider: "p", until: .seconds(10))
        #expect(
            limiter.tryAcquire(user: "u", project: "x", provider: "p", at: .seconds(3))
                == .denied(retryAfter: .seconds(7), limit: .providerCooldown)
        )
        #expect(limiter.tryAcquire(user: "u", project: "x", provider: "q", at: .seconds(3)) == .admitted)
        #expect(limiter.tryAcquire(user: "u", project: "x", provider: "p", at: .seconds(10)) == .admitted)
    }

    @Test func acquireWaitsOnTheClockAndIsNeverFailed() async throws {
        let clock = ManualClock()
        let limiter = RateLimiter(configuration: .init(perUserRequestsPerMinute: 2))
        let pargenClock = PargenClock(clock)
        try await limiter.acquire(user: "u", project: "p", provider: nil, clock: pargenClock)
        clock.advance(by: .seconds(1))
        try await limiter.acquire(user: "u", project: "p", provider: nil, clock: pargenClock)
        let third = Task { try await limiter.acquire(user: "u", project: "p", provider: nil, clock: pargenClock) }
        await clock.waitForSleepers(1)
        #expect(clock.nextDeadline == .init(offset: .seconds(60)))
        clock.advance(to: .init(offset: .seconds(60)))
        let waited = try await third.value.waited
        #expect(waited == .seconds(59))
        #expect(limiter.stats().waitTime[.userWindow] == .seconds(59))
    }

    @Test func cancellingAWaiterThrows() async {
        let clock = ManualClock()
        let limiter = RateLimiter(configuration: .init(perUserRequestsPerMinute: 1))
        _ = limiter.tryAcquire(user: "u", project: "p", provider: nil, at: .zero)
        let waiter = Task {
            try await limiter.acquire(user: "u", project: "p", provider: nil, clock: PargenClock(clock))
        }
        await clock.waitForSleepers(1)
        waiter.cancel()
        await #expect(throws: CancellationError.self) { try await waiter.value }
    }
}
