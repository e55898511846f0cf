/// Latency percentiles of one provider's successful calls.
public struct LatencySummary: Sendable, Hashable, Codable {
    public var count: Int
    public var p50: Duration
    public var p95: Duration
    public var max: Duration

    init(_ samples: [Duration]) {
        let sorted = samples.sorted()
        count = sorted.count
        func percentile(_ p: Double) -> Duration {
            guard !sorted.isEmpty else { return .zero }
            let index = Int((Double(sorted.count - 1) * p).rounded(.up))
            return sorted[Swift.min(sorted.count - 1, index)]
        }
        p50 = percentile(0.5)
        p95 = percentile(0.95)
        max = sorted.last ?? .zero
    }
}

/// Per-provider counts from the engine's point of view.
public struct ProviderActivity: Sendable, Hashable, Codable {
    public var succeeded = 0
    /// Calls that failed (each may have been retried).
    public var failedCalls = 0
    /// Calls answered with throttling.
    public var throttled = 0
    /// Retries scheduled after a failure on this provider.
    public var retries = 0
    public var deadLettered = 0
    /// Synchronous answers the provider billed that were then lost (cut short, unusable, not saved), and what
    /// they were charged: each is in the ledger, and a retry of the line pays again.
    public var billedAnswersLost = 0
    public var billedAnswersLostCost: Money = .zero
    public var latency: LatencySummary = LatencySummary([])

    public init() {}
}

/// A snapshot of every component, as the seed's `get_system_stats()` returned.
public struct SystemStats: Sendable, Codable {
    public var rateLimiter: RateLimiterStats
    public var resourcePool: ResourcePoolStats
    public var batcher: BatcherStats
    public var loadBalancer: [ProviderHealthStats]
    public var cache: CacheStats
    public var costMonitor: CostStats
    /// Jobs per state in the store.
    public var queue: [JobState: Int]
    public var providers: [String: ProviderActivity]
    /// Requests rejected by validation.
    public var invalid: Int
    /// The tiers shared with other processes, when configured.
    public var sharedCache: SharedCacheStats?
}
