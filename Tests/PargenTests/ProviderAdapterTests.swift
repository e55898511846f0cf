import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import Pargen
import PargenProviders
import PargenTesting
import Synchronization
import Testing

/// A fake provider on 127.0.0.1 and the adapter pointed at it.
struct FakeBench {
    static let key = "sk-test-0123456789abcdef"
    let fake: FakeProviderServer
    let provider: any GenerationProvider
    let settings: ProviderSettings

    static func start(
        _ wire: ProviderProtocol,
        options: (inout FakeProviderOptions) -> Void = { _ in },
        name: String? = nil,
        clientKey: String = key,
        quota: ProviderQuota? = nil,
        requestTimeout: Duration = .seconds(10),
        downloadTimeout: Duration? = nil,
        settings configure: (inout ProviderSettings) -> Void = { _ in },
        http: HTTPClient
    ) async throws -> FakeBench {
        var fakeOptions = FakeProviderOptions(
            wireProtocol: FakeProtocol(rawValue: wire.rawValue)!,
            apiKey: key,
            lifetime: .seconds(120)
        )
        options(&fakeOptions)
        let fake = try await FakeProviderServer.start(fakeOptions)
        var settings = ProviderSettings.defaults(for: wire)
        settings.name = name ?? wire.rawValue
        settings.baseURL = fake.baseURL
        settings.pollInterval = .milliseconds(20)
        settings.requestTimeout = requestTimeout
        // A ceiling for a task that never ends, not a measurement: a 6 s fake task whose polls fail half the time
        // took over 30 s in the full parallel phase on 2 cores.
        settings.taskTimeout = .seconds(90)
        settings.quota = quota ?? ProviderQuota()
        // The Azure fake serves batch synthesis too.
        if wire == .azure { settings.batchBaseURL = fake.baseURL }
        configure(&settings)
        var connection = settings.connection(apiKey: APIKey(clientKey), httpClient: http)
        if let downloadTimeout { connection.downloadTimeout = downloadTimeout }
        return FakeBench(
            fake: fake,
            provider: PargenSetup.adapter(settings, connection: connection),
            settings: settings
        )
    }
}

/// Configuration for real-time tests against fakes: fast retries, no user/project limits, no cache.
func fakeTestConfiguration() -> PargenConfiguration {
    var configuration = PargenConfiguration()
    configuration.rateLimits = .unlimited
    configuration.retry.baseDelay = .milliseconds(20)
    configuration.retry.maxDelay = .milliseconds(200)
    configuration.retry.maxAttempts = 6
    configuration.batching.pacingJitter = .zero
    configuration.caching.enabled = false
    return configuration
}

func runAgainstFakes(
    _ providers: [any GenerationProvider],
    _ requests: [GenerationRequest],
    configuration: PargenConfiguration = fakeTestConfiguration()
) async throws -> (results: [GenerationResult], stats: SystemStats) {
    let generator = ParallelGenerator(
        configuration: configuration,
        providers: providers,
        outputDirectory: temporaryDirectory(),
        clock: .continuous
    )
    try await generator.start()
    let results = try await generator.generate(requests)
    let stats = await generator.systemStats()
    try await generator.stop()
    return (results, stats)
}

/// One client for the whole test process, as in production (never shut down: it lives as long as the process).
let sharedTestHTTPClient = ProviderConnection.makeHTTPClient()

@Suite(.timeLimit(.minutes(2))) struct ProviderAdapterTests {
    let http = sharedTestHTTPClient

    func close() async {}

    func expectMedia(_ result: GenerationResult, magic: String, offset: Int = 0, bytes: Int) throws {
        let artifact = try #require(result.artifact, "\(result.error?.description ?? "no artifact")")
        let data = try Data(contentsOf: artifact.url)
        #expect(data.count == bytes)
        #expect(data.dropFirst(offset).starts(with: Array(magic.utf8)))
        #expect(try sha256sum(artifact.url) == artifact.sha256)
    }

    @Test func openAISpeechAndVideoThroughTheEngine() async throws {
        let bench = try await FakeBench.start(.openai, http: http)
        let (results, _) = try await runAgainstFakes(
            [bench.provider],
            [
                .audio(prompt: "Welcome to the show", format: .mp3, voice: "nova"),
                .audio(prompt: "A wav line", format: .wav),
                .video(prompt: "A lighthouse at dawn", duration: .seconds(4), resolution: .p720),
            ]
        )
        try expectMedia(results[0], magic: "ID3", bytes: bench.fake.state.options.audioBytes)
        try expectMedia(results[1], magic: "RIFF", bytes: bench.fake.state.options.audioBytes)
        try expectMedia(results[2], magic: "ftyp", offset: 4, bytes: bench.fake.state.options.videoBytes)
        #expect(results[2].artifact?.providerTaskID?.hasPrefix("video_") == true, "the task id is kept")
        let log = bench.fake.state.submissions()
        #expect(log.count == 3 && log.allSatisfy { $0.accepted })
        #expect(
            log.allSatisfy { $0.key.map { $0.split(separator: ":").map(String.init) }?.last == "1" },
            "each submit carries JOB:ATTEMPT, attempt 1: \(log.compactMap(\.key))"
        )
        #expect(bench.fake.state.polls >= 1)
        await bench.fake.stop()
        await close()
    }

    @Test func elevenLabsSpeechAndSoundEffects() async throws {
        let bench = try await FakeBench.start(.elevenlabs, http: http)
        let (results, _) = try await runAgainstFakes(
            [bench.provider],
            [
                .audio(prompt: "Hello from ElevenLabs", format: .mp3),
                .audio(
                    prompt: "Rain on a tin roof",
                    duration: .seconds(4),
                    format: .wav,
                    model: "eleven_text_to_sound_v2"
                ),
                .audio(prompt: "Too long a sound", duration: .seconds(40), model: "eleven_text_to_sound_v2"),
            ]
        )
        try expectMedia(results[0], magic: "ID3", bytes: bench.fake.state.options.audioBytes)
        try expectMedia(results[1], magic: "RIFF", bytes: bench.fake.state.options.audioBytes)
        #expect(results[2].error?.code == .invalidRequest, "refused before anything is spent")
        #expect(results[2].error?.field == "duration")
        #expect(bench.fake.state.submissions().map(\.endpoint).sorted() == ["sound-generation", "text-to-speech"])
        await bench.fake.stop()
        await close()
    }

    @Test func miniMaxHexSpeechAndVideoThroughFilesRetrieve() async throws {
        let bench = try await FakeBench.start(.minimax, http: http)
        let (results, _) = try await runAgainstFakes(
            [bench.provider],
            [
                .audio(prompt: "Speech décodée from hex, «bien sûr»", format: .wav),
                .video(prompt: "Mountains in fog", duration: .seconds(6), resolution: .p720),
                .video(prompt: "Ten seconds in 1080p", duration: .seconds(10), resolution: .p1080),
            ]
        )
        try expectMedia(results[0], magic: "RIFF", bytes: bench.fake.state.options.audioBytes)
        try expectMedia(results[1], magic: "ftyp", offset: 4, bytes: bench.fake.state.options.videoBytes)
        #expect(results[2].error?.code == .invalidRequest)
        // The fake bills its own count (UTF-8 bytes: 41), not the 35 characters an estimate counts: the charge is
        // what the answer's usage_characters says.
        let prompt = "Speech décodée from hex, «bien sûr»"
        #expect(prompt.utf8.count != prompt.count)
        #expect(results[0].actualCost == bench.settings.pricing.perCharacter * Int64(prompt.utf8.count), "billed characters")
        #expect(bench.fake.state.submissions().count == 2)
        await bench.fake.stop()
        await close()
    }

    @Test func runwayTextAndImageToVideo() async throws {
        let bench = try await FakeBench.start(.runway, http: http)
        let (results, _) = try await runAgainstFakes(
            [bench.provider],
            [
                .video(prompt: "A fox in snow", duration: .seconds(5), resolution: .p720),
                .video(
                    prompt: "Animate this",
                    duration: .seconds(5),
                    resolution: Resolution(width: 720, height: 1280),
                    metadata: ["image": .string("https://example.com/still.png")]
                ),
                .video(prompt: "Too wide", duration: .seconds(5), resolution: .p1080),
            ]
        )
        try expectMedia(results[0], magic: "ftyp", offset: 4, bytes: bench.fake.state.options.videoBytes)
        try expectMedia(results[1], magic: "ftyp", offset: 4, bytes: bench.fake.state.options.videoBytes)
        #expect(results[2].error?.code == .noCapableProvider, "1080p is refused before anything is spent")
        #expect(bench.fake.state.submissions().map(\.endpoint).sorted() == ["image_to_video", "text_to_video"])
        await bench.fake.stop()
        await close()
    }

    @Test func azureRealTimeSpeechWithEscapedSSML() async throws {
        let bench = try await FakeBench.start(.azure, http: http)
        let line = "Tom & Jerry <live> say 'hi'"
        let (results, _) = try await runAgainstFakes(
            [bench.provider],
            [.audio(prompt: line, format: .wav), .audio(prompt: "mp3 please", format: .mp3)]
        )
        try expectMedia(results[0], magic: "RIFF", bytes: bench.fake.state.options.audioBytes)
        try expectMedia(results[1], magic: "ID3", bytes: bench.fake.state.options.audioBytes)
        #expect(
            bench.fake.state.submissions().contains { $0.prompt == line },
            "the fake read the text back out of the SSML"
        )
        await bench.fake.stop()
        await close()
    }

    /// Thirty compatible lines reach Azure together: they become one batch synthesis (or a few), not thirty
    /// real-time calls, and each job gets its own file out of the result ZIP.
    @Test func azureBatchSynthesisTurnsAGroupOfLinesIntoFewCalls() async throws {
        let bench = try await FakeBench.start(.azure, options: { $0.taskSeconds = 0.2...0.3 }, http: http)
        let lines = (0..<30).map { "Batch line number \($0) of the localisation pack" }
        var configuration = fakeTestConfiguration()
        configuration.batching.maxJobsPerBatch = 30
        configuration.resources.maxConcurrentJobs = 60
        configuration.resources.minimumFraction = 1
        let (results, _) = try await runAgainstFakes(
            [bench.provider],
            lines.map { GenerationRequest.audio(prompt: $0, format: .wav) },
            configuration: configuration
        )
        for result in results { try expectMedia(result, magic: "RIFF", bytes: bench.fake.state.options.audioBytes) }
        // File N of the archive holds input N's text: each job got its own line's audio, not a neighbour's.
        for (line, result) in zip(lines, results) {
            let data = try Data(contentsOf: try #require(result.artifact).url)
            #expect(data.dropFirst(16).starts(with: Array(line.utf8)), "\(result.requestID) got its own audio")  // after "RIFF" size "WAVEfmt "
        }
        let log = bench.fake.state.submissions().filter(\.accepted)
        let batches = log.filter { $0.endpoint == "batchsyntheses" }
        #expect(!batches.isEmpty && log.count <= 2, "\(log.count) calls for 30 lines")
        let sent = log.flatMap { $0.prompt.split(separator: "\n").map(String.init) }
        #expect(sent.sorted() == lines.sorted(), "every line sent exactly once")
        #expect(
            results.contains { $0.artifact?.providerTaskID?.contains("#") == true },
            "task ids name the synthesis and the file"
        )
        await bench.fake.stop()
        await close()
    }

    /// A crash right after the task id was stored: a new process resumes the task by its id, polls it and
    /// fetches the result, and the provider sees exactly one submission.
    @Test(arguments: [ProviderProtocol.openai, .minimax, .runway])
    func aVideoTaskIsResumedByItsIDAfterACrash(_ wire: ProviderProtocol) async throws {
        let bench = try await FakeBench.start(wire, options: { $0.taskSeconds = 0.2...0.3 }, http: http)
        let seconds: Int64 = wire == .minimax ? 6 : wire == .openai ? 4 : 5
        let request = validated(.video(prompt: "resumed after a crash", duration: .seconds(seconds), resolution: .p720))
        let stored = Locked<String?>(nil)
        struct Crash: Error {}
        let crashing = ProviderCallContext(
            destination: temporaryDirectory().appendingPathComponent("lost.mp4"),
            clock: .continuous,
            attempt: 1,
            idempotencyKey: "job-1:1",
            logger: Logger(label: "test"),
            submitted: { id in
                stored.withLock { $0 = id }
                throw Crash()  // the process dies once the id is stored
            }
        )
        await #expect(throws: Crash.self) { _ = try await bench.provider.generate(request, context: crashing) }
        let taskID = try #require(stored.value)
        let destination = temporaryDirectory().appendingPathComponent("resumed.mp4")
        let resumed = ProviderCallContext(
            destination: destination,
            clock: .continuous,
            attempt: 1,
            idempotencyKey: "job-1:1",
            logger: Logger(label: "test")
        )
        let output = try await bench.provider.resume(taskID: taskID, request: request, context: resumed)
        #expect(output.format == .mp4)
        let data = try Data(contentsOf: destination)
        #expect(data.count == bench.fake.state.options.videoBytes)
        #expect(data.dropFirst(4).starts(with: Array("ftyp".utf8)))
        #expect(bench.fake.state.submissions().count == 1, "resuming submits nothing")
        #expect(bench.fake.state.taskIDs().count == 1)
        await bench.fake.stop()
    }

    /// A disk that fills while an answer is written is this machine's failure, not a cut-short answer: every
    /// adapter throws a ``LocalResourceError`` naming the file (the engine stops for it instead of retrying),
    /// for speech streamed to disk, hex speech and video downloads alike.
    @Test(arguments: [ProviderProtocol.openai, .elevenlabs, .minimax, .runway, .azure])
    func aFullDiskUnderAnAnswerIsALocalFailureNamingTheFile(_ wire: ProviderProtocol) async throws {
        let bench = try await FakeBench.start(wire, options: { $0.taskSeconds = 0.05...0.1 }, http: http)
        let request: ValidatedRequest =
            wire == .runway
            ? validated(.video(prompt: "full disk", duration: .seconds(5), resolution: .p720))
            : validated(.audio(prompt: "full disk", duration: .seconds(2)))
        // Every write to /dev/full fails with ENOSPC, as on a full disk.
        let destination = temporaryDirectory().appendingPathComponent("answer.part")
        try FileManager.default.createSymbolicLink(atPath: destination.path, withDestinationPath: "/dev/full")
        let context = ProviderCallContext(
            destination: destination,
            clock: .continuous,
            attempt: 1,
            idempotencyKey: "job-1:1",
            logger: Logger(label: "test")
        )
        do {
            _ = try await bench.provider.generate(request, context: context)
            Issue.record("a write to a full disk succeeded")
        } catch let error as LocalResourceError {
            #expect(error.errorNumber == ENOSPC)
            #expect(error.path == destination.path)
        } catch {
            Issue.record("expected a LocalResourceError, got \(error)")
        }
        await bench.fake.stop()
    }

    /// One input of a batch synthesis fails at Azure (no file in the results, failedAudioCount 1): that line is
    /// dead-lettered; the others keep their own files (one failure used to fail every member).
    @Test func aFailedInputOfABatchSynthesisFailsAlone() async throws {
        let bench = try await FakeBench.start(.azure, options: { $0.taskSeconds = 0.1...0.2 }, http: http)
        var lines = (0..<10).map { "Partial batch line \($0)" }
        lines[4] = "Partial batch line 4 [[fail]]"
        var configuration = fakeTestConfiguration()
        configuration.batching.maxJobsPerBatch = 10
        configuration.resources.minimumFraction = 1
        configuration.retry.maxAttempts = 1
        let (results, _) = try await runAgainstFakes(
            [bench.provider],
            lines.map { GenerationRequest.audio(prompt: $0, format: .wav) },
            configuration: configuration
        )
        #expect(results[4].error?.providerCode == "result_unavailable", "\(String(describing: results[4].error))")
        for (index, (line, result)) in zip(lines, results).enumerated() where index != 4 {
            let data = try Data(contentsOf: try #require(result.artifact, "\(result.error?.description ?? "")").url)
            #expect(data.dropFirst(16).starts(with: Array(line.utf8)))
        }
        #expect(bench.fake.state.submissions().filter(\.accepted).count == 1, "one synthesis for the ten lines")
        await bench.fake.stop()
        await close()
    }

    /// The answer to the batch create is lost (the fake made the synthesis, then hung): the adapter creates it
    /// again under the same id, Azure answers 409 Conflict, and that is the same synthesis. Every line succeeds
    /// on its first attempt, with one synthesis made and billed.
    @Test func aRepeatedBatchCreateAnswers409AndIsTheSameSynthesis() async throws {
        let bench = try await FakeBench.start(
            .azure,
            options: { $0.taskSeconds = 0.1...0.2 },
            // Long enough that no answer but the lost one times out on a loaded machine (with 2 s, the full
            // parallel run timed out polls and downloads too, and the lines were bought again one by one).
            requestTimeout: .seconds(10),
            http: http
        )
        var lines = (0..<10).map { "Conflict batch line \($0)" }
        lines[0] += " [[hang]]"
        var configuration = fakeTestConfiguration()
        configuration.batching.maxJobsPerBatch = 10
        configuration.resources.minimumFraction = 1
        let (results, _) = try await runAgainstFakes(
            [bench.provider],
            lines.map { GenerationRequest.audio(prompt: $0, format: .wav) },
            configuration: configuration
        )
        #expect(results.allSatisfy { $0.succeeded && $0.attempts == 1 }, "\(results.compactMap { $0.error?.description })")
        #expect(bench.fake.state.submissions().filter(\.accepted).count == 1, "one synthesis")
        #expect(bench.fake.state.taskIDs().count == 1)
        for (line, result) in zip(lines, results) {
            let data = try Data(contentsOf: try #require(result.artifact).url)
            #expect(data.dropFirst(16).starts(with: Array(line.utf8)))
        }
        await bench.fake.stop()
        await close()
    }

    /// The engine brings a batch's members to the adapter slowly (here 200 ms apart, as on a loaded machine,
    /// where the adapter used to guess a batch from calls arriving within 150 ms of each other): the adapter
    /// waits for the batch the engine admitted, and makes one synthesis of its ten lines.
    @Test func aBatchIsOneSynthesisHoweverSlowlyItsMembersArrive() async throws {
        let bench = try await FakeBench.start(.azure, options: { $0.taskSeconds = 0.1...0.2 }, http: http)
        let lines = (0..<10).map { "Slow batch line \($0)" }
        var configuration = fakeTestConfiguration()
        configuration.batching.maxJobsPerBatch = 10
        configuration.resources.minimumFraction = 1
        let (results, stats) = try await runAgainstFakes(
            [StaggeredProvider(base: bench.provider, spacing: .milliseconds(200))],
            lines.map { GenerationRequest.audio(prompt: $0, format: .wav) },
            configuration: configuration
        )
        #expect(stats.batcher.largestBatch == 10)
        #expect(results.allSatisfy { $0.succeeded && $0.attempts == 1 }, "\(results.compactMap { $0.error?.description })")
        #expect(bench.fake.state.submissions().filter(\.accepted).count == 1, "one synthesis")
        for (line, result) in zip(lines, results) {
            let data = try Data(contentsOf: try #require(result.artifact).url)
            #expect(data.dropFirst(16).starts(with: Array(line.utf8)))
        }
        await bench.fake.stop()
        await close()
    }

    /// Ten lines admitted as one batch, with a budget for nine: the member the budget refuses never calls, the
    /// engine tells the batch so, and the adapter makes its synthesis of the nine at once. Its backstop is an hour
    /// here, so an adapter waiting for a member that will never come fails the test on its time limit.
    @Test func aMemberRefusedItsBudgetDoesNotHoldItsBatchBack() async throws {
        let bench = try await FakeBench.start(
            .azure,
            options: { $0.taskSeconds = 0.1...0.2 },
            settings: {
                $0.batchThreshold = 5
                $0.batchMemberWait = .seconds(3600)
            },
            http: http
        )
        let lines = (0..<10).map { "Departing batch line \($0)" }
        var configuration = fakeTestConfiguration()
        configuration.batching.maxJobsPerBatch = 10
        configuration.resources.minimumFraction = 1
        let line = bench.settings.pricing.perCharacter * Int64(lines[0].count)
        configuration.budgets.global = Money(nanos: line.nanos * 19 / 2)
        let (results, stats) = try await runAgainstFakes(
            [bench.provider],
            lines.map { GenerationRequest.audio(prompt: $0, format: .wav) },
            configuration: configuration
        )
        #expect(stats.batcher.largestBatch == 10)
        #expect(results.filter(\.succeeded).count == 9, "\(results.compactMap { $0.error?.description })")
        #expect(results.filter { $0.error?.code == .budgetExceeded }.count == 1)
        #expect(bench.fake.state.submissions().filter(\.accepted).count == 1, "one synthesis of the nine")
        await bench.fake.stop()
        await close()
    }

    /// A job rescued after a crash with task id `SYNTHESIS#N` polls that synthesis and takes file N.
    @Test func azureResumesAMemberOfABatchSynthesis() async throws {
        let bench = try await FakeBench.start(.azure, http: http)
        var put = HTTPClientRequest(
            url: bench.fake.baseURL + "/texttospeech/batchsyntheses/pargen-crash-1?api-version=2024-04-01"
        )
        put.method = .PUT
        put.headers.add(name: "Ocp-Apim-Subscription-Key", value: FakeBench.key)
        put.body = .bytes(
            Data(
                #"{"inputKind":"SSML","inputs":[{"content":"<speak><voice name='a'>one</voice></speak>"},{"content":"<speak><voice name='a'>two</voice></speak>"}],"properties":{"outputFormat":"riff-24khz-16bit-mono-pcm"}}"#
                    .utf8
            )
        )
        let created = try await http.execute(put, timeout: .seconds(5))
        #expect(created.status == .created)
        let destination = temporaryDirectory().appendingPathComponent("two.wav")
        let context = ProviderCallContext(
            destination: destination,
            clock: .continuous,
            attempt: 1,
            idempotencyKey: "job-2:1",
            logger: Logger(label: "test")
        )
        let output = try await bench.provider.resume(
            taskID: "pargen-crash-1#2",
            request: validated(.audio(prompt: "two", format: .wav)),
            context: context
        )
        #expect(output.providerTaskID == "pargen-crash-1#2")
        #expect(try Data(contentsOf: destination).starts(with: Array("RIFF".utf8)))
        #expect(bench.fake.state.submissions().count == 1, "resuming submits nothing")
        await bench.fake.stop()
        await close()
    }

    /// Each provider's own throttling: OpenAI and Azure 429 with Retry-After, ElevenLabs 429
    /// too_many_concurrent_requests, MiniMax 1002 on HTTP 200, Runway THROTTLED tasks. The engine is told a
    /// looser quota than the fake enforces, so it runs into the provider's limit and must recover.
    @Test(arguments: [ProviderProtocol.openai, .elevenlabs, .minimax, .runway, .azure])
    func throttlingInTheProvidersOwnFormIsRecoveredFrom(_ wire: ProviderProtocol) async throws {
        let bench = try await FakeBench.start(
            wire,
            options: {
                // 2 calls in a 3 s window: the engine's first 8 calls, sent at once, meet the limit however slowly
                // a loaded machine sends them (with 4 in 3 s, a full parallel test run once spread them out enough
                // that none was refused; with a 1 s window a loaded CI run did).
                $0.requestsPerWindow = wire == .runway || wire == .elevenlabs ? nil : 2
                $0.window = .seconds(3)
                $0.concurrentTasks = wire == .runway || wire == .elevenlabs ? 2 : nil
                $0.latencySeconds = 0.02...0.05
                // A Runway task waiting THROTTLED starts only once a poll has seen it so: a loaded machine's polls
                // came late enough that every waiting task had started before one was polled.
                $0.throttledTasksWaitForAPoll = true
                $0.taskSeconds = wire == .runway ? 1.0...1.5 : 0.1...0.2
            },
            quota: ProviderQuota(concurrentTasks: 8),
            // This test is about throttling: a call that a loaded machine leaves unanswered past a short time-out
            // is a possibly billed answer, bought again by default (BilledAnswerTests), which this test would
            // count as a prompt accepted twice.
            requestTimeout: .seconds(60),
            http: http
        )
        let video = wire == .runway
        let requests: [GenerationRequest] = (0..<12).map { i in
            video
                ? .video(prompt: "clip \(i)", duration: .seconds(5), resolution: .p720)
                : .audio(prompt: "line \(i) of twelve")
        }
        let (results, stats) = try await runAgainstFakes([bench.provider], requests)
        #expect(results.allSatisfy { $0.succeeded }, "\(results.compactMap { $0.error?.description })")
        #expect(bench.fake.state.quotaViolations() > 0, "the fake did throttle")
        #expect((stats.providers[wire.rawValue]?.throttled ?? 0) > 0, "and the engine saw it as throttling")
        #expect(bench.fake.state.duplicatePrompts().isEmpty, "nothing accepted twice")
        await bench.fake.stop()
        await close()
    }

    @Test func serverErrorsAreRetriedUntilTheySucceed() async throws {
        let bench = try await FakeBench.start(
            .openai,
            options: {
                $0.errorRate = 0.4
                $0.seed = 7
            },
            http: http
        )
        let requests = (0..<10).map { GenerationRequest.audio(prompt: "retry line \($0)") }
        let (results, stats) = try await runAgainstFakes([bench.provider], requests)
        #expect(results.allSatisfy { $0.succeeded })
        #expect((stats.providers["openai"]?.retries ?? 0) > 0)
        #expect(results.contains { $0.errorHistory.contains { $0.providerCode == "server_error" } })
        await bench.fake.stop()
        await close()
    }

    /// Content-policy refusals and failed tasks reach the dead-letter queue with the provider's own code.
    @Test func terminalErrorsDeadLetterWithTheProvidersCode() async throws {
        let openai = try await FakeBench.start(.openai, http: http)
        let minimax = try await FakeBench.start(.minimax, http: http)
        let runway = try await FakeBench.start(.runway, http: http)
        let eleven = try await FakeBench.start(.elevenlabs, http: http)
        let (results, _) = try await runAgainstFakes(
            [openai.provider, minimax.provider, runway.provider, eleven.provider],
            [
                .audio(prompt: "bad words [[reject]]", provider: "openai"),
                .video(prompt: "a scene [[fail]]", duration: .seconds(4), resolution: .p720, provider: "openai"),
                .audio(prompt: "sensitive [[reject]]", provider: "minimax"),
                .video(prompt: "output blocked [[fail]]", duration: .seconds(6), provider: "minimax"),
                .video(prompt: "unsafe output [[fail]]", duration: .seconds(5), resolution: .p720, provider: "runway"),
                .audio(prompt: "policy [[reject]]", provider: "elevenlabs"),
            ]
        )
        let codes = results.map { $0.error?.providerCode }
        #expect(
            codes == [
                "moderation_blocked", "moderation_blocked", "1026", "1027", "SAFETY.OUTPUT.VIDEO",
                "content_policy_violation",
            ]
        )
        #expect(results.allSatisfy { $0.error?.code == .terminal })
        #expect(results.allSatisfy { $0.attempts == 1 }, "terminal errors are not retried")
        for bench in [openai, minimax, runway, eleven] { await bench.fake.stop() }
        await close()
    }

    @Test func aWrongKeyIsTerminalAndTheKeyNeverAppears() async throws {
        let secret = "sk-wrong-DO-NOT-LEAK-42"
        var benches: [FakeBench] = []
        for wire in ProviderProtocol.allCases {
            benches.append(try await FakeBench.start(wire, clientKey: secret, http: http))
        }
        let requests: [GenerationRequest] = ProviderProtocol.allCases.map { wire in
            wire == .runway
                ? .video(prompt: "clip for \(wire)", duration: .seconds(5), resolution: .p720, provider: wire.rawValue)
                : .audio(prompt: "line for \(wire)", provider: wire.rawValue)
        }
        let (results, _) = try await runAgainstFakes(benches.map(\.provider), requests)
        for (wire, result) in zip(ProviderProtocol.allCases, results) {
            let error = try #require(result.error, "\(wire) should fail")
            #expect(error.code == .terminal, "\(wire): \(error)")
            #expect(["401", "invalid_api_key", "1004"].contains(error.providerCode ?? ""), "\(wire): \(error)")
            #expect(!"\(error)".contains(secret) && !"\(result)".contains(secret))
        }
        #expect(!"\(benches[0].provider)".contains(secret), "the adapter prints <redacted>")
        for bench in benches { await bench.fake.stop() }
        await close()
    }

    /// Expired result links are replaced by fresh ones (files/retrieve, the task again); cut-short downloads
    /// are fetched again; nothing is submitted twice for either.
    @Test(arguments: [ProviderProtocol.openai, .minimax, .runway])
    func expiredLinksAndTruncatedDownloadsAreFetchedAgain(_ wire: ProviderProtocol) async throws {
        let bench = try await FakeBench.start(
            wire,
            options: {
                $0.expiredLinkRate = 1
                $0.truncateRate = 0.5
                $0.maxFaultsPerResult = 2
            },
            http: http
        )
        let seconds = wire == .minimax ? 6 : wire == .openai ? 4 : 5
        let requests = (0..<4).map {
            GenerationRequest.video(prompt: "video \($0)", duration: .seconds(Int64(seconds)), resolution: .p720)
        }
        let (results, _) = try await runAgainstFakes([bench.provider], requests)
        #expect(results.allSatisfy { $0.succeeded }, "\(results.compactMap { $0.error?.description })")
        #expect(results.allSatisfy { $0.attempts == 1 })
        #expect(
            bench.fake.state.submissions().filter(\.accepted).count == 4,
            "every result fetched without resubmitting"
        )
        await bench.fake.stop()
        await close()
    }

    @Test func aResultThatStaysUnavailableIsTerminalNotResubmitted() async throws {
        let bench = try await FakeBench.start(.runway, options: { $0.truncateRate = 1 }, http: http)
        let (results, _) = try await runAgainstFakes(
            [bench.provider],
            [.video(prompt: "never whole", duration: .seconds(5), resolution: .p720)]
        )
        #expect(results[0].error?.providerCode == "result_unavailable")
        #expect(bench.fake.state.submissions().count == 1)
        await bench.fake.stop()
        await close()
    }

    @Test func aHungSubmitOfATaskIsNotBlindlyRepeated() async throws {
        let bench = try await FakeBench.start(
            .runway,
            options: { $0.hangRate = 1 },
            requestTimeout: .seconds(1),
            http: http
        )
        let (results, _) = try await runAgainstFakes(
            [bench.provider],
            [.video(prompt: "hangs", duration: .seconds(5), resolution: .p720)]
        )
        #expect(results[0].error?.code == .needsReconciliation, "\(String(describing: results[0].error))")
        // The fake accepted the submission and made its task, then lost the answer: exactly one task exists,
        // and it was not submitted again.
        #expect(bench.fake.state.submissions().count == 1)
        #expect(bench.fake.state.submissions().filter(\.accepted).count == 1)
        #expect(bench.fake.state.taskIDs().count == 1)
        await bench.fake.stop()
        await close()
    }

    @Test func runwayCancelsARunningTask() async throws {
        // A task long enough that the cancel lands while it runs, however loaded the machine.
        let bench = try await FakeBench.start(.runway, options: { $0.taskSeconds = 60...60 }, http: http)
        let runway = try #require(bench.provider as? RunwayProvider)
        let generator = ParallelGenerator(
            configuration: fakeTestConfiguration(),
            providers: [runway],
            outputDirectory: temporaryDirectory(),
            clock: .continuous
        )
        try await generator.start()
        let ids = try await generator.submit([.video(prompt: "long clip", duration: .seconds(5), resolution: .p720)])
        var taskID: String?
        for _ in 0..<200 where taskID == nil {
            try await Task.sleep(for: .milliseconds(20))
            taskID = try await generator.store.job(ids[0])?.providerTaskID
        }
        try await runway.cancel(taskID: try #require(taskID))
        let result = await generator.result(for: ids[0])
        try await generator.stop()
        #expect(result.error?.providerCode == "CANCELLED")
        await bench.fake.stop()
        await close()
    }
}

@Suite(.timeLimit(.minutes(2))) struct ProviderRobustnessTests {
    /// Polls that fail (503s) never end a submitted task: it is polled again, never submitted twice.
    @Test(arguments: [ProviderProtocol.openai, .minimax, .runway])
    func failedPollsAreRetriedWithoutResubmitting(_ wire: ProviderProtocol) async throws {
        let bench = try await FakeBench.start(wire, options: { $0.pollErrorRate = 0.5 }, http: sharedTestHTTPClient)
        let seconds: Int64 = wire == .minimax ? 6 : wire == .openai ? 4 : 5
        let requests = (0..<5).map {
            GenerationRequest.video(prompt: "polled \($0)", duration: .seconds(seconds), resolution: .p720)
        }
        let (results, _) = try await runAgainstFakes([bench.provider], requests)
        #expect(
            results.allSatisfy { $0.succeeded && $0.attempts == 1 },
            "\(results.compactMap { $0.error?.description })"
        )
        #expect(bench.fake.state.submissions().count == 5)
        await bench.fake.stop()
    }
}

/// Passes each call on to `base` a `spacing` later than the call before it, as a loaded engine might.
private final class StaggeredProvider: GenerationProvider {
    let base: any GenerationProvider
    let spacing: Duration
    private let calls = Mutex(0)

    init(base: any GenerationProvider, spacing: Duration) {
        self.base = base
        self.spacing = spacing
    }

    var descriptor: ProviderDescriptor { base.descriptor }

    func generate(_ request: ValidatedRequest, context: ProviderCallContext) async throws -> ProviderOutput {
        let order = calls.withLock { calls in
            defer { calls += 1 }
            return calls
        }
        try await Task.sleep(for: spacing * order)
        return try await base.generate(request, context: context)
    }
}

func residentBytes() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let fields = text.split(separator: " ")
    return (Int(fields[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE)))
}
