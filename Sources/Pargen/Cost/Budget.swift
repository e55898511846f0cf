/// A budget that a call's reservation must fit in: what the jobs of `scope` have been charged, plus what they have
/// reserved and not yet settled (their ledgers' `charged + pending`), may not exceed `limit`.
///
/// The job store checks it, against the job records' own ledgers, in the transaction that reserves the call's
/// cost (``JobStore/beginAttempt(_:provider:reserving:idempotentSubmission:within:)``): there is one ledger, and
/// a budget holds exactly however many engines share the store.
public struct Budget: Sendable, Hashable {
    public var scope: BudgetScope
    public var limit: Money

    public init(scope: BudgetScope, limit: Money) {
        self.scope = scope
        self.limit = limit
    }
}

/// A reservation the store refused because it would take a budget past its limit. Nothing was reserved and the
/// attempt was not begun.
public struct BudgetRefusal: Error, Sendable, Hashable, CustomStringConvertible {
    public var scope: BudgetScope
    public var limit: Money
    /// What the scope's other jobs have committed (charged plus pending).
    public var committed: Money
    /// What this job would commit with the reservation (its own charges plus the new reservation).
    public var needed: Money
    /// Whether other jobs of the scope have reservations pending, which may come back (a failed call releases
    /// its reservation): when not, the job cannot run under this budget as it stands.
    public var canFree: Bool

    public init(scope: BudgetScope, limit: Money, committed: Money, needed: Money, canFree: Bool) {
        self.scope = scope
        self.limit = limit
        self.committed = committed
        self.needed = needed
        self.canFree = canFree
    }

    public var description: String {
        "\(scope) budget of \(limit) would be exceeded: \(committed) committed, this job needs \(needed)"
    }
}

extension BudgetScope {
    /// Whether a job of `request` counts against this scope.
    public func contains(_ request: ValidatedRequest) -> Bool {
        contains(project: request.project, campaign: request.campaign)
    }

    /// Whether a job of `project` and `campaign` counts against this scope.
    public func contains(project: String, campaign: String) -> Bool {
        switch kind {
        case .global: true
        case .project: project == name
        case .campaign: campaign == name
        }
    }

    /// The scopes a job of `request` counts against: global, its project, its campaign.
    public static func scopes(of request: ValidatedRequest) -> [BudgetScope] {
        [.global, .project(request.project), .campaign(request.campaign)]
    }
}

extension Budget {
    /// The rule every store applies: with `others` (each budget's scope summed over every job but this one:
    /// `charged + pending`, and `pending` alone) and what this job commits once its attempt has begun
    /// (`own`, its ledger's `charged + pending`), either every budget has room and the committed totals after the
    /// reservation come back, or the first budget (in the order given) that would be exceeded is refused.
    public static func check(
        _ budgets: [Budget],
        others: [BudgetScope: (committed: Money, pending: Money)],
        own: Money
    ) -> Result<[BudgetScope: Money], BudgetRefusal> {
        var committed: [BudgetScope: Money] = [:]
        for budget in budgets {
            let other = others[budget.scope] ?? (.zero, .zero)
            let total = other.committed + own
            guard total <= budget.limit else {
                return .failure(
                    BudgetRefusal(
                        scope: budget.scope,
                        limit: budget.limit,
                        committed: other.committed,
                        needed: own,
                        canFree: other.pending > .zero
                    )
                )
            }
            committed[budget.scope] = total
        }
        return .success(committed)
    }
}

/// A store that keeps the budget limits set while running (``ParallelGenerator/setBudgetLimit(_:for:)``,
/// `PUT /v1/budgets`), so that every process on the store applies them, and so does the next run.
public protocol BudgetLimitStore: JobStore {
    /// The limits set, by scope: `.some(nil)` for a limit removed (no limit, whatever the configuration says).
    /// A scope that was never set is absent, and keeps the configuration's limit.
    func budgetLimits() async throws -> [BudgetScope: Money?]

    /// Sets a scope's limit (`nil` removes it), over the configuration's, for every process on the store.
    func setBudgetLimit(_ limit: Money?, for scope: BudgetScope) async throws
}
