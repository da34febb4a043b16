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
-- Trimming is looked for before every XREAD: XINFO STREAM goes in the same
-- write, so its reply tells the stream as that XREAD finds it (check()).
-- See docs/ARCHITECTURE.md §11.

local ffi = require "ffi"
local entry = require "ngx.ipc.cluster.entry"
local resp = require "ngx.ipc.cluster.resp"

local C = ffi.C
local concat = table.concat
local setmetatable = setmetatable
local type = type
local id_cmp = entry.id_cmp
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
--
-- `counted`: how many of the entries the stream ever had (XINFO's
-- entries-added, Redis 7.0 and later) this reader accounted for: added
-- before it started reading, read since, or told lost; nil when unknown.
-- It may fall short of the truth (a loss would then be told that was not
-- one), never exceed it (which could hide one): check().
function _M.new(link, window)
    local cfg = link.cfg
    return setmetatable({
        link = link, cfg = cfg, window = window, conn = nil,
        cursor = nil, position = nil, clock = 0, start_id = nil,
        counted = nil, rewound = false,
        told_to = nil, told_deleted = nil,    -- losses told already
        last_seen = nil, added_seen = nil,    -- the last check's stream
        info_request = resp.request({ "XINFO", "STREAM", cfg.stream }, 3),
    }, mt)
end


-- An XINFO STREAM reply as a table ({} if the stream does not exist): its
-- first and last entries are whatever was written there (read within
-- INFO_LIMITS).
local function info_table(res, err)
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


function _M.stream_info(self)
    return info_table(self.conn:command_limited(INFO_LIMITS, "XINFO",
                                                "STREAM", self.cfg.stream))
end


-- The reply to `info_request`, which the reader sends in the same write as
-- its XREAD, just ahead of it: Redis runs the two one after the other, so
-- the reply is the stream as the XREAD finds it. Checked for losses;
-- true, or nil, err (the connection is closed then).
function _M.read_info(self)
    local info, err = info_table(self.conn:read(INFO_LIMITS))
    if not info then
        self.conn:close()
        return nil, err
    end

    self:check(info)
    return true
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

    -- what was read of this stream may be read again: no count holds, and
    -- what was told of another stream says nothing of this one
    self.cursor, self.rewound = "0-0", true
    self.counted, self.told_to, self.told_deleted = nil, nil, nil
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


-- How many entries after the cursor were trimmed before we read them: a
-- number, or true if Redis cannot count them; nil for none. Trimming takes
-- the oldest first, so while the stream holds an entry at or before the
-- cursor nothing after it is gone. Else every entry we accounted for is
-- gone too, and so are the entries before the oldest one left (or, the
-- stream empty, up to its last id): those past what we accounted for were
-- after the cursor, unread. Without a count (Redis before 7.0, a rewind,
-- another agent's position, a deletion after the cursor), an oldest entry
-- newer than the cursor is counted a loss: Redis cannot tell whether the
-- trim stopped right after the cursor (one gap too many, never too few).
local function trimmed(self, info, first, deleted_after)
    local cursor = self.cursor
    if first and id_cmp(first, cursor) ~= 1
       or self.rewound and cursor == "0-0"  -- a rewind's copies: numbers tell
    then
        return nil
    end

    local added, counted = self.added_seen, self.counted
    if counted and added and not deleted_after then
        local removed = added - info["length"]
        if removed >= counted then
            return removed > counted and removed - counted or nil
        end
        self.counted, self.told_to = nil, nil  -- fewer gone than we read:
                                               -- another stream
    end

    local edge = first or info["last-generated-id"]
    local told = self.told_to
    if id_cmp(edge, cursor) ~= 1 or told and id_cmp(edge, told) ~= 1 then
        return nil
    end
    return true
end


-- Were entries after the cursor trimmed (or deleted) before we read them?
-- `info`: XINFO STREAM as the next XREAD finds the stream. A loss is
-- logged, counted and told (ipc:cluster_gap) once.
function _M.check(self, info)
    local len = info["length"]
    if type(len) ~= "number" then             -- no stream
        self.last_seen, self.added_seen = nil, nil
        if self.counted ~= 0 then
            self.counted = nil
        end
        return
    end

    local cursor = self.cursor
    local added = info["entries-added"]       -- Redis 7.0 and later
    self.last_seen = info["last-generated-id"]
    self.added_seen = type(added) == "number" and added or nil
    if self.counted and self.added_seen and self.added_seen < self.counted
    then
        self.counted, self.told_to = nil, nil  -- another stream
    end

    local reasons = {}
    local deleted = info["max-deleted-entry-id"]
    local deleted_after = id_cmp(deleted, cursor) == 1
    if deleted_after and (self.told_deleted == nil
                          or id_cmp(deleted, self.told_deleted) == 1)
    then
        self.told_deleted = deleted
        reasons[1] = "entries after " .. cursor .. " were deleted before "
                     .. "this node read them, the last " .. deleted
    end

    local first = info["first-entry"]
    first = type(first) == "table" and type(first[1]) == "string"
            and first[1] or nil

    local lost = trimmed(self, info, first, deleted_after)
    if lost then
        local text = "the stream was trimmed past " .. cursor
                     .. " before this node read what followed"
        if lost ~= true then
            text = text .. ": " .. lost .. " entries after it, "
                   .. (first and "before " .. first
                       or "up to " .. self.last_seen) .. ", are gone"
        end
        reasons[#reasons + 1] = text

        -- everything before `first` (or up to the last id) is accounted for
        self.told_to = first or self.last_seen
        self.counted = self.added_seen and not deleted_after
                       and self.added_seen - len or nil
    end

    if deleted_after then
        self.counted = nil          -- how many went is not known
    end

    if #reasons > 0 then
        -- what was lost is told once: each node's numbering may jump once
        self.window:relax("quiet")
        self.link:report_gap(concat(reasons, "; "))
    end
end


-- The reader read entry `id`: its new cursor, and one more entry counted
-- (entries-added at the last check counts all up to that check's last id).
function _M.advance(self, id)
    self.cursor, self.rewound = id, false

    local counted = self.counted
    if counted then
        counted = counted + 1
    end

    local added = self.added_seen
    local c = added and id_cmp(id, self.last_seen)
    if c == 0 or c == 1 then
        local least = c == 0 and added or added + 1
        if not counted or counted < least then
            counted = least
        end
    end
    self.counted = counted
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

        -- (the next XREAD checks for trims.) Our own count holds if this
        -- is where we were; at 0-0 or the stream's end, it is known
        local added = info["entries-added"]
        if pos ~= self.cursor then
            self.counted, self.rewound = nil, false
            if pos == "0-0" then
                self.counted = 0
            elseif pos == info["last-generated-id"]
                   and type(added) == "number"
            then
                self.counted = added
            end
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

    -- every entry the stream ever had came before this node
    local added = info["entries-added"]
    self.counted = type(added) == "number" and added
                   or (info["length"] == nil and 0 or nil)
    self.rewound = false
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
