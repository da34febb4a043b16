/*
 * ngx_ipc core module: the ipc_* directives, and for each configuration a
 * shared mapping (ngx_ipc core layout) plus one eventfd per worker slot, both
 * made by the master before it forks the workers. The workers attach to
 * them in ngx_ipc_worker.cpp.
 *
 * Owns: ngx_ipc_conf_t (the directives, the mapping, the fds) and which
 * configuration a worker forked now attaches to.
 */

#include "ngx_ipc_module.h"

#include <sys/mman.h>


#if (nginx_version < 1017005)
#error "ngx_ipc needs nginx 1.17.5 or later (ngx_posted_next_events)"
#endif


static void *ngx_ipc_create_conf(ngx_cycle_t *cycle);
static char *ngx_ipc_init_conf(ngx_cycle_t *cycle, void *conf);
static ngx_int_t ngx_ipc_create_shared(ngx_cycle_t *cycle,
    ngx_ipc_conf_t *conf, ngx_uint_t n);
static ngx_int_t ngx_ipc_init_module(ngx_cycle_t *cycle);
static void ngx_ipc_cleanup(void *data);

/* ipc_busy_poll's default, in microseconds */
#define NGX_IPC_DEFAULT_BUSY_POLL  50
/* ipc_early_messages' defaults */
#define NGX_IPC_DEFAULT_EARLY_MSEC  30000
#define NGX_IPC_DEFAULT_EARLY_SIZE  (16 * 1024 * 1024)


static ngx_command_t  ngx_ipc_commands[] = {

    { ngx_string("ipc_ring_size"),
      NGX_MAIN_CONF|NGX_DIRECT_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      0,
      offsetof(ngx_ipc_conf_t, ring_size),
      NULL },

    { ngx_string("ipc_max_message"),
      NGX_MAIN_CONF|NGX_DIRECT_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      0,
      offsetof(ngx_ipc_conf_t, max_message),
      NULL },

    { ngx_string("ipc_queue_limit"),
      NGX_MAIN_CONF|NGX_DIRECT_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      0,
      offsetof(ngx_ipc_conf_t, queue_limit),
      NULL },

    { ngx_string("ipc_bridge_slots"),
      NGX_MAIN_CONF|NGX_DIRECT_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      0,
      offsetof(ngx_ipc_conf_t, bridge_slots),
      NULL },

    { ngx_string("ipc_busy_poll"),
      NGX_MAIN_CONF|NGX_DIRECT_CONF|NGX_CONF_TAKE1,
      ngx_ipc_set_busy_poll,
      0,
      offsetof(ngx_ipc_conf_t, busy_poll),
      NULL },

    { ngx_string("ipc_early_messages"),
      NGX_MAIN_CONF|NGX_DIRECT_CONF|NGX_CONF_TAKE12,
      ngx_ipc_set_early,
      0,
      0,
      NULL },

      ngx_null_command
};


static ngx_core_module_t  ngx_ipc_module_ctx = {
    ngx_string("ipc"),
    ngx_ipc_create_conf,
    ngx_ipc_init_conf
};


extern "C" {

ngx_module_t  ngx_ipc_module = {
    NGX_MODULE_V1,
    &ngx_ipc_module_ctx,                   /* module context */
    ngx_ipc_commands,                      /* module directives */
    NGX_CORE_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_ipc_init_module,                   /* init module */
    ngx_ipc_init_process,                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_ipc_exit_process,                  /* exit process */
    ngx_ipc_bridge_exit_master,            /* exit master */
    NGX_MODULE_V1_PADDING
};

}


/* The configuration whose mapping a worker forked now would use: the newest
 * one whose init_module succeeded. Workers inherit it at fork. */
static ngx_ipc_conf_t    *ngx_ipc_current_conf;
static ngx_ipc_conf_t    *ngx_ipc_previous_conf;

/* 1 for the master's first configuration, then one more per reload */
static uint64_t           ngx_ipc_generation;



static void *
ngx_ipc_create_conf(ngx_cycle_t *cycle)
{
    ngx_ipc_conf_t  *conf;

    conf = (ngx_ipc_conf_t *) ngx_pcalloc(cycle->pool, sizeof(ngx_ipc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    conf->ring_size = NGX_CONF_UNSET_SIZE;
    conf->max_message = NGX_CONF_UNSET_SIZE;
    conf->queue_limit = NGX_CONF_UNSET_SIZE;
    conf->busy_poll = NGX_CONF_UNSET_UINT;
    conf->bridge_slots = NGX_CONF_UNSET;
    conf->early_msec = NGX_CONF_UNSET_MSEC;
    conf->early_size = NGX_CONF_UNSET_SIZE;

    return conf;
}


/*
 * Everything is checked and made here rather than in init_module: a failed
 * init_module is fatal to the master even on reload, while a configuration
 * error here only refuses the reload and leaves the running one in place.
 * ngx_core_module's init_conf, which resolves worker_processes, runs first.
 */
static char *
ngx_ipc_init_conf(ngx_cycle_t *cycle, void *data)
{
    ngx_uint_t        n;
    ngx_core_conf_t  *ccf;
    ngx_ipc_conf_t   *conf = (ngx_ipc_conf_t *) data;

    ngx_conf_init_size_value(conf->ring_size, 0);       /* 0: sized by workers */
    ngx_conf_init_size_value(conf->max_message, ngx_ipc::kDefaultMaxMessage);
    ngx_conf_init_size_value(conf->queue_limit, ngx_ipc::kDefaultQueueLimit);
    ngx_conf_init_uint_value(conf->busy_poll, NGX_IPC_DEFAULT_BUSY_POLL);
    ngx_conf_init_value(conf->bridge_slots, NGX_IPC_BRIDGE_SLOTS);
    ngx_conf_init_msec_value(conf->early_msec, NGX_IPC_DEFAULT_EARLY_MSEC);
    ngx_conf_init_size_value(conf->early_size, NGX_IPC_DEFAULT_EARLY_SIZE);

    if (conf->bridge_slots < 2 || conf->bridge_slots > NGX_IPC_BRIDGE_SLOTS) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "\"ipc_bridge_slots\" must be between 2 and %d",
                      NGX_IPC_BRIDGE_SLOTS);
        return (char *) NGX_CONF_ERROR;
    }

    if (conf->ring_size != 0 && conf->ring_size < ngx_ipc::kMinRingSize) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "\"ipc_ring_size\" must be at least %uz",
                      (size_t) ngx_ipc::kMinRingSize);
        return (char *) NGX_CONF_ERROR;
    }

    if (conf->ring_size > ngx_ipc::kMaxRingSize) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "\"ipc_ring_size\" must be at most %uz",
                      (size_t) ngx_ipc::kMaxRingSize);
        return (char *) NGX_CONF_ERROR;
    }

    if (conf->queue_limit == 0) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "\"ipc_queue_limit\" must be at least 1");
        return (char *) NGX_CONF_ERROR;
    }

    if (conf->max_message > (size_t) 0xffffffffU) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "\"ipc_max_message\" must be less than 4g");
        return (char *) NGX_CONF_ERROR;
    }

    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);

    /* with "master_process off" the one process is slot 0 */
    n = ccf->master ? (ngx_uint_t) ccf->worker_processes : 1;

    if (n > ngx_ipc::kMaxSlots) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "ngx_ipc supports at most %ui worker processes, not %ui",
                      (ngx_uint_t) ngx_ipc::kMaxSlots, n);
        return (char *) NGX_CONF_ERROR;
    }

    if (ngx_test_config || ngx_process == NGX_PROCESS_SIGNALLER) {
        return NGX_CONF_OK;
    }

    /* once per master: what lets the generations of a reload talk */
    if (ccf->master
        && ngx_ipc_bridge_init(cycle, (ngx_uint_t) conf->bridge_slots)
           != NGX_OK)
    {
        return (char *) NGX_CONF_ERROR;
    }

    if (ngx_ipc_create_shared(cycle, conf, n) != NGX_OK) {
        return (char *) NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* The configuration's shared mapping and one eventfd per worker slot, made
 * before the master forks the workers, freed with the cycle's pool. */
static ngx_int_t
ngx_ipc_create_shared(ngx_cycle_t *cycle, ngx_ipc_conf_t *conf, ngx_uint_t n)
{
    ngx_uint_t           i;
    ngx_pool_cleanup_t  *cln;
    ngx_ipc::Config      c;
    ngx_ipc::Layout      l;
    void                *shm;

    c.nslots = (uint32_t) n;
    c.ring_size = conf->ring_size;
    c.max_message = conf->max_message;
    c.queue_limit = conf->queue_limit;
    c.generation = ++ngx_ipc_generation;
    c.busy_poll_us = conf->busy_poll;
    l = ngx_ipc::compute_layout(c);

    /* MAP_NORESERVE: pages of rings that are never used cost nothing */
    shm = mmap(NULL, l.total_size, PROT_READ|PROT_WRITE,
               MAP_SHARED|MAP_ANONYMOUS|MAP_NORESERVE, -1, 0);
    if (shm == MAP_FAILED) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "ngx_ipc: mmap(%uz) failed", (size_t) l.total_size);
        return NGX_ERROR;
    }

    ngx_ipc::init_shm(shm, c);

    conf->shm = shm;
    conf->shm_size = l.total_size;
    conf->nslots = n;

    conf->fds = (int *) ngx_palloc(cycle->pool, n * sizeof(int));
    if (conf->fds == NULL) {
        munmap(shm, l.total_size);
        conf->shm = NULL;
        return NGX_ERROR;
    }

    for (i = 0; i < n; i++) {
        conf->fds[i] = -1;
    }

    cln = ngx_pool_cleanup_add(cycle->pool, 0);
    if (cln == NULL) {
        munmap(shm, l.total_size);
        conf->shm = NULL;
        return NGX_ERROR;
    }

    cln->handler = ngx_ipc_cleanup;
    cln->data = conf;

    if (ngx_ipc_open_eventfds(cycle, conf->fds, n) != NGX_OK) {
        return NGX_ERROR;   /* the cleanup closes those it opened */
    }

    ngx_ipc_previous_conf = ngx_ipc_current_conf;
    ngx_ipc_current_conf = conf;

    return NGX_OK;
}


/* Only logs: the configuration's error_log is open by now. */
static ngx_int_t
ngx_ipc_init_module(ngx_cycle_t *cycle)
{
    ngx_ipc_conf_t  *conf;

    conf = (ngx_ipc_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_ipc_module);

    ngx_ipc_bridge_init_module(cycle);

    if (conf->shm != NULL) {
        ngx_log_error(NGX_LOG_INFO, cycle->log, 0,
                      "ngx_ipc: %ui worker slots, inbox %uz bytes each, "
                      "shared memory %uz bytes", conf->nslots,
                      (size_t) ((ngx_ipc::ShmHeader *) conf->shm)->ring_size,
                      conf->shm_size);
    }

    return NGX_OK;
}


/* Runs when the configuration's cycle is destroyed: in the master after a
 * reload (its workers keep their own copies), or when a new cycle fails. */
static void
ngx_ipc_cleanup(void *data)
{
    ngx_uint_t         i;
    ngx_ipc_conf_t    *conf = (ngx_ipc_conf_t *) data;
    ngx_ipc_worker_t  *w;

    w = ngx_ipc_worker_attached();

    if (w != NULL && w->conf == conf) {
        /*
         * This process uses the mapping and keeps it until it exits. (With
         * "master_process off" a reload makes a new cycle but the process
         * stays attached to its first mapping.)
         */
        return;
    }

    for (i = 0; i < conf->nslots; i++) {
        if (conf->fds[i] != -1 && close(conf->fds[i]) == -1) {
            ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, ngx_errno,
                          "ngx_ipc: close() eventfd failed");
        }

        conf->fds[i] = -1;
    }

    if (conf->shm != NULL && munmap(conf->shm, conf->shm_size) == -1) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, ngx_errno,
                      "ngx_ipc: munmap() failed");
    }

    conf->shm = NULL;

    if (ngx_ipc_current_conf == conf) {
        /* a new cycle failed after our init_module: the old one stays */
        ngx_ipc_current_conf = ngx_ipc_previous_conf;
    }

    if (ngx_ipc_previous_conf == conf) {
        ngx_ipc_previous_conf = NULL;
    }
}



ngx_ipc_conf_t *
ngx_ipc_conf_current(void)
{
    return ngx_ipc_current_conf;
}
