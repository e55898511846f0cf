// swift-tools-version: 6.1
import PackageDescription

// Benchmarks live in their own package so the main package's users never build them.
// Run: swift run -c release --package-path Benchmarks pargen-bench
let package = Package(
    name: "pargen-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "pargen", path: "../"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.0"),
    ],
    targets: [
        .executableTarget(
            name: "PargenBench",
            dependencies: [
                .product(name: "Pargen", package: "pargen"),
                .product(name: "PargenTesting", package: "pargen"),
                .product(name: "PargenSQLite", package: "pargen"),
                .product(name: "PargenPostgres", package: "pargen"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "PargenProviders", package: "pargen"),
                .product(name: "PargenCacheTiers", package: "pargen"),
                .product(name: "PargenRedis", package: "pargen"),
                .product(name: "PargenS3", package: "pargen"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ],
            path: "Sources/PargenBench"
        )
    ]
)
