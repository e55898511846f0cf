import Dispatch
import Synchronization

extension CampaignSimulator {
    /// Several simulations of one campaign, each with its own draw of the call times: what a real run of it may
    /// take, as a median and a range, instead of one draw.
    ///
    /// A campaign of a few long tasks ends when its slowest slot does, so one draw of the task times can be a
    /// third away from a real run whose tasks happened to be shorter; a campaign of thousands of calls varies by
    /// a percent or two. The range says which of the two a campaign is.
    public struct Forecast: Sendable {
        /// Each draw's makespan, in the order of the draws (seeds `seed`, `seed + 1`, ...).
        public var makespans: [Duration]
        /// The full report of the median draw: the draw whose makespan is the middle one (of an even count, the
        /// lower of the two middle ones), so that the figures it gives (providers, windows, waits) are those of
        /// one real schedule.
        public var median: Report
        /// The seed of the median draw, to run it again alone.
        public var medianSeed: UInt64
        /// The shortest and the longest draw.
        public var range: ClosedRange<Duration> { (makespans.min() ?? .zero)...(makespans.max() ?? .zero) }
    }

    /// Simulates `requests` `draws` times, the `i`-th draw with seed `seed + i`, and returns the makespan of each
    /// and the report of the median one. The draws run at once on the machine's cores; this call blocks until
    /// the last one ends.
    ///
    /// - Precondition: `draws` is at least 1.
    public func forecast(_ requests: [ValidatedRequest], draws: Int) -> Forecast {
        precondition(draws >= 1, "a forecast needs at least one draw")
        let reports = Mutex([Report?](repeating: nil, count: draws))
        DispatchQueue.concurrentPerform(iterations: draws) { index in
            var simulator = self
            simulator.seed = seed &+ UInt64(index)
            let report = simulator.run(requests)
            reports.withLock { $0[index] = report }
        }
        let all = reports.withLock { $0.map { $0! } }
        // Ties go to the earlier draw, so the same seed always names the same median.
        let ranked = all.indices.sorted { (all[$0].makespan, $0) < (all[$1].makespan, $1) }
        let middle = ranked[(draws - 1) / 2]
        return Forecast(makespans: all.map(\.makespan), median: all[middle], medianSeed: seed &+ UInt64(middle))
    }
}
