import Foundation
import Logging
import Pargen
import Testing

@Suite struct CampaignFileTests {
    @Test func readsJSONLAndReportsEachBadLineWithItsField() {
        let text = """
            {"type": "audio", "prompt": "Hello there", "priority": "high", "duration": 12, "voice": "alloy", "user": "ann", "project": "ads"}
            {"type": "video", "prompt": "Birds", "resolution": "1080p", "duration": "5s", "metadata": {"scene": 3}}

            {"type": "podcast", "prompt": "x"}
            {"type": "audio"}
            {"type": "audio", "prompt": "x", "durration": 5}
            not json
            {"type": "audio", "prompt": "x", "priority": "asap"}
            {"type": "video", "prompt": "x", "resolution": "huge"}
            {"type": "audio", "prompt": "x", "duration": "forever"}
            """
        let file = CampaignFile.parse(text, format: .jsonl)
        #expect(file.lines.map(\.line) == [1, 2])
        #expect(file.lines[0].request.priority == .high)
        #expect(file.lines[0].request.duration == .seconds(12))
        #expect(file.lines[0].request.id == "line-1")
        #expect(file.lines[1].request.resolution == .p1080)
        #expect(file.lines[1].request.metadata["scene"] == .number(3))
        #expect(file.errors.map(\.line) == [4, 5, 6, 7, 8, 9, 10])
        #expect(file.errors.map(\.field) == ["type", "prompt", "durration", nil, "priority", "resolution", "duration"])
        #expect(file.errors[0].description == "line 4: type: must be audio or video, not \"podcast\"")
        #expect(file.recordCount == 9)
    }

    @Test func readsASpreadsheetCSVExport() {
        let text =
            "\u{FEFF}Type,Prompt,Priority,Duration,Resolution,User,Scene Notes\r\n"
            + "audio,\"Welcome, friends\",urgent,3.5,,ann,intro\r\n"
            + "video,\"A line with \"\"quotes\"\"\nand a break\",low,4,720p,bob,\r\n"
            + ",,,,,,\r\n"
            + "video,Bad one,low,4,720p,bob,x,extra\r\n"
            + "audio,,normal,1,,ann,\r\n"
        let file = CampaignFile.parse(text, format: .csv)
        #expect(file.lines.count == 2)
        #expect(file.lines[0].request.prompt == "Welcome, friends")
        #expect(file.lines[0].request.priority == .urgent)
        #expect(file.lines[0].request.duration == .milliseconds(3500))
        #expect(file.lines[0].request.metadata["scene_notes"] == .string("intro"))
        #expect(file.lines[1].request.prompt == "A line with \"quotes\"\nand a break")
        #expect(file.lines[1].line == 3)
        #expect(file.errors.map(\.line) == [6, 7])
        #expect(file.errors[0].message.contains("8 values"))
        #expect(file.errors[1].field == "prompt")
    }

    @Test func semicolonSeparatedExportsWork() {
        let file = CampaignFile.parse("type;prompt;duration\naudio;Hallo, Welt;2\n", format: .csv)
        #expect(file.lines.map(\.request.prompt) == ["Hallo, Welt"])
    }

    /// Regression: "\r\n" is one `Character` in Swift, so a JSONL file with CRLF line ends (as Windows tools
    /// write them) was read as a single line, and every request in it was lost.
    @Test func jsonlWithCRLFLineEndsReadsEveryLine() {
        let text =
            "{\"type\": \"audio\", \"prompt\": \"one\"}\r\n"
            + "{\"type\": \"video\", \"prompt\": \"two\", \"duration\": 4}\r\n"
            + "\r\n"
            + "{\"type\": \"audio\"}\r\n"
            + "{\"type\": \"audio\", \"prompt\": \"four\"}\r\n"
        let file = CampaignFile.parse(text, format: .jsonl)
        #expect(file.lines.map(\.request.prompt) == ["one", "two", "four"])
        #expect(file.lines.map(\.line) == [1, 2, 5])
        #expect(file.errors.map(\.line) == [4])
        #expect(file.errors.map(\.field) == ["prompt"])
    }

    /// Regression: with CRLF line ends the whole file was taken as the header line, so a quoted comma anywhere
    /// made "," the separator of a `;`-separated file and every row was invalid.
    @Test func semicolonCSVWithCRLFAndAQuotedCommaKeepsTheSemicolon() {
        let text =
            "type;prompt;duration;user\r\n"
            + "audio;\"Hallo, Welt\";2;ann\r\n"
            + "video;\"Ein Vogel; im Flug\";4;bob\r\n"
        let file = CampaignFile.parse(text, format: .csv)
        #expect(file.errors.isEmpty, "\(file.errors)")
        #expect(file.lines.map(\.request.prompt) == ["Hallo, Welt", "Ein Vogel; im Flug"])
        #expect(file.lines.map(\.request.user) == ["ann", "bob"])
        #expect(file.lines.map(\.line) == [2, 3])
    }

    @Test func tabSeparatedCSVWithCRLF() {
        let text = "type\tprompt\tduration\r\naudio\t\"Comma, and; semicolon\"\t3\r\nvideo\tclip\t4\r\n"
        let file = CampaignFile.parse(text, format: .csv)
        #expect(file.errors.isEmpty, "\(file.errors)")
        #expect(file.lines.map(\.request.prompt) == ["Comma, and; semicolon", "clip"])
        #expect(file.lines.map(\.request.duration) == [.seconds(3), .seconds(4)])
    }

    /// A row whose quote is never closed is an error on its own line; the rows after it are still read (they
    /// used to be swallowed into its prompt, and the run exited 0).
    @Test func anUnterminatedQuoteIsAnErrorOnItsLineAndTheRowsAfterItSurvive() {
        let text = "type,prompt\naudio,\"never closed\naudio,second\r\naudio,third\n"
        let file = CampaignFile.parse(text, format: .csv)
        #expect(file.lines.map(\.request.prompt) == ["second", "third"])
        #expect(file.lines.map(\.line) == [3, 4])
        #expect(file.errors.map(\.line) == [2])
        #expect(file.errors.first?.message.contains("quote") == true, "\(file.errors)")
    }

    /// Invalid UTF-8 on one line is an error on that line, not a refusal of the whole file.
    @Test func invalidUTF8IsAnErrorOnItsLineOnly() throws {
        var jsonl = Data("{\"type\": \"audio\", \"prompt\": \"good\"}\n{\"type\": \"audio\", \"prompt\": \"".utf8)
        jsonl.append(contentsOf: [0xC3, 0x28, 0xFF])
        jsonl.append(Data("\"}\n{\"type\": \"audio\", \"prompt\": \"also good\"}\n".utf8))
        let lines = CampaignFile.parse(jsonl, format: .jsonl)
        #expect(lines.lines.map(\.request.prompt) == ["good", "also good"])
        #expect(lines.errors.map(\.line) == [2])
        #expect(lines.errors.first?.message.contains("UTF-8") == true)

        var csv = Data("type,prompt\naudio,good\naudio,\"bad ".utf8)
        csv.append(contentsOf: [0xFE])
        csv.append(Data("\nstill in the field\"\naudio,also good\n".utf8))
        let rows = CampaignFile.parse(csv, format: .csv)
        #expect(rows.lines.map(\.request.prompt) == ["good", "also good"])
        #expect(rows.errors.map(\.line) == [3])
        #expect(rows.lines.map(\.line) == [2, 5])
    }

    /// Numbers too large for an `Int` are values like any other, never a trap.
    @Test func hugeNumbersInFieldsAreErrorsOrTextNeverATrap() {
        let text = """
            {"type": "audio", "prompt": 1e300}
            {"type": "audio", "prompt": "x", "duration": 1e300}
            {"type": "audio", "prompt": "x", "user": 9.3e18}
            {"type": "audio", "prompt": "x", "metadata": {"sample_rate": 1e300}}
            """
        let file = CampaignFile.parse(text, format: .jsonl)
        #expect(file.recordCount == 4)
        #expect(file.lines.map(\.line) == [1, 3, 4])
        #expect(file.errors.map(\.field) == ["duration"])
    }

    /// A line that is not JSON says where and why, naming the field it broke in; the lines around it are read.
    /// Foundation's decoder said only "The given data was not valid JSON", which the file reported as "is not a
    /// JSON object" even for a line that was one, with a number too large in it.
    @Test(arguments: [
        (#"{"type": "audio", "prompt": "a", "duration": 1e400}"#, "duration",
         "is not valid JSON at column 46: the number 1e400 is too large (beyond ±1.8e308)"),
        (#"{"type": "audio", "prompt": "\ud800 x"}"#, "prompt",
         #"is not valid JSON at column 30: \uD800 is half of a surrogate pair, without its other half"#),
        (#"{"type": "audio", "prompt": "\udc00"}"#, "prompt",
         #"is not valid JSON at column 30: \uDC00 is half of a surrogate pair, without its other half"#),
        (#"{"type": "audio", "prompt": "d", "type": "video"}"#, "type",
         #"has the key "type" more than once in one object (at column 34)"#),
        (#"{"type": "audio", "prompt": "d", "metadata": {"a": 1, "\u0061": 2}}"#, "metadata",
         #"has the key "a" more than once in one object (at column 55)"#),
        (#"{"type": "audio", "prompt": "e",}"#, "prompt",
         "is not valid JSON at column 33: a comma before '}' (no member follows it)"),
        (#"{"type": "audio", "prompt": "f" "x": 1}"#, "prompt",
         #"is not valid JSON at column 33: expected ',' or '}' after a member, found '"'"#),
        ("{\"type\": \"audio\", \"prompt\": \"g\tx\"}", "prompt",
         "is not valid JSON at column 31: a control character (U+0009) in a string; write it as an escape"),
        (#"{"type": "audio", "prompt": "h", "duration": 01}"#, "duration",
         "is not valid JSON at column 46: a number does not start with 0 unless it is 0 (no leading zeros)"),
        (#"{"type": "audio", "prompt": "i"} trailing"#, nil,
         "is not valid JSON at column 34: unexpected text after the JSON value"),
        (#"{type: "audio"}"#, nil, "is not valid JSON at column 2: expected a key in double quotes, found 't'"),
        (#"{"type": "audio", "prompt": "j", "priority": True}"#, "priority",
         "is not valid JSON at column 46: expected a value, found 'T' (text takes double quotes; true, false and null are lower case)"),
        (#"{"type": "audio", "prompt": 'k'}"#, "prompt",
         "is not valid JSON at column 29: strings take double quotes, not single quotes"),
        (#"{"type": "audio", "prompt": "l\x"}"#, "prompt",
         #"is not valid JSON at column 31: \x is not an escape (use \", \\, \/, \b, \f, \n, \r, \t or \uXXXX)"#),
        (#"{"type": "audio", "prompt": "é m", "duration": -}"#, "duration",
         "is not valid JSON at column 49: expected a digit after '-', found '}'"),
        (#"{"type": "audio", "prompt": "n"#, "prompt", "is not valid JSON at column 29: a string that is never closed"),
        (#"{"type": "audio", "prompt": "o""#, "prompt",
         "is not valid JSON at column 32: expected ',' or '}' after a member, found the end of the text"),
        ("[1, 2]", nil, "is an array, not a JSON object"),
        ("null", nil, "is null, not a JSON object"),
        (#""audio""#, nil, "is a string, not a JSON object"),
    ] as [(String, String?, String)])
    func aLineThatIsNotAJSONObjectSaysWhereAndWhy(line: String, field: String?, message: String) {
        let text = #"{"type": "audio", "prompt": "before"}"# + "\n" + line + "\n" + #"{"type": "audio", "prompt": "after"}"#
        let file = CampaignFile.parse(text, format: .jsonl)
        #expect(file.lines.map(\.request.prompt) == ["before", "after"])
        #expect(file.errors == [CampaignLineError(line: 2, field: field, message: message)])
    }

    /// Whatever JSON's grammar allows is read, and read as Foundation reads it: the scan refuses nothing valid.
    @Test(arguments: [
        #"{}"#, #"[]"#, #" { "a" : [ 1 , -0 , 0.5 , -1.5e-3 , 2E+10 , 1e308 , true , false , null ] } "#,
        #"{"a": "\" \\ \/ \b \f \n \r \t \u00e9 \ud83d\ude00", "b": {"c": {"d": []}}, "é": "日本"}"#,
        #"{"a": 99999999999999999999999, "b": 123456789012345678901234567890e-10}"#,
        "{\"a\":\r\n\t1}", #""text""#, "0", "-0.0e0",
    ])
    func validJSONIsAcceptedAsFoundationReadsIt(text: String) throws {
        #expect(JSONSyntax.problem(in: Array(text.utf8)) == nil)
        let foundation = try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
        #expect(JSONSyntax.parse(Array(text.utf8)) == .success(foundation))
    }

    @Test func nestingIsBoundedAndAProblemOnALaterLineSaysWhichLine() {
        let deep = String(repeating: "[", count: JSONSyntax.maximumDepth + 1)
        #expect(JSONSyntax.problem(in: Array(deep.utf8))?.reason == "objects and arrays nest more than 512 deep")
        let body = "{\n  \"type\": \"audio\",\n  \"prompt\": \"x\" \"y\"\n}"
        #expect(
            JSONSyntax.problem(in: Array(body.utf8))?.description
                == "is not valid JSON at line 3, column 17: expected ',' or '}' after a member, found '\"'"
        )
    }

    /// A CSV metadata cell is JSON too: a bad one says where and why, and names the metadata column.
    @Test func aCSVMetadataCellThatIsNotAJSONObjectSaysWhy() {
        let text = """
            type,prompt,metadata
            audio,good,"{""scene"": 3}"
            audio,bad,"{""scene"": 3,}"
            audio,list,"[1, 2]"
            audio,twice,"{""a"": 1, ""a"": 2}"
            """
        let file = CampaignFile.parse(text, format: .csv)
        #expect(file.lines.map(\.request.prompt) == ["good"])
        #expect(file.lines.first?.request.metadata["scene"] == .number(3))
        #expect(
            file.errors == [
                CampaignLineError(
                    line: 3, field: "metadata",
                    message: "must be a JSON object; the text is not valid JSON at column 13: a comma before '}' (no member follows it)"
                ),
                CampaignLineError(line: 4, field: "metadata", message: "must be a JSON object, not an array"),
                CampaignLineError(
                    line: 5, field: "metadata",
                    message: #"must be a JSON object; the text has the key "a" more than once in one object (at column 10)"#
                ),
            ]
        )
    }

    /// A campaign path that is no campaign file says what it is instead: `Data(contentsOf:)` said "You don't
    /// have permission" for /dev/zero (and would have read it for ever), and "error 256" for a folder.
    @Test func aPathThatIsNoCampaignFileSaysWhatItIs() throws {
        let folder = temporaryDirectory()
        let reasons = [
            (folder.path, "it is a folder, not a campaign file"),
            ("/dev/zero", "it is a device or a socket, not a campaign file (a file, or a pipe such as /dev/stdin)"),
            (folder.appendingPathComponent("missing.jsonl").path, "No such file or directory"),
        ]
        for (path, reason) in reasons {
            #expect(throws: CampaignFileError(path: path, reason: reason)) { try CampaignFile.load(URL(fileURLWithPath: path)) }
        }
        let file = folder.appendingPathComponent("c.jsonl")
        try Data(repeating: UInt8(ascii: "x"), count: 3 << 20).write(to: file)
        let tooLarge = "it is larger than the 2 MiB a campaign file may be; split the campaign into several files"
        #expect(throws: CampaignFileError(path: file.path, reason: tooLarge)) {
            try CampaignFile.readFile(file.path, limit: 2 << 20)
        }
        #expect(try CampaignFile.readFile(file.path, limit: 3 << 20).count == 3 << 20)
    }

    /// A pipe has no size to check first: it is read up to the limit, and no further.
    @Test func aPipeIsReadUpToTheLimit() throws {
        for (size, fits) in [(100_000, true), (3 << 20, false)] {
            let pipe = Pipe()
            let writer = Thread {
                try? pipe.fileHandleForWriting.write(contentsOf: Data(repeating: 0x0A, count: size))
                try? pipe.fileHandleForWriting.close()
            }
            writer.start()
            let path = "/dev/fd/\(pipe.fileHandleForReading.fileDescriptor)"
            do {
                let bytes = try CampaignFile.readFile(path, limit: 2 << 20)
                #expect(fits && bytes.count == size)
            } catch {
                #expect(!fits && error.reason.hasPrefix("it is larger than the 2 MiB"))
            }
            // The rest is drained, so the writer ends (closing the read end first would raise SIGPIPE in it).
            _ = try? pipe.fileHandleForReading.readToEnd()
            try? pipe.fileHandleForReading.close()
        }
    }

    /// Metadata is kept in every job record and sent with every call: 100,000 keys are refused, naming the field.
    @Test func metadataIsBounded() throws {
        var request = GenerationRequest.audio(prompt: "x")
        request.metadata = Dictionary(uniqueKeysWithValues: (0..<2_000).map { ("key\($0)", JSONValue.number(Double($0))) })
        #expect(throws: GenerationError.self) { try RequestValidator().validate(request, fallbackID: "a") }
        do {
            _ = try RequestValidator().validate(request, fallbackID: "a")
        } catch {
            #expect(error.field == "metadata")
            #expect(error.message.hasSuffix("the limit is 16384 (2000 keys)"))
        }
        request.metadata = Dictionary(uniqueKeysWithValues: (0..<500).map { ("key\($0)", JSONValue.number(Double($0))) })
        #expect(try RequestValidator().validate(request, fallbackID: "a").metadata.count == 500)
    }

    @Test func durationsParse() {
        #expect(CampaignFile.parseDuration("30") == .seconds(30))
        #expect(CampaignFile.parseDuration("1500ms") == .milliseconds(1500))
        #expect(CampaignFile.parseDuration("2m") == .seconds(120))
        #expect(CampaignFile.parseDuration("-1") == nil)
        #expect(CampaignFile.parseDuration("nan") == nil)
        // Decimal only: Swift's Double reads "0x10" as 16 and "0x1p3" as 8; a duration is never written so.
        for text in ["0x10", "0x1p3", "infinity", "1_0", "5 s s"] {
            #expect(CampaignFile.parseDuration(text) == nil, "\(text)")
        }
        #expect(CampaignFile.parseDuration("2.5e1") == .seconds(25))
        // A field of another JSON kind says which kind it was.
        let file = CampaignFile.parse(#"{"type":"audio","prompt":"p","duration":true}"#, format: .jsonl)
        #expect(file.errors.map(\.description) == ["line 1: duration: must be text or a number, not a boolean"])
    }
}

@Suite struct LocalMediaTests {
    /// A first attempt's call context, writing the artifact to `url`.
    static func context(writingTo url: URL) -> ProviderCallContext {
        ProviderCallContext(destination: url, clock: .continuous, attempt: 1, idempotencyKey: "k", logger: .init(label: "t"))
    }

    @Test func localProviderWritesAPlayableWAVOfTheRequestedLengthAndRate() async throws {
        let provider = LocalProvider(
            configuration: .init(name: "l", submitLatency: .zero, latencyPerMediaSecond: .zero)
        )
        let url = temporaryDirectory().appendingPathComponent("a.wav")
        var request = validated(.audio(prompt: "Relaxing ambient sound", duration: .milliseconds(1500)))
        request.metadata["sample_rate"] = .number(16_000)
        let context = Self.context(writingTo: url)
        let output = try await provider.generate(request, context: context)
        let data = try Data(contentsOf: url)
        #expect(output.format == .wav)
        #expect(data.prefix(4) == Data("RIFF".utf8))
        #expect(data[8..<16] == Data("WAVEfmt ".utf8))
        let rate = Int(data[24]) | Int(data[25]) << 8 | Int(data[26]) << 16
        #expect(rate == 16_000)
        let expectedSize = 44 + 24_000 * 2  // 1.5 s of 16-bit mono at 16 kHz
        #expect(data.count == expectedSize)
        let second = temporaryDirectory().appendingPathComponent("b.wav")
        _ = try await provider.generate(
            request,
            context: ProviderCallContext(
                destination: second,
                clock: .continuous,
                attempt: 1,
                idempotencyKey: "k2",
                logger: .init(label: "t")
            )
        )
        #expect(try Data(contentsOf: second) == data, "deterministic for a prompt and seed")
    }

    /// A sample rate the local provider cannot make is refused as a provider's API refuses it (400, naming the
    /// field), not replaced by the default without a word.
    @Test(arguments: [
        (JSONValue.string("abc"), false), (.number(1e30), false), (.number(7_999), false), (.number(48_001), false),
        (.number(22_050.5), false), (.number(8_000), true), (.number(44_100), true), (.number(48_000), true),
    ])
    func aSampleRateOutsideWhatTheLocalProviderMakesIsRefused(rate: JSONValue, made: Bool) async throws {
        let provider = LocalProvider(
            configuration: .init(name: "l", submitLatency: .zero, latencyPerMediaSecond: .zero)
        )
        let url = temporaryDirectory().appendingPathComponent("a.wav")
        var request = validated(.audio(prompt: "A short line", duration: .milliseconds(100)))
        request.metadata["sample_rate"] = rate
        let context = Self.context(writingTo: url)
        do {
            _ = try await provider.generate(request, context: context)
            #expect(made)
            let data = try Data(contentsOf: url)
            #expect(rate.exactInt == Int(data[24]) | Int(data[25]) << 8 | Int(data[26]) << 16)
        } catch let error as GenerationError {
            #expect(!made)
            #expect(error.code == .invalidRequest)
            #expect(error.field == "metadata.sample_rate")
            #expect(!error.code.isRetryable)
        }
    }

    @Test func localProviderWritesAnAnimatedGIFThatDecodes() async throws {
        let provider = LocalProvider(
            configuration: .init(name: "l", submitLatency: .zero, latencyPerMediaSecond: .zero)
        )
        let url = temporaryDirectory().appendingPathComponent("v.gif")
        let request = validated(
            .video(prompt: "Nature scene", duration: .seconds(2), resolution: Resolution(width: 64, height: 48))
        )
        _ = try await provider.generate(
            request,
            context: ProviderCallContext(
                destination: url,
                clock: .continuous,
                attempt: 1,
                idempotencyKey: "k",
                logger: .init(label: "t")
            )
        )
        let data = try Data(contentsOf: url)
        // Walk the blocks as a decoder would: 64 × 48, 5 frames per second, the trailer last.
        #expect(try MediaCheck.gif(data) == MediaCheck.GIF(width: 64, height: 48, frames: 10))
    }
}

@Suite struct SHA256Tests {
    @Test(arguments: [
        ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        (
            "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        ),
    ])
    func knownVectors(input: String, expected: String) throws {
        #expect(SHA256Hasher.hex(of: input) == expected)
    }

    @Test func unalignedChunksMatchCoreutils() throws {
        var rng = SplitMix64(seed: 9)
        let bytes = (0..<200_003).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let url = temporaryDirectory().appendingPathComponent("blob")
        try Data(bytes).write(to: url)
        var hasher = SHA256Hasher()
        var offset = 0
        for size in [1, 63, 64, 65, 1000, 4096] + Array(repeating: 65_536, count: 4) where offset < bytes.count {
            let end = min(bytes.count, offset + size)
            bytes[offset..<end].withUnsafeBytes { hasher.update(raw: $0) }
            offset = end
        }
        bytes[offset...].withUnsafeBytes { hasher.update(raw: $0) }
        #expect(hasher.finalizeHex() == (try sha256sum(url)))
    }
}
