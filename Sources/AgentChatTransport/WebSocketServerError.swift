/// Why the server could not start.
enum WebSocketServerError: Error, CustomStringConvertible {
    case listenFailed(host: String, port: Int)
    /// The TLS certificate or key cannot be read or used; says why.
    case tlsFailed(String)

    var description: String {
        switch self {
        case .listenFailed(let host, let port):
            "cannot listen on \(host):\(port) (address in use, or not an address of this machine?)"
        case .tlsFailed(let why):
            why
        }
    }
}
