import Foundation

/// How a failed call is handled.
public enum FailureDisposition: Sendable, Hashable {
    /// Wait, then try again without spending an attempt (rate limited).
    case snooze(for: Duration)
    /// Try again after `delay`, spending an attempt.
    case retry(after: Duration)
    /// Send the job to the dead-letter queue.
    case deadLetter
}

/// Exponential backoff with full jitter and a cap, and the error classification that decides between
/// snoozing, retrying and dead-lettering.
public struct RetryPolicy: Sendable, Hashable {
    public var configuration: PargenConfiguration.Retry

    public init(configuration: PargenConfiguration.Retry = .init()) { self.configuration = configuration }

    /// The upper bound of the delay after failed attempt `attempt` (1-based): `base × multiplier^(attempt-1)`, capped.
    public func ceiling(afterAttempt attempt: Int) -> Duration {
        let exponent = Double(max(0, attempt - 1))
        let seconds = configuration.baseDelay.seconds * Foundation.pow(configuration.multiplier, exponent)
        return min(configuration.maxDelay, Duration.fromSeconds(min(seconds, configuration.maxDelay.seconds)))
    }

    /// Full jitter: uniform in `[0, ceiling]`, from `unit` in `[0, 1)`.
    public func delay(afterAttempt attempt: Int, unit: Double) -> Duration {
        ceiling(afterAttempt: attempt) * unit
    }

    /// Decides what to do with `error` after `attempts` calls and `snoozes` rate-limit waits.
    ///
    /// - Parameter failedTasks: How many of the job's tasks, this one included, failed for a reason the provider
    ///   did not name (``GenerationError/Code/taskFailed``); past ``PargenConfiguration/Retry/failedTasks``
    ///   new tasks, the job is dead-lettered.
    public func disposition(
        for error: GenerationError,
        attempts: Int,
        snoozes: Int,
        failedTasks: Int = 0,
        unit: Double
    ) -> FailureDisposition {
        switch error.code {
        case .taskFailed:
            return attempts < configuration.maxAttempts && failedTasks <= configuration.failedTasks
                ? .retry(after: delay(afterAttempt: attempts, unit: unit)) : .deadLetter
        case .rateLimited where snoozes < configuration.maxSnoozes:
            // Honour the provider's Retry-After; without one, back off as for a transient error.
            let wait = error.retryAfter ?? delay(afterAttempt: snoozes + 1, unit: 0.5 + unit / 2)
            return .snooze(for: wait)
        case .rateLimited, .transient, .artifactInvalid:
            return attempts < configuration.maxAttempts
                ? .retry(after: delay(afterAttempt: attempts, unit: unit)) : .deadLetter
        default:
            return .deadLetter
        }
    }
}
