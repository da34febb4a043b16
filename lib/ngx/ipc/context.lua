-- ngx.ipc.context: what the handler that runs now may ask about the message
-- it handles, one object per worker: the sender's PID (ipc.sender, and
-- ipc.reply's destination), the name, the node it came from
-- (ipc.sender_node), the ipc.call it answers, and the cluster entry it is
-- part of. dispatch.lua enters it before a handler runs and leaves it
-- after, in one place each; delivery.lua reads it when a handler ended its
-- light thread before it could leave (ngx.exit()), then leaves it.

local setmetatable = setmetatable


local _M = {}
local mt = { __index = _M }


function _M.new()
    return setmetatable({}, mt)
end


-- name, sender (nil from another node), node, call id (nil: not a request)
function _M.enter(self, name, sender, node, call)
    self.name, self.sender, self.node, self.call = name, sender, node, call
end


function _M.leave(self)
    self.name, self.sender, self.node, self.call = nil, nil, nil, nil
end


-- While the handlers of a cluster entry run: the entry (the runner's
-- restart puts what is left of it back at the head of the queue).
function _M.enter_batch(self, packed)
    self.batch = packed
end


function _M.leave_batch(self)
    self.batch = nil
end


return _M
