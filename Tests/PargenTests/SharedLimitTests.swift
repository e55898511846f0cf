import Pargen
import Testing

/// The shared admission rule (``SharedLimitState/decide(_:at:)``), decision by decision at explicit times: the
/// PostgreSQL store reads these counts under row locks and applies exactly this.
@Suite struct SharedLimitTests {
    let quota = ProviderQuota(requestsPerMinute: 10, concurrentTasks: 2, window: .seconds(60), margin: .zero, concurrencyKinds: [.video])
    var limits: PargenConfiguration.RateLimits {
        var limits = PargenConfiguration.RateLimits()
        limits.perUserRequestsPerMinute = 5
        limits.perProjectRequestsPerMinute = 60
        limits.tokenBucketCapacity = 3
        limits.maxBurst = 4
        limits.burstWindow = .seconds(1)
        limits.burstCooldown = .seconds(5)
        return limits
    }

    func call(submits: Bool = true, holdsSlot: Bool = false) -> SharedCall {
        SharedCall(provider: "p", user: "u", project: "j", submits: submits, holdsSlot: holdsSlot, quota: quota, limits: limits)
    }

    @Test func roomEverywhereAdmitsAndMovesTheBucket() {
        let now = Duration.seconds(100)
        #expect(SharedLimitState().decide(call(), at: now) == .admit(projectTAT: now + .seconds(1)))
    }

    @Test func aFullProviderWindowWaitsForItsOldestAnsweredPlace() {
        let now = Duration.seconds(100)
        let state = SharedLimitState(providerWindowUsed: 10, providerOldestDated: .seconds(70))
        #expect(state.decide(call(), at: now) == .wait(.seconds(30), limit: .providerWindow, startsBurstCooldown: false))
        // A resumed task only polls: the window does not hold it back.
        #expect(state.decide(call(submits: false), at: now) == .admit(projectTAT: now + .seconds(1)))
        // All places pending (none answered yet): look again shortly.
        let pending = SharedLimitState(providerWindowUsed: 10)
        #expect(pending.decide(call(), at: now) == .wait(SharedLimitState.recheck, limit: .providerWindow, startsBurstCooldown: false))
    }

    @Test func slotsHoldBackOnlyCallsThatHoldOne() {
        let state = SharedLimitState(slotsUsed: 2)
        let now = Duration.seconds(10)
        #expect(state.decide(call(holdsSlot: true), at: now) == .wait(SharedLimitState.recheck, limit: .providerSlots, startsBurstCooldown: false))
        #expect(state.decide(call(holdsSlot: false), at: now) == .admit(projectTAT: now + .seconds(1)))
    }

    @Test func theLongestWaitWinsAndNothingIsTaken() {
        let now = Duration.seconds(100)
        // The user's window frees at 110 s, the provider's cooldown ends at 130 s.
        let state = SharedLimitState(providerCooldownUntil: .seconds(130), userUsed: 5, userOldest: .seconds(50))
        #expect(state.decide(call(), at: now) == .wait(.seconds(30), limit: .providerCooldown, startsBurstCooldown: false))
        #expect(SharedLimitState(userUsed: 5, userOldest: .seconds(50)).decide(call(), at: now)
            == .wait(.seconds(10), limit: .userWindow, startsBurstCooldown: false))
    }

    @Test func theBucketAdmitsItsCapacityThenOneAPerEmissionInterval() {
        // Capacity 3 at one a second: three at once, then the fourth waits a second.
        var tat: Duration?
        let now = Duration.seconds(100)
        for _ in 0..<3 {
            guard case .admit(let next) = SharedLimitState(projectTAT: tat).decide(call(), at: now) else {
                Issue.record("the bucket refused within its capacity")
                return
            }
            tat = next
        }
        #expect(SharedLimitState(projectTAT: tat).decide(call(), at: now) == .wait(.seconds(1), limit: .projectBucket, startsBurstCooldown: false))
    }

    @Test func aUsedUpBurstStartsTheCooldownOnlyWhenNothingElseHoldsTheCall() {
        let now = Duration.seconds(100)
        #expect(SharedLimitState(burstUsed: 4).decide(call(), at: now) == .wait(.seconds(5), limit: .burstCooldown, startsBurstCooldown: true))
        // Held back by the user's window already: the burst guard is not consumed.
        #expect(SharedLimitState(userUsed: 5, userOldest: .seconds(99), burstUsed: 4).decide(call(), at: now)
            == .wait(.seconds(59), limit: .userWindow, startsBurstCooldown: false))
        #expect(SharedLimitState(burstCooldownUntil: .seconds(102)).decide(call(), at: now)
            == .wait(.seconds(2), limit: .burstCooldown, startsBurstCooldown: false))
    }

    @Test func withTheClientLimitsOffOnlyTheProvidersCount() {
        var off = call()
        off.limits.enabled = false
        #expect(SharedLimitState(userUsed: 99, burstUsed: 99).decide(off, at: .seconds(1)) == .admit(projectTAT: nil))
        #expect(!SharedCall(provider: "p", user: "u", project: "j", submits: true, holdsSlot: false, quota: ProviderQuota(), limits: off.limits).hasSharedLimits)
    }

    /// A batch decides as the same calls claimed one at a time would: each admitted call is counted before the
    /// next is decided.
    @Test func aBookCountsEachAdmittedCallBeforeTheNext() {
        let now = Duration.seconds(100)
        var book = SharedLimitBook()
        // The user window (5 a minute) binds after five calls of one user; another user of the same project
        // meets the bucket (3, then one a second) first.
        let decisions = (0..<4).map { _ in book.decide(call(), at: now) }
        #expect(decisions.prefix(3).allSatisfy { if case .admit = $0 { true } else { false } })
        #expect(decisions[3] == .wait(.seconds(1), limit: .projectBucket, startsBurstCooldown: false))
        #expect(book.users["u"]?.used == 3)
        #expect(book.users["u"]?.oldest == now)
        #expect(book.providers["p"]?.windowUsed == 3)
        #expect(book.projects["j"]?.burstUsed == 3)
        // A second later the bucket has room; the burst (4 in 1 s) is not used up, and the fourth call goes.
        let later = now + .seconds(1)
        guard case .admit = book.decide(call(), at: later) else {
            Issue.record("the bucket has room a second later")
            return
        }
        // The provider's window (10) and slots (2) count only the calls that take them.
        var slots = SharedLimitBook()
        #expect(slots.decide(call(holdsSlot: true), at: now) != .wait(SharedLimitState.recheck, limit: .providerSlots, startsBurstCooldown: false))
        _ = slots.decide(call(holdsSlot: true), at: now)
        #expect(slots.providers["p"]?.slotsUsed == 2)
        #expect(slots.decide(call(holdsSlot: true), at: now) == .wait(SharedLimitState.recheck, limit: .providerSlots, startsBurstCooldown: false))
    }
}
