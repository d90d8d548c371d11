import AgentChatBroker

let command = BrokerCommand.parseOrExit()
do {
    try await command.serve()
} catch {
    BrokerCommand.exit(withError: error)
}
