/*
 * ngx_ipc: what the glue's files share.
 *
 * ngx_ipc_module.cpp       core module: directives, the shared mapping and
 *                          the wake-up fds of a configuration, worker attach
 * ngx_ipc_http_module.cpp  http module: registers the embedded Lua library
 * ngx_ipc_ffi.cpp          the ngx_ipc_ffi_* C ABI used by lib/ngx/ipc.lua
 * ngx_ipc_status.cpp       http module: the ipc_status directive
 */

#ifndef _NGX_IPC_MODULE_H_INCLUDED_
#define _NGX_IPC_MODULE_H_INCLUDED_

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
}

#include "ngx_ipc/endpoint.h"

/* Bumped whenever a ngx_ipc_ffi_* signature or a shared struct changes;
 * lib/ngx/ipc.lua refuses to run against another version. */
#define NGX_IPC_FFI_VERSION  2

typedef struct {
    /* directives (main context) */
    size_t                     ring_size;
    size_t                     max_message;
    size_t                     queue_limit;
    ngx_uint_t                 busy_poll;    /* microseconds, 0: off */

    /* this configuration's shared state, made by the master */
    void                      *shm;
    size_t                     shm_size;
    ngx_uint_t                 nslots;
    int                       *fds;          /* one eventfd per slot */
} ngx_ipc_conf_t;

typedef int (*ngx_ipc_sema_post_pt)(void *sem, int n);

/* Shared with the Lua side (ngx_ipc_ffi_exit_state): during a graceful
 * shutdown, the light threads wait until nothing but their own waits keeps
 * the worker alive. */
typedef struct {
    int                        waits;        /* Lua: semaphore waits now */
    int                        release;      /* C: 1 when they may return */
    int                        runner_gone;  /* C: the runner's timer ended */
} ngx_ipc_exit_t;

/* This worker's attachment to its configuration's shared state. */
typedef struct {
    ngx_ipc_conf_t            *conf;         /* the configuration attached to */
    ngx_ipc::Endpoint         *endpoint;
    ngx_connection_t          *conn;         /* the slot's eventfd */
    void                      *sema;         /* the Lua dispatchers' inbox */
    void                      *yield_sema;   /* posted on the next pass */
    void                      *space_sema;   /* a send waits for room */
    ngx_event_t                yield;        /* posts it */
    ngx_ipc_sema_post_pt       sema_post;
    ngx_ipc_exit_t             exit;
    ngx_event_t                watch;        /* cancelable, while exiting */
    ngx_event_t                poll;         /* busy polling, posted */
    uint64_t                   poll_until;   /* CLOCK_MONOTONIC, ns */
    uint64_t                   poll_start;   /* when this poll began */
    uint64_t                   poll_backoff; /* no poll before (monotonic) */
    uint64_t                   poll_strike_time; /* the first long yield */
    ngx_uint_t                 poll_strikes; /* long yields since then */
    unsigned                   polling:1;
    unsigned                   active:1;     /* moved messages since */
    unsigned                   exiting:1;
    unsigned                   no_dispatcher_logged:1;
} ngx_ipc_worker_t;

extern "C" ngx_module_t  ngx_ipc_module;

/* Attaches this process to its slot on first use; NULL if this process is
 * not a worker of a configuration that has ngx_ipc (master, helpers). */
ngx_ipc_worker_t *ngx_ipc_worker_get(void);

/* After this worker moved messages: watch the inbox for a while from the
 * event loop (ipc_busy_poll) instead of sleeping on the eventfd. */
void ngx_ipc_busy_poll(ngx_ipc_worker_t *w);
/* After a successful send: a reply may follow, poll for it. */
void ngx_ipc_busy_poll_sent(ngx_ipc_worker_t *w);

/* Posts sema after the event loop's next pass (a dispatcher's yield). */
void ngx_ipc_yield(ngx_ipc_worker_t *w, void *sema);

/* Logs a core event at a bounded rate (a storm writes a few lines). */
void ngx_ipc_log_limited(ngx_uint_t level, ngx_err_t err, const char *msg);

#endif /* _NGX_IPC_MODULE_H_INCLUDED_ */
