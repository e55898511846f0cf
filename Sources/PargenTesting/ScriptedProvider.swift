import Foundation
public import Pargen

/// A provider whose every answer the test decides, and which logs every call.
///
/// On success it writes a small valid WAV (audio) or GIF (video) file, so the engine's integrity checks run
/// for real.
public final class ScriptedProvider: GenerationProvider, Sendable {
    /// What one call does.
    public enum Step: Sendable {
        /// Succeeds after `latency`.
        case succeed(latency: Duration = .milliseconds(10), cost: Money? = nil)
        /// Throws `error` after `latency`. With `afterSubmit`, the task id is reported first.
        case fail(GenerationError, latency: Duration = .milliseconds(1), afterSubmit: Bool = false)
        /// Writes an empty file (a broken download).
        case emptyFile
    }

    /// One call as the provider saw it.
    public struct Call: Sendable, Hashable {
        public var time: Duration
        public var requestID: String
        public var user: String
        public var project: String
        public var attempt: Int
        public var idempotencyKey: String
    }

    public let descriptor: ProviderDescriptor
    private let script: @Sendable (ValidatedRequest, Int) -> Step
    private let log = Locked([Call]())
    private let concurrency = Locked((current: 0, peak: 0))

    /// - Parameter script: Decides each call from the request and the provider's own call count (0-based).
    public init(
        name: String,
        kinds: Set<GenerationKind> = [.audio, .video],
        pricing: ProviderPricing = ProviderPricing(perRequest: .cents(1)),
        quota: ProviderQuota = ProviderQuota(),
        maxResolution: Resolution = .p1080,
        script: @escaping @Sendable (ValidatedRequest, Int) -> Step = { _, _ in .succeed() }
    ) {
        descriptor = ProviderDescriptor(
            name: name,
            capabilities: ProviderCapabilities(
                kinds: kinds,
                audioFormats: kinds.contains(.audio) ? [.wav] : [],
                videoFormats: kinds.contains(.video) ? [.gif] : [],
                maxResolution: kinds.contains(.video) ? maxResolution : nil
            ),
            pricing: pricing,
            quota: quota
        )
        self.script = script
    }

    /// Every call so far, in order.
    public var calls: [Call] { log.value }
    /// Most calls in progress at once.
    public var peakConcurrency: Int { concurrency.value.peak }

    public func generate(_ request: ValidatedRequest, context: ProviderCallContext) async throws -> ProviderOutput {
        let index = log.withLock { calls -> Int in
            calls.append(
                Call(
                    time: context.clock.now,
                    requestID: request.id,
                    user: request.user,
                    project: request.project,
                    attempt: context.attempt,
                    idempotencyKey: context.idempotencyKey
                )
            )
            return calls.count - 1
        }
        concurrency.withLock { value in
            value.current += 1
            value.peak = max(value.peak, value.current)
        }
        defer { concurrency.withLock { $0.current -= 1 } }
        let taskID = "\(descriptor.name)-task-\(index)"
        switch script(request, index) {
        case .succeed(let latency, let cost):
            try await context.reportSubmitted(taskID: taskID)
            try await context.clock.sleep(for: latency)
            try Self.writeMedia(request, to: context.destination)
            return ProviderOutput(
                format: request.kind == .audio ? .wav : .gif,
                duration: request.duration,
                providerTaskID: taskID,
                reportedCost: cost
            )
        case .fail(let error, let latency, let afterSubmit):
            if afterSubmit { try await context.reportSubmitted(taskID: taskID) }
            try await context.clock.sleep(for: latency)
            throw error
        case .emptyFile:
            try await context.reportSubmitted(taskID: taskID)
            _ = FileManager.default.createFile(atPath: context.destination.path, contents: Data())
            return ProviderOutput(
                format: request.kind == .audio ? .wav : .gif,
                duration: request.duration,
                providerTaskID: taskID
            )
        }
    }

    static func writeMedia(_ request: ValidatedRequest, to url: URL) throws {
        var data = Data()
        switch request.kind {
        case .audio:
            // A 44-byte WAV header with no samples is enough to be a valid WAV file.
            data.append(contentsOf: Array("RIFF".utf8))
            data.append(contentsOf: [36, 0, 0, 0])
            data.append(contentsOf: Array("WAVEfmt ".utf8))
            data.append(contentsOf: [16, 0, 0, 0, 1, 0, 1, 0, 0xC0, 0x5D, 0, 0, 0x80, 0xBB, 0, 0, 2, 0, 16, 0])
            data.append(contentsOf: Array("data".utf8))
            data.append(contentsOf: [0, 0, 0, 0])
        case .video:
            data.append(contentsOf: Array("GIF89a".utf8))
            data.append(contentsOf: [1, 0, 1, 0, 0, 0, 0, 0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 2, 0x44, 0x01, 0, 0x3B])
        }
        data.append(contentsOf: Array(request.prompt.utf8))
        try data.write(to: url)
    }
}
