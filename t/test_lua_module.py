"""What ngx_ipc needs from the lua module is checked by name when nginx starts.

The module looks up lua-nginx-module's and LuaJIT's functions with dlsym()
(a feature check, not a version guess): a combination that lacks one makes
nginx refuse the configuration with one [emerg] line naming it.  Without a
lua module at all, the first one looked up is missing.
"""

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import require_ipc_module
from harness import IPC_MODULE, NGINX_BIN, child_pids, lua_module_files, wait_for


def nginx_t(config):
    """`nginx -t` on config under a temporary prefix -> (status, output)."""
    prefix = Path(tempfile.mkdtemp(prefix="ngx-ipc-compat-"))
    try:
        (prefix / "logs").mkdir()
        (prefix / "nginx.conf").write_text(config)
        run = subprocess.run([NGINX_BIN, "-p", f"{prefix}/", "-c", "nginx.conf", "-t"],
                             stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, timeout=30)
        return run.returncode, run.stdout + run.stderr
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


MINIMAL = """\
error_log logs/error.log;
pid logs/nginx.pid;
{load_modules}
events {{}}
http {{}}
"""


def test_without_the_lua_module_nginx_refuses_to_start_naming_what_is_missing():
    require_ipc_module()
    if not lua_module_files():
        pytest.skip("this nginx has the lua module built in")
    status, output = nginx_t(MINIMAL.format(load_modules=f"load_module {IPC_MODULE};"))
    assert status != 0, output
    emerg = [line for line in output.splitlines() if "[emerg]" in line]
    assert len(emerg) == 1, output
    assert "ngx_ipc needs ngx_http_lua_module: load it (load_module) before " \
        "ngx_ipc_module" in emerg[0], output


def test_with_the_lua_module_the_minimal_configuration_starts():
    require_ipc_module()
    modules = lua_module_files() + [IPC_MODULE]
    status, output = nginx_t(MINIMAL.format(
        load_modules="\n".join(f"load_module {m};" for m in modules)))
    assert status == 0, output
    assert "[emerg]" not in output


RELOAD_CONF = """
@LOAD_MODULES@
worker_processes @WORKERS@;
pid logs/nginx.pid;
error_log logs/error.log notice;
events { worker_connections 64; }
http {
    access_log off;
    server {
        listen 127.0.0.1:@PORT@;
        location = /pids {
            content_by_lua_block { ngx.print(#require("ngx.ipc").pids()) }
        }
    }
}
"""


def test_a_reload_that_drops_the_lua_module_is_refused(tmp_path):
    """The old configuration's lua module is still mapped while the new one
    is read: ngx_ipc must not use it (its functions index the new
    configuration with the old module index). The reload is refused with
    the line that names the module, and the running workers serve on."""
    from example_runner import ExampleNginx
    if not lua_module_files():
        pytest.skip("this nginx has the lua module built in")
    conf = tmp_path / "nginx.conf"
    conf.write_text(RELOAD_CONF)
    ex = ExampleNginx(conf, 2, ready=lambda e: e.request("/pids")[:2] == (200, b"2"))
    try:
        ex.start()
        workers = set(ex.pids)
        live = ex.prefix / "conf" / "nginx.conf"
        live.write_text("\n".join(line for line in live.read_text().splitlines()
                                  if "ndk_http_module" not in line
                                  and "ngx_http_lua_module" not in line)
                        .replace("content_by_lua_block { ngx.print(#require(\"ngx.ipc\").pids()) }",
                                 "return 200;"))
        os.kill(ex.proc.pid, signal.SIGHUP)
        wait_for(lambda: "ngx_ipc needs ngx_http_lua_module" in ex.error_log(),
                 what="the reload refused")
        assert "[alert]" not in ex.error_log() and "[crit]" not in ex.error_log()
        assert ex.request("/pids")[:2] == (200, b"2")
        assert set(child_pids(ex.proc.pid)) == workers
        assert ex.stop() is None
    finally:
        ex.stop()
        ex.cleanup()
