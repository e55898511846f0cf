public import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
import Pargen

/// A proxy on 127.0.0.1 in front of an HTTP service (the S3-compatible test server) that injects the faults an
/// object store has: a share of requests answered `503 SlowDown` or `500 InternalError` without reaching the
/// service, and uploads whose body is cut short on the way (the first half forwarded, as a connection that drops
/// would leave it). Seeded, so a run is repeatable. It stops by itself after its lifetime.
public final class FaultyHTTPProxy: Sendable {
    public struct Faults: Sendable {
        /// Share of requests answered with an error instead of being forwarded (0-1).
        public var errorRate: Double
        /// How many uploads (`PUT` with a body) are forwarded cut to half their body.
        public var truncatedUploads: Int
        public var seed: UInt64

        public init(errorRate: Double = 0, truncatedUploads: Int = 0, seed: UInt64 = 1) {
            self.errorRate = errorRate
            self.truncatedUploads = truncatedUploads
            self.seed = seed
        }
    }

    public struct Counts: Sendable, Hashable {
        public var forwarded = 0
        public var errors = 0
        public var truncated = 0
    }

    public let port: Int
    public var baseURL: String { "http://127.0.0.1:\(port)" }
    let counts: Locked<Counts>
    let failing: Locked<Bool>
    let task: Task<Void, any Error>

    init(port: Int, counts: Locked<Counts>, failing: Locked<Bool>, task: Task<Void, any Error>) {
        self.port = port
        self.counts = counts
        self.failing = failing
        self.task = task
    }

    public var seen: Counts { counts.value }

    /// While on, every request is answered `503 SlowDown` (an outage of the service behind the proxy).
    public func setFailing(_ on: Bool) { failing.withLock { $0 = on } }

    public func stop() async {
        task.cancel()
        _ = try? await task.value
    }

    /// Starts a proxy to `upstream` (`http://127.0.0.1:PORT`).
    public static func start(
        upstream: String,
        faults: Faults,
        httpClient: HTTPClient,
        lifetime: Duration = .seconds(600)
    ) async throws -> FaultyHTTPProxy {
        let counts = Locked(Counts())
        let failing = Locked(false)
        let random = Locked(SplitMix64(seed: faults.seed))
        let truncateLeft = Locked(faults.truncatedUploads)
        let router = Router()
        let handler: @Sendable (Request, BasicRequestContext) async throws -> Response = { request, _ in
            let body = try await request.body.collect(upTo: 128 << 20)
            if failing.value || random.withLock({ Double($0.next() >> 11) / Double(UInt64(1) << 53) }) < faults.errorRate {
                let slow = counts.withLock { counts -> Bool in
                    counts.errors += 1
                    return counts.errors % 2 == 1
                }
                let (status, code) = slow ? (HTTPResponse.Status.serviceUnavailable, "SlowDown") : (.internalServerError, "InternalError")
                let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>\(code)</Code><Message>injected</Message></Error>"
                return Response(
                    status: status,
                    headers: [.contentType: "application/xml"],
                    body: .init(byteBuffer: ByteBuffer(string: xml))
                )
            }
            var forwardedBody = body
            if request.method == .put, body.readableBytes > 1024,
                truncateLeft.withLock({ left -> Bool in
                    guard left > 0 else { return false }
                    left -= 1
                    return true
                })
            {
                forwardedBody = body.getSlice(at: body.readerIndex, length: body.readableBytes / 2) ?? body
                counts.withLock { $0.truncated += 1 }
            }
            var outgoing = HTTPClientRequest(url: upstream + request.uri.description)
            outgoing.method = HTTPMethod(rawValue: request.method.rawValue)
            for field in request.headers where ![.contentLength, .transferEncoding, .connection].contains(field.name) {
                outgoing.headers.add(name: field.name.rawName, value: field.value)
            }
            if forwardedBody.readableBytes > 0 || request.method == .put || request.method == .post {
                outgoing.body = .bytes(forwardedBody)
            }
            let answer = try await httpClient.execute(outgoing, timeout: .seconds(60))
            let answerBody = try await answer.body.collect(upTo: 128 << 20)
            counts.withLock { $0.forwarded += 1 }
            var headers = HTTPFields()
            for (name, value) in answer.headers {
                guard let field = HTTPField.Name(name), ![.contentLength, .transferEncoding, .connection].contains(field)
                else { continue }
                headers.append(HTTPField(name: field, value: value))
            }
            // A HEAD's length is the object's, not of a body that is not there.
            if request.method == .head, let length = answer.headers.first(name: "content-length") {
                headers[.contentLength] = length
                return Response(status: .init(code: Int(answer.status.code)), headers: headers, body: .init())
            }
            return Response(
                status: .init(code: Int(answer.status.code)),
                headers: headers,
                body: .init(byteBuffer: answerBody)
            )
        }
        for method in [HTTPRequest.Method.get, .put, .post, .delete, .head] {
            router.on("**", method: method, use: handler)
            router.on("/", method: method, use: handler)
        }
        var quiet = Logger(label: "pargen.fake.proxy")
        quiet.logLevel = .critical
        let (port, task) = try await LoopbackServer.start(
            router.buildResponder(),
            port: 0,
            serverName: "pargen-faulty-proxy",
            lifetime: lifetime,
            logger: quiet
        )
        return FaultyHTTPProxy(port: port, counts: counts, failing: failing, task: task)
    }
}
