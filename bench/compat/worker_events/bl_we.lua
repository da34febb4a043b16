-- The bench transport (bench/baselines/lib/bl_bench.lua's send, broadcast,
-- on) over resty.worker.events' API as ngx.ipc.worker_events gives it.
-- That API only broadcasts: send(to, ...) is a post that every worker
-- handles and only `to` acts on, as a worker-events user addressing one
-- worker would write it. Event: "<name> <to> <from>" (to = -1: everyone).
-- ngx.ipc's (nginx.conf), or Kong's lua-resty-worker-events itself
-- (theirs.conf sets BL_WE_MODULE and a poll interval: it polls its shm)
local we = require(rawget(_G, "BL_WE_MODULE") or "ngx.ipc.worker_events")
local INTERVAL = rawget(_G, "BL_WE_INTERVAL") or 0

local M = {}
local handlers = {}
local my_id
local find, sub, tonumber = string.find, string.sub, tonumber

local function on_event(data, event)
    local s1 = find(event, " ", 1, true)
    local s2 = find(event, " ", s1 + 1, true)
    local to = tonumber(sub(event, s1 + 1, s2 - 1))
    if to ~= -1 and to ~= my_id then
        return
    end
    local h = handlers[sub(event, 1, s1 - 1)]
    if h then
        h(data, tonumber(sub(event, s2 + 1)))
    end
end

function M.init(shm)
    my_id = ngx.worker.id()
    we.register(on_event, "bench")
    assert(we.configure({ shm = shm, interval = INTERVAL }))
end

function M.on(name, handler) handlers[name] = handler end

function M.send(to, name, data)
    local ok, err = we.post("bench", name .. " " .. to .. " " .. my_id, data)
    if not ok and err and err:find("queue full", 1, true) then
        return nil, "queue full"        -- bl_bench retries
    end
    return ok, err
end

function M.broadcast(name, data)
    return M.send(-1, name, data)
end

return M
