import Foundation
import GRDB
import Pargen

/// How a job lies in its row: the request, which never changes, as JSON written once at enqueue; every field
/// that a transition changes in a column of its own, so that a transition reads and writes a few integers and
/// short strings instead of decoding and encoding the whole record. The fields that are lists or structures
/// (failed providers, errors, the outcome) are JSON, `NULL` when empty; the failed providers and the outcome are
/// encoded again only when they change.
struct JobRow {
    /// The columns a record is read from, in the order ``init(_:requests:remember:)`` reads them.
    static let columns = """
        id, seq, state, request, attempts, snoozes, run_at, enqueued_at, finished_at, lease_token, lease_owner,
        lease_expires_at, recovery_point, idempotent_submission, provider, provider_task_id, failed_providers,
        errors, outcome, reserved, charged, released, pending, crashes, in_call, change_token
        """

    /// Every changing column that a transition writes.
    private static let changing = """
        UPDATE jobs SET state = ?, attempts = ?, snoozes = ?, run_at = ?, finished_at = ?, lease_token = ?,
                        lease_owner = ?, lease_expires_at = ?, recovery_point = ?, idempotent_submission = ?,
                        provider = ?, provider_task_id = ?, failed_providers = ?, errors = ?, outcome = ?,
                        reserved = ?, charged = ?, released = ?, pending = ?, crashes = ?, in_call = ?
        """

    /// What a transition writes: every changing column and a fresh change token, by the job's id.
    static let update = changing + ", change_token = ? WHERE id = ?"

    /// ``update``, only if the row's change token is still the one given last: the row is then exactly as it was
    /// written with that token, and a transition can be made from a copy of it without reading it.
    static let updateIfUnchanged = changing + ", change_token = ? WHERE id = ? AND change_token = ?"

    /// The write of migration `v6-columns`, from before the change token (frozen: later migrations add columns).
    static let updateBeforeTokens = changing + " WHERE id = ?"

    var record: JobRecord
    /// The ledger as it was read (zero for a new row): what a write adds to the money totals is the change.
    private(set) var storedLedger: CostLedger
    /// The change token the row was read or written with (0 for a row never written since its enqueue).
    private(set) var changeToken: Int64
    /// The JSON columns as they were read, reused on the next write when their values are unchanged.
    private var stored: (failedProviders: String?, outcome: String?)
    private var storedValues: (failedProviders: [String], outcome: JobOutcome?)

    /// A new job's row.
    init(new record: JobRecord) {
        self.record = record
        storedLedger = CostLedger()
        changeToken = 0
        stored = (nil, nil)
        storedValues = ([], nil)
    }

    /// Reads a row of ``columns``; the request is decoded once per job and then remembered by `requests`.
    init(_ row: Row, requests: DecodedRequests, remember: Bool = true) throws {
        do {
            let id: String = try row.decode(atIndex: 0)
            let stateText: String = try row.decode(atIndex: 2)
            guard let state = JobState(rawValue: stateText) else {
                throw StoreError(.invalidState, "job \(id) has an unknown state \(stateText)")
            }
            var record = JobRecord(
                id: JobID(id),
                request: try requests.decode(id, try row.decode(atIndex: 3), remember: remember),
                sequence: try row.decode(atIndex: 1),
                now: .nanoseconds(try row.decode(Int64.self, atIndex: 7))
            )
            record.state = state
            record.attempts = try row.decode(atIndex: 4)
            record.snoozes = try row.decode(atIndex: 5)
            record.runAt = .nanoseconds(try row.decode(Int64.self, atIndex: 6))
            record.finishedAt = try row.decode(Int64?.self, atIndex: 8).map { .nanoseconds($0) }
            record.leaseToken = try row.decode(atIndex: 9)
            record.leaseOwner = try row.decode(atIndex: 10)
            record.leaseExpiresAt = try row.decode(Int64?.self, atIndex: 11).map { .nanoseconds($0) }
            if let point = try row.decode(String?.self, atIndex: 12) {
                guard let recoveryPoint = RecoveryPoint(rawValue: point) else {
                    throw StoreError(.invalidState, "job \(id) has an unknown recovery point \(point)")
                }
                record.recoveryPoint = recoveryPoint
            }
            record.idempotentSubmission = try row.decode(Bool.self, atIndex: 13)
            record.provider = try row.decode(atIndex: 14)
            record.providerTaskID = try row.decode(atIndex: 15)
            let failedProviders: String? = try row.decode(atIndex: 16)
            let errors: String? = try row.decode(atIndex: 17)
            let outcome: String? = try row.decode(atIndex: 18)
            record.failedProviders = try failedProviders.map { try Self.decode([String].self, $0) } ?? []
            record.errors = try errors.map { try Self.decode([GenerationError].self, $0) } ?? []
            record.outcome = try outcome.map { try Self.decode(JobOutcome.self, $0) }
            record.ledger.reserved = Money(nanos: try row.decode(atIndex: 19))
            record.ledger.charged = Money(nanos: try row.decode(atIndex: 20))
            record.ledger.released = Money(nanos: try row.decode(atIndex: 21))
            record.ledger.pending = Money(nanos: try row.decode(atIndex: 22))
            record.crashes = try row.decode(atIndex: 23)
            record.inCall = try row.decode(Bool?.self, atIndex: 24)
            self.record = record
            storedLedger = record.ledger
            changeToken = try row.decode(atIndex: 25)
            stored = (failedProviders, outcome)
            storedValues = (record.failedProviders, record.outcome)
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError(.invalidState, "a stored job could not be read", underlying: error)
        }
    }

    /// The JSON columns of the record as it is now: those unchanged since the row was read or written are not
    /// encoded again.
    struct Encoded {
        var failedProviders: String?
        var errors: String?
        var outcome: String?
    }

    func encoded() throws -> Encoded {
        let failedProviders =
            record.failedProviders == storedValues.failedProviders
            ? stored.failedProviders : try Self.encode(record.failedProviders, emptyAsNull: record.failedProviders.isEmpty)
        // Errors compare by their code alone, so a changed message would look unchanged: written whenever any.
        let errors = try Self.encode(record.errors, emptyAsNull: record.errors.isEmpty)
        let outcome =
            record.outcome == storedValues.outcome
            ? stored.outcome : try record.outcome.map { try Self.encode($0, emptyAsNull: false) } ?? nil
        return Encoded(failedProviders: failedProviders, errors: errors, outcome: outcome)
    }

    /// The arguments of ``update`` (with `token`), or of ``updateBeforeTokens`` (without), for the record as it is
    /// now; ``updateIfUnchanged`` takes the row's ``changeToken`` after them.
    func updateArguments(_ encoded: Encoded, token: Int64?) -> StatementArguments {
        var arguments: StatementArguments = [
            record.state.rawValue, record.attempts, record.snoozes, record.runAt.nanoseconds,
            record.finishedAt?.nanoseconds, record.leaseToken, record.leaseOwner, record.leaseExpiresAt?.nanoseconds,
            record.recoveryPoint?.rawValue, record.idempotentSubmission, record.provider, record.providerTaskID,
            encoded.failedProviders, encoded.errors, encoded.outcome, record.ledger.reserved.nanos,
            record.ledger.charged.nanos, record.ledger.released.nanos, record.ledger.pending.nanos, record.crashes,
            record.inCall,
        ]
        if let token { arguments += [token] }
        arguments += [record.id.rawValue]
        return arguments
    }

    /// The row as it stands once written with `encoded` and `token`: what the next transition starts from.
    func written(_ encoded: Encoded, token: Int64) -> JobRow {
        var row = self
        row.storedLedger = record.ledger
        row.changeToken = token
        row.stored = (encoded.failedProviders, encoded.outcome)
        row.storedValues = (record.failedProviders, record.outcome)
        return row
    }

    /// A fresh change token: random, so that a row deleted and made again under the same id never matches a copy
    /// of the one before (0 is the token of a row never written since its enqueue).
    static func newToken() -> Int64 {
        var token: Int64 = 0
        while token == 0 { token = Int64.random(in: .min ... .max) }
        return token
    }

    private static func decode<T: Decodable>(_ type: T.Type, _ text: String) throws -> T {
        try JSONDecoder().decode(type, from: Data(text.utf8))
    }

    private static func encode<T: Encodable>(_ value: T, emptyAsNull: Bool) throws -> String? {
        emptyAsNull ? nil : try json(value)
    }

    /// `value` as JSON text, the form of the request and the list columns.
    static func json(_ value: some Encodable) throws -> String {
        String(decoding: try JSONEncoder().encode(value), as: UTF8.self)
    }
}
