/*
 * ngx_ipc: what the glue's files share (docs/ARCHITECTURE.md has the map).
 *
 * ngx_ipc_module.cpp       core module: directives, the shared mapping and
 *                          the wake-up fds of a configuration
 * ngx_ipc_worker.cpp       a worker's attachment: its slot, its eventfd's
 *                          wake handler, the shutdown watch, the yield
 * ngx_ipc_exit.cpp         a worker's graceful exit, with the Lua threads
 * ngx_ipc_busy_poll.cpp    busy polling (ipc_busy_poll), behind three calls
 * ngx_ipc_early.cpp        what arrives before the worker's Lua starts
 *                          ngx.ipc (ipc_early_messages)
 * ngx_ipc_bridge*.cpp      the reload bridge: workers of different
 *                          configurations that run at once: the mapping
 *                          and claims, messages (_send), wake-ups and
 *                          names (_wake), their directory (_dir)
 *                          (ngx_ipc_bridge.h)
 * ngx_ipc_log.cpp          log lines at a bounded rate
 * ngx_ipc_http_module.cpp  http module: registers the embedded Lua library
 * ngx_ipc_ffi.cpp          the C ABI (ngx_ipc_ffi.h) for messages
 * ngx_ipc_ffi_worker.cpp   the C ABI for the worker's light threads, PIDs,
 *                          counters and status
 * ngx_ipc_status*.cpp      http module: the ipc_status directive
 *                          (ngx_ipc_status.h)
 * ngx_ipc_cluster*.cpp     core module: ipc_cluster (ngx_ipc_cluster.h)
 */

#ifndef _NGX_IPC_MODULE_H_INCLUDED_
#define _NGX_IPC_MODULE_H_INCLUDED_

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
}

#include "ngx_ipc/endpoint.h"

#include "ngx_ipc_ffi.h"

typedef struct {
    /* directives (main context) */
    size_t                     ring_size;
    size_t                     max_message;
    size_t                     queue_limit;
    ngx_uint_t                 busy_poll;    /* microseconds, 0: off */
    ngx_int_t                  bridge_slots; /* read at the first start */
    ngx_msec_t                 early_msec;   /* ipc_early_messages, 0: off */
    size_t                     early_size;

    /* this configuration's shared state, made by the master */
    void                      *shm;
    size_t                     shm_size;
    ngx_uint_t                 nslots;
    int                       *fds;          /* one eventfd per slot */
} ngx_ipc_conf_t;

typedef int (*ngx_ipc_sema_post_pt)(void *sem, int n);

/* Busy polling's state: only ngx_ipc_busy_poll.cpp reads or writes it. */
typedef struct {
    ngx_event_t                event;        /* posted while it polls */
    uint64_t                   until;        /* CLOCK_MONOTONIC, ns */
    uint64_t                   start;        /* when this poll began */
    uint64_t                   backoff;      /* no poll before (monotonic) */
    uint64_t                   strike_time;  /* the first long yield */
    ngx_uint_t                 strikes;      /* long yields since then */
    unsigned                   polling:1;
    unsigned                   active:1;     /* moved messages since */
} ngx_ipc_busy_poll_t;

/* Early messages: only ngx_ipc_early.cpp reads or writes them. */
typedef struct ngx_ipc_early_msg_s  ngx_ipc_early_msg_t;

typedef struct {
    ngx_event_t                expire;       /* the hold's end */
    ngx_ipc_early_msg_t       *head;         /* kept, oldest first */
    ngx_ipc_early_msg_t       *tail;
    ngx_ipc_early_msg_t       *taken;        /* in the dispatcher's batch */
    size_t                     bytes;        /* kept, with their overhead */
    unsigned                   holding:1;
    unsigned                   full_logged:1;
} ngx_ipc_early_t;

/* ngx_ipc_bridge.cpp's: this worker's slot of the reload bridge */
typedef struct ngx_ipc_bridge_s  ngx_ipc_bridge_t;

/* This worker's attachment to its configuration's shared state. */
typedef struct ngx_ipc_worker_s {
    ngx_ipc_conf_t            *conf;         /* the configuration attached to */
    ngx_ipc::Endpoint         *endpoint;
    ngx_connection_t          *conn;         /* the slot's eventfd */
    void                      *sema;         /* the Lua dispatchers' inbox */
    void                      *yield_sema;   /* posted on the next pass */
    void                      *space_sema;   /* a send waits for room */
    ngx_event_t                yield;        /* posts it */
    ngx_event_t                retry;        /* while a backlog waits */
    ngx_ipc_sema_post_pt       sema_post;
    ngx_ipc_exit_t             exit;         /* shared with Lua */
    ngx_event_t                watch;        /* cancelable, while exiting */
    ngx_ipc_busy_poll_t        busy;         /* ngx_ipc_busy_poll.cpp's */
    ngx_ipc_early_t            early;        /* ngx_ipc_early.cpp's */
    ngx_ipc_bridge_t          *bridge;       /* NULL: none (see below) */
    unsigned                   exiting:1;
    unsigned                   no_dispatcher_logged:1;
} ngx_ipc_worker_t;

extern "C" ngx_module_t  ngx_ipc_module;

/* ngx_ipc_module.cpp: the configuration a worker forked now attaches to */
ngx_ipc_conf_t *ngx_ipc_conf_current(void);
/* ngx_ipc_fds.cpp: one eventfd per worker slot, after raising the master's
 * open files limit */
ngx_int_t ngx_ipc_open_eventfds(ngx_cycle_t *cycle, int *fds, ngx_uint_t n);

/* ngx_ipc_worker.cpp: attaches this process to its slot on first use; NULL
 * if this process is not a worker of a configuration that has ngx_ipc
 * (master, helpers). */
ngx_ipc_worker_t *ngx_ipc_worker_get(void);
/* this process's attachment, NULL if it has not attached (never attaches) */
ngx_ipc_worker_t *ngx_ipc_worker_attached(void);
ngx_int_t ngx_ipc_init_process(ngx_cycle_t *cycle);

/* ngx_ipc_exit.cpp: nginx closed the eventfd's connection (shutdown) */
void ngx_ipc_exit_begin(ngx_ipc_worker_t *w);
void ngx_ipc_exit_process(ngx_cycle_t *cycle);

/* ngx_ipc_busy_poll.cpp: after this worker moved messages it watches the
 * inbox for a while from the event loop (ipc_busy_poll) instead of
 * sleeping on the eventfd. */
char *ngx_ipc_set_busy_poll(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
void ngx_ipc_busy_poll_init(ngx_ipc_worker_t *w);
void ngx_ipc_busy_poll_after_send(ngx_ipc_worker_t *w);
void ngx_ipc_busy_poll_after_receive(ngx_ipc_worker_t *w, int n);
void ngx_ipc_busy_poll_on_empty(ngx_ipc_worker_t *w);
/* true while a poll watches the inbox: a receive leaves the slot disarmed */
bool ngx_ipc_busy_poll_watching(const ngx_ipc_worker_t *w);

/* ngx_ipc_early.cpp: a worker whose Lua has not called ngx.ipc keeps what
 * arrives for ipc_early_messages (time, bytes) after it starts; the
 * dispatcher takes it first. */
#define NGX_IPC_EARLY_MAX_MSEC     3600000
char *ngx_ipc_set_early(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
void ngx_ipc_early_init(ngx_ipc_worker_t *w);
/* a wake-up with no dispatcher: keep what ep's inbox holds, or drop it */
void ngx_ipc_early_receive(ngx_ipc_worker_t *w, ngx_ipc::Endpoint *ep);
/* the dispatcher started: true if messages were kept for it */
bool ngx_ipc_early_end(ngx_ipc_worker_t *w);
int ngx_ipc_early_take(ngx_ipc_worker_t *w, ngx_ipc::Delivery *out, int max);
void ngx_ipc_early_release(ngx_ipc_worker_t *w);

/* ngx_ipc_bridge*.cpp: the reload bridge, between the workers of
 * different configurations that run at once (docs/ARCHITECTURE.md §12).
 * The master makes it once (init, in init_conf; init_module says where
 * its directory is) and removes its directory at exit (exit_master); a
 * worker claims a slot at attach and gives it back at exit. A worker
 * without it (master_process off, all slots held, no name) has w->bridge
 * NULL and reaches its own configuration only. */
ngx_int_t ngx_ipc_bridge_init(ngx_cycle_t *cycle, ngx_uint_t nslots);
void ngx_ipc_bridge_init_module(ngx_cycle_t *cycle);
void ngx_ipc_bridge_exit_master(ngx_cycle_t *cycle);
void ngx_ipc_bridge_attach(ngx_ipc_worker_t *w);
void ngx_ipc_bridge_detach(ngx_ipc_worker_t *w);
/* a broadcast: check() before the configuration's own part (all or
 * nothing), broadcast() after it succeeded */
ngx_ipc::Status ngx_ipc_bridge_check(ngx_ipc_worker_t *w);
ngx_ipc::Status ngx_ipc_bridge_broadcast(ngx_ipc_worker_t *w,
    const u_char *name, size_t name_len, const u_char *data, size_t data_len);
/* a send to a PID that is not of this configuration: find() its bridge
 * slot (-1: none), send() to it there */
int ngx_ipc_bridge_find(ngx_ipc_worker_t *w, int32_t pid);
ngx_ipc::Status ngx_ipc_bridge_send(ngx_ipc_worker_t *w, int slot,
    int32_t pid, const u_char *name, size_t name_len, const u_char *data,
    size_t data_len, uint16_t flags, uint32_t call_id);
/* the bridge's inbox, taken with the configuration's */
int ngx_ipc_bridge_take(ngx_ipc_worker_t *w, ngx_ipc::Delivery *out, int max);
void ngx_ipc_bridge_release(ngx_ipc_worker_t *w);
void ngx_ipc_bridge_retry_all(ngx_ipc_worker_t *w);
int ngx_ipc_bridge_peers(ngx_ipc_worker_t *w, ngx_ipc_peer_t *out, int max);

/* ngx_ipc_worker.cpp, for the wake handlers (the eventfd's, the bridge's):
 * after a flush(), the send waiting for room tries again. */
void ngx_ipc_space_freed(ngx_ipc_worker_t *w);
/* after a send or a flush: while a backlog waits, a timer flushes it now
 * and then, and asks whether an inbox's lock holder still runs (one that
 * died never wakes anyone) */
void ngx_ipc_backlog_watch(ngx_ipc_worker_t *w);

/* Posts sema after the event loop's next pass (a dispatcher's yield). */
void ngx_ipc_yield(ngx_ipc_worker_t *w, void *sema);

/* Logs a core event at a bounded rate (a storm writes a few lines). */
void ngx_ipc_log_limited(ngx_uint_t level, ngx_err_t err, const char *msg);

#endif /* _NGX_IPC_MODULE_H_INCLUDED_ */
