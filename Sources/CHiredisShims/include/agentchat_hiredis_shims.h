#pragma once
// What Swift cannot import or express from hiredis, and hiredis's glue to the libuv loop.
// Threading: everything here runs on the broker's one libuv loop thread.

#include <stddef.h>
#include <uv.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>

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

