import Pargen
import PargenTesting
import Testing

@Suite(.timeLimit(.minutes(3))) struct ResourcePoolTests {
    func pool(jobs: Int = 4, clock: ManualClock = ManualClock()) -> ResourcePool {
        ResourcePool(
            configuration: .init(
                maxAPICalls: 8,
                maxConcurrentJobs: jobs,
                maxMemoryMB: 100,
                maxStorageGB: 1,
                scaleInterval: .seconds(5)
            ),
            clock: PargenClock(clock)
        )
    }

    @Test func grantsAllOrNothingAndWakesWaitersOnRelease() async throws {
        let pool = pool(jobs: 4)
        // Starts half way between the floor (1) and the maximum (4): 2 job slots.
        #expect(pool.stats().resources[.jobSlots]?.limit == 2)
        let a = try await pool.acquire(ResourceRequest(amounts: [.jobSlots: 1, .memoryMB: 30]))
        let b = try await pool.acquire(ResourceRequest(amounts: [.jobSlots: 1, .memoryMB: 10]))
        // Memory starts at 50 of 100: 40 in use, 20 more does not fit. Nothing is taken while waiting.
        let waiter = Task { try await pool.acquire(ResourceRequest(amounts: [.jobSlots: 1, .memoryMB: 20])) }
        while pool.stats().waiting == 0 { await Task.yield() }
        #expect(pool.stats().resources[.jobSlots]?.inUse == 2)
        pool.release(a)
        let c = try await waiter.value
        #expect(pool.stats().resources[.memoryMB]?.inUse == 30)
        pool.release(b)
        pool.release(c)
        #expect(pool.stats().resources[.jobSlots]?.inUse == 0)
    }

    @Test func higherPriorityWaitersAreServedFirst() async throws {
        let pool = ResourcePool(
            configuration: .init(maxConcurrentJobs: 2, scaleUpThreshold: 2, minimumFraction: 0.5),
            clock: PargenClock(ManualClock())
        )
        let held = try await pool.acquire(ResourceRequest(amounts: [.jobSlots: 1]))
        #expect(pool.stats().resources[.jobSlots]?.limit == 1)
        let order = Locked<[String]>([])
        let low = Task {
            let lease = try await pool.acquire(ResourceRequest(amounts: [.jobSlots: 1], priority: .low))
            order.withLock { $0.append("low") }
            pool.release(lease)
        }
        while pool.stats().waiting < 1 { await Task.yield() }
        let urgent = Task {
            let lease = try await pool.acquire(ResourceRequest(amounts: [.jobSlots: 1], priority: .urgent))
            order.withLock { $0.append("urgent") }
            pool.release(lease)
        }
        while pool.stats().waiting < 2 { await Task.yield() }
        pool.release(held)
        try await low.value
        try await urgent.value
        #expect(order.withLock { $0 } == ["urgent", "low"])
    }

    @Test func cancelledWaiterHoldsNothing() async throws {
        let pool = pool(jobs: 1)
        let held = try await pool.acquire(ResourceRequest(amounts: [.jobSlots: 1]))
        let waiter = Task { try await pool.acquire(ResourceRequest(amounts: [.jobSlots: 1])) }
        while pool.stats().waiting == 0 { await Task.yield() }
        waiter.cancel()
        await #expect(throws: CancellationError.self) { try await waiter.value }
        #expect(pool.stats().waiting == 0)
        pool.release(held)
        #expect(pool.stats().resources[.jobSlots]?.inUse == 0)
    }

    @Test func scalesDownWhenIdleAfterTheInterval() async throws {
        let clock = ManualClock()
        let pool = pool(jobs: 40, clock: clock)
        #expect(pool.stats().resources[.jobSlots]?.limit == 20)
        let lease = try await pool.acquire(ResourceRequest(amounts: [.jobSlots: 1]))
        #expect(pool.stats().resources[.jobSlots]?.limit == 20, "no step within the first interval")
        clock.advance(by: .seconds(6))
        // 0 of 20 in use: one step down, a quarter of the limit.
        pool.release(lease)
        #expect(pool.stats().resources[.jobSlots]?.limit == 15)
        clock.advance(by: .seconds(1))
        pool.release(try await pool.acquire(ResourceRequest(amounts: [.jobSlots: 1])))
        #expect(pool.stats().resources[.jobSlots]?.limit == 15, "no second step within the scale interval")
        clock.advance(by: .seconds(5))
        pool.release(try await pool.acquire(ResourceRequest(amounts: [.jobSlots: 1])))
        #expect(pool.stats().resources[.jobSlots]?.limit == 12)
        for _ in 0..<10 {
            clock.advance(by: .seconds(6))
            pool.release(try await pool.acquire(ResourceRequest(amounts: [.jobSlots: 1])))
        }
        #expect(pool.stats().resources[.jobSlots]?.limit == 10)
    }

    @Test func scalesUpWhenAWaiterIsBlockedAfterTheInterval() async throws {
        let clock = ManualClock()
        let pool = pool(jobs: 4, clock: clock)
        let a = try await pool.acquire(ResourceRequest(amounts: [.jobSlots: 1]))
        let b = try await pool.acquire(ResourceRequest(amounts: [.jobSlots: 1]))
        let waiter = Task { try await pool.acquire(ResourceRequest(amounts: [.jobSlots: 1])) }
        while pool.stats().waiting == 0 { await Task.yield() }
        #expect(pool.stats().resources[.jobSlots]?.limit == 2)
        clock.advance(by: .seconds(5))
        // The next decision (here a release elsewhere in the pool) sees the blocked waiter and scales up.
        pool.release(try await pool.acquire(ResourceRequest(amounts: [.memoryMB: 1])))
        let c = try await waiter.value
        #expect(pool.stats().resources[.jobSlots]?.limit == 3)
        #expect(pool.stats().resources[.jobSlots]?.scaleUps == 1)
        for lease in [a, b, c] { pool.release(lease) }
    }
}

@Suite struct AdaptiveConcurrencyLimitTests {
    @Test func backsOffOnThrottlingAndRisingLatencyAndGrowsBack() {
        var limit = AdaptiveConcurrencyLimit(maximum: 16)
        #expect(limit.current == 16)
        limit.recordThrottled()
        #expect(limit.current == 8)
        limit.recordThrottled()
        limit.recordThrottled()
        limit.recordThrottled()
        limit.recordThrottled()
        #expect(limit.current == 1)
        for _ in 0..<20 { limit.recordSuccess(latency: .milliseconds(100)) }
        #expect(limit.current >= 5)
        let before = limit.limit
        limit.recordSuccess(latency: .seconds(2))
        #expect(limit.limit < before)
    }
}
