import Foundation
import NIOCore
import Pargen
@testable import PargenRedis
import Testing

/// The Redis server of the test run: `scripts/test.sh` starts one on loopback (with a password) and names it in
/// `PARGEN_TEST_REDIS_URL`, and its folder in `PARGEN_TEST_REDIS_DIR` (for restarts).
enum TestRedis {
    struct Missing: Error, CustomStringConvertible {
        var description: String {
            "PARGEN_TEST_REDIS_URL is not set: run the tests with scripts/test.sh, which starts redis-server on 127.0.0.1 and sets it"
        }
    }

    /// With a command time-out for a loaded machine (the suites run at once on two cores): tests of the
    /// time-out set their own.
    static func configuration() throws -> RedisConfiguration {
        guard let url = ProcessInfo.processInfo.environment["PARGEN_TEST_REDIS_URL"] else { throw Missing() }
        var configuration = try RedisConfiguration(url: url)
        configuration.commandTimeout = .seconds(30)
        return configuration
    }

    /// A key prefix of its own, so tests never see each other's keys.
    static func prefix() -> String { "t:" + UUID().uuidString.prefix(8) + ":" }
}

@Suite(.timeLimit(.minutes(2))) struct RedisClientTests {
    @Test func commandsAndPipelinesAreAnsweredInOrder() async throws {
        let redis = RedisClient(configuration: try TestRedis.configuration())
        let p = TestRedis.prefix()
        try await redis.set(p + "a", "one", ttl: .seconds(60))
        #expect(try await redis.get(p + "a") == "one")
        #expect(try await redis.get(p + "missing") == nil)
        // 2,000 commands in one write, then from 16 tasks at once over the pool: every answer matches its command.
        let answers = try await redis.pipeline((0..<2000).map { ["ECHO", "v\($0)"] })
        #expect(answers.map(\.string) == (0..<2000).map { "v\($0)" })
        try await withThrowingTaskGroup(of: Void.self) { group in
            for task in 0..<16 {
                group.addTask {
                    for i in 0..<50 {
                        let value = "\(task)-\(i)"
                        let echoed = try await redis.send(["ECHO", value]).string
                        #expect(echoed == value)
                    }
                }
            }
            try await group.waitForAll()
        }
        let error = await #expect(throws: RedisError.self) { try await redis.send(["NOSUCHCOMMAND"]) }
        #expect(error?.kind == .server)
        // The connection that carried the error answer still works.
        #expect(try await redis.send(["PING"]).string == "PONG")
        await redis.close()
    }

    @Test func aWrongPasswordIsRefusedWithoutShowingIt() async throws {
        var configuration = try TestRedis.configuration()
        configuration.password = "wrong-password-xyz"
        let redis = RedisClient(configuration: configuration)
        let error = await #expect(throws: RedisError.self) { try await redis.send(["PING"]) }
        #expect(error?.kind == .server, "\(String(describing: error))")
        #expect(!"\(String(describing: error))".contains("wrong-password-xyz"))
        #expect(configuration.redacted.contains(":***@") && !configuration.redacted.contains("wrong-password"))
    }

    @Test func theDatabaseIsSelected() async throws {
        var one = try TestRedis.configuration()
        one.database = 3
        let p = TestRedis.prefix()
        let three = RedisClient(configuration: one)
        let zero = RedisClient(configuration: try TestRedis.configuration())
        try await three.set(p + "db", "three", ttl: .seconds(60))
        #expect(try await zero.get(p + "db") == nil)
        #expect(try await three.get(p + "db") == "three")
    }

    @Test func locksCarryGrowingFencingTokens() async throws {
        let redis = RedisClient(configuration: try TestRedis.configuration())
        let key = TestRedis.prefix() + "lock"
        // Lives of 60 s, and expiry brought forward by the test: a loaded machine can stall a test for seconds.
        let first = try #require(try await redis.lock(key, ttl: .seconds(60)))
        guard case .integer(let left) = try await redis.send(["PTTL", key]) else { throw RedisError(.protocolError, "PTTL") }
        #expect(left > 0 && left <= 60_000, "the lock lives as long as asked")
        #expect(try await redis.lock(key, ttl: .seconds(60)) == nil, "held")
        // The first holder's time runs out; the next holder gets a larger token, and the late first holder's
        // unlock leaves the new holder's lock alone.
        try await redis.send(["PEXPIRE", key, "1"])
        while try await redis.send(["EXISTS", key]) != .integer(0) { try await Task.sleep(for: .milliseconds(5)) }
        let second = try #require(try await redis.lock(key, ttl: .seconds(60)))
        #expect(second.fence > first.fence)
        #expect(try await redis.unlock(first) == false)
        #expect(try await redis.lock(key, ttl: .seconds(60)) == nil, "still the second holder's")
        #expect(try await redis.unlock(second) == true)
        let third = try #require(try await redis.lock(key, ttl: .seconds(60)))
        #expect(third.fence > second.fence)
        try await redis.unlock(third)
    }

    @Test func aSlowCommandTimesOutAndTheNextOneWorks() async throws {
        var configuration = try TestRedis.configuration()
        configuration.poolSize = 1
        // 5 s, not less: the command after the time-out opens a new connection (HELLO, SELECT, then PING), which a
        // loaded machine took more than 200 ms to do (the full suite failed there once).
        configuration.commandTimeout = .seconds(5)
        configuration.connectTimeout = .seconds(5)
        let redis = RedisClient(configuration: configuration)
        let started = ContinuousClock.now
        // The server answers after 30 s; the client gives up after 5 s (far apart, for a loaded machine).
        let error = await #expect(throws: RedisError.self) { try await redis.send(["BLPOP", TestRedis.prefix() + "empty", "30"]) }
        #expect(error?.kind == .timeout, "\(String(describing: error))")
        #expect(ContinuousClock.now - started < .seconds(20), "the caller did not wait for the answer")
        #expect(try await redis.send(["PING"]).string == "PONG", "a new connection")
    }

    /// A command sent on a connection that closed after it was picked (the server stopped between the check
    /// and the write) fails at once. It waited before: a command written in the moment after the close waited
    /// for its whole time-out, and one written once the connection's handlers were gone waited for ever (a
    /// stopped Redis held a campaign's lookups for 30 s each under load).
    @Test func aCommandOnAConnectionThatJustClosedFailsAtOnce() async throws {
        let redis = RedisClient(configuration: try TestRedis.configuration())
        let channel = try await redis.open()
        try await channel.close()
        let started = ContinuousClock.now
        // Not awaited in a task group: a command that waits for ever must fail this test, not hang it.
        let outcome = Locked<String?>(nil)
        Task {
            do {
                _ = try await RedisClient.exchange([["PING"]], on: channel, within: .seconds(60))
                outcome.withLock { $0 = "answered" }
            } catch let error as RedisError {
                outcome.withLock { $0 = "\(error.kind)" }
            }
        }
        while outcome.value == nil, ContinuousClock.now - started < .seconds(20) {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(outcome.value == "connectionClosed", "after \(ContinuousClock.now - started)")
        #expect(ContinuousClock.now - started < .seconds(10))
    }

    @Test func aServerThatIsDownFailsFastDuringTheBackoff() async throws {
        // A port with nothing listening.
        let port = try FaultMatrixTests.closedPort()
        let redis = RedisClient(
            configuration: RedisConfiguration(port: port, poolSize: 1, reconnectDelay: .seconds(30))
        )
        let first = await #expect(throws: RedisError.self) { try await redis.send(["PING"]) }
        #expect(first?.kind == .unavailable)
        let started = ContinuousClock.now
        let second = await #expect(throws: RedisError.self) { try await redis.send(["PING"]) }
        #expect(second?.kind == .unavailable && second?.message.contains("trying again") == true)
        #expect(ContinuousClock.now - started < .milliseconds(50), "refused at once, without a connection attempt")
    }

    @Test func urlsAreReadAndCheckedWithoutEchoingThem() throws {
        let configuration = try RedisConfiguration(url: "redis://app:s3cret@cache.internal:6380/2")
        #expect(configuration.host == "cache.internal" && configuration.port == 6380)
        #expect(configuration.username == "app" && configuration.password == "s3cret" && configuration.database == 2)
        #expect(configuration.redacted == "redis://app:***@cache.internal:6380/2")
        for bad in ["http://x", "redis://", "redis://h/99", "redis://h/x", "rediss://h"] {
            #expect(throws: RedisError.self, "\(bad)") { try RedisConfiguration(url: bad) }
        }
    }
}

/// The server's script cache: these two flush it, so they run one at a time (the other suites' scripts only
/// meet `NOSCRIPT`, which they survive).
@Suite(.serialized) struct RedisScriptCacheTests {
    @Test func aScriptTheServerForgotIsLoadedAgain() async throws {
        let redis = RedisClient(configuration: try TestRedis.configuration())
        let script = RedisScript("return ARGV[1] .. '!'")
        try await redis.send(["SCRIPT", "FLUSH"])
        #expect(try await redis.evaluate(script, keys: [], arguments: ["hi"]).string == "hi!")
        #expect(try await redis.send(["SCRIPT", "EXISTS", script.sha1]) == .array([.integer(1)]))
    }

    /// Scripts run while another client flushes the script cache again and again: every call succeeds. A script
    /// loaded again after `NOSCRIPT` (`SCRIPT LOAD`, then `EVALSHA`) failed when a flush came in between, which is
    /// how a lock failed in CI while a parallel test flushed; the source now goes with `EVAL`.
    @Test func scriptsRunWhileTheCacheIsFlushedAgainAndAgain() async throws {
        let redis = RedisClient(configuration: try TestRedis.configuration())
        let flusher = RedisClient(configuration: try TestRedis.configuration())
        let script = RedisScript("return 'flushed ' .. ARGV[1]")
        let flushing = Task {
            while !Task.isCancelled { _ = try? await flusher.send(["SCRIPT", "FLUSH"]) }
        }
        var failures: [String] = []
        for round in 0..<300 {
            do {
                _ = try await redis.evaluate(script, keys: [], arguments: ["\(round)"])
            } catch {
                failures.append("\(error)")
            }
        }
        // The flushing ends before the test does, so that no flush reaches the next test of the suite.
        flushing.cancel()
        await flushing.value
        #expect(failures.isEmpty, "\(failures.count) of 300 failed: \(failures.prefix(2))")
    }
}
