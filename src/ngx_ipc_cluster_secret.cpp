/*
 * ngx_ipc cluster secret: `ipc_cluster ... secret=PATH`. With it, every
 * stream entry carries a MAC, HMAC-SHA256 keyed with the file's bytes, over
 * the entry's header text and its messages (lib/ngx/ipc/cluster/entry.lua
 * builds the header); a node skips the entries whose MAC is not right.
 * Without it, anyone who can write to the stream can send as any node
 * (README, "Security").
 *
 * The master reads the file at configuration time and keeps only the two
 * keyed SHA-256 states of HMAC (the key XOR ipad and XOR opad, each hashed
 * one block in); the workers inherit them. SHA-256 is OpenSSL's, from the
 * libcrypto nginx is built with: secret= needs an nginx built with OpenSSL.
 *
 * Owns: ngx_ipc_cluster_conf_t's secret (the keyed states) and this
 * worker's scratch digest context.
 */

#include "ngx_ipc_cluster.h"

#if (NGX_OPENSSL)
#include <openssl/evp.h>
#endif


#define NGX_IPC_CLUSTER_SECRET_MIN   16       /* bytes of key at least */
#define NGX_IPC_CLUSTER_SECRET_MAX   4096     /* a key file, not a document */


#if (NGX_OPENSSL)

#if (OPENSSL_VERSION_NUMBER < 0x10100000L)
#define EVP_MD_CTX_new   EVP_MD_CTX_create
#define EVP_MD_CTX_free  EVP_MD_CTX_destroy
#endif

#define NGX_IPC_SHA256_BLOCK  64
#define NGX_IPC_SHA256_LEN    32

typedef struct {
    EVP_MD_CTX  *inner;      /* SHA-256 after (key ^ ipad) */
    EVP_MD_CTX  *outer;      /* SHA-256 after (key ^ opad) */
} ngx_ipc_cluster_secret_t;


static void ngx_ipc_cluster_secret_cleanup(void *data);
static ngx_int_t ngx_ipc_cluster_hmac(ngx_ipc_cluster_secret_t *s,
    const u_char *head, size_t head_len, const u_char *body, size_t body_len,
    u_char *out);


/* this process's scratch context, made on first use */
static EVP_MD_CTX  *ngx_ipc_cluster_md;

#endif


char *
ngx_ipc_cluster_read_secret(ngx_conf_t *cf, ngx_ipc_cluster_conf_t *ccf,
    ngx_str_t *path)
{
#if (NGX_OPENSSL)
    u_char                     buf[NGX_IPC_CLUSTER_SECRET_MAX + 1];
    u_char                     pad[NGX_IPC_SHA256_BLOCK];
    u_char                     hashed[NGX_IPC_SHA256_LEN];
    size_t                     len;
    ssize_t                    n;
    ngx_fd_t                   fd;
    ngx_str_t                  name;
    ngx_uint_t                 i;
    ngx_file_info_t            fi;
    ngx_pool_cleanup_t        *cln;
    ngx_ipc_cluster_secret_t  *s;
    const u_char              *key;

    name = *path;
    if (ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
        return (char *) NGX_CONF_ERROR;
    }

    fd = ngx_open_file(name.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%s\" failed", name.data);
        return (char *) NGX_CONF_ERROR;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_fd_info_n " \"%s\" failed", name.data);
        ngx_close_file(fd);
        return (char *) NGX_CONF_ERROR;
    }

    n = ngx_read_fd(fd, buf, sizeof(buf));
    if (n == -1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_read_fd_n " \"%s\" failed", name.data);
        ngx_close_file(fd);
        return (char *) NGX_CONF_ERROR;
    }

    ngx_close_file(fd);

    if (fi.st_mode & (S_IRWXG|S_IRWXO)) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "ipc_cluster: secret file \"%s\" can be read by "
                           "other users: chmod 600 it", name.data);
    }

    /* what `openssl rand -hex 32 > file` writes: the line, not its end */
    len = (size_t) n;
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'
                       || buf[len - 1] == ' ' || buf[len - 1] == '\t'))
    {
        len--;
    }

    if (n > NGX_IPC_CLUSTER_SECRET_MAX || len < NGX_IPC_CLUSTER_SECRET_MIN) {
        ngx_explicit_memzero(buf, sizeof(buf));
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "ipc_cluster: secret file \"%s\" must hold %d to "
                           "%d bytes of key (for example the line of "
                           "\"openssl rand -hex 32\")", name.data,
                           NGX_IPC_CLUSTER_SECRET_MIN,
                           NGX_IPC_CLUSTER_SECRET_MAX);
        return (char *) NGX_CONF_ERROR;
    }

    s = (ngx_ipc_cluster_secret_t *)
            ngx_pcalloc(cf->pool, sizeof(ngx_ipc_cluster_secret_t));
    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (s == NULL || cln == NULL) {
        ngx_explicit_memzero(buf, sizeof(buf));
        return (char *) NGX_CONF_ERROR;
    }

    cln->handler = ngx_ipc_cluster_secret_cleanup;
    cln->data = s;

    /* HMAC (RFC 2104): a key longer than a block is hashed first */
    key = buf;
    if (len > NGX_IPC_SHA256_BLOCK) {
        if (EVP_Digest(buf, len, hashed, NULL, EVP_sha256(), NULL) != 1) {
            goto failed;
        }
        key = hashed;
        len = NGX_IPC_SHA256_LEN;
    }

    s->inner = EVP_MD_CTX_new();
    s->outer = EVP_MD_CTX_new();
    if (s->inner == NULL || s->outer == NULL) {
        goto failed;
    }

    for (i = 0; i < NGX_IPC_SHA256_BLOCK; i++) {
        pad[i] = (u_char) ((i < len ? key[i] : 0) ^ 0x36);
    }

    if (EVP_DigestInit_ex(s->inner, EVP_sha256(), NULL) != 1
        || EVP_DigestUpdate(s->inner, pad, sizeof(pad)) != 1)
    {
        goto failed;
    }

    for (i = 0; i < NGX_IPC_SHA256_BLOCK; i++) {
        pad[i] = (u_char) ((i < len ? key[i] : 0) ^ 0x5c);
    }

    if (EVP_DigestInit_ex(s->outer, EVP_sha256(), NULL) != 1
        || EVP_DigestUpdate(s->outer, pad, sizeof(pad)) != 1)
    {
        goto failed;
    }

    ngx_explicit_memzero(buf, sizeof(buf));
    ngx_explicit_memzero(pad, sizeof(pad));
    ngx_explicit_memzero(hashed, sizeof(hashed));

    ccf->secret = s;

    return NGX_CONF_OK;

failed:

    ngx_explicit_memzero(buf, sizeof(buf));
    ngx_explicit_memzero(pad, sizeof(pad));
    ngx_explicit_memzero(hashed, sizeof(hashed));
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "ipc_cluster: SHA-256 of OpenSSL failed for secret "
                       "file \"%s\"", name.data);
    return (char *) NGX_CONF_ERROR;

#else

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "ipc_cluster: secret= needs an nginx built with "
                       "OpenSSL (its SHA-256 makes the MAC)");
    return (char *) NGX_CONF_ERROR;

#endif
}


int
ngx_ipc_ffi_cluster_mac(const unsigned char *head, size_t head_len,
    const unsigned char *body, size_t body_len, char *hex)
{
#if (NGX_OPENSSL)
    u_char                   mac[NGX_IPC_SHA256_LEN];
    ngx_ipc_cluster_conf_t  *ccf;

    ccf = ngx_ipc_cluster_conf();
    if (ccf == NULL || ccf->secret == NULL) {
        return NGX_DECLINED;
    }

    if (ngx_ipc_cluster_hmac((ngx_ipc_cluster_secret_t *) ccf->secret, head,
                             head_len, body, body_len, mac)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_hex_dump((u_char *) hex, mac, sizeof(mac));

    return NGX_OK;
#else
    return NGX_DECLINED;
#endif
}


int
ngx_ipc_ffi_cluster_mac_ok(const unsigned char *head, size_t head_len,
    const unsigned char *body, size_t body_len, const char *mac,
    size_t mac_len)
{
#if (NGX_OPENSSL)
    u_char      want[NGX_IPC_FFI_CLUSTER_MAC_HEX];
    u_char      diff;
    ngx_uint_t  i;

    if (mac_len != NGX_IPC_FFI_CLUSTER_MAC_HEX
        || ngx_ipc_ffi_cluster_mac(head, head_len, body, body_len,
                                   (char *) want)
           != NGX_OK)
    {
        return 0;
    }

    /* every byte looked at, whatever differs first */
    diff = 0;
    for (i = 0; i < NGX_IPC_FFI_CLUSTER_MAC_HEX; i++) {
        diff |= (u_char) (want[i] ^ (u_char) mac[i]);
    }

    return diff == 0;
#else
    return 0;
#endif
}


#if (NGX_OPENSSL)

static ngx_int_t
ngx_ipc_cluster_hmac(ngx_ipc_cluster_secret_t *s, const u_char *head,
    size_t head_len, const u_char *body, size_t body_len, u_char *out)
{
    u_char        inner[NGX_IPC_SHA256_LEN];
    EVP_MD_CTX   *md;

    if (ngx_ipc_cluster_md == NULL) {
        ngx_ipc_cluster_md = EVP_MD_CTX_new();
        if (ngx_ipc_cluster_md == NULL) {
            return NGX_ERROR;
        }
    }

    md = ngx_ipc_cluster_md;

    if (EVP_MD_CTX_copy_ex(md, s->inner) != 1
        || EVP_DigestUpdate(md, head, head_len) != 1
        || EVP_DigestUpdate(md, body, body_len) != 1
        || EVP_DigestFinal_ex(md, inner, NULL) != 1
        || EVP_MD_CTX_copy_ex(md, s->outer) != 1
        || EVP_DigestUpdate(md, inner, sizeof(inner)) != 1
        || EVP_DigestFinal_ex(md, out, NULL) != 1)
    {
        ngx_ipc_log_limited(NGX_LOG_ALERT, 0,
                            "ipc_cluster: SHA-256 of OpenSSL failed");
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_ipc_cluster_secret_cleanup(void *data)
{
    ngx_ipc_cluster_secret_t  *s = (ngx_ipc_cluster_secret_t *) data;

    if (s->inner != NULL) {
        EVP_MD_CTX_free(s->inner);
    }

    if (s->outer != NULL) {
        EVP_MD_CTX_free(s->outer);
    }
}

#endif
