-- ngx.ipc.cluster.seqs: what a process remembers of each (node, epoch) of
-- the cluster: a number per key (the highest sequence number handled, or
-- read), for at most `cap` keys.
--
-- Anyone who can write to the stream can invent nodes and epochs, so the
-- memory is bounded: past `cap` keys, the older half (least recently used)
-- is forgotten at once, an amortized O(log cap) per new key. A forgotten
-- key is a node that has been silent the longest; if it speaks again, its
-- messages are handled as those of a node never seen before (a copy sent
-- twice by its agent before it was forgotten would then be handled twice:
-- README, "Security").

local floor = math.floor
local pairs = pairs
local setmetatable = setmetatable
local sort = table.sort


local _M = {}
local mt = { __index = _M }


function _M.new(cap)
    return setmetatable({ cap = cap, value = {}, used = {}, n = 0,
                          tick = 0 }, mt)
end


function _M.get(self, key)
    local v = self.value[key]
    if v ~= nil then
        self.tick = self.tick + 1
        self.used[key] = self.tick
    end
    return v
end


function _M.set(self, key, v)
    if self.value[key] == nil then
        if self.n >= self.cap then
            self:prune()
        end
        self.n = self.n + 1
    end

    self.value[key] = v
    self.tick = self.tick + 1
    self.used[key] = self.tick
end


function _M.remove(self, key)
    if self.value[key] ~= nil then
        self.value[key] = nil
        self.used[key] = nil
        self.n = self.n - 1
    end
end


function _M.clear(self)
    self.value, self.used, self.n = {}, {}, 0
end


-- Calls fn(key, value) for each key.
function _M.each(self, fn)
    for k, v in pairs(self.value) do
        fn(k, v)
    end
end


-- Forgets the least recently used half.
function _M.prune(self)
    local ticks, n = {}, 0
    for _, t in pairs(self.used) do
        n = n + 1
        ticks[n] = t
    end

    sort(ticks)
    local cut = ticks[floor(n / 2)] or 0

    for k, t in pairs(self.used) do
        if t <= cut then
            self.value[k] = nil
            self.used[k] = nil
            self.n = self.n - 1
        end
    end
end


return _M
