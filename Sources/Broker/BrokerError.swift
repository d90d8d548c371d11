/// Why the broker could not start or stopped.
enum BrokerError: Error, CustomStringConvertible {
    case listenFailed(host: String, port: Int)
    case invalidConfiguration(String)

    var description: String {
        switch self {
        case .listenFailed(let host, let port):
            "cannot listen on \(host):\(port) (address in use, or not an address of this machine?)"
        case .invalidConfiguration(let message):
            message
        }
    }
}
