import Foundation
import Logging
import Synchronization

/// The execution stage: one admitted job, from its job slot through the cache, single-flight, the budget and
/// the provider call, to its artifact.
struct ExecutionStage: EnginePart {
    let core: EngineCore
    let settlement: SettlementStage
    let providers: [String: any GenerationProvider]
    let admission: AdmissionController
    let pool: ResourcePool
    let balancer: LoadBalancer
    let cache: any GenerationCache
    /// The tiers shared with other processes and runs (Redis, an object store), after ``cache``.
    let sharedCache: (any SharedArtifactCache)?
    let costs: CostMonitor
    let flights: SingleFlight<FlightOutcome>

    // MARK: - One job

    /// The execution stage for one job: a job slot (the one its admission took, `taken`, or one it waits for
    /// here), then the job, then its ticket back (however it ended).
    func processJob(_ job: LeasedJob, ticket: HeldTicket?, shared: SharedArtifact? = nil, slot taken: ResourceLease? = nil) async {
        let id = job.record.id
        defer {
            ticket?.finish(.notCalled)
            core.state.withLock { _ = $0.inFlight.removeValue(forKey: id) }
            wakeup.signal()
        }
        let slot: ResourceLease
        do {
            if let taken { slot = taken } else { slot = try await pool.acquire(Self.jobSlot(for: job)) }
        } catch {
            try? await shielded { try await self.store.release(job.lease) }
            storeChanged()
            return
        }
        defer { pool.release(slot) }
        do {
            try await runJob(job, ticket: ticket, shared: shared)
        } catch let error as StoreError where error.code == .leaseLost {
            logger.debug("lease lost", metadata: [LoggingKeys.jobID: "\(id)"])
        } catch {
            if Task.isCancelled || error is CancellationError {
                try? await shielded { try await self.store.release(job.lease) }
                storeChanged()
            } else if let local = LocalResourceError.classify(
                error,
                path: artifacts.root,
                operation: "write the media"
            ) {
                await settlement.giveBack(job, haltingFor: local)
            } else {
                logger.info(
                    "job processing failed",
                    metadata: [LoggingKeys.jobID: "\(id)", LoggingKeys.error: "\(error)"]
                )
                try? await settlement.putBack(job, error: GenerationError(.transient, "internal error: \(error)"))
            }
        }
    }

    func estimate(_ request: ValidatedRequest, _ provider: String) -> Money {
        providers[provider]?.descriptor.pricing.estimate(request) ?? .zero
    }

    /// The job slot a job runs in.
    static func jobSlot(for job: LeasedJob) -> ResourceRequest {
        ResourceRequest(amounts: [.jobSlots: 1], priority: job.record.request.priority)
    }

    func runJob(_ job: LeasedJob, ticket: HeldTicket?, shared: SharedArtifact? = nil) async throws {
        let record = job.record
        let request = record.request
        // A job rescued after its provider accepted the task resumes polling; it never submits again.
        // So does a call cut off at a provider that de-duplicates by key: it is made again there, under the same
        // key, and never served from elsewhere (the provider may have billed it).
        if record.recoveryPoint == .submitted && record.providerTaskID != nil || record.recoveryPoint == .cutOff {
            guard let ticket else { return try await settlement.putBack(job) }
            _ = await call(job, ticket: ticket)
            return
        }
        if configuration.caching.enabled, let cached = await cache.get(request.fingerprint) {
            ticket?.finish(.notCalled)
            let written = try await completeWithShared(cached, job: job, servedFromCache: true)
            progress(record, .servedFromCache, provider: cached.provider)
            finish(written)
            return
        }
        if let shared, let sharedCache, try await serveShared(shared, job: job, from: sharedCache) != nil {
            ticket?.finish(.notCalled)
            return
        }
        // An identical request is at work: this one will not call a provider, so its admission goes back now.
        if flights.isLeading(request.fingerprint) { ticket?.finish(.notCalled) }
        switch await flights.join(request.fingerprint) {
        case .leader:
            let outcome: FlightOutcome
            if let ticket, !ticket.isFinished {
                // Across processes, one generates and the others wait for its result in the shared tiers.
                let claim = await sharedCache?.claim(request.fingerprint) ?? .unavailable
                if claim == .heldElsewhere {
                    ticket.finish(.notCalled)
                    try? await settlement.putBack(job, after: Self.sharedFlightPoll)
                    flights.finish(request.fingerprint, with: .retryLater)
                    progress(record, .queued, message: "another worker is generating an identical request")
                    return
                }
                // Looked up before the claim: another process may have published it and let go since.
                if case .leader = claim, let sharedCache, !sharedTiersGaveUp(request.fingerprint) {
                    var served: Artifact?
                    let mayExist: Bool
                    switch await sharedCache.lookup(request.fingerprint) {
                    case .found(let found):
                        served = try await serveShared(found, job: job, from: sharedCache)
                        mayExist = true
                    case .unanswered:
                        countSharedTierFailure(request.fingerprint)
                        mayExist = true
                    case .absent:
                        mayExist = false
                    }
                    if served != nil || mayExist && !sharedTiersGaveUp(request.fingerprint) {
                        // Served, or the line may exist (its fetch failed, or no tier answered): ask again shortly
                        // rather than pay for the line again.
                        await sharedCache.release(claim)
                        ticket.finish(.notCalled)
                        if served == nil { try? await settlement.putBack(job, after: Self.sharedTierPause) }
                        flights.finish(request.fingerprint, with: served.map { .success($0) } ?? .retryLater)
                        return
                    }
                }
                outcome = await call(job, ticket: ticket)
                if case .leader = claim { await sharedCache?.release(claim) }
            } else {
                // It gave its admission back to follow a leader that has finished since: it queues again.
                try? await settlement.putBack(job, after: .zero)
                outcome = .retryLater
            }
            flights.finish(request.fingerprint, with: outcome)
        case .follower(.success(let shared)):
            let written = try await completeWithShared(shared, job: job, servedFromCache: false)
            core.state.withLock { $0.deduplicated += 1 }
            progress(record, .succeeded, provider: shared.provider, message: "de-duplicated")
            finish(written)
        case .follower(.terminal(let error)):
            let written = try await shielded { try await self.store.deadLetter(job.lease, error: error) }
            progress(record, .deadLettered, message: error.description)
            finish(written)
        case .follower(.retryLater), .follower(nil):
            // The identical request in flight did not finish: look again shortly (cache, or lead ourselves).
            try await settlement.putBack(job)
            progress(record, .queued, message: "waiting for an identical request")
        }
    }

    /// How often a job whose identical request another process is generating looks for its result.
    static let sharedFlightPoll: Duration = .milliseconds(500)
    /// The wait before a line the shared tiers failed to serve is looked for again.
    static let sharedTierPause: Duration = .seconds(1)

    /// Whether the shared tiers failed ``ParallelGenerator/sharedTierTries`` times to serve `fingerprint`.
    func sharedTiersGaveUp(_ fingerprint: String) -> Bool {
        core.state.withLock { $0.sharedTierFailures[fingerprint, default: 0] >= ParallelGenerator.sharedTierTries }
    }

    func countSharedTierFailure(_ fingerprint: String) {
        core.state.withLock { $0.sharedTierFailures[fingerprint, default: 0] += 1 }
    }

    /// Completes a job with another request's artifact (a cache hit or an identical request in flight): its
    /// own copy of the file, at no cost; what it would have cost is counted as saved.
    ///
    /// - Returns: The job's record as the store wrote it.
    func completeWithShared(_ shared: Artifact, job: LeasedJob, servedFromCache: Bool) async throws -> JobRecord {
        let artifact = try artifacts.materialize(shared, job: job.record.id, request: job.record.request)
        let saved = estimate(job.record.request, shared.provider)
        let outcome = JobOutcome(
            artifact: artifact,
            provider: shared.provider,
            cost: .zero,
            servedFromCache: servedFromCache,
            deduplicated: !servedFromCache,
            saved: saved
        )
        let written = try await shielded { try await self.store.complete(job.lease, outcome: outcome) }
        core.state.withLock { $0.saved += saved }
        return written
    }

    /// Completes a job with an artifact another process (or an earlier run) generated: its media is fetched from
    /// the object store into this run's folder, checked as a provider's would be, and the job is done at no
    /// cost, saving what it cost then. A fetch that fails is counted: the job is tried again, and its line is
    /// generated only after ``ParallelGenerator/sharedTierTries`` failures of the tiers.
    ///
    /// - Returns: The job's artifact, or `nil` when it was not served.
    @discardableResult
    func serveShared(_ found: SharedArtifact, job: LeasedJob, from sharedCache: any SharedArtifactCache) async throws
        -> Artifact?
    {
        let record = job.record
        let staging = artifacts.stagingURL(job: record.id, attempt: record.attempts + 1)
        var artifact: Artifact
        do {
            try await sharedCache.fetch(found, to: staging)
            let output = ProviderOutput(format: found.format, duration: .milliseconds(Int64(found.durationSeconds * 1000)))
            artifact = try await BlockingIO.run { [artifacts] in
                try artifacts.commit(staging: staging, job: record.id, request: record.request, output: output, provider: found.provider)
            }
        } catch {
            artifacts.discard(staging)
            countSharedTierFailure(record.request.fingerprint)
            logger.warning(
                "a shared artifact could not be fetched",
                metadata: [LoggingKeys.jobID: "\(record.id)", LoggingKeys.error: "\(error)"]
            )
            return nil
        }
        guard artifact.sha256 == found.sha256 else {
            countSharedTierFailure(record.request.fingerprint)
            logger.warning("a shared artifact's hash differs from its entry",
                metadata: [LoggingKeys.jobID: "\(record.id)"])
            return nil
        }
        artifact.publicURL = found.publicURL
        artifact.objectKey = found.key
        let outcome = JobOutcome(
            artifact: artifact,
            provider: found.provider,
            cost: .zero,
            servedFromCache: true,
            saved: found.cost
        )
        let written = try await shielded { try await self.store.complete(job.lease, outcome: outcome) }
        core.state.withLock { $0.saved += found.cost }
        await cache.put(record.request.fingerprint, artifact)
        progress(record, .servedFromCache, provider: found.provider)
        finish(written)
        return artifact
    }

    /// Publishes a newly generated artifact to the shared tiers. A failed publish fails the job's settlement, not
    /// the job: it is tried again (1 s, doubling to 60 s, on the engine's clock) while the job keeps its lease,
    /// for up to ``PargenConfiguration/Caching/publishRetryHorizon``; the provider is never called again for it.
    /// Past that, or when the engine stops, the job completes with its local file and no URL.
    func publishShared(_ artifact: Artifact, request: ValidatedRequest, cost: Money, job: JobID) async -> Artifact {
        guard let sharedCache, !request.fingerprint.isEmpty else { return artifact }
        let deadline = clock.now + configuration.caching.publishRetryHorizon
        var delay: Duration = .seconds(1)
        while true {
            do {
                let published = try await sharedCache.publish(artifact, fingerprint: request.fingerprint, cost: cost)
                var copy = artifact
                copy.publicURL = published.publicURL
                copy.objectKey = published.key
                return copy
            } catch {
                let stopping = Task.isCancelled || core.state.withLock { $0.lifecycle != .running }
                if stopping || clock.now + delay > deadline {
                    logger.error(
                        "the artifact could not be published to the shared tiers; it stays in the local folder",
                        metadata: [LoggingKeys.jobID: "\(job)", LoggingKeys.error: "\(error)"]
                    )
                    return artifact
                }
                logger.warning(
                    "publishing the artifact failed; trying again",
                    metadata: [LoggingKeys.jobID: "\(job)", LoggingKeys.error: "\(error)",
                        LoggingKeys.delayMs: "\(delay.milliseconds)"]
                )
                try? await clock.sleep(for: delay)
                delay = min(delay * 2, .seconds(60))
            }
        }
    }

    /// Makes the provider call the job was admitted for and records its outcome. Never throws: every failure
    /// ends in a store transition (retry, snooze or dead letter), and the ticket's outcome goes back to admission.
    func call(_ job: LeasedJob, ticket: HeldTicket) async -> FlightOutcome {
        let record = job.record
        let request = record.request
        let id = record.id
        let lease = job.lease
        let resumeTaskID = record.recoveryPoint == .submitted ? record.providerTaskID : nil
        let name = ticket.provider
        let provider = providers[name]!
        let descriptor = provider.descriptor
        let estimate = descriptor.pricing.estimate(request)
        // The attempt this call is (its key is JOB:ATTEMPT) and the task id the provider gave it, for the record
        // of a failure.
        let attemptNumber = resumeTaskID == nil ? record.attempts + 1 : record.attempts
        let taskSeen = Locked<String?>(resumeTaskID)
        // Set as the call goes out: from then on the provider may hold a task for it.
        let sent = Locked(false)
        // Set when a synchronous call's answer is media the provider made and billed.
        let billed = Locked(false)
        // When the provider first answered: a shared store dates the call's window place by it.
        let answeredAt = Locked<Duration?>(nil)
        do {
            // Then this machine's resources: a job admitted to a provider never waits on another provider's quota.
            let resources = try await pool.acquire(
                ResourceRequest(
                    amounts: [
                        .apiCalls: 1, .memoryMB: Self.memoryEstimate(request),
                        .storageMB: Self.storageEstimate(request),
                    ],
                    priority: request.priority
                )
            )
            defer { pool.release(resources) }
            // A resumed task already has its attempt and reservation; beginning again would forget its task id.
            if resumeTaskID == nil {
                // Stopped at once before the call began: it never goes out (the job is given back below).
                try Task.checkCancellation()
                // Reserve right before the call: budgets see what this call is now expected to cost, so only the
                // calls already under way can overrun a budget. The store checks the budgets against the job
                // records' ledgers in the transaction that reserves.
                let expected = costs.expectedCost(estimate, provider: name)
                let budgets = costs.budgets(for: request)
                if budgets.isEmpty {
                    try await store.beginAttempt(
                        lease,
                        provider: name,
                        reserving: expected,
                        idempotentSubmission: descriptor.idempotentSubmission
                    )
                } else {
                    do {
                        let committed = try await store.beginAttempt(
                            lease,
                            provider: name,
                            reserving: expected,
                            idempotentSubmission: descriptor.idempotentSubmission,
                            within: budgets
                        )
                        for alert in costs.reserved(committed) { publish(.budgetAlert(alert)) }
                    } catch let refusal as BudgetRefusal {
                        ticket.finish(.notCalled)
                        balancer.recordNeutral(name, throttled: false)
                        return await settlement.budgetRefused(job, refusal, estimate: estimate, provider: name)
                    }
                }
            }
            if let resumeTaskID {
                // Marks the call as under way, so that a crash while the task is polled counts against this job.
                try await store.recordSubmission(lease, taskID: resumeTaskID)
            }
            let attempt = attemptNumber
            progress(record, .submitted, provider: name)
            let staging = artifacts.stagingURL(job: id, attempt: attempt)
            hooks.beforeProviderCall(request, staging)
            hooks.checkpoint(.callBegun, id)
            // A resumed task is already persisted; a new one becomes so when the provider accepts it.
            let submittedFlag = SubmissionGate(persisted: resumeTaskID != nil)
            let started = clock.now
            let context = ProviderCallContext(
                destination: staging,
                clock: clock,
                attempt: attempt,
                idempotencyKey: "\(id):\(attempt)",
                logger: logger,
                batch: core.state.withLock { $0.batchOf.removeValue(forKey: id) },
                submitted: { taskID in
                    taskSeen.withLock { $0 = taskID }
                    ticket.arrived()
                    self.hooks.afterProviderAccepted(id)
                    try await self.store.recordSubmission(lease, taskID: taskID)
                    submittedFlag.markPersisted()
                    self.hooks.checkpoint(.submitted, id)
                    self.progress(record, .running, provider: name)
                },
                progress: { fraction in self.progress(record, .running, provider: name, fraction: fraction)
                },
                downloading: {
                    // The provider's task has ended, so its slot there is free: admission's is freed now, not after
                    // the download and the commit (a slot the provider gave back stayed taken here for as long as
                    // fetching and saving the file took). The window room the call took stays taken.
                    if ticket.ticket.usesSlot {
                        ticket.finish(.succeeded(latency: self.clock.now - started))
                        self.wakeup.signal()
                    }
                    self.progress(record, .downloading, provider: name)
                },
                throttled: { _ in
                    if ticket.ticket.usesSlot { self.admission.taskHeldBack(name) }
                    self.core.state.withLock { $0.providerActivity[name, default: ProviderActivity()].throttled += 1 }
                    self.progress(record, .running, provider: name, message: "\(name) is holding the task back")
                },
                answered: {
                    answeredAt.withLock { $0 = $0 ?? self.clock.now }
                    ticket.arrived()
                },
                billed: { billed.withLock { $0 = true } }
            )
            let output: ProviderOutput
            do {
                output = try await Self.shieldingSubmission(submittedFlag) {
                    sent.withLock { $0 = true }
                    if let resumeTaskID {
                        return try await provider.resume(
                            taskID: resumeTaskID,
                            request: request,
                            context: context
                        )
                    }
                    return try await provider.generate(request, context: context)
                }
            } catch {
                artifacts.discard(staging)
                throw error
            }
            let latency = clock.now - started
            hooks.checkpoint(.downloaded, id)
            let cost = output.reportedCost ?? estimate
            // Checked, hashed and flushed on a blocking-work thread: two fsyncs per file would otherwise stall a
            // cooperative thread, and with it the tasks that date other calls' answers.
            let local = try await BlockingIO.run { [artifacts] in
                try artifacts.commit(staging: staging, job: id, request: request, output: output, provider: name)
            }
            balancer.recordSuccess(name, latency: latency)
            // The slot frees now (if the download did not free it already); the task's time sizes the room kept
            // for slot holders.
            ticket.finish(.succeeded(latency: latency))
            core.state.withLock { state in
                state.providerActivity[name, default: ProviderActivity()].succeeded += 1
                state.latencies[name, default: []].append(latency)
                if state.latencies[name]!.count > 20_000 { state.latencies[name]!.removeFirst(10_000) }
            }
            // After the provider's slot is free: an upload never holds back the next call.
            let artifact = await publishShared(local, request: request, cost: cost, job: id)
            hooks.checkpoint(.committed, id)
            let outcome = JobOutcome(artifact: artifact, provider: name, cost: cost)
            let answeredAgo = answeredAt.value.map { clock.now - $0 } ?? .zero
            let written = try await shielded {
                if let admitting = self.store as? any AdmittingJobStore {
                    try await admitting.complete(lease, outcome: outcome, answeredAgo: answeredAgo)
                } else {
                    try await self.store.complete(lease, outcome: outcome)
                }
            }
            costs.charged(cost, provider: name, estimate: estimate, mediaDuration: output.duration)
            if configuration.caching.enabled { await cache.put(request.fingerprint, artifact) }
            progress(record, .succeeded, provider: name, fraction: 1)
            finish(written)
            return .success(artifact)
        } catch {
            // A synchronous answer the provider billed is charged, even though it was lost after it was made.
            let charged: Money? = billed.value && taskSeen.value == nil ? estimate : nil
            if let charged {
                costs.charged(charged, provider: name, estimate: estimate)
                core.state.withLock { state in
                    state.providerActivity[name, default: ProviderActivity()].billedAnswersLost += 1
                    state.providerActivity[name, default: ProviderActivity()].billedAnswersLostCost += charged
                }
            }
            return await settlement.settleFailure(
                error,
                job: job,
                ticket: ticket,
                attemptKey: "\(id):\(attemptNumber)",
                taskID: taskSeen.value,
                sent: sent.value,
                charged: charged
            )
        }
    }
}
