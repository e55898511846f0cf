import Foundation
import Synchronization

/// A cache of finished artifacts keyed by request fingerprint.
///
/// The memory LRU is the first layer; Redis and CDN layers conform to the same protocol.
public protocol GenerationCache: Sendable {
    func get(_ fingerprint: String) async -> Artifact?
    func put(_ fingerprint: String, _ artifact: Artifact) async
    func invalidate(_ fingerprint: String) async
    func invalidateAll() async
    func stats() async -> CacheStats
}

public struct CacheStats: Sendable, Hashable, Codable {
    public var hits: Int
    public var misses: Int
    public var entries: Int
    public var capacity: Int
    public var evictions: Int
    public var expirations: Int
    /// Requests served by another identical request in flight (single-flight), counted by the engine.
    public var deduplicated: Int
    /// What the jobs served by a cache (any tier) or by an identical request would have cost to generate,
    /// counted by the engine.
    public var saved: Money = .zero
    public var hitRatio: Double { hits + misses == 0 ? 0 : Double(hits) / Double(hits + misses) }

    public init(
        hits: Int = 0,
        misses: Int = 0,
        entries: Int = 0,
        capacity: Int = 0,
        evictions: Int = 0,
        expirations: Int = 0,
        deduplicated: Int = 0
    ) {
        self.hits = hits
        self.misses = misses
        self.entries = entries
        self.capacity = capacity
        self.evictions = evictions
        self.expirations = expirations
        self.deduplicated = deduplicated
    }
}

/// A least-recently-used memory cache with an optional time to live.
///
/// An entry whose file has disappeared from disk counts as a miss and is dropped.
public final class MemoryLRUCache: GenerationCache {
    private struct Node {
        var key: String
        var artifact: Artifact
        var storedAt: Duration
        var previous: Int?
        var next: Int?
    }

    private struct State {
        var nodes: [Node?] = []
        var free: [Int] = []
        var index: [String: Int] = [:]
        var head: Int?  // most recent
        var tail: Int?  // least recent
        var stats = CacheStats()

        mutating func unlink(_ i: Int) {
            let node = nodes[i]!
            if let p = node.previous { nodes[p]!.next = node.next } else { head = node.next }
            if let n = node.next { nodes[n]!.previous = node.previous } else { tail = node.previous }
            nodes[i]!.previous = nil
            nodes[i]!.next = nil
        }

        mutating func pushFront(_ i: Int) {
            nodes[i]!.next = head
            nodes[i]!.previous = nil
            if let h = head { nodes[h]!.previous = i }
            head = i
            if tail == nil { tail = i }
        }

        mutating func remove(_ i: Int) {
            unlink(i)
            index[nodes[i]!.key] = nil
            nodes[i] = nil
            free.append(i)
        }
    }

    public let capacity: Int
    public let timeToLive: Duration?
    private let clock: PargenClock
    private let checkFiles: Bool
    private let state = Mutex(State())

    /// - Parameters:
    ///   - capacity: Entries kept; the least recently used is evicted past it.
    ///   - timeToLive: Age after which an entry is a miss; `nil` for none.
    ///   - checkFiles: Treat entries whose file is gone as misses.
    public init(
        capacity: Int = 1000,
        timeToLive: Duration? = nil,
        clock: PargenClock = .continuous,
        checkFiles: Bool = true
    ) {
        precondition(capacity > 0)
        self.capacity = capacity
        self.timeToLive = timeToLive
        self.clock = clock
        self.checkFiles = checkFiles
    }

    public func get(_ fingerprint: String) async -> Artifact? {
        let now = clock.now
        let artifact = state.withLock { state -> Artifact? in
            guard let i = state.index[fingerprint] else {
                state.stats.misses += 1
                return nil
            }
            if let ttl = timeToLive, now - state.nodes[i]!.storedAt >= ttl {
                state.remove(i)
                state.stats.expirations += 1
                state.stats.misses += 1
                return nil
            }
            state.unlink(i)
            state.pushFront(i)
            return state.nodes[i]!.artifact
        }
        guard let artifact else { return nil }
        if checkFiles, artifact.url.isFileURL, !FileManager.default.fileExists(atPath: artifact.url.path) {
            state.withLock { state in
                if let i = state.index[fingerprint] { state.remove(i) }
                state.stats.misses += 1
            }
            return nil
        }
        state.withLock { $0.stats.hits += 1 }
        return artifact
    }

    public func put(_ fingerprint: String, _ artifact: Artifact) async {
        let now = clock.now
        state.withLock { state in
            if let i = state.index[fingerprint] {
                state.nodes[i]!.artifact = artifact
                state.nodes[i]!.storedAt = now
                state.unlink(i)
                state.pushFront(i)
                return
            }
            if state.index.count >= capacity, let last = state.tail {
                state.remove(last)
                state.stats.evictions += 1
            }
            let node = Node(key: fingerprint, artifact: artifact, storedAt: now)
            let i: Int
            if let reused = state.free.popLast() {
                state.nodes[reused] = node
                i = reused
            } else {
                state.nodes.append(node)
                i = state.nodes.count - 1
            }
            state.index[fingerprint] = i
            state.pushFront(i)
        }
    }

    public func invalidate(_ fingerprint: String) async {
        state.withLock { state in if let i = state.index[fingerprint] { state.remove(i) } }
    }

    public func invalidateAll() async {
        state.withLock { state in
            let stats = state.stats
            state = State()
            state.stats = stats
        }
    }

    public func stats() async -> CacheStats {
        state.withLock { state in
            var stats = state.stats
            stats.entries = state.index.count
            stats.capacity = capacity
            return stats
        }
    }

    /// Keys from most to least recently used (for tests and diagnostics).
    public func keysByRecency() -> [String] {
        state.withLock { state in
            var keys: [String] = []
            var cursor = state.head
            while let i = cursor {
                keys.append(state.nodes[i]!.key)
                cursor = state.nodes[i]!.next
            }
            return keys
        }
    }
}

/// Collapses concurrent work on the same key: the first caller leads, the others wait for its outcome.
public final class SingleFlight<Value: Sendable>: Sendable {
    public enum Role: Sendable {
        case leader
        case follower(Value?)
    }

    private struct State {
        var inFlight: [String: [(id: UInt64, continuation: CheckedContinuation<Value?, Never>)]] = [:]
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())

    public init() {}

    /// Leads the work for `key`, or waits for the current leader's value. A follower gets `nil` if it is
    /// cancelled while waiting.
    public func join(_ key: String) async -> Role {
        let id: UInt64? = state.withLock { state in
            if state.inFlight[key] == nil {
                state.inFlight[key] = []
                return nil
            }
            state.nextID += 1
            return state.nextID
        }
        guard let id else { return .leader }
        let value = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Value?, Never>) in
                let immediate = state.withLock { state -> Bool in
                    guard state.inFlight[key] != nil, !Task.isCancelled else { return true }
                    state.inFlight[key]!.append((id, continuation))
                    return false
                }
                if immediate { continuation.resume(returning: nil) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Value?, Never>? in
                guard let index = state.inFlight[key]?.firstIndex(where: { $0.id == id }) else { return nil }
                return state.inFlight[key]!.remove(at: index).continuation
            }
            waiter?.resume(returning: nil)
        }
        return .follower(value)
    }

    /// Ends the leader's work, handing `value` to every follower.
    public func finish(_ key: String, with value: Value) {
        let waiters = state.withLock { $0.inFlight.removeValue(forKey: key) ?? [] }
        for waiter in waiters { waiter.continuation.resume(returning: value) }
    }

    public var inFlightCount: Int { state.withLock { $0.inFlight.count } }

    /// Whether a leader is at work on `key` now.
    public func isLeading(_ key: String) -> Bool { state.withLock { $0.inFlight[key] != nil } }

    /// How many followers wait for `key`'s leader.
    public func followerCount(_ key: String) -> Int { state.withLock { $0.inFlight[key]?.count ?? 0 } }
}
