package import Foundation
import NIOCore
import NIOHTTP1
package import Pargen
import ZIPFoundation

/// Azure AI Speech batch synthesis (`/texttospeech/batchsyntheses`, api-version 2024-04-01).
package struct AzureBatchClient: Sendable {
    static let apiVersion = "2024-04-01"
    let http: ProviderHTTP
    let apiKey: APIKey?

    package init(http: ProviderHTTP, apiKey: APIKey?) {
        self.http = http
        self.apiKey = apiKey
    }

    private var headers: HTTPHeaders {
        var headers = HTTPHeaders()
        if let apiKey { headers.add(name: "Ocp-Apim-Subscription-Key", value: apiKey.secret) }
        headers.add(name: "Content-Type", value: "application/json")
        return headers
    }

    private func url(_ id: String) -> String {
        http.url("/texttospeech/batchsyntheses/\(id)?api-version=\(Self.apiVersion)")
    }

    /// A valid synthesis id (3-64 of `[A-Za-z0-9._-]`, alphanumeric at both ends) from the members' keys.
    static func synthesisID(keys: [String]) -> String {
        "pargen-" + String(SHA256Hasher.hex(of: keys.joined(separator: "\n")).prefix(40))
    }

    func synthesize(
        _ members: [(ValidatedRequest, ProviderCallContext)],
        voice: String,
        format: MediaFormat
    )
        async throws -> [Result<ProviderOutput, GenerationError>]
    {
        guard let first = members.first else { return [] }
        let id = Self.synthesisID(keys: members.map { $0.1.idempotencyKey })
        let body: [String: JSONValue] = [
            "description": .string("pargen batch of \(members.count) lines"),
            "inputKind": .string("SSML"),
            "inputs": .array(
                members.map { .object(["content": .string(AzureSpeechProvider.ssml(text: $0.0.prompt, voice: voice))]) }
            ),
            "properties": .object([
                "outputFormat": .string(AzureSpeechProvider.outputFormat(format)), "concatenateResult": .bool(false),
                "timeToLiveInHours": .number(24),
            ]),
        ]
        var submit = headers
        submit.add(name: "Idempotency-Key", value: id)
        // The id is ours, so creating it is idempotent: "already exists" (409) means an earlier PUT created it,
        // which is the same synthesis, billed once. A PUT whose answer was lost on the way back is therefore sent
        // again under the same id (at most three times) instead of failing the members, whose retry would make a
        // new synthesis under new keys and pay for it again.
        let creates = 3
        var attempt = 1
        var answer: HTTPExchange
        while true {
            do {
                answer = try await http.send(
                    .PUT,
                    url(id),
                    headers: submit,
                    body: ByteBuffer(json: body),
                    answered: { for member in members { member.1.reportAnswered() } }
                )
                break
            } catch let error as GenerationError where error.code == .transient && attempt < creates {
                try await first.1.clock.sleep(for: .milliseconds(200 * Int64(attempt)))
                attempt += 1
            }
        }
        guard answer.isSuccess || answer.status == .conflict else { throw classify(answer) }
        for (index, member) in members.enumerated() { try await member.1.reportSubmitted(taskID: "\(id)#\(index + 1)") }
        let result = try await finish(id, context: first.1)
        defer { try? FileManager.default.removeItem(at: result) }
        var outputs: [Result<ProviderOutput, GenerationError>] = []
        for (index, member) in members.enumerated() {
            do {
                try Self.extract(index: index + 1, from: result, to: member.1.destination, provider: http.provider)
                outputs.append(
                    .success(
                        ProviderOutput(format: format, duration: member.0.duration, providerTaskID: "\(id)#\(index + 1)")
                    )
                )
            } catch {
                outputs.append(
                    .failure(
                        (error as? GenerationError)
                            ?? GenerationError(
                                .transient,
                                "could not extract input \(index + 1): \(error)",
                                provider: http.provider,
                                providerCode: "malformed"
                            )
                    )
                )
            }
        }
        // The results are ours now; the synthesis need not wait out its time to live.
        _ = try? await http.send(.DELETE, url(id), headers: headers)
        return outputs
    }

    /// Continues one member of a synthesis after a crash: polls it and takes that member's file.
    func resume(
        taskID: String,
        request: ValidatedRequest,
        format: MediaFormat,
        context: ProviderCallContext
    ) async throws
        -> ProviderOutput
    {
        let parts = taskID.split(separator: "#")
        guard parts.count == 2, let index = Int(parts[1]) else {
            throw GenerationError(.terminal, "\(taskID) is not a batch synthesis task", provider: http.provider)
        }
        let result = try await finish(String(parts[0]), context: context)
        defer { try? FileManager.default.removeItem(at: result) }
        try Self.extract(index: index, from: result, to: context.destination, provider: http.provider)
        return ProviderOutput(format: format, duration: request.duration, providerTaskID: taskID)
    }

    /// Polls a synthesis to its end and downloads its ZIP to a temporary file.
    private func finish(_ id: String, context: ProviderCallContext) async throws -> URL {
        let link = try await TaskPoller(http: http, context: context).run(taskID: id) {
            () async throws -> PollStep<String> in
            let answer = try await http.send(.GET, url(id), headers: headers)
            guard answer.isSuccess else { throw classify(answer) }
            guard let json = answer.json, let status = json["status"]?.string?.lowercased() else {
                throw GenerationError(
                    .transient,
                    "malformed synthesis",
                    provider: http.provider,
                    providerCode: "malformed"
                )
            }
            switch status {
            case "succeeded":
                guard let result = json["outputs"]?["result"]?.string else {
                    throw GenerationError(
                        .terminal,
                        "synthesis \(id) has no result",
                        provider: http.provider,
                        providerCode: "result_unavailable"
                    )
                }
                return .done(result)
            case "failed":
                let message = json["error"]?["message"]?.string ?? "batch synthesis failed"
                throw GenerationError(
                    .terminal,
                    "synthesis \(id) failed: \(message)",
                    provider: http.provider,
                    providerCode: json["error"]?["code"]?.string ?? "Failed"
                )
            default:
                // NotStarted, Running, or anything new.
                return .running(progress: nil, after: nil)
            }
        }
        context.reportDownloading()
        let zip = FileManager.default.temporaryDirectory.appendingPathComponent("pargen-azure-\(UUID().uuidString).zip")
        var fresh = link
        _ = try await http.fetchResult(
            taskID: id,
            to: zip,
            accepting: ["application/zip", "application/octet-stream", "application/x-zip"],
            clock: context.clock
        ) { attempt in
            // The SAS link expires with the synthesis' time to live; a fresh GET gives a fresh one.
            if attempt > 1, let json = try? await http.send(.GET, url(id), headers: headers).json,
                let result = json["outputs"]?["result"]?.string
            {
                fresh = result
            }
            return fresh
        }
        return zip
    }

    /// Copies `NNNN.wav` (or the entry of that number in any format) out of the result ZIP.
    package static func extract(index: Int, from zip: URL, to destination: URL, provider: String) throws {
        let archive: Archive
        do {
            archive = try Archive(url: zip, accessMode: .read)
        } catch {
            throw GenerationError(
                .transient,
                "result is not a ZIP archive",
                provider: provider,
                providerCode: "malformed"
            )
        }
        let stem = String(format: "%04d.", index)
        guard let entry = archive.first(where: { $0.path.hasPrefix(stem) && !$0.path.hasSuffix(".json") }) else {
            throw GenerationError(
                .terminal,
                "input \(index) of the synthesis failed: the result has no file \(stem)*",
                provider: provider,
                providerCode: "result_unavailable"
            )
        }
        try? FileManager.default.removeItem(at: destination)
        _ = try archive.extract(entry, to: destination)
    }

    package func classify(_ answer: HTTPExchange) -> GenerationError {
        let error = answer.json?["error"]
        let message = error?["message"]?.string ?? "HTTP \(answer.status.code)"
        return http.classify(answer, code: error?["code"]?.string, message: message)
    }
}
