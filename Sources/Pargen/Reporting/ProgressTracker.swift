import Foundation
import Synchronization

/// Follows progress events and counts requests by phase, for progress bars.
public final class ProgressTracker: Sendable {
    public struct Snapshot: Sendable, Hashable {
        public var total: Int
        public var done: Int
        public var failed: Int
        public var waiting: Int
        public var inFlight: Int
        public var elapsed: Duration

        /// Estimated time left at the rate so far; `nil` until something finished.
        public var eta: Duration? {
            let finished = done + failed
            guard finished > 0, total > finished else { return finished >= total ? .zero : nil }
            return elapsed * (Double(total - finished) / Double(finished))
        }
    }

    private struct State {
        var statuses: [JobID: ProgressStatus] = [:]
        var total = 0
    }

    private let state = Mutex(State())
    private let clock: PargenClock
    private let started: Duration

    public init(clock: PargenClock = .continuous) {
        self.clock = clock
        started = clock.now
    }

    /// Sets the number of requests expected.
    public func expect(_ total: Int) { state.withLock { $0.total = total } }

    public func record(_ event: PargenEvent) {
        switch event {
        case .progress(let update):
            state.withLock { state in
                if let old = state.statuses[update.jobID], old.isFinal { return }
                state.statuses[update.jobID] = update.status
            }
        case .finished(let result):
            guard let id = result.jobID else { return }
            state.withLock { $0.statuses[id] = result.succeeded ? .succeeded : .failed }
        case .budgetAlert:
            break
        }
    }

    public func snapshot() -> Snapshot {
        let elapsed = clock.now - started
        return state.withLock { state in
            var snapshot = Snapshot(total: state.total, done: 0, failed: 0, waiting: 0, inFlight: 0, elapsed: elapsed)
            for status in state.statuses.values {
                switch status {
                case .succeeded, .servedFromCache: snapshot.done += 1
                case .failed, .deadLettered: snapshot.failed += 1
                case .queued, .waitingForRateLimit, .heldByBudget, .retrying: snapshot.waiting += 1
                case .submitted, .running, .downloading: snapshot.inFlight += 1
                }
            }
            snapshot.waiting += max(0, state.total - state.statuses.count)
            return snapshot
        }
    }
}

/// Text renderings of progress and of the final summary.
public enum ProgressText {
    /// `[#######.......]  45/100 done · 2 failed · 12 waiting · 8 in flight · $1.23 · ETA 6 s`
    public static func bar(_ snapshot: ProgressTracker.Snapshot, spend: Money, width: Int = 30) -> String {
        let finished = snapshot.done + snapshot.failed
        let filled = snapshot.total == 0 ? width : min(width, finished * width / snapshot.total)
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        let eta = snapshot.eta.map { "ETA \(seconds($0))" } ?? "ETA --"
        return "[\(bar)] \(finished)/\(snapshot.total) · \(snapshot.done) done · \(snapshot.failed) failed · "
            + "\(snapshot.waiting) waiting · \(snapshot.inFlight) in flight · \(spend) · \(eta)"
    }

    public static func seconds(_ duration: Duration) -> String {
        let value = duration.seconds
        if value < 1 { return "\(Int((value * 1000).rounded())) ms" }
        if value < 120 { return "\(value.formatted1) s" }
        return "\(Int(value / 60)) min \(Int(value.truncatingRemainder(dividingBy: 60))) s"
    }

    /// The end-of-run summary: per provider jobs, failures, retries, cost and latency; cache and
    /// de-duplication; time waited on each rate limit; dead letters; budget alerts.
    public static func summary(_ stats: SystemStats, report: CampaignReport) -> String {
        var out: [String] = []
        let header = ["provider", "jobs", "failures", "retries", "throttled", "cost", "p50", "p95"]
        var rows: [[String]] = []
        let spend = Dictionary(uniqueKeysWithValues: stats.costMonitor.providers.map { ($0.provider, $0.charged) })
        for health in stats.loadBalancer {
            let activity = stats.providers[health.name] ?? ProviderActivity()
            rows.append([
                health.name, String(activity.succeeded), String(activity.failedCalls), String(activity.retries),
                String(activity.throttled), (spend[health.name] ?? .zero).description,
                activity.latency.count == 0 ? "-" : seconds(activity.latency.p50),
                activity.latency.count == 0 ? "-" : seconds(activity.latency.p95),
            ])
        }
        out.append(table(header, rows))
        out.append("")
        let cache = stats.cache
        out.append(
            "cache: \(cache.hits) hits in \(cache.hits + cache.misses) lookups (hit ratio \(Int((cache.hitRatio * 100).rounded())) %), "
                + "\(cache.deduplicated) de-duplicated requests served by an identical one in flight"
        )
        let saved = report.rows.reduce(Money.zero) { $0 + ($1.saved.flatMap(Money.init(parsing:)) ?? .zero) }
        if let shared = stats.sharedCache {
            out.append(
                "shared cache: \(shared.redisHits) Redis hits, \(shared.objectStoreHits) object-store hits, "
                    + "\(shared.misses) misses, \(shared.lookupErrors) tier errors, "
                    + "\(shared.unansweredLookups) lookups no tier answered (asked again); "
                    + "\(shared.uploads) artifacts published (\(shared.uploadFailures) failed), "
                    + "\(shared.heldElsewhere) waits for another worker's identical request, "
                    + "\(shared.lockErrors) lock errors, \(shared.fetchFailures) failed fetches"
            )
        }
        if saved > .zero {
            let reused = report.rows.filter { $0.saved != nil }.count
            out.append("saved \(saved) by reusing \(reused) artifacts instead of generating them again")
        }
        let waits = RateLimiter.LimitKind.allCases.map { kind in
            "\(kind.rawValue) \(seconds(stats.rateLimiter.waitTime[kind] ?? .zero))"
        }
        out.append("rate-limit waits (summed over requests): " + waits.joined(separator: ", "))
        out.append(
            "batches: \(stats.batcher.batchesFormed) formed, average \(stats.batcher.averageBatchSize.formatted1) jobs, "
                + "largest \(stats.batcher.largestBatch), \(stats.batcher.duplicatesCollapsed) duplicates collapsed"
        )
        let retried = report.rows.filter { $0.tasks > 1 }
        if !retried.isEmpty {
            out.append(
                "tried again on a new task: \(retried.count) lines (\(retried.reduce(0) { $0 + $1.tasks - 1 }) tasks failed), "
                    + "\(retried.filter { $0.status == .succeeded }.count) of them succeeded"
            )
            for row in retried.prefix(5) {
                out.append("  line \(row.line) (\(row.requestID)): \(row.tasks) tasks, last failure: \(row.lastFailure ?? "-")")
            }
        }
        let lost = stats.providers.filter { $0.value.billedAnswersLost > 0 }.sorted { $0.key < $1.key }
        if !lost.isEmpty {
            // Visible, never silent: each of these was billed, and a retry of its line was billed again.
            out.append(
                "answers billed and then lost (cut short, unusable or not saved), each charged: "
                    + lost.map { "\($0.key) \($0.value.billedAnswersLost) (\($0.value.billedAnswersLostCost))" }
                    .joined(separator: ", ")
            )
        }
        let deadLetters = report.rows.filter { $0.status == .deadLettered }
        out.append("dead letters: \(deadLetters.count)")
        for row in deadLetters.prefix(10) {
            out.append(
                "  line \(row.line) (\(row.requestID)): \(row.errorCode ?? "") \(row.error ?? "")"
                    + (row.tasks > 0 ? " [\(row.tasks) tasks]" : "")
            )
        }
        if deadLetters.count > 10 { out.append("  ... and \(deadLetters.count - 10) more in the manifest") }
        let invalid = report.rows.filter { $0.status == .invalid }
        if !invalid.isEmpty {
            out.append("invalid lines: \(invalid.count) (details in \(report.errorsFile.lastPathComponent))")
            for row in invalid.prefix(5) {
                out.append("  line \(row.line): \(row.errorField.map { "\($0): " } ?? "")\(row.error ?? "")")
            }
        }
        for alert in stats.costMonitor.alerts {
            out.append(
                "budget alert: \(alert.scope) at \(Int((alert.fraction * 100).rounded())) % of \(alert.limit)"
                    + (alert.exhausted ? " (exhausted)" : "")
            )
        }
        out.append(
            "total: \(report.succeeded) succeeded, \(report.failed) failed, \(report.invalid) invalid · spend "
                + "\(stats.costMonitor.charged) (trend \(stats.costMonitor.trend.rawValue)) · \(seconds(report.elapsed))"
        )
        return out.joined(separator: "\n")
    }

    static func table(_ header: [String], _ rows: [[String]]) -> String {
        let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { index, cell in
                index == 0
                    ? cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
                    : String(repeating: " ", count: widths[index] - cell.count) + cell
            }.joined(separator: "  ")
        }
        return
            ([line(header), widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")] + rows.map(line))
            .joined(separator: "\n")
    }
}
