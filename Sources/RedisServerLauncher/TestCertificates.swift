// TLS test fixtures: a throwaway certificate authority and the certificates TLS tests need (a valid
// server certificate for localhost, one for another host name, an expired one, one signed by an unrelated
// CA, a client certificate for mutual TLS, and a passphrase-protected client key), made with the `openssl`
// command-line tool in a fresh temporary directory. Keys are EC P-256: the whole set takes about 0.1 s.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import ConnPool

/// Why ``TestCertificates/create(opensslPath:)`` failed.
public enum TestCertificatesError: Error, Sendable, Equatable, CustomStringConvertible {
    /// No `openssl` executable was found in `PATH` (or at `OPENSSL_PATH`, or at the path given).
    case opensslNotInstalled(searched: [String])
    /// An `openssl` command failed; `stderrTail` is the end of what it wrote to standard error.
    case commandFailed(command: String, status: String, stderrTail: String)
    /// A system call needed to make the directory or run `openssl` failed.
    case systemError(operation: String, errno: Int32)

    /// A readable explanation, with the install hint when `openssl` is missing.
    public var description: String {
        switch self {
        case .opensslNotInstalled(let searched):
            return "openssl is not installed (looked in \(searched.joined(separator: ":"))): install the "
                + "`openssl` package (`apt-get install openssl`), or set OPENSSL_PATH"
        case .commandFailed(let command, let status, let stderrTail):
            return "`\(command)` failed (\(status)); stderr tail:\n\(stderrTail)"
        case .systemError(let operation, let errno):
            return "\(operation) failed: \(String(cString: strerror(errno))) (errno \(errno))"
        }
    }
}

/// A set of throwaway TLS certificates and keys (PEM files) in a fresh temporary directory, for tests:
///
/// - ``caCertificatePath`` (and ``caKeyPath``): the CA that signs everything below except the
///   wrong-CA material.
/// - ``serverCertificatePath`` / ``serverKeyPath``: a server certificate for `localhost`, with
///   subjectAltName `DNS:localhost, IP:127.0.0.1`, extended key usage serverAuth, valid for 825 days.
/// - ``wrongHostServerCertificatePath`` / ``wrongHostServerKeyPath``: the same, but for
///   `DNS:wrong.example` only (host-name mismatch tests against 127.0.0.1 or localhost).
/// - ``expiredServerCertificatePath`` / ``expiredServerKeyPath``: a server certificate for
///   localhost/127.0.0.1, signed by the CA, valid only from 2020-01-01 to 2020-01-02 (UTC): expired.
/// - ``wrongCACertificatePath`` (and ``wrongCAKeyPath``): a second, unrelated CA, and
///   ``wrongCAServerCertificatePath`` / ``wrongCAServerKeyPath``: a localhost server certificate it signed
///   (a server a client trusting only ``caCertificatePath`` must reject).
/// - ``clientCertificatePath`` / ``clientKeyPath``: a client certificate (CN `connpool-test-client`,
///   extended key usage clientAuth) signed by the CA, for mutual TLS.
/// - ``encryptedClientKeyPath``: the client key again, encrypted (PKCS#8, AES-256-CBC) with
///   ``clientKeyPassphrase``.
///
/// Keys are EC P-256 and unencrypted except ``encryptedClientKeyPath``; files are readable by this user
/// only (the directory has mode 0700). ``remove()`` deletes the directory. ``shared()`` gives one set per process, removed at exit.
public struct TestCertificates: Sendable, Hashable {
    /// The temporary directory holding every file; ``remove()`` deletes it.
    public let directory: String
    /// The test CA's certificate: the trust anchor for the server and client certificates.
    public let caCertificatePath: String
    /// The test CA's private key.
    public let caKeyPath: String
    /// An unrelated CA's certificate (signed nothing the other files hold, except the wrong-CA server
    /// certificate): trusting it alone must fail to verify the server.
    public let wrongCACertificatePath: String
    /// The unrelated CA's private key.
    public let wrongCAKeyPath: String
    /// Server certificate for `localhost` (SAN `DNS:localhost, IP:127.0.0.1`), signed by the CA.
    public let serverCertificatePath: String
    /// The private key of ``serverCertificatePath``.
    public let serverKeyPath: String
    /// Server certificate for `wrong.example` only (SAN `DNS:wrong.example`), signed by the CA.
    public let wrongHostServerCertificatePath: String
    /// The private key of ``wrongHostServerCertificatePath``.
    public let wrongHostServerKeyPath: String
    /// Server certificate for localhost/127.0.0.1 signed by the CA, valid 2020-01-01 to 2020-01-02: expired.
    public let expiredServerCertificatePath: String
    /// The private key of ``expiredServerCertificatePath``.
    public let expiredServerKeyPath: String
    /// Server certificate for localhost/127.0.0.1 signed by the unrelated CA (``wrongCACertificatePath``).
    public let wrongCAServerCertificatePath: String
    /// The private key of ``wrongCAServerCertificatePath``.
    public let wrongCAServerKeyPath: String
    /// Client certificate (CN `connpool-test-client`, clientAuth) signed by the CA, for mutual TLS.
    public let clientCertificatePath: String
    /// The unencrypted private key of ``clientCertificatePath``.
    public let clientKeyPath: String
    /// The private key of ``clientCertificatePath``, encrypted with ``clientKeyPassphrase`` (PEM
    /// `ENCRYPTED PRIVATE KEY`, PKCS#8 with AES-256-CBC).
    public let encryptedClientKeyPath: String
    /// The passphrase of ``encryptedClientKeyPath``.
    public let clientKeyPassphrase: String

    /// The subject common name of the client certificate.
    public static let clientCommonName = "connpool-test-client"

    private init(directory: String) {
        self.directory = directory
        func path(_ name: String) -> String { directory + "/" + name }
        caCertificatePath = path("ca.crt")
        caKeyPath = path("ca.key")
        wrongCACertificatePath = path("wrong-ca.crt")
        wrongCAKeyPath = path("wrong-ca.key")
        serverCertificatePath = path("server.crt")
        serverKeyPath = path("server.key")
        wrongHostServerCertificatePath = path("wrong-host-server.crt")
        wrongHostServerKeyPath = path("wrong-host-server.key")
        expiredServerCertificatePath = path("expired-server.crt")
        expiredServerKeyPath = path("expired-server.key")
        wrongCAServerCertificatePath = path("wrong-ca-server.crt")
        wrongCAServerKeyPath = path("wrong-ca-server.key")
        clientCertificatePath = path("client.crt")
        clientKeyPath = path("client.key")
        encryptedClientKeyPath = path("client-encrypted.key")
        clientKeyPassphrase = Self.passphrase
    }

    private static let passphrase = "connpool-test-passphrase"

    /// Creates a new set in a fresh temporary directory (under `TMPDIR`, else `/tmp`), with about ten
    /// `openssl` commands (about 0.1 s). Blocks the calling thread meanwhile: in async code call it from
    /// a thread of your own, or once per suite. The caller owns the directory: call ``remove()``.
    ///
    /// - Parameter opensslPath: the `openssl` to run; `nil` looks at `OPENSSL_PATH`, then `PATH` and the
    ///   usual system directories.
    /// - Throws: ``TestCertificatesError/opensslNotInstalled(searched:)`` when `openssl` is missing;
    ///   ``TestCertificatesError/commandFailed(command:status:stderrTail:)`` when a command fails;
    ///   ``TestCertificatesError/systemError(operation:errno:)`` when the directory cannot be made or a
    ///   command cannot be started. Whatever was made is removed before it throws.
    public static func create(opensslPath: String? = nil) throws -> TestCertificates {
        let openssl = try findOpenSSL(opensslPath)
        let base = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
        var template = Array((base + "/connpool-tls-XXXXXX").utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
            throw TestCertificatesError.systemError(operation: "mkdtemp", errno: errno)
        }
        let certificates = TestCertificates(directory: template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })
        do {
            try certificates.make(openssl: openssl)
        } catch {
            certificates.remove()
            throw error
        }
        return certificates
    }

    /// One set for the whole process, made on first use and removed by an `atexit` hook (for test
    /// suites: no suite needs to remove it). Safe from any thread; later calls return the same set, or
    /// throw the first call's error again.
    ///
    /// - Throws: what ``create(opensslPath:)`` throws.
    public static func shared() throws -> TestCertificates {
        try sharedSet.withLock { state in
            if let state { return try state.get() }
            let result = Result { try create() }.mapError {
                $0 as? TestCertificatesError ?? .systemError(operation: "create", errno: EIO)
            }
            state = result
            if case .success = result { atexit { TestCertificates.removeShared() } }
            return try result.get()
        }
    }

    /// Deletes ``directory`` and everything in it. Idempotent; never throws.
    public func remove() {
        Self.removeTree(directory)
    }

    // MARK: Making the files

    private static let sharedSet = LockedValue<Result<TestCertificates, TestCertificatesError>?>(nil)

    private static func removeShared() {
        if case .success(let certificates)? = sharedSet.withLock({ $0 }) { certificates.remove() }
    }

    /// The configuration every command reads: the extensions of each kind of certificate, and the
    /// minimal database `openssl ca` needs (only used for the expired certificate: unlike `openssl x509`,
    /// `openssl ca` of OpenSSL 3.0 takes an explicit start date, here one in the past).
    private static let configuration = """
        [ req ]
        distinguished_name = dn
        prompt = no
        [ dn ]
        CN = unused
        [ ca_ext ]
        basicConstraints = critical, CA:TRUE
        keyUsage = critical, keyCertSign, cRLSign
        subjectKeyIdentifier = hash
        [ server_ext ]
        basicConstraints = critical, CA:FALSE
        keyUsage = critical, digitalSignature
        extendedKeyUsage = serverAuth
        subjectAltName = DNS:localhost, IP:127.0.0.1
        subjectKeyIdentifier = hash
        authorityKeyIdentifier = keyid
        [ wrong_host_ext ]
        basicConstraints = critical, CA:FALSE
        keyUsage = critical, digitalSignature
        extendedKeyUsage = serverAuth
        subjectAltName = DNS:wrong.example
        subjectKeyIdentifier = hash
        authorityKeyIdentifier = keyid
        [ client_ext ]
        basicConstraints = critical, CA:FALSE
        keyUsage = critical, digitalSignature
        extendedKeyUsage = clientAuth
        subjectKeyIdentifier = hash
        authorityKeyIdentifier = keyid
        [ ca ]
        default_ca = test_ca
        [ test_ca ]
        database = index.txt
        new_certs_dir = issued
        serial = serial
        default_md = sha256
        policy = any_subject
        unique_subject = no
        copy_extensions = none
        [ any_subject ]
        commonName = supplied

        """

    private func make(openssl: String) throws {
        let run = { (arguments: [String]) throws in
            try Self.run(openssl: openssl, arguments, in: directory)
        }
        try Self.writeFile(directory + "/openssl.cnf", Self.configuration)
        try Self.writeFile(directory + "/index.txt", "")
        try Self.writeFile(directory + "/serial", "1000\n")
        guard mkdir(directory + "/issued", 0o700) == 0 else {
            throw TestCertificatesError.systemError(operation: "mkdir \(directory)/issued", errno: errno)
        }
        let newKey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        // The two CAs: self-signed.
        for (name, subject, serial) in [("ca", "connpool test CA", "1"), ("wrong-ca", "connpool unrelated test CA", "2")] {
            try run(
                ["req", "-x509", "-new", "-config", "openssl.cnf"] + newKey
                    + ["-keyout", name + ".key", "-out", name + ".crt", "-days", "3650", "-subj", "/CN=" + subject,
                       "-extensions", "ca_ext", "-set_serial", serial])
        }
        // Leaf certificates: a key and a request, then signed by a CA with an extension section.
        func leaf(_ name: String, subject: String, extensions: String, ca: String, serial: String) throws {
            try run(
                ["req", "-new", "-config", "openssl.cnf"] + newKey
                    + ["-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + subject])
            try run([
                "x509", "-req", "-in", name + ".csr", "-CA", ca + ".crt", "-CAkey", ca + ".key", "-set_serial", serial,
                "-days", "825", "-sha256", "-extfile", "openssl.cnf", "-extensions", extensions, "-out", name + ".crt",
            ])
        }
        try leaf("server", subject: "localhost", extensions: "server_ext", ca: "ca", serial: "10")
        try leaf("wrong-host-server", subject: "wrong.example", extensions: "wrong_host_ext", ca: "ca", serial: "11")
        try leaf("wrong-ca-server", subject: "localhost", extensions: "server_ext", ca: "wrong-ca", serial: "12")
        try leaf("client", subject: Self.clientCommonName, extensions: "client_ext", ca: "ca", serial: "13")
        // Expired: `openssl ca` with a validity period in the past.
        try run(
            ["req", "-new", "-config", "openssl.cnf"] + newKey
                + ["-keyout", "expired-server.key", "-out", "expired-server.csr", "-subj", "/CN=localhost"])
        try run([
            "ca", "-config", "openssl.cnf", "-batch", "-notext", "-in", "expired-server.csr", "-cert", "ca.crt",
            "-keyfile", "ca.key", "-startdate", "20200101000000Z", "-enddate", "20200102000000Z",
            "-extensions", "server_ext", "-out", "expired-server.crt",
        ])
        // The client key, encrypted (the passphrase goes through an environment variable of the child,
        // not its command line).
        try run([
            "pkey", "-in", "client.key", "-aes256", "-passout", "env:CONNPOOL_TEST_KEY_PASSPHRASE",
            "-out", "client-encrypted.key",
        ])
    }

    // MARK: Running openssl

    private static func findOpenSSL(_ explicit: String?) throws -> String {
        if let explicit {
            guard access(explicit, X_OK) == 0 else { throw TestCertificatesError.opensslNotInstalled(searched: [explicit]) }
            return explicit
        }
        if let override = getenv("OPENSSL_PATH").map({ String(cString: $0) }), !override.isEmpty {
            guard access(override, X_OK) == 0 else { throw TestCertificatesError.opensslNotInstalled(searched: [override]) }
            return override
        }
        var directories = getenv("PATH").map { String(cString: $0).split(separator: ":").map(String.init) } ?? []
        for extra in ["/usr/bin", "/usr/local/bin", "/bin"] where !directories.contains(extra) {
            directories.append(extra)
        }
        for directory in directories where !directory.isEmpty {
            let candidate = directory + "/openssl"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        throw TestCertificatesError.opensslNotInstalled(searched: directories)
    }

    /// Runs `openssl arguments` in `directory` (through `/bin/sh -c 'cd … && exec …'`: posix_spawn has no
    /// portable chdir action), standard output to /dev/null, standard error to a file read on failure,
    /// and no other descriptor of this process inherited.
    private static func run(openssl: String, _ arguments: [String], in directory: String) throws {
        let errorPath = directory + "/openssl.stderr"
        let argv = ["/bin/sh", "-c", #"cd "$1" && shift && exec "$@""#, "openssl-in", directory, openssl] + arguments
        var fileActions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fileActions)
        defer { posix_spawn_file_actions_destroy(&fileActions) }
        posix_spawn_file_actions_addopen(&fileActions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&fileActions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&fileActions, 2, errorPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        RedisServerProcess.closeInheritedDescriptors(&fileActions)
        // A small environment of our own: the passphrase for `pkey`, and no OPENSSL_CONF or the like of
        // the caller's that could change what the commands make. (The files are private to this user
        // through the directory, which mkdtemp made with mode 0700.)
        let environment = ["CONNPOOL_TEST_KEY_PASSPHRASE=" + passphrase, "PATH=/usr/bin:/bin", "LC_ALL=C"]
        let cArguments: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        let cEnvironment: [UnsafeMutablePointer<CChar>?] = environment.map { strdup($0) } + [nil]
        defer {
            for pointer in cArguments { free(pointer) }
            for pointer in cEnvironment { free(pointer) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, "/bin/sh", &fileActions, nil, cArguments, cEnvironment)
        let command = "openssl " + arguments.joined(separator: " ")
        guard result == 0 else {
            throw TestCertificatesError.systemError(operation: "posix_spawn /bin/sh (\(command))", errno: result)
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard errno == EINTR else {
                throw TestCertificatesError.systemError(operation: "waitpid (\(command))", errno: errno)
            }
        }
        let signal = status & 0x7f
        let code = (status >> 8) & 0xff
        if signal != 0 || code != 0 {
            throw TestCertificatesError.commandFailed(
                command: command, status: signal != 0 ? "killed by signal \(signal)" : "exit code \(code)",
                stderrTail: readTail(errorPath, maxBytes: 2048))
        }
    }

    private static func writeFile(_ path: String, _ text: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw TestCertificatesError.systemError(operation: "open \(path)", errno: errno) }
        defer { close(fd) }
        var text = text
        try text.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    throw TestCertificatesError.systemError(operation: "write \(path)", errno: errno)
                }
                offset += written
            }
        }
    }

    private static func readTail(_ path: String, maxBytes: Int) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        let size = lseek(fd, 0, SEEK_END)
        guard size > 0 else { return "" }
        let start = max(0, Int(size) - maxBytes)
        lseek(fd, off_t(start), SEEK_SET)
        var buffer = [UInt8](repeating: 0, count: Int(size) - start)
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        return count > 0 ? String(decoding: buffer[0..<count], as: UTF8.self) : ""
    }

    /// Deletes `path` and what it holds (this type's own directory: files and the `issued`
    /// subdirectory; symbolic links are unlinked, never followed).
    static func removeTree(_ path: String) {
        guard let handle = opendir(path) else {
            unlink(path)
            return
        }
        var entries: [(name: String, isDirectory: Bool)] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name == "." || name == ".." { continue }
            entries.append((name, entry.pointee.d_type == UInt8(DT_DIR)))
        }
        closedir(handle)
        for entry in entries {
            let child = path + "/" + entry.name
            if entry.isDirectory { removeTree(child) } else { unlink(child) }
        }
        rmdir(path)
    }
}
