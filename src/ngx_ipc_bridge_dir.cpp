/*
 * ngx_ipc reload bridge: the private directory its sockets are named in
 * (docs/ARCHITECTURE.md §12). The master makes it at its first
 * configuration (mkdtemp "/tmp/ngx_ipc.<pid>.XXXXXX", mode 0700) and gives
 * it to the workers' user, so that no process of another user can bind a
 * name there, send to one, or list them; it removes what crashed workers
 * left there, and the directory, when it exits.
 *
 * Owns: the directory (its path, inherited by the workers; only the master
 * that made it removes it).
 */

#include "ngx_ipc_bridge.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>


/* Made by the master, inherited by the workers; "made" is true in the
 * master until it removed the directory (workers inherit it too: only the
 * master acts on it). dev and ino tell the directory it made from anything
 * put in its place later. */
u_char                ngx_ipc_bridge_dir[NGX_IPC_BRIDGE_DIR_LEN];
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
