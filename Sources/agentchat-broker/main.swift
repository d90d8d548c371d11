import AgentChatBroker

// `agentchat-broker ledger …` exports the peek ledger; anything else runs the broker.
if CommandLine.arguments.dropFirst().first == "ledger" {
    let command = LedgerCommand.parseOrExit(Array(CommandLine.arguments.dropFirst(2)))
    do {
        try await command.export()
    } catch {
        LedgerCommand.exit(withError: error)
    }
} else {
    let command = BrokerCommand.parseOrExit()
    do {
        try await command.serve()
    } catch {
        BrokerCommand.exit(withError: error)
    }
}
