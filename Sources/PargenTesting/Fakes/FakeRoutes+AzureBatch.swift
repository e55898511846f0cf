// The fake's AzureBatch protocol: its routes, answers and errors, as FakeRoutes registers them.
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Pargen
import ZIPFoundation

extension FakeRoutes {
    static func azureError(
        _ status: HTTPResponse.Status,
        _ code: String,
        _ message: String,
        headers: HTTPFields = [:]
    ) -> Response {
        json(status, ["error": ["code": code, "message": message]], headers: headers)
    }

    static let azureBatchRefusals = Refusals(
        serverError: { azureError(.internalServerError, "InternalServerError", "An internal error occurred.") },
        malformed: { text(.created, "{\"id\":") },
        overRate: { wait in
            azureError(.tooManyRequests, "TooManyRequests", "Too many requests.", headers: retryAfter(wait))
        },
        overConcurrency: {
            azureError(.tooManyRequests, "TooManyRequests", "Too many concurrent syntheses.", headers: retryAfter(1))
        },
        policy: { azureError(.badRequest, "ContentPolicyViolation", "An input was rejected by content filtering.") }
    )

    func registerAzureBatch(_ router: Router<BasicRequestContext>) {
        router.put("/texttospeech/batchsyntheses/{id}") { request, context -> Response in
            guard keyOK(request, header: "Ocp-Apim-Subscription-Key") else {
                return Self.azureError(.unauthorized, "Unauthorized", "Access denied due to invalid subscription key.")
            }
            let id = try context.parameters.require("id")
            let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
            guard (3...64).contains(id.count), id.allSatisfy({ allowed.contains($0) }),
                id.first!.isLetter || id.first!.isNumber,
                id.last!.isLetter || id.last!.isNumber
            else {
                return Self.azureError(.badRequest, "BadRequest", "The synthesis id \(id) is invalid.")
            }
            let json = try await jsonBody(request) ?? [:]
            let inputs = (json["inputs"] as? [[String: Any]]) ?? []
            guard !inputs.isEmpty else { return Self.azureError(.badRequest, "BadRequest", "The inputs is required.") }
            guard inputs.count <= 10_000 else {
                return Self.azureError(.badRequest, "BadRequest", "The number of inputs exceeds 10000.")
            }
            let texts = inputs.map { input -> String in
                let content = (input["content"] as? String) ?? (input["text"] as? String) ?? ""
                return Self.ssmlText(content) ?? content
            }
            let format =
                ((json["properties"] as? [String: Any])?["outputFormat"] as? String) ?? "riff-24khz-16bit-mono-pcm"
            if state.batch(id) != nil {
                return Self.azureError(.conflict, "Conflict", "A batch synthesis with id \(id) already exists.")
            }
            let prompt = texts.joined(separator: "\n")
            if let refused = try await gate(request, "batchsyntheses", prompt, sync: false, Self.azureBatchRefusals) {
                return refused
            }
            let task = state.createTask(prompt: prompt, video: false, prefix: "batch-")
            _ = state.registerBatch(FakeBatch(id: id, taskID: task.id, texts: texts, format: format))
            try await hangIfChosen(prompt)
            return Self.json(.created, azureBatch(id: id, task: task, count: texts.count, format: format))
        }
        router.get("/texttospeech/batchsyntheses/{id}") { request, context -> Response in
            guard keyOK(request, header: "Ocp-Apim-Subscription-Key") else {
                return Self.azureError(.unauthorized, "Unauthorized", "Access denied due to invalid subscription key.")
            }
            try await pause(options.latencySeconds)
            if state.chance(options.pollErrorRate) { return Self.text(.serviceUnavailable, "upstream busy") }
            // A missing id answers 204, as Azure does.
            guard let batch = state.batch(try context.parameters.require("id")), let task = state.task(batch.taskID)
            else {
                return Response(status: .noContent)
            }
            return Self.json(.ok, azureBatch(id: batch.id, task: task, count: batch.count, format: batch.format))
        }
        router.delete("/texttospeech/batchsyntheses/{id}") { request, context -> Response in
            guard keyOK(request, header: "Ocp-Apim-Subscription-Key") else {
                return Self.azureError(.unauthorized, "Unauthorized", "Access denied due to invalid subscription key.")
            }
            _ = state.deleteBatch(try context.parameters.require("id"))
            return Response(status: .noContent)
        }
        // The result ZIP behind its (fake) SAS link: 0001.wav, 0002.wav, ... and summary.json.
        router.get("/batch-results/{id}") { _, context -> Response in
            guard let batch = state.batch(try context.parameters.require("id")), let task = state.task(batch.taskID),
                case .succeeded = phase(task)
            else {
                return Self.text(.notFound, "<Error><Code>BlobNotFound</Code></Error>")
            }
            switch state.useLink(batch.taskID) {
            case .expired, nil:
                return Self.text(
                    .forbidden,
                    "<Error><Code>AuthenticationFailed</Code><Message>Signature not valid in the specified time frame</Message></Error>"
                )
            case .truncated, .trickled, .whole: break
            }
            let zip = try Self.batchZip(texts: batch.texts, bytes: options.audioBytes, format: batch.format)
            return Response(
                status: .ok,
                headers: [.contentType: "application/zip"],
                body: .init(byteBuffer: ByteBuffer(bytes: zip))
            )
        }
    }

    func azureBatch(id: String, task: FakeTask, count: Int, format: String) -> [String: Any] {
        var object: [String: Any] = [
            "id": id, "inputKind": "SSML", "createdDateTime": ISO8601DateFormatter().string(from: Date()),
            "properties": ["outputFormat": format, "timeToLiveInHours": 24],
        ]
        switch phase(task) {
        case .waiting: object["status"] = "NotStarted"
        case .running: object["status"] = "Running"
        case .succeeded:
            object["status"] = "Succeeded"
            object["outputs"] = ["result": "\(base)/batch-results/\(id)?sv=2024&sig=fake"]
            let failed = state.batch(id)?.texts.filter { $0.contains("[[fail]]") }.count ?? 0
            object["properties"] = [
                "outputFormat": format, "succeededAudioCount": count - failed, "failedAudioCount": failed,
                "billingDetails": ["neuralCharacters": task.prompt.count],
            ]
        case .failed, .cancelled:
            object["status"] = "Failed"
            object["error"] = [
                "code": "ContentPolicyViolation", "message": "An input was rejected by content filtering.",
            ]
        }
        return object
    }

    /// The results archive: file N holds the format's header, then input N's text, then padding to `bytes`, so
    /// that a client that splits the archive wrongly hands a job another input's audio, and a test can tell.
    static func batchZip(texts: [String], bytes: Int, format: String) throws -> Data {
        let archive = try Archive(accessMode: .create)
        let wav = format.hasPrefix("riff")
        // An input containing [[fail]] failed on its own (as one input of a batch can): it has no file.
        for (offset, text) in texts.enumerated() where !text.contains("[[fail]]") {
            let index = offset + 1
            let head = signature(wav ? "wav" : "mp3") + Array(text.utf8)
            let content = Data(head + [UInt8](repeating: 0x55, count: max(0, bytes - head.count)))
            try archive.addEntry(
                with: String(format: "%04d.%@", index, wav ? "wav" : "mp3"),
                type: .file,
                uncompressedSize: Int64(content.count),
                compressionMethod: .deflate
            ) { position, size in content.subdata(in: Int(position)..<Int(position) + size) }
        }
        let summary = Data(#"{"jobID":"fake","status":"Succeeded"}"#.utf8)
        try archive.addEntry(with: "summary.json", type: .file, uncompressedSize: Int64(summary.count)) {
            position,
            size in
            summary.subdata(in: Int(position)..<Int(position) + size)
        }
        return archive.data ?? Data()
    }
}
