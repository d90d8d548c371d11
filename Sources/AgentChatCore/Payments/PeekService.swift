import AgentChatCrypto
import AgentChatProtocol
import Logging

/// Tells every broker that a peek changed (the key only; each broker reads the peek itself).
package protocol PeekNotifier: AnyObject {
    /// `handler` runs for every change published by any broker, this one included.
    func listen(_ handler: @escaping (PeekKey) -> Void)
    func publish(_ key: PeekKey)
}

/// Paid peeks: viewers' requests, members' refusals and grants, payment webhooks, timers. Loop-bound.
///
/// Every change to a peek is `PeekStateMachine.apply` on the stored record, written back only if its version did
/// not move (`PeekStoring.update`), so that of several brokers acting on one peek exactly one wins; the loser reads
/// the peek again and re-applies its event, which then usually changes nothing. After a write the service publishes
/// the peek's key (`PeekNotifier`), and each broker tells its own viewers and members; then it performs the
/// actions (payment calls). Payment calls carry idempotency keys derived from the peek, and `capturing` and
/// `cancelling` keep a retry timer, so a broker that dies mid-call leaves the same call to another broker.
final class PeekService {
    struct Configuration {
        var terms = PeekTerms()
        /// Stripe webhook signing secrets (`whsec_…`; two during a rotation).
        var webhookSecrets: [String] = []
        /// How often every broker claims due timers.
        var sweepMilliseconds: UInt64 = 250
        /// How long a claimed timer stays claimed (then another broker may take it).
        var leaseMilliseconds: Int64 = 30_000
        /// Messages of recent history an active peek starts with.
        var historyMessages: Int64 = 50
        /// Peek requests per minute per viewer address.
        var requestsPerMinute = 10
    }

    static let webhookPath = "/api/v1/payments/stripe/webhook"
    /// Event ids are remembered this long (Stripe retries for up to three days).
    static let eventMemorySeconds: Int64 = 4 * 24 * 3600

    private let configuration: Configuration
    private let machine: PeekStateMachine
    private let clock: any BrokerClock
    private let store: any PeekStoring
    private let notifier: any PeekNotifier
    private let gateway: any PaymentGateway
    private let channels: any ChannelStoring
    private let indicators: any IndicatorStoring
    private let rateLimits: any RateLimiting
    private let delivery: ChannelDelivery
    private let outbox: Outbox
    private let logger: Logger
    private let signature: StripeWebhookSignature
    private var sweepTimer: (any BrokerTimer)?
    private var sweeping = false
    /// Viewer connections following a peek.
    private var viewers: [PeekKey: [UInt64: Session]] = [:]
    /// Logged-in agents' connections on this broker.
    private var agents: [DID: [UInt64: Session]] = [:]

    init(configuration: Configuration, clock: any BrokerClock, store: any PeekStoring, notifier: any PeekNotifier,
         gateway: any PaymentGateway, stores: Stores, delivery: ChannelDelivery, outbox: Outbox, logger: Logger)
    {
        self.configuration = configuration
        machine = PeekStateMachine(terms: configuration.terms)
        self.clock = clock
        self.store = store
        self.notifier = notifier
        self.gateway = gateway
        channels = stores.channels
        indicators = stores.indicators
        rateLimits = stores.rateLimits
        self.delivery = delivery
        self.outbox = outbox
        self.logger = logger
        signature = StripeWebhookSignature(secrets: configuration.webhookSecrets)
        notifier.listen { [weak self] key in self?.changed(key) }
        sweepTimer = clock.makeTimer { [weak self] in self?.sweep() }
        sweepTimer?.start(after: configuration.sweepMilliseconds, repeat: configuration.sweepMilliseconds)
    }

    func stop() { sweepTimer = nil }

    // MARK: Connections

    func agentAuthenticated(_ session: Session, did: DID) {
        agents[did, default: [:]][session.id] = session
        // Peeks already pending or waiting for a grant in the agent's channels.
        // `session` is held until the answers, not referenced weakly: a weak reference would give every logged-in
        // connection a side table for its whole life (see FrameRouter.authenticate).
        channels.channels(of: did) { [weak self] result in
            guard let self, session.isOpen, case .success(let ids) = result else { return }
            store.openPeeks(in: ids) { [weak self] result in
                guard let self, session.isOpen, case .success(let peeks) = result else { return }
                for peek in peeks where peek.phase == .pending || peek.phase == .awaitingGrant {
                    outbox.send(.peekUpdate(view(peek, forViewer: false)), to: session)
                }
            }
        }
    }

    func sessionClosed(_ session: Session) {
        if let did = session.authenticatedDID {
            agents[did]?[session.id] = nil
            if agents[did]?.isEmpty == true { agents[did] = nil }
        }
        for key in session.peeks {
            viewers[key]?[session.id] = nil
            if viewers[key]?.isEmpty == true { viewers[key] = nil }
        }
    }

    // MARK: Requests

    func handle(_ request: PeekRequest, id: String?, from session: Session) {
        let reply: (ServerFrame) -> Void = { [outbox, weak session] frame in
            guard let session else { return }
            outbox.send(frame, to: session)
        }
        let refuse: (ProtocolError) -> Void = { reply(.error($0, ref: id)) }
        switch request {
        case .request(let channel, let viewerKey):
            start(channel: channel, viewerKey: viewerKey, session: session, reply: { reply(.peek(ref: id, $0)) },
                  refuse: refuse)
        case .confirm(let channel, let peek, let token):
            withViewerPeek(PeekKey(channel: channel, id: peek), token: token, refuse: refuse) { [self] stored in
                attach(session, to: stored.record)
                confirm(stored.record) { [self] in
                    load(PeekKey(channel: channel, id: peek), refuse: refuse) { [self] stored in
                        reply(.peek(ref: id, view(stored, forViewer: true)))
                        // Active already (confirmed before, from another connection): no change will start the
                        // messages for this connection, so the answer does, as for `peek.status`.
                        if stored.record.phase == .active { startReading(session, stored.record) }
                    }
                }
            }
        case .status(let channel, let peek, let token):
            withViewerPeek(PeekKey(channel: channel, id: peek), token: token, refuse: refuse) { [self] stored in
                attach(session, to: stored.record)
                reply(.peek(ref: id, view(stored, forViewer: true)))
                if stored.record.phase == .active { startReading(session, stored.record) }
            }
        case .refuse(let channel, let peek):
            guard let did = session.authenticatedDID else { return refuse(ProtocolError(.notAuthenticated, "log in")) }
            requireMember(did, of: channel, refuse: refuse) { [self] in
                apply(.refuse(did), to: PeekKey(channel: channel, id: peek)) { result in
                    switch result {
                    case .success: reply(.ok(ref: id))
                    case .failure(let error): refuse(error)
                    }
                }
            }
        case .grant(let channel, let peek, let grant):
            guard let did = session.authenticatedDID else { return refuse(ProtocolError(.notAuthenticated, "log in")) }
            let key = PeekKey(channel: channel, id: peek)
            requireMember(did, of: channel, refuse: refuse) { [self] in
                acceptGrant(grant, from: did, for: key, refuse: refuse) { reply(.ok(ref: id)) }
            }
        case .earnings(let limit):
            guard let did = session.authenticatedDID else { return refuse(ProtocolError(.notAuthenticated, "log in")) }
            store.earnings(of: did, limit: limit) { result in
                switch result {
                case .failure(let failure): refuse(ProtocolError(failure))
                case .success(let (balance, entries)):
                    reply(.earnings(ref: id, balanceCents: balance, entries: entries.map {
                        EarningsEntry(channel: $0.channel, peek: $0.peek, cents: $0.cents, time: $0.time)
                    }))
                }
            }
        }
    }

    private func start(channel: ChannelID, viewerKey: [UInt8], session: Session,
                       reply: @escaping (PeekView) -> Void, refuse: @escaping (ProtocolError) -> Void)
    {
        indicators.indicators(channel, now: clock.unixMilliseconds) { [self] result in
            switch result {
            case .failure(let failure): return refuse(ProtocolError(failure))
            case .success(nil): return refuse(ProtocolError(.notFound, "\(channel) is not a listed channel"))
            case .success: break
            }
            rateLimits.take("peek", client: session.remoteAddress, perMinute: configuration.requestsPerMinute,
                            burst: configuration.requestsPerMinute) { [self] result in
                switch result {
                case .failure(let failure): return refuse(ProtocolError(failure))
                case .success(.limited): return refuse(ProtocolError(.rateLimited, "too many peek requests"))
                case .success(.allowed): break
                }
                let id = "pk_" + Base64URL.encode(SecureRandom.bytes(16))
                gateway.createPaymentIntent(
                    amount: configuration.terms.priceCents, idempotencyKey: PeekRecord.createKey(id),
                    metadata: ["peek": id, "channel": channel.rawValue]
                ) { [self] result in
                    let intent: PaymentIntent
                    switch result {
                    case .failure(let error):
                        logger.warning("could not create a PaymentIntent", metadata: ["error": "\(error)"])
                        return refuse(ProtocolError(.paymentUnavailable, "payments are unavailable; try again"))
                    case .success(let created): intent = created
                    }
                    let token = Base64URL.encode(SecureRandom.bytes(24))
                    let record = PeekRecord(id: id, channel: channel, viewerKey: Base64URL.encode(viewerKey),
                                            paymentIntent: intent.id, createdAt: clock.unixMilliseconds,
                                            terms: configuration.terms)
                    let key = PeekKey(channel: channel, id: id)
                    if let deadline = record.deadline { store.schedule(key, at: deadline) }
                    store.create(StoredPeek(record: record, tokenHash: Hash.sha256(Array(token.utf8)))) { [self] result in
                        if case .failure(let failure) = result { return refuse(ProtocolError(failure)) }
                        outbox.metrics.peek("requested")
                        attach(session, to: record)
                        var view = view(record, forViewer: true)
                        view.token = token
                        view.clientSecret = intent.clientSecret
                        reply(view)
                    }
                }
            }
        }
    }

    /// The viewer says it confirmed: in the sandbox that is the authorisation itself; with Stripe the broker reads
    /// the PaymentIntent (the webhook may be late or missing).
    private func confirm(_ peek: PeekRecord, then next: @escaping () -> Void) {
        guard peek.phase == .awaitingPayment else { return next() }
        let check: (Result<PaymentIntent, PaymentError>) -> Void = { [self] result in
            guard case .success(let intent) = result, intent.isAuthorized else { return next() }
            apply(.authorized, to: PeekKey(channel: peek.channel, id: peek.id)) { _ in next() }
        }
        if let sandbox = gateway as? SandboxPaymentGateway {
            sandbox.authorize(peek.paymentIntent, completion: check)
        } else {
            gateway.retrieve(peek.paymentIntent, completion: check)
        }
    }

    private func acceptGrant(_ grant: PeekGrant, from did: DID, for key: PeekKey,
                             refuse: @escaping (ProtocolError) -> Void, done: @escaping () -> Void)
    {
        load(key, refuse: refuse) { [self] stored in
            let peek = stored.record
            guard peek.phase == .awaitingGrant else {
                return refuse(ProtocolError(.peekNotGrantable, "this peek takes no grant now (\(peek.phase.rawValue))"))
            }
            guard grant.sender == did, let viewerKey = Base64URL.decode(peek.viewerKey),
                SigningKeyPair.verify(
                    signature: grant.signature,
                    message: PeekGrant.signedBytes(channel: key.channel, peek: key.id, viewerKey: viewerKey,
                                                   epoch: grant.epoch, ephemeralKey: grant.ephemeralKey,
                                                   nonce: grant.nonce, ciphertext: grant.ciphertext),
                    publicKey: did.signingKey)
            else { return refuse(ProtocolError(.invalidField, "the grant is not signed by you for this peek")) }
            store.storeGrant(key, grant: JSONWriter.encode(grant.json)) { [self] result in
                switch result {
                case .failure(let failure): refuse(ProtocolError(failure))
                case .success:
                    // A second grant is acknowledged and ignored: the first is the one delivered.
                    apply(.grant(did), to: key) { result in
                        switch result {
                        case .success: done()
                        case .failure(let error) where error.code == .peekNotGrantable: done()
                        case .failure(let error): refuse(error)
                        }
                    }
                }
            }
        }
    }

    // MARK: Webhooks

    /// `POST /api/v1/payments/stripe/webhook`: Stripe's signature, then the event applied at most once.
    func webhook(_ request: HTTPRequest, respond: @escaping (HTTPResponse) -> Void) {
        do {
            try signature.verify(header: request.headers["stripe-signature"], body: request.body,
                                 now: clock.unixMilliseconds / 1000)
        } catch {
            logger.notice("webhook refused", metadata: ["reason": "\(error.rawValue)"])
            return respond(.error(400, .badSignature, "the Stripe-Signature does not verify (\(error.rawValue))"))
        }
        guard let event = try? JSONParser.parse(request.body), let eventID = event["id"]?.stringValue,
            eventID.utf8.count <= 255, let type = event["type"]?.stringValue
        else { return respond(.error(400, .invalidField, "not a Stripe event")) }
        let object = event["data"]?["object"]
        guard let object, let intentID = object["id"]?.stringValue,
            let key = object["metadata"]?["peek"]?.stringValue.flatMap({ peek in
                object["metadata"]?["channel"]?.stringValue.flatMap(ChannelID.init).map {
                    PeekKey(channel: $0, id: peek)
                }
            }), PeekKey.isValidID(key.id)
        else { return respond(.json(200, ["received": true, "ignored": "not a peek's PaymentIntent"])) }
        let peekEvent: PeekEvent?
        switch type {
        case "payment_intent.amount_capturable_updated":
            peekEvent = object["status"]?.stringValue == "requires_capture" ? .authorized : nil
        case "payment_intent.canceled": peekEvent = .cancelled
        case "payment_intent.succeeded":
            peekEvent = object["amount_received"]?.integerValue.map { .captured(cents: $0) }
        default: peekEvent = nil
        }
        guard let peekEvent else { return respond(.json(200, ["received": true, "ignored": .string(type)])) }
        store.firstDelivery(ofEvent: eventID, ttlSeconds: Self.eventMemorySeconds) { [self] result in
            switch result {
            case .failure: return respond(.error(503, ProtocolError(StoreFailure.unavailable)))
            case .success(false): return respond(.json(200, ["received": true, "duplicate": true]))
            case .success(true): break
            }
            logger.debug("webhook", metadata: ["event": "\(eventID)", "type": "\(type)", "intent": "\(intentID)"])
            apply(peekEvent, to: key) { _ in }
            respond(.json(200, ["received": true]))
        }
    }

    // MARK: The lifecycle

    /// Reads the peek, applies `event`, writes it back if it changed (retrying on a lost race), then publishes the
    /// change and performs the actions. `completion` gets the rejection, if the event was refused.
    private func apply(_ event: PeekEvent, to key: PeekKey, attempt: Int = 1,
                       completion: @escaping (Result<Void, ProtocolError>) -> Void)
    {
        store.load(key) { [self] result in
            let stored: StoredPeek
            switch result {
            case .failure(let failure): return completion(.failure(ProtocolError(failure)))
            case .success(nil): return completion(.failure(ProtocolError(.notFound, "no such peek")))
            case .success(let found?): stored = found
            }
            var peek = stored.record
            let before = peek
            let now = clock.unixMilliseconds
            let actions: [PeekAction]
            do throws(PeekRejection) {
                actions = try machine.apply(event, to: &peek, now: now)
            } catch {
                let code: ErrorCode = error == .notRefusable ? .peekNotRefusable : .peekNotGrantable
                return completion(.failure(ProtocolError(code, "not possible while the peek is \(before.phase.rawValue)")))
            }
            if event == .timerDue, peek == before {
                // A timer for a deadline that moved, or a final peek: put it where it belongs.
                if let deadline = peek.deadline, !peek.phase.isFinal { store.schedule(key, at: deadline) }
                else { store.unschedule(key) }
                return completion(.success(()))
            }
            guard peek != before else { return completion(.success(())) }
            settlement(for: actions, peek: peek) { [self] settlement in
                if let deadline = peek.deadline { store.schedule(key, at: deadline) }
                store.update(peek, expectedVersion: before.version, settlement: settlement, now: now) { [self] result in
                    switch result {
                    case .failure(let failure):
                        completion(.failure(ProtocolError(failure)))
                    case .success(false):
                        // Another broker changed the peek first: apply the event to what it wrote.
                        guard attempt < 5 else {
                            return completion(.failure(ProtocolError(StoreFailure.unavailable)))
                        }
                        apply(event, to: key, attempt: attempt + 1, completion: completion)
                    case .success(true):
                        if peek.phase.isFinal { store.unschedule(key) }
                        count(peek, settlement: settlement)
                        notifier.publish(key)
                        perform(actions, peek: peek)
                        completion(.success(()))
                    }
                }
            }
        }
    }

    /// Metrics of a transition that was written (once, by the broker that wrote it).
    private func count(_ peek: PeekRecord, settlement: PeekSettlement?) {
        let metrics = outbox.metrics
        switch peek.phase {
        case .pending: metrics.peek("authorized")
        case .active: metrics.peek("granted")
        case .refused, .cancelled, .failed, .ended: metrics.peek(peek.phase.rawValue)
        default: break
        }
        switch settlement {
        case .capture(let split, let released, _)?:
            metrics.peekCents("captured", split.amount)
            metrics.peekCents("released", released)
            metrics.peekCents("platform", split.platform)
            metrics.peekCents("members", split.amount - split.platform)
        case .cancellation(let released, _)?:
            metrics.peekCents("cancelled", released)
        case nil:
            break
        }
    }

    /// The ledger entries of a capture need the channel's members at capture time.
    private func settlement(for actions: [PeekAction], peek: PeekRecord,
                            completion: @escaping (PeekSettlement?) -> Void)
    {
        for action in actions {
            switch action {
            case .settle(let captured, let released):
                return channels.record(peek.channel) { result in
                    let members = (try? result.get())?.members ?? []
                    completion(.capture(split: RevenueSplit(amount: captured, members: members),
                                        releasedCents: released, paymentIntent: peek.paymentIntent))
                }
            case .recordCancellation(let released):
                return completion(.cancellation(releasedCents: released, paymentIntent: peek.paymentIntent))
            default:
                continue
            }
        }
        completion(nil)
    }

    private func perform(_ actions: [PeekAction], peek: PeekRecord) {
        let key = PeekKey(channel: peek.channel, id: peek.id)
        for action in actions {
            switch action {
            case .capture(let cents, let idempotencyKey):
                gateway.capture(peek.paymentIntent, amount: cents, idempotencyKey: idempotencyKey) { [self] result in
                    switch result {
                    case .success(let intent) where intent.status == "succeeded":
                        apply(.captured(cents: intent.amountReceived), to: key) { _ in }
                    case .success(let intent) where intent.status == "canceled":
                        apply(.cancelled, to: key) { _ in }
                    case .success(let intent):
                        apply(.paymentFailed(permanent: false, reason: intent.status), to: key) { _ in }
                    case .failure(let error):
                        logger.warning("capture failed", metadata: ["peek": "\(peek.id)", "error": "\(error)"])
                        apply(.paymentFailed(permanent: error.isPermanent, reason: "\(error)"), to: key) { _ in }
                    }
                }
            case .cancel(let idempotencyKey):
                gateway.cancel(peek.paymentIntent, idempotencyKey: idempotencyKey) { [self] result in
                    switch result {
                    case .success(let intent) where intent.status == "canceled":
                        apply(.cancelled, to: key) { _ in }
                    case .success(let intent):
                        apply(.paymentFailed(permanent: intent.status == "succeeded", reason: intent.status),
                              to: key) { _ in }
                    case .failure(let error):
                        logger.warning("cancel failed", metadata: ["peek": "\(peek.id)", "error": "\(error)"])
                        apply(.paymentFailed(permanent: error.isPermanent, reason: "\(error)"), to: key) { _ in }
                    }
                }
            case .settle, .recordCancellation, .announce:
                continue
            }
        }
    }

    /// Every broker claims due timers; each claimed one is applied once.
    private func sweep() {
        guard !sweeping else { return }
        sweeping = true
        store.claimDue(now: clock.unixMilliseconds, leaseMilliseconds: configuration.leaseMilliseconds, limit: 100) {
            [self] result in
            sweeping = false
            guard case .success(let keys) = result else { return }
            for key in keys { apply(.timerDue, to: key) { _ in } }
        }
    }

    // MARK: Telling viewers and members

    /// A peek changed (on any broker): tell this broker's viewers of it and the channel's members connected here.
    private func changed(_ key: PeekKey) {
        let local = viewers[key] ?? [:]
        store.load(key) { [self] result in
            guard case .success(let stored?) = result else { return }
            let peek = stored.record
            for session in local.values {
                outbox.send(.peek(ref: nil, view(stored, forViewer: true)), to: session)
                if peek.phase == .active { startReading(session, peek) }
                if peek.phase.isFinal { delivery.unsubscribe(session, from: peek.channel) }
            }
            guard !agents.isEmpty else { return }
            channels.record(peek.channel) { [self] result in
                guard case .success(let record?) = result else { return }
                let frame = OutboundFrame(outbox.codec.encode(.peekUpdate(view(peek, forViewer: false))))
                let sessions = record.members.flatMap { agents[$0].map { Array($0.values) } ?? [] }
                outbox.broadcast(frame, type: .peekUpdate, to: sessions)
            }
        }
    }

    /// An active peek's viewer gets the recent history and the live messages of the channel.
    private func startReading(_ session: Session, _ peek: PeekRecord) {
        guard !session.channels.contains(peek.channel) else { return }
        channels.record(peek.channel) { [self, weak session] result in
            guard let session, session.isOpen, !session.channels.contains(peek.channel),
                case .success(let record?) = result
            else { return }
            delivery.subscribe(session, did: nil, to: peek.channel,
                               after: max(0, record.offset - configuration.historyMessages))
        }
    }

    private func attach(_ session: Session, to peek: PeekRecord) {
        let key = PeekKey(channel: peek.channel, id: peek.id)
        viewers[key, default: [:]][session.id] = session
        session.peeks.insert(key)
    }

    private func view(_ stored: StoredPeek, forViewer: Bool) -> PeekView {
        var view = view(stored.record, forViewer: forViewer)
        if forViewer, stored.record.phase == .active || stored.record.phase == .ended, let grant = stored.grant,
            let json = try? JSONParser.parse(grant)
        {
            view.grant = PeekGrant(json: json)
        }
        return view
    }

    private func view(_ peek: PeekRecord, forViewer: Bool) -> PeekView {
        PeekView(id: peek.id, channel: peek.channel, phase: peek.phase.rawValue,
                 deadline: peek.phase == .active ? peek.activeUntil : peek.deadline,
                 priceCents: configuration.terms.priceCents, refusalFeeCents: configuration.terms.refusalFeeCents,
                 capturedCents: [.refused, .active, .ended].contains(peek.phase) ? peek.captureCents : 0,
                 viewerKey: Base64URL.decode(peek.viewerKey) ?? [], sandbox: gateway.isSandbox, reason: peek.reason,
                 publishableKey: forViewer ? gateway.publishableKey : nil)
    }

    // MARK: Helpers

    private func load(_ key: PeekKey, refuse: @escaping (ProtocolError) -> Void,
                      then next: @escaping (StoredPeek) -> Void)
    {
        store.load(key) { result in
            switch result {
            case .failure(let failure): refuse(ProtocolError(failure))
            case .success(nil): refuse(ProtocolError(.notFound, "no such peek"))
            case .success(let stored?): next(stored)
            }
        }
    }

    private func withViewerPeek(_ key: PeekKey, token: String, refuse: @escaping (ProtocolError) -> Void,
                                then next: @escaping (StoredPeek) -> Void)
    {
        load(key, refuse: refuse) { stored in
            guard constantTimeEquals(Hash.sha256(Array(token.utf8)), stored.tokenHash) else {
                return refuse(ProtocolError(.notFound, "no such peek"))
            }
            next(stored)
        }
    }

    private func requireMember(_ did: DID, of channel: ChannelID, refuse: @escaping (ProtocolError) -> Void,
                               then next: @escaping () -> Void)
    {
        channels.state(channel, for: did) { result in
            switch result {
            case .failure(let failure): refuse(ProtocolError(failure))
            case .success: next()
            }
        }
    }
}
