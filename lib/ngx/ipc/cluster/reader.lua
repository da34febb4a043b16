-- ngx.ipc.cluster.reader: the agent's reader. It follows the stream (XREAD
-- BLOCK from its position), checks every entry (entry.decode), and fans the
-- entries of other nodes out to this node's workers through the local path.
--
-- What it keeps, in one object per run:
--   cursor    where the next XREAD starts (in this process);
--   position  the zone's last id: the last entry dealt with whose id is
--             not ahead of the Redis server's clock, where a later agent
--             (or a reloaded node) resumes;
--   followed  per (node, epoch), the highest sequence number read: a
--             number skipped is a message missing from the stream (a gap),
--             one far above it is refused (the window);
--   clock     the Redis server's clock less ours (TIME), for the ids.
-- It reads the stream again from its first entry when its position is
-- ahead of the stream's last id (the stream was deleted, flushed, restored
-- from an older copy, or a forged id was read): found on resume and each
-- time XREAD comes back empty. See docs/ARCHITECTURE.md §11.

local ffi = require "ffi"
local entry = require "ngx.ipc.cluster.entry"
local resp = require "ngx.ipc.cluster.resp"
local seqs = require "ngx.ipc.cluster.seqs"

local C = ffi.C
local math_min = math.min
local setmetatable = setmetatable
local tostring = tostring
local type = type
local ngx = ngx
local ngx_log = ngx.log
local ngx_ERR = ngx.ERR
local ngx_NOTICE = ngx.NOTICE
local ngx_WARN = ngx.WARN
local ngx_now = ngx.now
local ngx_sleep = ngx.sleep
local update_time = ngx.update_time


local BLOCK_MS = 500             -- XREAD BLOCK: how soon an idle reader
                                 -- checks its position, or ends
local FUTURE_MS = 10 * 60 * 1000 -- ids further ahead of Redis's clock are
                                 -- refused
local WINDOW = 2 ^ 24            -- how far a node's numbers may jump
local KEYS = 1024                -- (node, epoch) pairs remembered
local MAX_FIELDS = 14            -- an entry's fields (names and values)
local YIELD_BYTES = 4 * 1024 * 1024  -- fanned out between two yields
local NODES_PERIOD = 1           -- seconds between two records of position
local BACKOFF_MIN, BACKOFF_MAX = 0.1, 5   -- seconds between reconnects
local INFO_LIMITS = { bulk = 4096, elements = 64 }
local ID_LIMITS = { bulk = 64, elements = 4 }

local T_LAST_ID = C.NGX_IPC_FFI_CLUSTER_LAST_ID
local K_CONNECTED = C.NGX_IPC_FFI_CLUSTER_CONNECTED
local K_RECEIVED = C.NGX_IPC_FFI_CLUSTER_RECEIVED
local K_RECONNECTS = C.NGX_IPC_FFI_CLUSTER_RECONNECTS
local K_LAG_MS = C.NGX_IPC_FFI_CLUSTER_LAG_MS
local K_NODE_CLASHES = C.NGX_IPC_FFI_CLUSTER_NODE_CLASHES

local _M = {}
local mt = { __index = _M }


-- XINFO STREAM as a table ({} if the stream does not exist), within
-- limits: its first and last entries are whatever was written there.
function _M.stream_info(self)
    local res, err = self.conn:command_limited(INFO_LIMITS, "XINFO",
                                               "STREAM", self.cfg.stream)
    if res == false and err and err:find("no such key", 1, true) then
        return {}
    end

    if type(res) ~= "table" then
        return nil, err or "bad XINFO reply"
    end

    local t = {}
    for i = 1, #res - 1, 2 do
        if type(res[i]) == "string" then
            t[res[i]] = res[i + 1]
        end
    end
    return t
end


-- The Redis server's clock, against ours.
function _M.sync_clock(self)
    local theirs, ours = self.conn:time_ms()
    if not theirs then
        return nil, ours
    end

    self.clock = theirs - ours
    return true
end


-- Is id too far ahead of the Redis server's clock to be one of its own?
function _M.from_the_future(self, id)
    local ms = entry.id_ms(id)
    return ms == nil or ms > ngx_now() * 1000 + self.clock + FUTURE_MS
end


-- A position ahead of the stream's last id: read it all again.
function _M.rewind(self, pos, info)
    local last = info["last-generated-id"]
    self.link:log(ngx_WARN, "rewind", "this node's position ", pos,
                  " is ahead of stream \"", self.cfg.stream, "\"'s last id ",
                  type(last) == "string" and last or "(no stream)",
                  " (deleted, flushed, restored, or a forged id was read): ",
                  "reading it again from its first entry")

    -- the first entry of each node followed may jump: its numbers say
    -- whether messages were lost
    self:relax("report")

    self.cursor = "0-0"
    self:save("0-0")
end


-- Lets the next entry of every node known here jump past the window,
-- once: after a trim ("quiet": the gap was told already) or a rewind
-- ("report": its numbers tell what was lost).
function _M.relax(self, how)
    local lenient = {}
    local mark = function(key)
        lenient[key] = how
    end
    self.followed:each(mark)
    self.link.seen:each(mark)
    self.suspect:clear()
    self.lenient = lenient
end


-- Whether `pos` is ahead of what the stream ever held.
local function ahead(pos, info)
    local last = info["last-generated-id"]
    if type(last) ~= "string" then
        return pos ~= "0-0"            -- no stream: nothing is ahead of 0-0
    end
    return entry.id_cmp(pos, last) == 1
end


-- Were entries after `id` trimmed (or deleted) before we read them?
-- Trimming takes the oldest first, so while the stream still holds `id`
-- nothing after it is gone. Once `id` is gone too, Redis cannot tell
-- whether the trim stopped right after it: if the stream's oldest entry
-- (or, empty, its last generated id) is newer, count it a gap. (It may be
-- one too many, never one too few.)
function _M.check_trimmed(self, id, info)
    if id == "0-0" then
        return true
    end

    local err
    if not info then
        info, err = self:stream_info()
        if not info then
            return nil, err
        end
    end

    local deleted = info["max-deleted-entry-id"]
    local gap = entry.id_cmp(deleted, id) == 1

    if not gap and info["length"] ~= nil then
        local here
        here, err = self.conn:command_limited(ID_LIMITS, "XRANGE",
                                              self.cfg.stream, id, id)
        if type(here) ~= "table" then
            return nil, err or "bad XRANGE reply"
        end

        if #here == 0 then
            local first = info["first-entry"]
            local oldest = type(first) == "table" and first[1]
                           or info["last-generated-id"]
            gap = entry.id_cmp(oldest, id) == 1
        end
    end

    if gap then
        -- what was lost is told once: each node's numbering may jump once
        self:relax("quiet")
        self.link:report_gap("the stream was trimmed past " .. id
                             .. " before this node read what followed")
    end

    return true
end


-- Where the reader starts: the zone's position (it outlives an agent and a
-- reload), else the stream's end.
function _M.resume(self)
    local info, err = self:stream_info()
    if not info then
        return nil, err
    end

    local pos = self.link:get_text(T_LAST_ID)
    if entry.valid_id(pos) then
        if ahead(pos, info) then
            self:rewind(pos, info)
            return true
        end

        local ok
        ok, err = self:check_trimmed(pos, info)
        if not ok then
            return nil, err
        end

        self.cursor = pos
        return true
    end

    -- a fresh node: start at the end; if an earlier run of this node left
    -- its position and entries came after it, they were missed
    local last = info["last-generated-id"]
    if not entry.valid_id(last) then
        last = "0-0"
    end

    local prev
    prev, err = self.conn:command_limited(ID_LIMITS, "HGET",
                                          self.cfg.nodes_key, self.cfg.node)
    if prev == nil or prev == false then
        return nil, err
    end

    if entry.id_cmp(last, prev) == 1 then
        self.link:report_gap("this node (re)started with no memory of the "
                             .. "stream; entries after " .. prev
                             .. " (its last position) were not seen")
    end

    self.cursor = last
    self:save(last)
    return true
end


-- The zone's position, unless id is ahead of the Redis server's clock.
function _M.save(self, id)
    if not self:from_the_future(id) then
        self.position = id
        self.link:set_text(T_LAST_ID, id)
    end
end


-- Whether an entry of (node, epoch) numbered first..last may be fanned
-- out: the numbers of a node rise by one per message (a copy sent again
-- repeats some); a skip is a gap, a jump beyond WINDOW is refused unless
-- the node goes on from there in its next entry.
function _M.admit(self, id, key, node, first, last)
    local followed = self.followed
    local prev = followed:get(key) or self.link.seen:get(key)

    if prev == nil or first <= prev + 1 then
        if prev == nil or last > prev then
            followed:set(key, last)
            self.lenient[key] = nil
        end
        return true
    end

    local suspect = self.suspect:get(key)
    if first - prev > WINDOW and not self.lenient[key]
       and not (suspect and first == suspect + 1)
    then
        self.suspect:set(key, last)
        self.link:skip("malformed", id, "messages " .. first .. " to " .. last
                       .. " of node " .. node .. " are more than 2^24 above "
                       .. "the last one seen (" .. prev .. ")")
        return false
    end

    local how = self.lenient[key]
    self.suspect:remove(key)
    self.lenient[key] = nil
    followed:set(key, last)
    if how ~= "quiet" then
        self.link:report_gap("messages " .. prev + 1 .. " to " .. first - 1
                             .. " of node " .. node .. " are missing from "
                             .. "the stream")
    end
    return true
end


-- One entry of the XREAD reply: checked, then fanned out. Returns false
-- when the agent stops.
function _M.on_entry(self, id, fields, nf, problem)
    if not self.link:active() then
        return false
    end

    self.cursor = id

    local e, why, kind
    if problem then
        why, kind = problem, "malformed"
    elseif self:from_the_future(id) then
        why, kind = "its id is far ahead of the Redis server's clock",
                    "malformed"
    else
        e, why, kind = entry.decode(fields, nf, self.limits)
    end

    if not e then
        self.link:skip(kind, id, why)
        self:save(id)
        return true
    end

    local cfg = self.cfg
    if e.node == cfg.node then
        if e.epoch == cfg.epoch then
            self:save(id)
            return true               -- ours: delivered here at once
        end

        if entry.id_cmp(id, self.start_id) == 1 then
            self.link:count(K_NODE_CLASHES)
            self.link:log(ngx_ERR, "clash", "another nginx uses this node's ",
                          "name \"", e.node, "\" (set node= in ipc_cluster); ",
                          "its messages are delivered here all the same")
        end
    end

    if self:admit(id, e.node .. "/" .. e.epoch, e.node, e.first, e.last) then
        local ok, err = self.link:deliver(self.link.IN_NAME, e.node .. "\n"
                                          .. e.epoch .. "\n" .. e.m)
        if not ok then
            if not self.link:active() then
                return false
            end

            self.link:log(ngx_ERR, "fanout", "entry ", id, " (", #e.m,
                          " bytes) not delivered here: ", err)
        end

        self.link:count(K_RECEIVED, e.count)
        self.last_ms = entry.id_ms(id)

        -- no run of big entries keeps this worker from its requests
        self.unyielded = self.unyielded + #e.m
        if self.unyielded >= YIELD_BYTES then
            self.unyielded = 0
            ngx_sleep(0.001)
        end
    end

    self:save(id)
    return true
end


-- Connects, syncs the clock and resumes; nil, err on failure.
function _M.connect(self)
    local conn, err = resp.connect(self.cfg, self.cfg.client_name
                                             .. "reader")
    if not conn then
        return nil, err
    end

    self.conn = conn
    local ok
    ok, err = self:sync_clock()
    if ok then
        ok, err = self:resume()
        if not ok then
            err = "cannot resume: " .. tostring(err)
        end
    end

    if not ok then
        conn:close()
        self.conn = nil
        return nil, err
    end

    return true
end


-- XREAD came back empty: a chance to look at the position and the clock.
function _M.idle(self)
    local ok, err = self:sync_clock()
    if not ok then
        return nil, err
    end

    local info
    info, err = self:stream_info()
    if not info then
        return nil, err
    end

    if ahead(self.cursor, info) then
        self:rewind(self.cursor, info)
    end
    return true
end


function _M.run(link)
    local cfg = link.cfg
    local self = setmetatable({
        link = link, cfg = cfg, conn = nil, cursor = nil, position = nil,
        clock = 0, followed = seqs.new(KEYS), suspect = seqs.new(KEYS),
        lenient = {}, unyielded = 0, start_id = nil, last_ms = nil,
        limits = { max_message = cfg.max_message, stream = cfg.stream,
                   secret = cfg.secret },
    }, mt)

    local backoff = BACKOFF_MIN
    local first = true
    local recorded = 0
    local on_entry = function(id, fields, nf, problem)
        return self:on_entry(id, fields, nf, problem)
    end

    while link:active() do
        if not self.conn then
            local ok, err = self:connect()
            if not ok then
                link:gauge(K_CONNECTED, 0)
                link:fail("reader", err)
                link:pause(backoff)
                backoff = math_min(backoff * 2, BACKOFF_MAX)

            else
                if not first then
                    link:count(K_RECONNECTS)
                    ngx_log(ngx_NOTICE, "ngx_ipc cluster: connected again to ",
                            cfg.where, ", resuming after ", self.cursor)
                end
                first = false
                self.start_id = self.start_id or self.cursor
                backoff = BACKOFF_MIN
                link:gauge(K_CONNECTED, 1)
            end

        else
            local n, err = self.conn:xread_each(cfg.read_count, BLOCK_MS,
                                                cfg.stream, self.cursor,
                                                cfg.entry_bytes, MAX_FIELDS,
                                                on_entry)
            local idle = n == 0
            if idle then
                local ok
                ok, err = self:idle()
                n = ok and 0
            end

            if not n then
                self.conn:close()
                self.conn = nil
                link:gauge(K_CONNECTED, 0)
                if link:active() then
                    link:fail("reader", "XREAD failed: " .. tostring(err))
                end

            elseif not idle then
                if self.last_ms then
                    update_time()
                    local lag = ngx_now() * 1000 + self.clock - self.last_ms
                    link:gauge(K_LAG_MS, lag > 0 and lag or 0)
                end

                -- a full batch: we are behind, and trimming may overtake us
                if n >= cfg.read_count and self.conn:open() then
                    self:check_trimmed(self.cursor)
                end
            end

            -- our position, for the gap check of a later run of this node
            if self.conn and self.conn:open() and self.position
               and ngx_now() - recorded >= NODES_PERIOD
            then
                recorded = ngx_now()
                self.conn:command("HSET", cfg.nodes_key, cfg.node,
                                  self.position)
            end

            if self.conn and not self.conn:open() then
                self.conn = nil              -- the agent stopped mid-reply
            end
        end
    end

    if self.conn then
        self.conn:close()
    end
end


return _M
