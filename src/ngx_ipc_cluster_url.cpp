/*
 * ngx_ipc cluster: the Redis URL of the ipc_cluster directive, in one of
 * four forms:
 *
 *   redis://[user:password@]HOST[:PORT][/DB]
 *   rediss://...                                    the same, over TLS
 *   redis+sentinel://[user:password@]H[:P][,H[:P]...]/MASTER[/DB]
 *   rediss+sentinel://...                           the same, over TLS
 *
 * In the Sentinel forms the hosts are Sentinels (port 26379 by default),
 * MASTER the name they monitor, and user and password the primary's.
 *
 * Owns: ngx_ipc_cluster_conf_t's tls, sentinels, master, host, port, db,
 * user, password and url (the URL as messages show it: no user, no
 * password).
 */

#include "ngx_ipc_cluster.h"


#define NGX_IPC_CLUSTER_MAX_SENTINELS  16


static ngx_int_t ngx_ipc_cluster_host_port(u_char *p, u_char *last,
    ngx_str_t *host, ngx_uint_t *port, ngx_uint_t default_port);


char *
ngx_ipc_cluster_parse_url(ngx_conf_t *cf, ngx_ipc_cluster_conf_t *ccf,
    ngx_str_t *url)
{
    u_char      *p, *last, *at, *colon, *slash, *comma, *q;
    size_t       scheme;
    ngx_int_t    n;
    ngx_uint_t   port, count, sentinel;
    ngx_str_t    host;

    p = url->data;
    last = url->data + url->len;

    static const struct { const char *s; ngx_uint_t tls, sentinel; }
    schemes[] = {
        { "redis://", 0, 0 }, { "rediss://", 1, 0 },
        { "redis+sentinel://", 0, 1 }, { "rediss+sentinel://", 1, 1 },
    };

    scheme = 0;
    sentinel = 0;
    for (auto &s : schemes) {
        size_t len = ngx_strlen(s.s);
        if (url->len >= len && ngx_strncmp(p, s.s, len) == 0) {
            scheme = len;
            ccf->tls = s.tls;
            sentinel = s.sentinel;
            break;
        }
    }

    if (scheme == 0) {
        goto invalid;
    }

    p += scheme;

    /* the password is never logged: messages name the host and port only */
    at = NULL;
    for (q = last; q > p; q--) {
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

    if (sentinel) {
        /* H:P,H:P/MASTER[/DB] */
        if (slash == NULL) {
            goto invalid;
        }

        count = 0;
        for (q = p; q < slash; q = comma + 1) {
            comma = (u_char *) ngx_strlchr(q, slash, ',');
            if (comma == NULL) {
                comma = slash;
            }
            if (++count > NGX_IPC_CLUSTER_MAX_SENTINELS
                || ngx_ipc_cluster_host_port(q, comma, &host, &port, 26379)
                   != NGX_OK)
            {
                goto invalid;
            }
            if (count == 1) {
                ccf->host = host;
                ccf->port = port;
            }
        }

        ccf->sentinels.data = p;
        ccf->sentinels.len = slash - p;

        p = slash + 1;
        slash = (u_char *) ngx_strlchr(p, last, '/');
        ccf->master.data = p;
        ccf->master.len = (slash ? slash : last) - p;
        if (ccf->master.len == 0 || ccf->master.len > 255) {
            goto invalid;
        }
        for (q = p; q < p + ccf->master.len; q++) {
            if (*q <= 0x20 || *q == 0x7f) {
                goto invalid;
            }
        }
    }

    if (slash != NULL) {
        n = ngx_atoi(slash + 1, last - slash - 1);
        if (n < 0 || n > 65535) {
            goto invalid;
        }
        ccf->db = n;
        last = slash;
    }

    if (!sentinel
        && ngx_ipc_cluster_host_port(p, last, &ccf->host, &ccf->port, 6379)
           != NGX_OK)
    {
        goto invalid;
    }

    /* what messages may show: scheme, hosts, ports, master, db */
    ccf->url.data = (u_char *) ngx_pnalloc(cf->pool, scheme + ccf->host.len
                                           + ccf->sentinels.len
                                           + ccf->master.len + 32);
    if (ccf->url.data == NULL) {
        return (char *) NGX_CONF_ERROR;
    }

    if (sentinel) {
        ccf->url.len = ngx_sprintf(ccf->url.data, "%*s%V/%V/%ui",
                                   scheme, url->data, &ccf->sentinels,
                                   &ccf->master, ccf->db)
                       - ccf->url.data;
    } else {
        ccf->url.len = ngx_sprintf(ccf->url.data, "%*s%V:%ui/%ui",
                                   scheme, url->data, &ccf->host, ccf->port,
                                   ccf->db)
                       - ccf->url.data;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid ipc_cluster address (expected "
                       "redis://[user:password@]HOST[:PORT][/DB], rediss://..."
                       " for TLS, or redis+sentinel://[user:password@]"
                       "HOST[:PORT][,HOST[:PORT]...]/MASTER[/DB] with up to "
                       "%d Sentinels, rediss+sentinel://... for TLS)",
                       NGX_IPC_CLUSTER_MAX_SENTINELS);
    return (char *) NGX_CONF_ERROR;
}


/* HOST[:PORT] between p and last: a host of no space, comma or slash. */
static ngx_int_t
ngx_ipc_cluster_host_port(u_char *p, u_char *last, ngx_str_t *host,
    ngx_uint_t *port, ngx_uint_t default_port)
{
    u_char     *colon, *q;
    ngx_int_t   n;

    colon = (u_char *) ngx_strlchr(p, last, ':');
    if (colon == NULL) {
        *port = default_port;
        colon = last;

    } else {
        n = ngx_atoi(colon + 1, last - colon - 1);
        if (n < 1 || n > 65535) {
            return NGX_ERROR;
        }
        *port = n;
    }

    if (colon == p || colon - p > 253) {
        return NGX_ERROR;
    }

    for (q = p; q < colon; q++) {
        if (*q <= 0x20 || *q == 0x7f || *q == ',' || *q == '/') {
            return NGX_ERROR;
        }
    }

    host->data = p;
    host->len = colon - p;
    return NGX_OK;
}
