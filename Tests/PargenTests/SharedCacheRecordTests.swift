import Foundation
import Pargen
@testable import PargenCacheTiers
import PargenS3
import Testing

/// A shared cache record comes from whoever can write to the shared Redis or bucket: one whose numbers cannot be
/// is a miss, like one that is not JSON. A duration of 1e300 seconds stopped the process that read it (Double to
/// Int64 traps).
@Suite struct SharedCacheRecordTests {
    @Test func aRecordWithImpossibleNumbersIsAMiss() throws {
        let objects = S3Client(
            configuration: S3Configuration(
                endpoint: URL(string: "http://127.0.0.1:9")!,
                bucket: "b",
                credentials: AWSCredentials(accessKeyID: "AKIDTEST", secretAccessKey: "test-secret-not-real")
            ),
            httpClient: sharedTestHTTPClient
        )
        let tiers = TieredArtifactCache(objects: objects, redis: nil)
        let artifact = SharedArtifact(
            fingerprint: "f", key: "artifacts/f.wav", publicURL: nil, format: .wav, contentType: "audio/wav",
            byteCount: 1024, sha256: String(repeating: "a", count: 64), durationSeconds: 2.5, provider: "p", cost: .zero
        )
        func encoded(_ change: (inout TieredArtifactCache.Record) -> Void) throws -> Data {
            var record = TieredArtifactCache.Record(artifact: artifact, createdAt: 1_700_000_000)
            change(&record)
            return try JSONEncoder().encode(record)
        }
        #expect(tiers.decode(try encoded { _ in })?.artifact.durationSeconds == 2.5)
        for (name, change) in [
            ("a duration beyond a day", { (r: inout TieredArtifactCache.Record) in r.artifact.durationSeconds = 1e300 }),
            ("a negative duration", { (r: inout TieredArtifactCache.Record) in r.artifact.durationSeconds = -1 }),
            ("a negative size", { (r: inout TieredArtifactCache.Record) in r.artifact.byteCount = -1 }),
            ("a short hash", { (r: inout TieredArtifactCache.Record) in r.artifact.sha256 = "abc" }),
        ] {
            #expect(tiers.decode(try encoded(change)) == nil, "\(name)")
        }
        // NaN and infinity are not JSON: a record carrying them does not decode at all.
        #expect(tiers.decode(Data(#"{"artifact":{},"createdAt":1e999}"#.utf8)) == nil)
    }
}
