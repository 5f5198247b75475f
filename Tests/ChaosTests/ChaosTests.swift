import ConnPoolChaos
import Testing

@Suite("ChaosTests")
struct ChaosTests {
    @Test("fault kinds parse")
    func faultKindsParse() {
        #expect(FaultKind.parseList("all") == FaultKind.allCases)
        #expect(FaultKind.parseList("kill, stop") == [.kill, .stop])
        #expect(FaultKind.parseList("nope") == nil)
    }
}
