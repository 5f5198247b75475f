/// Why TLS failed: the configuration, the server's certificate, or the handshake.
///
/// Never carries a private key, a passphrase or a certificate's contents.
public enum TLSError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What is wrong with the server's certificate.
    public enum CertificateProblem: Sendable, Hashable, CustomStringConvertible {
        /// It expired (its notAfter is in the past).
        case expired
        /// It is not valid yet (its notBefore is in the future: check the clocks).
        case notYetValid
        /// It does not name the host connected to (or ``TLSConfiguration/serverName``).
        case hostnameMismatch
        /// It does not chain to a trusted root (an unknown or wrong CA, or a self-signed certificate).
        case untrustedIssuer
        /// Another verification failure; `code` is OpenSSL's `X509_V_ERR_*` number.
        case other(code: Int)

        /// A short phrase.
        public var description: String {
            switch self {
            case .expired: "the certificate has expired"
            case .notYetValid: "the certificate is not valid yet"
            case .hostnameMismatch: "the certificate does not match the host name"
            case .untrustedIssuer: "the certificate is not issued by a trusted CA"
            case .other(let code): "the certificate failed verification (X509_V_ERR \(code))"
            }
        }
    }

    /// A setting cannot be used: an unreadable CA file, a key that does not match its certificate, a
    /// wrong passphrase, a minimum version above the maximum. `field` names the setting.
    case invalidConfiguration(field: String, reason: String)
    /// The server's certificate failed verification; `detail` is OpenSSL's explanation.
    case certificateVerificationFailed(CertificateProblem, detail: String)
    /// The server requires a client certificate (mutual TLS) and none was configured, or it rejected the
    /// one shown.
    case clientCertificateRequired(detail: String)
    /// The server answered the handshake with something that is not TLS: a plain (non-TLS) port.
    case serverDidNotSpeakTLS(detail: String)
    /// The server expects TLS, but the client spoke plain text: a TLS-only port.
    case serverRequiresTLS
    /// The handshake did not finish within the connect timeout. `serverAnswered` is `false` when not one
    /// byte came back: a frozen server, or a plain-text port (a Redis plain port reads the ClientHello as
    /// the start of a command and waits silently for the rest).
    case handshakeTimedOut(serverAnswered: Bool)
    /// The handshake failed for another reason (an alert, no common version or cipher).
    case handshakeFailed(detail: String)
    /// A TLS record could not be read or written after the handshake.
    case recordFailed(detail: String)

    /// What went wrong and what to do.
    public var description: String {
        switch self {
        case .invalidConfiguration(let field, let reason):
            "TLS configuration error: \(field): \(reason)"
        case .certificateVerificationFailed(let problem, let detail):
            "TLS certificate verification failed: \(problem) (\(detail)). "
                + hint(for: problem)
        case .clientCertificateRequired(let detail):
            "TLS handshake failed: the server requires a client certificate (mutual TLS) and did not accept ours "
                + "(\(detail)). Configure TLSConfiguration.clientCertificate with a certificate its CA trusts."
        case .serverDidNotSpeakTLS(let detail):
            "TLS handshake failed: the server did not answer with TLS (\(detail)); it is probably a plain-text "
                + "port. Use the server's TLS port, or connect without TLS (redis:// instead of rediss://)."
        case .serverRequiresTLS:
            "the server answered with a TLS record: this port expects TLS. Connect with TLS (rediss:// or a "
                + "TLSConfiguration)."
        case .handshakeTimedOut(let serverAnswered):
            serverAnswered
                ? "TLS handshake timed out: the server began the handshake but did not finish it within the connect "
                    + "timeout (overloaded?). Raise connectTimeout or check the server."
                : "TLS handshake timed out: the server sent nothing back. Either it is frozen, or this is a plain-text "
                    + "port (a Redis plain port waits silently for the end of a command): check that the port is the "
                    + "server's TLS port."
        case .handshakeFailed(let detail):
            "TLS handshake failed: \(detail)"
        case .recordFailed(let detail):
            "TLS error on an established connection: \(detail)"
        }
    }

    private func hint(for problem: CertificateProblem) -> String {
        switch problem {
        case .expired, .notYetValid:
            "Renew the server's certificate (or check this machine's clock)."
        case .hostnameMismatch:
            "Connect with the name the certificate was issued for, or set TLSConfiguration.serverName to it."
        case .untrustedIssuer:
            "Trust the CA that issued it (TLSConfiguration.trustRoots = .certificateFile(...))."
        case .other:
            "Check the server's certificate chain."
        }
    }
}
