/*
 * ngx_ipc cluster lease: which worker of the node is the agent (holds the
 * Redis link), its heartbeat, and what it reports to every worker: the
 * cluster's configuration, the last stream id and error, the counters.
 *
 * Owns: ClusterShared's agent_pid, heartbeat_ms, counters, last_id and
 * last_error (with its time), connect_ms and connect_error_version.
 */

#include "ngx_ipc_cluster.h"

#include <sched.h>

int
ngx_ipc_ffi_cluster_info(ngx_ipc_cluster_info_t *out)
{
    ngx_ipc_cluster_conf_t  *ccf;
    ClusterShared           *cs;

    if (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE) {
        return NGX_ERROR;
    }

    ccf = ngx_ipc_cluster_conf();
    cs = ngx_ipc_cluster_shared();
    if (ccf == NULL || cs == NULL) {
        return NGX_DECLINED;
    }

    out->host = ccf->host.data;
    out->host_len = ccf->host.len;
    out->user = ccf->user.data;
    out->user_len = ccf->user.len;
    out->password = ccf->password.data;
    out->password_len = ccf->password.len;
    out->stream = ccf->stream.data;
    out->stream_len = ccf->stream.len;
    out->node = ccf->node.data;
    out->node_len = ccf->node.len;
    out->port = (int) ccf->port;
    out->db = (int) ccf->db;
    out->maxlen = ccf->maxlen;
    out->max_message = ccf->max_message;
    out->epoch = cs->epoch;
    out->secret = ccf->secret != NULL;
    out->tls = (int) ccf->tls;
    out->replicas = (int) ccf->replicas;
    out->where = ccf->url.data;
    out->where_len = ccf->url.len;
    out->sentinels = ccf->sentinels.data;
    out->sentinels_len = ccf->sentinels.len;
    out->master = ccf->master.data;
    out->master_len = ccf->master.len;
    out->sentinel_password = ccf->sentinel_password.data;
    out->sentinel_password_len = ccf->sentinel_password.len;
    out->tls_name = ccf->tls_name.data;    /* "": the host connected to */
    out->tls_name_len = ccf->tls_name.len;
    out->tls_cert = ccf->tls_cert.data;
    out->tls_cert_len = ccf->tls_cert.len;
    out->tls_key = ccf->tls_key.data;
    out->tls_key_len = ccf->tls_key.len;

    return NGX_OK;
}
/* 1: this worker holds the agent lease (renewed now); 0: another live one
 * does (*agent_pid). A holder that is gone, or whose heartbeat is stale,
 * loses the lease to the first worker that asks. */
int
ngx_ipc_ffi_cluster_lease(int *agent_pid)
{
    ClusterShared  *cs;
    std::int32_t    holder;
    std::uint64_t   now, beat;

    *agent_pid = 0;

    cs = ngx_ipc_cluster_shared();
    if (cs == NULL) {
        return NGX_ERROR;
    }

    now = ngx_ipc_cluster_now_ms();
    holder = cs->agent_pid.load(std::memory_order_acquire);

    if (holder == (std::int32_t) ngx_pid) {
        cs->heartbeat_ms.store(now, std::memory_order_relaxed);
        *agent_pid = holder;
        return 1;
    }

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        *agent_pid = holder;
        return 0;
    }

    beat = cs->heartbeat_ms.load(std::memory_order_relaxed);

    if (holder != 0 && ngx_ipc_cluster_pid_alive(holder)
        && now < beat + kLeaseStaleMs)
    {
        *agent_pid = holder;
        return 0;
    }

    cs->heartbeat_ms.store(now, std::memory_order_relaxed);
    if (!cs->agent_pid.compare_exchange_strong(holder, (std::int32_t) ngx_pid,
                                               std::memory_order_acq_rel))
    {
        *agent_pid = holder;       /* another worker was faster */
        return 0;
    }

    *agent_pid = (int) ngx_pid;
    return 1;
}


/* the agent's PID, 0 if none holds the lease */
int
ngx_ipc_ffi_cluster_agent(void)
{
    ClusterShared  *cs = ngx_ipc_cluster_shared();

    return cs ? cs->agent_pid.load(std::memory_order_relaxed) : 0;
}


void
ngx_ipc_ffi_cluster_release(void)
{
    ClusterShared  *cs;
    std::int32_t    me;

    cs = ngx_ipc_cluster_shared();
    if (cs == NULL) {
        return;
    }

    me = (std::int32_t) ngx_pid;
    cs->armed.store(0, std::memory_order_relaxed);
    cs->agent_pid.compare_exchange_strong(me, 0, std::memory_order_acq_rel);
}

static Text *
ngx_ipc_cluster_text(ClusterShared *cs, int which)
{
    return which == NGX_IPC_FFI_CLUSTER_LAST_ID ? &cs->last_id
           : which == NGX_IPC_FFI_CLUSTER_PRIMARY ? &cs->primary
           : &cs->last_error;
}


/* A text, its time and its version, read under its sequence lock: its
 * length, or -1 if the writer kept it busy for 1000 tries. buf holds
 * kTextMax bytes. */
static int
ngx_ipc_cluster_read_text(Text *t, char *buf, std::uint64_t *at_ms,
    std::uint32_t *version)
{
    std::uint32_t  v1, v2, len;
    std::uint64_t  at;

    for (int i = 0; i < 1000; i++) {
        v1 = t->version.load(std::memory_order_acquire);
        if (v1 & 1) {
            sched_yield();
            continue;
        }

        len = t->len;
        if (len > kTextMax) {
            len = kTextMax;
        }
        at = t->at_ms;
        ngx_memcpy(buf, t->data, len);

        std::atomic_thread_fence(std::memory_order_acquire);
        v2 = t->version.load(std::memory_order_relaxed);
        if (v1 == v2) {
            *at_ms = at;
            *version = v1;
            return (int) len;
        }
    }

    return -1;
}


int
ngx_ipc_ffi_cluster_get_text(int which, char *buf, int size)
{
    ClusterShared  *cs;
    std::uint64_t   at;
    std::uint32_t   v;

    cs = ngx_ipc_cluster_shared();
    if (cs == NULL || size < (int) kTextMax) {
        return -1;
    }

    return ngx_ipc_cluster_read_text(ngx_ipc_cluster_text(cs, which), buf,
                                     &at, &v);
}


/* The last error, its time, and whether it is older than the agent's last
 * connection while the link is up: the state a reader would otherwise
 * have to guess from "connected" beside an error text. */
int
ngx_ipc_ffi_cluster_link(ngx_ipc_cluster_link_t *out, char *buf, int size)
{
    ClusterShared  *cs;
    std::uint32_t   v;
    int             len;

    cs = ngx_ipc_cluster_shared();
    if (cs == NULL || size < (int) kTextMax) {
        return NGX_ERROR;
    }

    len = ngx_ipc_cluster_read_text(&cs->last_error, buf, &out->error_ms, &v);
    if (len < 0) {
        len = 0;                      /* being rewritten: shown as none */
        out->error_ms = 0;
    }

    out->error_len = len;
    out->connect_ms = cs->connect_ms.load(std::memory_order_relaxed);
    out->error_old = len > 0
        && cs->counters[kConnected].load(std::memory_order_relaxed) != 0
        && v == cs->connect_error_version.load(std::memory_order_relaxed);

    return NGX_OK;
}


/* the agent only: one writer */
void
ngx_ipc_ffi_cluster_set_text(int which, const char *text, size_t len)
{
    ClusterShared  *cs;
    Text           *t;
    std::uint32_t   v;

    cs = ngx_ipc_cluster_shared();
    if (cs == NULL) {
        return;
    }

    t = ngx_ipc_cluster_text(cs, which);
    if (len > kTextMax) {
        len = kTextMax;
    }

    v = t->version.load(std::memory_order_relaxed);
    t->version.store(v + 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    ngx_memcpy(t->data, text, len);
    t->len = (std::uint32_t) len;
    if (which == NGX_IPC_FFI_CLUSTER_LAST_ERROR) {
        t->at_ms = ngx_ipc_cluster_wall_ms();
    }
    /* Release: publishes the text to readers that see the even version. */
    t->version.store(v + 2, std::memory_order_release);
}


/* the agent only, after each connection its reader or writer makes: the
 * errors set so far are older than it (last_error's version now, even:
 * the agent is its only writer, and it is not writing) */
void
ngx_ipc_ffi_cluster_connected(void)
{
    ClusterShared  *cs = ngx_ipc_cluster_shared();

    if (cs == NULL) {
        return;
    }

    cs->connect_error_version.store(
        cs->last_error.version.load(std::memory_order_relaxed),
        std::memory_order_relaxed);
    cs->connect_ms.store(ngx_ipc_cluster_wall_ms(), std::memory_order_relaxed);
}


uint64_t *
ngx_ipc_ffi_cluster_counters(void)
{
    ClusterShared  *cs = ngx_ipc_cluster_shared();

    /* read from Lua as plain uint64_t: atomics of 8 bytes, lock-free */
    return cs ? reinterpret_cast<uint64_t *>(cs->counters) : NULL;
}


void
ngx_ipc_ffi_cluster_count(int which, int64_t n)
{
    ClusterShared  *cs = ngx_ipc_cluster_shared();

    if (cs != NULL && which >= 0 && which < kCounters) {
        cs->counters[which].fetch_add((std::uint64_t) n,
                                      std::memory_order_relaxed);
    }
}


void
ngx_ipc_ffi_cluster_gauge(int which, uint64_t v)
{
    ClusterShared  *cs = ngx_ipc_cluster_shared();

    if (cs != NULL && which >= 0 && which < kCounters) {
        cs->counters[which].store(v, std::memory_order_relaxed);
    }
}

