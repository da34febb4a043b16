/*
 * ngx_ipc reload bridge: what its four files share (docs/ARCHITECTURE.md
 * §12).
 *
 * ngx_ipc_bridge.cpp       the mapping and its claims page: a worker's
 *                          claim at attach, given back at exit
 * ngx_ipc_bridge_send.cpp  messages through it: the lists of the other
 *                          generations' slots, broadcast, send, take
 * ngx_ipc_bridge_wake.cpp  the sockets' names and binding, wake-up
 *                          datagrams and their retries, liveness probes
 * ngx_ipc_bridge_dir.cpp   the private directory the names live in
 */

#ifndef _NGX_IPC_BRIDGE_H_INCLUDED_
#define _NGX_IPC_BRIDGE_H_INCLUDED_

#include "ngx_ipc_module.h"

#include <atomic>
#include <vector>


/* The claims pages, at the start of the bridge mapping. */
struct ngx_ipc_bridge_page_t {
    uint64_t                         magic;
    uint32_t                         version;
    uint32_t                         nslots;

    /* +1 whenever a claim is made or given back: senders rebuild their
     * list of the other generations' slots when it moved */
    alignas(64) std::atomic<uint64_t> epoch;

    /* (generation << 32) | pid of the slot's claimant, 0: free; it also
     * names the claimant's socket (ngx_ipc_bridge_name) */
    alignas(64) std::atomic<uint64_t> owner[NGX_IPC_BRIDGE_SLOTS];

    /* the claimant's ngx_worker, for the lists */
    std::atomic<uint32_t>            worker[NGX_IPC_BRIDGE_SLOTS];
};

/* the claims take whole pages before the bridge's ngx_ipc layout */
#define NGX_IPC_BRIDGE_CLAIMS                                                 \
    ((sizeof(ngx_ipc_bridge_page_t) + 4095) / 4096 * 4096)


struct ngx_ipc_bridge_s {
    ngx_ipc::Endpoint               *endpoint;
    ngx_connection_t                *conn;        /* the bound socket */
    uint64_t                         owner;       /* this claim's word */
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


/* ngx_ipc_bridge.cpp: made by the master before its first workers, kept
 * until it exits; this process's claim. */
extern ngx_ipc_bridge_page_t  *ngx_ipc_bridge_page;
/* slots in use, at most NGX_IPC_BRIDGE_SLOTS (ipc_bridge_slots, set by the
 * master before it forks anyone; never read from the shared page) */
extern uint32_t                ngx_ipc_bridge_nslots;
extern ngx_ipc_bridge_t        ngx_ipc_bridge;

/* Clears slot k's claim if it is still `owner`. */
void ngx_ipc_bridge_forget(uint32_t k, uint64_t owner);


/* ngx_ipc_bridge_dir.cpp: in the master, makes the private directory the
 * names live in, owned by the workers' user; removes it (a start that
 * failed, the master's exit). Its path, inherited by the workers. */
#define NGX_IPC_BRIDGE_DIR_LEN  (sizeof("/tmp/ngx_ipc..XXXXXX") + NGX_INT64_LEN)

extern u_char  ngx_ipc_bridge_dir[NGX_IPC_BRIDGE_DIR_LEN];

ngx_int_t ngx_ipc_bridge_dir_make(ngx_cycle_t *cycle);
void ngx_ipc_bridge_dir_announce(ngx_log_t *log);
void ngx_ipc_bridge_dir_remove(ngx_log_t *log);


/* ngx_ipc_bridge_wake.cpp */

/* In a worker: the connection of a datagram socket bound to the name of
 * `owner`, or NULL (logged); ngx_ipc_bridge_unbind() closes b->conn and
 * removes the name. */
ngx_connection_t *ngx_ipc_bridge_bind(uint64_t owner);
void ngx_ipc_bridge_unbind(ngx_ipc_bridge_t *b);

/* Whether the process that wrote claim `owner` is gone. */
bool ngx_ipc_bridge_dead(uint64_t owner);

/* The bridge endpoint's waker and alive check; the socket's read handler;
 * the timer that sends refused-for-now wake-ups again; a probe of slot k. */
void ngx_ipc_bridge_wake(void *ctx, uint32_t k);
bool ngx_ipc_bridge_alive(void *ctx, uint32_t k, int32_t pid);
void ngx_ipc_bridge_handler(ngx_event_t *rev);
void ngx_ipc_bridge_retry(ngx_event_t *ev);
bool ngx_ipc_bridge_probe(uint32_t k);

#endif /* _NGX_IPC_BRIDGE_H_INCLUDED_ */
