import AgentChatBroker
import Foundation

// `agentchat-broker ledger|backup|restore …` are operator tools; anything else runs the broker.
switch CommandLine.arguments.dropFirst().first {
case "ledger":
    let command = LedgerCommand.parseOrExit(Array(CommandLine.arguments.dropFirst(2)))
    do {
        try await command.export()
    } catch {
        LedgerCommand.exit(withError: error)
    }
case "backup":
    let command = BackupCommand.parseOrExit(Array(CommandLine.arguments.dropFirst(2)))
    do {
        try await command.backup()
    } catch {
        BackupCommand.exit(withError: error)
    }
case "restore":
    let command = RestoreCommand.parseOrExit(Array(CommandLine.arguments.dropFirst(2)))
    do {
        exit(try await command.restore())
    } catch {
        RestoreCommand.exit(withError: error)
    }
default:
    let command = BrokerCommand.parseOrExit()
    do {
        try await command.serve()
    } catch {
        BrokerCommand.exit(withError: error)
    }
}
