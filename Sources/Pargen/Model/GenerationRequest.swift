/// One piece of media to generate: what the user asked for, before validation.
///
/// Build one with ``audio(prompt:priority:duration:format:voice:model:provider:user:project:campaign:idempotencyKey:metadata:)``
/// or ``video(prompt:priority:duration:format:resolution:model:provider:user:project:campaign:idempotencyKey:metadata:)``.
public struct GenerationRequest: Sendable, Hashable, Codable {
    /// A caller-chosen identifier echoed in results and events; one is made up when empty.
    public var id: String
    public var kind: GenerationKind
    public var prompt: String
    public var priority: GenerationPriority
    /// Length of the media. `nil` takes the default for the kind (10 s audio, 5 s video).
    public var duration: Duration?
    /// `nil` lets the chosen provider use its native format.
    public var format: MediaFormat?
    /// Video only; `nil` takes 720p.
    public var resolution: Resolution?
    public var voice: String?
    public var model: String?
    /// Pins the request to one provider by name; `nil` lets the load balancer choose.
    public var provider: String?
    public var user: String
    public var project: String
    /// Groups requests for budgets and reporting; defaults to the project.
    public var campaign: String?
    /// Unique per project: submitting the same key twice returns the first job.
    public var idempotencyKey: String?
    public var metadata: [String: JSONValue]

    public init(
        id: String = "",
        kind: GenerationKind,
        prompt: String,
        priority: GenerationPriority = .normal,
        duration: Duration? = nil,
        format: MediaFormat? = nil,
        resolution: Resolution? = nil,
        voice: String? = nil,
        model: String? = nil,
        provider: String? = nil,
        user: String = "default",
        project: String = "default",
        campaign: String? = nil,
        idempotencyKey: String? = nil,
        metadata: [String: JSONValue] = [:]
    ) {
        self.id = id
        self.kind = kind
        self.prompt = prompt
        self.priority = priority
        self.duration = duration
        self.format = format
        self.resolution = resolution
        self.voice = voice
        self.model = model
        self.provider = provider
        self.user = user
        self.project = project
        self.campaign = campaign
        self.idempotencyKey = idempotencyKey
        self.metadata = metadata
    }

    /// An audio request (speech, sound effect or music bed).
    public static func audio(
        prompt: String,
        priority: GenerationPriority = .normal,
        duration: Duration? = nil,
        format: MediaFormat? = nil,
        voice: String? = nil,
        model: String? = nil,
        provider: String? = nil,
        user: String = "default",
        project: String = "default",
        campaign: String? = nil,
        idempotencyKey: String? = nil,
        metadata: [String: JSONValue] = [:]
    ) -> GenerationRequest {
        GenerationRequest(
            kind: .audio,
            prompt: prompt,
            priority: priority,
            duration: duration,
            format: format,
            voice: voice,
            model: model,
            provider: provider,
            user: user,
            project: project,
            campaign: campaign,
            idempotencyKey: idempotencyKey,
            metadata: metadata
        )
    }

    /// A video request.
    public static func video(
        prompt: String,
        priority: GenerationPriority = .normal,
        duration: Duration? = nil,
        format: MediaFormat? = nil,
        resolution: Resolution? = nil,
        model: String? = nil,
        provider: String? = nil,
        user: String = "default",
        project: String = "default",
        campaign: String? = nil,
        idempotencyKey: String? = nil,
        metadata: [String: JSONValue] = [:]
    ) -> GenerationRequest {
        GenerationRequest(
            kind: .video,
            prompt: prompt,
            priority: priority,
            duration: duration,
            format: format,
            resolution: resolution,
            model: model,
            provider: provider,
            user: user,
            project: project,
            campaign: campaign,
            idempotencyKey: idempotencyKey,
            metadata: metadata
        )
    }
}

/// A request after validation and normalisation: every default filled in, with its fingerprint.
public struct ValidatedRequest: Sendable, Hashable, Codable {
    public var id: String
    public var kind: GenerationKind
    /// The prompt with white space folded.
    public var prompt: String
    public var priority: GenerationPriority
    public var duration: Duration
    public var format: MediaFormat?
    public var resolution: Resolution?
    public var voice: String?
    public var model: String?
    public var provider: String?
    public var user: String
    public var project: String
    public var campaign: String
    public var idempotencyKey: String?
    public var metadata: [String: JSONValue]
    /// SHA-256 over everything that determines the output: identical requests share it (cache key).
    public var fingerprint: String

    /// Characters in the prompt, the unit most speech providers bill by.
    public var characterCount: Int { prompt.count }

    /// Whether `other` asks for the same media: the same kind, prompt, duration, format, resolution, voice, model
    /// and pinned provider. Who asks, the priority, the campaign, the id and the metadata may differ.
    public func asksForTheSameMedia(as other: ValidatedRequest) -> Bool {
        kind == other.kind && prompt == other.prompt && duration == other.duration && format == other.format
            && resolution == other.resolution && voice == other.voice && model == other.model
            && provider == other.provider
    }
}

extension ValidatedRequest {
    /// The cache key: every field that changes the generated media, and nothing else.
    static func makeFingerprint(
        kind: GenerationKind,
        prompt: String,
        duration: Duration,
        format: MediaFormat?,
        resolution: Resolution?,
        voice: String?,
        model: String?,
        provider: String?
    ) -> String {
        let fields = [
            "pargen-v1", kind.rawValue, prompt, String(duration.milliseconds), format?.name ?? "-",
            resolution?.description ?? "-", voice ?? "-", model ?? "-", provider ?? "-",
        ]
        // Length-prefixed so that no two field lists collide.
        return SHA256Hasher.hex(of: fields.map { "\($0.utf8.count):\($0)" }.joined(separator: "|"))
    }
}
