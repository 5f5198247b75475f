// libFuzzer target: the redis:// and unix:// URL parser, `RedisConnectionConfiguration(url:)`.
//
// The input, read as UTF-8 (invalid bytes repaired), is parsed as a URL. Properties checked:
// - it never crashes (errors are fine);
// - a parsed password never appears in the configuration's `description`, `debugDescription` or
//   reflection (`String(reflecting:)`, `dump`), nor in its factory's;
// - no parse error's text quotes a password: the input is also parsed with a marker password
//   spliced in as user info, and the marker must not appear in the error's texts.
@testable import ConnPoolRedis

/// The marker spliced into a second URL as its password; odd enough never to occur by chance.
let marker = "Zq9secretMARKERx7"

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRedisURL(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    check(text)
    // The same text with a known password as its user info, right after the scheme.
    if let range = text.firstRange(of: "://") {
        check(String(text[..<range.upperBound] + "user:" + marker + "@" + text[range.upperBound...]), secret: marker)
    }
    return 0
}

/// Every text a configuration (and its factory) shows of itself.
func texts(of configuration: RedisConnectionConfiguration) -> [String] {
    var texts = [
        configuration.description, configuration.debugDescription, String(reflecting: configuration),
        "\(configuration)",
    ]
    var dumped = ""
    dump(configuration, to: &dumped)
    texts.append(dumped)
    if let factory = try? RedisConnectionFactory(configuration: configuration) {
        texts.append(factory.description)
        texts.append(String(reflecting: factory))
        var dumpedFactory = ""
        dump(factory, to: &dumpedFactory)
        texts.append(dumpedFactory)
    }
    return texts
}

func check(_ url: String, secret: String? = nil) {
    let configuration: RedisConnectionConfiguration
    do {
        configuration = try RedisConnectionConfiguration(url: url)
    } catch {
        guard let secret else { return }
        for text in ["\(error)", String(reflecting: error)] where text.contains(secret) {
            fatalError("a URL parse error quotes the password: \(text.debugDescription)")
        }
        return
    }
    guard let password = configuration.password, !password.isEmpty else { return }
    // The same configuration with another password: what it prints without any secret. A password
    // that occurs there anyway (part of the host, the user name, a field name) proves nothing.
    var baseline = configuration
    baseline.password = "\u{1}"
    let shown = texts(of: configuration)
    let innocent = texts(of: baseline)
    for (text, reference) in zip(shown, innocent) where text.contains(password) && !reference.contains(password) {
        fatalError("the password of a parsed URL appears in a description: \(text.debugDescription)")
    }
}
