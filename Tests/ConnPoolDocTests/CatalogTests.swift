import ConnPool
import Foundation
import Testing

// Checks that keep the DocC catalog honest without running DocC (which CI does not need):
// - every ```swift block of every page appears verbatim (indentation aside) in this target's sources,
//   which are compiled and mostly run, so an article cannot show code that does not compile;
// - the configuration reference has one row per stored property of `PoolConfiguration`, with the
//   default the code has;
// - every article is reachable from the landing page, every `<doc:>` link names a page, and every
//   public type of ConnPool is curated on the landing page.
// Symbol links (``Type/member``) are resolved by DocC itself, which CI does not run; the command is
// in a comment at the top of ConnPool.md.

/// One fenced code block of a catalog page.
struct CodeBlock: CustomStringConvertible {
    var page: String
    var line: Int
    var language: String
    var lines: [String]

    var description: String { "\(page):\(line) ```\(language) starting \"\(lines.first ?? "")\"" }
}

enum Catalog {
    /// The catalog's Markdown pages, relative path → text.
    static func pages() throws -> [(name: String, text: String)] {
        try pages(in: DocPaths.catalog)
    }

    /// The Markdown pages of the catalog at `root`, relative path → text.
    static func pages(in root: URL) throws -> [(name: String, text: String)] {
        guard let enumerator = FileManager.default.enumerator(at: root, includingPropertiesForKeys: nil) else {
            return []
        }
        var pages: [(String, String)] = []
        for case let url as URL in enumerator where url.pathExtension == "md" {
            let name = String(url.path.dropFirst(root.path.count + 1))
            pages.append((name, try String(contentsOf: url, encoding: .utf8)))
        }
        return pages.sorted { $0.0 < $1.0 }
    }

    /// The fenced code blocks of a page.
    static func codeBlocks(page: String, text: String) -> [CodeBlock] {
        var blocks: [CodeBlock] = []
        var current: CodeBlock?
        var fence = ""
        for (number, line) in text.components(separatedBy: "\n").enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if var block = current {
                if trimmed == fence {
                    blocks.append(block)
                    current = nil
                } else {
                    block.lines.append(line)
                    current = block
                }
            } else if trimmed.hasPrefix("```") {
                fence = String(trimmed.prefix { $0 == "`" })
                let language = trimmed.dropFirst(fence.count).trimmingCharacters(in: .whitespaces)
                current = CodeBlock(page: page, line: number + 1, language: language, lines: [])
            }
        }
        return blocks
    }

    /// Every line of every Swift source of this target, trimmed, per file.
    static func sampleSources() throws -> [(name: String, lines: [String])] {
        let root = DocPaths.testsDirectory
        guard let enumerator = FileManager.default.enumerator(at: root, includingPropertiesForKeys: nil) else {
            return []
        }
        var sources: [(String, [String])] = []
        for case let url as URL in enumerator where url.pathExtension == "swift" {
            let text = try String(contentsOf: url, encoding: .utf8)
            sources.append((url.lastPathComponent, text.components(separatedBy: "\n").map(trim)))
        }
        return sources
    }

    static func trim(_ line: String) -> String {
        line.trimmingCharacters(in: .whitespaces)
    }

    /// Whether `needle` occurs as consecutive lines of `haystack`.
    static func contains(_ haystack: [String], _ needle: [String]) -> Bool {
        guard !needle.isEmpty, needle.count <= haystack.count else { return needle.isEmpty }
        for start in 0...(haystack.count - needle.count) where haystack[start] == needle[0] {
            if Array(haystack[start..<(start + needle.count)]) == needle { return true }
        }
        return false
    }

    /// The longest prefix of `needle` found consecutively in any source, for a helpful failure.
    static func longestMatchedPrefix(_ needle: [String], in sources: [(name: String, lines: [String])]) -> (Int, String) {
        var best = (0, "")
        for source in sources {
            for start in source.lines.indices {
                var length = 0
                while length < needle.count, start + length < source.lines.count,
                      source.lines[start + length] == needle[length] {
                    length += 1
                }
                if length > best.0 { best = (length, source.name) }
            }
        }
        return best
    }
}

@Suite("The DocC catalog")
struct CatalogTests {
    /// The only code-block languages a page may use besides `swift`: C headers, shell commands, and
    /// rare sketches that cannot compile here (a package manifest).
    static let uncheckedLanguages: Set<String> = ["c", "sh", "text", "swift-sketch"]

    @Test("every ```swift block of every page is compiled code of this target, verbatim")
    func swiftBlocksAreCompiled() throws {
        let pages = try Catalog.pages()
        #expect(pages.count >= 7, "the catalog was not found at \(DocPaths.catalog.path)")
        let sources = try Catalog.sampleSources()
        var checked = 0
        var sketches = 0
        for page in pages {
            for block in Catalog.codeBlocks(page: page.name, text: page.text) {
                if block.language == "swift-sketch" { sketches += 1 }
                guard block.language == "swift" else {
                    #expect(Self.uncheckedLanguages.contains(block.language), "unexpected language in \(block)")
                    continue
                }
                let needle = block.lines.map(Catalog.trim)
                let isEmpty = needle.allSatisfy { $0.isEmpty }
                #expect(!isEmpty, "empty block \(block)")
                if !sources.contains(where: { Catalog.contains($0.lines, needle) }) {
                    let (matched, file) = Catalog.longestMatchedPrefix(needle, in: sources)
                    Issue.record("""
                        \(block) is not in Tests/ConnPoolDocTests verbatim: the first \(matched) lines match \
                        \(file.isEmpty ? "nothing" : file), then the page has \
                        "\(matched < needle.count ? needle[matched] : "")"
                        """)
                }
                checked += 1
            }
        }
        #expect(checked >= 30, "only \(checked) swift blocks found")
        #expect(sketches <= 2, "sketches should stay rare: \(sketches)")
    }

    @Test("every page is curated from the landing page, and every <doc:> link names a page")
    func articlesAreLinked() throws {
        let pages = try Catalog.pages()
        let articles = pages.map { ($0.name as NSString).lastPathComponent }
            .filter { $0 != "ConnPool.md" }
            .map { String($0.dropLast(3)) }
        let landing = try #require(pages.first { $0.name == "ConnPool.md" }).text
        let extensionPages = pages.filter { $0.text.hasPrefix("# ``") }.map { ($0.name as NSString).lastPathComponent }
        for article in articles where !extensionPages.contains(article + ".md") {
            #expect(landing.contains("<doc:\(article)>"), "ConnPool.md does not curate \(article)")
        }
        let linkPattern = try Regex(#"<doc:([A-Za-z0-9_-]+)>"#)
        for page in pages {
            for match in page.text.matches(of: linkPattern) {
                let target = String(page.text[match.range].dropFirst(5).dropLast())
                #expect(articles.contains(target), "\(page.name) links to a missing page <doc:\(target)>")
            }
        }
    }

    @Test("CI needs no DocC: the manifest has no docc plugin and the CI scripts generate no documentation")
    func ciNeedsNoDocC() throws {
        // The catalog is checked here, from sources, on every `swift test`; building it with DocC is a
        // local step (the command is in a comment at the top of ConnPool.md), so CI stays as fast as
        // `swift build` and needs nothing beyond the toolchain.
        let root = DocPaths.packageRoot
        let manifest = try String(contentsOf: root.appendingPathComponent("Package.swift"), encoding: .utf8)
        #expect(!manifest.contains("swift-docc-plugin"), "Package.swift depends on the docc plugin")
        for script in [".ci/run", "Scripts/test.sh"] {
            let url = root.appendingPathComponent(script)
            guard let text = try? String(contentsOf: url, encoding: .utf8) else { continue }
            #expect(!text.contains("generate-documentation"), "\(script) generates documentation")
            #expect(!text.contains("docc "), "\(script) runs docc")
        }
    }

    /// Every public top-level type of ConnPool, written through the type so that a rename breaks this
    /// list at compile time.
    static let publicTypes: [String] = [
        String(describing: ConnectionPool<KVConnectionFactory>.self).prefix { $0 != "<" }.description,
        String(describing: ConnectionLease<KVConnectionFactory>.self).prefix { $0 != "<" }.description,
        String(describing: (any Connection).self).replacingOccurrences(of: "any ", with: ""),
        String(describing: (any ConnectionFactory).self).replacingOccurrences(of: "any ", with: ""),
        String(describing: PoolConfiguration.self),
        String(describing: PoolConfigurationError.self),
        String(describing: ConnectionPoolError.self),
        String(describing: ShutdownReport.self),
        String(describing: PoolMetrics.self),
        String(describing: PoolStatus.self),
        String(describing: CloseReason.self),
        String(describing: HistogramSnapshot.self),
        String(describing: PoolClock.self),
        String(describing: ManualClock.self),
        String(describing: BlockingOffload.self),
        String(describing: ReuseCondition.self),
        String(describing: (any ConnectErrorClassifying).self).replacingOccurrences(of: "any ", with: ""),
    ]

    @Test("the landing page curates every public type")
    func landingPageCuratesEveryType() throws {
        let landing = try #require(try Catalog.pages().first { $0.name == "ConnPool.md" }).text
        for type in Self.publicTypes {
            #expect(landing.contains("- ``\(type)``"), "ConnPool.md does not curate \(type)")
        }
    }

    @Test("the first component of every symbol link is a public type (DocC resolves the rest)")
    func symbolLinksNameKnownTypes() throws {
        let known = Set(Self.publicTypes + ["ConnPool"])
        let linkPattern = try Regex(#"``([^`]+)``"#)
        // Extension pages (`# ``ConnPool/Type```) link to members relative to their type.
        for page in try Catalog.pages() where !page.text.hasPrefix("# ``ConnPool/") {
            var inCode = false
            for line in page.text.components(separatedBy: "\n") {
                if line.trimmingCharacters(in: .whitespaces).hasPrefix("```") { inCode.toggle(); continue }
                if inCode { continue }
                for match in line.matches(of: linkPattern) {
                    let link = line[match.range].dropFirst(2).dropLast(2)
                    let head = String(link.prefix { $0 != "/" && $0 != "-" })
                    #expect(known.contains(head), "\(page.name): ``\(link)`` does not start with a ConnPool type")
                }
            }
        }
    }
}

@Suite("The backends' DocC catalogs")
struct ModuleCatalogTests {
    static let catalogs = ["Sources/ConnPoolRedis/ConnPoolRedis.docc", "Sources/ConnPoolTCP/ConnPoolTCP.docc"]

    @Test("every ```swift block of the Redis and TCP catalogs is compiled code of this target, verbatim", arguments: catalogs)
    func swiftBlocksAreCompiled(_ catalog: String) throws {
        let pages = try Catalog.pages(in: DocPaths.packageRoot.appendingPathComponent(catalog))
        #expect(!pages.isEmpty, "no pages in \(catalog)")
        let sources = try Catalog.sampleSources()
        for page in pages {
            for block in Catalog.codeBlocks(page: page.name, text: page.text) {
                guard block.language == "swift" else {
                    #expect(CatalogTests.uncheckedLanguages.contains(block.language), "unexpected language in \(block)")
                    continue
                }
                let needle = block.lines.map(Catalog.trim)
                if !sources.contains(where: { Catalog.contains($0.lines, needle) }) {
                    let (matched, file) = Catalog.longestMatchedPrefix(needle, in: sources)
                    Issue.record("\(block) is not in Tests/ConnPoolDocTests verbatim: the first \(matched) lines match \(file)")
                }
            }
        }
    }

    @Test("every article is curated from its module's landing page, and README.md links the catalog", arguments: catalogs)
    func articlesAreLinked(_ catalog: String) throws {
        let pages = try Catalog.pages(in: DocPaths.packageRoot.appendingPathComponent(catalog))
        let module = ((catalog as NSString).lastPathComponent as NSString).deletingPathExtension
        let landing = try #require(pages.first { $0.name == module + ".md" }).text
        for page in pages where page.name != module + ".md" {
            let article = String((page.name as NSString).lastPathComponent.dropLast(3))
            #expect(landing.contains("<doc:\(article)>"), "\(module).md does not curate \(article)")
        }
        let readme = try String(contentsOf: DocPaths.packageRoot.appendingPathComponent("README.md"), encoding: .utf8)
        #expect(readme.contains("(\(catalog)"), "README.md does not link \(catalog)")
    }
}
