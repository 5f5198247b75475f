/// Which commands change a Redis connection's session state, told apart without allocating from the
/// bytes of a command's first arguments (case-insensitive), so a pooled ``RedisConnection`` knows
/// whether its next borrower would inherit anything from this one.
///
/// Hand-written byte comparisons, not `String`s: this runs for every command sent, on the hot path,
/// which must not allocate. A command that changes nothing (`GET`, `SET`, `PING`, …) is told apart by
/// its length and first letter.
enum SessionTracking {
    /// What a command does to the session state.
    enum Effect: UInt8 {
        /// Nothing a later borrower could notice.
        case none
        /// `MULTI`: a transaction is open until `EXEC` or `DISCARD`.
        case opensTransaction
        /// `EXEC`, `DISCARD`: ends the transaction and forgets watched keys.
        case endsTransaction
        /// `WATCH`.
        case watches
        /// `UNWATCH`.
        case unwatches
        /// `SELECT`: another database.
        case selectsDatabase
        /// `CLIENT SETNAME`.
        case namesClient
        /// `AUTH`, `HELLO`, `RESET`, `READONLY`, `READWRITE`, `ASKING`, `CLIENT TRACKING|CACHING|NO-EVICT|NO-TOUCH|SETINFO`:
        /// state that only `RESET` undoes.
        case changesOtherState
        /// `SUBSCRIBE`, `PSUBSCRIBE`, `SSUBSCRIBE`, `MONITOR`, `QUIT`: the connection cannot serve
        /// ordinary commands any more; it is closed when returned.
        case leavesUnresettable
        /// `CLIENT REPLY OFF|SKIP`: the server would stop answering, so replies could no longer be
        /// matched to commands. Refused before anything is sent.
        case refused
        /// `HELLO 3`: RESP3, which hiredis 0.14 cannot parse (its replies would break the connection).
        /// Refused before anything is sent.
        case refusedResp3
    }

    /// The message of the ``RedisError/invalidCommand(_:)`` thrown for a refused command, nil for one
    /// that is not refused.
    static func refusal(_ effect: Effect) -> String? {
        switch effect {
        case .refused: return refusedMessage
        case .refusedResp3:
            return "HELLO 3 is not supported: this connection speaks RESP2 (hiredis 0.14 cannot parse RESP3 replies); "
                + "use HELLO 2, or HELLO without a protocol version"
        default: return nil
        }
    }

    /// The message of the ``RedisError/invalidCommand(_:)`` thrown for a refused command.
    static let refusedMessage =
        "CLIENT REPLY OFF and CLIENT REPLY SKIP are not supported: the server would not answer the commands that "
        + "follow, so their replies could no longer be matched to them (the connection would hang or desynchronize); "
        + "send the commands as one pipeline instead"

    /// The effect of the command whose arguments are in `scratch` (at least one).
    static func effect(of scratch: borrowing ArgvScratch) -> Effect {
        let name = scratch.argument(0)
        switch name.count {
        case 4:
            switch upper(name[0]) {
            case UInt8(ascii: "A") where matches(name, "AUTH"): return .changesOtherState
            case UInt8(ascii: "E") where matches(name, "EXEC"): return .endsTransaction
            case UInt8(ascii: "Q") where matches(name, "QUIT"): return .leavesUnresettable
            default: return .none
            }
        case 5:
            switch upper(name[0]) {
            case UInt8(ascii: "M") where matches(name, "MULTI"): return .opensTransaction
            case UInt8(ascii: "W") where matches(name, "WATCH"): return .watches
            case UInt8(ascii: "H") where matches(name, "HELLO"):
                if scratch.argumentCount < 2 { return .changesOtherState }
                return matches(scratch.argument(1), "2") ? .changesOtherState : .refusedResp3
            case UInt8(ascii: "R") where matches(name, "RESET"): return .changesOtherState
            default: return .none
            }
        case 6:
            switch upper(name[0]) {
            case UInt8(ascii: "S") where matches(name, "SELECT"): return .selectsDatabase
            case UInt8(ascii: "A") where matches(name, "ASKING"): return .changesOtherState
            case UInt8(ascii: "C") where matches(name, "CLIENT"): return clientEffect(scratch)
            default: return .none
            }
        case 7:
            switch upper(name[0]) {
            case UInt8(ascii: "D") where matches(name, "DISCARD"): return .endsTransaction
            case UInt8(ascii: "U") where matches(name, "UNWATCH"): return .unwatches
            case UInt8(ascii: "M") where matches(name, "MONITOR"): return .leavesUnresettable
            default: return .none
            }
        case 8:
            return matches(name, "READONLY") ? .changesOtherState : .none
        case 9:
            switch upper(name[0]) {
            case UInt8(ascii: "S") where matches(name, "SUBSCRIBE"): return .leavesUnresettable
            case UInt8(ascii: "R") where matches(name, "READWRITE"): return .changesOtherState
            default: return .none
            }
        case 10:
            return matches(name, "PSUBSCRIBE") || matches(name, "SSUBSCRIBE") ? .leavesUnresettable : .none
        default:
            return .none
        }
    }

    /// The effect of a `CLIENT` subcommand.
    private static func clientEffect(_ scratch: borrowing ArgvScratch) -> Effect {
        guard scratch.argumentCount >= 2 else { return .none }
        let subcommand = scratch.argument(1)
        if matches(subcommand, "SETNAME") { return .namesClient }
        if matches(subcommand, "REPLY") {
            guard scratch.argumentCount >= 3 else { return .none }
            let mode = scratch.argument(2)
            return matches(mode, "OFF") || matches(mode, "SKIP") ? .refused : .none
        }
        for stateful: StaticString in ["TRACKING", "CACHING", "NO-EVICT", "NO-TOUCH", "SETINFO"]
        where matches(subcommand, stateful) {
            return .changesOtherState
        }
        return .none
    }

    private static func upper(_ byte: UInt8) -> UInt8 {
        byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z") ? byte &- 32 : byte
    }

    /// Whether `bytes` spell `word` (upper-case ASCII), ignoring case.
    private static func matches(_ bytes: UnsafeRawBufferPointer, _ word: StaticString) -> Bool {
        guard bytes.count == word.utf8CodeUnitCount else { return false }
        let letters = word.utf8Start
        for index in 0..<bytes.count where upper(bytes[index]) != letters[index] { return false }
        return true
    }
}
