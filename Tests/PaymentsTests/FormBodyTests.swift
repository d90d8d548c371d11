import AgentChatPayments
import Testing

struct FormBodyTests {
    @Test func stripeBracketSyntax() {
        var form = FormBody()
        form.add("amount", "500")
        form.add("payment_method_types", "", "card")
        form.add("metadata", dictionary: ["peek": "pk_1", "buyer": "did:key:z6Mk"])
        #expect(form.encoded
            == "amount=500&payment_method_types[]=card&metadata[buyer]=did%3Akey%3Az6Mk&metadata[peek]=pk_1")
    }

    @Test func reservedCharactersAreEscapedInNamesAndValues() {
        var form = FormBody()
        form.add("metadata", "a]b[c", "x&y=z+w [1]")
        form.add("note", "50% off/ü ~._-")
        // Brackets inside a name part are data, so escaped; only the joining brackets stay literal.
        #expect(form.encoded == "metadata[a%5Db%5Bc]=x%26y%3Dz%2Bw%20%5B1%5D&note=50%25%20off%2F%C3%BC%20~._-")
    }

    @Test func dictionaryOrderIsStable() {
        var one = FormBody()
        one.add("metadata", dictionary: ["b": "2", "a": "1", "B": "3", "ab": "4"])
        var two = FormBody()
        two.add("metadata", dictionary: ["ab": "4", "B": "3", "a": "1", "b": "2"])
        #expect(one.encoded == two.encoded)
        #expect(one.encoded == "metadata[B]=3&metadata[a]=1&metadata[ab]=4&metadata[b]=2")
        #expect(FormBody().encoded == "")
        #expect(FormBody.percentEncode("") == "")
    }
}
