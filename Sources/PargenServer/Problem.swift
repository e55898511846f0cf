import Foundation
import HTTPTypes
public import Hummingbird
import Logging
import NIOCore
import NIOFoundationCompat
import Pargen

/// The service's request context: the caller's key once authenticated.
public struct PargenRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public var principal: Principal?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
    }

    /// Bodies are read with explicit limits per route (``ServerConfiguration``); this one covers the rest.
    public var maxUploadSize: Int { 1 << 20 }

    /// The authenticated caller; routes behind ``AuthenticationMiddleware`` always have one.
    func requirePrincipal() throws -> Principal {
        guard let principal else { throw Problem(.unauthorized, "Unauthorized", "an API key is required") }
        return principal
    }
}

/// One field's problem in a request body.
public struct FieldProblem: Sendable, Hashable, Codable {
    /// The field, with the item's position for a batch (`[2].prompt`) or the line for an upload.
    public var field: String?
    public var message: String
    /// An upload's line number.
    public var line: Int?

    public init(field: String?, message: String, line: Int? = nil) {
        self.field = field
        self.message = message
        self.line = line
    }
}

/// An RFC 9457 problem: every error the API answers is one, as `application/problem+json`.
public struct Problem: Error, HTTPResponseError, Sendable {
    public var status: HTTPResponse.Status
    public var title: String
    public var detail: String
    public var errors: [FieldProblem]
    public var headers: HTTPFields

    public init(
        _ status: HTTPResponse.Status,
        _ title: String,
        _ detail: String,
        errors: [FieldProblem] = [],
        headers: HTTPFields = [:]
    ) {
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors
        self.headers = headers
    }

    static func notFound(_ what: String) -> Problem { Problem(.notFound, "Not Found", "no \(what)") }

    /// Refuses a query parameter that the route does not read, so that a misspelt filter (`status=` for `state=`)
    /// is an error instead of a list of every job.
    static func checkParameters(_ request: Request, accepts known: Set<String>) throws(Problem) {
        for (name, _) in request.uri.queryParameters where !known.contains(String(name)) {
            let shown = name.count > 64 ? name.prefix(64) + "..." : name[...]
            throw invalid(
                "unknown query parameter \(shown); "
                    + (known.isEmpty ? "this route takes none" : "this route takes \(known.sorted().joined(separator: ", "))"),
                field: String(shown)
            )
        }
    }

    static func invalid(_ detail: String, field: String? = nil) -> Problem {
        Problem(
            .unprocessableContent,
            "Invalid Request",
            detail,
            errors: [FieldProblem(field: field, message: detail)]
        )
    }

    var body: [String: JSONValue] {
        var object: [String: JSONValue] = [
            "type": .string("https://pargen.dev/problems/\(status.code)"),
            "title": .string(title),
            "status": .number(Double(status.code)),
            "detail": .string(detail),
        ]
        if !errors.isEmpty {
            object["errors"] = .array(
                errors.map { problem in
                    var item: [String: JSONValue] = ["message": .string(problem.message)]
                    if let field = problem.field { item["field"] = .string(field) }
                    if let line = problem.line { item["line"] = .number(Double(line)) }
                    return .object(item)
                }
            )
        }
        return object
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var object = body
        object["instance"] = .string(request.uri.path)
        var headers = self.headers
        headers[.contentType] = "application/problem+json"
        return Response(status: status, headers: headers, body: .init(byteBuffer: JSON.buffer(.object(object))))
    }
}

/// Turns every error into a problem: Hummingbird's own (404 for an unknown route, 413 for a body over its
/// limit), the store's, and anything unexpected (500, logged with the request id, without details in the
/// answer). Adds the request id to every answer (`X-Request-ID`).
struct ProblemMiddleware: RouterMiddleware {
    typealias Context = PargenRequestContext

    func handle(
        _ request: Request,
        context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        var response: Response
        do {
            response = try await next(request, context)
        } catch let problem as Problem {
            response = try problem.response(from: request, context: context)
        } catch let error as HTTPError {
            let detail =
                switch error.status {
                case .notFound: "no route for \(request.method) \(request.uri.path)"
                case .contentTooLarge: "the body is larger than this route accepts"
                case .methodNotAllowed: "\(request.method) is not allowed on \(request.uri.path)"
                default: error.body ?? error.status.reasonPhrase
                }
            response = try Problem(error.status, error.status.reasonPhrase, detail, headers: error.headers).response(
                from: request,
                context: context
            )
        } catch is NIOTooManyBytesError {
            response = try Problem(.contentTooLarge, "Content Too Large", "the body is larger than this route accepts")
                .response(from: request, context: context)
        } catch let error as StoreError where error.code == .notFound {
            response = try Problem.notFound("such job").response(from: request, context: context)
        } catch let error as StoreError where error.code == .invalidState {
            response = try Problem(.conflict, "Conflict", error.message).response(from: request, context: context)
        } catch {
            context.logger.error("request failed", metadata: ["error": "\(String(reflecting: error))"])
            response = try Problem(
                .internalServerError,
                "Internal Server Error",
                "the request failed on the server; its id is in X-Request-ID"
            )
            .response(from: request, context: context)
        }
        // Hummingbird keeps the id in the logger's metadata; a logger whose handler drops metadata has none.
        if let id = context.logger[metadataKey: "hb.request.id"] {
            response.headers[HTTPField.Name("X-Request-ID")!] = id.description
        }
        return response
    }
}

/// JSON in and out, as ``JSONValue``: keys sorted, so that the same answer has the same bytes.
enum JSON {
    static func buffer(_ value: JSONValue) -> ByteBuffer {
        ByteBuffer(bytes: bytes(value))
    }

    static func bytes(_ value: JSONValue) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return [UInt8]((try? encoder.encode(value)) ?? Data("null".utf8))
    }

    static func response(_ status: HTTPResponse.Status, _ value: JSONValue, headers: HTTPFields = [:]) -> Response {
        var headers = headers
        headers[.contentType] = "application/json"
        return Response(status: status, headers: headers, body: .init(byteBuffer: buffer(value)))
    }

    /// Parses a body: a problem naming the position of malformed JSON.
    static func parse(_ buffer: ByteBuffer) throws -> JSONValue {
        let data = Data(buffer: buffer)
        guard !data.isEmpty else { throw Problem(.badRequest, "Bad Request", "the body is empty; send JSON") }
        let bytes = [UInt8](data)
        guard String(validating: bytes, as: UTF8.self) != nil else {
            throw Problem(.badRequest, "Bad Request", "the body is not valid UTF-8")
        }
        switch JSONSyntax.parse(bytes) {
        case .success(let value): return value
        case .failure(let problem): throw Problem(.badRequest, "Bad Request", "the body \(problem)")
        }
    }
}
