/*
 * ngx_ipc status: the cluster link on the ipc_status page, read from the
 * node's cluster zone (ngx_ipc_cluster.h) by whichever worker serves the
 * request: whether it is up, which worker is the agent, where it goes
 * (node, the Redis primary's host and port, stream), the outbox's fill,
 * the counters, the last stream id, and the last error with its time and
 * whether the link connected since (it is then history).
 *
 * Owns: the page's "cluster" object (JSON) and its ngx_ipc_cluster_*
 * families (Prometheus), and the escaping of the texts they carry: node
 * and stream come from the configuration, the primary from the URL or
 * from Sentinel, the last error from Redis.
 */

#include "ngx_ipc_status.h"
#include "ngx_ipc_cluster.h"


/* The zone's counters, in the page's order, as both formats name them. */
typedef struct {
    const char  *name;       /* JSON key; Prometheus ngx_ipc_cluster_<name>_total */
    int          index;      /* NGX_IPC_FFI_CLUSTER_* */
    const char  *help;
} ngx_http_ipc_status_cluster_counter_t;

static const ngx_http_ipc_status_cluster_counter_t
    ngx_http_ipc_status_cluster_counters[] = {
    { "published", kPublished,
      "Cluster broadcasts this node accepted into its outbox." },
    { "added", kAdded,
      "Messages of this node that Redis acknowledged in the stream." },
    { "received", kReceived,
      "Messages of other nodes read from the stream and fanned out here." },
    { "refused", kRefused,
      "Cluster broadcasts refused (outbox full, message too large)." },
    { "gaps", kGaps,
      "Times this node found it missed entries (ipc:cluster_gap)." },
    { "reconnects", kReconnects,
      "Connections to Redis made again after a failure." },
    { "errors", kErrors,
      "Redis errors and failed connections." },
    { "malformed", kMalformed,
      "Stream entries skipped: not well formed, out of bounds or of "
      "window." },
    { "unauthenticated", kUnauthenticated,
      "Stream entries skipped: no valid MAC (secret=)." },
    { "node_clashes", kNodeClashes,
      "Stream entries from another nginx that uses this node's name." },
};

#define NGX_IPC_NCOUNTERS                                                     \
    (sizeof(ngx_http_ipc_status_cluster_counters)                             \
     / sizeof(ngx_http_ipc_status_cluster_counters[0]))

/* an escaped byte takes 6 at most (\u00XX, \ufffd) */
#define NGX_IPC_ESCAPED_MAX  6


static size_t ngx_http_ipc_status_utf8(const u_char *p, const u_char *end);
static u_char *ngx_http_ipc_status_escape(u_char *p, u_char *last,
    ngx_str_t *s, ngx_uint_t json);
static u_char *ngx_http_ipc_status_time(u_char *p, u_char *last,
    uint64_t ms, ngx_uint_t json);



void
ngx_http_ipc_status_read_cluster(ngx_http_ipc_status_cluster_t *c)
{
    int                      n;
    ngx_uint_t               i;
    ClusterShared           *cs;
    std::uint64_t            head, tail;
    ngx_ipc_cluster_conf_t  *ccf;

    ngx_memzero(c, sizeof(ngx_http_ipc_status_cluster_t));

    ccf = ngx_ipc_cluster_conf();
    cs = ngx_ipc_cluster_shared();
    if (ccf == NULL || cs == NULL) {
        return;
    }

    c->enabled = 1;
    c->node = ccf->node;
    /* the primary the agent found, else (not yet, or no Sentinel) the URL's */
    n = ngx_ipc_ffi_cluster_get_text(NGX_IPC_FFI_CLUSTER_PRIMARY,
                                     (char *) c->redis_buf, kTextMax);
    c->redis.data = c->redis_buf;
    c->redis.len = n > 0 ? n : ccf->sentinels.len ? 0
                   : ngx_snprintf(c->redis_buf, sizeof(c->redis_buf), "%V:%ui",
                                  &ccf->host, ccf->port) - c->redis_buf;
    c->stream = ccf->stream;
    c->agent_pid = cs->agent_pid.load(std::memory_order_relaxed);

    for (i = 0; i < NGX_IPC_FFI_CLUSTER_COUNTERS; i++) {
        c->counters[i] = cs->counters[i].load(std::memory_order_relaxed);
    }

    /* tail first: the head loaded after it is never behind it */
    tail = cs->tail.load(std::memory_order_acquire);
    head = cs->head.load(std::memory_order_acquire);
    c->outbox_bytes = head - tail;
    c->outbox_capacity = cs->capacity;

    n = ngx_ipc_ffi_cluster_get_text(NGX_IPC_FFI_CLUSTER_LAST_ID,
                                     (char *) c->last_id_buf,
                                     sizeof(c->last_id_buf));
    c->last_id.data = c->last_id_buf;
    c->last_id.len = n > 0 ? n : 0;

    if (ngx_ipc_ffi_cluster_link(&c->link, (char *) c->last_error_buf,
                                 sizeof(c->last_error_buf))
        != NGX_OK)
    {
        ngx_memzero(&c->link, sizeof(ngx_ipc_cluster_link_t));
    }

    c->last_error.data = c->last_error_buf;
    c->last_error.len = c->link.error_len;
}


size_t
ngx_http_ipc_status_cluster_size(ngx_http_ipc_status_cluster_t *c)
{
    if (!c->enabled) {
        return 256;
    }

    return 8192 + NGX_IPC_ESCAPED_MAX * (c->node.len + c->redis.len
                                         + c->stream.len + c->last_id.len
                                         + c->last_error.len);
}


u_char *
ngx_http_ipc_status_cluster_prometheus(u_char *p, u_char *last,
    ngx_http_ipc_status_cluster_t *c)
{
    char                                         name[64];
    ngx_uint_t                                   i;
    const ngx_http_ipc_status_cluster_counter_t *k;

    p = ngx_http_ipc_status_family(p, last, "cluster_enabled", "gauge",
                "1 with ipc_cluster in this configuration.");
    p = ngx_slprintf(p, last, "ngx_ipc_cluster_enabled %ui\n", c->enabled);

    if (!c->enabled) {
        return p;
    }

    p = ngx_http_ipc_status_family(p, last, "cluster_info", "gauge",
                "The cluster link's settings: this node's name, the Redis "
                "host and port, the stream.");
    p = ngx_slprintf(p, last, "ngx_ipc_cluster_info{node=\"");
    p = ngx_http_ipc_status_escape(p, last, &c->node, 0);
    p = ngx_slprintf(p, last, "\",redis=\"");
    p = ngx_http_ipc_status_escape(p, last, &c->redis, 0);
    p = ngx_slprintf(p, last, "\",stream=\"");
    p = ngx_http_ipc_status_escape(p, last, &c->stream, 0);
    p = ngx_slprintf(p, last, "\"} 1\n");

    p = ngx_http_ipc_status_family(p, last, "cluster_connected", "gauge",
                "1 while the agent's reader is connected to Redis.");
    p = ngx_slprintf(p, last, "ngx_ipc_cluster_connected %d\n",
                     c->counters[kConnected] != 0);

    p = ngx_http_ipc_status_family(p, last, "cluster_agent_pid", "gauge",
                "PID of the worker that holds the Redis link (0: none).");
    p = ngx_slprintf(p, last, "ngx_ipc_cluster_agent_pid %D\n", c->agent_pid);

    p = ngx_http_ipc_status_family(p, last, "cluster_lag_seconds", "gauge",
                "Age of the last entry of another node when it was read.");
    p = ngx_slprintf(p, last, "ngx_ipc_cluster_lag_seconds %uL.%03uL\n",
                     c->counters[kLagMs] / 1000, c->counters[kLagMs] % 1000);

    p = ngx_http_ipc_status_family(p, last, "cluster_outbox_bytes", "gauge",
                "Bytes in the outbox: cluster broadcasts not yet in Redis, "
                "with their framing.");
    p = ngx_slprintf(p, last, "ngx_ipc_cluster_outbox_bytes %uL\n",
                     c->outbox_bytes);

    p = ngx_http_ipc_status_family(p, last, "cluster_outbox_capacity_bytes",
                "gauge", "Size of the outbox (ipc_cluster queue=).");
    p = ngx_slprintf(p, last, "ngx_ipc_cluster_outbox_capacity_bytes %uL\n",
                     c->outbox_capacity);

    for (i = 0; i < NGX_IPC_NCOUNTERS; i++) {
        k = &ngx_http_ipc_status_cluster_counters[i];
        ngx_sprintf((u_char *) name, "cluster_%s_total%Z", k->name);
        p = ngx_http_ipc_status_family(p, last, name, "counter", k->help);
        p = ngx_slprintf(p, last, "ngx_ipc_%s %uL\n", name,
                         c->counters[k->index]);
    }

    p = ngx_http_ipc_status_family(p, last,
                "cluster_connected_timestamp_seconds", "gauge",
                "When the agent last connected to Redis (0: not yet).");
    p = ngx_slprintf(p, last, "ngx_ipc_cluster_connected_timestamp_seconds ");
    p = ngx_http_ipc_status_time(p, last, c->link.connect_ms, 0);

    p = ngx_http_ipc_status_family(p, last,
                "cluster_last_error_timestamp_seconds", "gauge",
                "When the last error was set (0: none).");
    p = ngx_slprintf(p, last, "ngx_ipc_cluster_last_error_timestamp_seconds ");
    p = ngx_http_ipc_status_time(p, last,
                                 c->last_error.len ? c->link.error_ms : 0, 0);

    p = ngx_http_ipc_status_family(p, last, "cluster_last_error_old", "gauge",
                "1 if the link is up and connected after the last error.");
    p = ngx_slprintf(p, last, "ngx_ipc_cluster_last_error_old %d\n",
                     c->link.error_old != 0);

    if (c->last_error.len) {
        p = ngx_http_ipc_status_family(p, last, "cluster_last_error_info",
                    "gauge", "The last error's text.");
        p = ngx_slprintf(p, last, "ngx_ipc_cluster_last_error_info{error=\"");
        p = ngx_http_ipc_status_escape(p, last, &c->last_error, 0);
        p = ngx_slprintf(p, last, "\"} 1\n");
    }

    return p;
}


u_char *
ngx_http_ipc_status_cluster_json(u_char *p, u_char *last,
    ngx_http_ipc_status_cluster_t *c)
{
    ngx_uint_t                                   i;
    const ngx_http_ipc_status_cluster_counter_t *k;

    if (!c->enabled) {
        return ngx_slprintf(p, last, "{\"enabled\":false}");
    }

    p = ngx_slprintf(p, last, "{\"enabled\":true,\"connected\":%s,",
                     c->counters[kConnected] ? "true" : "false");

    if (c->agent_pid) {
        p = ngx_slprintf(p, last, "\"agent_pid\":%D,", c->agent_pid);
    } else {
        p = ngx_slprintf(p, last, "\"agent_pid\":null,");
    }

    p = ngx_slprintf(p, last, "\"node\":\"");
    p = ngx_http_ipc_status_escape(p, last, &c->node, 1);
    p = ngx_slprintf(p, last, "\",\"redis\":\"");
    p = ngx_http_ipc_status_escape(p, last, &c->redis, 1);
    p = ngx_slprintf(p, last, "\",\"stream\":\"");
    p = ngx_http_ipc_status_escape(p, last, &c->stream, 1);

    p = ngx_slprintf(p, last, "\",\n\"lag_ms\":%uL,\"outbox_bytes\":%uL,"
                     "\"outbox_capacity_bytes\":%uL",
                     c->counters[kLagMs], c->outbox_bytes,
                     c->outbox_capacity);

    for (i = 0; i < NGX_IPC_NCOUNTERS; i++) {
        k = &ngx_http_ipc_status_cluster_counters[i];
        p = ngx_slprintf(p, last, ",\"%s\":%uL", k->name,
                         c->counters[k->index]);
    }

    if (c->last_id.len) {
        p = ngx_slprintf(p, last, ",\n\"last_id\":\"");
        p = ngx_http_ipc_status_escape(p, last, &c->last_id, 1);
        p = ngx_slprintf(p, last, "\"");
    } else {
        p = ngx_slprintf(p, last, ",\n\"last_id\":null");
    }

    if (c->last_error.len) {
        p = ngx_slprintf(p, last, ",\"last_error\":\"");
        p = ngx_http_ipc_status_escape(p, last, &c->last_error, 1);
        p = ngx_slprintf(p, last, "\",\"last_error_at\":");
        p = ngx_http_ipc_status_time(p, last, c->link.error_ms, 1);
    } else {
        p = ngx_slprintf(p, last, ",\"last_error\":null,"
                         "\"last_error_at\":null");
    }

    p = ngx_slprintf(p, last, ",\"last_error_old\":%s,\"connected_at\":",
                     c->link.error_old ? "true" : "false");
    p = ngx_http_ipc_status_time(p, last, c->link.connect_ms, 1);

    return ngx_slprintf(p, last, "}");
}


/* ms since 1970 as seconds with 3 decimals; never (0): JSON null, or 0 in
 * Prometheus, where the line ends here */
static u_char *
ngx_http_ipc_status_time(u_char *p, u_char *last, uint64_t ms,
    ngx_uint_t json)
{
    if (ms == 0) {
        return ngx_slprintf(p, last, json ? "null" : "0\n");
    }

    return ngx_slprintf(p, last, json ? "%uL.%03uL" : "%uL.%03uL\n",
                        ms / 1000, ms % 1000);
}


/*
 * s as the inside of a JSON string (json) or of a Prometheus label value.
 * Both escape \ " and newline with a backslash. Other control characters:
 * \u00XX in JSON; Prometheus has no escape for them, so U+FFFD. Bytes that
 * are not UTF-8: U+FFFD in both (\ufffd in JSON), so that the page stays
 * valid UTF-8 whatever the configuration or Redis said.
 */
static u_char *
ngx_http_ipc_status_escape(u_char *p, u_char *last, ngx_str_t *s,
    ngx_uint_t json)
{
    size_t   n;
    u_char  *q, *end;

    static const char  replacement[] = "\xef\xbf\xbd";   /* U+FFFD */

    end = s->data + s->len;

    for (q = s->data; q < end && p < last; q += n) {
        n = ngx_http_ipc_status_utf8(q, end);

        if (n == 0) {
            n = 1;
            p = ngx_slprintf(p, last, "%s", json ? "\\ufffd" : replacement);

        } else if (*q == '"' || *q == '\\') {
            p = ngx_slprintf(p, last, "\\%c", *q);

        } else if (*q == '\n') {
            p = ngx_slprintf(p, last, "\\n");

        } else if (*q < 0x20) {
            p = json ? ngx_slprintf(p, last, "\\u%04xd", (int) *q)
                     : ngx_slprintf(p, last, "%s", replacement);

        } else {
            p = ngx_slprintf(p, last, "%*s", n, q);
        }
    }

    return p;
}


/* the length of the UTF-8 character at p (RFC 3629: shortest form, no
 * surrogate, U+10FFFF at most), 0 if there is none */
static size_t
ngx_http_ipc_status_utf8(const u_char *p, const u_char *end)
{
    size_t    n, i;
    uint32_t  u, min;

    if (*p < 0x80) {
        return 1;
    }

    if (*p >= 0xc2 && *p <= 0xdf) {
        n = 2;
        u = *p & 0x1f;
        min = 0x80;

    } else if (*p >= 0xe0 && *p <= 0xef) {
        n = 3;
        u = *p & 0x0f;
        min = 0x800;

    } else if (*p >= 0xf0 && *p <= 0xf4) {
        n = 4;
        u = *p & 0x07;
        min = 0x10000;

    } else {
        return 0;
    }

    if ((size_t) (end - p) < n) {
        return 0;
    }

    for (i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            return 0;
        }
        u = (u << 6) | (p[i] & 0x3f);
    }

    if (u < min || u > 0x10ffff || (u >= 0xd800 && u <= 0xdfff)) {
        return 0;
    }

    return n;
}
