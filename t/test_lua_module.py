"""What ngx_ipc needs from the lua module is checked by name when nginx starts.

The module looks up lua-nginx-module's and LuaJIT's functions with dlsym()
(a feature check, not a version guess): a combination that lacks one makes
nginx refuse the configuration with one [emerg] line naming it.  Without a
lua module at all, the first one looked up is missing.
"""

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import require_ipc_module
from harness import IPC_MODULE, NGINX_BIN, lua_module_files


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
    assert "ngx_ipc needs ngx_http_lua_add_package_preload(), which is not found" \
        in emerg[0], output


def test_with_the_lua_module_the_minimal_configuration_starts():
    require_ipc_module()
    modules = lua_module_files() + [IPC_MODULE]
    status, output = nginx_t(MINIMAL.format(
        load_modules="\n".join(f"load_module {m};" for m in modules)))
    assert status == 0, output
    assert "[emerg]" not in output
