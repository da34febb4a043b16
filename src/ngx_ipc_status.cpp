/*
 * ngx_ipc status: the "ipc_status" location directive. Serves every worker
 * of this configuration from shared memory, as Prometheus text (exposition
 * format 0.0.4, the default) or JSON (?format=json, or Accept:
 * application/json); GET and HEAD only, as stub_status does.
 *
 * It only loads what the workers store (ngx_ipc/status.h), and the cluster
 * link's figures from its zone: a request costs the workers nothing but
 * the cache lines it reads.
 */

#include "ngx_ipc_status.h"


static char *ngx_http_ipc_status(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_ipc_status_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_ipc_status_format(ngx_http_request_t *r,
    ngx_uint_t *json);
static ngx_int_t ngx_http_ipc_status_read(ngx_http_request_t *r,
    ngx_ipc_worker_t *w, ngx_http_ipc_status_t *st);


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
    size = 16384 + st.n * (ngx_http_ipc_status_nfields + 12) * 160
           + st.ninboxes * 4 * 160 + st.npeers * 2 * 160
           + ngx_http_ipc_status_cluster_size(&st.cluster);

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
    uint32_t  i;

    st->shm = (ngx_ipc::ShmHeader *) w->conf->shm;
    st->n = st->shm->nslots;
    st->ninboxes = 0;

    st->workers = (ngx_ipc::WorkerStatus *)
                      ngx_palloc(r->pool, st->n * sizeof(ngx_ipc::WorkerStatus));
    st->inboxes = (ngx_ipc::InboxStatus *)
                      ngx_palloc(r->pool, st->n * sizeof(ngx_ipc::InboxStatus));
    st->inbox_ids = (uint32_t *) ngx_palloc(r->pool, st->n * sizeof(uint32_t));

    st->peers = (ngx_ipc_peer_t *)
                    ngx_palloc(r->pool,
                               NGX_IPC_BRIDGE_SLOTS * sizeof(ngx_ipc_peer_t));

    if (st->workers == NULL || st->inboxes == NULL || st->inbox_ids == NULL
        || st->peers == NULL)
    {
        return NGX_ERROR;
    }

    /* the workers of other configurations still running (reload bridge) */
    st->npeers = (ngx_uint_t) ngx_ipc_bridge_peers(w, st->peers,
                                                   NGX_IPC_BRIDGE_SLOTS);

    for (i = 0; i < st->n; i++) {
        ngx_ipc::read_worker(st->shm, i, &st->workers[i]);
    }

    for (i = 0; i < st->n; i++) {
        if (ngx_ipc::read_inbox(st->shm, i, &st->inboxes[st->ninboxes])) {
            st->inbox_ids[st->ninboxes++] = i;
        }
    }

    ngx_http_ipc_status_read_cluster(&st->cluster);

    return NGX_OK;
}

