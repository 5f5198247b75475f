import COpenSSL
import ConnPool
import Glibc
public import Logging

/// One OpenSSL `SSL_CTX` made from a ``TLSConfiguration``: the trusted roots, the client certificate and
/// the version range, loaded once, and the TLS sessions of the servers it connected to, so that the next
/// connection to the same server resumes a session (an abbreviated handshake) instead of a full one.
///
/// A connection factory makes one context and shares it among the connections of its pool. Thread-safe:
/// OpenSSL allows one `SSL_CTX` to be used by many connections on many threads once it is set up; the
/// session cache is guarded by a lock.
public final class TLSContext: @unchecked Sendable, CustomReflectable {
    // @unchecked Sendable: `context` is configured in init and only read afterwards (OpenSSL's SSL_CTX is
    // safe to share between threads once set up, and SSL_new takes its own reference); `sessions` is a
    // LockedValue, and the SSL_SESSION pointers in it are only used (SSL_set_session takes its own
    // reference) or freed while that lock is held; `configuration` is an immutable value.

    /// The configuration this context was made from.
    public let configuration: TLSConfiguration
    let context: OpaquePointer
    /// The newest resumable session per server address (`SSL_SESSION *`, one reference each).
    private let sessions = LockedValue<[String: OpaquePointer]>([:])

    /// The `SSL_CTX` extra-data slot that points back at the owning ``TLSContext`` (for the new-session
    /// callback).
    private static let contextIndex: Int32 = {
        OPENSSL_init_ssl(0, nil)
        return connpool_SSL_CTX_get_ex_new_index()
    }()

    /// Loads the configuration's roots and client certificate into a new OpenSSL context.
    ///
    /// - Parameter logger: where the warning goes when ``TLSConfiguration/certificateVerification`` is
    ///   not full.
    /// - Throws: ``TLSError/invalidConfiguration(field:reason:)`` when a file cannot be read, a PEM text
    ///   holds no certificate, the key does not match the certificate or cannot be decrypted.
    public init(configuration: TLSConfiguration, logger: Logger = Logger(label: "ConnPoolIO.TLS")) throws(TLSError) {
        try configuration.validate()
        let index = Self.contextIndex
        guard let context = SSL_CTX_new(TLS_client_method()) else {
            throw .invalidConfiguration(field: "TLS", reason: "SSL_CTX_new failed: \(TLSErrorQueue.drain())")
        }
        self.context = context
        self.configuration = configuration
        // Fully initialized: if this throws, deinit frees the context.
        try Self.configure(context, configuration)
        if configuration.sessionResumption {
            SSL_CTX_set_ex_data(context, index, Unmanaged.passUnretained(self).toOpaque())
            _ = connpool_SSL_CTX_set_session_cache_mode(
                context, Int(SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE))
            SSL_CTX_sess_set_new_cb(context, TLSContext.newSessionCallback)
        }
        switch configuration.certificateVerification {
        case .fullVerification: break
        case .noHostnameVerification:
            logger.warning("TLS host name verification is turned off: a certificate issued for any name is accepted")
        case .none:
            logger.warning(
                "TLS certificate verification is turned off: the server is not authenticated and anyone in the path can read and change the traffic")
        }
    }

    deinit {
        // SSL objects made from this context hold a reference to it (TLSSession keeps the TLSContext
        // alive), so no callback can run any more.
        sessions.withLock { sessions in
            for session in sessions.values { SSL_SESSION_free(session) }
            sessions.removeAll()
        }
        SSL_CTX_free(context)
    }

    /// Reflection shows the (redacted) configuration only.
    public var customMirror: Mirror { Mirror(self, children: ["configuration": configuration]) }

    /// How many servers have a session stored for resumption (for tests).
    package var storedSessionCount: Int { sessions.withLock { $0.count } }

    // MARK: - Sessions

    /// Offers the stored session for `server` (if any) to `ssl`.
    func offerSession(to ssl: OpaquePointer, server: String) {
        guard configuration.sessionResumption else { return }
        sessions.withLock { sessions in
            if let session = sessions[server] { SSL_set_session(ssl, session) }
        }
    }

    /// Stores a new session (OpenSSL's new-session callback: after a full handshake, or when a TLS 1.3
    /// server sends a ticket after it). Takes over the reference OpenSSL passes.
    fileprivate func store(_ session: OpaquePointer, server: String) {
        let previous = sessions.withLock { sessions in
            let previous = sessions[server]
            sessions[server] = session
            return previous
        }
        if let previous { SSL_SESSION_free(previous) }
    }

    private static let newSessionCallback: @convention(c) (OpaquePointer?, OpaquePointer?) -> Int32 = { ssl, session in
        guard let ssl, let session, SSL_SESSION_is_resumable(session) == 1,
            let raw = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), TLSContext.contextIndex)
        else { return 0 }
        let owner = Unmanaged<TLSContext>.fromOpaque(raw).takeUnretainedValue()
        guard let server = peerAddress(SSL_get_fd(ssl)) else { return 0 }
        owner.store(session, server: server)
        return 1  // we keep the reference
    }

    /// The peer's address of a connected socket (`getpeername`), the key of the session cache.
    static func peerAddress(_ fd: Int32) -> String? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let status = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &length) }
        }
        guard status == 0 else { return nil }
        return SocketAddress(storage: storage, length: length, family: Int32(storage.ss_family)).description
    }

    // MARK: - Loading the configuration

    /// The `SSL` extra-data slot set when the server asked for a client certificate and none was
    /// configured (see ``TLSSession/serverAskedForMissingCertificate``).
    static let missingCertificateIndex: Int32 = {
        OPENSSL_init_ssl(0, nil)
        return connpool_SSL_get_ex_new_index()
    }()

    /// OpenSSL calls this when the server asks for a client certificate and the connection has none:
    /// it records that (a server that then refuses the connection did so for the missing certificate)
    /// and goes on without one.
    private static let clientCertificateCallback: @convention(c) (
        OpaquePointer?, UnsafeMutablePointer<OpaquePointer?>?, UnsafeMutablePointer<OpaquePointer?>?
    ) -> Int32 = { ssl, _, _ in
        if let ssl { SSL_set_ex_data(ssl, TLSContext.missingCertificateIndex, UnsafeMutableRawPointer(bitPattern: 1)) }
        return 0
    }

    private static func configure(_ context: OpaquePointer, _ configuration: TLSConfiguration) throws(TLSError) {
        SSL_CTX_set_client_cert_cb(context, clientCertificateCallback)
        _ = connpool_SSL_CTX_set_min_proto_version(context, Int32(configuration.minimumVersion.rawValue))
        _ = connpool_SSL_CTX_set_max_proto_version(context, Int32(configuration.maximumVersion.rawValue))
        // Partial writes and a moving write buffer: the transport writes straight out of its output
        // buffer and retries with what is left.
        _ = connpool_SSL_CTX_set_mode(
            context, Int(SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER))
        SSL_CTX_set_verify(
            context, configuration.certificateVerification == .none ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, nil)

        switch configuration.trustRoots {
        case .system:
            if SSL_CTX_set_default_verify_paths(context) != 1 {
                throw .invalidConfiguration(field: "trustRoots", reason: "the system roots could not be loaded: \(TLSErrorQueue.drain())")
            }
        case .certificateFile(let path):
            try checkReadable(path, field: "trustRoots")
            if SSL_CTX_load_verify_locations(context, path, nil) != 1 {
                throw .invalidConfiguration(
                    field: "trustRoots", reason: "no CA certificate could be loaded from \(path): \(TLSErrorQueue.drain())")
            }
        case .certificatePEM(let text):
            let certificates = try readCertificates(.pem(text), field: "trustRoots")
            let store = SSL_CTX_get_cert_store(context)
            for certificate in certificates {
                X509_STORE_add_cert(store, certificate)
                X509_free(certificate)
            }
        }

        if let client = configuration.clientCertificate {
            let certificates = try readCertificates(client.certificate, field: "clientCertificate.certificate")
            defer { certificates.forEach { X509_free($0) } }
            if SSL_CTX_use_certificate(context, certificates[0]) != 1 {
                throw .invalidConfiguration(
                    field: "clientCertificate.certificate", reason: "OpenSSL refused it: \(TLSErrorQueue.drain())")
            }
            for intermediate in certificates.dropFirst() {
                _ = connpool_SSL_CTX_add1_chain_cert(context, intermediate)
            }
            let key = try readPrivateKey(client.privateKey, passphrase: client.passphrase)
            defer { EVP_PKEY_free(key) }
            if SSL_CTX_use_PrivateKey(context, key) != 1 || SSL_CTX_check_private_key(context) != 1 {
                TLSErrorQueue.clear()
                throw .invalidConfiguration(
                    field: "clientCertificate.privateKey", reason: "the private key does not belong to the client certificate")
            }
        }
    }

    private static func checkReadable(_ path: String, field: String) throws(TLSError) {
        if access(path, R_OK) != 0 {
            throw .invalidConfiguration(field: field, reason: "cannot read \(path): \(describeErrno(errno))")
        }
    }

    /// The PEM text of a source (a file's contents, read here).
    private static func pemText(_ source: TLSConfiguration.PEMSource, field: String) throws(TLSError) -> [UInt8] {
        switch source {
        case .pem(let text):
            return Array(text.utf8)
        case .file(let path):
            try checkReadable(path, field: field)
            guard let file = fopen(path, "rb") else {
                throw .invalidConfiguration(field: field, reason: "cannot open \(path): \(describeErrno(errno))")
            }
            defer { fclose(file) }
            var bytes = [UInt8]()
            var chunk = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = fread(&chunk, 1, chunk.count, file)
                if count <= 0 { break }
                bytes += chunk[0..<count]
            }
            return bytes
        }
    }

    /// Every certificate in a PEM source (`X509 *`, one reference each); at least one.
    private static func readCertificates(_ source: TLSConfiguration.PEMSource, field: String) throws(TLSError) -> [OpaquePointer] {
        let text = try pemText(source, field: field)
        var certificates = [OpaquePointer]()
        text.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return }
            defer { BIO_free(bio) }
            while let certificate = PEM_read_bio_X509(bio, nil, nil, nil) {
                certificates.append(certificate)
            }
        }
        TLSErrorQueue.clear()  // the read that ended the loop left "no start line"
        if certificates.isEmpty {
            throw .invalidConfiguration(field: field, reason: "\(source) holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
        }
        return certificates
    }

    /// The private key of a PEM source, decrypted with `passphrase`. Never asks on a terminal (OpenSSL's
    /// default when a key is encrypted and no passphrase is given).
    private static func readPrivateKey(
        _ source: TLSConfiguration.PEMSource, passphrase: String?
    ) throws(TLSError) -> OpaquePointer {
        let field = "clientCertificate.privateKey"
        let text = try pemText(source, field: field)
        var passphraseBytes: [CChar]? = passphrase.map { Array($0.utf8CString) }
        defer {
            // Wipe the copy of the passphrase.
            if passphraseBytes != nil {
                passphraseBytes!.withUnsafeMutableBufferPointer { buffer in
                    for index in buffer.indices { buffer[index] = 0 }
                }
            }
        }
        let key: OpaquePointer? = text.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            if passphraseBytes == nil {
                return PEM_read_bio_PrivateKey(bio, nil, noPassphraseCallback, nil)
            }
            return passphraseBytes!.withUnsafeMutableBufferPointer { buffer in
                PEM_read_bio_PrivateKey(bio, nil, passphraseCallback, UnsafeMutableRawPointer(buffer.baseAddress))
            }
        }
        guard let key else {
            let detail = TLSErrorQueue.drain()
            let encrypted = text.withUnsafeBytes { raw in
                String(decoding: raw, as: UTF8.self).contains("ENCRYPTED")
            }
            let reason: String
            if encrypted {
                reason = passphrase == nil
                    ? "the private key is encrypted and no passphrase is configured (ClientCertificate.passphrase)"
                    : "the private key could not be decrypted: wrong passphrase? (\(detail))"
            } else {
                reason = "\(source) holds no readable PEM private key (\(detail))"
            }
            throw .invalidConfiguration(field: field, reason: reason)
        }
        return key
    }

    /// Copies the passphrase (a C string in `userdata`) into OpenSSL's buffer.
    private static let passphraseCallback: @convention(c) (UnsafeMutablePointer<CChar>?, Int32, Int32, UnsafeMutableRawPointer?) -> Int32 = {
        buffer, size, _, userdata in
        guard let buffer, let userdata else { return -1 }
        let passphrase = userdata.assumingMemoryBound(to: CChar.self)
        let length = Int32(strlen(passphrase))
        guard length < size else { return -1 }
        memcpy(buffer, passphrase, Int(length))
        return length
    }

    /// Refuses to decrypt (there is no passphrase) instead of prompting on a terminal.
    private static let noPassphraseCallback: @convention(c) (UnsafeMutablePointer<CChar>?, Int32, Int32, UnsafeMutableRawPointer?) -> Int32 = {
        _, _, _, _ in -1
    }
}

/// OpenSSL's per-thread error queue.
enum TLSErrorQueue {
    /// Empties the queue: before an OpenSSL call whose failure is then read with SSL_get_error.
    @inline(__always)
    static func clear() { ERR_clear_error() }

    /// The queue's errors as text (OpenSSL's strings: library, reason; never data), emptying it.
    static func drain() -> String {
        var parts = [String]()
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            parts.append(buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })
        }
        return parts.isEmpty ? "no detail from OpenSSL" : parts.joined(separator: "; ")
    }
}

/// The one ``TLSContext`` of a connection factory, made on first use (so that a factory is created
/// without touching files, and a failure to load them is reported by the connect that needed them) and
/// then shared by every connection the factory makes: they resume each other's TLS sessions.
package final class SharedTLSContext: Sendable {
    private let configuration: TLSConfiguration?
    private let logger: Logger
    private let made = LockedValue<TLSContext?>(nil)

    /// A holder for `configuration`'s context; `nil` configuration: plain text.
    package init(configuration: TLSConfiguration?, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// The context, made now if this is the first call (or the earlier tries failed); `nil` without TLS.
    ///
    /// - Throws: the ``TLSError`` of ``TLSContext/init(configuration:logger:)``.
    package func context() throws(TLSError) -> TLSContext? {
        guard let configuration else { return nil }
        if let context = made.withLock({ $0 }) { return context }
        let context = try TLSContext(configuration: configuration, logger: logger)
        // Two first calls at once may both make one; the first stored wins, so all share one cache.
        return made.withLock { made in
            if let existing = made { return existing }
            made = context
            return context
        }
    }
}
