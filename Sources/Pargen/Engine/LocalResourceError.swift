public import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A failure of this machine, not of a provider: a full disk, a folder that cannot be written, a file that
/// vanished. Retrying the call elsewhere cannot help, so the engine stops taking new work, keeps what is done
/// and gives every unfinished job back to the store (a later run continues it, as after a crash); see
/// ``ParallelGenerator/haltReason``.
public struct LocalResourceError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The file or folder that could not be used.
    public var path: String
    /// What was being done: `write`, `create`, `move into place`, ...
    public var operation: String
    /// The operating system's error number (`ENOSPC`, `EACCES`, ...).
    public var errorNumber: Int32
    /// What the failing component said, when the error number alone would mislead (a database file that is
    /// damaged fails as `EIO`, but says "database disk image is malformed").
    public var detail: String?

    public init(path: String, operation: String, errorNumber: Int32, detail: String? = nil) {
        self.path = path
        self.operation = operation
        self.errorNumber = errorNumber
        self.detail = detail
    }

    /// ``detail`` when there is one, else the system's text for ``errorNumber``, such as "No space left on
    /// device".
    public var reason: String { detail ?? String(cString: strerror(errorNumber)) }

    public var description: String { "cannot \(operation) \(path): \(reason)" }

    /// The error numbers that mean this machine's storage is at fault.
    static let localNumbers: Set<Int32> = [
        ENOSPC, EDQUOT, EACCES, EPERM, EROFS, ENOTDIR, EISDIR, ENOENT, EIO, EMFILE, ENFILE, EFBIG, ENAMETOOLONG,
        ELOOP, EEXIST,
    ]

    /// The local resource failure that `error` stands for, if it is one: an error of the file system (a
    /// `POSIXError`, or a Foundation file error whose underlying cause is one) with a storage error number.
    /// Errors of the network or of a provider are never local.
    ///
    /// - Parameters:
    ///   - path: The path to name when the error does not carry one.
    ///   - operation: What was being done, for the message.
    public static func classify(_ error: any Error, path: URL, operation: String) -> LocalResourceError? {
        if let local = error as? LocalResourceError { return local }
        // A store that cannot write its file (a full disk) says so through its error's cause.
        if let store = error as? StoreError { return store.underlying.flatMap { $0 as? LocalResourceError } }
        if error is GenerationError || error is CancellationError { return nil }
        if let posix = error as? POSIXError {
            let number = posix.code.rawValue
            return localNumbers.contains(number)
                ? LocalResourceError(path: path.path, operation: operation, errorNumber: number) : nil
        }
        let ns = error as NSError
        let named = (ns.userInfo[NSFilePathErrorKey] as? String) ?? path.path
        if ns.domain == NSPOSIXErrorDomain {
            let number = Int32(truncatingIfNeeded: ns.code)
            return localNumbers.contains(number)
                ? LocalResourceError(path: named, operation: operation, errorNumber: number) : nil
        }
        guard ns.domain == NSCocoaErrorDomain else { return nil }
        if let underlying = (ns.userInfo[NSUnderlyingErrorKey] as? any Error).map({ $0 as NSError }),
            underlying.domain == NSPOSIXErrorDomain
        {
            let number = Int32(truncatingIfNeeded: underlying.code)
            if localNumbers.contains(number) {
                return LocalResourceError(path: named, operation: operation, errorNumber: number)
            }
        }
        // Foundation's file codes, when no underlying POSIX error says more.
        let number: Int32? =
            switch ns.code {
            case CocoaError.fileWriteOutOfSpace.rawValue: ENOSPC
            case CocoaError.fileWriteNoPermission.rawValue, CocoaError.fileReadNoPermission.rawValue: EACCES
            case CocoaError.fileWriteVolumeReadOnly.rawValue: EROFS
            case CocoaError.fileNoSuchFile.rawValue, CocoaError.fileReadNoSuchFile.rawValue: ENOENT
            case CocoaError.fileWriteUnknown.rawValue, CocoaError.fileReadUnknown.rawValue: EIO
            default: nil
            }
        return number.map { LocalResourceError(path: named, operation: operation, errorNumber: $0) }
    }

    /// Runs `body`, turning a file-system failure into a ``LocalResourceError`` naming `path`.
    public static func checking<T>(_ path: URL, _ operation: String, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch {
            throw classify(error, path: path, operation: operation) ?? error
        }
    }
}
