// The TLS types of the shared socket layer, re-exported so that `import ConnPoolTCP` is enough to
// configure TLS (`TCPConnectionConfiguration.tls`) and to match its errors (`TCPConnectionError.tls`).
@_exported public import struct ConnPoolIO.TLSConfiguration
@_exported public import enum ConnPoolIO.TLSError
// The I/O reactor, to run request-handling tasks on its thread (`Task(executorPreference: IOReactor.shared)`).
@_exported public import class ConnPoolIO.IOReactor
