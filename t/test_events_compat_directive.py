"""ipc_events_compat: the names of Kong's event libraries, as aliases.

With `ipc_events_compat on;` (http), `require "resty.events"`,
`"resty.events.compat"` and `"resty.worker.events"` load ngx_ipc's
implementations of those APIs (the same tables as `ngx.ipc.events`,
`ngx.ipc.events_compat` and `ngx.ipc.worker_events`), ahead of any file of
those names on lua_package_path. Off (the default), nothing changes: the
library on the path, if any, is what loads. The APIs themselves are tested
in t/test_compat_events.py and t/test_compat_worker_events.py.
"""

import shutil
import tempfile
from pathlib import Path

import pytest

from conftest import start_fails
from test_cluster import reload_node

ALIASES = {
    "resty.events": "ngx.ipc.events",
    "resty.events.compat": "ngx.ipc.events_compat",
    "resty.worker.events": "ngx.ipc.worker_events",
}

SAME_TABLES = " and ".join(
    f'require("{alias}") == require("{target}")' for alias, target in ALIASES.items())


@pytest.fixture
def fake_libraries():
    """A lua_package_path directory holding the three libraries' names,
    each returning a table that says it is the one from the path."""
    root = Path(tempfile.mkdtemp(prefix="ngx-ipc-fake-lua-"))
    root.chmod(0o755)
    for alias in ALIASES:
        path = root / (alias.replace(".", "/") + ".lua")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o755)
        path.write_text(f'return {{ from_path = "{alias}" }}\n')
        path.chmod(0o644)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def on_path(root, code):
    """`code` run with `root` first on package.path (what lua_package_path
    sets; the harness sets that directive itself)."""
    return f'package.path = "{root}/?.lua;" .. package.path\n{code}'


@pytest.mark.parametrize("workers", [1, 2])
def test_on_the_aliases_load_ngx_ipcs_modules(nginx, workers):
    n = nginx(workers=workers, http="ipc_events_compat on;")
    for worker in range(workers):
        assert n.lua(f"return {SAME_TABLES}", worker=worker) == [True]
        # loaded either way round: the target first, then the alias
        assert n.lua('package.loaded["resty.worker.events"] = nil; '
                     'return require("resty.worker.events") '
                     '== package.loaded["ngx.ipc.worker_events"]', worker=worker) == [True]


def test_on_the_aliases_win_over_lua_package_path(nginx, fake_libraries):
    n = nginx(http="ipc_events_compat on;")
    assert n.lua(on_path(fake_libraries, f"return {SAME_TABLES}")) == [True]
    for alias in ALIASES:
        assert n.lua(on_path(fake_libraries,
                             f'return require("{alias}").from_path == nil')) == [True]


def test_off_by_default_the_path_decides(nginx, fake_libraries):
    n = nginx()
    for alias in ALIASES:
        assert n.lua(on_path(fake_libraries, f'return require("{alias}").from_path')) == [alias]
    # and the aliases are not preloaded at all
    assert n.lua('return package.preload["resty.events"] == nil '
                 'and package.preload["resty.worker.events"] == nil') == [True]


def test_off_without_the_libraries_require_fails_as_usual(nginx):
    n = nginx(http="ipc_events_compat off;")
    (err,) = n.lua('local ok, err = pcall(require, "resty.events"); return err')
    assert "module 'resty.events' not found" in err


@pytest.mark.parametrize("http, message", [
    ("ipc_events_compat maybe;",
     'invalid value "maybe" in "ipc_events_compat" directive, it must be "on" or "off"'),
    ("ipc_events_compat on; ipc_events_compat on;",
     '"ipc_events_compat" directive is duplicate'),
    ("server { listen 127.0.0.1:1; ipc_events_compat on; }",
     '"ipc_events_compat" directive is not allowed here'),
])
def test_bad_configuration_is_refused(http, message):
    assert message in start_fails(http=http)


INIT_REQUIRES = """
    -- init_by_lua* runs before ngx_ipc's postconfiguration: the preloads
    -- must already be there
    INIT_GOT = table.concat({
        type(require("ngx.ipc")),
        tostring(require("resty.events") == require("ngx.ipc.events")),
        tostring(require("resty.worker.events") == require("ngx.ipc.worker_events")),
    }, " ")
"""


def test_init_by_lua_finds_the_preloads_and_the_aliases(nginx):
    n = nginx(workers=2, http="ipc_events_compat on;", init=INIT_REQUIRES)
    for worker in range(2):
        assert n.lua("return INIT_GOT", worker=worker) == ["table true true"]
        # and the workers' ngx.ipc works (its main-VM check passed)
        assert n.lua('return type(require("ngx.ipc").pids())', worker=worker) == ["table"]


def test_init_by_lua_finds_them_again_after_a_reload(nginx):
    n = nginx(workers=2, http="ipc_events_compat on;", init=INIT_REQUIRES)
    reload_node(n)  # the master runs init_by_lua* again, in a new VM
    for worker in range(2):
        assert n.lua("return INIT_GOT", worker=worker) == ["table true true"]
        assert n.lua('return type(require("ngx.ipc").pids())', worker=worker) == ["table"]


# Without any lua_shared_dict, lua-nginx-module runs init_by_lua* in its
# own postconfiguration, before ngx_ipc's (with one, later, once the shared
# memory exists: the harness always declares one). A whole nginx.conf,
# then, run as the examples are.
BARE_CONF = """
@LOAD_MODULES@
worker_processes @WORKERS@;
pid logs/nginx.pid;
error_log logs/error.log notice;
events { worker_connections 64; }
http {
    access_log off;
    ipc_events_compat on;
    init_by_lua_block {
        local ok, err = pcall(function()
            return type(require("ngx.ipc")) .. " "
                .. tostring(require("resty.events") == require("ngx.ipc.events"))
        end)
        INIT_GOT = tostring(ok) .. " " .. tostring(err)
    }
    server {
        listen 127.0.0.1:@PORT@;
        location = /init { content_by_lua_block { ngx.print(INIT_GOT) } }
        location = /pids {
            content_by_lua_block { ngx.print(#require("ngx.ipc").pids()) }
        }
    }
}
"""


def test_init_by_lua_without_a_shared_dict(tmp_path):
    from example_runner import ExampleNginx  # noqa: E402 (t/ helpers)
    conf = tmp_path / "nginx.conf"
    conf.write_text(BARE_CONF)
    ex = ExampleNginx(conf, 2, ready=lambda e: e.request("/init")[0] == 200)
    try:
        ex.start()
        assert ex.request("/init")[1] == b"true table true"
        assert ex.request("/pids")[1] == b"2"
        assert ex.stop() is None
    finally:
        ex.stop()
        ex.cleanup()
