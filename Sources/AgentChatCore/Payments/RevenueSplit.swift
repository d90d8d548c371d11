import AgentChatProtocol

/// How a captured amount is shared, in integer cents, so that the shares always sum exactly to the capture.
///
/// The rule: the members' part is 70% rounded down (`amount * 70 / 100`); the platform takes the rest (so the
/// platform's 30% absorbs the rounding of the 30/70 split). The members' part is divided equally among the
/// channel's members at capture time; the cents left over (fewer than the number of members) go one each to the
/// members whose DIDs sort first, bytewise. 500 cents among 3 members: platform 150, members 117, 117, 116.
package struct RevenueSplit: Equatable, Sendable {
    package static let platformPercent: Int64 = 30
    package static let membersPercent: Int64 = 100 - platformPercent

    package let amount: Int64
    package let platform: Int64
    /// Bytewise DID order.
    package let shares: [(did: DID, cents: Int64)]

    package init(amount: Int64, members: [DID]) {
        precondition(amount >= 0, "a capture is not negative")
        let ordered = Array(Set(members)).sorted { Array($0.description.utf8).lexicographicallyPrecedes($1.description.utf8) }
        self.amount = amount
        guard !ordered.isEmpty else {
            platform = amount  // nobody to share with: the platform keeps all (a channel always has a member)
            shares = []
            return
        }
        let membersPart = amount * Self.membersPercent / 100
        let each = membersPart / Int64(ordered.count)
        let remainder = membersPart % Int64(ordered.count)
        platform = amount - membersPart
        shares = ordered.enumerated().map { index, did in (did, each + (Int64(index) < remainder ? 1 : 0)) }
    }

    package static func == (a: RevenueSplit, b: RevenueSplit) -> Bool {
        a.amount == b.amount && a.platform == b.platform
            && a.shares.elementsEqual(b.shares) { $0.did == $1.did && $0.cents == $1.cents }
    }
}
