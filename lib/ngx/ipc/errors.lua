-- ngx.ipc.errors: the run-time failures of ngx.ipc, as codes and as the
-- text the API returns (`nil, err`). The C ABI reports a refused send as an
-- NGX_IPC_FFI_E_* code (src/ngx_ipc_ffi.h), never as text: Lua code
-- branches on the codes (errors.QUEUE_FULL), and this table is the one
-- place where a code becomes the documented message.

local ffi = require "ffi"
local base = require "resty.core.base"

require "ngx.ipc.ffi"

local C = ffi.C
local tostring = tostring


local _M = {
    OK = base.FFI_OK,                     -- 0
    ERROR = base.FFI_ERROR,               -- -1: not in a worker process

    NO_SUCH_WORKER = C.NGX_IPC_FFI_E_NO_SUCH_WORKER,
    NAME_TOO_LONG = C.NGX_IPC_FFI_E_NAME_TOO_LONG,
    TOO_LARGE = C.NGX_IPC_FFI_E_TOO_LARGE,
    QUEUE_FULL = C.NGX_IPC_FFI_E_QUEUE_FULL,
    NO_MEMORY = C.NGX_IPC_FFI_E_NO_MEMORY,
    EMPTY_NAME = C.NGX_IPC_FFI_E_EMPTY_NAME,
    NO_CLUSTER = C.NGX_IPC_FFI_E_NO_CLUSTER,

    -- decided in Lua, above the C ABI's
    TIMEOUT = 101,
    NO_HANDLER = 102,
    WOULD_DEADLOCK = 103,
}

local TEXT = {
    [_M.NO_SUCH_WORKER] = "no such worker",
    [_M.NAME_TOO_LONG] = "name too long",
    [_M.TOO_LARGE] = "message too large",
    [_M.QUEUE_FULL] = "queue full",
    [_M.NO_MEMORY] = "no memory",
    [_M.EMPTY_NAME] = "empty name",
    [_M.NO_CLUSTER] = "no ipc_cluster in this configuration",
    [_M.TIMEOUT] = "timeout",
    [_M.NO_HANDLER] = "no handler",
    [_M.WOULD_DEADLOCK] = "would deadlock",
}


-- The API's message for a code.
function _M.text(code)
    return TEXT[code] or "error " .. tostring(code)
end


return _M
