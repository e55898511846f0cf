import Foundation
import Pargen
import Synchronization

/// The requests of the jobs this store last wrote or read, decoded, each with the exact text it was decoded from
/// (or encoded to). A job's request never changes, but decoding its JSON is what reading a job costs most, and a
/// job is read at every step (the lease, the call, its end). A request comes from here only when the stored text
/// is byte for byte the same, so the memo is never wrong, whoever wrote the row and whatever transaction rolled
/// back: it is `decode(text)` remembered.
///
/// Bounded: two generations of at most `capacity` entries each; when the newer fills, the older is dropped.
final class DecodedRequests: Sendable {
    private struct Entry {
        var text: String
        var request: ValidatedRequest
    }

    private let generations: Mutex<Generations<Entry>>

    init(capacity: Int = 4096) {
        generations = Mutex(Generations(capacity: capacity))
    }

    /// The request stored as `text` for the job `id`; remembered unless `remember` is false (a listing of many
    /// jobs, which would push out the requests of the jobs under way).
    func decode(_ id: String, _ text: String, remember: Bool = true) throws -> ValidatedRequest {
        let known = generations.withLock { generations -> ValidatedRequest? in
            guard let (entry, current) = generations.find(id), Self.same(entry.text, text) else { return nil }
            if !current { generations.insert(entry, for: id) }
            return entry.request
        }
        if let known { return known }
        let request = try JSONDecoder().decode(ValidatedRequest.self, from: Data(text.utf8))
        if remember { self.remember(id, text, request) }
        return request
    }

    /// Notes that the job `id`'s request is stored as `text`.
    func remember(_ id: String, _ text: String, _ request: ValidatedRequest) {
        generations.withLock { $0.insert(Entry(text: text, request: request), for: id) }
    }

    /// Byte equality (String's `==` compares canonical equivalence, which is not what was stored).
    static func same(_ a: String, _ b: String) -> Bool {
        var a = a
        var b = b
        return a.withUTF8 { a in
            b.withUTF8 { b in a.count == b.count && (a.count == 0 || memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0) }
        }
    }
}
