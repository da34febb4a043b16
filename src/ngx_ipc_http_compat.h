/*
 * Owns: ngx_http_ipc_module's main configuration: the "ipc_events_compat"
 * directive and the package names it adds (src/ngx_ipc_http_compat.cpp),
 * and whether this configuration's main Lua VM is marked
 * (src/ngx_ipc_http_module.cpp).
 */

#ifndef NGX_IPC_HTTP_COMPAT_H
#define NGX_IPC_HTTP_COMPAT_H

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
}

typedef struct {
    ngx_flag_t  events_compat;
    ngx_uint_t  main_vm_marked;     /* set by the postconfiguration */
} ngx_http_ipc_main_conf_t;

extern "C" ngx_module_t  ngx_http_ipc_module;
extern ngx_command_t     ngx_http_ipc_commands[];

void *ngx_http_ipc_create_main_conf(ngx_conf_t *cf);
char *ngx_http_ipc_init_main_conf(ngx_conf_t *cf, void *conf);

/* registers `package` as preloaded, loaded by ngx_http_ipc_module's
 * loader (src/ngx_ipc_http_module.cpp) */
ngx_int_t ngx_http_ipc_preload(ngx_conf_t *cf, const char *package);

/* the embedded package that an alias loads, or NULL */
const char *ngx_http_ipc_alias_target(const char *name, size_t len);

#endif /* NGX_IPC_HTTP_COMPAT_H */
