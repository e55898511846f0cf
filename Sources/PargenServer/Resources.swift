import Foundation
import Pargen

/// How the API shows the store's records: snake_case JSON, money as decimal dollar strings (exact), durations in
/// seconds, and projects and campaigns in the tenant's own names.
enum Resources {
    static func money(_ amount: Money) -> JSONValue { .string(amount.decimalString) }

    static func seconds(_ duration: Duration) -> JSONValue { .number((duration.seconds * 1000).rounded() / 1000) }

    static func optional(_ value: String?) -> JSONValue { value.map(JSONValue.string) ?? .null }

    static func ledger(_ ledger: CostLedger) -> JSONValue {
        .object([
            "reserved": money(ledger.reserved), "charged": money(ledger.charged),
            "released": money(ledger.released), "pending": money(ledger.pending),
        ])
    }

    static func error(_ error: GenerationError) -> JSONValue {
        var object: [String: JSONValue] = ["code": .string(error.code.description), "message": .string(error.message)]
        if let provider = error.provider { object["provider"] = .string(provider) }
        if let field = error.field { object["field"] = .string(field) }
        if let code = error.providerCode { object["provider_code"] = .string(code) }
        return .object(object)
    }

    /// A job; `wallClock` says whether the store's times are wall-clock times (durable stores) to show as dates.
    static func job(_ record: JobRecord, principal: Principal, wallClock: Bool) -> JSONValue {
        let request = record.request
        var object: [String: JSONValue] = [
            "object": .string("job"),
            "id": .string(record.id.rawValue),
            "request_id": .string(request.id),
            "state": .string(record.state.rawValue),
            "kind": .string(request.kind.rawValue),
            "prompt": .string(request.prompt),
            "priority": .string(request.priority.description),
            "duration_seconds": seconds(request.duration),
            "format": optional(request.format?.name),
            "resolution": optional(request.resolution?.description),
            "voice": optional(request.voice),
            "model": optional(request.model),
            "provider": optional(record.provider ?? request.provider),
            "user": .string(request.user),
            "project": .string(principal.local(request.project) ?? request.project),
            "campaign": .string(principal.local(request.campaign) ?? request.campaign),
            "idempotency_key": optional(request.idempotencyKey),
            "metadata": .object(request.metadata),
            "attempts": .number(Double(record.attempts)),
            "errors": .array(record.errors.map(error)),
            "cost": ledger(record.ledger),
        ]
        if wallClock {
            object["created_at"] = .string(date(record.enqueuedAt))
            object["finished_at"] = record.finishedAt.map { .string(date($0)) } ?? .null
        }
        if let outcome = record.outcome {
            object["artifact"] = .object([
                "url": .string("/v1/jobs/\(record.id.rawValue)/artifact"),
                "content_type": .string(outcome.artifact.contentType),
                "format": .string(outcome.artifact.format.name),
                "bytes": .number(Double(outcome.artifact.byteCount)),
                "sha256": .string(outcome.artifact.sha256),
                "duration_seconds": seconds(outcome.artifact.duration),
                "provider": .string(outcome.provider),
                "served_from_cache": .bool(outcome.servedFromCache),
                "deduplicated": .bool(outcome.deduplicated),
                "public_url": outcome.artifact.publicURL.map { .string($0.absoluteString) } ?? .null,
                "saved": outcome.saved.map(money) ?? .null,
            ])
        } else {
            object["artifact"] = .null
        }
        return .object(object)
    }

    /// ISO 8601 with milliseconds; a value-type style, so nothing is made per call.
    static let dateStyle = Date.ISO8601FormatStyle(includingFractionalSeconds: true)

    static func date(_ sinceEpoch: Duration) -> String {
        Date(timeIntervalSince1970: sinceEpoch.seconds).formatted(dateStyle)
    }
}
