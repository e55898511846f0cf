import ArgumentParser
import AsyncHTTPClient
import Foundation
import Pargen
import PargenProviders

struct Simulate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Predict a campaign's makespan, cost and quota use without calling any provider.",
        discussion: """
            Runs the campaign through the engine's own scheduler (its admission state machine: every provider's \
            window, slots, adaptive limit and room kept for slot holders, and the user and project limits) on a \
            virtual clock, against simulated providers with the configured quotas and prices (--config, or the \
            local providers). Nothing is sent and nothing is spent. Call times are drawn from a range per \
            protocol and kind (speech answers in seconds; video tasks: OpenAI 60-120 s, MiniMax 120-240 s, \
            Runway 30-90 s); --task-seconds overrides them, as KIND=LO..HI or PROVIDER.KIND=LO..HI \
            (repeatable). Provider failures, retries, budgets and caching are not simulated.

            Each of --draws simulations (11 unless said) draws the call times anew; the prediction is the median \
            draw, printed with the shortest and the longest (a few long tasks spread widely, thousands of calls \
            hardly), and the figures below it are that draw's. Prints the predicted makespan against its bound (the floor that each provider's quotas, each \
            user's window, each project's bucket and burst window and the job slots set; the largest names the \
            limit that sets it), the cost, each provider's window and slot use over time, and where the time \
            went (waits per limit). --report \
            FILE.html writes the same with a chart (inline SVG, no external assets).
            """
    )

    @Argument(help: "The campaign file (.jsonl or .csv).")
    var file: String

    @Option(help: ArgumentHelp("Configuration file: providers, quotas, prices, limits.", valueName: "file"))
    var config: String?

    @Option(
        name: .customLong("task-seconds"),
        help: ArgumentHelp("Call time range, as KIND=LO..HI or PROVIDER.KIND=LO..HI (repeatable).", valueName: "range")
    )
    var taskSeconds: [String] = []

    @Option(help: "Requests per minute per user (sliding window).")
    var perUserRpm: Int?

    @Option(help: "Seed of the drawn call times (the i-th draw uses SEED + i - 1).")
    var seed: UInt64 = 1

    @Option(
        help: ArgumentHelp(
            "How many draws of the call times to simulate; the prediction is the median draw, with the range.",
            valueName: "n"
        )
    )
    var draws: Int = 11

    @Option(help: ArgumentHelp("Also write an HTML report with charts to this file.", valueName: "file"))
    var report: String?

    func run() async throws {
        guard (1...1000).contains(draws) else { throw ValidationError("--draws must be between 1 and 1000") }
        let campaign = loadCampaign(file)
        var setup = try await loadConfiguredSetup(config)
        if let perUserRpm {
            guard perUserRpm > 0 else { throw ValidationError("--per-user-rpm must be at least 1") }
            setup.configuration.rateLimits.perUserRequestsPerMinute = perUserRpm
        }
        let localProviders = setup.includeLocalProviders ? LocalProvider.demoProviders(reliable: true) : []
        let overrides = try parseOverrides(
            providerNames: Set(setup.providers.map(\.name) + localProviders.map(\.descriptor.name))
        )
        var simulated: [CampaignSimulator.Provider] = []
        // The adapters are made only for their descriptors (capabilities, quotas, prices): no key, no call.
        let http = ProviderConnection.makeHTTPClient()
        let adapters = setup.providers.map {
            PargenSetup.adapter($0, connection: $0.connection(apiKey: nil, httpClient: http))
        }
        try? await http.shutdown()
        for (settings, adapter) in zip(setup.providers, adapters) {
            simulated.append(
                CampaignSimulator.Provider(
                    descriptor: adapter.descriptor,
                    callSeconds: Self.callSeconds(settings.wireProtocol.rawValue, name: settings.name, overrides)
                )
            )
        }
        if setup.includeLocalProviders {
            for provider in localProviders {
                // A local provider answers after its submit latency plus its render time per media second, unless
                // --task-seconds says otherwise for it (then the range is the whole call, whatever the media).
                let local = provider.configuration
                let base = local.submitLatency.seconds
                let spread = base * local.latencyJitter
                let own = Self.callSeconds("local", name: provider.descriptor.name, overrides)
                var times: [GenerationKind: ClosedRange<Double>] = [:]
                var perMediaSecond: [GenerationKind: Double] = [:]
                for kind in GenerationKind.allCases {
                    if Self.override(for: kind, name: provider.descriptor.name, overrides) != nil {
                        times[kind] = own[kind]
                    } else {
                        times[kind] = (base - spread)...(base + spread)
                        perMediaSecond[kind] = local.latencyPerMediaSecond.seconds
                    }
                }
                simulated.append(
                    CampaignSimulator.Provider(
                        descriptor: provider.descriptor,
                        callSeconds: times,
                        perMediaSecond: perMediaSecond,
                        answerSeconds: 0.05
                    )
                )
            }
        }
        let validator = RequestValidator(configuration: setup.configuration.validation)
        var requests: [ValidatedRequest] = []
        var problems = campaign.errors
        var unplaced: [CampaignLineError] = []
        let balancer = LoadBalancer(providers: simulated.map(\.descriptor), configuration: setup.configuration.balancing)
        for line in campaign.lines {
            do {
                let request = try validator.validate(line.request, fallbackID: "line-\(line.line)")
                if let refused = balancer.refusedField(for: request) {
                    unplaced.append(CampaignLineError(line: line.line, field: refused.field, message: refused.reason))
                }
                requests.append(request)
            } catch {
                problems.append(CampaignLineError(line: line.line, field: error.field, message: error.message))
            }
        }
        let invalid = problems.count
        // The invalid lines are left out of the prediction, and the lines no provider can take are not placed; say
        // which and why, as `pargen run` would refuse them.
        Self.show(problems, as: "invalid")
        Self.show(unplaced, as: "no provider can take")
        let started = ContinuousClock.now
        let forecast = CampaignSimulator(configuration: setup.configuration, providers: simulated, seed: seed)
            .forecast(requests, draws: draws)
        let took = ContinuousClock.now - started
        print(SimulationText.summary(forecast, invalid: invalid, took: took))
        if let report {
            do {
                try Data(SimulationText.html(forecast, title: file).utf8).write(to: URL(fileURLWithPath: report))
            } catch {
                fail("cannot write \(report): \(reason(error))")
            }
            print("report: \(report)")
        }
    }

    /// Up to ten of `problems` on stderr, each as `LABEL: line N: field: reason`, then how many more there are.
    static func show(_ problems: [CampaignLineError], as label: String) {
        let shown = 10
        for problem in problems.sorted(by: { $0.line < $1.line }).prefix(shown) {
            FileHandle.standardError.write(Data("\(label): \(problem)\n".utf8))
        }
        if problems.count > shown {
            FileHandle.standardError.write(Data("\(label): \(problems.count - shown) more line(s) not shown\n".utf8))
        }
    }

    /// `(provider or "*", kind) -> range` from the --task-seconds options.
    func parseOverrides(providerNames: Set<String>) throws -> [String: ClosedRange<Double>] {
        var overrides: [String: ClosedRange<Double>] = [:]
        for entry in taskSeconds {
            let parts = entry.split(separator: "=", maxSplits: 1).map(String.init)
            let bounds = parts.count == 2 ? parts[1].components(separatedBy: "..").compactMap { Double($0) } : []
            guard parts.count == 2, bounds.count == 2, bounds.allSatisfy({ $0.isFinite }) else {
                throw ValidationError("--task-seconds takes KIND=LO..HI or PROVIDER.KIND=LO..HI, such as video=3..8; got \(entry)")
            }
            guard bounds[0] >= 0, bounds[1] <= 86_400 else {
                throw ValidationError("--task-seconds: \(entry): a call time is between 0 and 86400 seconds")
            }
            guard bounds[0] <= bounds[1] else {
                throw ValidationError("--task-seconds: \(entry): LO is above HI")
            }
            let target = parts[0].split(separator: ".").map(String.init)
            guard let kindName = target.last, GenerationKind(rawValue: kindName) != nil, target.count <= 2 else {
                throw ValidationError("--task-seconds: \(parts[0]) is not audio, video or PROVIDER.audio|video")
            }
            if target.count == 2, !providerNames.contains(target[0]) {
                throw ValidationError(
                    "--task-seconds: \(entry): no provider is named \(target[0]) (the providers: "
                        + providerNames.sorted().joined(separator: ", ") + ")"
                )
            }
            overrides["\(target.count == 2 ? target[0] : "*").\(kindName)"] = bounds[0]...bounds[1]
        }
        return overrides
    }

    /// The call times of a provider: its own override, the kind's override, or the protocol's default.
    static func callSeconds(
        _ wire: String,
        name: String,
        _ overrides: [String: ClosedRange<Double>]
    ) -> [GenerationKind: ClosedRange<Double>] {
        let defaults: [String: [GenerationKind: ClosedRange<Double>]] = [
            "openai": [.audio: 1...4, .video: 60...120],
            "elevenlabs": [.audio: 1...4],
            "minimax": [.audio: 2...6, .video: 120...240],
            "runway": [.video: 30...90],
            "azure": [.audio: 1...4],
            "local": [.audio: 0.1...0.6, .video: 0.5...3],
        ]
        var times = defaults[wire] ?? [.audio: 1...4, .video: 60...120]
        for kind in GenerationKind.allCases {
            if let range = override(for: kind, name: name, overrides) { times[kind] = range }
        }
        return times
    }

    /// The provider's own --task-seconds range for a kind, else the kind's, else none.
    static func override(
        for kind: GenerationKind,
        name: String,
        _ overrides: [String: ClosedRange<Double>]
    ) -> ClosedRange<Double>? {
        overrides["\(name).\(kind.rawValue)"] ?? overrides["*.\(kind.rawValue)"]
    }
}

/// The text and HTML of a simulation's report.
enum SimulationText {
    static func seconds(_ duration: Duration) -> String { String(format: "%.1f s", duration.seconds) }

    /// `N draws of the call times: makespan LO to HI; the median draw (seed S)`, for more than one draw.
    static func spread(_ forecast: CampaignSimulator.Forecast) -> String? {
        let draws = forecast.makespans.count
        guard draws > 1 else { return nil }
        return "\(draws) draws of the call times: makespan \(seconds(forecast.range.lowerBound)) to "
            + "\(seconds(forecast.range.upperBound)); the median draw (seed \(forecast.medianSeed))"
    }

    static func summary(_ forecast: CampaignSimulator.Forecast, invalid: Int, took: Duration) -> String {
        let report = forecast.median
        var lines: [String] = []
        let ratio = report.bound > .zero ? report.makespan.seconds / report.bound.seconds : 1
        let draws = forecast.makespans.count
        lines.append(
            "\(report.lines + invalid) lines simulated (\(invalid) invalid, \(report.unplaced) no provider can take) "
                + "\(draws == 1 ? "once" : "\(draws) times"), "
                + "in \(String(format: "%.2f", took.seconds)) s, \(report.rounds) scheduling rounds in the median draw"
        )
        if let spread = spread(forecast) { lines.append(spread + " is the prediction below") }
        let greedy = report.greedy > .zero ? report.makespan.seconds / report.greedy.seconds : 1
        lines.append(
            "predicted makespan \(seconds(report.makespan)); bound \(seconds(report.bound)) "
                + "(makespan / bound \(String(format: "%.3f", ratio))); gap-free greedy schedule of the same calls "
                + "\(seconds(report.greedy)) (makespan / greedy \(String(format: "%.3f", greedy))); cost \(report.cost)"
        )
        lines.append("the bound is set by \(report.boundSetBy)")
        // This process's own limits, when one of them comes near what the providers allow.
        let providerBound = report.providers.map(\.bound).max() ?? .zero
        let near = report.floors.filter { $0.floor.seconds >= providerBound.seconds * 0.5 }.prefix(5)
        if !near.isEmpty {
            lines.append(
                "floors of this configuration's own limits: "
                    + near.map { "\($0.limit) \(seconds($0.floor))" }.joined(separator: "; ")
            )
        }
        lines.append("")
        lines.append("provider        calls  slot calls  bound (rate, slots, longest)         ends at    cost        slots used")
        for p in report.providers where p.calls > 0 {
            lines.append(
                p.name.padding(toLength: 16, withPad: " ", startingAt: 0)
                    + String(p.calls).padding(toLength: 7, withPad: " ", startingAt: 0)
                    + String(p.slotCalls).padding(toLength: 12, withPad: " ", startingAt: 0)
                    + "\(seconds(p.bound)) (\(seconds(p.rateBound)), \(seconds(p.slotBound)), \(seconds(p.longest)))"
                    .padding(toLength: 37, withPad: " ", startingAt: 0)
                    + seconds(p.lastEnd).padding(toLength: 11, withPad: " ", startingAt: 0)
                    + "\(p.cost)".padding(toLength: 12, withPad: " ", startingAt: 0)
                    + (p.slotUtilisation.map { String(format: "%.0f %%", $0 * 100) } ?? "-")
            )
        }
        lines.append("")
        lines.append("window and slot use over time (share of each provider's window limit / slots, per tenth of the run):")
        let tenths = (0..<10).map { index in
            report.samples.last { $0.time.seconds <= report.makespan.seconds * Double(index) / 10 } ?? report.samples.first
        }
        for p in report.providers where p.calls > 0 {
            let window = tenths.map { sample -> String in
                guard let sample, let limit = p.windowLimit, let used = sample.windowUsed[p.name] else { return "  -" }
                return String(format: "%3.0f", Double(used) / Double(limit) * 100)
            }
            let slots = tenths.map { sample -> String in
                guard let sample, let slots = p.slots, let used = sample.slotsInUse[p.name] else { return "  -" }
                return String(format: "%3.0f", Double(used) / Double(slots) * 100)
            }
            lines.append("  \(p.name.padding(toLength: 14, withPad: " ", startingAt: 0)) window % \(window.joined(separator: " "))")
            lines.append("  \("".padding(toLength: 14, withPad: " ", startingAt: 0)) slots  % \(slots.joined(separator: " "))")
        }
        lines.append("")
        let waits = RateLimiter.LimitKind.allCases.map { "\($0.rawValue) \(seconds(report.waits[$0] ?? .zero))" }
        lines.append("time jobs waited, summed over jobs: " + waits.joined(separator: ", "))
        return lines.joined(separator: "\n")
    }

    static func html(_ forecast: CampaignSimulator.Forecast, title: String) -> String {
        let report = forecast.median
        let spread = spread(forecast).map { " " + $0 + "." } ?? ""
        let width = 900.0
        let height = 160.0
        let end = max(report.makespan.seconds, 0.001)
        func escape(_ text: String) -> String {
            text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
                .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
        }
        var charts = ""
        for p in report.providers where p.calls > 0 {
            func line(_ value: (CampaignSimulator.Sample) -> Double?, colour: String) -> String {
                let points = report.samples.compactMap { sample -> String? in
                    guard let share = value(sample) else { return nil }
                    let x = sample.time.seconds / end * width
                    let y = height - min(1, share) * height
                    return String(format: "%.1f,%.1f", x, y)
                }
                guard !points.isEmpty else { return "" }
                return "<polyline fill=\"none\" stroke=\"\(colour)\" stroke-width=\"1.5\" points=\"\(points.joined(separator: " "))\"/>"
            }
            let window = line({ s in p.windowLimit.flatMap { l in s.windowUsed[p.name].map { Double($0) / Double(l) } } }, colour: "#1f77b4")
            let slots = line({ s in p.slots.flatMap { c in s.slotsInUse[p.name].map { Double($0) / Double(c) } } }, colour: "#d62728")
            charts += """
                <h2>\(escape(p.name))</h2>
                <p>\(p.calls) calls (\(p.slotCalls) holding a slot); bound \(seconds(p.bound)); last call ends at \(seconds(p.lastEnd)); cost \(p.cost)</p>
                <svg width="\(Int(width))" height="\(Int(height) + 20)" viewBox="0 0 \(Int(width)) \(Int(height) + 20)" role="img">
                <rect x="0" y="0" width="\(Int(width))" height="\(Int(height))" fill="#f7f7f7"/>
                \(window)\(slots)
                <text x="0" y="\(Int(height) + 15)" font-size="12">0 s</text>
                <text x="\(Int(width) - 60)" y="\(Int(height) + 15)" font-size="12">\(seconds(report.makespan))</text>
                </svg>

                """
        }
        let waits = RateLimiter.LimitKind.allCases.map {
            "<tr><td>\($0.rawValue)</td><td>\(seconds(report.waits[$0] ?? .zero))</td></tr>"
        }.joined()
        return """
            <!doctype html>
            <html><head><meta charset="utf-8"><title>pargen simulate: \(escape(title))</title>
            <style>body{font-family:sans-serif;max-width:960px;margin:2em auto}td{padding:2px 12px}</style></head>
            <body>
            <h1>pargen simulate: \(escape(title))</h1>
            <p>\(report.lines) lines; predicted makespan \(seconds(report.makespan)) against a bound of \(seconds(report.bound)), set by \(escape(report.boundSetBy)); cost \(report.cost).\(spread)</p>
            <p><span style="color:#1f77b4">blue</span>: share of the window limit in use; <span style="color:#d62728">red</span>: share of the task slots in use.</p>
            \(charts)
            <h2>Where the time went</h2>
            <table>\(waits)</table>
            </body></html>

            """
    }
}
