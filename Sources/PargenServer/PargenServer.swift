public import AsyncHTTPClient
import Foundation
import HTTPTypes
public import Hummingbird
public import Logging
import NIOCore
public import Pargen
public import ServiceLifecycle
import UnixSignals
import Synchronization

/// How the service listens and what it accepts.
public struct ServerConfiguration: Sendable {
    /// Loopback by default: put a TLS proxy in front to serve other machines.
    public var host: String = "127.0.0.1"
    /// 0 picks a free port (``PargenServer/run(onListening:)`` says which).
    public var port: Int = 8080
    /// Largest JSON body (`POST /v1/jobs`, budgets).
    public var maxJSONBodyBytes: Int = 1 << 20
    /// Largest campaign upload (`POST /v1/campaigns`).
    public var maxUploadBytes: Int = 64 << 20
    /// Most jobs in one `POST /v1/jobs`.
    public var maxBatch: Int = 1000
    /// How long an `Idempotency-Key` and its answer are kept (Stripe keeps them 24 h).
    public var idempotencyRetention: Duration = .seconds(24 * 3600)
    /// A request holding an `Idempotency-Key` without answering for this long (a crash) loses it to a retry.
    public var idempotencyLockTimeout: Duration = .seconds(120)
    /// The longest `Prefer: wait=N` honoured.
    public var maxPreferWait: Duration = .seconds(60)
    /// Per API key (as the user: a sliding window) and per tenant (as the project: token bucket and burst),
    /// through the engine's own ``ClientLimits``.
    public var keyLimits = PargenConfiguration.RateLimits(
        perUserRequestsPerMinute: 6000,
        perProjectRequestsPerMinute: 60_000,
        tokenBucketCapacity: 10_000,
        maxBurst: 5000,
        burstWindow: .seconds(1),
        burstCooldown: .seconds(1)
    )
    /// When set, `GET /metrics` takes `Authorization: Bearer TOKEN` (the figures cover every tenant).
    public var metricsToken: String?
    /// Events kept for `/v1/events` resumption.
    public var eventCapacity: Int = 100_000
    /// Comment lines sent on an idle event stream, so proxies keep it open.
    public var eventHeartbeat: Duration = .seconds(15)
    /// How long a shutdown waits for requests in flight before it cancels them.
    public var shutdownGrace: Duration = .seconds(30)
    /// Webhook targets on loopback, private or link-local addresses are refused (SSRF) unless this is set.
    public var allowPrivateWebhookTargets = false
    /// When failed webhook deliveries are tried again (more than 24 h by default).
    public var webhookSchedule = WebhookSchedule.standard
    /// The longest a receiver may take to answer one delivery.
    public var webhookTimeout: Duration = .seconds(10)

    public init() {}
}

/// The HTTP service: a job API with tenants, idempotency and live events over one ``ParallelGenerator``.
///
/// ```swift
/// let generator = ParallelGenerator(store: SQLiteJobStore(path: "jobs.sqlite"))
/// try await generator.start()
/// let server = PargenServer(generator: generator, serviceStore: try SQLiteServiceStore(path: "jobs.sqlite"))
/// try await server.run()   // until SIGTERM or SIGINT; then stop the generator
/// ```
///
/// Every route but `/healthz`, `/readyz` and `/openapi.yaml` takes `Authorization: Bearer KEY` (keys from
/// `pargen keys create`), and sees only the key's tenant. Errors are RFC 9457 problems.
public final class PargenServer: Sendable {
    public let generator: ParallelGenerator
    public let configuration: ServerConfiguration
    let serviceStore: any ServiceStore
    let keyRing: KeyRing
    let events: EventLog
    let webhooks: WebhookDispatcher
    let metrics = ServerMetrics()
    let logger: Logger
    let limits: Mutex<ClientLimits>
    let clock = PargenClock.continuous
    /// Where each job this process knows belongs (stored project and campaign), for its events.
    let scopes = Mutex<[JobID: (project: String, campaign: String)]>([:])
    private let feed: AsyncStream<PargenEvent>
    private let feedInput: AsyncStream<PargenEvent>.Continuation
    private let callback: Mutex<UInt64?> = Mutex(nil)

    public init(
        generator: ParallelGenerator,
        serviceStore: any ServiceStore,
        configuration: ServerConfiguration = ServerConfiguration(),
        httpClient: HTTPClient = .shared,
        logger: Logger = Logger(label: "pargen.server")
    ) {
        self.generator = generator
        self.serviceStore = serviceStore
        self.configuration = configuration
        self.logger = logger
        keyRing = KeyRing(store: serviceStore)
        events = EventLog(capacity: configuration.eventCapacity)
        webhooks = WebhookDispatcher(
            events: events,
            store: serviceStore,
            configuration: configuration,
            logger: logger,
            http: httpClient,
            metrics: metrics
        )
        limits = Mutex(ClientLimits(configuration: configuration.keyLimits))
        (feed, feedInput) = AsyncStream.makeStream(of: PargenEvent.self, bufferingPolicy: .bufferingNewest(100_000))
        let input = feedInput
        callback.withLock { $0 = generator.onEvent { input.yield($0) } }
    }

    deinit {
        if let token = callback.withLock({ $0 }) { generator.removeEventCallback(token) }
        feedInput.finish()
    }

    /// The routes, on a router of the service's context.
    public func router() -> Router<PargenRequestContext> {
        let router = Router(context: PargenRequestContext.self)
        router.add(middleware: RequestLogMiddleware(metrics: metrics))
        router.add(middleware: ProblemMiddleware())
        addOperationRoutes(router)
        addDashboardRoutes(router)
        let api = router.group("v1").add(middleware: AuthenticationMiddleware(server: self))
        addJobRoutes(api)
        addCampaignRoutes(api)
        addAdminRoutes(api)
        addEventRoutes(api)
        addWebhookRoutes(api)
        return router
    }

    /// The application: the routes, and the task that turns the engine's events into `/v1/events`.
    public func application(
        onListening: @escaping @Sendable (Int) async -> Void = { _ in }
    ) -> some ApplicationProtocol {
        Application(
            router: router(),
            configuration: .init(
                address: .hostname(configuration.host, port: configuration.port),
                serverName: "pargen"
            ),
            services: [EventPump(server: self), WebhookService(dispatcher: webhooks)],
            onServerRunning: { channel in await onListening(channel.localAddress?.port ?? 0) },
            logger: logger
        )
    }

    /// Serves until SIGTERM or SIGINT: then it stops accepting connections, lets requests in flight finish and
    /// ends event streams.
    ///
    /// - Parameter services: Services the server depends on, run before it in the same group and shut down after
    ///   it (a `GenerationRuntime`, which then stops the engine and gives its leases back). Without one, stopping
    ///   the generator is the caller's, after this returns.
    ///
    /// Requests still running after ``ServerConfiguration/shutdownGrace`` are cancelled (a client that stopped
    /// reading an event stream cannot hold the shutdown).
    public func run(
        after services: [any Service] = [],
        onListening: @escaping @Sendable (Int) async -> Void = { _ in }
    ) async throws {
        var group = ServiceGroupConfiguration(
            services: services.map { .init(service: $0) } + [.init(service: application(onListening: onListening))],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger
        )
        group.maximumGracefulShutdownDuration = configuration.shutdownGrace
        group.maximumCancellationDuration = .seconds(5)
        try await ServiceGroup(configuration: group).run()
    }

    /// Ends ``pumpEvents()``: the engine's events are no longer turned into service events.
    func stopPump() { feedInput.finish() }

    /// Remembers where a job belongs, so that its events are scoped without a store read.
    func remember(_ id: JobID, project: String, campaign: String) {
        scopes.withLock { $0[id] = (project, campaign) }
    }

    /// Turns engine events into service events, in order, until the engine's stream ends or shutdown.
    func pumpEvents() async {
        // Jobs whose status went past `queued`, until they finish.
        var started = Set<JobID>()
        // When each job's current task was submitted (engine time), for the provider latency histogram.
        var submitted: [JobID: Duration] = [:]
        for await event in feed {
            if case .progress(let update) = event, let provider = update.provider {
                switch update.status {
                case .submitted: submitted[update.jobID] = update.time
                case .downloading, .succeeded, .retrying, .failed, .deadLettered:
                    // The provider's part ends with its answer: the download starts, or the call failed.
                    if let start = submitted.removeValue(forKey: update.jobID) {
                        metrics.providerCall(provider: provider, status: update.status, latency: update.time - start)
                    }
                default: break
                }
            }
            if case .finished(let result) = event, let id = result.jobID { submitted[id] = nil }
            await record(event, started: &started)
        }
    }

    private func scope(of id: JobID) async -> (project: String, campaign: String)? {
        if let known = scopes.withLock({ $0[id] }) { return known }
        guard let record = try? await generator.store.job(id) else { return nil }
        let scope = (record.request.project, record.request.campaign)
        scopes.withLock { $0[id] = scope }
        return scope
    }

    private func record(_ event: PargenEvent, started: inout Set<JobID>) async {
        switch event {
        case .progress(let update):
            // The engine may start a job before the call that queued it has said so: a late `queued` is stale.
            if update.status == .queued {
                if started.contains(update.jobID) { return }
            } else {
                started.insert(update.jobID)
            }
            guard let scope = await scope(of: update.jobID) else { return }
            let type =
                switch update.status {
                case .waitingForRateLimit: "quota.hold"
                case .heldByBudget: "budget.hold"
                default: "job.status"
                }
            var fields: [String: JSONValue] = [
                "status": .string(update.status.rawValue),
                "request_id": .string(update.requestID),
                "progress": .number(update.progress),
            ]
            if let provider = update.provider { fields["provider"] = .string(provider) }
            if let message = update.message { fields["message"] = .string(message) }
            events.append(
                type: type,
                project: scope.project,
                campaign: scope.campaign,
                jobID: update.jobID.rawValue,
                fields: fields
            )
        case .finished(let result):
            guard let id = result.jobID, let scope = await scope(of: id) else { return }
            var fields: [String: JSONValue] = [
                "state": .string(result.succeeded ? "succeeded" : "failed"),
                "request_id": .string(result.requestID),
                "cost": Resources.money(result.actualCost),
                "attempts": .number(Double(result.attempts)),
            ]
            if let provider = result.provider { fields["provider"] = .string(provider) }
            if let error = result.error { fields["error"] = Resources.error(error) }
            metrics.jobFinished(provider: result.provider, succeeded: result.succeeded, latency: result.latency)
            events.append(
                type: "job.finished",
                project: scope.project,
                campaign: scope.campaign,
                jobID: id.rawValue,
                fields: fields
            )
            _ = scopes.withLock { $0.removeValue(forKey: id) }
            started.remove(id)
        case .budgetAlert(let alert):
            events.append(
                type: "budget.alert",
                project: alert.scope.kind == .project ? alert.scope.name : nil,
                campaign: alert.scope.kind == .campaign ? alert.scope.name : nil,
                jobID: nil,
                fields: [
                    "scope": .string(alert.scope.kind.rawValue),
                    "limit": Resources.money(alert.limit),
                    "committed": Resources.money(alert.committed),
                    "fraction": .number(alert.fraction),
                    "exhausted": .bool(alert.exhausted),
                ]
            )
        }
    }

    /// Takes one request from the key's window and its tenant's bucket, or answers 429 with Retry-After.
    func admit(_ principal: Principal) throws {
        let now = clock.now
        let refusal = limits.withLock { limits -> (Duration, RateLimiter.LimitKind)? in
            if let refusal = limits.check(user: principal.keyID, project: principal.tenant, at: now) { return refusal }
            limits.record(user: principal.keyID, project: principal.tenant, at: now)
            return nil
        }
        if let (wait, kind) = refusal {
            let seconds = max(1, Int(wait.seconds.rounded(.up)))
            throw Problem(
                .tooManyRequests,
                "Too Many Requests",
                "this key's \(kind) is used up; try again in \(seconds) s",
                headers: [.retryAfter: String(seconds)]
            )
        }
    }
}

/// Runs ``PargenServer/pumpEvents()`` beside the HTTP server, and closes the event log when shutdown begins, so
/// that event streams end and the server can finish.
struct EventPump: Service {
    let server: PargenServer

    func run() async throws {
        // Shutdown (or cancellation) ends the pump's loop and closes the log; the engine's stream of events ends
        // with it, so a server runs one application in its life.
        await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                await server.pumpEvents()
            } onCancel: {
                server.events.close()
            }
        } onGracefulShutdown: {
            server.events.close()
            server.stopPump()
        }
    }
}

/// Runs the webhook dispatcher beside the HTTP server until shutdown, and forgets idempotency keys older than
/// their retention (every 10 minutes).
struct WebhookService: Service {
    let dispatcher: WebhookDispatcher

    func run() async throws {
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await dispatcher.run() }
                group.addTask { await dispatcher.pruneIdempotencyKeys() }
            }
        }
    }
}

/// Finds the caller's key and takes the request from the key's window and its tenant's bucket (429 when full),
/// for every /v1 route.
struct AuthenticationMiddleware: RouterMiddleware {
    typealias Context = PargenRequestContext
    let server: PargenServer

    func handle(
        _ request: Request,
        context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        let challenge: HTTPFields = [.wwwAuthenticate: "Bearer realm=\"pargen\""]
        let token: String
        if let header = request.headers[.authorization] {
            guard header.lowercased().hasPrefix("bearer ") else {
                throw Problem(.unauthorized, "Unauthorized", "send Authorization: Bearer KEY", headers: challenge)
            }
            token = String(header.dropFirst(7)).trimmingCharacters(in: .whitespaces)
        } else if let cookie = PargenServer.cookie(PargenServer.sessionCookie, in: request) {
            // The dashboard's session. A change made with it must say so in a header that another site's page
            // cannot send (CSRF); the cookie is SameSite=Strict as well.
            if request.method != .get && request.method != .head
                && request.headers[HTTPField.Name("X-Requested-With")!] != "pargen-dashboard"
            {
                throw Problem(.forbidden, "Forbidden", "a change made with the dashboard's cookie needs X-Requested-With: pargen-dashboard")
            }
            token = cookie
        } else {
            throw Problem(.unauthorized, "Unauthorized", "send Authorization: Bearer KEY", headers: challenge)
        }
        guard let principal = try await server.keyRing.principal(for: token) else {
            throw Problem(.unauthorized, "Unauthorized", "the API key is not known", headers: challenge)
        }
        try server.admit(principal)
        var context = context
        context.principal = principal
        context.logger[metadataKey: "pargen.key"] = .string(principal.keyID)
        context.logger[metadataKey: "pargen.tenant"] = .string(principal.tenant)
        return try await next(request, context)
    }
}

/// One log line per request at info: method, path, status and time, with the request id Hummingbird puts in the
/// context's logger (`hb.request.id`).
struct RequestLogMiddleware: RouterMiddleware {
    typealias Context = PargenRequestContext
    let metrics: ServerMetrics

    func handle(
        _ request: Request,
        context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        let start = ContinuousClock.now
        let response = try await next(request, context)
        metrics.request(
            method: request.method.rawValue,
            route: context.endpointPath ?? "unmatched",
            status: Int(response.status.code),
            duration: ContinuousClock.now - start
        )
        context.logger.info(
            "request",
            metadata: [
                "http.method": .string(request.method.rawValue),
                "http.path": .string(request.uri.path),
                "http.status": .stringConvertible(response.status.code),
                "duration_ms": .stringConvertible(((ContinuousClock.now - start).seconds * 1000).rounded()),
            ]
        )
        return response
    }
}
