"""Lua snippets and readers shared by the ngx_ipc tests.

RECORDERS goes into init_worker (it defines locals there) and gives:

  record(tag)         a handler(data) that appends "<ipc.sender> <data>" to the
                      results list "<tag>:<this worker's id>"
  record_digest(tag)  the same with T.digest(data) ("<len>:<md5>") in place of
                      the data, for big payloads

Read them back with received(n, tag, worker) -> [(sender_pid, bytes), ...].
"""

WORKERS = [1, 2, 4]

RECORDERS = """
    local me = ngx.worker.id()
    local function record(tag)
        return function(data)
            T.push(tag .. ":" .. me, tostring(ipc.sender) .. " " .. data)
        end
    end
    local function record_digest(tag)
        return function(data)
            T.push(tag .. ":" .. me, tostring(ipc.sender) .. " " .. T.digest(data))
        end
    end
"""


def parse(item):
    sender, _, data = item.partition(b" ")
    return (int(sender) if sender.isdigit() else sender.decode()), data


def received(n, tag, worker):
    """What record(tag) stored in worker `worker`: [(sender_pid, data), ...]."""
    return [parse(item) for item in n.results(f"{tag}:{worker}")]


def wait_received(n, tag, worker, count, timeout=10):
    """Wait until worker `worker` recorded at least `count` under `tag`."""
    return [parse(item) for item in n.wait_results(f"{tag}:{worker}", count, timeout)]


def stats(n, worker):
    """ipc.stats() of one worker, as a dict."""
    (result,) = n.lua("return ipc.stats()", worker=worker)
    return result


STAT_KEYS = ["sent", "received", "sent_bytes", "received_bytes", "dropped",
             "refused", "handler_errors", "calls", "call_timeouts", "queued_bytes",
             "unhandled"]


# "q" is a slow receiver: each message waits (up to 10 s) until the test sets
# "gate"; "msg" is recorded at once.
GATED = RECORDERS + """
    ipc.receive("msg", record("msg"))
    ipc.receive("q", function(data)
        local deadline = ngx.now() + 10
        while not T.get("gate") and not ngx.worker.exiting()
              and ngx.now() < deadline
        do
            ngx.sleep(0.005)
        end
        T.push("q:" .. me, tostring(ipc.sender) .. " " .. T.digest(data))
    end)
"""
