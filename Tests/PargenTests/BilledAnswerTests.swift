import Foundation
import Pargen
import PargenProviders
import PargenTesting
import Testing

/// A synchronous speech answer that the provider billed and that was then cut short (issue 9, item 7): the
/// ledger charges every answer billed, so spend and budgets stay true, and buying the line again is a
/// configured, visible choice (`retry.payAgainForLostAnswers`).
@Suite(.timeLimit(.minutes(2))) struct BilledAnswerTests {
    let http = sharedTestHTTPClient

    /// Speech lines of equal length (so of equal price) and distinct prompts (so none is de-duplicated).
    func lines(_ count: Int) -> [GenerationRequest] {
        (1...count).map { .audio(prompt: String(format: "speech line %02d", $0), duration: .seconds(2)) }
    }

    func run(
        payAgain: Bool,
        count: Int = 12
    ) async throws -> (results: [GenerationResult], accepted: Int, price: Money, ledger: CostLedger, stats: SystemStats)
    {
        // Seeded: about a third of the answers are cut short after half their bytes. The answers take no drawn
        // time, so the truncations are the only draws and fall on the same answers in every run (with a drawn
        // latency, the order in which concurrent calls drew decided which draws were truncations, and 0.65^12 of
        // the runs, about 1 in 175, truncated none).
        let bench = try await FakeBench.start(
            .openai,
            options: {
                $0.truncateRate = 0.35
                $0.latencySeconds = 0...0
            },
            http: http
        )
        var configuration = fakeTestConfiguration()
        configuration.retry.payAgainForLostAnswers = payAgain
        let store = MemoryJobStore(clock: .continuous)
        let generator = ParallelGenerator(
            configuration: configuration,
            providers: [bench.provider],
            store: store,
            outputDirectory: temporaryDirectory(),
            clock: .continuous
        )
        try await generator.start()
        let results = try await generator.generate(lines(count))
        let stats = await generator.systemStats()
        try await generator.stop()
        let accepted = bench.fake.state.submissions().filter { $0.accepted && $0.endpoint == "audio/speech" }.count
        let price = bench.provider.descriptor.pricing.estimate(validated(lines(1)[0]))
        let ledger = try await store.ledgerTotals()
        await bench.fake.stop()
        return (results, accepted, price, ledger, stats)
    }

    /// A synchronous call whose answer the provider had made and billed when an immediate stop (Ctrl-C, SIGTERM,
    /// a full disk halting the run) cut it off: the charge stays in the ledger and the line's history, and the
    /// next run buys the line under a new key. Given back as if never sent, it went out again under the same key,
    /// which a provider without idempotency (OpenAI's speech) bills again with no record of the first.
    @Test func aStopThatCutsOffABilledAnswerKeepsItsChargeAndTheNextCallUsesANewKey() async throws {
        let store = MemoryJobStore(clock: .continuous)
        /// An engine on the shared store, as one run of the campaign.
        func engine(_ provider: any GenerationProvider) -> ParallelGenerator {
            ParallelGenerator(
                configuration: PargenConfiguration(rateLimits: .unlimited),
                providers: [provider],
                store: store,
                outputDirectory: temporaryDirectory(),
                clock: .continuous
            )
        }
        let first = AnswersThenHangs(name: "p")
        let generator = engine(first)
        try await generator.start()
        let ids = try await generator.submit([.audio(prompt: "answered, then cut off by a stop")])
        while first.keys.value.isEmpty { try await Task.sleep(for: .milliseconds(5)) }
        // The stop cancels the job's task; the call, shielded until it ends, then fails after its answer was billed.
        let stopping = Task { try await generator.stop(immediately: true) }
        try await Task.sleep(for: .milliseconds(100))
        first.failNow()
        try await stopping.value
        let price = first.descriptor.pricing.estimate(validated(.audio(prompt: "answered, then cut off by a stop")))
        let stopped = try #require(try await store.job(ids[0]))
        #expect(stopped.state == .available, "\(stopped.state)")
        #expect(stopped.ledger.charged == price, "charged \(stopped.ledger.charged) for an answer billed at \(price)")
        #expect(stopped.ledger.balances)
        #expect(stopped.errors.compactMap(\.charged) == [price], "\(stopped.errors)")

        let second = ScriptedProvider(name: "p")
        let again = engine(second)
        try await again.start()
        let result = await again.result(for: ids[0])
        try await again.stop()
        #expect(result.succeeded, "\(String(describing: result.error))")
        #expect(second.calls.count == 1)
        #expect(second.calls.map(\.idempotencyKey).allSatisfy { !first.keys.value.contains($0) },
            "bought again under \(second.calls.map(\.idempotencyKey)) after \(first.keys.value)")
        let finished = try #require(try await store.job(ids[0]))
        #expect(finished.ledger.charged == price * 2 && finished.ledger.balances)
    }

    @Test func everyBilledAnswerIsChargedAndARetryOfALostOneIsChargedAgain() async throws {
        let (results, accepted, price, ledger, stats) = try await run(payAgain: true)
        #expect(results.allSatisfy { $0.succeeded }, "\(results.compactMap(\.error))")
        // The fake billed every answer it sent, whole or cut short.
        #expect(accepted > 12, "the seed must cut at least one answer short")
        #expect(ledger.charged == price * Int64(accepted), "ledger \(ledger.charged), billed \(price * Int64(accepted))")
        #expect(ledger.balances && ledger.pending == .zero)
        #expect(stats.costMonitor.charged == ledger.charged)
        #expect(results.reduce(Money.zero) { $0 + $1.actualCost } == ledger.charged)
        let lost = try #require(stats.providers["openai"])
        #expect(lost.billedAnswersLost == accepted - 12)
        #expect(lost.billedAnswersLostCost == price * Int64(accepted - 12))
        // Each lost answer is in its line's history with what it was charged.
        let charges = results.flatMap(\.errorHistory).compactMap(\.charged)
        #expect(charges.count == accepted - 12 && charges.allSatisfy { $0 == price })
    }

    @Test func withPayingAgainOffALostAnswerIsDeadLetteredWithItsChargeAndNeverBoughtTwice() async throws {
        let (results, accepted, price, ledger, _) = try await run(payAgain: false)
        // One answer per line, whole or not: nothing is bought twice.
        #expect(accepted == 12)
        #expect(ledger.charged == price * 12)
        let failed = results.filter { !$0.succeeded }
        #expect(!failed.isEmpty, "the seed must cut at least one answer short")
        for result in failed {
            let error = try #require(result.error)
            #expect(error.charged == price)
            #expect(error.message.contains("retry.payAgainForLostAnswers is off"), "\(error)")
            #expect(result.actualCost == price)
        }
    }

    /// A synchronous call that was sent and whose answer never came (the client's time-out) may have been made and
    /// billed, and ElevenLabs has no key to ask it by: it is charged, and not bought again when paying again is
    /// off. (A loaded CI run once had ElevenLabs accept a line twice this way, with nothing charged for the first.)
    @Test(arguments: [false, true])
    func aSentCallThatTimesOutCountsAsBilled(payAgain: Bool) async throws {
        let bench = try await FakeBench.start(
            .elevenlabs,
            options: { $0.latencySeconds = 0.01...0.02 },
            // Long enough that a loaded machine answers the other line (and the retry) in time; the hung call
            // waits it out once.
            requestTimeout: .seconds(8),
            http: http
        )
        var configuration = fakeTestConfiguration()
        configuration.retry.payAgainForLostAnswers = payAgain
        configuration.retry.baseDelay = .milliseconds(10)
        let store = MemoryJobStore(clock: .continuous)
        let generator = ParallelGenerator(
            configuration: configuration,
            providers: [bench.provider],
            store: store,
            outputDirectory: temporaryDirectory(),
            clock: .continuous
        )
        try await generator.start()
        let requests: [GenerationRequest] = [
            .audio(prompt: "an answer that never comes [[hang]]", duration: .seconds(2)),
            .audio(prompt: "an answer that comes at once", duration: .seconds(2)),
        ]
        let results = try await generator.generate(requests)
        try await generator.stop()
        let price = bench.provider.descriptor.pricing.estimate(validated(requests[0]))
        let accepted = bench.fake.state.submissions().filter(\.accepted).map(\.prompt)
        let ledger = try await store.ledgerTotals()
        await bench.fake.stop()
        #expect(results[1].succeeded)
        #expect(ledger.balances && ledger.pending == .zero)
        if payAgain {
            #expect(results[0].succeeded, "\(results[0].error?.description ?? "")")
            #expect(accepted.filter { $0 == requests[0].prompt }.count == 2, "bought again, as configured")
            #expect(results[0].errorHistory.first?.charged == price)
            #expect(results[0].actualCost == price * 2)
        } else {
            let error = try #require(results[0].error)
            #expect(accepted.filter { $0 == requests[0].prompt }.count == 1, "never bought twice: \(accepted)")
            #expect(error.charged == price && error.providerCode == "timeout", "\(error)")
            #expect(error.message.contains("retry.payAgainForLostAnswers is off"), "\(error)")
            #expect(results[0].actualCost == price)
        }
        // Whatever the choice, the ledger holds every call that may have been billed.
        let prices = Dictionary(uniqueKeysWithValues: requests.map {
            ($0.prompt, bench.provider.descriptor.pricing.estimate(validated($0)))
        })
        #expect(ledger.charged == accepted.reduce(Money.zero) { $0 + prices[$1]! })
    }
}

/// A speech provider that answers (and bills) every call, whose answer is then lost (the connection drops before
/// the body is whole) when the test says so.
private final class AnswersThenHangs: GenerationProvider, Sendable {
    let descriptor: ProviderDescriptor
    /// The idempotency key of every call.
    let keys = Locked<[String]>([])
    private let lost = Locked(false)

    init(name: String) {
        descriptor = ScriptedProvider(name: name, kinds: [.audio]).descriptor
    }

    /// Ends every call under way (and every later one) with its answer lost.
    func failNow() { lost.withLock { $0 = true } }

    func generate(_ request: ValidatedRequest, context: ProviderCallContext) async throws -> ProviderOutput {
        keys.withLock { $0.append(context.idempotencyKey) }
        context.reportBilled()
        while !lost.value { try await Task.sleep(for: .milliseconds(5)) }
        throw GenerationError(.transient, "the connection closed before the answer was whole")
    }
}
