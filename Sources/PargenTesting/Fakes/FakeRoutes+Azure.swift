// The fake's Azure protocol: its routes, answers and errors, as FakeRoutes registers them.
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Pargen
import ZIPFoundation

extension FakeRoutes {
    /// Real-time speech refuses with bare statuses.
    static let azureRefusals = Refusals(
        serverError: { Response(status: .serviceUnavailable) },
        malformed: { text(.ok, "<html>") },
        overRate: { wait in Response(status: .tooManyRequests, headers: retryAfter(wait)) },
        overConcurrency: { Response(status: .tooManyRequests, headers: retryAfter(1)) },
        policy: { Response(status: .badRequest) }
    )

    func registerAzure(_ router: Router<BasicRequestContext>) {
        router.post("/cognitiveservices/v1") { request, _ -> Response in
            guard keyOK(request, header: "Ocp-Apim-Subscription-Key") else { return Response(status: .unauthorized) }
            guard Self.header(request, "Content-Type")?.hasPrefix("application/ssml+xml") == true else {
                return Response(status: .unsupportedMediaType)
            }
            guard let outputFormat = Self.header(request, "X-Microsoft-OutputFormat") else {
                return Response(status: .badRequest)
            }
            let ssml = String(decoding: try await body(request), as: UTF8.self)
            guard let text = Self.ssmlText(ssml) else { return Response(status: .badRequest) }
            if let refused = try await gate(request, "cognitiveservices/v1", text, sync: true, Self.azureRefusals) {
                return refused
            }
            defer { state.finishSync() }
            try await answerLatency(text)
            let (type, format) =
                outputFormat.hasPrefix("riff")
                ? ("audio/x-wav", "wav")
                : outputFormat.contains("mp3")
                    ? ("audio/mpeg", "mp3")
                    : outputFormat.hasPrefix("ogg") ? ("audio/ogg", "ogg") : ("audio/pcm", "pcm")
            return media(video: false, contentType: type, format: format)
        }
        registerAzureBatch(router)
        router.get("/cognitiveservices/voices/list") { request, _ -> Response in
            guard keyOK(request, header: "Ocp-Apim-Subscription-Key") else { return Response(status: .unauthorized) }
            let data =
                (try? JSONSerialization.data(withJSONObject: [
                    ["ShortName": "en-US-AvaMultilingualNeural", "Locale": "en-US"]
                ])) ?? Data()
            return Response(
                status: .ok,
                headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(bytes: data))
            )
        }
    }

    /// The text inside the SSML's `<voice>` element, unescaped.
    static func ssmlText(_ ssml: String) -> String? {
        guard let open = ssml.range(of: "<voice"), let close = ssml.range(of: "</voice>"),
            let tagEnd = ssml[open.upperBound...].firstIndex(of: ">")
        else { return nil }
        let inner = ssml[ssml.index(after: tagEnd)..<close.lowerBound]
        return inner.replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(of: "&gt;", with: ">")
            .replacingOccurrences(of: "&apos;", with: "'").replacingOccurrences(of: "&quot;", with: "\"")
            .replacingOccurrences(of: "&amp;", with: "&")
    }
}

// MARK: - Azure batch synthesis
