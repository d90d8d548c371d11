#pragma once
// What Swift cannot import or express from libwebsockets (and the socket calls the transport makes beside it).
// Each helper says why it exists; the compiler checks every value here against the installed headers.
// Threading: everything here runs on the broker's one libuv loop thread.

#include <sys/socket.h>
#include <stddef.h>
#include <libwebsockets.h>

/// `LWS_PRE` is defined by an expression (`_LWS_PAD(4 + 10 + 2)`), which Swift does not import.
static inline size_t agentchat_lws_pre(void) { return LWS_PRE; }

/// `lws_write()` modes. Swift does not import the enumerators `LWS_WRITE_TEXT` (0) and `LWS_WRITE_BINARY` (1), and
/// 4.1 leaves `LWS_WRITE_CLOSE` (4) out of the public enum ("handled by lws_close_reason()", which in 4.1.6 sends no
/// close frame from a writeable callback that then returns -1), so the transport writes the close frame itself.
static inline enum lws_write_protocol agentchat_lws_write_text(void) { return LWS_WRITE_TEXT; }
static inline enum lws_write_protocol agentchat_lws_write_binary(void) { return LWS_WRITE_BINARY; }
static inline enum lws_write_protocol agentchat_lws_write_ping(void) { return LWS_WRITE_PING; }
/// `LWS_WRITE_RAW` is an alias of `LWS_WRITE_HTTP` in the enum, which Swift does not import.
static inline enum lws_write_protocol agentchat_lws_write_raw(void) { return LWS_WRITE_RAW; }
/// 4 is the opcode's place in the enum, between `LWS_WRITE_HTTP` (3) and `LWS_WRITE_PING` (5): checked below.
_Static_assert(LWS_WRITE_HTTP == 3 && LWS_WRITE_PING == 5, "LWS_WRITE_CLOSE is no longer the 4 between HTTP and PING");
static inline enum lws_write_protocol agentchat_lws_write_close(void) { return (enum lws_write_protocol)4; }

/// The libwebsockets "last protocol" terminator needs a zeroed struct; Swift cannot spell `{ NULL, NULL, 0, 0 }`
/// for a struct with a function-pointer member without naming every field.
static inline struct lws_protocols agentchat_lws_protocols_terminator(void) {
    struct lws_protocols p = { 0 };
    return p;
}

/// `MSG_PEEK | MSG_DONTWAIT` and `MSG_NOSIGNAL | MSG_DONTWAIT`, checked against the installed headers: in a release
/// build Swift does not find `MSG_PEEK` and `MSG_NOSIGNAL` from the file that uses them (seen with Swift 6.3.1).
static inline int agentchat_msg_peek_nowait(void) { return MSG_PEEK | MSG_DONTWAIT; }
static inline int agentchat_msg_nosignal_nowait(void) { return MSG_NOSIGNAL | MSG_DONTWAIT; }

/// Whether the WebSocket frame being received was masked, which libwebsockets 4.1 keeps private: RFC 6455 §5.1 has a
/// server close the connection on an unmasked client frame, and 4.1.6 accepts one (5.0 closes it with 1002).
///
/// In 4.1's private `struct _lws_websocket_related` (lib/roles/ws/private-lib-roles-ws.h) the array
/// `uint8_t ping_payload_buf[128 - 3 + LWS_PRE]`, whose byte LWS_PRE the public `lws_get_close_payload()` returns, is
/// followed by the bit-fields `final:1, frame_is_binary:1, all_zero_nonce:1, this_frame_masked:1, ...`, which the
/// compiler allocates from the first bit after the array (LSB first, little-endian). This returns that byte: bit 0
/// `final`, bit 1 `frame_is_binary`, bit 3 `this_frame_masked`. It reads inside the struct whatever the layout; the
/// caller trusts bit 3 only for libwebsockets 4.1 and only when bits 0 and 1 agree with `lws_is_final_fragment()`
/// and `lws_frame_is_binary()`.
static inline unsigned char agentchat_lws_ws_frame_flags(struct lws *wsi) {
    return lws_get_close_payload(wsi)[128 - 3];
}

/// The `SSL_OP_…` options that refuse SSLv3, TLS 1.0 and TLS 1.1 on the broker's TLS vhost (`ssl_options_set`):
/// Swift cannot import OpenSSL's option macros (they are built from `SSL_OP_BIT()`).
#include <openssl/ssl.h>
static inline long agentchat_tls_minimum_version_options(void) {
    return (long)(SSL_OP_NO_SSLv3 | SSL_OP_NO_TLSv1 | SSL_OP_NO_TLSv1_1);
}
