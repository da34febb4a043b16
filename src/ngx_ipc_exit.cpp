/*
 * ngx_ipc exit: a worker's way out. At graceful shutdown nginx "closes" the
 * idle eventfd connection; the worker then goes on receiving until nothing
 * but the Lua light threads' own semaphore waits keeps it alive (rule 8),
 * and tells them when they may return (ngx_ipc_exit_t, shared with Lua).
 *
 * Owns: the C side of ngx_ipc_exit_t (release) and the watch timer.
 */

#include "ngx_ipc_module.h"


static void ngx_ipc_shutdown_watch(ngx_event_t *ev);
static ngx_uint_t ngx_ipc_live_timers(void);


/* The eventfd's connection was closed by nginx (c->close): called from the
 * wake handler, outside the event loop. */
void
ngx_ipc_exit_begin(ngx_ipc_worker_t *w)
{
    ngx_connection_t  *c = w->conn;

    c->close = 0;

    if (w->exiting) {
        /* worker_shutdown_timeout: nginx closes everything now */
        w->exit.release = 1;
        w->endpoint->wake_self();
        return;
    }

    /*
     * Graceful shutdown (ngx_close_idle_connections): the worker goes on
     * receiving until nothing but the Lua light threads' own waits keeps
     * it alive (rule 8); the cancelable watch timer tells when. We are
     * called outside the event loop here, so the semaphore is posted
     * from the next pass, through our own eventfd.
     */
    c->idle = 0;
    w->exiting = 1;
    w->watch.handler = ngx_ipc_shutdown_watch;
    w->watch.data = w;
    w->watch.log = ngx_cycle->log;
    w->watch.cancelable = 1;
    ngx_add_timer(&w->watch, 10);
    w->endpoint->wake_self();
}


void
ngx_ipc_exit_process(ngx_cycle_t *cycle)
{
    ngx_connection_t  *c;
    ngx_ipc_worker_t  *w;

    w = ngx_ipc_worker_attached();
    if (w == NULL) {
        return;
    }

    w->endpoint->stop();
    ngx_ipc_bridge_detach(w);

    if (w->watch.timer_set) {
        ngx_del_timer(&w->watch);
    }

    /* the eventfd stays open (the mapping's other users hold theirs); only
     * the connection goes, so nginx does not report it as left open */
    c = w->conn;
    ngx_free_connection(c);
    c->fd = (ngx_socket_t) -1;
}


/*
 * While the worker shuts down: once the only timers that keep it alive are
 * the semaphore waits of ngx.ipc's light threads, let them return.
 */
static void
ngx_ipc_shutdown_watch(ngx_event_t *ev)
{
    ngx_ipc_worker_t  *w = (ngx_ipc_worker_t *) ev->data;

    if (ngx_ipc_live_timers() <= (ngx_uint_t) w->exit.waits) {
        w->exit.release = 1;

        if (w->sema != NULL) {
            w->sema_post(w->sema, 1);
        }

        return;
    }

    ngx_add_timer(ev, 20);
}


/* The timers that keep an exiting worker alive (ngx_event_no_timers_left) */
static ngx_uint_t
ngx_ipc_live_timers(void)
{
    ngx_uint_t          n;
    ngx_event_t        *ev;
    ngx_rbtree_node_t  *node, *root, *sentinel;

    sentinel = ngx_event_timer_rbtree.sentinel;
    root = ngx_event_timer_rbtree.root;

    if (root == sentinel) {
        return 0;
    }

    n = 0;

    for (node = ngx_rbtree_min(root, sentinel);
         node != NULL;
         node = ngx_rbtree_next(&ngx_event_timer_rbtree, node))
    {
        ev = ngx_rbtree_data(node, ngx_event_t, timer);

        if (!ev->cancelable) {
            n++;
        }
    }

    return n;
}


