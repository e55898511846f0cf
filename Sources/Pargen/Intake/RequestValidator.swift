/// Checks and normalises requests before anything is queued or spent.
public struct RequestValidator: Sendable {
    public var configuration: PargenConfiguration.Validation

    public init(configuration: PargenConfiguration.Validation = .init()) { self.configuration = configuration }

    /// The most a request's metadata may weigh, as JSON.
    public static let maximumMetadataBytes = 16 << 10

    /// Validates `request`; `fallbackID` names it when it has no id of its own.
    ///
    /// - Throws: ``GenerationError`` with code ``GenerationError/Code/invalidRequest`` and the failing `field`.
    public func validate(_ request: GenerationRequest, fallbackID: String) throws(GenerationError) -> ValidatedRequest {
        func fail(_ field: String, _ message: String) -> GenerationError {
            GenerationError(.invalidRequest, message, field: field)
        }
        let id = request.id.trimmingWhitespace().isEmpty ? fallbackID : request.id.trimmingWhitespace()
        let prompt = request.prompt.normalizedWhitespace()
        guard !prompt.isEmpty else { throw fail("prompt", "is empty") }
        guard prompt.count <= configuration.maxPromptLength else {
            throw fail("prompt", "has \(prompt.count) characters; the limit is \(configuration.maxPromptLength)")
        }
        if prompt.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) {
            throw fail("prompt", "contains control characters")
        }
        let maximum = request.kind == .audio ? configuration.maxAudioDuration : configuration.maxVideoDuration
        let duration =
            request.duration
            ?? (request.kind == .audio ? configuration.defaultAudioDuration : configuration.defaultVideoDuration)
        guard duration > .zero else { throw fail("duration", "must be more than 0 seconds") }
        guard duration <= maximum else {
            throw fail(
                "duration",
                "is \(duration.seconds.formatted1) s; \(request.kind) may be at most \(maximum.seconds.formatted1) s"
            )
        }
        var resolution = request.resolution
        switch request.kind {
        case .audio:
            if resolution != nil { throw fail("resolution", "applies to video only") }
        case .video:
            resolution = resolution ?? configuration.defaultResolution
            if request.voice != nil { throw fail("voice", "applies to audio only") }
        }
        if let format = request.format {
            guard !format.name.isEmpty, format.name.allSatisfy({ $0.isLetter || $0.isNumber }) else {
                throw fail("format", "\"\(format.name)\" is not a format name")
            }
        }
        let user = request.user.trimmingWhitespace()
        let project = request.project.trimmingWhitespace()
        guard !user.isEmpty else { throw fail("user", "is empty") }
        guard !project.isEmpty else { throw fail("project", "is empty") }
        for (field, value) in [("user", user), ("project", project)] where value.count > 200 {
            throw fail(field, "is longer than 200 characters")
        }
        let key = request.idempotencyKey?.trimmingWhitespace()
        if let key, key.count > 255 { throw fail("idempotency_key", "is longer than 255 characters") }
        if !request.metadata.isEmpty {
            // Kept in every job record and sent with every call: bounded as a provider's request body would be.
            let size = JSONValue.object(request.metadata).encodedSize
            guard size <= Self.maximumMetadataBytes else {
                throw fail(
                    "metadata",
                    "is \(size) bytes as JSON; the limit is \(Self.maximumMetadataBytes) (\(request.metadata.count) keys)"
                )
            }
        }
        func clean(_ value: String?) -> String? {
            guard let value = value?.trimmingWhitespace(), !value.isEmpty else { return nil }
            return value
        }
        let voice = clean(request.voice)
        let model = clean(request.model)
        let provider = clean(request.provider)
        return ValidatedRequest(
            id: id,
            kind: request.kind,
            prompt: prompt,
            priority: request.priority,
            duration: duration,
            format: request.format,
            resolution: resolution,
            voice: voice,
            model: model,
            provider: provider,
            user: user,
            project: project,
            campaign: clean(request.campaign) ?? project,
            idempotencyKey: key.flatMap { $0.isEmpty ? nil : $0 },
            metadata: request.metadata,
            fingerprint: ValidatedRequest.makeFingerprint(
                kind: request.kind,
                prompt: prompt,
                duration: duration,
                format: request.format,
                resolution: resolution,
                voice: voice,
                model: model,
                provider: provider
            )
        )
    }
}
