import GRDB
import Synchronization

/// Commits the transitions of every writer waiting at the same moment in one SQLite transaction (group
/// commit): one fsync for all of them instead of one each.
///
/// A transition waits until the transaction that holds it has committed (so an acknowledged transition is as
/// durable as before: on disk with `synchronous = FULL`), and a transition that throws (a lost lease) is rolled
/// back alone while the others commit: a transition of several statements runs in a savepoint of its own; one
/// that writes with a single statement, as its last step, needs none, since SQLite undoes a failed statement by
/// itself (a savepoint cost a quarter of the writer's time); such a transition whose later statement fails after
/// a first one wrote (a row, then its money total) throws ``PartlyWritten``, which rolls the whole transaction
/// back, and every transition in it gets the error. While one transaction is
/// being written, the transitions that arrive meanwhile queue up and go together in the next: under load the
/// batches grow by themselves; alone, a transition commits at once.
final class GroupCommitter: Sendable {
    /// What a transition needs so that its failure undoes it alone.
    enum Isolation: Sendable {
        /// A savepoint around the transition: it may write with several statements.
        case savepoint
        /// Nothing: the transition throws only from its first write or before it (a failed statement undoes
        /// itself), or throws ``PartlyWritten`` from a later one, which rolls back the whole group transaction.
        case singleWrite
    }

    /// Thrown by a transition without a savepoint when a statement fails after another of its statements wrote:
    /// the group transaction is rolled back whole, since nothing can undo the first write alone.
    struct PartlyWritten: Error {
        let underlying: any Error
    }

    private struct Pending: Sendable {
        let isolation: Isolation
        let body: @Sendable (Database) throws -> any Sendable
        let done: CheckedContinuation<any Sendable, any Error>
    }

    private let writer: any DatabaseWriter
    private let state = Mutex((queue: [Pending](), draining: false))
    /// The most transitions in one transaction.
    let maxBatch = 512

    /// Transitions waiting for the next transaction (tests).
    var waiting: Int { state.withLock { $0.queue.count } }

    init(writer: any DatabaseWriter) { self.writer = writer }

    /// Runs `body` in the next group transaction and returns its value once that transaction has committed.
    func write<T: Sendable>(
        _ isolation: Isolation = .savepoint,
        _ body: @escaping @Sendable (Database) throws -> T
    ) async throws -> T {
        let value = try await withCheckedThrowingContinuation { (done: CheckedContinuation<any Sendable, any Error>) in
            let lead = state.withLock { state -> Bool in
                state.queue.append(Pending(isolation: isolation, body: { try body($0) }, done: done))
                if state.draining { return false }
                state.draining = true
                return true
            }
            if lead { Task { await self.drain() } }
        }
        return value as! T
    }

    /// Writes the queue in transactions of up to ``maxBatch`` until it is empty.
    private func drain() async {
        while true {
            let batch = state.withLock { state -> [Pending] in
                guard !state.queue.isEmpty else {
                    state.draining = false
                    return []
                }
                let batch = Array(state.queue.prefix(maxBatch))
                state.queue.removeFirst(batch.count)
                return batch
            }
            guard !batch.isEmpty else { return }
            // The first error a statement of this group raised: when it made SQLite roll the whole transaction
            // back (SQLITE_FULL, SQLITE_IOERR), the commit fails only with "transaction was aborted", and the
            // callers are told the cause instead (a full disk is this machine's fault, not the store's).
            let firstFailure = Mutex<(any Error)?>(nil)
            do {
                let outcomes = try await writer.write { db -> [Result<any Sendable, any Error>] in
                    var outcomes: [Result<any Sendable, any Error>] = []
                    outcomes.reserveCapacity(batch.count)
                    for pending in batch {
                        do {
                            switch pending.isolation {
                            case .singleWrite:
                                outcomes.append(.success(try pending.body(db)))
                            case .savepoint:
                                var value: (any Sendable)?
                                try db.inSavepoint {
                                    value = try pending.body(db)
                                    return .commit
                                }
                                outcomes.append(.success(value!))
                            }
                        } catch let error as PartlyWritten {
                            // A statement failed after another of the same transition had written (a row, then
                            // its money total). In a savepoint, that was undone with the rest of the transition;
                            // without one nothing isolates them, so the whole group is rolled back and every
                            // transition in it is told.
                            firstFailure.withLock { $0 = $0 ?? error.underlying }
                            guard pending.isolation == .savepoint else { throw error.underlying }
                            outcomes.append(.failure(error.underlying))
                        } catch {
                            firstFailure.withLock { $0 = $0 ?? error }
                            outcomes.append(.failure(error))
                        }
                    }
                    return outcomes
                }
                for (pending, outcome) in zip(batch, outcomes) { pending.done.resume(with: outcome) }
            } catch {
                // The transaction itself failed (a full disk, an I/O error): nothing in it was committed.
                var cause = error
                if let database = error as? DatabaseError, database.resultCode == ResultCode.SQLITE_ABORT,
                    let first = firstFailure.withLock({ $0 }) as? DatabaseError,
                    first.resultCode != ResultCode.SQLITE_ABORT
                {
                    cause = first
                }
                for pending in batch { pending.done.resume(throwing: cause) }
            }
        }
    }
}
