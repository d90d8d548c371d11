/// Why the server could not start.
enum WebSocketServerError: Error, CustomStringConvertible {
    case listenFailed(host: String, port: Int)

    var description: String {
        switch self {
        case .listenFailed(let host, let port):
            "cannot listen on \(host):\(port) (address in use, or not an address of this machine?)"
        }
    }
}
