/// One job as the batcher sees it.
public struct BatchCandidate: Sendable, Hashable {
    public var jobID: JobID
    public var request: ValidatedRequest
    /// Estimated cost on the provider the job is likely to use.
    public var estimatedCost: Money

    public init(jobID: JobID, request: ValidatedRequest, estimatedCost: Money) {
        self.jobID = jobID
        self.request = request
        self.estimatedCost = estimatedCost
    }
}

/// A group of compatible jobs sent together. Duplicates (same fingerprint as a member) ride along for free.
public struct Batch: Sendable, Hashable {
    public var members: [BatchCandidate]
    /// Jobs whose fingerprint equals a member's: they are served by that member's generation.
    public var duplicates: [BatchCandidate]
    public var totalCost: Money
    public var totalDuration: Duration

    public var allJobs: [BatchCandidate] { members + duplicates }
    public var priority: GenerationPriority { members.map(\.request.priority).max() ?? .normal }
}

/// Groups compatible jobs under count, cost and duration caps.
///
/// Hard compatibility: the same kind, pinned provider and model, and priorities at most one step apart.
/// Beyond that, a weighted similarity score (format, voice or resolution, duration) must reach the
/// threshold. Jobs are taken by priority, then in arrival order, and each joins the first open batch that
/// accepts it.
public struct Batcher: Sendable {
    public var configuration: PargenConfiguration.Batching

    public init(configuration: PargenConfiguration.Batching) { self.configuration = configuration }

    /// Weighted similarity of two requests in 0...1; 0 when they can never share a batch.
    public static func similarity(_ a: ValidatedRequest, _ b: ValidatedRequest) -> Double {
        guard a.kind == b.kind, a.provider == b.provider, a.model == b.model,
            abs(a.priority.rawValue - b.priority.rawValue) <= 1
        else { return 0 }
        var score = 0.5  // kind, provider, model and priority band agree
        if a.format == b.format { score += 0.2 }
        switch a.kind {
        case .audio: if a.voice == b.voice { score += 0.15 }
        case .video: if a.resolution == b.resolution { score += 0.15 }
        }
        let longer = max(a.duration, b.duration)
        let closeness = longer == .zero ? 1 : 1 - abs((a.duration - b.duration) / longer)
        score += 0.1 * closeness
        if a.priority == b.priority { score += 0.05 }
        return min(1, score)
    }

    public func makeBatches(_ candidates: [BatchCandidate]) -> [Batch] {
        let ordered = candidates.enumerated().sorted { lhs, rhs in
            lhs.element.request.priority != rhs.element.request.priority
                ? lhs.element.request.priority > rhs.element.request.priority : lhs.offset < rhs.offset
        }.map(\.element)
        var batches: [Batch] = []
        var byFingerprint: [String: Int] = [:]
        for candidate in ordered {
            if let index = byFingerprint[candidate.request.fingerprint] {
                batches[index].duplicates.append(candidate)
                continue
            }
            let index = batches.firstIndex { batch in
                batch.members.count < configuration.maxJobsPerBatch
                    && batch.totalCost + candidate.estimatedCost <= configuration.maxTotalCostPerBatch
                    && batch.totalDuration + candidate.request.duration <= configuration.maxTotalDurationPerBatch
                    && Self.similarity(batch.members[0].request, candidate.request) >= configuration.similarityThreshold
            }
            if let index {
                batches[index].members.append(candidate)
                batches[index].totalCost = batches[index].totalCost + candidate.estimatedCost
                batches[index].totalDuration += candidate.request.duration
                byFingerprint[candidate.request.fingerprint] = index
            } else {
                byFingerprint[candidate.request.fingerprint] = batches.count
                batches.append(
                    Batch(
                        members: [candidate],
                        duplicates: [],
                        totalCost: candidate.estimatedCost,
                        totalDuration: candidate.request.duration
                    )
                )
            }
        }
        // Longest work first within a priority (the classic rule for the shortest makespan): video tasks run for
        // minutes and hold a provider's scarce slots, speech lines take seconds, so videos are sent first.
        return batches.enumerated().sorted { lhs, rhs in
            let (a, b) = (lhs.element.members[0].request, rhs.element.members[0].request)
            if a.priority != b.priority { return a.priority > b.priority }
            if a.kind != b.kind { return a.kind == .video }
            return lhs.offset < rhs.offset
        }.map(\.element)
    }
}

/// What the batcher has done so far.
public struct BatcherStats: Sendable, Hashable, Codable {
    public var batchesFormed = 0
    public var jobsBatched = 0
    public var duplicatesCollapsed = 0
    public var batchesInFlight = 0
    public var largestBatch = 0
    public var averageBatchSize: Double { batchesFormed == 0 ? 0 : Double(jobsBatched) / Double(batchesFormed) }
    public init() {}
}
