/*
 * ngx_ipc cluster module: the ipc_cluster directive, and the node's shared
 * cluster state in a zone of its own ("ngx_ipc_cluster"):
 *
 *   - the agent lease: which worker holds the Redis link, and its heartbeat;
 *   - the outbox: every worker's cluster broadcasts, in one FIFO of framed
 *     records, until the agent has added them to the Redis stream;
 *   - the stream position (the last entry id fanned out here) and counters.
 *
 * The zone outlives a reload when the directive's sizes are unchanged (nginx
 * keeps a zone whose name, size and tag match), so a reloaded node resumes
 * from its last id and what waits in the outbox still goes out. The Redis
 * link itself is Lua, on cosockets (lib/ngx/ipc/cluster.lua).
 *
 * The outbox has many producers (every process of every generation that
 * shares the zone) and one consumer (the agent). Producers serialize on a
 * lock word that holds the owner's PID, so that a producer killed while it
 * holds it is detected and the lock taken over; a record becomes visible only
 * when head is stored after it is whole, so a half-written record is never
 * read. The agent moves tail only once Redis acknowledged the entries: an
 * agent killed before that leaves them for the next one, which sends them
 * again (receivers drop a sequence number they have seen: see the Lua).
 */

#include "ngx_ipc_module.h"

#include <signal.h>
#include <sched.h>

#include <atomic>
#include <new>


namespace {

constexpr std::uint64_t kClusterMagic = 0x72756c6370696e67ULL;  /* "gnipclur" */
constexpr std::uint32_t kClusterVersion = 1;
constexpr std::uint32_t kOutMagic = 0x6f757462;                   /* "btuo" */
constexpr std::uint32_t kOutPad = 0x64617062;                     /* "bpad" */
constexpr std::size_t kTextMax = 128;
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

/* A short text (the last stream id, the last error) under a sequence lock:
 * the agent writes it, any worker reads it (odd version: being written). */
struct Text {
    std::atomic<std::uint32_t> version;
    std::uint32_t              len;
    char                       data[kTextMax];
};

/* Counters, read by any worker through ngx_ipc_ffi_cluster_state(); the
 * layout is ngx_ipc_cluster_state_t's in lib/ngx/ipc/cluster.lua. */
enum Counter : int {
    kPublished = 0,  /* cluster broadcasts accepted here */
    kRefused,        /* refused: queue full, message too large */
    kAdded,          /* entries Redis acknowledged (XADD) */
    kReceived,       /* entries from other nodes fanned out here */
    kGaps,           /* times this node found it missed entries */
    kReconnects,     /* Redis connections made after a failure */
    kErrors,         /* Redis errors and failed connections */
    kConnected,      /* gauge: 1 while the agent's link is up */
    kLagMs,          /* gauge: age of the last entry fanned out, ms */
    kNodeClashes,    /* entries from another node with our name */
    kCounters
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

    alignas(64) unsigned char               data[];
};

static_assert(std::atomic<std::int32_t>::is_always_lock_free, "lock-free");
static_assert(std::atomic<std::uint64_t>::is_always_lock_free, "lock-free");
static_assert(sizeof(std::atomic<std::uint64_t>) == 8, "plain layout");
static_assert(offsetof(ClusterShared, data) % 64 == 0, "data aligned");

inline std::uint64_t align8(std::uint64_t n) { return (n + 7) & ~std::uint64_t{7}; }

}  // namespace


/* the ngx_ipc_cluster_conf_t of lib/ngx/ipc/cluster.lua */
typedef struct {
    const u_char  *host;
    size_t         host_len;
    const u_char  *user;
    size_t         user_len;
    const u_char  *password;
    size_t         password_len;
    const u_char  *stream;
    size_t         stream_len;
    const u_char  *node;
    size_t         node_len;
    int            port;
    int            db;
    uint64_t       maxlen;
    uint64_t       max_message;
    uint64_t       epoch;
} ngx_ipc_cluster_info_t;

/* an outbox entry handed to the agent (pointers into the zone, valid until
 * it commits past them) */
typedef struct {
    const u_char  *name;
    const u_char  *data;
    uint64_t       seq;
    uint64_t       data_len;
    uint32_t       name_len;
    int32_t        pid;
} ngx_ipc_cluster_entry_t;

typedef struct {
    ngx_flag_t       enabled;
    ngx_str_t        url;        /* as written, for messages: no password */
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
} ngx_ipc_cluster_conf_t;


static void *ngx_ipc_cluster_create_conf(ngx_cycle_t *cycle);
static char *ngx_ipc_cluster_init_conf(ngx_cycle_t *cycle, void *conf);
static char *ngx_ipc_cluster(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *ngx_ipc_cluster_parse_url(ngx_conf_t *cf,
    ngx_ipc_cluster_conf_t *ccf, ngx_str_t *url);
static ngx_int_t ngx_ipc_cluster_init_zone(ngx_shm_zone_t *zone, void *data);
static ClusterShared *ngx_ipc_cluster_shared(void);
static bool ngx_ipc_cluster_lock(ClusterShared *cs);
static void ngx_ipc_cluster_unlock(ClusterShared *cs);
static bool ngx_ipc_cluster_pid_alive(int32_t pid);
static std::uint64_t ngx_ipc_cluster_now_ms(void);


#define NGX_IPC_CLUSTER_DEFAULT_MAXLEN    100000
#define NGX_IPC_CLUSTER_DEFAULT_MESSAGE   (1024 * 1024)
#define NGX_IPC_CLUSTER_DEFAULT_QUEUE     (16 * 1024 * 1024)


static ngx_command_t  ngx_ipc_cluster_commands[] = {

    { ngx_string("ipc_cluster"),
      NGX_MAIN_CONF|NGX_DIRECT_CONF|NGX_CONF_1MORE,
      ngx_ipc_cluster,
      0,
      0,
      NULL },

      ngx_null_command
};


static ngx_core_module_t  ngx_ipc_cluster_module_ctx = {
    ngx_string("ipc_cluster"),
    ngx_ipc_cluster_create_conf,
    ngx_ipc_cluster_init_conf
};


extern "C" {

ngx_module_t  ngx_ipc_cluster_module = {
    NGX_MODULE_V1,
    &ngx_ipc_cluster_module_ctx,           /* module context */
    ngx_ipc_cluster_commands,              /* module directives */
    NGX_CORE_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};

/* the local path (ngx_ipc_ffi.cpp) */
int ngx_ipc_ffi_broadcast(const u_char *name, size_t name_len,
    const u_char *data, size_t data_len, int include_self, char **err);

int ngx_ipc_ffi_cluster_info(ngx_ipc_cluster_info_t *out);
int ngx_ipc_ffi_cluster_broadcast(const u_char *name, size_t name_len,
    const u_char *data, size_t data_len, int include_self, int *kick_pid,
    char **err);
int ngx_ipc_ffi_cluster_lease(int *agent_pid);
int ngx_ipc_ffi_cluster_agent(void);
void ngx_ipc_ffi_cluster_release(void);
int ngx_ipc_ffi_cluster_peek(ngx_ipc_cluster_entry_t *out, int max,
    size_t max_bytes, uint64_t from, uint64_t *end);
uint64_t ngx_ipc_ffi_cluster_tail(void);
uint64_t ngx_ipc_ffi_cluster_queued(void);
void ngx_ipc_ffi_cluster_commit(uint64_t end);
int ngx_ipc_ffi_cluster_arm(uint64_t from);
int ngx_ipc_ffi_cluster_get_text(int which, char *buf, int size);
void ngx_ipc_ffi_cluster_set_text(int which, const char *text, size_t len);
uint64_t *ngx_ipc_ffi_cluster_counters(void);
void ngx_ipc_ffi_cluster_count(int which, int64_t n);
void ngx_ipc_ffi_cluster_gauge(int which, uint64_t v);

}


static void *
ngx_ipc_cluster_create_conf(ngx_cycle_t *cycle)
{
    ngx_ipc_cluster_conf_t  *ccf;

    ccf = (ngx_ipc_cluster_conf_t *)
              ngx_pcalloc(cycle->pool, sizeof(ngx_ipc_cluster_conf_t));
    if (ccf == NULL) {
        return NULL;
    }

    ccf->enabled = NGX_CONF_UNSET;
    return ccf;
}


static char *
ngx_ipc_cluster_init_conf(ngx_cycle_t *cycle, void *conf)
{
    ngx_ipc_cluster_conf_t  *ccf = (ngx_ipc_cluster_conf_t *) conf;

    if (ccf->enabled == NGX_CONF_UNSET) {
        ccf->enabled = 0;
    }

    return NGX_CONF_OK;
}


/* ipc_cluster redis://[user:password@]HOST:PORT[/DB] [stream=NAME]
 *             [node=NAME] [maxlen=N] [max_message=SIZE] [queue=SIZE]; */
static char *
ngx_ipc_cluster(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_ipc_cluster_conf_t  *ccf = (ngx_ipc_cluster_conf_t *) conf;

    size_t        size;
    u_char       *p;
    ngx_str_t    *value, name, v;
    ngx_int_t     n;
    ngx_uint_t    i;
    ssize_t       sz;

    if (ccf->enabled != NGX_CONF_UNSET) {
        return (char *) "is duplicate";
    }

    value = (ngx_str_t *) cf->args->elts;

    ccf->enabled = 1;
    ccf->maxlen = NGX_IPC_CLUSTER_DEFAULT_MAXLEN;
    ccf->max_message = NGX_IPC_CLUSTER_DEFAULT_MESSAGE;
    ccf->queue = NGX_IPC_CLUSTER_DEFAULT_QUEUE;
    ngx_str_set(&ccf->stream, "ngx_ipc");

    if (ngx_ipc_cluster_parse_url(cf, ccf, &value[1]) != NGX_CONF_OK) {
        return (char *) NGX_CONF_ERROR;
    }

    for (i = 2; i < cf->args->nelts; i++) {
        p = (u_char *) ngx_strlchr(value[i].data,
                                   value[i].data + value[i].len, '=');
        if (p == NULL || p == value[i].data) {
            goto invalid;
        }

        name.data = value[i].data;
        name.len = p - value[i].data;
        v.data = p + 1;
        v.len = value[i].data + value[i].len - v.data;

        if (name.len == 6 && ngx_strncmp(name.data, "stream", 6) == 0
            && v.len > 0)
        {
            ccf->stream = v;

        } else if (name.len == 4 && ngx_strncmp(name.data, "node", 4) == 0
                   && v.len > 0 && v.len <= 255)
        {
            ccf->node = v;

        } else if (name.len == 6 && ngx_strncmp(name.data, "maxlen", 6) == 0) {
            n = ngx_atoi(v.data, v.len);
            if (n < 1) {
                goto invalid;
            }
            ccf->maxlen = n;

        } else if (name.len == 11
                   && ngx_strncmp(name.data, "max_message", 11) == 0)
        {
            sz = ngx_parse_size(&v);
            if (sz < 1 || sz > 512 * 1024 * 1024) {
                goto invalid;
            }
            ccf->max_message = sz;

        } else if (name.len == 5 && ngx_strncmp(name.data, "queue", 5) == 0) {
            sz = ngx_parse_size(&v);
            if (sz < 64 * 1024 || sz > (ssize_t) 4 * 1024 * 1024 * 1024 - 1) {
                goto invalid;
            }
            ccf->queue = sz;

        } else {
            goto invalid;
        }
    }

    /* one message of the largest size must always fit, twice over */
    if (ccf->queue < 2 * (ccf->max_message + 65535 + sizeof(OutRecord) + 8)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "ipc_cluster: queue=%uz must hold twice "
                           "max_message=%uz", ccf->queue, ccf->max_message);
        return (char *) NGX_CONF_ERROR;
    }

    if (ccf->node.len == 0) {
        /* a stable default: the host name and the nginx prefix */
        size = cf->cycle->hostname.len + 1 + cf->cycle->prefix.len;
        p = (u_char *) ngx_pnalloc(cf->pool, size);
        if (p == NULL) {
            return (char *) NGX_CONF_ERROR;
        }

        ccf->node.data = p;
        p = ngx_cpymem(p, cf->cycle->hostname.data, cf->cycle->hostname.len);
        *p++ = ':';
        p = ngx_cpymem(p, cf->cycle->prefix.data, cf->cycle->prefix.len);
        ccf->node.len = p - ccf->node.data;
        if (ccf->node.len > 255) {
            ccf->node.len = 255;
        }
    }

    ngx_str_set(&name, "ngx_ipc_cluster");
    size = sizeof(ClusterShared) + ccf->queue;
    size += size / 32 + 64 * ngx_pagesize;    /* the slab pool's own pages */

    ccf->zone = ngx_shared_memory_add(cf, &name, size, &ngx_ipc_cluster_module);
    if (ccf->zone == NULL) {
        return (char *) NGX_CONF_ERROR;
    }

    ccf->zone->init = ngx_ipc_cluster_init_zone;
    ccf->zone->data = ccf;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid ipc_cluster parameter \"%V\" (expected "
                       "stream=NAME, node=NAME (at most 255 bytes), "
                       "maxlen=N, max_message=SIZE or queue=SIZE)",
                       &value[i]);
    return (char *) NGX_CONF_ERROR;
}


static char *
ngx_ipc_cluster_parse_url(ngx_conf_t *cf, ngx_ipc_cluster_conf_t *ccf,
    ngx_str_t *url)
{
    u_char     *p, *last, *at, *colon, *slash;
    ngx_int_t   n;

    p = url->data;
    last = url->data + url->len;

    if (url->len < 8 || ngx_strncmp(p, "redis://", 8) != 0) {
        goto invalid;
    }

    p += 8;

    /* the password is never logged: messages name the host and port only */
    at = NULL;
    for (u_char *q = last; q > p; q--) {
        if (q[-1] == '@') {
            at = q - 1;
            break;
        }
    }

    if (at != NULL) {
        colon = (u_char *) ngx_strlchr(p, at, ':');
        if (colon == NULL) {
            ccf->password.data = p;            /* redis://password@host */
            ccf->password.len = at - p;

        } else {
            ccf->user.data = p;
            ccf->user.len = colon - p;
            ccf->password.data = colon + 1;
            ccf->password.len = at - colon - 1;
        }

        p = at + 1;
    }

    slash = (u_char *) ngx_strlchr(p, last, '/');
    if (slash != NULL) {
        n = ngx_atoi(slash + 1, last - slash - 1);
        if (n < 0 || n > 65535) {
            goto invalid;
        }
        ccf->db = n;
        last = slash;
    }

    colon = (u_char *) ngx_strlchr(p, last, ':');
    if (colon == NULL) {
        ccf->port = 6379;
        colon = last;

    } else {
        n = ngx_atoi(colon + 1, last - colon - 1);
        if (n < 1 || n > 65535) {
            goto invalid;
        }
        ccf->port = n;
    }

    if (colon == p) {
        goto invalid;
    }

    ccf->host.data = p;
    ccf->host.len = colon - p;

    /* what messages may show: scheme, host, port, db */
    ccf->url.data = (u_char *) ngx_pnalloc(cf->pool, ccf->host.len + 32);
    if (ccf->url.data == NULL) {
        return (char *) NGX_CONF_ERROR;
    }

    ccf->url.len = ngx_sprintf(ccf->url.data, "redis://%V:%ui/%ui",
                               &ccf->host, ccf->port, ccf->db)
                   - ccf->url.data;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid ipc_cluster address (expected "
                       "redis://[user:password@]HOST:PORT[/DB])");
    return (char *) NGX_CONF_ERROR;
}


static ngx_int_t
ngx_ipc_cluster_init_zone(ngx_shm_zone_t *zone, void *data)
{
    ngx_ipc_cluster_conf_t  *ccf = (ngx_ipc_cluster_conf_t *) zone->data;
    ngx_slab_pool_t         *sp;
    ClusterShared           *cs;
    void                    *mem;

    sp = (ngx_slab_pool_t *) zone->shm.addr;

    if (data != NULL || zone->shm.exists) {
        /* a reload kept the zone (sp->data is set): keep its lease,
         * position and outbox */
        return NGX_OK;
    }

    mem = ngx_slab_alloc(sp, sizeof(ClusterShared) + ccf->queue);
    if (mem == NULL) {
        ngx_log_error(NGX_LOG_EMERG, zone->shm.log, 0,
                      "ipc_cluster: cannot allocate %uz bytes in its zone",
                      sizeof(ClusterShared) + ccf->queue);
        return NGX_ERROR;
    }

    cs = new (mem) ClusterShared();
    cs->magic = kClusterMagic;
    cs->version = kClusterVersion;
    cs->capacity = ccf->queue & ~(std::uint64_t) 7;
    cs->epoch = (std::uint64_t) ngx_time() * 1000000
                + (std::uint64_t) ngx_pid * 1000 + (ngx_random() % 1000);
    cs->seq = 0;
    cs->head.store(0, std::memory_order_relaxed);
    cs->tail.store(0, std::memory_order_relaxed);
    cs->agent_pid.store(0, std::memory_order_relaxed);
    cs->lock_pid.store(0, std::memory_order_relaxed);

    sp->data = cs;
    return NGX_OK;
}


/* This worker's cluster state, NULL without ipc_cluster. */
static ngx_ipc_cluster_conf_t *
ngx_ipc_cluster_conf(void)
{
    ngx_ipc_cluster_conf_t  *ccf;

    if (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE) {
        return NULL;
    }

    ccf = (ngx_ipc_cluster_conf_t *)
              ngx_get_conf(ngx_cycle->conf_ctx, ngx_ipc_cluster_module);
    if (ccf == NULL || ccf->enabled != 1 || ccf->zone == NULL) {
        return NULL;
    }

    return ccf;
}


static ClusterShared *
ngx_ipc_cluster_shared(void)
{
    ngx_ipc_cluster_conf_t  *ccf;
    ClusterShared           *cs;

    ccf = ngx_ipc_cluster_conf();
    if (ccf == NULL) {
        return NULL;
    }

    cs = (ClusterShared *) ((ngx_slab_pool_t *) ccf->zone->shm.addr)->data;
    if (cs == NULL || cs->magic != kClusterMagic
        || cs->version != kClusterVersion)
    {
        return NULL;
    }

    return cs;
}


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

    return NGX_OK;
}


/* A cluster broadcast: delivered to this node's workers through the local
 * path and queued in the outbox for the agent, both or neither. *kick_pid:
 * the agent to wake (it sleeps), or 0. */
int
ngx_ipc_ffi_cluster_broadcast(const u_char *name, size_t name_len,
    const u_char *data, size_t data_len, int include_self, int *kick_pid,
    char **err)
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
        *err = (char *) "no ipc_cluster in this configuration";
        return NGX_DECLINED;
    }

    if (data_len > ccf->max_message) {
        cs->counters[kRefused].fetch_add(1, std::memory_order_relaxed);
        *err = (char *) "message too large";
        return NGX_DECLINED;
    }

    cap = cs->capacity;
    need = align8(sizeof(OutRecord) + name_len + data_len);

    if (!ngx_ipc_cluster_lock(cs)) {
        cs->counters[kRefused].fetch_add(1, std::memory_order_relaxed);
        *err = (char *) "queue full";
        return NGX_DECLINED;
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
        *err = (char *) "queue full";
        return NGX_DECLINED;
    }

    /* the local part first: if it is refused, nothing is queued */
    rc = ngx_ipc_ffi_broadcast(name, name_len, data, data_len, include_self,
                               err);
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


static Text *
ngx_ipc_cluster_text(ClusterShared *cs, int which)
{
    return which == 0 ? &cs->last_id : &cs->last_error;
}


int
ngx_ipc_ffi_cluster_get_text(int which, char *buf, int size)
{
    ClusterShared  *cs;
    Text           *t;
    std::uint32_t   v1, v2, len;

    cs = ngx_ipc_cluster_shared();
    if (cs == NULL || size < (int) kTextMax) {
        return -1;
    }

    t = ngx_ipc_cluster_text(cs, which);

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
        ngx_memcpy(buf, t->data, len);

        std::atomic_thread_fence(std::memory_order_acquire);
        v2 = t->version.load(std::memory_order_relaxed);
        if (v1 == v2) {
            return (int) len;
        }
    }

    return -1;
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
    /* Release: publishes the text to readers that see the even version. */
    t->version.store(v + 2, std::memory_order_release);
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


static bool
ngx_ipc_cluster_pid_alive(int32_t pid)
{
    return kill(pid, 0) == 0 || ngx_errno != NGX_ESRCH;
}


static std::uint64_t
ngx_ipc_cluster_now_ms(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (std::uint64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
