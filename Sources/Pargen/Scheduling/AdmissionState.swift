import DequeModule

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

extension AdmissionRequest {
    /// The providers that may take `request`, in order of preference: those that can serve it (its pinned
    /// provider, or any of `providers` in their configured order), without the ones that already failed it
    /// while another remains, cheapest estimate first (ties keep the configured order). Empty when none can.
    public static func candidates(
        for request: ValidatedRequest,
        among providers: [ProviderDescriptor],
        avoiding failed: [String] = []
    ) -> [String] {
        let byName = Dictionary(providers.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        let capable = (request.provider.map { [$0] } ?? providers.map(\.name)).filter {
            byName[$0]?.capabilities.refusal(for: request) == nil
        }
        let preferred = capable.filter { !failed.contains($0) }
        return (preferred.isEmpty ? capable : preferred).enumerated().sorted { a, b in
            let pa = byName[a.element]!.pricing.estimate(request)
            let pb = byName[b.element]!.pricing.estimate(request)
            return pa == pb ? a.offset < b.offset : pa < pb
        }.map(\.element)
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
    /// Jobs this round found held back by a different limit than before (for trace logs): each job is named
    /// once per change of what holds it, not once per round.
    public var heldBack: [(job: JobID, limit: RateLimiter.LimitKind)] = []
    /// How long each granted job waited for admission, by the limit that held it last (for debug logs).
    public var waits: [JobID: (limit: RateLimiter.LimitKind, waited: Duration)] = [:]

    public init(grants: [AdmissionTicket], wakeAt: Duration?) {
        self.grants = grants
        self.wakeAt = wakeAt
    }

    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.grants == rhs.grants && lhs.wakeAt == rhs.wakeAt }
    public func hash(into hasher: inout Hasher) {
        hasher.combine(grants)
        hasher.combine(wakeAt)
    }
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
        /// Tells this stay apart from an earlier one of the same job in the lanes.
        var token: UInt64
        var since: Duration
        var blockedBy: RateLimiter.LimitKind?
        /// Providers where the job is slot-holding work, and where it is plain work.
        var holding: [String]
        var plain: [String]
    }

    /// One priority's waiting jobs: each user's oldest first, users in the order they arrived.
    struct Lane {
        var users: Deque<String> = []
        var jobs: [String: Deque<(id: JobID, token: UInt64)>] = [:]
        /// What held back the job at which the last walk over this lane stopped (every provider it could use
        /// closed): what held back the jobs behind it too, which that walk never looked at.
        var stoppedBy: RateLimiter.LimitKind?
        /// What held back each user passed over in a walk (a job of theirs refused and none of their others able
        /// to go anywhere open): what held back their jobs that walk never looked at.
        var heldBy: [String: RateLimiter.LimitKind] = [:]

        mutating func push(_ id: JobID, token: UInt64, user: String) {
            if jobs[user] == nil {
                jobs[user] = []
                users.append(user)
            }
            jobs[user]!.append((id, token))
        }
    }

    /// What a pass tells the walk over a lane after looking at one job.
    enum Step { case next, skipUser, stop }

    public private(set) var providers: [String: ProviderAdmission]
    public private(set) var clients: ClientLimits
    private var waiters: [JobID: Waiter] = [:]
    private var lanes = Array(repeating: Lane(), count: GenerationPriority.allCases.count)
    private var holderLanes = Array(repeating: Lane(), count: GenerationPriority.allCases.count)
    /// Slot holders waiting per priority and provider, each job counted once, shared among its providers.
    private var shares = Array(repeating: [String: Double](), count: GenerationPriority.allCases.count)
    /// Jobs waiting in each priority's lane of plain work and of slot holders, per provider they could go to: a
    /// pass stops once every provider its lane's jobs can use is closed (``schedule(at:jobSlots:breakers:)``).
    private var plainByProvider = Array(repeating: [String: Int](), count: GenerationPriority.allCases.count)
    private var holdersByProvider = Array(repeating: [String: Int](), count: GenerationPriority.allCases.count)
    /// Each user's jobs in each priority's lanes, and the providers they could go to when all of them name the
    /// same (the usual case): such a user whose providers are all closed is passed over for the rest of a pass
    /// after one look, instead of each of their jobs being looked at.
    struct UserJobs {
        var count: Int
        /// The providers every one of the user's jobs in the lane names; `nil` once two of them differ.
        var providers: [String]?
    }
    private var plainByUser = Array(repeating: [String: UserJobs](), count: GenerationPriority.allCases.count)
    private var holdersByUser = Array(repeating: [String: UserJobs](), count: GenerationPriority.allCases.count)
    private var kindCounts: [GenerationKind: Int] = [:]
    /// Waiting jobs that submit, per project, and those that do not (a resumed task, which no client limit holds
    /// back): a round whose every such project is held back by its bucket or bursts stops there.
    private var submittersByProject: [String: Int] = [:]
    private var resumers = 0
    private var nextToken: UInt64 = 0
    private var nextTicket: UInt64 = 0
    /// Tickets out now.
    public private(set) var admittedNow = 0
    public private(set) var admitted = 0
    public private(set) var denied: [RateLimiter.LimitKind: Int] = [:]
    public private(set) var waited: [RateLimiter.LimitKind: Duration] = [:]
    /// What ``block(_:_:at:)`` noted during the current round, handed out with its schedule.
    private var heldBackThisRound: [(JobID, RateLimiter.LimitKind)] = []
    private var grantedWaits: [(JobID, RateLimiter.LimitKind, Duration)] = []

    public init(providers: [ProviderAdmission], clients: ClientLimits) {
        self.providers = Dictionary(providers.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        self.clients = clients
    }

    // MARK: - The backlog

    /// How many jobs of each kind the scheduler keeps in view: enough to fill every provider's window and slots
    /// once, at least two rounds of job slots, and at most 5,000.
    public static func lookahead(quotas: [ProviderQuota], maxConcurrentJobs: Int) -> Int {
        let room = quotas.reduce(0) { $0 + ($1.requestsPerMinute ?? 0) + ($1.concurrentTasks ?? 0) }
        return min(5_000, max(2 * maxConcurrentJobs, room))
    }

    /// Adds a job to those waiting (a job already waiting is replaced).
    public mutating func enqueue(_ request: AdmissionRequest, at now: Duration) {
        remove(request.job, at: now)
        nextToken += 1
        let names = request.providers.filter { providers[$0] != nil }
        let holding = names.filter { providers[$0]!.holdsSlot(request.kind) }
        let waiter = Waiter(
            request: request,
            token: nextToken,
            since: now,
            blockedBy: nil,
            holding: holding,
            plain: names.filter { !providers[$0]!.holdsSlot(request.kind) }
        )
        waiters[request.job] = waiter
        let level = request.priority.rawValue
        if !waiter.plain.isEmpty { lanes[level].push(request.job, token: nextToken, user: request.user) }
        for name in waiter.plain { plainByProvider[level][name, default: 0] += 1 }
        if !waiter.plain.isEmpty { Self.count(in: waiter.plain, of: &plainByUser[level][request.user]) }
        if !holding.isEmpty {
            holderLanes[level].push(request.job, token: nextToken, user: request.user)
            for name in holding {
                shares[level][name, default: 0] += 1 / Double(holding.count)
                holdersByProvider[level][name, default: 0] += 1
            }
            Self.count(in: holding, of: &holdersByUser[level][request.user])
        }
        kindCounts[request.kind, default: 0] += 1
        if request.submits { submittersByProject[request.project, default: 0] += 1 } else { resumers += 1 }
    }

    /// Takes a job out of those waiting (it left the engine's hands); whether it was waiting.
    @discardableResult
    public mutating func remove(_ job: JobID, at now: Duration) -> Bool {
        guard let waiter = waiters.removeValue(forKey: job) else { return false }
        account(waiter, at: now)
        let level = waiter.request.priority.rawValue
        for name in waiter.holding { shares[level][name, default: 0] -= 1 / Double(waiter.holding.count) }
        let user = waiter.request.user
        for name in waiter.holding { Self.count(out: name, of: &holdersByProvider[level]) }
        if !waiter.holding.isEmpty { Self.countOut(of: &holdersByUser[level][user]) }
        for name in waiter.plain { Self.count(out: name, of: &plainByProvider[level]) }
        if !waiter.plain.isEmpty { Self.countOut(of: &plainByUser[level][user]) }
        kindCounts[waiter.request.kind, default: 0] -= 1
        if waiter.request.submits {
            let left = submittersByProject[waiter.request.project, default: 1] - 1
            submittersByProject[waiter.request.project] = left > 0 ? left : nil
        } else {
            resumers -= 1
        }
        return true
    }

    /// One job fewer for `name` in `counts`, and the name gone with its last job.
    private static func count(out name: String, of counts: inout [String: Int]) {
        let left = counts[name, default: 1] - 1
        counts[name] = left > 0 ? left : nil
    }

    /// One job more for a user, naming `providers`.
    private static func count(in providers: [String], of jobs: inout UserJobs?) {
        guard var known = jobs else {
            jobs = UserJobs(count: 1, providers: providers)
            return
        }
        known.count += 1
        if known.providers != providers { known.providers = nil }
        jobs = known
    }

    /// One job fewer for a user, and the user gone with their last job.
    private static func countOut(of jobs: inout UserJobs?) {
        jobs?.count -= 1
        if jobs?.count ?? 0 <= 0 { jobs = nil }
    }

    public var waitingCount: Int { waiters.count }

    public func waitingCount(of kind: GenerationKind) -> Int { kindCounts[kind, default: 0] }

    public func isWaiting(_ job: JobID) -> Bool { waiters[job] != nil }

    /// The jobs waiting, in no particular order.
    public var waitingRequests: [AdmissionRequest] { waiters.values.map(\.request) }

    // MARK: - Scheduling

    /// Decides which waiting jobs start now and on which provider, taking what each needs.
    ///
    /// Cheap when little can start: a pass stops once every provider its jobs could use is closed (no slot, a full
    /// window, a cooldown) or every project with work waiting is held back by its bucket or bursts, and a user or
    /// project held back by its own limits is passed over for the rest of the round, as is, for the rest of a
    /// pass, a user whose jobs all name the same providers, every one of them closed.
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
        var free = jobSlots
        var canaries: Set<String> = []
        var blockedUsers: [String: RateLimiter.LimitKind] = [:]
        var blockedProjects: [String: RateLimiter.LimitKind] = [:]
        for priority in GenerationPriority.allCases.reversed() where free > 0 {
            let level = priority.rawValue
            // One pass over a lane: each job, in fair order, to the first of its providers that admits it.
            func pass(holders: Bool, keep: [String: Int]) {
                var closed: [String: RateLimiter.LimitKind] = [:]
                // The providers this lane's jobs can use: a provider is closed only from a job of the lane, so
                // once as many are closed, every one is, and no job further on can start.
                let usable = holders ? holdersByProvider[level].count : plainByProvider[level].count
                walk(holders: holders, level: level, at: now) { state, waiter in
                    guard free > 0 else { return .stop }
                    let names = holders ? waiter.holding : waiter.plain
                    guard !names.isEmpty else { return .next }
                    let outcome = state.place(
                        waiter,
                        among: names,
                        keep: keep,
                        closed: &closed,
                        blockedUsers: &blockedUsers,
                        blockedProjects: &blockedProjects,
                        canaries: &canaries,
                        breakers: breakers,
                        wake: &wake,
                        at: now
                    )
                    if let ticket = outcome.ticket {
                        grants.append(ticket)
                        free -= 1
                    }
                    // Every project held back (each blocked one has a job waiting, so the counts say it all).
                    if state.resumers == 0 && blockedProjects.count >= state.submittersByProject.count { return .stop }
                    if outcome.userBlocked { return .skipUser }
                    if closed.count >= usable { return .stop }
                    // None of this user's jobs in the lane can go anywhere open: the next one would be refused too.
                    if outcome.ticket == nil {
                        let user = waiter.request.user
                        let theirs = holders ? state.holdersByUser[level][user] : state.plainByUser[level][user]
                        if let same = theirs?.providers, same.allSatisfy({ closed[$0] != nil }) { return .skipUser }
                    }
                    return .next
                }
            }
            // 1. Slot-holding work, where a slot and window room allow (nothing is kept back from it).
            pass(holders: true, keep: [:])
            // 2. Room kept back for the slot holders of this priority and above still waiting.
            var keep: [String: Int] = [:]
            for name in providers.keys {
                var waiting = 0.0
                for above in level..<shares.count { waiting += shares[above][name, default: 0] }
                let count = Int((waiting - 1e-9).rounded(.up))
                if count > 0 { keep[name] = providers[name]!.keepBack(waiting: count, at: now) }
            }
            // 3. Plain work in the rest of each window.
            pass(holders: false, keep: keep)
        }
        admitted += grants.count
        admittedNow += grants.count
        var schedule = AdmissionSchedule(grants: grants, wakeAt: wake)
        schedule.heldBack = heldBackThisRound.map { (job: $0.0, limit: $0.1) }
        heldBackThisRound.removeAll(keepingCapacity: true)
        for (job, limit, waited) in grantedWaits { schedule.waits[job] = (limit, waited) }
        grantedWaits.removeAll(keepingCapacity: true)
        return schedule
    }

    /// Walks a lane in fair order (users in turn, each user's oldest first), skipping jobs no longer waiting,
    /// until `body` stops it; then drops the dead entries from the front of each user's queue.
    ///
    /// The turns carry over from one walk to the next: a user whose job was admitted goes to the back of the
    /// lane, so the next walk starts with the users served least recently. A round with room for fewer jobs
    /// than there are users thus serves the others next, instead of the same first users every round.
    ///
    /// A job that an earlier walk never reached (it stopped before it, or passed over its user) waited since it
    /// arrived for what stopped that walk or held its user back, and is accounted so: the time jobs wait per
    /// limit does not depend on how far a walk looks.
    private mutating func walk(
        holders: Bool,
        level: Int,
        at now: Duration,
        _ body: (inout AdmissionState, Waiter) -> Step
    ) {
        // The walk changes waiters and providers, never the lanes: the lane is taken out and put back (swapped
        // out, so that tidying it does not copy it whole).
        var lane = Lane()
        if holders { swap(&lane, &holderLanes[level]) } else { swap(&lane, &lanes[level]) }
        defer { if holders { holderLanes[level] = lane } else { lanes[level] = lane } }
        var cursors: [String: Int] = [:]
        var active: [String] = []
        var served: [String] = []
        var servedSet: Set<String> = []
        var stopped = false
        // The first turn goes over the lane's users in order; later turns over those still taking jobs. How far
        // the first turn got is all that the tidying below looks at, so a walk that stops early costs what it
        // looked at, not what waits.
        var firstTurn = 0
        var turn = 0
        while !stopped {
            let count = turn == 0 ? lane.users.count : active.count
            if count == 0 { break }
            var still: [String] = []
            for position in 0..<count {
                let user = turn == 0 ? lane.users[position] : active[position]
                if turn == 0 { firstTurn = position + 1 }
                guard let queue = lane.jobs[user] else { continue }
                var index = cursors[user, default: 0]
                var found: Waiter?
                while index < queue.count {
                    let entry = queue[index]
                    if let waiter = waiters[entry.id], waiter.token == entry.token {
                        found = waiter
                        break
                    }
                    index += 1
                }
                guard var waiter = found else { continue }
                cursors[user] = index + 1
                if waiter.blockedBy == nil, let reason = lane.heldBy[user] ?? lane.stoppedBy, now > waiter.since {
                    waiter.blockedBy = reason
                    waiters[waiter.request.job] = waiter
                }
                let step = body(&self, waiter)
                // Admitted: no longer waiting.
                let waiting = waiters[waiter.request.job]
                if waiting == nil, servedSet.insert(user).inserted { served.append(user) }
                switch step {
                case .next: still.append(user)
                case .skipUser: lane.heldBy[user] = waiting?.blockedBy ?? lane.heldBy[user]
                case .stop:
                    stopped = true
                    lane.stoppedBy = waiting?.blockedBy
                }
                if stopped { break }
            }
            active = still
            turn += 1
        }
        if !stopped { lane.stoppedBy = nil }
        // Drop the dead entries at the front of the queues looked at, and their users with none left; the users
        // served go to the back, so the next walk starts with those served least recently. Users further on keep
        // their place (and any dead entries, until a walk reaches them).
        var front: [String] = []
        for user in lane.users.prefix(firstTurn) {
            while let first = lane.jobs[user]?.first, waiters[first.id]?.token != first.token {
                lane.jobs[user]!.removeFirst()
            }
            if lane.jobs[user]?.isEmpty == true {
                lane.jobs[user] = nil
                lane.heldBy[user] = nil
            }
            if lane.jobs[user] != nil && !servedSet.contains(user) { front.append(user) }
        }
        lane.users.removeFirst(firstTurn)
        lane.users.prepend(contentsOf: front)
        lane.users.append(contentsOf: served.filter { lane.jobs[$0] != nil })
    }

    /// Admits `waiter` at the first of `names` that takes it, or records why none did.
    private mutating func place(
        _ waiter: Waiter,
        among names: [String],
        keep: [String: Int],
        closed: inout [String: RateLimiter.LimitKind],
        blockedUsers: inout [String: RateLimiter.LimitKind],
        blockedProjects: inout [String: RateLimiter.LimitKind],
        canaries: inout Set<String>,
        breakers: [String: BreakerGate],
        wake: inout Duration?,
        at now: Duration
    ) -> (ticket: AdmissionTicket?, userBlocked: Bool) {
        let request = waiter.request
        func wakeAt(_ time: Duration) { wake = min(wake ?? time, time) }
        let userKey = "\(request.user)\u{0}\(request.project)"
        if request.submits, let reason = blockedProjects[request.project] ?? blockedUsers[userKey] {
            block(request.job, reason, at: now)
            return (nil, true)
        }
        var reason: RateLimiter.LimitKind?
        for name in names {
            if let why = closed[name] {
                reason = reason ?? why
                continue
            }
            switch breakers[name] ?? .closed {
            case .open(let until):
                wakeAt(until)
                closed[name] = .providerCooldown
                reason = reason ?? .providerCooldown
                continue
            case .canary where canaries.contains(name):
                closed[name] = .providerCooldown
                reason = reason ?? .providerCooldown
                continue
            case .canary, .closed: break
            }
            // The provider's state is changed in place: a copy would copy its window log.
            let usesSlot = providers[name]!.usesSlot(request.kind)
            if let blocked = providers[name]!.check(
                usesSlot: usesSlot,
                needsWindow: request.submits,
                keptBack: keep[name, default: 0],
                at: now
            ) {
                let why: RateLimiter.LimitKind
                switch blocked {
                case .cooldown(let until):
                    wakeAt(until)
                    why = .providerCooldown
                case .slots: why = .providerSlots
                case .window(let until):
                    // Room kept back is decided again at every round: when a call starts or ends, and when window
                    // room opens. Between those it changes only as the running tasks age, and plain work looks
                    // again at the latest when the window opens: no polling, and no wait without an end.
                    wakeAt(until)
                    why = .providerQuota
                }
                // Every job in this pass asks the same of this provider: it stays closed for the pass (a resumed
                // task, which needs no window, may still find a slot).
                if request.submits || why != .providerQuota { closed[name] = why }
                reason = reason ?? why
                continue
            }
            if request.submits, let (wait, kind) = clients.check(user: request.user, project: request.project, at: now) {
                wakeAt(now + wait)
                blockedUsers[userKey] = kind
                // A project's bucket and bursts hold back every job of the project, whoever asks.
                if kind == .projectBucket || kind == .burstCooldown { blockedProjects[request.project] = kind }
                block(request.job, kind, at: now)
                return (nil, true)
            }
            nextTicket += 1
            let holdsSlot = providers[name]!.holdsSlot(request.kind)
            providers[name]!.admit(
                ticket: nextTicket,
                usesSlot: usesSlot,
                holdsSlot: holdsSlot,
                needsWindow: request.submits,
                at: now
            )
            if request.submits { clients.record(user: request.user, project: request.project, at: now) }
            if breakers[name] == .canary { canaries.insert(name) }
            if let waiter = waiters[request.job], let limit = waiter.blockedBy, now > waiter.since {
                grantedWaits.append((request.job, limit, now - waiter.since))
            }
            remove(request.job, at: now)
            return (
                AdmissionTicket(
                    id: nextTicket,
                    job: request.job,
                    provider: name,
                    kind: request.kind,
                    usesSlot: usesSlot,
                    holdsSlot: holdsSlot,
                    submits: request.submits,
                    admittedAt: now
                ),
                false
            )
        }
        if let reason { block(request.job, reason, at: now) }
        return (nil, false)
    }

    /// Notes what holds a waiting job back, closing the account of what held it before.
    private mutating func block(_ job: JobID, _ reason: RateLimiter.LimitKind, at now: Duration) {
        guard var waiter = waiters[job] else { return }
        denied[reason, default: 0] += 1
        guard waiter.blockedBy != reason else { return }
        account(waiter, at: now)
        waiter.blockedBy = reason
        waiter.since = now
        waiters[job] = waiter
        heldBackThisRound.append((job, reason))
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

    /// Holds every call to `provider` back until `until` without judging the provider (the shared admission
    /// state of several workers said so): its adaptive limit is left as it is.
    public mutating func holdBack(_ provider: String, until: Duration) {
        providers[provider]?.throttled(until: until)
    }

    /// When `provider` may be called again, if it is cooling down at `now`.
    public func cooldownEnd(_ provider: String, at now: Duration) -> Duration? {
        providers[provider]?.cooldownUntil.flatMap { $0 > now ? $0 : nil }
    }

    public mutating func blockedUsers(at now: Duration) -> (users: Set<String>, until: Duration?) {
        clients.blockedUsers(at: now)
    }
}
