-- ngx.ipc.cluster.position: where the reader is in the stream, one object
-- per reader run: its cursor (where the next XREAD starts, in this
-- process), the position kept in the zone (`last_id`, where a later agent
-- or a reloaded node resumes: never an id ahead of the Redis server's
-- clock), and that clock against ours (TIME).
--
-- When the cursor or the position is ahead of the stream's last-generated
-- id, nothing will ever come after it: the stream was deleted, flushed or
-- restored from an older copy, or a forged id was read past everything.
-- That is looked for at resume and each time XREAD comes back empty
-- (idle()); the reader then reads the stream again from its first entry
-- (rewind()), the workers dropping the copies by sequence number.
-- Trimming is looked for at resume and after a full batch
-- (check_trimmed()). See docs/ARCHITECTURE.md §11.

local ffi = require "ffi"
local entry = require "ngx.ipc.cluster.entry"

local C = ffi.C
local setmetatable = setmetatable
local type = type
local ngx_WARN = ngx.WARN
local ngx_now = ngx.now


local FUTURE_MS = 10 * 60 * 1000 -- ids further ahead of Redis's clock are
                                 -- refused
local INFO_LIMITS = { bulk = 4096, elements = 64 }
local ID_LIMITS = { bulk = 64, elements = 4 }

local T_LAST_ID = C.NGX_IPC_FFI_CLUSTER_LAST_ID

local _M = {}
local mt = { __index = _M }


-- link: the cluster link; window: the reader's window (relaxed after a
-- trim or a rewind). The reader sets `conn` while it is connected.
function _M.new(link, window)
    return setmetatable({ link = link, cfg = link.cfg, window = window,
                          conn = nil, cursor = nil, position = nil,
                          clock = 0, start_id = nil }, mt)
end


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
    self.window:relax("report")

    self.cursor = "0-0"
    self:save("0-0")
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
        self.window:relax("quiet")
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


return _M
