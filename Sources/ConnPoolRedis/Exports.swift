// The TLS types of the shared socket layer, re-exported so that `import ConnPoolRedis` is enough to
// configure TLS (`RedisConnectionConfiguration.tls`) and to match its errors (`RedisError.tls`).
@_exported public import struct ConnPoolIO.TLSConfiguration
@_exported public import enum ConnPoolIO.TLSError
// The I/O reactor, to run request-handling tasks on its thread (`Task(executorPreference: IOReactor.shared)`):
// their Redis waits then resume in place, without a hand-off to another thread.
@_exported public import class ConnPoolIO.IOReactor
