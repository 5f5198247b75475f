/// Redis Cluster's key-to-slot mapping: `CRC16(key) mod 16384` (CRC-16/XMODEM: polynomial 0x1021,
/// initial value 0, as in the Redis Cluster specification), where only the *hash tag* is hashed when the
/// key has one: the bytes between the first `{` and the first `}` after it, when there is at least one
/// byte between them (`{user:1}:name` and `{user:1}:mail` share a slot; `{}x` hashes whole).
public enum ClusterSlot {
    /// The number of hash slots of a Redis Cluster: 16,384.
    public static let count = 16_384

    /// The slot of `key` (its UTF-8 bytes).
    public static func slot(forKey key: String) -> UInt16 {
        var key = key
        return key.withUTF8 { slot(forKeyBytes: UnsafeRawBufferPointer($0)) }
    }

    /// The slot of a binary key.
    public static func slot(forKey key: [UInt8]) -> UInt16 {
        key.withUnsafeBytes { slot(forKeyBytes: $0) }
    }

    /// The slot of the key whose bytes are `key`: the hash tag's CRC16 when there is a non-empty tag,
    /// else the whole key's, modulo 16,384.
    public static func slot(forKeyBytes key: UnsafeRawBufferPointer) -> UInt16 {
        if let open = key.firstIndex(of: UInt8(ascii: "{")),
            let close = key[(open + 1)...].firstIndex(of: UInt8(ascii: "}")),
            close > open + 1
        {
            return crc16(UnsafeRawBufferPointer(rebasing: key[(open + 1)..<close])) & 0x3FFF
        }
        return crc16(key) & 0x3FFF
    }

    /// CRC-16/XMODEM of `bytes` (the check value of `"123456789"` is `0x31C3`).
    public static func crc16(_ bytes: UnsafeRawBufferPointer) -> UInt16 {
        var crc: UInt16 = 0
        for byte in bytes {
            crc = (crc << 8) ^ table[Int(UInt8(truncatingIfNeeded: crc >> 8) ^ byte)]
        }
        return crc
    }

    /// The byte-wise table of CRC-16/XMODEM, computed once.
    private static let table: [UInt16] = (0..<256).map { index in
        var crc = UInt16(index) << 8
        for _ in 0..<8 {
            crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1
        }
        return crc
    }
}
