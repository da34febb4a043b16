-- ngx.ipc.sending: a worker's sends through the C ABI, one object per
-- worker. Each returns an errors code (errors.OK, or why it was refused);
-- ngx.ipc turns a code into the API's `nil, err`. The core counts what it
-- refuses in `refused`; what Lua refuses before the C call is counted
-- here.

local ffi = require "ffi"
local bit = require "bit"
local errors = require "ngx.ipc.errors"

local C = ffi.C
local bor = bit.bor
local ffi_new = ffi.new
local setmetatable = setmetatable


local F_REPLY = C.NGX_IPC_FFI_F_REPLY
local S_KICK = C.NGX_IPC_FFI_S_KICK  -- not an answer: wakes the cluster
                                     -- agent's writer
local KICK_NAME = "r"

local OK = errors.OK

local _M = {}
local mt = { __index = _M }


-- counts: this worker's Lua counters; cluster: ngx.ipc.cluster, or false.
function _M.new(counts, cluster)
    return setmetatable({ counts = counts, cluster = cluster,
                          kick_pid = ffi_new("int[1]") }, mt)
end


-- A refusal decided here, before the C ABI.
function _M.refuse(self, code)
    self.counts.refused = self.counts.refused + 1
    return code
end


-- To the process pid (a number), with a call's flags and id if any.
function _M.send(self, pid, name, data, flags, id)
    if pid <= 0 or pid > 0x7fffffff or pid % 1 ~= 0 then
        return self:refuse(errors.NO_SUCH_WORKER)
    end

    return C.ngx_ipc_ffi_send(pid, name, #name, data, #data, flags or 0,
                              id or 0)
end


-- To every worker of every generation that runs.
function _M.broadcast(self, name, data, include_self)
    return C.ngx_ipc_ffi_broadcast(name, #name, data, #data,
                                   include_self and 1 or 0)
end


-- Here at once through the local path, to the other nodes by the agent.
function _M.cluster_broadcast(self, name, data, include_self)
    local cluster = self.cluster
    if not cluster then
        return self:refuse(errors.NO_CLUSTER)
    end

    local kick = self.kick_pid
    local rc = cluster.broadcast(name, data, include_self, kick)
    if rc ~= OK then
        return rc
    end

    if kick[0] > 0 then
        -- the agent sleeps: wake it (if this fails, it wakes within 1 s)
        C.ngx_ipc_ffi_send(kick[0], KICK_NAME, #KICK_NAME, "", 0,
                           bor(F_REPLY, S_KICK), 0)
    end

    return OK
end


-- A broadcast to this node's workers, for the cluster agent: true, or nil
-- and the errors code.
function _M.broadcast_local(self, name, data)
    local rc = self:broadcast(name, data, true)
    if rc == OK then
        return true
    end
    return nil, rc
end


return _M
