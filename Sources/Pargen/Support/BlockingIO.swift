import Dispatch

/// Runs blocking file work (`fsync`, renames, hashing a file) on threads of its own, off Swift's cooperative
/// pool. That pool has one thread per core: a thread stuck in `fsync` there delays every task on it, such as the
/// one that dates a provider's answer, and a call's place in the provider's window is counted from that date.
package enum BlockingIO {
    private static let queue = DispatchQueue(label: "pargen.blocking-io", attributes: .concurrent)

    /// The value of `body`, run on a blocking-work thread.
    package static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            queue.async { continuation.resume(with: Result { try body() }) }
        }
    }
}
