/*
 * ngx_ipc reload bridge: messages between workers of different
 * configurations (generations) that run at once while a reload drains
 * (docs/ARCHITECTURE.md §12). This file makes the mapping and keeps its
 * claims; ngx_ipc_bridge_send.cpp carries the messages,
 * ngx_ipc_bridge_wake.cpp the wake-ups, ngx_ipc_bridge_dir.cpp the
 * directory of the wake-up sockets' names.
 *
 * Each configuration keeps its own mapping for its own workers (the hot
 * path, unchanged). Beside it, the master makes one more mapping, once,
 * before it forks its first workers, and keeps it for its whole life: every
 * worker of every later configuration inherits it. It holds pages of
 * claims (which process of which generation holds each of its slots:
 * ipc_bridge_slots, 2048 by default) and then an ordinary ngx_ipc layout
 * of as many slots with 32 KiB inboxes. A worker claims a slot at attach
 * and gives it back at exit; messages for a worker of another generation
 * go through that layout's inboxes, with the same records, handshakes and
 * limits as within a configuration.
 *
 * A claim is the word generation << 32 | pid, which also names the
 * claimant's socket in the master's private directory: the claimant binds
 * that name before it writes the claim and clears the claim before it
 * closes the socket (ngx_ipc_bridge_wake.cpp wakes slots and tells dead
 * claimants). A worker takes a free slot, or one whose claimant is dead.
 *
 * Owns: the bridge mapping and its claims page, ngx_ipc_bridge_t (this
 * worker's slot, owner word, generation and endpoint; its other parts are
 * the other files').
 */

#include "ngx_ipc_bridge.h"

#include <sys/mman.h>

#include <new>


#define NGX_IPC_BRIDGE_MAGIC    0x3165676469726269ULL    /* "ibridge1" */
#define NGX_IPC_BRIDGE_VERSION  3    /* 2: no nonce, names in a directory;
                                        3: the inboxes of layout v3 */
#define NGX_IPC_BRIDGE_RING     (32 * 1024)   /* each slot's inbox */


static void ngx_ipc_bridge_cleanup(void *data);
static uint64_t ngx_ipc_bridge_owner(uint32_t generation, ngx_pid_t pid);
static uint32_t ngx_ipc_bridge_claim(uint64_t mine);
static void ngx_ipc_bridge_log(void *ctx, const char *msg, int err);


/* Made by the master before its first workers, kept until it exits. */
ngx_ipc_bridge_page_t         *ngx_ipc_bridge_page;
uint32_t                       ngx_ipc_bridge_nslots;
static size_t                  ngx_ipc_bridge_size;

/* set once the configuration that made the bridge is in place */
static ngx_uint_t              ngx_ipc_bridge_committed;

/* this process's claim */
ngx_ipc_bridge_t               ngx_ipc_bridge;


static ngx_ipc::ShmHeader *
ngx_ipc_bridge_shm(void)
{
    return (ngx_ipc::ShmHeader *) ((u_char *) ngx_ipc_bridge_page
                                   + NGX_IPC_BRIDGE_CLAIMS);
}


/*
 * In the master, at its first configuration with ngx_ipc: the directory of
 * the names and the mapping that every later worker inherits. Address
 * space, not memory (MAP_NORESERVE): pages only for the claims, the ring
 * control blocks the slots' processes touch, and the rings of the pairs
 * that talk across generations.
 */
ngx_int_t
ngx_ipc_bridge_init(ngx_cycle_t *cycle, ngx_uint_t nslots)
{
    void                *p;
    ngx_pool_cleanup_t  *cln;
    ngx_ipc::Config      c;
    ngx_ipc::Layout      l;

    if (ngx_ipc_bridge_page != NULL) {
        if (nslots != ngx_ipc_bridge_nslots) {
            ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                          "ngx_ipc: \"ipc_bridge_slots %ui\" takes effect "
                          "when nginx starts again; the reload bridge keeps "
                          "its %uD slots", nslots, ngx_ipc_bridge_nslots);
        }

        return NGX_OK;
    }

    c.nslots = (uint32_t) nslots;
    c.ring_size = NGX_IPC_BRIDGE_RING;
    c.max_message = 0xffffffffU;     /* each sender applies its own limits */
    c.queue_limit = ngx_ipc::kDefaultQueueLimit;
    c.generation = 0;
    l = ngx_ipc::compute_layout(c);

    ngx_ipc_bridge_size = NGX_IPC_BRIDGE_CLAIMS + l.total_size;

    cln = ngx_pool_cleanup_add(cycle->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    if (ngx_ipc_bridge_dir_make(cycle) != NGX_OK) {
        return NGX_ERROR;
    }

    p = mmap(NULL, ngx_ipc_bridge_size, PROT_READ|PROT_WRITE,
             MAP_SHARED|MAP_ANONYMOUS|MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "ngx_ipc: mmap(%uz) for the reload bridge failed",
                      ngx_ipc_bridge_size);
        ngx_ipc_bridge_dir_remove(cycle->log);
        return NGX_ERROR;
    }

    ngx_ipc_bridge_page = new (p) ngx_ipc_bridge_page_t;
    ngx_ipc_bridge_page->magic = NGX_IPC_BRIDGE_MAGIC;
    ngx_ipc_bridge_page->version = NGX_IPC_BRIDGE_VERSION;
    ngx_ipc_bridge_page->nslots = (uint32_t) nslots;
    ngx_ipc_bridge_nslots = (uint32_t) nslots;

    ngx_ipc::init_shm(ngx_ipc_bridge_shm(), c);

    cln->handler = ngx_ipc_bridge_cleanup;
    cln->data = NULL;

    return NGX_OK;
}


/* ngx_ipc_module's init_module: the configuration is in place (nothing
 * after init_module makes nginx give it up), and so is its error_log. */
void
ngx_ipc_bridge_init_module(ngx_cycle_t *cycle)
{
    if (ngx_ipc_bridge_page == NULL || ngx_ipc_bridge_committed) {
        return;
    }

    ngx_ipc_bridge_committed = 1;
    ngx_ipc_bridge_dir_announce(cycle->log);
}


/*
 * Runs when the cycle that made the bridge is destroyed: in the master at
 * the next reload or at exit, in a worker at its exit (the bridge outlives
 * the cycle: nothing to do), or when that cycle failed before init_module
 * (another module refused it, a listen address was taken): then no worker
 * saw the bridge, and it goes, directory first; a later configuration
 * makes it again.
 */
static void
ngx_ipc_bridge_cleanup(void *data)
{
    if (ngx_ipc_bridge_committed || ngx_ipc_bridge_page == NULL) {
        return;
    }

    /* ngx_cycle's log: the failed cycle's own files are closed by now */
    ngx_ipc_bridge_dir_remove(ngx_cycle->log);

    if (munmap(ngx_ipc_bridge_page, ngx_ipc_bridge_size) == -1) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, ngx_errno,
                      "ngx_ipc: munmap() the reload bridge failed");
    }

    ngx_ipc_bridge_page = NULL;
}


/*
 * In a worker, after it attached to its configuration: binds its name,
 * claims a slot, starts an endpoint in it and watches its socket. Without
 * a slot (all held by running processes) or a name, the worker still
 * works within its configuration; it says so once.
 */
void
ngx_ipc_bridge_attach(ngx_ipc_worker_t *w)
{
    uint32_t             k;
    uint64_t             mine;
    ngx_event_t         *rev;
    ngx_connection_t    *c;
    ngx_ipc_conf_t      *conf = w->conf;
    ngx_ipc_bridge_t    *b = &ngx_ipc_bridge;
    ngx_ipc::Endpoint   *ep;

    if (ngx_ipc_bridge_page == NULL || ngx_process != NGX_PROCESS_WORKER) {
        return;
    }

    b->generation = (uint32_t) ((ngx_ipc::ShmHeader *) conf->shm)->generation;
    b->epoch_seen = (uint64_t) -1;
    mine = ngx_ipc_bridge_owner(b->generation, ngx_pid);
    b->owner = mine;

    /* the name first: from the claim on, it must take datagrams */
    c = ngx_ipc_bridge_bind(mine);
    if (c == NULL) {
        return;
    }

    b->conn = c;

    k = ngx_ipc_bridge_claim(mine);

    if (k == ngx_ipc_bridge_nslots) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "ngx_ipc: the reload bridge's %uD slots are all held "
                      "by running workers: this worker reaches only the "
                      "workers of its own configuration (ipc_bridge_slots)",
                      ngx_ipc_bridge_nslots);
        ngx_ipc_bridge_unbind(b);
        return;
    }

    b->slot = k;

    try {
        b->others.reserve(ngx_ipc_bridge_nslots);
        b->others_pid.reserve(ngx_ipc_bridge_nslots);
        ep = new ngx_ipc::Endpoint(ngx_ipc_bridge_shm(), k, NULL,
                                   &w->endpoint->stats(),
                                   &w->endpoint->counters().queued_msgs);
    } catch (...) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "ngx_ipc: no memory for the reload bridge");
        ngx_ipc_bridge_forget(k, mine);
        ngx_ipc_bridge_unbind(b);
        return;
    }

    rev = c->read;
    rev->handler = ngx_ipc_bridge_handler;
    rev->log = ngx_cycle->log;
    c->data = w;

    if (ngx_add_event(rev, NGX_READ_EVENT, 0) == NGX_ERROR) {
        ngx_ipc_bridge_forget(k, mine);
        ngx_ipc_bridge_unbind(b);
        delete ep;
        return;
    }

    b->endpoint = ep;

    b->retry_ev.handler = ngx_ipc_bridge_retry;
    b->retry_ev.data = b;
    b->retry_ev.log = ngx_cycle->log;
    b->retry_ev.cancelable = 1;      /* never keeps an exiting worker */

    /* senders that listed the slot for its dead claimant drop it now
     * (a broadcast in between skips it: see others_pid) */
    ngx_ipc_bridge_page->epoch.fetch_add(1, std::memory_order_seq_cst);

    ep->set_logger(ngx_ipc_bridge_log, NULL);
    ep->set_waker(ngx_ipc_bridge_wake, b);
    ep->set_slot_alive_check(ngx_ipc_bridge_alive, b);
    ep->set_limits(conf->max_message, conf->queue_limit);

    /* the rings may hold what was sent to a dead claimant: not ours */
    ep->start((int32_t) ngx_pid, true);
    (void) ep->receive(NULL, 0);

    w->bridge = b;

    /* Seq_cst: senders that load the epoch after this see the claim and
     * the started identity. */
    ngx_ipc_bridge_page->epoch.fetch_add(1, std::memory_order_seq_cst);

    ngx_log_debug2(NGX_LOG_DEBUG_CORE, ngx_cycle->log, 0,
                   "ngx_ipc: reload bridge slot %uD, generation %uD",
                   k, b->generation);
}


/*
 * A slot for claim `mine`, whose name this process holds now; written with
 * a CAS, so two claimants never take one slot. In order:
 *
 *   - a slot that holds `mine` already: the claim of a process of this
 *     generation with this PID, dead since (this PID names this process
 *     now): its slot is ours as it is;
 *   - a free slot (0);
 *   - a slot whose claimant is dead (ngx_ipc_bridge_dead: its PID is no
 *     process, or its name refuses a datagram). The CAS fails if someone
 *     took it back or over meanwhile: the scan goes on.
 *
 * Acq_rel, as each claim and forget: the CAS that wins reads the word the
 * slot's last claim or forget wrote, so it sees what that process wrote
 * before (a claimant that exited: its endpoint's stop). What this process
 * writes after it (worker[k], its endpoint's start) is published by the
 * epoch bumps of ngx_ipc_bridge_attach.
 */
static uint32_t
ngx_ipc_bridge_claim(uint64_t mine)
{
    uint32_t  k;
    uint64_t  o;

    for (k = 0; k < ngx_ipc_bridge_nslots; k++) {
        if (ngx_ipc_bridge_page->owner[k].load(std::memory_order_acquire)
            == mine)
        {
            goto claimed;
        }
    }

    for (k = 0; k < ngx_ipc_bridge_nslots; k++) {
        o = 0;

        if (ngx_ipc_bridge_page->owner[k].compare_exchange_strong(
                o, mine, std::memory_order_acq_rel))
        {
            goto claimed;
        }
    }

    for (k = 0; k < ngx_ipc_bridge_nslots; k++) {
        o = ngx_ipc_bridge_page->owner[k].load(std::memory_order_acquire);

        if (o != 0 && ngx_ipc_bridge_dead(o)
            && ngx_ipc_bridge_page->owner[k].compare_exchange_strong(
                   o, mine, std::memory_order_acq_rel))
        {
            goto claimed;
        }
    }

    return ngx_ipc_bridge_nslots;

claimed:

    /* Relaxed: read beside the claim for the lists only; the epoch bump
     * that follows publishes it to those who rebuild them. */
    ngx_ipc_bridge_page->worker[k].store((uint32_t) ngx_worker,
                                         std::memory_order_relaxed);

    return k;
}


/* At exit: the slot is free again; the socket closes, its name goes. */
void
ngx_ipc_bridge_detach(ngx_ipc_worker_t *w)
{
    ngx_ipc_bridge_t  *b = w->bridge;

    if (b == NULL) {
        return;
    }

    w->bridge = NULL;

    if (b->retry_ev.timer_set) {
        ngx_del_timer(&b->retry_ev);
    }

    b->endpoint->stop();
    ngx_ipc_bridge_forget(b->slot, b->owner);
    ngx_ipc_bridge_unbind(b);
}


static uint64_t
ngx_ipc_bridge_owner(uint32_t generation, ngx_pid_t pid)
{
    return ((uint64_t) generation << 32) | (uint32_t) pid;
}


/* Clears slot k's claim if it is still `owner` (a process that is gone,
 * or this one at exit): a new claimant's is never clobbered. */
void
ngx_ipc_bridge_forget(uint32_t k, uint64_t owner)
{
    uint64_t  o = owner;

    if (ngx_ipc_bridge_page->owner[k].compare_exchange_strong(
            o, 0, std::memory_order_acq_rel))
    {
        ngx_ipc_bridge_page->epoch.fetch_add(1, std::memory_order_seq_cst);
    }
}


static void
ngx_ipc_bridge_log(void *ctx, const char *msg, int err)
{
    ngx_ipc_log_limited(err ? NGX_LOG_ALERT : NGX_LOG_ERR, err, msg);
}
