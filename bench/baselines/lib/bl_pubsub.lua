-- Baseline transport: Redis pub/sub, the way users link nginx nodes today.
--
-- Every worker of every node holds its own SUBSCRIBE connection (one Redis
-- client per worker per node), opened by a timer started in init_worker with
-- lua-resty-redis (Debian's lua-nginx-redis: require "nginx.redis"; else
-- OpenResty's resty.redis). Publishing is a PUBLISH on a second connection,
-- kept per request (or per timer) context in ngx.ctx, since a subscribed
-- connection can only subscribe. A subscriber that loses its connection
-- reconnects after RECONNECT_S and subscribes again: whatever was published
-- meanwhile is gone, which is the behaviour under test.
--
-- Messages are "<name> <origin node> <data>" on one channel. Transport
-- interface as in bl_cluster.lua: publish, publish_many, on, state, done.
local ok_redis, redis = pcall(require, "nginx.redis")
if not ok_redis then
    redis = require "resty.redis"
end

local ngx = ngx
local fmt, find, sub, tostring = string.format, string.find, string.sub, tostring

local READ_TIMEOUT_MS = 500         -- how often an idle subscriber checks exiting
local RECONNECT_S = 0.1             -- subscriber retry delay (a patient user waits 1 s)
local CONNECT_TIMEOUT_MS = 1000

local M = {}
local cfg                           -- host, port, password, channel, node, dict
local handlers = {}
local dict
local st = { subscribed = false, reconnects = 0, received = 0, published = 0,
             handler_errors = 0, last_error = "-" }

local function connect()
    local red = redis:new()
    red:set_timeout(CONNECT_TIMEOUT_MS)
    local ok, err = red:connect(cfg.host, cfg.port)
    if not ok then return nil, "connect: " .. tostring(err) end
    if cfg.password and red:get_reused_times() == 0 then
        ok, err = red:auth(cfg.password)
        if not ok then red:close() return nil, "auth: " .. tostring(err) end
    end
    return red
end

local function publisher()
    local ctx = ngx.ctx
    local red = ctx.bl_pubsub
    if red then return red end
    local err
    red, err = connect()
    if not red then return nil, err end
    ctx.bl_pubsub = red
    return red
end

local function drop_publisher(red)
    red:close()
    ngx.ctx.bl_pubsub = nil
end

function M.publish(name, data)
    local red, err = publisher()
    if not red then return nil, err end
    local n
    n, err = red:publish(cfg.channel, name .. " " .. cfg.node .. " " .. data)
    if not n then
        drop_publisher(red)
        return nil, err
    end
    st.published = st.published + 1
    return true
end

-- one pipelined round trip for the whole list: all accepted, or an error
-- (then some may have gone out: a retry can duplicate, the receivers count it)
function M.publish_many(name, list)
    local red, err = publisher()
    if not red then return nil, err end
    local head = name .. " " .. cfg.node .. " "
    red:init_pipeline(#list)
    for i = 1, #list do red:publish(cfg.channel, head .. list[i]) end
    local replies
    replies, err = red:commit_pipeline()
    if not replies then
        drop_publisher(red)
        return nil, err
    end
    for i = 1, #replies do
        local r = replies[i]
        if type(r) == "table" and r[1] == false then
            return nil, tostring(r[2])
        end
    end
    st.published = st.published + #list
    return true
end

-- keep the request's publishing connection for the next request
function M.done()
    local red = ngx.ctx.bl_pubsub
    if red then
        ngx.ctx.bl_pubsub = nil
        red:set_keepalive(10000, 16)
    end
end

function M.on(name, handler)
    handlers[name] = handler
end

local function dispatch(msg)
    local s1 = find(msg, " ", 1, true)
    local s2 = s1 and find(msg, " ", s1 + 1, true)
    if not s2 then return end
    local handler = handlers[sub(msg, 1, s1 - 1)]
    st.received = st.received + 1
    if handler then
        local ok, err = pcall(handler, sub(msg, s2 + 1), sub(msg, s1 + 1, s2 - 1))
        if not ok then
            st.handler_errors = st.handler_errors + 1
            ngx.log(ngx.ERR, "bl_pubsub handler failed: ", err)
        end
    end
end

local function set_subscribed(on)
    st.subscribed = on
    dict:set(fmt("sub|%d", ngx.worker.id()), on and 1 or 0)
end

-- one connection's life: subscribe, read until it breaks or the worker exits
local function subscribe_once()
    local red, err = connect()
    if not red then return nil, err end
    red:set_timeout(READ_TIMEOUT_MS)
    local res
    res, err = red:subscribe(cfg.channel)
    if not res then red:close() return nil, "subscribe: " .. tostring(err) end
    set_subscribed(true)
    while not ngx.worker.exiting() do
        res, err = red:read_reply()
        if res then
            if res[1] == "message" then dispatch(res[3]) end
        elseif err ~= "timeout" then
            break
        end
    end
    set_subscribed(false)
    red:close()
    return nil, err and ("read: " .. tostring(err)) or nil
end

local function subscriber(premature)
    if premature then return end
    local logged = 0
    while not ngx.worker.exiting() do     -- the worker's lifetime
        local _, err = subscribe_once()
        if ngx.worker.exiting() then break end
        st.reconnects = st.reconnects + 1
        st.last_error = tostring(err)
        if logged < 5 then                -- a bounded number of lines per worker
            logged = logged + 1
            ngx.log(ngx.WARN, "bl_pubsub: subscriber lost Redis (", err,
                    "), retrying in ", RECONNECT_S, " s")
        end
        ngx.sleep(RECONNECT_S)
    end
end

-- in init_worker: { host, port, password?, channel, node, dict }
function M.init(opts)
    cfg = opts
    dict = ngx.shared[opts.dict]
    local ok, err = ngx.timer.at(0, subscriber)
    if not ok then ngx.log(ngx.ERR, "bl_pubsub: timer.at failed: ", err) end
end

function M.state()
    local s = {}
    for k, v in pairs(st) do s[k] = v end
    local n = 0
    for w = 0, ngx.worker.count() - 1 do
        if dict:get(fmt("sub|%d", w)) == 1 then n = n + 1 end
    end
    s.subscribed_workers = n              -- of this node, from the shared dict
    s.connected = n == ngx.worker.count()
    return s
end

return M
