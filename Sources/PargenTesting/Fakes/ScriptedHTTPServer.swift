public import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Pargen

/// An HTTP server on 127.0.0.1 whose every answer a test writes, for the provider answers that the protocol
/// fakes never give on their own: a billing 429, a failure code, a 429 while polling, a wrong content type, a
/// task state nobody documented. It logs each request and stops by itself after `lifetime`.
public final class ScriptedHTTPServer: Sendable {
    /// One request as the server saw it.
    public struct Received: Sendable, Hashable {
        public var method: String
        public var path: String
        public var query: String
        public var body: Data
        /// The client's `Idempotency-Key` header, if any.
        public var idempotencyKey: String?
        /// Every header, by lowercased name (the last value of a repeated one).
        public var headers: [String: String] = [:]
    }

    /// One answer.
    public struct Answer: Sendable {
        public var status: Int
        public var headers: [String: String]
        public var body: Data

        public init(status: Int = 200, headers: [String: String] = [:], body: Data = Data()) {
            self.status = status
            self.headers = headers
            self.body = body
        }

        /// A JSON answer (`object` is serialized as JSON).
        public static func json(_ object: Any, status: Int = 200, headers: [String: String] = [:]) -> Answer {
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
            return Answer(status: status, headers: headers.merging(["Content-Type": "application/json"]) { a, _ in a }, body: data)
        }
    }

    /// Decides the answer to a request, given every request before it (this one last).
    public typealias Script = @Sendable (_ request: Received, _ history: [Received]) -> Answer

    public let port: Int
    public var baseURL: String { "http://127.0.0.1:\(port)" }
    private let log: Locked<[Received]>
    private let task: Task<Void, any Error>

    private init(port: Int, log: Locked<[Received]>, task: Task<Void, any Error>) {
        self.port = port
        self.log = log
        self.task = task
    }

    /// Every request so far, in order.
    public var received: [Received] { log.value }

    public static func start(lifetime: Duration = .seconds(120), _ script: @escaping Script) async throws
        -> ScriptedHTTPServer
    {
        let log = Locked<[Received]>([])
        let responder = CallbackResponder<BasicRequestContext> { request, _ in
            var body = Data()
            for try await buffer in request.body { body.append(contentsOf: buffer.readableBytesView) }
            let received = Received(
                method: request.method.rawValue,
                path: request.uri.path,
                query: request.uri.query ?? "",
                body: body,
                idempotencyKey: request.headers[HTTPField.Name("Idempotency-Key")!],
                headers: Dictionary(
                    request.headers.map { ($0.name.canonicalName, $0.value) },
                    uniquingKeysWith: { _, last in last }
                )
            )
            let history = log.withLock { log -> [Received] in
                log.append(received)
                return log
            }
            let answer = script(received, history)
            var headers = HTTPFields()
            for (name, value) in answer.headers {
                if let field = HTTPField.Name(name) { headers[field] = value }
            }
            return Response(
                status: HTTPResponse.Status(code: answer.status),
                headers: headers,
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: answer.body))
            )
        }
        var quiet = Logger(label: "pargen.scripted-http")
        quiet.logLevel = .critical
        let (port, task) = try await LoopbackServer.start(
            responder,
            port: 0,
            serverName: "pargen-scripted",
            lifetime: lifetime,
            logger: quiet
        )
        return ScriptedHTTPServer(port: port, log: log, task: task)
    }

    public func stop() async {
        task.cancel()
        _ = try? await task.value
    }
}
