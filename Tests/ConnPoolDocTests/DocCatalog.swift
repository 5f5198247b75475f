import Foundation

/// Where the DocC catalog and these doc-test sources live, found from this file's path.
enum DocPaths {
    /// `Tests/ConnPoolDocTests/`.
    static let testsDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    /// The package root.
    static let packageRoot = testsDirectory.deletingLastPathComponent().deletingLastPathComponent()
    /// `Sources/ConnPool/ConnPool.docc/`.
    static let catalog = packageRoot.appendingPathComponent("Sources/ConnPool/ConnPool.docc")
}
