/*
 * ngx_ipc status: what the status page's two files share.
 *
 * ngx_ipc_status.cpp       the ipc_status directive, the request handler,
 *                          the format negotiation, the reading of the slots
 * ngx_ipc_status_text.cpp  the Prometheus and JSON writers
 */

#ifndef _NGX_IPC_STATUS_H_INCLUDED_
#define _NGX_IPC_STATUS_H_INCLUDED_

#include "ngx_ipc_module.h"

extern "C" {
#include <ngx_http.h>
}

#include "ngx_ipc/status.h"


typedef struct {
    ngx_ipc::ShmHeader        *shm;
    ngx_uint_t                 n;
    ngx_ipc::WorkerStatus     *workers;
    ngx_ipc::InboxStatus      *inboxes;    /* the inboxes with traffic */
    uint32_t                  *inbox_ids;  /* their workers */
    ngx_uint_t                 ninboxes;
    ngx_ipc_peer_t            *peers;      /* other generations' workers */
    ngx_uint_t                 npeers;
} ngx_http_ipc_status_t;


/* the counters of a worker, as ipc.stats() names them */
extern const ngx_uint_t  ngx_http_ipc_status_nfields;

u_char *ngx_http_ipc_status_prometheus(u_char *p, u_char *last,
    ngx_http_ipc_status_t *st);
u_char *ngx_http_ipc_status_json(u_char *p, u_char *last,
    ngx_http_ipc_status_t *st);

#endif /* _NGX_IPC_STATUS_H_INCLUDED_ */
