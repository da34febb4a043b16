/*
 * ngx_ipc status: what the status page's three files share.
 *
 * ngx_ipc_status.cpp          the ipc_status directive, the request
 *                             handler, the format negotiation, the reading
 *                             of the slots
 * ngx_ipc_status_text.cpp     the Prometheus and JSON writers
 * ngx_ipc_status_cluster.cpp  the cluster link's part of both, read from
 *                             the cluster zone
 */

#ifndef _NGX_IPC_STATUS_H_INCLUDED_
#define _NGX_IPC_STATUS_H_INCLUDED_

#include "ngx_ipc_module.h"

extern "C" {
#include <ngx_http.h>
}

#include "ngx_ipc/status.h"


/* the cluster link, as ngx_ipc_status_cluster.cpp read it */
typedef struct {
    ngx_uint_t                 enabled;    /* 0: no ipc_cluster; the rest
                                              is unset */
    ngx_str_t                  node;
    ngx_str_t                  redis;      /* host:port the agent writes
                                              to (Sentinel: found), never
                                              the user or password */
    ngx_str_t                  stream;
    int32_t                    agent_pid;  /* 0: none holds the lease */
    uint64_t                   outbox_bytes;
    uint64_t                   outbox_capacity;
    uint64_t                   counters[NGX_IPC_FFI_CLUSTER_COUNTERS];
    ngx_ipc_cluster_link_t     link;       /* last error, last connection */
    ngx_str_t                  last_id;
    ngx_str_t                  last_error;
    u_char                     last_id_buf[NGX_IPC_FFI_CLUSTER_TEXT_MAX];
    u_char                     last_error_buf[NGX_IPC_FFI_CLUSTER_TEXT_MAX];
    u_char                     redis_buf[NGX_IPC_FFI_CLUSTER_TEXT_MAX + 8];
} ngx_http_ipc_status_cluster_t;


typedef struct {
    ngx_ipc::ShmHeader        *shm;
    ngx_uint_t                 n;
    ngx_ipc::WorkerStatus     *workers;
    ngx_ipc::InboxStatus      *inboxes;    /* the inboxes with traffic */
    uint32_t                  *inbox_ids;  /* their workers */
    ngx_uint_t                 ninboxes;
    ngx_ipc_peer_t            *peers;      /* other generations' workers */
    ngx_uint_t                 npeers;
    ngx_http_ipc_status_cluster_t  cluster;
} ngx_http_ipc_status_t;


/* the counters of a worker, as ipc.stats() names them */
extern const ngx_uint_t  ngx_http_ipc_status_nfields;

u_char *ngx_http_ipc_status_prometheus(u_char *p, u_char *last,
    ngx_http_ipc_status_t *st);
u_char *ngx_http_ipc_status_json(u_char *p, u_char *last,
    ngx_http_ipc_status_t *st);
/* "# HELP ngx_ipc_<name> ...\n# TYPE ngx_ipc_<name> <type>\n" */
u_char *ngx_http_ipc_status_family(u_char *p, u_char *last, const char *name,
    const char *type, const char *help);

void ngx_http_ipc_status_read_cluster(ngx_http_ipc_status_cluster_t *c);
/* bytes its text may take, at most, in either format */
size_t ngx_http_ipc_status_cluster_size(ngx_http_ipc_status_cluster_t *c);
u_char *ngx_http_ipc_status_cluster_prometheus(u_char *p, u_char *last,
    ngx_http_ipc_status_cluster_t *c);
u_char *ngx_http_ipc_status_cluster_json(u_char *p, u_char *last,
    ngx_http_ipc_status_cluster_t *c);

#endif /* _NGX_IPC_STATUS_H_INCLUDED_ */
