#include "agentchat_hiredis_shims.h"
#include <stdlib.h>

typedef struct agentchat_redis_uv {
    redisAsyncContext *context; // NULL once hiredis has called cleanup
    int events;
    uv_poll_t handle;
} agentchat_redis_uv;

static void on_poll(uv_poll_t *handle, int status, int events) {
    agentchat_redis_uv *p = handle->data;
    // On an error status libuv does not say which event; hand hiredis what it asked for, it reads the error.
    int ev = status ? p->events : events;
    if (p->context != NULL && (ev & UV_WRITABLE)) redisAsyncHandleWrite(p->context);
    if (p->context != NULL && (ev & UV_READABLE)) redisAsyncHandleRead(p->context);
}

static void update(agentchat_redis_uv *p) {
    if (p->events) uv_poll_start(&p->handle, p->events, on_poll);
    else uv_poll_stop(&p->handle);
}

static void add_read(void *d) { agentchat_redis_uv *p = d; p->events |= UV_READABLE; update(p); }
static void del_read(void *d) { agentchat_redis_uv *p = d; p->events &= ~UV_READABLE; update(p); }
static void add_write(void *d) { agentchat_redis_uv *p = d; p->events |= UV_WRITABLE; update(p); }
static void del_write(void *d) { agentchat_redis_uv *p = d; p->events &= ~UV_WRITABLE; update(p); }

static void on_close(uv_handle_t *h) { free(h->data); }

static void cleanup(void *d) {
    agentchat_redis_uv *p = d;
    p->context = NULL;
    /* Already closed (without a callback) by the loop's final walk at exit: closing twice aborts libuv. */
    if (uv_is_closing((uv_handle_t *)&p->handle)) return;
    uv_close((uv_handle_t *)&p->handle, on_close);
}

int agentchat_redis_attach_uv(redisAsyncContext *ac, uv_loop_t *loop) {
    if (ac->ev.data != NULL) return -1;
    agentchat_redis_uv *p = calloc(1, sizeof(*p));
    if (p == NULL) return -1;
    if (uv_poll_init_socket(loop, &p->handle, ac->c.fd) != 0) { free(p); return -1; }
    p->context = ac;
    p->handle.data = p;
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    ac->ev.data = p;
    return 0;
}
