import Foundation
import Pargen
import PargenSQLite

/// Fault injection for the crash tests, read from the environment by debug builds only: a release build of
/// `pargen` has no such path, whatever its environment says.
enum TestHooks {
    /// The engine hooks and the local providers' submit log the environment asks for.
    ///
    /// - `PARGEN_TEST_CRASH_AFTER_SUBMIT=P`: after a provider accepts a task and before its id is stored, the
    ///   process kills itself with SIGKILL with probability P, first naming the job in `PARGEN_TEST_CRASH_MARKER`.
    /// - `PARGEN_TEST_BREAK_STAGING=full:N` or `notdir:N`: from the N-th provider call on, the call's staging file
    ///   is a link to `/dev/full` (every write fails with ENOSPC, as on a full disk), or the staging folder is
    ///   replaced by a plain file (nothing can be created in it).
    /// - `PARGEN_TEST_KILL_ON_PROMPT=TEXT`: a provider call for a prompt containing TEXT kills the process with
    ///   SIGKILL as it begins, on every run.
    /// - `PARGEN_TEST_KILL_AT=CHECKPOINT:N`: the N-th time a call reaches CHECKPOINT (`call_begun`, `submitted`,
    ///   `downloaded`, `committed`), the process names the job in `PARGEN_TEST_CRASH_MARKER` and kills itself.
    /// - `PARGEN_TEST_TERM_AT=CHECKPOINT:N`: the same, with SIGTERM (a graceful stop) instead.
    /// - `PARGEN_TEST_FILL_STORE=N`: at the N-th provider call, the SQLite job store stops growing (SQLite's own
    ///   `SQLITE_FULL` on the next write that needs a page, as on a full disk; see ``attach(store:)``).
    /// - `PARGEN_LOCAL_SUBMIT_LOG=FILE`: the local providers log every task they accept and what they bill.
    /// With `PARGEN_TEST_EXIT_WITH_PARENT=1` (debug builds), the process exits when the process that started it
    /// ends (a test that timed out or crashed), so that a long-running `pargen worker` never outlives its test.
    static func exitWithParentIfAsked() {
        #if DEBUG
        guard ProcessInfo.processInfo.environment["PARGEN_TEST_EXIT_WITH_PARENT"] == "1" else { return }
        let parent = getppid()
        Task.detached {
            while true {
                try? await Task.sleep(for: .seconds(1))
                if getppid() != parent { _exit(3) }
            }
        }
        #endif
    }

    static func fromEnvironment() -> (EngineHooks, submitLog: URL?) {
        #if DEBUG
        let environment = ProcessInfo.processInfo.environment
        let submitLog = environment["PARGEN_LOCAL_SUBMIT_LOG"].map { URL(fileURLWithPath: $0) }
        var hooks = EngineHooks()
        if let text = environment["PARGEN_TEST_CRASH_AFTER_SUBMIT"], let probability = Double(text), probability > 0 {
            // Before killing itself, the process names the job it dies on (one write to an O_APPEND file), so the
            // crash test can tell a kill inside the submit-to-persist window from any other death.
            let marker = environment["PARGEN_TEST_CRASH_MARKER"]
            // Once per process: two calls accepted at the same moment could otherwise both name their job before
            // the signal lands, and the test would count two crashes for one (a red run: 3 names for 2 runs).
            let fired = Locked(false)
            hooks.afterProviderAccepted = { job in
                guard Double.random(in: 0..<1) < probability else { return }
                let first = fired.withLock { fired -> Bool in
                    defer { fired = true }
                    return !fired
                }
                guard first else { return }
                if let marker { append("\(job)\n", to: marker) }
                kill(getpid(), SIGKILL)
            }
        }
        let breaking = environment["PARGEN_TEST_BREAK_STAGING"].map(breakStaging)
        let poison = environment["PARGEN_TEST_KILL_ON_PROMPT"].flatMap { $0.isEmpty ? nil : $0 }
        let fillAt = environment["PARGEN_TEST_FILL_STORE"].flatMap { Int($0) }
        let calls = Locked(0)
        hooks.beforeProviderCall = { request, staging in
            // A call that brings the process down, on every run: the crash-loop case.
            if let poison, request.prompt.contains(poison) { kill(getpid(), SIGKILL) }
            breaking?(staging)
            if let fillAt, calls.withLock({ count -> Bool in
                count += 1
                return count == fillAt
            }), let store = storeToFill.withLock({ $0 }) {
                // The writes from here on may or may not need a page; the run stops at the first that does.
                Task { try? await store.stopGrowing() }
            }
        }
        for (variable, signal) in [("PARGEN_TEST_KILL_AT", SIGKILL), ("PARGEN_TEST_TERM_AT", SIGTERM)] {
            let parts = environment[variable]?.split(separator: ":") ?? []
            guard parts.count == 2, let point = EngineHooks.Checkpoint(rawValue: String(parts[0])),
                let nth = Int(parts[1])
            else { continue }
            let seen = Locked(0)
            let marker = environment["PARGEN_TEST_CRASH_MARKER"]
            hooks.checkpoint = { reached, job in
                guard reached == point else { return }
                let count = seen.withLock { count -> Int in
                    count += 1
                    return count
                }
                guard count == nth else { return }
                if let marker { append("\(job)\n", to: marker) }
                kill(getpid(), signal)
            }
        }
        return (hooks, submitLog)
        #else
        return (EngineHooks(), nil)
        #endif
    }

    /// The SQLite store `PARGEN_TEST_FILL_STORE` fills (debug builds).
    private static let storeToFill = Locked<SQLiteJobStore?>(nil)

    /// Tells the hooks which store the command runs on (`PARGEN_TEST_FILL_STORE`); a release build ignores it.
    static func attach(store: any JobStore) {
        #if DEBUG
        storeToFill.withLock { $0 = store as? SQLiteJobStore }
        #endif
    }

    #if DEBUG
    /// One `write` on an `O_APPEND` descriptor: lines from processes killed at any moment never interleave.
    private static func append(_ line: String, to path: String) {
        let descriptor = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { return }
        var bytes = Array(line.utf8)
        _ = write(descriptor, &bytes, bytes.count)
        close(descriptor)
    }

    private static func breakStaging(_ text: String) -> @Sendable (URL) -> Void {
        let parts = text.split(separator: ":")
        guard parts.count == 2, let after = Int(parts[1]), after > 0 else { return { _ in } }
        let mode = String(parts[0])
        let calls = Locked(0)
        return { staging in
            let count = calls.withLock { count -> Int in
                count += 1
                return count
            }
            guard count >= after else { return }
            switch mode {
            case "full":
                try? FileManager.default.removeItem(at: staging)
                try? FileManager.default.createSymbolicLink(atPath: staging.path, withDestinationPath: "/dev/full")
            case "notdir":
                let folder = staging.deletingLastPathComponent()
                var isDirectory: ObjCBool = false
                if FileManager.default.fileExists(atPath: folder.path, isDirectory: &isDirectory), isDirectory.boolValue {
                    try? FileManager.default.removeItem(at: folder)
                    _ = FileManager.default.createFile(atPath: folder.path, contents: Data("not a folder\n".utf8))
                }
            default: break
            }
        }
    }
    #endif
}
