import AgentChatProtocol
import Testing

/// The registration's signed bytes (one definition, `RegistrationRequest.signedBytes`) and the two profile fields
/// that carry the signature.
@Suite struct RegistrationSignatureTests {
    /// RFC 8037's Ed25519 public key, and an X25519 key of 32 bytes 0x02.
    static let signingKeyText = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    static let signingKey = Base64URL.decode(signingKeyText)!
    static let encryptionKey = [UInt8](repeating: 2, count: 32)
    static let encryptionKeyText = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI"
    static let signature = [UInt8](repeating: 7, count: 64)

    @Test(arguments: [
        ("alice", Int64(1_704_067_200_000)),
        ("Zoë 🤖", Int64(0)),
        ("two words", Int64(-5)),
    ])
    func signedBytesAreFiveLinesWithoutATrailingNewline(name: String, timestamp: Int64) {
        let expected = "agentchat-register-v1\n\(name)\n\(Self.signingKeyText)\n\(Self.encryptionKeyText)\n\(timestamp)"
        #expect(Base64URL.encode(Self.encryptionKey) == Self.encryptionKeyText)
        #expect(RegistrationRequest.signedBytes(name: name, signingKey: Self.signingKeyText,
                                                encryptionKey: Self.encryptionKeyText, timestamp: timestamp)
                == Array(expected.utf8))
        // From raw keys (profiles, member entries): the same bytes.
        #expect(RegistrationRequest.signedBytes(name: name, signingKey: Self.signingKey,
                                                encryptionKey: Self.encryptionKey, timestamp: timestamp)
                == Array(expected.utf8))
    }

    @Test func aParsedRequestSignsTheTextAsSentAndKeepsItsSignature() throws {
        let body = """
            {"name":"alice","signingKey":"\(Self.signingKeyText)","encryptionKey":"\(Self.encryptionKeyText)",\
            "timestamp":1704067200000,"signature":"\(Base64URL.encode(Self.signature))"}
            """
        let request = try RegistrationRequest.parse(Array(body.utf8))
        #expect(request.signedBytes == RegistrationRequest.signedBytes(
            name: "alice", signingKey: Self.signingKey, encryptionKey: Self.encryptionKey,
            timestamp: 1_704_067_200_000))
        #expect(request.selfSignature == RegistrationSignature(timestamp: 1_704_067_200_000, signature: Self.signature))
    }

    @Test func profilesAndMembersCarryTheSignatureAndItsBytes() throws {
        let registration = RegistrationSignature(timestamp: 1_704_067_200_000, signature: Self.signature)
        let profile = AgentProfile(name: "alice", signingKey: Self.signingKey, encryptionKey: Self.encryptionKey,
                                   registeredAt: 1_704_067_201_000, registration: registration)
        #expect(profile.json["registrationTimestamp"] == .number(1_704_067_200_000))
        #expect(profile.json["registrationSignature"] == .string(Base64URL.encode(Self.signature)))
        #expect(AgentProfile(json: profile.json) == profile)
        let signed = RegistrationRequest.signedBytes(name: "alice", signingKey: Self.signingKeyText,
                                                     encryptionKey: Self.encryptionKeyText,
                                                     timestamp: 1_704_067_200_000)
        #expect(profile.registrationSignedBytes == signed)

        let member = ChannelDescription.Member(did: profile.did, name: "alice", encryptionKey: Self.encryptionKey,
                                               registration: registration)
        #expect(member.registrationSignedBytes == signed)
        let description = ChannelDescription(
            id: ChannelID("ch_AAAAAAAAAAAAAAAAAAAAAA")!, name: "c", owner: profile.did, open: false, epoch: 1,
            keyedEpoch: 0, offset: 0, historyEpoch: "h", members: [member])
        #expect(ChannelDescription(json: description.json) == description)
        #expect(description.json["members"]?.arrayValue?.first?["registrationSignature"]
                == .string(Base64URL.encode(Self.signature)))
    }

    @Test func withoutASignatureTheFieldsAreAbsentAndNothingIsSigned() {
        let profile = AgentProfile(name: "old", signingKey: Self.signingKey, encryptionKey: Self.encryptionKey,
                                   registeredAt: 1)
        #expect(profile.json["registrationSignature"] == nil && profile.json["registrationTimestamp"] == nil)
        #expect(AgentProfile(json: profile.json)?.registration == nil)
        #expect(profile.registrationSignedBytes == nil)
    }

    /// Absent or malformed fields read as "no signature" (which the SDK refuses), never as a parse failure of the
    /// whole profile or description.
    @Test(arguments: [
        ("registrationTimestamp", nil),
        ("registrationSignature", nil),
        ("registrationSignature", JSONValue.string(Base64URL.encode([UInt8](repeating: 7, count: 63)))),
        ("registrationSignature", JSONValue.string(Base64URL.encode([UInt8](repeating: 7, count: 64)) + "==")),
        ("registrationSignature", JSONValue.number(1)),
        ("registrationTimestamp", JSONValue.string("1704067200000")),
        ("registrationTimestamp", JSONValue.number(1.5)),
    ] as [(String, JSONValue?)])
    func aMissingOrMalformedFieldMeansNoSignature(field: String, value: JSONValue?) throws {
        let registration = RegistrationSignature(timestamp: 1_704_067_200_000, signature: Self.signature)
        let profile = AgentProfile(name: "alice", signingKey: Self.signingKey, encryptionKey: Self.encryptionKey,
                                   registeredAt: 1, registration: registration)
        guard case .object(var fields) = profile.json else { Issue.record("not an object"); return }
        fields[field] = value
        let parsed = try #require(AgentProfile(json: .object(fields)))
        #expect(parsed.registration == nil)
        #expect(RegistrationSignature(fieldsOf: .object(fields)) == nil)
    }
}
