/// How a connection speaks TLS: the protocol versions, whom it trusts, how it checks the server, and the
/// client certificate it shows for mutual TLS. Used by both backends (`RedisConnectionConfiguration/tls`,
/// `TCPConnectionConfiguration/tls`).
///
/// The defaults are the safe ones: TLS 1.2 or 1.3, the system's trusted roots, the server's certificate
/// chain *and* host name checked, session resumption on.
///
/// ```swift
/// var tls = TLSConfiguration()
/// tls.trustRoots = .certificateFile("/etc/redis/ca.crt")
/// tls.clientCertificate = .files(certificatePath: "/etc/redis/client.crt", privateKeyPath: "/etc/redis/client.key")
/// ```
///
/// Secrets: the private key, its passphrase and the contents of PEM certificates never appear in
/// ``description``, in errors or in logs; file paths do.
public struct TLSConfiguration: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// A TLS protocol version.
    public enum ProtocolVersion: Int, Sendable, Hashable, Comparable, CustomStringConvertible {
        case tls1_2 = 0x0303
        case tls1_3 = 0x0304

        public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }

        /// `TLS 1.2` or `TLS 1.3`.
        public var description: String { self == .tls1_2 ? "TLS 1.2" : "TLS 1.3" }
    }

    /// The certificate authorities a server's certificate must chain to.
    public enum TrustRoots: Sendable, Hashable, CustomStringConvertible, CustomReflectable {
        /// The system's trusted roots (on Debian, `/etc/ssl/certs`).
        case system
        /// The PEM certificates in a file (one or more CA certificates).
        case certificateFile(String)
        /// PEM text holding one or more CA certificates.
        case certificatePEM(String)

        /// `system`, `file(<path>)` or `pem(<n bytes>)`: never the certificate's text.
        public var description: String {
            switch self {
            case .system: "system"
            case .certificateFile(let path): "file(\(path))"
            case .certificatePEM(let text): "pem(\(text.utf8.count) bytes)"
            }
        }

        /// No children: reflection (`dump`, `Mirror`) shows ``description``, never PEM text.
        public var customMirror: Mirror { Mirror(self, children: [:]) }
    }

    /// How much of the server's certificate is checked.
    public enum CertificateVerification: Sendable, Hashable, CustomStringConvertible {
        /// The chain must lead to a trusted root, be valid now, and name the server (its DNS name or IP
        /// address in subjectAltName). The default; the only safe choice over an untrusted network.
        case fullVerification
        /// The chain is checked, the name is not (a certificate issued for another name is accepted).
        case noHostnameVerification
        /// Nothing is checked: anyone in the path can read and change the traffic. Only for tests; a
        /// warning is logged when a connection uses it.
        case none

        /// `full`, `no-hostname` or `none`.
        public var description: String {
            switch self {
            case .fullVerification: "full"
            case .noHostnameVerification: "no-hostname"
            case .none: "none"
            }
        }
    }

    /// Where a PEM certificate or key comes from.
    public enum PEMSource: Sendable, Hashable, CustomStringConvertible, CustomReflectable {
        /// A file holding the PEM text.
        case file(String)
        /// The PEM text itself.
        case pem(String)

        /// `file(<path>)` or `pem(<n bytes>)`: never the text.
        public var description: String {
            switch self {
            case .file(let path): "file(\(path))"
            case .pem(let text): "pem(\(text.utf8.count) bytes)"
            }
        }

        /// No children: reflection shows ``description``, never PEM text.
        public var customMirror: Mirror { Mirror(self, children: [:]) }
    }

    /// The certificate (with its chain) and private key a client shows a server that asks for one
    /// (mutual TLS, `tls-auth-clients yes` in Redis).
    public struct ClientCertificate: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible,
        CustomReflectable
    {
        /// The client certificate, optionally followed by intermediate certificates.
        public var certificate: PEMSource
        /// The certificate's private key (PKCS#8 or traditional PEM).
        public var privateKey: PEMSource
        /// The passphrase of an encrypted private key; `nil` for an unencrypted one.
        public var passphrase: String?

        /// A certificate and key from PEM sources.
        public init(certificate: PEMSource, privateKey: PEMSource, passphrase: String? = nil) {
            self.certificate = certificate
            self.privateKey = privateKey
            self.passphrase = passphrase
        }

        /// A certificate and key from PEM files.
        public static func files(certificatePath: String, privateKeyPath: String, passphrase: String? = nil) -> Self {
            ClientCertificate(certificate: .file(certificatePath), privateKey: .file(privateKeyPath), passphrase: passphrase)
        }

        /// The certificate's source; the key and passphrase are redacted.
        public var description: String {
            "ClientCertificate(certificate: \(certificate), privateKey: <redacted>"
                + (passphrase == nil ? ")" : ", passphrase: <redacted>)")
        }

        /// The same as ``description``.
        public var debugDescription: String { description }

        /// The certificate's source only: the key and passphrase never appear in reflection.
        public var customMirror: Mirror { Mirror(self, children: ["certificate": certificate], displayStyle: .struct) }
    }

    /// The oldest version offered. Default ``ProtocolVersion/tls1_2``.
    public var minimumVersion: ProtocolVersion = .tls1_2
    /// The newest version offered. Default ``ProtocolVersion/tls1_3``.
    public var maximumVersion: ProtocolVersion = .tls1_3
    /// Whom to trust. Default ``TrustRoots/system``.
    public var trustRoots: TrustRoots = .system
    /// How the server's certificate is checked. Default ``CertificateVerification/fullVerification``.
    public var certificateVerification: CertificateVerification = .fullVerification
    /// The name sent as SNI and checked against the certificate; `nil` uses the host connected to (an IP
    /// address is checked against the certificate's IP addresses and sends no SNI).
    public var serverName: String?
    /// The client certificate for mutual TLS; `nil` shows none.
    public var clientCertificate: ClientCertificate?
    /// Resume TLS sessions across the connections of one factory (a pool), so a reconnect costs an
    /// abbreviated handshake instead of a full one. Default `true`.
    public var sessionResumption: Bool = true

    /// The defaults: TLS 1.2–1.3, system roots, full verification, session resumption.
    public init() {}

    /// A configuration with the given settings; see the properties for each.
    public init(
        trustRoots: TrustRoots = .system,
        certificateVerification: CertificateVerification = .fullVerification,
        serverName: String? = nil,
        clientCertificate: ClientCertificate? = nil,
        minimumVersion: ProtocolVersion = .tls1_2,
        maximumVersion: ProtocolVersion = .tls1_3,
        sessionResumption: Bool = true
    ) {
        self.trustRoots = trustRoots
        self.certificateVerification = certificateVerification
        self.serverName = serverName
        self.clientCertificate = clientCertificate
        self.minimumVersion = minimumVersion
        self.maximumVersion = maximumVersion
        self.sessionResumption = sessionResumption
    }

    /// Checks the settings that need no file access.
    ///
    /// - Throws: ``TLSError/invalidConfiguration(field:reason:)`` when the minimum version is above the
    ///   maximum, or the server name is empty or has spaces.
    public func validate() throws(TLSError) {
        if minimumVersion > maximumVersion {
            throw .invalidConfiguration(
                field: "minimumVersion",
                reason: "\(minimumVersion) is above maximumVersion \(maximumVersion); lower it or raise maximumVersion")
        }
        if let serverName, serverName.isEmpty || serverName.contains(where: { $0 == " " || $0 == "\0" }) {
            throw .invalidConfiguration(
                field: "serverName", reason: "'\(serverName)' is not a host name; give a DNS name or leave it nil")
        }
    }

    /// The settings, with secrets redacted and PEM contents replaced by their size.
    public var description: String {
        var parts = [
            "versions: \(minimumVersion)...\(maximumVersion)",
            "trustRoots: \(trustRoots)",
            "verification: \(certificateVerification)",
        ]
        if let serverName { parts.append("serverName: \(serverName)") }
        if let clientCertificate { parts.append("clientCertificate: \(clientCertificate)") }
        if !sessionResumption { parts.append("sessionResumption: false") }
        return "TLSConfiguration(" + parts.joined(separator: ", ") + ")"
    }

    /// The same as ``description``.
    public var debugDescription: String { description }

    /// Reflection (`dump`, `Mirror`) with the same redactions as ``description``.
    public var customMirror: Mirror {
        Mirror(
            self,
            children: [
                "minimumVersion": minimumVersion,
                "maximumVersion": maximumVersion,
                "trustRoots": trustRoots,
                "certificateVerification": certificateVerification,
                "serverName": serverName as Any,
                "clientCertificate": clientCertificate as Any,
                "sessionResumption": sessionResumption,
            ],
            displayStyle: .struct)
    }
}
