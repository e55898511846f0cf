import HeapModule

/// Runs a campaign through the engine's own admission state machine and scheduling rule (``AdmissionState``)
/// on a virtual clock, against simulated providers with the configured quotas and prices and a distribution of
/// call times: no network, nothing spent, and a 100,000-line campaign in seconds.
///
/// What is simulated is the scheduler stage of ``ParallelGenerator``: the backlog it keeps in view per kind, the
/// job slots, every provider's window, slots, adaptive limit and room kept for slot holders, and the user and
/// project limits. What is not: provider failures and throttling, retries, budgets, caching and the store.
///
/// ```swift
/// let report = CampaignSimulator(configuration: configuration, providers: [
///     .init(descriptor: openai.descriptor, callSeconds: [.audio: 1...3, .video: 60...120]),
/// ]).run(requests)
/// print(report.makespan, report.bound)
/// ```
public struct CampaignSimulator: Sendable {
    /// A provider as the simulation sees it.
    public struct Provider: Sendable {
        public var descriptor: ProviderDescriptor
        /// Seconds a call takes from admission to its end, per kind: a speech call's answer, a video task's run
        /// from submit to its end. Drawn uniformly.
        public var callSeconds: [GenerationKind: ClosedRange<Double>]
        /// Seconds added per second of media asked for, per kind (a local provider renders in time with the
        /// length).
        public var perMediaSecond: [GenerationKind: Double]
        /// When a call's arrival is known (its answer, or its task id), at most this long after admission.
        public var answerSeconds: Double

        public init(
            descriptor: ProviderDescriptor,
            callSeconds: [GenerationKind: ClosedRange<Double>],
            perMediaSecond: [GenerationKind: Double] = [:],
            answerSeconds: Double = 0.5
        ) {
            self.descriptor = descriptor
            self.callSeconds = callSeconds
            self.perMediaSecond = perMediaSecond
            self.answerSeconds = answerSeconds
        }
    }

    /// The providers' state at one moment.
    public struct Sample: Sendable, Hashable {
        public var time: Duration
        /// Submissions counted in each provider's window.
        public var windowUsed: [String: Int]
        /// Slots in use at each provider.
        public var slotsInUse: [String: Int]
    }

    /// What one provider did in the simulation, and the floor its quotas set.
    public struct ProviderFigures: Sendable, Hashable {
        public var name: String
        /// Calls it was given, and how many of them held a slot.
        public var calls: Int
        public var slotCalls: Int
        public var windowLimit: Int?
        public var window: Duration
        public var slots: Int?
        /// `floor((N - 1) / R) * W`: the last submission cannot enter before its window opens.
        public var rateBound: Duration
        /// `sum(d) / C` over the calls that hold a slot.
        public var slotBound: Duration
        /// The longest call, slot-holding or not: nothing ends before it does.
        public var longest: Duration
        public var bound: Duration { max(rateBound, slotBound, longest) }
        /// A gap-free greedy schedule of the same calls: each call, in the order admitted, starts no sooner than
        /// its window's floor (the `k`-th call at `floor(k / R) * W`) and, if it holds a slot, on the slot that
        /// frees first; it ends its call time later. What a perfect scheduler that cannot know call times in
        /// advance would reach.
        public var greedy: Duration
        public var cost: Money
        /// When its last call ended.
        public var lastEnd: Duration
        /// Mean share of its slots in use while the campaign ran (0 to 1), if it has a slot quota.
        public var slotUtilisation: Double?
    }

    /// A floor that one of this process's own limits sets on the makespan, whatever the providers allow: a
    /// user's window, a project's bucket or burst window, or the job slots.
    public struct Floor: Sendable, Hashable {
        /// The limit, in words (`user u1's window (60 per 60 s)`).
        public var limit: String
        /// No schedule that keeps to the limit ends sooner.
        public var floor: Duration
    }

    public struct Report: Sendable {
        public var lines: Int
        /// Lines no configured provider can take.
        public var unplaced: Int
        public var makespan: Duration
        /// The largest of the providers' bounds and of the floors this process's own limits set: no schedule of
        /// the same calls on the same providers under the same configuration ends sooner.
        public var bound: Duration { max(providers.map(\.bound).max() ?? .zero, floors.first?.floor ?? .zero) }
        /// What sets ``bound``: a provider's name, or one of ``floors``' limits.
        public var boundSetBy: String {
            let provider = providers.max { $0.bound < $1.bound }
            if let floor = floors.first, floor.floor > provider?.bound ?? .zero { return floor.limit }
            return provider.map { "provider \($0.name)" } ?? "nothing"
        }
        /// The largest of the providers' greedy schedules and of the floors.
        public var greedy: Duration { max(providers.map(\.greedy).max() ?? .zero, floors.first?.floor ?? .zero) }
        public var providers: [ProviderFigures]
        /// The floors that this process's own limits set (user windows, project buckets and bursts, job slots),
        /// largest first; only those above zero.
        public var floors: [Floor]
        public var cost: Money
        /// Time jobs spent held back, per limit, summed over jobs (from the admission state's own accounts).
        public var waits: [RateLimiter.LimitKind: Duration]
        public var samples: [Sample]
        /// Scheduling rounds run.
        public var rounds: Int
    }

    public var configuration: PargenConfiguration
    public var providers: [Provider]
    public var seed: UInt64

    public init(configuration: PargenConfiguration, providers: [Provider], seed: UInt64 = 1) {
        self.configuration = configuration
        self.providers = providers
        self.seed = seed
    }

    private struct Event: Comparable {
        enum What { case arrive, end }
        var time: Duration
        var order: Int
        var what: What
        var ticket: AdmissionTicket
        var latency: Duration
        static func < (a: Self, b: Self) -> Bool { (a.time, a.order) < (b.time, b.order) }
        static func == (a: Self, b: Self) -> Bool { a.time == b.time && a.order == b.order }
    }

    /// Simulates `requests`, all handed in at time zero.
    public func run(_ requests: [ValidatedRequest]) -> Report {
        var rng = SplitMix64(seed: seed)
        let byName = Dictionary(providers.map { ($0.descriptor.name, $0) }, uniquingKeysWith: { first, _ in first })
        let names = providers.map(\.descriptor.name).filter { byName[$0] != nil }
        let descriptors = names.map { byName[$0]!.descriptor }
        var state = AdmissionState(
            providers: names.map { ProviderAdmission(name: $0, quota: byName[$0]!.descriptor.quota) },
            clients: ClientLimits(configuration: configuration.rateLimits)
        )
        let lookahead = AdmissionState.lookahead(
            quotas: names.map { byName[$0]!.descriptor.quota },
            maxConcurrentJobs: configuration.resources.maxConcurrentJobs
        )
        // Each kind's queue in the store's order: priority, then users in turn, then oldest first.
        var queues: [GenerationKind: [Int]] = [:]
        for kind in GenerationKind.allCases {
            queues[kind] = Self.storeOrder(requests.indices.filter { requests[$0].kind == kind }, requests)
        }
        var cursor: [GenerationKind: Int] = [:]
        var figures = Dictionary(
            uniqueKeysWithValues: names.map { name in
                let quota = byName[name]!.descriptor.quota
                return (
                    name,
                    (calls: 0, slotCalls: 0, slotSeconds: 0.0, longest: 0.0, cost: Money.zero, lastEnd: Duration.zero,
                     slotTime: 0.0, quota: quota, slotFree: [Double](repeating: 0, count: max(1, quota.concurrentTasks ?? 1)),
                     greedyEnd: 0.0)
                )
            }
        )
        var unplaced = 0
        var events = Heap<Event>()
        var order = 0
        var running = 0
        var now = Duration.zero
        var lastEnd = Duration.zero
        var rounds = 0
        var samples: [Sample] = []
        let shortestWindow = names.map { byName[$0]!.descriptor.quota.window }.min() ?? .seconds(60)
        // A tenth of the shortest window, and never zero (a window of zero would sample the same moment for ever).
        var interval = max(shortestWindow / 10, .milliseconds(10))
        var nextSample = Duration.zero
        var lastSlotChange = Duration.zero
        var slotsBusy: [String: Int] = [:]
        let maxJobs = configuration.resources.maxConcurrentJobs
        // Calls per user and per project, and every call's time summed: the floors of this process's own limits.
        var userCalls: [String: Int] = [:]
        var projectCalls: [String: Int] = [:]
        var callSeconds = 0.0

        func sample() {
            while now >= nextSample {
                var windowUsed: [String: Int] = [:]
                var slots: [String: Int] = [:]
                for name in names {
                    var provider = state.providers[name]!
                    if let limit = provider.quota.requestsPerMinute {
                        windowUsed[name] = limit - provider.windowRoom(at: nextSample)
                    }
                    slots[name] = provider.slotsInUse
                }
                samples.append(Sample(time: nextSample, windowUsed: windowUsed, slotsInUse: slots))
                nextSample += interval
                if samples.count >= 4_000 {
                    // Keep the timeline short: every other sample, at twice the interval.
                    samples = samples.enumerated().filter { $0.offset % 2 == 0 }.map(\.element)
                    interval = interval * 2
                    nextSample = (samples.last?.time ?? .zero) + interval
                }
            }
        }

        func accountSlots() {
            let span = (now - lastSlotChange).seconds
            if span > 0 {
                for name in names { figures[name]!.slotTime += Double(slotsBusy[name, default: 0]) * span }
            }
            lastSlotChange = now
        }

        while true {
            // Take more of the backlog into view, as the engine's scheduler stage does.
            for kind in GenerationKind.allCases {
                let queue = queues[kind]!
                while state.waitingCount(of: kind) < lookahead, cursor[kind, default: 0] < queue.count {
                    let index = queue[cursor[kind, default: 0]]
                    cursor[kind, default: 0] += 1
                    let request = requests[index]
                    // The engine's own choice of candidates (SchedulerStage).
                    let ranked = AdmissionRequest.candidates(for: request, among: descriptors)
                    guard !ranked.isEmpty else {
                        unplaced += 1
                        continue
                    }
                    state.enqueue(
                        AdmissionRequest(
                            job: JobID("sim-\(index)"),
                            sequence: Int64(index),
                            priority: request.priority,
                            user: request.user,
                            project: request.project,
                            kind: request.kind,
                            providers: ranked
                        ),
                        at: now
                    )
                }
            }
            let round = state.schedule(at: now, jobSlots: maxJobs - running)
            rounds += 1
            if !round.grants.isEmpty { accountSlots() }
            for ticket in round.grants {
                let provider = byName[ticket.provider]!
                let index = Int(ticket.job.rawValue.dropFirst(4))!
                let range = provider.callSeconds[ticket.kind] ?? 1...1
                let unit = Double(rng.next() >> 11) / Double(1 << 53)
                let seconds = range.lowerBound + (range.upperBound - range.lowerBound) * unit
                    + (provider.perMediaSecond[ticket.kind] ?? 0) * requests[index].duration.seconds
                let duration = Duration.milliseconds(Int64((seconds * 1000).rounded()))
                running += 1
                userCalls[requests[index].user, default: 0] += 1
                projectCalls[requests[index].project, default: 0] += 1
                callSeconds += seconds
                // The greedy reference: the k-th call starts no sooner than its window's floor, floor(k / R) * W.
                let quota = provider.descriptor.quota
                let windowFloor = quota.requestsPerMinute.map { limit in
                    Double(figures[ticket.provider]!.calls / limit) * quota.window.seconds
                } ?? 0
                figures[ticket.provider]!.calls += 1
                figures[ticket.provider]!.cost += provider.descriptor.pricing.estimate(requests[index])
                figures[ticket.provider]!.longest = max(figures[ticket.provider]!.longest, seconds)
                if ticket.holdsSlot || (ticket.usesSlot && quota.concurrentTasks != nil) {
                    figures[ticket.provider]!.slotCalls += 1
                    figures[ticket.provider]!.slotSeconds += seconds
                    let free = figures[ticket.provider]!.slotFree
                    let first = free.indices.min { free[$0] < free[$1] }!
                    let end = max(free[first], windowFloor) + seconds
                    figures[ticket.provider]!.slotFree[first] = end
                    figures[ticket.provider]!.greedyEnd = max(figures[ticket.provider]!.greedyEnd, end)
                } else {
                    figures[ticket.provider]!.greedyEnd = max(figures[ticket.provider]!.greedyEnd, windowFloor + seconds)
                }
                if ticket.usesSlot { slotsBusy[ticket.provider, default: 0] += 1 }
                // A task's id comes back at once; a plain call's arrival is its answer.
                let answer = ticket.holdsSlot ? min(duration, .milliseconds(Int64(provider.answerSeconds * 1000))) : duration
                order += 1
                events.insert(Event(time: now + answer, order: order, what: .arrive, ticket: ticket, latency: duration))
                order += 1
                events.insert(Event(time: now + duration, order: order, what: .end, ticket: ticket, latency: duration))
            }
            let backlogLeft = GenerationKind.allCases.contains { cursor[$0, default: 0] < queues[$0]!.count }
            guard let next = [events.min?.time, round.wakeAt].compactMap({ $0 }).min() else {
                // Nothing runs and nothing will: either all is done, or what waits can never be admitted.
                unplaced += state.waitingCount
                if backlogLeft { unplaced += GenerationKind.allCases.reduce(0) { $0 + queues[$1]!.count - cursor[$1, default: 0] } }
                break
            }
            now = max(now, next)
            sample()
            while let first = events.min, first.time <= now {
                let event = events.removeMin()
                switch event.what {
                case .arrive: state.arrived(event.ticket, at: event.time)
                case .end:
                    accountSlots()
                    state.finish(event.ticket, outcome: .succeeded(latency: event.latency), at: event.time)
                    if event.ticket.usesSlot { slotsBusy[event.ticket.provider, default: 0] -= 1 }
                    running -= 1
                    lastEnd = max(lastEnd, event.time)
                    figures[event.ticket.provider]!.lastEnd = event.time
                }
            }
        }
        let makespan = lastEnd
        return Report(
            lines: requests.count,
            unplaced: unplaced,
            makespan: makespan,
            providers: names.map { name in
                let f = figures[name]!
                let window = f.quota.window
                let rate = f.quota.requestsPerMinute.map { limit -> Duration in
                    f.calls > 0 ? window * ((f.calls - 1) / limit) : .zero
                } ?? .zero
                let slots = f.quota.concurrentTasks
                return ProviderFigures(
                    name: name,
                    calls: f.calls,
                    slotCalls: f.slotCalls,
                    windowLimit: f.quota.requestsPerMinute,
                    window: window,
                    slots: slots,
                    rateBound: rate,
                    slotBound: slots.map { Duration.fromSeconds(f.slotSeconds / Double($0)) } ?? .zero,
                    longest: .fromSeconds(f.longest),
                    greedy: max(rate, .fromSeconds(f.greedyEnd)),
                    cost: f.cost,
                    lastEnd: f.lastEnd,
                    slotUtilisation: slots.flatMap { slots in
                        makespan > .zero ? f.slotTime / (Double(slots) * makespan.seconds) : nil
                    }
                )
            },
            floors: Self.floors(
                configuration,
                users: userCalls,
                projects: projectCalls,
                callSeconds: callSeconds
            ),
            cost: figures.values.reduce(Money.zero) { $0 + $1.cost },
            waits: state.waited,
            samples: samples,
            rounds: rounds
        )
    }

    /// The floors that the configuration's own limits set on `users`' and `projects`' calls, and the job slots
    /// on `callSeconds` of calls in all: largest first, only those above zero.
    ///
    /// A user's window of `L` per 60 s lets its `n`-th call in no sooner than `floor((n - 1) / L) * 60 s`; a
    /// project's bucket of `C` refilled at `r` per minute, its `n`-th no sooner than `(n - C) * 60 / r` s; its
    /// burst limit of `B` per window `w`, no sooner than `floor((n - 1) / B) * w` (the cooldowns come on top, and
    /// are not counted: a schedule could keep clear of them); and `J` job slots, each call holding one for its
    /// time, end no sooner than `sum(d) / J`.
    static func floors(
        _ configuration: PargenConfiguration,
        users: [String: Int],
        projects: [String: Int],
        callSeconds: Double
    ) -> [Floor] {
        var floors: [Floor] = []
        let limits = configuration.rateLimits
        if limits.enabled {
            for (user, calls) in users {
                let perMinute = limits.perUserRequestsPerMinute
                floors.append(
                    Floor(
                        limit: "user \(user)'s window (\(perMinute) per 60 s)",
                        floor: .seconds((calls - 1) / perMinute * 60)
                    )
                )
            }
            let refill = GCRA(capacity: limits.tokenBucketCapacity, perMinute: limits.perProjectRequestsPerMinute)
            for (project, calls) in projects {
                floors.append(
                    Floor(
                        limit: "project \(project)'s bucket (\(limits.tokenBucketCapacity), refilled at "
                            + "\(limits.perProjectRequestsPerMinute) per minute)",
                        floor: refill.emissionInterval * max(0, calls - limits.tokenBucketCapacity)
                    )
                )
                floors.append(
                    Floor(
                        limit: "project \(project)'s bursts (\(limits.maxBurst) per \(limits.burstWindow))",
                        floor: limits.burstWindow * ((calls - 1) / limits.maxBurst)
                    )
                )
            }
        }
        let jobSlots = configuration.resources.maxConcurrentJobs
        floors.append(
            Floor(
                limit: "job slots (maxConcurrentJobs \(jobSlots))",
                floor: .fromSeconds(callSeconds / Double(max(1, jobSlots)))
            )
        )
        return floors.filter { $0.floor > .zero }.sorted { ($0.floor, $1.limit) > ($1.floor, $0.limit) }
    }

    /// Indices in the order the store leases them: highest priority first; within a priority, users in turn
    /// (each user's oldest first, users in the order of their oldest job).
    static func storeOrder(_ indices: [Int], _ requests: [ValidatedRequest]) -> [Int] {
        var turn: [String: Int] = [:]
        var first: [String: Int] = [:]
        var keyed: [(priority: Int, turn: Int, first: Int, index: Int)] = []
        keyed.reserveCapacity(indices.count)
        for index in indices {
            let request = requests[index]
            let user = "\(request.priority.rawValue)\u{0}\(request.user)"
            let t = turn[user, default: 0]
            turn[user] = t + 1
            if first[user] == nil { first[user] = index }
            keyed.append((request.priority.rawValue, t, first[user]!, index))
        }
        keyed.sort { ($1.priority, $0.turn, $0.first, $0.index) < ($0.priority, $1.turn, $1.first, $1.index) }
        return keyed.map(\.index)
    }
}
