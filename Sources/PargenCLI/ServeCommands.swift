import ArgumentParser
import AsyncHTTPClient
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore
import Pargen
import PargenPostgres
import PargenProviders
import PargenRuntime
import PargenServer

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve the HTTP API: jobs, campaign uploads, live events, dead letters, budgets.",
        discussion: """
            Jobs run on the configured providers (the local ones without --config), in the SQLite store in --out \
            (or --store), which also keeps the API keys that `pargen keys create` makes, the idempotency keys and \
            the webhooks. With --postgres URL (or PARGEN_POSTGRES_URL, or postgres.url in --config) all of it is in \
            PostgreSQL, shared with other `pargen serve` and `pargen worker` processes. Every /v1 route takes \
            `Authorization: Bearer KEY`; the API is described at /openapi.yaml, the dashboard is at /.

            It listens on 127.0.0.1:8080 unless told otherwise. SIGTERM or Ctrl-C stops accepting connections, \
            lets requests in flight finish, ends event streams, then gives every lease back (a call about to go \
            out gets its attempt back; a submitted task keeps its id and is resumed by the next run, never paid \
            twice).

            --memory keeps jobs and keys in memory (trials, benchmarks): with --print-key TENANT/PROJECT it \
            makes an admin key at start and prints it.
            """
    )

    @OptionGroup var storeOptions: StoreOptions
    @OptionGroup var options: CampaignOptions

    @Option(help: "Address to listen on.")
    var host = "127.0.0.1"

    @Option(help: "Port to listen on (0 picks a free one; the line 'serving on' says which).")
    var port = 8080

    @Flag(help: "Keep jobs, API keys and idempotency keys in memory: all lost when the process ends.")
    var memory = false

    @Option(help: ArgumentHelp("Make an admin key for TENANT/PROJECT at start and print it (any store).", valueName: "tenant/project"))
    var printKey: String?

    @Option(help: "Requests per minute per API key (sliding window; default 6000).")
    var keyRateLimit: Int?

    @Flag(help: "No per-key or per-tenant request limits (load tests, trusted networks).")
    var noKeyLimits = false

    @Flag(help: "Accept and serve jobs without running them (an API node; workers run them: load tests of the API alone).")
    var noWork = false

    func run() async throws {
        TestHooks.exitWithParentIfAsked()
        let logger = options.bootstrapLogging()
        var setup = try await options.loadSetup()
        try options.apply(to: &setup.configuration)
        guard (0...65535).contains(port) else { throw ValidationError("--port must be from 0 to 65535") }
        let out = URL(fileURLWithPath: options.out ?? "pargen-out")
        let location: GenerationRuntime.StoreLocation
        if memory {
            location = .memory
        } else if let url = storeOptions.postgresURL(setup: setup) {
            // Shared with other servers and workers: jobs, keys, idempotency keys and webhooks in one schema.
            location = .postgres(url: url, schema: storeOptions.postgresSchema ?? setup.postgresSchema)
        } else {
            location = .sqlite(path: storeOptions.path(out: out))
        }
        let runtime = await openRuntime(
            setup: setup,
            store: location,
            options: options,
            injectFaults: options.faultsInjected(demo: false),
            out: out,
            logger: logger
        )
        let serviceStore: any ServiceStore
        switch location {
        case .memory:
            serviceStore = MemoryServiceStore()
        case .postgres:
            serviceStore = PostgresServiceStore(jobs: runtime.postgres!.store)
        case .sqlite(let path):
            do {
                serviceStore = try SQLiteServiceStore(path: path)
            } catch {
                await runtime.close()
                fail("cannot open the store \(path): \(reason(error))")
            }
        }
        if let printKey {
            let parts = printKey.split(separator: "/", maxSplits: 1).map(String.init)
            guard parts.count == 2 else {
                await runtime.close()
                throw ValidationError("--print-key takes TENANT/PROJECT, such as acme/social")
            }
            let (secret, record) = try APIKeys.make(tenant: parts[0], project: parts[1], admin: true)
            try await serviceStore.addKey(record)
            print("key: \(secret)")
        }
        let generator = runtime.generator
        if !noWork {
            do {
                try await runtime.start()
            } catch {
                await runtime.close()
                fail("\(error)")
            }
        }
        var configuration = ServerConfiguration()
        configuration.host = host
        configuration.port = port
        if let keyRateLimit {
            guard keyRateLimit > 0, keyRateLimit <= 10_000_000 else {
                throw ValidationError("--key-rate-limit must be from 1 to 10000000 requests a minute")
            }
            configuration.keyLimits.perUserRequestsPerMinute = keyRateLimit
        }
        if noKeyLimits { configuration.keyLimits.enabled = false }
        let server = PargenServer(generator: generator, serviceStore: serviceStore, configuration: configuration, logger: logger)
        let host = self.host
        let storeName = runtime.storeDescription
        // Set when the server ended by an error (it could not listen, or failed while serving), not a signal: the
        // command then exits 2 after the leases are given back, so a supervisor sees that it did not serve.
        var failure: String?
        let served = Locked(false)
        do {
            // The runtime runs before the server in one group and stops after it: the server stops accepting,
            // lets requests in flight finish and ends event streams; then the runtime gives every lease back.
            try await server.run(after: noWork ? [] : [runtime]) { port in
                served.withLock { $0 = true }
                print("pargen: serving on http://\(host):\(port) (store \(storeName)); SIGTERM or Ctrl-C stops it")
                fflush(nil)
            }
        } catch let error as IOError where error.errnoCode == EADDRINUSE || error.errnoCode == EACCES {
            failure = "cannot listen on \(host):\(port): \(String(cString: strerror(error.errnoCode)))"
        } catch {
            failure = "the server stopped: \(error)"
        }
        if let failure { FileHandle.standardError.write(Data("pargen: \(failure)\n".utf8)) }
        print(
            served.withLock { $0 }
                ? "pargen: no longer accepting requests; the leases are given back"
                : "pargen: did not serve; the leases are given back"
        )
        fflush(nil)
        // The runtime stopped the engine when the group shut down; a group cut short by its grace period may not
        // have let it finish (idempotent).
        try await runtime.stop()
        let counts = try? await runtime.store.counts()
        await runtime.close()
        if let counts {
            print(
                "pargen: stopped; jobs in the store: "
                    + JobState.allCases.map { "\($0.rawValue) \(counts[$0, default: 0])" }.joined(separator: ", ")
            )
        }
        if let halt = generator.haltReason { fail("stopped taking work: \(halt)") }
        if failure != nil { Foundation.exit(2) }
    }
}

struct Keys: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make and list the service's API keys.",
        subcommands: [KeysCreate.self, KeysList.self]
    )
}

struct KeysCreate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Make an API key for a tenant's project and print it, once.",
        discussion: """
            The key is printed on standard output and never again: the store keeps only its SHA-256. A key sees \
            only its tenant's jobs, and creates jobs in its project; --admin lets it act on every project of its \
            tenant, set budgets and purge dead letters.
            """
    )

    @Option(help: "The tenant (letters, digits, '.', '_', '-').")
    var tenant: String

    @Option(help: "The project the key creates jobs in.")
    var project: String

    @Flag(help: "Every project of the tenant, budgets and purges.")
    var admin = false

    @Option(help: "The folder whose store `pargen serve --out` uses.")
    var out: String?

    @OptionGroup var storeOptions: StoreOptions

    func run() async throws {
        let made: (secret: String, record: APIKeyRecord)
        do {
            made = try APIKeys.make(tenant: tenant, project: project, admin: admin)
        } catch {
            throw ValidationError("\(error)")
        }
        let (serviceStore, name, close) = try await openServiceStore(storeOptions, out: out)
        defer { close() }
        do {
            try await serviceStore.addKey(made.record)
        } catch {
            fail("cannot store the key in \(name): \(reason(error))")
        }
        print(made.secret)
        FileHandle.standardError.write(
            Data(
                "pargen: key \(made.record.id) for tenant \(tenant), project \(project)\(admin ? " (admin)" : ""); it is shown only this once\n"
                    .utf8
            )
        )
    }
}

struct KeysList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List the API keys (their ids, never their secrets)."
    )

    @Option(help: "Only this tenant's keys.")
    var tenant: String?

    @Option(help: "The folder whose store `pargen serve --out` uses.")
    var out: String?

    @OptionGroup var storeOptions: StoreOptions

    func run() async throws {
        if storeOptions.postgresURL() == nil {
            let path = storeOptions.path(out: URL(fileURLWithPath: out ?? "pargen-out"))
            guard FileManager.default.fileExists(atPath: path) else { fail("no store at \(path)") }
        }
        let (serviceStore, name, close) = try await openServiceStore(storeOptions, out: out)
        defer { close() }
        let keys: [APIKeyRecord]
        do {
            keys = try await serviceStore.keys(tenant: tenant)
        } catch {
            fail("cannot read the keys in \(name): \(reason(error))")
        }
        let formatter = ISO8601DateFormatter()
        for key in keys {
            print("\(key.id)\t\(key.tenant)\t\(key.project)\t\(key.admin ? "admin" : "-")\t\(formatter.string(from: key.createdAt))")
        }
    }
}

/// The service's records: in PostgreSQL when a URL is given (option, environment), else in the SQLite store of
/// --out. Returns the store, its name for messages, and what closes it.
func openServiceStore(_ options: StoreOptions, out: String?) async throws -> (any ServiceStore, String, @Sendable () -> Void) {
    if let url = options.postgresURL() {
        let shared = await openSharedStore(url: url, schema: options.postgresSchema)
        return (PostgresServiceStore(jobs: shared.store), shared.location.redacted, { shared.close() })
    }
    let path = options.path(out: URL(fileURLWithPath: out ?? "pargen-out"))
    do {
        try FileManager.default.createDirectory(
            at: URL(fileURLWithPath: path).deletingLastPathComponent(),
            withIntermediateDirectories: true
        )
        return (try SQLiteServiceStore(path: path), path, {})
    } catch {
        fail("cannot open the store \(path): \(reason(error))")
    }
}
