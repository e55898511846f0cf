/// A job waiting to be admitted to a provider: what the scheduler knows of it.
public struct AdmissionRequest: Sendable, Hashable {
    public var job: JobID
    /// Insertion order of the job, for first in, first out within a priority and user.
    public var sequence: Int64
    public var priority: GenerationPriority
    public var user: String
    public var project: String
    public var kind: GenerationKind
    /// The providers that may take it, in order of preference (cheapest first). A resumed task, or a call cut
    /// off at a provider that de-duplicates by key, names its one provider.
    public var providers: [String]
    /// Whether the call submits a task (and so takes window room and the client limits); a resumed task only
    /// polls.
    public var submits: Bool

    public init(
        job: JobID,
        sequence: Int64,
        priority: GenerationPriority,
        user: String,
        project: String,
        kind: GenerationKind,
        providers: [String],
        submits: Bool = true
    ) {
        self.job = job
        self.sequence = sequence
        self.priority = priority
        self.user = user
        self.project = project
        self.kind = kind
        self.providers = providers
        self.submits = submits
    }
}

/// Proof that a job was admitted to a provider; give it back through ``AdmissionState/finish(_:outcome:at:)``.
public struct AdmissionTicket: Sendable, Hashable {
    public var id: UInt64
    public var job: JobID
    public var provider: String
    public var kind: GenerationKind
    /// The call takes one of the provider's slots (its quota's or its adaptive limit's).
    public var usesSlot: Bool
    /// The call is long slot-holding work (a video task on a provider that also takes plain calls).
    public var holdsSlot: Bool
    public var submits: Bool
    public var admittedAt: Duration
}

/// What a provider's circuit breaker allows now.
public enum BreakerGate: Sendable, Hashable {
    case closed
    /// Half-open: one trial call.
    case canary
    case open(until: Duration)
}

/// What one scheduling round decided: the jobs to start now and where, and when to look again if nothing
/// else happens first (a call ending, a job arriving).
public struct AdmissionSchedule: Sendable, Hashable {
    public var grants: [AdmissionTicket]
    public var wakeAt: Duration?
}

/// The admission state machine of the whole engine: one ``ProviderAdmission`` per provider, the
/// ``ClientLimits``, and the jobs waiting for admission (the part of the backlog the engine has taken from the
/// store). A pure value: the engine's shell holds it under one lock and runs what it decides outside it.
///
/// The scheduling rule (``schedule(at:jobSlots:breakers:)``), per priority from the highest:
/// 1. Slot-holding work (a video task) starts on its cheapest provider that has a slot free and window room.
/// 2. Each provider then keeps back window room for the slot-holding jobs still waiting that can use it:
///    never more than those jobs (each counted once, shared among the providers it could go to), nor more
///    than can start there within one window (``ProviderAdmission/keepBack(waiting:at:)``).
/// 3. Plain work (speech) takes the rest of each window, cheapest provider with room first, so that with
///    work waiting every provider's window fills.
/// Within a priority, users take turns (each user's oldest first). A job is admitted on every dimension at
/// once (provider cooldown, slots, window, user window, project bucket, burst) or not at all, and waits
/// holding nothing.
public struct AdmissionState: Sendable {
    struct Waiter {
        var request: AdmissionRequest
        var since: Duration
        var blockedBy: RateLimiter.LimitKind?
    }

    public private(set) var providers: [String: ProviderAdmission]
    public private(set) var clients: ClientLimits
    private var waiters: [JobID: Waiter] = [:]
    private var nextTicket: UInt64 = 0
    /// Tickets out now.
    public private(set) var admittedNow = 0
    public private(set) var admitted = 0
    public private(set) var denied: [RateLimiter.LimitKind: Int] = [:]
    public private(set) var waited: [RateLimiter.LimitKind: Duration] = [:]

    public init(providers: [ProviderAdmission], clients: ClientLimits) {
        self.providers = Dictionary(providers.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        self.clients = clients
    }

    // MARK: - The backlog

    /// Adds a job to those waiting (a job already waiting is replaced).
    public mutating func enqueue(_ request: AdmissionRequest, at now: Duration) {
        waiters[request.job] = Waiter(request: request, since: now, blockedBy: nil)
    }

    /// Takes a job out of those waiting (it left the engine's hands); whether it was waiting.
    @discardableResult
    public mutating func remove(_ job: JobID, at now: Duration) -> Bool {
        guard let waiter = waiters.removeValue(forKey: job) else { return false }
        account(waiter, at: now)
        return true
    }

    public var waitingCount: Int { waiters.count }

    public func waitingCount(of kind: GenerationKind) -> Int { waiters.values.count { $0.request.kind == kind } }

    public func isWaiting(_ job: JobID) -> Bool { waiters[job] != nil }

    /// The jobs waiting, in no particular order.
    public var waitingRequests: [AdmissionRequest] { waiters.values.map(\.request) }

    // MARK: - Scheduling

    /// Decides which waiting jobs start now and on which provider, taking what each needs.
    ///
    /// - Parameters:
    ///   - jobSlots: How many jobs may start (the engine's free job slots).
    ///   - breakers: What each provider's circuit breaker allows (a provider not named is closed).
    public mutating func schedule(
        at now: Duration,
        jobSlots: Int,
        breakers: [String: BreakerGate] = [:]
    ) -> AdmissionSchedule {
        var grants: [AdmissionTicket] = []
        var wake: Duration?
        func wakeAt(_ time: Duration) { wake = min(wake ?? time, time) }
        var free = jobSlots
        var canaries: Set<String> = []
        var clientBlocks: [String: (Duration, RateLimiter.LimitKind)?] = [:]
        var blocked: [JobID: RateLimiter.LimitKind] = [:]
        let order = fairOrder()

        /// Tries to admit `waiter` at `name`; returns the reason if it cannot go there.
        func tryAdmit(_ request: AdmissionRequest, at name: String, keptBack: Int) -> RateLimiter.LimitKind? {
            guard var provider = providers[name] else { return .providerQuota }
            switch breakers[name] ?? .closed {
            case .open(let until):
                wakeAt(until)
                return .providerCooldown
            case .canary where canaries.contains(name): return .providerCooldown
            case .canary, .closed: break
            }
            let usesSlot = provider.usesSlot(request.kind)
            let holdsSlot = provider.holdsSlot(request.kind)
            if let block = provider.check(
                usesSlot: usesSlot,
                needsWindow: request.submits,
                keptBack: keptBack,
                at: now
            ) {
                providers[name] = provider
                switch block {
                case .cooldown(let until):
                    wakeAt(until)
                    return .providerCooldown
                case .slots: return .providerSlots
                case .window(let until):
                    // Room kept back moves as slot holders come and go: look again soon.
                    wakeAt(keptBack > 0 ? min(until, now + .milliseconds(250)) : until)
                    return .providerQuota
                }
            }
            if request.submits {
                let key = "\(request.user)\u{0}\(request.project)"
                if clientBlocks[key] == nil {
                    clientBlocks[key] = .some(clients.check(user: request.user, project: request.project, at: now))
                }
                if let (wait, kind) = clientBlocks[key]! {
                    wakeAt(now + wait)
                    providers[name] = provider
                    return kind
                }
            }
            nextTicket += 1
            provider.admit(ticket: nextTicket, usesSlot: usesSlot, holdsSlot: holdsSlot, needsWindow: request.submits, at: now)
            providers[name] = provider
            if request.submits {
                clients.record(user: request.user, project: request.project, at: now)
                // The user's next call meets the limits afresh.
                clientBlocks["\(request.user)\u{0}\(request.project)"] = nil
            }
            if breakers[name] == .canary { canaries.insert(name) }
            grants.append(
                AdmissionTicket(
                    id: nextTicket,
                    job: request.job,
                    provider: name,
                    kind: request.kind,
                    usesSlot: usesSlot,
                    holdsSlot: holdsSlot,
                    submits: request.submits,
                    admittedAt: now
                )
            )
            free -= 1
            return nil
        }

        /// Admits `request` at the first of `names` that takes it, recording why not otherwise.
        func place(_ request: AdmissionRequest, among names: [String], keep: [String: Int]) -> Bool {
            var reason: RateLimiter.LimitKind?
            for name in names {
                guard let why = tryAdmit(request, at: name, keptBack: keep[name, default: 0]) else { return true }
                reason = reason ?? why
            }
            if let reason { blocked[request.job] = reason }
            return false
        }

        var admittedJobs: Set<JobID> = []
        for priority in GenerationPriority.allCases.reversed() where free > 0 {
            let level = order.filter { $0.priority == priority }
            if level.isEmpty { continue }
            // 1. Slot-holding work, where a slot and window room allow.
            for request in level where free > 0 {
                let holding = request.providers.filter { providers[$0]?.holdsSlot(request.kind) == true }
                if !holding.isEmpty, place(request, among: holding, keep: [:]) { admittedJobs.insert(request.job) }
            }
            // 2. Room kept back for the slot holders of this priority and above still waiting, each counted once.
            var holders: [String: Double] = [:]
            for waiter in waiters.values
            where waiter.request.priority >= priority && !admittedJobs.contains(waiter.request.job) {
                let holding = waiter.request.providers.filter { providers[$0]?.holdsSlot(waiter.request.kind) == true }
                for name in holding { holders[name, default: 0] += 1 / Double(holding.count) }
            }
            var keep: [String: Int] = [:]
            for (name, count) in holders {
                keep[name] = providers[name]!.keepBack(waiting: Int(count.rounded(.up)), at: now)
            }
            // 3. Plain work in the rest of each window.
            for request in level where free > 0 && !admittedJobs.contains(request.job) {
                let plain = request.providers.filter { providers[$0].map { !$0.holdsSlot(request.kind) } ?? false }
                if !plain.isEmpty, place(request, among: plain, keep: keep) { admittedJobs.insert(request.job) }
            }
        }
        for ticket in grants {
            if let waiter = waiters.removeValue(forKey: ticket.job) { account(waiter, at: now) }
        }
        admitted += grants.count
        admittedNow += grants.count
        for (job, reason) in blocked {
            guard var waiter = waiters[job] else { continue }
            denied[reason, default: 0] += 1
            if waiter.blockedBy != reason {
                account(waiter, at: now)
                waiter.blockedBy = reason
                waiter.since = now
                waiters[job] = waiter
            }
        }
        return AdmissionSchedule(grants: grants, wakeAt: wake)
    }

    /// Waiting jobs in the order they are served: highest priority first; within a priority, users in turn
    /// (each user's oldest job first, users in the order of their oldest waiting job).
    private func fairOrder() -> [AdmissionRequest] {
        var byUser: [String: [AdmissionRequest]] = [:]
        for waiter in waiters.values { byUser["\(waiter.request.priority.rawValue)\u{0}\(waiter.request.user)", default: []].append(waiter.request) }
        var ranked: [(priority: Int, turn: Int, first: Int64, request: AdmissionRequest)] = []
        ranked.reserveCapacity(waiters.count)
        for (_, requests) in byUser {
            let sorted = requests.sorted { $0.sequence < $1.sequence }
            let first = sorted[0].sequence
            for (turn, request) in sorted.enumerated() {
                ranked.append((request.priority.rawValue, turn, first, request))
            }
        }
        ranked.sort { ($1.priority, $0.turn, $0.first, $0.request.sequence) < ($0.priority, $1.turn, $1.first, $1.request.sequence) }
        return ranked.map(\.request)
    }

    /// Adds a waiter's time since its last change to what held it back.
    private mutating func account(_ waiter: Waiter, at now: Duration) {
        guard let reason = waiter.blockedBy, now > waiter.since else { return }
        waited[reason, default: .zero] += now - waiter.since
    }

    // MARK: - Feedback

    /// The call reached its provider (its answer, or its task id, arrived).
    public mutating func arrived(_ ticket: AdmissionTicket, at now: Duration) {
        providers[ticket.provider]?.arrived(ticket: ticket.id, at: now)
    }

    /// The call ended (or was never made): its slot is free and its provider learns from the outcome.
    public mutating func finish(_ ticket: AdmissionTicket, outcome: ProviderAdmission.Outcome, at now: Duration) {
        admittedNow -= 1
        providers[ticket.provider]?.finish(ticket: ticket.id, usesSlot: ticket.usesSlot, outcome: outcome, at: now)
    }

    /// The provider asked for a pause (Retry-After, 1002, THROTTLED) outside a call's end.
    public mutating func throttled(_ provider: String, until: Duration) {
        providers[provider]?.throttled(until: until)
    }

    /// The provider held a running task back.
    public mutating func taskHeldBack(_ provider: String) {
        providers[provider]?.taskHeldBack()
    }

    /// When `provider` may be called again, if it is cooling down at `now`.
    public func cooldownEnd(_ provider: String, at now: Duration) -> Duration? {
        providers[provider]?.cooldownUntil.flatMap { $0 > now ? $0 : nil }
    }

    public mutating func blockedUsers(at now: Duration) -> (users: Set<String>, until: Duration?) {
        clients.blockedUsers(at: now)
    }
}
