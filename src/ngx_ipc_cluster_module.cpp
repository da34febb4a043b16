/*
 * ngx_ipc cluster module: the ipc_cluster directive and the zone of the
 * node's shared cluster state (see ngx_ipc_cluster.h).
 *
 * Owns: ngx_ipc_cluster_conf_t and the zone's making (ClusterShared's
 * header fields: magic, version, epoch, capacity).
 */

#include "ngx_ipc_cluster.h"

#include <new>


static void *ngx_ipc_cluster_create_conf(ngx_cycle_t *cycle);
static char *ngx_ipc_cluster_init_conf(ngx_cycle_t *cycle, void *conf);
static char *ngx_ipc_cluster(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static ngx_int_t ngx_ipc_cluster_init_zone(ngx_shm_zone_t *zone, void *data);
static ngx_uint_t ngx_ipc_cluster_printable(ngx_str_t *s);


#define NGX_IPC_CLUSTER_DEFAULT_MAXLEN    100000
#define NGX_IPC_CLUSTER_DEFAULT_MESSAGE   (1024 * 1024)
#define NGX_IPC_CLUSTER_DEFAULT_QUEUE     (16 * 1024 * 1024)


static ngx_command_t  ngx_ipc_cluster_commands[] = {

    { ngx_string("ipc_cluster"),
      NGX_MAIN_CONF|NGX_DIRECT_CONF|NGX_CONF_1MORE,
      ngx_ipc_cluster,
      0,
      0,
      NULL },

      ngx_null_command
};


static ngx_core_module_t  ngx_ipc_cluster_module_ctx = {
    ngx_string("ipc_cluster"),
    ngx_ipc_cluster_create_conf,
    ngx_ipc_cluster_init_conf
};


extern "C" {

ngx_module_t  ngx_ipc_cluster_module = {
    NGX_MODULE_V1,
    &ngx_ipc_cluster_module_ctx,           /* module context */
    ngx_ipc_cluster_commands,              /* module directives */
    NGX_CORE_MODULE,                       /* module type */
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



static void *
ngx_ipc_cluster_create_conf(ngx_cycle_t *cycle)
{
    ngx_ipc_cluster_conf_t  *ccf;

    ccf = (ngx_ipc_cluster_conf_t *)
              ngx_pcalloc(cycle->pool, sizeof(ngx_ipc_cluster_conf_t));
    if (ccf == NULL) {
        return NULL;
    }

    ccf->enabled = NGX_CONF_UNSET;
    return ccf;
}


static char *
ngx_ipc_cluster_init_conf(ngx_cycle_t *cycle, void *conf)
{
    ngx_ipc_cluster_conf_t  *ccf = (ngx_ipc_cluster_conf_t *) conf;

    if (ccf->enabled == NGX_CONF_UNSET) {
        ccf->enabled = 0;
    }

    return NGX_CONF_OK;
}


/* ipc_cluster URL [stream=NAME] [node=NAME] [maxlen=N] [max_message=SIZE]
 *             [queue=SIZE] [secret=PATH] [replicas=N] [sentinel_password=P]
 *             [tls_name=NAME] [tls_cert=PATH tls_key=PATH];
 * (the URL's forms: ngx_ipc_cluster_url.cpp) */
static char *
ngx_ipc_cluster(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_ipc_cluster_conf_t  *ccf = (ngx_ipc_cluster_conf_t *) conf;

    size_t        size;
    u_char       *p;
    ngx_str_t    *value, name, v;
    ngx_int_t     n;
    ngx_uint_t    i;
    ssize_t       sz;

    if (ccf->enabled != NGX_CONF_UNSET) {
        return (char *) "is duplicate";
    }

    value = (ngx_str_t *) cf->args->elts;

    ccf->enabled = 1;
    ccf->maxlen = NGX_IPC_CLUSTER_DEFAULT_MAXLEN;
    ccf->max_message = NGX_IPC_CLUSTER_DEFAULT_MESSAGE;
    ccf->queue = NGX_IPC_CLUSTER_DEFAULT_QUEUE;
    ngx_str_set(&ccf->stream, "ngx_ipc");

    if (ngx_ipc_cluster_parse_url(cf, ccf, &value[1]) != NGX_CONF_OK) {
        return (char *) NGX_CONF_ERROR;
    }

    for (i = 2; i < cf->args->nelts; i++) {
        p = (u_char *) ngx_strlchr(value[i].data,
                                   value[i].data + value[i].len, '=');
        if (p == NULL || p == value[i].data) {
            goto invalid;
        }

        name.data = value[i].data;
        name.len = p - value[i].data;
        v.data = p + 1;
        v.len = value[i].data + value[i].len - v.data;

        if (name.len == 6 && ngx_strncmp(name.data, "stream", 6) == 0
            && v.len > 0 && v.len <= 255 && ngx_ipc_cluster_printable(&v))
        {
            ccf->stream = v;

        } else if (name.len == 4 && ngx_strncmp(name.data, "node", 4) == 0
                   && v.len > 0 && v.len <= 255
                   && ngx_ipc_cluster_printable(&v))
        {
            ccf->node = v;

        } else if (name.len == 6 && ngx_strncmp(name.data, "secret", 6) == 0
                   && v.len > 0)
        {
            if (ngx_ipc_cluster_read_secret(cf, ccf, &v) != NGX_CONF_OK) {
                return (char *) NGX_CONF_ERROR;
            }

        } else if (name.len == 6 && ngx_strncmp(name.data, "maxlen", 6) == 0) {
            n = ngx_atoi(v.data, v.len);
            if (n < 1) {
                goto invalid;
            }
            ccf->maxlen = n;

        } else if (name.len == 11
                   && ngx_strncmp(name.data, "max_message", 11) == 0)
        {
            sz = ngx_parse_size(&v);
            if (sz < 1 || sz > 512 * 1024 * 1024) {
                goto invalid;
            }
            ccf->max_message = sz;

        } else if (name.len == 5 && ngx_strncmp(name.data, "queue", 5) == 0) {
            sz = ngx_parse_size(&v);
            if (sz < 64 * 1024 || sz > (ssize_t) 4 * 1024 * 1024 * 1024 - 1) {
                goto invalid;
            }
            ccf->queue = sz;

        } else {
            switch (ngx_ipc_cluster_link_param(cf, ccf, &name, &v)) {
            case NGX_OK:
                break;
            case NGX_DECLINED:
                goto invalid;
            default:
                return (char *) NGX_CONF_ERROR;
            }
        }
    }

    if (ngx_ipc_cluster_check_link(cf, ccf) != NGX_CONF_OK) {
        return (char *) NGX_CONF_ERROR;
    }

    /* one message of the largest size must always fit, twice over */
    if (ccf->queue < 2 * (ccf->max_message + 65535 + sizeof(OutRecord) + 8)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "ipc_cluster: queue=%uz must hold twice "
                           "max_message=%uz", ccf->queue, ccf->max_message);
        return (char *) NGX_CONF_ERROR;
    }

    if (ccf->node.len == 0) {
        /* a stable default: the host name and the nginx prefix */
        size = cf->cycle->hostname.len + 1 + cf->cycle->prefix.len;
        p = (u_char *) ngx_pnalloc(cf->pool, size);
        if (p == NULL) {
            return (char *) NGX_CONF_ERROR;
        }

        ccf->node.data = p;
        p = ngx_cpymem(p, cf->cycle->hostname.data, cf->cycle->hostname.len);
        *p++ = ':';
        p = ngx_cpymem(p, cf->cycle->prefix.data, cf->cycle->prefix.len);
        ccf->node.len = p - ccf->node.data;
        if (ccf->node.len > 255) {
            ccf->node.len = 255;
        }

        for (p = ccf->node.data; p < ccf->node.data + ccf->node.len; p++) {
            if (*p < 0x20 || *p == 0x7f) {
                *p = '_';          /* every node's decoder refuses them */
            }
        }
    }

    ngx_str_set(&name, "ngx_ipc_cluster");
    size = sizeof(ClusterShared) + ccf->queue;
    size += size / 32 + 64 * ngx_pagesize;    /* the slab pool's own pages */

    ccf->zone = ngx_shared_memory_add(cf, &name, size, &ngx_ipc_cluster_module);
    if (ccf->zone == NULL) {
        return (char *) NGX_CONF_ERROR;
    }

    ccf->zone->init = ngx_ipc_cluster_init_zone;
    ccf->zone->data = ccf;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid ipc_cluster parameter \"%V\" (expected "
                       "stream=NAME, node=NAME (1 to 255 bytes, no control "
                       "character), maxlen=N, max_message=SIZE, queue=SIZE, "
                       "secret=PATH, replicas=N, sentinel_password=PASSWORD, "
                       "tls_name=NAME, tls_cert=PATH or tls_key=PATH)",
                       &value[i]);
    return (char *) NGX_CONF_ERROR;
}



/* Node and stream names travel in every entry and in log lines: no control
 * character (other nodes' decoders refuse them). */
static ngx_uint_t
ngx_ipc_cluster_printable(ngx_str_t *s)
{
    u_char  *p;

    for (p = s->data; p < s->data + s->len; p++) {
        if (*p < 0x20 || *p == 0x7f) {
            return 0;
        }
    }

    return 1;
}


static ngx_int_t
ngx_ipc_cluster_init_zone(ngx_shm_zone_t *zone, void *data)
{
    ngx_ipc_cluster_conf_t  *ccf = (ngx_ipc_cluster_conf_t *) zone->data;
    ngx_slab_pool_t         *sp;
    ClusterShared           *cs;
    void                    *mem;

    sp = (ngx_slab_pool_t *) zone->shm.addr;

    if (data != NULL || zone->shm.exists) {
        /* a reload kept the zone (sp->data is set): keep its lease,
         * position and outbox. nginx keeps a zone whose name, size and
         * tag (this module's address) match, so it was made by this very
         * code; should another layout ever come through (a module of
         * another kClusterVersion loaded at the same address), the reload
         * fails rather than read it as this one. */
        cs = (ClusterShared *) sp->data;
        if (cs == NULL || cs->magic != kClusterMagic
            || cs->version != kClusterVersion)
        {
            ngx_log_error(NGX_LOG_EMERG, zone->shm.log, 0,
                          "ipc_cluster: the zone \"%V\" kept from the "
                          "running configuration has another layout "
                          "(version %uD, this module's %uD): restart nginx",
                          &zone->shm.name, cs ? cs->version : 0,
                          kClusterVersion);
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    mem = ngx_slab_alloc(sp, sizeof(ClusterShared) + ccf->queue);
    if (mem == NULL) {
        ngx_log_error(NGX_LOG_EMERG, zone->shm.log, 0,
                      "ipc_cluster: cannot allocate %uz bytes in its zone",
                      sizeof(ClusterShared) + ccf->queue);
        return NGX_ERROR;
    }

    cs = new (mem) ClusterShared();
    cs->magic = kClusterMagic;
    cs->version = kClusterVersion;
    cs->capacity = ccf->queue & ~(std::uint64_t) 7;
    cs->epoch = (std::uint64_t) ngx_time() * 1000000
                + (std::uint64_t) ngx_pid * 1000 + (ngx_random() % 1000);
    cs->seq = 0;
    cs->head.store(0, std::memory_order_relaxed);
    cs->tail.store(0, std::memory_order_relaxed);
    cs->agent_pid.store(0, std::memory_order_relaxed);
    cs->lock_pid.store(0, std::memory_order_relaxed);

    sp->data = cs;
    return NGX_OK;
}


/* This worker's cluster state, NULL without ipc_cluster. */
ngx_ipc_cluster_conf_t *
ngx_ipc_cluster_conf(void)
{
    ngx_ipc_cluster_conf_t  *ccf;

    if (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE) {
        return NULL;
    }

    ccf = (ngx_ipc_cluster_conf_t *)
              ngx_get_conf(ngx_cycle->conf_ctx, ngx_ipc_cluster_module);
    if (ccf == NULL || ccf->enabled != 1 || ccf->zone == NULL) {
        return NULL;
    }

    return ccf;
}


ClusterShared *
ngx_ipc_cluster_shared(void)
{
    ngx_ipc_cluster_conf_t  *ccf;
    ClusterShared           *cs;

    ccf = ngx_ipc_cluster_conf();
    if (ccf == NULL) {
        return NULL;
    }

    cs = (ClusterShared *) ((ngx_slab_pool_t *) ccf->zone->shm.addr)->data;
    if (cs == NULL || cs->magic != kClusterMagic
        || cs->version != kClusterVersion)
    {
        return NULL;
    }

    return cs;
}


