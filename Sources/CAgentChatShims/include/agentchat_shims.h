#pragma once
// Small C helpers for what Swift cannot import or express. Each says why it exists.
// Threading: everything here runs on the broker's one libuv loop thread.

#include <sys/socket.h>
#include <stddef.h>
#include <uv.h>
#include <libwebsockets.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>

/// `LWS_PRE` is defined by an expression (`_LWS_PAD(4 + 10 + 2)`), which Swift does not import.
static inline size_t agentchat_lws_pre(void) { return LWS_PRE; }

/// The libwebsockets "last protocol" terminator needs a zeroed struct; Swift cannot spell `{ NULL, NULL, 0, 0 }`
/// for a struct with a function-pointer member without naming every field.
static inline struct lws_protocols agentchat_lws_protocols_terminator(void) {
    struct lws_protocols p = { 0 };
    return p;
}

/// Attaches a hiredis async context to a libuv loop.
///
/// This replaces hiredis 0.14.1's `adapters/libuv.h`, whose poll callback returns early on a non-zero status, so a
/// refused or reset connection is never handed to hiredis and its connect callback never runs. Here an error
/// status is delivered as the events hiredis was waiting for, and hiredis finds the error itself (as later hiredis
/// releases do). Ownership: the adapter state is allocated here, owned by hiredis through `ac->ev.data`, and freed
/// in the uv close callback after hiredis calls the cleanup hook; the hook may run inside our own poll callback,
/// so the callback re-checks `context` after every call into hiredis.
/// Returns 0 on success, -1 if the context already has an event library or allocation fails.
int agentchat_redis_attach_uv(redisAsyncContext *ac, uv_loop_t *loop);

/// Reports how many bytes a reply element array holds; `redisReply.element` is `redisReply **`, which Swift
/// imports as a doubly optional pointer. Returns NULL when out of range.
static inline redisReply *agentchat_redis_reply_element(const redisReply *r, size_t i) {
    if (r == NULL || i >= r->elements) return NULL;
    return r->element[i];
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
