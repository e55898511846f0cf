import Logging
package import Pargen

/// What one look at a running task found.
package enum PollStep<Result: Sendable>: Sendable {
    /// Still working; `after` is the provider's hint for the next look (OpenAI `openai-poll-after-ms`).
    case running(progress: Double?, after: Duration?)
    /// Accepted but held back for load (Runway `THROTTLED`).
    case throttled
    case done(Result)
}

/// Polls a submitted task to its end. A failed look (5xx, 429, time-out, malformed body) never ends the
/// task, since ending it would mean submitting and paying again: it waits and looks again, until the task
/// timeout, when the job is dead-lettered with its task id for a person to reconcile.
package struct TaskPoller: Sendable {
    package let http: ProviderHTTP
    package let context: ProviderCallContext

    package init(http: ProviderHTTP, context: ProviderCallContext) {
        self.http = http
        self.context = context
    }

    package func run<Result: Sendable>(
        taskID: String,
        look: () async throws -> PollStep<Result>
    ) async throws -> Result {
        let clock = context.clock
        let deadline = clock.now + http.connection.taskTimeout
        let interval = http.connection.pollInterval
        var failures = 0
        var reportedThrottle = false
        while true {
            try Task.checkCancellation()
            var wait = interval
            do {
                switch try await look() {
                case .done(let result):
                    return result
                case .running(let progress, let after):
                    failures = 0
                    if let progress { context.reportProgress(progress) }
                    if let after { wait = after }
                case .throttled:
                    failures = 0
                    if !reportedThrottle {
                        reportedThrottle = true
                        context.reportThrottled()
                    }
                }
            } catch let error as GenerationError where error.code == .terminal || error.code == .invalidRequest {
                throw error
            } catch {
                if error is CancellationError || Task.isCancelled { throw CancellationError() }
                failures += 1
                let retryAfter = (error as? GenerationError)?.retryAfter
                // Back off on repeated failures: interval × 2^n, at most 8 intervals.
                wait = max(retryAfter ?? .zero, interval * (1 << min(3, failures - 1)))
                context.logger.debug(
                    "poll failed; looking again",
                    metadata: [
                        "pargen.provider": "\(http.provider)", "pargen.task": "\(taskID)", "pargen.error": "\(error)",
                    ]
                )
            }
            if clock.now + wait > deadline {
                throw GenerationError(
                    .terminal,
                    "task \(taskID) did not finish within \(http.connection.taskTimeout.seconds) s; it was not resubmitted",
                    provider: http.provider,
                    providerCode: "task_timeout"
                )
            }
            try await clock.sleep(for: wait)
        }
    }
}
