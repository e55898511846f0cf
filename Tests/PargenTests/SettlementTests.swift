import Foundation
@testable import Pargen
import Testing

/// How a failed call is settled, decided synchronously with no engine, store or clock: every way a call ends
/// maps to one store transition, one ticket outcome, one note to the balancer and the counters it moves.
@Suite struct SettlementTests {
    static let root = URL(fileURLWithPath: "/tmp/pargen-settlement-out")

    /// A job in its `attempts`-th attempt at provider `p`.
    static func record(attempts: Int = 0, snoozes: Int = 0, errors: [GenerationError] = []) -> JobRecord {
        var record = JobRecord(id: JobID("job-1"), request: validated(.audio(prompt: "a line"), id: "r1"), sequence: 1, now: .zero)
        record.attempts = attempts
        record.snoozes = snoozes
        record.errors = errors
        return record
    }

    /// The decision for `error`, with the engine's three questions answered as given; `asked` records which
    /// were asked.
    static func decide(
        _ error: any Error,
        record: JobRecord = record(),
        charged: Money? = nil,
        stopping: Bool = false,
        retry: PargenConfiguration.Retry = .init(),
        cancelRequested: Bool = false,
        alternative: Bool = false,
        asked: Locked<[String]> = Locked([])
    ) -> Settlement {
        Settlement.decide(
            error,
            record: record,
            provider: "p",
            attemptKey: "job-1:1",
            taskID: "t1",
            charged: charged,
            stopping: stopping,
            outputRoot: root,
            retry: retry,
            policy: RetryPolicy(configuration: retry),
            cancelRequested: {
                asked.withLock { $0.append("cancel") }
                return cancelRequested
            },
            hasAlternative: {
                asked.withLock { $0.append("alternative") }
                return alternative
            },
            unit: {
                asked.withLock { $0.append("draw") }
                return 0.5
            }
        )
    }

    @Test func aStopReleasesTheLeaseOrKeepsTheChargeOfABilledAnswer() {
        let asked = Locked<[String]>([])
        let released = Self.decide(CancellationError(), asked: asked)
        #expect(released.transition == .release)
        #expect(released.ticket == .failed && released.health == .neutral(throttled: false) && released.counted.isEmpty)
        let billed = Self.decide(CancellationError(), charged: .cents(3), asked: asked)
        #expect(billed.transition == .lostAnswer(charged: .cents(3)))
        // Even a provider's error is not judged while stopping.
        #expect(Self.decide(GenerationError(.transient, "503"), stopping: true).transition == .release)
        #expect(asked.withLock { $0 }.isEmpty, "a stop asks nothing: no cancellation is forgotten, no draw is made")
    }

    /// A stop does not wash out a submission whose answer was lost (a time-out after the request went out to a
    /// provider without idempotency keys), and neither does a requested cancellation: the provider may have the
    /// task, so the job is set aside for a person as it would be otherwise, instead of being given back to be
    /// bought again or dead-lettered as cancelled while the task may run and bill.
    @Test func aStopStillSetsAsideASubmissionWhoseAnswerWasLost() {
        let lost = GenerationError(
            .needsReconciliation,
            "POST /v1/videos failed after the request was sent (timeout)",
            provider: "p",
            providerCode: "timeout"
        )
        for (stopping, cancelRequested) in [(true, false), (false, true), (true, true)] {
            // Neither a stop nor a requested cancellation (which no provider could act on without a task id)
            // makes it anything else.
            let settlement = Self.decide(lost, stopping: stopping, cancelRequested: cancelRequested)
            guard case .deadLetter(let failure, let endsFlight) = settlement.transition else {
                Issue.record("a lost submission was settled as \(settlement.transition)")
                continue
            }
            #expect(failure.code == .needsReconciliation && endsFlight, "stopping \(stopping), cancel \(cancelRequested)")
            #expect(failure.attemptKey == "job-1:1")
        }
    }

    @Test func thisMachinesStorageFailingGivesTheJobBackUnjudged() {
        let full = LocalResourceError(path: "/tmp/x", operation: "write", errorNumber: ENOSPC)
        let settlement = Self.decide(full, charged: .cents(2))
        #expect(settlement.transition == .giveBack(full))
        #expect(settlement.ticket == .notCalled && settlement.health == .neutral(throttled: false))
        #expect(settlement.counted.isEmpty)
    }

    @Test func aRefusedTransitionWritesNothingMore() {
        let asked = Locked<[String]>([])
        let settlement = Self.decide(StoreError(.leaseLost, "gone"), cancelRequested: true, asked: asked)
        #expect(settlement.transition == Settlement.Transition.none)
        #expect(settlement.ticket == .failed && settlement.counted.isEmpty)
        #expect(asked.withLock { $0 }.isEmpty, "a requested cancellation is kept for the job's next call")
    }

    @Test func aCancellationRequestedDeadLettersTheJobWithItsTaskAndCharge() throws {
        let settlement = Self.decide(GenerationError(.transient, "stopped"), charged: .cents(4), cancelRequested: true)
        guard case .deadLetter(let error, let endsFlight) = settlement.transition else {
            Issue.record("\(settlement.transition)")
            return
        }
        #expect(endsFlight)
        #expect(error.code == .cancelled && error.taskID == "t1" && error.charged == .cents(4))
        #expect(settlement.health == .neutral(throttled: false), "a cancellation is not the provider's failure")
    }

    @Test func aThrottleSnoozesForTheProvidersWaitWithoutSpendingAnAttempt() {
        var throttled = GenerationError(.rateLimited, "429")
        throttled.retryAfter = .seconds(7)
        let settlement = Self.decide(throttled)
        #expect(settlement.ticket == .throttled(retryAfter: .seconds(7)))
        #expect(settlement.health == .neutral(throttled: true))
        #expect(settlement.counted == [.throttled])
        guard case .snooze(let failure, let wait) = settlement.transition else {
            Issue.record("\(settlement.transition)")
            return
        }
        #expect(wait == .seconds(7))
        #expect(failure.provider == "p" && failure.attemptKey == "job-1:1" && failure.taskID == "t1")
    }

    @Test func aTransientFailureRetriesAtOnceWhereAnotherProviderCanTakeIt() {
        let asked = Locked<[String]>([])
        let alone = Self.decide(GenerationError(.transient, "503"), asked: asked)
        #expect(alone.health == .failure && alone.ticket == .failed)
        #expect(alone.counted == [.failedCalls, .retries])
        // Full jitter: half of the first ceiling (1 s) for a draw of 0.5.
        #expect(alone.transition == .retry(alone.failure!, after: .milliseconds(500)))
        #expect(asked.withLock { $0 } == ["cancel", "draw", "alternative"])
        let elsewhere = Self.decide(GenerationError(.transient, "503"), alternative: true)
        #expect(elsewhere.transition == .retry(elsewhere.failure!, after: .zero))
        var timedOut = GenerationError(.transient, "no answer")
        timedOut.providerCode = "timeout"
        #expect(Self.decide(timedOut).ticket == .timedOut)
    }

    @Test func theLastAttemptDeadLettersAsExhaustedAndATerminalErrorAsItself() {
        let last = Self.decide(GenerationError(.transient, "503"), record: Self.record(attempts: 4))
        guard case .deadLetter(let exhausted, let endsFlight) = last.transition else {
            Issue.record("\(last.transition)")
            return
        }
        #expect(!endsFlight)
        #expect(exhausted.code == .attemptsExhausted && exhausted.message.hasPrefix("gave up after 5 attempts: 503"))
        #expect(exhausted.attemptKey == "job-1:1" && exhausted.taskID == "t1")
        #expect(last.counted == [.failedCalls, .deadLettered])

        let refused = Self.decide(GenerationError(.invalidRequest, "no such voice"))
        guard case .deadLetter(let error, true) = refused.transition else {
            Issue.record("\(refused.transition)")
            return
        }
        #expect(error.code == .invalidRequest)
        #expect(refused.health == .neutral(throttled: false), "a refused request is not the provider's failure")
    }

    @Test func tasksThatFailWithoutAReasonAreTriedOnlyAsOftenAsConfigured() {
        let failed = GenerationError(.taskFailed, "task failed")
        let earlier = [failed, failed]
        let settlement = Self.decide(failed, record: Self.record(attempts: 2, errors: earlier))
        guard case .deadLetter(let exhausted, false) = settlement.transition else {
            Issue.record("\(settlement.transition)")
            return
        }
        #expect(exhausted.message.hasPrefix("gave up after 3 tasks that failed for a reason p did not name"))
    }

    @Test func aBilledAnswerIsNotBoughtAgainWhenThatIsOff() {
        let asked = Locked<[String]>([])
        var retry = PargenConfiguration.Retry()
        retry.payAgainForLostAnswers = false
        let settlement = Self.decide(GenerationError(.transient, "cut off"), charged: .cents(9), retry: retry, asked: asked)
        guard case .deadLetter(let kept, true) = settlement.transition else {
            Issue.record("\(settlement.transition)")
            return
        }
        #expect(kept.charged == .cents(9))
        #expect(kept.message.contains("retry.payAgainForLostAnswers is off"))
        #expect(settlement.counted == [.failedCalls, .deadLettered])
        #expect(asked.withLock { $0 } == ["cancel"], "no draw and no failover for a job that is not tried again")
        // On, the same answer is tried again.
        guard case .retry = Self.decide(GenerationError(.transient, "cut off"), charged: .cents(9)).transition else {
            Issue.record("retried")
            return
        }
    }
}
