import Foundation
import Logging
import Synchronization

extension ParallelGenerator {
    /// The scheduler stage: takes jobs from the store into the admission backlog (each kind from its own queue,
    /// so that work late in a campaign is seen as early as work near its top), asks the admission state machine
    /// what to start now and where, and starts it; until draining is complete or the task is cancelled.
    ///
    /// A job waiting for admission holds its lease and nothing else: no job slot, no provider slot, no memory.
    func dispatchLoop(group: inout DiscardingTaskGroup) async {
        let lookahead = backlogLookahead
        while !Task.isCancelled {
            await maintainLeases()
            let (lifecycle, inFlight) = state.withLock { ($0.lifecycle, $0.inFlight.count) }
            if lifecycle != .running {
                await giveBackWaiting()
                if inFlight == 0 || state.withLock({ $0.inFlight.isEmpty }) { return }
                await wakeup.wait(until: nextHeartbeat(), clock: clock)
                continue
            }
            let blocked = admission.blockedUsers()
            var storeDeadline: Duration?
            for kind in GenerationKind.allCases {
                let want = lookahead - admission.waitingCount(of: kind)
                guard want > 0 else { continue }
                let leased: [LeasedJob]
                do {
                    leased = try await store.lease(
                        limit: want,
                        owner: workerID,
                        duration: configuration.leaseDuration,
                        excludingUsers: blocked.users,
                        kinds: [kind]
                    )
                } catch {
                    logger.debug("lease failed", metadata: [LoggingKeys.error: "\(error)"])
                    leased = []
                }
                for job in leased { await take(job, group: &group) }
                if leased.count < want, storeDeadline == nil {
                    storeDeadline = (try? await store.timeUntilNextDue()).flatMap { $0 }.map { clock.now + $0 }
                }
            }
            let round = admission.schedule(
                jobSlots: pool.available(.jobSlots),
                breakers: balancer.gates(at: clock.now)
            )
            start(round.grants, group: &group)
            // Look again when the admission state says room comes, a job comes due, a blocked user has room, or a
            // lease needs renewing; or sooner, when a call ends or a job comes back (the wake-up is signalled).
            let deadline = [round.wakeAt, storeDeadline, blocked.until, nextHeartbeat()].compactMap { $0 }.min()
            await wakeup.wait(until: deadline, clock: clock)
        }
        await giveBackWaiting()
    }

    /// How many jobs of each kind the scheduler keeps in view (``AdmissionState/lookahead(quotas:maxConcurrentJobs:)``).
    var backlogLookahead: Int {
        AdmissionState.lookahead(
            quotas: providers.values.map(\.descriptor.quota),
            maxConcurrentJobs: configuration.resources.maxConcurrentJobs
        )
    }

    /// Takes a leased job into the backlog: a cache hit is served at once; a job no provider can take is
    /// dead-lettered; the rest wait for admission.
    private func take(_ job: LeasedJob, group: inout DiscardingTaskGroup) async {
        let record = job.record
        let request = record.request
        let now = clock.now
        state.withLock { $0.inFlight[record.id] = InFlight(lease: job.lease, renewedAt: now) }
        let resumes = record.recoveryPoint == .submitted && record.providerTaskID != nil
        let cutOff = record.recoveryPoint == .cutOff
        var names: [String]
        if resumes || cutOff {
            // A submitted task resumes polling, and a cut-off call is made again under its key, at the provider
            // that has it: any other would bill it again.
            guard let previous = record.provider, providers[previous] != nil else {
                group.addTask {
                    _ = await self.deadLetter(
                        job,
                        GenerationError(
                            .needsReconciliation,
                            resumes
                                ? "task \(record.providerTaskID ?? "") is at \(record.provider ?? "its provider"), which is no longer configured"
                                : "the call to \(record.provider ?? "its provider") was cut off before its task id was recorded, and that provider is no longer configured",
                            provider: record.provider
                        )
                    )
                    self.state.withLock { _ = $0.inFlight.removeValue(forKey: record.id) }
                }
                return
            }
            names = [previous]
        } else {
            if configuration.caching.enabled, !request.fingerprint.isEmpty, await cache.get(request.fingerprint) != nil {
                // Served without a provider: no admission needed.
                group.addTask { await self.processJob(job, ticket: nil) }
                return
            }
            let capable = (request.provider.map { [$0] } ?? balancer.providerNames).filter {
                providers[$0]?.descriptor.capabilities.refusal(for: request) == nil
            }
            guard !capable.isEmpty else {
                let reason = balancer.refusal(for: request) ?? "no capable provider"
                group.addTask {
                    _ = await self.deadLetter(job, GenerationError(.noCapableProvider, reason))
                    self.state.withLock { _ = $0.inFlight.removeValue(forKey: record.id) }
                }
                return
            }
            // Providers that failed this job are avoided while another can serve it; the cheapest comes first.
            let preferred = capable.filter { !record.failedProviders.contains($0) }
            names = (preferred.isEmpty ? capable : preferred).enumerated().sorted { a, b in
                let (pa, pb) = (estimate(request, a.element), estimate(request, b.element))
                return pa == pb ? a.offset < b.offset : pa < pb
            }.map(\.element)
        }
        state.withLock { $0.waiting[record.id] = job }
        admission.enqueue(
            AdmissionRequest(
                job: record.id,
                sequence: record.sequence,
                priority: request.priority,
                user: request.user,
                project: request.project,
                kind: request.kind,
                providers: names,
                submits: !resumes
            )
        )
    }

    private func estimate(_ request: ValidatedRequest, _ provider: String) -> Money {
        providers[provider]?.descriptor.pricing.estimate(request) ?? .zero
    }

    /// Starts the jobs a scheduling round admitted.
    private func start(_ grants: [AdmissionTicket], group: inout DiscardingTaskGroup) {
        guard !grants.isEmpty else { return }
        let now = clock.now
        let jobs = state.withLock { state in
            grants.map { ticket -> LeasedJob? in
                guard let job = state.waiting.removeValue(forKey: ticket.job) else { return nil }
                state.running += 1
                return job
            }
        }
        let formed = batcher.makeBatches(
            zip(grants, jobs).compactMap { ticket, job in
                job.map { BatchCandidate(jobID: $0.record.id, request: $0.record.request, estimatedCost: estimate($0.record.request, ticket.provider)) }
            }
        )
        state.withLock { state in
            state.batcher.batchesFormed += formed.count
            state.batcher.jobsBatched += formed.reduce(0) { $0 + $1.members.count }
            state.batcher.duplicatesCollapsed += formed.reduce(0) { $0 + $1.duplicates.count }
            state.batcher.largestBatch = max(state.batcher.largestBatch, formed.map(\.members.count).max() ?? 0)
        }
        for (ticket, job) in zip(grants, jobs) {
            let held = HeldTicket(ticket, controller: admission)
            guard let job else {
                // The job left while it waited (its lease was lost): the admission goes back unused.
                held.finish(.notCalled)
                continue
            }
            balancer.recordCall(ticket.provider, at: now)
            group.addTask {
                await self.processJob(job, ticket: held)
                self.state.withLock { $0.running -= 1 }
            }
        }
    }

    /// Gives back the leases of the jobs still waiting for admission (a stop).
    private func giveBackWaiting() async {
        let waiting = state.withLock { state -> [LeasedJob] in
            defer { state.waiting.removeAll() }
            return Array(state.waiting.values)
        }
        for job in waiting { admission.remove(job.record.id) }
        await giveBack(waiting)
    }

    private func giveBack(_ jobs: [LeasedJob]) async {
        for job in jobs {
            try? await shielded { try await self.store.release(job.lease) }
            state.withLock { _ = $0.inFlight.removeValue(forKey: job.record.id) }
        }
    }

    /// Heartbeats every lease in flight that is a third of the way to expiry, and rescues expired leases,
    /// for stores whose jobs outlive this process.
    private func maintainLeases() async {
        guard store.outlivesProcess else { return }
        let now = clock.now
        let leaseDuration = configuration.leaseDuration
        // Renew every lease a third of its duration after it was last renewed (by this process's clock).
        let due = state.withLock { state in
            state.inFlight.values.filter { now - $0.renewedAt >= leaseDuration / 3 }.map(\.lease)
        }
        for lease in due {
            if let renewed = try? await store.heartbeat(lease, duration: leaseDuration) {
                state.withLock { state in
                    if state.inFlight[lease.jobID] != nil {
                        state.inFlight[lease.jobID] = InFlight(lease: renewed, renewedAt: now)
                    }
                }
            }
        }
        let rescueDue = state.withLock { state -> Bool in
            guard now - state.lastRescue >= leaseDuration / 2 else { return false }
            state.lastRescue = now
            return true
        }
        if rescueDue, let rescued = try? await store.rescueExpiredLeases(), rescued > 0 {
            logger.info("rescued expired leases", metadata: [LoggingKeys.count: "\(rescued)"])
        }
    }

    private func nextHeartbeat() -> Duration? {
        guard store.outlivesProcess else { return nil }
        let leaseDuration = configuration.leaseDuration
        return state.withLock { state in
            state.inFlight.values.map(\.renewedAt).min().map { $0 + leaseDuration / 3 }
        }
    }

    // MARK: - One job

    /// The execution stage for one job: a job slot, then the job, then its ticket back (however it ended).
    private func processJob(_ job: LeasedJob, ticket: HeldTicket?) async {
        let id = job.record.id
        defer {
            ticket?.finish(.notCalled)
            state.withLock { _ = $0.inFlight.removeValue(forKey: id) }
            wakeup.signal()
        }
        let slot: ResourceLease
        do {
            slot = try await pool.acquire(
                ResourceRequest(amounts: [.jobSlots: 1], priority: job.record.request.priority)
            )
        } catch {
            try? await shielded { try await self.store.release(job.lease) }
            return
        }
        defer { pool.release(slot) }
        do {
            try await runJob(job, ticket: ticket)
        } catch let error as StoreError where error.code == .leaseLost {
            logger.debug("lease lost", metadata: [LoggingKeys.jobID: "\(id)"])
        } catch {
            if Task.isCancelled || error is CancellationError {
                try? await shielded { try await self.store.release(job.lease) }
            } else {
                logger.info(
                    "job processing failed",
                    metadata: [LoggingKeys.jobID: "\(id)", LoggingKeys.error: "\(error)"]
                )
                try? await putBack(job, error: GenerationError(.transient, "internal error: \(error)"))
            }
        }
    }

    private func runJob(_ job: LeasedJob, ticket: HeldTicket?) async throws {
        let record = job.record
        let request = record.request
        let id = record.id
        // A job rescued after its provider accepted the task resumes polling; it never submits again.
        // So does a call cut off at a provider that de-duplicates by key: it is made again there, under the same
        // key, and never served from elsewhere (the provider may have billed it).
        if record.recoveryPoint == .submitted && record.providerTaskID != nil || record.recoveryPoint == .cutOff {
            guard let ticket else { return try await putBack(job) }
            _ = await lead(job, ticket: ticket)
            return
        }
        if configuration.caching.enabled, let cached = await cache.get(request.fingerprint) {
            ticket?.finish(.notCalled)
            try await completeWithShared(cached, job: job, servedFromCache: true)
            progress(record, .servedFromCache, provider: cached.provider)
            await finish(id)
            return
        }
        // An identical request is at work: this one will not call a provider, so its admission goes back now.
        if flights.isLeading(request.fingerprint) { ticket?.finish(.notCalled) }
        switch await flights.join(request.fingerprint) {
        case .leader:
            let outcome: FlightOutcome
            if let ticket, !ticket.isFinished {
                outcome = await lead(job, ticket: ticket)
            } else {
                // It gave its admission back to follow a leader that has finished since: it queues again.
                try? await putBack(job, after: .zero)
                outcome = .retryLater
            }
            flights.finish(request.fingerprint, with: outcome)
        case .follower(.success(let shared)):
            try await completeWithShared(shared, job: job, servedFromCache: false)
            state.withLock { $0.deduplicated += 1 }
            progress(record, .succeeded, provider: shared.provider, message: "de-duplicated")
            await finish(id)
        case .follower(.terminal(let error)):
            try await shielded { try await self.store.deadLetter(job.lease, error: error) }
            progress(record, .deadLettered, message: error.description)
            await finish(id)
        case .follower(.retryLater), .follower(nil):
            // The identical request in flight did not finish: look again shortly (cache, or lead ourselves).
            try await putBack(job)
            progress(record, .queued, message: "waiting for an identical request")
        }
    }

    /// Completes a job with another request's artifact (a cache hit or an identical request in flight): its
    /// own copy of the file, at no cost.
    private func completeWithShared(_ shared: Artifact, job: LeasedJob, servedFromCache: Bool) async throws {
        let artifact = try artifacts.materialize(shared, job: job.record.id, request: job.record.request)
        let outcome = JobOutcome(
            artifact: artifact,
            provider: shared.provider,
            cost: .zero,
            servedFromCache: servedFromCache,
            deduplicated: !servedFromCache
        )
        try await shielded { try await self.store.complete(job.lease, outcome: outcome) }
    }

    /// Makes the provider call the job was admitted for and records its outcome. Never throws: every failure
    /// ends in a store transition (retry, snooze or dead letter), and the ticket's outcome goes back to admission.
    private func lead(_ job: LeasedJob, ticket: HeldTicket) async -> FlightOutcome {
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
                // Reserve right before the call: budgets see what this call is now expected to cost, so only the
                // calls already under way can overrun a budget.
                if let held = await reserveBudget(job, estimate: estimate, provider: name) {
                    ticket.finish(.notCalled)
                    balancer.recordNeutral(name, throttled: false)
                    return held
                }
                try await store.beginAttempt(
                    lease,
                    provider: name,
                    reserving: costs.expectedCost(estimate, provider: name),
                    idempotentSubmission: descriptor.idempotentSubmission
                )
            }
            let attempt = attemptNumber
            progress(record, .submitted, provider: name)
            let staging = artifacts.stagingURL(job: id, attempt: attempt)
            // A resumed task is already persisted; a new one becomes so when the provider accepts it.
            let submittedFlag = SubmissionGate(persisted: resumeTaskID != nil)
            let context = ProviderCallContext(
                destination: staging,
                clock: clock,
                attempt: attempt,
                idempotencyKey: "\(id):\(attempt)",
                logger: logger,
                submitted: { taskID in
                    taskSeen.withLock { $0 = taskID }
                    ticket.arrived()
                    self.hooks.afterProviderAccepted(id)
                    try await self.store.recordSubmission(lease, taskID: taskID)
                    submittedFlag.markPersisted()
                    self.progress(record, .running, provider: name)
                },
                progress: { fraction in self.progress(record, .running, provider: name, fraction: fraction)
                },
                downloading: { self.progress(record, .downloading, provider: name) },
                throttled: { _ in
                    if ticket.ticket.usesSlot { self.admission.taskHeldBack(name) }
                    self.state.withLock { $0.providerActivity[name, default: ProviderActivity()].throttled += 1 }
                    self.progress(record, .running, provider: name, message: "\(name) is holding the task back")
                },
                answered: { ticket.arrived() }
            )
            let started = clock.now
            let output: ProviderOutput
            do {
                output = try await Self.shieldingSubmission(submittedFlag) {
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
            let artifact = try artifacts.commit(
                staging: staging,
                job: id,
                request: request,
                output: output,
                provider: name
            )
            let cost = output.reportedCost ?? estimate
            balancer.recordSuccess(name, latency: latency)
            // The slot frees now; the task's time sizes the room kept for slot holders.
            ticket.finish(.succeeded(latency: latency))
            state.withLock { state in
                state.providerActivity[name, default: ProviderActivity()].succeeded += 1
                state.latencies[name, default: []].append(latency)
                if state.latencies[name]!.count > 20_000 { state.latencies[name]!.removeFirst(10_000) }
            }
            try await shielded {
                try await self.store.complete(
                    lease,
                    outcome: JobOutcome(artifact: artifact, provider: name, cost: cost)
                )
            }
            for alert in costs.settle(id, actual: cost, mediaDuration: output.duration) {
                publish(.budgetAlert(alert))
            }
            if configuration.caching.enabled { await cache.put(request.fingerprint, artifact) }
            progress(record, .succeeded, provider: name, fraction: 1)
            await finish(id)
            return .success(artifact)
        } catch {
            costs.release(id)
            return await handleFailure(
                error,
                job: job,
                ticket: ticket,
                attemptKey: "\(id):\(attemptNumber)",
                taskID: taskSeen.value
            )
        }
    }

    private func handleFailure(
        _ error: any Error,
        job: LeasedJob,
        ticket: HeldTicket,
        attemptKey: String? = nil,
        taskID: String? = nil
    ) async
        -> FlightOutcome
    {
        let record = job.record
        let lease = job.lease
        let now = clock.now
        let name = ticket.provider
        if error is CancellationError || Task.isCancelled {
            ticket.finish(.failed)
            balancer.recordNeutral(name, throttled: false)
            try? await shielded { try await self.store.release(lease) }
            return .retryLater
        }
        if let storeError = error as? StoreError {
            ticket.finish(.failed)
            balancer.recordNeutral(name, throttled: false)
            logger.debug(
                "store refused a transition",
                metadata: [LoggingKeys.jobID: "\(record.id)", LoggingKeys.error: "\(storeError)"]
            )
            return .retryLater
        }
        var classified = (error as? GenerationError) ?? GenerationError(.transient, "\(error)")
        if classified.provider == nil { classified.provider = name }
        // Each failed attempt is its own record: its key, and the task it used, if the provider accepted one.
        classified.attemptKey = classified.attemptKey ?? attemptKey
        classified.taskID = classified.taskID ?? taskID
        let failure = classified
        switch failure.code {
        case .rateLimited:
            ticket.finish(.throttled(retryAfter: failure.retryAfter))
            balancer.recordNeutral(name, throttled: true)
            state.withLock { $0.providerActivity[name, default: ProviderActivity()].throttled += 1 }
        case .transient, .artifactInvalid, .taskFailed:
            balancer.recordFailure(name, at: now)
            ticket.finish(failure.providerCode == "timeout" ? .timedOut : .failed)
            state.withLock { $0.providerActivity[name, default: ProviderActivity()].failedCalls += 1 }
        default:
            ticket.finish(.failed)
            balancer.recordNeutral(name, throttled: false)
            state.withLock { $0.providerActivity[name, default: ProviderActivity()].failedCalls += 1 }
        }
        let attempts = record.attempts + 1
        let failedTasks =
            record.errors.filter { $0.code == .taskFailed }.count + (failure.code == .taskFailed ? 1 : 0)
        switch retryPolicy.disposition(
            for: failure,
            attempts: attempts,
            snoozes: record.snoozes,
            failedTasks: failedTasks,
            unit: random.unit()
        )
        {
        case .snooze(let wait):
            try? await shielded {
                try await self.store.retry(
                    lease,
                    error: failure,
                    after: wait,
                    spendAttempt: false,
                    failedProvider: nil
                )
            }
            progress(
                record,
                .waitingForRateLimit,
                provider: name,
                message: "\(name) throttled: retrying in \(wait.seconds.formatted1) s"
            )
            return .retryLater
        case .retry(let delay):
            let failover = balancer.hasAlternative(
                for: record.request,
                excluding: Set(record.failedProviders + [name]),
                at: now
            )
            try? await shielded {
                try await self.store.retry(
                    lease,
                    error: failure,
                    after: failover ? .zero : delay,
                    spendAttempt: true,
                    failedProvider: name
                )
            }
            state.withLock { $0.providerActivity[name, default: ProviderActivity()].retries += 1 }
            progress(record, .retrying, provider: name, message: failure.description)
            return .retryLater
        case .deadLetter:
            state.withLock { $0.providerActivity[name, default: ProviderActivity()].deadLettered += 1 }
            if failure.code.isRetryable {
                let reason =
                    failure.code == .taskFailed && attempts < configuration.retry.maxAttempts
                    ? "gave up after \(failedTasks) tasks that failed for a reason \(name) did not name (retry.failedTasks is \(configuration.retry.failedTasks))"
                    : "gave up after \(attempts) attempts"
                // The last attempt's own record (its key, task and cost) stays in the history, under this code.
                var exhausted = GenerationError(
                    .attemptsExhausted,
                    "\(reason): \(failure.message)",
                    provider: name,
                    providerCode: failure.providerCode
                )
                exhausted.attemptKey = failure.attemptKey
                exhausted.taskID = failure.taskID
                exhausted.charged = failure.charged
                _ = await deadLetter(job, exhausted)
                return .retryLater
            }
            return await deadLetter(job, failure)
        }
    }

    /// Reserves what a call to `provider` is expected to cost (its estimate, scaled by the provider's overruns so
    /// far) in the job's budgets. Returns `nil` when it fits; otherwise holds the job back for a while (when
    /// reservations in flight may free the budget) or dead-letters it as `budget_exceeded`, and returns that.
    private func reserveBudget(_ job: LeasedJob, estimate: Money, provider: String) async -> FlightOutcome? {
        let request = job.record.request
        let (reservation, alerts) = costs.reserve(
            estimate,
            for: job.record.id,
            project: request.project,
            campaign: request.campaign,
            provider: provider
        )
        for alert in alerts { publish(.budgetAlert(alert)) }
        guard case .held(let scope, let limit, let committed, let canFree) = reservation else { return nil }
        let expected = costs.expectedCost(estimate, provider: provider)
        let message =
            "\(scope) budget of \(limit) would be exceeded: \(committed) committed, this job needs \(expected)"
            + (expected > estimate ? " (\(provider) bills above its estimate of \(estimate))" : "")
        guard canFree else { return await deadLetter(job, GenerationError(.budgetExceeded, message)) }
        progress(job.record, .heldByBudget, message: message)
        try? await putBack(job)
        return .retryLater
    }

    /// Puts a job back in the queue without spending an attempt, to be looked at again after `delay` (by default
    /// the retry policy's first step), shielded from cancellation like every transition.
    private func putBack(_ job: LeasedJob, error: GenerationError? = nil, after delay: Duration? = nil) async throws {
        try await shielded {
            try await self.store.retry(
                job.lease,
                error: error,
                after: delay ?? self.retryPolicy.ceiling(afterAttempt: 1),
                spendAttempt: false,
                failedProvider: nil
            )
        }
    }

    private func deadLetter(_ job: LeasedJob, _ error: GenerationError) async -> FlightOutcome {
        try? await shielded { try await self.store.deadLetter(job.lease, error: error) }
        progress(job.record, .deadLettered, provider: error.provider, message: error.description)
        await finish(job.record.id)
        return .terminal(error)
    }

    private func finish(_ id: JobID) async {
        guard let record = try? await store.job(id), record.state.isFinal else { return }
        finishWaiters(makeResult(record))
    }

    func progress(
        _ record: JobRecord,
        _ status: ProgressStatus,
        provider: String? = nil,
        fraction: Double = 0,
        message: String? = nil
    ) {
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

    /// Whether a call takes one of the provider's slots in the resource pool: its concurrency quota counts
    /// this kind, or it has no concurrency quota and the slots are only the adaptive (AIMD) limit.
    static func usesProviderSlot(_ descriptor: ProviderDescriptor, _ kind: GenerationKind) -> Bool {
        descriptor.quota.holdsSlot(kind) || descriptor.quota.concurrentTasks == nil
    }

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

extension ParallelGenerator {
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

extension ParallelGenerator {
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

/// Runs an action at most once, however many times it is fired.
final class OnceFlag: Sendable {
    private let action: Locked<(@Sendable () -> Void)?>
    init(_ action: @escaping @Sendable () -> Void) { self.action = Locked(action) }
    func fire() { action.withLock { $0.take() }?() }
}

/// Metadata keys of Pargen's log messages.
enum LoggingKeys {
    static let jobID = "pargen.job.id"
    static let error = "pargen.error"
    static let count = "pargen.count"
}
