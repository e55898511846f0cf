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
}
