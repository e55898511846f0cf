import Foundation
import Logging
import Synchronization

/// The scheduler stage: takes jobs from the store into the admission backlog, asks the admission state machine
/// (``AdmissionState``) what to start and where, starts it, and keeps the leases of what this process holds.
extension ParallelGenerator {
    /// The scheduler stage: takes jobs from the store into the admission backlog (each kind from its own queue,
    /// so that work late in a campaign is seen as early as work near its top), asks the admission state machine
    /// what to start now and where, and starts it; until draining is complete or the task is cancelled.
    ///
    /// A job waiting for admission holds its lease and nothing else: no job slot, no provider slot, no memory.
    func dispatchLoop(group: inout DiscardingTaskGroup) async {
        let lookahead = backlogLookahead
        // Per kind: when its queue last ran dry (the store generation then) and until when to leave it.
        var dry: [GenerationKind: (generation: Int, until: Duration)] = [:]
        while !Task.isCancelled {
            await maintainLeases()
            let (lifecycle, inFlight) = state.withLock { ($0.lifecycle, $0.inFlight.count) }
            if lifecycle != .running {
                await giveBackWaiting()
                if inFlight == 0 || state.withLock({ $0.inFlight.isEmpty }) { return }
                await wakeup.wait(until: nextHeartbeat(), clock: clock)
                continue
            }
            if let next = nextSuspect() { await take(next, group: &group) }
            let blocked = admission.blockedUsers()
            var storeDeadline: Duration?
            let generation = state.withLock { $0.storeGeneration }
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
                    leased = try await store.lease(
                        limit: want,
                        owner: workerID,
                        duration: configuration.leaseDuration,
                        excludingUsers: blocked.users,
                        kinds: [kind]
                    )
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
                    let due = (try? await store.timeUntilNextDue()).flatMap { $0 }.map { now + $0 }
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
        let record = job.record
        let request = record.request
        let now = clock.now
        let parked = state.withLock { state -> Bool in
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
            // Providers that failed this job are avoided while another can serve it; the cheapest comes first.
            names = AdmissionRequest.candidates(
                for: request,
                among: balancer.providerNames.compactMap { providers[$0]?.descriptor },
                avoiding: record.failedProviders
            )
            guard !names.isEmpty else {
                let reason = balancer.refusal(for: request) ?? "no capable provider"
                group.addTask {
                    _ = await self.deadLetter(job, GenerationError(.noCapableProvider, reason))
                    self.state.withLock { _ = $0.inFlight.removeValue(forKey: record.id) }
                }
                return
            }
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

    func estimate(_ request: ValidatedRequest, _ provider: String) -> Money {
        providers[provider]?.descriptor.pricing.estimate(request) ?? .zero
    }

    /// Starts the jobs a scheduling round admitted.
    func start(_ grants: [AdmissionTicket], group: inout DiscardingTaskGroup) {
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

    /// Notes that this process put a job back in the store (or added one): the scheduler looks at the queues again.
    func storeChanged() {
        state.withLock { $0.storeGeneration += 1 }
        wakeup.signal()
    }

    /// The next parked suspect, once the suspect running has left (finished, or gone back to the store).
    func nextSuspect() -> LeasedJob? {
        state.withLock { state in
            if let current = state.suspect, state.inFlight[current] == nil { state.suspect = nil }
            guard state.suspect == nil, !state.parkedSuspects.isEmpty else { return nil }
            return state.parkedSuspects.removeFirst()
        }
    }

    /// Gives back the leases of the jobs still waiting for admission, and of the parked suspects (a stop).
    func giveBackWaiting() async {
        let waiting = state.withLock { state -> [LeasedJob] in
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
            try? await shielded { try await self.store.release(job.lease) }
            storeChanged()
            state.withLock { _ = $0.inFlight.removeValue(forKey: job.record.id) }
        }
    }

    /// Heartbeats every lease in flight that is a third of the way to expiry, and rescues expired leases,
    /// for stores whose jobs outlive this process.
    func maintainLeases() async {
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
        if rescueDue, let rescued = try? await store.rescueExpiredLeases(maxCrashes: configuration.retry.maxCrashes), rescued > 0 {
            logger.info("rescued expired leases", metadata: [LoggingKeys.count: "\(rescued)"])
        }
    }

    func nextHeartbeat() -> Duration? {
        guard store.outlivesProcess else { return nil }
        let leaseDuration = configuration.leaseDuration
        return state.withLock { state in
            state.inFlight.values.map(\.renewedAt).min().map { $0 + leaseDuration / 3 }
        }
    }
}
