import AgentChatCrypto
import AgentChatProtocol
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A fresh temporary directory, removed at the end of `body`.
func withTemporaryDirectory<R>(_ body: (String) throws -> R) throws -> R {
    var template = Array((NSTemporaryDirectory() + "/agentchat-keys-XXXXXX").utf8CString)
    let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    let root = String(cString: try #require(made))
    defer { try? FileManager.default.removeItem(atPath: root) }
    return try body(root)
}

func mode(of path: String) -> mode_t {
    var info = stat()
    precondition(stat(path, &info) == 0)
    return info.st_mode & 0o7777
}

@Suite struct SigningKeyStoreTests {
    static let t0: Int64 = 1_700_000_000_000  // Unix ms
    static let day: Int64 = 24 * 3600 * 1000

    @Test func createsTheDirectoryAndAFirstKeyWithOwnerOnlyModes() throws {
        try withTemporaryDirectory { root in
            let dir = root + "/keys"
            let store = try SigningKeyStore(directory: dir, now: Self.t0)
            #expect(mode(of: dir) == 0o700)
            let file = dir + "/" + store.active.keyID.rawValue + ".json"
            #expect(mode(of: file) == 0o600)
            let names = try FileManager.default.contentsOfDirectory(atPath: dir)
            #expect(names == [store.active.keyID.rawValue + ".json"])  // no temporary file left behind

            let json = try JSONParser.parse(Array(FileManager.default.contents(atPath: file)!))
            #expect(json["kid"]?.stringValue == store.active.keyID.rawValue)
            #expect(json["createdAt"]?.integerValue == Self.t0)
            #expect(json["retiredAt"] == .null)
            let seed = try #require(json["seed"]?.stringValue.flatMap(Base64URL.decode))
            #expect(try SigningKeyPair(seed: seed).publicKey == store.active.keyPair.publicKey)

            // Reopening loads the same key rather than making another.
            let again = try SigningKeyStore(directory: dir, now: Self.t0 + 1000)
            #expect(again.active.keyID == store.active.keyID)
            #expect(again.allEntries.count == 1)
        }
    }

    @Test func refusesKeyFilesReadableByOthers() throws {
        try withTemporaryDirectory { root in
            let dir = root + "/keys"
            let store = try SigningKeyStore(directory: dir, now: Self.t0)
            let file = dir + "/" + store.active.keyID.rawValue + ".json"
            #expect(chmod(file, 0o644) == 0)
            do {
                _ = try SigningKeyStore(directory: dir, now: Self.t0)
                Issue.record("a 0644 key file was accepted")
            } catch let error as KeyStoreError {
                #expect(error == .insecurePermissions)
                #expect(error.detail.contains(file))
                #expect(error.detail.contains("644"))
            } catch {
                Issue.record("unexpected error \(error)")
            }
            #expect(chmod(file, 0o640) == 0)
            #expect(throws: KeyStoreError.insecurePermissions) { try SigningKeyStore(directory: dir, now: Self.t0) }
            #expect(chmod(file, 0o600) == 0)
            _ = try SigningKeyStore(directory: dir, now: Self.t0)
            #expect(chmod(dir, 0o755) == 0)
            #expect(throws: KeyStoreError.insecurePermissions) { try SigningKeyStore(directory: dir, now: Self.t0) }
        }
    }

    @Test func refusesCorruptKeyFiles() throws {
        try withTemporaryDirectory { root in
            let dir = root + "/keys"
            let store = try SigningKeyStore(directory: dir, now: Self.t0)
            let file = dir + "/" + store.active.keyID.rawValue + ".json"
            // A valid file under another key's name: the kid no longer matches the seed.
            let other = SigningKeyPair()
            let text = "{\"createdAt\":1,\"kid\":\"\(store.active.keyID.rawValue)\",\"retiredAt\":null,\"seed\":\"\(Base64URL.encode(other.seed.copyBytes()))\"}"
            #expect(FileManager.default.createFile(atPath: file, contents: Data(text.utf8),
                                                   attributes: [.posixPermissions: 0o600]))
            #expect(throws: KeyStoreError.corruptKeyFile) { try SigningKeyStore(directory: dir, now: Self.t0) }
        }
    }

    @Test func rotationKeepsOldTokensVerifyingUntilRetentionEnds() throws {
        try withTemporaryDirectory { root in
            let dir = root + "/keys"
            let store = try SigningKeyStore(directory: dir, retention: Self.day, now: Self.t0)
            let verifier = JWSVerifier(keys: { kid in store.verificationKeys(now: Self.t0 + 3_600_000)[kid] })
            let agent = SigningKeyPair().did
            func claims() -> JWS.Claims {
                JWS.Claims(issuer: "broker", audience: "agentchat", subject: agent, now: Self.t0 / 1000,
                           lifetime: 7200)
            }
            func check(_ token: String) throws(JWSError) {
                _ = try verifier.verify(token, now: Self.t0 / 1000 + 60, expectedIssuer: "broker",
                                        expectedAudience: "agentchat")
            }

            let first = store.active
            let before = JWSSigner(key: first.keyPair).sign(claims())
            try check(before)

            let second = try store.rotate(now: Self.t0 + 1000)
            #expect(second.keyID != first.keyID)
            #expect(store.active.keyID == second.keyID)
            let after = JWSSigner(key: store.active.keyPair).sign(claims())
            #expect(after.split(separator: ".").first.map { b64(String($0)) }
                .map { String(decoding: $0, as: UTF8.self).contains(second.keyID.rawValue) } == true)
            try check(before)  // signed by the retired key: still verifies
            try check(after)

            // The retirement is on disk, and a reopened store agrees.
            let reopened = try SigningKeyStore(directory: dir, retention: Self.day, now: Self.t0 + 2000)
            #expect(reopened.active.keyID == second.keyID)
            #expect(reopened.allEntries.first { $0.keyID == first.keyID }?.retiredAt == Self.t0 + 1000)
            #expect(Set(reopened.verificationKeys(now: Self.t0 + 2000).keys) == [first.keyID, second.keyID])

            // After the retention the retired key stops verifying, and the next rotation deletes its file.
            let late = Self.t0 + 1000 + Self.day
            #expect(Set(store.verificationKeys(now: late - 1).keys) == [first.keyID, second.keyID])
            #expect(Set(store.verificationKeys(now: late).keys) == [second.keyID])
            let lateVerifier = JWSVerifier(keyRing: store.keyRing(now: late))
            #expect(throws: JWSError.unknownKeyID) {
                try lateVerifier.verify(before, now: Self.t0 / 1000 + 60, expectedIssuer: "broker",
                                        expectedAudience: "agentchat")
            }
            let third = try store.rotate(now: late)
            let names = Set(try FileManager.default.contentsOfDirectory(atPath: dir))
            #expect(names == [second.keyID.rawValue + ".json", third.keyID.rawValue + ".json"])
            for name in names { #expect(mode(of: dir + "/" + name) == 0o600) }
        }
    }

    @Test func entriesNeverPrintSeeds() throws {
        try withTemporaryDirectory { root in
            let store = try SigningKeyStore(directory: root + "/keys", now: Self.t0)
            let seed = Base64URL.encode(store.active.keyPair.seed.copyBytes())
            #expect(!String(describing: store.active).contains(seed))
            #expect(!String(reflecting: store.active).contains(seed))
        }
    }
}
