public import Foundation
public import Logging

/// Where a ``ParallelGenerator`` keeps its jobs, chosen at the call site:
///
/// ```swift
/// let embedded = try ParallelGenerator(store: .memory)
/// let durable = try ParallelGenerator(store: .sqlite(path: "campaign.sqlite"))   // import PargenSQLite
/// ```
///
/// The store is made on the generator's clock when the generator is made. Each backend module adds its own
/// (`.sqlite(path:)` in PargenSQLite); ``store(_:)`` takes a store made by hand.
public struct JobStoreBackend: Sendable {
    let make: @Sendable (PargenClock) throws -> any JobStore

    /// A backend that makes its store on the generator's clock.
    public init(_ make: @escaping @Sendable (PargenClock) throws -> any JobStore) { self.make = make }

    /// The in-process store (``MemoryJobStore``): jobs live as long as the process.
    public static var memory: Self { Self { MemoryJobStore(clock: $0) } }

    /// A store already made.
    public static func store(_ store: any JobStore) -> Self { Self { _ in store } }
}

extension ParallelGenerator {
    /// A generator whose store is made by `backend` (`.memory`, `.sqlite(path:)`, or `.store(_:)`).
    ///
    /// - Throws: What the backend throws when it cannot open its store.
    public convenience init(
        configuration: Configuration = .init(),
        providers: [any GenerationProvider] = LocalProvider.demoProviders(),
        store backend: JobStoreBackend,
        cache: (any GenerationCache)? = nil,
        outputDirectory: URL = FileManager.default.temporaryDirectory.appendingPathComponent("pargen-output"),
        clock: PargenClock = .continuous,
        logger: Logger = Logger(label: "pargen", factory: { _ in SwiftLogNoOpLogHandler() }),
        hooks: EngineHooks = EngineHooks()
    ) throws {
        self.init(
            configuration: configuration,
            providers: providers,
            store: try backend.make(clock),
            cache: cache,
            outputDirectory: outputDirectory,
            clock: clock,
            logger: logger,
            hooks: hooks
        )
    }
}
