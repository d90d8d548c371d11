import AgentChatRedis
import Testing

@Suite struct SubscriptionStateMachineTests {
    typealias Machine = SubscriptionStateMachine<String>

    @Test func firstSubscriberSubscribesLastUnsubscribes() {
        var machine = Machine()
        _ = machine.connected()
        #expect(machine.addSubscriber(to: "a") == .subscribe("a"))
        #expect(machine.addSubscriber(to: "a") == .none)
        #expect(machine.subscriberCount(of: "a") == 2)
        #expect(machine.removeSubscriber(from: "a") == .none)
        #expect(machine.removeSubscriber(from: "a") == .unsubscribe("a"))
        #expect(machine.subscriberCount(of: "a") == 0)
        #expect(machine.removeSubscriber(from: "a") == .none)
    }

    @Test func nothingIsSentWhileDisconnectedEverythingOnConnect() {
        var machine = Machine()
        #expect(machine.addSubscriber(to: "a") == .none)
        #expect(machine.addSubscriber(to: "b") == .none)
        #expect(machine.addSubscriber(to: "c") == .none)
        #expect(machine.removeSubscriber(from: "c") == .none)
        #expect(Set(machine.connected()) == ["a", "b"])
    }

    @Test func reconnectResubscribesAndForgetsConfirmations() {
        var machine = Machine()
        _ = machine.connected()
        #expect(machine.addSubscriber(to: "a") == .subscribe("a"))
        machine.subscribeConfirmed("a")
        #expect(machine.isActive("a"))
        machine.disconnected()
        #expect(!machine.isActive("a"))
        #expect(machine.removeSubscriber(from: "a") == .none)  // server already forgot it
        #expect(machine.addSubscriber(to: "a") == .none)
        #expect(machine.addSubscriber(to: "b") == .none)
        #expect(Set(machine.connected()) == ["a", "b"])
        machine.subscribeConfirmed("a")
        #expect(machine.isActive("a"))
        #expect(!machine.isActive("b"))
    }

    @Test func quickUnsubscribeResubscribeFollowsReplyOrder() {
        var machine = Machine()
        _ = machine.connected()
        #expect(machine.addSubscriber(to: "a") == .subscribe("a"))
        #expect(machine.removeSubscriber(from: "a") == .unsubscribe("a"))
        #expect(machine.addSubscriber(to: "a") == .subscribe("a"))
        // Replies arrive in command order.
        machine.subscribeConfirmed("a")
        #expect(machine.isActive("a"))
        machine.unsubscribeConfirmed("a")
        #expect(!machine.isActive("a"))
        machine.subscribeConfirmed("a")
        #expect(machine.isActive("a"))
    }

    @Test func confirmationsForForgottenChannelsAreIgnored() {
        var machine = Machine()
        _ = machine.connected()
        #expect(machine.addSubscriber(to: "a") == .subscribe("a"))
        #expect(machine.removeSubscriber(from: "a") == .unsubscribe("a"))
        machine.subscribeConfirmed("a")
        machine.unsubscribeConfirmed("a")
        #expect(!machine.isActive("a"))
        #expect(machine.channels.isEmpty)
    }
}
