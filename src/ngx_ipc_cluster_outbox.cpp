/*
 * ngx_ipc cluster outbox: every worker's cluster broadcasts, in one FIFO of
 * framed records in the cluster zone, until the agent has added them to the
 * Redis stream.
 *
 * The outbox has many producers (every process of every generation that
 * shares the zone) and one consumer (the agent). Producers serialize on a
 * lock word that holds the owner's PID, so that a producer killed while it
 * holds it is detected and the lock taken over; a record becomes visible only
 * when head is stored after it is whole, so a half-written record is never
 * read. The agent moves tail only once Redis acknowledged the entries: an
 * agent killed before that leaves them for the next one, which sends them
 * again (receivers drop a sequence number they have seen: see the Lua).
 *
 * Owns: ClusterShared's lock_pid, seq, head, tail, armed and data.
 */

#include "ngx_ipc_cluster.h"

#include <sched.h>


static bool ngx_ipc_cluster_lock(ClusterShared *cs);
static void ngx_ipc_cluster_unlock(ClusterShared *cs);



/* A cluster broadcast: delivered to this node's workers through the local
 * path and queued in the outbox for the agent, both or neither. *kick_pid:
 * the agent to wake (it sleeps), or 0. NGX_OK, or an NGX_IPC_FFI_E_ code
 * (ngx_ipc_ffi.h). */
int
ngx_ipc_ffi_cluster_broadcast(const u_char *name, size_t name_len,
    const u_char *data, size_t data_len, int include_self, int *kick_pid)
{
    ngx_ipc_cluster_conf_t  *ccf;
    ClusterShared           *cs;
    OutRecord                h;
    std::uint64_t            head, tail, pos, skip, need, cap;
    int                      rc;

    *kick_pid = 0;

    ccf = ngx_ipc_cluster_conf();
    cs = ngx_ipc_cluster_shared();
    if (ccf == NULL || cs == NULL) {
        return NGX_IPC_FFI_E_NO_CLUSTER;
    }

    if (data_len > ccf->max_message) {
        cs->counters[kRefused].fetch_add(1, std::memory_order_relaxed);
        return NGX_IPC_FFI_E_TOO_LARGE;
    }

    cap = cs->capacity;
    need = align8(sizeof(OutRecord) + name_len + data_len);

    if (!ngx_ipc_cluster_lock(cs)) {
        cs->counters[kRefused].fetch_add(1, std::memory_order_relaxed);
        return NGX_IPC_FFI_E_QUEUE_FULL;
    }

    head = cs->head.load(std::memory_order_relaxed);
    /* Acquire: pairs with the agent's release of tail; the bytes before it
     * are no longer read, we may overwrite them. */
    tail = cs->tail.load(std::memory_order_acquire);
    pos = head % cap;
    skip = (cap - pos < need) ? cap - pos : 0;

    if (head + skip + need - tail > cap) {
        ngx_ipc_cluster_unlock(cs);
        cs->counters[kRefused].fetch_add(1, std::memory_order_relaxed);
        return NGX_IPC_FFI_E_QUEUE_FULL;
    }

    /* the local part first: if it is refused, nothing is queued */
    rc = ngx_ipc_ffi_broadcast(name, name_len, data, data_len, include_self);
    if (rc != NGX_OK) {
        ngx_ipc_cluster_unlock(cs);
        return rc;
    }

    if (skip >= sizeof(OutRecord)) {
        ngx_memzero(&h, sizeof(h));
        h.size = (std::uint32_t) skip;
        h.magic = kOutPad;
        ngx_memcpy(cs->data + pos, &h, sizeof(h));
    }

    pos = (head + skip) % cap;
    h.size = (std::uint32_t) need;
    h.magic = kOutMagic;
    h.seq = ++cs->seq;
    h.pid = (std::int32_t) ngx_pid;
    h.name_len = (std::uint32_t) name_len;
    h.data_len = data_len;
    ngx_memcpy(cs->data + pos, &h, sizeof(h));
    ngx_memcpy(cs->data + pos + sizeof(h), name, name_len);
    if (data_len) {
        ngx_memcpy(cs->data + pos + sizeof(h) + name_len, data, data_len);
    }

    /* Release: publishes the record to the agent's acquire load of head. */
    cs->head.store(head + skip + need, std::memory_order_release);
    ngx_ipc_cluster_unlock(cs);

    cs->counters[kPublished].fetch_add(1, std::memory_order_relaxed);

    /* Dekker with ngx_ipc_ffi_cluster_arm(): the agent stores armed, then
     * reads head; we stored head, then read armed. One of us sees the
     * other's store, so a record is never left with the agent asleep. */
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (cs->armed.load(std::memory_order_relaxed)
        && cs->armed.exchange(0, std::memory_order_relaxed))
    {
        *kick_pid = cs->agent_pid.load(std::memory_order_relaxed);
    }

    return NGX_OK;
}



/* bytes waiting in the outbox */
uint64_t
ngx_ipc_ffi_cluster_queued(void)
{
    ClusterShared  *cs = ngx_ipc_cluster_shared();

    return cs ? cs->head.load(std::memory_order_relaxed)
                - cs->tail.load(std::memory_order_relaxed)
              : 0;
}


uint64_t
ngx_ipc_ffi_cluster_tail(void)
{
    ClusterShared  *cs = ngx_ipc_cluster_shared();

    return cs ? cs->tail.load(std::memory_order_relaxed) : 0;
}


/* The agent's read: up to max entries (and about max_bytes) from position
 * `from` on; *end is the position after the last one returned. */
int
ngx_ipc_ffi_cluster_peek(ngx_ipc_cluster_entry_t *out, int max,
    size_t max_bytes, uint64_t from, uint64_t *end)
{
    ClusterShared  *cs;
    OutRecord       h;
    std::uint64_t   head, cap, pos, r, bytes;
    int             n;

    cs = ngx_ipc_cluster_shared();
    *end = from;
    if (cs == NULL) {
        return NGX_ERROR;
    }

    cap = cs->capacity;
    /* Acquire: pairs with the producers' release of head; the records
     * before it are whole. */
    head = cs->head.load(std::memory_order_acquire);
    r = from;
    n = 0;
    bytes = 0;

    while (r < head && n < max && bytes < max_bytes) {
        pos = r % cap;
        if (cap - pos < sizeof(OutRecord)) {
            r += cap - pos;                   /* too short for a pad record */
            continue;
        }

        ngx_memcpy(&h, cs->data + pos, sizeof(h));

        if (h.magic == kOutPad && h.size == cap - pos) {
            r += h.size;
            continue;
        }

        if (h.magic != kOutMagic || h.size > cap - pos
            || h.size != align8(sizeof(OutRecord) + h.name_len + h.data_len)
            || r + h.size > head)
        {
            /* cannot happen short of memory corruption: drop the rest */
            ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                          "ipc_cluster: corrupt outbox record at %uL, "
                          "%uL bytes dropped", r, head - r);
            cs->counters[kErrors].fetch_add(1, std::memory_order_relaxed);
            ngx_ipc_ffi_cluster_commit(head);
            *end = head;
            return n;
        }

        out[n].name = cs->data + pos + sizeof(h);
        out[n].name_len = h.name_len;
        out[n].data = cs->data + pos + sizeof(h) + h.name_len;
        out[n].data_len = h.data_len;
        out[n].seq = h.seq;
        out[n].pid = h.pid;
        n++;
        bytes += h.size;
        r += h.size;
    }

    *end = r;
    return n;
}


void
ngx_ipc_ffi_cluster_commit(uint64_t end)
{
    ClusterShared  *cs = ngx_ipc_cluster_shared();

    if (cs != NULL) {
        /* Release: the agent is done with the bytes before end. */
        cs->tail.store(end, std::memory_order_release);
    }
}


/* The agent is about to sleep: 1 if the outbox has records past `from`
 * (then it does not sleep), else 0 and the next broadcast kicks it. */
int
ngx_ipc_ffi_cluster_arm(uint64_t from)
{
    ClusterShared  *cs = ngx_ipc_cluster_shared();

    if (cs == NULL) {
        return 0;
    }

    cs->armed.store(1, std::memory_order_relaxed);
    /* Dekker: see ngx_ipc_ffi_cluster_broadcast() */
    std::atomic_thread_fence(std::memory_order_seq_cst);

    if (cs->head.load(std::memory_order_acquire) != from) {
        cs->armed.store(0, std::memory_order_relaxed);
        return 1;
    }

    return 0;
}



/* The producers' lock. Its word holds the owner's PID; a waiter that finds
 * the owner gone (killed while it held it) takes the lock over: the owner's
 * half-written record was never published, so nothing is lost. Bounded: a
 * waiter gives up after 20000 tries (the owner is stopped, not dead). */
static bool
ngx_ipc_cluster_lock(ClusterShared *cs)
{
    std::int32_t  expected, me;

    me = (std::int32_t) ngx_pid;

    for (ngx_uint_t i = 0; i < 20000; i++) {
        expected = 0;
        if (cs->lock_pid.compare_exchange_weak(expected, me,
                                               std::memory_order_acquire))
        {
            return true;
        }

        if (expected == me) {
            /* a predecessor with our PID died holding it */
            return true;
        }

        if (i % 64 == 63 && expected != 0
            && !ngx_ipc_cluster_pid_alive(expected)
            && cs->lock_pid.compare_exchange_strong(expected, me,
                                                    std::memory_order_acquire))
        {
            return true;
        }

        if (i >= 16) {
            sched_yield();
        }
    }

    return false;
}


static void
ngx_ipc_cluster_unlock(ClusterShared *cs)
{
    /* Release: the record and seq written under the lock. */
    cs->lock_pid.store(0, std::memory_order_release);
}

