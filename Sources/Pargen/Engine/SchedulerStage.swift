import Foundation
import Logging
import Synchronization

/// The scheduler stage: takes jobs from the store into the admission backlog, asks the admission state machine
/// (``AdmissionState``) what to start and where, starts it, and keeps the leases of what this process holds.
struct SchedulerStage: EnginePart {
    let core: EngineCore
    let execution: ExecutionStage
    let settlement: SettlementStage
    let providers: [String: any GenerationProvider]
    let admission: AdmissionController
    let pool: ResourcePool
    let balancer: LoadBalancer
    let batcher: Batcher
    let cache: any GenerationCache
    let sharedCache: (any SharedArtifactCache)?

    /// The scheduler stage: takes jobs from the store into the admission backlog (each kind from its own queue,
    /// so that work late in a campaign is seen as early as work near its top), asks the admission state machine
    /// what to start now and where, and starts it; until draining is complete or the task is cancelled.
    ///
    /// A job waiting for admission holds no job slot, no provider slot and no memory; on a ``ClaimingJobStore``
    /// (SQLite, PostgreSQL) not even a lease: it is looked at, and taken when its call is admitted.
    func dispatchLoop(group: inout DiscardingTaskGroup) async {
        let lookahead = backlogLookahead
        // Per kind: when its queue last ran dry (the store generation then) and until when to leave it.
        var dry: [GenerationKind: (generation: Int, until: Duration)] = [:]
        while !Task.isCancelled {
            await maintainLeases()
            let (lifecycle, inFlight) = core.state.withLock { ($0.lifecycle, $0.inFlight.count) }
            if lifecycle != .running {
                await giveBackWaiting()
                if inFlight == 0 || core.state.withLock({ $0.inFlight.isEmpty }) { return }
                await wakeup.wait(until: nextHeartbeat(), clock: clock)
                continue
            }
            if let next = nextSuspect() { await take(next, group: &group) }
            let blocked = blockedUsers()
            var storeDeadline: Duration?
            let generation = core.state.withLock { $0.storeGeneration }
            for kind in GenerationKind.allCases {
                let want = lookahead - admission.waitingCount(of: kind)
                guard want > 0 else { continue }
                // A kind whose queue ran dry is not asked again until a job of this process goes back to the
                // store or is submitted, a job comes due, a held-back user has room, or a second has passed
                // (another process may add work): asking on every wake-up would cost a query per finished job.
                if let dry = dry[kind], dry.generation == generation, clock.now < dry.until {
                    storeDeadline = min(storeDeadline ?? dry.until, dry.until)
                    continue
                }
                let leased: [LeasedJob]
                do {
                    if let claiming = store as? any ClaimingJobStore {
                        // Look without taking; each job is claimed when its call is admitted.
                        let known = core.state.withLock { Set($0.waiting.keys).union($0.inFlight.keys).union($0.lookedAt) }
                        let projects = core.state.withLock { Set($0.sharedProjectBlocks.keys) }
                        leased = try await claiming.peek(
                            limit: want,
                            excludingUsers: blocked.users,
                            excludingProjects: projects,
                            excludingJobs: known,
                            kinds: [kind]
                        ).map { LeasedJob(record: $0, lease: JobLease(jobID: $0.id, token: "", expiresAt: .zero)) }
                    } else {
                        leased = try await store.lease(
                            limit: want,
                            owner: workerID,
                            duration: configuration.leaseDuration,
                            excludingUsers: blocked.users,
                            kinds: [kind]
                        )
                    }
                } catch {
                    logger.debug("lease failed", metadata: [LoggingKeys.error: "\(error)"])
                    if let local = LocalResourceError.classify(error, path: artifacts.root, operation: "lease") {
                        halt(because: local)
                    }
                    leased = []
                }
                for job in leased { await take(job, group: &group) }
                if leased.count < want {
                    let now = clock.now
                    // A job due already but not handed over is one this process left out (its user or project is
                    // held back, or it is in view already): asking again before something changes would spin.
                    let due = (try? await store.timeUntilNextDue()).flatMap { $0 }.flatMap { $0 > .zero ? now + $0 : nil }
                    let until = [due, blocked.until, now + .seconds(1)].compactMap { $0 }.min()!
                    dry[kind] = (generation, until)
                    storeDeadline = min(storeDeadline ?? until, until)
                } else {
                    dry[kind] = nil
                }
            }
            let round = admission.schedule(
                jobSlots: pool.available(.jobSlots),
                breakers: balancer.gates(at: clock.now)
            )
            if logger.logLevel <= .trace {
                for (job, limit) in round.heldBack {
                    logger.trace(
                        "waiting for admission",
                        metadata: [LoggingKeys.jobID: "\(job)", LoggingKeys.limit: "\(limit.rawValue)"]
                    )
                }
            }
            if logger.logLevel <= .debug {
                for ticket in round.grants {
                    var metadata: Logger.Metadata = [
                        LoggingKeys.jobID: "\(ticket.job)", LoggingKeys.provider: "\(ticket.provider)",
                    ]
                    if let wait = round.waits[ticket.job] {
                        metadata[LoggingKeys.limit] = "\(wait.limit.rawValue)"
                        metadata[LoggingKeys.waitedMs] = "\(wait.waited.milliseconds)"
                    }
                    logger.debug("admitted", metadata: metadata)
                }
            }
            if Task.isCancelled || core.state.withLock({ $0.lifecycle != .running }) {
                // A stop came while this round was decided: nothing new starts. The admissions go back unused, and
                // the jobs are given back with the rest of the backlog.
                for ticket in round.grants { HeldTicket(ticket, controller: admission, onThrottled: nil).finish(.notCalled) }
                continue
            }
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
    func take(_ job: LeasedJob, group: inout DiscardingTaskGroup) async {
        var job = job
        // In view until it joins the backlog or is claimed (awaitAdmission, claimUnadmitted).
        if job.isProvisional { core.state.withLock { _ = $0.lookedAt.insert(job.record.id) } }
        if job.isProvisional, (job.record.crashes ?? 0) > 0, !(store is any AdmittingJobStore) {
            // A job whose call has brought a process down runs alone, one such suspect at a time: it is taken now,
            // so that it is known as the suspect (or parked behind the one running) while it waits.
            guard let claimed = await claimUnadmitted(job) else { return }
            job = claimed
        }
        let record = job.record
        let request = record.request
        let now = clock.now
        let parked = core.state.withLock { state -> Bool in
            // A job only looked at (a shared store) is not held yet: nothing to renew, nothing to park.
            guard !job.isProvisional else { return false }
            state.inFlight[record.id] = InFlight(lease: job.lease, renewedAt: now)
            guard (record.crashes ?? 0) > 0 else { return false }
            if let current = state.suspect, current != record.id, state.inFlight[current] != nil {
                state.parkedSuspects.append(job)
                return true
            }
            state.suspect = record.id
            return false
        }
        if parked { return }
        let resumes = record.recoveryPoint == .submitted && record.providerTaskID != nil
        let cutOff = record.recoveryPoint == .cutOff
        var names: [String]
        if resumes || cutOff {
            // A submitted task resumes polling, and a cut-off call is made again under its key, at the provider
            // that has it: any other would bill it again.
            guard let previous = record.provider, providers[previous] != nil else {
                group.addTask {
                    guard let job = await self.claimUnadmitted(job) else { return }
                    _ = await self.settlement.deadLetter(
                        job,
                        GenerationError(
                            .needsReconciliation,
                            resumes
                                ? "task \(record.providerTaskID ?? "") is at \(record.provider ?? "its provider"), which is no longer configured"
                                : "the call to \(record.provider ?? "its provider") was cut off before its task id was recorded, and that provider is no longer configured",
                            provider: record.provider
                        )
                    )
                    self.core.state.withLock { _ = $0.inFlight.removeValue(forKey: record.id) }
                }
                return
            }
            names = [previous]
        } else {
            if configuration.caching.enabled, !request.fingerprint.isEmpty, await cache.get(request.fingerprint) != nil {
                // Served without a provider: no admission needed.
                group.addTask {
                    guard let job = await self.claimUnadmitted(job) else { return }
                    await self.execution.processJob(job, ticket: nil)
                }
                return
            }
            // Providers that failed this job are avoided while another can serve it; the cheapest comes first.
            names = AdmissionRequest.candidates(
                for: request,
                among: balancer.providerNames.compactMap { providers[$0]?.descriptor },
                avoiding: record.failedProviders
            )
            guard !names.isEmpty else {
                let reason = balancer.refusal(for: request) ?? "no capable provider"
                group.addTask {
                    guard let job = await self.claimUnadmitted(job) else { return }
                    _ = await self.settlement.deadLetter(job, GenerationError(.noCapableProvider, reason))
                    self.core.state.withLock { _ = $0.inFlight.removeValue(forKey: record.id) }
                }
                return
            }
        }
        if let sharedCache, !resumes, !cutOff, !request.fingerprint.isEmpty, !execution.sharedTiersGaveUp(request.fingerprint) {
            // The shared tiers answer over the network: each lookup runs on its own, and a miss joins the backlog
            // when it is known. A lookup no tier answered (each is down or slow past its short time-out) is asked
            // again a moment later, until the tiers have failed ``ParallelGenerator/sharedTierTries`` times: the line may be there.
            let candidates = names
            group.addTask {
                switch await sharedCache.lookup(request.fingerprint) {
                case .found(let found):
                    guard let job = await self.claimUnadmitted(job) else { return }
                    await self.execution.processJob(job, ticket: nil, shared: found)
                    return
                case .unanswered:
                    self.execution.countSharedTierFailure(request.fingerprint)
                    if !self.execution.sharedTiersGaveUp(request.fingerprint) {
                        guard let job = await self.claimUnadmitted(job) else { return }
                        try? await self.settlement.putBack(job, after: ExecutionStage.sharedTierPause)
                        self.core.state.withLock { _ = $0.inFlight.removeValue(forKey: record.id) }
                        self.wakeup.signal()
                        return
                    }
                case .absent:
                    break
                }
                self.awaitAdmission(job, providers: candidates, submits: true)
                self.wakeup.signal()
            }
            return
        }
        awaitAdmission(job, providers: names, submits: !resumes)
    }

    /// Puts a job in the admission backlog, where it holds nothing (on the memory store, its lease).
    func awaitAdmission(_ job: LeasedJob, providers names: [String], submits: Bool) {
        let record = job.record
        let request = record.request
        core.state.withLock { state in
            state.waiting[record.id] = job
            state.lookedAt.remove(record.id)
        }
        admission.enqueue(
            AdmissionRequest(
                job: record.id,
                sequence: record.sequence,
                priority: request.priority,
                user: request.user,
                project: request.project,
                kind: request.kind,
                providers: names,
                submits: submits
            )
        )
    }

    /// Starts the jobs a scheduling round admitted.
    func start(_ grants: [AdmissionTicket], group: inout DiscardingTaskGroup) {
        guard !grants.isEmpty else { return }
        let now = clock.now
        let jobs = core.state.withLock { state in
            grants.map { ticket -> LeasedJob? in
                guard let job = state.waiting.removeValue(forKey: ticket.job) else { return nil }
                state.running += 1
                // Still in view until its claim answers (the claim puts it in flight): the next look at the queue,
                // which can come first, must not bring it again.
                if job.isProvisional { state.lookedAt.insert(ticket.job) }
                return job
            }
        }
        // Batches are formed per provider: the members of one go to the same provider at once, and each call
        // carries its batch (``BatchMembership``) so that an adapter can make them one request.
        var byProvider: [String: [BatchCandidate]] = [:]
        for (ticket, job) in zip(grants, jobs) {
            guard let job else { continue }
            byProvider[ticket.provider, default: []].append(
                BatchCandidate(
                    jobID: job.record.id,
                    request: job.record.request,
                    estimatedCost: execution.estimate(job.record.request, ticket.provider)
                )
            )
        }
        let formed = byProvider.keys.sorted().flatMap { batcher.makeBatches(byProvider[$0]!) }
        core.state.withLock { state in
            let first = state.batcher.batchesFormed + 1
            for (index, batch) in formed.enumerated() where batch.members.count > 1 {
                let membership = BatchMembership(id: "batch-\(first + index)", size: batch.members.count)
                for member in batch.members { state.batchOf[member.jobID] = membership }
            }
            state.batcher.batchesFormed += formed.count
            state.batcher.jobsBatched += formed.reduce(0) { $0 + $1.members.count }
            state.batcher.duplicatesCollapsed += formed.reduce(0) { $0 + $1.duplicates.count }
            state.batcher.largestBatch = max(state.batcher.largestBatch, formed.map(\.members.count).max() ?? 0)
        }
        var onThrottled: (@Sendable (String, Duration) -> Void)?
        if let admitting = store as? any AdmittingJobStore {
            onThrottled = { provider, wait in
                // Every worker holds back: the provider's cooldown lives in the shared store.
                Task { try? await admitting.coolDown(provider: provider, for: wait) }
            }
        }
        let admitting = store as? any AdmittingJobStore
        // On a shared store, the round's jobs that were only looked at are claimed together, in one transaction.
        var claims: [Granted] = []
        for (ticket, job) in zip(grants, jobs) {
            let held = HeldTicket(ticket, controller: admission, onThrottled: onThrottled)
            guard let job else {
                // The job left while it waited (its lease was lost): the admission goes back unused.
                held.finish(.notCalled)
                continue
            }
            balancer.recordCall(ticket.provider, at: now)
            // The job slot is taken with the grant, so the next round counts it at once: a round that read the
            // free slots before this job's claim answered would admit (and claim) more jobs than there are slots,
            // and they would sit claimed, out of other workers' reach, waiting for a slot here. (Another path, a
            // cache hit, can take a slot between the round and now; this job then waits for one in `processJob`.)
            let granted = Granted(job: job, ticket: ticket, held: held, slot: pool.tryAcquire(ExecutionStage.jobSlot(for: job)))
            if admitting != nil, job.isProvisional {
                claims.append(granted)
                continue
            }
            group.addTask {
                await self.runGranted(granted) {
                    // A store of this process's alone: the local admission decided; the job is taken now, unless an
                    // immediate stop came first (it then stays in the store, untaken).
                    guard !Task.isCancelled, let claimed = await self.claimUnadmitted(job) else {
                        held.finish(.notCalled)
                        return nil
                    }
                    return claimed
                }
            }
        }
        guard let admitting, !claims.isEmpty else { return }
        let startsLane = core.state.withLock { state -> Bool in
            state.pendingClaims += claims.map {
                ($0, ClaimRequest(id: $0.job.record.id, call: sharedCall(for: $0.job, ticket: $0.ticket)))
            }
            guard !state.claiming else { return false }
            state.claiming = true
            return true
        }
        if startsLane { group.addTask { await self.claimPending(admitting) } }
    }

    /// Claims the admitted jobs of ``EngineState/pendingClaims`` in batches, one transaction at a time, until none
    /// is left; each claimed job then runs in a task of its own.
    ///
    /// One claim in flight per process: the jobs admitted while it is out go together in the next. Claims that
    /// each took the shared limits' row locks (every claim on a provider, a project or a user waits for the one
    /// before) queued behind each other in PostgreSQL, holding connections, in batches of one or two jobs.
    func claimPending(_ admitting: any AdmittingJobStore) async {
        await withDiscardingTaskGroup { jobs in
            while true {
                let batch = core.state.withLock { state -> [(granted: Granted, request: ClaimRequest)] in
                    let batch = state.pendingClaims
                    state.pendingClaims = []
                    if batch.isEmpty { state.claiming = false }
                    return batch
                }
                guard !batch.isEmpty else { return }
                var results: [Result<ClaimDecision, any Error>]?
                if !Task.isCancelled {
                    do {
                        let decisions = try await admitting.claim(
                            batch.map(\.request),
                            owner: workerID,
                            duration: configuration.leaseDuration
                        )
                        results = decisions.map { .success($0) }
                    } catch {
                        results = batch.map { _ in .failure(error) }
                    }
                }
                for (index, granted) in batch.map(\.granted).enumerated() {
                    let result = results?[index]
                    jobs.addTask {
                        await self.runGranted(granted) {
                            guard let result else {
                                granted.held.finish(.notCalled)
                                return nil
                            }
                            return self.settleClaim(result, job: granted.job, ticket: granted.ticket, held: granted.held)
                        }
                    }
                }
            }
        }
    }

    /// A job a scheduling round admitted, with its admission and the job slot taken with it.
    struct Granted: Sendable {
        var job: LeasedJob
        var ticket: AdmissionTicket
        var held: HeldTicket
        var slot: ResourceLease?
    }

    /// Runs one granted job: takes it from the store if it was only looked at (`claim` says how, `nil` if it
    /// was not taken), then processes it in its slot. A job claimed before an immediate stop is processed too, so
    /// that its lease goes back (the processing gives it back when it finds the stop).
    func runGranted(_ granted: Granted, claim: @Sendable () async -> LeasedJob?) async {
        var job = granted.job
        defer {
            // A member still in its batch here never called its provider (the call takes its membership): it
            // tells the batch, whose other members may be waiting for it.
            let left = core.state.withLock { state in
                state.running -= 1
                return state.batchOf.removeValue(forKey: granted.job.record.id)
            }
            left?.memberLeft()
        }
        if job.isProvisional {
            let claimed = await claim()
            core.state.withLock { _ = $0.lookedAt.remove(job.record.id) }
            guard let claimed else {
                // Its slot goes back, and the scheduler may fill it.
                if let slot = granted.slot {
                    pool.release(slot)
                    wakeup.signal()
                }
                return
            }
            job = claimed
        }
        await execution.processJob(job, ticket: granted.held, slot: granted.slot)
    }

    /// The next parked suspect, once the suspect running has left (finished, or gone back to the store).
    func nextSuspect() -> LeasedJob? {
        core.state.withLock { state in
            if let current = state.suspect, state.inFlight[current] == nil { state.suspect = nil }
            guard state.suspect == nil, !state.parkedSuspects.isEmpty else { return nil }
            return state.parkedSuspects.removeFirst()
        }
    }

    /// Gives back the leases of the jobs still waiting for admission, and of the parked suspects (a stop).
    func giveBackWaiting() async {
        let waiting = core.state.withLock { state -> [LeasedJob] in
            defer {
                state.waiting.removeAll()
                state.parkedSuspects.removeAll()
            }
            return Array(state.waiting.values) + state.parkedSuspects
        }
        for job in waiting { admission.remove(job.record.id) }
        await giveBack(waiting)
    }

    func giveBack(_ jobs: [LeasedJob]) async {
        for job in jobs {
            // A job only looked at was never taken.
            if job.isProvisional { continue }
            try? await shielded { try await self.store.release(job.lease) }
            storeChanged()
            core.state.withLock { _ = $0.inFlight.removeValue(forKey: job.record.id) }
        }
    }

    /// Heartbeats every lease in flight that is a third of the way to expiry, and rescues expired leases,
    /// for stores whose jobs outlive this process.
    func maintainLeases() async {
        guard store.outlivesProcess else { return }
        let now = clock.now
        let leaseDuration = configuration.leaseDuration
        // Renew every lease a third of its duration after it was last renewed (by this process's clock). A renewal
        // that fails is tried again a tenth of the lease later (at most a second): the lease may still be saved, and
        // asking at once again would spin the loop for as long as the store keeps failing.
        let due = core.state.withLock { state in
            state.inFlight.values.filter { $0.renewalDue(leaseDuration: leaseDuration).map { $0 <= now } ?? false }
                .map(\.lease)
        }
        for lease in due {
            do {
                let renewed = try await store.heartbeat(lease, duration: leaseDuration)
                core.state.withLock { state in
                    if state.inFlight[lease.jobID] != nil {
                        state.inFlight[lease.jobID] = InFlight(lease: renewed, renewedAt: now)
                    }
                }
            } catch let error as StoreError where error.code == .leaseLost {
                // Asking again cannot bring it back: the job is another run's now.
                logger.warning(
                    "lease lost while the job ran here; another run may take the job, and this run's result will not be recorded",
                    metadata: [LoggingKeys.jobID: "\(lease.jobID)"]
                )
                core.state.withLock { $0.inFlight[lease.jobID]?.lost = true }
            } catch {
                logger.debug(
                    "lease renewal failed",
                    metadata: [LoggingKeys.jobID: "\(lease.jobID)", LoggingKeys.error: "\(error)"]
                )
                core.state.withLock { state in
                    state.inFlight[lease.jobID]?.retryAt = now + min(leaseDuration / 10, .seconds(1))
                }
            }
        }
        let rescueDue = core.state.withLock { state -> Bool in
            guard now - state.lastRescue >= leaseDuration / 2 else { return false }
            state.lastRescue = now
            return true
        }
        if rescueDue, let rescued = try? await store.rescueExpiredLeases(maxCrashes: configuration.retry.maxCrashes), rescued > 0 {
            logger.info("rescued expired leases", metadata: [LoggingKeys.count: "\(rescued)"])
        }
    }

    func nextHeartbeat() -> Duration? {
        guard store.outlivesProcess else { return nil }
        let leaseDuration = configuration.leaseDuration
        return core.state.withLock { state in
            state.inFlight.values.compactMap { $0.renewalDue(leaseDuration: leaseDuration) }.min()
        }
    }

    // MARK: - Shared admission (a store that several workers share)

    /// Users held back: by this process's own limits, and by the shared store's (until their waits end).
    func blockedUsers() -> (users: Set<String>, until: Duration?) {
        let local = admission.blockedUsers()
        let now = clock.now
        return core.state.withLock { state in
            state.sharedBlocks = state.sharedBlocks.filter { $0.value > now }
            state.sharedProjectBlocks = state.sharedProjectBlocks.filter { $0.value > now }
            let until = [local.until, state.sharedBlocks.values.min(), state.sharedProjectBlocks.values.min()]
                .compactMap { $0 }.min()
            return (local.users.union(state.sharedBlocks.keys), until)
        }
    }

    /// The call a granted job would make, as the shared limits count it (`nil` if its provider is unknown).
    func sharedCall(for job: LeasedJob, ticket: AdmissionTicket) -> SharedCall? {
        guard let descriptor = providers[ticket.provider]?.descriptor else { return nil }
        let request = job.record.request
        return SharedCall(
            provider: ticket.provider,
            user: request.user,
            project: request.project,
            submits: ticket.submits,
            holdsSlot: descriptor.quota.holdsSlot(request.kind),
            quota: descriptor.quota,
            limits: configuration.rateLimits
        )
    }

    /// Acts on a shared store's answer to a claim: a claimed job goes in flight; a job gone or held back gives its
    /// admission back, and a wait holds back what the limit holds back (the provider, or the user's or project's
    /// other jobs here). `nil` unless claimed.
    func settleClaim(
        _ result: Result<ClaimDecision, any Error>,
        job: LeasedJob,
        ticket: AdmissionTicket,
        held: HeldTicket
    ) -> LeasedJob? {
        let request = job.record.request
        let decision: ClaimDecision
        switch result {
        case .success(let answer):
            decision = answer
        case .failure(let error):
            // The store is unreachable: the job stays where it is, and the scheduler looks again in a moment.
            logger.debug("claim failed", metadata: [LoggingKeys.jobID: "\(job.record.id)", LoggingKeys.error: "\(error)"])
            held.finish(.notCalled)
            core.state.withLock { $0.sharedBlocks[request.user] = clock.now + .seconds(1) }
            return nil
        }
        switch decision {
        case .claimed(let claimed):
            let now = clock.now
            core.state.withLock { $0.inFlight[claimed.record.id] = InFlight(lease: claimed.lease, renewedAt: now) }
            return claimed
        case .gone:
            held.finish(.notCalled)
            return nil
        case .wait(let wait, let limit):
            held.finish(.notCalled)
            let until = clock.now + wait
            if limit.isProviderWide {
                admission.holdBack(ticket.provider, until: until)
            } else {
                // The user's (or, for a bucket or burst, the project's) other jobs here would meet the same wait:
                // they leave the backlog (they were only looked at) and come back with a look once it is over.
                let dropped = core.state.withLock { state -> [JobID] in
                    let project = limit.isProjectWide
                    if project {
                        state.sharedProjectBlocks[request.project] = max(state.sharedProjectBlocks[request.project] ?? until, until)
                    } else {
                        state.sharedBlocks[request.user] = max(state.sharedBlocks[request.user] ?? until, until)
                    }
                    let ids = state.waiting.filter {
                        $0.value.isProvisional
                            && (project ? $0.value.record.request.project == request.project : $0.value.record.request.user == request.user)
                    }
                    .map(\.key)
                    for id in ids { state.waiting[id] = nil }
                    return ids
                }
                for id in dropped { admission.remove(id) }
            }
            logger.trace(
                "held back by the shared limits",
                metadata: [LoggingKeys.jobID: "\(job.record.id)", LoggingKeys.limit: "\(limit.rawValue)"]
            )
            storeChanged()
            return nil
        }
    }

    /// Claims a job this process only looked at, for work that makes no provider call (a cache hit, a job to
    /// dead-letter); a job already held is returned as it is.
    func claimUnadmitted(_ job: LeasedJob) async -> LeasedJob? {
        guard job.isProvisional else { return job }
        defer { core.state.withLock { _ = $0.lookedAt.remove(job.record.id) } }
        let claimed: LeasedJob?
        do {
            claimed = try await (store as? any ClaimingJobStore)?.claim(
                job.record.id,
                owner: workerID,
                duration: configuration.leaseDuration
            )
        } catch {
            logger.debug("claim failed", metadata: [LoggingKeys.jobID: "\(job.record.id)", LoggingKeys.error: "\(error)"])
            if let local = LocalResourceError.classify(error, path: artifacts.root, operation: "claim") {
                halt(because: local)
            }
            claimed = nil
        }
        // Gone (another process took it, or it was cancelled), or the store failed: the next look at the queue
        // shows it again if it is still there.
        guard let claimed else { return nil }
        let now = clock.now
        core.state.withLock { $0.inFlight[claimed.record.id] = InFlight(lease: claimed.lease, renewedAt: now) }
        return claimed
    }
}

extension LeasedJob {
    /// A job a shared store only showed (no lease yet): it is claimed when its call is admitted.
    var isProvisional: Bool { lease.token.isEmpty }
}
