-- ngx.ipc.calls: ipc.call's requests that wait for their answers, one
-- object per worker, and the answers a handler sends back.
--
-- A request is a message with the F_REQUEST flag and a call id; its answer
-- is a message with F_REPLY, the same id and a status (the handler's
-- value, its error, or no handler for the name). The reader hands each
-- answer to resolve() as soon as it takes it, never behind the handlers
-- in the queue, so a handler may itself call another worker.

local ffi = require "ffi"
local bit = require "bit"
local errors = require "ngx.ipc.errors"
local semaphore = require "ngx.semaphore"

local C = ffi.C
local band = bit.band
local bor = bit.bor
local setmetatable = setmetatable


local F_REQUEST = C.NGX_IPC_FFI_F_REQUEST
local F_REPLY = C.NGX_IPC_FFI_F_REPLY
local F_STATUS = C.NGX_IPC_FFI_F_STATUS
local S_OK = C.NGX_IPC_FFI_S_OK
local S_ERROR = C.NGX_IPC_FFI_S_ERROR

local REPLY_NAME = "r"     -- the name an answer carries (it is not used)

local _M = {
    S_OK = S_OK,
    S_ERROR = S_ERROR,
    S_NO_HANDLER = C.NGX_IPC_FFI_S_NO_HANDLER,
}
local mt = { __index = _M }


-- counts: this worker's Lua counters; send(pid, name, data, flags, id):
-- the worker's send, returning an errors code.
function _M.new(counts, send)
    return setmetatable({ pending = {}, last_id = 0, counts = counts,
                          send = send }, mt)
end


-- Sends a request and waits up to `timeout` seconds for its answer: the
-- answer, or nil and an errors code, or nil and text ("handler error: ...",
-- or what the semaphore said).
function _M.call(self, pid, name, data, timeout)
    local pending = self.pending
    local id = self.last_id
    repeat
        id = id % 0xffffffff + 1
    until pending[id] == nil
    self.last_id = id

    local rc = self.send(pid, name, data, F_REQUEST, id)
    if rc ~= errors.OK then
        return nil, rc
    end

    local call = { sema = semaphore.new(0) }
    pending[id] = call
    self.counts.calls = self.counts.calls + 1

    local ok, err = call.sema:wait(timeout)
    if not ok then
        pending[id] = nil
        if err == "timeout" then
            self.counts.call_timeouts = self.counts.call_timeouts + 1
            return nil, errors.TIMEOUT
        end
        return nil, err
    end

    return call.res, call.err
end


-- An answer arrived: hands it to the call that waits for it.
function _M.resolve(self, id, flags, data)
    local call = self.pending[id]
    if not call then
        -- its call timed out: it is too late for anyone
        self.counts.dropped = self.counts.dropped + 1
        return
    end

    self.pending[id] = nil

    local status = band(flags, F_STATUS)
    if status == S_OK then
        call.res = data

    elseif status == S_ERROR then
        call.err = "handler error: " .. data

    else
        call.err = errors.NO_HANDLER
    end

    call.sema:post(1)
end


-- Sends the answer to request `id` of process `to`: errors.OK, or the code
-- of the failure (the caller is gone, or its inbox is full: it will time
-- out), counted as dropped.
function _M.answer(self, to, status, id, data)
    local rc = self.send(to, REPLY_NAME, data, bor(F_REPLY, status), id)
    if rc ~= errors.OK then
        self.counts.dropped = self.counts.dropped + 1
    end
    return rc
end


return _M
