import Foundation
import Pargen

/// The scheduling matrix, through `pargen simulate`'s simulator (the engine's own admission state machine on a
/// virtual clock): campaign shapes nobody tuned for, each against the floor its quotas set and against a gap-free
/// greedy schedule of the same calls.
///
/// For each shape: makespan / bound, where the bound is `max(floor((N - 1) / R) * W, sum(d) / C, max d)` per
/// provider (for work any provider can take, the providers pooled: `R` and `C` summed), and makespan / greedy,
/// where the greedy schedule puts each slot-holding call, in the order admitted, on the slot that frees first,
/// with no gap, under the same window floor.
enum MatrixBench {
    struct Shape {
        enum Order { case interleaved, videosFirst, videosLast }
        var name: String
        var providers = 2
        var speech = 0
        var videos = 0
        var window: Duration = .seconds(60)
        var rate = 200
        var slots = 5
        /// Video task times in seconds.
        var tasks: ClosedRange<Double> = 20...60
        var order = Order.interleaved
        /// Lines name their provider (round-robin); otherwise any provider may take them.
        var pinned = true
        var mixedPriorities = false
        /// The first provider's prices are a tenth of the others'.
        var oneCheap = false
        var users = 8
        /// Speech call times in seconds.
        var speechSeconds: ClosedRange<Double> = 0.01...0.05
        /// Speech holds one of the slots too (ElevenLabs and Azure count every request).
        var speechHoldsSlots = false
        /// Each provider's window, when they differ (`window` otherwise).
        var windows: [Duration]? = nil
        /// Run with the default configuration's own limits (user windows, project bucket and bursts, 50 job
        /// slots) instead of none.
        var defaultLimits = false
    }

    static let shapes: [Shape] = [
        Shape(name: "speech, 1 provider", providers: 1, speech: 1_000),
        Shape(name: "speech, 2 providers, any", speech: 1_000, pinned: false),
        Shape(name: "video only, 3 providers, long", providers: 3, videos: 100),
        Shape(name: "video only, 3 providers, short", providers: 3, videos: 100, tasks: 2...8),
        Shape(name: "mixed, 3 providers, interleaved, short", providers: 3, speech: 1_000, videos: 100, tasks: 2...8),
        Shape(name: "mixed, 2 providers, videos last, long", speech: 600, videos: 40, order: .videosLast),
        Shape(name: "mixed, 2 providers, videos first, long", speech: 600, videos: 40, order: .videosFirst),
        Shape(
            name: "mixed, 2 providers, videos last, short, 10 s window",
            speech: 600,
            videos: 80,
            window: .seconds(10),
            tasks: 0.33...1.33,
            order: .videosLast
        ),
        Shape(
            name: "mixed, 1 provider, videos last, long, 10 s window",
            providers: 1,
            speech: 300,
            videos: 12,
            window: .seconds(10),
            tasks: 3.3...10,
            order: .videosLast
        ),
        Shape(name: "small: 20 lines, no window binds", speech: 16, videos: 4, tasks: 2...8),
        Shape(name: "10,000 lines, 3 providers", providers: 3, speech: 9_000, videos: 1_000, rate: 500, slots: 10),
        Shape(name: "mixed priorities", speech: 1_000, videos: 70, tasks: 18...22, mixedPriorities: true),
        Shape(name: "one provider ten times cheaper, any", speech: 1_000, videos: 60, pinned: false, oneCheap: true),
        Shape(name: "equal task times (30 s)", speech: 600, videos: 60, tasks: 30...30),
        // The quota benchmark's own shapes, on a 60 s window.
        Shape(name: "quota bench: speech", speech: 1_000, tasks: 18...21.6),
        Shape(name: "quota bench: video", providers: 3, videos: 100, tasks: 18...21.6),
        Shape(name: "quota bench: mixed", providers: 3, speech: 1_000, videos: 100, tasks: 18...21.6),
        // Shapes added after the bound learned this process's own limits.
        Shape(name: "speech holds slots (ElevenLabs-style), 1 provider, calls 1-4 s", providers: 1, speech: 300,
              rate: 100, speechSeconds: 1...4, speechHoldsSlots: true),
        Shape(name: "speech, 2 providers, windows 10 s and 60 s, any, calls 1-3 s", speech: 600, rate: 300,
              pinned: false, speechSeconds: 1...3, windows: [.seconds(10), .seconds(60)]),
        Shape(name: "speech, 1 provider, calls 2-6 s, 50 job slots", providers: 1, speech: 300, rate: 300,
              speechSeconds: 2...6, defaultLimits: true),
        Shape(name: "speech, 1 provider, default limits, 8 users", providers: 1, speech: 600, rate: 1_000,
              defaultLimits: true),
        Shape(name: "one line", providers: 1, speech: 1, speechSeconds: 2...2),
    ]

    static func provider(_ index: Int, _ shape: Shape) -> CampaignSimulator.Provider {
        let price = shape.oneCheap && index == 0 ? 1 : 10
        // The per-window limit of the 10 s provider in a pair of unequal windows is a sixth of the other's.
        let window = shape.windows?[index] ?? shape.window
        let rate = shape.windows == nil ? shape.rate : max(1, Int(Double(shape.rate) * window.seconds / 60))
        return CampaignSimulator.Provider(
            descriptor: ProviderDescriptor(
                name: "p\(index)",
                capabilities: ProviderCapabilities(
                    kinds: [.audio, .video],
                    audioFormats: [.mp3],
                    videoFormats: [.mp4],
                    maxResolution: .p1080
                ),
                pricing: ProviderPricing(perRequest: Money(nanos: Int64(price) * 1_000_000)),
                quota: ProviderQuota(
                    requestsPerMinute: rate,
                    concurrentTasks: shape.slots,
                    window: window,
                    concurrencyKinds: shape.speechHoldsSlots ? [.audio, .video] : [.video],
                    expectedTaskTime: .milliseconds(Int64((shape.tasks.lowerBound + shape.tasks.upperBound) / 2 * 1000))
                )
            ),
            callSeconds: [.audio: shape.speechSeconds, .video: shape.tasks],
            answerSeconds: 0.03
        )
    }

    static func requests(_ shape: Shape) throws -> [ValidatedRequest] {
        let validator = RequestValidator(configuration: .init())
        var speech: [GenerationRequest] = []
        var videos: [GenerationRequest] = []
        func priority(_ i: Int) -> GenerationPriority { shape.mixedPriorities ? GenerationPriority.allCases[i % 4] : .normal }
        func provider(_ i: Int) -> String? { shape.pinned ? "p\(i % shape.providers)" : nil }
        for i in 0..<shape.speech {
            speech.append(
                .audio(prompt: "line \(i)", priority: priority(i), provider: provider(i), user: "u\(i % shape.users)")
            )
        }
        for i in 0..<shape.videos {
            videos.append(
                .video(
                    prompt: "clip \(i)",
                    priority: priority(i),
                    duration: .seconds(4),
                    provider: provider(i),
                    user: "u\(i % shape.users)"
                )
            )
        }
        var lines: [GenerationRequest]
        switch shape.order {
        case .videosFirst: lines = videos + speech
        case .videosLast: lines = speech + videos
        case .interleaved:
            lines = []
            let every = max(1, (speech.count + videos.count) / max(1, videos.count))
            var v = videos[...]
            for (i, line) in speech.enumerated() {
                if i % every == 0, let next = v.popFirst() { lines.append(next) }
                lines.append(line)
            }
            lines += v
        }
        return try lines.enumerated().map { try validator.validate($0.element, fallbackID: "l\($0.offset)") }
    }

    /// Prints the matrix; returns whether every shape ran every line.
    static func run(lines hundredThousand: Int) throws -> Bool {
        var configuration = PargenConfiguration(
            rateLimits: .unlimited,
            resources: .init(maxAPICalls: 100_000, maxConcurrentJobs: 100_000, minimumFraction: 1)
        )
        configuration.caching.enabled = false
        var defaults = PargenConfiguration()
        defaults.caching.enabled = false
        print("shape | lines | makespan s | bound s | makespan/bound | greedy s | makespan/greedy | simulated in s | bound set by")
        var clean = true
        for shape in shapes {
            let requests = try requests(shape)
            let providers = (0..<shape.providers).map { provider($0, shape) }
            let started = ContinuousClock.now
            let report = CampaignSimulator(
                configuration: shape.defaultLimits ? defaults : configuration,
                providers: providers,
                seed: 7
            ).run(requests)
            let took = (ContinuousClock.now - started).seconds
            var bound = report.bound.seconds
            var setBy = report.boundSetBy
            if !shape.pinned && shape.windows == nil {
                // Any provider may take any line: the floor is the pooled providers'.
                let n = Double(report.providers.reduce(0) { $0 + $1.calls })
                let windows = ((n - 1) / Double(shape.rate * shape.providers)).rounded(.down)
                let slotSeconds = report.providers.reduce(0.0) { $0 + $1.slotBound.seconds * Double(shape.slots) }
                bound = max(
                    windows * shape.window.seconds,
                    slotSeconds / Double(shape.slots * shape.providers),
                    report.providers.map(\.longest.seconds).max() ?? 0,
                    report.floors.first?.floor.seconds ?? 0
                )
                setBy = "the providers pooled"
            } else if !shape.pinned {
                // Unequal windows: the floor is the earliest time by which the providers' windows together
                // have admitted every call (the k-th window of a provider opens at k * W).
                let n = report.providers.reduce(0) { $0 + $1.calls }
                let windows = providers.map { (rate: $0.descriptor.quota.requestsPerMinute!, window: $0.descriptor.quota.window.seconds) }
                var t = 0.0
                while windows.reduce(0, { $0 + $1.rate * (Int(t / $1.window) + 1) }) < n {
                    t = windows.map { (Double(Int(t / $0.window) + 1)) * $0.window }.min()!
                }
                bound = max(t, report.providers.map(\.longest.seconds).max() ?? 0, report.floors.first?.floor.seconds ?? 0)
                setBy = "the providers' windows together"
            }
            let makespan = report.makespan.seconds
            clean = clean && report.unplaced == 0
            print(
                "\(shape.name) | \(requests.count) | \(f(makespan)) | \(f(bound)) | \(f(makespan / bound, 4)) | "
                    + "\(f(report.greedy.seconds)) | \(f(makespan / max(0.001, report.greedy.seconds), 4)) | \(f(took, 3)) | "
                    + setBy
            )
        }
        // Scale: a campaign of `hundredThousand` lines over three providers.
        var big = Shape(name: "scale", providers: 3, speech: hundredThousand * 9 / 10, videos: hundredThousand / 10)
        big.rate = 500
        big.slots = 10
        let (lines, report, took) = try timed(big, configuration)
        print(
            "\(lines) lines simulated in \(f(took, 2)) s (\(report.rounds) scheduling rounds); makespan "
                + "\(f(report.makespan.seconds)) s, bound \(f(report.bound.seconds)) s, ratio \(f(report.makespan.seconds / report.bound.seconds, 4))"
        )
        // Many users: a fifth as many lines, each from its own user, under the default limits (the project's
        // bucket binds, so every round finds the project held back).
        var crowd = Shape(name: "crowd", providers: 3, speech: hundredThousand / 5, rate: 500, slots: 10)
        crowd.users = hundredThousand / 5
        let (crowdLines, crowdReport, crowdTook) = try timed(crowd, defaults)
        print(
            "\(crowdLines) lines from as many users, default limits, simulated in \(f(crowdTook, 2)) s "
                + "(\(crowdReport.rounds) scheduling rounds); makespan \(f(crowdReport.makespan.seconds)) s, bound "
                + "\(f(crowdReport.bound.seconds)) s set by \(crowdReport.boundSetBy)"
        )
        return clean && report.unplaced == 0 && crowdReport.unplaced == 0
    }

    /// Simulates `shape` on its providers under `configuration`: its lines, the report and the seconds it took.
    static func timed(
        _ shape: Shape,
        _ configuration: PargenConfiguration
    ) throws -> (lines: Int, report: CampaignSimulator.Report, took: Double) {
        let requests = try requests(shape)
        let started = ContinuousClock.now
        let report = CampaignSimulator(
            configuration: configuration,
            providers: (0..<shape.providers).map { provider($0, shape) },
            seed: 7
        ).run(requests)
        return (requests.count, report, (ContinuousClock.now - started).seconds)
    }

    static func f(_ value: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", value) }
}
