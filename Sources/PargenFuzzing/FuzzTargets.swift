public import Foundation
import AsyncHTTPClient
import NIOCore
import NIOHTTP1
import Pargen
import PargenProviders

/// The fuzz targets: each takes arbitrary bytes, feeds them to one of Pargen's readers of outside input, and
/// checks what must hold whatever the bytes are. A target returns normally or stops the process (a trap, or a
/// broken invariant through `preconditionFailure`): it never throws.
///
/// They run three ways: under libFuzzer (`scripts/fuzz.sh TARGET`, the `Fuzz/` package), from the seeded
/// mutator in the test suite (`FuzzTests`, bounded), and on the corpus and crash reproducers kept in
/// `Fuzz/Corpus/TARGET`.
public enum FuzzTargets {
    /// The targets by name.
    public static let all: [String: @Sendable (Data) -> Void] = [
        "campaign": campaign, "configuration": configuration, "answers": answers,
    ]

    // MARK: - Campaign files

    /// A campaign file, as JSONL or CSV (the first byte chooses). Every line the reader names exists in the
    /// file, no line is both a request and an error, and reading is linear (a 64 KiB input is read at once).
    public static func campaign(_ data: Data) {
        guard let first = data.first else { return }
        let format: CampaignFile.Format = first & 1 == 0 ? .jsonl : .csv
        let body = data.dropFirst()
        let file = CampaignFile.parse(Data(body), format: format)
        // Lines are counted by LF, CRLF or lone CR, whichever the file uses: never more than its bytes plus one.
        let bound = body.count + 1
        var seen = Set<Int>()
        for line in file.lines {
            precondition((1...bound).contains(line.line), "request line \(line.line) outside 1...\(bound)")
            precondition(seen.insert(line.line).inserted, "line \(line.line) read twice")
        }
        for error in file.errors {
            precondition((1...bound).contains(error.line), "error line \(error.line) outside 1...\(bound)")
            precondition(!file.lines.contains { $0.line == error.line }, "line \(error.line) is a request and an error")
        }
    }

    // MARK: - Configuration files

    /// A configuration file, as YAML or JSON (the first byte chooses), through the whole loader: it loads, or
    /// it is refused with problems naming what is wrong; nothing else, and never a hang.
    public static func configuration(_ data: Data) {
        blocking { await configurationAsync(data) }
    }

    /// ``configuration(_:)`` for a caller that is already async (the test suite: blocking a thread of the
    /// cooperative pool would starve the tests running beside it).
    public static func configurationAsync(_ data: Data) async {
        guard let first = data.first else { return }
        let path = scratch.appendingPathComponent(first & 1 == 0 ? "fuzz.yaml" : "fuzz.json")
        do {
            try Data(data.dropFirst()).write(to: path)
        } catch {
            preconditionFailure("cannot write the scratch file \(path.path): \(error)")
        }
        let outcome: Result<PargenSetup, any Error>
        do {
            outcome = .success(try await PargenSetup.load(file: path.path, environment: [:]))
        } catch {
            outcome = .failure(error)
        }
        switch outcome {
        case .success(let setup):
            precondition(setup.configuration.resources.maxConcurrentJobs > 0)
        case .failure(let error):
            guard let refused = error as? ConfigurationFileError else {
                preconditionFailure("the loader threw \(type(of: error)), not a ConfigurationFileError: \(error)")
            }
            precondition(!refused.problems.isEmpty, "refused without a reason")
        }
    }

    // MARK: - Provider answers

    /// One provider answer: the first byte picks the provider and the HTTP status, the next two a
    /// `Retry-After` header, the rest is the body. Each adapter's reading of it (error classification, JSON,
    /// MiniMax's hex audio and status codes, Azure's result ZIP, task failure codes) gives a classified error or
    /// a value, never a trap.
    public static func answers(_ data: Data) {
        guard data.count >= 3 else { return }
        let bytes = [UInt8](data.prefix(3))
        let statuses: [UInt] = [200, 201, 202, 400, 401, 403, 404, 408, 409, 422, 429, 500, 502, 503, 504, 302]
        let status = HTTPResponseStatus(statusCode: Int(statuses[Int(bytes[0] >> 4)]))
        var headers = HTTPHeaders()
        switch bytes[1] % 4 {
        case 0: break
        case 1: headers.add(name: "Retry-After", value: String(decoding: data.dropFirst(3).prefix(Int(bytes[2] % 24)), as: UTF8.self))
        case 2: headers.add(name: "retry-after-ms", value: String(decoding: data.dropFirst(3).prefix(Int(bytes[2] % 24)), as: UTF8.self))
        default: headers.add(name: "Retry-After", value: String(Int(bytes[2]) * 1_000_000_007))
        }
        let body = Data(data.dropFirst(3))
        let exchange = HTTPExchange(status: status, headers: headers, body: ByteBuffer(bytes: body))
        if let wait = ProviderHTTP.retryAfter(headers) { precondition(wait >= .zero, "negative Retry-After \(wait)") }
        let json = exchange.json
        _ = json?["error"]?["code"]?.string
        _ = json?["data"]?["audio"]?.int
        _ = json?["progress"]?.double
        let name = "fuzzed"
        switch bytes[0] & 0x0F {
        case 0: check(adapters.openai.classify(exchange), status: status)
        case 1: check(adapters.elevenlabs.classify(exchange), status: status)
        case 2: check(adapters.azure.classify(exchange), status: status)
        case 3: check(adapters.runway.classify(exchange), status: status)
        case 4:
            do {
                let value = try adapters.minimax.check(exchange)
                precondition(exchange.isSuccess, "a failed answer passed MiniMax's check: \(value)")
            } catch let error as GenerationError {
                precondition(error.provider != nil || error.code == .transient, "\(error)")
            } catch {
                preconditionFailure("MiniMax's check threw \(type(of: error))")
            }
        case 5:
            if let audio = MiniMaxProvider.hexDecoded(String(decoding: body, as: UTF8.self)) {
                precondition(audio.count * 2 <= body.count, "hex decoded to more bytes than it has digits")
            }
        case 6:
            let code = json?["base_resp"]?["status_code"]?.int ?? Int(bytes[2])
            _ = MiniMaxProvider.error(code: code, message: exchange.text, provider: name)
        case 7:
            _ = TaskFailures.openAI(code: json?["error"]?["code"]?.string, message: exchange.text)
            _ = TaskFailures.miniMax(statusCode: json?["status_code"]?.int)
            _ = TaskFailures.runway(failureCode: json?["failureCode"]?.string)
        case 8, 9:
            let zip = scratch.appendingPathComponent("result.zip")
            let out = scratch.appendingPathComponent("0001.wav")
            do {
                try body.write(to: zip)
            } catch {
                preconditionFailure("cannot write the scratch file \(zip.path): \(error)")
            }
            do {
                try AzureBatchClient.extract(index: 1, from: zip, to: out, provider: name)
            } catch {
                // A ZIP that is not one, or lacks the entry, is a classified error; ZIPFoundation's own
                // errors for a damaged entry are reported as they come.
            }
        default: check(adapters.azureBatch(exchange), status: status)
        }
    }

    /// A classified error says what the status says, at least: a 429 is never terminal for being a 429 alone
    /// unless the provider names a billing stop, and a 5xx is never terminal.
    private static func check(_ error: GenerationError, status: HTTPResponseStatus) {
        if (500...599).contains(status.code) {
            precondition(error.code != .terminal || error.providerCode != nil, "a \(status.code) classified terminal: \(error)")
        }
        precondition(!error.message.contains("sk-fuzz"), "the key leaked into an error")
    }

    // MARK: - Support

    struct Adapters: Sendable {
        var openai: OpenAIProvider
        var elevenlabs: ElevenLabsProvider
        var minimax: MiniMaxProvider
        var runway: RunwayProvider
        var azure: AzureSpeechProvider
        var azureBatch: @Sendable (HTTPExchange) -> GenerationError
    }

    /// One adapter per protocol on a client that never sends anything.
    static let adapters: Adapters = {
        func make(_ wire: ProviderProtocol) -> any GenerationProvider {
            let settings = ProviderSettings.defaults(for: wire)
            return PargenSetup.adapter(settings, connection: settings.connection(apiKey: APIKey("sk-fuzz-0123456789"), httpClient: client))
        }
        var settings = ProviderSettings.defaults(for: .azure)
        settings.batchBaseURL = settings.baseURL
        let batch = AzureBatchClient(
            http: ProviderHTTP(provider: "azure", connection: settings.connection(apiKey: APIKey("sk-fuzz-0123456789"), httpClient: client)),
            apiKey: APIKey("sk-fuzz-0123456789")
        )
        return Adapters(
            openai: make(.openai) as! OpenAIProvider,
            elevenlabs: make(.elevenlabs) as! ElevenLabsProvider,
            minimax: make(.minimax) as! MiniMaxProvider,
            runway: make(.runway) as! RunwayProvider,
            azure: make(.azure) as! AzureSpeechProvider,
            azureBatch: { batch.classify($0) }
        )
    }()

    static let client = HTTPClient(eventLoopGroupProvider: .singleton)

    /// A folder of this process's own for the targets' files.
    static let scratch: URL = {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("pargen-fuzz-\(getpid())")
        try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }()

    /// Runs async work to the end from a synchronous caller (libFuzzer's thread, never the cooperative pool).
    @discardableResult
    static func blocking<T: Sendable>(_ body: @escaping @Sendable () async -> T) -> T {
        let box = Locked<T?>(nil)
        let done = DispatchSemaphore(value: 0)
        Task.detached {
            let value = await body()
            box.withLock { $0 = value }
            done.signal()
        }
        done.wait()
        return box.value!
    }
}

extension FuzzTargets {
    /// Runs `target` under libFuzzer: the body of a driver's `main` in the `Fuzz/` package, built with
    /// `-sanitize=fuzzer`. libFuzzer's driver is looked up at run time, so this library links without it too.
    public static func libFuzzerMain(
        _ argc: CInt,
        _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
        target: String
    ) -> CInt {
        typealias Callback = @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
        typealias Driver =
            @convention(c) (
                UnsafeMutablePointer<CInt>, UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                Callback
            ) -> CInt
        guard let run = all[target] else { preconditionFailure("no fuzz target \(target)") }
        // RTLD_DEFAULT: the executable and everything it loaded.
        guard let symbol = dlsym(nil, "LLVMFuzzerRunDriver") else { preconditionFailure("libFuzzer is not linked: build with -sanitize=fuzzer (scripts/fuzz.sh)") }
        current = run
        var count = argc
        var arguments = argv
        return unsafeBitCast(symbol, to: Driver.self)(&count, &arguments) { data, size in
            FuzzTargets.current?(data.map { Data(bytes: $0, count: size) } ?? Data())
            return 0
        }
    }

    /// The target libFuzzer's callback runs (a C callback captures nothing).
    nonisolated(unsafe) static var current: (@Sendable (Data) -> Void)?
}
