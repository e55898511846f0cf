import Synchronization

/// Chooses a provider for each call: capable, circuit closed, healthy, with headroom, and cheap.
///
/// Each capable provider gets a weight of health (1 − recent error rate) × relative speed (fastest EWMA
/// latency / its EWMA latency) × relative price (cheapest estimate / its estimate), cut to 1 % when it has
/// no free concurrency or is cooling down after throttling. The choice is weighted-random from a seeded
/// generator, so load spreads while the best provider gets the most.
public final class LoadBalancer: Sendable {
    public enum Choice: Sendable, Hashable {
        case provider(String)
        /// Every capable provider's circuit is open: try again at this time.
        case wait(until: Duration)
        /// No configured provider can do this; the reasons name each provider.
        case noneCapable(reason: String)
    }

    struct Health {
        var breaker: CircuitBreaker
        var ewmaLatency: Double?
        var successes = 0
        var failures = 0
        var throttles = 0
        var calls = 0
    }

    public let configuration: PargenConfiguration.Balancing
    private let descriptors: [String: ProviderDescriptor]
    private let order: [String]
    private let state: Mutex<(health: [String: Health], rng: SplitMix64)>

    public init(providers: [ProviderDescriptor], configuration: PargenConfiguration.Balancing, seed: UInt64 = 1) {
        self.configuration = configuration
        descriptors = Dictionary(providers.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        order = providers.map(\.name)
        state = Mutex(
            (
                Dictionary(
                    uniqueKeysWithValues: descriptors.keys.map {
                        ($0, Health(breaker: CircuitBreaker(configuration: configuration)))
                    }
                ),
                SplitMix64(seed: seed)
            )
        )
    }

    public var providerNames: [String] { order }
    public func descriptor(_ name: String) -> ProviderDescriptor? { descriptors[name] }

    /// Why no provider can serve `request`, or `nil` when at least one can.
    public func refusal(for request: ValidatedRequest) -> String? { refusedField(for: request)?.reason }

    /// Why no provider can serve `request` (each candidate's reason), and the field at fault: the one field every
    /// candidate refuses (`format` when none produces it), else `provider` for a pinned provider, else `nil`.
    /// `nil` when at least one provider can serve it.
    public func refusedField(for request: ValidatedRequest) -> (field: String?, reason: String)? {
        let candidates = request.provider.map { [$0] } ?? order
        var reasons: [String] = []
        var fields: Set<String> = []
        for name in candidates {
            guard let descriptor = descriptors[name] else {
                reasons.append("no provider named \(name) is configured")
                fields.insert("provider")
                continue
            }
            guard let refused = descriptor.capabilities.refusedField(for: request) else { return nil }
            reasons.append("\(name) \(refused.reason)")
            fields.insert(refused.field)
        }
        guard !reasons.isEmpty else { return (nil, "no providers are configured") }
        let field = fields.count == 1 ? fields.first : request.provider == nil ? nil : "provider"
        return (field, reasons.joined(separator: "; "))
    }

    /// Chooses a provider for one call.
    ///
    /// - Parameters:
    ///   - excluding: Providers that already failed this job; used only while another capable one remains.
    ///   - headroom: Free concurrency slots of a provider, if it is limited.
    ///   - coolingDown: Whether a provider is holding calls back after throttling.
    public func choose(
        for request: ValidatedRequest,
        excluding: Set<String> = [],
        at now: Duration,
        headroom: (String) -> Int? = { _ in nil },
        coolingDown: (String) -> Bool = { _ in false }
    ) -> Choice {
        let capable = (request.provider.map { [$0] } ?? order).filter {
            descriptors[$0].map { $0.capabilities.refusal(for: request) == nil } ?? false
        }
        guard !capable.isEmpty else { return .noneCapable(reason: refusal(for: request) ?? "no capable provider") }
        let preferred = capable.filter { !excluding.contains($0) }
        let pool = preferred.isEmpty ? capable : preferred
        let estimates = Dictionary(uniqueKeysWithValues: pool.map { ($0, descriptors[$0]!.pricing.estimate(request)) })
        let headrooms = Dictionary(uniqueKeysWithValues: pool.map { ($0, headroom($0)) })
        let cooling = Set(pool.filter(coolingDown))
        return state.withLock { state in
            let open = pool.filter { !state.health[$0]!.breaker.wouldAllow(at: now) }
            let available = pool.filter { !open.contains($0) }
            guard !available.isEmpty else {
                let reopen = open.compactMap { state.health[$0]!.breaker.reopensAt }.min() ?? now
                return .wait(until: reopen)
            }
            let cheapest = available.map { estimates[$0]!.nanos }.min()!
            let fastest = available.compactMap { state.health[$0]!.ewmaLatency }.min()
            var weights: [(String, Double)] = []
            for name in available {
                let health = state.health[name]!
                var weight = max(0.02, 1 - health.breaker.errorRate)
                if let fastest, let latency = health.ewmaLatency, latency > 0 { weight *= max(0.2, fastest / latency) }
                let price = estimates[name]!.nanos
                if price > 0 { weight *= max(0.05, Double(max(cheapest, 1)) / Double(price)) }
                if let free = headrooms[name] ?? nil, free <= 0 { weight *= 0.01 }
                if cooling.contains(name) { weight *= 0.01 }
                weights.append((name, weight))
            }
            let total = weights.reduce(0) { $0 + $1.1 }
            var pick = Double(state.rng.next() >> 11) / Double(1 << 53) * total
            var chosen = weights.last!.0
            for (name, weight) in weights {
                if pick < weight {
                    chosen = name
                    break
                }
                pick -= weight
            }
            _ = state.health[chosen]!.breaker.allowCall(at: now)
            state.health[chosen]!.calls += 1
            return .provider(chosen)
        }
    }

    /// What each provider's circuit allows at `now`, for the scheduler (which decides without calling back here).
    public func gates(at now: Duration) -> [String: BreakerGate] {
        state.withLock { state in
            var gates: [String: BreakerGate] = [:]
            for (name, health) in state.health {
                let breaker = health.breaker
                if !breaker.wouldAllow(at: now) {
                    gates[name] = .open(until: breaker.reopensAt ?? now + configuration.openDuration)
                } else if breaker.state != .closed {
                    gates[name] = .canary
                }
            }
            return gates
        }
    }

    /// Records a call the scheduler sent to `provider` (in half-open, it is the canary).
    public func recordCall(_ provider: String, at now: Duration) {
        state.withLock { state in
            guard state.health[provider] != nil else { return }
            _ = state.health[provider]!.breaker.allowCall(at: now)
            state.health[provider]!.calls += 1
        }
    }

    /// Whether a provider other than `excluding` can serve `request` now (for immediate failover).
    public func hasAlternative(for request: ValidatedRequest, excluding: Set<String>, at now: Duration) -> Bool {
        let names = request.provider.map { [$0] } ?? order
        return state.withLock { state in
            names.contains { name in
                !excluding.contains(name)
                    && descriptors[name].map { $0.capabilities.refusal(for: request) == nil } == true
                    && state.health[name]!.breaker.wouldAllow(at: now)
            }
        }
    }

    public func recordSuccess(_ provider: String, latency: Duration) {
        state.withLock { state in
            guard var health = state.health[provider] else { return }
            health.breaker.recordSuccess()
            health.successes += 1
            let sample = latency.seconds
            health.ewmaLatency =
                health.ewmaLatency.map {
                    $0 * (1 - configuration.latencySmoothing) + sample * configuration.latencySmoothing
                } ?? sample
            state.health[provider] = health
        }
    }

    /// A failure that counts against the provider's health (5xx, time-out, broken output).
    public func recordFailure(_ provider: String, at now: Duration) {
        state.withLock { state in
            state.health[provider]?.breaker.recordFailure(at: now)
            state.health[provider]?.failures += 1
        }
    }

    /// A call that ended without judging the provider (throttled, refused for the request's own fault, cancelled).
    public func recordNeutral(_ provider: String, throttled: Bool) {
        state.withLock { state in
            state.health[provider]?.breaker.releaseCanary()
            if throttled { state.health[provider]?.throttles += 1 }
        }
    }

    public func stats() -> [ProviderHealthStats] {
        state.withLock { state in
            order.map { name in
                let health = state.health[name]!
                return ProviderHealthStats(
                    name: name,
                    circuit: health.breaker.state,
                    errorRate: health.breaker.errorRate,
                    ewmaLatency: health.ewmaLatency.map { Duration.fromSeconds($0) },
                    calls: health.calls,
                    successes: health.successes,
                    failures: health.failures,
                    throttles: health.throttles,
                    timesOpened: health.breaker.timesOpened
                )
            }
        }
    }
}

public struct ProviderHealthStats: Sendable, Hashable, Codable {
    public var name: String
    public var circuit: CircuitState
    public var errorRate: Double
    public var ewmaLatency: Duration?
    public var calls: Int
    public var successes: Int
    public var failures: Int
    public var throttles: Int
    public var timesOpened: Int
}
