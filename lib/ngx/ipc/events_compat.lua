-- ngx.ipc.events_compat: the public API of resty.events.compat over ngx.ipc.events.
-- (work in progress)
local _M = {}
return _M
