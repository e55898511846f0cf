import Foundation
import Logging
import Synchronization

/// The settlement stage: every way a job's call ends becomes one fenced store transition (retry, snooze, dead
/// letter), decided by ``Settlement`` before anything is written; its outcome goes back to admission and the
/// balancer, and waiters and progress are told.
struct SettlementStage: EnginePart {
    let core: EngineCore
    let balancer: LoadBalancer
    let retryPolicy: RetryPolicy
    let costs: CostMonitor
    let random: LockedRandom

    /// Settles a call that produced no artifact: ``Settlement/decide(_:record:provider:attemptKey:taskID:charged:stopping:outputRoot:retry:policy:cancelRequested:hasAlternative:unit:)``
    /// says how, and this carries it out (the ticket, the balancer, the counters, one fenced store transition,
    /// waiters and progress).
    func settleFailure(
        _ error: any Error,
        job: LeasedJob,
        ticket: HeldTicket,
        attemptKey: String? = nil,
        taskID: String? = nil,
        sent: Bool = false,
        charged: Money? = nil
    ) async
        -> FlightOutcome
    {
        let record = job.record
        // What a job given back unjudged tells its next holder: resume the task, or call again under the key.
        let trace: CallTrace = taskID.map { .accepted(taskID: $0) } ?? (sent ? .sent : .notSent)
        let lease = job.lease
        let now = clock.now
        let name = ticket.provider
        let settlement = Settlement.decide(
            error,
            record: record,
            provider: name,
            attemptKey: attemptKey,
            taskID: taskID,
            charged: charged,
            stopping: Task.isCancelled,
            outputRoot: artifacts.root,
            retry: configuration.retry,
            policy: retryPolicy,
            cancelRequested: { self.core.state.withLock { $0.cancelRequested.remove(record.id) } != nil },
            hasAlternative: {
                self.balancer.hasAlternative(for: record.request, excluding: Set(record.failedProviders + [name]), at: now)
            },
            unit: { self.random.unit() }
        )
        ticket.finish(settlement.ticket)
        switch settlement.health {
        case .neutral(let throttled): balancer.recordNeutral(name, throttled: throttled)
        case .failure: balancer.recordFailure(name, at: now)
        }
        if !settlement.counted.isEmpty {
            core.state.withLock { state in
                for counter in settlement.counted {
                    switch counter {
                    case .throttled: state.providerActivity[name, default: ProviderActivity()].throttled += 1
                    case .failedCalls: state.providerActivity[name, default: ProviderActivity()].failedCalls += 1
                    case .deadLettered: state.providerActivity[name, default: ProviderActivity()].deadLettered += 1
                    case .retries: state.providerActivity[name, default: ProviderActivity()].retries += 1
                    }
                }
            }
        }
        if let failure = settlement.failure, let disposition = settlement.disposition, logger.logLevel <= .debug {
            var metadata: Logger.Metadata = [
                LoggingKeys.jobID: "\(record.id)", LoggingKeys.provider: "\(name)",
                LoggingKeys.code: "\(failure.code)", LoggingKeys.error: "\(failure.message)",
            ]
            if let code = failure.providerCode { metadata[LoggingKeys.providerCode] = "\(code)" }
            if let key = failure.attemptKey { metadata[LoggingKeys.attemptKey] = "\(key)" }
            switch disposition {
            case .snooze(let wait):
                metadata[LoggingKeys.disposition] = "snooze"
                metadata[LoggingKeys.delayMs] = "\(wait.milliseconds)"
            case .retry(let delay):
                metadata[LoggingKeys.disposition] = "retry"
                metadata[LoggingKeys.delayMs] = "\(delay.milliseconds)"
            case .deadLetter:
                metadata[LoggingKeys.disposition] = "dead_letter"
            }
            logger.debug("provider call failed", metadata: metadata)
        }
        switch settlement.transition {
        case .release:
            try? await shielded { try await self.store.release(lease, leaving: trace) }
            storeChanged()
            return .retryLater
        case .lostAnswer(let charged):
            await settleLostAnswer(
                job,
                provider: name,
                because: "a stop cut off the call after it answered",
                charged: charged,
                attemptKey: attemptKey
            )
            storeChanged()
            return .retryLater
        case .giveBack(let local):
            await giveBack(job, haltingFor: local, leaving: trace, charged: charged, attemptKey: attemptKey)
            return .retryLater
        case .none:
            logger.debug(
                "store refused a transition",
                metadata: [LoggingKeys.jobID: "\(record.id)", LoggingKeys.error: "\(error)"]
            )
            return .retryLater
        case .deadLetter(let failure, let endsFlight):
            let outcome = await deadLetter(job, failure)
            return endsFlight ? outcome : .retryLater
        case .snooze(let failure, let wait):
            try? await shielded {
                try await self.store.retry(lease, error: failure, after: wait, spendAttempt: false, failedProvider: nil)
            }
            storeChanged()
            progress(
                record,
                .waitingForRateLimit,
                provider: name,
                message: "\(name) throttled: retrying in \(wait.seconds.formatted1) s"
            )
            return .retryLater
        case .retry(let failure, let delay):
            try? await shielded {
                try await self.store.retry(lease, error: failure, after: delay, spendAttempt: true, failedProvider: name)
            }
            storeChanged()
            let paidAgain = failure.charged.map {
                "; \(name) billed the lost answer (\($0)) and the retry is billed again (retry.payAgainForLostAnswers)"
            }
            progress(record, .retrying, provider: name, message: failure.description + (paidAgain ?? ""))
            return .retryLater
        }
    }

    /// A reservation the store refused for a budget: holds the job back for a while when reservations in flight
    /// in that budget may come back, or dead-letters it as `budget_exceeded` when none can.
    func budgetRefused(_ job: LeasedJob, _ refusal: BudgetRefusal, estimate: Money, provider: String) async -> FlightOutcome {
        for alert in costs.refused(refusal) { publish(.budgetAlert(alert)) }
        let message =
            "\(refusal)" + (refusal.needed > estimate ? " (\(provider) bills above its estimate of \(estimate))" : "")
        guard refusal.canFree else { return await deadLetter(job, GenerationError(.budgetExceeded, message)) }
        progress(job.record, .heldByBudget, message: message)
        try? await putBack(job)
        return .retryLater
    }

    /// Puts a job back in the queue without spending an attempt, to be looked at again after `delay` (by default
    /// the retry policy's first step), shielded from cancellation like every transition.
    func putBack(_ job: LeasedJob, error: GenerationError? = nil, after delay: Duration? = nil) async throws {
        try await shielded {
            try await self.store.retry(
                job.lease,
                error: error,
                after: delay ?? self.retryPolicy.ceiling(afterAttempt: 1),
                spendAttempt: false,
                failedProvider: nil
            )
        }
        storeChanged()
    }

    /// Gives a job back to the store unjudged because this machine's storage failed, and stops the engine
    /// taking new work. A call that was about to go out gives its attempt back; a task the provider accepted
    /// keeps its id, so the next run fetches its result instead of paying for it again.
    ///
    /// A synchronous answer the provider billed and that could not be saved is charged: the job goes back with
    /// that charge in its history (or is dead-lettered with it when ``PargenConfiguration/Retry/payAgainForLostAnswers``
    /// is off).
    func giveBack(
        _ job: LeasedJob,
        haltingFor reason: LocalResourceError,
        leaving trace: CallTrace = .notSent,
        charged: Money? = nil,
        attemptKey: String? = nil
    ) async {
        if let charged {
            await settleLostAnswer(job, provider: job.record.provider, because: "\(reason)", charged: charged, attemptKey: attemptKey)
        } else {
            try? await shielded { try await self.store.release(job.lease, leaving: trace) }
        }
        storeChanged()
        progress(job.record, .queued, message: "stopped: \(reason)")
        halt(because: reason)
    }

    /// A synchronous answer the provider billed that this process lost (its disk failed, or a stop cut the call
    /// off): the job goes back with the charge in its history, or is dead-lettered with it when
    /// ``PargenConfiguration/Retry/payAgainForLostAnswers`` is off.
    func settleLostAnswer(
        _ job: LeasedJob,
        provider: String?,
        because reason: String,
        charged: Money,
        attemptKey: String?
    ) async {
        var lost = GenerationError(
            .transient,
            "the answer \(provider ?? "the provider") billed could not be saved: \(reason)",
            provider: provider
        )
        lost.charged = charged
        lost.attemptKey = attemptKey
        let error = lost
        if configuration.retry.payAgainForLostAnswers {
            // The billed call was a real attempt: the next one goes out under a new key.
            try? await shielded {
                try await self.store.retry(job.lease, error: error, after: .zero, spendAttempt: true, failedProvider: nil)
            }
        } else {
            _ = await deadLetter(job, error)
        }
    }

    func deadLetter(_ job: LeasedJob, _ error: GenerationError) async -> FlightOutcome {
        let written = try? await shielded { try await self.store.deadLetter(job.lease, error: error) }
        progress(job.record, .deadLettered, provider: error.provider, message: error.description)
        if let written {
            finish(written)
        } else {
            // Not written (a lease lost, the store away): whoever holds the job now may have finished it.
            await finish(job.record.id)
        }
        return .terminal(error)
    }

}
