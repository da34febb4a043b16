/*
 * ngx_ipc busy polling (ipc_busy_poll), behind three calls: the worker's
 * sends and receives report to it (ngx_ipc_busy_poll_after_send,
 * _after_receive, _on_empty) and it decides when to watch the inbox and
 * when to arm the slot again. Nothing else touches its state.
 *
 * Owns: ngx_ipc_busy_poll_t (in ngx_ipc_worker_t), the slot's
 * busy_poll_ns counter, and the parsing of the directive's value.
 */

#include "ngx_ipc_module.h"

#include <sched.h>


static void ngx_ipc_poll_start(ngx_ipc_worker_t *w);
static void ngx_ipc_poll_found(ngx_ipc_worker_t *w);
static void ngx_ipc_poll_handler(ngx_event_t *ev);
static uint64_t ngx_ipc_now_ns(void);
static void ngx_ipc_poll_end(ngx_ipc_worker_t *w);
static void ngx_ipc_poll_stop(ngx_ipc_worker_t *w);


/* ipc_busy_poll's largest value: a poll holds the worker's CPU this long */
#define NGX_IPC_MAX_BUSY_POLL      10000
/* a sched_yield() that kept the worker off its CPU this long (ns): other
 * processes want the CPUs (a VM's own hiccups stay well below) */
#define NGX_IPC_POLL_STOLEN        250000
/* so many such yields within this time (ns), */
#define NGX_IPC_POLL_STRIKES       3
#define NGX_IPC_POLL_STRIKE_SPAN   20000000
/* and then no poll for this long (ns) */
#define NGX_IPC_POLL_BACKOFF       100000000


static uint64_t
ngx_ipc_now_ns(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000000 + (uint64_t) ts.tv_nsec;
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
static void
ngx_ipc_poll_start(ngx_ipc_worker_t *w)
{
    uint64_t  now;

    if (w->busy.polling) {
        /* the reader's receive() armed the slot again: the poll watches */
        w->endpoint->disarm();
        return;
    }

    if (!w->busy.active || w->conf->busy_poll == 0 || w->exiting) {
        return;
    }

    w->busy.active = 0;
    now = ngx_ipc_now_ns();

    if (now < w->busy.backoff) {
        return;
    }

    w->busy.polling = 1;
    w->busy.start = now;
    w->busy.until = now + (uint64_t) w->conf->busy_poll * 1000;
    w->endpoint->disarm();
    ngx_post_event(&w->busy.event, &ngx_posted_next_events);
}


void
ngx_ipc_busy_poll_init(ngx_ipc_worker_t *w)
{
    w->busy.event.handler = ngx_ipc_poll_handler;
    w->busy.event.data = w;
    w->busy.event.log = ngx_cycle->log;
}


/* After a successful send: a reply may follow, poll for it. */
void
ngx_ipc_busy_poll_after_send(ngx_ipc_worker_t *w)
{
    w->busy.active = 1;

    /* (while a poll runs, the flag extends it: nothing more to do) */
    if (!w->busy.polling) {
        ngx_ipc_poll_start(w);
    }
}


/* The reader took n > 0 messages: the worker is active. */
void
ngx_ipc_busy_poll_after_receive(ngx_ipc_worker_t *w, int n)
{
    if (n > 0) {
        w->busy.active = 1;
    }
}


/* The reader found the inbox empty: watch it a while before sleeping. */
void
ngx_ipc_busy_poll_on_empty(ngx_ipc_worker_t *w)
{
    ngx_ipc_poll_start(w);
}


/* While a poll watches the inbox, a take leaves the slot disarmed. */
bool
ngx_ipc_busy_poll_watching(const ngx_ipc_worker_t *w)
{
    return w->busy.polling;
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
    w->busy.polling = 0;
    w->endpoint->counters().busy_poll_ns += ngx_ipc_now_ns() - w->busy.start;
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

    if (!w->busy.polling) {
        return;
    }

    if (w->endpoint->inbox_pending()) {
        /* the reader drains it; its empty receive() starts a new poll */
        ngx_ipc_poll_stop(w);
        w->busy.active = 1;
        ngx_ipc_poll_found(w);

        return;
    }

    now = ngx_ipc_now_ns();

    if (now >= w->busy.until) {
        if (!w->busy.active || w->exiting) {
            ngx_ipc_poll_end(w);
            return;
        }

        /* it sent meanwhile: a reply may be on its way */
        w->busy.active = 0;
        w->busy.until = now + (uint64_t) w->conf->busy_poll * 1000;
    }

    /* a polling worker never keeps a runnable process off its CPU */
    (void) sched_yield();

    if (ngx_ipc_now_ns() - now > NGX_IPC_POLL_STOLEN) {
        /*
         * Another process ran a time slice meanwhile, or the VM's host
         * took the vCPU for a while: a few of these close together mean
         * the former.
         */
        if (now - w->busy.strike_time > NGX_IPC_POLL_STRIKE_SPAN) {
            w->busy.strike_time = now;
            w->busy.strikes = 0;
        }

        if (++w->busy.strikes >= NGX_IPC_POLL_STRIKES) {
            w->busy.strikes = 0;
            w->busy.backoff = now + NGX_IPC_POLL_BACKOFF;
            ngx_ipc_poll_end(w);
            return;
        }
    }

    ngx_post_event(ev, &ngx_posted_next_events);
}


/* ipc_busy_poll off | <time>: "50us", "1ms", "0" (nginx time units plus us) */
char *
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
