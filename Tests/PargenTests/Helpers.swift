import Foundation
import Pargen

func validated(_ request: GenerationRequest, id: String = "r") -> ValidatedRequest {
    try! RequestValidator().validate(request, fallbackID: id)
}

func temporaryDirectory() -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("pargen-tests-\(UUID().uuidString)")
    try! FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

/// SHA-256 of a file by coreutils' `sha256sum`, an implementation independent of Pargen's.
func sha256sum(_ url: URL) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
    process.arguments = [url.path]
    let pipe = Pipe()
    process.standardOutput = pipe
    try process.run()
    let output = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return String(decoding: output, as: UTF8.self).split(separator: " ").first.map(String.init) ?? ""
}

/// Checks media files by their own structure, independently of Pargen's writers and hashes.
enum MediaCheck {
    struct Malformed: Error, CustomStringConvertible {
        var description: String
    }

    struct WAV: Equatable {
        var sampleRate: Int
        var channels: Int
        var bitsPerSample: Int
        var dataBytes: Int
        var seconds: Double { Double(dataBytes) / Double(sampleRate * channels * bitsPerSample / 8) }
    }

    private static func le(_ bytes: [UInt8], _ at: Int, _ count: Int) -> Int {
        (0..<count).reduce(0) { $0 | Int(bytes[at + $1]) << (8 * $1) }
    }

    /// Parses a RIFF/WAVE file chunk by chunk: the RIFF size must be the file's, and the `data` chunk must be
    /// whole (a file cut short fails here).
    static func wav(_ data: Data) throws -> WAV {
        let bytes = [UInt8](data)
        guard bytes.count >= 12, bytes[0..<4] == [0x52, 0x49, 0x46, 0x46], bytes[8..<12] == [0x57, 0x41, 0x56, 0x45]
        else { throw Malformed(description: "not RIFF/WAVE") }
        guard le(bytes, 4, 4) == bytes.count - 8 else {
            throw Malformed(description: "RIFF size \(le(bytes, 4, 4)) for a file of \(bytes.count) bytes")
        }
        var index = 12
        var format: (rate: Int, channels: Int, bits: Int)?
        while index + 8 <= bytes.count {
            let id = String(decoding: bytes[index..<index + 4], as: UTF8.self)
            let size = le(bytes, index + 4, 4)
            let body = index + 8
            guard body + size <= bytes.count else { throw Malformed(description: "chunk \(id) runs past the end") }
            if id == "fmt " {
                guard le(bytes, body, 2) == 1 else { throw Malformed(description: "not PCM") }
                format = (le(bytes, body + 4, 4), le(bytes, body + 2, 2), le(bytes, body + 14, 2))
            } else if id == "data" {
                guard let format else { throw Malformed(description: "data before fmt") }
                guard body + size == bytes.count else { throw Malformed(description: "bytes after the data chunk") }
                return WAV(sampleRate: format.rate, channels: format.channels, bitsPerSample: format.bits, dataBytes: size)
            }
            index = body + size + (size % 2)
        }
        throw Malformed(description: "no data chunk")
    }

    struct GIF: Equatable {
        var width: Int
        var height: Int
        var frames: Int
    }

    /// Walks a GIF89a's blocks as a decoder would: the trailer must be the file's last byte.
    static func gif(_ data: Data) throws -> GIF {
        let bytes = [UInt8](data)
        guard bytes.count >= 13, bytes[0..<6] == [0x47, 0x49, 0x46, 0x38, 0x39, 0x61] else {
            throw Malformed(description: "not GIF89a")
        }
        var index = 13
        if bytes[10] & 0x80 != 0 { index += 3 << ((Int(bytes[10]) & 0x07) + 1) }
        var frames = 0
        func skipSubBlocks() throws {
            while true {
                guard index < bytes.count else { throw Malformed(description: "sub-blocks run past the end") }
                let size = Int(bytes[index])
                index += 1 + size
                if size == 0 { return }
            }
        }
        while index < bytes.count {
            switch bytes[index] {
            case 0x21:
                index += 2
                try skipSubBlocks()
            case 0x2C:
                guard index + 10 <= bytes.count else { throw Malformed(description: "image descriptor cut short") }
                let packed = bytes[index + 9]
                index += 10
                if packed & 0x80 != 0 { index += 3 << ((Int(packed) & 0x07) + 1) }
                index += 1  // LZW minimum code size
                try skipSubBlocks()
                frames += 1
            case 0x3B:
                guard index == bytes.count - 1 else { throw Malformed(description: "bytes after the trailer") }
                return GIF(width: le(bytes, 6, 2), height: le(bytes, 8, 2), frames: frames)
            default:
                throw Malformed(description: "unknown block \(bytes[index]) at \(index)")
            }
        }
        throw Malformed(description: "no trailer")
    }
}
