import AgentChatCore
import Foundation

/// The viewer page's files, shipped with the package (`Sources/Broker/Web`) and read into memory at start-up.
struct StaticFiles {
    struct File {
        let body: [UInt8]
        let contentType: String
    }

    /// Every response of the page carries this policy: nothing from other hosts, no inline script or style.
    static let contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        + "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

    /// With Stripe configured the page loads Stripe.js for the Payment Element; Stripe's documented origins are
    /// allowed then, and only then.
    static let stripeContentSecurityPolicy = "default-src 'none'; script-src 'self' https://js.stripe.com; "
        + "style-src 'self'; img-src 'self' data: https://*.stripe.com; "
        + "connect-src 'self' https://api.stripe.com; frame-src https://js.stripe.com https://hooks.stripe.com; "
        + "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

    /// The policy every page response carries.
    var policy = StaticFiles.contentSecurityPolicy

    private(set) var files: [String: File] = [:]

    /// Loads every file of the bundled `Web` directory; `/` serves `index.html`.
    static func bundled() -> StaticFiles {
        load("Web") { name in name == "index.html" ? ["/" + name, "/"] : ["/" + name] }
    }

    /// The admin page's files (`Sources/Broker/Admin`), served under `/admin/` (`index.html` at `/admin`) only when an
    /// admin token is configured; with the viewer's strict policy, and never indexed (`AdminService.decorate`).
    static func admin() -> StaticFiles {
        load("Admin") { name in [name == "index.html" ? AdminService.pagePath : AdminService.pagePath + "/" + name] }
    }

    /// Every file of a bundled directory, at the paths `paths` gives for its name.
    private static func load(_ folder: String, paths: (String) -> [String]) -> StaticFiles {
        var result = StaticFiles()
        guard let directory = Bundle.module.url(forResource: folder, withExtension: nil),
            let names = try? FileManager.default.contentsOfDirectory(atPath: directory.path)
        else { return result }
        for name in names.sorted() where !name.hasPrefix(".") {
            guard let data = FileManager.default.contents(atPath: directory.appendingPathComponent(name).path) else {
                continue
            }
            let file = File(body: Array(data), contentType: contentType(of: name))
            for path in paths(name) { result.files[path] = file }
        }
        return result
    }

    static func contentType(of name: String) -> String {
        switch (name as NSString).pathExtension.lowercased() {
        case "html": "text/html; charset=utf-8"
        case "css": "text/css; charset=utf-8"
        case "js", "mjs": "text/javascript; charset=utf-8"
        case "svg": "image/svg+xml"
        case "png": "image/png"
        case "ico": "image/x-icon"
        case "json", "webmanifest": "application/json"
        case "txt": "text/plain; charset=utf-8"
        default: "application/octet-stream"
        }
    }

    func response(for path: String) -> HTTPResponse? {
        guard let file = files[path] else { return nil }
        var response = HTTPResponse(status: 200, contentType: file.contentType, body: file.body)
        // HTML is revalidated every time so a new release is picked up; the other files may be cached briefly.
        response.cacheControl = file.contentType.hasPrefix("text/html") ? "no-cache" : "public, max-age=300"
        response.extraHeaders = [
            ("Content-Security-Policy", policy), ("Referrer-Policy", "no-referrer"),
            ("X-Frame-Options", "DENY"), ("Cross-Origin-Opener-Policy", "same-origin"),
        ]
        return response
    }

    /// Every file's response, by path.
    var responses: [String: HTTPResponse] {
        Dictionary(uniqueKeysWithValues: files.keys.compactMap { path in response(for: path).map { (path, $0) } })
    }
}
