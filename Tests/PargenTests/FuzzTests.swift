import Foundation
import Pargen
import PargenFuzzing
import Testing

/// The fuzz targets of issue 9, bounded for the test command: each replays its corpus and every crash
/// reproducer kept in `Fuzz/`, then runs seeded mutations of them. `scripts/fuzz.sh TARGET SECONDS` runs the
/// same targets under libFuzzer for as long as asked (the figures are in RELIABILITY.md).
@Suite(.serialized, .timeLimit(.minutes(3))) struct FuzzTests {
    static let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fuzz")

    /// Mutations per target in the test command (debug build); the seed changes with the day, so the suite
    /// explores new inputs over time and a failure names the seed that reproduces it.
    static let budget: [String: Int] = ["campaign": 30_000, "answers": 30_000, "configuration": 3_000]

    @Test(arguments: ["campaign", "configuration", "answers"])
    func aTargetSurvivesItsCorpusItsReproducersAndSeededMutations(_ target: String) async throws {
        let sync = try #require(FuzzTargets.all[target])
        // Seconds of CPU must not hold a thread of the cooperative pool (on 2 cores it has 2, and the fake
        // servers of the tests beside this one answer from it): the synchronous targets run on a Dispatch
        // thread, and the configuration target, which loads through async code, is awaited.
        func run(_ input: Data) async {
            if target == "configuration" {
                await FuzzTargets.configurationAsync(input)
            } else {
                await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                    DispatchQueue.global().async {
                        sync(input)
                        done.resume()
                    }
                }
            }
        }
        let seeds = FuzzTargets.seeds(target, in: Self.folder)
        #expect(seeds.corpus.count >= 5, "the corpus of \(target) is in \(Self.folder.path)")
        #expect(!seeds.dictionary.isEmpty)
        for input in seeds.corpus { await run(input) }
        for reproducer in seeds.reproducers { await run(try Data(contentsOf: reproducer)) }
        let seed = UInt64(Date().timeIntervalSince1970 / 86_400)
        var mutator = SeededMutator(seed: seed ^ UInt64(target.utf8.count), corpus: seeds.corpus, dictionary: seeds.dictionary)
        let count = Self.budget[target] ?? 1_000
        let started = ContinuousClock.now
        for _ in 0..<count { await run(mutator.next()) }
        let elapsed = ContinuousClock.now - started
        print("fuzz \(target): \(seeds.corpus.count) corpus + \(seeds.reproducers.count) reproducers + \(count) mutations (seed \(seed)) in \(elapsed)")
    }
}
