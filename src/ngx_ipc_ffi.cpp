/*
 * ngx_ipc FFI: the C ABI that lib/ngx/ipc.lua calls through LuaJIT's FFI.
 *
 * Functions take plain C types and return NGX_OK, NGX_DECLINED (a runtime
 * failure, with a constant message in *err) or NGX_ERROR (ngx_ipc is not
 * usable in this process). No C++ exception crosses this boundary.
 */

#include "ngx_ipc_module.h"

extern "C" {
#include <ngx_http.h>
}

#include "ngx_ipc/status.h"

#include <signal.h>


extern "C" {

int ngx_ipc_ffi_version(void);
int ngx_ipc_ffi_start(void *sema, char **err);
int ngx_ipc_ffi_send(int pid, const u_char *name, size_t name_len,
    const u_char *data, size_t data_len, int flags, uint32_t call_id,
    char **err);
int ngx_ipc_ffi_broadcast(const u_char *name, size_t name_len,
    const u_char *data, size_t data_len, int include_self, char **err);
int ngx_ipc_ffi_recv(ngx_ipc::Delivery *out, int max);
void ngx_ipc_ffi_recv_done(void);
int ngx_ipc_ffi_pids(int *out, int max);
ngx_ipc::Stats *ngx_ipc_ffi_stats(void);
int ngx_ipc_ffi_worker_status(int slot, ngx_ipc::WorkerStatus *out);
int ngx_ipc_ffi_wait_space(void *sema);
ngx_ipc_exit_t *ngx_ipc_ffi_exit_state(void);
int ngx_ipc_ffi_watch_runner(void *r);
int ngx_ipc_ffi_yield(void *sema);

}

static void ngx_ipc_runner_gone(void *data);
static int ngx_ipc_status_rc(ngx_ipc::Status s, char **err);


static const char  ngx_ipc_not_available[] =
    "ngx.ipc is only available in nginx worker processes";

/* what Lua may ask for in a record's flags */
static const int  ngx_ipc_user_flags =
    ngx_ipc::kRequest | ngx_ipc::kReply | ngx_ipc::kStatusMask;


int
ngx_ipc_ffi_version(void)
{
    return NGX_IPC_FFI_VERSION;
}


/* Attaches the worker and registers the Lua dispatcher's semaphore, which
 * the wake-up handler posts when the inbox has messages. */
int
ngx_ipc_ffi_start(void *sema, char **err)
{
    ngx_ipc_worker_t  *w;

    w = ngx_ipc_worker_get();
    if (w == NULL) {
        *err = (char *) ngx_ipc_not_available;
        return NGX_ERROR;
    }

    if (sema != NULL) {
        if (w->sema_post == NULL) {
            *err = (char *) "ngx_http_lua_ffi_sema_post() not found";
            return NGX_ERROR;
        }

        if (w->sema != NULL && w->sema != sema) {
            /* another Lua VM of this worker (lua_code_cache off) */
            *err = (char *) "ngx.ipc already runs in another Lua VM of this "
                            "worker (lua_code_cache off is not supported)";
            return NGX_ERROR;
        }

        w->sema = sema;

        /* deliver what arrived before the dispatcher existed */
        ngx_post_event(w->conn->read, &ngx_posted_events);
    }

    return NGX_OK;
}


int
ngx_ipc_ffi_send(int pid, const u_char *name, size_t name_len,
    const u_char *data, size_t data_len, int flags, uint32_t call_id,
    char **err)
{
    ngx_ipc_worker_t  *w;
    ngx_ipc::Status    s;

    w = ngx_ipc_worker_get();
    if (w == NULL) {
        *err = (char *) ngx_ipc_not_available;
        return NGX_ERROR;
    }

    try {
        s = w->endpoint->send(pid, name, name_len, data, data_len,
                              (uint16_t) (flags & ngx_ipc_user_flags),
                              call_id);
    } catch (...) {
        s = ngx_ipc::Status::kNoMemory;
    }

    if (s == ngx_ipc::Status::kOk) {
        ngx_ipc_busy_poll_after_send(w);
    }

    return ngx_ipc_status_rc(s, err);
}


int
ngx_ipc_ffi_broadcast(const u_char *name, size_t name_len,
    const u_char *data, size_t data_len, int include_self, char **err)
{
    ngx_ipc_worker_t  *w;
    ngx_ipc::Status    s;

    w = ngx_ipc_worker_get();
    if (w == NULL) {
        *err = (char *) ngx_ipc_not_available;
        return NGX_ERROR;
    }

    try {
        s = w->endpoint->broadcast(name, name_len, data, data_len,
                                   include_self != 0);
    } catch (...) {
        s = ngx_ipc::Status::kNoMemory;
    }

    if (s == ngx_ipc::Status::kOk) {
        ngx_ipc_busy_poll_after_send(w);
    }

    return ngx_ipc_status_rc(s, err);
}


static int
ngx_ipc_status_rc(ngx_ipc::Status s, char **err)
{
    if (s != ngx_ipc::Status::kOk) {
        *err = (char *) ngx_ipc::status_message(s);
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/* Takes a batch of up to max messages; 0 means the inbox is empty and the
 * dispatcher may sleep: the next message posts its semaphore. */
int
ngx_ipc_ffi_recv(ngx_ipc::Delivery *out, int max)
{
    int                n;
    ngx_ipc_worker_t  *w;

    w = ngx_ipc_worker_get();
    if (w == NULL) {
        return NGX_ERROR;
    }

    try {
        /* while a poll watches the inbox, the slot stays disarmed */
        n = w->endpoint->receive(out, max, !ngx_ipc_busy_poll_watching(w));
    } catch (...) {
        return NGX_ERROR;
    }

    if (n > 0) {
        ngx_ipc_busy_poll_after_receive(w, n);

    } else if (n == 0) {
        /* empty: watch the inbox a while before sleeping */
        ngx_ipc_busy_poll_on_empty(w);
    }

    return n;
}


void
ngx_ipc_ffi_recv_done(void)
{
    ngx_ipc_worker_t  *w;

    w = ngx_ipc_worker_get();
    if (w != NULL) {
        w->endpoint->release();
    }
}


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


/* This worker's counters: its slot's in the shared mapping, so the status
 * page and ipc.stats(pid) of other workers read what the Lua side adds. */
ngx_ipc::Stats *
ngx_ipc_ffi_stats(void)
{
    ngx_ipc_worker_t  *w;

    w = ngx_ipc_worker_get();
    if (w == NULL) {
        return NULL;
    }

    return &w->endpoint->stats();
}


/* Fills *out with worker slot's status (identity, state, counters) if slot
 * is in range; returns the number of worker slots. */
int
ngx_ipc_ffi_worker_status(int slot, ngx_ipc::WorkerStatus *out)
{
    ngx_ipc_worker_t  *w;

    w = ngx_ipc_worker_get();
    if (w == NULL) {
        return NGX_ERROR;
    }

    if (slot >= 0 && (ngx_uint_t) slot < w->conf->nslots) {
        ngx_ipc::read_worker((ngx_ipc::ShmHeader *) w->conf->shm,
                             (uint32_t) slot, out);
    }

    return (int) w->conf->nslots;
}


/*
 * ipc.send/broadcast with "wait": sema is posted the next time a receiver
 * frees ring space for this worker (the wake-up handler, after flush()).
 * One waiter at a time, the first of the Lua side's FIFO; NULL unregisters.
 */
int
ngx_ipc_ffi_wait_space(void *sema)
{
    ngx_ipc_worker_t  *w;

    w = ngx_ipc_worker_get();
    if (w == NULL || w->sema_post == NULL) {
        return NGX_ERROR;
    }

    w->space_sema = sema;

    return NGX_OK;
}
