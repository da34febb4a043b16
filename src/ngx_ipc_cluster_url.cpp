/*
 * ngx_ipc cluster: the Redis URL of the ipc_cluster directive,
 * redis://[user:password@]HOST:PORT[/DB].
 */

#include "ngx_ipc_cluster.h"


char *
ngx_ipc_cluster_parse_url(ngx_conf_t *cf, ngx_ipc_cluster_conf_t *ccf,
    ngx_str_t *url)
{
    u_char     *p, *last, *at, *colon, *slash;
    ngx_int_t   n;

    p = url->data;
    last = url->data + url->len;

    if (url->len < 8 || ngx_strncmp(p, "redis://", 8) != 0) {
        goto invalid;
    }

    p += 8;

    /* the password is never logged: messages name the host and port only */
    at = NULL;
    for (u_char *q = last; q > p; q--) {
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
    if (slash != NULL) {
        n = ngx_atoi(slash + 1, last - slash - 1);
        if (n < 0 || n > 65535) {
            goto invalid;
        }
        ccf->db = n;
        last = slash;
    }

    colon = (u_char *) ngx_strlchr(p, last, ':');
    if (colon == NULL) {
        ccf->port = 6379;
        colon = last;

    } else {
        n = ngx_atoi(colon + 1, last - colon - 1);
        if (n < 1 || n > 65535) {
            goto invalid;
        }
        ccf->port = n;
    }

    if (colon == p) {
        goto invalid;
    }

    ccf->host.data = p;
    ccf->host.len = colon - p;

    /* what messages may show: scheme, host, port, db */
    ccf->url.data = (u_char *) ngx_pnalloc(cf->pool, ccf->host.len + 32);
    if (ccf->url.data == NULL) {
        return (char *) NGX_CONF_ERROR;
    }

    ccf->url.len = ngx_sprintf(ccf->url.data, "redis://%V:%ui/%ui",
                               &ccf->host, ccf->port, ccf->db)
                   - ccf->url.data;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid ipc_cluster address (expected "
                       "redis://[user:password@]HOST:PORT[/DB])");
    return (char *) NGX_CONF_ERROR;
}
