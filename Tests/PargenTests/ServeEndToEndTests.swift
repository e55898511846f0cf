import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import Pargen
import PargenSQLite
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// One HTTP exchange with a running `pargen serve`.
struct HTTPExchange {
    var status: Int
    var headers: HTTPHeaders
    var body: Data

    var json: [String: Any] { (try? JSONSerialization.jsonObject(with: body) as? [String: Any]) ?? [:] }

    static func send(
        _ method: HTTPMethod,
        _ url: String,
        key: String?,
        body: Data? = nil,
        headers: [(String, String)] = []
    ) async throws -> HTTPExchange {
        var request = HTTPClientRequest(url: url)
        request.method = method
        if let key { request.headers.add(name: "Authorization", value: "Bearer \(key)") }
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let body {
            if !headers.contains(where: { $0.0.lowercased() == "content-type" }) {
                request.headers.add(name: "Content-Type", value: "application/json")
            }
            request.body = .bytes(ByteBuffer(data: body))
        }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
        let bytes = try await response.body.collect(upTo: 64 << 20)
        return HTTPExchange(status: Int(response.status.code), headers: response.headers, body: Data(buffer: bytes))
    }
}

extension SoloTests {
    /// A real `pargen serve` on SQLite: a key from `pargen keys create`, a job created, followed by SSE and
    /// downloaded, a campaign uploaded, then SIGTERM mid-campaign. The server exits 0 having given its leases
    /// back; a second `pargen serve` on the same folder finishes the campaign. Every job succeeds, each was
    /// submitted to a provider once, and the ledger charges what the providers billed.
    @Test(.timeLimit(.minutes(4))) func pargenServeKeepsEveryJobAcrossSIGTERM() async throws {
        let folder = temporaryDirectory()
        let out = folder.appendingPathComponent("out")
        let submitLog = folder.appendingPathComponent("submits.tsv")
        let environment = ["PARGEN_LOCAL_SUBMIT_LOG": submitLog.path]

        let keyOutput = folder.appendingPathComponent("key.txt")
        let keys = try launch(["keys", "create", "--tenant", "acme", "--project", "social", "--out", out.path], output: keyOutput)
        keys.waitUntilExit()
        #expect(keys.terminationStatus == 0)
        let key = try #require(
            try String(contentsOf: keyOutput, encoding: .utf8).split(separator: "\n").first { $0.hasPrefix("key_") }.map(String.init)
        )

        func serve(_ name: String) async throws -> (Process, URL, String) {
            let log = folder.appendingPathComponent(name)
            let process = try launch(["serve", "--out", out.path, "--port", "0"], output: log, environment: environment)
            let base = try await waitForLine(in: log, containing: "serving on") { line in
                line.split(separator: " ").first { $0.hasPrefix("http://") }.map(String.init)
            }
            return (process, log, base)
        }
        func stop(_ process: Process, log: URL) async throws {
            kill(process.processIdentifier, SIGTERM)
            try await waitUntil(seconds: 60) { !process.isRunning }
            #expect(process.terminationStatus == 0, "\((try? String(contentsOf: log, encoding: .utf8)) ?? "")")
        }

        let (server, log, base) = try await serve("serve-1.log")
        let port = try #require(Int(base.split(separator: ":").last ?? ""))
        #expect(try await HTTPExchange.send(.GET, base + "/readyz", key: nil).status == 200)

        // A second server on the same port cannot listen: it says so and exits 2 (it exited 0, as if it had
        // served and been stopped, so a supervisor saw nothing wrong).
        let busyLog = folder.appendingPathComponent("busy.log")
        let busy = try launch(["serve", "--memory", "--port", "\(port)"], output: busyLog)
        try await waitUntil(seconds: 60) { !busy.isRunning }
        let busyOutput = (try? String(contentsOf: busyLog, encoding: .utf8)) ?? ""
        #expect(busy.terminationStatus == 2, "\(busyOutput)")
        #expect(busyOutput.contains("cannot listen on 127.0.0.1:\(port): Address already in use"), "\(busyOutput)")

        // Create, follow by SSE, download.
        let following = Task {
            try await readEvents(port: port, key: key) { events in
                events.contains { $0.type == "job.finished" && $0.data["request_id"] as? String == "hello" }
            }
        }
        try await Task.sleep(for: .milliseconds(300))
        let created = try await HTTPExchange.send(
            .POST,
            base + "/v1/jobs",
            key: key,
            body: Data(#"{"id":"hello","type":"audio","prompt":"Hello over HTTP","duration":2}"#.utf8)
        )
        #expect(created.status == 202)
        let id = try #require(created.json["id"] as? String)
        let events = try await following.value
        #expect(events.contains { $0.data["job_id"] as? String == id && $0.data["status"] as? String == "running" })
        let job = try await HTTPExchange.send(.GET, base + "/v1/jobs/\(id)", key: key).json
        let artifact = try #require(job["artifact"] as? [String: Any])
        let file = try await HTTPExchange.send(.GET, base + "/v1/jobs/\(id)/artifact", key: key)
        #expect(file.status == 200 && sha256Hex(file.body) == artifact["sha256"] as? String)

        // A campaign long enough to be cut: 120 lines of 10 to 30 s of audio from 4 users (each user has a
        // window of 60 calls a minute).
        var csv = "type,prompt,duration,user\n"
        for line in 0..<120 { csv += "audio,Line \(line) of the launch,\(10 + line % 21),user-\(line % 4)\n" }
        let upload = try await HTTPExchange.send(
            .POST,
            base + "/v1/campaigns?name=launch",
            key: key,
            body: Data(csv.utf8),
            headers: [("Content-Type", "text/csv")]
        )
        #expect(upload.status == 202)
        #expect(upload.json["accepted"] as? Int == 120)
        try await waitUntil(seconds: 60) { [base] in
            let campaign = try await HTTPExchange.send(.GET, base + "/v1/campaigns/launch", key: key).json
            return ((campaign["counts"] as? [String: Any])?["succeeded"] as? Int ?? 0) >= 15
        }
        try await stop(server, log: log)
        let text = try String(contentsOf: log, encoding: .utf8)
        #expect(text.contains("the leases are given back"))
        // Cut mid-campaign, with no lease left behind.
        let store = try SQLiteJobStore(path: out.appendingPathComponent("campaign.sqlite").path)
        let counts = try await store.counts()
        #expect(counts[.running, default: 0] == 0, "\(counts)")
        #expect(counts[.available, default: 0] > 0, "the campaign was cut: \(counts)")

        let (again, againLog, againBase) = try await serve("serve-2.log")
        try await waitUntil(seconds: 120) {
            let campaign = try await HTTPExchange.send(.GET, againBase + "/v1/campaigns/launch", key: key).json
            return campaign["progress"] as? Double == 1
        }
        let campaign = try await HTTPExchange.send(.GET, againBase + "/v1/campaigns/launch", key: key).json
        #expect((campaign["counts"] as? [String: Any])?["succeeded"] as? Int == 120, "\(campaign)")
        try await stop(again, log: againLog)

        let jobs = try await store.jobs(matching: JobQuery())
        #expect(jobs.count == 121 && jobs.allSatisfy { $0.state == .succeeded })
        let submissions = (try String(contentsOf: submitLog, encoding: .utf8)).split(separator: "\n").map {
            $0.split(separator: "\t").map(String.init)
        }
        let perJob = Dictionary(grouping: submissions) { $0[0].split(separator: ":").first.map(String.init) ?? "" }
        #expect(perJob.count == 121 && perJob.values.allSatisfy { $0.count == 1 }, "each job was submitted once")
        let ledger = try await store.ledgerTotals()
        let billed = submissions.reduce(Int64(0)) { $0 + (Int64($1[3]) ?? -1_000_000_000_000) }
        #expect(ledger.balances && ledger.pending == .zero)
        #expect(ledger.charged.nanos == billed)
    }
}

extension SoloTests {
    /// The dashboard in a real browser (headless Chromium, driven by scripts/dashboard_check.py): loaded while a
    /// campaign runs, it goes live on the event stream, updates itself, and shows the job counts, the campaign's
    /// burn-down against its budget and the provider panel. The screenshot is kept for a person to look at.
    @Test(.timeLimit(.minutes(3))) func theDashboardGoesLiveInARealBrowser() async throws {
        let chromium = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"].first { FileManager.default.isExecutableFile(atPath: $0) }
        try #require(chromium != nil, "no Chromium: scripts/test.sh installs Debian's chromium package")
        let folder = temporaryDirectory()
        let log = folder.appendingPathComponent("serve.log")
        let server = try launch(
            ["serve", "--memory", "--print-key", "acme/social", "--port", "0", "--out", folder.appendingPathComponent("out").path],
            output: log
        )
        defer { kill(server.processIdentifier, SIGKILL) }
        let base = try await waitForLine(in: log, containing: "serving on") { line in
            line.split(separator: " ").first { $0.hasPrefix("http://") }.map(String.init)
        }
        let key = try await waitForLine(in: log, containing: "key: ") { String($0.split(separator: " ").last ?? "") }
        let budget = try await HTTPExchange.send(.PUT, base + "/v1/budgets", key: key, body: Data(#"{"scope":"campaign","name":"launch","limit":"5"}"#.utf8))
        #expect(budget.status == 200)
        var csv = "type,prompt,duration,user\n"
        for line in 0..<80 { csv += "audio,Dashboard line \(line),\(10 + line % 21),user-\(line % 4)\n" }
        let upload = try await HTTPExchange.send(.POST, base + "/v1/campaigns?name=launch", key: key, body: Data(csv.utf8), headers: [("Content-Type", "text/csv")])
        #expect(upload.status == 202)

        let screenshot = folder.appendingPathComponent("dashboard.png")
        let check = Process()
        check.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("scripts/dashboard_check.py")
        check.arguments = ["python3", script.path, base, key, screenshot.path, "60"]
        let output = Pipe()
        check.standardOutput = output
        try check.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        check.waitUntilExit()
        let page = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any], "\(String(decoding: data, as: UTF8.self))")
        #expect(check.terminationStatus == 0, "\(page)")
        #expect(page["live"] as? Bool == true, "the page went live: \(page)")
        #expect((page["updates"] as? Int ?? 0) >= 2, "the page updated itself from events")
        let counts = try #require(page["counts"] as? [String: Int])
        #expect(counts.values.reduce(0, +) == 80, "\(counts)")
        let initial = page["initial"] as? [String: Int] ?? [:]
        #expect(counts["succeeded"] != initial["succeeded"] || counts["available", default: 0] + counts["running", default: 0] == 0)
        let campaigns = try #require(page["campaigns"] as? [[String: Any]])
        let launch = try #require(campaigns.first { $0["name"] as? String == "launch" })
        #expect(launch["budget"] as? String == "$5.00")
        #expect(launch["hasBudgetLine"] as? Bool == true)
        #expect((launch["spentWidth"] as? Double ?? 0) > 0, "the burn-down shows spending: \(launch)")
        let providers = try #require(page["providers"] as? [[String: Any]])
        #expect(Set(providers.compactMap { $0["name"] as? String }) == ["local-fast", "local-cheap", "local-studio"])
        #expect(providers.allSatisfy { ($0["slots"] as? String)?.contains("/") == true && $0["circuit"] as? String == "closed" })
        // What the page showed is what the store holds once the campaign is over.
        try await waitUntil(seconds: 60) {
            let stats = try await HTTPExchange.send(.GET, base + "/v1/stats", key: key).json
            return (stats["jobs"] as? [String: Int])?["succeeded"] == 80
        }
        let attributes = try FileManager.default.attributesOfItem(atPath: screenshot.path)
        #expect((attributes[.size] as? Int ?? 0) > 10_000, "a screenshot was taken")
        // Kept where a person can find it after the run.
        let kept = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent(".build/test-artifacts")
        try? FileManager.default.createDirectory(at: kept, withIntermediateDirectories: true)
        try? FileManager.default.removeItem(at: kept.appendingPathComponent("dashboard.png"))
        try? FileManager.default.copyItem(at: screenshot, to: kept.appendingPathComponent("dashboard.png"))
        print("dashboard screenshot: \(kept.appendingPathComponent("dashboard.png").path)")
    }
}
