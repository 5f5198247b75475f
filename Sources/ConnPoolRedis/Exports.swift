// The TLS types of the shared socket layer, re-exported so that `import ConnPoolRedis` is enough to
// configure TLS (`RedisConnectionConfiguration.tls`) and to match its errors (`RedisError.tls`).
@_exported public import struct ConnPoolIO.TLSConfiguration
@_exported public import enum ConnPoolIO.TLSError
