import COpenSSL
import Glibc

/// One TLS connection over a connected non-blocking socket: OpenSSL's `SSL` object, driven by
/// ``Transport``. Never waits: every call does what it can and says what it waits for.
///
/// Not thread-safe by itself: only the holder of the transport's in-use flag touches it (see
/// ``Transport``).
///
/// A trivial value (one pointer, no reference to retain), so the hot path copies it for free; the
/// ``Transport`` keeps the ``TLSContext`` alive for as long as the `SSL` exists.
package struct TLSSession {
    let ssl: OpaquePointer

    /// Sets up TLS on `fd` for a server reached at `host` (the name or address connected to).
    ///
    /// - Throws: ``TLSError/handshakeFailed(detail:)`` when OpenSSL cannot make the connection object.
    init(context: TLSContext, fd: Int32, host: String) throws(TLSError) {
        TLSErrorQueue.clear()
        guard let ssl = SSL_new(context.context) else {
            throw .handshakeFailed(detail: "SSL_new failed: \(TLSErrorQueue.drain())")
        }
        guard let bio = Self.makeSocketBIO(fd: fd) else {
            SSL_free(ssl)
            throw .handshakeFailed(detail: "BIO_new failed: \(TLSErrorQueue.drain())")
        }
        SSL_set_bio(ssl, bio, bio)  // the SSL owns the BIO
        self.ssl = ssl

        let configuration = context.configuration
        let name = configuration.serverName ?? host
        let isAddress = SocketAddress.isNumeric(name)
        if !isAddress {
            _ = connpool_SSL_set_tlsext_host_name(ssl, name)  // SNI (never an IP address, RFC 6066)
        }
        if configuration.certificateVerification == .fullVerification {
            if isAddress {
                X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name)
            } else {
                SSL_set_hostflags(ssl, UInt32(X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS))
                SSL_set1_host(ssl, name)
            }
        }
        if let server = TLSContext.peerAddress(fd) {
            context.offerSession(to: ssl, server: server)
        }
    }

    /// Frees the OpenSSL object (and its BIO; the descriptor stays open: the transport closes it).
    func free() {
        SSL_free(ssl)
    }

    /// Whether the server asked for a client certificate during the handshake and none was configured.
    var serverAskedForMissingCertificate: Bool {
        SSL_get_ex_data(ssl, TLSContext.missingCertificateIndex) != nil
    }

    /// Whether any byte came from the server (during the handshake: whether it answered at all).
    var hasReceivedBytes: Bool {
        guard let bio = SSL_get_rbio(ssl) else { return false }
        return BIO_number_read(bio) > 0
    }

    /// Whether the handshake resumed a stored session (an abbreviated handshake).
    var isSessionReused: Bool { SSL_session_reused(ssl) == 1 }

    /// The negotiated protocol, such as `TLSv1.3`.
    var protocolVersion: String { String(cString: SSL_get_version(ssl)) }

    /// Whether decrypted bytes, or received records not yet decrypted, wait in OpenSSL: a read then
    /// returns data without the socket becoming readable.
    @inline(__always)
    var hasBufferedInput: Bool { SSL_has_pending(ssl) == 1 }

    /// One step of the client handshake.
    ///
    /// - Returns: `nil` once the handshake is complete; otherwise what the socket must become before
    ///   the next step.
    /// - Throws: ``TransportError/tls(_:)`` (certificate, alert, not TLS), ``TransportError/endOfStream``,
    ///   ``TransportError/connectionReset`` or ``TransportError/io(operation:errno:)``.
    func handshakeStep() throws(TransportError) -> SocketInterest? {
        TLSErrorQueue.clear()
        let result = SSL_connect(ssl)
        if result == 1 { return nil }
        switch SSL_get_error(ssl, result) {
        case SSL_ERROR_WANT_READ: return .readable
        case SSL_ERROR_WANT_WRITE: return .writable
        default: throw failure(result, duringHandshake: true)
        }
    }

    /// Reads decrypted bytes.
    @inline(__always)
    func receive(into pointer: UnsafeMutableRawPointer, count: Int) throws(TransportError) -> TransferResult {
        TLSErrorQueue.clear()
        var done = 0
        let result = SSL_read_ex(ssl, pointer, count, &done)
        if result == 1 { return .transferred(done) }
        switch SSL_get_error(ssl, result) {
        case SSL_ERROR_WANT_READ: return .wouldBlock(.readable)
        case SSL_ERROR_WANT_WRITE: return .wouldBlock(.writable)
        case SSL_ERROR_ZERO_RETURN: return .endOfStream  // close_notify
        default: throw failure(result, duringHandshake: false)
        }
    }

    /// Encrypts and sends bytes (a partial write is possible).
    @inline(__always)
    func send(from pointer: UnsafeRawPointer, count: Int) throws(TransportError) -> TransferResult {
        TLSErrorQueue.clear()
        var done = 0
        let result = SSL_write_ex(ssl, pointer, count, &done)
        if result == 1 { return .transferred(done) }
        switch SSL_get_error(ssl, result) {
        case SSL_ERROR_WANT_READ: return .wouldBlock(.readable)
        case SSL_ERROR_WANT_WRITE: return .wouldBlock(.writable)
        case SSL_ERROR_ZERO_RETURN: throw .endOfStream
        default: throw failure(result, duringHandshake: false)
        }
    }

    /// Turns a failed call's error state into a ``TransportError``.
    private func failure(_ result: Int32, duringHandshake: Bool) -> TransportError {
        let kind = SSL_get_error(ssl, result)
        if kind == SSL_ERROR_SYSCALL {
            let code = errno
            TLSErrorQueue.clear()
            if code == 0 { return .endOfStream }  // EOF without close_notify (older OpenSSL)
            if code == ECONNRESET { return .connectionReset }
            if code == EPIPE { return .endOfStream }
            return .io(operation: duringHandshake ? "TLS handshake" : "TLS", errno: code)
        }
        let verify = SSL_get_verify_result(ssl)
        if duringHandshake, verify != X509_V_OK {
            TLSErrorQueue.clear()
            let detail = String(cString: X509_verify_cert_error_string(verify))
            return .tls(.certificateVerificationFailed(Self.problem(Int32(verify)), detail: detail))
        }
        let code = ERR_peek_error()
        let reason = connpool_ERR_GET_REASON(code)
        let detail = TLSErrorQueue.drain()
        switch reason {
        case SSL_R_UNEXPECTED_EOF_WHILE_READING:
            return .endOfStream
        case SSL_R_WRONG_VERSION_NUMBER, SSL_R_PACKET_LENGTH_TOO_LONG, SSL_R_HTTP_REQUEST, SSL_R_RECORD_LENGTH_MISMATCH:
            return duringHandshake ? .tls(.serverDidNotSpeakTLS(detail: detail)) : .tls(.recordFailed(detail: detail))
        case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
            return .tls(.clientCertificateRequired(detail: detail))
        case SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE, SSL_R_SSLV3_ALERT_BAD_CERTIFICATE, SSL_R_TLSV1_ALERT_UNKNOWN_CA:
            // TLS 1.2 servers answer a missing or unknown client certificate with these alerts.
            if SSL_get_certificate(ssl) == nil || reason != SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE {
                return .tls(.clientCertificateRequired(detail: detail))
            }
            return .tls(.handshakeFailed(detail: detail))
        default:
            return duringHandshake ? .tls(.handshakeFailed(detail: detail)) : .tls(.recordFailed(detail: detail))
        }
    }

    private static func problem(_ code: Int32) -> TLSError.CertificateProblem {
        switch code {
        case X509_V_ERR_CERT_HAS_EXPIRED: .expired
        case X509_V_ERR_CERT_NOT_YET_VALID: .notYetValid
        case X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH: .hostnameMismatch
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT,
            X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN,
            X509_V_ERR_CERT_UNTRUSTED, X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
            .untrustedIssuer
        default: .other(code: Int(code))
        }
    }

    // MARK: - The socket BIO

    /// A socket BIO for `fd` that never raises SIGPIPE (see `socketMethod`); it does not close `fd`.
    /// Package-visible for the tests' TLS servers.
    package static func makeSocketBIO(fd: Int32) -> OpaquePointer? {
        guard let bio = BIO_new(socketMethod) else { return nil }
        _ = BIO_int_ctrl(bio, BIO_C_SET_FD, Int(BIO_NOCLOSE), fd)
        return bio
    }

    /// OpenSSL's socket BIO with one change: it writes with `send(..., MSG_NOSIGNAL)`, so writing to a
    /// connection the peer has closed fails with `EPIPE` instead of raising SIGPIPE (which kills a
    /// process that does not ignore it). Reading, control and cleanup are the socket BIO's own.
    ///
    /// `nonisolated(unsafe)`: made once (a `static let` is initialized exactly once, thread-safely) and
    /// never changed afterwards; OpenSSL only reads a BIO_METHOD.
    nonisolated(unsafe) private static let socketMethod: OpaquePointer = {
        let socket = BIO_s_socket()
        let method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR, "connpool socket")!
        BIO_meth_set_write(method, writeNoSignal)
        BIO_meth_set_read(method, BIO_meth_get_read(socket))
        BIO_meth_set_puts(method, BIO_meth_get_puts(socket))
        BIO_meth_set_ctrl(method, BIO_meth_get_ctrl(socket))
        BIO_meth_set_create(method, BIO_meth_get_create(socket))
        BIO_meth_set_destroy(method, BIO_meth_get_destroy(socket))
        return method
    }()

    private static let writeNoSignal: @convention(c) (OpaquePointer?, UnsafePointer<CChar>?, Int32) -> Int32 = {
        bio, data, length in
        var fd: Int32 = -1
        _ = BIO_ctrl(bio, BIO_C_GET_FD, 0, &fd)
        connpool_BIO_clear_retry_flags(bio)
        let written = Glibc.send(fd, data, Int(length), Int32(MSG_NOSIGNAL))
        if written < 0 {
            let code = errno
            if code == EAGAIN || code == EWOULDBLOCK || code == EINTR {
                connpool_BIO_set_retry_write(bio)
            }
            errno = code
            return -1
        }
        return Int32(written)
    }
}
