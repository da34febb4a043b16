/*
 * ngx_ipc log limiting: core events (a corrupt ring, a failed wake-up write)
 * can repeat once per message under a flood; they are logged at a bounded
 * rate so that a storm writes a few lines, not gigabytes.
 *
 * Owns: the per-second counts of lines logged and suppressed.
 */

#include "ngx_ipc_module.h"


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
