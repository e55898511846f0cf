import Foundation
public import Logging
public import PostgresNIO

/// Where a PostgreSQL server is, read from a `postgres://user:password@host:port/database` URL.
///
/// The password is kept out of every description: ``redacted`` shows the URL with `***` in its place, for logs
/// and error messages.
public struct PostgresLocation: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var username: String
    public var password: String?
    public var database: String?
    /// `sslmode=disable` (the default on a loopback host) or `require`.
    public var requireTLS: Bool

    /// Reads a `postgres://` or `postgresql://` URL.
    ///
    /// - Throws: ``PostgresLocation/Invalid`` naming what is wrong (never repeating the password).
    public init(url text: String) throws(Invalid) {
        guard let components = URLComponents(string: text) else { throw Invalid("it is not a URL") }
        guard let scheme = components.scheme?.lowercased(), scheme == "postgres" || scheme == "postgresql" else {
            throw Invalid("its scheme must be postgres:// or postgresql://")
        }
        guard let host = components.host, !host.isEmpty else { throw Invalid("it names no host") }
        self.host = host
        if let port = components.port {
            guard (1...65535).contains(port) else { throw Invalid("its port must be 1 to 65535") }
            self.port = port
        } else {
            port = 5432
        }
        username = components.user.flatMap { $0.removingPercentEncoding ?? $0 } ?? "postgres"
        password = components.password.flatMap { $0.removingPercentEncoding ?? $0 }
        let path = components.path.drop(while: { $0 == "/" })
        database = path.isEmpty ? nil : String(path)
        let mode = components.queryItems?.first(where: { $0.name == "sslmode" })?.value ?? "disable"
        switch mode {
        case "disable", "allow", "prefer": requireTLS = false
        case "require", "verify-ca", "verify-full": requireTLS = true
        default: throw Invalid("its sslmode \(mode) is not one of disable, prefer, require, verify-full")
        }
    }

    /// The URL with the password replaced by `***`.
    public var redacted: String {
        let credentials = password == nil ? username : "\(username):***"
        return "postgres://\(credentials)@\(host):\(port)/\(database ?? "")"
    }

    public var description: String { redacted }

    /// A client configuration for this location.
    public func clientConfiguration(maximumConnections: Int = 20) -> PostgresClient.Configuration {
        var configuration = PostgresClient.Configuration(
            host: host,
            port: port,
            username: username,
            password: password,
            database: database,
            tls: requireTLS ? .require(.makeClientConfiguration()) : .disable
        )
        configuration.options.maximumConnections = maximumConnections
        configuration.options.connectTimeout = .seconds(5)
        // A transaction left open by a client that went away mid-way (its row locks would hold every other
        // worker's claims) is ended by the server.
        configuration.options.additionalStartupParameters = [("idle_in_transaction_session_timeout", "30000")]
        return configuration
    }

    /// Why one connection to the server could not be made, and whether trying again can help.
    public struct Refusal: Error, Sendable, CustomStringConvertible {
        /// The server's own words and SQLSTATE, or the transport's (never the password).
        public var reason: String
        /// The server refused who we are or what we asked for (SQLSTATE class 28, authorization; 3D000, no such
        /// database): the same URL will be refused again. A refused or timed-out connection, or a server that is
        /// starting, shutting down or full, is not permanent.
        public var permanent: Bool
        public var description: String { reason }
    }

    /// Makes one connection and closes it: `nil` when the server took it, else why not. What a pool only logs
    /// (it tries again for ever), this says, so that a command can end at once on a permanent refusal and name the
    /// last reason when the server never answers.
    public func probe(logger: Logger, timeout: Duration = .seconds(5)) async -> Refusal? {
        do {
            let tls: PostgresConnection.Configuration.TLS =
                requireTLS ? .require(try NIOSSLContext(configuration: .makeClientConfiguration())) : .disable
            var configuration = PostgresConnection.Configuration(
                host: host,
                port: port,
                username: username,
                password: password,
                database: database,
                tls: tls
            )
            configuration.options.connectTimeout = .init(timeout)
            let connection = try await PostgresConnection.connect(configuration: configuration, id: 0, logger: logger)
            try? await connection.close()
            return nil
        } catch let error as PSQLError {
            if let message = error.serverInfo?[.message] {
                let state = error.serverInfo?[.sqlState] ?? ""
                return Refusal(
                    reason: "server: \(message)" + (state.isEmpty ? "" : " (\(state))"),
                    permanent: state.hasPrefix("28") || state == "3D000"
                )
            }
            let cause = error.underlying.map { String(describing: $0) } ?? "\(error.code)"
            return Refusal(reason: String(cause.prefix(300)), permanent: false)
        } catch {
            return Refusal(reason: String(String(describing: error).prefix(300)), permanent: false)
        }
    }

    /// Why a PostgreSQL URL was refused.
    public struct Invalid: Error, Sendable, CustomStringConvertible {
        public var reason: String
        init(_ reason: String) { self.reason = reason }
        public var description: String { "the PostgreSQL URL is not usable: \(reason)" }
    }
}
