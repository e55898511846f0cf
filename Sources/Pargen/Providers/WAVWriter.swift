import Foundation

/// Writes 16-bit PCM mono WAV files, streaming samples to disk in chunks.
struct WAVWriter {
    static func write(
        to url: URL,
        sampleRate: Int,
        sampleCount: Int,
        sample: (Int) -> Double
    ) throws {
        let handle = try OutputFile.create(url)
        defer { try? handle.close() }
        let dataBytes = UInt32(sampleCount * 2)
        var header = Data()
        header.append(contentsOf: Array("RIFF".utf8))
        header.appendLE(UInt32(36) + dataBytes)
        header.append(contentsOf: Array("WAVEfmt ".utf8))
        header.appendLE(UInt32(16))  // fmt chunk size
        header.appendLE(UInt16(1))  // PCM
        header.appendLE(UInt16(1))  // mono
        header.appendLE(UInt32(sampleRate))
        header.appendLE(UInt32(sampleRate * 2))  // byte rate
        header.appendLE(UInt16(2))  // block align
        header.appendLE(UInt16(16))  // bits per sample
        header.append(contentsOf: Array("data".utf8))
        header.appendLE(dataBytes)
        try handle.write(contentsOf: header)
        var chunk = Data(capacity: 65_536)
        for index in 0..<sampleCount {
            let value = Int16(max(-1, min(1, sample(index))) * 32_000)
            chunk.appendLE(UInt16(bitPattern: value))
            if chunk.count >= 65_536 {
                try handle.write(contentsOf: chunk)
                chunk.removeAll(keepingCapacity: true)
            }
        }
        try handle.write(contentsOf: chunk)
    }
}

/// Writes animated GIF89a files frame by frame.
///
/// Pixel data uses LZW with a clear code every 250 codes, so the code width stays at 9 bits and no
/// dictionary is needed: a valid stream that every decoder reads, traded for size.
final class GIFWriter {
    private let handle: FileHandle
    let width: Int
    let height: Int

    init(url: URL, width: Int, height: Int, palette: [(UInt8, UInt8, UInt8)]) throws {
        precondition(palette.count == 256)
        handle = try OutputFile.create(url)
        self.width = width
        self.height = height
        var header = Data(Array("GIF89a".utf8))
        header.appendLE(UInt16(width))
        header.appendLE(UInt16(height))
        header.append(contentsOf: [0xF7, 0, 0])  // global colour table of 256 entries
        for (r, g, b) in palette { header.append(contentsOf: [r, g, b]) }
        // Loop forever (NETSCAPE2.0 application extension).
        header.append(contentsOf: [0x21, 0xFF, 0x0B])
        header.append(contentsOf: Array("NETSCAPE2.0".utf8))
        header.append(contentsOf: [0x03, 0x01, 0x00, 0x00, 0x00])
        try handle.write(contentsOf: header)
    }

    /// Adds one frame covering the rectangle at (`x`, `y`) of size `w`×`h`, shown for `delayCentiseconds`.
    /// `pixel(px, py)` gives palette indices in absolute coordinates. Earlier frames stay visible beneath.
    func addFrame(x: Int, y: Int, w: Int, h: Int, delayCentiseconds: Int, pixel: (Int, Int) -> UInt8) throws {
        var data = Data()
        data.append(contentsOf: [0x21, 0xF9, 0x04, 0x04])  // graphic control: disposal "do not dispose"
        data.appendLE(UInt16(delayCentiseconds))
        data.append(contentsOf: [0x00, 0x00])
        data.append(0x2C)
        data.appendLE(UInt16(x))
        data.appendLE(UInt16(y))
        data.appendLE(UInt16(w))
        data.appendLE(UInt16(h))
        data.append(0x00)
        data.append(0x08)  // LZW minimum code size
        var packer = BitPacker()
        packer.write(256, bits: 9)  // clear
        var sinceClear = 0
        for py in y..<(y + h) {
            for px in x..<(x + w) {
                if sinceClear == 250 {
                    packer.write(256, bits: 9)
                    sinceClear = 0
                }
                packer.write(UInt32(pixel(px, py)), bits: 9)
                sinceClear += 1
            }
        }
        packer.write(257, bits: 9)  // end of information
        let bytes = packer.finish()
        var offset = 0
        while offset < bytes.count {
            let size = min(255, bytes.count - offset)
            data.append(UInt8(size))
            data.append(contentsOf: bytes[offset..<offset + size])
            offset += size
        }
        data.append(0x00)
        try handle.write(contentsOf: data)
    }

    func finish() throws {
        try handle.write(contentsOf: Data([0x3B]))
        try handle.close()
    }
}

private struct BitPacker {
    var bytes: [UInt8] = []
    var buffer: UInt32 = 0
    var count: UInt32 = 0

    mutating func write(_ code: UInt32, bits: UInt32) {
        buffer |= code << count
        count += bits
        while count >= 8 {
            bytes.append(UInt8(buffer & 0xFF))
            buffer >>= 8
            count -= 8
        }
    }

    mutating func finish() -> [UInt8] {
        if count > 0 { bytes.append(UInt8(buffer & 0xFF)) }
        return bytes
    }
}

extension Data {
    package mutating func appendLE(_ value: UInt16) { append(contentsOf: [UInt8(value & 0xFF), UInt8(value >> 8)]) }
    package mutating func appendLE(_ value: UInt32) {
        append(contentsOf: [
            UInt8(value & 0xFF), UInt8((value >> 8) & 0xFF), UInt8((value >> 16) & 0xFF), UInt8(value >> 24),
        ])
    }
}
