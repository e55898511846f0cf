import Foundation
import Pargen
import PargenTesting
import Testing

/// A campaign's lines are keyed in the store by what they ask for, not by where they are in the file: running an
/// edited file again buys its new and changed lines only. With line numbers in the key, one line inserted at the
/// top of a finished 60-line campaign made all 60 new jobs, and `pargen run` paid for every line again.
@Suite struct CampaignKeyTests {
    static func file(_ prompts: [String]) -> CampaignFile {
        CampaignFile.parse(
            prompts.map { #"{"type":"audio","prompt":"\#($0)","duration":1}"# }.joined(separator: "\n"),
            format: .jsonl
        )
    }

    /// Runs `file` on `store` and returns the provider calls it made.
    static func run(_ file: CampaignFile, store: MemoryJobStore) async throws -> [String] {
        let provider = ScriptedProvider(name: "p") { _, _ in .succeed() }
        let generator = ParallelGenerator(providers: [provider], store: store, outputDirectory: temporaryDirectory())
        try await generator.start()
        let report = try await CampaignRunner.run(file, generator: generator, outputDirectory: temporaryDirectory())
        try await generator.stop()
        #expect(report.rows.allSatisfy { $0.status == .succeeded }, "\(report.rows)")
        return provider.calls.map(\.requestID)
    }

    @Test func aLineInsertedMovedOrRepeatedBuysOnlyWhatIsNew() async throws {
        let store = MemoryJobStore()
        let prompts = (0..<10).map { "line \($0)" }
        #expect(try await Self.run(Self.file(prompts), store: store).count == 10)
        // A line inserted at the top, two lines swapped, and a second copy of an existing line: one job for the
        // new line and one for the copy (two identical lines are two jobs, as before); nothing else is bought.
        var edited = ["a new first line"] + prompts
        edited.swapAt(3, 7)
        edited.append("line 4")
        let calls = try await Self.run(Self.file(edited), store: store)
        #expect(calls.count == 2, "\(calls)")
        #expect(try await store.jobs(matching: JobQuery()).count == 12)
        // The same file once more buys nothing.
        #expect(try await Self.run(Self.file(edited), store: store).isEmpty)
    }

    @Test func aStoreKeyedByLineNumbersKeepsItsKeys() async throws {
        // A campaign begun before content keys: its jobs have `line-N-<hash>` keys.
        let store = MemoryJobStore()
        let file = Self.file((0..<5).map { "line \($0)" })
        let validator = RequestValidator()
        let old = CampaignRunner.requests(of: file, keys: .lineNumbers)
        #expect(old.allSatisfy { $0.idempotencyKey?.hasPrefix("line-") == true })
        _ = try await store.enqueue(old.enumerated().map { try validator.validate($1, fallbackID: "l\($0)") })
        #expect(try await CampaignRunner.lineKeys(in: store) == .lineNumbers)
        // Running the same file goes on with those jobs: nothing is enqueued twice.
        _ = try await Self.run(file, store: store)
        #expect(try await store.jobs(matching: JobQuery()).count == 5)
        #expect(try await CampaignRunner.lineKeys(in: MemoryJobStore()) == .content)
    }

    /// `pargen run FILE --cancel-removed`: a line removed from the file, and the old version of an edited line,
    /// are cancelled while they wait, so they are never paid for; a line under way or done, and a job with a key
    /// of its own, are left. Before, both still ran (the README said so under "Not yet").
    @Test func linesNoLongerInTheFileAreCancelledWhileTheyWait() async throws {
        let store = MemoryJobStore()
        let validator = RequestValidator()
        let prompts = (0..<6).map { "line \($0)" }
        let first = Self.file(prompts)
        _ = try await store.enqueue(
            CampaignRunner.requests(of: first).enumerated().map { try validator.validate($1, fallbackID: "l\($0)") }
        )
        // A job of the API's with a key of its own, and one line under way (leased by another worker).
        _ = try await store.enqueue([
            try validator.validate(.audio(prompt: "from the API", idempotencyKey: "order-17"), fallbackID: "api")
        ])
        let busy = try #require(try await store.lease(limit: 1, owner: "w", duration: .seconds(600), excludingUsers: []).first)
        #expect(busy.record.request.prompt == "line 0")

        // Line 0 (under way) removed, line 1 removed, line 2 edited, a line added.
        var edited = prompts
        edited[2] = "line 2, rewritten"
        edited.removeFirst(2)
        edited.append("a new line")
        let cancelled = try await CampaignRunner.cancelRemovedLines(of: Self.file(edited), in: store)
        #expect(Set(cancelled.map(\.request.prompt)) == ["line 1", "line 2"])
        for job in cancelled {
            let now = try #require(try await store.job(job.id))
            #expect(now.state == .deadLettered && now.errors.last?.code == .cancelled)
        }
        #expect(try await store.job(busy.record.id)?.state == .running)
        #expect(try await store.jobs(matching: JobQuery(states: [.available])).count == 4)

        // Running the edited file buys its five lines (the edited one in its new version) and the API's job, and
        // never the old ones.
        let calls = try await Self.run(Self.file(edited), store: store)
        #expect(calls.count == 6, "\(calls)")
        #expect(try await CampaignRunner.cancelRemovedLines(of: Self.file(edited), in: store).isEmpty)
    }

    /// A line's own idempotency key names one request. Reused in the same file or in a later run for other media
    /// (another prompt), the line is refused, naming the field, instead of being handed the other line's file;
    /// reused for the same media, the line shares the earlier line's job and shows no cost of its own, so that the
    /// manifest adds up to what the store charged. Before, the line asking for "b" got the file made for "a", and
    /// the shared job's cost was in the manifest twice.
    @Test func aKeyReusedForOtherMediaIsRefusedAndAKeyRepeatedSharesOneJob() async throws {
        let store = MemoryJobStore()
        let provider = ScriptedProvider(name: "p") { _, _ in .succeed(cost: .cents(7)) }
        let generator = ParallelGenerator(providers: [provider], store: store, outputDirectory: temporaryDirectory())
        try await generator.start()
        func keyed(_ prompts: [String]) -> CampaignFile {
            CampaignFile.parse(
                prompts.map { #"{"type":"audio","prompt":"\#($0)","duration":1,"idempotency_key":"k"}"# }
                    .joined(separator: "\n"),
                format: .jsonl
            )
        }
        let report = try await CampaignRunner.run(keyed(["a", "b", "a"]), generator: generator, outputDirectory: temporaryDirectory())
        #expect(provider.calls.count == 1)
        #expect(report.rows.map(\.status) == [.succeeded, .invalid, .succeeded])
        #expect(report.rows[1].errorField == "idempotency_key", "\(report.rows[1])")
        #expect(report.rows[1].error?.contains("different media") == true)
        #expect(report.rows[1].outputPath == nil && report.rows[1].jobID == nil)
        #expect(report.rows[2].jobID == report.rows[0].jobID && report.rows[2].outputPath == report.rows[0].outputPath)
        #expect(report.rows[2].requestID == "line-3" && report.rows[2].deduplicated && report.rows[2].attempts == 0)
        #expect(report.rows.map(\.cost) == ["0.07", "0.00", "0.00"])
        #expect(report.rows[2].saved == "0.07")
        #expect(report.lineErrors.map(\.line) == [2])
        // A later run whose keyed line asks for something else is refused too; the stored job is untouched.
        let later = try await CampaignRunner.run(keyed(["c"]), generator: generator, outputDirectory: temporaryDirectory())
        #expect(later.rows.map(\.status) == [.invalid] && later.rows[0].errorField == "idempotency_key")
        #expect(provider.calls.count == 1)
        try await generator.stop()
        #expect(try await store.jobs(matching: JobQuery()).count == 1)
        #expect(try await store.ledgerTotals().charged == .cents(7))
    }
}
