/*
 * ngx_ipc cluster: the parameters of ipc_cluster that say how the link
 * reaches Redis, beyond the URL: replicas=N (the writer WAITs for N
 * replicas before a batch counts as added), sentinel_password= (the
 * Sentinels' own requirepass), and TLS: tls_name= (the SNI and the name the
 * server's certificate must carry; the host by default), tls_cert= and
 * tls_key= (a client certificate). The CA is lua-nginx-module's
 * lua_ssl_trusted_certificate: the agent's cosockets verify with it.
 *
 * The certificate and key files are read here, by the master, as nginx
 * reads ssl_certificate_key: a key readable by root only works, and a file
 * that holds no PEM certificate or key is refused at start, not at the
 * first connection.
 *
 * Owns: ngx_ipc_cluster_conf_t's replicas, sentinel_password, tls_name,
 * tls_cert and tls_key.
 */

#include "ngx_ipc_cluster.h"

#if (NGX_OPENSSL)
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#endif


#define NGX_IPC_CLUSTER_PEM_MAX       (64 * 1024)
#define NGX_IPC_CLUSTER_REPLICAS_MAX  64


static char *ngx_ipc_cluster_read_pem(ngx_conf_t *cf, ngx_str_t *path,
    ngx_str_t *out, ngx_uint_t key);

#if (NGX_OPENSSL)
/* an encrypted key is refused, never asked a passphrase for on a tty */
static int
ngx_ipc_cluster_no_passphrase(char *buf, int size, int rwflag, void *u)
{
    return 0;
}
#endif


ngx_int_t
ngx_ipc_cluster_link_param(ngx_conf_t *cf, ngx_ipc_cluster_conf_t *ccf,
    ngx_str_t *name, ngx_str_t *v)
{
    ngx_int_t  n;

#define NGX_IPC_IS(s) \
    (name->len == sizeof(s) - 1 && ngx_strncmp(name->data, s, name->len) == 0)

    if (NGX_IPC_IS("replicas")) {
        n = ngx_atoi(v->data, v->len);
        if (n < 0 || n > NGX_IPC_CLUSTER_REPLICAS_MAX) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "ipc_cluster: replicas=%V: expected 0 to %d",
                               v, NGX_IPC_CLUSTER_REPLICAS_MAX);
            return NGX_ERROR;
        }
        ccf->replicas = n;
        return NGX_OK;
    }

    if (NGX_IPC_IS("sentinel_password")) {
        if (v->len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "ipc_cluster: sentinel_password= takes a "
                               "password");
            return NGX_ERROR;
        }
        ccf->sentinel_password = *v;
        return NGX_OK;
    }

    if (NGX_IPC_IS("tls_name")) {
        if (v->len == 0 || v->len > 253) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "ipc_cluster: tls_name= takes a host name");
            return NGX_ERROR;
        }
        ccf->tls_name = *v;
        return NGX_OK;
    }

    if (NGX_IPC_IS("tls_cert")) {
        return ngx_ipc_cluster_read_pem(cf, v, &ccf->tls_cert, 0)
               == NGX_CONF_OK ? NGX_OK : NGX_ERROR;
    }

    if (NGX_IPC_IS("tls_key")) {
        return ngx_ipc_cluster_read_pem(cf, v, &ccf->tls_key, 1)
               == NGX_CONF_OK ? NGX_OK : NGX_ERROR;
    }

#undef NGX_IPC_IS

    return NGX_DECLINED;
}


char *
ngx_ipc_cluster_check_link(ngx_conf_t *cf, ngx_ipc_cluster_conf_t *ccf)
{
    if (!ccf->tls && (ccf->tls_name.len || ccf->tls_cert.len
                      || ccf->tls_key.len))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "ipc_cluster: tls_name=, tls_cert= and tls_key= "
                           "need TLS: rediss:// or rediss+sentinel://");
        return (char *) NGX_CONF_ERROR;
    }

    if ((ccf->tls_cert.len == 0) != (ccf->tls_key.len == 0)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "ipc_cluster: tls_cert= and tls_key= go together");
        return (char *) NGX_CONF_ERROR;
    }

    if (ccf->sentinel_password.len && ccf->sentinels.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "ipc_cluster: sentinel_password= needs "
                           "redis+sentinel:// or rediss+sentinel://");
        return (char *) NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* A PEM file (a certificate, or with key a private key) into out, checked
 * with OpenSSL: it must hold one. */
static char *
ngx_ipc_cluster_read_pem(ngx_conf_t *cf, ngx_str_t *path, ngx_str_t *out,
    ngx_uint_t key)
{
#if (NGX_OPENSSL)
    u_char           *buf;
    ssize_t           n;
    ngx_fd_t          fd;
    ngx_str_t         name;
    ngx_file_info_t   fi;
    BIO              *bio;
    void             *obj;
    const char       *what;

    what = key ? "tls_key" : "tls_cert";
    name = *path;
    if (name.len == 0 || ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "ipc_cluster: %s= takes a file", what);
        return (char *) NGX_CONF_ERROR;
    }

    fd = ngx_open_file(name.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "ipc_cluster: cannot open %s file \"%s\"",
                           what, name.data);
        return (char *) NGX_CONF_ERROR;
    }

    buf = NULL;
    n = -1;
    if (ngx_fd_info(fd, &fi) != NGX_FILE_ERROR
        && ngx_file_size(&fi) > 0
        && ngx_file_size(&fi) <= NGX_IPC_CLUSTER_PEM_MAX)
    {
        buf = (u_char *) ngx_pnalloc(cf->pool, ngx_file_size(&fi));
        if (buf != NULL) {
            n = ngx_read_fd(fd, buf, ngx_file_size(&fi));
        }
    }

    ngx_close_file(fd);

    if (buf == NULL || n <= 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "ipc_cluster: %s file \"%s\" cannot be read, or is "
                           "empty or over %d bytes", what, name.data,
                           NGX_IPC_CLUSTER_PEM_MAX);
        return (char *) NGX_CONF_ERROR;
    }

    bio = BIO_new_mem_buf(buf, (int) n);
    obj = NULL;
    if (bio != NULL) {
        obj = key ? (void *) PEM_read_bio_PrivateKey(bio, NULL,
                                          ngx_ipc_cluster_no_passphrase, NULL)
                  : (void *) PEM_read_bio_X509(bio, NULL,
                                          ngx_ipc_cluster_no_passphrase, NULL);
        BIO_free(bio);
    }

    if (obj == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "ipc_cluster: %s file \"%s\" holds no PEM %s",
                           what, name.data,
                           key ? "private key (without a passphrase)"
                               : "certificate");
        return (char *) NGX_CONF_ERROR;
    }

    if (key) {
        EVP_PKEY_free((EVP_PKEY *) obj);
    } else {
        X509_free((X509 *) obj);
    }

    out->data = buf;
    out->len = n;
    return NGX_CONF_OK;
#else
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "ipc_cluster: tls_cert= and tls_key= need an nginx "
                       "built with OpenSSL");
    return (char *) NGX_CONF_ERROR;
#endif
}
