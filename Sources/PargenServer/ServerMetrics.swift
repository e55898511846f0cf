import CoreMetrics
import Foundation
import Pargen
import Prometheus
import Synchronization

/// The service's metrics, through swift-metrics into a Prometheus registry of its own (`GET /metrics`).
///
/// Request, provider latency and webhook figures are recorded as they happen. The engine's and the store's (jobs by state,
/// admissions and waits per limit, spend, cache hits, provider call latency) are read at each scrape: counters
/// grow by what the engine counted since the last one.
final class ServerMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    let factory: PrometheusMetricsFactory
    /// The engine's totals at the last scrape, by metric and labels.
    private let seen = Mutex<[String: Double]>([:])

    init() {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .milliseconds(1), .milliseconds(5), .milliseconds(25), .milliseconds(100), .milliseconds(250),
            .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10), .seconds(30), .seconds(60),
            .seconds(180), .seconds(600),
        ]
        self.factory = factory
    }

    func request(method: String, route: String, status: Int, duration: Duration) {
        Counter(
            label: "pargen_http_requests_total",
            dimensions: [("method", method), ("route", route), ("status", String(status))],
            factory: factory
        ).increment()
        Timer(label: "pargen_http_request_duration_seconds", dimensions: [("method", method)], factory: factory)
            .recordNanoseconds(duration.nanoseconds)
    }

    func webhookAttempt(outcome: String) {
        Counter(label: "pargen_webhook_deliveries_total", dimensions: [("outcome", outcome)], factory: factory).increment()
    }

    /// A provider's part of a call: from its submission to its answer (the download's start, or the failure).
    func providerCall(provider: String, status: ProgressStatus, latency: Duration) {
        let outcome = status == .downloading || status == .succeeded ? "answered" : "failed"
        Timer(
            label: "pargen_provider_latency_seconds",
            dimensions: [("provider", provider), ("outcome", outcome)],
            factory: factory
        ).recordNanoseconds(latency.nanoseconds)
    }

    func jobFinished(provider: String?, succeeded: Bool, latency: Duration) {
        let dimensions = [("provider", provider ?? "none"), ("outcome", succeeded ? "succeeded" : "failed")]
        Timer(label: "pargen_job_duration_seconds", dimensions: dimensions, factory: factory)
            .recordNanoseconds(latency.nanoseconds)
    }

    /// Sets the gauges and counters that mirror the engine and the store, then writes the registry.
    func scrape(generator: ParallelGenerator) async -> String {
        let counts = (try? await generator.store.counts()) ?? [:]
        for state in JobState.allCases {
            Gauge(label: "pargen_jobs", dimensions: [("state", state.rawValue)], factory: factory)
                .record(counts[state, default: 0])
        }
        let stats = await generator.systemStats()
        grow("pargen_admissions_total", [], to: Double(stats.rateLimiter.admitted))
        for (kind, count) in stats.rateLimiter.denied {
            grow("pargen_admission_waits_total", [("limit", "\(kind)")], to: Double(count))
        }
        for (kind, wait) in stats.rateLimiter.waitTime {
            grow("pargen_admission_wait_seconds_total", [("limit", "\(kind)")], to: wait.seconds)
        }
        Gauge(label: "pargen_admission_waiting", factory: factory).record(stats.rateLimiter.waiting)
        let costs = stats.costMonitor
        grow("pargen_spend_dollars_total", [], to: Double(costs.charged.nanos) / 1e9)
        Gauge(label: "pargen_reserved_dollars", factory: factory).record(Double(costs.outstanding.nanos) / 1e9)
        for spend in costs.providers {
            grow("pargen_provider_spend_dollars_total", [("provider", spend.provider)], to: Double(spend.charged.nanos) / 1e9)
        }
        grow("pargen_cache_hits_total", [], to: Double(stats.cache.hits))
        grow("pargen_cache_misses_total", [], to: Double(stats.cache.misses))
        grow("pargen_cache_deduplicated_total", [], to: Double(stats.cache.deduplicated))
        grow("pargen_cache_saved_dollars_total", [], to: Double(stats.cache.saved.nanos) / 1e9)
        if let shared = stats.sharedCache {
            grow("pargen_cache_shared_hits_total", [("tier", "redis")], to: Double(shared.redisHits))
            grow("pargen_cache_shared_hits_total", [("tier", "object_store")], to: Double(shared.objectStoreHits))
            grow("pargen_cache_shared_misses_total", [], to: Double(shared.misses))
            grow("pargen_cache_shared_lookup_errors_total", [], to: Double(shared.lookupErrors))
            grow("pargen_cache_shared_unanswered_lookups_total", [], to: Double(shared.unansweredLookups))
            grow("pargen_cache_shared_uploads_total", [("outcome", "published")], to: Double(shared.uploads))
            grow("pargen_cache_shared_uploads_total", [("outcome", "failed")], to: Double(shared.uploadFailures))
        }
        for (name, activity) in stats.providers {
            for (quantile, value) in [("0.5", activity.latency.p50), ("0.95", activity.latency.p95)] {
                Gauge(
                    label: "pargen_provider_call_latency_seconds",
                    dimensions: [("provider", name), ("quantile", quantile)],
                    factory: factory
                ).record(value.seconds)
            }
            grow("pargen_provider_calls_total", [("provider", name), ("outcome", "succeeded")], to: Double(activity.succeeded))
            grow("pargen_provider_calls_total", [("provider", name), ("outcome", "failed")], to: Double(activity.failedCalls))
            grow("pargen_provider_calls_total", [("provider", name), ("outcome", "throttled")], to: Double(activity.throttled))
        }
        for (name, slots) in stats.resourcePool.providers {
            Gauge(label: "pargen_provider_slots_in_use", dimensions: [("provider", name)], factory: factory).record(slots.inFlight)
            if let room = slots.windowRoom {
                Gauge(label: "pargen_provider_window_room", dimensions: [("provider", name)], factory: factory).record(room)
            }
        }
        return registry.emitToString()
    }

    /// Adds to a counter what the engine's total grew by since the last scrape.
    private func grow(_ label: String, _ dimensions: [(String, String)], to total: Double) {
        let key = label + dimensions.map { "|\($0.0)=\($0.1)" }.joined()
        let delta = seen.withLock { seen -> Double in
            let before = seen[key] ?? 0
            seen[key] = max(before, total)
            return max(0, total - before)
        }
        FloatingPointCounter(label: label, dimensions: dimensions, factory: factory).increment(by: delta)
    }
}

extension Duration {
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
