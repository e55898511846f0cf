// swift-tools-version: 6.2
// libFuzzer drivers for Pargen's fuzz targets (`FuzzTargets` in the PargenFuzzing library). Build and run them
// with `scripts/fuzz.sh TARGET [SECONDS]`: the whole graph is built with `-sanitize=fuzzer` and linked with lld.
import PackageDescription

let targets = ["Campaign", "Configuration", "Answers"]

let package = Package(
    name: "pargen-fuzz",
    platforms: [.macOS(.v15)],
    dependencies: [.package(name: "pargen", path: "..")],
    targets: targets.map { name in
        .executableTarget(
            name: "Fuzz\(name)",
            dependencies: [.product(name: "PargenFuzzing", package: "pargen")],
            path: "Sources/Fuzz\(name)"
        )
    }
)
