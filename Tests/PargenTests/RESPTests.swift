import PargenRedis
import Testing

/// The RESP3 codec against the protocol specification's own examples, byte by byte, cut at every point.
@Suite struct RESPTests {
    static func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

    @Test func commandsAreArraysOfBulkStrings() {
        #expect(RESP.command(["SET", "key", "v"]) == Self.bytes("*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$1\r\nv\r\n"))
        #expect(RESP.command([[0x00, 0x0D, 0x0A]]) == [0x2A, 0x31, 0x0D, 0x0A, 0x24, 0x33, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x0D, 0x0A])
    }

    static let examples: [(String, RESPValue)] = [
        ("+OK\r\n", .simpleString("OK")),
        ("-ERR unknown command 'asdf'\r\n", .simpleError("ERR unknown command 'asdf'")),
        (":1000\r\n", .integer(1000)),
        (":-5\r\n", .integer(-5)),
        ("$5\r\nhello\r\n", .bulkString(Array("hello".utf8))),
        ("$0\r\n\r\n", .bulkString([])),
        ("$-1\r\n", .bulkString(nil)),
        ("*2\r\n$5\r\nhello\r\n$5\r\nworld\r\n", .array([.bulkString(Array("hello".utf8)), .bulkString(Array("world".utf8))])),
        ("*0\r\n", .array([])),
        ("*-1\r\n", .array(nil)),
        ("*2\r\n*1\r\n:1\r\n*1\r\n+x\r\n", .array([.array([.integer(1)]), .array([.simpleString("x")])])),
        ("_\r\n", .null),
        ("#t\r\n", .boolean(true)),
        ("#f\r\n", .boolean(false)),
        (",1.23\r\n", .double(1.23)),
        (",inf\r\n", .double(.infinity)),
        (",-inf\r\n", .double(-.infinity)),
        ("(3492890328409238509324850943850943825024385\r\n", .bigNumber("3492890328409238509324850943850943825024385")),
        ("!21\r\nSYNTAX invalid syntax\r\n", .bulkError("SYNTAX invalid syntax")),
        ("=15\r\ntxt:Some string\r\n", .verbatimString(format: "txt", text: "Some string")),
        ("%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n", .map([(.simpleString("first"), .integer(1)), (.simpleString("second"), .integer(2))])),
        ("~2\r\n+a\r\n+b\r\n", .set([.simpleString("a"), .simpleString("b")])),
        (">2\r\n+pubsub\r\n+message\r\n", .push([.simpleString("pubsub"), .simpleString("message")])),
    ]

    @Test func everyTypeOfTheSpecificationReads() throws {
        for (text, expected) in Self.examples {
            let bytes = Self.bytes(text)
            let parsed = try #require(try RESP.parse(bytes), "\(text.debugDescription)")
            #expect(parsed.0 == expected, "\(text.debugDescription)")
            #expect(parsed.1 == bytes.count, "\(text.debugDescription) takes all its bytes")
        }
    }

    /// A reply cut anywhere is "not yet", never an error and never a wrong value; replies pipelined back to
    /// back read one after the other.
    @Test func aCutReplyWaitsForMoreAndPipelinedRepliesReadInTurn() throws {
        for (text, _) in Self.examples {
            let bytes = Self.bytes(text)
            for cut in 0..<bytes.count {
                #expect(try RESP.parse(Array(bytes[0..<cut])) == nil, "\(text.debugDescription) cut at \(cut)")
            }
        }
        let pipeline = Self.examples.flatMap { Self.bytes($0.0) }
        var offset = 0
        var read: [RESPValue] = []
        while let (value, used) = try RESP.parse(pipeline, from: offset) {
            read.append(value)
            offset += used
        }
        #expect(read == Self.examples.map(\.1))
        #expect(offset == pipeline.count)
    }

    @Test func hostileRepliesAreErrorsNotCrashesOrAllocations() {
        let hostile = [
            "?what\r\n", "$-2\r\n", "$99999999999\r\n", "*99999999999\r\n", ":12a\r\n", ":\r\n", "$3\r\nabcd\r\n",
            "+line\rX", "+line\n", "#x\r\n", ",one\r\n", "(12x\r\n", "_x\r\n", "=2\r\nab\r\n", ":99999999999999999999999\r\n",
            String(repeating: "*1\r\n", count: 100) + ":1\r\n",
        ]
        for text in hostile {
            #expect(throws: RESPError.self, "\(text.prefix(30).debugDescription)") { _ = try RESP.parse(Self.bytes(text)) }
        }
    }
}
