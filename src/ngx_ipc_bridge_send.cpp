/*
 * ngx_ipc reload bridge: messages to and from the workers of the other
 * generations (docs/ARCHITECTURE.md §12). A broadcast checks their room
 * before the configuration's own part (all or nothing across both paths),
 * then goes to each of them through Endpoint::multicast, addressed to the
 * incarnation that holds each slot; a send or call goes to the slot its
 * PID holds; the reader takes the bridge's inbox beside its own.
 *
 * Owns: ngx_ipc_bridge_t's list of the other generations' slots (others,
 * others_pid, epoch_seen), probed, batch, and dirty (which the socket's
 * read handler, ngx_ipc_bridge_wake.cpp, sets).
 */

#include "ngx_ipc_bridge.h"


static void ngx_ipc_bridge_others(ngx_ipc_bridge_t *b);


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

    for (k = 0; k < ngx_ipc_bridge_nslots; k++) {
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

    for (k = 0; k < ngx_ipc_bridge_nslots; k++) {
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


/* The retry timer (ngx_ipc_backlog_watch()): the bridge's backlogs too. */
void
ngx_ipc_bridge_retry_all(ngx_ipc_worker_t *w)
{
    if (w->bridge != NULL && w->bridge->endpoint != NULL) {
        w->bridge->endpoint->retry_all();
    }
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

    for (k = 0; k < ngx_ipc_bridge_nslots && n < max; k++) {
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
