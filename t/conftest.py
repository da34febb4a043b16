"""pytest fixtures for the tests that run real nginx processes.

Run from the repository root:

    python3 -m pytest -q t/

A test asks for the `nginx` fixture, a factory: each call writes a
configuration, starts an nginx and returns a started `harness.Nginx`:

    def test_example(nginx):
        n = nginx(workers=2, main="ipc_queue_limit 1m;", init_worker='''
            ipc.receive("hello", function(data) T.push("hello", data) end)
        ''')
        assert n.lua('return ipc.send(...)', worker=0) == [True]
        assert n.wait_results("hello", 1) == [b"..."]

After the test, every instance gets SIGQUIT (SIGKILL by PID after 10 s, which
fails the test), its error log is checked for [alert], [emerg], [crit],
[error], "segfault", "signal 11" and "exited on signal" lines, except those
matching `allow_log=` patterns or `Nginx.allow_log()`, and its prefix is
deleted (kept, with its path printed, when NGX_TEST_KEEP=1).

Environment (the older names in parentheses still work):
  NGX_IPC_NGINX             nginx binary to test (NGINX_BIN; default
                            /usr/sbin/nginx)
  NGX_IPC_MODULE            path of the module (default build/ngx_ipc_module.so)
  NGX_IPC_LUA_MODULES       (NGINX_MODULES_DIR) what to load_module before
                            ngx_ipc: a directory holding ngx_http_lua_module.so
                            (and ndk_http_module.so, loaded first when there),
                            a ':'-separated list of .so files, or `none` when
                            ndk and lua are built into nginx (OpenResty).
                            Unset: none if the nginx binary knows lua
                            directives by itself, else /usr/lib/nginx/modules
  NGX_IPC_LUA_PACKAGE_PATH  extra lua_package_path entries, e.g. where
                            resty.core and resty.lrucache live when nginx
                            does not find them by default ("/opt/lualib/?.lua")
  NGX_IPC_REQUIRE_MODULE    1: a missing module fails every test that needs it
                            (CI); otherwise those tests are skipped

For example, against OpenResty (ndk and lua built in):

    export NGX_IPC_NGINX=/usr/local/openresty/nginx/sbin/nginx
    make NGX_SRC=/path/to/openresty-1.27.1.2/build/nginx-1.27.1 test-nginx

(make takes the configure flags from `$NGX_IPC_NGINX -V`; README.md,
"Other nginx builds", says more.)
"""

import os

import pytest

from harness import EXTRA_LUA_PATH, IPC_MODULE, NGINX_BIN, Nginx, NginxError, lua_module_files

REQUIRE_MODULE = os.environ.get("NGX_IPC_REQUIRE_MODULE") == "1"
KEEP = os.environ.get("NGX_TEST_KEEP") == "1"


def pytest_report_header(config):
    if IPC_MODULE.is_file():
        where = str(IPC_MODULE)
    else:
        where = f"MISSING at {IPC_MODULE}"
        where += " (tests fail)" if REQUIRE_MODULE else " (tests skip)"
    lua = " ".join(str(f) for f in lua_module_files()) or "built in (no load_module)"
    header = [f"nginx: {NGINX_BIN}", f"ndk and lua modules: {lua}",
              f"ngx_ipc module: {where}"]
    if EXTRA_LUA_PATH:
        header.append(f"extra lua_package_path: {EXTRA_LUA_PATH}")
    return header


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """When a test fails, show the end of each of its nginx error logs."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for instance in getattr(item, "nginx_instances", ()):
            report.sections.append(
                (f"nginx error log {instance.prefix}/logs (last lines)",
                 instance.log_tail()))


def require_ipc_module():
    if IPC_MODULE.is_file():
        return
    message = (f"ngx_ipc module not found at {IPC_MODULE}: build it with `make` "
               f"or point NGX_IPC_MODULE at it")
    if REQUIRE_MODULE:
        pytest.fail(message + " (NGX_IPC_REQUIRE_MODULE=1)", pytrace=False)
    pytest.skip(message)


def start_fails(main="", http="", workers=2):
    """Start an nginx that must refuse its configuration; its error output."""
    require_ipc_module()
    n = Nginx(workers=workers, main=main, http=http)
    try:
        with pytest.raises(NginxError, match="exited with status 1 while starting"):
            n.start()
        return n.error_log()
    finally:
        n.stop()
        n.cleanup()


@pytest.fixture
def nginx(request):
    """Factory: nginx(**kwargs) starts and returns a harness.Nginx.

    kwargs are those of harness.Nginx: workers, main, http, init, init_worker,
    locations, master_process, ipc (default True: load ngx_ipc), allow_log.
    """
    instances = request.node.nginx_instances = []

    def start(**kwargs):
        if kwargs.get("ipc", True):
            require_ipc_module()
        instance = Nginx(**kwargs)
        instances.append(instance)
        return instance.start()

    yield start

    problems = []
    for instance in instances:
        found = []
        problem = instance.stop()
        if problem:
            found.append(problem)
        bad = instance.bad_log_lines()
        if bad:
            found.append(f"{len(bad)} bad line(s) in the error log, first:\n"
                         + "\n".join(bad[:20]))
        if found or KEEP:
            print(f"--- {instance.prefix}/logs (last lines) ---\n{instance.log_tail()}")
        problems += found
        if KEEP:
            print(f"kept {instance.prefix}")
        else:
            instance.cleanup()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
