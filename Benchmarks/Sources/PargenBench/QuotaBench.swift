import AsyncHTTPClient
import Foundation
import Pargen
import PargenProviders
import PargenTesting

/// How close a campaign comes to the floor its quotas set.
///
/// Three fakes on 127.0.0.1 (OpenAI, MiniMax, Runway), each allowing `R` submissions per sliding window `W` and
/// 5 concurrent video tasks, run a campaign through the whole engine on the real clock. For each provider
/// `p` with `N_p` submissions, video task times `d_i` and `C_p` slots, no schedule can finish before
///
///     T_p = max( floor((N_p - 1) / R_p) * W_p,  sum(d_i) / C_p,  max(d_i) )
///
/// (the last submission cannot enter before its window opens; the slots cannot do the task time faster; the
/// longest task runs whole). The campaign's bound is the largest `T_p`; the figure is makespan / bound, with
/// the fakes' count of quota violations (429s, 1002s, THROTTLED tasks) from their own logs.
///
/// `N_p` is the campaign's own count of lines for `p`, and `d_i` the time of each job's first task: a
/// resubmission (after a failure) would otherwise raise the bound and flatter the ratio. A run with any
/// violation or failed request makes the benchmark exit 1.
enum QuotaBench {
    struct Campaign {
        enum Order { case interleaved, videosFirst, videosLast }
        var name: String
        /// Speech and video requests per provider.
        var speech: [String: Int]
        var video: [String: Int]
        var order: Order = .interleaved
        /// Video task times as fractions of the window; `nil` for the benchmark's default.
        var tasks: ClosedRange<Double>? = nil
        /// Lines take the four priorities in turn (otherwise all are normal).
        var mixedPriorities = false
    }

    /// Returns whether every campaign finished with no failure and no quota violation.
    static func run(window seconds: Double, only: String?, equalTasks: Bool = false) async throws -> Bool {
        let window = Duration.milliseconds(Int64(seconds * 1000))
        let rate = 200
        let slots = 5
        let campaigns = [
            Campaign(name: "speech", speech: ["openai": 500, "minimax": 500], video: [:]),
            Campaign(name: "video", speech: [:], video: ["openai": 35, "minimax": 35, "runway": 30]),
            Campaign(
                name: "mixed",
                speech: ["openai": 500, "minimax": 500],
                video: ["openai": 35, "minimax": 35, "runway": 30]
            ),
            // Shapes the three above do not cover: videos after or before the speech in the file, short and long
            // tasks, one provider, and a campaign so small that no window is ever the constraint.
            Campaign(
                name: "videos-last",
                speech: ["openai": 300, "minimax": 300],
                video: ["openai": 20, "minimax": 20],
                order: .videosLast
            ),
            Campaign(
                name: "videos-first",
                speech: ["openai": 300, "minimax": 300],
                video: ["openai": 20, "minimax": 20],
                order: .videosFirst
            ),
            Campaign(
                name: "short-tasks-videos-last",
                speech: ["openai": 300, "minimax": 300],
                video: ["openai": 40, "minimax": 40],
                order: .videosLast,
                tasks: 0.033...0.133
            ),
            Campaign(
                name: "long-tasks-one-provider",
                speech: ["openai": 300],
                video: ["openai": 12],
                order: .videosLast,
                tasks: 0.33...1.0
            ),
            Campaign(name: "small", speech: ["openai": 20, "minimax": 20], video: ["openai": 3, "minimax": 3]),
            Campaign(
                name: "mixed-priorities",
                speech: ["openai": 500, "minimax": 500],
                video: ["openai": 35, "minimax": 35, "runway": 30],
                mixedPriorities: true
            ),
        ].filter { only == nil || $0.name == only }
        print("window \(seconds) s, \(rate) submissions per window and \(slots) concurrent video tasks per provider")
        let tasks = equalTasks ? (seconds * 0.33)...(seconds * 0.33) : (seconds * 0.30)...(seconds * 0.36)
        print(
            "video tasks last \(String(format: "%.1f", tasks.lowerBound))-\(String(format: "%.1f", tasks.upperBound)) s; speech answers in 10-50 ms"
        )
        let http = ProviderConnection.makeHTTPClient()
        var clean = true
        for campaign in campaigns {
            let own = campaign.tasks.map { (seconds * $0.lowerBound)...(seconds * $0.upperBound) } ?? tasks
            clean = try await measure(campaign, window: window, rate: rate, slots: slots, tasks: own, http: http)
                && clean
        }
        try await http.shutdown()
        return clean
    }

    static func measure(
        _ campaign: Campaign,
        window: Duration,
        rate: Int,
        slots: Int,
        tasks: ClosedRange<Double>,
        http: HTTPClient
    ) async throws -> Bool {
        let seconds = window.components.seconds > 0 ? Double(window.components.seconds) : 0
        let w = seconds + Double(window.components.attoseconds) / 1e18
        var fakes: [String: FakeProviderServer] = [:]
        var providers: [any GenerationProvider] = []
        for wire in [ProviderProtocol.openai, .minimax, .runway] {
            let name = wire.rawValue
            let fake = try await FakeProviderServer.start(
                FakeProviderOptions(
                    wireProtocol: FakeProtocol(rawValue: name)!,
                    apiKey: "bench-key",
                    requestsPerWindow: rate,
                    window: window,
                    concurrentTasks: slots,
                    taskSeconds: tasks,
                    latencySeconds: 0.01...0.05,
                    videoBytes: 256 * 1024,
                    audioBytes: 16 * 1024,
                    seed: UInt64(name.count),
                    lifetime: .seconds(3600),
                    logFile: ProcessInfo.processInfo.environment["PARGEN_BENCH_LOGS"].map {
                        URL(fileURLWithPath: $0).appendingPathComponent("\(campaign.name)-\(name).jsonl")
                    }
                )
            )
            fakes[name] = fake
            var settings = ProviderSettings.defaults(for: wire)
            settings.baseURL = fake.baseURL
            settings.pollInterval = .milliseconds(Int64(w * 1000 / 200))
            settings.quota = ProviderQuota(
                requestsPerMinute: rate,
                concurrentTasks: slots,
                window: window,
                concurrencyKinds: wire == .runway ? [.audio, .video] : [.video],
                // What a user states for their providers: the typical task time, here the middle of the range.
                expectedTaskTime: .milliseconds(Int64((tasks.lowerBound + tasks.upperBound) / 2 * 1000))
            )
            providers.append(
                PargenSetup.adapter(
                    settings,
                    connection: settings.connection(apiKey: APIKey("bench-key"), httpClient: http)
                )
            )
        }
        var requests: [GenerationRequest] = []
        let users = (0..<8).map { "user\($0)" }
        for (provider, count) in campaign.speech.sorted(by: { $0.key < $1.key }) {
            for i in 0..<count {
                requests.append(
                    .audio(
                        prompt: "\(provider) speech line \(i)",
                        priority: campaign.mixedPriorities ? GenerationPriority.allCases[i % 4] : .normal,
                        provider: provider,
                        user: users[i % 8]
                    )
                )
            }
        }
        for (provider, count) in campaign.video.sorted(by: { $0.key < $1.key }) {
            let seconds: Int64 = provider == "openai" ? 4 : provider == "minimax" ? 6 : 5
            for i in 0..<count {
                requests.append(
                    .video(
                        prompt: "\(provider) clip \(i)",
                        priority: campaign.mixedPriorities ? GenerationPriority.allCases[i % 4] : .normal,
                        duration: .seconds(seconds),
                        resolution: .p720,
                        provider: provider,
                        user: users[i % 8]
                    )
                )
            }
        }
        // Interleave the lines, as a campaign file mixes them, or put the videos after or before the speech.
        var mixed: [GenerationRequest] = []
        var generator = SplitMix(seed: 42)
        var pool = requests
        while !pool.isEmpty { mixed.append(pool.remove(at: Int(generator.next() % UInt64(pool.count)))) }
        switch campaign.order {
        case .interleaved: break
        case .videosLast: mixed = mixed.filter { $0.kind == .audio } + mixed.filter { $0.kind == .video }
        case .videosFirst: mixed = mixed.filter { $0.kind == .video } + mixed.filter { $0.kind == .audio }
        }

        var configuration = PargenConfiguration(
            rateLimits: .unlimited,
            batching: .init(pacingJitter: .zero),
            resources: .init(maxAPICalls: 4000, maxConcurrentJobs: 4000, minimumFraction: 1),
            caching: .init(enabled: false)
        )
        configuration.retry.baseDelay = .milliseconds(100)
        // The same campaign through `pargen simulate`'s simulator (the engine's own scheduler on a virtual clock),
        // with the fakes' quotas, speech answer times and task times: its prediction, against the real run below.
        let validator = RequestValidator(configuration: configuration.validation)
        let validated = mixed.enumerated().compactMap { try? validator.validate($0.element, fallbackID: "r\($0.offset)") }
        let forecast = CampaignSimulator(
            configuration: configuration,
            providers: providers.map {
                CampaignSimulator.Provider(
                    descriptor: $0.descriptor,
                    callSeconds: [.audio: 0.01...0.05, .video: tasks],
                    answerSeconds: 0.03
                )
            }
        ).forecast(validated, draws: 11)
        // What `pargen simulate` prints: the median of eleven draws of the task times, and their range.
        let simulation = forecast.median
        let predicted = simulation.makespan.seconds
        if ProcessInfo.processInfo.environment["PARGEN_BENCH_SIMULATE_ONLY"] != nil {
            print(
                "\(campaign.name): simulated makespan \(String(format: "%.2f", predicted)) s, bound \(String(format: "%.2f", simulation.bound.seconds)) s, "
                    + "ratio \(String(format: "%.4f", predicted / max(0.001, simulation.bound.seconds)))"
            )
            for figures in simulation.providers where figures.calls > 0 {
                print(
                    "  \(figures.name): \(figures.calls) calls, \(figures.slotCalls) holding slots, ends \(String(format: "%.2f", figures.lastEnd.seconds)) s, "
                        + "bound \(String(format: "%.2f", figures.bound.seconds)) s, slots used \(String(format: "%.0f", (figures.slotUtilisation ?? 0) * 100)) %"
                )
            }
            if ProcessInfo.processInfo.environment["PARGEN_BENCH_SIMULATE_ONLY"] == "timeline" {
                for sample in simulation.samples {
                    print("   t=\(String(format: "%.1f", sample.time.seconds)) window \(sample.windowUsed.sorted { $0.key < $1.key }) slots \(sample.slotsInUse.sorted { $0.key < $1.key })")
                }
            }
            for fake in fakes.values { await fake.stop() }
            return true
        }
        let output = FileManager.default.temporaryDirectory.appendingPathComponent(
            "pargen-quota-bench-\(getpid())-\(campaign.name)"
        )
        defer { try? FileManager.default.removeItem(at: output) }
        let engine = ParallelGenerator(
            configuration: configuration,
            providers: providers,
            outputDirectory: output,
            clock: .continuous
        )
        try await engine.start()
        let cpuBefore = processCPUSeconds()
        let started = ContinuousClock.now
        let trace = ProcessInfo.processInfo.environment["PARGEN_BENCH_TRACE"] != nil
        let sampler = Task {
            while trace && !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(Int64(w * 1000 / 12)))
                let stats = await engine.systemStats()
                let slots = stats.resourcePool.providers.sorted { $0.key < $1.key }.map {
                    "\($0.key) \($0.value.inFlight)/\($0.value.limit) (-\($0.value.decreases))"
                }
                let elapsed = ContinuousClock.now - started
                print(
                    "  t=\(elapsed.components.seconds)s slots: \(slots.joined(separator: ", ")); waiting \(stats.resourcePool.waiting); limiter waiting \(stats.rateLimiter.waiting)"
                )
            }
        }
        defer { sampler.cancel() }
        let results = try await engine.generate(mixed)
        let elapsed = ContinuousClock.now - started
        try await engine.stop()
        let makespan = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let cpu = processCPUSeconds() - cpuBefore

        var bound = 0.0
        var reference = 0.0
        var violations = 0
        var report: [String] = []
        for name in ["openai", "minimax", "runway"] {
            guard let fake = fakes[name] else { continue }
            let log = fake.state.submissions().filter(\.accepted)
            let lines = campaign.speech[name, default: 0] + campaign.video[name, default: 0]
            guard lines > 0 else { continue }
            // Each job's first task (by its Idempotency-Key's job part), in the order the fake created them.
            var firstTask: [String: String] = [:]
            for entry in log {
                guard let key = entry.key, let task = entry.taskID else { continue }
                let job = String(key.split(separator: ":")[0])
                if firstTask[job] == nil { firstTask[job] = task }
            }
            let seconds = fake.state.taskSecondsByID()
            let durations = fake.state.taskIDs().filter { Set(firstTask.values).contains($0) }.compactMap { seconds[$0] }
            let rateBound = Double((lines - 1) / rate) * w
            let slotBound = durations.reduce(0, +) / Double(slots)
            let longest = durations.max() ?? 0
            let providerBound = max(rateBound, slotBound, longest)
            bound = max(bound, providerBound)
            // What a perfect engine that cannot know task times in advance would do: each task, in the order
            // submitted, on the slot that frees first, with no gap at all.
            var free = [Double](repeating: 0, count: slots)
            for d in durations {
                let slot = free.indices.min { free[$0] < free[$1] }!
                free[slot] += d
            }
            reference = max(reference, rateBound, free.max() ?? 0)
            violations += fake.state.quotaViolations()
            // How long a freed slot stayed empty: each task after the first round against the earliest end
            // before it that no other task took.
            let spans = fake.state.taskSpans()
            var ends = spans.map(\.end).sorted()
            var gaps: [Double] = []
            for span in spans.dropFirst(slots).sorted(by: { $0.start < $1.start }) {
                guard let index = ends.lastIndex(where: { $0 <= span.start + 0.001 }) ?? ends.indices.first else {
                    continue
                }
                let earliest = ends.indices.filter { ends[$0] <= span.start + 0.001 }.first ?? index
                gaps.append(max(0, span.start - ends[earliest]))
                ends.remove(at: earliest)
            }
            let meanGap = gaps.isEmpty ? 0 : gaps.reduce(0, +) / Double(gaps.count)
            report.append(
                "  \(name): \(lines) lines, \(log.count) accepted submissions, peak tasks \(fake.state.peakConcurrency)/\(slots), "
                    + "bound \(String(format: "%.2f", providerBound)) s (rate \(String(format: "%.2f", rateBound)), slots \(String(format: "%.2f", slotBound))), "
                    + "violations \(fake.state.quotaViolations())"
                    + (gaps.isEmpty
                        ? ""
                        : ", a freed slot waited \(String(format: "%.2f", meanGap)) s on average for its next task")
            )
            await fake.stop()
        }
        let failed = results.filter { !$0.succeeded }.count
        print(
            "\(campaign.name) (tasks \(String(format: "%.1f", tasks.lowerBound))-\(String(format: "%.1f", tasks.upperBound)) s): \(results.count) requests, \(failed) failed, makespan \(String(format: "%.2f", makespan)) s, "
                + "bound \(String(format: "%.2f", bound)) s, ratio \(String(format: "%.4f", makespan / bound)), violations \(violations)"
        )
        print(
            "  CPU (user + system) of the whole process, the fakes included: \(String(format: "%.2f", cpu)) s"
        )
        let drawn = forecast.range
        print(
            "  pargen simulate predicted \(String(format: "%.2f", predicted)) s: off by \(String(format: "%+.1f", (predicted - makespan) / makespan * 100)) % of the real makespan; "
                + "its 11 draws \(String(format: "%.2f", drawn.lowerBound.seconds))-\(String(format: "%.2f", drawn.upperBound.seconds)) s "
                + (drawn.lowerBound.seconds <= makespan && makespan <= drawn.upperBound.seconds ? "hold the real run" : "do not hold the real run")
        )
        print(
            "  gap-free greedy schedule of the same tasks: \(String(format: "%.2f", reference)) s, "
                + "makespan / that \(String(format: "%.4f", makespan / reference))"
        )
        for line in report { print(line) }
        if failed > 0 || violations > 0 {
            print("FAILED: \(failed) requests failed, \(violations) quota violations")
            return false
        }
        return true
    }
}

struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// User and system CPU time of this process so far, in seconds.
func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(Int32(RUSAGE_SELF.rawValue), &usage)
    return Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6 + Double(usage.ru_stime.tv_sec)
        + Double(usage.ru_stime.tv_usec) / 1e6
}
