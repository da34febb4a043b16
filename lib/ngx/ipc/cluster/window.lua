-- ngx.ipc.cluster.window: which entries of a node the reader takes, by
-- their sequence numbers, one object per reader run.
--
-- A node numbers its messages 1, 2, 3... per epoch (the life of its shared
-- memory): a number skipped between two entries is a message missing from
-- the stream (a gap, told through "ipc:cluster_gap"); a number seen again
-- is a copy (an agent that died before it committed sent it again), which
-- the workers drop. Because a worker drops every number not above the
-- highest it handled, one forged entry numbered 10^15 with a real node's
-- epoch would silence that node for good: so an entry whose first number
-- is more than 2^24 above the last one read from its node is refused (a
-- suspect), unless the node's next entry goes on from it. After a trim
-- gap or a rewind (position.lua), each node's next entry may jump once.
-- The tables hold at most 1024 (node, epoch) pairs each (seqs.lua).
--
-- The first entry of a (node, epoch) that this reader sees is no gap,
-- whatever its number: the node may have published before this node's
-- position (it started at the stream's end, or the node is older), and
-- numbers alone cannot tell those from messages trimmed after it. That a
-- trim took entries after the position is position.lua's check, by ids
-- and counts, before every XREAD.

local seqs = require "ngx.ipc.cluster.seqs"

local setmetatable = setmetatable


local WINDOW = 2 ^ 24            -- how far a node's numbers may jump
local KEYS = 1024                -- (node, epoch) pairs remembered

local _M = {}
local mt = { __index = _M }


-- link: the cluster link (its skip() and report_gap(), and seen: what this
-- worker handled, where an agent that just started begins).
function _M.new(link)
    return setmetatable({ link = link, followed = seqs.new(KEYS),
                          suspect = seqs.new(KEYS), lenient = {} }, mt)
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


return _M
