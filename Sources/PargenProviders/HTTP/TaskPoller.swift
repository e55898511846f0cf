import Logging
package import Pargen

/// What one look at a running task found.
package enum PollStep<Result: Sendable>: Sendable {
    /// Still working; `after` is the provider's hint for the next look (OpenAI `openai-poll-after-ms`).
    case running(progress: Double?, after: Duration?)
    /// Accepted but held back for load (Runway `THROTTLED`).
    case throttled
    case done(Result)
    /// The task itself ended without a result. The error's code says whether a new task may succeed
    /// (``GenerationError/Code/transient``: the engine submits again under a new attempt key) or not
    /// (``GenerationError/Code/terminal``). Unlike a failed look, this ends the polling at once.
    case failed(GenerationError)
}

/// Polls a submitted task to its end. A failed look (5xx, 429, time-out, malformed body) never ends the
/// task, since ending it would mean submitting and paying again: it waits and looks again, until the task
/// timeout, when the job is dead-lettered with its task id for a person to reconcile. A task that the
/// provider reports as failed (``PollStep/failed(_:)``) ends the polling at once, with the provider's reason.
package struct TaskPoller: Sendable {
    package let http: ProviderHTTP
    package let context: ProviderCallContext

    package init(http: ProviderHTTP, context: ProviderCallContext) {
        self.http = http
        self.context = context
    }

    /// The bounds within which a provider's hint for the next look is followed.
    package static let shortestHint: Duration = .milliseconds(100)
    package static let longestHint: Duration = .seconds(60)

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
            var taskFailure: GenerationError?
            do {
                switch try await look() {
                case .done(let result):
                    return result
                case .failed(let error):
                    taskFailure = error
                case .running(let progress, let after):
                    failures = 0
                    if let progress { context.reportProgress(progress) }
                    // The provider's hint is followed within bounds: a hint of zero or less would poll without
                    // pause, and one of years would give the task up as timed out at once.
                    if let after { wait = min(max(after, Self.shortestHint), max(interval, Self.longestHint)) }
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
            if let taskFailure { throw taskFailure }
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
