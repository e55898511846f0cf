public import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Where finished media lives: a folder, written atomically (temporary file, checks, rename).
public struct ArtifactStore: Sendable {
    public let root: URL

    public init(root: URL) { self.root = root }

    var stagingDirectory: URL { root.appendingPathComponent(".staging", isDirectory: true) }

    /// Creates the folders and removes partial files a crashed run left in the staging folder.
    ///
    /// - Throws: ``LocalResourceError`` naming the folder that cannot be created.
    func prepare() throws {
        try LocalResourceError.checking(stagingDirectory, "create the folder") {
            try FileManager.default.createDirectory(at: stagingDirectory, withIntermediateDirectories: true)
        }
        for name in (try? FileManager.default.contentsOfDirectory(atPath: stagingDirectory.path)) ?? [] {
            try? FileManager.default.removeItem(at: stagingDirectory.appendingPathComponent(name))
        }
        for kind in GenerationKind.allCases {
            let folder = root.appendingPathComponent(kind.rawValue, isDirectory: true)
            try LocalResourceError.checking(folder, "create the folder") {
                try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            }
        }
    }

    /// A fresh temporary path for one provider call.
    func stagingURL(job: JobID, attempt: Int) -> URL {
        stagingDirectory.appendingPathComponent("\(Self.safe(job.rawValue))-\(attempt).part")
    }

    /// The final path of a request's media.
    func finalURL(job: JobID, request: ValidatedRequest, format: MediaFormat) -> URL {
        root.appendingPathComponent(request.kind.rawValue, isDirectory: true)
            .appendingPathComponent("\(Self.safe(request.id))-\(Self.safe(job.rawValue)).\(format.name)")
    }

    /// Checks the provider's output, hashes it and moves it into place.
    ///
    /// - Throws: ``GenerationError/Code/artifactInvalid`` when the file is missing, empty or not of the format;
    ///   ``LocalResourceError`` when it cannot be moved into place.
    func commit(
        staging: URL,
        job: JobID,
        request: ValidatedRequest,
        output: ProviderOutput,
        provider: String
    ) throws -> Artifact {
        let destination = finalURL(job: job, request: request, format: output.format)
        // One descriptor checks, hashes and flushes the file: the bytes reach the disk before the name does, and
        // the name before the job is recorded as done, so after a power cut a job the store calls succeeded has
        // its whole file.
        let descriptor = open(staging.path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw GenerationError(.artifactInvalid, "the provider produced no file", provider: provider)
        }
        let handle = FileHandle(fileDescriptor: descriptor, closeOnDealloc: true)
        let (size, hash) = try Self.checkedDigest(handle, format: output.format, provider: provider)
        do {
            guard fsync(descriptor) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
            try? handle.close()
            // rename(2) replaces a file left at the destination (a run that crashed after the rename and before
            // its record) in one step.
            guard rename(staging.path, destination.path) == 0 else {
                throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
            }
            try Self.flush(destination.deletingLastPathComponent(), directory: true)
        } catch {
            throw LocalResourceError.classify(error, path: destination, operation: "move the media into place")
                ?? LocalResourceError(path: destination.path, operation: "move the media into place", errorNumber: EIO)
        }
        return Artifact(
            url: destination,
            format: output.format,
            contentType: output.format.contentType,
            byteCount: size,
            sha256: hash,
            duration: output.duration,
            provider: provider,
            providerTaskID: output.providerTaskID
        )
    }

    /// Gives another request its own copy of an existing artifact (a hard link where possible).
    func materialize(_ artifact: Artifact, job: JobID, request: ValidatedRequest) throws -> Artifact {
        let destination = finalURL(job: job, request: request, format: artifact.format)
        try LocalResourceError.checking(destination, "copy the media to") {
            try link(artifact, to: destination)
        }
        var copy = artifact
        copy.url = destination
        return copy
    }

    private func link(_ artifact: Artifact, to destination: URL) throws {
        if destination != artifact.url {
            if FileManager.default.fileExists(atPath: destination.path) {
                try FileManager.default.removeItem(at: destination)
            }
            do {
                try FileManager.default.linkItem(at: artifact.url, to: destination)
            } catch {
                try FileManager.default.copyItem(at: artifact.url, to: destination)
            }
        }
    }

    /// `fsync` of a file, or of a folder (which makes a rename in it durable).
    static func flush(_ url: URL, directory: Bool = false) throws {
        let descriptor = open(url.path, (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC)
        guard descriptor >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        defer { close(descriptor) }
        guard fsync(descriptor) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    }

    /// Hex SHA-256 of a file's bytes, read in 1 MiB chunks.
    public static func sha256(of url: URL) throws -> String {
        let handle = try FileHandle(forReadingFrom: url)
        defer { try? handle.close() }
        return scan(handle).sha256
    }

    /// Size, first 16 bytes and SHA-256 of everything `handle` reads, in 1 MiB chunks.
    private static func scan(_ handle: FileHandle) -> (size: Int64, head: Data, sha256: String) {
        var hasher = SHA256Hasher()
        var size: Int64 = 0
        var head = Data()
        while let chunk = try? handle.read(upToCount: 1 << 20), !chunk.isEmpty {
            if head.count < 16 { head.append(chunk.prefix(16 - head.count)) }
            size += Int64(chunk.count)
            chunk.withUnsafeBytes { hasher.update(raw: $0) }
        }
        return (size, head, hasher.finalizeHex())
    }

    func discard(_ staging: URL) { try? FileManager.default.removeItem(at: staging) }

    /// Size and SHA-256 of what `handle` reads (a finished file, from its start), after checking that it is
    /// non-empty and of the right format. The handle stays open.
    static func checkedDigest(
        _ handle: FileHandle,
        format: MediaFormat,
        provider: String
    ) throws(GenerationError) -> (Int64, String) {
        let (size, head, hash) = scan(handle)
        guard size > 0 else {
            throw GenerationError(.artifactInvalid, "the provider produced an empty file", provider: provider)
        }
        let magic: [String: [UInt8]] = [
            "wav": Array("RIFF".utf8), "gif": Array("GIF8".utf8), "flac": Array("fLaC".utf8), "ogg": Array("OggS".utf8),
        ]
        var valid = magic[format.name].map { head.starts(with: $0) } ?? true
        switch format.name {
        case "mp4": valid = head.count >= 8 && head.dropFirst(4).prefix(4).elementsEqual("ftyp".utf8)
        case "mp3":
            // An ID3 tag, or an MPEG audio frame sync (11 set bits).
            valid =
                head.starts(with: Array("ID3".utf8))
                || (head.count >= 2 && head[head.startIndex] == 0xFF
                    && head[head.startIndex + 1] & 0xE0 == 0xE0)
        default: break
        }
        if !valid {
            throw GenerationError(.artifactInvalid, "the file is not a valid \(format.name) file", provider: provider)
        }
        return (size, hash)
    }

    static func safe(_ text: String) -> String {
        let allowed = text.unicodeScalars.map { scalar -> Character in
            (scalar.isASCII
                && (CharacterSet.alphanumerics.contains(scalar) || scalar == "-" || scalar == "_" || scalar == "."))
                ? Character(scalar) : "_"
        }
        return String(String(allowed).prefix(80))
    }
}
