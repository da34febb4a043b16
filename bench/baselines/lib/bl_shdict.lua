-- Shared-dict polling transport, the lua-resty-worker-events way: one list
-- per worker id in a lua_shared_dict; senders lpush to the target's list,
-- each worker drains its own list (rpop) from ngx.timer.every(interval).
local M = {}
local handlers = {}
local dict, my_id, nworkers
local MAX_PER_POLL = 100000        -- bound one drain; the rest waits a tick
local polling = false

local find, sub, tonumber = string.find, string.sub, tonumber

local function qkey(id) return "q" .. id end

-- wire: "<sender> <namelen> <name><data>"
local function encode(name, data)
    return my_id .. " " .. #name .. " " .. name .. data
end

local function dispatch(v)
    local s1 = find(v, " ", 1, true)
    local s2 = find(v, " ", s1 + 1, true)
    local from = tonumber(sub(v, 1, s1 - 1))
    local nl = tonumber(sub(v, s1 + 1, s2 - 1))
    local name = sub(v, s2 + 1, s2 + nl)
    local h = handlers[name]
    if h then
        local ok, err = pcall(h, sub(v, s2 + nl + 1), from)
        if not ok then ngx.log(ngx.ERR, "handler ", name, " failed: ", err) end
    end
end

local function poll(premature)
    if premature or polling then return end
    polling = true
    local key = qkey(my_id)
    for _ = 1, MAX_PER_POLL do
        local v = dict:rpop(key)
        if not v then break end
        dispatch(v)
    end
    polling = false
end

function M.init(dict_name, interval)
    dict = ngx.shared[dict_name]
    my_id, nworkers = ngx.worker.id(), ngx.worker.count()
    local ok, err = ngx.timer.every(interval, poll)
    if not ok then ngx.log(ngx.ERR, "timer.every failed: ", err) end
end

function M.on(name, handler) handlers[name] = handler end

function M.send(to, name, data)
    local len, err = dict:lpush(qkey(to), encode(name, data))
    if not len then return nil, err end   -- "no memory": caller retries
    return true
end

function M.broadcast(name, data)
    local msg = encode(name, data)
    for id = 0, nworkers - 1 do
        local len, err = dict:lpush(qkey(id), msg)
        if not len then return nil, err end
    end
    return true
end

return M
