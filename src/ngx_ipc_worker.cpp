/*
 * ngx_ipc worker: a worker process's attachment to its slot of the
 * configuration's mapping. It watches its own eventfd on the event loop;
 * the read handler flushes the send backlog and wakes the Lua dispatcher
 * (or, with no dispatcher yet, hands the inbox to ngx_ipc_early.cpp; when
 * nginx closes the connection at shutdown, hands over to
 * ngx_ipc_exit.cpp). It also runs the "next pass of the event loop" yield.
 * Nothing runs while no message moves.
 *
 * Owns: ngx_ipc_worker_t (the endpoint, the eventfd's connection, the
 * yield), except its busy-poll part (ngx_ipc_busy_poll.cpp), what it keeps
 * before its Lua starts ngx.ipc (ngx_ipc_early.cpp), the exit state and
 * watch (ngx_ipc_exit.cpp) and the Lua semaphores the FFI registers
 * (ngx_ipc_ffi*.cpp).
 */

#include "ngx_ipc_module.h"

#include <dlfcn.h>

#include <new>


static ngx_ipc_worker_t *ngx_ipc_attach(ngx_ipc_conf_t *conf);
static void ngx_ipc_wake_handler(ngx_event_t *rev);
static void ngx_ipc_core_log(void *ctx, const char *msg, int err);
static bool ngx_ipc_alive(int32_t pid);
static void ngx_ipc_yield_handler(ngx_event_t *ev);
static void ngx_ipc_retry_handler(ngx_event_t *ev);


static ngx_ipc_worker_t   ngx_ipc_worker;
static ngx_flag_t         ngx_ipc_attached;
static ngx_flag_t         ngx_ipc_attach_failed;


ngx_int_t
ngx_ipc_init_process(ngx_cycle_t *cycle)
{
    /*
     * Lua's init_worker_by_lua runs before this (modules initialise in load
     * order) and may already have attached through the FFI. Attach here for
     * workers that do not use ngx.ipc in init_worker, so that messages sent
     * to them are received (and counted) rather than left in the rings.
     */
    (void) ngx_ipc_worker_get();

    return NGX_OK;
}


ngx_ipc_worker_t *
ngx_ipc_worker_get(void)
{
    if (ngx_ipc_attached) {
        return &ngx_ipc_worker;
    }

    if (ngx_ipc_attach_failed
        || (ngx_process != NGX_PROCESS_WORKER
            && ngx_process != NGX_PROCESS_SINGLE)
        || ngx_ipc_conf_current() == NULL
        || ngx_ipc_conf_current()->shm == NULL)
    {
        return NULL;
    }

    return ngx_ipc_attach(ngx_ipc_conf_current());
}


static ngx_ipc_worker_t *
ngx_ipc_attach(ngx_ipc_conf_t *conf)
{
    ngx_uint_t            slot;
    ngx_event_t          *rev;
    ngx_connection_t     *c;
    ngx_ipc_worker_t     *w = &ngx_ipc_worker;
    ngx_ipc::Endpoint    *ep;

    ngx_ipc_attach_failed = 1;

    slot = (ngx_process == NGX_PROCESS_WORKER) ? ngx_worker : 0;

    if (ngx_ipc::check_shm(conf->shm, conf->shm_size) == NULL) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "ngx_ipc: the shared mapping is not valid");
        return NULL;
    }

    if (slot >= conf->nslots) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "ngx_ipc: worker %ui has no slot (%ui slots)",
                      slot, conf->nslots);
        return NULL;
    }

    try {
        ep = new ngx_ipc::Endpoint((ngx_ipc::ShmHeader *) conf->shm,
                                   (uint32_t) slot, conf->fds);
    } catch (...) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "ngx_ipc: no memory for the endpoint");
        return NULL;
    }

    c = ngx_get_connection(conf->fds[slot], ngx_cycle->log);
    if (c == NULL) {
        delete ep;
        return NULL;
    }

    rev = c->read;
    rev->handler = ngx_ipc_wake_handler;
    rev->log = ngx_cycle->log;
    c->data = w;

    /* ngx_close_idle_connections() calls us at graceful shutdown */
    c->idle = 1;

    if (ngx_add_event(rev, NGX_READ_EVENT, 0) == NGX_ERROR) {
        ngx_free_connection(c);
        c->fd = (ngx_socket_t) -1;
        delete ep;
        return NULL;
    }

    w->sema_post = (ngx_ipc_sema_post_pt)
                       dlsym(RTLD_DEFAULT, "ngx_http_lua_ffi_sema_post");
    if (w->sema_post == NULL) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "ngx_ipc: ngx_http_lua_ffi_sema_post() not found: "
                      "is ngx_http_lua_module loaded?");
    }

    ep->set_logger(ngx_ipc_core_log, NULL);
    ep->set_alive_check(ngx_ipc_alive);
    ep->start((int32_t) ngx_pid);

    /* marks the slot asleep (takes nothing): the first message wakes us */
    (void) ep->receive(NULL, 0);

    w->conf = conf;
    w->endpoint = ep;
    w->conn = c;

    ngx_ipc_busy_poll_init(w);
    ngx_ipc_early_init(w);

    w->yield.handler = ngx_ipc_yield_handler;
    w->yield.data = w;
    w->yield.log = ngx_cycle->log;

    w->retry.handler = ngx_ipc_retry_handler;
    w->retry.data = w;
    w->retry.log = ngx_cycle->log;
    w->retry.cancelable = 1;    /* never holds up a graceful exit */

    ngx_ipc_attach_failed = 0;
    ngx_ipc_attached = 1;

    /* the workers of the other configurations still running */
    ngx_ipc_bridge_attach(w);

    /* messages may have waited for this slot since before we started */
    ngx_post_event(rev, &ngx_posted_events);

    return w;
}


static void
ngx_ipc_wake_handler(ngx_event_t *rev)
{
    uint64_t             count;
    ngx_connection_t    *c = (ngx_connection_t *) rev->data;
    ngx_ipc_worker_t    *w = (ngx_ipc_worker_t *) c->data;

    if (c->close) {
        ngx_ipc_exit_begin(w);
        return;
    }

    if (read(c->fd, &count, sizeof(count)) == -1 && ngx_errno != NGX_EAGAIN) {
        ngx_ipc_log_limited(NGX_LOG_ALERT, ngx_errno,
                            "read() from the wake-up eventfd failed");
    }

    /* the inboxes that woke us (their turn to take our backlog for them) */
    w->endpoint->flush_ready();
    ngx_ipc_space_freed(w);
    ngx_ipc_backlog_watch(w);

    if (w->sema != NULL) {
        /*
         * Not armed means whoever woke us cleared the flag: the reader must
         * run (and re-arm) even if the inbox is empty now, or no sender
         * would ever wake it again. A spurious pass costs one empty recv.
         */
        if (w->exit.release || !w->endpoint->armed()
            || w->endpoint->inbox_pending())
        {
            w->sema_post(w->sema, 1);
        }

        return;
    }

    ngx_ipc_early_receive(w, w->endpoint);
}


/*
 * A receiver freed ring space, which is what wakes us while we hold a
 * backlog, and the caller's flush() moved what it could. A send that waits
 * for room (ipc.send with "wait") tries again; if its destination is still
 * full it registers again.
 */
void
ngx_ipc_space_freed(ngx_ipc_worker_t *w)
{
    void  *sema = w->space_sema;

    if (sema != NULL) {
        w->space_sema = NULL;
        w->sema_post(sema, 1);
    }
}


/*
 * A backlog moves when its destination frees room or the holder of its
 * inbox's lock unlocks: both wake us (one waiter at a time, in turn). A
 * holder that was killed while it held the lock never unlocks, and a
 * waiter woken in its turn that never runs (killed, or its event loop
 * stuck) never passes the turn on: this timer, every 100 ms while a
 * backlog waits, looks at each waiting destination (Endpoint::retry_all:
 * loads first, a syscall only for a holder that held the lock a whole
 * tick). The other endpoint's backlog (the reload bridge's) counts in the
 * same queued_bytes.
 */
void
ngx_ipc_backlog_watch(ngx_ipc_worker_t *w)
{
    if (w->endpoint->stats().queued_bytes != 0 && !w->retry.timer_set) {
        ngx_add_timer(&w->retry, 100);
    }
}


static void
ngx_ipc_retry_handler(ngx_event_t *ev)
{
    ngx_ipc_worker_t  *w = (ngx_ipc_worker_t *) ev->data;

    w->endpoint->retry_all();
    ngx_ipc_bridge_retry_all(w);
    ngx_ipc_space_freed(w);
    ngx_ipc_backlog_watch(w);
}


ngx_ipc_worker_t *
ngx_ipc_worker_attached(void)
{
    return ngx_ipc_attached ? &ngx_ipc_worker : NULL;
}



/*
 * Lets the event loop run once, then posts sema: an event posted to
 * ngx_posted_next_events runs after the next epoll_wait(), which nginx then
 * calls with a zero timeout. (ngx.sleep(0) would do, but without
 * OpenResty's delayed-events patch it logs a warning every time.)
 */
void
ngx_ipc_yield(ngx_ipc_worker_t *w, void *sema)
{
    w->yield_sema = sema;
    ngx_post_event(&w->yield, &ngx_posted_next_events);
}


static void
ngx_ipc_yield_handler(ngx_event_t *ev)
{
    void              *sema;
    ngx_ipc_worker_t  *w = (ngx_ipc_worker_t *) ev->data;

    sema = w->yield_sema;
    w->yield_sema = NULL;

    if (sema != NULL) {
        w->sema_post(sema, 1);
    }
}



/*
 * Asked by the core when a destination's backlog is full. While this
 * worker's generation is current, the master respawns a dead worker into
 * its slot and the successor receives what waits for it (rule 4): alive.
 * Once it is exiting (an old generation), a dead slot is gone for good.
 */
static bool
ngx_ipc_alive(int32_t pid)
{
    return !ngx_exiting || ngx_ipc::Endpoint::process_alive(pid);
}


static void
ngx_ipc_core_log(void *ctx, const char *msg, int err)
{
    ngx_ipc_log_limited(err ? NGX_LOG_ALERT : NGX_LOG_ERR, err, msg);
}
