-- ngx.ipc: named messages between nginx worker processes ("alerts" in
-- ngx_lua_ipc's words).
--
-- The Lua API over ngx_ipc_module's C ABI (src/ngx_ipc_ffi.h). Messages
-- travel through shared memory. Each worker runs two light threads (timers):
--   the reader sleeps on a semaphore that the module's event handler posts
--   when the inbox has messages; it takes them in batches, hands replies to
--   the ipc.call()s waiting for them at once, and queues the rest;
--   the runner runs the handlers of the queued messages one at a time, in
--   arrival order. A handler may yield, even in an ipc.call() to another
--   worker: the reader goes on delivering that call's reply.
-- See README.md and docs/ARCHITECTURE.md.

local ffi = require "ffi"
local bit = require "bit"
local base = require "resty.core.base"
local semaphore = require "ngx.semaphore"

local C = ffi.C
local band = bit.band
local bor = bit.bor
local ffi_new = ffi.new
local ffi_string = ffi.string
local error = error
local ipairs = ipairs
local getmetatable = debug.getmetatable
local pairs = pairs
local pcall = pcall
local rawget = rawget
local rawset = rawset
local setmetatable = setmetatable
local str_sub = string.sub
local tonumber = tonumber
local tostring = tostring
local type = type
local ngx = ngx
local ngx_log = ngx.log
local ngx_ERR = ngx.ERR
local ngx_NOTICE = ngx.NOTICE
local ngx_now = ngx.now
local get_phase = ngx.get_phase
local get_request = base.get_request
local timer_at = ngx.timer.at
local worker_exiting = ngx.worker.exiting
local worker_pid = ngx.worker.pid


local FFI_VERSION = 5      -- the C ABI this file is written for
local NGX_OK = 0
local NGX_ERROR = -1
local IDLE_WAIT = 3600     -- seconds; the light threads are woken by events
local LOG_BURST = 10       -- handler-error log lines per second, at most
local RUN_BURST = 128      -- handlers run between two visits to the event loop
local QUEUE_MAX = 1024     -- messages the reader queues for the runner ...
local QUEUE_MAX_BYTES = 4 * 1024 * 1024  -- ... and their bytes, at most
local CALL_TIMEOUT = 5     -- seconds
local MAX_WAIT = 2147483   -- seconds: ngx.semaphore waits take int milliseconds

local REPLY_NAME = "r"     -- the name a reply carries (it is not used)
local CLUSTER_RESERVED = "ipc:cluster"  -- names no cluster entry may carry

-- where ngx.sleep may be used, and so ipc.call
local YIELDABLE = {
    rewrite = true, server_rewrite = true, access = true, content = true,
    timer = true, ssl_cert = true, ssl_session_fetch = true,
    ssl_client_hello = true,
}


require "ngx.ipc.ffi"   -- ffi.cdef of src/ngx_ipc_ffi.h, the C ABI

-- constants of the C ABI (src/ngx_ipc_ffi.h)
local BATCH = C.NGX_IPC_FFI_BATCH            -- messages per take
local MAX_SLOTS = C.NGX_IPC_FFI_MAX_SLOTS
local MAX_NAME = C.NGX_IPC_FFI_MAX_NAME
-- a message's flags: an ipc.call request, its answer, the answer's status
local F_REQUEST = C.NGX_IPC_FFI_F_REQUEST
local F_REPLY = C.NGX_IPC_FFI_F_REPLY
local F_STATUS = C.NGX_IPC_FFI_F_STATUS
local S_OK = C.NGX_IPC_FFI_S_OK                  -- the handler's first value
local S_ERROR = C.NGX_IPC_FFI_S_ERROR            -- the handler raised
local S_NO_HANDLER = C.NGX_IPC_FFI_S_NO_HANDLER  -- no handler for the name
local S_KICK = C.NGX_IPC_FFI_S_KICK  -- not an answer: wakes the cluster
                                     -- agent's writer


do
    local ok, version = pcall(function() return C.ngx_ipc_ffi_version() end)
    if not ok then
        error("ngx.ipc needs ngx_ipc_module: add "
              .. "\"load_module modules/ngx_ipc_module.so;\" to nginx.conf", 2)
    end

    if version ~= FFI_VERSION then
        error("ngx.ipc: this Lua library speaks C ABI version " .. FFI_VERSION
              .. " but ngx_ipc_module.so speaks version " .. version
              .. "; install matching versions", 2)
    end
end


-- handlers: the registered handlers by name, public as in ngx_lua_ipc
-- (ipc.handlers), which dispatches through it too: a handler stored there
-- directly, or a whole new table assigned to it, is what runs.
local _M = { version = "0.1.0", handlers = {} }

local errmsg = ffi_new("char *[1]")
local msgs = ffi_new("ngx_ipc_msg_t[?]", BATCH)
local pids_buf = ffi_new("int[?]", MAX_SLOTS)
local peers_buf = ffi_new("ngx_ipc_peer_t[?]", C.NGX_IPC_BRIDGE_SLOTS)
local wstatus = ffi_new("ngx_ipc_worker_status_t")
local own_stats = ffi_new("ngx_ipc_stats_t")
-- ngx_ipc::WorkerState
local STATES = { [0] = "not_started", "running", "exited", "dead" }

local counts            -- ngx_ipc_lua_counters_t *, once started: the
                        -- counters this file owns (stats() adds the core's)
local exit_state        -- ngx_ipc_exit_t *: our waits, and the module's leave
local inbox_sema        -- the reader sleeps on it; the module posts it, and
                        -- the runner when it frees room in a full queue
local work_sema         -- the runner sleeps on it; the reader posts it
local space_sema        -- the first waiting send sleeps on it; the module
                        -- posts it when a receiver frees room
local yield_sema        -- the module posts it on the event loop's next pass
local started = false     -- the reader and the runner are running
local runner_started = false
local runner_idle = false
local reader_full = false
local reader_done = false
local current_sender    -- sender of the message being handled
local current_name      -- name of the message being handled
local current_call      -- call id of the request being handled, until its
                        -- reply is sent
local current_node      -- origin node of the message being handled
local current_batch     -- the cluster entry (a batch) being handled

-- the cluster link (ipc_cluster): ngx.ipc.cluster, or false without it
local cluster
local cluster_in        -- the local name that carries a cluster entry
local node_name         -- this node's name, with ipc_cluster
local kick_pid = ffi_new("int[1]")

-- the queue from reader to runner: parallel arrays, items [q_first, q_last]
local q_name, q_data, q_sender, q_flags, q_id = {}, {}, {}, {}, {}
local q_first, q_last, q_bytes = 1, 0, 0

-- sends with { wait = s } that wait for room, first come first served:
-- items [wq_first, wq_last], each { sema = ..., done = bool, deadline = t }
local wq = {}
local wq_first, wq_last = 1, 0

-- ipc.call()s waiting for a reply, by call id
local calls = {}
local last_call_id = 0


-- Argument checks. Each public function calls them directly, so the error
-- is raised at a fixed depth: bad_arg (1), check_* (2), the public function
-- (3), its caller (4), whose line the message names.
local function bad_arg(n, fname, msg)
    error("bad argument #" .. n .. " to '" .. fname .. "' (" .. msg .. ")", 4)
end


local function check_type(v, want, n, fname)
    if type(v) ~= want then
        bad_arg(n, fname, want .. " expected, got " .. type(v))
    end
end


-- name: a non-empty string, or a number (its string form), as ngx_lua_ipc
-- takes it (luaL_checklstring). Returns the name as a string.
local function check_name(name, n, fname)
    local t = type(name)
    if t == "number" then
        return tostring(name)
    end

    if t ~= "string" then
        bad_arg(n, fname, "string expected, got " .. t)
    end

    if name == "" then
        bad_arg(n, fname, "non-empty string expected")
    end

    return name
end


-- pid: a number, or a string that converts to one, as from ngx.var
-- (ngx_lua_ipc takes it with luaL_checknumber). Returns the number.
local function check_pid(pid, n, fname)
    local t = type(pid)
    if t == "number" then
        return pid
    end

    if t == "string" then
        local num = tonumber(pid)
        if num then
            return num
        end
    end

    bad_arg(n, fname, "number expected, got " .. t)
end


-- data: a string, a number (sent as its string form), or nil (sent as "").
local function check_data(data, n, fname)
    local t = type(data)
    if t == "string" then
        return data
    end

    if t == "number" then
        return tostring(data)
    end

    if data == nil then
        return ""
    end

    bad_arg(n, fname, "string expected, got " .. t)
end


local function not_available()
    error("ngx.ipc is only available in nginx worker processes (not in "
          .. get_phase() .. ")", 3)
end


-- A handler's error value as text: a string or a number as such, an
-- object through its __tostring, anything else as Lua's own interpreter
-- says it ("(error object is a table value)"). Whatever the object does
-- (a metatable whose __index or __tostring raises), this never raises.
local function error_text(err)
    local t = type(err)
    if t == "string" then
        return err
    end

    if t == "number" then
        return tostring(err)
    end

    local mt = getmetatable(err)
    if type(mt) == "table" and rawget(mt, "__tostring") ~= nil then
        local ok, s = pcall(tostring, err)
        if ok and type(s) == "string" then
            return s
        end
    end

    return "(error object is a " .. t .. " value)"
end


local log_second, log_count, log_suppressed = 0, 0, 0

local function log_handler_error(name, err)
    local now = ngx_now()
    if now - log_second >= 1 then
        if log_suppressed > 0 then
            ngx_log(ngx_ERR, "ngx_ipc: ", log_suppressed,
                    " more handler errors not logged")
        end

        log_second, log_count, log_suppressed = now, 0, 0
    end

    if log_count >= LOG_BURST then
        log_suppressed = log_suppressed + 1
        return
    end

    log_count = log_count + 1

    if #name > 256 then
        name = str_sub(name, 1, 256) .. "..."
    end

    ngx_log(ngx_ERR, "ngx_ipc: handler for message \"", name, "\" failed: ",
            error_text(err))
end


-- The answer to an ipc.call request (F_REPLY with the request's call id and
-- a status); not to be confused with ipc.reply, which sends a new message.
local function send_reply(to, name, flags, call_id, data)
    local rc = C.ngx_ipc_ffi_send(to, REPLY_NAME, #REPLY_NAME, data, #data,
                                  bor(F_REPLY, flags), call_id, errmsg)
    if rc ~= NGX_OK then
        -- the caller is gone, or its inbox is full: it will time out
        counts.dropped = counts.dropped + 1
        log_handler_error(name, "reply not sent: " .. ffi_string(errmsg[0]))
    end
end


-- Runs the handler of a request and sends its reply.
local function handle_request(handler, name, data, sender, call_id)
    if not handler then
        return send_reply(sender, name, S_NO_HANDLER, call_id, "")
    end

    current_call = call_id
    local ok, res = pcall(handler, data)
    current_call = nil

    if ok then
        local t = type(res)
        if t == "string" then
            return send_reply(sender, name, S_OK, call_id, res)
        end

        if t == "number" then
            return send_reply(sender, name, S_OK, call_id, tostring(res))
        end

        if res == nil then
            return send_reply(sender, name, S_OK, call_id, "")
        end

        ok, res = false, "bad response (string expected, got " .. t .. ")"
    end

    counts.handler_errors = counts.handler_errors + 1
    log_handler_error(name, res)
    send_reply(sender, name, S_ERROR, call_id, error_text(res))
end


-- True in the runner's light thread and in what its handlers start.
local function in_runner()
    return get_phase() == "timer" and ngx.ctx.ngx_ipc_runner == true
end


-- Runs the handler (or default_handler) of one message that is not a
-- request, in the runner's light thread.
local function dispatch(name, data, sender, node)
    local ok, err
    local handlers = _M.handlers
    local handler = type(handlers) == "table" and handlers[name] or nil

    current_sender = sender
    current_name = name
    current_node = node

    if handler then
        ok, err = pcall(handler, data)

    else
        local default = rawget(_M, "default_handler")
        if default then
            ok, err = pcall(default, name, data)

        else
            ok = true
            counts.dropped = counts.dropped + 1
        end
    end

    current_sender = nil
    current_name = nil
    current_node = nil

    if not ok then
        counts.handler_errors = counts.handler_errors + 1
        log_handler_error(name, err)
    end
end


local pace


-- Runs the handler of one message, in the runner's light thread.
local function handle(name, data, sender, flags, call_id)
    if band(flags, F_REQUEST) ~= 0 then
        local handlers = _M.handlers
        current_sender = sender
        current_name = name
        current_node = node_name
        handle_request(type(handlers) == "table" and handlers[name] or nil,
                       name, data, sender, call_id)
        current_sender = nil
        current_name = nil
        current_node = nil
        return
    end

    if name == cluster_in then
        -- entries of another node, fanned out here by the cluster agent
        current_batch = data
        cluster.each(data, dispatch, pace)
        current_batch = nil
        return
    end

    dispatch(name, data, sender, node_name)
end


-- Hands a reply to the ipc.call() waiting for it.
local function resolve(call_id, flags, data)
    local call = calls[call_id]
    if not call then
        -- its call timed out: it is too late for anyone
        counts.dropped = counts.dropped + 1
        return
    end

    calls[call_id] = nil

    local status = band(flags, F_STATUS)
    if status == S_OK then
        call.res = data

    elseif status == S_ERROR then
        call.err = "handler error: " .. data

    else
        call.err = "no handler"
    end

    call.sema:post(1)
end


-- A semaphore wait of the light threads, counted for the shutdown watch.
local function wait(sema)
    exit_state.waits = exit_state.waits + 1
    local ok, err = sema:wait(IDLE_WAIT)
    exit_state.waits = exit_state.waits - 1
    return ok, err
end


local run


-- The runner's timer ended while a handler ran: ngx.exit() in a handler, or
-- an error raised in a coroutine it wrapped (which lua-nginx-module logs),
-- ends the whole light thread. That handler is over; start a new runner.
local function restart_runner()
    exit_state.runner_gone = 0
    runner_idle = false

    if current_name then
        local name = current_name
        if #name > 256 then
            name = str_sub(name, 1, 256) .. "..."
        end

        ngx_log(ngx_NOTICE, "ngx_ipc: the handler for message \"", name,
                "\" ended its light thread; delivery goes on in a new one")

        -- an ipc.call() waits for this handler: answer it now
        if current_call then
            counts.handler_errors = counts.handler_errors + 1
            send_reply(current_sender, current_name, S_ERROR, current_call,
                       "the handler ended its light thread (ngx.exit(), or "
                       .. "an error in a coroutine it ran) before it "
                       .. "returned")
            current_call = nil
        end

        current_name = nil
    end

    current_sender = nil
    current_node = nil

    if current_batch then
        -- the rest of that cluster batch goes first in the new runner (what
        -- was handled already is skipped by its sequence numbers)
        local first = q_first - 1
        q_first = first
        q_name[first], q_data[first] = cluster_in, current_batch
        q_sender[first], q_flags[first], q_id[first] = 0, 0, 0
        q_bytes = q_bytes + #current_batch + #cluster_in
        current_batch = nil
    end

    local ok, err = timer_at(0, run)
    if not ok then
        ngx_log(ngx_ERR, "ngx_ipc: cannot restart the runner: ", err)
    end
end


local function queue_full()
    return q_last - q_first + 1 >= QUEUE_MAX or q_bytes >= QUEUE_MAX_BYTES
end


local function reader(premature)
    if premature then
        return
    end

    while true do
        if exit_state.runner_gone ~= 0 and not worker_exiting() then
            restart_runner()
        end

        if queue_full() then
            -- whatever wakes us (room in the queue, a new message, a runner
            -- to replace), the loop looks again
            reader_full = true
            wait(inbox_sema)
            reader_full = false

        else
            local n = C.ngx_ipc_ffi_take(msgs, BATCH)

            if n > 0 then
                -- copy the batch out of shared memory, then give the space
                -- back before any handler runs
                local queued = false
                for i = 0, n - 1 do
                    local m = msgs[i]
                    local data = ffi_string(m.data, m.data_len)
                    local flags = m.flags

                    if band(flags, F_REPLY) ~= 0 then
                        if band(flags, F_STATUS) == S_KICK then
                            if cluster then
                                cluster.kick()
                            end
                        else
                            resolve(m.call_id, flags, data)
                        end

                    else
                        local last = q_last + 1
                        q_last = last
                        q_name[last] = ffi_string(m.name, m.name_len)
                        q_data[last] = data
                        q_sender[last] = m.sender_pid
                        q_flags[last] = flags
                        q_id[last] = m.call_id
                        q_bytes = q_bytes + #data + m.name_len
                        queued = true
                    end
                end

                C.ngx_ipc_ffi_take_done()

                if queued and runner_idle then
                    runner_idle = false
                    work_sema:post(1)
                end

            elseif n == 0 then
                -- a worker shutting down goes on receiving until nothing
                -- but these waits keeps it alive: then the module says so
                if exit_state.release ~= 0 and worker_exiting() then
                    break
                end

                local ok, err = wait(inbox_sema)
                if not ok and err ~= "timeout" then
                    ngx_log(ngx_ERR, "ngx_ipc: reader stopped: ", err)
                    break
                end

            else
                ngx_log(ngx_ERR, "ngx_ipc: reader stopped: receive failed")
                break
            end
        end
    end

    reader_done = true
    work_sema:post(1)
end


-- Counts a handler run; every RUN_BURST of them, visits the event loop.
-- Posted events chain the light threads: without a visit now and then, a
-- burst would starve requests. (Not ngx.sleep(0): without OpenResty's
-- delayed-events patch it logs a warning each time.)
local burst = 0

function pace()
    burst = burst + 1
    if burst >= RUN_BURST then
        burst = 0
        if C.ngx_ipc_ffi_yield(yield_sema.sem) == NGX_OK then
            wait(yield_sema)
        end
    end
end


function run(premature)
    if premature then
        return
    end

    if C.ngx_ipc_ffi_watch_runner(get_request()) ~= NGX_OK then
        ngx_log(ngx_ERR, "ngx_ipc: cannot watch the runner")
    end

    -- marks the runner's context, which the coroutines and light threads a
    -- handler starts share: ipc.sender, ipc.reply and the deadlock check
    ngx.ctx.ngx_ipc_runner = true

    while true do
        local first = q_first
        if first > q_last then
            if reader_done then
                break
            end

            runner_idle = true
            wait(work_sema)
            runner_idle = false

        else
            local name, data = q_name[first], q_data[first]
            local sender, flags, call_id = q_sender[first], q_flags[first],
                                           q_id[first]
            q_name[first], q_data[first] = nil, nil
            q_first = first + 1
            q_bytes = q_bytes - #data - #name

            if reader_full and not queue_full() then
                reader_full = false
                inbox_sema:post(1)
            end

            handle(name, data, sender, flags, call_id)
            pace()
        end
    end

end


-- A broadcast to this node's workers, for the cluster agent.
local function broadcast_local(name, data)
    if C.ngx_ipc_ffi_broadcast(name, #name, data, #data, 1, errmsg)
       == NGX_OK
    then
        return true
    end

    return nil, ffi_string(errmsg[0])
end


-- Attaches this worker and starts its light threads, once per worker. Does
-- nothing in the master (init_by_lua*): the first call in a worker does it.
local function start()
    if started then
        return true
    end

    if get_phase() == "init" then
        return nil
    end

    -- the module keeps a pointer to it: keep a reference for the GC
    inbox_sema = inbox_sema or semaphore.new(0)
    work_sema = work_sema or semaphore.new(0)
    yield_sema = yield_sema or semaphore.new(0)
    space_sema = space_sema or semaphore.new(0)

    if C.ngx_ipc_ffi_start(inbox_sema.sem, errmsg) ~= NGX_OK then
        return nil, ffi_string(errmsg[0])
    end

    counts = C.ngx_ipc_ffi_lua_counters()
    exit_state = C.ngx_ipc_ffi_exit_state()

    if cluster == nil then
        local mod = require "ngx.ipc.cluster"
        local cfg = mod.init({ broadcast_local = broadcast_local,
                               new_sema = semaphore.new })
        cluster = cfg and mod or false
        if cfg then
            cluster_in = mod.IN_NAME
            node_name = cfg.node
        end
    end

    -- each light thread is started once, even if the other one failed to
    local ok, err = true, nil
    if not runner_started then
        ok, err = timer_at(0, run)
        runner_started = ok
    end

    if ok then
        ok, err = timer_at(0, reader)
    end

    if not ok then
        ngx_log(ngx_ERR, "ngx_ipc: cannot start: ", err)
        return nil, err
    end

    started = true
    return true
end


local function refuse(err)
    if counts then
        counts.refused = counts.refused + 1
    end

    return nil, err
end


-- What a send or broadcast returns for the module's return code.
local function result(rc)
    if rc == NGX_OK then
        return true
    end

    if rc == NGX_ERROR then
        not_available()
    end

    return nil, ffi_string(errmsg[0])
end


-- Sends a message whose arguments were checked.
local function send(pid, name, data, flags, call_id)
    start()

    if pid <= 0 or pid > 0x7fffffff or pid % 1 ~= 0 then
        return refuse("no such worker")
    end

    return result(C.ngx_ipc_ffi_send(pid, name, #name, data, #data,
                                     flags or 0, call_id or 0, errmsg))
end


-- opts.wait of send and broadcast: nil (do not wait) or the seconds to
-- wait for room, where the caller can yield.
local function check_wait(opts, n, fname)
    local w = opts.wait
    if w == nil then
        return nil
    end

    if type(w) ~= "number" then
        bad_arg(n, fname, "wait: number expected, got " .. type(w))
    end

    if not (w >= 0) then            -- NaN too
        bad_arg(n, fname, "wait: non-negative number expected")
    end

    if w == 0 then
        return nil          -- no waiting: a plain send, anywhere
    end

    local phase = get_phase()
    if not YIELDABLE[phase] then
        error("ipc." .. fname .. " with wait is not allowed in the context of "
              .. phase .. " (it must be able to yield, like ngx.sleep)", 3)
    end

    if w > MAX_WAIT then
        w = MAX_WAIT
    end

    return w
end


-- Takes the first waiting send out of the FIFO once it is done, and lets
-- the next one try.
local function wq_leave(me)
    me.done = true

    local head = wq[wq_first]
    if head ~= me then
        return              -- the first one is still waiting: nothing moves
    end

    while wq_first <= wq_last and wq[wq_first].done do
        wq[wq_first] = nil
        wq_first = wq_first + 1
    end

    if wq_first <= wq_last then
        wq[wq_first].sema:post(1)

    else
        wq_first, wq_last = 1, 0
    end
end


-- A send or broadcast that waits up to `timeout` seconds for room when the
-- destination's backlog is full. The waiting sends of this worker go in
-- arrival order: only the first one tries, and it is woken by the module
-- when a receiver frees space (no polling); the others wait for their turn.
local function send_waiting(timeout, try, a, b, c)
    if wq_first > wq_last then
        local ok, err = try(a, b, c)
        if ok then
            return true
        end

        if err ~= "queue full" then
            return nil, err
        end

        counts.refused = counts.refused - 1   -- not refused yet: it waits
    end

    local deadline = ngx_now() + timeout
    local me = { sema = semaphore.new(0), done = false, deadline = deadline }
    wq_last = wq_last + 1
    wq[wq_last] = me

    local ok, err
    local counted = false   -- a refusal the send itself counted
    while true do
        local head = wq[wq_first]
        if head ~= me and ngx_now() > head.deadline + 1 then
            -- its light thread was killed while it waited (it would have
            -- left by itself by now): it must not hold up the others
            wq_leave(head)
        end

        if wq[wq_first] == me then
            ok, err = try(a, b, c)
            if ok or err ~= "queue full" then
                counted = true
                break
            end

            counts.refused = counts.refused - 1
        end

        -- (a semaphore wait under 1 ms returns at once without yielding,
        -- and ngx.now() would not move: that would spin)
        local left = deadline - ngx_now()
        if left < 0.001 then
            ok, err = nil, "timeout"
            break
        end

        local wok, werr
        if wq[wq_first] == me then
            C.ngx_ipc_ffi_wait_space(space_sema.sem)
            wok, werr = space_sema:wait(left)

        else
            -- until our turn, or until the first one is overdue
            local overdue = wq[wq_first].deadline + 1.001 - ngx_now()
            wok, werr = me.sema:wait(overdue < left and overdue > 0.001
                                     and overdue or left)
        end

        if not wok and werr ~= "timeout" then
            ok, err = nil, werr
            break
        end
    end

    if wq[wq_first] == me then
        C.ngx_ipc_ffi_wait_space(nil)
    end

    wq_leave(me)

    if ok then
        return true
    end

    if not counted then
        counts.refused = counts.refused + 1
    end

    return nil, err
end


function _M.send(pid, name, data, opts)
    pid = check_pid(pid, 1, "send")
    name = check_name(name, 2, "send")
    data = check_data(data, 3, "send")

    if opts ~= nil then
        check_type(opts, "table", 4, "send")

        local timeout = check_wait(opts, 4, "send")
        if timeout then
            start()
            return send_waiting(timeout, send, pid, name, data)
        end
    end

    return send(pid, name, data)
end


local function broadcast(name, data, include_self)
    return result(C.ngx_ipc_ffi_broadcast(name, #name, data, #data,
                                          include_self and 1 or 0, errmsg))
end


-- Here at once through the local path, to the other nodes by the agent.
local function cluster_broadcast(name, data, include_self)
    local rc = cluster.broadcast(name, data, include_self, kick_pid, errmsg)
    if rc ~= NGX_OK then
        return result(rc)
    end

    if kick_pid[0] > 0 then
        -- the agent sleeps: wake it (if this fails, it wakes within 1 s)
        C.ngx_ipc_ffi_send(kick_pid[0], REPLY_NAME, #REPLY_NAME, "", 0,
                           bor(F_REPLY, S_KICK), 0, errmsg)
    end

    return true
end


function _M.broadcast(name, data, opts)
    name = check_name(name, 1, "broadcast")
    data = check_data(data, 2, "broadcast")

    local include_self, scope = true, nil
    local timeout
    if opts ~= nil then
        check_type(opts, "table", 3, "broadcast")

        if opts.include_self ~= nil then
            include_self = opts.include_self and true or false
        end

        scope = opts.scope
        if scope ~= nil and scope ~= "local" and scope ~= "cluster" then
            error("bad argument #3 to 'broadcast' (scope \"local\" or "
                  .. "\"cluster\" expected, got " .. tostring(scope) .. ")", 2)
        end

        timeout = check_wait(opts, 3, "broadcast")

        if scope == "cluster" and str_sub(name, 1, #CLUSTER_RESERVED)
                                  == CLUSTER_RESERVED
        then
            -- every node refuses such an entry: ngx_ipc's own messages
            error("bad argument #1 to 'broadcast' (names that start with \""
                  .. CLUSTER_RESERVED .. "\" are kept for ngx_ipc)", 2)
        end

        if timeout and scope == "cluster" then
            -- the outbox drains at Redis's pace, not a local receiver's:
            -- no local event would wake such a wait
            error("bad argument #3 to 'broadcast' (wait is not available "
                  .. "with scope \"cluster\": check for \"queue full\")", 2)
        end
    end

    start()

    local fn = broadcast
    if scope == "cluster" then
        if not cluster then
            if not started then
                not_available()
            end
            return refuse("no ipc_cluster in this configuration")
        end

        fn = cluster_broadcast
    end

    if timeout then
        return send_waiting(timeout, fn, name, data, include_self)
    end

    return fn(name, data, include_self)
end


-- The handlers table to register into (ipc.handlers, made anew if a user
-- replaced it with something that is not a table).
local function handlers_table()
    local handlers = _M.handlers
    if type(handlers) ~= "table" then
        handlers = {}
        _M.handlers = handlers
    end

    return handlers
end


-- receive(name, handler), receive(name, nil), receive({ name = handler })
function _M.receive(name, handler)
    if get_phase() == "init" then
        -- the master's VM: no worker would run them (as ngx_lua_ipc says)
        error("ipc.receive cannot be used in init_by_lua*: register "
              .. "handlers in init_worker_by_lua*", 2)
    end

    if type(name) == "table" then
        if handler ~= nil then
            error("bad argument #2 to 'receive' (nil expected with a table "
                  .. "of handlers, got " .. type(handler) .. ")", 2)
        end

        -- check them all before registering any
        local names = {}
        for k, v in pairs(name) do
            local tk = type(k)
            if tk == "number" then
                k = tostring(k)

            elseif tk ~= "string" or k == "" then
                error("bad argument #1 to 'receive' (table keys must be "
                      .. "non-empty strings, got " .. tk .. ")", 2)
            end

            if #k > MAX_NAME then
                return nil, "name too long"
            end

            if type(v) ~= "function" then
                error("bad argument #1 to 'receive' (function expected for \""
                      .. k .. "\", got " .. type(v) .. ")", 2)
            end

            names[k] = v
        end

        local handlers = handlers_table()
        for k, v in pairs(names) do
            handlers[k] = v
        end

    else
        name = check_name(name, 1, "receive")

        if handler ~= nil then
            check_type(handler, "function", 2, "receive")
        end

        if #name > MAX_NAME then
            return nil, "name too long"    -- no message could carry it
        end

        handlers_table()[name] = handler
    end

    start()
    return true
end


-- ipc.reply(name, data): a new message to the sender of the message being
-- handled, as in ngx_lua_ipc: ipc.send(ipc.sender, name, data). It is not
-- the answer to an ipc.call (that is the handler's return value, sent by
-- send_reply() above); the name "reply" is kept for compatibility.
function _M.reply(name, data)
    if current_sender == nil or not in_runner() then
        if current_name and in_runner() then
            error("ipc.reply cannot answer a message from another node "
                  .. "(ipc.sender_node is " .. tostring(current_node) .. ")",
                  2)
        end
        error("ipc.reply called outside an ipc handler", 2)
    end

    name = check_name(name, 1, "reply")
    data = check_data(data, 2, "reply")
    return send(current_sender, name, data)
end


function _M.call(pid, name, data, timeout)
    pid = check_pid(pid, 1, "call")
    name = check_name(name, 2, "call")
    data = check_data(data, 3, "call")

    if timeout == nil then
        timeout = CALL_TIMEOUT

    else
        check_type(timeout, "number", 4, "call")
    end

    if not (timeout > 0) then      -- NaN too
        error("bad argument #4 to 'call' (positive number expected)", 2)
    end

    if timeout > MAX_WAIT then
        timeout = MAX_WAIT
    end

    local phase = get_phase()
    if not YIELDABLE[phase] then
        error("ipc.call is not allowed in the context of " .. phase
              .. " (it must be able to yield, like ngx.sleep)", 2)
    end

    start()

    if pid == worker_pid() and in_runner() then
        return refuse("would deadlock")
    end

    local id = last_call_id
    repeat
        id = id % 0xffffffff + 1
    until calls[id] == nil
    last_call_id = id

    local ok, err = send(pid, name, data, F_REQUEST, id)
    if not ok then
        return nil, err
    end

    local call = { sema = semaphore.new(0) }
    calls[id] = call
    counts.calls = counts.calls + 1

    ok, err = call.sema:wait(timeout)
    if not ok then
        calls[id] = nil
        if err == "timeout" then
            counts.call_timeouts = counts.call_timeouts + 1
        end

        return nil, err
    end

    if call.err then
        return nil, call.err
    end

    return call.res
end


-- pids(): the PIDs of this configuration's workers (entry i is worker
-- i - 1), false where none runs now. pids({ all = true }): the same, then
-- the PIDs of the other configurations' workers that still run (the old
-- ones draining after a reload, or, seen from an old worker, the new
-- ones), by generation, then worker id.
function _M.pids(opts)
    if opts ~= nil and type(opts) ~= "table" then
        error("bad argument #1 to 'pids' (table expected, got "
              .. type(opts) .. ")", 2)
    end

    start()

    local n = C.ngx_ipc_ffi_pids(pids_buf, MAX_SLOTS)
    if n < 0 then
        not_available()
    end

    local t = {}
    for i = 1, n do
        local pid = pids_buf[i - 1]
        t[i] = pid ~= 0 and pid or false
    end

    if opts and opts.all then
        local m = C.ngx_ipc_ffi_peers(peers_buf, C.NGX_IPC_BRIDGE_SLOTS)
        local others = {}
        for i = 1, m do
            local p = peers_buf[i - 1]
            others[i] = { tonumber(p.generation), tonumber(p.worker),
                          tonumber(p.pid) }
        end

        table.sort(others, function(a, b)
            if a[1] ~= b[1] then
                return a[1] < b[1]
            end

            return a[2] < b[2]
        end)

        for i = 1, m do
            t[n + i] = others[i][3]
        end
    end

    return t
end


-- The cluster link's state, { enabled = false } without ipc_cluster.
function _M.cluster()
    start()

    if not cluster then
        return { enabled = false, connected = false }
    end

    return cluster.state()
end


-- ngx_lua_ipc's: the PIDs of the other running workers of this
-- configuration, in worker id order.
function _M.get_other_worker_pids()
    local me = worker_pid()
    local t, n = {}, 0
    for _, pid in ipairs(_M.pids()) do
        if pid and pid ~= me then
            n = n + 1
            t[n] = pid
        end
    end

    return t
end


local function counters(s)
    return {
        sent = tonumber(s.sent),
        received = tonumber(s.received),
        sent_bytes = tonumber(s.sent_bytes),
        received_bytes = tonumber(s.received_bytes),
        dropped = tonumber(s.dropped),
        refused = tonumber(s.refused),
        handler_errors = tonumber(s.handler_errors),
        calls = tonumber(s.calls),
        call_timeouts = tonumber(s.call_timeouts),
        queued_bytes = tonumber(s.queued_bytes),
        resets = tonumber(s.resets),
    }
end


-- A worker's counters as read from shared memory, plus who it is.
local function worker_stats(ws)
    local t = counters(ws.stats)
    t.worker = tonumber(ws.slot)
    t.pid = ws.pid ~= 0 and tonumber(ws.pid) or false
    t.incarnation = tonumber(ws.incarnation)
    t.state = STATES[ws.state] or "unknown"
    t.busy_poll_seconds = tonumber(ws.busy_poll_ns) / 1e9
    return t
end


-- stats(): this worker's counters. stats(pid): those of the worker with
-- that PID (nil, "no such worker" if none of this configuration has it).
-- stats("all"): an array of every worker's, ordered by ngx.worker.id()
-- (entry i is worker i - 1).
function _M.stats(which)
    start()

    if which == nil then
        if C.ngx_ipc_ffi_stats(own_stats) ~= NGX_OK then
            not_available()
        end

        return counters(own_stats)
    end

    local pid
    if which ~= "all" then
        pid = tonumber(which)
        if (type(which) ~= "number" and type(which) ~= "string")
           or pid == nil
        then
            error("bad argument #1 to 'stats' (number or \"all\" expected, "
                  .. "got " .. (type(which) == "string"
                                and "\"" .. str_sub(which, 1, 32) .. "\""
                                or type(which)) .. ")", 2)
        end
    end

    local n = C.ngx_ipc_ffi_worker_status(-1, wstatus)
    if n < 0 then
        not_available()
    end

    local all = {}
    for i = 0, n - 1 do
        C.ngx_ipc_ffi_worker_status(i, wstatus)

        if not pid then
            all[i + 1] = worker_stats(wstatus)

        elseif wstatus.pid == pid and pid > 0 then
            return worker_stats(wstatus)
        end
    end

    if pid then
        return nil, "no such worker"
    end

    return all
end


-- ipc.sender: the sender's PID while a handler runs (in the runner's light
-- thread; nil for a message from another node), nil anywhere else.
-- ipc.sender_node: the node the message came from (this node's name for a
-- local one), with ipc_cluster; nil anywhere else. Setting ipc.default_handler starts this
-- worker's delivery, as receive() does.
return setmetatable(_M, {
    __index = function(_, key)
        if key == "sender" and in_runner() then
            return current_sender
        end

        if key == "sender_node" and in_runner() then
            return current_node
        end
    end,

    __newindex = function(t, key, value)
        rawset(t, key, value)
        if key == "default_handler" and value ~= nil then
            start()
        end
    end,
})
