/*
 * ngx_ipc FFI: the worker's half of the C ABI (src/ngx_ipc_ffi.h): the
 * other workers' PIDs and status, this worker's counters, and what the Lua
 * light threads need from the event loop (the runner's watch, the yield,
 * the shutdown handshake's state).
 */

#include "ngx_ipc_module.h"

extern "C" {
#include <ngx_http.h>
}

#include "ngx_ipc/status.h"

#include <signal.h>


static void ngx_ipc_runner_gone(void *data);


/* Fills out[i] with the PID of worker i, or 0 if none is running now;
 * returns the number of worker slots. */
int
ngx_ipc_ffi_pids(int *out, int max)
{
    int                 i, n;
    ngx_ipc_worker_t   *w;
    ngx_ipc::Endpoint  *ep;

    w = ngx_ipc_worker_get();
    if (w == NULL) {
        return NGX_ERROR;
    }

    ep = w->endpoint;
    n = (int) ep->nslots();

    for (i = 0; i < n && i < max; i++) {
        out[i] = ep->slot_pid((uint32_t) i);

        /* a crashed worker's slot keeps its PID until the respawn */
        if (out[i] != 0 && kill(out[i], 0) == -1 && ngx_errno == ESRCH) {
            out[i] = 0;
        }
    }

    return n;
}


/* The other generations' running workers: see ngx_ipc_bridge_peers. */
int
ngx_ipc_ffi_peers(ngx_ipc_peer_t *out, int max)
{
    ngx_ipc_worker_t  *w;

    w = ngx_ipc_worker_get();
    if (w == NULL) {
        return NGX_ERROR;
    }

    return ngx_ipc_bridge_peers(w, out, max);
}


/*
 * Called by the runner light thread with its timer's (fake) request: when
 * that request's pool goes, the runner is gone, however it ended (its loop
 * returned, or a handler ended the light thread with ngx.exit() or with an
 * error raised in a coroutine it wrapped), and the reader restarts it.
 */
int
ngx_ipc_ffi_watch_runner(void *r)
{
    ngx_ipc_worker_t    *w;
    ngx_pool_cleanup_t  *cln;

    w = ngx_ipc_worker_get();
    if (w == NULL || r == NULL) {
        return NGX_ERROR;
    }

    cln = ngx_pool_cleanup_add(((ngx_http_request_t *) r)->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    cln->handler = ngx_ipc_runner_gone;
    cln->data = w;
    w->exit.runner_gone = 0;

    return NGX_OK;
}


static void
ngx_ipc_runner_gone(void *data)
{
    ngx_ipc_worker_t  *w = (ngx_ipc_worker_t *) data;

    w->exit.runner_gone = 1;

    /* wake the reader, which restarts the runner unless it is leaving */
    if (w->sema != NULL) {
        w->sema_post(w->sema, 1);
    }
}


/* Lets the event loop run once, then posts sema (see ngx_ipc_yield). */
int
ngx_ipc_ffi_yield(void *sema)
{
    ngx_ipc_worker_t  *w;

    w = ngx_ipc_worker_get();
    if (w == NULL || w->sema_post == NULL) {
        return NGX_ERROR;
    }

    ngx_ipc_yield(w, sema);

    return NGX_OK;
}


/* The shutdown handshake's shared state (see ngx_ipc_exit_t). */
ngx_ipc_exit_t *
ngx_ipc_ffi_exit_state(void)
{
    ngx_ipc_worker_t  *w;

    w = ngx_ipc_worker_get();
    if (w == NULL) {
        return NULL;
    }

    return &w->exit;
}


/* This worker's counters, read like any slot's: what the core counts plus
 * what lib/ngx/ipc.lua counts. */
int
ngx_ipc_ffi_stats(ngx_ipc_stats_t *out)
{
    ngx_ipc_worker_t  *w;

    w = ngx_ipc_worker_get();
    if (w == NULL) {
        return NGX_ERROR;
    }

    ngx_ipc::read_stats(w->endpoint->counters(),
                        reinterpret_cast<ngx_ipc::Stats *>(out));

    return NGX_OK;
}


/* The counters the Lua side owns, in this worker's slot of the mapping, so
 * that the status page and ipc.stats(pid) of other workers read them. */
ngx_ipc_lua_counters_t *
ngx_ipc_ffi_lua_counters(void)
{
    ngx_ipc_worker_t  *w;

    w = ngx_ipc_worker_get();
    if (w == NULL) {
        return NULL;
    }

    return reinterpret_cast<ngx_ipc_lua_counters_t *>(
               &w->endpoint->counters().lua);
}


/* Fills *out with worker slot's status (identity, state, counters) if slot
 * is in range; returns the number of worker slots. */
int
ngx_ipc_ffi_worker_status(int slot, ngx_ipc_worker_status_t *out)
{
    ngx_ipc_worker_t  *w;

    w = ngx_ipc_worker_get();
    if (w == NULL) {
        return NGX_ERROR;
    }

    if (slot >= 0 && (ngx_uint_t) slot < w->conf->nslots) {
        ngx_ipc::read_worker((ngx_ipc::ShmHeader *) w->conf->shm,
                             (uint32_t) slot,
                             reinterpret_cast<ngx_ipc::WorkerStatus *>(out));
    }

    return (int) w->conf->nslots;
}
