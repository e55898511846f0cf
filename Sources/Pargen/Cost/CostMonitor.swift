import DequeModule
import Synchronization

/// A budget's scope.
public struct BudgetScope: Sendable, Hashable, Codable, CustomStringConvertible {
    public enum Kind: String, Sendable, Hashable, Codable { case global, project, campaign }
    public var kind: Kind
    public var name: String

    public static let global = BudgetScope(kind: .global, name: "*")
    public static func project(_ name: String) -> BudgetScope { BudgetScope(kind: .project, name: name) }
    public static func campaign(_ name: String) -> BudgetScope { BudgetScope(kind: .campaign, name: name) }

    public var description: String { kind == .global ? "global" : "\(kind.rawValue) \(name)" }
}

/// A budget crossing its alert threshold or its limit.
public struct BudgetAlert: Sendable, Hashable, Codable {
    public var scope: BudgetScope
    public var limit: Money
    /// Charged plus reserved when the alert was raised.
    public var committed: Money
    public var fraction: Double
    /// Whether this is the limit itself (1.0) rather than the alert threshold.
    public var exhausted: Bool
}

/// Spending direction over the trend window.
public enum CostTrend: String, Sendable, Hashable, Codable { case increasing, decreasing, stable }

/// Estimates, reservations against budgets, settlement and release, with an exact ledger.
///
/// Every job's estimate is reserved in every scope it belongs to (global, its project, its campaign) before
/// the provider is called. Success settles the actual charge (releasing the difference); failure releases the
/// whole reservation. At every quiescent point `reserved == charged + released`.
public final class CostMonitor: Sendable {
    public enum Reservation: Sendable, Hashable {
        case reserved
        /// A budget would be exceeded. `canFree` says whether reservations in flight in that scope may come
        /// back; when not, the job cannot run under this budget.
        case held(scope: BudgetScope, limit: Money, committed: Money, canFree: Bool)
    }

    struct Open {
        var amount: Money
        /// The provider's price-list estimate that `amount` was scaled from.
        var estimate: Money
        var scopes: [BudgetScope]
        var provider: String
    }

    /// The largest charge-to-estimate ratio a provider has billed, as the pair of amounts.
    struct Overrun {
        var actual: Int64
        var estimate: Int64
    }

    struct ScopeBook {
        var charged = Money.zero
        var outstanding = Money.zero
        var alerted = false
        var exhaustedAlerted = false
        var held = 0
    }

    struct ProviderBook {
        var charged = Money.zero
        var jobs = 0
        var mediaMilliseconds: Int64 = 0
    }

    struct State {
        var open: [JobID: Open] = [:]
        var scopes: [BudgetScope: ScopeBook] = [:]
        var providers: [String: ProviderBook] = [:]
        var reserved = Money.zero
        var charged = Money.zero
        var released = Money.zero
        var settlements: Deque<(time: Duration, amount: Money)> = []
        var alerts: [BudgetAlert] = []
        var overruns: [String: Overrun] = [:]
    }

    public let configuration: PargenConfiguration.Budgets
    private let clock: PargenClock
    private let state = Mutex(State())
    /// Limits set while running (``setLimit(_:for:)``), over the configuration's; `nil` removes one. Taken
    /// inside `state`'s lock, never the other way round.
    private let overrides = Mutex<[BudgetScope: Money?]>([:])

    public init(configuration: PargenConfiguration.Budgets, clock: PargenClock = .continuous) {
        self.configuration = configuration
        self.clock = clock
    }

    /// The limit of a scope, if it has one.
    public func limit(of scope: BudgetScope) -> Money? {
        if let override = overrides.withLock({ $0[scope] }) { return override }
        return switch scope.kind {
        case .global: configuration.global
        case .project: configuration.perProject[scope.name] ?? configuration.defaultPerProject
        case .campaign: configuration.perCampaign[scope.name]
        }
    }

    /// Sets a scope's limit from now on (`nil` removes it), over the configuration's. Jobs held by the old
    /// limit are admitted at their next look if the new one has room; money already committed stays committed.
    public func setLimit(_ limit: Money?, for scope: BudgetScope) {
        overrides.withLock { $0[scope] = .some(limit) }
        // A raised limit may alert again when it is approached.
        state.withLock { state in
            if var book = state.scopes[scope] {
                book.alerted = false
                book.exhaustedAlerted = false
                state.scopes[scope] = book
            }
        }
    }

    /// The scopes with a limit: the configuration's and those set while running.
    public func limits() -> [BudgetScope: Money] {
        var limits: [BudgetScope: Money] = [:]
        if let global = configuration.global { limits[.global] = global }
        for (name, amount) in configuration.perProject { limits[.project(name)] = amount }
        for (name, amount) in configuration.perCampaign { limits[.campaign(name)] = amount }
        for (scope, amount) in overrides.withLock({ $0 }) { limits[scope] = amount }
        return limits
    }

    /// What a call estimated at `estimate` is expected to cost at `provider`: the estimate, scaled up by the
    /// largest charge-to-estimate ratio the provider has billed so far (never down). Once a provider is seen to
    /// bill more than its price list says, every later reservation for it is of the higher amount, so a budget
    /// can only be overrun by the calls that were already under way when the first overrun was settled.
    public func expectedCost(_ estimate: Money, provider: String) -> Money {
        state.withLock { Self.scaled(estimate, by: $0.overruns[provider]) }
    }

    private static func scaled(_ estimate: Money, by overrun: Overrun?) -> Money {
        guard let overrun, overrun.estimate > 0, overrun.actual > overrun.estimate else { return estimate }
        let product = estimate.nanos.multipliedFullWidth(by: overrun.actual)
        guard product.high < overrun.estimate / 2 else { return Money(nanos: .max) }
        let (quotient, remainder) = overrun.estimate.dividingFullWidth(product)
        return Money(nanos: remainder > 0 && quotient < .max ? quotient + 1 : quotient)
    }

    /// Reserves the expected cost (``expectedCost(_:provider:)``) of a call estimated at `amount` for `job` in
    /// its global, project and campaign scopes, all or nothing. Reserving again replaces the job's own
    /// reservation: the engine reserves once when it picks the provider, and again right before the call, when
    /// the provider's overruns seen meanwhile are known.
    ///
    /// - Returns: ``Reservation/reserved``, or ``Reservation/held(scope:limit:committed:canFree:)`` naming
    ///   the first budget that would be exceeded. Returns the alerts this reservation raised.
    public func reserve(
        _ amount: Money,
        for job: JobID,
        project: String,
        campaign: String,
        provider: String
    ) -> (Reservation, [BudgetAlert]) {
        let scopes: [BudgetScope] = [.global, .project(project), .campaign(campaign)]
        return state.withLock { state in
            let estimate = amount
            let amount = Self.scaled(estimate, by: state.overruns[provider])
            if let existing = state.open.removeValue(forKey: job) {
                // Idempotent: the same job reserving again replaces its own reservation.
                Self.drop(existing, from: &state)
                state.reserved = state.reserved - existing.amount
            }
            for scope in scopes {
                guard let limit = limit(of: scope) else { continue }
                let book = state.scopes[scope, default: ScopeBook()]
                let committed = book.charged + book.outstanding
                if committed + amount > limit {
                    state.scopes[scope, default: ScopeBook()].held += 1
                    return (
                        .held(scope: scope, limit: limit, committed: committed, canFree: book.outstanding > .zero), []
                    )
                }
            }
            state.open[job] = Open(amount: amount, estimate: estimate, scopes: scopes, provider: provider)
            state.reserved = state.reserved + amount
            for scope in scopes {
                let outstanding = state.scopes[scope]?.outstanding ?? .zero
                state.scopes[scope, default: ScopeBook()].outstanding = outstanding + amount
            }
            return (.reserved, raiseAlerts(&state, scopes: scopes))
        }
    }

    /// Settles `job`'s reservation at the `actual` charge. An overrun tops the reservation up first.
    @discardableResult
    public func settle(_ job: JobID, actual: Money, mediaDuration: Duration = .zero) -> [BudgetAlert] {
        let now = clock.now
        return state.withLock { state in
            guard let open = state.open.removeValue(forKey: job) else { return [] }
            Self.drop(open, from: &state)
            if actual > open.amount { state.reserved = state.reserved + (actual - open.amount) }
            if actual > open.estimate, open.estimate > .zero {
                let worst = state.overruns[open.provider]
                // actual / estimate > worst.actual / worst.estimate, compared without division or overflow.
                let larger =
                    worst.map {
                        actual.nanos.multipliedFullWidth(by: $0.estimate)
                            > open.estimate.nanos.multipliedFullWidth(by: $0.actual)
                    } ?? true
                if larger { state.overruns[open.provider] = Overrun(actual: actual.nanos, estimate: open.estimate.nanos) }
            }
            state.charged = state.charged + actual
            state.released = state.released + max(.zero, open.amount - actual)
            for scope in open.scopes {
                let charged = state.scopes[scope]?.charged ?? .zero
                state.scopes[scope, default: ScopeBook()].charged = charged + actual
            }
            let providerCharged = state.providers[open.provider]?.charged ?? .zero
            state.providers[open.provider, default: ProviderBook()].charged = providerCharged + actual
            state.providers[open.provider]!.jobs += 1
            state.providers[open.provider]!.mediaMilliseconds += mediaDuration.milliseconds
            state.settlements.append((now, actual))
            while let first = state.settlements.first, now - first.time > configuration.trendWindow {
                state.settlements.removeFirst()
            }
            return raiseAlerts(&state, scopes: open.scopes)
        }
    }

    /// Releases `job`'s whole reservation (the call failed or was never made).
    public func release(_ job: JobID) {
        state.withLock { state in
            guard let open = state.open.removeValue(forKey: job) else { return }
            Self.drop(open, from: &state)
            state.released = state.released + open.amount
        }
    }

    public func stats() -> CostStats {
        let now = clock.now
        return state.withLock { state in
            var budgets: [BudgetUsage] = []
            for (scope, book) in state.scopes.sorted(by: { $0.key.description < $1.key.description }) {
                budgets.append(
                    BudgetUsage(
                        scope: scope,
                        limit: limit(of: scope),
                        charged: book.charged,
                        reserved: book.outstanding,
                        held: book.held
                    )
                )
            }
            let providers = state.providers.map {
                ProviderSpend(
                    provider: $0.key,
                    charged: $0.value.charged,
                    jobs: $0.value.jobs,
                    averagePerJob: $0.value.jobs == 0
                        ? .zero : Money(nanos: $0.value.charged.nanos / Int64($0.value.jobs)),
                    perMediaMinute: $0.value.mediaMilliseconds == 0
                        ? nil
                        : $0.value.charged.scaled(by: 60_000, over: $0.value.mediaMilliseconds)
                )
            }.sorted { $0.provider < $1.provider }
            return CostStats(
                reserved: state.reserved,
                charged: state.charged,
                released: state.released,
                outstanding: state.open.values.reduce(.zero) { $0 + $1.amount },
                budgets: budgets,
                alerts: state.alerts,
                trend: Self.trend(state.settlements, now: now, window: configuration.trendWindow),
                providers: providers
            )
        }
    }

    private static func drop(_ open: Open, from state: inout State) {
        for scope in open.scopes {
            if let outstanding = state.scopes[scope]?.outstanding {
                state.scopes[scope]!.outstanding = outstanding - open.amount
            }
        }
    }

    private func raiseAlerts(_ state: inout State, scopes: [BudgetScope]) -> [BudgetAlert] {
        var raised: [BudgetAlert] = []
        for scope in scopes {
            guard let limit = limit(of: scope), limit > .zero, var book = state.scopes[scope] else { continue }
            let committed = book.charged + book.outstanding
            let fraction = committed.ratio(to: limit)
            if fraction >= configuration.alertThreshold, !book.alerted {
                book.alerted = true
                raised.append(
                    BudgetAlert(scope: scope, limit: limit, committed: committed, fraction: fraction, exhausted: false)
                )
            }
            if book.charged >= limit, !book.exhaustedAlerted {
                book.exhaustedAlerted = true
                raised.append(
                    BudgetAlert(scope: scope, limit: limit, committed: committed, fraction: fraction, exhausted: true)
                )
            }
            state.scopes[scope] = book
        }
        state.alerts.append(contentsOf: raised)
        return raised
    }

    /// Compares spending in the older and newer halves of the window: ±20 % is a trend.
    static func trend(
        _ settlements: Deque<(time: Duration, amount: Money)>,
        now: Duration,
        window: Duration
    ) -> CostTrend {
        let middle = now - window / 2
        var older: Int64 = 0
        var newer: Int64 = 0
        for entry in settlements where now - entry.time <= window {
            if entry.time < middle { older += entry.amount.nanos } else { newer += entry.amount.nanos }
        }
        if older == 0 && newer == 0 { return .stable }
        if Double(newer) > Double(older) * 1.2 { return .increasing }
        if Double(newer) < Double(older) * 0.8 { return .decreasing }
        return .stable
    }
}

public struct BudgetUsage: Sendable, Hashable, Codable {
    public var scope: BudgetScope
    public var limit: Money?
    public var charged: Money
    /// Reserved and not yet settled.
    public var reserved: Money
    /// Reservations refused so far (jobs held back).
    public var held: Int
    public var utilization: Double? { limit.map { (charged + reserved).ratio(to: $0) } }
}

public struct ProviderSpend: Sendable, Hashable, Codable {
    public var provider: String
    public var charged: Money
    public var jobs: Int
    public var averagePerJob: Money
    public var perMediaMinute: Money?
}

public struct CostStats: Sendable, Hashable, Codable {
    /// Everything ever reserved (with overrun top-ups).
    public var reserved: Money
    public var charged: Money
    public var released: Money
    /// Reserved and not yet settled or released.
    public var outstanding: Money
    public var budgets: [BudgetUsage]
    public var alerts: [BudgetAlert]
    public var trend: CostTrend
    public var providers: [ProviderSpend]

    /// `reserved == charged + released + outstanding`: holds at every moment, and with nothing outstanding,
    /// `reserved == charged + released`.
    public var ledgerBalances: Bool { reserved == charged + released + outstanding }
}
