"""Self-checks of the harness itself, with plain nginx + lua (no ngx_ipc).

These run whether or not the module is built, so a broken harness shows up
on its own and not as a failure of the module.
"""

import os
import signal
import time

import pytest

import harness
from harness import LuaError, Nginx, digest, lua_quote, pattern, wait_for

WORKERS = [1, 2, 4]


@pytest.mark.parametrize("workers", WORKERS)
def test_start_and_worker_map(nginx, workers):
    n = nginx(workers=workers, ipc=False)
    assert len(n.pids) == workers
    assert sorted(n.pids) == n.worker_pids()
    for worker_id, pid in enumerate(n.pids):
        assert n.lua("return ngx.worker.id(), ngx.worker.pid()",
                     worker=worker_id) == [worker_id, pid]


def test_master_process_off(nginx):
    n = nginx(master_process=False, workers=4, ipc=False)
    assert n.pids == [n.master_pid]
    assert n.lua("return ngx.worker.id(), ngx.worker.count()", worker=0) == [0, 1]


def test_eval_values_and_errors(nginx):
    n = nginx(workers=1, ipc=False)
    assert n.lua("return 1, nil, 'x', true, 1.5, {3, false}, {a = 'b'}") == \
        [1, None, "x", True, 1.5, [3, False], {"a": "b"}]
    assert n.lua("return") == []
    assert n.lua("return '\\0\\255\"\\\\'")[0].encode("latin-1") == b'\0\xff"\\'
    with pytest.raises(LuaError, match=r"eval:1: boom"):
        n.lua("error('boom')")
    with pytest.raises(LuaError, match=r"^pcall-safe: x$"):
        n.lua("error('pcall-safe: x', 0)")
    with pytest.raises(LuaError, match=r"'end' expected|unexpected symbol"):
        n.lua("if true then")
    # globals assigned by a chunk persist in that worker, not in _G
    n.lua("kept = 42")
    assert n.lua("return kept, rawget(_G, 'kept')") == [42, None]
    # a chunk may yield
    assert n.lua("ngx.sleep(0.01) return 'slept'") == ["slept"]


def test_results_bytes_roundtrip(nginx):
    n = nginx(workers=2, ipc=False)
    data = bytes(range(256)) + b"\0\0end\0"
    key = b"k\0ey \xff&?="
    n.lua(f"T.push({lua_quote(key)}, {lua_quote(data)}) T.push({lua_quote(key)}, '')",
          worker=1)
    assert n.results(key) == [data, b""]
    assert n.results("missing") == []
    assert n.wait_results(key, 2) == [data, b""]


@pytest.mark.parametrize("size", [0, 1, 255, 256, 257, 4096, 1 << 20, 32 << 20])
def test_pattern_and_digest_agree_with_lua(nginx, size):
    n = nginx(workers=1, ipc=False)
    seed = size % 251
    assert n.lua(f"return T.digest(T.pattern({size}, {seed}))") == \
        [digest(pattern(size, seed)).decode()]
    if size <= 4096:
        n.lua(f"T.push('p', T.pattern({size}, {seed}))")
        assert n.results("p") == [pattern(size, seed)]


def test_worker_pinning_reaches_every_worker(nginx):
    n = nginx(workers=4, ipc=False)
    for _ in range(3):
        for worker_id in range(4):
            status, body = n.get("/_h/eval", worker=worker_id)
            assert status == 200  # GET: empty chunk, no values
            assert n.lua("return ngx.worker.id()", worker=worker_id) == [worker_id]


def test_caller_config_pieces(nginx):
    n = nginx(
        workers=2, ipc=False,
        main="env HARNESS_T;",
        http="lua_shared_dict extra 1m;",
        init="INIT_RAN = true",
        init_worker="T.push('init_worker', ngx.worker.id())",
        locations="""
            location = /hello {
                content_by_lua_block { ngx.print("hello from ", ngx.worker.id()) }
            }
        """,
    )
    assert sorted(n.results("init_worker")) == [b"0", b"1"]
    assert n.lua("return INIT_RAN, ngx.shared.extra ~= nil") == [True, True]
    status, body = n.get("/hello", worker=1)
    assert (status, body) == (200, b"hello from 1")
    status, _ = n.get("/nope")
    assert status == 404


def test_bad_log_lines_are_caught_and_can_be_allowed(nginx):
    n = nginx(workers=1, ipc=False)
    n.lua("ngx.log(ngx.ERR, 'harness-selfcheck one')")
    n.lua("ngx.log(ngx.ALERT, 'harness-selfcheck two')")
    n.lua("ngx.log(ngx.WARN, 'harness-selfcheck harmless')")
    bad = n.bad_log_lines()
    assert len(bad) == 2 and "[error]" in bad[0] and "[alert]" in bad[1]
    n.allow_log("harness-selfcheck (one|two)")
    assert n.bad_log_lines() == []


def test_wait_for_is_bounded():
    calls = []
    with pytest.raises(AssertionError, match="timed out after 0.2 s"):
        wait_for(lambda: calls.append(1), timeout=0.2, what="never")
    assert 2 <= len(calls) < 100
    assert wait_for(lambda: "value") == "value"


def test_stop_is_clean_and_removes_prefix():
    n = Nginx(workers=2, ipc=False).start()
    workers = n.worker_pids()
    assert n.stop() is None
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie_or_gone(pid)
    assert n.bad_log_lines() == []
    n.cleanup()
    assert not n.prefix.exists()


def test_config_error_fails_fast_with_log():
    n = Nginx(workers=1, ipc=False, main="no_such_directive on;")
    try:
        with pytest.raises(harness.NginxError, match="no_such_directive"):
            n.start()
    finally:
        n.stop()
        n.cleanup()


def test_stuck_nginx_is_killed_by_pid():
    n = Nginx(workers=2, ipc=False).start()
    workers = n.worker_pids()
    try:
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)  # a worker that ignores SIGQUIT
        problem = n.stop(timeout=0.5)
        assert "did not exit within 0.5 s" in problem
        for pid in workers:
            wait_for(lambda: _is_zombie_or_gone(pid), what=f"worker {pid} gone")
    finally:
        n.kill()
        n.cleanup()


def test_runaway_log_is_stopped(monkeypatch):
    monkeypatch.setattr(harness, "LOG_SIZE_LIMIT", 256 * 1024)
    n = Nginx(workers=2, ipc=False).start()
    workers = n.worker_pids()
    try:
        n.lua("for i = 1, 5000 do ngx.log(ngx.INFO, string.rep('x', 100)) end")
        wait_for(lambda: n.log_overflow, what="the log watchdog")
        wait_for(lambda: n.proc.poll() is not None, what="nginx killed")
        for pid in workers:
            wait_for(lambda: _is_zombie_or_gone(pid), what=f"worker {pid} gone")
        assert "error log passed" in n.stop()
    finally:
        n.kill()
        n.cleanup()


def _is_zombie_or_gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def test_idle_plain_nginx_measures_no_work(nginx):
    """The measurement of test_idle_nginx_uses_no_cpu, on plain nginx: ~0."""
    n = nginx(workers=2, ipc=False)
    processes = [n.master_pid] + n.pids
    ticks = {pid: harness.cpu_ticks(pid) for pid in processes}
    switches = {pid: harness.context_switches(pid) for pid in processes}
    time.sleep(1.0)
    assert all(harness.cpu_ticks(pid) - ticks[pid] <= 2 for pid in processes)
    assert all(harness.context_switches(pid) - switches[pid] <= 5 for pid in processes)


def test_idle_measurement_sees_a_polling_timer(nginx):
    """...and it does see a worker that wakes every 10 ms to poll."""
    n = nginx(workers=1, ipc=False, init_worker="""
        assert(ngx.timer.every(0.01, function() end))
    """)
    pid = n.pids[0]
    before = harness.context_switches(pid)
    time.sleep(1.0)
    assert harness.context_switches(pid) - before > 50


def test_workers_of_a_crashed_master_are_killed():
    n = Nginx(workers=2, ipc=False).start()
    workers = list(n.pids)
    try:
        os.kill(n.master_pid, signal.SIGKILL)  # workers are orphaned
        n.proc.wait(harness.WAIT_TIMEOUT)
        problem = n.stop()
        assert "outlived the master" in problem
        for pid in workers:
            wait_for(lambda: _is_zombie_or_gone(pid), what=f"worker {pid} gone")
    finally:
        n.kill()
        n.cleanup()
