/*
 * ngx_ipc: the eventfds of a configuration's worker slots, and the open
 * files they need in the master (ngx_ipc_module.cpp's create_shared calls
 * it, before the master forks the workers).
 *
 * Owns: the master's RLIMIT_NOFILE raise and the eventfd() calls.
 */

#include "ngx_ipc_module.h"

#include <sys/eventfd.h>
#include <sys/resource.h>


/*
 * The master holds, per worker, one eventfd of ours and nginx's two
 * channel sockets; every process inherits the eventfds. With many workers
 * that passes the usual soft limit of 1024 open files, so the master
 * raises its soft limit as far as the hard one lets it (the workers inherit
 * it; worker_rlimit_nofile still sets theirs). Beyond the hard limit,
 * eventfd() fails and the message says what to raise.
 */
#define NGX_IPC_NOFILE(n)  (4 * (n) + 1024)

static void
ngx_ipc_raise_nofile(ngx_cycle_t *cycle, ngx_uint_t n)
{
    rlim_t         want;
    struct rlimit  rl;

    want = (rlim_t) NGX_IPC_NOFILE(n);

    if (getrlimit(RLIMIT_NOFILE, &rl) == -1 || rl.rlim_cur >= want) {
        return;
    }

    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want) {
        want = rl.rlim_max;
    }

    if (want <= rl.rlim_cur) {
        return;
    }

    ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                  "ngx_ipc: %ui workers: open files limit raised from %uL "
                  "to %uL", n, (uint64_t) rl.rlim_cur, (uint64_t) want);

    rl.rlim_cur = want;

    if (setrlimit(RLIMIT_NOFILE, &rl) == -1) {
        ngx_log_error(NGX_LOG_WARN, cycle->log, ngx_errno,
                      "ngx_ipc: setrlimit(RLIMIT_NOFILE) failed");
    }
}


/* One eventfd per worker slot into fds (their -1s replaced), after raising
 * the open files limit. NGX_ERROR, logged at emerg with the limit to
 * raise, if one cannot be made; fds keeps those made (the caller's cleanup
 * closes them). */
ngx_int_t
ngx_ipc_open_eventfds(ngx_cycle_t *cycle, int *fds, ngx_uint_t n)
{
    ngx_uint_t  i;

    ngx_ipc_raise_nofile(cycle, n);

    for (i = 0; i < n; i++) {
        fds[i] = eventfd(0, EFD_NONBLOCK|EFD_CLOEXEC);
        if (fds[i] == -1) {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                          "ngx_ipc: eventfd() failed for worker slot %ui of "
                          "%ui: with %ui workers raise the open files limit "
                          "(ulimit -n, systemd's LimitNOFILE=) to at least "
                          "%ui", i, n, n, NGX_IPC_NOFILE(n));
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}
