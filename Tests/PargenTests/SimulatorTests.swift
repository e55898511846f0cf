import Foundation
import Pargen
import Testing

/// The simulator runs the engine's own scheduler on a virtual clock; these check what it predicts on shapes whose
/// floor is known, and so check the scheduling rule end to end without a real clock.
@Suite struct SimulatorTests {
    static func provider(_ name: String, rate: Int, slots: Int, window: Duration, task: ClosedRange<Double>)
        -> CampaignSimulator.Provider
    {
        CampaignSimulator.Provider(
            descriptor: ProviderDescriptor(
                name: name,
                capabilities: ProviderCapabilities(
                    kinds: [.audio, .video],
                    audioFormats: [.mp3, .wav],
                    videoFormats: [.mp4, .gif],
                    maxResolution: .p1080
                ),
                pricing: ProviderPricing(perRequest: .cents(1)),
                quota: ProviderQuota(
                    requestsPerMinute: rate,
                    concurrentTasks: slots,
                    window: window,
                    concurrencyKinds: [.video],
                    expectedTaskTime: .milliseconds(Int64((task.lowerBound + task.upperBound) / 2 * 1000))
                )
            ),
            callSeconds: [.audio: 0.01...0.05, .video: task],
            answerSeconds: 0.03
        )
    }

    static func campaign(speech: Int, videos: Int, videosLast: Bool, providers: [String]) throws -> [ValidatedRequest] {
        let validator = RequestValidator(configuration: .init())
        var requests: [GenerationRequest] = []
        for name in providers {
            for i in 0..<speech { requests.append(.audio(prompt: "\(name) line \(i)", provider: name)) }
        }
        var clips: [GenerationRequest] = []
        for name in providers {
            for i in 0..<videos { clips.append(.video(prompt: "\(name) clip \(i)", duration: .seconds(4), provider: name)) }
        }
        requests = videosLast ? requests + clips : clips + requests
        return try requests.enumerated().map { try validator.validate($0.element, fallbackID: "r\($0.offset)") }
    }

    static var configuration: PargenConfiguration {
        PargenConfiguration(
            rateLimits: .unlimited,
            resources: .init(maxAPICalls: 4000, maxConcurrentJobs: 4000, minimumFraction: 1)
        )
    }

    @Test func aSpeechBoundCampaignEndsAtItsBound() throws {
        let requests = try Self.campaign(speech: 500, videos: 0, videosLast: true, providers: ["a", "b"])
        let providers = ["a", "b"].map { Self.provider($0, rate: 200, slots: 5, window: .seconds(60), task: 3...4) }
        let report = CampaignSimulator(configuration: Self.configuration, providers: providers).run(requests)
        #expect(report.unplaced == 0)
        #expect(report.providers.map(\.calls) == [500, 500])
        // Two full windows of 200 and a third for the last 100: the bound is 120 s.
        #expect(report.bound == .seconds(120))
        #expect(report.makespan >= report.bound && report.makespan.seconds <= report.bound.seconds * 1.01)
    }

    /// Videos after the speech in the file still start in the first window: the scheduler sees each kind's
    /// queue, starts slot holders first and keeps room for the ones that can start within the window.
    @Test(arguments: [true, false])
    func videosAnywhereInTheFileFinishNearTheBound(videosLast: Bool) throws {
        let requests = try Self.campaign(speech: 300, videos: 20, videosLast: videosLast, providers: ["a", "b"])
        let providers = ["a", "b"].map { Self.provider($0, rate: 200, slots: 5, window: .seconds(10), task: 3.0...3.6) }
        let report = CampaignSimulator(configuration: Self.configuration, providers: providers).run(requests)
        #expect(report.unplaced == 0)
        #expect(report.makespan.seconds <= report.bound.seconds * 1.05, "\(report.makespan) against \(report.bound)")
    }

    @Test func aJobNoProviderCanTakeIsCountedAndTheRestRun() throws {
        var requests = try Self.campaign(speech: 3, videos: 0, videosLast: true, providers: ["a"])
        requests[1].provider = "nobody"
        let report = CampaignSimulator(
            configuration: Self.configuration,
            providers: [Self.provider("a", rate: 10, slots: 1, window: .seconds(60), task: 1...2)]
        ).run(requests)
        #expect(report.unplaced == 1)
        #expect(report.providers[0].calls == 2)
    }

    static func speech(_ count: Int, user: String = "u") throws -> [ValidatedRequest] {
        let validator = RequestValidator(configuration: .init())
        return try (0..<count).map { try validator.validate(.audio(prompt: "line \($0)", user: user), fallbackID: "r\($0)") }
    }

    /// The bound is every limit's floor, not only the providers' windows and slots: the longest call (a campaign
    /// no window binds ended at 6 s against a bound of 0 s, reported as a ratio of 1.000), a user's window, and the
    /// job slots; and the report names the one that sets it.
    @Test func theBoundCountsEveryLimitAndNamesTheOneThatSetsIt() throws {
        var slow = Self.provider("a", rate: 1000, slots: 5, window: .seconds(60), task: 1...1)
        slow.callSeconds[.audio] = 5...5
        let alone = CampaignSimulator(configuration: Self.configuration, providers: [slow]).run(try Self.speech(3))
        #expect(alone.bound == .seconds(5))
        #expect(alone.boundSetBy == "provider a")
        #expect(alone.makespan >= alone.bound && alone.makespan <= .seconds(6))

        // One user at 60 per minute: 241 calls need four more windows after the first, whatever the provider allows.
        var limited = Self.configuration
        limited.rateLimits = .init(
            perUserRequestsPerMinute: 60,
            perProjectRequestsPerMinute: 100_000,
            tokenBucketCapacity: 100_000,
            maxBurst: 100_000
        )
        let fast = Self.provider("a", rate: 1000, slots: 5, window: .seconds(60), task: 1...1)
        let user = CampaignSimulator(configuration: limited, providers: [fast]).run(try Self.speech(241, user: "solo"))
        #expect(user.bound == .seconds(240))
        #expect(user.boundSetBy == "user solo's window (60 per 60 s)")
        #expect(user.makespan >= user.bound && user.makespan.seconds <= 241)

        // Ten job slots, a hundred calls of 2 s: 20 s at the least.
        var slots = Self.configuration
        slots.resources = .init(maxAPICalls: 10, maxConcurrentJobs: 10, minimumFraction: 1)
        var even = fast
        even.callSeconds[.audio] = 2...2
        let jobs = CampaignSimulator(configuration: slots, providers: [even]).run(try Self.speech(100))
        #expect(jobs.bound == .seconds(20))
        #expect(jobs.boundSetBy == "job slots (maxConcurrentJobs 10)")
        #expect(jobs.makespan >= jobs.bound && jobs.makespan.seconds <= 21)
    }

    /// The greedy reference keeps each call's window floor: speech that holds one of five slots (as ElevenLabs
    /// counts it), 100 per 60 s, 300 calls of 2 s: each window's 100 calls take 40 s on the slots, from 0, 60 and
    /// 120 s, so 160 s, where the window floor and the slots apart said 120 s.
    @Test func theGreedyReferenceKeepsEachCallsWindowFloor() throws {
        var speechSlots = Self.provider("a", rate: 100, slots: 5, window: .seconds(60), task: 2...2)
        speechSlots.descriptor.quota.concurrencyKinds = [.audio, .video]
        speechSlots.callSeconds[.audio] = 2...2
        let report = CampaignSimulator(configuration: Self.configuration, providers: [speechSlots]).run(try Self.speech(300))
        #expect(report.bound == .seconds(120))
        #expect(report.greedy == .seconds(160))
        #expect(report.makespan >= report.greedy && report.makespan.seconds <= 160 * 1.05, "\(report.makespan)")
    }

    /// A forecast runs one simulation per draw, the `i`-th with seed `seed + i`, and names the median one: a few
    /// long tasks (twelve videos of 20 to 60 s on five slots) spread their makespan across draws, and the forecast
    /// shows that spread instead of one draw.
    @Test func aForecastIsTheMedianOfItsDrawsWithTheirRange() throws {
        let requests = try Self.campaign(speech: 30, videos: 12, videosLast: true, providers: ["a"])
        let simulator = CampaignSimulator(
            configuration: Self.configuration,
            providers: [Self.provider("a", rate: 200, slots: 5, window: .seconds(60), task: 20...60)],
            seed: 7
        )
        let forecast = simulator.forecast(requests, draws: 9)
        // Each draw is the simulation with its own seed, run alone.
        let alone = (0..<9).map { i -> Duration in
            var one = simulator
            one.seed = 7 + UInt64(i)
            return one.run(requests).makespan
        }
        #expect(forecast.makespans == alone)
        #expect(Set(alone).count > 1, "the draws differ: \(alone)")
        // The median: four draws at or below it, four at or above, and its report is that draw's.
        let median = forecast.median.makespan
        #expect(alone.sorted()[4] == median)
        #expect(alone[Int(forecast.medianSeed - 7)] == median)
        #expect(forecast.range == alone.min()!...alone.max()!)
        #expect(forecast.median.providers == { var one = simulator; one.seed = forecast.medianSeed; return one.run(requests) }().providers)
        // The same seed gives the same forecast.
        #expect(simulator.forecast(requests, draws: 9).makespans == forecast.makespans)
    }

    /// Call times that cannot vary give one makespan whatever the draw; one draw is the plain simulation.
    @Test func aForecastOfFixedCallTimesHasNoSpread() throws {
        let requests = try Self.campaign(speech: 100, videos: 10, videosLast: false, providers: ["a"])
        var fixed = Self.provider("a", rate: 50, slots: 3, window: .seconds(10), task: 4...4)
        fixed.callSeconds[.audio] = 0.02...0.02
        fixed.answerSeconds = 0.02
        let simulator = CampaignSimulator(configuration: Self.configuration, providers: [fixed])
        let forecast = simulator.forecast(requests, draws: 5)
        #expect(forecast.range.lowerBound == forecast.range.upperBound)
        #expect(forecast.median.makespan == simulator.run(requests).makespan)
        #expect(simulator.forecast(requests, draws: 1).makespans == [simulator.run(requests).makespan])
    }
}
