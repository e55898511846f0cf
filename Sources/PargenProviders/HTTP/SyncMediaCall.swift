import Foundation
import NIOCore
import NIOHTTP1
import Pargen

/// A synchronous call whose answer is the media itself (OpenAI speech, ElevenLabs, Azure real-time),
/// streamed to disk; an answer that is not media is classified as the provider's error.
struct SyncMediaCall: Sendable {
    let http: ProviderHTTP
    let classify: @Sendable (HTTPExchange) -> GenerationError

    func post(
        _ url: String,
        headers: HTTPHeaders,
        body: ByteBuffer,
        context: ProviderCallContext,
        accepting: [String]
    ) async throws -> Int64 {
        let file = context.destination
        do {
            return try await http.download(
                url,
                method: .POST,
                headers: headers,
                body: body,
                to: file,
                accepting: accepting,
                // A synthesis that answers nothing within the call limit is treated as any hung call.
                timeout: http.connection.requestTimeout,
                answered: { context.reportAnswered() },
                billed: { context.reportBilled() }
            )
        } catch let failure as DownloadFailure {
            try? FileManager.default.removeItem(at: file)
            switch failure {
            case .transport(let error): throw error
            case .status(let exchange): throw classify(exchange)
            case .contentType(let type):
                throw GenerationError(
                    .transient,
                    "answered \(type) instead of audio",
                    provider: http.provider,
                    providerCode: "malformed"
                )
            case .tooLarge(let size):
                throw GenerationError(.terminal, "answer of \(size) bytes is over the limit", provider: http.provider)
            case .tooSlow(let received, let limit):
                throw GenerationError(
                    .transient,
                    "audio had \(received) bytes when the download limit of \(limit) ran out",
                    provider: http.provider,
                    providerCode: "timeout"
                )
            case .truncated(let received, let expected):
                throw GenerationError(
                    .transient,
                    "audio cut short at \(received) of \(expected.map(String.init) ?? "?") bytes",
                    provider: http.provider,
                    providerCode: "truncated"
                )
            }
        }
    }
}
