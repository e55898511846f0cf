public import AsyncHTTPClient
import Crypto
public import Foundation
public import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Where and how to reach an S3-compatible bucket (AWS S3, Cloudflare R2, MinIO), path-style
/// (`endpoint/bucket/key`), which every one of them serves.
public struct S3Configuration: Sendable {
    /// `https://s3.eu-west-1.amazonaws.com`, `https://ACCOUNT.r2.cloudflarestorage.com`, `http://127.0.0.1:9000`.
    public var endpoint: URL
    public var bucket: String
    public var region: String
    public var credentials: AWSCredentials
    /// Files larger than this go up in parts. Default 16 MiB.
    public var multipartThreshold: Int64
    /// Bytes per part (S3's minimum for all but the last is 5 MiB). Default 8 MiB.
    public var partSize: Int
    /// Tries per request, the first included, for answers worth trying again (5xx, `SlowDown`, a digest that
    /// does not match, a connection lost). Default 5.
    public var maxAttempts: Int
    /// The first wait between tries; it doubles, with jitter, up to 10 s. Default 200 ms.
    public var baseDelay: Duration
    /// The limit for one request, its body included. Default 60 s.
    public var requestTimeout: Duration

    public init(
        endpoint: URL,
        bucket: String,
        region: String = "us-east-1",
        credentials: AWSCredentials,
        multipartThreshold: Int64 = 16 << 20,
        partSize: Int = 8 << 20,
        maxAttempts: Int = 5,
        baseDelay: Duration = .milliseconds(200),
        requestTimeout: Duration = .seconds(60)
    ) {
        self.endpoint = endpoint
        self.bucket = bucket
        self.region = region
        self.credentials = credentials
        self.multipartThreshold = multipartThreshold
        self.partSize = partSize
        self.maxAttempts = maxAttempts
        self.baseDelay = baseDelay
        self.requestTimeout = requestTimeout
    }
}

/// One object, as a listing or `HEAD` describes it.
public struct S3Object: Sendable, Hashable {
    public var key: String
    public var size: Int64
    /// Without quotes.
    public var etag: String
}

/// A request the bucket refused or that could not be completed, naming the operation and the key (never a
/// credential).
public struct S3Error: Error, Sendable, CustomStringConvertible {
    public var operation: String
    public var key: String
    /// The HTTP status, when an answer came.
    public var status: Int?
    /// S3's error code (`NoSuchBucket`, `SlowDown`, `BadDigest`), or this client's (`etag_mismatch`,
    /// `length_mismatch`, `sha256_mismatch`, `transport`).
    public var code: String
    public var message: String
    public var retryable: Bool

    public var description: String {
        "S3 \(operation) \(key): \(code)\(status.map { " (HTTP \($0))" } ?? "")\(message.isEmpty ? "" : ": \(message)")"
    }
}

/// A small S3 client on AsyncHTTPClient: objects go up streamed from a file (in parts past
/// ``S3Configuration/multipartThreshold``) and come down streamed to one, every request signed with
/// ``SigV4Signer``, every upload checked (`Content-MD5` and `x-amz-content-sha256` sent, the answer's ETag
/// compared with the MD5 of what was meant to be sent), every download checked by length and SHA-256, and
/// failures worth trying again tried again with backoff.
public struct S3Client: Sendable {
    public let configuration: S3Configuration
    package let http: HTTPClient
    let signer: SigV4Signer
    let logger: Logger
    /// How the client waits between tries: the real clock unless a test injects another.
    package let sleep: @Sendable (Duration) async throws -> Void

    /// - Parameters:
    ///   - sleep: Waits out a backoff delay (throws `CancellationError` when cancelled); `Task.sleep` unless a
    ///     test drives time itself.
    public init(
        configuration: S3Configuration,
        httpClient: HTTPClient,
        logger: Logger = Logger(label: "pargen.s3"),
        sleep: @escaping @Sendable (Duration) async throws -> Void = { try await Task.sleep(for: $0) }
    ) {
        self.configuration = configuration
        self.http = httpClient
        self.signer = SigV4Signer(credentials: configuration.credentials, region: configuration.region)
        self.logger = logger
        self.sleep = sleep
    }

    var requestTimeout: TimeAmount { .nanoseconds(Int64(configuration.requestTimeout.seconds * 1e9)) }

    /// The URL of `key` in the bucket (path style).
    public func url(for key: String, query: String? = nil) -> URL {
        var text = configuration.endpoint.absoluteString
        while text.hasSuffix("/") { text.removeLast() }
        text += "/" + SigV4Signer.encode(configuration.bucket)
        if !key.isEmpty {
            text += "/" + key.split(separator: "/", omittingEmptySubsequences: false).map { SigV4Signer.encode(String($0)) }
                .joined(separator: "/")
        }
        if let query { text += "?" + query }
        return URL(string: text)!
    }

    // MARK: - Operations

    /// Creates the bucket; one that exists already is fine. Tried again as ``retrying(_:key:_:)`` does: a second
    /// try of a create that reached the server is answered "already owned by you", which is success.
    public func createBucket() async throws {
        try await retrying("create bucket", key: "") {
            let answer = try await send("create bucket", key: "", method: .PUT, url: url(for: ""), body: .none)
            if (200..<300).contains(answer.status) { return }
            if answer.code == "BucketAlreadyOwnedByYou" || answer.code == "BucketAlreadyExists" { return }
            throw answer.error("create bucket", key: "")
        }
    }

    /// Uploads `file` as `key`, in one request or in parts by its size, and checks what the bucket stored.
    ///
    /// - Returns: The object as stored.
    @discardableResult
    public func putObject(key: String, file: URL, contentType: String) async throws -> S3Object {
        let size = try Self.size(of: file, key: key)
        if size > configuration.multipartThreshold {
            return try await putMultipart(key: key, file: file, size: size, contentType: contentType)
        }
        let digests = try await Self.digestsOffThePool(of: file, offset: 0, length: size, key: key)
        let etag = try await putChecked(
            "upload",
            key: key,
            url: url(for: key),
            headers: [("content-type", contentType)],
            body: .file(file, offset: 0, length: size, sha256: digests.sha256Hex),
            md5: digests.md5
        )
        return S3Object(key: key, size: size, etag: etag)
    }

    /// Downloads `key` into `file` (through a temporary file next to it, renamed when whole), checking the
    /// length the bucket announced and, when given, the SHA-256.
    ///
    /// - Returns: The bytes written.
    @discardableResult
    public func getObject(key: String, to file: URL, expectedSHA256: String? = nil) async throws -> Int64 {
        try await retrying("download", key: key) {
            let partial = file.deletingLastPathComponent().appendingPathComponent(".\(file.lastPathComponent).part")
            defer { try? FileManager.default.removeItem(at: partial) }
            let (status, written, hash, announced, code) = try await download(key: key, to: partial)
            guard (200..<300).contains(status) else {
                throw S3Error(
                    operation: "download",
                    key: key,
                    status: status,
                    code: code,
                    message: "",
                    retryable: Self.retryable(status: status, code: code)
                )
            }
            if let announced, announced != written {
                throw S3Error(
                    operation: "download",
                    key: key,
                    status: status,
                    code: "length_mismatch",
                    message: "received \(written) of \(announced) bytes",
                    retryable: true
                )
            }
            if let expectedSHA256, expectedSHA256 != hash {
                throw S3Error(
                    operation: "download",
                    key: key,
                    status: status,
                    code: "sha256_mismatch",
                    message: "received \(hash), expected \(expectedSHA256)",
                    retryable: true
                )
            }
            _ = try? FileManager.default.removeItem(at: file)
            try FileManager.default.moveItem(at: partial, to: file)
            return written
        }
    }

    /// The object's size and ETag, or `nil` when there is none.
    public func headObject(key: String) async throws -> S3Object? {
        try await retrying("head", key: key) {
            let answer = try await send("head", key: key, method: .HEAD, url: url(for: key), body: .none)
            if answer.status == 404 { return nil }
            guard (200..<300).contains(answer.status) else { throw answer.error("head", key: key) }
            let size = answer.headers.first(name: "content-length").flatMap { Int64($0) } ?? 0
            return S3Object(key: key, size: size, etag: answer.etag)
        }
    }

    /// Stores a small object from memory (a JSON record), checked by its ETag as ``putObject(key:file:contentType:)``.
    public func putData(key: String, data: Data, contentType: String) async throws {
        _ = try await putChecked(
            "upload",
            key: key,
            url: url(for: key),
            headers: [("content-type", contentType)],
            body: .bytes(data),
            md5: Array(Insecure.MD5.hash(data: data))
        )
    }

    /// A small object's bytes (up to 4 MiB), or `nil` when there is none.
    public func getData(key: String) async throws -> Data? {
        try await retrying("download", key: key) { () async throws -> Data? in
            let answer = try await send("download", key: key, method: .GET, url: url(for: key), body: .none)
            if answer.status == 404 { return nil }
            guard (200..<300).contains(answer.status) else { throw answer.error("download", key: key) }
            return Data(answer.body.readableBytesView)
        }
    }

    /// The objects whose keys start with `prefix` (up to `limit`, in key order).
    public func list(prefix: String, limit: Int = 1000) async throws -> [S3Object] {
        let query = "list-type=2&max-keys=\(max(1, min(limit, 1000)))&prefix=\(SigV4Signer.encode(prefix))"
        return try await retrying("list", key: prefix) {
            let answer = try await send("list", key: prefix, method: .GET, url: url(for: "", query: query), body: .none)
            guard (200..<300).contains(answer.status) else { throw answer.error("list", key: prefix) }
            return S3XML.contents(String(buffer: answer.body))
        }
    }

    public func deleteObject(key: String) async throws {
        try await retrying("delete", key: key) {
            let answer = try await send("delete", key: key, method: .DELETE, url: url(for: key), body: .none)
            guard (200..<300).contains(answer.status) || answer.status == 404 else { throw answer.error("delete", key: key) }
        }
    }

    // MARK: - Multipart

    func putMultipart(key: String, file: URL, size: Int64, contentType: String) async throws -> S3Object {
        let created = try await retrying("start multipart upload", key: key) {
            let answer = try await send(
                "start multipart upload",
                key: key,
                method: .POST,
                url: url(for: key, query: "uploads="),
                headers: [("content-type", contentType)],
                body: .none
            )
            guard (200..<300).contains(answer.status), let id = S3XML.value("UploadId", in: String(buffer: answer.body))
            else { throw answer.error("start multipart upload", key: key) }
            return id
        }
        let uploadID = SigV4Signer.encode(created)
        do {
            let partSize = Int64(max(configuration.partSize, 5 << 20))
            var parts: [(number: Int, etag: String, md5: [UInt8])] = []
            var offset: Int64 = 0
            var number = 1
            while offset < size {
                let length = min(partSize, size - offset)
                let digests = try await Self.digestsOffThePool(of: file, offset: offset, length: length, key: key)
                let partNumber = number
                let partOffset = offset
                let etag = try await putChecked(
                    "upload part \(partNumber)",
                    key: key,
                    url: url(for: key, query: "partNumber=\(partNumber)&uploadId=\(uploadID)"),
                    headers: [],
                    body: .file(file, offset: partOffset, length: length, sha256: digests.sha256Hex),
                    md5: digests.md5
                )
                parts.append((partNumber, etag, digests.md5))
                offset += length
                number += 1
            }
            let manifest =
                "<CompleteMultipartUpload>"
                + parts.map { "<Part><PartNumber>\($0.number)</PartNumber><ETag>\"\($0.etag)\"</ETag></Part>" }.joined()
                + "</CompleteMultipartUpload>"
            // The multipart ETag is the MD5 of the parts' MD5s, then "-" and the number of parts.
            let expected = SigV4Signer.hex(Insecure.MD5.hash(data: parts.flatMap(\.md5))) + "-\(parts.count)"
            let etag = try await retrying("complete multipart upload", key: key) {
                let answer = try await send(
                    "complete multipart upload",
                    key: key,
                    method: .POST,
                    url: url(for: key, query: "uploadId=\(uploadID)"),
                    body: .bytes(Data(manifest.utf8))
                )
                let text = String(buffer: answer.body)
                // S3 can answer 200 with an error in the body.
                guard (200..<300).contains(answer.status), !text.contains("<Error>") else {
                    throw answer.error("complete multipart upload", key: key)
                }
                return (S3XML.value("ETag", in: text) ?? "").replacingOccurrences(of: "&quot;", with: "")
                    .replacingOccurrences(of: "\"", with: "")
            }
            guard etag == expected else {
                throw S3Error(
                    operation: "complete multipart upload",
                    key: key,
                    status: nil,
                    code: "etag_mismatch",
                    message: "stored \(etag), sent \(expected)",
                    retryable: false
                )
            }
            return S3Object(key: key, size: size, etag: etag)
        } catch {
            // Parts of an upload that will not complete cost storage until aborted.
            _ = try? await send(
                "abort multipart upload",
                key: key,
                method: .DELETE,
                url: url(for: key, query: "uploadId=\(uploadID)"),
                body: .none
            )
            throw error
        }
    }

    // MARK: - Requests

    /// One `PUT` that sends its body's MD5 (`Content-MD5`) and compares it with the ETag the bucket answers (the
    /// MD5 of what it stored, for a one-request upload and for a part): a body cut short on the way is caught even
    /// by a server that ignores `Content-MD5`. Tried again as ``retrying(_:key:_:)`` does.
    ///
    /// - Returns: The ETag.
    func putChecked(
        _ operation: String,
        key: String,
        url: URL,
        headers: [(String, String)],
        body: Body,
        md5: [UInt8]
    ) async throws -> String {
        let md5Hex = SigV4Signer.hex(md5)
        return try await retrying(operation, key: key) {
            let answer = try await send(
                operation,
                key: key,
                method: .PUT,
                url: url,
                headers: headers + [("content-md5", Data(md5).base64EncodedString())],
                body: body
            )
            guard (200..<300).contains(answer.status) else { throw answer.error(operation, key: key) }
            guard answer.etag == md5Hex else {
                throw S3Error(
                    operation: operation,
                    key: key,
                    status: answer.status,
                    code: "etag_mismatch",
                    message: "stored \(answer.etag.isEmpty ? "no ETag" : answer.etag), sent \(md5Hex)",
                    retryable: true
                )
            }
            return answer.etag
        }
    }

    enum Body {
        case none
        case bytes(Data)
        case file(URL, offset: Int64, length: Int64, sha256: String)
    }

    struct Answer {
        var status: Int
        var headers: HTTPHeaders
        var body: ByteBuffer

        var etag: String { (headers.first(name: "etag") ?? "").replacingOccurrences(of: "\"", with: "") }
        var code: String {
            S3XML.value("Code", in: String(buffer: body)) ?? (status == 404 ? "NotFound" : "HTTP\(status)")
        }

        func error(_ operation: String, key: String) -> S3Error {
            let code = self.code
            return S3Error(
                operation: operation,
                key: key,
                status: status,
                code: code,
                message: S3XML.value("Message", in: String(buffer: body)) ?? "",
                retryable: S3Client.retryable(status: status, code: code)
            )
        }
    }

    static func retryable(status: Int, code: String) -> Bool {
        status >= 500 || status == 429 || ["SlowDown", "RequestTimeout", "BadDigest", "XAmzContentSHA256Mismatch",
            "IncompleteBody", "InternalError"].contains(code)
    }

    func signedRequest(method: HTTPMethod, url: URL, headers: [(String, String)], payloadHash: String) -> HTTPClientRequest {
        var all = headers
        all.append(("x-amz-content-sha256", payloadHash))
        let signature = signer.sign(method: method.rawValue, url: url, headers: all, payloadHash: payloadHash, date: Date())
        var request = HTTPClientRequest(url: url.absoluteString)
        request.method = method
        for (name, value) in all + signature { request.headers.add(name: name, value: value) }
        return request
    }

    func send(
        _ operation: String,
        key: String,
        method: HTTPMethod,
        url: URL,
        headers: [(String, String)] = [],
        body: Body
    ) async throws -> Answer {
        let payloadHash: String
        switch body {
        case .none: payloadHash = SigV4Signer.emptyPayloadHash
        case .bytes(let data): payloadHash = SigV4Signer.hex(SHA256.hash(data: data))
        case .file(_, _, _, let sha256): payloadHash = sha256
        }
        var request = signedRequest(method: method, url: url, headers: headers, payloadHash: payloadHash)
        switch body {
        case .none: break
        case .bytes(let data): request.body = .bytes(ByteBuffer(bytes: data))
        case .file(let file, let offset, let length, _):
            request.body = .stream(FileChunks(file: file, offset: offset, length: length), length: .known(length))
        }
        do {
            let response = try await http.execute(request, timeout: requestTimeout)
            let collected = try await response.body.collect(upTo: 4 << 20)
            return Answer(status: Int(response.status.code), headers: response.headers, body: collected)
        } catch let error as S3Error {
            throw error
        } catch {
            if error is CancellationError || Task.isCancelled { throw CancellationError() }
            throw S3Error(
                operation: operation,
                key: key,
                status: nil,
                code: "transport",
                message: "\(type(of: error)): \(error)",
                retryable: true
            )
        }
    }

    /// Streams one object's body to `file`, hashing it as it goes.
    func download(key: String, to file: URL) async throws -> (Int, Int64, String, Int64?, String) {
        let request = signedRequest(method: .GET, url: url(for: key), headers: [], payloadHash: SigV4Signer.emptyPayloadHash)
        do {
            let response = try await http.execute(request, timeout: requestTimeout)
            let status = Int(response.status.code)
            guard (200..<300).contains(status) else {
                let body = try await response.body.collect(upTo: 1 << 20)
                let code = S3XML.value("Code", in: String(buffer: body)) ?? (status == 404 ? "NoSuchKey" : "HTTP\(status)")
                return (status, 0, "", nil, code)
            }
            let announced = response.headers.first(name: "content-length").flatMap { Int64($0) }
            guard FileManager.default.createFile(atPath: file.path, contents: nil) else {
                throw S3Error(operation: "download", key: key, status: nil, code: "local_file",
                    message: "cannot create \(file.path)", retryable: false)
            }
            let handle = try FileHandle(forWritingTo: file)
            defer { try? handle.close() }
            var hasher = SHA256()
            var written: Int64 = 0
            for try await chunk in response.body {
                chunk.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) }
                try handle.write(contentsOf: Data(chunk.readableBytesView))
                written += Int64(chunk.readableBytes)
            }
            try handle.synchronize()
            return (status, written, SigV4Signer.hex(hasher.finalize()), announced, "")
        } catch let error as S3Error {
            throw error
        } catch {
            if error is CancellationError || Task.isCancelled { throw CancellationError() }
            throw S3Error(operation: "download", key: key, status: nil, code: "transport",
                message: "\(type(of: error)): \(error)", retryable: true)
        }
    }

    /// Runs `body` until it succeeds, fails for a reason not worth trying again, or has had
    /// ``S3Configuration/maxAttempts`` tries, waiting with exponential backoff and full jitter between them.
    func retrying<T>(_ operation: String, key: String, _ body: () async throws -> T) async throws -> T {
        var attempt = 1
        while true {
            do {
                return try await body()
            } catch let error as S3Error where error.retryable && attempt < configuration.maxAttempts {
                let ceiling = min(10.0, configuration.baseDelay.seconds * pow(2, Double(attempt - 1)))
                let wait = Double.random(in: ceiling / 2...ceiling)
                logger.debug(
                    "S3 request failed; trying again",
                    metadata: ["operation": "\(operation)", "key": "\(key)", "error": "\(error.code)",
                        "attempt": "\(attempt)", "delay_ms": "\(Int(wait * 1000))"]
                )
                try await sleep(.milliseconds(Int(wait * 1000)))
                attempt += 1
            }
        }
    }

    // MARK: - Files

    struct Digests {
        var sha256Hex: String
        var md5: [UInt8]
    }

    static func size(of file: URL, key: String) throws -> Int64 {
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: file.path),
            let size = (attributes[.size] as? NSNumber)?.int64Value
        else {
            throw S3Error(operation: "upload", key: key, status: nil, code: "local_file",
                message: "cannot read \(file.path)", retryable: false)
        }
        return size
    }

    /// ``digests(of:offset:length:key:)`` on NIO's blocking-I/O thread pool: reading and hashing a video of
    /// hundreds of megabytes takes seconds, which must not hold a thread of the cooperative pool (on 2 cores it has
    /// 2, and the engine's scheduler runs on them).
    static func digestsOffThePool(of file: URL, offset: Int64, length: Int64, key: String) async throws -> Digests {
        try await NIOThreadPool.singleton.runIfActive {
            try digests(of: file, offset: offset, length: length, key: key)
        }
    }

    /// SHA-256 and MD5 of `length` bytes of `file` from `offset`, read in 1 MiB pieces.
    static func digests(of file: URL, offset: Int64, length: Int64, key: String) throws -> Digests {
        guard let handle = try? FileHandle(forReadingFrom: file) else {
            throw S3Error(operation: "upload", key: key, status: nil, code: "local_file",
                message: "cannot read \(file.path)", retryable: false)
        }
        defer { try? handle.close() }
        try handle.seek(toOffset: UInt64(offset))
        var sha = SHA256()
        var md5 = Insecure.MD5()
        var left = length
        while left > 0 {
            let data = try handle.read(upToCount: Int(min(left, 1 << 20))) ?? Data()
            if data.isEmpty {
                throw S3Error(operation: "upload", key: key, status: nil, code: "local_file",
                    message: "\(file.path) is shorter than \(offset + length) bytes", retryable: false)
            }
            sha.update(data: data)
            md5.update(data: data)
            left -= Int64(data.count)
        }
        return Digests(sha256Hex: SigV4Signer.hex(sha.finalize()), md5: Array(md5.finalize()))
    }
}

/// A file's bytes from `offset`, `length` of them, read 256 KiB at a time as the request body is sent.
struct FileChunks: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let file: URL
    let offset: Int64
    let length: Int64

    struct AsyncIterator: AsyncIteratorProtocol {
        let handle: FileHandle?
        var left: Int64

        mutating func next() async throws -> ByteBuffer? {
            guard left > 0, let handle else {
                try? handle?.close()
                return nil
            }
            let data = try handle.read(upToCount: Int(Swift.min(left, 256 << 10))) ?? Data()
            if data.isEmpty {
                left = 0
                return nil
            }
            left -= Int64(data.count)
            return ByteBuffer(bytes: data)
        }
    }

    func makeAsyncIterator() -> AsyncIterator {
        let handle = try? FileHandle(forReadingFrom: file)
        try? handle?.seek(toOffset: UInt64(offset))
        return AsyncIterator(handle: handle, left: length)
    }
}

/// The few parts of S3's XML answers this client reads.
enum S3XML {
    /// The text of the first `<name>` element, entities decoded.
    static func value(_ name: String, in xml: String) -> String? {
        guard let start = xml.range(of: "<\(name)>"), let end = xml.range(of: "</\(name)>", range: start.upperBound..<xml.endIndex)
        else { return nil }
        return decode(String(xml[start.upperBound..<end.lowerBound]))
    }

    /// Every `<Contents>` of a ListObjectsV2 answer.
    static func contents(_ xml: String) -> [S3Object] {
        var objects: [S3Object] = []
        var rest = xml[...]
        while let start = rest.range(of: "<Contents>"), let end = rest.range(of: "</Contents>", range: start.upperBound..<rest.endIndex) {
            let item = String(rest[start.upperBound..<end.lowerBound])
            if let key = value("Key", in: item) {
                objects.append(
                    S3Object(
                        key: key,
                        size: value("Size", in: item).flatMap { Int64($0) } ?? 0,
                        etag: (value("ETag", in: item) ?? "").replacingOccurrences(of: "\"", with: "")
                    )
                )
            }
            rest = rest[end.upperBound...]
        }
        return objects
    }

    static func decode(_ text: String) -> String {
        text.replacingOccurrences(of: "&quot;", with: "\"").replacingOccurrences(of: "&apos;", with: "'")
            .replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(of: "&gt;", with: ">")
            .replacingOccurrences(of: "&amp;", with: "&")
    }
}

extension Duration {
    var seconds: Double {
        let parts = components
        return Double(parts.seconds) + Double(parts.attoseconds) / 1e18
    }
}
