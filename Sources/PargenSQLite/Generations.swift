/// A map of at most about twice `capacity` entries, kept in two generations: new entries go in the current one,
/// and when it is full it becomes the previous one (the one before is dropped). An entry found only in the
/// previous generation is brought back by inserting it again.
struct Generations<Value> {
    private var current: [String: Value] = [:]
    private var previous: [String: Value] = [:]
    let capacity: Int

    init(capacity: Int) { self.capacity = max(1, capacity) }

    /// The entry of `key`, in whichever generation holds it, and whether that is the current one.
    func find(_ key: String) -> (value: Value, current: Bool)? {
        if let value = current[key] { return (value, true) }
        return previous[key].map { ($0, false) }
    }

    /// Sets `key`'s entry in the current generation, turning the generations over when it is full.
    mutating func insert(_ value: Value, for key: String) {
        previous[key] = nil
        if current[key] == nil, current.count >= capacity {
            previous = current
            current = [:]
        }
        current[key] = value
    }

    /// Drops `key`'s entry from both generations.
    mutating func remove(_ key: String) {
        current[key] = nil
        previous[key] = nil
    }
}
