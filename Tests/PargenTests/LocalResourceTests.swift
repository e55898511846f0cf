import Foundation
import GRDB
import Pargen
import Testing

/// This machine's storage failing under a run (issue 9, item 2): a full disk or an unusable staging folder is
/// not a provider's fault. The run stops taking work, names what is wrong and where, exits 2, keeps what is
/// done, and a later run continues without paying again.
@Suite(.timeLimit(.minutes(3))) struct LocalResourceTests {
    struct Outcome {
        var status: Int32
        var output: String
        var seconds: Double
        /// Ended by SIGKILL.
        var killed = false
    }

    /// Runs `pargen` to its end without blocking a thread (its output goes to a file, and the wait polls), so
    /// the tests running beside this one keep their share of the cooperative pool.
    func pargen(_ arguments: [String], environment: [String: String] = [:]) async throws -> Outcome {
        let process = Process()
        process.executableURL = CommandLineTests.executable
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(["SWIFT_BACKTRACE": "enable=no"]) { $1 }
            .merging(environment) { $1 }
        let log = temporaryDirectory().appendingPathComponent("output.txt")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        process.standardOutput = handle
        process.standardError = handle
        let started = ContinuousClock.now
        try process.run()
        try await CrashRecoveryTests.waitForExit(process, within: .seconds(150))
        try handle.close()
        let data = try Data(contentsOf: log)
        let elapsed = ContinuousClock.now - started
        return Outcome(
            status: process.terminationStatus,
            output: String(decoding: data, as: UTF8.self),
            seconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18,
            killed: process.terminationReason == .uncaughtSignal && process.terminationStatus == SIGKILL
        )
    }

    /// A campaign of `count` lines, every fourth a video.
    func campaign(in folder: URL, count: Int = 20) throws -> URL {
        let file = folder.appendingPathComponent("c.jsonl")
        let lines = (0..<count).map { index in
            "{\"type\": \"\(index % 4 == 0 ? "video" : "audio")\", \"prompt\": \"line \(index)\", \"duration\": 2}"
        }
        try Data(lines.joined(separator: "\n").utf8).write(to: file)
        return file
    }

    func manifestStatuses(_ out: URL) throws -> [String] {
        try String(contentsOf: out.appendingPathComponent("manifest.jsonl"), encoding: .utf8)
            .split(separator: "\n")
            .map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
            .map { $0["status"] as? String ?? "?" }
    }

    /// The request ids the local providers were asked to make tasks for, one entry per task billed.
    func billedRequests(_ log: URL) throws -> [String] {
        try String(contentsOf: log, encoding: .utf8).split(separator: "\n").map {
            String($0.split(separator: "\t")[2])
        }
    }

    @Test func aFullDiskStopsTheRunWithExitTwoAndTheNextRunFinishesWithoutPayingAgain() async throws {
        let folder = temporaryDirectory()
        let file = try campaign(in: folder)
        let out = folder.appendingPathComponent("out")
        let log = folder.appendingPathComponent("submits.log")
        // From the 5th call on, every write to a staging file fails with ENOSPC from the kernel (/dev/full).
        let full = try await pargen(
            ["run", file.path, "--out", out.path, "--no-progress"],
            environment: ["PARGEN_TEST_BREAK_STAGING": "full:5", "PARGEN_LOCAL_SUBMIT_LOG": log.path]
        )
        #expect(full.status == 2, "\(full.output)")
        #expect(full.output.contains("pargen: stopped taking work: cannot write \(out.path)/.staging/"), "\(full.output)")
        #expect(full.output.contains("No space left on device"), "\(full.output)")
        #expect(full.output.contains("run the same command again to continue"), "\(full.output)")
        // It stops: no retry loop against a full disk (the issue saw 4 minutes at 90 % CPU).
        #expect(full.seconds < 60, "took \(full.seconds) s")
        let statuses = try manifestStatuses(out)
        #expect(statuses.count == 20)
        #expect(statuses.allSatisfy { $0 == "succeeded" || $0 == "pending" }, "\(statuses)")
        #expect(statuses.contains("pending"))
        let status = try await pargen(["status", "--out", out.path])
        #expect(!status.output.contains("dead_lettered: 1"), "\(status.output)")

        // Tasks the provider accepted before the disk filled are fetched again, not bought again.
        try await expectTheNextRunFinishes(file, out: out, log: log, lines: 20)
    }

    /// Runs the campaign again with room to write: it exits 0, every one of its `lines` succeeded, and the local
    /// providers billed one task per line over both runs (none twice).
    func expectTheNextRunFinishes(_ file: URL, out: URL, log: URL, lines: Int) async throws {
        let again = try await pargen(
            ["run", file.path, "--out", out.path, "--no-progress"],
            environment: ["PARGEN_LOCAL_SUBMIT_LOG": log.path]
        )
        #expect(again.status == 0, "\(again.output)")
        #expect(try manifestStatuses(out) == Array(repeating: "succeeded", count: lines))
        let billed = try billedRequests(log)
        #expect(Set(billed).count == billed.count, "a line was billed twice: \(billed)")
        #expect(billed.count == lines, "\(billed.count) tasks billed for \(lines) lines")
    }

    /// The job store's own disk fills: from the 4th provider call on, the SQLite file can grow no more, and the
    /// next write that needs a page fails with SQLite's own `SQLITE_FULL` (not a trigger, not a mock). The run
    /// stops taking work naming the store, exits 2, and what it tells and what the store says agree; the next run,
    /// with room, finishes the campaign and no task is bought twice.
    @Test func aJobStoreThatCanGrowNoMoreStopsTheRunAndTheNextRunFinishesWithoutPayingAgain() async throws {
        let folder = temporaryDirectory()
        let file = try campaign(in: folder, count: 60)
        let out = folder.appendingPathComponent("out")
        let log = folder.appendingPathComponent("submits.log")
        let full = try await pargen(
            ["run", file.path, "--out", out.path, "--no-progress"],
            environment: ["PARGEN_TEST_FILL_STORE": "4", "PARGEN_LOCAL_SUBMIT_LOG": log.path]
        )
        let store = out.appendingPathComponent("campaign.sqlite").path
        #expect(full.status == 2, "\(full.output)")
        #expect(full.output.contains("pargen: stopped taking work: cannot write the job store \(store)"), "\(full.output)")
        #expect(full.output.contains("No space left on device"), "\(full.output)")
        #expect(full.seconds < 60, "took \(full.seconds) s")
        let statuses = try manifestStatuses(out)
        #expect(statuses.count == 60)
        #expect(statuses.allSatisfy { $0 == "succeeded" || $0 == "pending" }, "\(statuses)")
        #expect(statuses.contains("pending"))
        // The manifest says what the store says (read by a new process, with room to write).
        let status = try await pargen(["status", "--out", out.path])
        let storeSucceeded = status.output.split(separator: "\n")
            .first { $0.trimmingCharacters(in: .whitespaces).hasPrefix("succeeded ") }
            .flatMap { Int($0.split(separator: " ").last ?? "") }
        #expect(storeSucceeded == statuses.filter { $0 == "succeeded" }.count, "\(status.output)")
        #expect(!status.output.contains("dead_lettered"), "\(status.output)")

        try await expectTheNextRunFinishes(file, out: out, log: log, lines: 60)
    }

    /// A finished run leaves the campaign in `campaign.sqlite` itself, not in its write-ahead log: a copy of the
    /// file alone (a backup, an attachment to a ticket) holds every line.
    @Test func aFinishedRunLeavesTheWholeCampaignInTheStoreFileItself() async throws {
        let folder = temporaryDirectory()
        let file = try campaign(in: folder, count: 30)
        let out = folder.appendingPathComponent("out")
        let run = try await pargen(["run", file.path, "--out", out.path, "--no-progress"])
        #expect(run.status == 0, "\(run.output)")
        let copy = folder.appendingPathComponent("copy.sqlite")
        try FileManager.default.copyItem(at: out.appendingPathComponent("campaign.sqlite"), to: copy)
        let succeeded = try await DatabaseQueue(path: copy.path).read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM jobs WHERE state = 'succeeded'")
        }
        #expect(succeeded == 30)
    }

    @Test func anUnusableStagingFolderStopsTheRunAndTheNextRunNamesItUntilItIsFixed() async throws {
        let folder = temporaryDirectory()
        let file = try campaign(in: folder, count: 12)
        let out = folder.appendingPathComponent("out")
        let log = folder.appendingPathComponent("submits.log")
        // From the 3rd call on, the staging folder is a plain file: nothing can be created in it.
        let broken = try await pargen(
            ["run", file.path, "--out", out.path, "--no-progress"],
            environment: ["PARGEN_TEST_BREAK_STAGING": "notdir:3", "PARGEN_LOCAL_SUBMIT_LOG": log.path]
        )
        #expect(broken.status == 2, "\(broken.output)")
        #expect(broken.output.contains("\(out.path)/.staging/"), "\(broken.output)")
        #expect(broken.output.contains("Not a directory"), "\(broken.output)")
        #expect(broken.seconds < 60, "took \(broken.seconds) s")
        #expect(try manifestStatuses(out).allSatisfy { $0 == "succeeded" || $0 == "pending" })

        // Still broken: the next run says so at once, in one line, before taking any work.
        let still = try await pargen(["run", file.path, "--out", out.path, "--no-progress"])
        #expect(still.status == 2, "\(still.output)")
        #expect(still.output.contains("pargen: cannot create the folder \(out.path)/.staging: File exists"), "\(still.output)")
        #expect(!still.output.contains("Error Domain"), "\(still.output)")

        try FileManager.default.removeItem(at: out.appendingPathComponent(".staging"))
        let fixed = try await pargen(
            ["run", file.path, "--out", out.path, "--no-progress"],
            environment: ["PARGEN_LOCAL_SUBMIT_LOG": log.path]
        )
        #expect(fixed.status == 0, "\(fixed.output)")
        #expect(try manifestStatuses(out) == Array(repeating: "succeeded", count: 12))
        let billed = try billedRequests(log)
        #expect(Set(billed).count == billed.count && billed.count == 12, "\(billed)")
    }

    @Test func foundationAndPOSIXFileErrorsAreLocalAndProviderErrorsAreNot() throws {
        let path = URL(fileURLWithPath: "/tmp/x")
        let posix = LocalResourceError.classify(POSIXError(.ENOSPC), path: path, operation: "write")
        #expect(posix == LocalResourceError(path: "/tmp/x", operation: "write", errorNumber: ENOSPC))
        #expect(posix?.description == "cannot write /tmp/x: No space left on device")
        let cocoa = NSError(
            domain: NSCocoaErrorDomain,
            code: CocoaError.fileWriteFileExists.rawValue,
            userInfo: [
                NSFilePathErrorKey: "/out/.staging",
                NSUnderlyingErrorKey: NSError(domain: NSPOSIXErrorDomain, code: Int(EEXIST)),
            ]
        )
        #expect(
            LocalResourceError.classify(cocoa, path: path, operation: "create the folder")?.description
                == "cannot create the folder /out/.staging: File exists"
        )
        #expect(LocalResourceError.classify(GenerationError(.transient, "HTTP 503"), path: path, operation: "w") == nil)
        #expect(LocalResourceError.classify(POSIXError(.ECONNREFUSED), path: path, operation: "w") == nil)
        #expect(LocalResourceError.classify(CancellationError(), path: path, operation: "w") == nil)
        let store = StoreError(.unavailable, "the job store failed a write", underlying: posix)
        #expect(LocalResourceError.classify(store, path: path, operation: "w") == posix)
        #expect(LocalResourceError.classify(StoreError(.leaseLost, "gone"), path: path, operation: "w") == nil)
    }
}
