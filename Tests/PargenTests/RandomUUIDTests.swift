import Foundation
import Pargen
import Testing

/// Lease tokens and other per-call identifiers drawn without Foundation's `/dev/urandom` read.
@Suite struct RandomUUIDTests {
    @Test func randomUUIDsAreVersionFourOfTheRFCVariantAndDistinct() {
        var seen: Set<UUID> = []
        for _ in 0..<1000 {
            let id = UUID.random()
            let bytes = id.uuid
            #expect(bytes.6 >> 4 == 4)
            #expect(bytes.8 >> 6 == 0b10)
            seen.insert(id)
        }
        #expect(seen.count == 1000)
    }
}
