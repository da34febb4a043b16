-- ngx.ipc.cluster: the link between this nginx and the others of a cluster,
-- through one Redis stream (the ipc_cluster directive). Loaded by ngx.ipc.
--
-- One worker per node, the agent, holds the link: every worker asks for the
-- lease four times a second (ngx_ipc_ffi_cluster_lease), so that a dead or
-- hung agent is replaced within a second. The agent runs two light threads,
-- each with its own Redis connection:
--   the writer takes the node's cluster broadcasts from the outbox in shared
--   memory and adds them to the stream, a batch per entry (XADD MAXLEN ~);
--   it moves the outbox's tail only once Redis acknowledged them, so that
--   an agent killed mid-batch leaves them for the next one;
--   the reader follows the stream (XREAD BLOCK from the last id, kept in
--   shared memory) and fans every entry of another node out to this node's
--   workers through the local path.
-- An entry carries its node's name (n), the node's epoch (e: the life of
-- its shared memory), how many messages it holds (c), the first and last
-- of their sequence numbers (f, l), and the messages (m), each with its own:
--   m = { "<seq>\n<pid>\n<name length>\n<data length>\n" name data }
-- The reader hands an entry to the local workers whole; a worker drops a
-- sequence number it has seen from that node and epoch, so a message sent
-- twice (by an agent that died before it could commit) is handled once.
-- See docs/ARCHITECTURE.md.

local ffi = require "ffi"

local C = ffi.C
local ffi_new = ffi.new
local ffi_string = ffi.string
local math_floor = math.floor
local math_max = math.max
local math_min = math.min
local pairs = pairs
local pcall = pcall
local concat = table.concat
local str_find = string.find
local str_sub = string.sub
local tonumber = tonumber
local tostring = tostring
local type = type
local ngx = ngx
local ngx_log = ngx.log
local ngx_ERR = ngx.ERR
local ngx_WARN = ngx.WARN
local ngx_NOTICE = ngx.NOTICE
local ngx_null = ngx.null
local ngx_now = ngx.now
local ngx_sleep = ngx.sleep
local timer_at = ngx.timer.at
local timer_every = ngx.timer.every
local update_time = ngx.update_time
local worker_exiting = ngx.worker.exiting


local NGX_OK = 0
local LEASE_PERIOD = 0.25      -- seconds between two lease checks
local BATCH = 1024             -- messages per stream entry, at most (and
                               -- about max_message bytes)
local READ_BUDGET = 64 * 1024 * 1024   -- bytes an XREAD may bring, at most:
                               -- its COUNT is this over max_message
local BLOCK_MS = 500           -- XREAD BLOCK: how soon an exiting agent ends
local TIMEOUT_MS = 2000        -- socket timeouts
local BACKOFF_MIN, BACKOFF_MAX = 0.1, 5   -- seconds between reconnects
local LOG_PERIOD = 10          -- seconds between two lines of one failure
local NODES_PERIOD = 1         -- seconds between two records of our position
local IN_NAME = "ipc:cluster:in"    -- the local message that carries an entry
local GAP_NAME = "ipc:cluster_gap"  -- the user's hook

require "ngx.ipc.ffi"   -- ffi.cdef of src/ngx_ipc_ffi.h, the C ABI

-- counter indexes and texts (src/ngx_ipc_ffi.h)
local K_PUBLISHED = C.NGX_IPC_FFI_CLUSTER_PUBLISHED
local K_REFUSED = C.NGX_IPC_FFI_CLUSTER_REFUSED
local K_ADDED = C.NGX_IPC_FFI_CLUSTER_ADDED
local K_RECEIVED = C.NGX_IPC_FFI_CLUSTER_RECEIVED
local K_GAPS = C.NGX_IPC_FFI_CLUSTER_GAPS
local K_RECONNECTS = C.NGX_IPC_FFI_CLUSTER_RECONNECTS
local K_ERRORS = C.NGX_IPC_FFI_CLUSTER_ERRORS
local K_CONNECTED = C.NGX_IPC_FFI_CLUSTER_CONNECTED
local K_LAG_MS = C.NGX_IPC_FFI_CLUSTER_LAG_MS
local K_NODE_CLASHES = C.NGX_IPC_FFI_CLUSTER_NODE_CLASHES
local TEXT_MAX = C.NGX_IPC_FFI_CLUSTER_TEXT_MAX
local T_LAST_ID = C.NGX_IPC_FFI_CLUSTER_LAST_ID
local T_LAST_ERROR = C.NGX_IPC_FFI_CLUSTER_LAST_ERROR
local COUNTER_NAMES = {
    [K_PUBLISHED] = "published", [K_REFUSED] = "refused",
    [K_ADDED] = "added", [K_RECEIVED] = "received", [K_GAPS] = "gaps",
    [K_RECONNECTS] = "reconnects", [K_ERRORS] = "errors",
    [K_NODE_CLASHES] = "node_clashes",
}




local _M = { IN_NAME = IN_NAME }

local cfg                -- this node's settings, from the directive
local redis              -- lua-resty-redis
local ipc_api            -- what ngx.ipc lends us (see init)
local counters           -- uint64_t * into the zone
local kick_sema          -- the writer sleeps on it; a kick posts it
local agent_pid = ffi_new("int[1]")
local peek_end = ffi_new("uint64_t[1]")
local entries = ffi_new("ngx_ipc_cluster_entry_t[?]", BATCH)
local text_buf = ffi_new("char[?]", TEXT_MAX)

local agent = false      -- this worker runs the agent's light threads
local threads = 0        -- of them, running
local start_id           -- where this agent started reading
local seen = {}          -- node .. "/" .. epoch -> highest seq handled
local followed = {}      -- the agent's: node .. "/" .. epoch -> last seq read


-- A failure logged at most once per LOG_PERIOD per kind, with a count of
-- the ones not logged.
local log_last, log_skipped = {}, {}

local function log_limited(level, kind, ...)
    local now = ngx_now()
    local last = log_last[kind]
    if last and now - last < LOG_PERIOD then
        log_skipped[kind] = (log_skipped[kind] or 0) + 1
        return
    end

    local skipped = log_skipped[kind] or 0
    log_last[kind], log_skipped[kind] = now, 0
    local text = concat({ ... })
    if skipped > 0 then
        ngx_log(level, "ngx_ipc cluster: ", text, " (", skipped,
                " more since the last such line)")
    else
        ngx_log(level, "ngx_ipc cluster: ", text)
    end
end


local function get_text(which)
    local n = C.ngx_ipc_ffi_cluster_get_text(which, text_buf, TEXT_MAX)
    if n <= 0 then
        return ""
    end

    return ffi_string(text_buf, n)
end


local function set_text(which, s)
    C.ngx_ipc_ffi_cluster_set_text(which, s, #s)
end


local function fail(kind, msg)
    C.ngx_ipc_ffi_cluster_count(K_ERRORS, 1)
    set_text(T_LAST_ERROR, msg)
    log_limited(ngx_ERR, kind, msg, " (", cfg.where, ")")
end


-- "ms-seq" ids, compared as Redis does
local function parse_id(id)
    local dash = str_find(id, "-", 1, true)
    if not dash then
        return tonumber(id) or 0, 0
    end

    return tonumber(str_sub(id, 1, dash - 1)) or 0,
           tonumber(str_sub(id, dash + 1)) or 0
end


local function id_greater(a, b)
    local am, as = parse_id(a)
    local bm, bs = parse_id(b)
    return am > bm or (am == bm and as > bs)
end


local function active()
    return agent and not worker_exiting()
end


-- A Redis connection, authenticated, on the right database, named for
-- CLIENT LIST ("ngx_ipc:<node>:reader").
local function connect(role)
    local red = redis:new()
    red:set_timeout(TIMEOUT_MS)

    local ok, err = red:connect(cfg.host, cfg.port)
    if not ok then
        return nil, "cannot connect: " .. tostring(err)
    end

    if cfg.password ~= "" then
        if cfg.user ~= "" then
            ok, err = red:auth(cfg.user, cfg.password)
        else
            ok, err = red:auth(cfg.password)
        end

        if not ok then
            red:close()
            return nil, "authentication failed: " .. tostring(err)
        end
    end

    if cfg.db ~= 0 then
        ok, err = red:select(cfg.db)
        if not ok then
            red:close()
            return nil, "SELECT " .. cfg.db .. " failed: " .. tostring(err)
        end
    end

    ok, err = red:client("SETNAME", cfg.client_name .. role)
    if not ok then
        red:close()
        return nil, "CLIENT SETNAME failed: " .. tostring(err)
    end

    return red
end


-- Waits `seconds` before a retry, in slices, so that a worker that shuts
-- down is not held by the agent's backoff.
local function pause(seconds)
    while seconds > 0 and active() do
        local slice = math_min(seconds, 0.25)
        ngx_sleep(slice)
        seconds = seconds - slice
    end
end


-- Delivers a message to every worker of this node through the local path,
-- waiting while a worker's queue is full (nothing may be lost here).
local function deliver_local(name, data)
    while true do
        local ok, err = ipc_api.broadcast_local(name, data)
        if ok then
            return true
        end

        if err ~= "queue full" or not active() then
            return nil, err
        end

        ngx_sleep(0.001)
    end
end


local function report_gap(reason)
    C.ngx_ipc_ffi_cluster_count(K_GAPS, 1)
    ngx_log(ngx_WARN, "ngx_ipc cluster: this node missed entries of stream \"",
            cfg.stream, "\": ", reason, "; \"", GAP_NAME,
            "\" handlers are told")
    local ok, err = deliver_local(GAP_NAME, reason)
    if not ok then
        ngx_log(ngx_ERR, "ngx_ipc cluster: cannot tell the gap: ", err)
    end
end


-- XINFO STREAM as a table; nil if the stream does not exist.
local function stream_info(red)
    local res, err = red:xinfo("STREAM", cfg.stream)
    if not res then
        if err and str_find(err, "no such key", 1, true) then
            return {}
        end
        return nil, err
    end

    local t = {}
    for i = 1, #res, 2 do
        t[res[i]] = res[i + 1]
    end
    return t
end


-- Were entries after `id` trimmed (or deleted) before we read them?
-- Trimming takes the oldest first, so while the stream still holds `id`
-- nothing after it is gone. Once `id` is gone too, Redis cannot tell
-- whether the trim stopped right after it: if the stream's oldest entry
-- (or, empty, its last generated id) is newer, count it a gap. (It may be
-- one too many, never one too few.)
local function check_trimmed(red, id)
    if id == "0-0" then
        return true
    end

    local info, err = stream_info(red)
    if not info then
        return nil, err
    end

    local deleted = info["max-deleted-entry-id"]
    local gap = type(deleted) == "string" and id_greater(deleted, id)

    if not gap and info["length"] ~= nil then
        local here
        here, err = red:xrange(cfg.stream, id, id)
        if not here then
            return nil, err
        end

        if #here == 0 then
            local first = info["first-entry"]
            local oldest = type(first) == "table" and first[1]
                           or info["last-generated-id"]
            gap = type(oldest) == "string" and id_greater(oldest, id)
        end
    end

    if gap then
        -- what was lost is told once: numbering starts anew from here
        followed = {}
        report_gap("the stream was trimmed past " .. id
                   .. " before this node read what followed")
    end

    return true
end


-- Where the reader starts: the last id fanned out here (kept in shared
-- memory, so it outlives an agent and a reload), else the stream's end.
local function resume(red)
    local last = get_text(T_LAST_ID)
    if last ~= "" then
        local ok, err = check_trimmed(red, last)
        if not ok then
            return nil, err
        end
        return last
    end

    -- a fresh node: start at the end; if an earlier run of this node left
    -- its position and entries came after it, they were missed
    local info, err = stream_info(red)
    if not info then
        return nil, err
    end

    last = info["last-generated-id"]
    if type(last) ~= "string" then
        last = "0-0"
    end

    local prev
    prev, err = red:hget(cfg.nodes_key, cfg.node)
    if prev == nil then
        return nil, err
    end

    if prev ~= ngx_null and id_greater(last, prev) then
        report_gap("this node (re)started with no memory of the stream; "
                   .. "entries after " .. prev .. " (its last position) "
                   .. "were not seen")
    end

    set_text(T_LAST_ID, last)
    return last
end


-- Fans one stream entry out to this node's workers. Returns false when
-- the agent stops before it could.
local function fan_out(id, fields)
    local f = {}
    for i = 1, #fields, 2 do
        f[fields[i]] = fields[i + 1]
    end

    local node, epoch, count, msgs = f.n, f.e, tonumber(f.c), f.m
    local first, last = tonumber(f.f), tonumber(f.l)
    if type(node) ~= "string" or type(epoch) ~= "string"
       or not count or type(msgs) ~= "string" or not first or not last
    then
        log_limited(ngx_WARN, "foreign", "entry ", id, " of stream \"",
                    cfg.stream, "\" is not ngx_ipc's: skipped")
        return true
    end

    if node == cfg.node then
        if epoch == cfg.epoch then
            return true            -- ours: delivered here at once
        end

        if id_greater(id, start_id) then
            C.ngx_ipc_ffi_cluster_count(K_NODE_CLASHES, 1)
            log_limited(ngx_ERR, "clash", "another nginx uses this node's ",
                        "name \"", node, "\" (set node= in ipc_cluster); ",
                        "its messages are delivered here all the same")
        end
    end

    -- a node numbers its messages 1, 2, 3...: a number skipped in the
    -- stream is a message Redis lost (a crash that lost acknowledged
    -- writes), or that was deleted; a number seen again is a resend
    local key = node .. "/" .. epoch
    local prev = followed[key]
    if prev and first > prev + 1 then
        report_gap("messages " .. prev + 1 .. " to " .. first - 1 .. " of node "
                   .. node .. " are missing from the stream")
    end
    if not prev or last > prev then
        followed[key] = last
    end

    local ok, err = deliver_local(IN_NAME, node .. "\n" .. epoch .. "\n"
                                           .. msgs)
    if not ok then
        if not active() then
            return false
        end

        log_limited(ngx_ERR, "fanout", "entry ", id, " (", #msgs,
                    " bytes) not delivered here: ", err)
    end

    C.ngx_ipc_ffi_cluster_count(K_RECEIVED, count)
    return true
end


local function reader_loop()
    local red, err, last
    local backoff = BACKOFF_MIN
    local first = true
    local recorded = 0

    while active() do
        if not red then
            red, err = connect("reader")
            if red then
                last, err = resume(red)
                if not last then
                    red:close()
                    red = nil
                    err = "cannot resume: " .. tostring(err)
                end
            end

            if not red then
                C.ngx_ipc_ffi_cluster_gauge(K_CONNECTED, 0)
                fail("reader", err)
                pause(backoff)
                backoff = math_min(backoff * 2, BACKOFF_MAX)

            else
                if not first then
                    C.ngx_ipc_ffi_cluster_count(K_RECONNECTS, 1)
                    ngx_log(ngx_NOTICE, "ngx_ipc cluster: connected again to ",
                            cfg.where, ", resuming after ", last)
                end
                first = false
                start_id = start_id or last
                backoff = BACKOFF_MIN
                C.ngx_ipc_ffi_cluster_gauge(K_CONNECTED, 1)
            end

        else
            local res
            res, err = red:xread("COUNT", cfg.read_count, "BLOCK", BLOCK_MS,
                                 "STREAMS", cfg.stream, last)
            if not res then
                red:close()
                red = nil
                C.ngx_ipc_ffi_cluster_gauge(K_CONNECTED, 0)
                fail("reader", "XREAD failed: " .. tostring(err))

            elseif res ~= ngx_null then
                local list = res[1] and res[1][2] or {}
                local n = #list
                for i = 1, n do
                    local entry = list[i]
                    if type(entry[2]) == "table"
                       and not fan_out(entry[1], entry[2])
                    then
                        break
                    end

                    last = entry[1]
                    set_text(T_LAST_ID, last)
                end

                if n > 0 then
                    update_time()
                    local ms = parse_id(last)
                    local lag = ngx_now() * 1000 - ms
                    C.ngx_ipc_ffi_cluster_gauge(K_LAG_MS, lag > 0 and lag or 0)
                end

                -- a full batch: we are behind, and trimming may overtake us
                if n >= cfg.read_count then
                    check_trimmed(red, last)
                end
            end

            -- our position, for the gap check of a later run of this node
            if red and ngx_now() - recorded >= NODES_PERIOD then
                recorded = ngx_now()
                red:hset(cfg.nodes_key, cfg.node, last)
            end
        end
    end

    if red then
        red:close()
    end
end


local function writer_loop()
    local red, err
    local pos = C.ngx_ipc_ffi_cluster_tail()
    local backoff = BACKOFF_MIN

    while active() do
        local n = C.ngx_ipc_ffi_cluster_peek(entries, BATCH, cfg.max_message,
                                             pos, peek_end)
        if n <= 0 then
            if C.ngx_ipc_ffi_cluster_arm(pos) == 0 then
                kick_sema:wait(1)
            end

        elseif not red then
            red, err = connect("writer")
            if not red then
                fail("writer", err)
                pause(backoff)
                backoff = math_min(backoff * 2, BACKOFF_MAX)
            end

        else
            local parts, np = {}, 0
            for i = 0, n - 1 do
                local e = entries[i]
                parts[np + 1] = tonumber(e.seq) .. "\n" .. e.pid .. "\n"
                                .. e.name_len .. "\n"
                                .. tonumber(e.data_len) .. "\n"
                parts[np + 2] = ffi_string(e.name, e.name_len)
                parts[np + 3] = ffi_string(e.data, e.data_len)
                np = np + 3
            end

            local res
            res, err = red:xadd(cfg.stream, "MAXLEN", "~", cfg.maxlen, "*",
                                "n", cfg.node, "e", cfg.epoch, "c", n,
                                "f", tonumber(entries[0].seq),
                                "l", tonumber(entries[n - 1].seq),
                                "m", concat(parts, "", 1, np))
            if res == nil then
                -- the connection failed: the batch goes again on a new one
                red:close()
                red = nil
                fail("writer", "XADD failed: " .. tostring(err))

            elseif not res then
                -- Redis refused it (false, its error): nothing is
                -- committed, it goes again after a while
                fail("writer", "XADD refused: " .. tostring(err))
                pause(backoff)
                backoff = math_min(backoff * 2, BACKOFF_MAX)

            else
                pos = peek_end[0]
                C.ngx_ipc_ffi_cluster_commit(pos)
                C.ngx_ipc_ffi_cluster_count(K_ADDED, n)
                backoff = BACKOFF_MIN
            end
        end
    end

    if red then
        red:close()
    end
end


local function thread(fn)
    return function(premature)
        if premature then
            return
        end

        threads = threads + 1
        local ok, err = pcall(fn)
        threads = threads - 1
        if not ok then
            log_limited(ngx_ERR, "thread", "agent thread failed: ", err)
        end

        -- one thread ended: the other stops too, the lease is given back,
        -- and the next lease check starts the agent afresh
        agent = false

        if threads == 0 then
            agent = false
            C.ngx_ipc_ffi_cluster_gauge(K_CONNECTED, 0)
            C.ngx_ipc_ffi_cluster_release()
            ngx_log(ngx_NOTICE, "ngx_ipc cluster: this worker is no longer ",
                    "the agent of node \"", cfg.node, "\"",
                    worker_exiting() and " (it is shutting down)" or "")
        end
    end
end


local function start_agent()
    agent = true
    start_id = nil
    ngx_log(ngx_NOTICE, "ngx_ipc cluster: this worker is the agent of node \"",
            cfg.node, "\" (", cfg.where, ", stream \"", cfg.stream, "\")")

    local ok, err = timer_at(0, thread(reader_loop))
    if ok then
        ok, err = timer_at(0, thread(writer_loop))
    end

    if not ok then
        log_limited(ngx_ERR, "start", "cannot start the agent: ", err)
    end
end


local function lease_tick(premature)
    if premature then
        return
    end

    local mine = C.ngx_ipc_ffi_cluster_lease(agent_pid)
    if mine == 1 and not agent and threads == 0 then
        start_agent()

    elseif mine ~= 1 and agent then
        agent = false              -- another took over (we hung): stop
    end
end


-- Called by ngx.ipc at its start in a worker. api: broadcast_local(name,
-- data) -> ok, err; new_sema() -> an ngx.semaphore.
function _M.init(api)
    local info = ffi_new("ngx_ipc_cluster_info_t")
    if C.ngx_ipc_ffi_cluster_info(info) ~= NGX_OK then
        return nil
    end

    local ok, lib = pcall(require, "nginx.redis")      -- Debian's package
    if not ok then
        ok, lib = pcall(require, "resty.redis")        -- OpenResty's
    end

    cfg = {
        host = ffi_string(info.host, info.host_len),
        port = info.port,
        db = info.db,
        user = ffi_string(info.user, info.user_len),
        password = ffi_string(info.password, info.password_len),
        stream = ffi_string(info.stream, info.stream_len),
        node = ffi_string(info.node, info.node_len),
        maxlen = tonumber(info.maxlen),
        max_message = tonumber(info.max_message),
        epoch = (tostring(info.epoch):gsub("ULL$", "")),
    }
    cfg.where = "redis://" .. cfg.host .. ":" .. cfg.port .. "/" .. cfg.db
    cfg.read_count = math_min(512, math_max(1, math_floor(READ_BUDGET
                                                       / cfg.max_message)))
    cfg.nodes_key = cfg.stream .. ":nodes"
    cfg.client_name = "ngx_ipc:" .. cfg.node:gsub("[^%w%.%-_:]", "_") .. ":"

    ipc_api = api
    counters = C.ngx_ipc_ffi_cluster_counters()

    if not ok then
        ngx_log(ngx_ERR, "ngx_ipc cluster: ipc_cluster needs lua-resty-redis ",
                "(Debian: apt-get install lua-nginx-redis): ", lib,
                "; this node stays off the cluster")
        return cfg
    end

    redis = lib
    kick_sema = api.new_sema()

    local tok, err = timer_every(LEASE_PERIOD, lease_tick)
    if tok then
        tok, err = timer_at(0, lease_tick)
    end
    if not tok then
        ngx_log(ngx_ERR, "ngx_ipc cluster: cannot start: ", err)
    end

    return cfg
end


-- A cluster broadcast (ngx.ipc checked the arguments).
function _M.broadcast(name, data, include_self, kick, errmsg)
    local rc = C.ngx_ipc_ffi_cluster_broadcast(name, #name, data, #data,
                                               include_self and 1 or 0,
                                               kick, errmsg)
    return rc
end


-- The agent's writer: a broadcast found it asleep.
function _M.kick()
    if agent and kick_sema then
        kick_sema:post(1)
    end
end


-- Runs dispatch(name, data, nil, node) for each message of an IN_NAME
-- message (a stream entry of another node) that this worker has not
-- handled yet, and pace() after each.
function _M.each(packed, dispatch, pace)
    local p1 = str_find(packed, "\n", 1, true)
    local p2 = p1 and str_find(packed, "\n", p1 + 1, true)
    if not p2 then
        return
    end

    local node = str_sub(packed, 1, p1 - 1)
    local key = node .. "/" .. str_sub(packed, p1 + 1, p2 - 1)
    local last = seen[key] or 0
    local at, size = p2 + 1, #packed

    while at <= size do
        local q1 = str_find(packed, "\n", at, true)
        local q2 = q1 and str_find(packed, "\n", q1 + 1, true)
        local q3 = q2 and str_find(packed, "\n", q2 + 1, true)
        local q4 = q3 and str_find(packed, "\n", q3 + 1, true)
        local seq = q4 and tonumber(str_sub(packed, at, q1 - 1))
        local name_len = q4 and tonumber(str_sub(packed, q2 + 1, q3 - 1))
        local data_len = q4 and tonumber(str_sub(packed, q3 + 1, q4 - 1))
        if not (seq and name_len and data_len) then
            return                 -- not ours: nothing more to take
        end

        local name_at = q4 + 1
        local data_at = name_at + name_len
        at = data_at + data_len

        if seq > last then
            -- (a number not above the last one: sent twice, handled already)
            last = seq
            seen[key] = seq
            dispatch(str_sub(packed, name_at, data_at - 1), str_sub(packed,
                     data_at, at - 1), nil, node)
            pace()
        end
    end
end


function _M.state()
    local t = {
        enabled = true,
        node = cfg.node,
        stream = cfg.stream,
        redis = cfg.where,
        connected = counters[K_CONNECTED] ~= 0,
        agent = C.ngx_ipc_ffi_cluster_agent(),   -- 0: none now
        last_id = get_text(T_LAST_ID),
        last_error = get_text(T_LAST_ERROR),
        lag_ms = tonumber(counters[K_LAG_MS]),
        queued_bytes = tonumber(C.ngx_ipc_ffi_cluster_queued()),
    }

    for i, name in pairs(COUNTER_NAMES) do
        t[name] = tonumber(counters[i])
    end

    if t.last_error == "" then
        t.last_error = nil
    end

    return t
end


return _M
