-- ngx.ipc.queue: the messages the reader took from the inbox and the
-- runner has not handled yet, in arrival order: a FIFO of parallel arrays
-- (no table per message), with a count of their bytes. Bounded by its
-- owner: the reader takes no batch while full() (1024 messages or 4 MiB),
-- so a slow handler pushes back on the senders (README, "Delivery rules").

local setmetatable = setmetatable


local MAX_ITEMS = 1024
local MAX_BYTES = 4 * 1024 * 1024

local _M = {}
local mt = { __index = _M }


function _M.new()
    return setmetatable({
        name = {}, data = {}, sender = {}, flags = {}, id = {},
        first = 1, last = 0, bytes = 0,
    }, mt)
end


function _M.push(self, name, data, sender, flags, id)
    local i = self.last + 1
    self.last = i
    self.name[i], self.data[i] = name, data
    self.sender[i], self.flags[i], self.id[i] = sender, flags, id
    self.bytes = self.bytes + #name + #data
end


-- Puts a message back at the head (the runner's restart: what a killed
-- handler was in the middle of goes first).
function _M.unshift(self, name, data, sender, flags, id)
    local i = self.first - 1
    self.first = i
    self.name[i], self.data[i] = name, data
    self.sender[i], self.flags[i], self.id[i] = sender, flags, id
    self.bytes = self.bytes + #name + #data
end


-- The oldest message: name, data, sender, flags, id; nil if empty.
function _M.pop(self)
    local i = self.first
    if i > self.last then
        return nil
    end

    local name, data = self.name[i], self.data[i]
    local sender, flags, id = self.sender[i], self.flags[i], self.id[i]
    self.name[i], self.data[i] = nil, nil
    self.sender[i], self.flags[i], self.id[i] = nil, nil, nil
    self.first = i + 1
    self.bytes = self.bytes - #name - #data

    if self.first > self.last then
        self.first, self.last = 1, 0      -- empty: start the arrays again
    end

    return name, data, sender, flags, id
end


function _M.empty(self)
    return self.first > self.last
end


function _M.full(self)
    return self.last - self.first + 1 >= MAX_ITEMS or self.bytes >= MAX_BYTES
end


return _M
