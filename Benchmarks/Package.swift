// swift-tools-version: 6.1
import PackageDescription

// Benchmarks live in their own package so the main package's users never build them.
// Run: swift run -c release --package-path Benchmarks pargen-bench
let package = Package(
    name: "pargen-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [.package(name: "pargen", path: "../")],
    targets: [
        .executableTarget(
            name: "PargenBench",
            dependencies: [
                .product(name: "Pargen", package: "pargen"),
                .product(name: "PargenTesting", package: "pargen"),
                .product(name: "PargenSQLite", package: "pargen"),
            ],
            path: "Sources/PargenBench"
        )
    ]
)
