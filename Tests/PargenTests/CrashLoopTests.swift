import Foundation
import Pargen
import PargenSQLite
import Testing

/// A line whose provider call brings the process down on every run (issue 9, item 1): it must not block the
/// campaign for good. Its crashes are counted across restarts, and past `retry.maxCrashes` it is dead-lettered
/// with a clear error (as `needs_reconciliation`: the call was under way, so the provider may have it); the lines that were in flight beside it are not blamed with it.
@Suite(.timeLimit(.minutes(3))) struct CrashLoopTests {
    @Test func aLineThatKillsEveryRunIsSetAsideAfterMaxCrashesAndTheOthersFinish() async throws {
        let folder = temporaryDirectory()
        let file = folder.appendingPathComponent("c.jsonl")
        let lines = (1...8).map { index in
            let prompt = index == 2 ? "line 2 [[poison]]" : "line \(index)"
            return "{\"type\": \"audio\", \"prompt\": \"\(prompt)\", \"duration\": 2}"
        }
        try Data(lines.joined(separator: "\n").utf8).write(to: file)
        let out = folder.appendingPathComponent("out")
        let log = folder.appendingPathComponent("submits.log")
        let environment = ["PARGEN_TEST_KILL_ON_PROMPT": "[[poison]]", "PARGEN_LOCAL_SUBMIT_LOG": log.path]
        var killed = 0
        var last: LocalResourceTests.Outcome?
        // retry.maxCrashes is 5 by default: a line may be taken back from 5 crashes and run again; taken back from
        // the 6th, it is set aside, and that run finishes.
        for _ in 1...8 {
            let outcome = try await LocalResourceTests().pargen(
                ["run", file.path, "--out", out.path, "--no-progress"],
                environment: environment
            )
            if outcome.killed {
                killed += 1
                continue
            }
            last = outcome
            break
        }
        let finished = try #require(last, "every run was killed: the crash loop never ends")
        #expect(killed == 6, "runs killed before the line was set aside: \(killed)")
        #expect(finished.status == 1, "\(finished.output)")
        let manifest = try String(contentsOf: out.appendingPathComponent("manifest.jsonl"), encoding: .utf8)
            .split(separator: "\n")
            .map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        #expect(manifest.count == 8)
        for row in manifest {
            let line = row["line"] as? Int ?? 0
            if line == 2 {
                // Set aside for a person, not dropped: the call was under way each time.
                #expect(row["status"] as? String == "needs_reconciliation")
                let error = row["error"] as? String ?? ""
                #expect(error.contains("stopped 6 times while its call to local-"), "\(error)")
                #expect(error.contains("retry.maxCrashes is 5"), "\(error)")
            } else {
                #expect(row["status"] as? String == "succeeded", "line \(line): \(row)")
            }
        }
        // The store agrees, and no other line was blamed for more than the first crash it was in flight for.
        let store = try SQLiteJobStore(path: out.appendingPathComponent("campaign.sqlite").path)
        let records = try await store.jobs(matching: JobQuery())
        #expect(records.filter { $0.state == .needsReconciliation }.map(\.request.prompt) == ["line 2 [[poison]]"])
        #expect(records.filter { $0.state == .succeeded }.count == 7)
        for record in records where !record.request.prompt.contains("poison") {
            #expect((record.crashes ?? 0) <= 1, "\(record.request.prompt) blamed \(record.crashes ?? 0) times")
        }
    }
}
