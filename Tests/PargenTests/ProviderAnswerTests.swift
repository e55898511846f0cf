import Foundation
import Pargen
import PargenProviders
import PargenTesting
import Testing

/// Provider answers that the protocol fakes never give on their own, each from a scripted server speaking the
/// provider's protocol: what the adapter and the engine make of them, and how many calls reached the provider.
@Suite(.timeLimit(.minutes(2))) struct ProviderAnswerTests {
    static let mp4 = Data([0, 0, 0, 0x18] + Array("ftypisom".utf8) + [0, 0, 2, 0] + Array("isomiso2".utf8))
        + Data(repeating: 0x55, count: 4096)

    func adapter(_ wire: ProviderProtocol, _ server: ScriptedHTTPServer) -> any GenerationProvider {
        var settings = ProviderSettings.defaults(for: wire)
        settings.baseURL = server.baseURL
        settings.pollInterval = .milliseconds(10)
        settings.requestTimeout = .seconds(5)
        settings.taskTimeout = .seconds(20)
        settings.quota = ProviderQuota()
        return PargenSetup.adapter(
            settings,
            connection: settings.connection(apiKey: APIKey("sk-scripted"), httpClient: sharedTestHTTPClient)
        )
    }

    func posts(_ server: ScriptedHTTPServer) -> [ScriptedHTTPServer.Received] {
        server.received.filter { $0.method == "POST" }
    }

    /// A 429 with `insufficient_quota` is a billing stop, not throttling: no wait fixes it, so the job is
    /// dead-lettered at once, after one call (a snooze would call again and again).
    @Test func openAIInsufficientQuotaIsTerminalAfterOneCall() async throws {
        let server = try await ScriptedHTTPServer.start { _, _ in
            .json(
                ["error": ["message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"]],
                status: 429
            )
        }
        let (results, _) = try await runAgainstFakes([adapter(.openai, server)], [.audio(prompt: "no credit left")])
        #expect(results[0].error?.code == .terminal)
        #expect(results[0].error?.providerCode == "insufficient_quota")
        #expect(posts(server).count == 1)
        await server.stop()
    }

    /// A 429 while polling a submitted video is waited out and polled again; the video is never submitted again.
    /// An unknown task state counts as running.
    @Test func openAIPollThrottledAndUnknownStatesNeverResubmit() async throws {
        let server = try await ScriptedHTTPServer.start { request, history in
            switch (request.method, request.path) {
            case ("POST", "/v1/videos"): return .json(["id": "video_1", "object": "video", "status": "queued"])
            case ("GET", "/v1/videos/video_1"):
                let polls = history.filter { $0.path == "/v1/videos/video_1" }.count
                if polls == 1 { return .json(["error": ["message": "Rate limit", "code": "rate_limit_exceeded"]], status: 429, headers: ["Retry-After": "0.05"]) }
                if polls <= 3 { return .json(["id": "video_1", "status": "upscaling_beta", "progress": 50]) }
                return .json(["id": "video_1", "status": "completed", "progress": 100])
            case ("GET", "/v1/videos/video_1/content"):
                return ScriptedHTTPServer.Answer(headers: ["Content-Type": "video/mp4"], body: Self.mp4)
            default: return .json(["error": ["message": "not found"]], status: 404)
            }
        }
        let (results, _) = try await runAgainstFakes(
            [adapter(.openai, server)],
            [.video(prompt: "polled through a 429", duration: .seconds(4), resolution: Resolution(width: 1280, height: 720))]
        )
        #expect(results[0].succeeded, "\(String(describing: results[0].error))")
        #expect(posts(server).count == 1)
        #expect(server.received.filter { $0.path == "/v1/videos/video_1" }.count >= 4)
        #expect(try Data(contentsOf: try #require(results[0].artifact).url) == Self.mp4)
        await server.stop()
    }

    /// A result served with the wrong content type (an HTML error page with status 200) is never stored as the
    /// video: the download is tried again, and the job fails as result_unavailable without a second submission.
    @Test func aResultWithTheWrongContentTypeIsNotAccepted() async throws {
        let server = try await ScriptedHTTPServer.start { request, _ in
            switch (request.method, request.path) {
            case ("POST", "/v1/videos"): return .json(["id": "video_9", "status": "queued"])
            case ("GET", "/v1/videos/video_9"): return .json(["id": "video_9", "status": "completed"])
            case ("GET", "/v1/videos/video_9/content"):
                return ScriptedHTTPServer.Answer(headers: ["Content-Type": "text/html"], body: Data("<html>oops</html>".utf8))
            default: return .json([String: String](), status: 404)
            }
        }
        let (results, _) = try await runAgainstFakes(
            [adapter(.openai, server)],
            [.video(prompt: "served as html", duration: .seconds(4), resolution: Resolution(width: 1280, height: 720))]
        )
        #expect(results[0].artifact == nil)
        #expect(results[0].error?.providerCode == "result_unavailable", "\(String(describing: results[0].error))")
        #expect(results[0].error?.message.contains("text/html") == true, "\(String(describing: results[0].error))")
        #expect(posts(server).count == 1)
        await server.stop()
    }

    /// Runway `INTERNAL.*` failures may pass on a new task: the job is submitted again under a new attempt key,
    /// and succeeds; its history records the internal failure.
    @Test func runwayInternalFailureIsTriedAgainOnANewTask() async throws {
        let server = try await ScriptedHTTPServer.start { request, history in
            let creates = history.filter { $0.method == "POST" }.count
            switch (request.method, request.path) {
            case ("POST", "/v1/text_to_video"): return .json(["id": "task-\(creates)"])
            case ("GET", "/v1/tasks/task-1"):
                return .json(["id": "task-1", "status": "FAILED", "failure": "An unexpected error occurred.", "failureCode": "INTERNAL.BAD_OUTPUT.CODE01"])
            case ("GET", "/v1/tasks/task-2"):
                return .json(["id": "task-2", "status": "SUCCEEDED", "output": ["http://127.0.0.1:\(Self.port(history))/out/2.mp4"]])
            case ("GET", "/out/2.mp4"): return ScriptedHTTPServer.Answer(headers: ["Content-Type": "video/mp4"], body: Self.mp4)
            default: return .json([String: String](), status: 404)
            }
        }
        Self.ports.withLock { $0 = server.port }
        let (results, _) = try await runAgainstFakes(
            [adapter(.runway, server)],
            [.video(prompt: "internal then fine", duration: .seconds(5), resolution: .p720)]
        )
        #expect(results[0].succeeded, "\(String(describing: results[0].error)) \(server.received.prefix(4).map { "\($0.method) \($0.path)" })")
        #expect(results[0].attempts == 2)
        #expect(results[0].errorHistory.map { $0.providerCode } == ["INTERNAL.BAD_OUTPUT.CODE01"])
        let keys = posts(server).compactMap(\.idempotencyKey)
        #expect(keys.count == 2 && Set(keys).count == 2, "two tasks, each under its own attempt key: \(keys)")
        await server.stop()
    }

    static let ports = Locked(0)
    static func port(_: [ScriptedHTTPServer.Received]) -> Int { ports.value }

    /// MiniMax reports token-rate (1039) and rate-growth (2045) limits on HTTP 200: both are throttling, snoozed
    /// without spending an attempt, and the call succeeds once the provider lets it through.
    @Test func miniMax1039And2045AreThrottling() async throws {
        let hex = (Array("RIFF".utf8) + [0, 0, 0, 0] + Array("WAVEfmt ".utf8) + [UInt8](repeating: 0x55, count: 64))
            .map { String(format: "%02x", $0) }.joined()
        let server = try await ScriptedHTTPServer.start { request, history in
            guard request.path == "/v1/t2a_v2" else { return .json([String: String](), status: 404) }
            switch history.count {
            case 1: return .json(["base_resp": ["status_code": 1039, "status_msg": "token per minute limit exceeded"]])
            case 2: return .json(["base_resp": ["status_code": 2045, "status_msg": "rate limit exceeded"]])
            default:
                return .json([
                    "data": ["audio": hex, "status": 2],
                    "extra_info": ["audio_length": 1000, "usage_characters": 11, "audio_format": "wav"],
                    "base_resp": ["status_code": 0, "status_msg": "success"],
                ])
            }
        }
        let (results, stats) = try await runAgainstFakes(
            [adapter(.minimax, server)],
            [.audio(prompt: "slow down!!", format: .wav)]
        )
        #expect(results[0].succeeded, "\(String(describing: results[0].error))")
        #expect(results[0].attempts == 1, "throttling spends no attempt")
        #expect(results[0].errorHistory.map { $0.providerCode } == ["1039", "2045"])
        #expect(results[0].errorHistory.allSatisfy { $0.code == GenerationError.Code.rateLimited })
        #expect(stats.providers["minimax"]?.throttled == 2)
        #expect(posts(server).count == 3)
        await server.stop()
    }

    /// MiniMax's answer says how many characters it billed and how long the audio is; figures that cannot be
    /// true (negative) are not taken: the estimate is charged and the request's length stands. A count of
    /// -100 characters credited the ledger.
    @Test func miniMaxFiguresThatCannotBeTrueAreNotTaken() async throws {
        let hex = (Array("RIFF".utf8) + [0, 0, 0, 0] + Array("WAVEfmt ".utf8) + [UInt8](repeating: 0x55, count: 64))
            .map { String(format: "%02x", $0) }.joined()
        let server = try await ScriptedHTTPServer.start { request, _ in
            guard request.path == "/v1/t2a_v2" else { return .json([String: String](), status: 404) }
            return .json([
                "data": ["audio": hex, "status": 2],
                "extra_info": ["audio_length": -5000, "usage_characters": -100, "audio_format": "wav"],
                "base_resp": ["status_code": 0, "status_msg": "success"],
            ])
        }
        let (results, _) = try await runAgainstFakes(
            [adapter(.minimax, server)],
            [.audio(prompt: "figures", duration: .seconds(3), format: .wav)]
        )
        #expect(results[0].succeeded, "\(String(describing: results[0].error))")
        #expect(results[0].actualCost > .zero, "\(results[0].actualCost)")
        #expect(results[0].artifact?.duration == .seconds(3))
        await server.stop()
    }
}
