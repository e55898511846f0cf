/// An additive-increase, multiplicative-decrease limit on a provider's concurrent calls.
///
/// Starts at the provider's ceiling (its documented concurrency quota). A throttling answer halves it; a
/// latency well above the running average trims it by 10 %; each success adds `1/limit`, so the limit grows
/// back by about one per round of successful calls.
public struct AdaptiveConcurrencyLimit: Sendable, Hashable {
    public let minimum: Int
    public let maximum: Int
    /// A latency this many times the running average counts as "rising".
    public var latencyTolerance: Double
    public private(set) var limit: Double
    public private(set) var averageLatency: Double?
    public private(set) var decreases = 0

    public init(maximum: Int, minimum: Int = 1, latencyTolerance: Double = 3) {
        precondition(maximum >= minimum && minimum >= 1)
        self.minimum = minimum
        self.maximum = maximum
        self.latencyTolerance = latencyTolerance
        limit = Double(maximum)
    }

    /// The whole number of calls allowed now.
    public var current: Int { max(minimum, min(maximum, Int(limit))) }

    public mutating func recordSuccess(latency: Duration) {
        let sample = latency.seconds
        if let average = averageLatency, average > 0, sample > average * latencyTolerance {
            limit = max(Double(minimum), limit * 0.9)
            decreases += 1
        } else {
            limit = min(Double(maximum), limit + 1 / max(limit, 1))
        }
        averageLatency = averageLatency.map { $0 * 0.9 + sample * 0.1 } ?? sample
    }

    public mutating func recordThrottled() {
        limit = max(Double(minimum), limit * 0.5)
        decreases += 1
    }

    /// A failure that says nothing about load (a bad request, say) leaves the limit alone; a time-out backs off.
    public mutating func recordTimeout() {
        limit = max(Double(minimum), limit * 0.75)
        decreases += 1
    }
}
