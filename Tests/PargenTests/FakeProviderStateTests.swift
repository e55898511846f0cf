import Foundation
@testable import PargenTesting
import Testing

/// The fakes are the proof in the quota tests, so their own bookkeeping is tested first.
@Suite struct FakeProviderStateTests {
    /// Two submissions that both arrive while one slot is free: admission must hand the slot to one of them.
    /// (It used to count only created tasks, so both passed, and the second was quietly queued.)
    @Test func twoSubmissionsRacingForTheLastSlotAreNotBothAdmitted() {
        let state = FakeProviderState(options: FakeProviderOptions(wireProtocol: .openai, concurrentTasks: 1))
        let first = state.admit(endpoint: "videos", key: "a:1", user: nil, prompt: "a", sync: false)
        let second = state.admit(endpoint: "videos", key: "b:1", user: nil, prompt: "b", sync: false)
        guard case .accepted = first else {
            Issue.record("the first submission takes the free slot")
            return
        }
        guard case .overConcurrency = second else {
            Issue.record("the second submission finds the slot taken: \(second)")
            return
        }
        _ = state.createTask(prompt: "a", video: true, prefix: "t")
        #expect(state.quotaViolations() == 1, "the refused submission is the client's violation")
        #expect(state.taskIDs().count == 1)
    }

    /// A protocol that queues over its cap (Runway) logs the second submission as throttled: a violation.
    @Test func aQueueingProviderLogsTheRaceAsAViolation() {
        let state = FakeProviderState(options: FakeProviderOptions(wireProtocol: .runway, concurrentTasks: 1))
        _ = state.admit(endpoint: "t", key: "a:1", user: nil, prompt: "a", sync: false, queueOverConcurrency: true)
        _ = state.admit(endpoint: "t", key: "b:1", user: nil, prompt: "b", sync: false, queueOverConcurrency: true)
        _ = state.createTask(prompt: "a", video: true, prefix: "")
        _ = state.createTask(prompt: "b", video: true, prefix: "")
        #expect(state.quotaViolations() == 1)
        #expect(state.submissions().map(\.refusal) == [nil, "throttled"])
    }

    /// With `throttledTasksWaitForAPoll`, a task that waited over the cap is seen THROTTLED by the first poll even
    /// when its slot freed before that poll; without it, that poll finds it started.
    @Test(arguments: [true, false])
    func aWaitingTaskCanBeHeldUntilAPollSeesItWaiting(_ hold: Bool) {
        var options = FakeProviderOptions(wireProtocol: .runway, concurrentTasks: 1, taskSeconds: 0...0)
        options.throttledTasksWaitForAPoll = hold
        let state = FakeProviderState(options: options)
        _ = state.admit(endpoint: "t", key: "a:1", user: nil, prompt: "a", sync: false, queueOverConcurrency: true)
        _ = state.admit(endpoint: "t", key: "b:1", user: nil, prompt: "b", sync: false, queueOverConcurrency: true)
        _ = state.createTask(prompt: "a", video: true, prefix: "")
        let waiting = state.createTask(prompt: "b", video: true, prefix: "")
        #expect(waiting.startedAt == nil, "b was let in over the cap, so it waits")
        // a took no time: its slot is free before b is first polled.
        #expect((state.task(waiting.id)?.startedAt == nil) == hold)
        #expect(state.task(waiting.id)?.startedAt != nil, "the next poll finds it started")
    }

    /// A policy refusal after admission gives its reserved slot back.
    @Test func aRefusedSubmissionGivesItsSlotBack() {
        let state = FakeProviderState(options: FakeProviderOptions(wireProtocol: .openai, concurrentTasks: 1))
        _ = state.admit(endpoint: "videos", key: "a:1", user: nil, prompt: "a [[reject]]", sync: false)
        state.releaseTaskReservation()
        guard case .accepted = state.admit(endpoint: "videos", key: "b:1", user: nil, prompt: "b", sync: false) else {
            Issue.record("the slot was given back")
            return
        }
        #expect(state.quotaViolations() == 0)
    }
}
