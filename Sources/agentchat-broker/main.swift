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
        FileHandle.standardError.write(Data("agentchat-broker backup: \(error)\n".utf8))
        exit(1)
    }
case "restore":
    let command = RestoreCommand.parseOrExit(Array(CommandLine.arguments.dropFirst(2)))
    do {
        exit(try await command.restore())
    } catch {
        FileHandle.standardError.write(Data("agentchat-broker restore: \(error)\n".utf8))
        exit(1)
    }
default:
    let command = BrokerCommand.parseOrExit()
    do {
        try await command.serve()
    } catch {
        BrokerCommand.exit(withError: error)
    }
}
