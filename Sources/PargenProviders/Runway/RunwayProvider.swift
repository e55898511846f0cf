import Foundation
import NIOCore
import NIOHTTP1
public import Pargen

/// Runway: text to video (`POST /v1/text_to_video`) and image to video (`POST /v1/image_to_video`, when
/// the request's metadata has `image`: an HTTPS URL or data URI), polled with `GET /v1/tasks/{id}`, every
/// call with `X-Runway-Version: 2024-11-06`.
///
/// Above its concurrency quota Runway does not refuse: it stores the task as `THROTTLED` and starts it
/// later. The adapter keeps polling and tells the engine, which lowers its concurrency towards Runway.
/// ``cancel(taskID:)`` cancels a task with `DELETE /v1/tasks/{id}`.
public struct RunwayProvider: AccessCheckable {
    public static let apiVersion = "2024-11-06"
    public static let ratios = [Resolution(width: 1280, height: 720), Resolution(width: 720, height: 1280)]

    public let descriptor: ProviderDescriptor
    private let http: ProviderHTTP
    private let settings: ProviderSettings

    public init(settings: ProviderSettings, connection: ProviderConnection) {
        self.settings = settings
        self.http = ProviderHTTP(provider: settings.name, connection: connection)
        descriptor = ProviderDescriptor(
            name: settings.name,
            capabilities: ProviderCapabilities(
                kinds: [.video],
                videoFormats: [.mp4],
                maxVideoDuration: .seconds(10),
                maxResolution: Resolution(width: 1280, height: 1280),
                maxPromptLength: 1000,
                models: ["gen4.5", "veo3.1", "veo3.1_fast", "veo3"],
                videoDurations: (2...10).map { .seconds($0) },
                videoResolutions: Self.ratios
            ),
            pricing: settings.pricing,
            quota: settings.quota
        )
    }

    private var headers: HTTPHeaders {
        var headers = HTTPHeaders()
        if let key = http.connection.apiKey { headers.add(name: "Authorization", value: "Bearer \(key.secret)") }
        headers.add(name: "X-Runway-Version", value: Self.apiVersion)
        headers.add(name: "Content-Type", value: "application/json")
        return headers
    }

    public func generate(_ request: ValidatedRequest, context: ProviderCallContext) async throws -> ProviderOutput {
        // Runway counts the prompt in UTF-16 code units.
        guard request.prompt.utf16.count <= 1000 else {
            throw GenerationError(
                .invalidRequest,
                "Runway takes prompts of at most 1000 UTF-16 units",
                provider: descriptor.name,
                field: "prompt"
            )
        }
        let size = request.resolution ?? Self.ratios[0]
        var body: [String: JSONValue] = [
            "model": .string(request.model ?? settings.videoModel ?? "gen4.5"), "promptText": .string(request.prompt),
            "ratio": .string("\(size.width):\(size.height)"), "duration": .number(request.duration.seconds.rounded()),
        ]
        var path = "/v1/text_to_video"
        if case .string(let image)? = request.metadata["image"] {
            guard image.hasPrefix("https://") || image.hasPrefix("data:image/") else {
                throw GenerationError(
                    .invalidRequest,
                    "image must be an HTTPS URL or a data URI",
                    provider: descriptor.name,
                    field: "metadata.image"
                )
            }
            body["promptImage"] = .string(image)
            path = "/v1/image_to_video"
        }
        var submit = headers
        submit.add(name: "Idempotency-Key", value: context.idempotencyKey)
        let answer = try await http.send(
            .POST,
            http.url(path),
            headers: submit,
            body: ByteBuffer(json: body),
            ambiguousIsUnsafe: true,
            answered: { context.reportAnswered() }
        )
        guard answer.isSuccess else { throw classify(answer) }
        guard let id = answer.json?["id"]?.string, !id.isEmpty else {
            throw GenerationError(
                .needsReconciliation,
                "task created without an id",
                provider: descriptor.name,
                providerCode: "malformed"
            )
        }
        try await context.reportSubmitted(taskID: id)
        return try await resume(taskID: id, request: request, context: context)
    }

    public func resume(
        taskID id: String,
        request: ValidatedRequest,
        context: ProviderCallContext
    ) async throws
        -> ProviderOutput
    {
        let outputs = try await TaskPoller(http: http, context: context).run(taskID: id) {
            () async throws -> PollStep<[String]> in
            try await look(id)
        }
        context.reportDownloading()
        _ = try await http.fetchResult(
            taskID: id,
            to: context.destination,
            accepting: ["video/", "application/octet-stream", "binary/octet-stream"],
            clock: context.clock
        ) { attempt in
            // Output links expire within 24-48 h; fetching the task again gives fresh ones.
            if attempt == 1, let first = outputs.first { return first }
            if case .done(let fresh) = try await look(id), let first = fresh.first { return first }
            throw GenerationError(
                .terminal,
                "task \(id) has no output",
                provider: descriptor.name,
                providerCode: "result_unavailable"
            )
        }
        return ProviderOutput(format: .mp4, duration: request.duration, providerTaskID: id)
    }

    private func look(_ id: String) async throws -> PollStep<[String]> {
        let answer = try await http.send(.GET, http.url("/v1/tasks/\(id)"), headers: headers)
        guard answer.isSuccess else { throw classify(answer) }
        guard let json = answer.json, let status = json["status"]?.string?.uppercased() else {
            throw GenerationError(.transient, "malformed task", provider: descriptor.name, providerCode: "malformed")
        }
        switch status {
        case "SUCCEEDED":
            let outputs = json["output"]?.array?.compactMap(\.string) ?? []
            guard !outputs.isEmpty else {
                throw GenerationError(
                    .terminal,
                    "task \(id) succeeded without output",
                    provider: descriptor.name,
                    providerCode: "result_unavailable"
                )
            }
            return .done(outputs)
        case "FAILED":
            let code = json["failureCode"]?.string
            let reason = json["failure"]?.string ?? "generation failed"
            // Safety refusals are final; internal failures may pass on a new task (see TaskFailures).
            return .failed(
                TaskFailures.error(
                    TaskFailures.runway(failureCode: code),
                    task: id,
                    reason: reason,
                    provider: descriptor.name,
                    providerCode: code ?? "FAILED"
                )
            )
        case "CANCELLED":
            throw GenerationError(
                .terminal,
                "task \(id) was cancelled",
                provider: descriptor.name,
                providerCode: "CANCELLED"
            )
        case "THROTTLED":
            return .throttled
        default:
            // PENDING, RUNNING, or a state this adapter does not know yet.
            return .running(progress: json["progress"]?.double, after: nil)
        }
    }

    /// Reads the organization (credit balance, tier): free, and proves the key.
    public func checkAccess() async -> AccessCheck { await http.checkAccess("/v1/organization", headers: headers) }

    /// The engine's cancellation of a job in a call: `DELETE /v1/tasks/{id}`; the next poll sees `CANCELLED`.
    public func cancelTask(taskID: String) async throws -> Bool {
        try await cancel(taskID: taskID)
        return true
    }

    /// Cancels a running, pending or throttled task (a finished one is deleted).
    public func cancel(taskID: String) async throws {
        let answer = try await http.send(.DELETE, http.url("/v1/tasks/\(taskID)"), headers: headers)
        guard answer.isSuccess || answer.status == .notFound else { throw classify(answer) }
    }

    /// `{"error": "..."}`; 429 covers the daily generation cap.
    package func classify(_ answer: HTTPExchange) -> GenerationError {
        let message = answer.json?["error"]?.string ?? "HTTP \(answer.status.code)"
        return http.classify(answer, code: nil, message: message)
    }
}
