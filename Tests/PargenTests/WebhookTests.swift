import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Pargen
import PargenPostgres
import PargenServer
import PargenTesting
import Testing

@Suite(.timeLimit(.minutes(2))) struct WebhookTests {
    /// The Standard Webhooks reference vector (standard-webhooks/standard-webhooks, the libraries' tests).
    @Test func signaturesMatchTheStandardWebhooksVector() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        let body = Array(#"{"test": 2432232314}"#.utf8)
        let signature = WebhookSignature.sign(id: "msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp: 1_614_265_330, body: body, secret: secret)
        #expect(signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        let when = Date(timeIntervalSince1970: 1_614_265_330)
        #expect(WebhookSignature.verify(id: "msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp: "1614265330", signatures: "v1,bogus " + signature, body: body, secret: secret, now: when))
        // A changed body, id or secret, or a timestamp too far from now, fails.
        #expect(!WebhookSignature.verify(id: "msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp: "1614265330", signatures: signature, body: body + [0x20], secret: secret, now: when))
        #expect(!WebhookSignature.verify(id: "msg_other", timestamp: "1614265330", signatures: signature, body: body, secret: secret, now: when))
        #expect(!WebhookSignature.verify(id: "msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp: "1614265330", signatures: signature, body: body, secret: WebhookSignature.makeSecret(), now: when))
        #expect(!WebhookSignature.verify(id: "msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp: "1614265330", signatures: signature, body: body, secret: secret, now: when.addingTimeInterval(301)))
    }

    /// Retries span more than a day, and stop.
    @Test func theStandardScheduleRetriesForMoreThanADay() {
        let schedule = WebhookSchedule.standard
        #expect(schedule.span > .seconds(24 * 3600))
        #expect(schedule.delay(afterFailures: 1, jitter: 0) == .seconds(5))
        #expect(schedule.delay(afterFailures: schedule.delays.count, jitter: 0) == nil)
        #expect(schedule.delay(afterFailures: 3, jitter: 0.1)! <= .seconds(1980))
    }

    /// Loopback, private, link-local and unspecified targets are refused unless the configuration allows them.
    @Test func privateTargetsAreRefusedUnlessAllowed() async throws {
        let fixture = try await ServiceFixture.make()
        defer { Task { try? await fixture.stop() } }
        let app = fixture.app()
        try await app.test(.router) { client in
            for url in [
                "http://127.0.0.1:9/hook", "http://localhost/hook", "http://10.1.2.3/", "http://192.168.0.1/",
                "http://172.20.0.1/", "http://169.254.169.254/latest/meta-data", "http://[::1]/", "http://0.0.0.0/",
                "http://100.64.0.1/", "ftp://example.com/", "not a url", "http://user:pw@example.com/",
            ] {
                let response = try await client.call(.post, "/v1/webhooks", key: fixture.acmeAdmin, body: #"{"url":"\#(url)"}"#)
                #expect(response.status == .unprocessableContent, "\(url): \(response.text)")
                #expect((response.json["errors"] as? [[String: Any]])?.first?["field"] as? String == "url")
            }
            // Only admin keys manage webhooks.
            let plain = try await client.call(.post, "/v1/webhooks", key: fixture.acme, body: #"{"url":"https://example.com/h"}"#)
            #expect(plain.status == .forbidden)
        }
        var configuration = ServerConfiguration()
        configuration.allowPrivateWebhookTargets = true
        let allowed = try await ServiceFixture.make(configuration: configuration)
        defer { Task { try? await allowed.stop() } }
        try await allowed.app().test(.router) { client in
            let response = try await client.call(.post, "/v1/webhooks", key: allowed.acmeAdmin, body: #"{"url":"http://127.0.0.1:9/hook"}"#)
            #expect(response.status == .created)
            #expect((response.json["secret"] as? String)?.hasPrefix("whsec_") == true)
        }
    }

    /// A receiver that answers 500 to each message's first try: every message comes again with the same id and a
    /// valid signature, and once it is answered 2xx it never comes again (until redelivered by hand).
    @Test func deliveriesAreSignedRetriedAfter500AndNeverDuplicatedOnceAnswered() async throws {
        let receiver = try await ScriptedHTTPServer.start { request, history in
            let id = request.headers["webhook-id"] ?? ""
            let tries = history.filter { $0.headers["webhook-id"] == id }.count
            return ScriptedHTTPServer.Answer(status: tries == 1 ? 500 : 204)
        }
        var configuration = ServerConfiguration()
        configuration.port = 0
        configuration.allowPrivateWebhookTargets = true
        configuration.webhookSchedule = WebhookSchedule(delays: [.zero, .milliseconds(300), .milliseconds(300)])
        let fixture = try await ServiceFixture.make(configuration: configuration)
        defer { Task { try? await fixture.stop() } }
        try await fixture.server.application().test(.live) { client in
            let registered = try await client.call(
                .post,
                "/v1/webhooks",
                key: fixture.acmeAdmin,
                body: #"{"url":"\#(receiver.baseURL)/hook","events":["job.finished"]}"#
            )
            #expect(registered.status == .created)
            let hookID = try #require(registered.json["id"] as? String)
            let secret = try #require(registered.json["secret"] as? String)
            // Three of acme's jobs and one of globex's (which acme's webhook must not see).
            let batch = (0..<3).map { #"{"type":"audio","prompt":"hook \#($0)","duration":1}"# }
            let created = try await client.call(.post, "/v1/jobs", key: fixture.acme, body: "[" + batch.joined(separator: ",") + "]")
            let ids = Set((created.json["data"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String })
            _ = try await client.call(.post, "/v1/jobs", key: fixture.globex, body: #"{"type":"audio","prompt":"other","duration":1}"#)
            try await waitUntil(seconds: 30) {
                Set(receiver.received.filter { $0.path == "/hook" }.compactMap { $0.headers["webhook-id"] }).count == 3
                    && receiver.received.count >= 6
            }
            try await Task.sleep(for: .seconds(1))  // time for any extra try to show up
            let received = receiver.received
            let byID = Dictionary(grouping: received) { $0.headers["webhook-id"] ?? "" }
            #expect(byID.count == 3)
            var jobs = Set<String>()
            for (id, tries) in byID {
                #expect(tries.count == 2, "\(id) came \(tries.count) times: once refused, once taken")
                #expect(Set(tries.map(\.body)).count == 1, "every try carries the same bytes")
                for request in tries {
                    #expect(
                        WebhookSignature.verify(
                            id: id,
                            timestamp: request.headers["webhook-timestamp"] ?? "",
                            signatures: request.headers["webhook-signature"] ?? "",
                            body: Array(request.body),
                            secret: secret
                        )
                    )
                }
                let payload = try #require(try JSONSerialization.jsonObject(with: tries[0].body) as? [String: Any])
                #expect(payload["type"] as? String == "job.finished")
                let data = try #require(payload["data"] as? [String: Any])
                jobs.insert(data["job_id"] as? String ?? "")
            }
            #expect(jobs == ids)
            // The delivery log shows both tries.
            let log = try await client.call(.get, "/v1/webhooks/\(hookID)/deliveries", key: fixture.acmeAdmin)
            let deliveries = log.json["data"] as? [[String: Any]] ?? []
            #expect(deliveries.count == 3)
            for delivery in deliveries {
                #expect(delivery["state"] as? String == "delivered")
                #expect((delivery["attempts"] as? [[String: Any]])?.compactMap { $0["status"] as? Int } == [500, 204])
            }
            // A redelivery by hand sends the same message (same id) once more.
            let one = try #require(deliveries.first?["id"] as? String)
            let redelivered = try await client.call(.post, "/v1/webhooks/\(hookID)/deliveries/\(one)/redeliver", key: fixture.acmeAdmin)
            #expect(redelivered.status == .accepted)
            try await waitUntil(seconds: 10) { receiver.received.filter { $0.headers["webhook-id"] == one }.count == 3 }
            // Another tenant's admin sees neither the webhook nor its deliveries.
            #expect(try await client.call(.get, "/v1/webhooks/\(hookID)/deliveries", key: fixture.acme).status == .forbidden)

            // The metrics count what happened: 4 jobs, 7 webhook tries (3 refused, 4 taken), the requests.
            let metrics = try await client.call(.get, "/metrics", key: nil)
            #expect(metrics.headers[.contentType]?.hasPrefix("text/plain") == true)
            let lines = Set(metrics.text.split(separator: "\n").map(String.init))
            #expect(lines.contains(#"pargen_jobs{state="succeeded"} 4.0"#), "\(metrics.text)")
            #expect(lines.contains(#"pargen_webhook_deliveries_total{outcome="retry"} 3"#))
            #expect(lines.contains(#"pargen_webhook_deliveries_total{outcome="delivered"} 4"#))
            #expect(lines.contains { $0.hasPrefix(#"pargen_http_requests_total{method="POST",route="/v1/jobs",status="202"}"#) })
            let finished = lines.filter { $0.hasPrefix("pargen_job_duration_seconds_count{") }
                .compactMap { Double($0.split(separator: " ").last ?? "") }.reduce(0, +)
            #expect(finished == 4)
            let answered = lines.filter { $0.hasPrefix("pargen_provider_latency_seconds_count{") && $0.contains("answered") }
                .compactMap { Double($0.split(separator: " ").last ?? "") }.reduce(0, +)
            #expect(answered == 4, "a provider latency histogram per provider: \(lines.filter { $0.contains("provider_latency") })")
            #expect(lines.contains { $0.hasPrefix("pargen_spend_dollars_total ") && !$0.hasSuffix(" 0.0") })
            #expect(lines.contains { $0.hasPrefix("pargen_admissions_total") })
        }
    }
}

/// The service's own records behave the same in memory and in SQLite.
@Suite struct ServiceStoreConformanceTests {
    struct Factory: Sendable, CustomTestStringConvertible {
        var name: String
        var make: @Sendable () async throws -> any ServiceStore
        var testDescription: String { name }
    }

    static let factories: [Factory] = [
        Factory(name: "memory") { MemoryServiceStore() },
        Factory(name: "sqlite") { try SQLiteServiceStore(path: temporaryDirectory().appendingPathComponent("campaign.sqlite").path) },
        Factory(name: "postgres") { PostgresServiceStore(jobs: try await TestPostgres.store()) },
    ]

    @Test(arguments: factories)
    func keysAreFoundByHashOnly(_ factory: Factory) async throws {
        let store = try await factory.make()
        let (secret, record) = try APIKeys.make(tenant: "acme", project: "social", admin: true)
        try await store.addKey(record)
        #expect(try await store.key(hash: APIKeys.hash(secret)) == record)
        #expect(try await store.key(hash: APIKeys.hash(secret + "x")) == nil)
        #expect(try await store.keys(tenant: "acme").map(\.id) == [record.id])
        #expect(try await store.keys(tenant: "globex").isEmpty)
        #expect(!record.hash.contains(secret) && record.hash.count == 64)
    }

    @Test(arguments: factories)
    func idempotencyClaimsFollowOneRule(_ factory: Factory) async throws {
        let store = try await factory.make()
        let start = Date(timeIntervalSince1970: 1_800_000_000)
        func claim(_ key: String, _ fingerprint: String, at seconds: Double) async throws -> IdempotencyClaim {
            try await store.claimIdempotencyKey(
                scope: "acme",
                key: key,
                fingerprint: fingerprint,
                now: start.addingTimeInterval(seconds),
                lockTimeout: .seconds(120),
                retention: .seconds(86_400)
            )
        }
        #expect(try await claim("k", "a", at: 0) == .proceed)
        #expect(try await claim("k", "a", at: 1) == .inProgress)
        #expect(try await claim("k", "b", at: 1) == .mismatch)
        let answer = StoredResponse(status: 201, contentType: "application/json", location: "/v1/jobs/1", body: Array(#"{"id":1}"#.utf8))
        try await store.completeIdempotencyKey(scope: "acme", key: "k", response: answer)
        #expect(try await claim("k", "a", at: 2) == .replay(answer))
        #expect(try await store.claimIdempotencyKey(scope: "globex", key: "k", fingerprint: "b", now: start, lockTimeout: .seconds(120), retention: .seconds(86_400)) == .proceed)
        #expect(try await claim("gone", "a", at: 3) == .proceed)
        try await store.releaseIdempotencyKey(scope: "acme", key: "gone")
        #expect(try await claim("gone", "z", at: 4) == .proceed)
        #expect(try await claim("k", "b", at: 86_401) == .proceed)
        // "gone" (made again at 4 s) and globex's key (at 0) are older than a day; acme's "k" was made again.
        #expect(try await store.pruneIdempotencyKeys(before: start.addingTimeInterval(86_400)) == 2)
    }

    @Test(arguments: factories)
    func dueDeliveriesAreHeldWhileSent(_ factory: Factory) async throws {
        let store = try await factory.make()
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        let hook = WebhookRecord(id: "wh_1", tenant: "acme", url: "http://127.0.0.1/h", events: ["*"], secret: WebhookSignature.makeSecret(), createdAt: now)
        try await store.addWebhook(hook)
        #expect(try await store.webhooks(tenant: "acme") == [hook])
        let deliveries = (0..<3).map {
            WebhookDelivery(id: "msg_\($0)", webhookID: "wh_1", tenant: "acme", eventType: "job.finished", payload: Array("{}".utf8), state: .pending, attempts: [], nextAttemptAt: now.addingTimeInterval(Double($0)), createdAt: now)
        }
        try await store.addDeliveries(deliveries)
        let first = try await store.claimDueDeliveries(now: now.addingTimeInterval(1), limit: 10, holdFor: .seconds(15))
        #expect(first.map(\.id) == ["msg_0", "msg_1"])
        #expect(try await store.claimDueDeliveries(now: now.addingTimeInterval(2), limit: 10, holdFor: .seconds(15)).map(\.id) == ["msg_2"])
        var done = first[0]
        done.state = .delivered
        done.attempts = [WebhookAttempt(at: now, status: 204, error: nil, milliseconds: 3)]
        done.nextAttemptAt = nil
        try await store.saveDelivery(done)
        // Held ones come back once their hold ends; a delivered one never does.
        #expect(try await store.claimDueDeliveries(now: now.addingTimeInterval(20), limit: 10, holdFor: .seconds(15)).map(\.id) == ["msg_1", "msg_2"])
        #expect(try await store.delivery(id: "msg_0", tenant: "acme") == done)
        #expect(try await store.delivery(id: "msg_0", tenant: "globex") == nil)
        #expect(try await store.deliveries(webhookID: "wh_1", tenant: "acme", limit: 10).count == 3)
        #expect(try await store.removeWebhook(id: "wh_1", tenant: "globex") == false)
        #expect(try await store.removeWebhook(id: "wh_1", tenant: "acme"))
        #expect(try await store.deliveries(webhookID: "wh_1", tenant: "acme", limit: 10).isEmpty)
    }
}
