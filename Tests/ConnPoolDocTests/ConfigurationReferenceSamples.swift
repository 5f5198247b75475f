import ConnPool
import Foundation
import Testing

// The samples of ConfigurationReference.md, verbatim, and a check that its tables list every stored
// property of PoolConfiguration with the default the code has.

func configureByModifiers() -> PoolConfiguration {
    PoolConfiguration()
        .name("sessions")
        .minSize(2)
        .maxSize(32)
        .acquireTimeout(.seconds(1))
        .maxWaiters(256)
}

func configureByProperties() -> PoolConfiguration {
    var configuration = PoolConfiguration()
    configuration.name = "sessions"
    configuration.minSize = 2
    configuration.maxSize = 32
    configuration.acquireTimeout = .seconds(1)
    configuration.maxWaiters = 256
    return configuration
}

func reportAnInvalidConfiguration() -> PoolConfigurationError? {
    do {
        try PoolConfiguration().minSize(20).maxSize(10).validate()
        return nil
    } catch {
        print(error)  // invalid PoolConfiguration.minSize = 20: must not exceed maxSize (10); change ...
        return error
    }
}

@Suite("Configuration reference")
struct ConfigurationReferenceSamples {
    @Test("the two ways of configuring agree")
    func modifiersAndProperties() {
        #expect(configureByModifiers() == configureByProperties())
    }

    @Test("validate() names the field, the value and the rule")
    func invalidConfiguration() throws {
        let error = try #require(reportAnInvalidConfiguration())
        #expect(error.field == "minSize")
        #expect(error.value == "20")
        #expect(error.rule == "must not exceed maxSize (10)")
    }

    /// How the reference writes a default.
    static func render(_ value: Any) -> String {
        let mirror = Mirror(reflecting: value)
        if mirror.displayStyle == .optional {
            guard let wrapped = mirror.children.first?.value else { return "`nil`" }
            return render(wrapped)
        }
        switch value {
        case let duration as Duration:
            let (seconds, attoseconds) = duration.components
            if attoseconds == 0 && seconds >= 60 && seconds % 60 == 0 { return "\(seconds / 60) min" }
            if attoseconds == 0 { return "\(seconds) s" }
            return "\(seconds * 1_000 + attoseconds / 1_000_000_000_000_000) ms"
        case let double as Double:
            return double == double.rounded() ? "\(Int(double))" : "\(double)"
        case let bool as Bool:
            return "`\(bool)`"
        case let string as String:
            return "`\"\(string)\"`"
        case let order as PoolConfiguration.ReuseOrder:
            return "`.\(order.rawValue)`"
        default:
            return "\(value)"
        }
    }

    @Test("the reference has one row per stored property, with the code's default")
    func referenceMatchesTheCode() throws {
        let page = try String(
            contentsOf: DocPaths.catalog.appendingPathComponent("ConfigurationReference.md"), encoding: .utf8)
        let row = try Regex(#"^\| ``PoolConfiguration/([A-Za-z]+)`` \| ([^|]+) \|"#)
        var documented: [String: String] = [:]
        for line in page.components(separatedBy: "\n") {
            guard let match = try row.firstMatch(in: line),
                  let field = match.output[1].substring, let value = match.output[2].substring
            else { continue }
            #expect(documented[String(field)] == nil, "\(field) has two rows")
            documented[String(field)] = value.trimmingCharacters(in: .whitespaces)
        }
        let defaults = Mirror(reflecting: PoolConfiguration()).children.compactMap { child in
            child.label.map { ($0, Self.render(child.value)) }
        }
        #expect(defaults.count >= 20)
        for (field, value) in defaults {
            #expect(documented[field] == value, "ConfigurationReference.md: \(field) should default to \(value)")
        }
        let fields = Set(defaults.map(\.0))
        for field in documented.keys {
            #expect(fields.contains(field), "ConfigurationReference.md documents \(field), which is not a property")
        }
    }
}
