/*
 * ngx_ipc reload bridge: how its processes wake each other and tell who is
 * still alive (docs/ARCHITECTURE.md §12).
 *
 * Workers forked before one another share no fd, so a bridge slot's
 * process is woken by a datagram to the unix socket its claimant bound,
 * named after its claim: "<dir>/<generation>.<pid>", in the master's
 * private directory (ngx_ipc_bridge_dir.cpp): no process of another user
 * can bind a name there, send to one, or list them. A worker binds its
 * name before it
 * writes its claim and clears the claim before it closes the socket, so a
 * live claim's name always takes datagrams; a name that refuses one
 * (ECONNREFUSED: the socket file of a process that died; ENOENT: none)
 * proves its claimant gone, and so does kill(pid, 0) failing with ESRCH.
 * A worker removes its own name at exit; the master removes the names
 * crashed workers left, and the directory, when it exits.
 *
 * Owns: this worker's socket and name (ngx_ipc_bridge_t's conn), the
 * wake-up datagrams and their retries (retry, retry_ev), the probes.
 */

#include "ngx_ipc_bridge.h"

#include <sys/socket.h>
#include <sys/un.h>


static void ngx_ipc_bridge_name(uint64_t owner, struct sockaddr_un *sa,
    socklen_t *len);
static void ngx_ipc_bridge_bind_failed(ngx_err_t err, const char *call,
    const char *path);
static ngx_int_t ngx_ipc_bridge_send_wake(uint64_t owner);


/*
 * In a worker, before it claims a slot: its socket, bound to the name its
 * claim will give (so that a live claim's name always takes datagrams),
 * in a connection for the event loop. A file of that name can only be the
 * socket of a process of the same generation with the same PID, dead
 * since: only a name's holder ever removes it, so it goes first.
 */
ngx_connection_t *
ngx_ipc_bridge_bind(uint64_t owner)
{
    int                 fd;
    socklen_t           len;
    ngx_err_t           err;
    ngx_connection_t   *c;
    struct sockaddr_un  sa;

    fd = socket(AF_UNIX, SOCK_DGRAM|SOCK_NONBLOCK|SOCK_CLOEXEC, 0);
    if (fd == -1) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, ngx_errno,
                      "ngx_ipc: socket() for the reload bridge failed");
        return NULL;
    }

    ngx_ipc_bridge_name(owner, &sa, &len);

    if (unlink(sa.sun_path) == -1 && ngx_errno != NGX_ENOENT) {
        err = ngx_errno;
        ngx_ipc_bridge_bind_failed(err, "unlink", sa.sun_path);
        (void) close(fd);
        return NULL;
    }

    if (bind(fd, (struct sockaddr *) &sa, len) == -1) {
        err = ngx_errno;
        ngx_ipc_bridge_bind_failed(err, "bind", sa.sun_path);
        (void) close(fd);
        return NULL;
    }

    c = ngx_get_connection(fd, ngx_cycle->log);
    if (c == NULL) {
        (void) close(fd);

        if (unlink(sa.sun_path) == -1) {
            ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, ngx_errno,
                          "ngx_ipc: unlink(\"%s\") failed", sa.sun_path);
        }

        return NULL;
    }

    return c;
}


/* One line, then the worker goes on with its own configuration only. */
static void
ngx_ipc_bridge_bind_failed(ngx_err_t err, const char *call, const char *path)
{
    if (err == NGX_EACCES || err == NGX_EPERM) {
        /* the directory is the user's that the first workers ran as */
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, err,
                      "ngx_ipc: %s(\"%s\") failed: the reload bridge's "
                      "directory belongs to the user of the workers nginx "
                      "started with, and a reload that changes \"user\" "
                      "keeps it; this worker reaches only the workers of "
                      "its own configuration until nginx is restarted",
                      call, path);
        return;
    }

    ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, err,
                  "ngx_ipc: %s(\"%s\") for the reload bridge failed: this "
                  "worker reaches only the workers of its own configuration",
                  call, path);
}


/* At exit, once the claim is cleared: the socket, then its name. */
void
ngx_ipc_bridge_unbind(ngx_ipc_bridge_t *b)
{
    socklen_t           len;
    ngx_connection_t   *c = b->conn;
    struct sockaddr_un  sa;

    if (c == NULL) {
        return;
    }

    b->conn = NULL;

    if (close(c->fd) == -1) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, ngx_errno,
                      "ngx_ipc: close() the reload bridge socket failed");
    }

    ngx_free_connection(c);
    c->fd = (ngx_socket_t) -1;

    ngx_ipc_bridge_name(b->owner, &sa, &len);

    if (unlink(sa.sun_path) == -1) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, ngx_errno,
                      "ngx_ipc: unlink(\"%s\") failed", sa.sun_path);
    }
}


/* "<dir>/<generation>.<pid>" of a claim's owner word. */
static void
ngx_ipc_bridge_name(uint64_t owner, struct sockaddr_un *sa, socklen_t *len)
{
    u_char  *p;

    ngx_memzero(sa, sizeof(struct sockaddr_un));
    sa->sun_family = AF_UNIX;

    /* at most 52 bytes of 108; the memzero ends it with a NUL */
    p = ngx_snprintf((u_char *) sa->sun_path, sizeof(sa->sun_path) - 1,
                     "%s/%uD.%uD", ngx_ipc_bridge_dir,
                     (uint32_t) (owner >> 32),
                     (uint32_t) (owner & 0xffffffffU));

    *len = (socklen_t) (offsetof(struct sockaddr_un, sun_path)
                        + (p - (u_char *) sa->sun_path) + 1);
}


/* Sends the socket of claim `owner` an empty datagram: NGX_OK;
 * NGX_DECLINED if no process holds the name (ECONNREFUSED: the socket file
 * of a process that died; ENOENT: no file); NGX_AGAIN if it could not go
 * now (EAGAIN: the reader's queue is full, or ours is, each datagram being
 * charged to us until its reader takes it). */
static ngx_int_t
ngx_ipc_bridge_send_wake(uint64_t owner)
{
    socklen_t           len;
    struct sockaddr_un  sa;

    if (ngx_ipc_bridge.conn == NULL) {
        return NGX_OK;
    }

    ngx_ipc_bridge_name(owner, &sa, &len);

    for ( ;; ) {
        if (sendto(ngx_ipc_bridge.conn->fd, "", 0, 0,
                   (struct sockaddr *) &sa, len) == 0)
        {
            return NGX_OK;
        }

        if (ngx_errno == NGX_EINTR) {
            continue;
        }

        if (ngx_errno == ECONNREFUSED || ngx_errno == NGX_ENOENT) {
            return NGX_DECLINED;
        }

        if (ngx_errno == NGX_EAGAIN) {
            return NGX_AGAIN;
        }

        ngx_ipc_log_limited(NGX_LOG_ALERT, ngx_errno,
                            "sendto() to the reload bridge failed");

        return NGX_AGAIN;
    }
}


/* Whether the process that wrote claim `owner` is gone: its PID names no
 * process, or its name refuses a datagram (a live claimant's takes it). */
bool
ngx_ipc_bridge_dead(uint64_t owner)
{
    int32_t  pid;

    pid = (int32_t) (owner & 0xffffffffU);

    if (pid <= 0 || (kill(pid, 0) == -1 && ngx_errno == ESRCH)) {
        return true;
    }

    return ngx_ipc_bridge_send_wake(owner) == NGX_DECLINED;
}


/* The bridge endpoint's waker (Wakeup::set_waker). */
void
ngx_ipc_bridge_wake(void *ctx, uint32_t k)
{
    uint64_t  o;

    o = ngx_ipc_bridge_page->owner[k].load(std::memory_order_acquire);
    if (o == 0) {
        return;                  /* nobody holds it: nobody to wake */
    }

    switch (ngx_ipc_bridge_send_wake(o)) {

    case NGX_DECLINED:
        ngx_ipc_bridge_forget(k, o);
        break;

    case NGX_AGAIN:
        /*
         * We cleared its flag, so this wake-up is ours to deliver: no other
         * sender will send one. Send it again in 1 ms, and until it goes.
         */
        ngx_ipc_bridge.retry[k] = 1;

        if (!ngx_ipc_bridge.retry_ev.timer_set) {
            ngx_add_timer(&ngx_ipc_bridge.retry_ev, 1);
        }

        break;

    default:
        break;
    }
}


void
ngx_ipc_bridge_retry(ngx_event_t *ev)
{
    uint32_t           k;
    uint64_t           o;
    ngx_uint_t         left;
    ngx_ipc_bridge_t  *b = (ngx_ipc_bridge_t *) ev->data;

    left = 0;

    for (k = 0; k < ngx_ipc_bridge_nslots; k++) {
        if (!b->retry[k]) {
            continue;
        }

        o = ngx_ipc_bridge_page->owner[k].load(std::memory_order_acquire);

        switch (o == 0 ? NGX_OK : ngx_ipc_bridge_send_wake(o)) {

        case NGX_DECLINED:
            ngx_ipc_bridge_forget(k, o);
            b->retry[k] = 0;
            break;

        case NGX_AGAIN:
            left++;
            break;

        default:
            b->retry[k] = 0;
            break;
        }
    }

    if (left > 0) {
        ngx_add_timer(ev, 1);
    }
}


/* Whether slot k's claimant still runs: its name still takes datagrams
 * and its PID is a process. */
bool
ngx_ipc_bridge_probe(uint32_t k)
{
    uint64_t  o;
    int32_t   pid;

    o = ngx_ipc_bridge_page->owner[k].load(std::memory_order_acquire);
    if (o == 0) {
        return false;
    }

    pid = (int32_t) (o & 0xffffffffU);

    if (ngx_ipc_bridge_send_wake(o) != NGX_DECLINED
        && !(kill(pid, 0) == -1 && ngx_errno == ESRCH))
    {
        return true;
    }

    ngx_ipc_bridge_forget(k, o);

    return false;
}


/* The core's alive check for slot k, whose backlog is full: pid must
 * still hold its claim, and run. */
bool
ngx_ipc_bridge_alive(void *ctx, uint32_t k, int32_t pid)
{
    uint64_t  o;

    o = ngx_ipc_bridge_page->owner[k].load(std::memory_order_acquire);

    return (int32_t) (o & 0xffffffffU) == pid && ngx_ipc_bridge_probe(k);
}


/* The socket said the bridge's inbox has mail or a ring has room. */
void
ngx_ipc_bridge_handler(ngx_event_t *rev)
{
    int                  i;
    u_char               buf[64];
    ngx_connection_t    *c = (ngx_connection_t *) rev->data;
    ngx_ipc_worker_t    *w = (ngx_ipc_worker_t *) c->data;
    ngx_ipc_bridge_t    *b = w->bridge;

    if (b == NULL) {
        return;
    }

    /* each datagram is one wake-up: read them all (bounded; the next
     * ones raise the event again) */
    for (i = 0; i < 1024; i++) {
        if (recv(c->fd, buf, sizeof(buf), 0) == -1) {
            if (ngx_errno != NGX_EAGAIN && ngx_errno != NGX_EINTR) {
                ngx_ipc_log_limited(NGX_LOG_ALERT, ngx_errno,
                                    "recv() from the reload bridge failed");
            }

            break;
        }
    }

    b->endpoint->flush_ready();
    ngx_ipc_space_freed(w);
    ngx_ipc_backlog_watch(w);

    b->dirty = 1;

    if (w->sema != NULL) {
        w->sema_post(w->sema, 1);
        return;
    }

    ngx_ipc_early_receive(w, b->endpoint);
    b->dirty = 0;
}
