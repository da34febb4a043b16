-- ngx.ipc.cluster.writer: the agent's writer. It takes the node's cluster
-- broadcasts from the outbox in shared memory and adds them to the stream,
-- a batch per entry (XADD MAXLEN ~), and moves the outbox's tail only once
-- Redis acknowledged them, so that an agent killed mid-batch leaves them
-- for the next one (readers drop a sequence number they have seen).
--
-- A stream whose last id is far ahead of the Redis server's clock cannot
-- be right (a forged XADD with an id from the future; with the largest id,
-- no XADD * works any more, and readers refuse entries from the future):
-- the writer that meets one renames it "<stream>:quarantine:<ms>", kept a
-- day, in one script run by Redis (whoever comes second finds a sane
-- stream and does nothing), and adds its batch again to the new stream.
-- Readers find their position ahead of the new stream and read it from
-- its start (reader.lua).
--
-- With replicas=N, a batch counts as added (and leaves the outbox) only
-- once WAIT says N replicas have it: Redis acknowledged it, and a failover
-- to one of those replicas keeps it. While fewer answer, the writer waits
-- on the same connection (nothing is sent twice), saying so at a bounded
-- rate, and dials again if the Sentinels name another primary meanwhile;
-- the batch then goes again to the new one, and readers drop the copies.
-- A -READONLY reply (the server is a replica now) makes it dial again too.

local ffi = require "ffi"
local dial = require "ngx.ipc.cluster.dial"
local entry = require "ngx.ipc.cluster.entry"

local C = ffi.C
local ffi_new = ffi.new
local math_floor = math.floor
local math_min = math.min
local tostring = tostring
local type = type
local unpack = unpack
local ngx = ngx
local ngx_WARN = ngx.WARN
local ngx_now = ngx.now


local BATCH = 1024               -- messages per stream entry, at most (and
                                 -- about max_message bytes)
local FUTURE_MS = 10 * 60 * 1000 -- a last id further ahead is poisoned
local QUARANTINE_MS = 24 * 3600 * 1000    -- how long Redis keeps it
local BACKOFF_MIN, BACKOFF_MAX = 0.1, 5   -- seconds between retries
local WAIT_MS = 1000             -- replicas=: one WAIT's timeout

local K_ADDED = C.NGX_IPC_FFI_CLUSTER_ADDED

-- KEYS: the stream, its new name; ARGV: FUTURE_MS, QUARANTINE_MS. 1 if it
-- renamed the stream.
local QUARANTINE = [[
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local info = redis.pcall('XINFO', 'STREAM', KEYS[1])
if type(info) ~= 'table' or info.err then
    return 0
end
for i = 1, #info - 1, 2 do
    if info[i] == 'last-generated-id' then
        local ms = tonumber(string.match(info[i + 1], '^(%d+)'))
        if ms and ms > now + tonumber(ARGV[1]) then
            redis.call('RENAME', KEYS[1], KEYS[2])
            redis.call('PEXPIRE', KEYS[2], ARGV[2])
            return 1
        end
        return 0
    end
end
return 0
]]

local _M = {}

local batch = ffi_new("ngx_ipc_cluster_entry_t[?]", BATCH)
local peek_end = ffi_new("uint64_t[1]")


-- replicas=N: true once N replicas have what conn wrote; nil when conn
-- failed, or the Sentinels name another primary, or the agent stops (conn
-- is closed then, but for the last).
local function replicated(link, conn)
    local want = link.cfg.replicas
    while link:active() do
        local n, err = conn:command("WAIT", want, WAIT_MS)
        if type(n) ~= "number" then
            conn:close()
            link:fail("writer", "WAIT failed on " .. conn.where .. ": "
                                .. tostring(err))
            return nil
        end

        if n >= want then
            return true
        end

        link:log(ngx_WARN, "replicas", "only ", n, " of ", want,
                 " replicas of ", conn.where, " acknowledged a batch within ",
                 WAIT_MS, " ms: it stays in the outbox until they do")
        if dial.moved(link, conn) then
            conn:close()
            return nil
        end
    end
    return nil
end


-- An XADD refused because the stream's last id cannot grow.
local function no_more_ids(err)
    err = tostring(err)
    return err:find("exhausted", 1, true) or err:find("equal or smaller", 1,
                                                      true)
end


-- Renames the stream if its last id is from the future. true if the batch
-- should go again at once.
local function quarantine(link, conn, why)
    local cfg = link.cfg
    local now = conn:time_ms() or ngx_now() * 1000
    now = math_floor(now)
    local name = cfg.stream .. ":quarantine:" .. tostring(now)
    local res, err = conn:command("EVAL", QUARANTINE, 2, cfg.stream, name,
                                  FUTURE_MS, QUARANTINE_MS)
    if res == 1 then
        link:log(ngx_WARN, "quarantine", "stream \"", cfg.stream, "\" ", why,
                 ", far ahead of the Redis server's clock: renamed to \"",
                 name, "\" (kept a day); a new stream takes over")
        return true
    end

    if res == nil or res == false then
        link:fail("writer", "cannot set aside stream \"" .. cfg.stream
                            .. "\": " .. tostring(err))
    end

    return false
end


function _M.run(link)
    local cfg = link.cfg
    local pos = C.ngx_ipc_ffi_cluster_tail()
    local backoff = BACKOFF_MIN
    local conn, err, clock

    while link:active() do
        local n = C.ngx_ipc_ffi_cluster_peek(batch, BATCH, cfg.max_message,
                                             pos, peek_end)
        if n <= 0 then
            if C.ngx_ipc_ffi_cluster_arm(pos) == 0 then
                link.kick_sema:wait(1)
            end

        elseif not conn then
            conn = link:dial("writer")
            if conn then
                link:connected()
                local theirs, ours = conn:time_ms()
                clock = theirs and theirs - ours or 0
            else
                link:pause(backoff)
                backoff = math_min(backoff * 2, BACKOFF_MAX)
            end

        else
            local fields
            fields, err = entry.encode(cfg.stream, cfg.node, cfg.epoch, batch,
                                       n, cfg.secret)
            local res
            if fields then
                res, err = conn:command("XADD", cfg.stream, "MAXLEN", "~",
                                        cfg.maxlen, "*", unpack(fields))
            end

            if not fields then
                link:fail("writer", err)
                link:pause(backoff)

            elseif res == nil then
                -- the connection failed: the batch goes again on a new one
                conn:close()
                conn = nil
                link:fail("writer", "XADD failed: " .. tostring(err))

            elseif not res and tostring(err):find("^READONLY") then
                -- a replica now (a failover): dial the primary again
                conn:close()
                conn = nil
                link:fail("writer", "XADD refused: " .. tostring(err))
                link:pause(backoff)
                backoff = math_min(backoff * 2, BACKOFF_MAX)

            elseif not res then
                -- Redis refused it (false, its error): nothing is
                -- committed, it goes again, at once if the stream was
                -- poisoned and is set aside now, else after a while
                if not (no_more_ids(err)
                        and quarantine(link, conn, "cannot take more ids"))
                then
                    link:fail("writer", "XADD refused: " .. tostring(err))
                    link:pause(backoff)
                    backoff = math_min(backoff * 2, BACKOFF_MAX)
                end

            elseif (entry.id_ms(res) or 0) > ngx_now() * 1000 + clock
                                               + FUTURE_MS
            then
                -- added with an id from the future: readers refuse it, so
                -- it goes again, to a new stream
                if not quarantine(link, conn, "has ids (" .. tostring(res)
                                              .. ")")
                then
                    link:pause(backoff)
                    backoff = math_min(backoff * 2, BACKOFF_MAX)
                end

            elseif cfg.replicas > 0 and not replicated(link, conn) then
                if not conn:open() then
                    conn = nil         -- the batch goes again on a new one
                end

            else
                pos = peek_end[0]
                C.ngx_ipc_ffi_cluster_commit(pos)
                link:count(K_ADDED, n)
                backoff = BACKOFF_MIN
            end
        end
    end

    if conn then
        conn:close()
    end
end


return _M
