import Foundation

/// How a call that did not produce an artifact is settled, decided before anything is written: a pure function
/// of the error, the job, the configuration and three questions asked of the engine only when the decision
/// reaches them (was the job's cancellation requested, can another provider take it, and a random draw for the
/// retry's jitter). The engine's settlement stage then carries it out: the admission ticket, the balancer, the
/// counters, one fenced store transition, and what waiters and progress are told.
struct Settlement: Sendable, Hashable {
    /// The store transition that settles the job.
    enum Transition: Sendable, Hashable {
        /// The lease goes back untouched: a stop cut the call off before the provider billed anything.
        case release
        /// A stop cut off a call whose answer the provider billed: the charge stays in the job's history.
        case lostAnswer(charged: Money)
        /// This machine's storage failed, not the provider: the job goes back unjudged and the engine halts.
        case giveBack(LocalResourceError)
        /// The store refused a transition (the lease was lost): nothing more is written.
        case none
        /// The job is dead-lettered with this error. `endsFlight`: the call's outcome is the error (otherwise
        /// the flight ends as "try later", as for a job whose attempts ran out).
        case deadLetter(GenerationError, endsFlight: Bool)
        /// The job waits `after`, without spending an attempt (rate limited).
        case snooze(GenerationError, after: Duration)
        /// The job is tried again after `after`, spending an attempt, away from the provider that failed.
        case retry(GenerationError, after: Duration)
    }

    /// What the balancer hears about the provider.
    enum Health: Sendable, Hashable {
        /// Not the provider's fault (or a throttle, counted apart): its circuit breaker does not move.
        case neutral(throttled: Bool)
        /// A failure that counts towards opening the provider's circuit breaker.
        case failure
    }

    /// The provider activity counters that the call adds one to.
    enum Counter: Sendable, Hashable {
        case throttled, failedCalls, deadLettered, retries
    }

    var transition: Transition
    /// How the call's admission ticket ends.
    var ticket: ProviderAdmission.Outcome
    var health: Health
    var counted: [Counter] = []
    /// The error as classified (provider, attempt key, task and charge filled in), when it was.
    var failure: GenerationError?
    /// What the retry policy said, when it was asked.
    var disposition: FailureDisposition?

    /// Decides how the failed call of `record` at `provider` is settled.
    ///
    /// - Parameters:
    ///   - stopping: The call's task was cancelled (the engine is stopping); a `CancellationError` says so too.
    ///   - outputRoot: The output folder, to tell this machine's storage failures from the provider's.
    ///   - cancelRequested: Whether the job's cancellation was requested (and forgets the request); asked only
    ///     once the error is known to be the call's own.
    ///   - hasAlternative: Whether another provider can take the job now; asked only for a retry.
    ///   - unit: A draw in `[0, 1)` for the retry's jitter; drawn only when the policy is asked.
    static func decide(
        _ error: any Error,
        record: JobRecord,
        provider name: String,
        attemptKey: String?,
        taskID: String?,
        charged: Money?,
        stopping: Bool,
        outputRoot: URL,
        retry: PargenConfiguration.Retry,
        policy: RetryPolicy,
        cancelRequested: () -> Bool,
        hasAlternative: () -> Bool,
        unit: () -> Double
    ) -> Settlement {
        // A submission whose answer was lost is judged even while stopping: the provider may hold a task that no
        // record names, so it waits for a person. Given back as unjudged, it would be submitted again, and billed
        // again, by the next holder.
        let lostSubmission = (error as? GenerationError)?.code == .needsReconciliation
        if stopping && !lostSubmission || error is CancellationError {
            // The provider made and billed the answer before a stop cut the call off: the charge is kept, and the
            // next attempt goes out under a new key (the same key at a provider without idempotency, such as
            // OpenAI's speech, would be bought again without a record of the first).
            return Settlement(
                transition: charged.map { .lostAnswer(charged: $0) } ?? .release,
                ticket: .failed,
                health: .neutral(throttled: false)
            )
        }
        if let local = LocalResourceError.classify(error, path: outputRoot, operation: "write") {
            // This machine, not the provider, failed: another provider or attempt cannot help.
            return Settlement(transition: .giveBack(local), ticket: .notCalled, health: .neutral(throttled: false))
        }
        if error is StoreError {
            return Settlement(transition: .none, ticket: .failed, health: .neutral(throttled: false))
        }
        // A requested cancellation is forgotten either way; a lost submission is not one the provider was asked to
        // stop (no task id was known to stop), so it is set aside like any other.
        if cancelRequested() && !lostSubmission {
            // The task ended because it was cancelled by request (or failed meanwhile): no retry, no failover.
            var cancelled = GenerationError(
                .cancelled,
                "cancelled by request: \(name) was asked to stop task \(taskID ?? record.providerTaskID ?? "")",
                provider: name
            )
            cancelled.taskID = taskID ?? record.providerTaskID
            cancelled.charged = (error as? GenerationError)?.charged ?? charged
            return Settlement(
                transition: .deadLetter(cancelled, endsFlight: true),
                ticket: .failed,
                health: .neutral(throttled: false)
            )
        }
        var failure = (error as? GenerationError) ?? GenerationError(.transient, "\(error)")
        if failure.provider == nil { failure.provider = name }
        // Each failed attempt is its own record: its key, and the task it used, if the provider accepted one.
        failure.attemptKey = failure.attemptKey ?? attemptKey
        failure.taskID = failure.taskID ?? taskID
        failure.charged = failure.charged ?? charged
        var settlement: Settlement
        switch failure.code {
        case .rateLimited:
            settlement = Settlement(
                transition: .none,
                ticket: .throttled(retryAfter: failure.retryAfter),
                health: .neutral(throttled: true),
                counted: [.throttled]
            )
        case .transient, .artifactInvalid, .taskFailed:
            settlement = Settlement(
                transition: .none,
                ticket: failure.providerCode == "timeout" ? .timedOut : .failed,
                health: .failure,
                counted: [.failedCalls]
            )
        default:
            settlement = Settlement(
                transition: .none,
                ticket: .failed,
                health: .neutral(throttled: false),
                counted: [.failedCalls]
            )
        }
        settlement.failure = failure
        if let charged = failure.charged, failure.code.isRetryable, !retry.payAgainForLostAnswers {
            // The provider billed this answer; buying it again is the user's choice, and it is off.
            var kept = failure
            kept.message +=
                " (\(name) billed this answer, or may have if it never came: \(charged) is charged;"
                + " retry.payAgainForLostAnswers is off, so it is not bought again)"
            settlement.counted.append(.deadLettered)
            settlement.transition = .deadLetter(kept, endsFlight: true)
            return settlement
        }
        let attempts = record.attempts + 1
        let failedTasks =
            record.errors.filter { $0.code == .taskFailed }.count + (failure.code == .taskFailed ? 1 : 0)
        let disposition = policy.disposition(
            for: failure,
            attempts: attempts,
            snoozes: record.snoozes,
            failedTasks: failedTasks,
            unit: unit()
        )
        settlement.disposition = disposition
        switch disposition {
        case .snooze(let wait):
            settlement.transition = .snooze(failure, after: wait)
        case .retry(let delay):
            // Another provider that can take the job now takes it at once.
            settlement.transition = .retry(failure, after: hasAlternative() ? .zero : delay)
            settlement.counted.append(.retries)
        case .deadLetter:
            settlement.counted.append(.deadLettered)
            guard failure.code.isRetryable else {
                settlement.transition = .deadLetter(failure, endsFlight: true)
                return settlement
            }
            let reason =
                failure.code == .taskFailed && attempts < retry.maxAttempts
                ? "gave up after \(failedTasks) tasks that failed for a reason \(name) did not name (retry.failedTasks is \(retry.failedTasks))"
                : "gave up after \(attempts) attempts"
            // The last attempt's own record (its key, task and cost) stays in the history, under this code.
            var exhausted = GenerationError(
                .attemptsExhausted,
                "\(reason): \(failure.message)",
                provider: name,
                providerCode: failure.providerCode
            )
            exhausted.attemptKey = failure.attemptKey
            exhausted.taskID = failure.taskID
            exhausted.charged = failure.charged
            settlement.transition = .deadLetter(exhausted, endsFlight: false)
        }
        return settlement
    }
}
