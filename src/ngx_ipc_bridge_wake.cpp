/*
 * ngx_ipc reload bridge: how its processes wake each other and tell who is
 * still alive (docs/ARCHITECTURE.md §12).
 *
 * Workers forked before one another share no fd, so a bridge slot's
 * process is woken by a datagram to the unix socket its claimant bound,
 * named after its claim: "<dir>/<generation>.<pid>". The directory is
 * made by the master at its first configuration (mkdtemp, mode 0700) and
 * given to the workers' user: no process of another user can bind a name
 * there, send to one, or list them. A worker binds its name before it
 * writes its claim and clears the claim before it closes the socket, so a
 * live claim's name always takes datagrams; a name that refuses one
 * (ECONNREFUSED: the socket file of a process that died; ENOENT: none)
 * proves its claimant gone, and so does kill(pid, 0) failing with ESRCH.
 * A worker removes its own name at exit; the master removes the names
 * crashed workers left, and the directory, when it exits.
 *
 * Owns: the directory (its path, inherited by the workers; only the master
 * that made it removes it), the names, the wake-up datagrams and their
 * retries (ngx_ipc_bridge_t's retry, retry_ev, probed), the probes.
 */

#include "ngx_ipc_bridge.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>


static void ngx_ipc_bridge_name(uint64_t owner, struct sockaddr_un *sa,
    socklen_t *len);
static void ngx_ipc_bridge_bind_failed(ngx_err_t err, const char *call,
    const char *path);
static ngx_int_t ngx_ipc_bridge_send_wake(uint64_t owner);


/* Made by the master, inherited by the workers; "made" is true in the
 * master until it removed the directory (workers inherit it too: only the
 * master acts on it). dev and ino tell the directory it made from anything
 * put in its place later. */
static u_char         ngx_ipc_bridge_dir[sizeof("/tmp/ngx_ipc..XXXXXX")
                                         + NGX_INT64_LEN];
static dev_t          ngx_ipc_bridge_dir_dev;
static ino_t          ngx_ipc_bridge_dir_ino;
static ngx_uint_t     ngx_ipc_bridge_dir_made;


/*
 * In the master, at its first configuration with ngx_ipc. When the workers
 * run as another user (the master is root), the directory is theirs: they
 * bind their names in it. fchown() goes through a descriptor opened with
 * O_NOFOLLOW, and the master remembers which directory it made.
 */
ngx_int_t
ngx_ipc_bridge_dir_make(ngx_cycle_t *cycle)
{
    int               fd;
    const char       *call;
    ngx_err_t         err;
    struct stat       st;
    ngx_core_conf_t  *ccf;

    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);

    (void) ngx_sprintf(ngx_ipc_bridge_dir, "/tmp/ngx_ipc.%P.XXXXXX%Z",
                       ngx_pid);

    if (mkdtemp((char *) ngx_ipc_bridge_dir) == NULL) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "ngx_ipc: mkdtemp(\"%s\") failed", ngx_ipc_bridge_dir);
        return NGX_ERROR;
    }

    fd = open((char *) ngx_ipc_bridge_dir,
              O_RDONLY|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC);
    if (fd == -1) {
        err = ngx_errno;
        call = "open";
        goto failed;
    }

    if (fstat(fd, &st) == -1) {
        err = ngx_errno;
        call = "fstat";
        goto failed;
    }

    /* ngx_core_module sets user only when the master runs as root */
    if (ccf->user != (ngx_uid_t) NGX_CONF_UNSET_UINT
        && fchown(fd, ccf->user, ccf->group) == -1)
    {
        err = ngx_errno;
        call = "fchown";
        goto failed;
    }

    if (close(fd) == -1) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, ngx_errno,
                      "ngx_ipc: close(\"%s\") failed", ngx_ipc_bridge_dir);
    }

    ngx_ipc_bridge_dir_dev = st.st_dev;
    ngx_ipc_bridge_dir_ino = st.st_ino;
    ngx_ipc_bridge_dir_made = 1;

    return NGX_OK;

failed:

    ngx_log_error(NGX_LOG_EMERG, cycle->log, err,
                  "ngx_ipc: %s(\"%s\") failed", call, ngx_ipc_bridge_dir);

    if (fd != -1) {
        (void) close(fd);
    }

    if (rmdir((char *) ngx_ipc_bridge_dir) == -1) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, ngx_errno,
                      "ngx_ipc: rmdir(\"%s\") failed", ngx_ipc_bridge_dir);
    }

    return NGX_ERROR;
}


/* Where the names are, said once the configuration that made it is in
 * place (its error_log is open by then). */
void
ngx_ipc_bridge_dir_announce(ngx_log_t *log)
{
    if (ngx_ipc_bridge_dir_made) {
        ngx_log_error(NGX_LOG_NOTICE, log, 0,
                      "ngx_ipc: the reload bridge's sockets are in \"%s\"",
                      ngx_ipc_bridge_dir);
    }
}


/*
 * In the master that made the directory (at exit, or when the first
 * configuration failed): what is left in it is the socket files of
 * workers that crashed; they go, then the directory. No entry is
 * followed: the workers' user owns the directory and could have put
 * anything there; unlinkat() removes a symbolic link itself, and refuses a
 * directory. A directory put in the place of ours is left alone.
 */
void
ngx_ipc_bridge_dir_remove(ngx_log_t *log)
{
    int             fd;
    DIR            *dir;
    struct stat     st;
    struct dirent  *de;

    if (!ngx_ipc_bridge_dir_made) {
        return;
    }

    ngx_ipc_bridge_dir_made = 0;

    fd = open((char *) ngx_ipc_bridge_dir,
              O_RDONLY|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC);
    if (fd == -1) {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                      "ngx_ipc: open(\"%s\") failed", ngx_ipc_bridge_dir);
        return;
    }

    if (fstat(fd, &st) == -1) {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                      "ngx_ipc: fstat(\"%s\") failed", ngx_ipc_bridge_dir);
        (void) close(fd);
        return;
    }

    if (st.st_dev != ngx_ipc_bridge_dir_dev
        || st.st_ino != ngx_ipc_bridge_dir_ino)
    {
        ngx_log_error(NGX_LOG_ALERT, log, 0,
                      "ngx_ipc: \"%s\" is not the directory this master "
                      "made: left as it is", ngx_ipc_bridge_dir);
        (void) close(fd);
        return;
    }

    dir = fdopendir(fd);
    if (dir == NULL) {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                      "ngx_ipc: fdopendir(\"%s\") failed", ngx_ipc_bridge_dir);
        (void) close(fd);
        return;
    }

    for ( ;; ) {
        ngx_set_errno(0);

        de = readdir(dir);
        if (de == NULL) {
            if (ngx_errno != 0) {
                ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                              "ngx_ipc: readdir(\"%s\") failed",
                              ngx_ipc_bridge_dir);
            }

            break;
        }

        if (ngx_strcmp(de->d_name, ".") == 0
            || ngx_strcmp(de->d_name, "..") == 0)
        {
            continue;
        }

        if (unlinkat(fd, de->d_name, 0) == -1) {
            ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                          "ngx_ipc: unlink(\"%s/%s\") failed",
                          ngx_ipc_bridge_dir, de->d_name);
        }
    }

    (void) closedir(dir);

    if (rmdir((char *) ngx_ipc_bridge_dir) == -1) {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                      "ngx_ipc: rmdir(\"%s\") failed", ngx_ipc_bridge_dir);
    }
}


/* ngx_ipc_module's exit_master. Workers inherit "made" as well; they
 * never run exit_master, and it asks anyway. */
void
ngx_ipc_bridge_exit_master(ngx_cycle_t *cycle)
{
    if (ngx_process == NGX_PROCESS_MASTER) {
        ngx_ipc_bridge_dir_remove(cycle->log);
    }
}


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

    for (k = 0; k < NGX_IPC_BRIDGE_SLOTS; k++) {
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

    b->endpoint->flush();
    ngx_ipc_space_freed(w);

    b->dirty = 1;

    if (w->sema != NULL) {
        w->sema_post(w->sema, 1);
        return;
    }

    ngx_ipc_drop_undelivered(w, b->endpoint);
    b->dirty = 0;
}
