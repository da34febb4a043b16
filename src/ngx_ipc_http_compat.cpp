/*
 * Owns: "ipc_events_compat on|off" (http, off by default). On, it preloads
 * the names of Kong's event libraries, "resty.events", "resty.events.compat"
 * and "resty.worker.events", as aliases of ngx_ipc's implementations of
 * their APIs (lib/ngx/ipc/events.lua, events_compat.lua, worker_events.lua).
 * A preload wins over lua_package_path, so code written for those
 * libraries (Kong, APISIX) runs on ngx_ipc unchanged. They are registered
 * when the directive is read, before lua-nginx-module makes its main VM,
 * so init_by_lua* finds them as the workers do. The loader of
 * src/ngx_ipc_http_module.cpp loads an alias as `return require "<its
 * package>"`: both names give the same table.
 */

#include "ngx_ipc_http_compat.h"


/* each alias, and the embedded package it loads */
static const char  *ngx_http_ipc_aliases[][2] = {
    { "resty.events",        "ngx.ipc.events" },
    { "resty.events.compat", "ngx.ipc.events_compat" },
    { "resty.worker.events", "ngx.ipc.worker_events" },
};

#define NGX_HTTP_IPC_NALIASES                                                \
    (sizeof(ngx_http_ipc_aliases) / sizeof(ngx_http_ipc_aliases[0]))


static char *ngx_http_ipc_events_compat(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);


ngx_command_t  ngx_http_ipc_commands[] = {

    { ngx_string("ipc_events_compat"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_http_ipc_events_compat,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_ipc_main_conf_t, events_compat),
      NULL },

      ngx_null_command
};


void *
ngx_http_ipc_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_ipc_main_conf_t  *imcf;

    imcf = static_cast<ngx_http_ipc_main_conf_t *>(
               ngx_pcalloc(cf->pool, sizeof(ngx_http_ipc_main_conf_t)));
    if (imcf == NULL) {
        return NULL;
    }

    imcf->events_compat = NGX_CONF_UNSET;

    return imcf;
}


char *
ngx_http_ipc_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_ipc_main_conf_t  *imcf =
        static_cast<ngx_http_ipc_main_conf_t *>(conf);

    ngx_conf_init_value(imcf->events_compat, 0);

    return NGX_CONF_OK;
}


static char *
ngx_http_ipc_events_compat(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char                      *rv;
    ngx_uint_t                 i;
    ngx_http_ipc_main_conf_t  *imcf =
        static_cast<ngx_http_ipc_main_conf_t *>(conf);

    rv = ngx_conf_set_flag_slot(cf, cmd, conf);
    if (rv != NGX_CONF_OK || !imcf->events_compat) {
        return rv;
    }

    for (i = 0; i < NGX_HTTP_IPC_NALIASES; i++) {
        if (ngx_http_ipc_preload(cf, ngx_http_ipc_aliases[i][0]) != NGX_OK) {
            return static_cast<char *>(NGX_CONF_ERROR);
        }
    }

    return NGX_CONF_OK;
}


const char *
ngx_http_ipc_alias_target(const char *name, size_t len)
{
    ngx_uint_t  i;

    for (i = 0; name != NULL && i < NGX_HTTP_IPC_NALIASES; i++) {
        if (ngx_strlen(ngx_http_ipc_aliases[i][0]) == len
            && ngx_strncmp(ngx_http_ipc_aliases[i][0], name, len) == 0)
        {
            return ngx_http_ipc_aliases[i][1];
        }
    }

    return NULL;
}
