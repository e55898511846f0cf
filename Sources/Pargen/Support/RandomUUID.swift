package import Foundation

extension UUID {
    /// A random (version 4) UUID drawn from `SystemRandomNumberGenerator` (two `getrandom(2)` calls on Linux).
    ///
    /// Foundation's `UUID()` on Linux opens, reads and closes `/dev/urandom` for every value: three system calls
    /// and a path lookup, on paths as hot as a job store's claim (inside SQLite's single writer). Lease tokens
    /// and other per-call identifiers use this instead.
    package static func random() -> UUID {
        var generator = SystemRandomNumberGenerator()
        var words = (generator.next() as UInt64, generator.next() as UInt64)
        return withUnsafeMutableBytes(of: &words) { buffer in
            // RFC 9562: version 4 in the high nibble of byte 6, variant 0b10 in the top bits of byte 8.
            buffer[6] = (buffer[6] & 0x0F) | 0x40
            buffer[8] = (buffer[8] & 0x3F) | 0x80
            return UUID(uuid: buffer.load(as: uuid_t.self))
        }
    }
}
