import Synchronization

/// A small, seedable random number generator (SplitMix64), so every random choice in the engine
/// (jitter, weighted provider choice, local provider faults) is reproducible from a seed.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }

    /// A stable 64-bit hash (FNV-1a) of strings, for deriving seeds from identifiers.
    public static func stableHash(_ parts: String...) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for part in parts {
            for byte in part.utf8 {
                hash ^= UInt64(byte)
                hash &*= 0x0000_0100_0000_01b3
            }
            hash ^= 0xff
            hash &*= 0x0000_0100_0000_01b3
        }
        return hash
    }
}

/// A lock-protected random source that components share.
package final class LockedRandom: Sendable {
    private let generator: Mutex<SplitMix64>
    package init(seed: UInt64) { generator = Mutex(SplitMix64(seed: seed)) }
    package func unit() -> Double { generator.withLock { Double($0.next() >> 11) / Double(1 << 53) } }
    package func duration(upTo bound: Duration) -> Duration {
        guard bound > .zero else { return .zero }
        return bound * unit()
    }
}
