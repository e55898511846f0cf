/// Why a ``GenerationRuntime`` could not be opened or stopped: one line per problem, each naming what it is about
/// (a file, a configuration key, a server without its password), never a secret.
public struct RuntimeError: Error, Sendable, CustomStringConvertible {
    /// What went wrong, as a closed set a caller can branch on (a command maps each to its exit status).
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String { case configuration, outputFolder, store, storeBusy, stopTimedOut }
        private let base: Base

        /// The configuration is incomplete: a provider's key, a credential variable or a URL is missing or bad.
        public static let configuration = Code(base: .configuration)
        /// The output folder cannot be created or written.
        public static let outputFolder = Code(base: .outputFolder)
        /// The job store cannot be opened (a bad file, a database that cannot be reached in time).
        public static let store = Code(base: .store)
        /// Another process holds the SQLite store (one running campaign per store).
        public static let storeBusy = Code(base: .storeBusy)
        /// The engine did not stop within the runtime's stop deadline.
        public static let stopTimedOut = Code(base: .stopTimedOut)

        public var description: String { base.rawValue }
    }

    public var code: Code
    /// One line per problem.
    public var problems: [String]

    public init(_ code: Code, _ problems: [String]) {
        self.code = code
        self.problems = problems
    }

    public init(_ code: Code, _ problem: String) {
        self.init(code, [problem])
    }

    public var description: String { problems.joined(separator: "; ") }
}

#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Pargen

extension RuntimeError {
    /// A short reason for a file-system or store error: the operating system's words where there are some, never
    /// a dump of the error object.
    public static func reason(_ error: any Error) -> String {
        if let store = error as? StoreError { return store.underlying.map(reason) ?? store.message }
        let ns = error as NSError
        if let underlying = (ns.userInfo[NSUnderlyingErrorKey] as? any Error).map({ $0 as NSError }),
            underlying.domain == NSPOSIXErrorDomain
        {
            return String(cString: strerror(Int32(underlying.code)))
        }
        if ns.domain == NSPOSIXErrorDomain { return String(cString: strerror(Int32(ns.code))) }
        let text = "\(error)"
        return text.count > 200 ? String(text.prefix(200)) + "..." : text
    }
}
