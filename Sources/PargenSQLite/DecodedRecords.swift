import Foundation
import Pargen
import Synchronization

/// The job records this store last wrote or read, decoded, each with the exact text it was decoded from (or
/// encoded to). Decoding a record's JSON is the store's largest cost, and a record is read back unchanged at its
/// job's next step (the lease, the call, its end, the result). A record comes from here only when the stored text
/// is byte for byte the same, so the memo is never wrong, whoever wrote the row and whatever transaction rolled
/// back: it is `decode(text)` remembered.
///
/// Bounded: two generations of at most `capacity` entries each; when the newer fills, the older is dropped.
final class DecodedRecords: Sendable {
    private struct Entry {
        var text: String
        var record: JobRecord
    }

    private struct Generations {
        var current: [String: Entry] = [:]
        var previous: [String: Entry] = [:]
    }

    private let generations = Mutex(Generations())
    private let capacity: Int

    init(capacity: Int = 2048) {
        self.capacity = max(1, capacity)
    }

    /// The record stored as `text` under `id`; remembered unless `remember` is false (a listing of many jobs,
    /// which would push out the records of the jobs under way).
    func decode(_ id: String, _ text: String, remember: Bool = true) throws -> JobRecord {
        let known = generations.withLock { generations -> JobRecord? in
            if let entry = generations.current[id] { return Self.same(entry.text, text) ? entry.record : nil }
            guard let entry = generations.previous[id], Self.same(entry.text, text) else { return nil }
            Self.insert(entry, id, into: &generations, capacity: capacity)
            return entry.record
        }
        if let known { return known }
        let record = try Self.decode(text)
        if remember { self.remember(id, text, record) }
        return record
    }

    /// Notes that `record` is stored as `text`.
    func remember(_ id: String, _ text: String, _ record: JobRecord) {
        generations.withLock { Self.insert(Entry(text: text, record: record), id, into: &$0, capacity: capacity) }
    }

    /// The record last remembered for `id`, with its text, if any.
    func known(_ id: String) -> (text: String, record: JobRecord)? {
        generations.withLock { generations in
            (generations.current[id] ?? generations.previous[id]).map { ($0.text, $0.record) }
        }
    }

    /// Byte equality (String's `==` compares canonical equivalence, which is not what was stored).
    static func same(_ a: String, _ b: String) -> Bool {
        var a = a
        var b = b
        return a.withUTF8 { a in b.withUTF8 { b in a.count == b.count && (a.count == 0 || memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0) } }
    }

    /// How many records are remembered (both generations; an id in both counts twice).
    var count: Int { generations.withLock { $0.current.count + $0.previous.count } }

    static func decode(_ text: String) throws -> JobRecord {
        do {
            return try JSONDecoder().decode(JobRecord.self, from: Data(text.utf8))
        } catch {
            throw StoreError(.invalidState, "a stored job could not be read", underlying: error)
        }
    }

    private static func insert(_ entry: Entry, _ id: String, into generations: inout Generations, capacity: Int) {
        if generations.current[id] == nil, generations.current.count >= capacity {
            generations.previous = generations.current
            generations.current = [:]
        }
        generations.current[id] = entry
    }

}
