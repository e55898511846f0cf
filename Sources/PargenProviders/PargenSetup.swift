public import AsyncHTTPClient
import Configuration
public import Foundation
public import Pargen
import SystemPackage
import Yams

/// Everything a configuration file sets: the engine's configuration and the providers.
///
/// The file is YAML or JSON (by extension), read with swift-configuration; any value can be overridden by
/// an environment variable named `PARGEN_` plus the key path in upper snake case
/// (`rateLimits.maxBurst` → `PARGEN_RATE_LIMITS_MAX_BURST`, `providers.openai.baseURL` →
/// `PARGEN_PROVIDERS_OPENAI_BASE_URL`). Unknown keys and bad values are errors naming their path.
///
/// ```swift
/// let setup = try await PargenSetup.load(file: "pargen.yaml")
/// let http = ProviderConnection.makeHTTPClient()
/// let generator = ParallelGenerator(
///     configuration: setup.configuration, providers: try setup.makeProviders(httpClient: http))
/// ```
public struct PargenSetup: Sendable {
    public var configuration: PargenConfiguration
    public var providers: [ProviderSettings]
    /// Whether the local (offline) providers run too. Default: only when no provider is configured.
    public var includeLocalProviders: Bool
    /// The shared PostgreSQL store's URL (`postgres.url`, or `PARGEN_POSTGRES_URL`), for several workers.
    public var postgresURL: String?
    /// The PostgreSQL schema for Pargen's tables (`postgres.schema`; default `pargen`).
    public var postgresSchema: String?
    /// The shared cache tiers (`artifacts.*`, `cache.redis.*`).
    public var sharedCache = SharedCacheSettings()

    public init(
        configuration: PargenConfiguration = .init(),
        providers: [ProviderSettings] = [],
        includeLocalProviders: Bool? = nil
    ) {
        self.configuration = configuration
        self.providers = providers
        self.includeLocalProviders = includeLocalProviders ?? providers.isEmpty
    }

    /// Builds the adapters, reading each API key from its environment variable.
    ///
    /// - Throws: ``ConfigurationFileError`` naming each provider whose key variable is unset.
    public func makeProviders(
        httpClient: HTTPClient,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws -> [any GenerationProvider] {
        var problems: [String] = []
        var made: [any GenerationProvider] = []
        for settings in providers {
            var key: APIKey?
            if !settings.apiKeyEnvironment.isEmpty {
                guard let value = environment[settings.apiKeyEnvironment], !value.isEmpty else {
                    problems.append(
                        "providers.\(settings.name).apiKeyEnv: environment variable \(settings.apiKeyEnvironment) is not set"
                    )
                    continue
                }
                key = APIKey(value)
            }
            made.append(Self.adapter(settings, connection: settings.connection(apiKey: key, httpClient: httpClient)))
        }
        if !problems.isEmpty { throw ConfigurationFileError(problems: problems) }
        if includeLocalProviders { made += LocalProvider.demoProviders(reliable: true, seed: configuration.randomSeed) }
        return made
    }

    /// The adapter for a provider's protocol.
    public static func adapter(_ settings: ProviderSettings, connection: ProviderConnection) -> any GenerationProvider {
        switch settings.wireProtocol {
        case .openai: OpenAIProvider(settings: settings, connection: connection)
        case .elevenlabs: ElevenLabsProvider(settings: settings, connection: connection)
        case .minimax: MiniMaxProvider(settings: settings, connection: connection)
        case .runway: RunwayProvider(settings: settings, connection: connection)
        case .azure: AzureSpeechProvider(settings: settings, connection: connection)
        }
    }
}

extension ProviderSettings {
    public func connection(apiKey: APIKey?, httpClient: HTTPClient) -> ProviderConnection {
        ProviderConnection(
            baseURL: baseURL,
            apiKey: apiKey,
            httpClient: httpClient,
            requestTimeout: requestTimeout,
            pollInterval: pollInterval,
            taskTimeout: taskTimeout
        )
    }
}

/// Problems found in a configuration file, each as `path: what is wrong`.
public struct ConfigurationFileError: Error, Sendable, CustomStringConvertible {
    public var problems: [String]
    public init(problems: [String]) { self.problems = problems }
    public var description: String { "configuration: " + problems.joined(separator: "; ") }
}

// MARK: - Loading

extension PargenSetup {
    /// The keys a file may hold. `*` stands for any name (a provider, a project). Immutable, so shared safely.
    nonisolated(unsafe) static let schema: [String: Any] = [
        "providers": [
            "*": [
                "protocol": 0, "baseURL": 0, "apiKeyEnv": 0, "speechModel": 0, "videoModel": 0, "voice": 0,
                "requestsPerMinute": 0, "quotaWindowSeconds": 0, "quotaMarginMilliseconds": 0, "concurrentTasks": 0,
                "expectedTaskSeconds": 0, "pollIntervalSeconds": 0, "requestTimeoutSeconds": 0, "taskTimeoutSeconds": 0, "batchBaseURL": 0,
                "batchThreshold": 0, "enabled": 0,
                "prices": ["perRequest": 0, "perCharacter": 0, "perAudioSecond": 0, "perVideoSecond": 0],
            ]
        ],
        "localProviders": 0,
        "postgres": ["url": 0, "schema": 0],
        "leaseSeconds": 0,
        "rateLimits": [
            "perUserRequestsPerMinute": 0, "perProjectRequestsPerMinute": 0, "tokenBucketCapacity": 0, "maxBurst": 0,
            "burstWindowSeconds": 0, "burstCooldownSeconds": 0, "enabled": 0,
        ],
        "batching": [
            "maxJobsPerBatch": 0, "maxTotalCostPerBatch": 0, "maxTotalDurationPerBatchSeconds": 0,
            "maxBatchesInFlight": 0, "pacingJitterMilliseconds": 0, "similarityThreshold": 0,
        ],
        "resources": [
            "maxAPICalls": 0, "maxConcurrentJobs": 0, "maxMemoryMB": 0, "maxStorageGB": 0, "scaleUpThreshold": 0,
            "scaleDownThreshold": 0,
        ],
        "cache": [
            "enabled": 0, "memoryCapacity": 0, "timeToLiveSeconds": 0,
            "redis": ["url": 0, "passwordEnv": 0, "timeoutMilliseconds": 0, "poolSize": 0, "lockSeconds": 0, "keyPrefix": 0],
        ],
        "artifacts": [
            "endpoint": 0, "bucket": 0, "region": 0, "accessKeyEnv": 0, "secretKeyEnv": 0, "sessionTokenEnv": 0,
            "prefix": 0, "publicBaseURL": 0, "multipartThresholdMB": 0, "partSizeMB": 0, "lookupTimeoutMilliseconds": 0,
            "publishRetrySeconds": 0,
        ],
        "retry": ["maxAttempts": 0, "baseDelaySeconds": 0, "maxDelaySeconds": 0, "multiplier": 0, "failedTasks": 0,
            "payAgainForLostAnswers": 0, "maxCrashes": 0,
        ],
        "budgets": [
            "global": 0, "defaultPerProject": 0, "alertThreshold": 0, "projects": ["*": 0], "campaigns": ["*": 0],
        ],
    ]

    /// Reads a YAML (`.yaml`, `.yml`) or JSON (`.json`) file, with `PARGEN_…` environment overrides.
    public static func load(
        file path: String,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) async throws -> PargenSetup {
        let data: Data
        do {
            data = Data(try BoundedFile.read(path, limit: Self.maxFileBytes, kind: "configuration file"))
        } catch {
            throw ConfigurationFileError(problems: ["\(path): cannot be read: \(error.reason)"])
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigurationFileError(problems: ["\(path): is not UTF-8 text"])
        }
        guard !text.allSatisfy(\.isWhitespace) else {
            throw ConfigurationFileError(problems: ["\(path): is empty"])
        }
        // Structure first, in one pass over the parser's events and before anything is built from them: no
        // anchors or aliases (a few hundred bytes of aliases expand to gigabytes), at most 32 levels deep.
        if let problem = Self.structureProblem(text) {
            throw ConfigurationFileError(problems: ["\(path): \(problem)"])
        }
        let tree: Any?
        do {
            // Yams traps when it builds a mapping whose key is itself a mapping or a list (`{[a]: 1}`), so
            // the composed tree is checked before anything is built from it, and then built from, not parsed again.
            let node = try Yams.compose(yaml: text)
            if let node, let problem = Self.keyProblem(node) {
                throw ConfigurationFileError(problems: ["\(path): \(problem)"])
            }
            tree = node.map { Constructor.default.any(from: $0) }
        } catch let refused as ConfigurationFileError {
            throw refused
        } catch {
            throw ConfigurationFileError(problems: ["\(path): not valid YAML or JSON: \(error)"])
        }
        // The top level is a mapping of sections (an empty file was refused above; a comment-only one is empty).
        if let tree, !(tree is [String: Any]) {
            let shape = tree is [Any] ? "a list" : "a single value"
            throw ConfigurationFileError(
                problems: ["\(path): the top level must be a mapping of sections (providers:, rateLimits:, ...), not \(shape)"]
            )
        }
        var problems: [String] = []
        Self.checkKeys(tree ?? [String: Any](), schema: Self.schema, path: "", problems: &problems)
        // Unknown keys are reported at once, and at most 50 of them: reading a file full of them any further (as
        // providers, say) would only take time.
        if problems.count > Self.maxProblems {
            let more = problems.count - Self.maxProblems
            throw ConfigurationFileError(
                problems: Array(problems.prefix(Self.maxProblems)) + ["... and \(more) more unknown keys"]
            )
        }
        let filePath = FilePath(path)
        let file: any ConfigProvider
        do {
            file =
                path.lowercased().hasSuffix(".json")
                ? try await FileProvider<JSONSnapshot>(filePath: filePath)
                : try await FileProvider<YAMLSnapshot>(filePath: filePath)
        } catch {
            // What the checks above let through and the configuration reader still refuses.
            throw ConfigurationFileError(problems: ["\(path): \(error)"])
        }
        let overrides = EnvironmentVariablesProvider(
            environmentVariables: environment.filter { $0.key.hasPrefix("PARGEN_") }
        ).prefixKeys(with: "pargen")
        let reader = ValueReader(config: ConfigReader(providers: [overrides, file]))
        let root = tree as? [String: Any] ?? [:]
        let providerNames = ((root["providers"] as? [String: Any]) ?? [:]).keys.sorted()
        let projectNames = (((root["budgets"] as? [String: Any])?["projects"] as? [String: Any]) ?? [:]).keys.sorted()
        let campaignNames = (((root["budgets"] as? [String: Any])?["campaigns"] as? [String: Any]) ?? [:]).keys.sorted()
        var setup = reader.read(providers: providerNames, projects: projectNames, campaigns: campaignNames)
        if let local = reader.bool("localProviders") { setup.includeLocalProviders = local }
        setup.postgresURL = reader.string("postgres.url")
        setup.postgresSchema = reader.string("postgres.schema")
        setup.sharedCache = reader.readSharedCache()
        problems += reader.problems
        guard problems.isEmpty else { throw ConfigurationFileError(problems: problems) }
        return setup
    }

    /// Why a composed YAML tree cannot be read as configuration: a key that is a mapping or a list, or an
    /// alias (refused earlier, but never built). `nil` when every key is a plain value. Iterative, so a deep
    /// tree cannot overflow the stack.
    static func keyProblem(_ root: Node) -> String? {
        var pending = [root]
        while let node = pending.popLast() {
            switch node {
            case .scalar: break
            case .alias: return "anchors and aliases are not accepted"
            case .sequence(let sequence): pending.append(contentsOf: sequence)
            case .mapping(let mapping):
                for (key, value) in mapping {
                    guard case .scalar = key else {
                        let line = key.mark.map { " (line \($0.line))" } ?? ""
                        return "a key must be a plain name, not a mapping or a list\(line)"
                    }
                    pending.append(value)
                }
            }
        }
        return nil
    }

    static let maxFileBytes = 1 << 20
    static let maxDepth = 32
    static let maxProblems = 50

    /// Why the text's structure is refused, from one linear scan before any parser builds anything: an anchor
    /// (`&name`) or alias (`*name`) outside quotes and comments (a few hundred bytes of aliases expand to
    /// gigabytes), or flow collections (`[`, `{`) nested deeper than ``maxDepth`` (a parser that recurses would
    /// overflow its stack). `nil` when the structure is fine.
    static func structureProblem(_ text: String) -> String? {
        var depth = 0
        var quote: UInt8?  // the open quote character, if inside a quoted scalar
        var comment = false
        var previous: UInt8 = 0x0A  // the last byte that is not a space or tab
        for byte in text.utf8 {
            if comment {
                if byte == 0x0A {
                    comment = false
                    previous = 0x0A
                }
                continue
            }
            if let open = quote {
                if byte == open { quote = nil }
                continue
            }
            switch byte {
            case 0x22, 0x27:  // " '
                quote = byte
            case 0x23 where previous == 0x0A || previous == 0x20 || previous == 0x09:  // # starts a comment
                comment = true
                continue
            case 0x26, 0x2A:  // & *
                // An indicator where a node starts: at a line's start, after "- ", ": ", "[", "{" or ",".
                if [0x0A, 0x2D, 0x3A, 0x5B, 0x7B, 0x2C, 0x3F].contains(previous) {
                    return byte == 0x26
                        ? "uses a YAML anchor (&name); anchors and aliases are not accepted"
                        : "uses a YAML alias (*name); anchors and aliases are not accepted"
                }
            case 0x5B, 0x7B:
                depth += 1
                if depth > maxDepth { return "nests deeper than \(maxDepth) levels" }
            case 0x5D, 0x7D:
                depth -= 1
            default:
                break
            }
            if byte != 0x20 && byte != 0x09 { previous = byte }
        }
        return nil
    }

    static func checkKeys(_ node: Any, schema: Any, path: String, problems: inout [String]) {
        guard let allowed = schema as? [String: Any] else { return }
        guard let object = node as? [String: Any] else {
            problems.append("\(path.isEmpty ? "(top level)" : path): expected a mapping of keys")
            return
        }
        for (key, value) in object.sorted(by: { $0.key < $1.key }) {
            let child = path.isEmpty ? key : "\(path).\(key)"
            if let sub = allowed[key] ?? allowed["*"] {
                checkKeys(value, schema: sub, path: child, problems: &problems)
            } else {
                problems.append("\(child): unknown key")
            }
        }
    }
}

/// Typed reads that record a problem, with the key's path, for a value of the wrong type or range.
final class ValueReader {
    let config: ConfigReader
    var problems: [String] = []

    init(config: ConfigReader) { self.config = config }

    private func read<T>(_ key: String, _ type: String, _ body: (ConfigKey) throws -> T) -> T? {
        do {
            return try body(ConfigKey(key))
        } catch {
            if String(describing: error).hasPrefix("Missing required config value") { return nil }
            problems.append("\(key): expected \(type)")
            return nil
        }
    }

    func string(_ key: String) -> String? { read(key, "text") { try config.requiredString(forKey: $0) } }
    func bool(_ key: String) -> Bool? { read(key, "true or false") { try config.requiredBool(forKey: $0) } }

    /// A whole number from `minimum` to `maximum`. The ceiling (ten million by default) is far above any real
    /// quota or limit, and keeps every later sum and product of these values far from `Int`'s range.
    func int(_ key: String, min minimum: Int = 1, max maximum: Int = 10_000_000) -> Int? {
        guard let value = read(key, "a whole number", { try config.requiredInt(forKey: $0) }) else { return nil }
        guard value >= minimum else {
            problems.append("\(key): must be at least \(minimum), not \(value)")
            return nil
        }
        guard value <= maximum else {
            problems.append("\(key): must be at most \(maximum), not \(value)")
            return nil
        }
        return value
    }

    /// An endpoint: an http or https URL with a host, and no credentials, query or fragment in it. A URL with
    /// `user:password@` is refused with the credentials left out of the message (keys come from the environment).
    func endpoint(_ key: String) -> String? {
        guard let text = string(key) else { return nil }
        let components = URLComponents(string: text)
        if let components, components.user != nil || components.password != nil {
            var shown = components
            shown.user = nil
            shown.password = nil
            problems.append(
                "\(key): must not carry credentials (give the key through apiKeyEnv), not \(shown.string ?? "a URL with user:password@")"
            )
            return nil
        }
        guard let components, ["http", "https"].contains(components.scheme?.lowercased() ?? ""),
            let host = components.host, !host.isEmpty, components.query == nil, components.fragment == nil
        else {
            problems.append("\(key): expected an http(s) URL with a host and no query, not \(text)")
            return nil
        }
        return text.hasSuffix("/") ? String(text.dropLast()) : text
    }

    func double(_ key: String, in range: ClosedRange<Double> = 0...Double.greatestFiniteMagnitude) -> Double? {
        let value = read(key, "a number") { key -> Double in
            if let int = try? config.requiredInt(forKey: key) { return Double(int) }
            return try config.requiredDouble(forKey: key)
        }
        guard let value else { return nil }
        guard range.contains(value) else {
            problems.append("\(key): must be within \(range.lowerBound)...\(range.upperBound), not \(value)")
            return nil
        }
        return value
    }

    /// A length of time in seconds, within `range` (zero to a year by default), kept to the millisecond. A key
    /// whose value must not be zero (a window, an interval, a time-out) passes a range that starts above zero.
    func seconds(_ key: String, in range: ClosedRange<Double> = 0...31_536_000) -> Duration? {
        double(key, in: range).map { .milliseconds(Int64(($0 * 1000).rounded())) }
    }

    func money(_ key: String) -> Money? {
        let text: String? =
            (try? config.requiredString(forKey: ConfigKey(key)))
            ?? double(key).map { String(format: "%.9f", $0) }
        guard let text else { return nil }
        guard let money = Money(parsing: text), money >= .zero else {
            problems.append("\(key): expected an amount such as 0.015 or 300, not \(text)")
            return nil
        }
        return money
    }

    func read(providers: [String], projects: [String], campaigns: [String]) -> PargenSetup {
        var configuration = PargenConfiguration()
        var limits = configuration.rateLimits
        if let v = int("rateLimits.perUserRequestsPerMinute") { limits.perUserRequestsPerMinute = v }
        if let v = int("rateLimits.perProjectRequestsPerMinute") { limits.perProjectRequestsPerMinute = v }
        if let v = int("rateLimits.tokenBucketCapacity") { limits.tokenBucketCapacity = v }
        if let v = int("rateLimits.maxBurst") { limits.maxBurst = v }
        if let v = seconds("rateLimits.burstWindowSeconds", in: 0.001...3600) { limits.burstWindow = v }
        if let v = seconds("rateLimits.burstCooldownSeconds") { limits.burstCooldown = v }
        if let v = bool("rateLimits.enabled") { limits.enabled = v }
        configuration.rateLimits = limits

        var batching = configuration.batching
        if let v = int("batching.maxJobsPerBatch") { batching.maxJobsPerBatch = v }
        if let v = money("batching.maxTotalCostPerBatch") { batching.maxTotalCostPerBatch = v }
        if let v = seconds("batching.maxTotalDurationPerBatchSeconds") { batching.maxTotalDurationPerBatch = v }
        if let v = int("batching.maxBatchesInFlight") { batching.maxBatchesInFlight = v }
        if let v = double("batching.pacingJitterMilliseconds", in: 0...60_000) {
            batching.pacingJitter = .milliseconds(Int64(v))
        }
        if let v = double("batching.similarityThreshold", in: 0...1) { batching.similarityThreshold = v }
        configuration.batching = batching

        var resources = configuration.resources
        if let v = int("resources.maxAPICalls") { resources.maxAPICalls = v }
        if let v = int("resources.maxConcurrentJobs") { resources.maxConcurrentJobs = v }
        if let v = int("resources.maxMemoryMB") { resources.maxMemoryMB = v }
        if let v = int("resources.maxStorageGB") { resources.maxStorageGB = v }
        if let v = double("resources.scaleUpThreshold", in: 0...1) { resources.scaleUpThreshold = v }
        if let v = double("resources.scaleDownThreshold", in: 0...1) { resources.scaleDownThreshold = v }
        if resources.scaleDownThreshold >= resources.scaleUpThreshold {
            problems.append(
                "resources.scaleDownThreshold: must be below scaleUpThreshold (\(resources.scaleUpThreshold)), "
                    + "not \(resources.scaleDownThreshold)"
            )
        }
        configuration.resources = resources

        if let v = bool("cache.enabled") { configuration.caching.enabled = v }
        if let v = int("cache.memoryCapacity") { configuration.caching.memoryCapacity = v }
        if let v = seconds("cache.timeToLiveSeconds") { configuration.caching.timeToLive = v }
        if let v = seconds("artifacts.publishRetrySeconds") { configuration.caching.publishRetryHorizon = v }

        if let v = double("leaseSeconds", in: 1...3600) { configuration.leaseDuration = .milliseconds(Int64((v * 1000).rounded())) }

        if let v = int("retry.maxAttempts") { configuration.retry.maxAttempts = v }
        if let v = int("retry.failedTasks", min: 0) { configuration.retry.failedTasks = v }
        if let v = bool("retry.payAgainForLostAnswers") { configuration.retry.payAgainForLostAnswers = v }
        if let v = int("retry.maxCrashes", min: 1) { configuration.retry.maxCrashes = v }
        if let v = seconds("retry.baseDelaySeconds") { configuration.retry.baseDelay = v }
        if let v = seconds("retry.maxDelaySeconds") { configuration.retry.maxDelay = v }
        if let v = double("retry.multiplier", in: 1...10) { configuration.retry.multiplier = v }

        if let v = money("budgets.global") { configuration.budgets.global = v }
        if let v = money("budgets.defaultPerProject") { configuration.budgets.defaultPerProject = v }
        if let v = double("budgets.alertThreshold", in: 0...1) { configuration.budgets.alertThreshold = v }
        for name in projects {
            if let v = money("budgets.projects.\(name)") { configuration.budgets.perProject[name] = v }
        }
        for name in campaigns {
            if let v = money("budgets.campaigns.\(name)") { configuration.budgets.perCampaign[name] = v }
        }

        var settings: [ProviderSettings] = []
        for name in providers {
            let path = "providers.\(name)"
            if bool("\(path).enabled") == false { continue }
            let protocolName = string("\(path).protocol") ?? name
            guard let wire = ProviderProtocol(rawValue: protocolName.lowercased()) else {
                problems.append(
                    "\(path).protocol: unknown protocol \(protocolName) (one of \(ProviderProtocol.allCases.map(\.rawValue).joined(separator: ", ")))"
                )
                continue
            }
            var provider = ProviderSettings.defaults(for: wire)
            provider.name = name
            if let v = endpoint("\(path).baseURL") { provider.baseURL = v }
            if let v = string("\(path).apiKeyEnv") { provider.apiKeyEnvironment = v }
            if let v = string("\(path).speechModel") { provider.speechModel = v }
            if let v = string("\(path).videoModel") { provider.videoModel = v }
            if let v = string("\(path).voice") { provider.voice = v }
            if let v = int("\(path).requestsPerMinute") { provider.quota.requestsPerMinute = v }
            if let v = seconds("\(path).quotaWindowSeconds", in: 1...86_400) { provider.quota.window = v }
            if let v = double("\(path).quotaMarginMilliseconds", in: 0...60_000) {
                provider.quota.margin = .milliseconds(Int64(v))
            }
            if let v = int("\(path).concurrentTasks") { provider.quota.concurrentTasks = v }
            if let v = seconds("\(path).expectedTaskSeconds", in: 1...86_400) { provider.quota.expectedTaskTime = v }
            if let v = seconds("\(path).pollIntervalSeconds", in: 0.01...3600) { provider.pollInterval = v }
            if let v = seconds("\(path).requestTimeoutSeconds", in: 1...3600) { provider.requestTimeout = v }
            if let v = seconds("\(path).taskTimeoutSeconds", in: 1...31_536_000) { provider.taskTimeout = v }
            if let v = endpoint("\(path).batchBaseURL") { provider.batchBaseURL = v }
            if let v = int("\(path).batchThreshold") { provider.batchThreshold = v }
            let prices = [
                money("\(path).prices.perRequest"), money("\(path).prices.perCharacter"),
                money("\(path).prices.perAudioSecond"), money("\(path).prices.perVideoSecond"),
            ]
            if prices.contains(where: { $0 != nil }) {
                // Prices from the file replace the whole default list, per-model prices included.
                provider.pricing = ProviderPricing(
                    perRequest: prices[0] ?? .zero,
                    perCharacter: prices[1] ?? .zero,
                    perAudioSecond: prices[2] ?? .zero,
                    perVideoSecond: prices[3] ?? .zero
                )
            }
            settings.append(provider)
        }
        return PargenSetup(configuration: configuration, providers: settings)
    }
}
