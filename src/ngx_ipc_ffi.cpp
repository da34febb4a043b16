/*
 * ngx_ipc FFI: the messages' half of the C ABI (src/ngx_ipc_ffi.h) that
 * lib/ngx/ipc.lua calls through LuaJIT's FFI: send, broadcast, take, and
 * the check of the ABI's layout.
 */

#include "ngx_ipc_module.h"

#include "ngx_ipc/status.h"


/* The C structs of ngx_ipc_ffi.h are the core's, seen from C and Lua. */
#define NGX_IPC_SAME(c, cpp, f)                                               \
    static_assert(offsetof(c, f) == offsetof(cpp, f), #c "." #f)

static_assert(sizeof(ngx_ipc_msg_t) == sizeof(ngx_ipc::Delivery), "msg");
NGX_IPC_SAME(ngx_ipc_msg_t, ngx_ipc::Delivery, name);
NGX_IPC_SAME(ngx_ipc_msg_t, ngx_ipc::Delivery, data);
NGX_IPC_SAME(ngx_ipc_msg_t, ngx_ipc::Delivery, data_len);
NGX_IPC_SAME(ngx_ipc_msg_t, ngx_ipc::Delivery, name_len);
NGX_IPC_SAME(ngx_ipc_msg_t, ngx_ipc::Delivery, sender_pid);
NGX_IPC_SAME(ngx_ipc_msg_t, ngx_ipc::Delivery, flags);
NGX_IPC_SAME(ngx_ipc_msg_t, ngx_ipc::Delivery, call_id);

static_assert(sizeof(ngx_ipc_stats_t) == sizeof(ngx_ipc::Stats), "stats");
NGX_IPC_SAME(ngx_ipc_stats_t, ngx_ipc::Stats, sent);
NGX_IPC_SAME(ngx_ipc_stats_t, ngx_ipc::Stats, received);
NGX_IPC_SAME(ngx_ipc_stats_t, ngx_ipc::Stats, sent_bytes);
NGX_IPC_SAME(ngx_ipc_stats_t, ngx_ipc::Stats, received_bytes);
NGX_IPC_SAME(ngx_ipc_stats_t, ngx_ipc::Stats, dropped);
NGX_IPC_SAME(ngx_ipc_stats_t, ngx_ipc::Stats, refused);
NGX_IPC_SAME(ngx_ipc_stats_t, ngx_ipc::Stats, handler_errors);
NGX_IPC_SAME(ngx_ipc_stats_t, ngx_ipc::Stats, calls);
NGX_IPC_SAME(ngx_ipc_stats_t, ngx_ipc::Stats, call_timeouts);
NGX_IPC_SAME(ngx_ipc_stats_t, ngx_ipc::Stats, queued_bytes);
NGX_IPC_SAME(ngx_ipc_stats_t, ngx_ipc::Stats, resets);
NGX_IPC_SAME(ngx_ipc_stats_t, ngx_ipc::Stats, unhandled);

static_assert(sizeof(ngx_ipc_lua_counters_t) == sizeof(ngx_ipc::LuaStats),
              "lua counters");
NGX_IPC_SAME(ngx_ipc_lua_counters_t, ngx_ipc::LuaStats, dropped);
NGX_IPC_SAME(ngx_ipc_lua_counters_t, ngx_ipc::LuaStats, refused);
NGX_IPC_SAME(ngx_ipc_lua_counters_t, ngx_ipc::LuaStats, handler_errors);
NGX_IPC_SAME(ngx_ipc_lua_counters_t, ngx_ipc::LuaStats, calls);
NGX_IPC_SAME(ngx_ipc_lua_counters_t, ngx_ipc::LuaStats, call_timeouts);
NGX_IPC_SAME(ngx_ipc_lua_counters_t, ngx_ipc::LuaStats, unhandled);

static_assert(sizeof(ngx_ipc_worker_status_t)
              == sizeof(ngx_ipc::WorkerStatus), "worker status");
NGX_IPC_SAME(ngx_ipc_worker_status_t, ngx_ipc::WorkerStatus, pid);
NGX_IPC_SAME(ngx_ipc_worker_status_t, ngx_ipc::WorkerStatus, incarnation);
NGX_IPC_SAME(ngx_ipc_worker_status_t, ngx_ipc::WorkerStatus, state);
NGX_IPC_SAME(ngx_ipc_worker_status_t, ngx_ipc::WorkerStatus, slot);
NGX_IPC_SAME(ngx_ipc_worker_status_t, ngx_ipc::WorkerStatus, stats);
NGX_IPC_SAME(ngx_ipc_worker_status_t, ngx_ipc::WorkerStatus, busy_poll_ns);
NGX_IPC_SAME(ngx_ipc_worker_status_t, ngx_ipc::WorkerStatus, queued_msgs);

static_assert(NGX_IPC_FFI_BATCH <= ngx_ipc::kMaxBatch, "batch");
static_assert(NGX_IPC_FFI_MAX_SLOTS == ngx_ipc::kMaxSlots, "slots");
static_assert(NGX_IPC_FFI_MAX_NAME == ngx_ipc::kMaxNameLen, "name");
static_assert(NGX_IPC_BRIDGE_SLOTS == ngx_ipc::kMaxMappingSlots, "bridge");
static_assert((unsigned) NGX_IPC_FFI_F_BROADCAST
              == (unsigned) ngx_ipc::kBroadcast, "flag");
static_assert((unsigned) NGX_IPC_FFI_F_REQUEST
              == (unsigned) ngx_ipc::kRequest, "flag");
static_assert((unsigned) NGX_IPC_FFI_F_REPLY
              == (unsigned) ngx_ipc::kReply, "flag");
static_assert((unsigned) NGX_IPC_FFI_F_STATUS
              == (unsigned) ngx_ipc::kStatusMask, "flag");
static_assert(NGX_IPC_FFI_RUNNING == (int) ngx_ipc::WorkerState::kRunning
              && NGX_IPC_FFI_DEAD == (int) ngx_ipc::WorkerState::kDead,
              "worker states");

/* a Status crosses the ABI as its value: NGX_OK or an E_ code */
#define NGX_IPC_SAME_STATUS(e, s)                                             \
    static_assert((int) ngx_ipc::Status::s == e, #e)

NGX_IPC_SAME_STATUS(NGX_OK, kOk);
NGX_IPC_SAME_STATUS(NGX_IPC_FFI_E_NO_SUCH_WORKER, kNoSuchWorker);
NGX_IPC_SAME_STATUS(NGX_IPC_FFI_E_NAME_TOO_LONG, kNameTooLong);
NGX_IPC_SAME_STATUS(NGX_IPC_FFI_E_TOO_LARGE, kTooLarge);
NGX_IPC_SAME_STATUS(NGX_IPC_FFI_E_QUEUE_FULL, kQueueFull);
NGX_IPC_SAME_STATUS(NGX_IPC_FFI_E_NO_MEMORY, kNoMemory);
NGX_IPC_SAME_STATUS(NGX_IPC_FFI_E_EMPTY_NAME, kEmptyName);


static const char  ngx_ipc_not_available[] =
    "ngx.ipc is only available in nginx worker processes";

/* what Lua may ask for in a record's flags */
static const int  ngx_ipc_user_flags =
    NGX_IPC_FFI_F_REQUEST | NGX_IPC_FFI_F_REPLY | NGX_IPC_FFI_F_STATUS;


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

        /* deliver what arrived before the dispatcher existed: what the
         * worker kept (ipc_early_messages), then what waits in the inbox */
        if (ngx_ipc_early_end(w)) {
            w->sema_post(sema, 1);
        }

        ngx_post_event(w->conn->read, &ngx_posted_events);
    }

    return NGX_OK;
}


int
ngx_ipc_ffi_send(int pid, const u_char *name, size_t name_len,
    const u_char *data, size_t data_len, int flags, uint32_t call_id)
{
    int                slot;
    ngx_ipc_worker_t  *w;
    ngx_ipc::Status    s;

    w = ngx_ipc_worker_get();
    if (w == NULL) {
        return NGX_ERROR;
    }

    try {
        slot = w->endpoint->slot_of(pid);

        if (slot >= 0) {
            s = w->endpoint->send_slot((uint32_t) slot, pid, name, name_len,
                                       data, data_len,
                                       (uint16_t) (flags & ngx_ipc_user_flags),
                                       call_id);

        } else if ((slot = ngx_ipc_bridge_find(w, pid)) >= 0) {
            /* a worker of another generation */
            s = ngx_ipc_bridge_send(w, slot, pid, name, name_len, data,
                                    data_len,
                                    (uint16_t) (flags & ngx_ipc_user_flags),
                                    call_id);

        } else {
            /* refused as the core refuses it (the arguments first) */
            s = w->endpoint->send(pid, name, name_len, data, data_len,
                                  (uint16_t) (flags & ngx_ipc_user_flags),
                                  call_id);
        }

    } catch (...) {
        s = ngx_ipc::Status::kNoMemory;
    }

    if (s == ngx_ipc::Status::kOk) {
        ngx_ipc_busy_poll_after_send(w);
        ngx_ipc_backlog_watch(w);
    }

    return (int) s;
}


int
ngx_ipc_ffi_broadcast(const u_char *name, size_t name_len,
    const u_char *data, size_t data_len, int include_self)
{
    ngx_ipc_worker_t  *w;
    ngx_ipc::Status    s;

    w = ngx_ipc_worker_get();
    if (w == NULL) {
        return NGX_ERROR;
    }

    try {
        /* every worker of every generation that runs, or none: the other
         * generations' room is checked before anything is sent */
        s = (w->bridge != NULL) ? ngx_ipc_bridge_check(w)
                                : ngx_ipc::Status::kOk;

        if (s == ngx_ipc::Status::kOk) {
            s = w->endpoint->broadcast(name, name_len, data, data_len,
                                       include_self != 0);
        }

        if (s == ngx_ipc::Status::kOk && w->bridge != NULL) {
            /* only no memory can fail here, after this configuration's
             * workers have it: logged and told as it is */
            s = ngx_ipc_bridge_broadcast(w, name, name_len, data, data_len);
            if (s != ngx_ipc::Status::kOk) {
                ngx_ipc_log_limited(NGX_LOG_ALERT, 0,
                                    "a broadcast reached this "
                                    "configuration's workers but not the "
                                    "other generations' (no memory)");
            }
        }

    } catch (...) {
        s = ngx_ipc::Status::kNoMemory;
    }

    if (s == ngx_ipc::Status::kOk) {
        ngx_ipc_busy_poll_after_send(w);
        ngx_ipc_backlog_watch(w);
    }

    return (int) s;
}


/* Takes a batch of up to max messages; 0 means the inbox is empty and the
 * dispatcher may sleep: the next message posts its semaphore. */
int
ngx_ipc_ffi_take(ngx_ipc_msg_t *out, int max)
{
    int                n, nb;
    ngx_ipc_worker_t  *w;

    w = ngx_ipc_worker_get();
    if (w == NULL) {
        return NGX_ERROR;
    }

    /* what arrived before the dispatcher started, before anything newer */
    n = ngx_ipc_early_take(w, reinterpret_cast<ngx_ipc::Delivery *>(out), max);
    if (n > 0) {
        return n;
    }

    try {
        /* the other generations' messages first (only when its socket
         * said some came), up to half the batch: each inbox has room in
         * every batch, so neither starves the other */
        nb = (w->bridge != NULL && max > 1)
             ? ngx_ipc_bridge_take(w, reinterpret_cast<ngx_ipc::Delivery *>(
                                          out), max / 2)
             : 0;

        /* while a poll watches the inbox, the slot stays disarmed */
        n = w->endpoint->receive(
                reinterpret_cast<ngx_ipc::Delivery *>(out) + nb, max - nb,
                !ngx_ipc_busy_poll_watching(w));
    } catch (...) {
        return NGX_ERROR;
    }

    n += nb;

    if (n > 0) {
        ngx_ipc_busy_poll_after_receive(w, n);

    } else if (n == 0) {
        /* empty: watch the inbox a while before sleeping */
        ngx_ipc_busy_poll_on_empty(w);
    }

    return n;
}


void
ngx_ipc_ffi_take_done(void)
{
    ngx_ipc_worker_t  *w;

    w = ngx_ipc_worker_get();
    if (w != NULL) {
        ngx_ipc_early_release(w);
        w->endpoint->release();

        if (w->bridge != NULL) {
            ngx_ipc_bridge_release(w);
        }
    }
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


/*
 * The ABI's structs as this module was compiled, for the test that checks
 * them against what ffi.cdef made of src/ngx_ipc_ffi.h (t/test_ffi.py).
 */
#define NGX_IPC_SIZE(t)      { #t, "", sizeof(t) }
#define NGX_IPC_FIELD(t, f)  { #t, #f, offsetof(t, f) }

static const ngx_ipc_layout_t  ngx_ipc_layout[] = {
    NGX_IPC_SIZE(ngx_ipc_msg_t),
    NGX_IPC_FIELD(ngx_ipc_msg_t, name),
    NGX_IPC_FIELD(ngx_ipc_msg_t, data),
    NGX_IPC_FIELD(ngx_ipc_msg_t, data_len),
    NGX_IPC_FIELD(ngx_ipc_msg_t, name_len),
    NGX_IPC_FIELD(ngx_ipc_msg_t, sender_pid),
    NGX_IPC_FIELD(ngx_ipc_msg_t, flags),
    NGX_IPC_FIELD(ngx_ipc_msg_t, call_id),
    NGX_IPC_SIZE(ngx_ipc_stats_t),
    NGX_IPC_FIELD(ngx_ipc_stats_t, sent),
    NGX_IPC_FIELD(ngx_ipc_stats_t, dropped),
    NGX_IPC_FIELD(ngx_ipc_stats_t, refused),
    NGX_IPC_FIELD(ngx_ipc_stats_t, handler_errors),
    NGX_IPC_FIELD(ngx_ipc_stats_t, calls),
    NGX_IPC_FIELD(ngx_ipc_stats_t, call_timeouts),
    NGX_IPC_FIELD(ngx_ipc_stats_t, resets),
    NGX_IPC_FIELD(ngx_ipc_stats_t, unhandled),
    NGX_IPC_SIZE(ngx_ipc_lua_counters_t),
    NGX_IPC_FIELD(ngx_ipc_lua_counters_t, dropped),
    NGX_IPC_FIELD(ngx_ipc_lua_counters_t, refused),
    NGX_IPC_FIELD(ngx_ipc_lua_counters_t, call_timeouts),
    NGX_IPC_FIELD(ngx_ipc_lua_counters_t, unhandled),
    NGX_IPC_SIZE(ngx_ipc_worker_status_t),
    NGX_IPC_FIELD(ngx_ipc_worker_status_t, state),
    NGX_IPC_FIELD(ngx_ipc_worker_status_t, stats),
    NGX_IPC_FIELD(ngx_ipc_worker_status_t, busy_poll_ns),
    NGX_IPC_FIELD(ngx_ipc_worker_status_t, queued_msgs),
    NGX_IPC_SIZE(ngx_ipc_exit_t),
    NGX_IPC_FIELD(ngx_ipc_exit_t, waits),
    NGX_IPC_FIELD(ngx_ipc_exit_t, release),
    NGX_IPC_FIELD(ngx_ipc_exit_t, runner_gone),
    NGX_IPC_SIZE(ngx_ipc_cluster_info_t),
    NGX_IPC_FIELD(ngx_ipc_cluster_info_t, node_len),
    NGX_IPC_FIELD(ngx_ipc_cluster_info_t, port),
    NGX_IPC_FIELD(ngx_ipc_cluster_info_t, maxlen),
    NGX_IPC_FIELD(ngx_ipc_cluster_info_t, epoch),
    NGX_IPC_FIELD(ngx_ipc_cluster_info_t, replicas),
    NGX_IPC_FIELD(ngx_ipc_cluster_info_t, tls_key_len),
    NGX_IPC_SIZE(ngx_ipc_cluster_link_t),
    NGX_IPC_FIELD(ngx_ipc_cluster_link_t, connect_ms),
    NGX_IPC_FIELD(ngx_ipc_cluster_link_t, error_len),
    NGX_IPC_FIELD(ngx_ipc_cluster_link_t, error_old),
    NGX_IPC_SIZE(ngx_ipc_cluster_entry_t),
    NGX_IPC_FIELD(ngx_ipc_cluster_entry_t, seq),
    NGX_IPC_FIELD(ngx_ipc_cluster_entry_t, name_len),
    NGX_IPC_FIELD(ngx_ipc_cluster_entry_t, pid),
    NGX_IPC_SIZE(ngx_ipc_peer_t),
    NGX_IPC_FIELD(ngx_ipc_peer_t, generation),
    NGX_IPC_FIELD(ngx_ipc_peer_t, worker),
    NGX_IPC_SIZE(ngx_ipc_layout_t),
    NGX_IPC_FIELD(ngx_ipc_layout_t, value),
};


int
ngx_ipc_ffi_layout(const ngx_ipc_layout_t **out)
{
    *out = ngx_ipc_layout;

    return (int) (sizeof(ngx_ipc_layout) / sizeof(ngx_ipc_layout[0]));
}
