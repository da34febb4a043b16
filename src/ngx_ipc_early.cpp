/*
 * ngx_ipc early messages (ipc_early_messages): what reaches a worker before
 * its Lua code first calls ngx.ipc. A worker attaches when it starts (so
 * that senders never wait on it), but its Lua may start ngx.ipc later: from
 * a timer, after a fetch at startup, at its first request (resty.events'
 * "slow client" calls init_worker() 5 s late). For up to TIME after the
 * worker started, what arrives meanwhile is copied out of the inbox into
 * the worker's own memory, up to SIZE bytes, and handed to the Lua
 * dispatcher first, in arrival order, when it starts. The senders never
 * see it: the inbox is read at once, as a running worker reads it. Past
 * SIZE, or once TIME is up with no ngx.ipc, messages are dropped and
 * counted in "unhandled" (rule 7), each with one warn line per worker.
 *
 * Owns: ngx_ipc_early_t (in ngx_ipc_worker_t), the parsing of the
 * directive's value, and the drop of what no dispatcher takes.
 */

#include "ngx_ipc_module.h"


/* what a held message costs beyond its bytes */
#define NGX_IPC_EARLY_OVERHEAD  sizeof(ngx_ipc_early_msg_t)


struct ngx_ipc_early_msg_s {
    ngx_ipc_early_msg_t       *next;
    ngx_ipc::Delivery          d;      /* name and data: the bytes after */
};


static void ngx_ipc_early_expire(ngx_event_t *ev);
static void ngx_ipc_early_free(ngx_ipc_early_msg_t *m);
static bool ngx_ipc_early_keep(ngx_ipc_worker_t *w,
    const ngx_ipc::Delivery *d);
static void ngx_ipc_early_drop(ngx_ipc_worker_t *w,
    const ngx_ipc::Delivery *d, ngx_uint_t n);


/* "ipc_early_messages off | TIME [SIZE];" */
char *
ngx_ipc_set_early(ngx_conf_t *cf, ngx_command_t *cmd, void *data)
{
    ngx_str_t       *value;
    ngx_msec_t       msec;
    ssize_t          size;
    ngx_ipc_conf_t  *conf = (ngx_ipc_conf_t *) data;

    if (conf->early_msec != NGX_CONF_UNSET_MSEC) {
        return (char *) "is duplicate";
    }

    value = (ngx_str_t *) cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        if (cf->args->nelts > 2) {
            return (char *) "takes no size after \"off\"";
        }

        conf->early_msec = 0;
        conf->early_size = 0;
        return NGX_CONF_OK;
    }

    msec = ngx_parse_time(&value[1], 0);
    if (msec == (ngx_msec_t) NGX_ERROR || msec > NGX_IPC_EARLY_MAX_MSEC) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid time \"%V\" in \"ipc_early_messages\" "
                           "(off, or a time up to 1h)", &value[1]);
        return (char *) NGX_CONF_ERROR;
    }

    conf->early_msec = msec;

    if (cf->args->nelts > 2) {
        size = ngx_parse_size(&value[2]);
        if (size == NGX_ERROR || size == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid size \"%V\" in \"ipc_early_messages\"",
                               &value[2]);
            return (char *) NGX_CONF_ERROR;
        }

        conf->early_size = (size_t) size;
    }

    return NGX_CONF_OK;
}


/* At attach: the hold starts with the worker (off: none). */
void
ngx_ipc_early_init(ngx_ipc_worker_t *w)
{
    ngx_ipc_early_t  *e = &w->early;

    e->expire.handler = ngx_ipc_early_expire;
    e->expire.data = w;
    e->expire.log = ngx_cycle->log;
    e->expire.cancelable = 1;    /* never holds up a graceful exit */

    if (w->conf->early_msec != 0 && w->conf->early_size != 0) {
        e->holding = 1;
        ngx_add_timer(&e->expire, w->conf->early_msec);
    }
}


/*
 * The Lua dispatcher started (ngx_ipc_ffi_start): the hold ends, and what
 * it kept is taken first. True if it kept anything (post the dispatcher).
 */
bool
ngx_ipc_early_end(ngx_ipc_worker_t *w)
{
    ngx_ipc_early_t  *e = &w->early;

    e->holding = 0;

    if (e->expire.timer_set) {
        ngx_del_timer(&e->expire);
    }

    return e->head != NULL;
}


/*
 * A wake-up in a worker with no dispatcher: what ep's inbox holds is kept
 * while the hold lasts, else dropped and counted (rule 7). Keeping it in
 * the inbox instead would fill the senders' backlogs, and then every
 * broadcast of every worker would be refused.
 */
void
ngx_ipc_early_receive(ngx_ipc_worker_t *w, ngx_ipc::Endpoint *ep)
{
    int                 i, n;
    ngx_ipc::Delivery   batch[NGX_IPC_FFI_BATCH];

    while ((n = ep->receive(batch, NGX_IPC_FFI_BATCH)) > 0) {
        for (i = 0; i < n; i++) {
            if (!ngx_ipc_early_keep(w, &batch[i])) {
                ngx_ipc_early_drop(w, &batch[i], 1);
            }
        }
    }
}


/* Hands up to max held messages to the dispatcher, oldest first; they stay
 * valid until ngx_ipc_early_release(). */
int
ngx_ipc_early_take(ngx_ipc_worker_t *w, ngx_ipc::Delivery *out, int max)
{
    int                   n = 0;
    ngx_ipc_early_t      *e = &w->early;
    ngx_ipc_early_msg_t  *m, **last = &e->taken;

    while (*last != NULL) {
        last = &(*last)->next;
    }

    while (n < max && (m = e->head) != NULL) {
        e->head = m->next;
        e->bytes -= NGX_IPC_EARLY_OVERHEAD + m->d.name_len + m->d.data_len;
        m->next = NULL;
        *last = m;
        last = &m->next;
        out[n++] = m->d;
    }

    if (e->head == NULL) {
        e->tail = NULL;
    }

    return n;
}


void
ngx_ipc_early_release(ngx_ipc_worker_t *w)
{
    ngx_ipc_early_free(w->early.taken);
    w->early.taken = NULL;
}


static bool
ngx_ipc_early_keep(ngx_ipc_worker_t *w, const ngx_ipc::Delivery *d)
{
    size_t                cost;
    u_char               *p;
    ngx_ipc_early_t      *e = &w->early;
    ngx_ipc_early_msg_t  *m;

    if (!e->holding || w->exiting) {
        return false;
    }

    cost = NGX_IPC_EARLY_OVERHEAD + d->name_len + d->data_len;

    if (cost > w->conf->early_size - e->bytes) {
        if (!e->full_logged) {
            e->full_logged = 1;
            ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                          "ngx_ipc: message \"%*s\" (%uL bytes) does not "
                          "fit in what this worker keeps until its Lua "
                          "calls ngx.ipc (ipc_early_messages: %uz bytes, "
                          "%uz used): it is dropped and counted in "
                          "\"unhandled\", and so is every later one that "
                          "does not fit",
                          (size_t) ngx_min(d->name_len, 256), d->name,
                          (uint64_t) d->data_len, w->conf->early_size,
                          e->bytes);
        }

        return false;
    }

    m = (ngx_ipc_early_msg_t *) ngx_alloc(sizeof(ngx_ipc_early_msg_t)
                                          + d->name_len + d->data_len,
                                          ngx_cycle->log);
    if (m == NULL) {
        return false;
    }

    p = (u_char *) (m + 1);
    m->next = NULL;
    m->d = *d;
    m->d.name = p;
    p = ngx_cpymem(p, d->name, d->name_len);
    m->d.data = p;
    if (d->data_len != 0) {
        ngx_memcpy(p, d->data, d->data_len);
    }

    if (e->tail != NULL) {
        e->tail->next = m;
    } else {
        e->head = m;
    }

    e->tail = m;
    e->bytes += cost;

    return true;
}


/* The hold's time is up: what no dispatcher took is dropped. */
static void
ngx_ipc_early_expire(ngx_event_t *ev)
{
    ngx_uint_t            n = 0;
    ngx_ipc_worker_t     *w = (ngx_ipc_worker_t *) ev->data;
    ngx_ipc_early_t      *e = &w->early;
    ngx_ipc_early_msg_t  *m;

    e->holding = 0;

    if (w->sema != NULL || e->head == NULL) {
        return;
    }

    for (m = e->head; m != NULL; m = m->next) {
        n++;
    }

    ngx_ipc_early_drop(w, &e->head->d, n);

    ngx_ipc_early_free(e->head);
    e->head = NULL;
    e->tail = NULL;
    e->bytes = 0;
}


/* n messages, the first of them d, that no handler will take */
static void
ngx_ipc_early_drop(ngx_ipc_worker_t *w, const ngx_ipc::Delivery *d,
    ngx_uint_t n)
{
    /* no Lua runs here that could count it (stats().unhandled) */
    w->endpoint->counters().lua.unhandled += n;

    if (w->no_dispatcher_logged) {
        return;
    }

    w->no_dispatcher_logged = 1;

    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                  "ngx_ipc: messages arrived in a worker whose Lua has not "
                  "called ngx.ipc (the first: \"%*s\"); no handler takes "
                  "them: they are dropped and counted in \"unhandled\" "
                  "(a worker keeps them for ipc_early_messages' %M ms "
                  "after it starts; register handlers in "
                  "init_worker_by_lua*, or raise that time)",
                  (size_t) ngx_min(d->name_len, 256), d->name,
                  w->conf->early_msec);
}


static void
ngx_ipc_early_free(ngx_ipc_early_msg_t *m)
{
    ngx_ipc_early_msg_t  *next;

    for ( /* void */ ; m != NULL; m = next) {
        next = m->next;
        ngx_free(m);
    }
}
