import Foundation
import PargenS3
import Testing

/// The signer against AWS's published vectors: the Signature Version 4 test suite (credentials AKIDEXAMPLE,
/// 2015-08-30T12:36:00Z, us-east-1, service `service`) and the S3 API reference's examples of header signing
/// (AKIAIOSFODNN7EXAMPLE, 2013-05-24T00:00:00Z, bucket examplebucket). botocore computes the same values.
@Suite struct SigV4Tests {
    static let suite = SigV4Signer(
        credentials: AWSCredentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
        region: "us-east-1",
        service: "service"
    )
    static let suiteDate = Date(timeIntervalSince1970: 1_440_938_160)  // 2015-08-30T12:36:00Z
    static let s3 = SigV4Signer(
        credentials: AWSCredentials(accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        region: "us-east-1"
    )
    static let s3Date = Date(timeIntervalSince1970: 1_369_353_600)  // 2013-05-24T00:00:00Z

    struct Vector: Sendable, CustomTestStringConvertible {
        var name: String
        var method: String
        var url: String
        var headers: [(String, String)]
        var suite: Bool
        var signedHeaders: String
        var signature: String
        var testDescription: String { name }
    }

    static let empty = SigV4Signer.emptyPayloadHash

    static let vectors: [Vector] = [
        Vector(name: "get-vanilla", method: "GET", url: "https://example.amazonaws.com/", headers: [], suite: true,
               signedHeaders: "host;x-amz-date", signature: "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
        Vector(name: "get-vanilla-query-order-key-case", method: "GET", url: "https://example.amazonaws.com/?Param2=value2&Param1=value1",
               headers: [], suite: true, signedHeaders: "host;x-amz-date",
               signature: "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
        Vector(name: "post-vanilla", method: "POST", url: "https://example.amazonaws.com/", headers: [], suite: true,
               signedHeaders: "host;x-amz-date", signature: "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
        Vector(name: "S3 GET Object (a range)", method: "GET", url: "https://examplebucket.s3.amazonaws.com/test.txt",
               headers: [("Range", "bytes=0-9"), ("x-amz-content-sha256", empty)], suite: false,
               signedHeaders: "host;range;x-amz-content-sha256;x-amz-date",
               signature: "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"),
        Vector(name: "S3 GET bucket lifecycle", method: "GET", url: "https://examplebucket.s3.amazonaws.com/?lifecycle",
               headers: [("x-amz-content-sha256", empty)], suite: false, signedHeaders: "host;x-amz-content-sha256;x-amz-date",
               signature: "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"),
        Vector(name: "S3 list objects", method: "GET", url: "https://examplebucket.s3.amazonaws.com/?max-keys=2&prefix=J",
               headers: [("x-amz-content-sha256", empty)], suite: false, signedHeaders: "host;x-amz-content-sha256;x-amz-date",
               signature: "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"),
    ]

    @Test(arguments: vectors)
    func signsAsAWSPublished(_ vector: Vector) throws {
        let signer = vector.suite ? Self.suite : Self.s3
        let added = signer.sign(
            method: vector.method,
            url: try #require(URL(string: vector.url)),
            headers: vector.headers,
            payloadHash: Self.empty,
            date: vector.suite ? Self.suiteDate : Self.s3Date
        )
        let authorization = try #require(added.first { $0.0 == "authorization" }?.1)
        let day = vector.suite ? "20150830" : "20130524"
        let key = signer.credentials.accessKeyID
        let service = vector.suite ? "service" : "s3"
        #expect(
            authorization
                == "AWS4-HMAC-SHA256 Credential=\(key)/\(day)/us-east-1/\(service)/aws4_request, SignedHeaders=\(vector.signedHeaders), Signature=\(vector.signature)"
        )
        #expect(added.first { $0.0 == "x-amz-date" }?.1 == (vector.suite ? "20150830T123600Z" : "20130524T000000Z"))
    }

    @Test func temporaryCredentialsSignTheirTokenAndTheSecretNeverPrints() {
        var credentials = Self.suite.credentials
        credentials.sessionToken = "token-1"
        let signer = SigV4Signer(credentials: credentials, region: "us-east-1", service: "service")
        let added = signer.sign(method: "GET", url: URL(string: "https://example.amazonaws.com/")!, headers: [], payloadHash: Self.empty, date: Self.suiteDate)
        #expect(added.contains { $0 == ("x-amz-security-token", "token-1") })
        #expect(added.first { $0.0 == "authorization" }?.1.contains("SignedHeaders=host;x-amz-date;x-amz-security-token") == true)
        #expect(!"\(credentials)".contains(credentials.secretAccessKey))
    }
}
