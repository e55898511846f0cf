import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import Pargen
import ServiceLifecycle
import Synchronization

/// Turns the event log into webhook deliveries, and sends them: at least once, signed, retried on the
/// configured schedule, each try written to the delivery's log.
///
/// A delivery is kept in the service store before it is sent, so a restart resumes its retries. An event that
/// happened while no server ran, or in the moment between the log and the store, is not delivered (the log is in
/// memory; see ``EventLog``).
final class WebhookDispatcher: Sendable {
    let events: EventLog
    let store: any ServiceStore
    let configuration: ServerConfiguration
    let logger: Logger
    let http: HTTPClient
    let metrics: ServerMetrics
    private let wakeup = Wakeup()
    private let clock = PargenClock.continuous
    /// Bumped when webhooks are added or removed, so the follower reads them again.
    private let generation = Atomic<Int>(0)

    init(
        events: EventLog,
        store: any ServiceStore,
        configuration: ServerConfiguration,
        logger: Logger,
        http: HTTPClient,
        metrics: ServerMetrics
    ) {
        self.metrics = metrics
        self.events = events
        self.store = store
        self.configuration = configuration
        self.logger = logger
        self.http = http
    }

    func webhooksChanged() { generation.add(1, ordering: .relaxed) }

    /// Sends what is due now (a redelivery asked for by hand).
    func poke() { wakeup.signal() }

    func run() async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.follow() }
            group.addTask { await self.send() }
        }
    }

    /// Forgets idempotency keys first used longer ago than their retention, every 10 minutes until cancelled.
    func pruneIdempotencyKeys() async {
        while !Task.isCancelled {
            do {
                let gone = try await store.pruneIdempotencyKeys(
                    before: Date().addingTimeInterval(-configuration.idempotencyRetention.seconds)
                )
                if gone > 0 { logger.debug("idempotency keys forgotten", metadata: ["count": "\(gone)"]) }
            } catch {
                logger.warning("cannot prune idempotency keys", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(for: .seconds(600))
        }
    }

    // MARK: Events to deliveries

    private func follow() async {
        let events = self.events
        var cursor = events.lastID
        var hooks: [String: [WebhookRecord]] = [:]
        var loaded = -1
        while !events.isClosed && !Task.isCancelled {
            let (batch, _) = events.events(after: cursor, limit: 500)
            if batch.isEmpty {
                await events.wait(after: cursor, timeout: .seconds(1))
                continue
            }
            let current = generation.load(ordering: .relaxed)
            if current != loaded {
                do {
                    hooks = Dictionary(grouping: try await store.webhooks(tenant: nil), by: \.tenant)
                    loaded = current
                } catch {
                    logger.warning("cannot read the webhooks; trying again", metadata: ["error": "\(error)"])
                    try? await Task.sleep(for: .seconds(1))
                    continue
                }
            }
            var deliveries: [WebhookDelivery] = []
            let now = Date()
            for event in batch {
                guard let tenant = (event.project ?? event.campaign)?.split(separator: "/").first.map(String.init),
                    let targets = hooks[tenant]
                else { continue }
                let principal = Principal(keyID: "", tenant: tenant, project: "", admin: true)
                for hook in targets where hook.wants(event.type) {
                    let body = JSON.bytes(
                        .object([
                            "type": .string(event.type),
                            "timestamp": .string(Resources.date(.seconds(now.timeIntervalSince1970))),
                            "data": event.data(for: principal),
                        ])
                    )
                    deliveries.append(
                        WebhookDelivery(
                            id: "msg_" + APIKeys.hex((0..<12).map { _ in UInt8.random(in: 0...255) }),
                            webhookID: hook.id,
                            tenant: tenant,
                            eventType: event.type,
                            payload: body,
                            state: .pending,
                            attempts: [],
                            nextAttemptAt: now,
                            createdAt: now
                        )
                    )
                }
            }
            do {
                try await store.addDeliveries(deliveries)
                cursor = batch.last!.id
                if !deliveries.isEmpty { wakeup.signal() }
            } catch {
                logger.warning("cannot store webhook deliveries; trying again", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    // MARK: Sending

    private func send() async {
        while !self.events.isClosed && !Task.isCancelled {
            let due: [WebhookDelivery]
            do {
                due = try await store.claimDueDeliveries(
                    now: Date(),
                    limit: 32,
                    holdFor: configuration.webhookTimeout + .seconds(5)
                )
            } catch {
                logger.warning("cannot read webhook deliveries", metadata: ["error": "\(error)"])
                due = []
            }
            if due.isEmpty {
                await wakeup.wait(until: clock.now + .milliseconds(500), clock: clock)
                continue
            }
            let hooks = Dictionary(
                uniqueKeysWithValues: ((try? await store.webhooks(tenant: nil)) ?? []).map { ($0.id, $0) }
            )
            await withTaskGroup(of: Void.self) { group in
                for delivery in due {
                    group.addTask { await self.attempt(delivery, hook: hooks[delivery.webhookID]) }
                }
            }
        }
    }

    private func attempt(_ delivery: WebhookDelivery, hook: WebhookRecord?) async {
        var delivery = delivery
        guard let hook else {
            delivery.state = .failed
            delivery.nextAttemptAt = nil
            try? await store.saveDelivery(delivery)
            return
        }
        let started = ContinuousClock.now
        let now = Date()
        var status: Int?
        var failure: String?
        if let refusal = WebhookTarget.check(hook.url, allowPrivate: configuration.allowPrivateWebhookTargets) {
            failure = "the target was refused: its URL \(refusal)"
        } else {
            let timestamp = Int(now.timeIntervalSince1970)
            var request = HTTPClientRequest(url: hook.url)
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/json")
            request.headers.add(name: "User-Agent", value: "pargen-webhooks")
            request.headers.add(name: "webhook-id", value: delivery.id)
            request.headers.add(name: "webhook-timestamp", value: String(timestamp))
            request.headers.add(
                name: "webhook-signature",
                value: WebhookSignature.sign(id: delivery.id, timestamp: timestamp, body: delivery.payload, secret: hook.secret)
            )
            request.body = .bytes(ByteBuffer(bytes: delivery.payload))
            do {
                let response = try await http.execute(request, timeout: .init(configuration.webhookTimeout))
                status = Int(response.status.code)
                // Read (and drop) what the receiver says, at most 64 kB of it.
                _ = try? await response.body.collect(upTo: 64 << 10)
                if !(200..<300).contains(status!) { failure = "the receiver answered \(status!)" }
            } catch {
                failure = "\(error)"
            }
        }
        let elapsed = ContinuousClock.now - started
        delivery.attempts.append(
            WebhookAttempt(at: now, status: status, error: failure, milliseconds: Int(elapsed.seconds * 1000))
        )
        if failure == nil {
            delivery.state = .delivered
            delivery.nextAttemptAt = nil
            metrics.webhookAttempt(outcome: "delivered")
        } else if let delay = configuration.webhookSchedule.delay(afterFailures: delivery.attempts.count) {
            delivery.nextAttemptAt = Date().addingTimeInterval(delay.seconds)
            metrics.webhookAttempt(outcome: "retry")
        } else {
            delivery.state = .failed
            delivery.nextAttemptAt = nil
            metrics.webhookAttempt(outcome: "failed")
        }
        logger.debug(
            "webhook delivery",
            metadata: [
                "webhook": .string(hook.id), "delivery": .string(delivery.id), "state": .string(delivery.state.rawValue),
                "status": .string(status.map(String.init) ?? "-"),
            ]
        )
        do {
            try await store.saveDelivery(delivery)
        } catch {
            logger.warning("cannot record a webhook delivery", metadata: ["error": "\(error)"])
        }
    }
}

extension TimeAmount {
    init(_ duration: Duration) { self = .nanoseconds(Int64(duration.seconds * 1e9)) }
}
