import Foundation
import Logging
import Synchronization

/// The intake stage: checks each request (its fields, and that a configured provider can take it), queues the
/// valid ones in one store call, and answers each invalid one at once with a failure naming the field. A request
/// refused here never becomes a job in the store.
struct IntakeStage: EnginePart {
    let core: EngineCore
    let validator: RequestValidator
    let balancer: LoadBalancer

    /// Validates and queues requests. Returns one job id per request, in order.
    ///
    /// A request that fails validation gets a job id too; its result, a failure naming the field, is ready at
    /// once (see ``ParallelGenerator/result(for:)`` and ``ParallelGenerator/results()``).
    func submit(_ requests: [GenerationRequest]) async throws -> [JobID] {
        var ids = [JobID?](repeating: nil, count: requests.count)
        var valid: [(Int, ValidatedRequest)] = []
        var invalid: [(Int, GenerationResult)] = []
        let base = core.state.withLock { state -> Int in
            defer { state.submittedCount += requests.count }
            return state.submittedCount
        }
        for (index, request) in requests.enumerated() {
            let fallbackID = "request-\(base + index + 1)"
            do throws(GenerationError) {
                let checked = try validator.validate(request, fallbackID: fallbackID)
                if let refused = balancer.refusedField(for: checked) {
                    throw GenerationError(.noCapableProvider, refused.reason, field: refused.field)
                }
                valid.append((index, checked))
            } catch {
                let id = JobID("invalid-\(base + index + 1)")
                ids[index] = id
                let requestID = request.id.isEmpty ? fallbackID : request.id
                invalid.append(
                    (
                        index,
                        GenerationResult(
                            requestID: requestID,
                            jobID: id,
                            outcome: .failure(error),
                            provider: nil,
                            actualCost: .zero,
                            attempts: 0,
                            errorHistory: [error]
                        )
                    )
                )
            }
        }
        let outcomes = try await store.enqueue(valid.map(\.1))
        storeChanged()
        for ((index, request), outcome) in zip(valid, outcomes) {
            if outcome.existing, let refused = try await reusedKey(request, existing: outcome.jobID) {
                let id = JobID("invalid-\(base + index + 1)")
                ids[index] = id
                invalid.append(
                    (
                        index,
                        GenerationResult(
                            requestID: request.id,
                            jobID: id,
                            outcome: .failure(refused),
                            provider: nil,
                            actualCost: .zero,
                            attempts: 0,
                            errorHistory: [refused]
                        )
                    )
                )
                continue
            }
            ids[index] = outcome.jobID
            logger.debug(
                "job queued",
                metadata: [
                    LoggingKeys.jobID: "\(outcome.jobID)", LoggingKeys.requestID: "\(request.id)",
                    LoggingKeys.status: "\(outcome.existing ? "known" : "queued")",
                ]
            )
            if !outcome.existing {
                publish(
                    .progress(
                        ProgressUpdate(requestID: request.id, jobID: outcome.jobID, status: .queued, time: clock.now)
                    )
                )
            }
        }
        for (_, result) in invalid {
            core.state.withLock { $0.invalid[result.jobID!] = result }
            publish(
                .progress(
                    ProgressUpdate(
                        requestID: result.requestID,
                        jobID: result.jobID!,
                        status: .failed,
                        message: result.error?.description,
                        time: clock.now
                    )
                )
            )
            finishWaiters(result)
        }
        wakeup.signal()
        return ids.map { $0! }
    }

    /// The refusal of a request whose idempotency key the store already holds for a job that asks for different
    /// media (another prompt, kind, duration, format, resolution, voice, model or pinned provider): a key names
    /// one request, so it is an error, as Stripe answers a key reused with other parameters, not the other job's
    /// result passed off as this one's. The keys of campaign lines (``CampaignRunner/isLineKey(_:)``) hold a hash
    /// of the line's fields and are not read again: resuming a campaign of 100,000 lines reads no job for them.
    func reusedKey(_ request: ValidatedRequest, existing id: JobID) async throws -> GenerationError? {
        guard let key = request.idempotencyKey, !CampaignRunner.isLineKey(key),
            let stored = try await store.job(id)?.request,
            !stored.asksForTheSameMedia(as: request)
        else { return nil }
        return GenerationError(
            .invalidRequest,
            "\"\(key)\" is already the key of job \(id) (request \(stored.id)) in project \(request.project), which asks "
                + "for different media: an idempotency key names one request",
            field: "idempotency_key"
        )
    }
}
