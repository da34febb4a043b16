/*
 * ngx_ipc core module: the ipc_* directives, and for each configuration a
 * shared mapping (ngx_ipc core layout) plus one eventfd per worker slot, both
 * made by the master before it forks the workers. Each worker attaches to
 * its slot (its ngx_worker number) and watches its own eventfd on its event
 * loop; the read handler flushes the send backlog and wakes the Lua
 * dispatcher. Nothing runs while no message moves.
 */

#include "ngx_ipc_module.h"

#include <dlfcn.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sched.h>

#include <new>


#if (nginx_version < 1017005)
#error "ngx_ipc needs nginx 1.17.5 or later (ngx_posted_next_events)"
#endif


static void *ngx_ipc_create_conf(ngx_cycle_t *cycle);
static char *ngx_ipc_init_conf(ngx_cycle_t *cycle, void *conf);
static ngx_int_t ngx_ipc_create_shared(ngx_cycle_t *cycle,
    ngx_ipc_conf_t *conf, ngx_uint_t n);
static ngx_int_t ngx_ipc_init_module(ngx_cycle_t *cycle);
static void ngx_ipc_cleanup(void *data);
static ngx_int_t ngx_ipc_init_process(ngx_cycle_t *cycle);
static void ngx_ipc_exit_process(ngx_cycle_t *cycle);
static ngx_ipc_worker_t *ngx_ipc_attach(ngx_ipc_conf_t *conf);
static void ngx_ipc_wake_handler(ngx_event_t *rev);
static void ngx_ipc_shutdown_watch(ngx_event_t *ev);
static ngx_uint_t ngx_ipc_live_timers(void);
static void ngx_ipc_core_log(void *ctx, const char *msg, int err);
static bool ngx_ipc_alive(int32_t pid);
static char *ngx_ipc_set_busy_poll(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static void ngx_ipc_yield_handler(ngx_event_t *ev);
static void ngx_ipc_poll_found(ngx_ipc_worker_t *w);
static void ngx_ipc_poll_handler(ngx_event_t *ev);
static uint64_t ngx_ipc_now_ns(void);
static void ngx_ipc_poll_end(ngx_ipc_worker_t *w);
static void ngx_ipc_poll_stop(ngx_ipc_worker_t *w);

/* ipc_busy_poll's default, in microseconds */
#define NGX_IPC_DEFAULT_BUSY_POLL  50
/* and its largest value: a poll holds the worker's CPU this long */
#define NGX_IPC_MAX_BUSY_POLL      10000
/* a sched_yield() that kept the worker off its CPU this long (ns): other
 * processes want the CPUs (a VM's own hiccups stay well below) */
#define NGX_IPC_POLL_STOLEN        250000
/* so many such yields within this time (ns), */
#define NGX_IPC_POLL_STRIKES       3
#define NGX_IPC_POLL_STRIKE_SPAN   20000000
/* and then no poll for this long (ns) */
#define NGX_IPC_POLL_BACKOFF       100000000


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

    { ngx_string("ipc_busy_poll"),
      NGX_MAIN_CONF|NGX_DIRECT_CONF|NGX_CONF_TAKE1,
      ngx_ipc_set_busy_poll,
      0,
      offsetof(ngx_ipc_conf_t, busy_poll),
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
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};

}


/* The configuration whose mapping a worker forked now would use: the newest
 * one whose init_module succeeded. Workers inherit it at fork. */
static ngx_ipc_conf_t    *ngx_ipc_current_conf;
static ngx_ipc_conf_t    *ngx_ipc_previous_conf;

/* 1 for the master's first configuration, then one more per reload */
static uint64_t           ngx_ipc_generation;

static ngx_ipc_worker_t   ngx_ipc_worker;
static ngx_flag_t         ngx_ipc_attached;
static ngx_flag_t         ngx_ipc_attach_failed;


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

    for (i = 0; i < n; i++) {
        conf->fds[i] = eventfd(0, EFD_NONBLOCK|EFD_CLOEXEC);
        if (conf->fds[i] == -1) {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                          "ngx_ipc: eventfd() failed");
            return NGX_ERROR;
        }
    }

    ngx_ipc_previous_conf = ngx_ipc_current_conf;
    ngx_ipc_current_conf = conf;

    return NGX_OK;
}


/* ipc_busy_poll off | <time>: "50us", "1ms", "0" (nginx time units plus us) */
static char *
ngx_ipc_set_busy_poll(ngx_conf_t *cf, ngx_command_t *cmd, void *data)
{
    ngx_int_t        v;
    ngx_str_t       *value, s;
    ngx_ipc_conf_t  *conf = (ngx_ipc_conf_t *) data;

    if (conf->busy_poll != NGX_CONF_UNSET_UINT) {
        return (char *) "is duplicate";
    }

    value = (ngx_str_t *) cf->args->elts;
    s = value[1];

    if (s.len == 3 && ngx_strncmp(s.data, "off", 3) == 0) {
        conf->busy_poll = 0;
        return NGX_CONF_OK;
    }

    if (s.len > 2 && ngx_strncmp(s.data + s.len - 2, "us", 2) == 0) {
        v = ngx_atoi(s.data, s.len - 2);

    } else {
        v = ngx_parse_time(&s, 0);
        if (v != NGX_ERROR) {
            v = (v > NGX_IPC_MAX_BUSY_POLL) ? NGX_IPC_MAX_BUSY_POLL + 1
                                            : v * 1000;
        }
    }

    if (v == NGX_ERROR) {
        return (char *) "has an invalid value: use \"off\" or a time "
                        "such as \"50us\" or \"1ms\"";
    }

    if (v > NGX_IPC_MAX_BUSY_POLL) {
        return (char *) "must be at most 10ms";
    }

    conf->busy_poll = (ngx_uint_t) v;

    return NGX_CONF_OK;
}


/* Only logs: the configuration's error_log is open by now. */
static ngx_int_t
ngx_ipc_init_module(ngx_cycle_t *cycle)
{
    ngx_ipc_conf_t  *conf;

    conf = (ngx_ipc_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_ipc_module);

    if (conf->shm != NULL) {
        ngx_log_error(NGX_LOG_INFO, cycle->log, 0,
                      "ngx_ipc: %ui worker slots, ring %uz bytes, "
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
    ngx_uint_t       i;
    ngx_ipc_conf_t  *conf = (ngx_ipc_conf_t *) data;

    if (ngx_ipc_attached && ngx_ipc_worker.conf == conf) {
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


static ngx_int_t
ngx_ipc_init_process(ngx_cycle_t *cycle)
{
    /*
     * Lua's init_worker_by_lua runs before this (modules initialise in load
     * order) and may already have attached through the FFI. Attach here for
     * workers that do not use ngx.ipc in init_worker, so that messages sent
     * to them are received (and counted) rather than left in the rings.
     */
    (void) ngx_ipc_worker_get();

    return NGX_OK;
}


static void
ngx_ipc_exit_process(ngx_cycle_t *cycle)
{
    ngx_connection_t  *c;

    if (!ngx_ipc_attached) {
        return;
    }

    ngx_ipc_worker.endpoint->stop();

    if (ngx_ipc_worker.watch.timer_set) {
        ngx_del_timer(&ngx_ipc_worker.watch);
    }

    /* the eventfd stays open (the mapping's other users hold theirs); only
     * the connection goes, so nginx does not report it as left open */
    c = ngx_ipc_worker.conn;
    ngx_free_connection(c);
    c->fd = (ngx_socket_t) -1;
}


ngx_ipc_worker_t *
ngx_ipc_worker_get(void)
{
    if (ngx_ipc_attached) {
        return &ngx_ipc_worker;
    }

    if (ngx_ipc_attach_failed
        || (ngx_process != NGX_PROCESS_WORKER
            && ngx_process != NGX_PROCESS_SINGLE)
        || ngx_ipc_current_conf == NULL
        || ngx_ipc_current_conf->shm == NULL)
    {
        return NULL;
    }

    return ngx_ipc_attach(ngx_ipc_current_conf);
}


static ngx_ipc_worker_t *
ngx_ipc_attach(ngx_ipc_conf_t *conf)
{
    ngx_uint_t            slot;
    ngx_event_t          *rev;
    ngx_connection_t     *c;
    ngx_ipc_worker_t     *w = &ngx_ipc_worker;
    ngx_ipc::Endpoint    *ep;

    ngx_ipc_attach_failed = 1;

    slot = (ngx_process == NGX_PROCESS_WORKER) ? ngx_worker : 0;

    if (ngx_ipc::check_shm(conf->shm, conf->shm_size) == NULL) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "ngx_ipc: the shared mapping is not valid");
        return NULL;
    }

    if (slot >= conf->nslots) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "ngx_ipc: worker %ui has no slot (%ui slots)",
                      slot, conf->nslots);
        return NULL;
    }

    try {
        ep = new ngx_ipc::Endpoint((ngx_ipc::ShmHeader *) conf->shm,
                                   (uint32_t) slot, conf->fds);
    } catch (...) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "ngx_ipc: no memory for the endpoint");
        return NULL;
    }

    c = ngx_get_connection(conf->fds[slot], ngx_cycle->log);
    if (c == NULL) {
        delete ep;
        return NULL;
    }

    rev = c->read;
    rev->handler = ngx_ipc_wake_handler;
    rev->log = ngx_cycle->log;
    c->data = w;

    /* ngx_close_idle_connections() calls us at graceful shutdown */
    c->idle = 1;

    if (ngx_add_event(rev, NGX_READ_EVENT, 0) == NGX_ERROR) {
        ngx_free_connection(c);
        c->fd = (ngx_socket_t) -1;
        delete ep;
        return NULL;
    }

    w->sema_post = (ngx_ipc_sema_post_pt)
                       dlsym(RTLD_DEFAULT, "ngx_http_lua_ffi_sema_post");
    if (w->sema_post == NULL) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "ngx_ipc: ngx_http_lua_ffi_sema_post() not found: "
                      "is ngx_http_lua_module loaded?");
    }

    ep->set_logger(ngx_ipc_core_log, NULL);
    ep->set_alive_check(ngx_ipc_alive);
    ep->start((int32_t) ngx_pid);

    /* marks the slot asleep (takes nothing): the first message wakes us */
    (void) ep->receive(NULL, 0);

    w->conf = conf;
    w->endpoint = ep;
    w->conn = c;

    w->poll.handler = ngx_ipc_poll_handler;
    w->poll.data = w;
    w->poll.log = ngx_cycle->log;

    w->yield.handler = ngx_ipc_yield_handler;
    w->yield.data = w;
    w->yield.log = ngx_cycle->log;

    ngx_ipc_attach_failed = 0;
    ngx_ipc_attached = 1;

    /* messages may have waited for this slot since before we started */
    ngx_post_event(rev, &ngx_posted_events);

    return w;
}


static void
ngx_ipc_wake_handler(ngx_event_t *rev)
{
    int                  n;
    uint64_t             count;
    ngx_connection_t    *c = (ngx_connection_t *) rev->data;
    ngx_ipc_worker_t    *w = (ngx_ipc_worker_t *) c->data;
    ngx_ipc::Delivery    batch[64];

    if (c->close) {
        c->close = 0;

        if (w->exiting) {
            /* worker_shutdown_timeout: nginx closes everything now */
            w->exit.release = 1;
            w->endpoint->wake_self();
            return;
        }

        /*
         * Graceful shutdown (ngx_close_idle_connections): the worker goes on
         * receiving until nothing but the Lua light threads' own waits keeps
         * it alive (rule 8); the cancelable watch timer tells when. We are
         * called outside the event loop here, so the semaphore is posted
         * from the next pass, through our own eventfd.
         */
        c->idle = 0;
        w->exiting = 1;
        w->watch.handler = ngx_ipc_shutdown_watch;
        w->watch.data = w;
        w->watch.log = ngx_cycle->log;
        w->watch.cancelable = 1;
        ngx_add_timer(&w->watch, 10);
        w->endpoint->wake_self();
        return;
    }

    if (read(c->fd, &count, sizeof(count)) == -1 && ngx_errno != NGX_EAGAIN) {
        ngx_ipc_log_limited(NGX_LOG_ALERT, ngx_errno,
                            "read() from the wake-up eventfd failed");
    }

    w->endpoint->flush();

    if (w->space_sema != NULL) {
        /*
         * A send waits for room (ipc.send with "wait"): a receiver freed
         * ring space, which is what writes our eventfd while we hold a
         * backlog, and flush() moved what it could. The waiter tries
         * again; if its destination is still full it registers again.
         */
        void  *sema = w->space_sema;

        w->space_sema = NULL;
        w->sema_post(sema, 1);
    }

    if (w->sema != NULL) {
        /*
         * Not armed means whoever woke us cleared the flag: the reader must
         * run (and re-arm) even if the inbox is empty now, or no sender
         * would ever wake it again. A spurious pass costs one empty recv.
         */
        if (w->exit.release || !w->endpoint->armed()
            || w->endpoint->inbox_pending())
        {
            w->sema_post(w->sema, 1);
        }

        return;
    }

    /*
     * Nobody in this worker has called ngx.ipc: it has no handler for
     * anything. Rule 7: such messages are dropped and counted (keeping them
     * would fill the senders' backlogs, and then every broadcast of every
     * worker would be refused). Handlers registered in init_worker_by_lua*
     * start the dispatcher before this handler ever runs.
     */

    if (!w->endpoint->inbox_pending()) {
        return;
    }

    if (!w->no_dispatcher_logged) {
        w->no_dispatcher_logged = 1;
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "ngx_ipc: messages arrived in a worker that has not "
                      "called ngx.ipc; they are dropped and counted "
                      "(register handlers in init_worker_by_lua*)");
    }

    while ((n = w->endpoint->receive(batch, 64)) > 0) {
        w->endpoint->stats().dropped += n;
    }
}


static uint64_t
ngx_ipc_now_ns(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000000 + (uint64_t) ts.tv_nsec;
}


/*
 * Lets the event loop run once, then posts sema: an event posted to
 * ngx_posted_next_events runs after the next epoll_wait(), which nginx then
 * calls with a zero timeout. (ngx.sleep(0) would do, but without
 * OpenResty's delayed-events patch it logs a warning every time.)
 */
void
ngx_ipc_yield(ngx_ipc_worker_t *w, void *sema)
{
    w->yield_sema = sema;
    ngx_post_event(&w->yield, &ngx_posted_next_events);
}


static void
ngx_ipc_yield_handler(ngx_event_t *ev)
{
    void              *sema;
    ngx_ipc_worker_t  *w = (ngx_ipc_worker_t *) ev->data;

    sema = w->yield_sema;
    w->yield_sema = NULL;

    if (sema != NULL) {
        w->sema_post(sema, 1);
    }
}


/*
 * Busy polling. Waking a process asleep in epoll_wait() costs a few
 * microseconds on bare metal and tens of microseconds on a VM whose idle
 * vCPU halts: more than everything else a message costs. So after it moved
 * messages, a worker keeps watching its inbox for ipc_busy_poll: the slot is
 * disarmed (senders skip the eventfd write), and a posted event re-posts
 * itself to ngx_posted_next_events, which makes every pass of the event loop
 * call epoll_wait() with a zero timeout: connections and timers are served
 * as usual meanwhile. When the time is up the slot is armed again, with the
 * same handshake as receive().
 *
 * Polling only pays while the worker has a CPU to itself. Each pass yields
 * the CPU to any runnable process; if sched_yield() keeps the worker off its
 * CPU for a time slice (250 us or more), three times within 20 ms, other
 * processes want the CPUs: messages would wait for the scheduler to give it
 * back, while an eventfd wake-up gets it run at once. The poll ends, and
 * the worker does not poll again for 100 ms. (A single long yield can be
 * the VM's host taking the vCPU away: that happens here a few times a
 * second and says nothing about other processes.)
 */
void
ngx_ipc_busy_poll(ngx_ipc_worker_t *w)
{
    uint64_t  now;

    if (w->polling) {
        /* the reader's receive() armed the slot again: the poll watches */
        w->endpoint->disarm();
        return;
    }

    if (!w->active || w->conf->busy_poll == 0 || w->exiting) {
        return;
    }

    w->active = 0;
    now = ngx_ipc_now_ns();

    if (now < w->poll_backoff) {
        return;
    }

    w->polling = 1;
    w->poll_start = now;
    w->poll_until = now + (uint64_t) w->conf->busy_poll * 1000;
    w->endpoint->disarm();
    ngx_post_event(&w->poll, &ngx_posted_next_events);
}


void
ngx_ipc_busy_poll_sent(ngx_ipc_worker_t *w)
{
    w->active = 1;

    /* (while a poll runs, the flag extends it: nothing more to do) */
    if (!w->polling) {
        ngx_ipc_busy_poll(w);
    }
}


/* The poll saw records: the reader drains them (or, in a worker without
 * one, the wake-up handler drops and counts them). */
static void
ngx_ipc_poll_found(ngx_ipc_worker_t *w)
{
    if (w->sema != NULL) {
        w->sema_post(w->sema, 1);

    } else {
        ngx_post_event(w->conn->read, &ngx_posted_events);
    }
}


/* A poll is over: its time goes to the worker's busy_poll_ns counter. */
static void
ngx_ipc_poll_stop(ngx_ipc_worker_t *w)
{
    w->polling = 0;
    w->endpoint->counters().busy_poll_ns += ngx_ipc_now_ns() - w->poll_start;
}


/* Arms the slot again: from now on senders wake the worker. */
static void
ngx_ipc_poll_end(ngx_ipc_worker_t *w)
{
    ngx_ipc_poll_stop(w);

    if (w->endpoint->rearm()) {
        ngx_ipc_poll_found(w);
    }
}


static void
ngx_ipc_poll_handler(ngx_event_t *ev)
{
    uint64_t           now;
    ngx_ipc_worker_t  *w = (ngx_ipc_worker_t *) ev->data;

    if (!w->polling) {
        return;
    }

    if (w->endpoint->inbox_pending()) {
        /* the reader drains it; its empty receive() starts a new poll */
        ngx_ipc_poll_stop(w);
        w->active = 1;
        ngx_ipc_poll_found(w);

        return;
    }

    now = ngx_ipc_now_ns();

    if (now >= w->poll_until) {
        if (!w->active || w->exiting) {
            ngx_ipc_poll_end(w);
            return;
        }

        /* it sent meanwhile: a reply may be on its way */
        w->active = 0;
        w->poll_until = now + (uint64_t) w->conf->busy_poll * 1000;
    }

    /* a polling worker never keeps a runnable process off its CPU */
    (void) sched_yield();

    if (ngx_ipc_now_ns() - now > NGX_IPC_POLL_STOLEN) {
        /*
         * Another process ran a time slice meanwhile, or the VM's host
         * took the vCPU for a while: a few of these close together mean
         * the former.
         */
        if (now - w->poll_strike_time > NGX_IPC_POLL_STRIKE_SPAN) {
            w->poll_strike_time = now;
            w->poll_strikes = 0;
        }

        if (++w->poll_strikes >= NGX_IPC_POLL_STRIKES) {
            w->poll_strikes = 0;
            w->poll_backoff = now + NGX_IPC_POLL_BACKOFF;
            ngx_ipc_poll_end(w);
            return;
        }
    }

    ngx_post_event(ev, &ngx_posted_next_events);
}


/*
 * While the worker shuts down: once the only timers that keep it alive are
 * the semaphore waits of ngx.ipc's light threads, let them return.
 */
static void
ngx_ipc_shutdown_watch(ngx_event_t *ev)
{
    ngx_ipc_worker_t  *w = (ngx_ipc_worker_t *) ev->data;

    if (ngx_ipc_live_timers() <= (ngx_uint_t) w->exit.waits) {
        w->exit.release = 1;

        if (w->sema != NULL) {
            w->sema_post(w->sema, 1);
        }

        return;
    }

    ngx_add_timer(ev, 20);
}


/* The timers that keep an exiting worker alive (ngx_event_no_timers_left) */
static ngx_uint_t
ngx_ipc_live_timers(void)
{
    ngx_uint_t          n;
    ngx_event_t        *ev;
    ngx_rbtree_node_t  *node, *root, *sentinel;

    sentinel = ngx_event_timer_rbtree.sentinel;
    root = ngx_event_timer_rbtree.root;

    if (root == sentinel) {
        return 0;
    }

    n = 0;

    for (node = ngx_rbtree_min(root, sentinel);
         node != NULL;
         node = ngx_rbtree_next(&ngx_event_timer_rbtree, node))
    {
        ev = ngx_rbtree_data(node, ngx_event_t, timer);

        if (!ev->cancelable) {
            n++;
        }
    }

    return n;
}


void
ngx_ipc_log_limited(ngx_uint_t level, ngx_err_t err, const char *msg)
{
    static time_t      second;
    static ngx_uint_t  logged, suppressed;

    if (ngx_time() != second) {
        if (suppressed) {
            ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                          "ngx_ipc: %ui similar log lines suppressed",
                          suppressed);
        }

        second = ngx_time();
        logged = 0;
        suppressed = 0;
    }

    if (logged >= 5) {
        suppressed++;
        return;
    }

    logged++;
    ngx_log_error(level, ngx_cycle->log, err, "ngx_ipc: %s", msg);
}


/*
 * Asked by the core when a destination's backlog is full. While this
 * worker's generation is current, the master respawns a dead worker into
 * its slot and the successor receives what waits for it (rule 4): alive.
 * Once it is exiting (an old generation), a dead slot is gone for good.
 */
static bool
ngx_ipc_alive(int32_t pid)
{
    return !ngx_exiting || ngx_ipc::Endpoint::process_alive(pid);
}


static void
ngx_ipc_core_log(void *ctx, const char *msg, int err)
{
    ngx_ipc_log_limited(err ? NGX_LOG_ALERT : NGX_LOG_ERR, err, msg);
}
