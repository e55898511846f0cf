import DequeModule
import Synchronization

/// A budget's scope.
public struct BudgetScope: Sendable, Hashable, Codable, CustomStringConvertible {
    public enum Kind: String, Sendable, Hashable, Codable { case global, project, campaign }
    public var kind: Kind
    public var name: String

    public init(kind: Kind, name: String) {
        self.kind = kind
        self.name = kind == .global ? "*" : name
    }

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

/// Budgets, what providers are expected to cost, alerts and spending figures.
///
/// It keeps no money of its own: the ledger is the job records' (``CostLedger``, in the job store), and a call's
/// reservation is checked against each budget by the store, in the transaction that makes it
/// (``JobStore/beginAttempt(_:provider:reserving:idempotentSubmission:within:)``). The monitor says which budgets
/// a job must fit in (``budgets(for:)``, with limits set while running), how much to reserve for a provider that
/// bills above its price list (``expectedCost(_:provider:)``), raises alerts from the totals the store returns,
/// and keeps this process's spending per provider and its trend.
public final class CostMonitor: Sendable {
    /// The largest charge-to-estimate ratio a provider has billed, as the pair of amounts.
    struct Overrun {
        var actual: Int64
        var estimate: Int64
    }

    struct ScopeBook {
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
        var scopes: [BudgetScope: ScopeBook] = [:]
        var providers: [String: ProviderBook] = [:]
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

    /// Applies the limits a store keeps (``BudgetLimitStore/budgetLimits()``): each one that differs from this
    /// monitor's is set as by ``setLimit(_:for:)``.
    public func apply(storedLimits: [BudgetScope: Money?]) {
        let current = overrides.withLock { $0 }
        for (scope, limit) in storedLimits where current[scope] != .some(limit) { setLimit(limit, for: scope) }
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

    /// The budgets a job of `request` must fit in: those of its scopes (global, its project, its campaign) that
    /// have a limit, in that order.
    public func budgets(for request: ValidatedRequest) -> [Budget] {
        BudgetScope.scopes(of: request).compactMap { scope in limit(of: scope).map { Budget(scope: scope, limit: $0) } }
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

    /// Takes note of what the store says each budget's scope has committed once a reservation was made, and
    /// returns the alerts that raised: the alert threshold crossed, or the limit reached (each once per scope,
    /// again after its limit changes).
    public func reserved(_ committed: [BudgetScope: Money]) -> [BudgetAlert] {
        state.withLock { state in
            var raised: [BudgetAlert] = []
            for (scope, amount) in committed.sorted(by: { $0.key.description < $1.key.description }) {
                guard let limit = limit(of: scope), limit > .zero else { continue }
                var book = state.scopes[scope, default: ScopeBook()]
                let fraction = amount.ratio(to: limit)
                if fraction >= configuration.alertThreshold, !book.alerted {
                    book.alerted = true
                    raised.append(
                        BudgetAlert(scope: scope, limit: limit, committed: amount, fraction: fraction, exhausted: false)
                    )
                }
                if amount >= limit, !book.exhaustedAlerted {
                    book.exhaustedAlerted = true
                    raised.append(
                        BudgetAlert(scope: scope, limit: limit, committed: amount, fraction: fraction, exhausted: true)
                    )
                }
                state.scopes[scope] = book
            }
            state.alerts.append(contentsOf: raised)
            return raised
        }
    }

    /// Takes note of a reservation the store refused (the job is held back or dead-lettered), and returns the
    /// alert that the budget is exhausted, once per scope.
    public func refused(_ refusal: BudgetRefusal) -> [BudgetAlert] {
        state.withLock { state in
            var book = state.scopes[refusal.scope, default: ScopeBook()]
            book.held += 1
            var raised: [BudgetAlert] = []
            if !book.exhaustedAlerted {
                book.exhaustedAlerted = true
                book.alerted = true
                raised.append(
                    BudgetAlert(
                        scope: refusal.scope,
                        limit: refusal.limit,
                        committed: refusal.committed,
                        fraction: refusal.committed.ratio(to: refusal.limit),
                        exhausted: true
                    )
                )
            }
            state.scopes[refusal.scope] = book
            state.alerts.append(contentsOf: raised)
            return raised
        }
    }

    /// Records a call's charge: this process's spending per provider and its trend, and the provider's
    /// charge-to-`estimate` ratio when it billed above its price list (see ``expectedCost(_:provider:)``).
    public func charged(_ actual: Money, provider: String, estimate: Money, mediaDuration: Duration = .zero) {
        let now = clock.now
        state.withLock { state in
            if actual > estimate, estimate > .zero {
                let worst = state.overruns[provider]
                // actual / estimate > worst.actual / worst.estimate, compared without division or overflow.
                let larger =
                    worst.map {
                        actual.nanos.multipliedFullWidth(by: $0.estimate)
                            > estimate.nanos.multipliedFullWidth(by: $0.actual)
                    } ?? true
                if larger { state.overruns[provider] = Overrun(actual: actual.nanos, estimate: estimate.nanos) }
            }
            let providerCharged = state.providers[provider]?.charged ?? .zero
            state.providers[provider, default: ProviderBook()].charged = providerCharged + actual
            state.providers[provider]!.jobs += 1
            state.providers[provider]!.mediaMilliseconds += max(0, mediaDuration.milliseconds)
            state.settlements.append((now, actual))
            while let first = state.settlements.first, now - first.time > configuration.trendWindow {
                state.settlements.removeFirst()
            }
        }
    }

    /// What this process's calls have been charged.
    public var chargedHere: Money {
        state.withLock { $0.providers.values.reduce(.zero) { $0 + $1.charged } }
    }

    /// The figures, with the ledger (``CostStats/reserved`` and the rest) and each limited budget's use as the job
    /// store sums them from the job records.
    public func stats(ledger: CostLedger = CostLedger(), usage: [BudgetScope: CostLedger] = [:]) -> CostStats {
        let now = clock.now
        let limits = limits()
        return state.withLock { state in
            var budgets: [BudgetUsage] = []
            let scopes = Set(limits.keys).union(usage.keys).union(state.scopes.keys)
            for scope in scopes.sorted(by: { $0.description < $1.description }) {
                let used = usage[scope] ?? CostLedger()
                budgets.append(
                    BudgetUsage(
                        scope: scope,
                        limit: limits[scope],
                        charged: used.charged,
                        reserved: used.pending,
                        held: state.scopes[scope]?.held ?? 0
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
                    perMediaMinute: $0.value.mediaMilliseconds <= 0
                        ? nil
                        : $0.value.charged.scaled(by: 60_000, over: $0.value.mediaMilliseconds)
                )
            }.sorted { $0.provider < $1.provider }
            return CostStats(
                reserved: ledger.reserved,
                charged: ledger.charged,
                released: ledger.released,
                outstanding: ledger.pending,
                budgets: budgets,
                alerts: state.alerts,
                trend: Self.trend(state.settlements, now: now, window: configuration.trendWindow),
                providers: providers
            )
        }
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

/// Spending figures. The ledger amounts are the job store's (every job in it), summed from the job records.
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
