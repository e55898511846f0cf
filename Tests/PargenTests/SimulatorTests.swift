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
}
