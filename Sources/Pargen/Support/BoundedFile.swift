#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `read(2)`, named apart from ``BoundedFile/read(_:limit:kind:)``.
private func readSome(_ descriptor: Int32, into buffer: UnsafeMutableRawBufferPointer) -> Int {
    read(descriptor, buffer.baseAddress, buffer.count)
}

/// Reads a file from outside (a campaign, a configuration) whole, within a size limit, and says plainly what is
/// wrong with a path that is no such file: a folder, a device such as /dev/zero (which would never end), a file
/// or pipe larger than the limit.
package enum BoundedFile {
    package struct Failure: Error, Sendable, Hashable {
        /// Why, such as "No such file or directory" or "it is a folder, not a campaign file".
        package var reason: String
    }

    /// The bytes of the file at `path`, a regular file or a pipe, at most `limit` of them; `kind` names what the
    /// file should be ("campaign file") in the reasons.
    package static func read(_ path: String, limit: Int, kind: String) throws(BoundedFile.Failure) -> [UInt8] {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw Failure(reason: String(cString: strerror(errno))) }
        defer { close(descriptor) }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else {
            throw Failure(reason: String(cString: strerror(errno)))
        }
        let tooLarge = Failure(reason: "it is larger than the \(size(limit)) a \(kind) may be")
        switch status.st_mode & S_IFMT {
        case S_IFREG:
            guard status.st_size <= limit else { throw tooLarge }
        case S_IFIFO:
            break
        case S_IFDIR:
            throw Failure(reason: "it is a folder, not a \(kind)")
        default:
            throw Failure(reason: "it is a device or a socket, not a \(kind) (a file, or a pipe such as /dev/stdin)")
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(status.st_mode & S_IFMT == S_IFREG ? Int(status.st_size) : 1 << 16)
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = chunk.withUnsafeMutableBytes { readSome(descriptor, into: $0) }
            if count < 0 {
                if errno == EINTR { continue }
                throw Failure(reason: String(cString: strerror(errno)))
            }
            if count == 0 { return bytes }
            guard bytes.count + count <= limit else { throw tooLarge }
            bytes.append(contentsOf: chunk[0..<count])
        }
    }

    /// `bytes` as "1 GiB", "2 MiB" or "64 KiB".
    package static func size(_ bytes: Int) -> String {
        if bytes >= 1 << 30, bytes % (1 << 30) == 0 { return "\(bytes >> 30) GiB" }
        if bytes >= 1 << 20, bytes % (1 << 20) == 0 { return "\(bytes >> 20) MiB" }
        if bytes >= 1 << 10, bytes % (1 << 10) == 0 { return "\(bytes >> 10) KiB" }
        return "\(bytes) bytes"
    }
}
