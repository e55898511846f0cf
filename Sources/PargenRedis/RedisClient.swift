import Crypto
import Foundation
public import Logging
public import NIOCore
public import NIOPosix
import Synchronization

/// Where and how to reach Redis.
public struct RedisConfiguration: Sendable {
    public var host: String
    public var port: Int
    /// ACL user (Redis 6+); `nil` with a password is the `default` user.
    public var username: String?
    public var password: String?
    public var database: Int
    /// Connections kept open; commands are spread over them and pipelined on each. Default 4.
    public var poolSize: Int
    /// The longest a command may take before it is an error and its connection is closed (its later answers
    /// could not be matched to their commands). Default 250 ms: a cache that is slow is a cache that misses.
    public var commandTimeout: Duration
    /// Default 1 s.
    public var connectTimeout: Duration
    /// After a connection fails, the wait before it is tried again; it doubles up to ``maxReconnectDelay``, and
    /// until then commands on it fail at once. Default 100 ms.
    public var reconnectDelay: Duration
    /// Default 5 s.
    public var maxReconnectDelay: Duration

    public init(
        host: String = "127.0.0.1",
        port: Int = 6379,
        username: String? = nil,
        password: String? = nil,
        database: Int = 0,
        poolSize: Int = 4,
        commandTimeout: Duration = .milliseconds(250),
        connectTimeout: Duration = .seconds(1),
        reconnectDelay: Duration = .milliseconds(100),
        maxReconnectDelay: Duration = .seconds(5)
    ) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
        self.poolSize = poolSize
        self.commandTimeout = commandTimeout
        self.connectTimeout = connectTimeout
        self.reconnectDelay = reconnectDelay
        self.maxReconnectDelay = maxReconnectDelay
    }

    /// Reads `redis://[user][:password]@host[:port][/db]` (`rediss://` is refused: this client speaks plain TCP,
    /// for a server on a private network or loopback).
    public init(url text: String) throws(RedisError) {
        guard let url = URLComponents(string: text), url.scheme == "redis", let host = url.host, !host.isEmpty else {
            throw RedisError(.configuration, "not a redis:// URL (redis://[user][:password]@host[:port][/db])")
        }
        self.init(host: host, port: url.port ?? 6379)
        if let user = url.percentEncodedUser?.removingPercentEncoding, !user.isEmpty { username = user }
        if let password = url.percentEncodedPassword?.removingPercentEncoding, !password.isEmpty { self.password = password }
        let path = url.path.trimmingCharacters(in: CharacterSet(charactersIn: "/"))
        if !path.isEmpty {
            guard let db = Int(path), (0...15).contains(db) else {
                throw RedisError(.configuration, "the database in the URL is not a number from 0 to 15")
            }
            database = db
        }
    }

    /// The URL with the password replaced by `***`, for logs and errors.
    public var redacted: String {
        let user = username ?? ""
        let credentials = password == nil ? (user.isEmpty ? "" : "\(user)@") : "\(user):***@"
        return "redis://\(credentials)\(host):\(port)/\(database)"
    }
}

/// A failure talking to Redis. Never carries the password.
public struct RedisError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable { case configuration, unavailable, timeout, connectionClosed, protocolError, server }
    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { "redis: \(message)" }
}

/// A Lua script run with `EVALSHA`, and with `EVAL` (which caches it again) when the server does not know it (a
/// restart, a `SCRIPT FLUSH`, another server behind the address).
public struct RedisScript: Sendable {
    public let source: String
    public let sha1: String

    public init(_ source: String) {
        self.source = source
        self.sha1 = Insecure.SHA1.hash(data: Data(source.utf8)).map { String(format: "%02x", $0) }.joined()
    }
}

/// A lock held in Redis (`SET key owner NX PX ttl`), with a fencing token: a number that grows with every lock
/// granted on the key, so that whatever the holder writes can be refused if a later holder has written since
/// (a holder paused past its time-to-live no longer holds the lock, and its token says so).
public struct RedisLock: Sendable, Hashable {
    public var key: String
    public var owner: String
    public var fence: Int64
}

/// A RESP3 client on SwiftNIO: a fixed pool of connections, each pipelining the commands given to it (answers
/// come back in order), with a deadline on every command, reconnection with backoff, `AUTH` and database
/// selection on every new connection (`HELLO 3 AUTH`, then `SELECT`), locks with fencing tokens, and scripts.
///
/// A connection that failed is not tried again before its backoff ends; until then its commands fail at once
/// with ``RedisError/Kind/unavailable``, so a caller that treats Redis as optional (a cache) never waits on one
/// that is down.
public final class RedisClient: Sendable {
    public let configuration: RedisConfiguration
    let group: any EventLoopGroup
    let logger: Logger
    let slots: [Slot]
    let next = Atomic<Int>(0)

    public init(
        configuration: RedisConfiguration,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "pargen.redis")
    ) {
        self.configuration = configuration
        self.group = eventLoopGroup
        self.logger = logger
        self.slots = (0..<max(1, configuration.poolSize)).map { _ in Slot() }
    }

    /// Closes every connection; later commands open them again.
    public func close() async {
        for slot in slots {
            if let channel = slot.state.withLock({ state -> (any Channel)? in
                defer { state.channel = nil }
                return state.channel
            }) {
                try? await channel.close()
            }
        }
    }

    // MARK: - Commands

    /// Sends one command and returns its answer; an error answer (`-ERR …`) is thrown as ``RedisError/Kind/server``.
    @discardableResult
    public func send(_ arguments: [String]) async throws(RedisError) -> RESPValue {
        try await pipeline([arguments])[0]
    }

    /// Sends commands together on one connection (one write) and returns their answers in order; error answers
    /// are returned as values, not thrown.
    public func pipeline(_ commands: [[String]]) async throws(RedisError) -> [RESPValue] {
        let slot = slots[Int(next.add(1, ordering: .relaxed).oldValue.magnitude % UInt(slots.count))]
        let channel = try await connection(slot)
        let answers: [RESPValue]
        do {
            answers = try await Self.exchange(commands, on: channel, within: configuration.commandTimeout)
        } catch let error as RedisError {
            failed(slot, channel, error)
            throw error
        } catch {
            let wrapped = RedisError(.connectionClosed, "connection lost: \(error)")
            failed(slot, channel, wrapped)
            throw wrapped
        }
        if commands.count == 1, let message = answers[0].error { throw RedisError(.server, message) }
        return answers
    }

    public func get(_ key: String) async throws(RedisError) -> String? { try await send(["GET", key]).string }

    /// `SET key value [PX ttl]`.
    public func set(_ key: String, _ value: String, ttl: Duration? = nil) async throws(RedisError) {
        var command = ["SET", key, value]
        if let ttl { command += ["PX", String(max(1, ttl.milliseconds))] }
        try await send(command)
    }

    public func delete(_ key: String) async throws(RedisError) { try await send(["DEL", key]) }

    /// Runs `script` by its SHA-1, and by its source if the server answers `NOSCRIPT`.
    ///
    /// The source goes with `EVAL`, which runs it whatever the script cache holds and caches it for the next
    /// `EVALSHA`. A `SCRIPT LOAD` followed by `EVALSHA` could meet another flush in between (a failover, or
    /// `SCRIPT FLUSH` from elsewhere: in CI a parallel test's flush made a lock fail with `NOSCRIPT`).
    public func evaluate(_ script: RedisScript, keys: [String], arguments: [String]) async throws(RedisError) -> RESPValue {
        let tail = [String(keys.count)] + keys + arguments
        do {
            return try await send(["EVALSHA", script.sha1] + tail)
        } catch where error.kind == .server && error.message.hasPrefix("NOSCRIPT") {
            return try await send(["EVAL", script.source] + tail)
        }
    }

    // MARK: - Locks

    static let acquireScript = RedisScript(
        """
        if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
          return redis.call('INCR', KEYS[2])
        end
        return -1
        """
    )
    static let releaseScript = RedisScript(
        """
        if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
        return 0
        """
    )

    /// Takes the lock `key` for `ttl` if no one holds it: the lock and its new fencing token (from the counter
    /// `key:fence`, in the same script, so tokens grow with every grant), or `nil` when another holds it.
    public func lock(_ key: String, ttl: Duration) async throws(RedisError) -> RedisLock? {
        let owner = UUID().uuidString
        let answer = try await evaluate(
            Self.acquireScript,
            keys: [key, key + ":fence"],
            arguments: [owner, String(max(1, ttl.milliseconds))]
        )
        guard case .integer(let fence) = answer, fence > 0 else { return nil }
        return RedisLock(key: key, owner: owner, fence: fence)
    }

    /// Gives the lock back if it is still this holder's (one whose time ran out and that another took is left
    /// alone). Returns whether it was.
    @discardableResult
    public func unlock(_ lock: RedisLock) async throws(RedisError) -> Bool {
        let answer = try await evaluate(Self.releaseScript, keys: [lock.key], arguments: [lock.owner])
        return answer == .integer(1)
    }

    // MARK: - Connections

    final class Slot: Sendable {
        struct State {
            var channel: (any Channel)?
            var connecting = false
            var downUntil: ContinuousClock.Instant?
            var delay: Duration?
        }
        let state = Mutex(State())
    }

    func connection(_ slot: Slot) async throws(RedisError) -> any Channel {
        enum Plan { case use(any Channel), connect, refuse(Duration) }
        let now = ContinuousClock.now
        let plan: Plan = slot.state.withLock { state in
            if let channel = state.channel, channel.isActive { return .use(channel) }
            state.channel = nil
            if let until = state.downUntil, until > now { return .refuse(until - now) }
            return .connect
        }
        switch plan {
        case .use(let channel): return channel
        case .refuse(let left):
            throw RedisError(.unavailable, "\(configuration.redacted) is unreachable; trying again in \(left.milliseconds) ms")
        case .connect: break
        }
        do {
            let channel = try await open()
            slot.state.withLock { state in
                state.channel = channel
                state.downUntil = nil
                state.delay = nil
            }
            return channel
        } catch {
            let delay = slot.state.withLock { state -> Duration in
                let delay = min(configuration.maxReconnectDelay, (state.delay.map { $0 * 2 }) ?? configuration.reconnectDelay)
                state.delay = delay
                state.downUntil = ContinuousClock.now + delay
                return delay
            }
            logger.debug("redis connection failed", metadata: ["redis": "\(configuration.redacted)", "error": "\(error)",
                "retry_ms": "\(delay.milliseconds)"])
            throw error
        }
    }

    /// Writes `commands` in one flush and waits for their answers, in order. Past `limit` every command still
    /// waiting on the connection fails and the connection closes: later answers could not be matched to their
    /// commands.
    static func exchange(_ commands: [[String]], on channel: any Channel, within limit: Duration) async throws
        -> [RESPValue]
    {
        let futures = try await channel.eventLoop.submit { () -> [EventLoopFuture<RESPValue>] in
            let promises = commands.map { _ in channel.eventLoop.makePromise(of: RESPValue.self) }
            for (command, promise) in zip(commands, promises) {
                // A connection that closed after it was picked cannot answer the command, and once its handlers
                // are gone its time-out goes nowhere: a write that fails (on a closed channel, at once) fails
                // the command.
                let written = channel.eventLoop.makePromise(of: Void.self)
                written.futureResult.whenFailure { error in
                    promise.fail(RedisError(.connectionClosed, "the command could not be sent: \(error)"))
                }
                channel.write(RESPCommand(bytes: RESP.command(command), promise: promise), promise: written)
            }
            channel.flush()
            return promises.map(\.futureResult)
        }.get()
        let timer = channel.eventLoop.scheduleTask(in: .nanoseconds(limit.nanoseconds)) {
            channel.pipeline.fireUserInboundEventTriggered(RESPHandler.TimedOut())
        }
        defer { timer.cancel() }
        var answers: [RESPValue] = []
        answers.reserveCapacity(futures.count)
        for future in futures { answers.append(try await future.get()) }
        return answers
    }

    func failed(_ slot: Slot, _ channel: any Channel, _ error: RedisError) {
        if error.kind == .server { return }
        slot.state.withLock { state in
            if state.channel === channel { state.channel = nil }
        }
        channel.close(promise: nil)
    }

    /// Connects, then says hello (RESP3, with the credentials) and selects the database, within the connect
    /// time-out.
    func open() async throws(RedisError) -> any Channel {
        let configuration = self.configuration
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(.nanoseconds(configuration.connectTimeout.nanoseconds))
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(RESPHandler())
                    }
                }
                .connect(host: configuration.host, port: configuration.port)
                .get()
        } catch {
            throw RedisError(.unavailable, "cannot connect to \(configuration.redacted): \(error)")
        }
        var hello = ["HELLO", "3"]
        if let password = configuration.password { hello += ["AUTH", configuration.username ?? "default", password] }
        let setup = configuration.database == 0 ? [hello] : [hello, ["SELECT", String(configuration.database)]]
        do {
            let answers = try await Self.exchange(setup, on: channel, within: configuration.connectTimeout)
            for (command, answer) in zip(setup, answers) {
                if let message = answer.error {
                    // The server's words, never the password (it is in the command, not the answer).
                    throw RedisError(.server, "\(command[0]) refused: \(message)")
                }
            }
        } catch let error as RedisError {
            try? await channel.close()
            throw error
        } catch {
            try? await channel.close()
            throw RedisError(.unavailable, "\(configuration.redacted) did not complete the hello: \(error)")
        }
        return channel
    }
}

/// A command on its way out, with the promise its answer fulfils.
struct RESPCommand: Sendable {
    var bytes: [UInt8]
    var promise: EventLoopPromise<RESPValue>
}

/// Writes commands and matches answers to them in order; RESP3 push messages are skipped. On a protocol error,
/// a time-out or a close, every waiting command fails and the connection closes.
final class RESPHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = RESPCommand
    typealias OutboundOut = ByteBuffer

    struct TimedOut {}

    var bytes: [UInt8] = []
    var start = 0
    var waiting = CircularBuffer<EventLoopPromise<RESPValue>>()

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let command = unwrapOutboundIn(data)
        // A write after the close fails its write promise, which fails the command (`exchange`).
        waiting.append(command.promise)
        context.write(wrapOutboundOut(context.channel.allocator.buffer(bytes: command.bytes)), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        bytes.append(contentsOf: buffer.readBytes(length: buffer.readableBytes) ?? [])
        while start < bytes.count {
            let parsed: (RESPValue, Int)?
            do {
                parsed = try RESP.parse(bytes, from: start)
            } catch {
                failAll(RedisError(.protocolError, "the server sent bytes that are not RESP: \(error)"))
                context.close(promise: nil)
                return
            }
            guard let (value, used) = parsed else { break }
            start += used
            if case .push = value { continue }
            guard let promise = waiting.popFirst() else {
                failAll(RedisError(.protocolError, "an answer came with no command waiting for it"))
                context.close(promise: nil)
                return
            }
            promise.succeed(value)
        }
        if start == bytes.count {
            bytes.removeAll(keepingCapacity: bytes.count < 1 << 20)
            start = 0
        } else if start > 1 << 16 {
            bytes.removeFirst(start)
            start = 0
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is TimedOut, !waiting.isEmpty {
            failAll(RedisError(.timeout, "no answer within the command time-out"))
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll(RedisError(.connectionClosed, "the connection closed"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        failAll(RedisError(.connectionClosed, "connection error: \(error)"))
        context.close(promise: nil)
    }

    func failAll(_ error: RedisError) {
        while let promise = waiting.popFirst() { promise.fail(error) }
    }
}

extension Duration {
    var milliseconds: Int64 {
        let parts = components
        return parts.seconds * 1000 + parts.attoseconds / 1_000_000_000_000_000
    }

    var nanoseconds: Int64 {
        let parts = components
        return parts.seconds * 1_000_000_000 + parts.attoseconds / 1_000_000_000
    }
}
