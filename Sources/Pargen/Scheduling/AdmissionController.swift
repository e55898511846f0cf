import Synchronization

/// The thread-safe shell around ``AdmissionState``: one lock, and nothing called while it is held.
///
/// The engine's scheduler stage adds the jobs it has taken from the store, asks for a round of decisions, and
/// starts the jobs granted; every call's outcome comes back through ``finish(_:outcome:)``, the one feedback
/// path into the providers' admission state.
public final class AdmissionController: Sendable {
    private let state: Mutex<AdmissionState>
    private let clock: PargenClock

    public init(providers: [ProviderDescriptor], rateLimits: PargenConfiguration.RateLimits, clock: PargenClock) {
        self.clock = clock
        state = Mutex(
            AdmissionState(
                providers: providers.map { ProviderAdmission(name: $0.name, quota: $0.quota) },
                clients: ClientLimits(configuration: rateLimits)
            )
        )
    }

    public func enqueue(_ request: AdmissionRequest) {
        let now = clock.now
        state.withLock { $0.enqueue(request, at: now) }
    }

    @discardableResult
    public func remove(_ job: JobID) -> Bool {
        let now = clock.now
        return state.withLock { $0.remove(job, at: now) }
    }

    public func waitingCount(of kind: GenerationKind) -> Int { state.withLock { $0.waitingCount(of: kind) } }

    public var waitingCount: Int { state.withLock { $0.waitingCount } }

    public func schedule(jobSlots: Int, breakers: [String: BreakerGate]) -> AdmissionSchedule {
        let now = clock.now
        return state.withLock { $0.schedule(at: now, jobSlots: jobSlots, breakers: breakers) }
    }

    public func arrived(_ ticket: AdmissionTicket) {
        let now = clock.now
        state.withLock { $0.arrived(ticket, at: now) }
    }

    public func finish(_ ticket: AdmissionTicket, outcome: ProviderAdmission.Outcome) {
        let now = clock.now
        state.withLock { $0.finish(ticket, outcome: outcome, at: now) }
    }

    public func taskHeldBack(_ provider: String) { state.withLock { $0.taskHeldBack(provider) } }

    /// Holds calls to `provider` back until `until` (``AdmissionState/holdBack(_:until:)``).
    public func holdBack(_ provider: String, until: Duration) { state.withLock { $0.holdBack(provider, until: until) } }

    public func cooldownEnd(_ provider: String) -> Duration? {
        let now = clock.now
        return state.withLock { $0.cooldownEnd(provider, at: now) }
    }

    public func blockedUsers() -> (users: Set<String>, until: Duration?) {
        let now = clock.now
        return state.withLock { $0.blockedUsers(at: now) }
    }

    /// What the limits have done so far, as the rate limiter reports it.
    public func limiterStats() -> RateLimiterStats {
        state.withLock { state in
            RateLimiterStats(
                admitted: state.admitted,
                denied: state.denied,
                waitTime: state.waited,
                waiting: state.waitingCount,
                burstCooldowns: state.clients.burstCooldowns,
                trackedUsers: state.clients.trackedUsers,
                trackedProjects: state.clients.trackedProjects
            )
        }
    }

    /// Each provider's slots (adaptive limit, calls in flight, peak), window room and cooldown.
    public func providerStats() -> [String: ProviderConcurrencyStats] {
        let now = clock.now
        return state.withLock { state in
            var stats: [String: ProviderConcurrencyStats] = [:]
            for name in state.providers.keys {
                // A copy (its log included): stats are rare, and the state's own log is only changed by decisions.
                var provider = state.providers[name]!
                let room = provider.windowRoom(at: now)
                stats[name] = ProviderConcurrencyStats(
                    limit: provider.adaptive.current,
                    maximum: provider.adaptive.maximum,
                    inFlight: provider.slotsInUse,
                    peak: provider.peakSlots,
                    decreases: provider.adaptive.decreases,
                    windowLimit: provider.quota.requestsPerMinute,
                    windowRoom: room == .max ? nil : room,
                    cooldownLeft: provider.cooldownUntil.flatMap { $0 > now ? $0 - now : nil }
                )
            }
            return stats
        }
    }
}

/// A ticket in the hands of the job that uses it: its arrival and its end are told to the controller once.
final class HeldTicket: Sendable {
    let ticket: AdmissionTicket
    private let controller: AdmissionController
    private let flags = Mutex((arrived: false, finished: false))
    /// Told when the provider throttled the call (a shared store holds every worker back).
    private let onThrottled: (@Sendable (String, Duration) -> Void)?

    init(
        _ ticket: AdmissionTicket,
        controller: AdmissionController,
        onThrottled: (@Sendable (String, Duration) -> Void)? = nil
    ) {
        self.ticket = ticket
        self.controller = controller
        self.onThrottled = onThrottled
    }

    var provider: String { ticket.provider }

    var isFinished: Bool { flags.withLock { $0.finished } }

    func arrived() {
        let first = flags.withLock { flags -> Bool in
            guard !flags.arrived && !flags.finished else { return false }
            flags.arrived = true
            return true
        }
        if first { controller.arrived(ticket) }
    }

    /// Ends the ticket with `outcome`; later calls do nothing.
    func finish(_ outcome: ProviderAdmission.Outcome) {
        let first = flags.withLock { flags -> Bool in
            guard !flags.finished else { return false }
            flags.finished = true
            return true
        }
        guard first else { return }
        controller.finish(ticket, outcome: outcome)
        if case .throttled(let retryAfter) = outcome { onThrottled?(ticket.provider, retryAfter ?? .seconds(1)) }
    }
}
