/*
 * ngx_ipc http module: makes `require "ngx.ipc"` work with no
 * lua_package_path. The Lua library (lib/ngx/ipc.lua and lib/ngx/ipc/) is
 * embedded in the module at build time and registered as preloaded
 * packages through lua-nginx-module's public C API: one package per file,
 * as `config` lists them (NGX_IPC_LUA_PACKAGES). So is the C ABI's header,
 * src/ngx_ipc_ffi.h: the loader of "ngx.ipc.ffi" hands its text to
 * lib/ngx/ipc/ffi.lua, which declares it with ffi.cdef.
 * "ipc_events_compat on" adds aliases: src/ngx_ipc_http_compat.cpp.
 */

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
}

#include <dlfcn.h>

#include "ngx_ipc_http_compat.h"
#include "ngx_ipc_lua_path.h"   /* written by ./config:
                                   NGX_IPC_LUA_PACKAGES, NGX_IPC_FFI_H_PATH */


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
typedef lua_State *(*ngx_ipc_get_global_state_pt)(ngx_conf_t *cf);
typedef void (*ngx_ipc_lua_pushlightuserdata_pt)(lua_State *L, void *p);
typedef void (*ngx_ipc_lua_pushboolean_pt)(lua_State *L, int b);
typedef void (*ngx_ipc_lua_rawop_pt)(lua_State *L, int idx);
typedef int (*ngx_ipc_lua_toboolean_pt)(lua_State *L, int idx);
typedef void (*ngx_ipc_lua_settop_pt)(lua_State *L, int idx);
typedef const char *(*ngx_ipc_lua_pushstring_pt)(lua_State *L,
    const char *s);
typedef const char *(*ngx_ipc_lua_tolstring_pt)(lua_State *L, int idx,
    size_t *len);

#define NGX_IPC_LUA_REGISTRYINDEX  (-10000)    /* Lua 5.1 and LuaJIT */

static ngx_ipc_add_preload_pt            ngx_ipc_add_preload;
static ngx_ipc_get_global_state_pt       ngx_ipc_get_global_state;
static ngx_ipc_lua_loadbuffer_pt         ngx_ipc_luaL_loadbuffer;
static ngx_ipc_lua_call_pt               ngx_ipc_lua_call;
static ngx_ipc_lua_error_pt              ngx_ipc_lua_error;
static ngx_ipc_lua_pushlightuserdata_pt  ngx_ipc_lua_pushlightuserdata;
static ngx_ipc_lua_pushboolean_pt        ngx_ipc_lua_pushboolean;
static ngx_ipc_lua_rawop_pt              ngx_ipc_lua_rawget;
static ngx_ipc_lua_rawop_pt              ngx_ipc_lua_rawset;
static ngx_ipc_lua_toboolean_pt          ngx_ipc_lua_toboolean;
static ngx_ipc_lua_settop_pt             ngx_ipc_lua_settop;
static ngx_ipc_lua_pushstring_pt         ngx_ipc_lua_pushstring;
static ngx_ipc_lua_tolstring_pt          ngx_ipc_lua_tolstring;

/*
 * Its address is the registry key that marks lua-nginx-module's main Lua VM,
 * the one that init_by_lua*, init_worker_by_lua* and every request share.
 * With "lua_code_cache off" each request gets a Lua VM of its own, where the
 * mark is missing: ngx.ipc's light threads and handlers live in one VM per
 * worker, so the loader refuses to run there. Whether the mark was set is
 * kept in the configuration (a reload that fails after our preconfiguration
 * leaves the running one's as it was).
 */
static char  ngx_ipc_main_vm_key;


static ngx_int_t ngx_http_ipc_preconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_ipc_postconfiguration(ngx_conf_t *cf);
static int ngx_http_ipc_lua_loader(lua_State *L);
static int ngx_http_ipc_load(lua_State *L, const char *src, size_t len,
    const char *name, const char *arg);


/*
 * The Lua files (NUL-free text) and src/ngx_ipc_ffi.h (NUL-terminated),
 * embedded by the assembler: for package i, ngx_ipc_lua_<i> and
 * ngx_ipc_lua_<i>_end.
 */
#define NGX_IPC_LUA_DECLARE(i, package, path)                                \
    extern "C" const char  ngx_ipc_lua_##i[];                                \
    extern "C" const char  ngx_ipc_lua_##i##_end[];

#define NGX_IPC_LUA_INCBIN(i, package, path)                                 \
    ".global ngx_ipc_lua_" #i "\n"                                           \
    ".global ngx_ipc_lua_" #i "_end\n"                                       \
    ".hidden ngx_ipc_lua_" #i "\n"                                           \
    ".hidden ngx_ipc_lua_" #i "_end\n"                                       \
    "ngx_ipc_lua_" #i ":\n"                                                  \
    ".incbin \"" path "\"\n"                                                 \
    "ngx_ipc_lua_" #i "_end:\n"

#define NGX_IPC_LUA_ENTRY(i, package, path)                                  \
    { package, ngx_ipc_lua_##i, ngx_ipc_lua_##i##_end },

NGX_IPC_LUA_PACKAGES(NGX_IPC_LUA_DECLARE)
extern "C" const char  ngx_ipc_ffi_h_source[];

__asm__(
    ".section .rodata\n"
    NGX_IPC_LUA_PACKAGES(NGX_IPC_LUA_INCBIN)
    ".global ngx_ipc_ffi_h_source\n"
    ".hidden ngx_ipc_ffi_h_source\n"
    "ngx_ipc_ffi_h_source:\n"
    ".incbin \"" NGX_IPC_FFI_H_PATH "\"\n"
    ".byte 0\n"
    ".previous\n"
);

typedef struct {
    const char  *name;          /* "ngx.ipc.cluster" */
    const char  *start;
    const char  *end;
} ngx_http_ipc_package_t;

static ngx_http_ipc_package_t  ngx_http_ipc_packages[] = {
    NGX_IPC_LUA_PACKAGES(NGX_IPC_LUA_ENTRY)
};


static ngx_http_module_t  ngx_http_ipc_module_ctx = {
    ngx_http_ipc_preconfiguration,         /* preconfiguration */
    ngx_http_ipc_postconfiguration,        /* postconfiguration */

    ngx_http_ipc_create_main_conf,         /* create main configuration */
    ngx_http_ipc_init_main_conf,           /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


extern "C" {

ngx_module_t  ngx_http_ipc_module = {
    NGX_MODULE_V1,
    &ngx_http_ipc_module_ctx,              /* module context */
    ngx_http_ipc_commands,                 /* module directives */
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
typedef struct {
    const char  *name;
    void       **fn;       /* where to keep it, or NULL: only checked */
} ngx_http_ipc_symbol_t;

#define ngx_http_ipc_symbol(name, fn)  { name, reinterpret_cast<void **>(fn) }

static ngx_http_ipc_symbol_t  ngx_http_ipc_lua_symbols[] = {
    ngx_http_ipc_symbol("ngx_http_lua_add_package_preload",
                        &ngx_ipc_add_preload),
    ngx_http_ipc_symbol("ngx_http_lua_ffi_sema_post", NULL),
    ngx_http_ipc_symbol("ngx_http_lua_get_global_state",
                        &ngx_ipc_get_global_state),
    ngx_http_ipc_symbol("luaL_loadbuffer", &ngx_ipc_luaL_loadbuffer),
    ngx_http_ipc_symbol("lua_call", &ngx_ipc_lua_call),
    ngx_http_ipc_symbol("lua_error", &ngx_ipc_lua_error),
    ngx_http_ipc_symbol("lua_pushlightuserdata",
                        &ngx_ipc_lua_pushlightuserdata),
    ngx_http_ipc_symbol("lua_pushboolean", &ngx_ipc_lua_pushboolean),
    ngx_http_ipc_symbol("lua_rawget", &ngx_ipc_lua_rawget),
    ngx_http_ipc_symbol("lua_rawset", &ngx_ipc_lua_rawset),
    ngx_http_ipc_symbol("lua_toboolean", &ngx_ipc_lua_toboolean),
    ngx_http_ipc_symbol("lua_settop", &ngx_ipc_lua_settop),
    ngx_http_ipc_symbol("lua_pushstring", &ngx_ipc_lua_pushstring),
    ngx_http_ipc_symbol("lua_tolstring", &ngx_ipc_lua_tolstring),
};


/*
 * Before the http block is parsed: the preloads are registered as hooks that
 * lua-nginx-module applies when it makes its main VM, in its own
 * postconfiguration, before it runs init_by_lua*: so `require "ngx.ipc"`
 * works there too. The main VM is marked in our postconfiguration (after
 * lua's, with load_module in that order); until then (init_by_lua* of this
 * configuration, in the master) the loader does not look for the mark.
 */
static ngx_int_t
ngx_http_ipc_preconfiguration(ngx_conf_t *cf)
{
    void        *fn;
    ngx_uint_t   i;

    /*
     * The lua module must be part of this configuration: after a reload
     * that dropped its load_module line, the old cycle's copy is still
     * mapped, and dlsym() would find functions that index this
     * configuration with its module index.
     */
    for (i = 0; cf->cycle->modules[i] != NULL; i++) {
        if (ngx_strcmp(cf->cycle->modules[i]->name, "ngx_http_lua_module")
            == 0)
        {
            break;
        }
    }

    if (cf->cycle->modules[i] == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "ngx_ipc needs ngx_http_lua_module: load it "
                           "(load_module) before ngx_ipc_module");
        return NGX_ERROR;
    }

    for (i = 0; i < sizeof(ngx_http_ipc_lua_symbols)
                    / sizeof(ngx_http_ipc_symbol_t); i++)
    {
        fn = dlsym(RTLD_DEFAULT, ngx_http_ipc_lua_symbols[i].name);
        if (fn == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "ngx_ipc needs %s(), which is not found: load "
                               "ngx_http_lua_module (load_module) before "
                               "ngx_ipc_module, or use a lua-nginx-module "
                               "that exports it",
                               ngx_http_ipc_lua_symbols[i].name);
            return NGX_ERROR;
        }

        if (ngx_http_ipc_lua_symbols[i].fn != NULL) {
            *ngx_http_ipc_lua_symbols[i].fn = fn;
        }
    }

    for (i = 0; i < sizeof(ngx_http_ipc_packages)
                    / sizeof(ngx_http_ipc_package_t); i++)
    {
        if (ngx_http_ipc_preload(cf, ngx_http_ipc_packages[i].name) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_ipc_preload(ngx_conf_t *cf, const char *package)
{
    return ngx_ipc_add_preload(cf, package, ngx_http_ipc_lua_loader);
}


static ngx_int_t
ngx_http_ipc_postconfiguration(ngx_conf_t *cf)
{
    lua_State                 *L;
    ngx_http_ipc_main_conf_t  *imcf;

    /* registry[&ngx_ipc_main_vm_key] = true in the main VM */
    imcf = static_cast<ngx_http_ipc_main_conf_t *>(
               ngx_http_conf_get_module_main_conf(cf, ngx_http_ipc_module));
    L = ngx_ipc_get_global_state(cf);
    imcf->main_vm_marked = (L != NULL);

    if (L != NULL) {
        ngx_ipc_lua_pushlightuserdata(L, &ngx_ipc_main_vm_key);
        ngx_ipc_lua_pushboolean(L, 1);
        ngx_ipc_lua_rawset(L, NGX_IPC_LUA_REGISTRYINDEX);
    }

    return NGX_OK;
}


/* The loader of every package: require() passes the package's name. */
static int
ngx_http_ipc_lua_loader(lua_State *L)
{
    int                      main_vm;
    size_t                   len, n;
    ngx_uint_t               i;
    const char              *name, *target;
    ngx_http_ipc_package_t  *p;
    u_char                   chunk[128], src[128];
    ngx_http_ipc_main_conf_t  *imcf;

    name = ngx_ipc_lua_tolstring(L, 1, &len);
    if (name == NULL) {
        ngx_ipc_lua_pushstring(L, "ngx_ipc: a package loader called "
                                  "without the package's name");
        return ngx_ipc_lua_error(L);
    }

    for (i = 0; i < sizeof(ngx_http_ipc_packages)
                    / sizeof(ngx_http_ipc_package_t); i++)
    {
        p = &ngx_http_ipc_packages[i];

        if (ngx_strlen(p->name) != len || ngx_strncmp(p->name, name, len) != 0)
        {
            continue;
        }

        /* the running configuration's (init_by_lua*: the one being made) */
        imcf = static_cast<ngx_http_ipc_main_conf_t *>(
                   ngx_http_cycle_get_module_main_conf(
                       const_cast<ngx_cycle_t *>(ngx_cycle),
                       ngx_http_ipc_module));

        if (imcf != NULL && imcf->main_vm_marked
            && ngx_strcmp(p->name, "ngx.ipc") == 0)
        {
            /* "ngx.ipc" itself: only in the main VM (see the key above) */
            ngx_ipc_lua_pushlightuserdata(L, &ngx_ipc_main_vm_key);
            ngx_ipc_lua_rawget(L, NGX_IPC_LUA_REGISTRYINDEX);
            main_vm = ngx_ipc_lua_toboolean(L, -1);
            ngx_ipc_lua_settop(L, -2);

            if (!main_vm) {
                ngx_ipc_lua_pushstring(L,
                    "ngx.ipc does not work with \"lua_code_cache off\": "
                    "each request then runs in a Lua VM of its own, and "
                    "ngx.ipc needs the one VM of its worker; remove "
                    "\"lua_code_cache off\" (or set it on) where ngx.ipc "
                    "is used");
                return ngx_ipc_lua_error(L);
            }
        }

        /* "=ngx.ipc.cluster": what error messages and tracebacks name */
        *ngx_snprintf(chunk, sizeof(chunk) - 1, "=%s", p->name) = '\0';

        /* lib/ngx/ipc/ffi.lua is called with the text of the C ABI */
        return ngx_http_ipc_load(L, p->start, p->end - p->start,
                                 (const char *) chunk,
                                 ngx_strcmp(p->name, "ngx.ipc.ffi") == 0
                                 ? ngx_ipc_ffi_h_source : NULL);
    }

    /* an alias ("resty.events"): the same table as its package's */
    target = ngx_http_ipc_alias_target(name, len);
    if (target != NULL) {
        *ngx_snprintf(chunk, sizeof(chunk) - 1, "=%s", name) = '\0';
        n = ngx_snprintf(src, sizeof(src), "return require \"%s\"", target)
            - src;
        return ngx_http_ipc_load(L, (const char *) src, n,
                                 (const char *) chunk, NULL);
    }

    ngx_ipc_lua_pushstring(L, "ngx_ipc: no such embedded package");
    return ngx_ipc_lua_error(L);
}


static int
ngx_http_ipc_load(lua_State *L, const char *src, size_t len, const char *name,
    const char *arg)
{
    if (ngx_ipc_luaL_loadbuffer(L, src, len, name) != 0) {
        return ngx_ipc_lua_error(L);
    }

    if (arg != NULL) {
        ngx_ipc_lua_pushstring(L, arg);
    }

    ngx_ipc_lua_call(L, arg != NULL ? 1 : 0, 1);

    return 1;
}
