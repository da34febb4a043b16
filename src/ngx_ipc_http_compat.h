/*
 * Owns: the "ipc_events_compat" directive of ngx_http_ipc_module and the
 * package names it adds (src/ngx_ipc_http_compat.cpp).
 */

#ifndef NGX_IPC_HTTP_COMPAT_H
#define NGX_IPC_HTTP_COMPAT_H

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
}

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
