/*
 * ngx_ipc status: the page's text, Prometheus (exposition format 0.0.4) or
 * JSON, written from what ngx_ipc_status.cpp read from the slots; the
 * cluster link's part is ngx_ipc_status_cluster.cpp's.
 */

#include "ngx_ipc_status.h"


/* The counters of ipc.stats(), in its order, as Prometheus names them. */
typedef struct {
    const char                *name;       /* ipc.stats() key */
    const char                *help;
    size_t                     offset;     /* in ngx_ipc::Stats */
    unsigned                   counter:1;  /* else a gauge */
} ngx_http_ipc_status_field_t;

#define NGX_IPC_FIELD(f, counter, help)                                       \
    { #f, help, offsetof(ngx_ipc::Stats, f), counter }

static const ngx_http_ipc_status_field_t  ngx_http_ipc_status_fields[] = {
    NGX_IPC_FIELD(sent, 1, "Messages queued, counted per destination."),
    NGX_IPC_FIELD(received, 1, "Messages taken from the inbox."),
    NGX_IPC_FIELD(sent_bytes, 1, "Data bytes of the messages sent."),
    NGX_IPC_FIELD(received_bytes, 1, "Data bytes of the messages received."),
    NGX_IPC_FIELD(dropped, 1, "Messages addressed to a process that is "
                              "gone, or too large for it, and answers "
                              "that came too late."),
    NGX_IPC_FIELD(refused, 1, "Sends that returned an error."),
    NGX_IPC_FIELD(handler_errors, 1, "Handlers that raised an error."),
    NGX_IPC_FIELD(calls, 1, "ipc.call requests sent."),
    NGX_IPC_FIELD(call_timeouts, 1, "ipc.call requests that timed out."),
    NGX_IPC_FIELD(queued_bytes, 0, "Payload bytes held now in the "
                                   "worker's send backlog."),
    NGX_IPC_FIELD(resets, 1, "Inbox rings reset after a corrupt record."),
    NGX_IPC_FIELD(unhandled, 1, "Messages no handler took (no handler for "
                                "their name, no default_handler)."),
};

#define NGX_IPC_NFIELDS                                                       \
    (sizeof(ngx_http_ipc_status_fields) / sizeof(ngx_http_ipc_status_fields[0]))

const ngx_uint_t  ngx_http_ipc_status_nfields = NGX_IPC_NFIELDS;


static const char *
ngx_http_ipc_status_state(const ngx_ipc::WorkerStatus *ws)
{
    return ngx_ipc::state_name((ngx_ipc::WorkerState) ws->state);
}


static uint64_t
ngx_http_ipc_status_value(const ngx_ipc::WorkerStatus *ws, ngx_uint_t f)
{
    return *(const uint64_t *) ((const u_char *) &ws->stats
                                + ngx_http_ipc_status_fields[f].offset);
}


u_char *
ngx_http_ipc_status_family(u_char *p, u_char *last, const char *name,
    const char *type, const char *help)
{
    return ngx_slprintf(p, last, "# HELP ngx_ipc_%s %s\n# TYPE ngx_ipc_%s %s\n",
                        name, help, name, type);
}


u_char *
ngx_http_ipc_status_prometheus(u_char *p, u_char *last,
    ngx_http_ipc_status_t *st)
{
    ngx_uint_t                     i, f, k;
    ngx_ipc::ShmHeader            *h = st->shm;
    ngx_ipc::WorkerStatus         *ws;
    ngx_ipc::InboxStatus          *is;
    const ngx_http_ipc_status_field_t  *fd;
    char                           name[64];

    static const char  *states[] = {
        "not_started", "running", "exited", "dead"
    };

    /* the configuration */

    p = ngx_http_ipc_status_family(p, last, "workers", "gauge",
                                   "Worker slots of this configuration.");
    p = ngx_slprintf(p, last, "ngx_ipc_workers %ui\n", st->n);

    p = ngx_http_ipc_status_family(p, last, "ring_size_bytes", "gauge",
                "Shared-memory inbox of each worker (ipc_ring_size).");
    p = ngx_slprintf(p, last, "ngx_ipc_ring_size_bytes %uL\n", h->ring_size);

    p = ngx_http_ipc_status_family(p, last, "shared_memory_bytes", "gauge",
                "The configuration's shared mapping: its inboxes and the "
                "workers' slots (address space; pages are used as "
                "traffic touches them).");
    p = ngx_slprintf(p, last, "ngx_ipc_shared_memory_bytes %uL\n",
                     h->total_size);

    p = ngx_http_ipc_status_family(p, last, "max_message_bytes", "gauge",
                                   "Largest data accepted (ipc_max_message).");
    p = ngx_slprintf(p, last, "ngx_ipc_max_message_bytes %uL\n",
                     h->max_message);

    p = ngx_http_ipc_status_family(p, last, "queue_limit_bytes", "gauge",
                "Per-destination sender backlog limit (ipc_queue_limit).");
    p = ngx_slprintf(p, last, "ngx_ipc_queue_limit_bytes %uL\n",
                     h->queue_limit);

    p = ngx_http_ipc_status_family(p, last, "busy_poll_limit_seconds", "gauge",
                "How long a worker watches its inbox after traffic "
                "(ipc_busy_poll).");
    p = ngx_slprintf(p, last, "ngx_ipc_busy_poll_limit_seconds %uL.%06uL\n",
                     h->busy_poll_us / 1000000, h->busy_poll_us % 1000000);

    p = ngx_http_ipc_status_family(p, last, "generation", "gauge",
                "Configuration generation: 1, then one more per reload.");
    p = ngx_slprintf(p, last, "ngx_ipc_generation %uL\n", h->generation);

    /* the workers */

    p = ngx_http_ipc_status_family(p, last, "worker_pid", "gauge",
                "PID of the worker's current or last process (0: none).");
    for (i = 0; i < st->n; i++) {
        p = ngx_slprintf(p, last, "ngx_ipc_worker_pid{worker=\"%ui\"} %D\n",
                         i, st->workers[i].pid);
    }

    p = ngx_http_ipc_status_family(p, last, "worker_incarnation", "gauge",
                "Processes the worker slot has had: +1 per respawn.");
    for (i = 0; i < st->n; i++) {
        p = ngx_slprintf(p, last,
                         "ngx_ipc_worker_incarnation{worker=\"%ui\"} %uD\n",
                         i, st->workers[i].incarnation);
    }

    p = ngx_http_ipc_status_family(p, last, "worker_state", "gauge",
                "1 for the worker's state: not_started, running, exited "
                "(cleanly) or dead (to be respawned).");
    for (i = 0; i < st->n; i++) {
        for (k = 0; k < sizeof(states) / sizeof(states[0]); k++) {
            p = ngx_slprintf(p, last,
                     "ngx_ipc_worker_state{worker=\"%ui\",state=\"%s\"} %d\n",
                     i, states[k], st->workers[i].state == (int32_t) k);
        }
    }

    for (f = 0; f < NGX_IPC_NFIELDS; f++) {
        fd = &ngx_http_ipc_status_fields[f];
        ngx_sprintf((u_char *) name, "%s%s%Z", fd->name,
                    fd->counter ? "_total" : "");
        p = ngx_http_ipc_status_family(p, last, name,
                                       fd->counter ? "counter" : "gauge",
                                       fd->help);

        for (i = 0; i < st->n; i++) {
            p = ngx_slprintf(p, last, "ngx_ipc_%s{worker=\"%ui\"} %uL\n",
                             name, i,
                             ngx_http_ipc_status_value(&st->workers[i], f));
        }
    }

    p = ngx_http_ipc_status_family(p, last, "busy_poll_seconds_total",
                "counter", "Time spent busy polling the inbox.");
    for (i = 0; i < st->n; i++) {
        ws = &st->workers[i];
        p = ngx_slprintf(p, last,
                         "ngx_ipc_busy_poll_seconds_total{worker=\"%ui\"} "
                         "%uL.%09uL\n", i, ws->busy_poll_ns / 1000000000,
                         ws->busy_poll_ns % 1000000000);
    }

    p = ngx_http_ipc_status_family(p, last, "queued_messages", "gauge",
                "Messages (or their rests) in the worker's send backlog.");
    for (i = 0; i < st->n; i++) {
        p = ngx_slprintf(p, last, "ngx_ipc_queued_messages{worker=\"%ui\"} "
                         "%uL\n", i, st->workers[i].queued_msgs);
    }

    /* the other configurations' workers still running */

    p = ngx_http_ipc_status_family(p, last, "other_generation_workers",
                "gauge", "Workers of other configurations still running (old ones "
                "draining after a reload), linked by the reload bridge.");
    p = ngx_slprintf(p, last, "ngx_ipc_other_generation_workers %ui\n",
                     st->npeers);

    if (st->npeers > 0) {
        p = ngx_http_ipc_status_family(p, last, "other_generation_worker_pid",
                    "gauge", "PID of a worker of another configuration still "
                    "running.");
        for (i = 0; i < st->npeers; i++) {
            p = ngx_slprintf(p, last,
                             "ngx_ipc_other_generation_worker_pid"
                             "{generation=\"%uD\",worker=\"%uD\"} %D\n",
                             st->peers[i].generation, st->peers[i].worker,
                             st->peers[i].pid);
        }
    }

    /* the cluster link (ngx_ipc_status_cluster.cpp) */

    p = ngx_http_ipc_status_cluster_prometheus(p, last, &st->cluster);

    /* the inboxes with traffic */

    if (st->ninboxes == 0) {
        return p;
    }

#define NGX_IPC_INBOX_FAMILY(metric, help, field)                             \
    p = ngx_http_ipc_status_family(p, last, metric, "gauge", help);           \
    for (k = 0; k < st->ninboxes; k++) {                                      \
        is = &st->inboxes[k];                                                 \
        p = ngx_slprintf(p, last, "ngx_ipc_" metric "{worker=\"%uD\"} %uL\n",  \
                         st->inbox_ids[k], is->field);                        \
    }

    NGX_IPC_INBOX_FAMILY("inbox_used_bytes",
                         "Bytes in the worker's inbox not yet read.", used)
    NGX_IPC_INBOX_FAMILY("inbox_capacity_bytes",
                         "Size of the worker's inbox.", capacity)
    NGX_IPC_INBOX_FAMILY("waiting_messages",
                         "Messages in the worker's inbox, not yet read.",
                         waiting)

#undef NGX_IPC_INBOX_FAMILY

    return p;
}


u_char *
ngx_http_ipc_status_json(u_char *p, u_char *last, ngx_http_ipc_status_t *st)
{
    ngx_uint_t              i, f, k;
    ngx_ipc::ShmHeader     *h = st->shm;
    ngx_ipc::WorkerStatus  *ws;
    ngx_ipc::InboxStatus   *is;

    p = ngx_slprintf(p, last,
                     "{\"config\":{\"workers\":%ui,\"ring_size\":%uL,"
                     "\"max_message\":%uL,\"queue_limit\":%uL,"
                     "\"busy_poll_us\":%uL,\"generation\":%uL,"
                     "\"shared_memory_bytes\":%uL},\n"
                     "\"workers\":[",
                     st->n, h->ring_size, h->max_message, h->queue_limit,
                     h->busy_poll_us, h->generation, h->total_size);

    for (i = 0; i < st->n; i++) {
        ws = &st->workers[i];
        p = ngx_slprintf(p, last,
                         "%s\n{\"worker\":%ui,\"pid\":%D,\"state\":\"%s\","
                         "\"incarnation\":%uD",
                         i ? "," : "", i, ws->pid,
                         ngx_http_ipc_status_state(ws), ws->incarnation);

        for (f = 0; f < NGX_IPC_NFIELDS; f++) {
            p = ngx_slprintf(p, last, ",\"%s\":%uL",
                             ngx_http_ipc_status_fields[f].name,
                             ngx_http_ipc_status_value(ws, f));
        }

        p = ngx_slprintf(p, last, ",\"queued_messages\":%uL,"
                         "\"busy_poll_seconds\":%uL.%09uL}", ws->queued_msgs,
                         ws->busy_poll_ns / 1000000000,
                         ws->busy_poll_ns % 1000000000);
    }

    p = ngx_slprintf(p, last, "],\n\"inboxes\":[");

    for (k = 0; k < st->ninboxes; k++) {
        is = &st->inboxes[k];
        p = ngx_slprintf(p, last,
                         "%s\n{\"worker\":%uD,\"used_bytes\":%uL,"
                         "\"capacity_bytes\":%uL,\"waiting_messages\":%uL}",
                         k ? "," : "", st->inbox_ids[k], is->used,
                         is->capacity, is->waiting);
    }

    p = ngx_slprintf(p, last, "],\n\"other_generations\":[");

    for (k = 0; k < st->npeers; k++) {
        p = ngx_slprintf(p, last,
                         "%s\n{\"generation\":%uD,\"worker\":%uD,"
                         "\"pid\":%D}",
                         k ? "," : "", st->peers[k].generation,
                         st->peers[k].worker, st->peers[k].pid);
    }

    p = ngx_slprintf(p, last, "],\n\"cluster\":");
    p = ngx_http_ipc_status_cluster_json(p, last, &st->cluster);
    p = ngx_slprintf(p, last, "}\n");

    return p;
}
