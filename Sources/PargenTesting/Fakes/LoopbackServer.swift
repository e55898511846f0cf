import Hummingbird
import Logging

/// Runs a Hummingbird responder on 127.0.0.1 for at most `lifetime`, for the fakes and scripted servers: returns
/// the bound port once it accepts connections, and the task that runs it (cancel it to stop the server).
enum LoopbackServer {
    static func start<Responder: HTTPResponder>(
        _ responder: Responder,
        port: Int,
        serverName: String,
        lifetime: Duration,
        logger: Logger,
        onBound: @escaping @Sendable (Int) -> Void = { _ in }
    ) async throws -> (port: Int, task: Task<Void, any Error>) where Responder.Context == BasicRequestContext {
        let (ready, readyContinuation) = AsyncStream<Int>.makeStream()
        let app = Application(
            responder: responder,
            configuration: .init(address: .hostname("127.0.0.1", port: port), serverName: serverName),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? 0
                onBound(port)
                readyContinuation.yield(port)
                readyContinuation.finish()
            },
            logger: logger
        )
        let task = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await app.run() }
                group.addTask { try await Task.sleep(for: lifetime) }
                _ = try await group.next()
                group.cancelAll()
            }
        }
        var iterator = ready.makeAsyncIterator()
        guard let bound = await iterator.next() else {
            task.cancel()
            throw CancellationError()
        }
        return (bound, task)
    }
}
