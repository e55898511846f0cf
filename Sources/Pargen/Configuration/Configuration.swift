/// Every tunable of the engine, with the defaults of the design.
///
/// ```swift
/// let configuration = ParallelGenerator.Configuration(
///     rateLimits: .init(perUserRequestsPerMinute: 30, tokenBucketCapacity: 200),
///     batching: .init(maxJobsPerBatch: 15, maxTotalCostPerBatch: .dollars(150)),
///     resources: .init(maxAPICalls: 50, maxConcurrentJobs: 25, maxMemoryMB: 1024))
/// ```
public struct PargenConfiguration: Sendable {
    /// Per-user, per-project and burst limits, applied all-or-nothing before every provider call.
    public struct RateLimits: Sendable, Hashable {
        /// Sliding 60 s window per user (an exact log). Default 60.
        public var perUserRequestsPerMinute: Int
        /// Project token bucket refill rate, per minute. Default 300 (5 per second).
        public var perProjectRequestsPerMinute: Int
        /// Project token bucket size. Default 300.
        public var tokenBucketCapacity: Int
        /// Most requests a project may start within ``burstWindow``. Default 50.
        public var maxBurst: Int
        /// The window that ``maxBurst`` counts in. Default 1 s.
        public var burstWindow: Duration
        /// How long nothing is admitted for a project after a burst. Default 5 s.
        public var burstCooldown: Duration
        /// Turns every limit off (benchmarks, trusted batch runs). Provider quotas still apply.
        public var enabled: Bool

        public init(
            perUserRequestsPerMinute: Int = 60,
            perProjectRequestsPerMinute: Int = 300,
            tokenBucketCapacity: Int = 300,
            maxBurst: Int = 50,
            burstWindow: Duration = .seconds(1),
            burstCooldown: Duration = .seconds(5),
            enabled: Bool = true
        ) {
            self.perUserRequestsPerMinute = perUserRequestsPerMinute
            self.perProjectRequestsPerMinute = perProjectRequestsPerMinute
            self.tokenBucketCapacity = tokenBucketCapacity
            self.maxBurst = maxBurst
            self.burstWindow = burstWindow
            self.burstCooldown = burstCooldown
            self.enabled = enabled
        }

        /// No user, project or burst limits.
        public static var unlimited: Self { .init(enabled: false) }
    }

    /// How compatible jobs are grouped before they are sent.
    public struct Batching: Sendable, Hashable {
        /// Default 25.
        public var maxJobsPerBatch: Int
        /// Sum of the estimates in one batch. Default $300.
        public var maxTotalCostPerBatch: Money
        /// Sum of media seconds in one batch. Default 300 s.
        public var maxTotalDurationPerBatch: Duration
        /// Batches being worked on at once. Default 5.
        public var maxBatchesInFlight: Int
        /// Upper bound of the random pause between two batch submissions. Default 200 ms.
        public var pacingJitter: Duration
        /// Weighted similarity a job needs to join a batch (0...1). Default 0.8.
        public var similarityThreshold: Double

        public init(
            maxJobsPerBatch: Int = 25,
            maxTotalCostPerBatch: Money = .dollars(300),
            maxTotalDurationPerBatch: Duration = .seconds(300),
            maxBatchesInFlight: Int = 5,
            pacingJitter: Duration = .milliseconds(200),
            similarityThreshold: Double = 0.8
        ) {
            self.maxJobsPerBatch = maxJobsPerBatch
            self.maxTotalCostPerBatch = maxTotalCostPerBatch
            self.maxTotalDurationPerBatch = maxTotalDurationPerBatch
            self.maxBatchesInFlight = maxBatchesInFlight
            self.pacingJitter = pacingJitter
            self.similarityThreshold = similarityThreshold
        }
    }

    /// Capacity of the resource pool. Each limit auto-scales between a floor (a quarter of the maximum by
    /// default) and the maximum, starting half way.
    public struct Resources: Sendable, Hashable {
        /// Provider calls in flight. Default 100.
        public var maxAPICalls: Int
        /// Jobs being processed. Default 50.
        public var maxConcurrentJobs: Int
        /// Working memory budget in MB. Default 2048.
        public var maxMemoryMB: Int
        /// Output storage budget in GB. Default 100.
        public var maxStorageGB: Int
        /// Utilisation at or above which a limit grows. Default 0.8.
        public var scaleUpThreshold: Double
        /// Utilisation at or below which a limit shrinks. Default 0.3.
        public var scaleDownThreshold: Double
        /// Minimum time between two scaling steps of one resource. Default 5 s.
        public var scaleInterval: Duration
        /// Fraction of each maximum that a limit never goes below. Default 0.25.
        public var minimumFraction: Double

        public init(
            maxAPICalls: Int = 100,
            maxConcurrentJobs: Int = 50,
            maxMemoryMB: Int = 2048,
            maxStorageGB: Int = 100,
            scaleUpThreshold: Double = 0.8,
            scaleDownThreshold: Double = 0.3,
            scaleInterval: Duration = .seconds(5),
            minimumFraction: Double = 0.25
        ) {
            self.maxAPICalls = maxAPICalls
            self.maxConcurrentJobs = maxConcurrentJobs
            self.maxMemoryMB = maxMemoryMB
            self.maxStorageGB = maxStorageGB
            self.scaleUpThreshold = scaleUpThreshold
            self.scaleDownThreshold = scaleDownThreshold
            self.scaleInterval = scaleInterval
            self.minimumFraction = minimumFraction
        }
    }

    /// Provider choice, health and circuit breaking.
    public struct Balancing: Sendable, Hashable {
        /// Outcomes remembered per provider for its health. Default 50.
        public var healthWindow: Int
        /// Consecutive failures that open a circuit. Default 5.
        public var failureThreshold: Int
        /// Error rate over the window that opens a circuit (with at least ``minimumSamples``). Default 0.5.
        public var errorRateThreshold: Double
        /// Default 10.
        public var minimumSamples: Int
        /// How long an open circuit stays open before one canary goes through. Default 30 s.
        public var openDuration: Duration
        /// Weight of a new latency sample in the EWMA. Default 0.2.
        public var latencySmoothing: Double

        public init(
            healthWindow: Int = 50,
            failureThreshold: Int = 5,
            errorRateThreshold: Double = 0.5,
            minimumSamples: Int = 10,
            openDuration: Duration = .seconds(30),
            latencySmoothing: Double = 0.2
        ) {
            self.healthWindow = healthWindow
            self.failureThreshold = failureThreshold
            self.errorRateThreshold = errorRateThreshold
            self.minimumSamples = minimumSamples
            self.openDuration = openDuration
            self.latencySmoothing = latencySmoothing
        }
    }

    /// The memory cache in front of the providers.
    public struct Caching: Sendable, Hashable {
        /// Entries kept in the LRU. Default 1000.
        public var memoryCapacity: Int
        /// How long an entry stays valid; `nil` keeps it until evicted. Default 24 h.
        public var timeToLive: Duration?
        public var enabled: Bool
        /// How long a generated artifact's publishing to the shared tiers is tried again before the job completes
        /// with its local file only. Default 5 minutes.
        public var publishRetryHorizon: Duration = .seconds(300)

        public init(memoryCapacity: Int = 1000, timeToLive: Duration? = .seconds(86_400), enabled: Bool = true) {
            self.memoryCapacity = memoryCapacity
            self.timeToLive = timeToLive
            self.enabled = enabled
        }
    }

    /// Retries with exponential backoff and full jitter.
    public struct Retry: Sendable, Hashable {
        /// Provider attempts per job, the first included. Default 5.
        public var maxAttempts: Int
        /// Default 1 s.
        public var baseDelay: Duration
        /// Default 2.
        public var multiplier: Double
        /// Default 60 s.
        public var maxDelay: Duration
        /// Rate-limit snoozes per job before it counts as a failure. Default 100.
        public var maxSnoozes: Int
        /// New tasks a job may be given after tasks that failed for a reason the provider did not name
        /// (``GenerationError/Code/taskFailed``), within ``maxAttempts``. Default 2, so at most 3 such tasks.
        public var failedTasks: Int
        /// Whether a line whose synchronous answer the provider billed and that was then lost (cut short,
        /// unusable, or not saved) is requested again, which the provider bills again. A synchronous call that
        /// was sent and never answered (a time-out, a connection closed) counts the same way: the provider may
        /// have made and billed it, and has nothing to ask it by afterwards. Each billed answer is
        /// charged in the ledger either way; when `false` the line is dead-lettered instead, with what it was
        /// charged. Default `true`.
        public var payAgainForLostAnswers: Bool
        /// Times a job may be taken back from a process that stopped while running it (crash, kill, power cut,
        /// expired lease) before it is dead-lettered with code `crash_loop`. Counted across restarts. Default 5.
        public var maxCrashes: Int

        public init(
            maxAttempts: Int = 5,
            baseDelay: Duration = .seconds(1),
            multiplier: Double = 2,
            maxDelay: Duration = .seconds(60),
            maxSnoozes: Int = 100,
            failedTasks: Int = 2,
            payAgainForLostAnswers: Bool = true,
            maxCrashes: Int = 5
        ) {
            self.maxCrashes = maxCrashes
            self.failedTasks = failedTasks
            self.payAgainForLostAnswers = payAgainForLostAnswers
            self.maxAttempts = maxAttempts
            self.baseDelay = baseDelay
            self.multiplier = multiplier
            self.maxDelay = maxDelay
            self.maxSnoozes = maxSnoozes
        }
    }

    /// Spending limits. A scope without a limit is only tracked.
    public struct Budgets: Sendable, Hashable {
        public var global: Money?
        /// Per project name.
        public var perProject: [String: Money]
        /// Applies to every project not named in ``perProject``.
        public var defaultPerProject: Money?
        /// Per campaign name.
        public var perCampaign: [String: Money]
        /// Fraction of a budget at which an alert is raised. Default 0.8.
        public var alertThreshold: Double
        /// Window over which the spending trend is judged. Default 5 min.
        public var trendWindow: Duration

        public init(
            global: Money? = nil,
            perProject: [String: Money] = [:],
            defaultPerProject: Money? = nil,
            perCampaign: [String: Money] = [:],
            alertThreshold: Double = 0.8,
            trendWindow: Duration = .seconds(300)
        ) {
            self.global = global
            self.perProject = perProject
            self.defaultPerProject = defaultPerProject
            self.perCampaign = perCampaign
            self.alertThreshold = alertThreshold
            self.trendWindow = trendWindow
        }
    }

    /// Limits applied to every request before it is queued.
    public struct Validation: Sendable, Hashable {
        /// Default 10,000 characters.
        public var maxPromptLength: Int
        /// Default 600 s.
        public var maxAudioDuration: Duration
        /// Default 300 s.
        public var maxVideoDuration: Duration
        /// Default 10 s.
        public var defaultAudioDuration: Duration
        /// Default 5 s.
        public var defaultVideoDuration: Duration
        /// Default 720p.
        public var defaultResolution: Resolution

        public init(
            maxPromptLength: Int = 10_000,
            maxAudioDuration: Duration = .seconds(600),
            maxVideoDuration: Duration = .seconds(300),
            defaultAudioDuration: Duration = .seconds(10),
            defaultVideoDuration: Duration = .seconds(5),
            defaultResolution: Resolution = .p720
        ) {
            self.maxPromptLength = maxPromptLength
            self.maxAudioDuration = maxAudioDuration
            self.maxVideoDuration = maxVideoDuration
            self.defaultAudioDuration = defaultAudioDuration
            self.defaultVideoDuration = defaultVideoDuration
            self.defaultResolution = defaultResolution
        }
    }

    public var rateLimits: RateLimits
    public var batching: Batching
    public var resources: Resources
    public var balancing: Balancing
    public var caching: Caching
    public var retry: Retry
    public var budgets: Budgets
    public var validation: Validation
    /// How long a job lease lasts before another worker may rescue the job. Default 60 s.
    public var leaseDuration: Duration
    /// Seed of every random choice (jitter, weighted provider choice), for reproducible runs.
    public var randomSeed: UInt64

    public init(
        rateLimits: RateLimits = .init(),
        batching: Batching = .init(),
        resources: Resources = .init(),
        balancing: Balancing = .init(),
        caching: Caching = .init(),
        retry: Retry = .init(),
        budgets: Budgets = .init(),
        validation: Validation = .init(),
        leaseDuration: Duration = .seconds(60),
        randomSeed: UInt64 = 0x5eed
    ) {
        self.rateLimits = rateLimits
        self.batching = batching
        self.resources = resources
        self.balancing = balancing
        self.caching = caching
        self.retry = retry
        self.budgets = budgets
        self.validation = validation
        self.leaseDuration = leaseDuration
        self.randomSeed = randomSeed
    }
}
