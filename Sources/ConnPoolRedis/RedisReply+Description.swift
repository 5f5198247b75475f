/// Readable replies, for debugging and test failures.
///
/// Unlike ``RedisReply/kindDescription`` (what errors use), these show the reply's *content*: do not log
/// them where values may be secret.
extension RedisReply: CustomStringConvertible, CustomDebugStringConvertible {
    /// A compact one-line form: a bulk string that is valid UTF-8 as quoted, escaped text (`"req-0"`),
    /// binary bytes as hex (`<3 bytes: 00 ff 10>`, the first 32 bytes then `…` for longer ones), a status
    /// as its bare text (`OK`), an error as `error("…")`, an integer as its digits, nil as `nil`, and an
    /// array as `[…]` of its elements' forms, nested.
    public var description: String {
        switch self {
        case .status(let status): return status
        case .error(let message): return "error(\(message.debugDescription))"
        case .integer(let value): return String(value)
        case .bulkString(let bytes): return Self.bulkText(bytes)
        case .null: return "nil"
        case .array(let elements): return "[" + elements.map(\.description).joined(separator: ", ") + "]"
        }
    }

    /// The form of ``description`` with each reply's kind spelled out, as Swift source:
    /// `.array([.bulkString("req-0"), .integer(1), .null, .status("OK")])`.
    public var debugDescription: String {
        switch self {
        case .status(let status): return ".status(\(status.debugDescription))"
        case .error(let message): return ".error(\(message.debugDescription))"
        case .integer(let value): return ".integer(\(value))"
        case .bulkString(let bytes): return ".bulkString(\(Self.bulkText(bytes)))"
        case .null: return ".null"
        case .array(let elements): return ".array([" + elements.map(\.debugDescription).joined(separator: ", ") + "])"
        }
    }

    private static let hexDigits = Array("0123456789abcdef")
    private static let shownBinaryBytes = 32

    /// Quoted, escaped text for valid UTF-8; else the size and hex bytes.
    private static func bulkText(_ bytes: [UInt8]) -> String {
        if let text = String(validating: bytes, as: UTF8.self) { return text.debugDescription }
        let hex = bytes.prefix(shownBinaryBytes).map { String([hexDigits[Int($0 >> 4)], hexDigits[Int($0 & 0xF)]]) }
        let more = bytes.count > shownBinaryBytes ? " …" : ""
        return "<\(bytes.count) bytes: \(hex.joined(separator: " "))\(more)>"
    }
}
