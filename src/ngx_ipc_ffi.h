/*
 * ngx_ipc FFI: the C ABI between ngx_ipc_module.so and its Lua library, in
 * one place. Plain C: the C++ glue includes it (and static_asserts that its
 * structs match the core's), and the Lua side declares it with ffi.cdef
 * from this very text: the module embeds this file, and lib/ngx/ipc/ffi.lua
 * (package "ngx.ipc.ffi") hands what lies between the two markers below to
 * ffi.cdef, less its preprocessor lines. So it holds only what LuaJIT's C
 * parser takes: typedefs, enums, prototypes; constants are enum members,
 * which Lua reads as ffi.C.NAME.
 *
 * Functions take plain C types and return NGX_OK (0), NGX_ERROR (-1:
 * ngx_ipc is not usable in this process) or, for a send refused at run
 * time, one of the NGX_IPC_FFI_E_* codes below (positive), which the Lua
 * side turns into the API's text in one table (lib/ngx/ipc/errors.lua);
 * unless said otherwise. No C++ exception crosses this boundary.
 *
 * Implemented in ngx_ipc_ffi.cpp (messages), ngx_ipc_ffi_worker.cpp (the
 * worker's light threads, counters and status) and ngx_ipc_cluster_*.cpp
 * (the cluster agent, lib/ngx/ipc/cluster.lua).
 */

#ifndef _NGX_IPC_FFI_H_INCLUDED_
#define _NGX_IPC_FFI_H_INCLUDED_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* NGX_IPC_FFI_CDEF_BEGIN: from here to the end marker, ffi.cdef's text */

enum {
    /* Bumped whenever a declaration below changes; lib/ngx/ipc.lua refuses
     * to run against a module that reports another version. */
    NGX_IPC_FFI_VERSION = 9,

    /* a send's run-time failures (ngx_ipc::Status, ngx_ipc_cluster_*) */
    NGX_IPC_FFI_E_NO_SUCH_WORKER = 1,    /* "no such worker" */
    NGX_IPC_FFI_E_NAME_TOO_LONG = 2,     /* "name too long" */
    NGX_IPC_FFI_E_TOO_LARGE = 3,         /* "message too large" */
    NGX_IPC_FFI_E_QUEUE_FULL = 4,        /* "queue full" */
    NGX_IPC_FFI_E_NO_MEMORY = 5,         /* "no memory" */
    NGX_IPC_FFI_E_EMPTY_NAME = 6,        /* the Lua API raises before */
    NGX_IPC_FFI_E_NO_CLUSTER = 7,        /* no ipc_cluster here */

    /* messages taken from the inbox per ngx_ipc_ffi_take() call */
    NGX_IPC_FFI_BATCH = 64,
    /* worker slots at most (ngx_ipc::kMaxSlots, nginx's NGX_MAX_PROCESSES) */
    NGX_IPC_FFI_MAX_SLOTS = 1024,
    /* processes of all generations that the reload bridge links at once
     * (src/ngx_ipc_bridge.cpp) */
    NGX_IPC_BRIDGE_SLOTS = 2048,
    /* bytes of a message name at most (ngx_ipc::kMaxNameLen) */
    NGX_IPC_FFI_MAX_NAME = 65535,

    /* a message's flags (ngx_ipc::RecordFlags); Lua may set REQUEST,
     * REPLY and a reply status in a send */
    NGX_IPC_FFI_F_BROADCAST = 0x08,
    NGX_IPC_FFI_F_REQUEST = 0x10,        /* ipc.call's request; call_id */
    NGX_IPC_FFI_F_REPLY = 0x20,          /* ipc.call's answer; call_id */
    NGX_IPC_FFI_F_STATUS = 0xc0,         /* the answer's status: */
    NGX_IPC_FFI_S_OK = 0x00,             /* the handler's first value */
    NGX_IPC_FFI_S_ERROR = 0x40,          /* the handler raised: its message */
    NGX_IPC_FFI_S_NO_HANDLER = 0x80,     /* no handler for the name */
    NGX_IPC_FFI_S_KICK = 0xc0,           /* no answer: wakes the cluster
                                            agent's writer */

    /* ngx_ipc_worker_status_t.state (ngx_ipc::WorkerState) */
    NGX_IPC_FFI_NOT_STARTED = 0,
    NGX_IPC_FFI_RUNNING = 1,
    NGX_IPC_FFI_EXITED = 2,
    NGX_IPC_FFI_DEAD = 3,

    /* the cluster zone's texts and counters (ngx_ipc_cluster.h) */
    NGX_IPC_FFI_CLUSTER_TEXT_MAX = 128,
    NGX_IPC_FFI_CLUSTER_LAST_ID = 0,
    NGX_IPC_FFI_CLUSTER_LAST_ERROR = 1,
    NGX_IPC_FFI_CLUSTER_PRIMARY = 2,     /* host:port the agent writes to */

    NGX_IPC_FFI_CLUSTER_PUBLISHED = 0,   /* cluster broadcasts accepted */
    NGX_IPC_FFI_CLUSTER_REFUSED = 1,     /* refused: queue full, too large */
    NGX_IPC_FFI_CLUSTER_ADDED = 2,       /* entries Redis acknowledged */
    NGX_IPC_FFI_CLUSTER_RECEIVED = 3,    /* entries from other nodes */
    NGX_IPC_FFI_CLUSTER_GAPS = 4,        /* times entries were missed */
    NGX_IPC_FFI_CLUSTER_RECONNECTS = 5,  /* connections after a failure */
    NGX_IPC_FFI_CLUSTER_ERRORS = 6,      /* Redis errors, failed connects */
    NGX_IPC_FFI_CLUSTER_CONNECTED = 7,   /* gauge: 1 while the link is up */
    NGX_IPC_FFI_CLUSTER_LAG_MS = 8,      /* gauge: age of the last entry */
    NGX_IPC_FFI_CLUSTER_NODE_CLASHES = 9,/* entries from a node of our name */
    NGX_IPC_FFI_CLUSTER_MALFORMED = 10,  /* entries skipped: not well formed,
                                            out of bounds or of window */
    NGX_IPC_FFI_CLUSTER_UNAUTHENTICATED = 11, /* skipped: no valid MAC */
    NGX_IPC_FFI_CLUSTER_COUNTERS = 12,

    /* hex digits of an entry's MAC (HMAC-SHA256, secret=) */
    NGX_IPC_FFI_CLUSTER_MAC_HEX = 64
};

/* A message taken from the inbox (ngx_ipc::Delivery): name and data stay
 * valid until the next ngx_ipc_ffi_take() or ngx_ipc_ffi_take_done(). */
typedef struct {
    const unsigned char  *name;
    const unsigned char  *data;
    uint64_t              data_len;
    uint32_t              name_len;
    int32_t               sender_pid;
    uint32_t              flags;
    uint32_t              call_id;
} ngx_ipc_msg_t;

/* A worker's counters, as ipc.stats() and the status page show them: the
 * sum of what the core counts and what the Lua library counts. */
typedef struct {
    uint64_t  sent;
    uint64_t  received;
    uint64_t  sent_bytes;
    uint64_t  received_bytes;
    uint64_t  dropped;
    uint64_t  refused;
    uint64_t  handler_errors;
    uint64_t  calls;
    uint64_t  call_timeouts;
    uint64_t  queued_bytes;
    uint64_t  resets;
    uint64_t  unhandled;
} ngx_ipc_stats_t;

/* The counters lib/ngx/ipc.lua owns, in its worker's slot
 * (ngx_ipc::LuaStats): only Lua writes them, and the core zeroes them when
 * a process takes the slot. ipc.stats() and the status page show them
 * added to the core's (ngx_ipc_stats_t). */
typedef struct {
    uint64_t  dropped;         /* answers no call waits for */
    int64_t   refused;         /* sends Lua refused, less the core's "queue
                                  full" of sends that then waited */
    uint64_t  handler_errors;
    uint64_t  calls;
    uint64_t  call_timeouts;
    uint64_t  unhandled;       /* messages no handler took */
} ngx_ipc_lua_counters_t;

/* One worker slot (ngx_ipc::WorkerStatus). */
typedef struct {
    int32_t          pid;
    uint32_t         incarnation;
    int32_t          state;
    uint32_t         slot;
    ngx_ipc_stats_t  stats;
    uint64_t         busy_poll_ns;
    uint64_t         queued_msgs;   /* messages in its send backlog */
} ngx_ipc_worker_status_t;

/* A worker of another configuration (generation) still running: an old
 * one draining after a reload, or a newer one seen from an old worker. */
typedef struct {
    int32_t          pid;
    uint32_t         generation;
    uint32_t         worker;       /* its ngx.worker.id() */
} ngx_ipc_peer_t;

/* During a graceful shutdown, the light threads wait until nothing but
 * their own waits keeps the worker alive. */
typedef struct {
    int  waits;        /* Lua: semaphore waits now */
    int  release;      /* C: 1 when they may return */
    int  runner_gone;  /* C: the runner's timer ended; Lua clears it */
} ngx_ipc_exit_t;

/* ipc_cluster's settings (ngx_ipc_ffi_cluster_info) */
typedef struct {
    const unsigned char  *host;
    size_t                host_len;
    const unsigned char  *user;
    size_t                user_len;
    const unsigned char  *password;
    size_t                password_len;
    const unsigned char  *stream;
    size_t                stream_len;
    const unsigned char  *node;
    size_t                node_len;
    int                   port;
    int                   db;
    uint64_t              maxlen;
    uint64_t              max_message;
    uint64_t              epoch;
    int                   secret;      /* 1: entries carry a MAC (secret=) */
    int                   tls;         /* 1: rediss:// (TLS, verified) */
    int                   replicas;    /* replicas=: WAIT for them */
    const unsigned char  *where;       /* the URL for messages: no user,
                                          no password */
    size_t                where_len;
    const unsigned char  *sentinels;   /* "H:P,H:P" (validated), or "" */
    size_t                sentinels_len;
    const unsigned char  *master;      /* the Sentinels' master name */
    size_t                master_len;
    const unsigned char  *sentinel_password;
    size_t                sentinel_password_len;
    const unsigned char  *tls_name;    /* SNI and the name verified, or ""
                                          (the host connected to) */
    size_t                tls_name_len;
    const unsigned char  *tls_cert;    /* PEM, read by the master, or "" */
    size_t                tls_cert_len;
    const unsigned char  *tls_key;
    size_t                tls_key_len;
} ngx_ipc_cluster_info_t;

/* the link's last error and last connection, read together
 * (ngx_ipc_ffi_cluster_link): what ipc.cluster() and ipc_status show */
typedef struct {
    uint64_t  error_ms;      /* wall clock (ms since 1970) when the last
                                error was set; 0: none yet */
    uint64_t  connect_ms;    /* wall clock of the agent's last connection
                                to Redis (reader or writer); 0: none yet */
    int       error_len;     /* bytes of the error's text, in buf */
    int       error_old;     /* 1: connected, and no error was set since
                                the last connection */
} ngx_ipc_cluster_link_t;

/* an outbox entry handed to the agent (pointers into the zone, valid until
 * it commits past them) */
typedef struct {
    const unsigned char  *name;
    const unsigned char  *data;
    uint64_t              seq;
    uint64_t              data_len;
    uint32_t              name_len;
    int32_t               pid;
} ngx_ipc_cluster_entry_t;

/* one line of ngx_ipc_ffi_layout(): the offset of a field in a struct, or
 * with field "" the struct's size, as the module was compiled */
typedef struct {
    const char  *type;
    const char  *field;
    size_t       value;
} ngx_ipc_layout_t;


/* ngx_ipc_ffi.cpp: messages */
int ngx_ipc_ffi_version(void);
int ngx_ipc_ffi_start(void *sema, char **err);
int ngx_ipc_ffi_send(int pid, const unsigned char *name, size_t name_len,
    const unsigned char *data, size_t data_len, int flags, uint32_t call_id);
int ngx_ipc_ffi_broadcast(const unsigned char *name, size_t name_len,
    const unsigned char *data, size_t data_len, int include_self);
/* takes up to max messages; 0: the inbox is empty and the slot armed */
int ngx_ipc_ffi_take(ngx_ipc_msg_t *out, int max);
void ngx_ipc_ffi_take_done(void);
int ngx_ipc_ffi_wait_space(void *sema);
/* the ABI's layout as compiled: *out points at the lines; returns them */
int ngx_ipc_ffi_layout(const ngx_ipc_layout_t **out);

/* ngx_ipc_ffi_worker.cpp: the worker, its light threads and counters */
int ngx_ipc_ffi_pids(int *out, int max);
/* the other generations' running workers (up to max); returns how many */
int ngx_ipc_ffi_peers(ngx_ipc_peer_t *out, int max);
/* this worker's counters, what the core and Lua count added up */
int ngx_ipc_ffi_stats(ngx_ipc_stats_t *out);
/* the part Lua counts, written only through this pointer */
ngx_ipc_lua_counters_t *ngx_ipc_ffi_lua_counters(void);
int ngx_ipc_ffi_worker_status(int slot, ngx_ipc_worker_status_t *out);
ngx_ipc_exit_t *ngx_ipc_ffi_exit_state(void);
int ngx_ipc_ffi_watch_runner(void *r);
int ngx_ipc_ffi_yield(void *sema);

/* ngx_ipc_cluster_*.cpp: the cluster agent */
int ngx_ipc_ffi_cluster_info(ngx_ipc_cluster_info_t *out);
int ngx_ipc_ffi_cluster_broadcast(const unsigned char *name, size_t name_len,
    const unsigned char *data, size_t data_len, int include_self,
    int *kick_pid);
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
/* setting LAST_ERROR stamps it with the wall clock */
void ngx_ipc_ffi_cluster_set_text(int which, const char *text, size_t len);
/* the agent made a connection to Redis: stamps it, and marks the errors
 * set so far as older than it */
void ngx_ipc_ffi_cluster_connected(void);
/* the last error into buf (NGX_IPC_FFI_CLUSTER_TEXT_MAX bytes at least)
 * and its time, read together, with the last connection's: NGX_OK, or
 * NGX_ERROR (no ipc_cluster, or size too small) */
int ngx_ipc_ffi_cluster_link(ngx_ipc_cluster_link_t *out, char *buf,
    int size);
uint64_t *ngx_ipc_ffi_cluster_counters(void);
void ngx_ipc_ffi_cluster_count(int which, int64_t n);
void ngx_ipc_ffi_cluster_gauge(int which, uint64_t v);
/* secret=: the MAC of an entry (its header text, then its messages), as
 * NGX_IPC_FFI_CLUSTER_MAC_HEX lowercase hex digits into hex; NGX_DECLINED
 * without a secret */
int ngx_ipc_ffi_cluster_mac(const unsigned char *head, size_t head_len,
    const unsigned char *body, size_t body_len, char *hex);
/* 1 if mac (mac_len bytes) is that MAC, compared in constant time; 0 if
 * not, or without a secret */
int ngx_ipc_ffi_cluster_mac_ok(const unsigned char *head, size_t head_len,
    const unsigned char *body, size_t body_len, const char *mac,
    size_t mac_len);

/* NGX_IPC_FFI_CDEF_END */

#ifdef __cplusplus
}
#endif

#endif /* _NGX_IPC_FFI_H_INCLUDED_ */
