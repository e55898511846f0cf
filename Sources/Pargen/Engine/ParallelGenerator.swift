public import Foundation
public import Logging
public import ServiceLifecycle
import Synchronization

/// Runs generation campaigns across providers: validation, queueing, caching and de-duplication, batching,
/// load balancing, budgets, rate limits, resource leases, retries and dead letters.
///
/// ```swift
/// let generator = ParallelGenerator(configuration: .init(), providers: LocalProvider.demoProviders())
/// try await generator.start()
/// let results = try await generator.generate([.audio(prompt: "Rain on a tin roof", duration: .seconds(5))])
/// try await generator.stop()
/// ```
///
/// It is a `Service`: run it in a `ServiceGroup` with ``run()``, or use ``start()`` and ``stop()``.
public final class ParallelGenerator: Service, EnginePart {
    public typealias Configuration = PargenConfiguration

    /// What the stages share: the configuration, the store, the artifact folder, the clock, events and state.
    let core: EngineCore
    /// The stages a job goes through: ``IntakeStage`` checks and queues it; ``SchedulerStage`` takes it into the
    /// backlog and starts it when ``AdmissionController`` admits it; ``ExecutionStage`` runs its call;
    /// ``SettlementStage`` turns every way the call can end into one fenced store transition. The scheduler holds
    /// the execution stage, which holds the settlement stage.
    let scheduler: SchedulerStage
    let intake: IntakeStage

    public var configuration: Configuration { core.configuration }
    public var store: any JobStore { core.store }
    public var artifacts: ArtifactStore { core.artifacts }
    public var clock: PargenClock { core.clock }
    /// This process's name on the leases it holds (and as housekeeping's leader).
    public var workerID: String { core.workerID }
    var settlement: SettlementStage { scheduler.settlement }
    /// The components the generator's own API reads (statistics, cancelling, budgets): the execution stage's.
    private var execution: ExecutionStage { scheduler.execution }
    var providers: [String: any GenerationProvider] { execution.providers }
    var admission: AdmissionController { execution.admission }
    var pool: ResourcePool { execution.pool }
    var balancer: LoadBalancer { execution.balancer }
    var cache: any GenerationCache { execution.cache }
    var sharedCache: (any SharedArtifactCache)? { execution.sharedCache }
    var costs: CostMonitor { execution.costs }

    /// - Parameters:
    ///   - configuration: Limits, batching, resources, budgets, retries.
    ///   - providers: The providers to balance across (names must be unique).
    ///   - store: Where jobs live; `nil` for a ``MemoryJobStore`` on `clock`.
    ///   - cache: The artifact cache; `nil` for a ``MemoryLRUCache`` sized by the configuration.
    ///   - sharedCache: Cache tiers shared with other processes (Redis, an object store behind a CDN), looked up
    ///     after `cache`; artifacts this process generates are published to them.
    ///   - outputDirectory: Where media files are written.
    ///   - clock: The clock every wait and expiry uses.
    ///   - logger: A background logger; logs nothing by default.
    public init(
        configuration: Configuration = .init(),
        providers: [any GenerationProvider] = LocalProvider.demoProviders(),
        store: (any JobStore)? = nil,
        cache: (any GenerationCache)? = nil,
        sharedCache: (any SharedArtifactCache)? = nil,
        outputDirectory: URL = FileManager.default.temporaryDirectory.appendingPathComponent("pargen-output"),
        clock: PargenClock = .continuous,
        logger: Logger = Logger(label: "pargen", factory: { _ in SwiftLogNoOpLogHandler() }),
        hooks: EngineHooks = EngineHooks()
    ) {
        let store = store ?? MemoryJobStore(clock: clock)
        core = EngineCore(
            configuration: configuration,
            store: store,
            artifacts: ArtifactStore(root: outputDirectory),
            clock: clock,
            logger: logger,
            hooks: hooks,
            workerID: "worker-\(UInt32.random(in: 0...UInt32.max))"
        )
        var byName: [String: any GenerationProvider] = [:]
        for provider in providers where byName[provider.descriptor.name] == nil {
            byName[provider.descriptor.name] = provider
        }
        let descriptors = providers.map(\.descriptor).filter { byName[$0.name] != nil }
        let pool = ResourcePool(configuration: configuration.resources, clock: clock)
        // On a shared store the user windows, project buckets and bursts are kept, exactly, by the store's claims:
        // a local copy would count calls the store then refuses, and hold users back for calls never made.
        var localLimits = configuration.rateLimits
        if store is any AdmittingJobStore { localLimits.enabled = false }
        let admission = AdmissionController(providers: descriptors, rateLimits: localLimits, clock: clock)
        let balancer = LoadBalancer(
            providers: descriptors,
            configuration: configuration.balancing,
            seed: configuration.randomSeed
        )
        let cache =
            cache
            ?? MemoryLRUCache(
                capacity: configuration.caching.memoryCapacity,
                timeToLive: configuration.caching.timeToLive,
                clock: clock
            )
        let sharedCache = configuration.caching.enabled ? sharedCache : nil
        let costs = CostMonitor(configuration: configuration.budgets, clock: clock)
        intake = IntakeStage(
            core: core,
            validator: RequestValidator(configuration: configuration.validation),
            balancer: balancer
        )
        let settlement = SettlementStage(
            core: core,
            balancer: balancer,
            retryPolicy: RetryPolicy(configuration: configuration.retry),
            costs: costs,
            random: LockedRandom(seed: configuration.randomSeed)
        )
        let execution = ExecutionStage(
            core: core,
            settlement: settlement,
            providers: byName,
            admission: admission,
            pool: pool,
            balancer: balancer,
            cache: cache,
            sharedCache: sharedCache,
            costs: costs,
            flights: SingleFlight<FlightOutcome>()
        )
        scheduler = SchedulerStage(
            core: core,
            execution: execution,
            settlement: settlement,
            providers: byName,
            admission: admission,
            pool: pool,
            balancer: balancer,
            batcher: Batcher(configuration: configuration.batching),
            cache: cache,
            sharedCache: sharedCache
        )
    }

    // MARK: - Lifecycle

    /// Starts processing in the background. Pair with ``stop()``.
    ///
    /// - Important: Use either ``start()``/``stop()`` or ``run()`` in a `ServiceGroup`, not both.
    public func start() async throws {
        try artifacts.prepare()
        let started = core.state.withLock { state -> Bool in
            guard state.runTask == nil else { return false }
            // Running from now on, so generate() may be called at once; run() keeps this state.
            state.lifecycle = .running
            return true
        }
        guard started else { return }
        // An unstructured task bridges the seed's start()/stop() API onto the dispatcher; stop() awaits it. It does
        // not follow the caller's graceful shutdown (started inside a `ServiceGroup`'s service, it would otherwise
        // drain when the group shuts down): an engine started here ends with stop(), which says how.
        let task = Task { try await self.runDispatcher(followingGracefulShutdown: false) }
        core.state.withLock { $0.runTask = task }
    }

    /// Stops taking new work, lets jobs in flight finish, then returns.
    ///
    /// - Parameter immediately: Cancel jobs in flight instead of letting them finish; their leases are given
    ///   back with the attempt restored, so nothing is lost.
    public func stop(immediately: Bool = false) async throws {
        let task = core.state.withLock { state -> Task<Void, any Error>? in
            if state.lifecycle == .running { state.lifecycle = .draining }
            return state.runTask
        }
        wakeup.signal()
        if immediately { task?.cancel() }
        _ = try? await task?.value
        core.state.withLock { $0.runTask = nil }
    }

    /// Runs the dispatcher until graceful shutdown or cancellation.
    public func run() async throws {
        try artifacts.prepare()
        try await runDispatcher(followingGracefulShutdown: true)
    }

    /// The body of ``run()`` once the artifact folders are prepared (``start()`` prepares them itself, so a
    /// bad output folder throws from `start()`).
    private func runDispatcher(followingGracefulShutdown: Bool) async throws {
        core.state.withLock { state in
            // A stop() that came before this task started leaves `draining`, and the loop ends at once.
            if state.lifecycle == .idle || state.lifecycle == .stopped { state.lifecycle = .running }
        }
        defer {
            // Whoever still waits for a job waits for a job this engine will not run: each is answered now.
            let waiters = core.state.withLock { state in
                state.lifecycle = .stopped
                defer { state.waiters = [:] }
                return state.waiters
            }
            EngineCore.answer(waiters) { EngineCore.cancelledResult($0, stopped: true) }
            core.bus.finish()
        }
        // A store that other processes write to says when work arrives, so the scheduler looks at once instead of
        // at its next poll; and waiters on jobs that other processes finish learn of it from the store. These
        // watchers only wake the engine up, so they are cancelled and not awaited when it stops: a connection
        // that a database restart left hanging must not hold a stopping worker.
        let watchers: Task<Void, Never>? = (store as? any JobNotifying).map { notifying in
            Task {
                await withDiscardingTaskGroup { watchers in
                    watchers.addTask { await notifying.watchForWork { self.storeChanged() } }
                    watchers.addTask { await self.watchOtherWorkersResults() }
                }
            }
        }
        defer { watchers?.cancel() }
        // Budget limits set while running live in the store when it keeps them: this run starts from them, and on a
        // store that other processes share follows what they set (checked every second).
        let limitStore = store as? any BudgetLimitStore
        if let limitStore { await refreshBudgetLimits(from: limitStore) }
        let limitsWatcher: Task<Void, Never>? = limitStore.flatMap { limitStore in
            guard store is any JobNotifying else { return nil }
            return Task {
                // Real time, like the store's notifications: it follows other processes, not this engine's clock.
                while (try? await Task.sleep(for: .seconds(1))) != nil {
                    await self.refreshBudgetLimits(from: limitStore)
                }
            }
        }
        defer { limitsWatcher?.cancel() }
        guard followingGracefulShutdown else {
            await withDiscardingTaskGroup { group in
                await scheduler.dispatchLoop(group: &group)
            }
            return
        }
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                await scheduler.dispatchLoop(group: &group)
            }
        } onGracefulShutdown: {
            self.core.state.withLock { if $0.lifecycle == .running { $0.lifecycle = .draining } }
            self.wakeup.signal()
        }
    }

    // MARK: - Intake

    /// Validates and queues requests. Returns one job id per request, in order.
    ///
    /// A request that fails validation gets a job id too; its result, a failure naming the field, is ready at
    /// once (see ``result(for:)`` and ``results()``).
    public func submit(_ requests: [GenerationRequest]) async throws -> [JobID] {
        try await intake.submit(requests)
    }

    /// Runs `requests` to the end and returns one result per request, in input order.
    ///
    /// - Parameter progress: Called for every progress update of these requests.
    /// - Throws: Only if the engine is not running or the store fails; failed requests are results.
    public func generate(
        _ requests: [GenerationRequest],
        progress: (@Sendable (ProgressUpdate) -> Void)? = nil
    ) async throws -> [GenerationResult] {
        let running = core.state.withLock { $0.lifecycle == .running }
        guard running else { throw EngineError.notRunning }
        let watched = Locked(Set<JobID>())
        let buffered = Locked([ProgressUpdate]())
        var token: UInt64?
        if let progress {
            // Updates may arrive before the ids are known; hold them back until then.
            token = core.bus.addCallback { event in
                guard case .progress(let update) = event else { return }
                let known = watched.withLock { $0.isEmpty ? nil : $0.contains(update.jobID) }
                switch known {
                case .some(true): progress(update)
                case .some(false): break
                case .none: buffered.withLock { $0.append(update) }
                }
            }
        }
        defer { if let token { core.bus.removeCallback(token) } }
        let ids = try await submit(requests)
        watched.withLock { $0 = Set(ids) }
        if let progress {
            for update in buffered.withLock({ $0 }) where ids.contains(update.jobID) { progress(update) }
        }
        var results: [GenerationResult] = []
        results.reserveCapacity(ids.count)
        for id in ids { results.append(await result(for: id)) }
        return results
    }

    /// Waits for a job's final result. If the waiting task is cancelled, returns at once with a
    /// ``GenerationError/Code/cancelled`` failure (the job itself goes on). So does a wait for a job that the
    /// engine will not run because it stopped (or halted) first: the job stays in the store for a later run.
    public func result(for id: JobID) async -> GenerationResult {
        let waiterID = core.state.withLock { state -> UInt64 in
            state.nextWaiterID += 1
            return state.nextWaiterID
        }
        let result = await withTaskCancellationHandler {
            await waitForResult(id, waiterID: waiterID)
        } onCancel: {
            let mine = core.state.withLock { state -> CheckedContinuation<GenerationResult, Never>? in
                guard let index = state.waiters[id]?.firstIndex(where: { $0.id == waiterID }) else { return nil }
                return state.waiters[id]!.remove(at: index).continuation
            }
            mine?.resume(returning: EngineCore.cancelledResult(id))
        }
        // A waiter that stopped waiting still reports what the store knows: a job that finished is finished,
        // whoever was waiting for it (the manifest written on Ctrl-C must say what the store says).
        guard result.error?.code == .cancelled,
            let record = try? await shielded({ try await self.store.job(id) }), record.state.isFinal
        else { return result }
        return makeResult(record)
    }

    /// Why the engine stopped taking work, when this machine's storage failed (a full disk, a folder that cannot
    /// be written); `nil` otherwise. Jobs not finished then stay in the store, and a later run continues them.
    public var haltReason: LocalResourceError? { core.state.withLock { $0.halt } }

    private func waitForResult(_ id: JobID, waiterID: UInt64) async -> GenerationResult {
        await withCheckedContinuation { (continuation: CheckedContinuation<GenerationResult, Never>) in
            let ready = core.state.withLock { state -> GenerationResult? in
                if let invalid = state.invalid[id] { return invalid }
                if Task.isCancelled { return EngineCore.cancelledResult(id) }
                if let halt = state.halt { return EngineCore.cancelledResult(id, halt: halt) }
                // A stopped engine runs nothing more: waiting would never end (a finished job's result is looked
                // up by result(for:)).
                if state.lifecycle == .stopped { return EngineCore.cancelledResult(id, stopped: true) }
                state.waiters[id, default: []].append((waiterID, continuation))
                return nil
            }
            if let ready {
                continuation.resume(returning: ready)
                return
            }
            // The job may have finished before we registered: look it up, and whoever removes the waiter resumes it.
            Task {
                guard let record = try? await self.store.job(id), record.state.isFinal else { return }
                let result = self.makeResult(record)
                let mine = self.core.state.withLock { state -> CheckedContinuation<GenerationResult, Never>? in
                    guard let index = state.waiters[id]?.firstIndex(where: { $0.id == waiterID }) else { return nil }
                    return state.waiters[id]!.remove(at: index).continuation
                }
                mine?.resume(returning: result)
            }
        }
    }

    /// What a stop still waits for (for a worker that did not stop in time to say so).
    package func stopDiagnostics() -> String {
        core.state.withLock { state in
            "lifecycle \(state.lifecycle), \(state.inFlight.count) jobs held (\(state.inFlight.keys.sorted().prefix(5).map(\.rawValue).joined(separator: ", "))), \(state.running) running, \(state.waiting.count) waiting, run task \(state.runTask == nil ? "gone" : "present")"
        }
    }

    /// Resolves waiters whose jobs another process finished (a shared store): every second, looks up the jobs
    /// waited on (the oldest 100 waits first), until cancelled.
    func watchOtherWorkersResults() async {
        while !Task.isCancelled {
            try? await clock.sleep(for: .seconds(1))
            let waited = core.state.withLock { state in Array(state.waiters.keys.sorted().prefix(100)) }
            for id in waited where !Task.isCancelled {
                guard let record = try? await store.job(id), record.state.isFinal else { continue }
                finishWaiters(makeResult(record))
            }
        }
    }

    /// The result a finished job's record stands for (what ``result(for:)`` returns once the job is final).
    public func makeResult(_ record: JobRecord) -> GenerationResult { core.makeResult(record) }

    /// Failures of the shared tiers to serve a line that may exist there (lookups no tier answered, fetches of
    /// its artifact that failed) after which the line is generated: the provider is paid again only after this
    /// many, each a second apart.
    public static let sharedTierTries = 3

    /// Every result from now on, as jobs finish.
    public func results() -> AsyncCompactMapSequence<AsyncStream<PargenEvent>, GenerationResult> {
        core.bus.subscribe().compactMap { event in
            if case .finished(let result) = event { return result }
            return nil
        }
    }

    /// Every event (progress, budget alerts, results) from now on.
    public func events() -> AsyncStream<PargenEvent> { core.bus.subscribe() }

    /// Calls `callback` for every event until the returned token is passed to ``removeEventCallback(_:)``.
    @discardableResult
    public func onEvent(_ callback: @escaping @Sendable (PargenEvent) -> Void) -> UInt64 { core.bus.addCallback(callback) }

    public func removeEventCallback(_ token: UInt64) { core.bus.removeCallback(token) }

    /// Whether `id` names a request refused at submission (it never became a job in the store).
    public func isInvalidSubmission(_ id: JobID) -> Bool { core.state.withLock { $0.invalid[id] != nil } }

    /// Names of the configured providers.
    public var providerNames: [String] { balancer.providerNames }

    /// A snapshot of every component.
    public func systemStats() async -> SystemStats {
        let queue = (try? await store.counts()) ?? [:]
        let cacheStats = await cache.stats()
        let sharedStats = await sharedCache?.stats()
        // The money is the job records': the store sums it, for everything and for each limited budget.
        let ledger = (try? await store.ledgerTotals()) ?? CostLedger()
        let budgets = await budgetLedgers()
        var poolStats = pool.stats()
        poolStats.providers = admission.providerStats()
        return core.state.withLock { state in
            var cacheCopy = cacheStats
            cacheCopy.deduplicated = state.deduplicated
            cacheCopy.saved = state.saved
            var batcherStats = state.batcher
            batcherStats.batchesInFlight = 0
            var activity = state.providerActivity
            for (name, samples) in state.latencies {
                activity[name, default: ProviderActivity()].latency = LatencySummary(samples)
            }
            return SystemStats(
                rateLimiter: admission.limiterStats(),
                resourcePool: poolStats,
                batcher: batcherStats,
                loadBalancer: balancer.stats(),
                cache: cacheCopy,
                costMonitor: costs.stats(ledger: ledger, usage: budgets),
                queue: queue,
                providers: activity,
                invalid: state.invalid.count,
                sharedCache: sharedStats
            )
        }
    }

    /// Each budget with a limit, and what its scope's jobs have been charged and have reserved, as the job store
    /// sums them from the job records' ledgers (every process's jobs).
    public func budgetUsage() async -> [BudgetUsage] {
        costs.stats(usage: await budgetLedgers()).budgets
    }

    /// The store's ledger of each scope that has a budget.
    private func budgetLedgers() async -> [BudgetScope: CostLedger] {
        var usage: [BudgetScope: CostLedger] = [:]
        for scope in costs.limits().keys {
            if let used = try? await store.ledger(in: scope) { usage[scope] = used }
        }
        return usage
    }

    /// Money this process's calls have been charged so far (the store's ledger, for every process, is in
    /// ``systemStats()``).
    public func currentSpend() -> Money { costs.chargedHere }

    /// Cancels a job that no provider call has begun for: one waiting in the store, or one this process holds in
    /// its admission backlog (leased, waiting for a quota or a slot). It is dead-lettered with a
    /// ``GenerationError/Code/cancelled`` error (``requeue(_:)`` brings it back), and its waiters are answered.
    ///
    /// A job in a call here whose provider accepted its task is cancelled at the provider where the provider can
    /// do that (``GenerationProvider/cancelTask(taskID:)``): ``CancelOutcome/requested``, and the job is
    /// dead-lettered as cancelled when its call ends (unless the task finished first, when its result stands).
    ///
    /// - Returns: ``CancelOutcome/notCancellable(_:)`` when the job's call cannot be stopped (its provider cannot
    ///   cancel tasks, its task id is not known yet, or another worker holds it): such a call runs to its end.
    /// - Throws: ``StoreError/Code/notFound`` for an unknown job, ``StoreError/Code/invalidState`` for a
    ///   finished one.
    public func cancel(_ id: JobID) async throws -> CancelOutcome {
        let held = core.state.withLock { $0.waiting.removeValue(forKey: id) }
        if let held {
            _ = admission.remove(id)
            let error = GenerationError(.cancelled, "cancelled by request")
            if held.isProvisional {
                // Only looked at (a shared store): it is still waiting in the store.
                try await store.cancel(id)
                progress(held.record, .deadLettered, message: error.description)
                await finish(id)
            } else {
                _ = await settlement.deadLetter(held, error)
                core.state.withLock { _ = $0.inFlight.removeValue(forKey: id) }
            }
            storeChanged()
            return .cancelled
        }
        guard let record = try await store.job(id) else { throw StoreError(.notFound, "no job \(id)") }
        switch record.state {
        case .available:
            try await store.cancel(id)
            progress(record, .deadLettered, message: "cancelled by request")
            await finish(id)
            storeChanged()
            return .cancelled
        case .running:
            guard core.state.withLock({ $0.inFlight[id] != nil }) else {
                return .notCancellable("it is held by another worker")
            }
            guard record.recoveryPoint == .submitted, let taskID = record.providerTaskID, let name = record.provider,
                let provider = providers[name]
            else { return .notCancellable("its call to a provider is under way and its task id is not known yet") }
            core.state.withLock { _ = $0.cancelRequested.insert(id) }
            let stopped: Bool
            do {
                stopped = try await provider.cancelTask(taskID: taskID)
            } catch {
                core.state.withLock { _ = $0.cancelRequested.remove(id) }
                return .notCancellable("\(name) did not cancel task \(taskID): \(error)")
            }
            guard stopped else {
                core.state.withLock { _ = $0.cancelRequested.remove(id) }
                return .notCancellable("\(name) cannot cancel tasks")
            }
            return .requested
        case .succeeded, .deadLettered, .needsReconciliation:
            throw StoreError(.invalidState, "job \(id) has finished (\(record.state.rawValue))")
        }
    }

    /// The budgets, their spending and alerts. ``setBudgetLimit(_:for:)`` changes a limit while running.
    public var costMonitor: CostMonitor { costs }

    /// Sets a budget's limit from now on (`nil` removes it), over the configuration's. A store that keeps limits
    /// (``BudgetLimitStore``: SQLite, PostgreSQL) keeps it, so the next run applies it too, and every worker on a
    /// shared store applies it within a second; jobs refused by the old limit stay where they are.
    ///
    /// - Throws: ``StoreError`` when the store cannot keep it (nothing changes then).
    public func setBudgetLimit(_ limit: Money?, for scope: BudgetScope) async throws {
        if let limitStore = store as? any BudgetLimitStore { try await limitStore.setBudgetLimit(limit, for: scope) }
        costs.setLimit(limit, for: scope)
        wakeup.signal()
    }

    /// Applies the limits the store keeps; a store that does not answer keeps the limits known.
    func refreshBudgetLimits(from limitStore: any BudgetLimitStore) async {
        do {
            costs.apply(storedLimits: try await limitStore.budgetLimits())
        } catch {
            logger.debug("budget limits not read", metadata: [LoggingKeys.error: "\(error)"])
        }
    }

    /// The providers this engine balances across: capabilities, prices and quotas.
    public var providerDescriptors: [ProviderDescriptor] {
        providerNames.compactMap { providers[$0]?.descriptor }
    }

    /// Dead-lettered jobs, with their error history.
    public func deadLetters() async throws -> [JobRecord] {
        try await store.jobs(matching: JobQuery(states: [.deadLettered]))
    }

    /// Puts a dead-lettered job back in the queue.
    public func requeue(_ id: JobID) async throws {
        try await store.requeue(id)
        wakeup.signal()
    }

}

/// Points where tests inject faults into a running engine (crash tests). Each defaults to nothing.
/// What ``ParallelGenerator/cancel(_:)`` did.
public enum CancelOutcome: Sendable, Hashable {
    /// The job was dead-lettered as cancelled; no provider call was made for it.
    case cancelled
    /// Its provider was asked to stop its task; the job is dead-lettered as cancelled when the call ends
    /// (unless the task finished first).
    case requested
    /// Its call runs to its end, for this reason.
    case notCancellable(String)
}

public struct EngineHooks: Sendable {
    /// Called after a provider accepted a task and before its task id is persisted: the window in which a
    /// crash leaves a job that may have been paid for without a record of it.
    public var afterProviderAccepted: @Sendable (JobID) -> Void
    /// Called with the request and the staging file of each provider call, before the call: where a test
    /// breaks the disk or brings the process down.
    public var beforeProviderCall: @Sendable (ValidatedRequest, URL) -> Void
    /// Called at each recovery point of a provider call (see ``Checkpoint``): where a crash test kills the
    /// process.
    public var checkpoint: @Sendable (Checkpoint, JobID) -> Void

    /// The points of a provider call at which a crash leaves a different record for the next run to recover.
    public enum Checkpoint: String, Sendable, CaseIterable {
        /// The attempt is recorded (`submitting`, its reservation made); the call is about to go out.
        case callBegun = "call_begun"
        /// The provider accepted the task and its id is stored (`submitted`); the task runs.
        case submitted
        /// The media is in the staging folder; it is not checked or moved into place yet.
        case downloaded
        /// The media is in place; the store does not know the job succeeded yet.
        case committed
    }

    public init(
        afterProviderAccepted: @escaping @Sendable (JobID) -> Void = { _ in },
        beforeProviderCall: @escaping @Sendable (ValidatedRequest, URL) -> Void = { _, _ in },
        checkpoint: @escaping @Sendable (Checkpoint, JobID) -> Void = { _, _ in }
    ) {
        self.afterProviderAccepted = afterProviderAccepted
        self.beforeProviderCall = beforeProviderCall
        self.checkpoint = checkpoint
    }
}

/// Errors of the engine itself (not of a request).
public struct EngineError: Error, Sendable, Hashable, CustomStringConvertible {
    public var description: String
    public static let notRunning = EngineError(
        description: "the generator is not running: call start() first, or run it in a ServiceGroup"
    )
}
