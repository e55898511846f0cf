public import Foundation
import Pargen

/// Inputs for a fuzz target without libFuzzer: mutations of a corpus (bit flips, interesting bytes and
/// numbers, tokens from the target's dictionary, deletions, duplications, splices), from a seed, so a run is
/// reproducible by its seed and count.
public struct SeededMutator {
    var corpus: [[UInt8]]
    let dictionary: [[UInt8]]
    let maxLength: Int
    var random: SplitMix64

    public init(seed: UInt64, corpus: [Data], dictionary: [Data], maxLength: Int = 1 << 16) {
        self.corpus = corpus.map { [UInt8]($0) }.filter { !$0.isEmpty }
        if self.corpus.isEmpty { self.corpus = [[0]] }
        self.dictionary = dictionary.map { [UInt8]($0) }.filter { !$0.isEmpty }
        self.maxLength = maxLength
        random = SplitMix64(seed: seed)
    }

    mutating func below(_ bound: Int) -> Int { bound <= 1 ? 0 : Int(random.next() % UInt64(bound)) }

    /// The next input: one to four mutations of a corpus entry.
    public mutating func next() -> Data {
        var bytes = corpus[below(corpus.count)]
        for _ in 0...below(4) { mutate(&bytes) }
        if bytes.count > maxLength { bytes.removeLast(bytes.count - maxLength) }
        return Data(bytes)
    }

    /// Keeps `input` as a base for later mutations (a new behaviour, when the caller can tell).
    public mutating func keep(_ input: Data) {
        if corpus.count < 4096 { corpus.append([UInt8](input)) }
    }

    mutating func mutate(_ bytes: inout [UInt8]) {
        let interesting: [[UInt8]] = [
            [0], [0xFF], [0x7F], [0x80], [0xC3], [0xED, 0xA0, 0x80], [0xEF, 0xBB, 0xBF], [0x0D], [0x0A], [0x22],
            Array("9223372036854775808".utf8), Array("-9223372036854775809".utf8), Array("1e300".utf8),
            Array("-0".utf8), Array("NaN".utf8), Array("1e-400".utf8), Array("18446744073709551616".utf8),
        ]
        let position = below(bytes.count + 1)
        switch below(9) {
        case 0 where !bytes.isEmpty:
            let index = below(bytes.count)
            bytes[index] ^= UInt8(1) << UInt8(below(8))
        case 1 where !bytes.isEmpty:
            bytes[below(bytes.count)] = UInt8(truncatingIfNeeded: random.next())
        case 2:
            bytes.insert(contentsOf: interesting[below(interesting.count)], at: position)
        case 3 where !dictionary.isEmpty, 4 where !dictionary.isEmpty:
            bytes.insert(contentsOf: dictionary[below(dictionary.count)], at: position)
        case 5 where !bytes.isEmpty:
            let length = 1 + below(min(64, bytes.count - position + 1))
            bytes.removeSubrange(position..<min(bytes.count, position + length))
        case 6 where !bytes.isEmpty:
            let start = below(bytes.count)
            let piece = Array(bytes[start..<min(bytes.count, start + 1 + below(256))])
            for _ in 0...below(8) { bytes.insert(contentsOf: piece, at: min(position, bytes.count)) }
        case 7:
            let other = corpus[below(corpus.count)]
            let cut = below(other.count + 1)
            bytes = Array(bytes.prefix(position)) + Array(other.suffix(other.count - cut))
        default:
            var noise = [UInt8]()
            for _ in 0..<(1 + below(16)) { noise.append(UInt8(truncatingIfNeeded: random.next())) }
            bytes.insert(contentsOf: noise, at: position)
        }
    }
}

extension FuzzTargets {
    /// The seed corpus and dictionary of `target` in `folder` (`Fuzz/` of the repository): every file of
    /// `Corpus/TARGET/` and `Crashes/TARGET/`, and the tokens of `Dictionaries/TARGET.dict` (libFuzzer's
    /// format: one `"token"` per line, with `\xNN` escapes).
    public static func seeds(_ target: String, in folder: URL) -> (corpus: [Data], reproducers: [URL], dictionary: [Data]) {
        func files(_ sub: String) -> [URL] {
            let dir = folder.appendingPathComponent(sub).appendingPathComponent(target)
            let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
            return names.sorted().filter { !$0.hasPrefix(".") }.map { dir.appendingPathComponent($0) }
        }
        let corpus = files("Corpus").compactMap { try? Data(contentsOf: $0) }
        let reproducers = files("Crashes")
        var dictionary: [Data] = []
        let dict = folder.appendingPathComponent("Dictionaries").appendingPathComponent("\(target).dict")
        for line in ((try? String(contentsOf: dict, encoding: .utf8)) ?? "").split(separator: "\n") {
            guard let open = line.firstIndex(of: "\""), let close = line.lastIndex(of: "\""), open < close else { continue }
            dictionary.append(unescape(line[line.index(after: open)..<close]))
        }
        return (corpus, reproducers, dictionary)
    }

    static func unescape(_ text: Substring) -> Data {
        var out = [UInt8]()
        var bytes = Array(text.utf8)[...]
        while let byte = bytes.popFirst() {
            guard byte == UInt8(ascii: "\\"), let next = bytes.popFirst() else {
                out.append(byte)
                continue
            }
            if next == UInt8(ascii: "x"), bytes.count >= 2,
                let value = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16)
            {
                out.append(value)
                bytes = bytes.dropFirst(2)
            } else {
                out.append(next)
            }
        }
        return Data(out)
    }
}
