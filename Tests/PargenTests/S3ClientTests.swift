import AsyncHTTPClient
import Crypto
import Foundation
import PargenS3
import Synchronization
import Testing

/// The S3-compatible server of the test run: `scripts/test.sh` starts moto's server on loopback and names it in
/// `PARGEN_TEST_S3_URL` (or start one with `scripts/s3.sh start DIR` and export its endpoint).
enum TestS3 {
    struct Missing: Error, CustomStringConvertible {
        var description: String {
            "PARGEN_TEST_S3_URL is not set: run the tests with scripts/test.sh, which starts an S3-compatible server on 127.0.0.1 and sets it"
        }
    }

    static func configuration(bucket: String = "t-" + UUID().uuidString.lowercased().prefix(18)) throws -> S3Configuration {
        guard let endpoint = ProcessInfo.processInfo.environment["PARGEN_TEST_S3_URL"].flatMap(URL.init(string:)) else {
            throw Missing()
        }
        return S3Configuration(
            endpoint: endpoint,
            bucket: bucket,
            credentials: AWSCredentials(accessKeyID: "AKIDTEST", secretAccessKey: "test-secret-not-real"),
            baseDelay: .milliseconds(20)
        )
    }

    static func client(_ configuration: S3Configuration) async throws -> S3Client {
        let client = S3Client(configuration: configuration, httpClient: sharedTestHTTPClient)
        try await client.createBucket()
        return client
    }
}

func randomFile(_ size: Int, seed: UInt64 = 1) throws -> URL {
    var state = seed
    var bytes = [UInt8](repeating: 0, count: size)
    for i in bytes.indices {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        bytes[i] = UInt8(truncatingIfNeeded: state >> 33)
    }
    let url = temporaryDirectory().appendingPathComponent("blob-\(size)-\(seed).bin")
    try Data(bytes).write(to: url)
    return url
}

func sha256Hex(_ url: URL) throws -> String {
    SHA256.hash(data: try Data(contentsOf: url)).map { String(format: "%02x", $0) }.joined()
}

@Suite(.timeLimit(.minutes(2))) struct S3ClientTests {
    @Test func anObjectGoesUpAndComesBackWhole() async throws {
        let s3 = try await TestS3.client(try TestS3.configuration())
        let file = try randomFile(300_000)
        let stored = try await s3.putObject(key: "media/ab/clip one.mp3", file: file, contentType: "audio/mpeg")
        #expect(stored.size == 300_000)
        let head = try #require(try await s3.headObject(key: "media/ab/clip one.mp3"))
        #expect(head.size == 300_000 && head.etag == stored.etag)
        #expect(try await s3.headObject(key: "media/ab/missing.mp3") == nil)
        let back = temporaryDirectory().appendingPathComponent("back.mp3")
        let written = try await s3.getObject(key: "media/ab/clip one.mp3", to: back, expectedSHA256: try sha256Hex(file))
        #expect(written == 300_000)
        #expect(try Data(contentsOf: back) == Data(contentsOf: file))
        let listed = try await s3.list(prefix: "media/ab/")
        #expect(listed.map(\.key) == ["media/ab/clip one.mp3"])
    }

    @Test func aLargeFileGoesUpInPartsAndItsETagIsTheMultipartOne() async throws {
        var configuration = try TestS3.configuration()
        configuration.multipartThreshold = 6 << 20
        configuration.partSize = 5 << 20
        let s3 = try await TestS3.client(configuration)
        let size = (5 << 20) * 2 + 12_345
        let file = try randomFile(size, seed: 2)
        let stored = try await s3.putObject(key: "big/video.mp4", file: file, contentType: "video/mp4")
        #expect(stored.etag.hasSuffix("-3"), "three parts: \(stored.etag)")
        let back = temporaryDirectory().appendingPathComponent("video.mp4")
        try await s3.getObject(key: "big/video.mp4", to: back, expectedSHA256: try sha256Hex(file))
        #expect(try sha256Hex(back) == (try sha256Hex(file)))
    }

    @Test func aDownloadWhoseHashDiffersIsAnErrorAndLeavesNoFile() async throws {
        var configuration = try TestS3.configuration()
        configuration.maxAttempts = 2
        let s3 = try await TestS3.client(configuration)
        let file = try randomFile(1000, seed: 3)
        try await s3.putObject(key: "x.wav", file: file, contentType: "audio/wav")
        let back = temporaryDirectory().appendingPathComponent("x.wav")
        await #expect(throws: S3Error.self) {
            try await s3.getObject(key: "x.wav", to: back, expectedSHA256: String(repeating: "0", count: 64))
        }
        #expect(!FileManager.default.fileExists(atPath: back.path))
        let missing = await #expect(throws: S3Error.self) { try await s3.getObject(key: "nope.wav", to: back) }
        #expect(missing?.code == "NoSuchKey" && missing?.retryable == false, "\(String(describing: missing))")
    }

    @Test func aRefusedSignatureIsNamedWithoutTheSecret() async throws {
        // moto checks signatures only when asked to; a missing bucket is what it always refuses.
        var configuration = try TestS3.configuration(bucket: "no-such-bucket-here")
        configuration.maxAttempts = 1
        let s3 = S3Client(configuration: configuration, httpClient: sharedTestHTTPClient)
        let file = try randomFile(10, seed: 4)
        let error = await #expect(throws: S3Error.self) {
            try await s3.putObject(key: "a", file: file, contentType: "audio/wav")
        }
        #expect(error?.code == "NoSuchBucket", "\(String(describing: error))")
        #expect(!"\(String(describing: error))".contains("test-secret-not-real"))
    }
}

/// The client waits between tries on the clock it is given, not on the real one: a test (or a simulation) drives
/// its backoff without sleeping.
@Suite struct S3ClientBackoffTests {
    @Test func aFailingRequestWaitsOutItsBackoffOnTheInjectedClock() async throws {
        // A loopback port that nothing listens on: every try fails with a transport error (retryable) once the
        // HTTP client has given up connecting, at the request's deadline.
        let configuration = S3Configuration(
            endpoint: URL(string: "http://127.0.0.1:\(try FaultMatrixTests.closedPort())")!,
            bucket: "b",
            credentials: AWSCredentials(accessKeyID: "AKIDTEST", secretAccessKey: "test-secret-not-real"),
            maxAttempts: 8,
            baseDelay: .seconds(10),
            requestTimeout: .milliseconds(300)
        )
        let waits = Mutex<[Duration]>([])
        let client = S3Client(configuration: configuration, httpClient: sharedTestHTTPClient) { delay in
            waits.withLock { $0.append(delay) }
        }
        let started = ContinuousClock.now
        let error = await #expect(throws: S3Error.self) { _ = try await client.headObject(key: "k") }
        #expect(error?.code == "transport")
        // Seven waits between eight tries, each in the upper half of its ceiling (the doubling is capped at 10 s),
        // none of them spent for real.
        let seen = waits.withLock { $0 }
        #expect(seen.count == 7)
        for (wait, ceiling) in zip(seen, Array(repeating: Duration.seconds(10), count: 7)) {
            #expect(wait >= ceiling / 2 && wait <= ceiling)
        }
        // The waits add up to at least 35 s; eight tries of 0.3 s take far less than that, even on a machine running
        // every suite at once (four tries took 8.2 s there, against a bound of 7 s when the waits added up to 7 s).
        #expect(ContinuousClock.now - started < .seconds(30))
    }
}
