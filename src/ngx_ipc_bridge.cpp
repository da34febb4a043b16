/*
 * ngx_ipc reload bridge: messages between workers of different
 * configurations (generations) that run at once while a reload drains
 * (docs/ARCHITECTURE.md §12).
 *
 * Each configuration keeps its own mapping for its own workers (the hot
 * path, unchanged). Beside it, the master makes one more mapping, once,
 * before it forks its first workers, and keeps it for its whole life: every
 * worker of every later configuration inherits it. It holds a page of
 * claims (which process of which generation holds each of its 256 slots)
 * and then an ordinary ngx_ipc layout of 256 slots with 16 KiB rings. A
 * worker claims a slot at attach and gives it back at exit; messages for a
 * worker of another generation go through that layout's rings, with the
 * same records, handshakes and limits as within a configuration.
 *
 * A slot's process is woken by a datagram to the abstract unix socket the
 * slot's name binds ("\0ngx_ipc/<master pid>/<nonce>/<slot>"), not by an
 * eventfd: fds made after a process was forked cannot reach it, names can.
 * Binding the name is also what claims the slot: a process binds before it
 * writes its claim, so a live claimant always holds its name, and a name
 * that can be bound, or that refuses a datagram (ECONNREFUSED), belongs to
 * no live process. That is how dead claims are found and taken back
 * without trusting PIDs, which are reused (kill(pid, 0) is asked as well,
 * so that a name squatted by another local process keeps no dead claim).
 *
 * Owns: the bridge mapping and its claims page, ngx_ipc_bridge_t (this
 * worker's slot, endpoint, socket and the cached list of the other
 * generations' slots).
 */

#include "ngx_ipc_module.h"

#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <atomic>
#include <new>
#include <vector>


#define NGX_IPC_BRIDGE_MAGIC    0x3165676469726269ULL    /* "ibridge1" */
#define NGX_IPC_BRIDGE_VERSION  1
#define NGX_IPC_BRIDGE_RING     (16 * 1024)


/* The claims page, at the start of the bridge mapping. */
struct ngx_ipc_bridge_page_t {
    uint64_t                         magic;
    uint32_t                         version;
    uint32_t                         nslots;
    uint64_t                         nonce;
    int32_t                          master_pid;
    uint32_t                         pad0;

    /* +1 whenever a claim is made or given back: senders rebuild their
     * list of the other generations' slots when it moved */
    alignas(64) std::atomic<uint64_t> epoch;

    /* (generation << 32) | pid of the slot's claimant, 0: free */
    alignas(64) std::atomic<uint64_t> owner[NGX_IPC_BRIDGE_SLOTS];

    /* the claimant's ngx_worker, for the lists */
    std::atomic<uint32_t>            worker[NGX_IPC_BRIDGE_SLOTS];
};

static_assert(sizeof(ngx_ipc_bridge_page_t) <= 4096, "one page");


struct ngx_ipc_bridge_s {
    ngx_ipc::Endpoint               *endpoint;
    ngx_connection_t                *conn;        /* the slot's socket */
    uint32_t                         slot;
    uint32_t                         generation;
    uint64_t                         epoch_seen;
    std::vector<uint32_t>            others;      /* other generations' */
    std::vector<int32_t>             others_pid;  /* who held them then */
    ngx_msec_t                       probed[NGX_IPC_BRIDGE_SLOTS];
    u_char                           retry[NGX_IPC_BRIDGE_SLOTS];
    ngx_event_t                      retry_ev;    /* wake-ups to send again */
    unsigned                         dirty:1;     /* inbox may hold records */
    unsigned                         batch:1;     /* a batch to release */
};


static uint64_t ngx_ipc_bridge_owner(uint32_t generation, ngx_pid_t pid);
static void ngx_ipc_bridge_name(uint32_t slot, struct sockaddr_un *sa,
    socklen_t *len);
static void ngx_ipc_bridge_wake(void *ctx, uint32_t k);
static void ngx_ipc_bridge_retry(ngx_event_t *ev);
static bool ngx_ipc_bridge_alive(void *ctx, uint32_t k, int32_t pid);
static bool ngx_ipc_bridge_probe(uint32_t k);
static void ngx_ipc_bridge_forget(uint32_t k, uint64_t owner);
static void ngx_ipc_bridge_handler(ngx_event_t *rev);
static void ngx_ipc_bridge_others(ngx_ipc_bridge_t *b);
static void ngx_ipc_bridge_log(void *ctx, const char *msg, int err);


/* Made by the master before its first workers, kept until it exits. */
static ngx_ipc_bridge_page_t  *ngx_ipc_bridge_page;
static size_t                  ngx_ipc_bridge_size;

/* this process's claim */
static ngx_ipc_bridge_t        ngx_ipc_bridge;


static ngx_ipc::ShmHeader *
ngx_ipc_bridge_shm(void)
{
    return (ngx_ipc::ShmHeader *) ((u_char *) ngx_ipc_bridge_page + 4096);
}


/*
 * In the master, at its first configuration with ngx_ipc: the mapping that
 * every later worker inherits. Address space, not memory (MAP_NORESERVE):
 * pages only for the claims, the ring control blocks the slots' processes
 * touch, and the rings of the pairs that talk across generations.
 */
ngx_int_t
ngx_ipc_bridge_init(ngx_cycle_t *cycle)
{
    void             *p;
    uint64_t          nonce;
    ngx_ipc::Config   c;
    ngx_ipc::Layout   l;

    if (ngx_ipc_bridge_page != NULL) {
        return NGX_OK;
    }

    c.nslots = NGX_IPC_BRIDGE_SLOTS;
    c.ring_size = NGX_IPC_BRIDGE_RING;
    c.max_message = 0xffffffffU;     /* each sender applies its own limits */
    c.queue_limit = ngx_ipc::kDefaultQueueLimit;
    c.generation = 0;
    l = ngx_ipc::compute_layout(c);

    ngx_ipc_bridge_size = 4096 + l.total_size;

    p = mmap(NULL, ngx_ipc_bridge_size, PROT_READ|PROT_WRITE,
             MAP_SHARED|MAP_ANONYMOUS|MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "ngx_ipc: mmap(%uz) for the reload bridge failed",
                      ngx_ipc_bridge_size);
        return NGX_ERROR;
    }

    if (getrandom(&nonce, sizeof(nonce), 0) != (ssize_t) sizeof(nonce)) {
        nonce = ((uint64_t) ngx_time() << 20) ^ (uint64_t) ngx_pid
                ^ (uint64_t) (uintptr_t) p;
    }

    ngx_ipc_bridge_page = new (p) ngx_ipc_bridge_page_t;
    ngx_ipc_bridge_page->magic = NGX_IPC_BRIDGE_MAGIC;
    ngx_ipc_bridge_page->version = NGX_IPC_BRIDGE_VERSION;
    ngx_ipc_bridge_page->nslots = NGX_IPC_BRIDGE_SLOTS;
    ngx_ipc_bridge_page->nonce = nonce;
    ngx_ipc_bridge_page->master_pid = (int32_t) ngx_pid;

    ngx_ipc::init_shm(ngx_ipc_bridge_shm(), c);

    return NGX_OK;
}


/*
 * In a worker, after it attached to its configuration: binds a free slot's
 * name, claims the slot, starts an endpoint in it and watches its socket.
 * Without a slot (all 256 held by running processes) the worker still works
 * within its configuration; it says so once.
 */
void
ngx_ipc_bridge_attach(ngx_ipc_worker_t *w)
{
    int                  fd;
    uint32_t             k;
    uint64_t             o, mine;
    socklen_t            len;
    ngx_event_t         *rev;
    ngx_connection_t    *c;
    ngx_ipc_conf_t      *conf = w->conf;
    ngx_ipc_bridge_t    *b = &ngx_ipc_bridge;
    ngx_ipc::Endpoint   *ep;
    struct sockaddr_un   sa;

    if (ngx_ipc_bridge_page == NULL || ngx_process != NGX_PROCESS_WORKER) {
        return;
    }

    fd = socket(AF_UNIX, SOCK_DGRAM|SOCK_NONBLOCK|SOCK_CLOEXEC, 0);
    if (fd == -1) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, ngx_errno,
                      "ngx_ipc: socket() for the reload bridge failed");
        return;
    }

    for (k = 0; k < NGX_IPC_BRIDGE_SLOTS; k++) {
        ngx_ipc_bridge_name(k, &sa, &len);

        if (bind(fd, (struct sockaddr *) &sa, len) == 0) {
            break;
        }

        if (ngx_errno != EADDRINUSE) {
            ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, ngx_errno,
                          "ngx_ipc: bind() for the reload bridge failed");
            close(fd);
            return;
        }
    }

    if (k == NGX_IPC_BRIDGE_SLOTS) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "ngx_ipc: the reload bridge's %d slots are all held "
                      "by running workers: this worker reaches only the "
                      "workers of its own configuration",
                      NGX_IPC_BRIDGE_SLOTS);
        close(fd);
        return;
    }

    b->slot = k;
    b->generation = (uint32_t) ((ngx_ipc::ShmHeader *) conf->shm)->generation;
    b->epoch_seen = (uint64_t) -1;

    try {
        b->others.reserve(NGX_IPC_BRIDGE_SLOTS);
        b->others_pid.reserve(NGX_IPC_BRIDGE_SLOTS);
        ep = new ngx_ipc::Endpoint(ngx_ipc_bridge_shm(), k, NULL,
                                   &w->endpoint->stats());
    } catch (...) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "ngx_ipc: no memory for the reload bridge");
        close(fd);
        return;
    }

    c = ngx_get_connection(fd, ngx_cycle->log);
    if (c == NULL) {
        delete ep;
        close(fd);
        return;
    }

    rev = c->read;
    rev->handler = ngx_ipc_bridge_handler;
    rev->log = ngx_cycle->log;
    c->data = w;

    if (ngx_add_event(rev, NGX_READ_EVENT, 0) == NGX_ERROR) {
        ngx_free_connection(c);
        c->fd = (ngx_socket_t) -1;
        close(fd);
        delete ep;
        return;
    }

    b->conn = c;
    b->endpoint = ep;

    b->retry_ev.handler = ngx_ipc_bridge_retry;
    b->retry_ev.data = b;
    b->retry_ev.log = ngx_cycle->log;
    b->retry_ev.cancelable = 1;      /* never keeps an exiting worker */

    /* Holding the name, the slot is ours: a claim still written there is
     * a dead process's. */
    mine = ngx_ipc_bridge_owner(b->generation, ngx_pid);
    ngx_ipc_bridge_page->worker[k].store((uint32_t) ngx_worker,
                                         std::memory_order_relaxed);
    o = ngx_ipc_bridge_page->owner[k].load(std::memory_order_relaxed);
    while (!ngx_ipc_bridge_page->owner[k].compare_exchange_weak(
                o, mine, std::memory_order_acq_rel))
    {
        /* someone took back the dead claim meanwhile: retry */
    }

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


/* At exit: the slot is free again, and its name with the socket. */
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
    ngx_ipc_bridge_forget(b->slot,
                          ngx_ipc_bridge_owner(b->generation, ngx_pid));

    if (b->conn != NULL) {
        if (close(b->conn->fd) == -1) {
            ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, ngx_errno,
                          "ngx_ipc: close() the reload bridge socket failed");
        }

        ngx_free_connection(b->conn);
        b->conn->fd = (ngx_socket_t) -1;
        b->conn = NULL;
    }
}


/* The other generations' slots with a claim, rebuilt when the epoch moved:
 * one load per broadcast while nothing changes. */
static void
ngx_ipc_bridge_others(ngx_ipc_bridge_t *b)
{
    uint32_t  k;
    uint64_t  e, o;

    e = ngx_ipc_bridge_page->epoch.load(std::memory_order_acquire);
    if (e == b->epoch_seen) {
        return;
    }

    b->others.clear();
    b->others_pid.clear();

    for (k = 0; k < NGX_IPC_BRIDGE_SLOTS; k++) {
        o = ngx_ipc_bridge_page->owner[k].load(std::memory_order_acquire);

        if (o == 0) {
            /* a claim taken back (its process died): what waited for it
             * will never be read */
            b->endpoint->forget(k);
            continue;
        }

        if (k != b->slot && (o & 0xffffffffU) != 0
            && (uint32_t) (o >> 32) != b->generation)
        {
            b->others.push_back(k);
            b->others_pid.push_back((int32_t) (o & 0xffffffffU));
        }
    }

    b->epoch_seen = e;
}


/* Before the configuration's own broadcast: whether every other
 * generation's worker has room (all or nothing, across both paths). */
ngx_ipc::Status
ngx_ipc_bridge_check(ngx_ipc_worker_t *w)
{
    size_t             i;
    uint32_t           k;
    ngx_ipc_bridge_t  *b = w->bridge;

    ngx_ipc_bridge_others(b);

    if (b->others.empty()) {
        return ngx_ipc::Status::kOk;
    }

    /*
     * A worker that was killed may have been awake, so no wake-up told us
     * it is gone: its ring fills, then our backlog for it. Once a backlog
     * holds anything, each broadcast asks whether its reader still runs
     * (one syscall, only for a pair whose ring is full).
     */
    for (i = 0; i < b->others.size(); i++) {
        k = b->others[i];

        /* at most one probe per slot every 10 ms: each datagram stays
         * charged to our socket until its reader takes it */
        if (b->endpoint->backlog_bytes(k) > 0
            && ngx_current_msec - b->probed[k] >= 10)
        {
            b->probed[k] = ngx_current_msec;
            (void) ngx_ipc_bridge_probe(k);
        }
    }

    ngx_ipc_bridge_others(b);

    return b->endpoint->check_room(b->others.data(), b->others.size());
}


/* After it: the same message for every other generation's worker. */
ngx_ipc::Status
ngx_ipc_bridge_broadcast(ngx_ipc_worker_t *w, const u_char *name,
    size_t name_len, const u_char *data, size_t data_len)
{
    ngx_ipc_bridge_t  *b = w->bridge;

    if (b->others.empty()) {
        return ngx_ipc::Status::kOk;
    }

    return b->endpoint->multicast(b->others.data(), b->others_pid.data(),
                                  b->others.size(), name, name_len, data,
                                  data_len);
}


/* The bridge slot of pid if it is a running worker of another
 * generation, else -1. */
int
ngx_ipc_bridge_find(ngx_ipc_worker_t *w, int32_t pid)
{
    uint32_t  k;
    uint64_t  o;

    if (w->bridge == NULL || pid <= 0) {
        return -1;
    }

    for (k = 0; k < NGX_IPC_BRIDGE_SLOTS; k++) {
        o = ngx_ipc_bridge_page->owner[k].load(std::memory_order_acquire);

        if ((int32_t) (o & 0xffffffffU) == pid
            && w->bridge->endpoint->slot_pid(k) == pid)
        {
            if (kill(pid, 0) == -1 && ngx_errno == ESRCH) {
                ngx_ipc_bridge_forget(k, o);     /* it died: no such worker */
                continue;
            }

            return (int) k;
        }
    }

    return -1;
}


ngx_ipc::Status
ngx_ipc_bridge_send(ngx_ipc_worker_t *w, int slot, int32_t pid,
    const u_char *name, size_t name_len, const u_char *data, size_t data_len,
    uint16_t flags, uint32_t call_id)
{
    return w->bridge->endpoint->send_slot((uint32_t) slot, pid, name,
                                          name_len, data, data_len, flags,
                                          call_id);
}


/* Up to max messages from the bridge's inbox, only once its socket said
 * something came (or the last batch was not its last): 0 means empty and
 * armed, as for the configuration's inbox. */
int
ngx_ipc_bridge_take(ngx_ipc_worker_t *w, ngx_ipc::Delivery *out, int max)
{
    int                n;
    ngx_ipc_bridge_t  *b = w->bridge;

    if (!b->dirty) {
        return 0;
    }

    n = b->endpoint->receive(out, max);

    if (n == 0) {
        b->dirty = 0;

    } else {
        b->batch = 1;
    }

    return n;
}


void
ngx_ipc_bridge_release(ngx_ipc_worker_t *w)
{
    ngx_ipc_bridge_t  *b = w->bridge;

    if (b->batch) {
        b->batch = 0;
        b->endpoint->release();
    }
}


/* The other generations' running workers, for ipc.pids({ all = true }) and
 * the status page; a claim whose process is gone is taken back. */
int
ngx_ipc_bridge_peers(ngx_ipc_worker_t *w, ngx_ipc_peer_t *out, int max)
{
    int        n;
    uint32_t   k;
    uint64_t   o;
    int32_t    pid;

    if (w->bridge == NULL) {
        return 0;
    }

    n = 0;

    for (k = 0; k < NGX_IPC_BRIDGE_SLOTS && n < max; k++) {
        o = ngx_ipc_bridge_page->owner[k].load(std::memory_order_acquire);
        pid = (int32_t) (o & 0xffffffffU);

        if (pid == 0 || (uint32_t) (o >> 32) == w->bridge->generation) {
            continue;
        }

        if (kill(pid, 0) == -1 && ngx_errno == ESRCH) {
            ngx_ipc_bridge_forget(k, o);
            continue;
        }

        out[n].pid = pid;
        out[n].generation = (uint32_t) (o >> 32);
        out[n].worker = ngx_ipc_bridge_page->worker[k].load(
                            std::memory_order_relaxed);
        n++;
    }

    return n;
}


/* The socket said the bridge's inbox has mail or a ring has room. */
static void
ngx_ipc_bridge_handler(ngx_event_t *rev)
{
    int                  i;
    u_char               buf[64];
    ngx_connection_t    *c = (ngx_connection_t *) rev->data;
    ngx_ipc_worker_t    *w = (ngx_ipc_worker_t *) c->data;
    ngx_ipc_bridge_t    *b = w->bridge;

    if (b == NULL) {
        return;
    }

    /* each datagram is one wake-up: read them all (bounded; the next
     * ones raise the event again) */
    for (i = 0; i < 1024; i++) {
        if (recv(c->fd, buf, sizeof(buf), 0) == -1) {
            if (ngx_errno != NGX_EAGAIN && ngx_errno != NGX_EINTR) {
                ngx_ipc_log_limited(NGX_LOG_ALERT, ngx_errno,
                                    "recv() from the reload bridge failed");
            }

            break;
        }
    }

    b->endpoint->flush();
    ngx_ipc_space_freed(w);

    b->dirty = 1;

    if (w->sema != NULL) {
        w->sema_post(w->sema, 1);
        return;
    }

    ngx_ipc_drop_undelivered(w, b->endpoint);
    b->dirty = 0;
}


static uint64_t
ngx_ipc_bridge_owner(uint32_t generation, ngx_pid_t pid)
{
    return ((uint64_t) generation << 32) | (uint32_t) pid;
}


static void
ngx_ipc_bridge_name(uint32_t slot, struct sockaddr_un *sa, socklen_t *len)
{
    u_char  *p;

    ngx_memzero(sa, sizeof(struct sockaddr_un));
    sa->sun_family = AF_UNIX;

    /* sun_path[0] = 0: Linux's abstract namespace, no file */
    p = ngx_snprintf((u_char *) sa->sun_path + 1, sizeof(sa->sun_path) - 2,
                     "ngx_ipc/%D/%016uxL/%uD",
                     (int32_t) ngx_ipc_bridge_page->master_pid,
                     ngx_ipc_bridge_page->nonce, slot);

    *len = (socklen_t) (offsetof(struct sockaddr_un, sun_path)
                        + (p - (u_char *) sa->sun_path));
}


/* Sends slot k's socket an empty datagram: NGX_OK; NGX_DECLINED if no
 * process holds the name (ECONNREFUSED: the claimant is gone); NGX_AGAIN
 * if it could not go now (EAGAIN: the reader's queue is full, or ours is,
 * each datagram being charged to us until its reader takes it). */
static ngx_int_t
ngx_ipc_bridge_send_wake(uint32_t k)
{
    socklen_t           len;
    struct sockaddr_un  sa;

    if (ngx_ipc_bridge.conn == NULL) {
        return NGX_OK;
    }

    ngx_ipc_bridge_name(k, &sa, &len);

    for ( ;; ) {
        if (sendto(ngx_ipc_bridge.conn->fd, "", 0, 0,
                   (struct sockaddr *) &sa, len) == 0)
        {
            return NGX_OK;
        }

        if (ngx_errno == NGX_EINTR) {
            continue;
        }

        if (ngx_errno == ECONNREFUSED || ngx_errno == ENOENT) {
            return NGX_DECLINED;
        }

        if (ngx_errno == NGX_EAGAIN) {
            return NGX_AGAIN;
        }

        ngx_ipc_log_limited(NGX_LOG_ALERT, ngx_errno,
                            "sendto() to the reload bridge failed");

        return NGX_AGAIN;
    }
}


/* The bridge endpoint's waker (Wakeup::set_waker). */
static void
ngx_ipc_bridge_wake(void *ctx, uint32_t k)
{
    uint64_t  o;

    o = ngx_ipc_bridge_page->owner[k].load(std::memory_order_acquire);
    if (o == 0) {
        return;                  /* nobody holds it: nobody to wake */
    }

    switch (ngx_ipc_bridge_send_wake(k)) {

    case NGX_DECLINED:
        ngx_ipc_bridge_forget(k, o);
        break;

    case NGX_AGAIN:
        /*
         * We cleared its flag, so this wake-up is ours to deliver: no other
         * sender will send one. Send it again in 1 ms, and until it goes.
         */
        ngx_ipc_bridge.retry[k] = 1;

        if (!ngx_ipc_bridge.retry_ev.timer_set) {
            ngx_add_timer(&ngx_ipc_bridge.retry_ev, 1);
        }

        break;

    default:
        break;
    }
}


static void
ngx_ipc_bridge_retry(ngx_event_t *ev)
{
    uint32_t           k;
    uint64_t           o;
    ngx_uint_t         left;
    ngx_ipc_bridge_t  *b = (ngx_ipc_bridge_t *) ev->data;

    left = 0;

    for (k = 0; k < NGX_IPC_BRIDGE_SLOTS; k++) {
        if (!b->retry[k]) {
            continue;
        }

        o = ngx_ipc_bridge_page->owner[k].load(std::memory_order_acquire);

        switch (o == 0 ? NGX_OK : ngx_ipc_bridge_send_wake(k)) {

        case NGX_DECLINED:
            ngx_ipc_bridge_forget(k, o);
            b->retry[k] = 0;
            break;

        case NGX_AGAIN:
            left++;
            break;

        default:
            b->retry[k] = 0;
            break;
        }
    }

    if (left > 0) {
        ngx_add_timer(ev, 1);
    }
}


/* Whether slot k's claimant still runs: its name still takes datagrams
 * and its PID is a process (a name squatted by another local process must
 * not keep a dead claim alive). */
static bool
ngx_ipc_bridge_probe(uint32_t k)
{
    uint64_t  o;
    int32_t   pid;

    o = ngx_ipc_bridge_page->owner[k].load(std::memory_order_acquire);
    if (o == 0) {
        return false;
    }

    pid = (int32_t) (o & 0xffffffffU);

    if (ngx_ipc_bridge_send_wake(k) != NGX_DECLINED
        && !(kill(pid, 0) == -1 && ngx_errno == ESRCH))
    {
        return true;
    }

    ngx_ipc_bridge_forget(k, o);

    return false;
}


/* The core's alive check for slot k, whose backlog is full: pid must
 * still hold its claim, and run. */
static bool
ngx_ipc_bridge_alive(void *ctx, uint32_t k, int32_t pid)
{
    uint64_t  o;

    o = ngx_ipc_bridge_page->owner[k].load(std::memory_order_acquire);

    return (int32_t) (o & 0xffffffffU) == pid && ngx_ipc_bridge_probe(k);
}


/* Clears slot k's claim if it is still `owner` (a process that is gone,
 * or this one at exit): a new claimant's is never clobbered. */
static void
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
