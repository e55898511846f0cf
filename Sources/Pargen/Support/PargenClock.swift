/// The clock every waiting or expiring part of Pargen reads.
///
/// Wraps any `Clock` whose duration is `Duration` and measures time as the `Duration` elapsed since the
/// clock was wrapped, so that components compare plain durations and tests drive time with a manual clock.
public struct PargenClock: Sendable {
    private let nowBody: @Sendable () -> Duration
    private let sleepBody: @Sendable (Duration) async throws -> Void

    public init<C: Clock>(_ clock: C) where C.Duration == Duration {
        let origin = clock.now
        nowBody = { origin.duration(to: clock.now) }
        sleepBody = { deadline in try await clock.sleep(until: origin.advanced(by: deadline), tolerance: nil) }
    }

    /// Time elapsed since this clock was made.
    public var now: Duration { nowBody() }

    /// Sleeps until `deadline` (a value of ``now``). Throws `CancellationError` when the task is cancelled.
    public func sleep(until deadline: Duration) async throws { try await sleepBody(deadline) }

    /// Sleeps for `duration`.
    public func sleep(for duration: Duration) async throws { try await sleepBody(nowBody() + duration) }

    /// The real, monotonic clock.
    public static var continuous: PargenClock { PargenClock(ContinuousClock()) }
}
