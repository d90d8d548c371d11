import AgentChatProtocol

extension AgentProfile {
    /// Reads a profile from the broker (registration answer, `welcome`), refusing one whose DID is not the DID of
    /// its signing key.
    public init(validating json: JSONValue) throws(AgentChatError) {
        guard json.objectValue != nil else { throw .protocolViolation("profile is not a JSON object") }
        guard let profile = AgentProfile(json: json) else {
            throw .protocolViolation("profile is missing a field, or its DID does not match its signing key")
        }
        self = profile
    }
}
