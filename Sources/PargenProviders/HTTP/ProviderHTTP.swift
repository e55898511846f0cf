public import AsyncHTTPClient
package import Foundation
import Logging
package import NIOCore
import NIOFoundationCompat
package import NIOHTTP1
package import Pargen

/// An API key. It prints as `<redacted>` everywhere (logs, errors, `dump`), so it cannot leak by accident.
public struct APIKey: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible {
    package let secret: String

    public init(_ secret: String) { self.secret = secret }

    public var description: String { "<redacted>" }
    public var debugDescription: String { "<redacted>" }
}

/// Where and how an adapter reaches its provider: one shared `HTTPClient` for every adapter.
public struct ProviderConnection: Sendable {
    /// Scheme and host, with no trailing slash (`https://api.openai.com`); tests point it at a fake.
    public var baseURL: String
    public var apiKey: APIKey?
    public var httpClient: HTTPClient
    /// Limit for one API call (submit, poll). Default 60 s.
    public var requestTimeout: Duration
    /// Limit for one download. Default 10 min.
    public var downloadTimeout: Duration
    /// Largest result accepted. Default 2 GiB.
    public var maxDownloadBytes: Int64
    /// Time between polls of a running task, when the provider gives no hint. Default 5 s.
    public var pollInterval: Duration
    /// How long a submitted task may run before it is given up (dead-lettered with its task id, never
    /// resubmitted). Default 30 min.
    public var taskTimeout: Duration

    public init(
        baseURL: String,
        apiKey: APIKey?,
        httpClient: HTTPClient,
        requestTimeout: Duration = .seconds(60),
        downloadTimeout: Duration = .seconds(600),
        maxDownloadBytes: Int64 = 2 << 30,
        pollInterval: Duration = .seconds(5),
        taskTimeout: Duration = .seconds(1800)
    ) {
        var base = baseURL
        while base.hasSuffix("/") { base.removeLast() }
        self.baseURL = base
        self.apiKey = apiKey
        self.httpClient = httpClient
        self.requestTimeout = requestTimeout
        self.downloadTimeout = downloadTimeout
        self.maxDownloadBytes = maxDownloadBytes
        self.pollInterval = pollInterval
        self.taskTimeout = taskTimeout
    }

    /// An `HTTPClient` sized for bulk generation: many connections per host (a fresh quota window is
    /// sent at once), connect and read time-outs, no redirects to other hosts.
    public static func makeHTTPClient(maxConnectionsPerHost: Int = 256) -> HTTPClient {
        var configuration = HTTPClient.Configuration()
        configuration.connectionPool = .init(
            idleTimeout: .seconds(60),
            concurrentHTTP1ConnectionsPerHostSoftLimit: maxConnectionsPerHost
        )
        configuration.timeout = .init(connect: .seconds(10), read: .seconds(120))
        configuration.redirectConfiguration = .follow(max: 3, allowCycles: false)
        configuration.decompression = .disabled
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }
}

/// A whole, small HTTP response (an API answer; media goes through ``ProviderHTTP/download(_:headers:to:accepting:)``).
package struct HTTPExchange: Sendable {
    package var status: HTTPResponseStatus
    package var headers: HTTPHeaders
    package var body: ByteBuffer

    package init(status: HTTPResponseStatus, headers: HTTPHeaders, body: ByteBuffer) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    package var json: JSONValue? { try? JSONDecoder().decode(JSONValue.self, from: Data(buffer: body)) }
    package var text: String { String(buffer: body) }
    package var isSuccess: Bool { (200..<300).contains(status.code) }
}

/// The HTTP plumbing every adapter shares: sending, error classification, streaming downloads.
package struct ProviderHTTP: Sendable {
    package let provider: String
    package let connection: ProviderConnection

    package init(provider: String, connection: ProviderConnection) {
        self.provider = provider
        self.connection = connection
    }

    package func url(_ path: String) -> String { connection.baseURL + path }

    /// Sends one API call and reads its (small) answer. Transport failures become ``GenerationError``s:
    /// a call that never left is transient; one that may have reached the provider is transient too unless
    /// `ambiguousIsUnsafe`, when it is reported as needing reconciliation (a task may exist that we cannot see).
    package func send(
        _ method: HTTPMethod,
        _ url: String,
        headers: HTTPHeaders = [:],
        body: ByteBuffer? = nil,
        ambiguousIsUnsafe: Bool = false,
        maxBytes: Int = 64 << 20,
        answered: (@Sendable () -> Void)? = nil
    ) async throws -> HTTPExchange {
        var request = HTTPClientRequest(url: url)
        request.method = method
        request.headers = headers
        request.headers.replaceOrAdd(name: "User-Agent", value: "pargen/1.0")
        if let body { request.body = .bytes(body) }
        do {
            let response = try await connection.httpClient.execute(
                request,
                timeout: .nanoseconds(connection.requestTimeout.nanoseconds)
            )
            answered?()
            let bytes = try await response.body.collect(upTo: maxBytes)
            return HTTPExchange(status: response.status, headers: response.headers, body: bytes)
        } catch {
            throw transportError(error, method: method, url: url, ambiguousIsUnsafe: ambiguousIsUnsafe)
        }
    }

    /// Maps a transport error (time-out, refused, reset) to a ``GenerationError`` without the URL's query.
    /// Transport failures that happen before any byte of the request is written.
    static let neverSentCodes: Set<String> = ["connect_timeout", "connection_refused"]

    package func transportError(
        _ error: any Error,
        method: HTTPMethod,
        url: String,
        ambiguousIsUnsafe: Bool
    ) -> any Error {
        if error is CancellationError || Task.isCancelled { return CancellationError() }
        if let generation = error as? GenerationError { return generation }
        let path = URLComponents(string: url)?.path ?? "?"
        let neverSent: Bool
        let code: String
        if let http = error as? HTTPClientError {
            switch http {
            case .connectTimeout: (neverSent, code) = (true, "connect_timeout")
            case .deadlineExceeded, .readTimeout: (neverSent, code) = (false, "timeout")
            case .remoteConnectionClosed: (neverSent, code) = (false, "connection_closed")
            case .cancelled: return CancellationError()
            default: (neverSent, code) = (false, "http_client")
            }
        } else {
            // NIO connection errors (refused, unreachable, connect time-out) happen before anything is written; a
            // reset or a close after connecting may come after the request went out.
            let text = String(describing: error)
            neverSent = [
                "NIOConnectionError", "connectionRefused", "ECONNREFUSED", "Connection refused", "connectTimeout",
            ]
            .contains { text.contains($0) }
            code = neverSent ? "connection_refused" : "transport"
        }
        if !neverSent && ambiguousIsUnsafe {
            return GenerationError(
                .needsReconciliation,
                "\(method) \(path) failed after the request was sent (\(code)): the provider may have created a task "
                    + "that was not recorded; check it before retrying",
                provider: provider,
                providerCode: code
            )
        }
        return GenerationError(.transient, "\(method) \(path) failed: \(code)", provider: provider, providerCode: code)
    }

    /// Streams a result to `file`, never holding it whole in memory (`timeout` defaults to the download timeout). Checks the status, the content type
    /// against `accepting` (prefixes such as `video/`), the size limit and, when the server gives one, that
    /// the length received is the length announced.
    ///
    /// - Returns: The number of bytes written.
    /// - Throws: ``DownloadFailure`` describing what went wrong, for the adapter to decide.
    package func download(
        _ url: String,
        method: HTTPMethod = .GET,
        headers: HTTPHeaders = [:],
        body: ByteBuffer? = nil,
        to file: URL,
        accepting: [String],
        timeout: Duration? = nil,
        answered: (@Sendable () -> Void)? = nil,
        billed: (@Sendable () -> Void)? = nil
    ) async throws -> Int64 {
        var request = HTTPClientRequest(url: url)
        request.method = method
        request.headers = headers
        if let body { request.body = .bytes(body) }
        request.headers.replaceOrAdd(name: "User-Agent", value: "pargen/1.0")
        // The limit covers the whole transfer: the client's own deadline ends at the response head, so a body
        // that trickles (or stalls below the read time-out) is stopped here, at the same deadline.
        let limit = timeout ?? connection.downloadTimeout
        let deadline = ContinuousClock.now + limit
        let response: HTTPClientResponse
        do {
            response = try await connection.httpClient.execute(request, timeout: .nanoseconds(limit.nanoseconds))
            answered?()
        } catch {
            let failure = transportError(error, method: method, url: url, ambiguousIsUnsafe: false)
            // A generation call that went out and got no answer (time-out, connection closed) may have been made
            // and billed: a synchronous provider has no task or key to ask about it afterwards. It counts as a
            // billed answer that was lost, so the ledger charges it and buying it again follows
            // `retry.payAgainForLostAnswers`.
            if let billed, let generation = failure as? GenerationError, generation.code == .transient,
                !Self.neverSentCodes.contains(generation.providerCode ?? "")
            {
                billed()
            }
            throw DownloadFailure.transport(failure)
        }
        guard response.status == .ok else {
            let body = try? await response.body.collect(upTo: 1 << 20)
            throw DownloadFailure.status(
                HTTPExchange(status: response.status, headers: response.headers, body: body ?? ByteBuffer())
            )
        }
        let contentType = response.headers.first(name: "content-type")?.lowercased() ?? ""
        guard accepting.contains(where: { contentType.hasPrefix($0) }) else {
            throw DownloadFailure.contentType(contentType.isEmpty ? "none" : contentType)
        }
        let announced = response.headers.first(name: "content-length").flatMap { Int64($0) }
        if let announced, announced > connection.maxDownloadBytes {
            throw DownloadFailure.tooLarge(announced)
        }
        // A 200 whose body is the media: the provider made it and bills it, whatever happens to the bytes now.
        billed?()
        // This machine's disk is not the provider's fault: a file that cannot be created or written is a
        // LocalResourceError, which the engine stops for instead of retrying.
        let handle = try OutputFile.create(file)
        defer { try? handle.close() }
        let received = Locked<Int64>(0)
        let maxBytes = connection.maxDownloadBytes
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    for try await chunk in response.body {
                        let total = received.withLock { total -> Int64 in
                            total += Int64(chunk.readableBytes)
                            return total
                        }
                        if total > maxBytes { throw DownloadFailure.tooLarge(total) }
                        try LocalResourceError.checking(file, "write") {
                            try handle.write(contentsOf: chunk.readableBytesView)
                        }
                    }
                }
                group.addTask {
                    try await Task.sleep(until: deadline, clock: .continuous)
                    throw DownloadFailure.tooSlow(received: received.value, limit: limit)
                }
                // The first to end decides: the whole body, or the deadline.
                try await group.next()
                group.cancelAll()
            }
        } catch let failure as DownloadFailure {
            throw failure
        } catch let local as LocalResourceError {
            throw local
        } catch {
            if error is CancellationError || Task.isCancelled { throw CancellationError() }
            throw DownloadFailure.truncated(received: received.value, expected: announced)
        }
        let written = received.value
        if let announced, announced != written {
            throw DownloadFailure.truncated(received: written, expected: announced)
        }
        guard written > 0 else { throw DownloadFailure.truncated(received: 0, expected: announced) }
        return written
    }

    /// The longest wait an answer can ask for: a day. A provider's header is outside input; a larger (or
    /// absurd, such as `1e300`) value is read as this, never converted past `Int64` (which traps).
    package static let longestRetryAfter: Duration = .seconds(86_400)

    /// The wait a throttling answer asks for: `retry-after-ms`, else `Retry-After` in seconds; at most
    /// ``longestRetryAfter``. A negative, infinite or unreadable value is no answer.
    package static func retryAfter(_ headers: HTTPHeaders) -> Duration? {
        func milliseconds(_ value: Double) -> Duration? {
            guard value.isFinite, value >= 0 else { return nil }
            let most = Double(longestRetryAfter.milliseconds)
            return value >= most ? longestRetryAfter : .milliseconds(Int64(value))
        }
        if let ms = headers.first(name: "retry-after-ms").flatMap(Double.init), let wait = milliseconds(ms) {
            return wait
        }
        if let seconds = headers.first(name: "retry-after").flatMap(Double.init), let wait = milliseconds(seconds * 1000) {
            return wait
        }
        return nil
    }

    /// The usual reading of an HTTP status: 429 throttled, 408/409/5xx transient, other 4xx terminal.
    package func classify(_ exchange: HTTPExchange, code: String?, message: String) -> GenerationError {
        let status = exchange.status.code
        let providerCode = code ?? String(status)
        switch status {
        case 429:
            return GenerationError(
                .rateLimited,
                "throttled: \(message)",
                provider: provider,
                providerCode: providerCode,
                retryAfter: Self.retryAfter(exchange.headers)
            )
        case 408, 409, 500...599:
            return GenerationError(
                .transient,
                "HTTP \(status): \(message)",
                provider: provider,
                providerCode: providerCode
            )
        default:
            return GenerationError(
                .terminal,
                "HTTP \(status): \(message)",
                provider: provider,
                providerCode: providerCode
            )
        }
    }

    /// Downloads a result, fetching a fresh link through `refresh` when the link is expired or missing, and
    /// downloading again when the transfer is cut short. Never resubmits: a result that stays unavailable
    /// is a terminal error naming the task.
    package func fetchResult(
        taskID: String,
        to file: URL,
        accepting: [String],
        headers: HTTPHeaders = [:],
        attempts: Int = 4,
        clock: PargenClock,
        link: (_ attempt: Int) async throws -> String
    ) async throws -> Int64 {
        var lastProblem = ""
        for attempt in 1...attempts {
            let url = try await link(attempt)
            do {
                return try await download(url, headers: headers, to: file, accepting: accepting)
            } catch let failure as DownloadFailure {
                switch failure {
                case .transport(let error):
                    if error is CancellationError { throw error }
                    lastProblem = "\(error)"
                case .status(let exchange):
                    lastProblem = "result link answered HTTP \(exchange.status.code)"
                case .contentType(let type):
                    lastProblem = "result has content type \(type)"
                case .tooLarge(let size):
                    throw GenerationError(
                        .terminal,
                        "result of task \(taskID) is \(size) bytes, over the limit",
                        provider: provider,
                        providerCode: "result_too_large"
                    )
                case .truncated(let received, let expected):
                    lastProblem = "download cut short at \(received) of \(expected.map(String.init) ?? "?") bytes"
                case .tooSlow(let received, let limit):
                    lastProblem = "download had \(received) bytes when its limit of \(limit.formatted(.units(allowed: [.seconds]))) ran out"
                }
                try? FileManager.default.removeItem(at: file)
                if attempt < attempts { try await clock.sleep(for: .milliseconds(200 * Int64(attempt))) }
            }
        }
        throw GenerationError(
            .terminal,
            "result of task \(taskID) could not be fetched: \(lastProblem)",
            provider: provider,
            providerCode: "result_unavailable"
        )
    }
}

/// Why a download did not produce a whole file.
package enum DownloadFailure: Error {
    case transport(any Error)
    case status(HTTPExchange)
    case contentType(String)
    case tooLarge(Int64)
    case truncated(received: Int64, expected: Int64?)
    /// The body did not arrive within the download limit (it trickled, or stalled).
    case tooSlow(received: Int64, limit: Duration)
}

extension JSONValue {
    package subscript(key: String) -> JSONValue? {
        if case .object(let object) = self { return object[key] }
        return nil
    }

    /// A string, or a number written as an integer string (ids that arrive as numbers).
    package var string: String? {
        switch self {
        case .string(let value): return value
        case .number(let value) where value == value.rounded() && abs(value) < 1e15: return String(Int64(value))
        default: return nil
        }
    }

    package var int: Int? {
        switch self {
        case .number(let value): return Int(exactly: value.rounded())
        case .string(let value): return Int(value)
        default: return nil
        }
    }

    package var double: Double? {
        switch self {
        case .number(let value): return value
        case .string(let value): return Double(value)
        default: return nil
        }
    }

    package var array: [JSONValue]? {
        if case .array(let values) = self { return values }
        return nil
    }
}

extension ByteBuffer {
    package init(json object: [String: JSONValue]) {
        let data = (try? JSONEncoder().encode(JSONValue.object(object))) ?? Data("{}".utf8)
        self.init(data: data)
    }
}

extension Duration {
    package var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}

/// A `multipart/form-data` body of text fields.
package struct MultipartForm {
    package let boundary = "pargen-" + UUID.random().uuidString
    private var body = ""

    package init() {}

    package mutating func add(_ name: String, _ value: String) {
        body += "--\(boundary)\r\nContent-Disposition: form-data; name=\"\(name)\"\r\n\r\n\(value)\r\n"
    }

    package var contentType: String { "multipart/form-data; boundary=\(boundary)" }
    package var buffer: ByteBuffer { ByteBuffer(string: body + "--\(boundary)--\r\n") }
}

extension ProviderHTTP {
    /// GETs `path` with `headers` and reports the answer (MiniMax also needs `base_resp` checked).
    package func checkAccess(_ path: String, headers: HTTPHeaders, miniMax: Bool = false) async -> AccessCheck {
        do {
            let answer = try await send(.GET, url(path), headers: headers)
            if miniMax, let code = answer.json?["base_resp"]?["status_code"]?.int, code != 0 {
                let message = answer.json?["base_resp"]?["status_msg"]?.string ?? ""
                return AccessCheck(ok: false, detail: "GET \(path): MiniMax \(code) \(message)")
            }
            guard answer.isSuccess else {
                let snippet = String(answer.text.prefix(160)).replacingOccurrences(of: "\n", with: " ")
                return AccessCheck(ok: false, detail: "GET \(path): HTTP \(answer.status.code) \(snippet)")
            }
            return AccessCheck(ok: true, detail: "GET \(path): HTTP \(answer.status.code), key accepted")
        } catch {
            return AccessCheck(ok: false, detail: "GET \(path): \(error)")
        }
    }
}
