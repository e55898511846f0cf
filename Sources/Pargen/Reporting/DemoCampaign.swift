import Foundation

/// The demo campaign: mixed audio and video from several users and projects, with a few exact duplicates
/// (served by de-duplication or the cache) and two deliberately bad lines (reported, not fatal).
public enum DemoCampaign {
    /// The campaign as JSONL text, `count` lines long (at least 10), the same for the same seed.
    public static func jsonl(count: Int = 100, seed: UInt64 = 7) -> String {
        var rng = SplitMix64(seed: seed)
        func pick<T>(_ items: [T]) -> T { items[Int(rng.next() % UInt64(items.count))] }
        let users = ["ana", "ben", "chen", "dara", "eli"]
        let projects = ["launch", "podcasts", "social"]
        let voiceLines = [
            "Welcome to the spring sale, where every day brings something new",
            "Thanks for listening, and see you next week",
            "Relaxing ambient sound for meditation",
            "Your order is on its way",
            "Breaking news from the world of science",
            "Take a deep breath and let the day go",
            "New arrivals are here for the whole family",
            "Chapter one: the lighthouse keeper",
        ]
        let scenes = [
            "Nature scene with birds flying", "City lights at night", "Waves rolling onto a quiet beach",
            "Product spin on a white table", "Mountains at sunrise", "Coffee being poured in slow motion",
        ]
        var lines: [String] = []
        func quote(_ text: String) -> String { "\"" + text.replacingOccurrences(of: "\"", with: "\\\"") + "\"" }
        let body = max(10, count) - 2
        var emitted: [String] = []
        for index in 0..<body {
            // Every 25th line repeats an earlier one exactly: de-duplicated or served from the cache.
            if index % 25 == 24, let earlier = emitted.randomElement(using: &rng) {
                lines.append(earlier)
                emitted.append(earlier)
                continue
            }
            let user = pick(users)
            let project = pick(projects)
            let priority = pick(["low", "normal", "normal", "normal", "high", "urgent"])
            var fields: [String]
            if index % 3 == 2 {
                let resolution = pick(["360p", "480p", "480p", "720p"])
                fields = [
                    "\"type\": \"video\"", "\"prompt\": \(quote("\(pick(scenes)), take \(index)"))",
                    "\"duration\": \(2 + rng.next() % 4)", "\"resolution\": \"\(resolution)\"",
                ]
            } else {
                fields = [
                    "\"type\": \"audio\"", "\"prompt\": \(quote("\(pick(voiceLines)) (\(index))"))",
                    "\"duration\": \(3 + rng.next() % 8)", "\"voice\": \"\(pick(["alloy", "nova", "sage"]))\"",
                ]
                if index % 10 == 0 { fields.append("\"provider\": \"local-studio\"") }
            }
            fields += [
                "\"priority\": \"\(priority)\"", "\"user\": \"\(user)\"", "\"project\": \"\(project)\"",
                "\"metadata\": {\"demo\": true, \"index\": \(index)}",
            ]
            let line = "{" + fields.joined(separator: ", ") + "}"
            lines.append(line)
            emitted.append(line)
        }
        lines.insert(
            "{\"type\": \"hologram\", \"prompt\": \"A talking statue\", \"user\": \"ben\"}",
            at: min(lines.count, 17)
        )
        lines.insert(
            "{\"type\": \"video\", \"prompt\": \"An epic\", \"duration\": 9999, \"user\": \"eli\"}",
            at: min(lines.count, 61)
        )
        return lines.joined(separator: "\n") + "\n"
    }

    /// The demo's configuration: the default limits, except a burst of 12 per project per second with a
    /// 2 s cooldown so that rate-limit waits show in a short run, and a $2 budget on the `social` project so
    /// that budget alerts and holds show.
    public static var configuration: PargenConfiguration {
        PargenConfiguration(
            rateLimits: .init(maxBurst: 12, burstCooldown: .seconds(2)),
            budgets: .init(perProject: ["social": .dollars(2)])
        )
    }
}
