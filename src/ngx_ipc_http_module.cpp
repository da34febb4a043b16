/*
 * ngx_ipc http module: makes `require "ngx.ipc"` work with no
 * lua_package_path. The Lua library (lib/ngx/ipc.lua) is embedded in the
 * module at build time and registered as a preloaded package through
 * lua-nginx-module's public C API.
 */

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
}

#include <dlfcn.h>

#include "ngx_ipc_lua_path.h"   /* written by ./config: NGX_IPC_LUA_PATH */


/*
 * The few Lua C API functions needed (LuaJIT's lua.h / lauxlib.h), looked up
 * at configuration time, so that a missing lua module is a clear error and
 * not an unresolved symbol when nginx loads this module.
 */
typedef struct lua_State  lua_State;
typedef int (*lua_CFunction)(lua_State *L);

typedef ngx_int_t (*ngx_ipc_add_preload_pt)(ngx_conf_t *cf,
    const char *package, lua_CFunction func);
typedef int (*ngx_ipc_lua_loadbuffer_pt)(lua_State *L, const char *buf,
    size_t size, const char *name);
typedef void (*ngx_ipc_lua_call_pt)(lua_State *L, int nargs, int nresults);
typedef int (*ngx_ipc_lua_error_pt)(lua_State *L);

static ngx_ipc_lua_loadbuffer_pt  ngx_ipc_luaL_loadbuffer;
static ngx_ipc_lua_call_pt        ngx_ipc_lua_call;
static ngx_ipc_lua_error_pt       ngx_ipc_lua_error;


static ngx_int_t ngx_http_ipc_postconfiguration(ngx_conf_t *cf);
static int ngx_http_ipc_lua_loader(lua_State *L);


/* lib/ngx/ipc.lua, embedded by the assembler */
extern "C" const char  ngx_ipc_lua_source[];
extern "C" const char  ngx_ipc_lua_source_end[];

__asm__(
    ".section .rodata\n"
    ".global ngx_ipc_lua_source\n"
    ".global ngx_ipc_lua_source_end\n"
    ".hidden ngx_ipc_lua_source\n"
    ".hidden ngx_ipc_lua_source_end\n"
    "ngx_ipc_lua_source:\n"
    ".incbin \"" NGX_IPC_LUA_PATH "\"\n"
    "ngx_ipc_lua_source_end:\n"
    ".previous\n"
);


static ngx_http_module_t  ngx_http_ipc_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_ipc_postconfiguration,        /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


extern "C" {

ngx_module_t  ngx_http_ipc_module = {
    NGX_MODULE_V1,
    &ngx_http_ipc_module_ctx,              /* module context */
    NULL,                                  /* module directives */
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


/*
 * Everything this module takes from lua-nginx-module and LuaJIT, found by
 * name, whatever their versions or whether they are built into nginx: a
 * feature check, not a version guess. The lua module must export the
 * semaphore post (not part of its documented API; each worker looks it up
 * again when it attaches).
 */
static const char  *ngx_http_ipc_lua_symbols[] = {
    "ngx_http_lua_add_package_preload",
    "ngx_http_lua_ffi_sema_post",
    "luaL_loadbuffer",
    "lua_call",
    "lua_error",
};


static ngx_int_t
ngx_http_ipc_postconfiguration(ngx_conf_t *cf)
{
    ngx_uint_t              i;
    ngx_ipc_add_preload_pt  add_preload;

    for (i = 0; i < sizeof(ngx_http_ipc_lua_symbols) / sizeof(char *); i++) {
        if (dlsym(RTLD_DEFAULT, ngx_http_ipc_lua_symbols[i]) == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "ngx_ipc needs %s(), which is not found: load "
                               "ngx_http_lua_module (load_module) before "
                               "ngx_ipc_module, or use a lua-nginx-module "
                               "that exports it",
                               ngx_http_ipc_lua_symbols[i]);
            return NGX_ERROR;
        }
    }

    add_preload = (ngx_ipc_add_preload_pt)
                      dlsym(RTLD_DEFAULT, "ngx_http_lua_add_package_preload");
    ngx_ipc_luaL_loadbuffer = (ngx_ipc_lua_loadbuffer_pt)
                                  dlsym(RTLD_DEFAULT, "luaL_loadbuffer");
    ngx_ipc_lua_call = (ngx_ipc_lua_call_pt) dlsym(RTLD_DEFAULT, "lua_call");
    ngx_ipc_lua_error = (ngx_ipc_lua_error_pt)
                            dlsym(RTLD_DEFAULT, "lua_error");

    return add_preload(cf, "ngx.ipc", ngx_http_ipc_lua_loader);
}


static int
ngx_http_ipc_lua_loader(lua_State *L)
{
    if (ngx_ipc_luaL_loadbuffer(L, ngx_ipc_lua_source,
                        ngx_ipc_lua_source_end - ngx_ipc_lua_source,
                        "=ngx.ipc")
        != 0)
    {
        return ngx_ipc_lua_error(L);
    }

    ngx_ipc_lua_call(L, 0, 1);

    return 1;
}
