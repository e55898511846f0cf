import Foundation
import Pargen
import PargenProviders
import Testing

@Suite struct ConfigurationFileTests {
    func write(_ text: String, ext: String = "yaml") throws -> String {
        let url = temporaryDirectory().appendingPathComponent("pargen.\(ext)")
        try Data(text.utf8).write(to: url)
        return url.path
    }

    @Test func aYAMLFileSetsProvidersAndTheEngine() async throws {
        let path = try write(
            """
            providers:
              openai:
                baseURL: http://127.0.0.1:9001
                apiKeyEnv: MY_OPENAI_KEY
                requestsPerMinute: 200
                concurrentTasks: 5
                voice: nova
                prices:
                  perCharacter: "0.00002"
                  perVideoSecond: 0.12
              runway-eu:
                protocol: runway
                concurrentTasks: 3
                quotaWindowSeconds: 30
            rateLimits:
              perUserRequestsPerMinute: 30
              burstCooldownSeconds: 2.5
            batching:
              maxJobsPerBatch: 10
              maxTotalCostPerBatch: "150"
            resources:
              maxConcurrentJobs: 400
            retry:
              payAgainForLostAnswers: false
            budgets:
              global: 1000
              projects:
                social: "2.50"
            """
        )
        let setup = try await PargenSetup.load(file: path, environment: [:])
        #expect(setup.providers.map(\.name) == ["openai", "runway-eu"])
        let openai = setup.providers[0]
        #expect(openai.baseURL == "http://127.0.0.1:9001")
        #expect(openai.apiKeyEnvironment == "MY_OPENAI_KEY")
        #expect(openai.quota.requestsPerMinute == 200 && openai.quota.concurrentTasks == 5)
        #expect(openai.voice == "nova")
        #expect(openai.pricing.perCharacter == Money(nanos: 20_000))
        #expect(openai.pricing.perVideoSecond == .cents(12))
        #expect(openai.pricing.models.isEmpty, "prices from the file replace the default list")
        let runway = setup.providers[1]
        #expect(runway.wireProtocol == .runway && runway.quota.window == .seconds(30))
        #expect(
            runway.baseURL == ProviderSettings.defaults(for: .runway).baseURL,
            "defaults fill what the file leaves out"
        )
        #expect(setup.configuration.rateLimits.perUserRequestsPerMinute == 30)
        #expect(setup.configuration.rateLimits.burstCooldown == .milliseconds(2500))
        #expect(setup.configuration.batching.maxJobsPerBatch == 10)
        #expect(setup.configuration.batching.maxTotalCostPerBatch == .dollars(150))
        #expect(setup.configuration.resources.maxConcurrentJobs == 400)
        #expect(!setup.configuration.retry.payAgainForLostAnswers)
        #expect(PargenConfiguration().retry.payAgainForLostAnswers, "buying a lost answer again is the default")
        #expect(setup.configuration.budgets.global == .dollars(1000))
        #expect(setup.configuration.budgets.perProject["social"] == Money(parsing: "2.50"))
        #expect(!setup.includeLocalProviders, "configured providers replace the local ones")
    }

    @Test func environmentVariablesOverrideTheFile() async throws {
        let path = try write(
            #"{"providers": {"minimax": {"requestsPerMinute": 60}}, "rateLimits": {"maxBurst": 10}}"#,
            ext: "json"
        )
        let setup = try await PargenSetup.load(
            file: path,
            environment: [
                "PARGEN_PROVIDERS_MINIMAX_REQUESTS_PER_MINUTE": "20",
                "PARGEN_PROVIDERS_MINIMAX_BASE_URL": "http://127.0.0.1:7777",
                "PARGEN_RATE_LIMITS_MAX_BURST": "7",
            ]
        )
        #expect(setup.providers[0].quota.requestsPerMinute == 20)
        #expect(setup.providers[0].baseURL == "http://127.0.0.1:7777")
        #expect(setup.configuration.rateLimits.maxBurst == 7)
    }

    @Test func unknownKeysAndBadValuesAreReportedWithTheirPath() async throws {
        let path = try write(
            """
            providers:
              openai:
                requestsPerMinut: 200
                concurrentTasks: many
                baseURL: ftp://example.com
              acme:
                baseURL: https://acme.example
            rateLimits:
              maxBurst: -3
            batching:
              similarityThreshold: 2
            budgets:
              global: lots
            colour: blue
            """
        )
        let error = try await #require(throws: ConfigurationFileError.self) {
            try await PargenSetup.load(file: path, environment: [:])
        }
        let problems = error.problems.joined(separator: "\n")
        #expect(problems.contains("providers.openai.requestsPerMinut: unknown key"))
        #expect(problems.contains("colour: unknown key"))
        #expect(problems.contains("providers.openai.concurrentTasks: expected a whole number"))
        #expect(problems.contains("providers.openai.baseURL: expected an http(s) URL"))
        #expect(problems.contains("providers.acme.protocol: unknown protocol acme"))
        #expect(problems.contains("rateLimits.maxBurst: must be at least 1"))
        #expect(problems.contains("batching.similarityThreshold: must be within 0.0...1.0"))
        #expect(problems.contains("budgets.global: expected an amount"))
        #expect(error.problems.count == 8, "\(problems)")
    }

    /// A window, an interval or a time-out of zero is refused with its path: a burst window of zero stopped the
    /// process on a precondition, a quota window of zero made `pargen simulate` sample the same moment for ever,
    /// and a poll interval of zero would ask a provider about its task without pause.
    @Test func lengthsOfTimeThatCannotBeZeroAreRefused() async throws {
        let path = try write(
            """
            providers:
              openai:
                quotaWindowSeconds: 0
                expectedTaskSeconds: 0
                pollIntervalSeconds: 0.001
                requestTimeoutSeconds: 0
                taskTimeoutSeconds: 0.5
            rateLimits:
              burstWindowSeconds: 0.0001
            resources:
              scaleUpThreshold: 0.3
              scaleDownThreshold: 0.6
            """
        )
        let error = try await #require(throws: ConfigurationFileError.self) {
            try await PargenSetup.load(file: path, environment: [:])
        }
        let problems = error.problems.joined(separator: "\n")
        for expected in [
            "providers.openai.quotaWindowSeconds: must be within 1.0...86400.0, not 0.0",
            "providers.openai.expectedTaskSeconds: must be within 1.0...86400.0, not 0.0",
            "providers.openai.pollIntervalSeconds: must be within 0.01...3600.0, not 0.001",
            "providers.openai.requestTimeoutSeconds: must be within 1.0...3600.0, not 0.0",
            "providers.openai.taskTimeoutSeconds: must be within 1.0...31536000.0, not 0.5",
            "rateLimits.burstWindowSeconds: must be within 0.001...3600.0, not 0.0001",
            "resources.scaleDownThreshold: must be below scaleUpThreshold (0.3), not 0.6",
        ] {
            #expect(problems.contains(expected), "\(expected) in \(problems)")
        }
        #expect(error.problems.count == 7, "\(problems)")

        // The smallest values allowed build a setup whose simulation ends.
        let smallest = try write(
            """
            providers:
              openai:
                apiKeyEnv: OPENAI_TEST_KEY
                quotaWindowSeconds: 1
                requestsPerMinute: 2
            rateLimits:
              burstWindowSeconds: 0.001
            """
        )
        let setup = try await PargenSetup.load(file: smallest, environment: [:])
        let provider = PargenSetup.adapter(
            setup.providers[0],
            connection: setup.providers[0].connection(apiKey: nil, httpClient: sharedTestHTTPClient)
        )
        let requests = try (0..<5).map {
            try RequestValidator().validate(GenerationRequest(kind: .audio, prompt: "p\($0)"), fallbackID: "l\($0)")
        }
        let report = CampaignSimulator(
            configuration: setup.configuration,
            providers: [.init(descriptor: provider.descriptor, callSeconds: [.audio: 0.5...0.5])]
        ).run(requests)
        #expect(report.lines == 5)
        // Two calls per window (1 s, plus the 100 ms margin, counted from each answer at most 0.5 s after its call):
        // the fifth call goes out in the third window, at about 3.2 s, and ends half a second later.
        #expect(report.makespan >= .seconds(2.2) && report.makespan <= .seconds(4), "\(report.makespan)")
    }

    /// A configuration path that is no such file says what it is, and a large one is refused before it is read
    /// whole (FileManager read /dev/zero's and a 5 GB file's bytes before the size was looked at).
    @Test func aConfigurationPathThatIsNoFileSaysWhatItIs() async throws {
        let folder = temporaryDirectory()
        let large = folder.appendingPathComponent("large.yaml")
        try Data(repeating: UInt8(ascii: "#"), count: 2 << 20).write(to: large)
        let cases = [
            (folder.path, "it is a folder, not a configuration file"),
            ("/dev/zero", "it is a device or a socket, not a configuration file (a file, or a pipe such as /dev/stdin)"),
            (folder.appendingPathComponent("missing.yaml").path, "No such file or directory"),
            (large.path, "it is larger than the 1 MiB a configuration file may be"),
        ]
        for (path, reason) in cases {
            let error = try await #require(throws: ConfigurationFileError.self) {
                try await PargenSetup.load(file: path, environment: [:])
            }
            #expect(error.problems == ["\(path): cannot be read: \(reason)"])
        }
    }

    /// Numbers beyond any real quota are refused with their path (a capacity of 1e11 or Int.max used to pass and
    /// trap the engine on overflow), and every URL is checked the same way: http(s), a host, no credentials (the
    /// password is never echoed), no query. Azure's batch URL used to take anything, file:///etc/passwd included.
    @Test func hugeNumbersAndURLsWithCredentialsOrOtherSchemesAreRefused() async throws {
        let path = try write(
            """
            providers:
              openai:
                baseURL: https://alice:s3cr3t-pw@api.example.com
                concurrentTasks: 9223372036854775807
              azure:
                batchBaseURL: file:///etc/passwd
              runway:
                baseURL: https://api.example.com/v1?token=abc
            rateLimits:
              tokenBucketCapacity: 100000000000
            resources:
              maxConcurrentJobs: 9223372036854775807
            """
        )
        let error = try await #require(throws: ConfigurationFileError.self) {
            try await PargenSetup.load(file: path, environment: [:])
        }
        let problems = error.problems.joined(separator: "\n")
        #expect(problems.contains("providers.openai.baseURL: must not carry credentials"), "\(problems)")
        #expect(!problems.contains("s3cr3t-pw") && !problems.contains("alice"), "\(problems)")
        #expect(problems.contains("providers.openai.concurrentTasks: must be at most 10000000"), "\(problems)")
        #expect(problems.contains("providers.azure.batchBaseURL: expected an http(s) URL"), "\(problems)")
        #expect(problems.contains("providers.runway.baseURL: expected an http(s) URL"), "\(problems)")
        #expect(problems.contains("rateLimits.tokenBucketCapacity: must be at most 10000000"), "\(problems)")
        #expect(problems.contains("resources.maxConcurrentJobs: must be at most 10000000"), "\(problems)")
        #expect(error.problems.count == 6, "\(problems)")
    }

    @Test func aMissingKeyVariableNamesTheProviderAndNeverTheKey() async throws {
        let setup = PargenSetup(providers: [
            ProviderSettings.defaults(for: .elevenlabs), ProviderSettings.defaults(for: .azure),
        ])
        let error = try #require(throws: ConfigurationFileError.self) {
            try setup.makeProviders(
                httpClient: sharedTestHTTPClient,
                environment: ["AZURE_SPEECH_KEY": "secret-azure-key"]
            )
        }
        #expect(
            error.problems == ["providers.elevenlabs.apiKeyEnv: environment variable ELEVENLABS_API_KEY is not set"]
        )
        let made = try PargenSetup(providers: [ProviderSettings.defaults(for: .azure)])
            .makeProviders(httpClient: sharedTestHTTPClient, environment: ["AZURE_SPEECH_KEY": "secret-azure-key"])
        #expect(made.map(\.descriptor.name) == ["azure"])
        #expect(!String(reflecting: made[0]).contains("secret-azure-key"))
    }

    @Test func theSharedCacheTiersAreReadAndCheckedWithTheirPaths() async throws {
        let good = try await PargenSetup.load(
            file: try write(
                """
                artifacts:
                  endpoint: https://acct.r2.cloudflarestorage.com
                  bucket: team-media
                  region: auto
                  prefix: pargen
                  publicBaseURL: https://cdn.example.com/m
                  partSizeMB: 16
                cache:
                  redis:
                    url: redis://cache.internal:6380/2
                    passwordEnv: REDIS_PASSWORD
                    timeoutMilliseconds: 100
                    lockSeconds: 30
                """
            ),
            environment: [:]
        )
        let tiers = good.sharedCache
        #expect(tiers.isConfigured && tiers.bucket == "team-media" && tiers.region == "auto")
        #expect(tiers.endpoint == "https://acct.r2.cloudflarestorage.com" && tiers.objectPrefix == "pargen/")
        #expect(tiers.publicBaseURL == "https://cdn.example.com/m" && tiers.partSizeMB == 16)
        #expect(tiers.redisURL == "redis://cache.internal:6380/2" && tiers.redisPasswordEnvironment == "REDIS_PASSWORD")
        #expect(tiers.redisTimeout == .milliseconds(100) && tiers.lockTimeToLive == .seconds(30))
        #expect(try await PargenSetup.load(file: try write("retry:\n  maxAttempts: 3\n"), environment: [:]).sharedCache.isConfigured == false)

        let bad = await #expect(throws: ConfigurationFileError.self) {
            try await PargenSetup.load(
                file: try write(
                    """
                    artifacts:
                      bucket: Not_A_Bucket
                      publicBaseURL: ftp://cdn
                      partSizeMB: 2
                    cache:
                      redis:
                        url: redis://h/0
                        lockSeconds: -1
                    """
                ),
                environment: [:]
            )
        }
        let text = bad?.description ?? ""
        #expect(text.contains("artifacts.bucket: expected 3 to 63 lowercase letters"), "\(text)")
        #expect(text.contains("artifacts.publicBaseURL"), "\(text)")
        #expect(text.contains("artifacts.partSizeMB"), "\(text)")
        #expect(text.contains("cache.redis.lockSeconds"), "\(text)")
        #expect(text.contains("cache.redis.url: needs artifacts.bucket"), "\(text)")
        let noEndpoint = await #expect(throws: ConfigurationFileError.self) {
            try await PargenSetup.load(file: try write("artifacts:\n  bucket: media\n"), environment: [:])
        }
        #expect(noEndpoint?.description.contains("artifacts.endpoint: required with artifacts.bucket") == true)
    }
}
