/*
 * ngx_ipc status: the "ipc_status" location directive. Serves every worker
 * of this configuration from shared memory, as Prometheus text (exposition
 * format 0.0.4, the default) or JSON (?format=json, or Accept:
 * application/json); GET and HEAD only, as stub_status does.
 *
 * It only loads what the workers store (ngx_ipc/status.h): a request costs
 * the workers nothing but the cache lines it reads.
 */

#include "ngx_ipc_module.h"

extern "C" {
#include <ngx_http.h>
}

#include "ngx_ipc/status.h"


typedef struct {
    ngx_ipc::ShmHeader        *shm;
    ngx_uint_t                 n;
    ngx_ipc::WorkerStatus     *workers;
    ngx_ipc::PairStatus       *pairs;      /* the pairs with traffic */
    uint32_t                  *pair_ids;   /* sender * n + receiver */
    ngx_uint_t                 npairs;
} ngx_http_ipc_status_t;


static char *ngx_http_ipc_status(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_ipc_status_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_ipc_status_format(ngx_http_request_t *r,
    ngx_uint_t *json);
static ngx_int_t ngx_http_ipc_status_read(ngx_http_request_t *r,
    ngx_ipc_worker_t *w, ngx_http_ipc_status_t *st);
static u_char *ngx_http_ipc_status_prometheus(u_char *p, u_char *last,
    ngx_http_ipc_status_t *st);
static u_char *ngx_http_ipc_status_json(u_char *p, u_char *last,
    ngx_http_ipc_status_t *st);


static ngx_command_t  ngx_http_ipc_status_commands[] = {

    { ngx_string("ipc_status"),
      NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_ipc_status,
      0,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_ipc_status_module_ctx = {
    NULL,                                  /* preconfiguration */
    NULL,                                  /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


extern "C" {

ngx_module_t  ngx_http_ipc_status_module = {
    NGX_MODULE_V1,
    &ngx_http_ipc_status_module_ctx,       /* module context */
    ngx_http_ipc_status_commands,          /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};

}


static ngx_str_t  ngx_http_ipc_status_prometheus_type =
    ngx_string("text/plain; version=0.0.4; charset=utf-8");
static ngx_str_t  ngx_http_ipc_status_json_type =
    ngx_string("application/json");


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
    NGX_IPC_FIELD(dropped, 1, "Messages delivered to no handler or "
                              "addressed to a process that is gone."),
    NGX_IPC_FIELD(refused, 1, "Sends that returned an error."),
    NGX_IPC_FIELD(handler_errors, 1, "Handlers that raised an error."),
    NGX_IPC_FIELD(calls, 1, "ipc.call requests sent."),
    NGX_IPC_FIELD(call_timeouts, 1, "ipc.call requests that timed out."),
    NGX_IPC_FIELD(queued_bytes, 0, "Payload bytes held now in the "
                                   "worker's send backlog."),
    NGX_IPC_FIELD(resets, 1, "Inbox rings reset after a corrupt record."),
};

#define NGX_IPC_NFIELDS                                                       \
    (sizeof(ngx_http_ipc_status_fields) / sizeof(ngx_http_ipc_status_fields[0]))


static char *
ngx_http_ipc_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = (ngx_http_core_loc_conf_t *)
               ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_ipc_status_handler;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_ipc_status_handler(ngx_http_request_t *r)
{
    size_t                  size;
    u_char                 *last;
    ngx_int_t               rc;
    ngx_buf_t              *b;
    ngx_uint_t              json;
    ngx_chain_t             out;
    ngx_ipc_worker_t       *w;
    ngx_http_ipc_status_t   st;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_http_ipc_status_format(r, &json) != NGX_OK) {
        return NGX_HTTP_BAD_REQUEST;
    }

    w = ngx_ipc_worker_get();
    if (w == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "ngx_ipc: ipc_status: this process has no ngx_ipc "
                      "shared memory");
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    if (ngx_http_ipc_status_read(r, w, &st) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* generous bounds: a line is under 160 bytes */
    size = 16384 + st.n * (NGX_IPC_NFIELDS + 12) * 160 + st.npairs * 4 * 160;

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (json) {
        last = ngx_http_ipc_status_json(b->last, b->end, &st);
        r->headers_out.content_type = ngx_http_ipc_status_json_type;

    } else {
        last = ngx_http_ipc_status_prometheus(b->last, b->end, &st);
        r->headers_out.content_type = ngx_http_ipc_status_prometheus_type;
    }

    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    b->last = last;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* ?format=json|prometheus, else Accept: application/json, else Prometheus;
 * NGX_DECLINED for any other format asked for */
static ngx_int_t
ngx_http_ipc_status_format(ngx_http_request_t *r, ngx_uint_t *json)
{
    ngx_str_t         value;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    *json = 0;

    if (ngx_http_arg(r, (u_char *) "format", 6, &value) == NGX_OK) {
        if (value.len == 4 && ngx_strncasecmp(value.data, (u_char *) "json", 4)
                              == 0)
        {
            *json = 1;
            return NGX_OK;
        }

        if ((value.len == 10
             && ngx_strncasecmp(value.data, (u_char *) "prometheus", 10) == 0)
            || (value.len == 4
                && ngx_strncasecmp(value.data, (u_char *) "text", 4) == 0))
        {
            return NGX_OK;
        }

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "ipc_status: unknown format \"%V\" (json or prometheus)",
                      &value);
        return NGX_DECLINED;
    }

    part = &r->headers_in.headers.part;
    h = (ngx_table_elt_t *) part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = (ngx_table_elt_t *) part->elts;
            i = 0;
        }

        if (h[i].key.len == 6
            && ngx_strncasecmp(h[i].key.data, (u_char *) "Accept", 6) == 0
            && ngx_strlcasestrn(h[i].value.data,
                                h[i].value.data + h[i].value.len,
                                (u_char *) "application/json", 16 - 1)
               != NULL)
        {
            *json = 1;
            break;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_ipc_status_read(ngx_http_request_t *r, ngx_ipc_worker_t *w,
    ngx_http_ipc_status_t *st)
{
    uint32_t             i, j;
    ngx_ipc::PairStatus  pair;

    st->shm = (ngx_ipc::ShmHeader *) w->conf->shm;
    st->n = st->shm->nslots;
    st->npairs = 0;

    st->workers = (ngx_ipc::WorkerStatus *)
                      ngx_palloc(r->pool, st->n * sizeof(ngx_ipc::WorkerStatus));
    st->pairs = (ngx_ipc::PairStatus *)
                    ngx_palloc(r->pool,
                               st->n * st->n * sizeof(ngx_ipc::PairStatus));
    st->pair_ids = (uint32_t *) ngx_palloc(r->pool,
                                           st->n * st->n * sizeof(uint32_t));

    if (st->workers == NULL || st->pairs == NULL || st->pair_ids == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < st->n; i++) {
        ngx_ipc::read_worker(st->shm, i, &st->workers[i]);
    }

    for (i = 0; i < st->n; i++) {
        for (j = 0; j < st->n; j++) {
            if (ngx_ipc::read_pair(st->shm, i, j, &pair)) {
                st->pairs[st->npairs] = pair;
                st->pair_ids[st->npairs] = (uint32_t) (i * st->n + j);
                st->npairs++;
            }
        }
    }

    return NGX_OK;
}


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


static u_char *
ngx_http_ipc_status_family(u_char *p, u_char *last, const char *name,
    const char *type, const char *help)
{
    return ngx_slprintf(p, last, "# HELP ngx_ipc_%s %s\n# TYPE ngx_ipc_%s %s\n",
                        name, help, name, type);
}


static u_char *
ngx_http_ipc_status_prometheus(u_char *p, u_char *last,
    ngx_http_ipc_status_t *st)
{
    ngx_uint_t                     i, f, k;
    ngx_ipc::ShmHeader            *h = st->shm;
    ngx_ipc::WorkerStatus         *ws;
    ngx_ipc::PairStatus           *ps;
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
                "Shared-memory ring per sender/receiver pair (ipc_ring_size).");
    p = ngx_slprintf(p, last, "ngx_ipc_ring_size_bytes %uL\n", h->ring_size);

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

    /* the pairs with traffic */

    if (st->npairs == 0) {
        return p;
    }

#define NGX_IPC_PAIR_FAMILY(metric, help, field)                              \
    p = ngx_http_ipc_status_family(p, last, metric, "gauge", help);           \
    for (k = 0; k < st->npairs; k++) {                                        \
        ps = &st->pairs[k];                                                   \
        p = ngx_slprintf(p, last,                                             \
                         "ngx_ipc_" metric "{sender=\"%uD\",receiver=\"%uD\"} " \
                         "%uL\n", (uint32_t) (st->pair_ids[k] / st->n),       \
                         (uint32_t) (st->pair_ids[k] % st->n), ps->field);    \
    }

    NGX_IPC_PAIR_FAMILY("ring_used_bytes",
                        "Bytes in the pair's ring not yet read.", ring_used)
    NGX_IPC_PAIR_FAMILY("ring_capacity_bytes",
                        "Size of the pair's ring.", ring_capacity)
    NGX_IPC_PAIR_FAMILY("backlog_bytes",
                        "Bytes the sender holds for the receiver beyond "
                        "the ring.", backlog_bytes)
    NGX_IPC_PAIR_FAMILY("waiting_messages",
                        "Messages in the ring and the backlog, not yet read.",
                        waiting)

#undef NGX_IPC_PAIR_FAMILY

    return p;
}


static u_char *
ngx_http_ipc_status_json(u_char *p, u_char *last, ngx_http_ipc_status_t *st)
{
    ngx_uint_t              i, f, k;
    ngx_ipc::ShmHeader     *h = st->shm;
    ngx_ipc::WorkerStatus  *ws;
    ngx_ipc::PairStatus    *ps;

    p = ngx_slprintf(p, last,
                     "{\"config\":{\"workers\":%ui,\"ring_size\":%uL,"
                     "\"max_message\":%uL,\"queue_limit\":%uL,"
                     "\"busy_poll_us\":%uL,\"generation\":%uL},\n"
                     "\"workers\":[",
                     st->n, h->ring_size, h->max_message, h->queue_limit,
                     h->busy_poll_us, h->generation);

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

        p = ngx_slprintf(p, last, ",\"busy_poll_seconds\":%uL.%09uL}",
                         ws->busy_poll_ns / 1000000000,
                         ws->busy_poll_ns % 1000000000);
    }

    p = ngx_slprintf(p, last, "],\n\"pairs\":[");

    for (k = 0; k < st->npairs; k++) {
        ps = &st->pairs[k];
        p = ngx_slprintf(p, last,
                         "%s\n{\"sender\":%uD,\"receiver\":%uD,"
                         "\"ring_used_bytes\":%uL,\"ring_capacity_bytes\":%uL,"
                         "\"backlog_bytes\":%uL,\"waiting_messages\":%uL}",
                         k ? "," : "",
                         (uint32_t) (st->pair_ids[k] / st->n),
                         (uint32_t) (st->pair_ids[k] % st->n),
                         ps->ring_used, ps->ring_capacity, ps->backlog_bytes,
                         ps->waiting);
    }

    p = ngx_slprintf(p, last, "]}\n");

    return p;
}
