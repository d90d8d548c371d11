// AgentChat viewer: the cryptography of a paid peek, with WebCrypto alone (no library).
// docs/PROTOCOL.md: "Identity" (the DID), "Sending" (messages), "The grant: a channel key wrapped for the viewer".
//
//   viewer key   X25519, generated here; the private key is not extractable and never leaves the browser
//   grant        Ed25519 signature by the sender (key read out of its DID) checked first, then
//                X25519(viewer, ephemeral) -> HKDF-SHA256 -> AES-256-GCM opens the 32-byte channel key
//   messages     Ed25519 signature by the sender checked first, then AES-256-GCM under the channel key

const encoder = new TextEncoder();
const utf8 = (s) => encoder.encode(s);

export const DID_PREFIX = "did:agentchat:";
const GRANT_INFO = "agentchat peek v1";

// ---------------------------------------------------------------- encodings

/** Base64url without padding (RFC 4648 §5). */
export function b64urlEncode(bytes) {
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** Strict base64url: no padding, no `+` `/` or whitespace, canonical trailing bits. Null when malformed. */
export function b64urlDecode(text) {
  if (typeof text !== "string" || !/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) return null;
  let bin;
  try {
    bin = atob(text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4));
  } catch {
    return null;
  }
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  if (b64urlEncode(out) !== text) return null; // non-canonical trailing bits
  return out;
}

const B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/** Base58btc (Bitcoin alphabet); null for a character outside it. Leading `1`s are leading zero bytes. */
export function base58Decode(text) {
  const bytes = [];
  let ones = 0;
  while (ones < text.length && text[ones] === "1") ones++;
  for (let i = ones; i < text.length; i++) {
    let carry = B58.indexOf(text[i]);
    if (carry < 0) return null;
    for (let k = 0; k < bytes.length; k++) {
      carry += bytes[k] * 58;
      bytes[k] = carry & 0xff;
      carry >>= 8;
    }
    while (carry > 0) { bytes.push(carry & 0xff); carry >>= 8; }
  }
  return Uint8Array.from([...new Array(ones).fill(0), ...bytes.reverse()]);
}

export function base58Encode(input) {
  const digits = [];
  let zeros = 0;
  while (zeros < input.length && input[zeros] === 0) zeros++;
  for (let i = zeros; i < input.length; i++) {
    let carry = input[i];
    for (let k = 0; k < digits.length; k++) {
      carry += digits[k] << 8;
      digits[k] = carry % 58;
      carry = (carry / 58) | 0;
    }
    while (carry > 0) { digits.push(carry % 58); carry = (carry / 58) | 0; }
  }
  return "1".repeat(zeros) + digits.reverse().map((d) => B58[d]).join("");
}

/** The 32-byte Ed25519 key of `did:agentchat:z<base58btc(0xED 0x01 ‖ key)>`, parsed as strictly as the broker
 *  does (the exact prefix, 34 bytes starting 0xED 0x01, the canonical spelling); null otherwise. */
export function didSigningKey(did) {
  if (typeof did !== "string" || did.length > DID_PREFIX.length + 48 || !did.startsWith(DID_PREFIX + "z")) return null;
  const bytes = base58Decode(did.slice(DID_PREFIX.length + 1));
  if (!bytes || bytes.length !== 34 || bytes[0] !== 0xed || bytes[1] !== 0x01) return null;
  if (DID_PREFIX + "z" + base58Encode(bytes) !== did) return null;
  return bytes.slice(2);
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

// ---------------------------------------------------------------- keys

/** A fresh X25519 key pair for one peek: `{ privateKey, publicKey }` (CryptoKeys; the private one not
 *  extractable) and `viewerKey`, the public key in base64url as `peek.request` sends it. */
export async function generateViewerKey() {
  const pair = await crypto.subtle.generateKey({ name: "X25519" }, false, ["deriveBits"]);
  const raw = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
  return { privateKey: pair.privateKey, publicKey: pair.publicKey, viewerKey: b64urlEncode(raw) };
}

const verifyKeys = new Map(); // DID -> Promise<CryptoKey>

/** The Ed25519 verification key read out of a DID (cached); throws for a malformed DID. */
export function verifyKeyOf(did) {
  let key = verifyKeys.get(did);
  if (!key) {
    const raw = didSigningKey(did);
    if (!raw) throw new PeekCryptoError("bad_did", "the sender's DID is malformed");
    key = crypto.subtle.importKey("raw", raw, { name: "Ed25519" }, false, ["verify"]);
    verifyKeys.set(did, key);
    if (verifyKeys.size > 1000) verifyKeys.delete(verifyKeys.keys().next().value);
  }
  return key;
}

export class PeekCryptoError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

// ---------------------------------------------------------------- the grant

export function grantAssociatedData(channel, peek, epoch) {
  return utf8(`agentchat-peek-grant-v1\n${channel}\n${peek}\n${epoch}`);
}

export function grantSignedBytes(channel, peek, viewerKey, grant) {
  return concat(grantAssociatedData(channel, peek, grant.epoch),
    utf8(`\n${viewerKey}\n${grant.ephemeralKey}\n${grant.nonce}\n${grant.ciphertext}`));
}

/** Checks a grant and opens the channel key it wraps. `viewer` is what generateViewerKey returned (or the same
 *  fields restored). Answers `{ epoch, sender, key }` with `key` an AES-GCM CryptoKey (decrypt only, not
 *  extractable); throws PeekCryptoError with code `malformed`, `bad_did`, `bad_signature` or `unwrap_failed`. */
export async function openGrant(grant, { channel, peek, viewer }) {
  if (!grant || typeof grant !== "object" || !Number.isSafeInteger(grant.epoch) || grant.epoch <= 0
      || typeof grant.sender !== "string") {
    throw new PeekCryptoError("malformed", "the grant is malformed");
  }
  const ephemeral = b64urlDecode(grant.ephemeralKey);
  const nonce = b64urlDecode(grant.nonce);
  const ciphertext = b64urlDecode(grant.ciphertext);
  const signature = b64urlDecode(grant.signature);
  const viewerRaw = b64urlDecode(viewer.viewerKey);
  if (!ephemeral || ephemeral.length !== 32 || !nonce || nonce.length !== 12 || !ciphertext
      || ciphertext.length !== 48 || !signature || signature.length !== 64 || !viewerRaw || viewerRaw.length !== 32) {
    throw new PeekCryptoError("malformed", "the grant is malformed");
  }
  // 1. The sender's signature, before anything in the grant is used.
  const senderKey = await verifyKeyOf(grant.sender);
  const signed = grantSignedBytes(channel, peek, viewer.viewerKey, grant);
  if (!(await crypto.subtle.verify({ name: "Ed25519" }, senderKey, signature, signed))) {
    throw new PeekCryptoError("bad_signature", "the grant's signature does not verify against its sender's DID");
  }
  try {
    // 2. shared = X25519(viewer secret, ephemeral public); WebCrypto refuses an all-zero result.
    const ephemeralKey = await crypto.subtle.importKey("raw", ephemeral, { name: "X25519" }, false, []);
    const shared = await crypto.subtle.deriveBits({ name: "X25519", public: ephemeralKey }, viewer.privateKey, 256);
    // 3. wrapKey = HKDF-SHA256(ikm shared, salt ephemeral ‖ viewer key, info "agentchat peek v1", 32 bytes).
    const ikm = await crypto.subtle.importKey("raw", shared, "HKDF", false, ["deriveKey"]);
    const wrapKey = await crypto.subtle.deriveKey(
      { name: "HKDF", hash: "SHA-256", salt: concat(ephemeral, viewerRaw), info: utf8(GRANT_INFO) },
      ikm, { name: "AES-GCM", length: 256 }, false, ["decrypt"]);
    // 4. The channel key, authenticated with the grant's associated data.
    const channelKey = await crypto.subtle.decrypt(
      { name: "AES-GCM", iv: nonce, additionalData: grantAssociatedData(channel, peek, grant.epoch), tagLength: 128 },
      wrapKey, ciphertext);
    if (channelKey.byteLength !== 32) throw new Error("not a 32-byte key");
    const key = await crypto.subtle.importKey("raw", channelKey, { name: "AES-GCM" }, false, ["decrypt"]);
    new Uint8Array(channelKey).fill(0);
    return { epoch: grant.epoch, sender: grant.sender, key };
  } catch (err) {
    throw new PeekCryptoError("unwrap_failed", "the grant does not open with this page's key");
  }
}

// ---------------------------------------------------------------- messages

export function messageSignedBytes(channel, m) {
  return utf8(`agentchat-msg-v1\n${channel}\n${m.epoch}\n${m.id}\n${m.nonce}\n${m.ciphertext}`);
}

export function messageAssociatedData(channel, m) {
  return utf8(`agentchat-msg-v1\n${channel}\n${m.epoch}\n${m.sender}\n${m.id}`);
}

const textDecoder = new TextDecoder("utf-8", { fatal: true });

/** One stored message of a `messages` frame, checked as members check it: the sender's signature first, then, for
 *  the granted epoch, AES-256-GCM. Answers `{ status, text?, bytes? }`, status one of
 *    `ok`           verified and decrypted (`text`, or `bytes` for a payload that is not UTF-8)
 *    `locked`       verified, but sent under another epoch's key, which this peek does not hold
 *    `bad_signature`, `malformed`, `undecryptable`   never shown as text */
export async function openMessage(m, { channel, grant }) {
  if (!m || typeof m !== "object" || typeof m.sender !== "string" || typeof m.id !== "string"
      || !Number.isSafeInteger(m.epoch) || typeof m.nonce !== "string" || typeof m.ciphertext !== "string") {
    return { status: "malformed" };
  }
  const nonce = b64urlDecode(m.nonce);
  const ciphertext = b64urlDecode(m.ciphertext);
  const signature = b64urlDecode(m.signature);
  if (!nonce || nonce.length !== 12 || !ciphertext || ciphertext.length < 16 || !signature || signature.length !== 64) {
    return { status: "malformed" };
  }
  let senderKey;
  try { senderKey = await verifyKeyOf(m.sender); } catch { return { status: "malformed" }; }
  if (!(await crypto.subtle.verify({ name: "Ed25519" }, senderKey, signature, messageSignedBytes(channel, m)))) {
    return { status: "bad_signature" };
  }
  if (!grant || m.epoch !== grant.epoch) return { status: "locked" };
  let plain;
  try {
    plain = new Uint8Array(await crypto.subtle.decrypt(
      { name: "AES-GCM", iv: nonce, additionalData: messageAssociatedData(channel, m), tagLength: 128 },
      grant.key, ciphertext));
  } catch {
    return { status: "undecryptable" };
  }
  try {
    return { status: "ok", text: textDecoder.decode(plain) };
  } catch {
    return { status: "ok", bytes: plain.length };
  }
}

/** A DID as people can compare it at a glance: the multibase prefix and the last characters. */
export function shortDID(did) {
  if (typeof did !== "string") return "unknown";
  const body = did.startsWith(DID_PREFIX) ? did.slice(DID_PREFIX.length) : did;
  return body.length > 14 ? `${body.slice(0, 4)}…${body.slice(-6)}` : body;
}
