/// The kind of media a request asks for.
public enum GenerationKind: String, Sendable, Hashable, Codable, CaseIterable, CustomStringConvertible {
    case audio
    case video

    public var description: String { rawValue }

    /// Position in ``allCases``, for tables kept per kind.
    var index: Int { self == .audio ? 0 : 1 }
}

/// How urgent a request is. Higher priorities are leased, batched and budgeted first.
///
/// Named `GenerationPriority` because Swift's own `TaskPriority` already exists.
public enum GenerationPriority: Int, Sendable, Hashable, Codable, CaseIterable, Comparable, CustomStringConvertible {
    case low = 0
    case normal = 1
    case high = 2
    case urgent = 3

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }

    public var description: String {
        switch self {
        case .low: "low"
        case .normal: "normal"
        case .high: "high"
        case .urgent: "urgent"
        }
    }

    /// Parses `low`, `normal`, `high` or `urgent` (case-insensitive).
    public init?(name: String) {
        guard let match = Self.allCases.first(where: { $0.description == name.lowercased() }) else { return nil }
        self = match
    }
}

/// A container or codec name such as `wav`, `mp3`, `mp4` or `gif`, lower-cased.
public struct MediaFormat: Sendable, Hashable, Codable, CustomStringConvertible, ExpressibleByStringLiteral {
    public let name: String

    public init(_ name: String) { self.name = name.lowercased() }
    public init(stringLiteral value: String) { self.init(value) }

    public var description: String { name }

    public static let wav = MediaFormat("wav")
    public static let mp3 = MediaFormat("mp3")
    public static let opus = MediaFormat("opus")
    public static let aac = MediaFormat("aac")
    public static let flac = MediaFormat("flac")
    public static let pcm = MediaFormat("pcm")
    public static let mp4 = MediaFormat("mp4")
    public static let webm = MediaFormat("webm")
    public static let gif = MediaFormat("gif")

    /// The MIME type of files in this format.
    public var contentType: String {
        switch name {
        case "wav": "audio/wav"
        case "mp3": "audio/mpeg"
        case "opus": "audio/opus"
        case "aac": "audio/aac"
        case "flac": "audio/flac"
        case "pcm": "audio/L16"
        case "mp4": "video/mp4"
        case "webm": "video/webm"
        case "gif": "image/gif"
        default: "application/octet-stream"
        }
    }
}

/// A video frame size in pixels.
public struct Resolution: Sendable, Hashable, Codable, CustomStringConvertible, Comparable {
    public var width: Int
    public var height: Int

    public init(width: Int, height: Int) {
        self.width = width
        self.height = height
    }

    public static let p360 = Resolution(width: 640, height: 360)
    public static let p480 = Resolution(width: 854, height: 480)
    public static let p720 = Resolution(width: 1280, height: 720)
    public static let p1080 = Resolution(width: 1920, height: 1080)
    public static let p4k = Resolution(width: 3840, height: 2160)

    public var pixels: Int { width * height }
    public var description: String { "\(width)x\(height)" }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.pixels < rhs.pixels }

    /// Parses `360p`, `480p`, `720p`, `1080p`, `4k`/`2160p`, or `WIDTHxHEIGHT` (each side 16 to 7680).
    public init?(parsing text: String) {
        let value = text.trimmingWhitespace().lowercased()
        switch value {
        case "360p": self = .p360
        case "480p", "sd": self = .p480
        case "720p", "hd": self = .p720
        case "1080p", "fullhd", "fhd": self = .p1080
        case "4k", "2160p", "uhd": self = .p4k
        default:
            let parts = value.split(separator: "x", omittingEmptySubsequences: false)
            guard parts.count == 2, let w = Int(parts[0]), let h = Int(parts[1]),
                (16...7680).contains(w), (16...7680).contains(h)
            else { return nil }
            self.init(width: w, height: h)
        }
    }
}

extension String {
    package func trimmingWhitespace() -> String {
        var scalars = Substring(self)
        while let first = scalars.first, first.isWhitespace { scalars.removeFirst() }
        while let last = scalars.last, last.isWhitespace { scalars.removeLast() }
        return String(scalars)
    }

    /// Trims and folds every run of white space into one space.
    package func normalizedWhitespace() -> String {
        split(whereSeparator: { $0.isWhitespace }).joined(separator: " ")
    }
}
