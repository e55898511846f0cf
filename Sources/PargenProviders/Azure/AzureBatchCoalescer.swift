import Pargen

/// Gathers compatible speech lines that reach the Azure adapter together and, when there are at least
/// `threshold` of them, makes them one batch synthesis (`PUT /texttospeech/batchsyntheses/{id}`) instead of one
/// real-time call each: one request, one poll, one ZIP with every line, split back to each job. Smaller groups
/// go real-time.
///
/// Lines the engine admitted as one batch (``ProviderCallContext/batch``) are grouped by that batch: the group is
/// made as soon as every member has either arrived or left the batch without calling (the engine reports each
/// departure: a budget refused it, its lease was lost), however long the engine took to bring them (on a loaded
/// machine, seconds). `memberWait` is only a backstop for a member that neither comes nor is reported gone.
/// Lines without a batch are grouped by voice and format for `gather` after the first.
///
/// The synthesis id is chosen here (Azure lets the client choose it), derived from the members' idempotency
/// keys, and each member's task id is `ID#N`, the N-th file of the result, so a job resumed after a crash
/// polls the same synthesis and takes its own file from the ZIP.
actor AzureBatchCoalescer {
    enum Route: Sendable {
        case realTime
        case done(ProviderOutput)
    }

    struct Member {
        var request: ValidatedRequest
        var context: ProviderCallContext
        var continuation: CheckedContinuation<Route, any Error>
    }

    private struct Group {
        var token: UInt64
        var voice: String
        var format: MediaFormat
        var members: [Member] = []
    }

    private let batch: AzureBatchClient
    private let threshold: Int
    private let maxInputs: Int
    private let gather: Duration
    private let memberWait: Duration
    private var groups: [String: Group] = [:]
    /// Members of each engine batch that have arrived so far, in any of its groups.
    private var arrived: [String: Int] = [:]
    /// Engine batches whose departures this coalescer listens to.
    private var listening: Set<String> = []
    private var nextToken: UInt64 = 0

    init(
        batch: AzureBatchClient,
        threshold: Int,
        maxInputs: Int = 1000,
        gather: Duration = .milliseconds(150),
        memberWait: Duration = .seconds(120)
    ) {
        self.batch = batch
        self.threshold = threshold
        self.maxInputs = maxInputs
        self.gather = gather
        self.memberWait = memberWait
    }

    /// Waits for the group this line belongs to; returns `.realTime` when the line should be synthesised on
    /// its own, or the finished output when it went in a batch.
    func join(
        _ request: ValidatedRequest,
        voice: String,
        format: MediaFormat,
        context: ProviderCallContext
    ) async throws
        -> Route
    {
        let engineBatch = context.batch
        let key = "\(engineBatch?.id ?? "")|\(voice)|\(format.name)"
        return try await withCheckedThrowingContinuation { continuation in
            let member = Member(request: request, context: context, continuation: continuation)
            if groups[key] != nil {
                groups[key]!.members.append(member)
            } else {
                nextToken += 1
                groups[key] = Group(token: nextToken, voice: voice, format: format, members: [member])
                let (clock, token, wait) = (context.clock, nextToken, engineBatch == nil ? gather : memberWait)
                Task {
                    try? await clock.sleep(for: wait)
                    self.flush(key, token: token)
                }
            }
            if groups[key]!.members.count >= maxInputs { flush(key, token: groups[key]!.token) }
            if let engineBatch {
                arrived[engineBatch.id, default: 0] += 1
                if listening.insert(engineBatch.id).inserted {
                    engineBatch.whenMemberLeaves { Task { await self.memberLeft(engineBatch) } }
                }
                flushIfComplete(engineBatch)
            }
        }
    }

    private func memberLeft(_ engineBatch: BatchMembership) {
        flushIfComplete(engineBatch)
    }

    /// Once every member of the engine batch has arrived or left, its groups (one per voice and format) go.
    private func flushIfComplete(_ engineBatch: BatchMembership) {
        guard let count = arrived[engineBatch.id], count + engineBatch.departed >= engineBatch.size else { return }
        arrived[engineBatch.id] = nil
        listening.remove(engineBatch.id)
        for (other, group) in groups where other.hasPrefix(engineBatch.id + "|") {
            flush(other, token: group.token)
        }
    }

    private func flush(_ key: String, token: UInt64) {
        guard let group = groups[key], group.token == token else { return }
        groups[key] = nil
        if let id = group.members.first?.context.batch?.id, !groups.keys.contains(where: { $0.hasPrefix(id + "|") }) {
            arrived[id] = nil
            listening.remove(id)
        }
        let members = group.members
        guard members.count >= threshold else {
            for member in members { member.continuation.resume(returning: .realTime) }
            return
        }
        let batch = self.batch
        Task {
            do {
                let outputs = try await batch.synthesize(
                    members.map { ($0.request, $0.context) },
                    voice: group.voice,
                    format: group.format
                )
                // Each member ends on its own: one input that failed does not take the others' files with it.
                for (member, output) in zip(members, outputs) {
                    switch output {
                    case .success(let output): member.continuation.resume(returning: .done(output))
                    case .failure(let error): member.continuation.resume(throwing: error)
                    }
                }
            } catch {
                for member in members { member.continuation.resume(throwing: error) }
            }
        }
    }
}
