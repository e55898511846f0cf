import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Pargen
import PargenTesting

// Two measurements for the README and the issue notes, each against a baseline run in this same process:
//
// 1. Pipeline throughput with an instant provider and every limit lifted: jobs/s through ParallelGenerator
//    (validation, store, batching, single-flight, balancer, budgets, limiter, resource pool, artifact
//    commit with SHA-256, completion) against the same provider called directly from a task group at the
//    same concurrency, writing and hashing the same files (the floor any pipeline pays).
// 2. Memory for 100,000 queued jobs: resident-set growth after submitting them to a generator that is not
//    running, against the growth for just holding the same 100,000 requests in an array.

/// Resident memory after handing freed heap memory back to the system (`malloc_trim`), so that what is
/// measured is what is still held, not garbage left by temporary arrays.
func residentBytes() -> Int {
    // glibc's malloc_trim, looked up at run time (malloc.h is not in the Glibc module).
    if let symbol = dlsym(dlopen(nil, RTLD_NOW), "malloc_trim") {
        _ = unsafeBitCast(symbol, to: (@convention(c) (Int) -> Int32).self)(0)
    }
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let fields = text.split(separator: " ")
    return (Int(fields[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE)))
}

func requests(_ count: Int, prefix: String) -> [GenerationRequest] {
    (0..<count).map { i in
        .audio(
            prompt: "\(prefix) line \(i) of the campaign",
            duration: .seconds(1),
            user: "user\(i % 50)",
            project: "p\(i % 5)"
        )
    }
}

let arguments = CommandLine.arguments
if arguments.count > 1 && arguments[1] == "quota" {
    let window = arguments.count > 2 ? Double(arguments[2]) ?? 60 : 60
    let only = arguments.count > 3 && arguments[3] != "all" ? arguments[3] : nil
    let clean = try await QuotaBench.run(
        window: window,
        only: only,
        equalTasks: arguments.count > 4 && arguments[4] == "equal"
    )
    exit(clean ? 0 : 1)
}
if arguments.count > 1 && arguments[1] == "matrix" {
    let lines = arguments.count > 2 ? Int(arguments[2]) ?? 100_000 : 100_000
    exit(try MatrixBench.run(lines: lines) ? 0 : 1)
}
if arguments.count > 1 && arguments[1] == "workers" {
    guard arguments.count > 2 else {
        print("usage: PargenBench workers POSTGRES_URL [jobs=5000]")
        exit(2)
    }
    let jobs = arguments.count > 3 ? Int(arguments[3]) ?? 5_000 : 5_000
    try await WorkersBench.run(url: arguments[2], jobs: jobs)
    exit(0)
}
if arguments.count > 1 && arguments[1] == "cache" {
    guard arguments.count > 3 else {
        print("usage: PargenBench cache REDIS_URL S3_ENDPOINT [lines=1000]")
        exit(2)
    }
    let lines = arguments.count > 4 ? Int(arguments[4]) ?? 1_000 : 1_000
    try await CacheBench.run(redisURL: arguments[2], s3Endpoint: arguments[3], lines: lines)
    exit(0)
}
if arguments.count > 1 && arguments[1] == "store-grouped" {
    // The durable lifecycle with 100 jobs in flight only (for a profiler: `perf record` around this).
    let jobs = arguments.count > 2 ? Int(arguments[2]) ?? 20_000 : 20_000
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("pargen-store-bench-\(getpid())")
    defer { try? FileManager.default.removeItem(at: scratch) }
    try await StoreBench.runGrouped(jobs: jobs, scratch: scratch)
    exit(0)
}
if arguments.count > 1 && arguments[1] == "store-budgets" {
    let jobs = arguments.count > 2 ? Int(arguments[2]) ?? 20_000 : 20_000
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("pargen-store-bench-\(getpid())")
    defer { try? FileManager.default.removeItem(at: scratch) }
    try await StoreBench.runBudgets(jobs: jobs, scratch: scratch, postgres: arguments.count > 3 ? arguments[3] : nil)
    exit(0)
}
if arguments.count > 1 && arguments[1] == "store" {
    let jobs = arguments.count > 2 ? Int(arguments[2]) ?? 20_000 : 20_000
    let campaign = arguments.count > 3 ? Int(arguments[3]) ?? 100_000 : 100_000
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("pargen-store-bench-\(getpid())")
    defer { try? FileManager.default.removeItem(at: scratch) }
    try await StoreBench.run(jobs: jobs, campaign: campaign, scratch: scratch)
    exit(0)
}
let jobs = arguments.count > 1 ? Int(arguments[1]) ?? 20_000 : 20_000
let queued = arguments.count > 2 ? Int(arguments[2]) ?? 100_000 : 100_000
let concurrency = 50
let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("pargen-bench-\(getpid())")
defer { try? FileManager.default.removeItem(at: scratch) }

// MARK: Throughput

var configuration = PargenConfiguration(
    rateLimits: .unlimited,
    batching: .init(pacingJitter: .zero),
    resources: .init(
        maxAPICalls: 10_000,
        maxConcurrentJobs: concurrency,
        maxMemoryMB: 1 << 30,
        maxStorageGB: 1 << 20,
        minimumFraction: 1
    ),
    caching: .init(enabled: false)
)
configuration.retry.maxAttempts = 1
let instant = ScriptedProvider(name: "instant", quota: ProviderQuota(concurrentTasks: 10_000)) { _, _ in
    .succeed(latency: .zero)
}

// Baseline: the provider called directly, then the file checked, hashed and renamed, `concurrency` at a time.
let baselineDirectory = scratch.appendingPathComponent("baseline")
try FileManager.default.createDirectory(at: baselineDirectory, withIntermediateDirectories: true)
let validator = RequestValidator()
let baselineRequests = try requests(jobs, prefix: "baseline").enumerated().map {
    try validator.validate($1, fallbackID: "b\($0)")
}
let baselineStart = ContinuousClock.now
try await withThrowingTaskGroup(of: Void.self) { group in
    var iterator = baselineRequests.enumerated().makeIterator()
    func addNext() {
        guard let (index, request) = iterator.next() else { return }
        group.addTask {
            let staging = baselineDirectory.appendingPathComponent("\(index).part")
            let context = ProviderCallContext(
                destination: staging,
                clock: .continuous,
                attempt: 1,
                idempotencyKey: "b\(index)",
                logger: .init(label: "bench")
            )
            _ = try await instant.generate(request, context: context)
            _ = try ArtifactStore.sha256(of: staging)
            try FileManager.default.moveItem(at: staging, to: baselineDirectory.appendingPathComponent("\(index).wav"))
        }
    }
    for _ in 0..<concurrency { addNext() }
    while try await group.next() != nil { addNext() }
}
let baselineSeconds = (ContinuousClock.now - baselineStart).seconds

let generator = ParallelGenerator(
    configuration: configuration,
    providers: [instant],
    outputDirectory: scratch.appendingPathComponent("engine")
)
try await generator.start()
let engineStart = ContinuousClock.now
let results = try await generator.generate(requests(jobs, prefix: "engine"))
let engineSeconds = (ContinuousClock.now - engineStart).seconds
try await generator.stop()
let failures = results.filter { !$0.succeeded }.count
precondition(failures == 0, "\(failures) jobs failed")

let engineRate = Double(jobs) / engineSeconds
let baselineRate = Double(jobs) / baselineSeconds
print("throughput: \(jobs) jobs, instant provider, limits lifted, \(concurrency) concurrent")
print(String(format: "  pipeline  %8.0f jobs/s  (%.2f s)", engineRate, engineSeconds))
print(
    String(
        format: "  baseline  %8.0f jobs/s  (%.2f s)  direct provider call + hash + rename",
        baselineRate,
        baselineSeconds
    )
)
print(String(format: "  ratio     %8.2f  (pipeline / baseline)", engineRate / baselineRate))

// MARK: Memory for queued jobs

let before = residentBytes()
let held = requests(queued, prefix: "held")
let afterArray = residentBytes()
let idle = ParallelGenerator(
    configuration: .init(),
    providers: [instant],
    outputDirectory: scratch.appendingPathComponent("idle")
)
let ids = try await idle.submit(requests(queued, prefix: "queued"))
let afterQueue = residentBytes()
precondition(ids.count == queued && held.count == queued)
let arrayBytes = Double(afterArray - before)
let queueBytes = Double(afterQueue - afterArray)
print("memory: \(queued) queued jobs (generator not running)")
print(String(format: "  queued    %8.1f MB  (%.0f bytes/job)", queueBytes / 1e6, queueBytes / Double(queued)))
print(
    String(
        format: "  baseline  %8.1f MB  (%.0f bytes/request) just holding the requests in an array",
        arrayBytes / 1e6,
        arrayBytes / Double(queued)
    )
)
print(String(format: "  ratio     %8.2f  (queued / baseline)", queueBytes / max(1, arrayBytes)))
