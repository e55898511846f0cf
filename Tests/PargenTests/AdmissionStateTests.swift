import Pargen
import Testing

/// The admission state machine's decisions, made synchronously with explicit time.
@Suite struct AdmissionStateTests {
    /// An OpenAI-like provider: a window of `rate` submissions, `slots` video slots, speech takes none.
    static func mixed(_ name: String, rate: Int, slots: Int, window: Duration = .seconds(60)) -> ProviderAdmission {
        ProviderAdmission(
            name: name,
            quota: ProviderQuota(
                requestsPerMinute: rate,
                concurrentTasks: slots,
                window: window,
                margin: .zero,
                concurrencyKinds: [.video]
            )
        )
    }

    static func state(_ providers: [ProviderAdmission]) -> AdmissionState {
        AdmissionState(providers: providers, clients: ClientLimits(configuration: .unlimited))
    }

    static func request(_ n: Int, _ kind: GenerationKind, _ providers: [String], priority: GenerationPriority = .normal, user: String = "u")
        -> AdmissionRequest
    {
        AdmissionRequest(
            job: JobID("job-\(n)"),
            sequence: Int64(n),
            priority: priority,
            user: user,
            project: "p",
            kind: kind,
            providers: providers
        )
    }

    @Test func aVideoLateInTheBacklogStartsInTheFirstRound() {
        var state = Self.state([Self.mixed("a", rate: 10, slots: 2)])
        for n in 0..<30 { state.enqueue(Self.request(n, .audio, ["a"]), at: .zero) }
        state.enqueue(Self.request(30, .video, ["a"]), at: .zero)
        state.enqueue(Self.request(31, .video, ["a"]), at: .zero)
        let round = state.schedule(at: .zero, jobSlots: 100)
        // Both videos take the two slots; the other 8 submissions of the window go to speech.
        #expect(round.grants.filter { $0.kind == .video }.count == 2)
        #expect(round.grants.count == 10)
        #expect(round.wakeAt == .seconds(60))
    }

    @Test func plainWorkIsSpreadSoThatEveryWindowFills() {
        var state = Self.state([Self.mixed("a", rate: 10, slots: 2), Self.mixed("b", rate: 10, slots: 2)])
        for n in 0..<25 { state.enqueue(Self.request(n, .audio, ["a", "b"]), at: .zero) }
        let round = state.schedule(at: .zero, jobSlots: 100)
        #expect(round.grants.filter { $0.provider == "a" }.count == 10)
        #expect(round.grants.filter { $0.provider == "b" }.count == 10)
        #expect(state.waitingCount == 5)
    }

    @Test func roomIsKeptBackForSlotHoldersThatCanStartWithinTheWindow() {
        // Two slots, both busy, and no task has ended: a task takes at least as long as the oldest running one has
        // run, and room is kept for as many starts as that allows (at most half the window, the guess). Ten videos
        // wait behind them.
        var state = Self.state([Self.mixed("a", rate: 10, slots: 2)])
        for n in 0..<2 { state.enqueue(Self.request(n, .video, ["a"]), at: .zero) }
        #expect(state.schedule(at: .zero, jobSlots: 100).grants.count == 2)
        for n in 2..<12 { state.enqueue(Self.request(n, .video, ["a"]), at: .zero) }
        for n in 12..<40 { state.enqueue(Self.request(n, .audio, ["a"]), at: .zero) }
        // At once, the tasks may end at any moment: the whole window's room (8, and at most 9) waits for videos.
        #expect(state.providers["a"]!.keepBack(waiting: 10, at: .zero) == 9)
        let held = state.schedule(at: .zero, jobSlots: 100)
        #expect(held.grants.isEmpty)
        // Nothing polls: the round is decided again when a call starts or ends, and at the latest when the window's
        // first submission leaves it (a 250 ms poll took 2.8 times the rounds of a 100,000-line simulation).
        #expect(held.wakeAt == .seconds(60))
        // After 20 s, a task takes 20 s or more: each slot starts at most 3 in the next 60 s, so 6 are kept.
        #expect(state.providers["a"]!.keepBack(waiting: 10, at: .seconds(20)) == 6)
        let later = state.schedule(at: .seconds(20), jobSlots: 100)
        #expect(later.grants.count == 8 - 6 && later.grants.allSatisfy { $0.kind == .audio })
        // After 40 s the guess (30 s) is the shorter: each slot frees now at the earliest and starts 2, so 4.
        #expect(state.providers["a"]!.keepBack(waiting: 10, at: .seconds(40)) == 4)
        #expect(state.schedule(at: .seconds(40), jobSlots: 100).grants.count == 6 - 4)
    }

    /// Until a task has ended at a provider, its task time is known only to be at least as long as the oldest
    /// running task has run, and room is kept for as many starts as that allows; the expected task time caps it.
    /// With an expected 150 s against a 60 s window and tasks of 5 to 10 s, a guess alone kept room for four
    /// videos, speech took the rest of the first window, and the other sixteen videos went out in the second
    /// (`pargen simulate`: 90.0 s against a bound of 60.0 s; 69.9 s with this rule, as with the right guess).
    /// Once a task has ended, its time is known and counts.
    @Test func untilATaskHasEndedEachRunningTaskMayEndWithinTheWindow() {
        let provider = ProviderAdmission(
            name: "a",
            quota: ProviderQuota(
                requestsPerMinute: 100,
                concurrentTasks: 2,
                window: .seconds(60),
                margin: .zero,
                concurrencyKinds: [.video],
                expectedTaskTime: .seconds(150)
            )
        )
        var state = Self.state([provider])
        for n in 0..<2 { state.enqueue(Self.request(n, .video, ["a"]), at: .zero) }
        let started = state.schedule(at: .zero, jobSlots: 100).grants
        #expect(started.count == 2)
        #expect(state.providers["a"]!.keepBack(waiting: 10, at: .zero) == 10)
        // 25 s in, a task takes 25 s or more: each slot starts at most ceil(60 / 25) = 3 more.
        #expect(state.providers["a"]!.keepBack(waiting: 10, at: .seconds(25)) == 6)
        // 100 s in, at most one each.
        #expect(state.providers["a"]!.keepBack(waiting: 10, at: .seconds(100)) == 2)
        // One task ends after 150 s: the other, started at the same time, is expected to end now too, and the free
        // slot starts one in the window.
        state.finish(started[0], outcome: .succeeded(latency: .seconds(150)), at: .seconds(150))
        #expect(state.providers["a"]!.taskSeconds == 150)
        #expect(state.providers["a"]!.keepBack(waiting: 10, at: .seconds(150)) == 2)
        // Later, a task started now is expected to end after the window: only the free slot starts one.
        state.enqueue(Self.request(2, .video, ["a"]), at: .seconds(150))
        let again = state.schedule(at: .seconds(150), jobSlots: 100).grants
        #expect(again.count == 1)
        state.finish(started[1], outcome: .succeeded(latency: .seconds(150)), at: .seconds(150))
        #expect(state.providers["a"]!.keepBack(waiting: 10, at: .seconds(150)) == 1)
    }

    /// A project held back by its bucket holds back every job of it: the round stops at the first such job
    /// instead of asking again for each of the thousand users waiting behind it (5,000 lines from as many users
    /// took 77 s to simulate, one round per bucket token each walking the whole backlog). Another project's jobs
    /// behind them still go.
    @Test func aProjectHeldBackByItsBucketEndsTheRoundOnlyWhenEveryProjectIs() {
        let limits = PargenConfiguration.RateLimits(
            perUserRequestsPerMinute: 1_000,
            perProjectRequestsPerMinute: 60,
            tokenBucketCapacity: 10,
            maxBurst: 100_000
        )
        func job(_ n: Int, project: String) -> AdmissionRequest {
            AdmissionRequest(
                job: JobID("job-\(n)"), sequence: Int64(n), priority: .normal, user: "user\(n)", project: project,
                kind: .audio, providers: ["a"]
            )
        }
        var state = AdmissionState(providers: [Self.mixed("a", rate: 100_000, slots: 5)], clients: ClientLimits(configuration: limits))
        for n in 0..<1_000 { state.enqueue(job(n, project: "p"), at: .zero) }
        let first = state.schedule(at: .zero, jobSlots: 10_000)
        #expect(first.grants.count == 10)
        #expect(state.denied[.projectBucket] == 1)
        // A token a second: one more a second later, and again one refusal.
        #expect(state.schedule(at: .seconds(1), jobSlots: 10_000).grants.map(\.job) == [JobID("job-10")])
        #expect(state.denied[.projectBucket] == 2)

        // With a second project waiting behind them, its jobs go in the same round.
        for n in 1_000..<1_003 { state.enqueue(job(n, project: "q"), at: .seconds(1)) }
        let mixed = state.schedule(at: .seconds(1), jobSlots: 10_000)
        #expect(mixed.grants.map(\.job) == [JobID("job-1000"), JobID("job-1001"), JobID("job-1002")])
        #expect(state.waitingCount == 989)
    }

    /// A pass stops once every provider its jobs can use is closed, not only once every provider is: a thousand
    /// videos that only `a` takes, its two slots busy, cost one look per round while `b` has room. Each round
    /// walked all of them (a provider none of them could use was never closed), and a 100,000-line campaign of
    /// such videos took 43 s to simulate, one walk of up to 5,000 videos per task that ended.
    @Test func aPassStopsOnceEveryProviderItsJobsCanUseIsClosed() {
        var state = Self.state([Self.mixed("a", rate: 10_000, slots: 2), Self.mixed("b", rate: 10_000, slots: 2)])
        for n in 0..<1_000 { state.enqueue(Self.request(n, .video, ["a"], user: "user\(n % 10)"), at: .zero) }
        let first = state.schedule(at: .zero, jobSlots: 10_000)
        #expect(first.grants.map(\.provider) == ["a", "a"])
        // The third video finds no slot at a, and that ends the pass.
        #expect(state.denied.values.reduce(0, +) == 1)
        #expect(state.schedule(at: .seconds(1), jobSlots: 10_000).grants.isEmpty)
        #expect(state.denied.values.reduce(0, +) == 2)
        // Speech that b can take still goes there in the same round, and the videos still wait for a alone.
        state.enqueue(Self.request(1_000, .audio, ["a", "b"]), at: .seconds(1))
        state.enqueue(Self.request(1_001, .video, ["b"]), at: .seconds(1))
        let mixed = state.schedule(at: .seconds(2), jobSlots: 10_000)
        #expect(Set(mixed.grants.map(\.job)) == [JobID("job-1000"), JobID("job-1001")])
        #expect(mixed.grants.first { $0.job == JobID("job-1001") }?.provider == "b")
        // When a slot at a frees, the next video takes it.
        state.finish(first.grants[0], outcome: .succeeded(latency: .seconds(2)), at: .seconds(2))
        #expect(state.schedule(at: .seconds(2), jobSlots: 10_000).grants.map(\.job) == [JobID("job-2")])
        #expect(state.waitingCount == 997)
    }

    /// A user whose every waiting job can only go to providers already closed in this pass is passed over after
    /// one look, not walked job by job: ten users with a hundred jobs each for `a` (its window full) cost ten
    /// looks a round while another user's jobs for `b` go. Each round walked all thousand (40,000 lines pinned to
    /// a slow and a fast provider took 44 s to simulate).
    @Test func aUserWhoseEveryProviderIsClosedIsPassedOverAfterOneLook() {
        var state = Self.state([Self.mixed("a", rate: 10, slots: 2), Self.mixed("b", rate: 1_000, slots: 2)])
        for n in 0..<1_000 { state.enqueue(Self.request(n, .audio, ["a"], user: "user\(n % 5)"), at: .zero) }
        for n in 1_000..<1_500 { state.enqueue(Self.request(n, .audio, ["b"], user: "zed"), at: .zero) }
        let first = state.schedule(at: .zero, jobSlots: 10_000)
        #expect(first.grants.filter { $0.provider == "a" }.count == 10)
        #expect(first.grants.filter { $0.provider == "b" }.count == 500)
        #expect(state.denied.values.reduce(0, +) <= 10)
        // More for b: a's users are looked at once each, and b takes the new jobs.
        for n in 1_500..<1_600 { state.enqueue(Self.request(n, .audio, ["b"], user: "zed"), at: .seconds(1)) }
        let looked = state.denied.values.reduce(0, +)
        #expect(state.schedule(at: .seconds(1), jobSlots: 10_000).grants.count == 100)
        #expect(state.denied.values.reduce(0, +) - looked <= 10)
        // A user with a job for an open provider behind those for a closed one still has it taken.
        state.enqueue(Self.request(2_000, .audio, ["b"], user: "user0"), at: .seconds(2))
        #expect(state.schedule(at: .seconds(2), jobSlots: 10_000).grants.map(\.job) == [JobID("job-2000")])
        // When a's window opens, its next ten go, two per user: the second of each was never looked at (its
        // user was passed over), and still waited the window out.
        for ticket in first.grants where ticket.provider == "a" { state.arrived(ticket, at: .zero) }
        let reopened = state.schedule(at: .seconds(60), jobSlots: 10_000)
        #expect(reopened.grants.count == 10)
        #expect(reopened.waits.count == 10)
        #expect(reopened.waits.values.allSatisfy { $0.limit == .providerQuota && $0.waited == .seconds(60) }, "\(reopened.waits)")
    }

    /// The time jobs wait is counted for every job, not only for those a round looked at: speech behind a full
    /// window, whose pass stops at the first refusal, still waited the window out. Only the first of them was
    /// counted (60 s where ten jobs waited 600 s), and `pargen simulate` put 43.5 s against the window where its
    /// jobs waited 13,800 s.
    @Test func everyWaitingJobsTimeIsCountedAgainstWhatHeldItBack() {
        var state = Self.state([Self.mixed("a", rate: 10, slots: 2)])
        for n in 0..<30 { state.enqueue(Self.request(n, .audio, ["a"]), at: .zero) }
        let first = state.schedule(at: .zero, jobSlots: 100)
        #expect(first.grants.count == 10)
        for ticket in first.grants { state.arrived(ticket, at: .zero) }
        let second = state.schedule(at: .seconds(60), jobSlots: 100)
        #expect(second.grants.count == 10)
        #expect(state.waited[.providerQuota] == .seconds(600))
        // Each granted job says how long it waited and for what.
        #expect(second.waits.values.allSatisfy { $0.limit == .providerQuota && $0.waited == .seconds(60) })
        #expect(second.waits.count == 10)
    }

    @Test func strictPriorityAndUsersTakeTurnsWithinAPriority() {
        var state = Self.state([Self.mixed("a", rate: 4, slots: 1)])
        for n in 0..<4 { state.enqueue(Self.request(n, .audio, ["a"], user: "ann"), at: .zero) }
        state.enqueue(Self.request(10, .audio, ["a"], user: "ben"), at: .zero)
        state.enqueue(Self.request(11, .audio, ["a"], priority: .urgent, user: "cat"), at: .zero)
        let jobs = state.schedule(at: .zero, jobSlots: 100).grants.map(\.job.rawValue)
        #expect(jobs == ["job-11", "job-0", "job-10", "job-1"])
    }

    /// Turns carry over between rounds: with room for one job a round, three users are served in turn, not the
    /// first user every round (which starved the last users of a project whose bucket bound, and left them the
    /// campaign's last calls a minute later, when their user windows reopened).
    @Test func usersTakeTurnsAcrossRoundsNotOnlyWithinOne() {
        var state = Self.state([Self.mixed("a", rate: 100, slots: 10)])
        var owner: [String: String] = [:]
        for (index, user) in ["ann", "ben", "cat"].enumerated() {
            for n in 0..<3 {
                let number = index * 10 + n
                state.enqueue(Self.request(number, .audio, ["a"], user: user), at: .zero)
                owner["job-\(number)"] = user
            }
        }
        var served: [String] = []
        for round in 0..<9 {
            let grants = state.schedule(at: .seconds(round), jobSlots: 1).grants
            served += grants.map { owner[$0.job.rawValue]! }
        }
        #expect(served == ["ann", "ben", "cat", "ann", "ben", "cat", "ann", "ben", "cat"])
    }

    @Test func aResumedTaskTakesASlotButNoWindowRoom() {
        var state = Self.state([Self.mixed("a", rate: 1, slots: 2)])
        state.enqueue(Self.request(0, .audio, ["a"]), at: .zero)
        #expect(state.schedule(at: .zero, jobSlots: 10).grants.count == 1)
        var resumed = Self.request(1, .video, ["a"])
        resumed.submits = false
        state.enqueue(resumed, at: .zero)
        let round = state.schedule(at: .zero, jobSlots: 10)
        #expect(round.grants.map(\.job) == [JobID("job-1")])
    }

    @Test func aCallNeverMadeGivesItsWindowRoomBackAndAThrottleCoolsTheProviderDown() {
        var state = Self.state([Self.mixed("a", rate: 1, slots: 2)])
        state.enqueue(Self.request(0, .audio, ["a"]), at: .zero)
        let first = state.schedule(at: .zero, jobSlots: 10).grants[0]
        state.finish(first, outcome: .notCalled, at: .seconds(1))
        state.enqueue(Self.request(1, .audio, ["a"]), at: .seconds(1))
        let second = state.schedule(at: .seconds(1), jobSlots: 10).grants
        #expect(second.count == 1)
        state.finish(second[0], outcome: .throttled(retryAfter: .seconds(5)), at: .seconds(2))
        #expect(state.cooldownEnd("a", at: .seconds(2)) == .seconds(7))
    }

    /// A throttled provider takes fewer calls at once (its adaptive limit halves) and grows back on success.
    @Test func aThrottledProviderTakesFewerCallsAtOnceAndGrowsBack() {
        var provider = ProviderAdmission(name: "p", quota: ProviderQuota(concurrentTasks: 4))
        for ticket in 1...4 { provider.admit(ticket: UInt64(ticket), usesSlot: true, holdsSlot: false, needsWindow: false, at: .zero) }
        #expect(provider.check(usesSlot: true, needsWindow: false, at: .zero) == .slots)
        provider.finish(ticket: 1, usesSlot: true, outcome: .throttled(retryAfter: .seconds(1)), at: .zero)
        #expect(provider.adaptive.current == 2)
        #expect(provider.check(usesSlot: true, needsWindow: false, at: .seconds(2)) == .slots, "3 running, limit 2")
        for ticket in 2...4 {
            provider.finish(ticket: UInt64(ticket), usesSlot: true, outcome: .succeeded(latency: .seconds(1)), at: .seconds(2))
        }
        #expect(provider.freeSlots >= 2)
        for _ in 0..<6 {
            provider.admit(ticket: 9, usesSlot: true, holdsSlot: false, needsWindow: false, at: .seconds(3))
            provider.finish(ticket: 9, usesSlot: true, outcome: .succeeded(latency: .seconds(1)), at: .seconds(3))
        }
        #expect(provider.adaptive.current == 4)
    }

    @Test func noMoreJobsStartThanThereAreJobSlots() {
        var state = Self.state([Self.mixed("a", rate: 100, slots: 5)])
        for n in 0..<20 { state.enqueue(Self.request(n, .audio, ["a"]), at: .zero) }
        #expect(state.schedule(at: .zero, jobSlots: 3).grants.count == 3)
    }

    /// Random backlogs, providers and times; after every round the rule's invariants hold:
    /// - room kept back never exceeds the slot-holding jobs waiting that could use it;
    /// - with a slot free, window room left and a slot-holding job waiting for that provider, the slot is not idle;
    /// - with window room left beyond what is kept back and plain work waiting for that provider, the window is
    ///   not idle;
    /// - a job waiting holds no slot: slots in use equal the slot-using tickets out.
    @Test(arguments: Array(UInt64(1)...UInt64(40)))
    func theRuleHoldsOnRandomBacklogs(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        func roll(_ n: Int) -> Int { Int(rng.next() % UInt64(n)) }
        let names = ["a", "b", "c"].prefix(1 + roll(3))
        var state = Self.state(
            names.map { Self.mixed($0, rate: 2 + roll(30), slots: 1 + roll(6), window: .seconds(Int64(5 + roll(60)))) }
        )
        var tickets: [AdmissionTicket] = []
        var now = Duration.zero
        var next = 0
        for _ in 0..<60 {
            for _ in 0..<roll(12) {
                let kind: GenerationKind = roll(3) == 0 ? .video : .audio
                let some = names.filter { _ in roll(2) == 0 }
                let providers = some.isEmpty ? [names.first!] : Array(some)
                state.enqueue(
                    Self.request(next, kind, providers, priority: GenerationPriority.allCases[roll(4)], user: "u\(roll(3))"),
                    at: now
                )
                next += 1
            }
            let round = state.schedule(at: now, jobSlots: 1_000)
            tickets += round.grants
            for name in names {
                var provider = state.providers[name]!
                let waitingVideos = state.waiting(for: name, kind: .video)
                let waitingSpeech = state.waiting(for: name, kind: .audio)
                let keep = provider.keepBack(waiting: waitingVideos, at: now)
                #expect(keep <= waitingVideos)
                let room = provider.windowRoom(at: now)
                let coolingDown = state.cooldownEnd(name, at: now) != nil
                if !coolingDown && waitingVideos > 0 && provider.freeSlots > 0 {
                    #expect(room == 0, "seed \(seed): \(name) has a free slot and window room while a video waits")
                }
                if !coolingDown && waitingSpeech > 0 {
                    #expect(room <= keep, "seed \(seed): \(name) has room \(room) beyond \(keep) kept while speech waits")
                }
                let using = tickets.filter { $0.provider == name && $0.usesSlot }.count
                #expect(provider.slotsInUse == using)
            }
            // Time passes; some calls end, some throttled.
            now += .milliseconds(Int64(100 + roll(20_000)))
            tickets.shuffle(using: &rng)
            let ending = roll(tickets.count + 1)
            for ticket in tickets.prefix(ending) {
                let outcome: ProviderAdmission.Outcome =
                    roll(20) == 0 ? .throttled(retryAfter: .seconds(2)) : .succeeded(latency: .seconds(1))
                state.arrived(ticket, at: now)
                state.finish(ticket, outcome: outcome, at: now)
            }
            tickets.removeFirst(ending)
        }
    }
}

extension AdmissionState {
    /// Waiting jobs that could go to `provider`, of `kind`.
    func waiting(for provider: String, kind: GenerationKind) -> Int {
        waitingRequests.filter { $0.kind == kind && $0.providers.contains(provider) }.count
    }
}
