import Foundation
import Testing

/// Runs the real `pargen` executable, as a user would.
@Suite(.timeLimit(.minutes(2))) struct CommandLineTests {
    struct Outcome {
        var status: Int32
        var output: String
    }

    static var executable: URL {
        let candidates = [
            URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("pargen"),
            URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent().appendingPathComponent(".build/debug/pargen"),
        ]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0.path) } ?? candidates[1]
    }

    func pargen(_ arguments: [String]) throws -> Outcome {
        let process = Process()
        process.executableURL = Self.executable
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Outcome(status: process.terminationStatus, output: String(decoding: data, as: UTF8.self))
    }

    @Test func runReportsBadLinesRunsTheGoodOnesAndExitsOne() throws {
        let folder = temporaryDirectory()
        let csv = folder.appendingPathComponent("campaign.csv")
        try Data(
            ("\u{FEFF}type,prompt,priority,duration,resolution,user,project,notes\r\n"
                + "audio,\"Hello, world\",high,2,,ann,ads,first\r\n"
                + "video,Birds at dawn,normal,2,360p,ben,ads,\r\n"
                + "audio,Nobody,someday,2,,ann,ads,\r\n"
                + "video,Too big,low,2,8k,ben,ads,\r\n").utf8
        ).write(to: csv)
        let out = folder.appendingPathComponent("out")
        let outcome = try pargen(["run", csv.path, "--out", out.path, "--reliable", "--no-progress"])
        #expect(outcome.status == 1, "\(outcome.output)")
        #expect(outcome.output.contains("total: 2 succeeded, 0 failed, 2 invalid"))
        let manifest = try String(contentsOf: out.appendingPathComponent("manifest.jsonl"), encoding: .utf8)
            .split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        #expect(manifest.map { $0["line"] as? Int } == [2, 3, 4, 5])
        #expect(manifest.map { $0["status"] as? String } == ["succeeded", "succeeded", "invalid", "invalid"])
        #expect(manifest[3]["error_field"] as? String == "resolution")
        for row in manifest.prefix(2) {
            let path = try #require(row["output_path"] as? String)
            #expect(FileManager.default.fileExists(atPath: path))
        }
        let errors = try String(contentsOf: out.appendingPathComponent("errors.jsonl"), encoding: .utf8)
        #expect(errors.contains("\"field\":\"priority\""))
        #expect(errors.contains("\"line\":4"))
        let csvManifest = try String(contentsOf: out.appendingPathComponent("manifest.csv"), encoding: .utf8)
        #expect(csvManifest.hasPrefix("line,request_id,job_id,status"))
    }

    @Test func runExitsZeroWhenEveryLineSucceeds() throws {
        let folder = temporaryDirectory()
        let jsonl = folder.appendingPathComponent("c.jsonl")
        try Data(
            """
            {"type": "audio", "prompt": "One", "duration": 1}
            {"type": "audio", "prompt": "Two", "duration": 1, "metadata": {"take": 2}}
            """.utf8
        ).write(to: jsonl)
        let outcome = try pargen([
            "run", jsonl.path, "--out", folder.appendingPathComponent("o").path, "--reliable", "--no-progress",
        ])
        #expect(outcome.status == 0, "\(outcome.output)")
    }

    @Test func runExitsTwoWhenTheFileCannotBeRead() throws {
        let outcome = try pargen(["run", "/nonexistent/campaign.csv", "--no-progress"])
        #expect(outcome.status == 2)
        #expect(outcome.output.contains("cannot read"))
    }

    @Test func demoRunsTheWholePipelineAndPrintsTheSummary() throws {
        let out = temporaryDirectory()
        let outcome = try pargen(["demo", "--out", out.path, "--count", "24"])
        #expect(outcome.status == 0, "\(outcome.output)")
        for needle in ["provider", "local-fast", "p95", "cache:", "rate-limit waits", "dead letters:", "total:"] {
            #expect(outcome.output.contains(needle), "summary shows \(needle)")
        }
        let files = try FileManager.default.contentsOfDirectory(atPath: out.appendingPathComponent("audio").path)
        #expect(files.count >= 10)
    }

    @Test func statusJobsAndTheDeadLetterQueueWorkOnTheStore() throws {
        let folder = temporaryDirectory()
        let jsonl = folder.appendingPathComponent("c.jsonl")
        try Data(
            """
            {"type": "audio", "prompt": "Within budget", "duration": 1, "project": "free"}
            {"type": "audio", "prompt": "Over budget one", "duration": 1, "project": "tight"}
            {"type": "audio", "prompt": "Over budget two", "duration": 1, "project": "tight"}
            """.utf8
        ).write(to: jsonl)
        let out = folder.appendingPathComponent("o").path
        let run = try pargen([
            "run", jsonl.path, "--out", out, "--reliable", "--no-progress", "--project-budget", "tight=0.000001",
        ])
        #expect(run.status == 1)
        let status = try pargen(["status", "--out", out])
        #expect(status.output.contains("jobs: 3"))
        #expect(status.output.contains("dead_lettered          2"))
        #expect(status.output.contains("ledger balances: yes"))
        let jobs = try pargen(["jobs", "--out", out, "--state", "dead_lettered"])
        #expect(jobs.output.split(separator: "\n").count == 2)
        #expect(jobs.output.contains("budget_exceeded"))
        let list = try pargen(["dlq", "list", "--out", out])
        #expect(list.output.contains("2 dead-lettered"))
        let retry = try pargen(["dlq", "retry", "--all", "--out", out])
        #expect(retry.output.contains("re-queued 2 jobs"))
        // The next run, with the budget raised, finishes them.
        let again = try pargen(["run", jsonl.path, "--out", out, "--reliable", "--no-progress"])
        #expect(again.status == 0, "\(again.output)")
        #expect(try pargen(["dlq", "list", "--out", out]).output.contains("0 dead-lettered"))
        let bad = try pargen(["jobs", "--out", out, "--state", "sideways"])
        #expect(bad.status != 0 && bad.output.contains("--state must be one of"))
    }
}
