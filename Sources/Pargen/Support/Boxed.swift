/// Keeps a large, rarely set optional value on the heap, so that the struct holding it stays small where many
/// are kept (a queued job's record has no outcome until it finishes): eight bytes and no allocation while the
/// value is `nil`. Copy on write; encodes as the optional value itself (left out when `nil`).
@propertyWrapper
public struct Boxed<Wrapped: Sendable & Hashable & Codable>: Sendable, Hashable, Codable {
    private final class Box: Sendable {
        let value: Wrapped
        init(_ value: Wrapped) { self.value = value }
    }

    private var box: Box?

    public init(wrappedValue: Wrapped?) { box = wrappedValue.map(Box.init) }

    public var wrappedValue: Wrapped? {
        get { box?.value }
        set { box = newValue.map(Box.init) }
    }

    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.wrappedValue == rhs.wrappedValue }
    public func hash(into hasher: inout Hasher) { hasher.combine(wrappedValue) }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        box = container.decodeNil() ? nil : Box(try container.decode(Wrapped.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        if let value = box?.value { try container.encode(value) } else { try container.encodeNil() }
    }
}

// Left out when nil, and missing means nil, as for a plain optional property.
extension KeyedDecodingContainer {
    public func decode<Wrapped>(_ type: Boxed<Wrapped>.Type, forKey key: Key) throws -> Boxed<Wrapped> {
        Boxed(wrappedValue: try decodeIfPresent(Wrapped.self, forKey: key))
    }
}

extension KeyedEncodingContainer {
    public mutating func encode<Wrapped>(_ value: Boxed<Wrapped>, forKey key: Key) throws {
        try encodeIfPresent(value.wrappedValue, forKey: key)
    }
}
