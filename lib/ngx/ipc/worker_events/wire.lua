-- ngx.ipc.worker_events.wire: an event as it travels between workers, in
-- Kong/lua-resty-worker-events' form ({ source, event, data, unique, pid }
-- in cjson), and, when it arrives, whether this worker is the one to
-- handle it (a unique event is handled by one worker per unique_timeout).
--
-- Owns: nothing (functions of their arguments); the dict key that says
-- which worker took a unique event.

local cjson = require("cjson.safe").new()

local tostring = tostring
local ngx = ngx
local log = ngx.log
local ERR = ngx.ERR
local DEBUG = ngx.DEBUG

local KEY_ONE = "events-one:"   -- the library's key: who handles a unique event

local _M = {}


-- The event's JSON, or nil and cjson's error.
function _M.encode(source, event, data, unique, pid)
    return cjson.encode({
        source = source,
        event = event,
        data = data,
        unique = unique,
        pid = pid,
    })
end


-- true when this worker (pid) is the one to handle unique event `id`
local function mine_to_have(dict, id, unique, pid, unique_timeout)
    local key = KEY_ONE .. tostring(unique)
    local ok, err = dict:add(key, pid, unique_timeout)
    if ok then
        return true
    end

    if err == "exists" then
        log(DEBUG, "worker-events: skipping event ", id,
            " was handled by worker ", dict:get(key))
    else
        log(ERR, "worker-events: cannot determine who handles event ", id,
            ", dropping it: ", err)
    end
end


-- Event `id` decoded from its JSON, for this worker (pid) to handle; nil
-- when it cannot be decoded (logged) or another worker has it (unique).
function _M.decode(json, id, dict, pid, unique_timeout)
    local d, err = cjson.decode(json)
    if not d then
        return log(ERR, "worker-events: failed decoding json event data: ",
                   err)
    end

    if d.unique and not mine_to_have(dict, id, d.unique, pid, unique_timeout)
    then
        return nil
    end

    return d
end


return _M
