/// The state transitions of a job, as pure functions on its record: every ``JobStore`` applies exactly
/// these, so the memory, SQLite and PostgreSQL stores cannot drift apart.
extension JobRecord {
    /// A new job, available at `now`.
    public init(id: JobID, request: ValidatedRequest, sequence: Int64, now: Duration) {
        self.init(
            id: id,
            request: request,
            state: .available,
            attempts: 0,
            snoozes: 0,
            runAt: now,
            enqueuedAt: now,
            finishedAt: nil,
            sequence: sequence,
            leaseToken: nil,
            leaseOwner: nil,
            leaseExpiresAt: nil,
            recoveryPoint: nil,
            provider: nil,
            providerTaskID: nil,
            failedProviders: [],
            errors: [],
            outcome: nil,
            ledger: CostLedger()
        )
    }

    /// Whether `lease` is the current holder. Fencing is by token: an expired lease stays valid until the
    /// rescuer takes the job, which clears the token.
    public func isHeld(by lease: JobLease) -> Bool { state == .running && leaseToken == lease.token }

    public mutating func grantLease(token: String, owner: String, expiresAt: Duration) {
        state = .running
        leaseToken = token
        leaseOwner = owner
        leaseExpiresAt = expiresAt
    }

    public mutating func beginAttempt(
        provider: String,
        reserving estimate: Money = .zero,
        idempotentSubmission: Bool = false
    ) {
        releasePending()
        self.idempotentSubmission = idempotentSubmission
        ledger.reserved = ledger.reserved + estimate
        ledger.pending = estimate
        attempts += 1
        self.provider = provider
        providerTaskID = nil
        recoveryPoint = .submitting
        inCall = true
    }

    /// The provider accepted the task `taskID` (or, recorded again before a resumed task is polled, still has
    /// it): a crash from here on resumes polling it.
    public mutating func recordSubmission(taskID: String) {
        providerTaskID = taskID
        recoveryPoint = .submitted
        inCall = true
    }

    public mutating func complete(_ outcome: JobOutcome, now: Duration) {
        settlePending(charging: outcome.cost)
        self.outcome = outcome
        provider = outcome.provider
        finish(.succeeded, now: now)
    }

    public mutating func scheduleRetry(
        error: GenerationError?,
        runAt: Duration,
        spendAttempt: Bool,
        failedProvider: String?
    ) {
        if let error { errors.append(error) }
        settlePending(charging: error?.charged ?? .zero)
        if !spendAttempt {
            snoozes += 1
            if recoveryPoint != nil { attempts = max(0, attempts - 1) }
        }
        if let failedProvider, !failedProviders.contains(failedProvider) { failedProviders.append(failedProvider) }
        self.runAt = runAt
        recoveryPoint = nil
        providerTaskID = nil
        makeAvailable(at: runAt)
    }

    /// Ends the job with `error`. An error that says the provider may hold the task
    /// (``GenerationError/Code/needsReconciliation``: a submission whose answer was lost) puts the job in
    /// ``JobState/needsReconciliation`` and keeps its reservation, since the provider may bill it; any other
    /// error dead-letters it and releases the reservation.
    public mutating func deadLetter(_ error: GenerationError, now: Duration) {
        errors.append(error)
        // A failed call the provider billed anyway (a synchronous answer lost after it was made) is charged.
        if let charged = error.charged, charged > .zero { settlePending(charging: charged) }
        if error.code == .needsReconciliation {
            finish(.needsReconciliation, now: now)
            return
        }
        releasePending()
        finish(.deadLettered, now: now)
    }

    /// Gives the job back unjudged. A submitted task keeps its id so the next lease resumes it. A call begun
    /// but not recorded as submitted is settled by what it left at the provider (`trace`):
    /// - it never went out: its attempt is given back and it leaves no trace (a later holder lost before its own
    ///   call must not be taken for one that may have reached the provider);
    /// - the provider accepted it as a task: the task id is recorded and the next lease resumes it;
    /// - it went out to a provider that de-duplicates by key: it is made again there, under the same key
    ///   (``RecoveryPoint/cutOff``), so that the provider answers with the task it may hold. Any other provider,
    ///   or any other key, would bill the job again.
    public mutating func release(now: Duration, leaving trace: CallTrace = .notSent) {
        if recoveryPoint == .submitting {
            switch trace {
            case .accepted(let taskID):
                providerTaskID = taskID
                recoveryPoint = .submitted
            case .sent where idempotentSubmission:
                attempts = max(0, attempts - 1)
                releasePending()
                recoveryPoint = .cutOff
            case .notSent, .sent:
                attempts = max(0, attempts - 1)
                releasePending()
                recoveryPoint = nil
            }
        }
        makeAvailable(at: now)
    }

    /// Takes the job from a holder whose lease expired. A job that may have been submitted without its task
    /// id being recorded is never resubmitted blindly: at a provider that de-duplicates by idempotency key it
    /// gives its attempt back, so the next call reuses the same key; anywhere else it waits for a person.
    ///
    /// A rescue of a job whose provider call was under way counts in ``crashes``, across restarts; a job taken
    /// back more than `maxCrashes` times is dead-lettered (a job whose call brings the process down would
    /// otherwise do so on every restart).
    public mutating func rescue(now: Duration, maxCrashes: Int = .max) {
        let crashes = (self.crashes ?? 0) + (inCall == true ? 1 : 0)
        self.crashes = crashes == 0 ? nil : crashes
        if crashes > maxCrashes {
            // Set aside, never dropped: the call was under way, so the provider may have the task and bill it.
            // Like a lost answer, it keeps its reservation and waits for a person (`dlq retry` or `dlq purge`).
            deadLetter(
                GenerationError(
                    .needsReconciliation,
                    "the process running this job stopped \(crashes) times while its call to \(provider ?? "its provider") was under way (a crash, a kill or a lease left to expire; retry.maxCrashes is \(maxCrashes)): it is set aside so that it cannot stop the campaign again"
                        + (providerTaskID.map { "; the provider has task \($0)" } ?? "")
                        + "; check the log and the provider, then `pargen dlq retry` or `pargen dlq purge` it",
                    provider: provider,
                    providerCode: "crash_loop"
                ),
                now: now
            )
            return
        }
        if recoveryPoint == .submitting && providerTaskID == nil {
            if idempotentSubmission {
                attempts = max(0, attempts - 1)
                releasePending()
                recoveryPoint = .cutOff
                makeAvailable(at: now)
            } else {
                finish(.needsReconciliation, now: now)
            }
        } else {
            makeAvailable(at: now)
        }
    }

    /// Puts a dead-lettered or unreconciled job back in the queue with fresh attempts.
    public mutating func requeue(now: Duration) throws(StoreError) {
        guard state == .deadLettered || state == .needsReconciliation else {
            throw StoreError(.invalidState, "job \(id) is \(state.rawValue), not dead-lettered")
        }
        attempts = 0
        snoozes = 0
        crashes = nil
        finishedAt = nil
        recoveryPoint = nil
        failedProviders = []
        makeAvailable(at: now)
    }

    /// Takes a waiting job out of the queue (``JobStore/cancel(_:)``).
    public mutating func cancel(now: Duration) throws(StoreError) {
        guard state == .available else {
            throw StoreError(.invalidState, "job \(id) is \(state.rawValue), not waiting")
        }
        // A job waiting to resume a task that a provider holds (or may hold) would leave that task, and its
        // bill, behind: it runs to its end instead.
        guard recoveryPoint == nil || recoveryPoint == .submitting else {
            throw StoreError(.invalidState, "job \(id) has a task at its provider")
        }
        errors.append(GenerationError(.cancelled, "cancelled before it ran"))
        releasePending()
        finish(.deadLettered, now: now)
    }

    /// Settles the current call: charges `cost` and releases the rest of its reservation; a cost over the
    /// reservation tops the reservation up first, so `reserved == charged + released + pending` still holds.
    private mutating func settlePending(charging cost: Money) {
        if cost > ledger.pending { ledger.reserved = ledger.reserved + (cost - ledger.pending) }
        ledger.charged = ledger.charged + cost
        ledger.released = ledger.released + max(.zero, ledger.pending - cost)
        ledger.pending = .zero
    }

    /// Releases the reservation of a call that will not charge. A submitted task keeps its reservation: it
    /// may still charge when it is resumed.
    private mutating func releasePending() {
        ledger.released = ledger.released + ledger.pending
        ledger.pending = .zero
    }

    private mutating func makeAvailable(at time: Duration) {
        state = .available
        inCall = nil
        runAt = time
        leaseToken = nil
        leaseOwner = nil
        leaseExpiresAt = nil
    }

    private mutating func finish(_ final: JobState, now: Duration) {
        state = final
        inCall = nil
        finishedAt = now
        recoveryPoint = nil
        leaseToken = nil
        leaseOwner = nil
        leaseExpiresAt = nil
    }
}
