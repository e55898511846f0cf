import Pargen
import Synchronization

/// The rows of the jobs under way as this store last wrote them, each with the change token it wrote: a
/// transition on one of them is made from this copy, outside the single writer, and written with
/// ``JobRow/updateIfUnchanged``, which applies only if the row still has that token. Whoever else wrote the row
/// since (another process, a rescue, a transaction that rolled back after the copy was kept) gave it another
/// token, and the transition then reads the row as before: the copy is a guess that the database checks, never
/// an answer.
///
/// A row is kept only once the transaction that wrote it has committed, and dropped when its job is final.
/// Bounded: two generations of at most `capacity` rows each.
final class RecentRows: Sendable {
    private let rows: Mutex<Generations<JobRow>>

    init(capacity: Int = 4096) {
        rows = Mutex(Generations(capacity: capacity))
    }

    /// The row of job `id` as last written here, if kept.
    func row(_ id: String) -> JobRow? {
        rows.withLock { $0.find(id)?.value }
    }

    /// Keeps `row` (just committed) in place of any other copy, unless its job is final. Two transitions of one job
    /// committed one after the other may keep their rows in the other order: the older copy then only costs the
    /// next transition a read.
    func keep(_ row: JobRow) {
        let id = row.record.id.rawValue
        rows.withLock { rows in
            if row.record.state.isFinal { rows.remove(id) } else { rows.insert(row, for: id) }
        }
    }

    /// Forgets job `id`'s row (a write whose outcome is not known).
    func forget(_ id: String) {
        rows.withLock { $0.remove(id) }
    }
}
