-- ngx.ipc.worker_events.options: configure()'s numeric options and
-- post()'s source and event, checked as Kong/lua-resty-worker-events checks
-- them, in its order, with its messages; and its event_list().
--
-- Owns: nothing (pure functions). An option left out keeps the value the
-- last configure() set, or takes the library's default.

local error = error
local pairs = pairs
local setmetatable = setmetatable
local tostring = tostring
local type = type

local _M = {}

-- name in opts, name kept in the result, default, check, its message
local OPTIONS = {
    { "timeout", "unique_timeout", 2,
      function(v) return v > 0 end, '"timeout" must be greater than 0' },
    { "interval", "interval", 1,
      function(v) return v >= 0 end,
      '"interval" must be greater than or equal to 0' },
    { "wait_interval", "wait_interval", 0.010,
      function(v) return v >= 0 end,
      '"wait_interval" must be greater than or equal to 0' },
    { "wait_max", "wait_max", 0.5,
      function(v) return v >= 0 end,
      '"wait_max" must be greater than or equal to 0' },
    { "shm_retries", "shm_retries", 999,
      function(v) return v >= 0 end, '"shm_retries" must be 0 or greater' },
}


-- check(opts, kept): { unique_timeout =, interval =, wait_interval =,
-- wait_max =, shm_retries = }, or nil, err. kept: the values in force.
function _M.check(opts, kept)
    local res = {}
    for i = 1, #OPTIONS do
        local o = OPTIONS[i]
        local v = opts[o[1]] or kept[o[2]] or o[3]
        if type(v) ~= "number" then
            return nil, 'optional "' .. o[1] .. '" option must be a number'
        end
        if not o[4](v) then
            return nil, o[5]
        end
        res[o[2]] = v
    end
    return res
end


-- post() and post_local()'s names: true, or nil and the library's error
function _M.check_names(source, event)
    if type(source) ~= "string" or source == "" then
        return nil, "source is required"
    end
    if type(event) ~= "string" or event == "" then
        return nil, "event is required"
    end
    return true
end


-- event_list(source, event...): { _source = source, [event] = event ... };
-- reading an event not in it raises "event 'x' is an unknown event".
function _M.event_list(source, ...)
    local events = { _source = source }
    for _, event in pairs({ ... }) do
        events[event] = event
    end
    return setmetatable(events, {
        __index = function(_, key)
            error("event '" .. tostring(key) .. "' is an unknown event", 2)
        end,
    })
end


return _M
