-- ngx.ipc.limiter: log lines at a bounded rate. Each kind of line may be
-- written `burst` times per `period` seconds; the ones that may not are
-- counted, and the count is handed to the next one that may, for the
-- caller to say how many went unsaid. The kinds are the caller's few
-- fixed names, so the tables stay small.

local setmetatable = setmetatable
local ngx_now = ngx.now


local _M = {}
local mt = { __index = _M }


function _M.new(period, burst)
    return setmetatable({ period = period, burst = burst, start = {},
                          used = {}, skipped = {} }, mt)
end


-- true and the number of lines of this kind not written since the last
-- one, or false (this one is counted).
function _M.allow(self, kind)
    local now = ngx_now()
    local start = self.start[kind]
    if not start or now - start >= self.period then
        self.start[kind], self.used[kind] = now, 0
    end

    if self.used[kind] >= self.burst then
        self.skipped[kind] = (self.skipped[kind] or 0) + 1
        return false
    end

    self.used[kind] = self.used[kind] + 1
    local skipped = self.skipped[kind] or 0
    self.skipped[kind] = 0
    return true, skipped
end


return _M
