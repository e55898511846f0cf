/// Why a request did not produce media.
///
/// Callers match on ``code``: `catch let error as GenerationError where error.code == .terminal`.
/// Equality compares the code only.
public struct GenerationError: Error, Sendable, Hashable, Codable, CustomStringConvertible {
    public struct Code: Sendable, Hashable, Codable, CustomStringConvertible {
        private enum Base: String, Sendable, Hashable, Codable {
            case invalidRequest = "invalid_request"
            case rateLimited = "rate_limited"
            case transient
            case terminal
            case budgetExceeded = "budget_exceeded"
            case noCapableProvider = "no_capable_provider"
            case cancelled
            case attemptsExhausted = "attempts_exhausted"
            case artifactInvalid = "artifact_invalid"
            case needsReconciliation = "needs_reconciliation"
            case taskFailed = "task_failed"
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// The request itself is wrong; retrying cannot help.
        public static let invalidRequest = Code(.invalidRequest)
        /// The provider or a quota said "not now": wait, then try again without spending an attempt.
        public static let rateLimited = Code(.rateLimited)
        /// A failure that may pass: 5xx, time-out, dropped connection.
        public static let transient = Code(.transient)
        /// The provider refused for good: auth, balance, content policy, bad parameter.
        public static let terminal = Code(.terminal)
        /// A budget would be exceeded and nothing in flight can free it.
        public static let budgetExceeded = Code(.budgetExceeded)
        /// No configured provider can do what the request asks.
        public static let noCapableProvider = Code(.noCapableProvider)
        public static let cancelled = Code(.cancelled)
        /// Every allowed attempt failed with a retryable error.
        public static let attemptsExhausted = Code(.attemptsExhausted)
        /// The provider's output failed the integrity checks (empty, wrong size, unreadable).
        public static let artifactInvalid = Code(.artifactInvalid)
        /// A crash came between submitting to the provider and recording the task id: a person decides.
        public static let needsReconciliation = Code(.needsReconciliation)
        /// The provider's task ended in failure for a reason the adapter does not know (neither a refusal nor an
        /// internal failure it documents): a new task may succeed, within the smaller budget
        /// ``PargenConfiguration/Retry/failedTasks``.
        public static let taskFailed = Code(.taskFailed)

        public var description: String { base.rawValue }

        /// Whether another attempt may succeed.
        public var isRetryable: Bool {
            self == .transient || self == .rateLimited || self == .artifactInvalid || self == .taskFailed
        }
    }

    public var code: Code
    /// A human-readable reason. Never carries credentials.
    public var message: String
    /// The provider that produced the error, if any.
    public var provider: String?
    /// The provider's own error code (`429`, MiniMax `1002`, Runway `THROTTLED`, ...).
    public var providerCode: String?
    /// How long the provider asked us to wait, for ``Code/rateLimited``.
    public var retryAfter: Duration?
    /// For validation errors: the field that is wrong.
    public var field: String?
    /// The attempt this failure ended (`JOB:ATTEMPT`, the idempotency key it was sent with), set by the engine.
    public var attemptKey: String?
    /// The provider's task id, when the failure came after the provider accepted a task: each task a job used
    /// appears once in its history with its id.
    public var taskID: String?
    /// What this attempt cost: zero for a failed task at a provider that does not bill failures, `nil` when no
    /// call was charged or it is not known. Set by the engine.
    public var charged: Money?

    public init(
        _ code: Code,
        _ message: String,
        provider: String? = nil,
        providerCode: String? = nil,
        retryAfter: Duration? = nil,
        field: String? = nil
    ) {
        self.code = code
        self.message = message
        self.provider = provider
        self.providerCode = providerCode
        self.retryAfter = retryAfter
        self.field = field
    }

    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }

    public var description: String {
        var text = "\(code): \(message)"
        if let field { text = "\(code) [\(field)]: \(message)" }
        if let provider {
            text += " (provider \(provider)"
            if let providerCode { text += ", code \(providerCode)" }
            if let taskID { text += ", task \(taskID)" }
            text += ")"
        }
        return text
    }

    enum CodingKeys: String, CodingKey {
        case code, message, provider, providerCode, retryAfterMs, field, attemptKey, taskID, charged
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        code = try c.decode(Code.self, forKey: .code)
        message = try c.decode(String.self, forKey: .message)
        provider = try c.decodeIfPresent(String.self, forKey: .provider)
        providerCode = try c.decodeIfPresent(String.self, forKey: .providerCode)
        retryAfter = try c.decodeIfPresent(Int64.self, forKey: .retryAfterMs).map { .milliseconds($0) }
        field = try c.decodeIfPresent(String.self, forKey: .field)
        attemptKey = try c.decodeIfPresent(String.self, forKey: .attemptKey)
        taskID = try c.decodeIfPresent(String.self, forKey: .taskID)
        charged = try c.decodeIfPresent(Int64.self, forKey: .charged).map(Money.init(nanos:))
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(code, forKey: .code)
        try c.encode(message, forKey: .message)
        try c.encodeIfPresent(provider, forKey: .provider)
        try c.encodeIfPresent(providerCode, forKey: .providerCode)
        try c.encodeIfPresent(retryAfter?.milliseconds, forKey: .retryAfterMs)
        try c.encodeIfPresent(field, forKey: .field)
        try c.encodeIfPresent(attemptKey, forKey: .attemptKey)
        try c.encodeIfPresent(taskID, forKey: .taskID)
        try c.encodeIfPresent(charged?.nanos, forKey: .charged)
    }
}

extension GenerationError.Code {
    public init(from decoder: any Decoder) throws {
        let raw = try decoder.singleValueContainer().decode(String.self)
        guard let base = Base(rawValue: raw) else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "unknown code \(raw)")
            )
        }
        self.init(base)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(base.rawValue)
    }
}
