import DequeModule
import Synchronization

/// The resources a job holds while it runs.
public enum ResourceKind: String, Sendable, Hashable, CaseIterable, Codable {
    case apiCalls = "api_calls"
    case jobSlots = "job_slots"
    case memoryMB = "memory_mb"
    case storageMB = "storage_mb"
}

/// What one lease asks for: amounts of each resource. (A provider's own slots are its admission state's,
/// ``ProviderAdmission``.)
public struct ResourceRequest: Sendable, Hashable {
    public var amounts: [ResourceKind: Int]
    public var priority: GenerationPriority

    public init(amounts: [ResourceKind: Int], priority: GenerationPriority = .normal) {
        self.amounts = amounts
        self.priority = priority
    }
}

/// Proof of a granted ``ResourceRequest``; give it back with ``ResourcePool/release(_:)``.
public struct ResourceLease: Sendable, Hashable {
    public let id: UInt64
    public let request: ResourceRequest
}

/// Scoped leases on API-call slots, job slots, memory and storage.
///
/// A lease is granted all-or-nothing; waiters are served by priority, then in arrival order, first fit.
/// Each limit auto-scales between its floor and its maximum: up by a quarter when utilisation reaches the
/// scale-up threshold (or a waiter is blocked by it), down by a quarter when it falls to the scale-down
/// threshold, at most once per scale interval.
public final class ResourcePool: Sendable {
    struct Limit {
        var current: Int
        let minimum: Int
        let maximum: Int
        var inUse = 0
        var peak = 0
        var lastScaled: Duration?
        var scaleUps = 0
        var scaleDowns = 0
    }

    struct Waiter {
        var id: UInt64
        var request: ResourceRequest
        var continuation: CheckedContinuation<ResourceLease, any Error>
    }

    struct State {
        var limits: [ResourceKind: Limit]
        var waiters: [Waiter] = []
        var nextID: UInt64 = 0
        var granted = 0
        var waited = 0
    }

    public let configuration: PargenConfiguration.Resources
    private let clock: PargenClock
    private let state: Mutex<State>

    public init(configuration: PargenConfiguration.Resources, clock: PargenClock = .continuous) {
        self.configuration = configuration
        self.clock = clock
        let start = clock.now
        func limit(_ maximum: Int) -> Limit {
            let floor = max(1, Int((Double(maximum) * configuration.minimumFraction).rounded(.down)))
            // The first scaling step comes one interval after start, once there is load to judge.
            return Limit(
                current: max(floor, (maximum + 1) / 2),
                minimum: min(floor, maximum),
                maximum: maximum,
                lastScaled: start
            )
        }
        state = Mutex(
            State(limits: [
                .apiCalls: limit(configuration.maxAPICalls),
                .jobSlots: limit(configuration.maxConcurrentJobs),
                .memoryMB: limit(configuration.maxMemoryMB),
                .storageMB: limit(configuration.maxStorageGB * 1024),
            ])
        )
    }

    /// Waits until the whole request fits, then takes it.
    ///
    /// - Throws: `CancellationError` if the task is cancelled while waiting; nothing is then held.
    public func acquire(_ request: ResourceRequest) async throws -> ResourceLease {
        let id = state.withLock { state -> UInt64 in
            state.nextID += 1
            return state.nextID
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<ResourceLease, any Error>) in
                let now = clock.now
                let outcome = state.withLock { state -> Result<ResourceLease, any Error>? in
                    // The cancellation flag is set before `onCancel` runs, so checking it under the lock closes
                    // the race between registering and being cancelled.
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if Self.takeNow(request, in: &state, now: now, configuration: configuration) {
                        return .success(ResourceLease(id: id, request: request))
                    }
                    let position =
                        state.waiters.firstIndex { $0.request.priority < request.priority } ?? state.waiters.count
                    state.waiters.insert(Waiter(id: id, request: request, continuation: continuation), at: position)
                    state.waited += 1
                    Self.autoscale(&state, now: now, configuration: configuration)
                    return nil
                }
                if let outcome { continuation.resume(with: outcome) } else { self.grantWaiters() }
            }
        } onCancel: {
            let waiter = state.withLock { state -> Waiter? in
                guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return state.waiters.remove(at: index)
            }
            waiter?.continuation.resume(throwing: CancellationError())
            // A cancelled waiter may have been blocking others behind it.
            if waiter != nil { self.grantWaiters() }
        }
    }

    /// Takes the whole request now if it fits and nobody of equal or higher priority waits for the same
    /// things (the rule ``acquire(_:)`` follows); `nil`, with nothing taken, otherwise.
    public func tryAcquire(_ request: ResourceRequest) -> ResourceLease? {
        let now = clock.now
        return state.withLock { state -> ResourceLease? in
            guard Self.takeNow(request, in: &state, now: now, configuration: configuration) else { return nil }
            state.nextID += 1
            return ResourceLease(id: state.nextID, request: request)
        }
    }

    /// How much of `kind` is free now under its current (auto-scaled) limit.
    public func available(_ kind: ResourceKind) -> Int {
        state.withLock { state in state.limits[kind].map { max(0, $0.current - $0.inUse) } ?? 0 }
    }

    /// Returns a lease's resources and wakes the waiters that now fit.
    public func release(_ lease: ResourceLease) {
        let now = clock.now
        state.withLock { state in
            for (kind, amount) in lease.request.amounts { state.limits[kind]?.inUse -= amount }
            Self.autoscale(&state, now: now, configuration: configuration)
        }
        grantWaiters()
    }

    /// Runs `body` holding the resources, and always gives them back.
    public func withLease<T: Sendable>(
        _ request: ResourceRequest,
        _ body: () async throws -> T
    ) async throws -> T {
        let lease = try await acquire(request)
        defer { release(lease) }
        return try await body()
    }

    public func stats() -> ResourcePoolStats {
        state.withLock { state in
            ResourcePoolStats(
                resources: state.limits.mapValues {
                    ResourceStats(
                        limit: $0.current,
                        minimum: $0.minimum,
                        maximum: $0.maximum,
                        inUse: $0.inUse,
                        peak: $0.peak,
                        scaleUps: $0.scaleUps,
                        scaleDowns: $0.scaleDowns
                    )
                },
                // Providers' slots are the admission state's; the engine fills them in its stats.
                providers: [:],
                waiting: state.waiters.count,
                leasesGranted: state.granted,
                leasesThatWaited: state.waited
            )
        }
    }

    // MARK: - Internals (called under the lock)

    private func grantWaiters() {
        let now = clock.now
        let ready = state.withLock { state -> [(CheckedContinuation<ResourceLease, any Error>, ResourceLease)] in
            var ready: [(CheckedContinuation<ResourceLease, any Error>, ResourceLease)] = []
            var index = 0
            while index < state.waiters.count {
                let waiter = state.waiters[index]
                if Self.fits(waiter.request, in: state) {
                    Self.take(waiter.request, in: &state)
                    state.waiters.remove(at: index)
                    ready.append((waiter.continuation, ResourceLease(id: waiter.id, request: waiter.request)))
                } else {
                    index += 1
                }
            }
            if !ready.isEmpty { Self.autoscale(&state, now: now, configuration: configuration) }
            return ready
        }
        for (continuation, lease) in ready { continuation.resume(returning: lease) }
    }

    /// Takes `request` if it fits and no waiter of equal or higher priority competes for it: a waiter blocked on
    /// job slots must not hold up a request for memory or call slots, and nobody jumps a queue they belong in.
    private static func takeNow(
        _ request: ResourceRequest,
        in state: inout State,
        now: Duration,
        configuration: PargenConfiguration.Resources
    ) -> Bool {
        let queued = state.waiters.contains {
            $0.request.priority >= request.priority && Self.competes($0.request, request)
        }
        guard !queued, Self.fits(request, in: state) else { return false }
        Self.take(request, in: &state)
        Self.autoscale(&state, now: now, configuration: configuration)
        return true
    }

    /// Whether two requests want any of the same resources (a kind both need).
    private static func competes(_ a: ResourceRequest, _ b: ResourceRequest) -> Bool {
        return a.amounts.contains { kind, amount in amount > 0 && (b.amounts[kind] ?? 0) > 0 }
    }

    private static func fits(_ request: ResourceRequest, in state: State) -> Bool {
        for (kind, amount) in request.amounts {
            guard let limit = state.limits[kind] else { continue }
            // A request larger than the whole limit is let through alone rather than never.
            if limit.inUse + amount > limit.current && !(limit.inUse == 0 && amount > limit.current) { return false }
        }
        return true
    }

    private static func take(_ request: ResourceRequest, in state: inout State) {
        for (kind, amount) in request.amounts where state.limits[kind] != nil {
            state.limits[kind]!.inUse += amount
            state.limits[kind]!.peak = max(state.limits[kind]!.peak, state.limits[kind]!.inUse)
        }
        state.granted += 1
    }

    private static func autoscale(_ state: inout State, now: Duration, configuration: PargenConfiguration.Resources) {
        for kind in ResourceKind.allCases {
            guard var limit = state.limits[kind] else { continue }
            if let last = limit.lastScaled, now - last < configuration.scaleInterval { continue }
            let utilisation = Double(limit.inUse) / Double(max(1, limit.current))
            let blocked = state.waiters.contains { ($0.request.amounts[kind] ?? 0) > 0 }
            let step = max(1, limit.current / 4)
            if (utilisation >= configuration.scaleUpThreshold || blocked) && limit.current < limit.maximum {
                limit.current = min(limit.maximum, limit.current + step)
                limit.lastScaled = now
                limit.scaleUps += 1
            } else if utilisation <= configuration.scaleDownThreshold && !blocked && limit.current > limit.minimum {
                limit.current = max(limit.minimum, limit.current - step)
                limit.lastScaled = now
                limit.scaleDowns += 1
            }
            state.limits[kind] = limit
        }
    }
}

public struct ResourceStats: Sendable, Hashable, Codable {
    public var limit: Int
    public var minimum: Int
    public var maximum: Int
    public var inUse: Int
    public var peak: Int
    public var scaleUps: Int
    public var scaleDowns: Int
    public var utilization: Double { Double(inUse) / Double(max(1, limit)) }
}

public struct ProviderConcurrencyStats: Sendable, Hashable, Codable {
    public var limit: Int
    public var maximum: Int
    public var inFlight: Int
    public var peak: Int
    public var decreases: Int
    /// Submissions the provider's window allows (`nil` without a window).
    public var windowLimit: Int? = nil
    /// Submissions the window has room for now.
    public var windowRoom: Int? = nil
    /// Time left of a cooldown the provider asked for (Retry-After, THROTTLED, 1002), if one runs.
    public var cooldownLeft: Duration? = nil
}

public struct ResourcePoolStats: Sendable, Hashable, Codable {
    public var resources: [ResourceKind: ResourceStats]
    public var providers: [String: ProviderConcurrencyStats]
    public var waiting: Int
    public var leasesGranted: Int
    public var leasesThatWaited: Int
}
