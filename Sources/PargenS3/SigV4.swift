import Crypto
public import Foundation

/// AWS credentials for S3-compatible storage (AWS S3, Cloudflare R2, MinIO). They come from the environment or
/// a configuration file, never from code, and ``description`` never shows the secret.
public struct AWSCredentials: Sendable, Hashable, CustomStringConvertible {
    public var accessKeyID: String
    public var secretAccessKey: String
    /// For temporary credentials (`x-amz-security-token`).
    public var sessionToken: String?

    public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
    }

    public var description: String { "AWSCredentials(\(accessKeyID), secret: ***)" }
}

/// AWS Signature Version 4 (`AWS4-HMAC-SHA256`), for requests in the `Authorization` header.
///
/// Checked against AWS's published vectors (the SigV4 test suite's get-vanilla, get-vanilla-query-order-key-case
/// and post-vanilla; the S3 API reference's GET Object, GET bucket lifecycle and list objects examples) in
/// `SigV4Tests`.
public struct SigV4Signer: Sendable {
    public var credentials: AWSCredentials
    public var region: String
    public var service: String

    public init(credentials: AWSCredentials, region: String, service: String = "s3") {
        self.credentials = credentials
        self.region = region
        self.service = service
    }

    /// Hex SHA-256 of an empty payload.
    public static let emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    /// The headers to add to a request so that it is signed: `x-amz-date`, `x-amz-security-token` with
    /// temporary credentials, and `authorization`. `headers` are the request's own (every one is signed);
    /// `host` is taken from `url` when they have none.
    ///
    /// - Parameter payloadHash: Hex SHA-256 of the body (S3 also wants it sent as `x-amz-content-sha256`).
    public func sign(
        method: String,
        url: URL,
        headers: [(String, String)],
        payloadHash: String,
        date: Date
    ) -> [(String, String)] {
        let amzDate = Self.amzDate(date)
        var signed = headers
        if !signed.contains(where: { $0.0.lowercased() == "host" }), let host = url.host {
            let port = url.port.map { ":\($0)" } ?? ""
            signed.append(("host", host + port))
        }
        signed.append(("x-amz-date", amzDate))
        var added = [("x-amz-date", amzDate)]
        if let token = credentials.sessionToken {
            signed.append(("x-amz-security-token", token))
            added.append(("x-amz-security-token", token))
        }
        let (canonical, signedHeaders) = canonicalRequest(method: method, url: url, headers: signed, payloadHash: payloadHash)
        let day = String(amzDate.prefix(8))
        let scope = "\(day)/\(region)/\(service)/aws4_request"
        let stringToSign = "AWS4-HMAC-SHA256\n\(amzDate)\n\(scope)\n\(Self.hex(SHA256.hash(data: Data(canonical.utf8))))"
        let signature = Self.hex(HMAC<SHA256>.authenticationCode(for: Data(stringToSign.utf8), using: signingKey(day: day)))
        added.append(
            (
                "authorization",
                "AWS4-HMAC-SHA256 Credential=\(credentials.accessKeyID)/\(scope), SignedHeaders=\(signedHeaders), Signature=\(signature)"
            )
        )
        return added
    }

    /// The canonical request, and the signed headers' list.
    package func canonicalRequest(
        method: String,
        url: URL,
        headers: [(String, String)],
        payloadHash: String
    ) -> (String, String) {
        let components = URLComponents(url: url, resolvingAgainstBaseURL: false)
        let path = components?.percentEncodedPath ?? "/"
        // S3 signs the path as sent, each segment encoded once; other services encode the encoded path again.
        let segments = (path.isEmpty ? "/" : path).split(separator: "/", omittingEmptySubsequences: false).map { segment in
            let decoded = String(segment).removingPercentEncoding ?? String(segment)
            let once = Self.encode(decoded)
            return service == "s3" ? once : Self.encode(once)
        }
        let canonicalPath = segments.joined(separator: "/")
        var pairs: [(String, String)] = []
        for pair in (components?.percentEncodedQuery ?? "").split(separator: "&") {
            let parts: [String] = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map { part in
                let raw = String(part)
                return Self.encode(raw.replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? raw)
            }
            pairs.append((parts[0], parts.count > 1 ? parts[1] : ""))
        }
        pairs.sort { left, right in left.0 == right.0 ? left.1 < right.1 : left.0 < right.0 }
        let query = pairs.map { "\($0.0)=\($0.1)" }.joined(separator: "&")
        var byName: [String: [String]] = [:]
        for (name, value) in headers {
            let folded = value.split(whereSeparator: { $0 == " " || $0 == "\t" }).joined(separator: " ")
            byName[name.lowercased(), default: []].append(folded)
        }
        let names = byName.keys.sorted()
        let canonicalHeaders = names.map { "\($0):\(byName[$0]!.joined(separator: ","))\n" }.joined()
        let signedHeaders = names.joined(separator: ";")
        let canonical = [method.uppercased(), canonicalPath, query, canonicalHeaders, signedHeaders, payloadHash]
            .joined(separator: "\n")
        return (canonical, signedHeaders)
    }

    private func signingKey(day: String) -> SymmetricKey {
        func mac(_ key: SymmetricKey, _ text: String) -> SymmetricKey {
            SymmetricKey(data: Data(HMAC<SHA256>.authenticationCode(for: Data(text.utf8), using: key)))
        }
        let dated = mac(SymmetricKey(data: Data("AWS4\(credentials.secretAccessKey)".utf8)), day)
        return mac(mac(mac(dated, region), service), "aws4_request")
    }

    /// RFC 3986 encoding: every byte but letters, digits, `-`, `.`, `_` and `~`.
    static func encode(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case 0x41...0x5A, 0x61...0x7A, 0x30...0x39, 0x2D, 0x2E, 0x5F, 0x7E: out.unicodeScalars.append(UnicodeScalar(byte))
            default: out += String(format: "%%%02X", byte)
            }
        }
        return out
    }

    /// `20150830T123600Z`.
    static func amzDate(_ date: Date) -> String {
        var time = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        gmtime_r(&time, &parts)
        return String(
            format: "%04d%02d%02dT%02d%02d%02dZ",
            parts.tm_year + 1900,
            parts.tm_mon + 1,
            parts.tm_mday,
            parts.tm_hour,
            parts.tm_min,
            parts.tm_sec
        )
    }

    /// Lower-case hex, two digits a byte (a lookup per nibble rather than `String(format:)` per byte).
    static func hex(_ bytes: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var text = [UInt8]()
        for byte in bytes {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: text, as: UTF8.self)
    }
}
