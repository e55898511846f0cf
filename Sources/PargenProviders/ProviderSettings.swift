public import Pargen

/// The wire protocols Pargen speaks.
public enum ProviderProtocol: String, Sendable, Hashable, CaseIterable, Codable, CustomStringConvertible {
    case openai
    case elevenlabs
    case minimax
    case runway
    case azure

    public var description: String { rawValue }
}

/// One configured provider: which protocol, where, which key, defaults, quotas and prices.
///
/// ``defaults(for:)`` holds each provider's documented defaults (see the README's provider sections for
/// sources); a configuration file overrides any of them.
public struct ProviderSettings: Sendable, Hashable {
    /// The name requests, logs and results use (`openai`, or `openai-eu` for a second account).
    public var name: String
    public var wireProtocol: ProviderProtocol
    public var baseURL: String
    /// The environment variable that holds the API key (the key itself never appears in configuration).
    public var apiKeyEnvironment: String
    public var speechModel: String?
    public var videoModel: String?
    public var voice: String?
    public var quota: ProviderQuota
    public var pricing: ProviderPricing
    public var pollInterval: Duration
    public var requestTimeout: Duration
    public var taskTimeout: Duration
    /// Azure only: the batch synthesis host (`https://{region}.api.cognitive.microsoft.com`).
    public var batchBaseURL: String?
    /// Azure only: batch synthesis is used for groups of at least this many compatible speech lines.
    public var batchThreshold: Int
    /// Azure only: how long a batch synthesis waits for members of an engine batch that have neither called nor
    /// left it. The engine reports every member that leaves without calling (``BatchMembership``), so this is
    /// only a backstop; by default 2 minutes.
    public var batchMemberWait: Duration = .seconds(120)

    public init(
        name: String,
        wireProtocol: ProviderProtocol,
        baseURL: String,
        apiKeyEnvironment: String,
        speechModel: String? = nil,
        videoModel: String? = nil,
        voice: String? = nil,
        quota: ProviderQuota,
        pricing: ProviderPricing,
        pollInterval: Duration = .seconds(5),
        requestTimeout: Duration = .seconds(60),
        taskTimeout: Duration = .seconds(1800),
        batchBaseURL: String? = nil,
        batchThreshold: Int = 10
    ) {
        self.name = name
        self.wireProtocol = wireProtocol
        self.baseURL = baseURL
        self.apiKeyEnvironment = apiKeyEnvironment
        self.speechModel = speechModel
        self.videoModel = videoModel
        self.voice = voice
        self.quota = quota
        self.pricing = pricing
        self.pollInterval = pollInterval
        self.requestTimeout = requestTimeout
        self.taskTimeout = taskTimeout
        self.batchBaseURL = batchBaseURL
        self.batchThreshold = batchThreshold
    }

    /// The documented defaults of each provider. Quotas are the entry tiers'; prices are list prices as
    /// researched (several are third-party figures: check your contract and override them).
    public static func defaults(for wireProtocol: ProviderProtocol) -> ProviderSettings {
        switch wireProtocol {
        case .openai:
            // tts-1 $15 / 1M characters, tts-1-hd $30; sora-2 $0.10/s, sora-2-pro $0.30/s.
            return ProviderSettings(
                name: "openai",
                wireProtocol: .openai,
                baseURL: "https://api.openai.com",
                apiKeyEnvironment: "OPENAI_API_KEY",
                speechModel: "tts-1",
                videoModel: "sora-2",
                voice: "alloy",
                quota: ProviderQuota(
                    requestsPerMinute: 500,
                    concurrentTasks: 10,
                    concurrencyKinds: [.video],
                    expectedTaskTime: .seconds(90)
                ),
                pricing: ProviderPricing(
                    perCharacter: Money(nanos: 15_000),
                    perVideoSecond: .cents(10),
                    models: [
                        "tts-1-hd": ProviderPricing(perCharacter: Money(nanos: 30_000)),
                        "sora-2-pro": ProviderPricing(perVideoSecond: .cents(30)),
                    ]
                ),
                pollInterval: .seconds(1)
            )
        case .elevenlabs:
            // Creator plan: 5 concurrent requests; about $0.00022 per character; sound effects 40 credits/s.
            return ProviderSettings(
                name: "elevenlabs",
                wireProtocol: .elevenlabs,
                baseURL: "https://api.elevenlabs.io",
                apiKeyEnvironment: "ELEVENLABS_API_KEY",
                speechModel: "eleven_multilingual_v2",
                voice: "21m00Tcm4TlvDq8ikWAM",
                quota: ProviderQuota(requestsPerMinute: nil, concurrentTasks: 5),
                pricing: ProviderPricing(
                    perCharacter: Money(nanos: 220_000),
                    models: ["eleven_text_to_sound_v2": ProviderPricing(perAudioSecond: Money(nanos: 8_800_000))]
                )
            )
        case .minimax:
            // T2A 60 RPM (global); video $0.25 per 6 s at 768P; speech-2.8-hd about $0.05 per 1,000 characters.
            return ProviderSettings(
                name: "minimax",
                wireProtocol: .minimax,
                baseURL: "https://api.minimax.io",
                apiKeyEnvironment: "MINIMAX_API_KEY",
                speechModel: "speech-2.8-hd",
                videoModel: "MiniMax-Hailuo-2.3",
                voice: "English_expressive_narrator",
                quota: ProviderQuota(
                    requestsPerMinute: 60,
                    concurrentTasks: 5,
                    concurrencyKinds: [.video],
                    expectedTaskTime: .seconds(150)
                ),
                pricing: ProviderPricing(perCharacter: Money(nanos: 50_000), perVideoSecond: Money(nanos: 41_666_667)),
                pollInterval: .seconds(5)
            )
        case .runway:
            // Tier 3: 5 concurrent generations, no RPM limit on creates; gen4.5 12 credits/s at $0.01.
            return ProviderSettings(
                name: "runway",
                wireProtocol: .runway,
                baseURL: "https://api.dev.runwayml.com",
                apiKeyEnvironment: "RUNWAYML_API_SECRET",
                videoModel: "gen4.5",
                quota: ProviderQuota(requestsPerMinute: nil, concurrentTasks: 5),
                pricing: ProviderPricing(perVideoSecond: .cents(12)),
                pollInterval: .seconds(6)
            )
        case .azure:
            // S0: 200 transactions/s real-time (F0: 20 per 60 s); neural voices $16 / 1M characters.
            return ProviderSettings(
                name: "azure",
                wireProtocol: .azure,
                baseURL: "https://eastus.tts.speech.microsoft.com",
                apiKeyEnvironment: "AZURE_SPEECH_KEY",
                voice: "en-US-AvaMultilingualNeural",
                quota: ProviderQuota(requestsPerMinute: 600, concurrentTasks: 20),
                pricing: ProviderPricing(perCharacter: Money(nanos: 16_000)),
                pollInterval: .seconds(5),
                batchBaseURL: "https://eastus.api.cognitive.microsoft.com"
            )
        }
    }
}

/// The outcome of one cheap authenticated call to a provider.
public struct AccessCheck: Sendable, Hashable {
    public var ok: Bool
    /// What was called and what came back; never carries the key.
    public var detail: String

    public init(ok: Bool, detail: String) {
        self.ok = ok
        self.detail = detail
    }
}

/// A provider that can prove its key works with a call that costs nothing.
public protocol AccessCheckable: GenerationProvider {
    func checkAccess() async -> AccessCheck
}
