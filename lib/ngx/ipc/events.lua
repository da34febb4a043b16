-- ngx.ipc.events: the public API of Kong/lua-resty-events over ngx.ipc.
-- (work in progress)
local _M = { _VERSION = "0.0.1" }
return _M
