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

    /// Runs `pargen` to its end without blocking a thread of the cooperative pool (see
    /// ``LocalResourceTests/pargen(_:environment:)``).
    func pargen(_ arguments: [String]) async throws -> Outcome {
        let outcome = try await LocalResourceTests().pargen(arguments)
        return Outcome(status: outcome.status, output: outcome.output)
    }

    @Test func runReportsBadLinesRunsTheGoodOnesAndExitsOne() async throws {
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
        let outcome = try await pargen(["run", csv.path, "--out", out.path, "--reliable", "--no-progress"])
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

    @Test func runExitsZeroWhenEveryLineSucceeds() async throws {
        let folder = temporaryDirectory()
        let jsonl = folder.appendingPathComponent("c.jsonl")
        try Data(
            """
            {"type": "audio", "prompt": "One", "duration": 1}
            {"type": "audio", "prompt": "Two", "duration": 1, "metadata": {"take": 2}}
            """.utf8
        ).write(to: jsonl)
        let outcome = try await pargen([
            "run", jsonl.path, "--out", folder.appendingPathComponent("o").path, "--reliable", "--no-progress",
        ])
        #expect(outcome.status == 0, "\(outcome.output)")
    }

    /// `run` on the local providers is a plain run: nothing is refused or failed by chance, so a good campaign
    /// exits 0 every time; `--inject-faults` brings the demo's throttling and failures back.
    @Test func runOnTheLocalProvidersIsReliableUnlessFaultsAreAskedFor() async throws {
        let folder = temporaryDirectory()
        let jsonl = folder.appendingPathComponent("c.jsonl")
        let lines = (0..<150).map { "{\"type\":\"audio\",\"prompt\":\"line number \($0)\",\"duration\":1}" }
        try Data(lines.joined(separator: "\n").utf8).write(to: jsonl)
        let plain = try await pargen([
            "run", jsonl.path, "--out", folder.appendingPathComponent("plain").path, "--no-progress",
            "--per-user-rpm", "100000",
        ])
        #expect(plain.status == 0, "\(plain.output)")
        #expect(plain.output.contains("total: 150 succeeded, 0 failed"), "\(plain.output)")
        // Not one call throttled or failed: every line took one attempt.
        let plainRows = try String(contentsOf: folder.appendingPathComponent("plain/manifest.jsonl"), encoding: .utf8)
            .split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        #expect(plainRows.count == 150 && plainRows.allSatisfy { $0["attempts"] as? Int == 1 })
        let faulty = try await pargen([
            "run", jsonl.path, "--out", folder.appendingPathComponent("faulty").path, "--no-progress",
            "--per-user-rpm", "100000", "--inject-faults",
        ])
        let manifest = try String(
            contentsOf: folder.appendingPathComponent("faulty/manifest.jsonl"),
            encoding: .utf8
        )
        .split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        #expect(manifest.count == 150)
        // Throttled or failed calls show as attempts beyond the first, or as lines that did not succeed.
        #expect(
            manifest.contains { ($0["attempts"] as? Int ?? 0) > 1 || $0["status"] as? String != "succeeded" },
            "\(faulty.output)"
        )
    }

    @Test func simulatePredictsACampaignWithoutCallingAnyProvider() async throws {
        let folder = temporaryDirectory()
        let jsonl = folder.appendingPathComponent("c.jsonl")
        var lines = (0..<30).map { "{\"type\":\"audio\",\"prompt\":\"line \($0)\",\"duration\":2}" }
        lines += (0..<4).map { "{\"type\":\"video\",\"prompt\":\"clip \($0)\",\"duration\":2,\"resolution\":\"360p\"}" }
        lines.append("{\"type\":\"audio\",\"prompt\":\"bad\",\"priority\":\"someday\"}")
        try Data(lines.joined(separator: "\n").utf8).write(to: jsonl)
        let report = folder.appendingPathComponent("r.html")
        let outcome = try await pargen([
            "simulate", jsonl.path, "--report", report.path, "--task-seconds", "video=3..8", "--per-user-rpm", "1000",
        ])
        #expect(outcome.status == 0, "\(outcome.output)")
        #expect(outcome.output.contains("35 lines simulated (1 invalid, 0 no provider can take)"), "\(outcome.output)")
        #expect(outcome.output.contains("invalid: line 35: priority: "), "\(outcome.output)")
        #expect(outcome.output.contains("predicted makespan"))
        // Eleven draws of the call times unless said: the prediction is the median one, with the range.
        #expect(outcome.output.contains("lines simulated (1 invalid, 0 no provider can take) 11 times"), "\(outcome.output)")
        #expect(outcome.output.contains("11 draws of the call times: makespan "), "\(outcome.output)")
        let html = try String(contentsOf: report, encoding: .utf8)
        #expect(html.contains("<svg") && html.contains("local-fast"))
        // Nothing was written but the report: no media, no store.
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).sorted() == ["c.jsonl", "r.html"])
        // A line no provider can take is named with the field and each provider's reason.
        let unplaceable = folder.appendingPathComponent("u.jsonl")
        try Data(#"{"type":"audio","prompt":"x","format":"mp4"}"#.utf8).write(to: unplaceable)
        let unplaced = try await pargen(["simulate", unplaceable.path])
        #expect(unplaced.output.contains("no provider can take: line 1: format: local-fast cannot produce mp4"), "\(unplaced.output)")
        #expect(unplaced.output.contains("1 lines simulated (0 invalid, 1 no provider can take)"), "\(unplaced.output)")
        // A range that cannot be, or a provider that is not there, is refused with the reason, not ignored.
        for (option, reason) in [
            ("video=8..3", "LO is above HI"), ("video=1..1e9", "between 0 and 86400"),
            ("video=nan..nan", "such as video=3..8"), ("local-nowhere.video=1..2", "no provider is named local-nowhere"),
        ] {
            let bad = try await pargen(["simulate", jsonl.path, "--task-seconds", option])
            #expect(bad.status != 0 && bad.output.contains(reason), "\(option): \(bad.output)")
        }
        for draws in ["0", "1001", "-3"] {
            let bad = try await pargen(["simulate", jsonl.path, "--draws=\(draws)"])
            #expect(bad.status != 0 && bad.output.contains("--draws must be between 1 and 1000"), "\(draws): \(bad.output)")
        }
    }

    @Test func runExitsTwoWhenTheFileCannotBeRead() async throws {
        let outcome = try await pargen(["run", "/nonexistent/campaign.csv", "--no-progress"])
        #expect(outcome.status == 2)
        #expect(outcome.output.contains("cannot read"))
    }

    /// A campaign file with no line at all (an empty export, the wrong file) is refused before anything is made,
    /// as an empty upload is; it ran as an empty campaign and exited 0.
    @Test func aCampaignFileWithNoLinesIsRefused() async throws {
        let folder = temporaryDirectory()
        for (name, text) in [("empty.jsonl", ""), ("blank.jsonl", "\n  \n\n"), ("header.csv", "type,prompt\n")] {
            let file = folder.appendingPathComponent(name)
            try Data(text.utf8).write(to: file)
            let out = folder.appendingPathComponent("out-\(name)")
            for command in [["run", file.path, "--out", out.path, "--no-progress"], ["simulate", file.path]] {
                let outcome = try await pargen(command)
                #expect(outcome.status == 2, "\(command): \(outcome.output)")
                #expect(outcome.output.contains("\(file.path) has no lines"), "\(outcome.output)")
            }
            #expect(!FileManager.default.fileExists(atPath: out.path), "nothing is made for an empty campaign")
        }
    }

    /// The fake provider's numbers are checked before they become a port or a length of time: 70000 listened on
    /// 4464, and a window of 1e300 s or a lifetime of nan stopped the process.
    @Test func fakeProviderOptionsOutOfRangeAreRefused() async throws {
        for (option, said) in [
            (["--port", "70000"], "--port must be from 0 to 65535"), (["--window", "1e300"], "--window must be from"),
            (["--window", "0"], "--window must be from"), (["--lifetime", "nan"], "--lifetime must be from"),
            (["--rpm", "0"], "--rpm must be from 1"), (["--task-seconds", "1-1e300"], "--task-seconds takes MIN-MAX"),
        ] {
            let outcome = try await pargen(["fake-provider", "--protocol", "openai"] + option)
            #expect(outcome.status != 0 && outcome.output.contains(said), "\(option): \(outcome.output)")
            #expect(!outcome.output.contains("Fatal error"), "\(outcome.output)")
        }
    }

    @Test func anOutputFolderThatIsAFileIsNamedAsOne() async throws {
        let folder = temporaryDirectory()
        let jsonl = folder.appendingPathComponent("c.jsonl")
        try Data("{\"type\":\"audio\",\"prompt\":\"hi\"}\n".utf8).write(to: jsonl)
        let file = folder.appendingPathComponent("out")
        try Data("not a folder".utf8).write(to: file)
        for command in [["run", jsonl.path], ["demo", "--count", "10"]] {
            let outcome = try await pargen(command + ["--out", file.path, "--no-progress"])
            #expect(outcome.status == 2, "\(command): \(outcome.output)")
            #expect(outcome.output.contains("\(file.path) as the output folder: it is a file, not a folder"), "\(outcome.output)")
        }
        #expect(try String(contentsOf: file, encoding: .utf8) == "not a folder")
    }

    @Test func demoRunsTheWholePipelineAndPrintsTheSummary() async throws {
        let out = temporaryDirectory()
        let outcome = try await pargen(["demo", "--out", out.path, "--count", "24"])
        #expect(outcome.status == 0, "\(outcome.output)")
        for needle in ["provider", "local-fast", "p95", "cache:", "rate-limit waits", "dead letters:", "total:"] {
            #expect(outcome.output.contains(needle), "summary shows \(needle)")
        }
        let files = try FileManager.default.contentsOfDirectory(atPath: out.appendingPathComponent("audio").path)
        #expect(files.count >= 10)
    }

    @Test func statusJobsAndTheDeadLetterQueueWorkOnTheStore() async throws {
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
        let run = try await pargen([
            "run", jsonl.path, "--out", out, "--reliable", "--no-progress", "--project-budget", "tight=0.000001",
        ])
        #expect(run.status == 1)
        let status = try await pargen(["status", "--out", out])
        #expect(status.output.contains("jobs: 3"))
        #expect(status.output.contains("dead_lettered          2"))
        #expect(status.output.contains("ledger balances: yes"))
        let jobs = try await pargen(["jobs", "--out", out, "--state", "dead_lettered"])
        #expect(jobs.output.split(separator: "\n").count == 2)
        #expect(jobs.output.contains("budget_exceeded"))
        let list = try await pargen(["dlq", "list", "--out", out])
        #expect(list.output.contains("2 dead-lettered"))
        let retry = try await pargen(["dlq", "retry", "--all", "--out", out])
        #expect(retry.output.contains("re-queued 2 jobs"))
        // The next run, with the budget raised, finishes them.
        let again = try await pargen(["run", jsonl.path, "--out", out, "--reliable", "--no-progress"])
        #expect(again.status == 0, "\(again.output)")
        #expect(try await pargen(["dlq", "list", "--out", out]).output.contains("0 dead-lettered"))
        // A budget below zero is refused before anything runs (it would dead-letter every job of its scope).
        for budget in [["--project-budget", "tight=-1"], ["--global-budget=-0.5"]] {
            let refused = try await pargen(["run", jsonl.path, "--out", out, "--reliable", "--no-progress"] + budget)
            #expect(refused.status != 0 && refused.output.contains("0 or more dollars"), "\(refused.output)")
        }
        #expect(try await pargen(["dlq", "list", "--out", out]).output.contains("0 dead-lettered"))
        let bad = try await pargen(["jobs", "--out", out, "--state", "sideways"])
        #expect(bad.status != 0 && bad.output.contains("--state must be one of"))
        // A limit of 0 or below is refused (it read as no limit and listed every job).
        for limit in ["0", "-1"] {
            let refused = try await pargen(["jobs", "--out", out, "--limit=\(limit)"])
            #expect(refused.status != 0 && refused.output.contains("--limit must be from 1 to 100000, not \(limit)"))
        }
        let one = try await pargen(["jobs", "--out", out, "--limit", "1"])
        #expect(one.status == 0 && one.output.split(separator: "\n").count == 1, "\(one.output)")
    }

    /// What cannot be read or written ends the command with exit 2 and one line naming the path, never an
    /// NSError dump (issue 9, item 8); a configuration file that is empty, an alias bomb or a flood of unknown
    /// keys is refused at once (item 5).
    @Test func unreadableAndUnwritablePathsExitTwoWithOneLineNamingThem() async throws {
        let folder = temporaryDirectory()
        let campaign = folder.appendingPathComponent("c.jsonl")
        try Data("{\"type\": \"audio\", \"prompt\": \"one\"}\n".utf8).write(to: campaign)
        // The output folder's parent is a regular file (root ignores permission bits, so a read-only folder
        // would not stop it).
        let blocker = folder.appendingPathComponent("not-a-folder")
        try Data("x".utf8).write(to: blocker)
        let out = blocker.appendingPathComponent("out").path
        let unwritable = try await pargen(["run", campaign.path, "--out", out, "--reliable", "--no-progress"])
        #expect(unwritable.status == 2, "\(unwritable.output)")
        #expect(unwritable.output.contains("cannot create the output folder \(out)"), "\(unwritable.output)")
        #expect(!unwritable.output.contains("Error Domain"), "\(unwritable.output)")

        let storeFolder = folder.appendingPathComponent("garbage")
        try FileManager.default.createDirectory(at: storeFolder, withIntermediateDirectories: true)
        try Data(repeating: 0x42, count: 4096).write(to: storeFolder.appendingPathComponent("campaign.sqlite"))
        let status = try await pargen(["status", "--out", storeFolder.path])
        #expect(status.status == 2, "\(status.output)")
        #expect(status.output.contains("cannot open the campaign store"), "\(status.output)")
        #expect(status.output.split(separator: "\n").count == 1, "\(status.output)")
        // An empty file or a folder as the store is named as such, and the empty file is left empty (opening
        // a store migrates it, and `status` made the empty file a store).
        let emptyStore = folder.appendingPathComponent("empty.sqlite")
        try Data().write(to: emptyStore)
        for (path, said) in [(emptyStore.path, "the file is empty, not a store"), (storeFolder.path, "it is a folder, not a store")] {
            let refused = try await pargen(["status", "--store", path])
            #expect(refused.status == 2 && refused.output.contains(said), "\(refused.output)")
        }
        #expect(try Data(contentsOf: emptyStore).isEmpty)

        let empty = folder.appendingPathComponent("empty.yaml")
        try Data("  \n".utf8).write(to: empty)
        let emptyRun = try await pargen(["providers", "--config", empty.path])
        #expect(emptyRun.status == 2 && emptyRun.output.contains("is empty"), "\(emptyRun.output)")

        // A "billion laughs": nine levels of aliases, each nine times the last.
        var bomb = "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
        var previous = "a"
        for name in ["b", "c", "d", "e", "f", "g", "h", "i"] {
            bomb += "\(name): &\(name) [" + Array(repeating: "*\(previous)", count: 9).joined(separator: ",") + "]\n"
            previous = name
        }
        let bombFile = folder.appendingPathComponent("bomb.yaml")
        try Data(bomb.utf8).write(to: bombFile)
        let started = ContinuousClock.now
        let bombRun = try await pargen(["providers", "--config", bombFile.path])
        #expect(bombRun.status == 2 && bombRun.output.contains("anchors and aliases are not accepted"), "\(bombRun.output)")

        let flood = folder.appendingPathComponent("flood.yaml")
        try Data((0..<100_000).map { "k\($0): 1" }.joined(separator: "\n").utf8).write(to: flood)  // under 1 MiB
        let floodRun = try await pargen(["providers", "--config", flood.path])
        #expect(floodRun.status == 2, "\(floodRun.output.prefix(300))")
        #expect(floodRun.output.contains("... and 99950 more unknown keys"), "\(floodRun.output.suffix(300))")
        // A bomb that expanded would take hours; 90 s leaves room for a debug build on a loaded machine (32 s was
        // seen with every suite running at once).
        #expect(ContinuousClock.now - started < .seconds(90), "refused quickly")
    }
}
