public import Logging
public import Pargen

/// Housekeeping of a shared store, done by one worker at a time: takes back the jobs of workers whose leases
/// expired (a crash, a kill, a lost network), deletes finished jobs older than the retention period, and folds
/// the jobs' money changes into each budget scope's total.
///
/// Every worker runs one; the one that holds the `housekeeping` lead row does the work, renewing its term on
/// each round. When it stops, its term runs out and another worker's housekeeper takes over within one term.
public struct PostgresHousekeeper: Sendable {
    public var store: PostgresJobStore
    public var holder: String
    /// How often a round runs, and (times 3) how long a leader's term lasts.
    public var interval: Duration
    /// Succeeded and dead-lettered jobs older than this are deleted (jobs needing reconciliation are kept).
    public var retention: Duration
    public var maxCrashes: Int
    public var logger: Logger
    /// The clock the rounds are timed on (a test's manual clock, or the real one).
    public var clock: PargenClock

    public init(
        store: PostgresJobStore,
        holder: String,
        interval: Duration = .seconds(10),
        retention: Duration = .seconds(7 * 24 * 3600),
        maxCrashes: Int = 5,
        logger: Logger,
        clock: PargenClock = .continuous
    ) {
        self.store = store
        self.holder = holder
        self.interval = interval
        self.retention = retention
        self.maxCrashes = maxCrashes
        self.logger = logger
        self.clock = clock
    }

    /// One round: `true` if this worker led it.
    @discardableResult
    public func round() async throws -> Bool {
        guard try await store.lead("housekeeping", holder: holder, for: interval * 3) else { return false }
        let rescued = try await store.rescueExpiredLeases(maxCrashes: maxCrashes)
        if rescued > 0 { logger.info("rescued expired leases", metadata: ["pargen.count": "\(rescued)"]) }
        let pruned = try await store.prune(finishedBefore: retention, admissionsBefore: .seconds(3600))
        if pruned > 0 { logger.info("pruned finished jobs", metadata: ["pargen.count": "\(pruned)"]) }
        let folded = try await store.foldMoneyChanges()
        logger.debug("folded money changes into the scopes' totals", metadata: ["pargen.count": "\(folded)"])
        return true
    }

    /// Runs rounds every ``interval`` until cancelled; a round that fails (PostgreSQL unreachable) is tried again
    /// at the next.
    public func run() async {
        while !Task.isCancelled {
            do {
                try await round()
            } catch {
                logger.debug("housekeeping round failed", metadata: ["pargen.error": "\(error)"])
            }
            try? await clock.sleep(for: interval)
        }
    }
}
