package import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Files that providers write their media into.
package enum OutputFile {
    /// Opens `url` for writing, creating or emptying it, as `open(2)` does (a symbolic link is followed, never
    /// replaced).
    ///
    /// - Throws: ``LocalResourceError`` naming `url` when the file cannot be created.
    package static func create(_ url: URL) throws -> FileHandle {
        let descriptor = open(url.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            throw LocalResourceError(path: url.path, operation: "create", errorNumber: errno)
        }
        return FileHandle(fileDescriptor: descriptor, closeOnDealloc: true)
    }
}
