#if canImport(Glibc)
import Glibc
#endif

/// Holds `path.lock` with `flock` for as long as it lives: one running campaign per SQLite store, so every lease
/// found in the store at start belongs to a run that crashed.
public final class StoreLock: Sendable {
    private let descriptor: Int32

    /// Takes the lock, or throws ``RuntimeError/Code-swift.struct/storeBusy`` if another process holds it.
    public init(storePath: String) throws(RuntimeError) {
        let lockPath = storePath + ".lock"
        let opened = open(lockPath, O_CREAT | O_RDWR | O_CLOEXEC, 0o644)
        guard opened >= 0 else { throw RuntimeError(.store, "cannot create \(lockPath)") }
        guard flock(opened, LOCK_EX | LOCK_NB) == 0 else {
            // Closed here, before the instance is whole, so deinit never closes it a second time.
            close(opened)
            throw RuntimeError(.storeBusy, "another pargen is running this campaign (\(lockPath) is locked)")
        }
        descriptor = opened
    }

    deinit { close(descriptor) }
}
