import Foundation
import Logging
import Synchronization

extension ExecutionStage {
    static func memoryEstimate(_ request: ValidatedRequest) -> Int {
        request.kind == .audio ? 16 : 64
    }

    static func storageEstimate(_ request: ValidatedRequest) -> Int {
        let seconds = Int(request.duration.seconds.rounded(.up))
        switch request.kind {
        case .audio: return max(1, seconds / 10)
        case .video:
            return max(
                1,
                seconds * max(1, (request.resolution?.pixels ?? Resolution.p720.pixels) / 1_000_000)
            )
        }
    }
}

extension ExecutionStage {
    /// Runs a provider call so that cancellation cannot cut it between the provider accepting a task and the
    /// task id being persisted: cancelled before that point, the call goes on until the id is stored (or the
    /// call ends), and is cancelled then. A call to a provider that is not idempotent is thus never left
    /// submitted-but-unrecorded by a graceful shutdown.
    static func shieldingSubmission<T: Sendable>(
        _ gate: SubmissionGate,
        _ call: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        // An unstructured task shields the call from our cancellation; the handler forwards it at the safe point.
        let inner = Task { try await call() }
        return try await withTaskCancellationHandler {
            try await inner.value
        } onCancel: {
            gate.whenPersisted { inner.cancel() }
        }
    }
}

extension ExecutionStage {
}

/// Tells whether a call's task id is persisted, and runs an action once it is.
final class SubmissionGate: Sendable {
    private let state: Locked<(persisted: Bool, waiting: (@Sendable () -> Void)?)>

    init(persisted: Bool) { state = Locked((persisted, nil)) }

    func markPersisted() {
        let action = state.withLock { state -> (@Sendable () -> Void)? in
            state.persisted = true
            return state.waiting.take()
        }
        action?()
    }

    /// Runs `action` now if the id is persisted, or as soon as it is.
    func whenPersisted(_ action: @escaping @Sendable () -> Void) {
        let now = state.withLock { state -> Bool in
            if state.persisted { return true }
            state.waiting = action
            return false
        }
        if now { action() }
    }
}

/// Metadata keys of Pargen's log messages.
enum LoggingKeys {
    static let jobID = "pargen.job.id"
    static let requestID = "pargen.request.id"
    static let error = "pargen.error"
    static let count = "pargen.count"
    static let provider = "pargen.provider"
    static let status = "pargen.status"
    static let limit = "pargen.limit"
    static let waitedMs = "pargen.waited_ms"
    static let code = "pargen.error.code"
    static let providerCode = "pargen.error.provider_code"
    static let attemptKey = "pargen.attempt_key"
    static let disposition = "pargen.disposition"
    static let delayMs = "pargen.delay_ms"
}
