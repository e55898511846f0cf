import Foundation
import Logging
import Synchronization

/// What every stage of the engine shares: the configuration, the store, the artifact folder, the clock, the event
/// bus, the scheduler's wake-up and the engine's state. The stages (``IntakeStage``, ``SchedulerStage``,
/// ``ExecutionStage``, ``SettlementStage``) and ``ParallelGenerator`` itself each hold it, with only the components
/// their own job needs besides.
final class EngineCore: Sendable {
    let configuration: PargenConfiguration
    let store: any JobStore
    let artifacts: ArtifactStore
    let clock: PargenClock
    let logger: Logger
    let hooks: EngineHooks
    /// This process's name on the leases it holds (and as housekeeping's leader).
    let workerID: String
    let bus = EventBus()
    let wakeup = Wakeup()
    let state = Mutex(EngineState())

    init(
        configuration: PargenConfiguration,
        store: any JobStore,
        artifacts: ArtifactStore,
        clock: PargenClock,
        logger: Logger,
        hooks: EngineHooks,
        workerID: String
    ) {
        self.configuration = configuration
        self.store = store
        self.artifacts = artifacts
        self.clock = clock
        self.logger = logger
        self.hooks = hooks
        self.workerID = workerID
    }

    /// The result a finished job's record stands for (what ``ParallelGenerator/result(for:)`` returns once the job is
    /// final).
    func makeResult(_ record: JobRecord) -> GenerationResult {
        let outcome: Result<Artifact, GenerationError>
        if let success = record.outcome {
            outcome = .success(success.artifact)
        } else if record.state == .needsReconciliation, let reason = record.errors.last,
            reason.code == .needsReconciliation
        {
            outcome = .failure(reason)
        } else if record.state == .needsReconciliation {
            outcome = .failure(
                GenerationError(
                    .needsReconciliation,
                    "the job may have reached \(record.provider ?? "its provider") before a crash, and its task id was not recorded: check the provider, then retry or purge it",
                    provider: record.provider
                )
            )
        } else {
            outcome = .failure(record.errors.last ?? GenerationError(.terminal, "the job ended without a result"))
        }
        var result = GenerationResult(
            requestID: record.request.id,
            jobID: record.id,
            outcome: outcome,
            provider: record.outcome?.provider ?? record.provider,
            // The ledger's charge: the successful call, and any answer billed and lost before it.
            actualCost: record.ledger.charged,
            attempts: record.attempts,
            servedFromCache: record.outcome?.servedFromCache ?? false,
            deduplicated: record.outcome?.deduplicated ?? false,
            latency: (record.finishedAt ?? clock.now) - record.enqueuedAt,
            errorHistory: record.errors
        )
        result.saved = record.outcome?.saved ?? .zero
        return result
    }

    /// What ``ParallelGenerator/result(for:)`` returns to a waiter that was cancelled: the job itself goes on.
    /// (Also what it returns, naming `reason`, for a job the engine stopped before it finished because this
    /// machine's storage failed, or, with `stopped`, because the engine was stopped: the job is left in the
    /// store, and a later run continues it.)
    static func cancelledResult(
        _ id: JobID,
        halt reason: LocalResourceError? = nil,
        stopped: Bool = false
    ) -> GenerationResult {
        let message =
            if let reason {
                "the run stopped before the job finished: \(reason)"
            } else if stopped {
                "the engine stopped before the job finished; it stays in the store for a later run"
            } else {
                "stopped before the job finished"
            }
        return GenerationResult(
            requestID: "",
            jobID: id,
            outcome: .failure(GenerationError(.cancelled, message)),
            provider: nil,
            actualCost: .zero,
            attempts: 0
        )
    }

    /// Answers every waiter taken from the state (they wait for jobs this engine will not run) with `result`.
    static func answer(
        _ waiters: [JobID: [(id: UInt64, continuation: CheckedContinuation<GenerationResult, Never>)]],
        with result: (JobID) -> GenerationResult
    ) {
        for (id, list) in waiters {
            for waiter in list { waiter.continuation.resume(returning: result(id)) }
        }
    }
}

/// The engine's mutable state, behind ``EngineCore/state``: what each stage reads and changes under its lock.
struct EngineState {
    enum Lifecycle { case idle, running, draining, stopped }

    var lifecycle: Lifecycle = .idle
    var runTask: Task<Void, any Error>?
    var inFlight: [JobID: InFlight] = [:]
    /// Jobs taken from the store that wait for admission, holding nothing but their lease.
    var waiting: [JobID: LeasedJob] = [:]
    /// Jobs only looked at (not claimed) that are between the look and the backlog or their claim (a shared
    /// cache lookup, a cache hit, a dead letter): in view, so that the next look does not bring them again.
    var lookedAt: Set<JobID> = []
    /// Users the shared admission state held back, until when (a shared store only).
    var sharedBlocks: [String: Duration] = [:]
    /// Projects the shared admission state held back (their bucket or burst), until when.
    var sharedProjectBlocks: [String: Duration] = [:]
    /// Jobs admitted and running.
    var running = 0
    /// Admitted jobs waiting for the shared-store claim in flight to end, to be claimed together in the next.
    var pendingClaims: [(granted: SchedulerStage.Granted, request: ClaimRequest)] = []
    /// Whether a task is claiming ``pendingClaims`` (one at a time per process).
    var claiming = false
    /// Counts the jobs this process added to or put back in the store, so the scheduler knows when to look.
    var storeGeneration = 0
    var batcher = BatcherStats()
    /// The batch each admitted job was admitted in (several compatible jobs to one provider), until its call.
    var batchOf: [JobID: BatchMembership] = [:]
    var deduplicated = 0
    /// What the jobs served by a cache or an identical request would have cost to generate.
    var saved: Money = .zero
    /// Fingerprints the shared tiers failed to serve, and how many times (lookups no tier answered, fetches
    /// that failed): a line that may exist there is generated only after ``ParallelGenerator/sharedTierTries``
    /// failures.
    var sharedTierFailures: [String: Int] = [:]
    var invalid: [JobID: GenerationResult] = [:]
    /// Requests submitted so far, for the fallback ids of requests that have none.
    var submittedCount = 0
    var waiters: [JobID: [(id: UInt64, continuation: CheckedContinuation<GenerationResult, Never>)]] = [:]
    var nextWaiterID: UInt64 = 0
    var providerActivity: [String: ProviderActivity] = [:]
    var latencies: [String: [Duration]] = [:]
    var lastRescue: Duration = .zero
    /// Set when this machine's storage failed: the engine takes no new work from then on.
    var halt: LocalResourceError?
    /// The job taken back after a crash (``JobRecord/crashes``) that this process is running now: such jobs
    /// run one at a time, so that a job whose call brings the process down is never in flight with another
    /// suspect, and only it keeps being blamed.
    var suspect: JobID?
    /// Suspects leased while another one runs; they hold their leases (no provider call) until it is done.
    var parkedSuspects: [LeasedJob] = []
    /// Jobs whose provider was asked to stop their task (``ParallelGenerator/cancel(_:)``): when the call ends in
    /// failure they are dead-lettered as cancelled, never retried.
    var cancelRequested: Set<JobID> = []
}

/// A job this process holds, and when (by the engine's clock) its lease was last renewed.
struct InFlight {
    var lease: JobLease
    var renewedAt: Duration
    /// After a renewal failed: when to try again (a store that is down, or a lease another process took, is
    /// asked again at this pace instead of on every turn of the scheduler's loop).
    var retryAt: Duration? = nil
    /// The store answered that the lease is no longer this process's (it expired and was given to another
    /// run): it is never renewed again, and what the call brings back is refused by the store's fence.
    var lost = false

    /// When this lease is next due for renewal: a third of its duration after it was last renewed, or the
    /// retry time after a failure, whichever is later; never for a lease that is lost.
    func renewalDue(leaseDuration: Duration) -> Duration? {
        lost ? nil : max(renewedAt + leaseDuration / 3, retryAt ?? .zero)
    }
}

/// What a leader's attempt tells the identical requests waiting on it.
enum FlightOutcome: Sendable {
    case success(Artifact)
    case terminal(GenerationError)
    case retryLater
}

/// A part of the engine (a stage, or the generator itself): it reaches the shared state through ``core``, and
/// tells waiters, subscribers and the scheduler what happened through the operations below.
protocol EnginePart: Sendable {
    var core: EngineCore { get }
}

extension EnginePart {
    var configuration: PargenConfiguration { core.configuration }
    var store: any JobStore { core.store }
    var artifacts: ArtifactStore { core.artifacts }
    var clock: PargenClock { core.clock }
    var logger: Logger { core.logger }
    var hooks: EngineHooks { core.hooks }
    var workerID: String { core.workerID }
    var wakeup: Wakeup { core.wakeup }

    func publish(_ event: PargenEvent) { core.bus.publish(event) }

    func finishWaiters(_ result: GenerationResult) {
        guard let id = result.jobID else { return }
        let waiters = core.state.withLock { state in
            state.cancelRequested.remove(id)
            return state.waiters.removeValue(forKey: id) ?? []
        }
        for waiter in waiters { waiter.continuation.resume(returning: result) }
        publish(.finished(result))
    }

    /// Hands a finished job's result to its waiters and subscribers, read from the store.
    func finish(_ id: JobID) async {
        guard let record = try? await store.job(id) else { return }
        finish(record)
    }

    /// Hands a finished job's result to its waiters and subscribers, from its record as the store wrote it.
    func finish(_ record: JobRecord) {
        guard record.state.isFinal else { return }
        finishWaiters(core.makeResult(record))
    }

    func progress(
        _ record: JobRecord,
        _ status: ProgressStatus,
        provider: String? = nil,
        fraction: Double = 0,
        message: String? = nil
    ) {
        // Every state change at debug; the running task's progress ticks at trace.
        let level: Logger.Level = status == .running && message == nil ? .trace : .debug
        if logger.logLevel <= level {
            var metadata: Logger.Metadata = [
                LoggingKeys.jobID: "\(record.id)", LoggingKeys.requestID: "\(record.request.id)",
                LoggingKeys.status: "\(status.rawValue)",
            ]
            if let provider { metadata[LoggingKeys.provider] = "\(provider)" }
            if let message { metadata["pargen.message"] = "\(message)" }
            logger.log(level: level, "job \(status.rawValue)", metadata: metadata)
        }
        publish(
            .progress(
                ProgressUpdate(
                    requestID: record.request.id,
                    jobID: record.id,
                    status: status,
                    progress: fraction,
                    provider: provider,
                    message: message,
                    time: clock.now
                )
            )
        )
    }

    /// Notes that this process put a job back in the store (or added one): the scheduler looks at the queues again.
    func storeChanged() {
        core.state.withLock { $0.storeGeneration += 1 }
        wakeup.signal()
    }

    /// Stops taking new work because this machine's storage failed: jobs in flight end or go back to the store,
    /// every waiter is answered at once (``ParallelGenerator/result(for:)`` gives a finished job's result, and a
    /// `cancelled` one naming `reason` for the others), and ``ParallelGenerator/haltReason`` says why. Only the
    /// first reason is kept.
    func halt(because reason: LocalResourceError) {
        let waiters = core.state.withLock { state -> [JobID: [(id: UInt64, continuation: CheckedContinuation<GenerationResult, Never>)]]? in
            guard state.halt == nil else { return nil }
            state.halt = reason
            if state.lifecycle == .running { state.lifecycle = .draining }
            defer { state.waiters = [:] }
            return state.waiters
        }
        guard let waiters else { return }
        logger.error(
            "stopped taking work: this machine's storage failed",
            metadata: [LoggingKeys.error: "\(reason)", "path": "\(reason.path)"]
        )
        EngineCore.answer(waiters) { EngineCore.cancelledResult($0, halt: reason) }
        wakeup.signal()
    }

    /// Runs a store transition to the end even if the job's task is cancelled (a shutdown): a lease given
    /// back or a result recorded must land, and some drivers refuse work in a cancelled task.
    func shielded<T: Sendable>(
        _ transition: @escaping @Sendable () async throws -> T
    ) async throws
        -> T
    {
        // An unstructured task is the one way to shield cleanup from cancellation (see STYLE.md, rule 5).
        try await Task { try await transition() }.value
    }
}
