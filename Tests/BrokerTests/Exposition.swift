import Foundation
import TestSupport

/// A scrape of `/metrics`, parsed from the Prometheus text exposition format (version 0.0.4): `# TYPE` lines and
/// samples `name{label="value",...} number`. Parsing fails loudly on a line it does not understand.
struct Exposition {
    struct Sample: Equatable {
        let name: String
        let labels: [String: String]
        let value: Double
    }

    private(set) var samples: [Sample] = []
    /// Metric family name → type (`counter`, `gauge`, `histogram`, ...).
    private(set) var types: [String: String] = [:]

    enum ParseError: Error, CustomStringConvertible {
        case badLine(String)
        var description: String { if case .badLine(let line) = self { "cannot parse: \(line)" } else { "" } }
    }

    init(_ text: String) throws {
        for raw in text.split(separator: "\n", omittingEmptySubsequences: true) {
            let line = String(raw)
            if line.hasPrefix("# TYPE ") {
                let parts = line.split(separator: " ")
                guard parts.count == 4 else { throw ParseError.badLine(line) }
                types[String(parts[2])] = String(parts[3])
                continue
            }
            if line.hasPrefix("#") { continue }
            samples.append(try Self.sample(line))
        }
    }

    private static func sample(_ line: String) throws -> Sample {
        var rest = Substring(line)
        let nameEnd = rest.firstIndex { $0 == "{" || $0 == " " } ?? rest.endIndex
        let name = String(rest[..<nameEnd])
        guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" || $0 == ":" }) else {
            throw ParseError.badLine(line)
        }
        rest = rest[nameEnd...]
        var labels: [String: String] = [:]
        if rest.first == "{" {
            rest = rest.dropFirst()
            while rest.first != "}" {
                guard let equals = rest.firstIndex(of: "="), rest[rest.index(after: equals)] == "\"" else {
                    throw ParseError.badLine(line)
                }
                let key = String(rest[..<equals])
                rest = rest[rest.index(equals, offsetBy: 2)...]
                var value = ""
                while let character = rest.first, character != "\"" {
                    if character == "\\" {
                        rest = rest.dropFirst()
                        guard let escaped = rest.first else { throw ParseError.badLine(line) }
                        value.append(escaped == "n" ? "\n" : escaped)
                    } else {
                        value.append(character)
                    }
                    rest = rest.dropFirst()
                }
                guard rest.first == "\"" else { throw ParseError.badLine(line) }
                rest = rest.dropFirst()
                labels[key] = value
                if rest.first == "," { rest = rest.dropFirst() }
                guard !rest.isEmpty else { throw ParseError.badLine(line) }
            }
            rest = rest.dropFirst()
        }
        let fields = rest.split(separator: " ")
        guard let first = fields.first else { throw ParseError.badLine(line) }
        let text = String(first)
        let value: Double? = switch text {
        case "+Inf": .infinity
        case "-Inf": -.infinity
        case "NaN": .nan
        default: Double(text)
        }
        guard let value else { throw ParseError.badLine(line) }
        return Sample(name: name, labels: labels, value: value)
    }

    /// The value of the one sample of `name` with exactly these labels; nil when there is none.
    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        samples.first { $0.name == name && $0.labels == labels }?.value
    }

    /// The sum of every sample of `name` whose labels include `matching`.
    func sum(_ name: String, matching: [String: String] = [:]) -> Double {
        samples.filter { sample in
            sample.name == name && matching.allSatisfy { sample.labels[$0.key] == $0.value }
        }.reduce(0) { $0 + $1.value }
    }

    /// Every metric family name (histogram families once, without `_bucket`, `_sum`, `_count`).
    var familyNames: Set<String> { Set(types.keys) }

    /// Scrapes `/metrics` of the broker on `port`.
    static func scrape(port: Int) throws -> Exposition {
        let response = try HTTPProbe.request(port: port, method: "GET", path: "/metrics")
        guard response.status == 200 else { throw FixtureError.unexpected("/metrics answered \(response.status)") }
        return try Exposition(response.bodyText)
    }

    /// Scrapes until `condition` holds (or `timeout` passes: a safety net); returns the last scrape.
    static func scrape(port: Int, until condition: (Exposition) -> Bool, timeout: Double = 30) throws -> Exposition {
        let deadline = Date().addingTimeInterval(timeout)
        var last = try scrape(port: port)
        while !condition(last), Date() < deadline {
            Thread.sleep(forTimeInterval: 0.1)
            last = try scrape(port: port)
        }
        return last
    }
}
