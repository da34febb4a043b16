-- Owns: the public API of Kong's resty.worker.events, over ngx.ipc.
-- (work in progress; filled in by the following commits)
local _M = { _VERSION = "0.1" }
return _M
