/*
 * ngx_ipc cluster: what the cluster module's files share. The node's shared
 * cluster state lives in a zone of its own ("ngx_ipc_cluster"):
 *
 *   - the agent lease: which worker holds the Redis link, and its heartbeat
 *     (ngx_ipc_cluster_lease.cpp, with the texts and counters it reports);
 *   - the outbox: every worker's cluster broadcasts, in one FIFO of framed
 *     records, until the agent has added them to the Redis stream
 *     (ngx_ipc_cluster_outbox.cpp);
 *   - the stream position (the last entry id fanned out here) and counters.
 *
 * ngx_ipc_cluster_secret.cpp reads secret= and makes and checks the MAC
 * every entry carries with it.
 *
 * ngx_ipc_cluster_module.cpp holds the directive and makes the zone. The
 * zone outlives a reload when the directive's sizes are unchanged (nginx
 * keeps a zone whose name, size and tag match), so a reloaded node resumes
 * from its last id and what waits in the outbox still goes out. The Redis
 * link itself is Lua, on cosockets (lib/ngx/ipc/cluster.lua).
 */

#ifndef _NGX_IPC_CLUSTER_H_INCLUDED_
#define _NGX_IPC_CLUSTER_H_INCLUDED_

#include "ngx_ipc_module.h"

#include <signal.h>

#include <atomic>


namespace ngx_ipc_cluster_zone {

constexpr std::uint64_t kClusterMagic = 0x72756c6370696e67ULL;  /* "gnipclur" */
/* Bumped with every change of ClusterShared's layout: a zone of another
 * layout is never read (ngx_ipc_cluster_shared) nor taken over by a
 * reload (ngx_ipc_cluster_init_zone). 3: Text.at_ms, connect_ms,
 * connect_error_version. 4: primary. */
constexpr std::uint32_t kClusterVersion = 4;
constexpr std::uint32_t kOutMagic = 0x6f757462;                   /* "btuo" */
constexpr std::uint32_t kOutPad = 0x64617062;                     /* "bpad" */
constexpr std::size_t kTextMax = NGX_IPC_FFI_CLUSTER_TEXT_MAX;
constexpr std::uint64_t kLeaseStaleMs = 3000;  /* a heartbeat older: hung */

/* One cluster broadcast in the outbox: this header, the name, the data,
 * padded to 8 bytes. A record never straddles the end of the buffer: a
 * producer that reaches the end writes a pad record (or, with under a
 * header's worth left, nothing) and starts again at offset 0. */
struct OutRecord {
    std::uint32_t size;       /* whole record, aligned */
    std::uint32_t magic;      /* kOutMagic or kOutPad */
    std::uint64_t seq;        /* node-wide, from 1 */
    std::int32_t  pid;        /* publisher */
    std::uint32_t name_len;
    std::uint64_t data_len;
};

static_assert(sizeof(OutRecord) == 32, "OutRecord is 32 bytes");

/* A short text (the last stream id, the last error) and when it was set,
 * under a sequence lock: the agent writes it, any worker reads it (odd
 * version: being written). */
struct Text {
    std::atomic<std::uint32_t> version;
    std::uint32_t              len;
    std::uint64_t              at_ms;     /* wall clock, ms since 1970 */
    char                       data[kTextMax];
};

/* Counters, read by any worker through ngx_ipc_ffi_cluster_counters():
 * the NGX_IPC_FFI_CLUSTER_* indexes of ngx_ipc_ffi.h. */
enum Counter : int {
    kPublished = NGX_IPC_FFI_CLUSTER_PUBLISHED,
    kRefused = NGX_IPC_FFI_CLUSTER_REFUSED,
    kAdded = NGX_IPC_FFI_CLUSTER_ADDED,
    kReceived = NGX_IPC_FFI_CLUSTER_RECEIVED,
    kGaps = NGX_IPC_FFI_CLUSTER_GAPS,
    kReconnects = NGX_IPC_FFI_CLUSTER_RECONNECTS,
    kErrors = NGX_IPC_FFI_CLUSTER_ERRORS,
    kConnected = NGX_IPC_FFI_CLUSTER_CONNECTED,
    kLagMs = NGX_IPC_FFI_CLUSTER_LAG_MS,
    kNodeClashes = NGX_IPC_FFI_CLUSTER_NODE_CLASHES,
    kMalformed = NGX_IPC_FFI_CLUSTER_MALFORMED,
    kUnauthenticated = NGX_IPC_FFI_CLUSTER_UNAUTHENTICATED,
    kCounters = NGX_IPC_FFI_CLUSTER_COUNTERS
};

struct alignas(64) ClusterShared {
    std::uint64_t                magic;
    std::uint32_t                version;
    std::uint32_t                pad0;
    std::uint64_t                epoch;      /* this zone's life: seqs start */
    std::uint64_t                capacity;   /* outbox bytes */

    alignas(64) std::atomic<std::int32_t>   agent_pid;
    std::atomic<std::uint32_t>              armed;  /* agent sleeps */
    std::atomic<std::uint64_t>              heartbeat_ms;

    alignas(64) std::atomic<std::int32_t>   lock_pid;  /* producers' lock */
    std::uint32_t                           pad1;
    std::uint64_t                           seq;       /* under the lock */
    std::atomic<std::uint64_t>              head;

    alignas(64) std::atomic<std::uint64_t>  tail;      /* the agent's */

    alignas(64) std::atomic<std::uint64_t>  counters[kCounters];

    Text                                    last_id;
    Text                                    last_error;
    Text                                    primary;  /* "host:port" */

    /* the agent's last connection to Redis (ngx_ipc_ffi_cluster_connected):
     * its wall-clock time, and last_error's version then; a last_error
     * still of that version is older than the connection */
    std::atomic<std::uint64_t>              connect_ms;
    std::atomic<std::uint32_t>              connect_error_version;

    alignas(64) unsigned char               data[];
};

static_assert(std::atomic<std::int32_t>::is_always_lock_free, "lock-free");
static_assert(std::atomic<std::uint64_t>::is_always_lock_free, "lock-free");
static_assert(sizeof(std::atomic<std::uint64_t>) == 8, "plain layout");
static_assert(offsetof(ClusterShared, data) % 64 == 0, "data aligned");

inline std::uint64_t align8(std::uint64_t n) { return (n + 7) & ~std::uint64_t{7}; }

}  // namespace ngx_ipc_cluster_zone

using namespace ngx_ipc_cluster_zone;

typedef struct {
    ngx_flag_t       enabled;
    ngx_str_t        url;        /* as written, for messages: no password */
    ngx_flag_t       tls;        /* rediss:// or rediss+sentinel:// */
    ngx_str_t        sentinels;  /* redis+sentinel://: "H:P,H:P", else "" */
    ngx_str_t        master;     /* the Sentinels' master name */
    ngx_str_t        sentinel_password;
    ngx_str_t        tls_name;   /* SNI and the name verified: tls_name=,
                                    else the host */
    ngx_str_t        tls_cert;   /* tls_cert= and tls_key=: PEM, read by
                                    the master */
    ngx_str_t        tls_key;
    ngx_uint_t       replicas;   /* replicas=N: WAIT N before "added" */
    ngx_str_t        host;
    ngx_str_t        user;
    ngx_str_t        password;
    ngx_str_t        stream;
    ngx_str_t        node;
    ngx_uint_t       port;
    ngx_uint_t       db;
    uint64_t         maxlen;
    size_t           max_message;
    size_t           queue;
    ngx_shm_zone_t  *zone;
    void            *secret;     /* secret=: the MAC's keyed state, or NULL
                                    (ngx_ipc_cluster_secret.cpp) */
} ngx_ipc_cluster_conf_t;


extern "C" ngx_module_t  ngx_ipc_cluster_module;

/* ngx_ipc_cluster_module.cpp: this worker's cluster configuration and zone,
 * NULL without ipc_cluster */
ngx_ipc_cluster_conf_t *ngx_ipc_cluster_conf(void);
ClusterShared *ngx_ipc_cluster_shared(void);
/* ngx_ipc_cluster_url.cpp: fills ccf's tls, sentinels, master, host, port,
 * db, user, password, url */
char *ngx_ipc_cluster_parse_url(ngx_conf_t *cf, ngx_ipc_cluster_conf_t *ccf,
    ngx_str_t *url);
/* ngx_ipc_cluster_tls.cpp: the link's parameters beyond the stream's
 * (replicas=, sentinel_password=, tls_name=, tls_cert=, tls_key=):
 * NGX_OK if it took name=v, NGX_DECLINED if name is not one of them,
 * NGX_ERROR (logged) if v is wrong; and the check of them all once read */
ngx_int_t ngx_ipc_cluster_link_param(ngx_conf_t *cf,
    ngx_ipc_cluster_conf_t *ccf, ngx_str_t *name, ngx_str_t *v);
char *ngx_ipc_cluster_check_link(ngx_conf_t *cf, ngx_ipc_cluster_conf_t *ccf);
/* ngx_ipc_cluster_secret.cpp: secret=PATH, the key every entry's MAC is
 * made with (read now, by the master) */
char *ngx_ipc_cluster_read_secret(ngx_conf_t *cf, ngx_ipc_cluster_conf_t *ccf,
    ngx_str_t *path);


static inline bool
ngx_ipc_cluster_pid_alive(int32_t pid)
{
    return kill(pid, 0) == 0 || ngx_errno != NGX_ESRCH;
}


static inline std::uint64_t
ngx_ipc_cluster_now_ms(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (std::uint64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}


/* the wall clock, for times shown to people (the status page); leases
 * and timeouts use the monotonic clock above */
static inline std::uint64_t
ngx_ipc_cluster_wall_ms(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (std::uint64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}


#endif /* _NGX_IPC_CLUSTER_H_INCLUDED_ */
