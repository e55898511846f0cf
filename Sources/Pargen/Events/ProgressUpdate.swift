import DequeModule
import Synchronization

/// Where a request is in the pipeline.
public enum ProgressStatus: String, Sendable, Hashable, Codable, CaseIterable, CustomStringConvertible {
    case queued
    case waitingForRateLimit = "waiting_for_rate_limit"
    case heldByBudget = "held_by_budget"
    case submitted
    case running
    case downloading
    case retrying
    case succeeded
    case failed
    case deadLettered = "dead_lettered"
    case servedFromCache = "served_from_cache"

    public var description: String { rawValue }

    /// Whether the request has reached its end.
    public var isFinal: Bool {
        self == .succeeded || self == .failed || self == .deadLettered || self == .servedFromCache
    }
}

/// One step of one request, as delivered to progress callbacks and event streams.
public struct ProgressUpdate: Sendable, Hashable {
    public var requestID: String
    public var jobID: JobID
    public var status: ProgressStatus
    /// 0...1 within the current step (the provider's progress while running).
    public var progress: Double
    public var provider: String?
    public var message: String?
    /// Engine time (``PargenClock/now``) of the update.
    public var time: Duration

    public init(
        requestID: String,
        jobID: JobID,
        status: ProgressStatus,
        progress: Double = 0,
        provider: String? = nil,
        message: String? = nil,
        time: Duration
    ) {
        self.requestID = requestID
        self.jobID = jobID
        self.status = status
        self.progress = progress
        self.provider = provider
        self.message = message
        self.time = time
    }
}

/// An engine-wide event: a request's progress, a budget alert, or a request's final result.
public enum PargenEvent: Sendable {
    case progress(ProgressUpdate)
    case budgetAlert(BudgetAlert)
    case finished(GenerationResult)
}

/// Fans events out to any number of subscribers, each with its own bounded buffer.
public final class EventBus: Sendable {
    private struct State {
        var subscribers: [UInt64: AsyncStream<PargenEvent>.Continuation] = [:]
        var callbacks: [UInt64: @Sendable (PargenEvent) -> Void] = [:]
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())
    /// Events kept per slow subscriber before the oldest are dropped.
    public let bufferSize: Int

    public init(bufferSize: Int = 10_000) { self.bufferSize = bufferSize }

    /// A stream of every event from now on. It ends when the subscriber stops iterating or the bus finishes.
    public func subscribe() -> AsyncStream<PargenEvent> {
        let (stream, continuation) = AsyncStream.makeStream(
            of: PargenEvent.self,
            bufferingPolicy: .bufferingNewest(bufferSize)
        )
        let id = state.withLock { state -> UInt64 in
            state.nextID += 1
            state.subscribers[state.nextID] = continuation
            return state.nextID
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.subscribers.removeValue(forKey: id) }
        }
        return stream
    }

    /// Calls `callback` synchronously for every event until the returned token is removed.
    @discardableResult
    public func addCallback(_ callback: @escaping @Sendable (PargenEvent) -> Void) -> UInt64 {
        state.withLock { state in
            state.nextID += 1
            state.callbacks[state.nextID] = callback
            return state.nextID
        }
    }

    public func removeCallback(_ token: UInt64) {
        _ = state.withLock { $0.callbacks.removeValue(forKey: token) }
    }

    public func publish(_ event: PargenEvent) {
        let (subscribers, callbacks) = state.withLock { (Array($0.subscribers.values), Array($0.callbacks.values)) }
        for subscriber in subscribers { subscriber.yield(event) }
        for callback in callbacks { callback(event) }
    }

    /// Ends every subscriber's stream.
    public func finish() {
        let subscribers = state.withLock { state -> [AsyncStream<PargenEvent>.Continuation] in
            defer { state.subscribers.removeAll() }
            return Array(state.subscribers.values)
        }
        for subscriber in subscribers { subscriber.finish() }
    }
}
