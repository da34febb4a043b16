-- ngx.ipc.worker_events.handlers: the callbacks of resty.worker.events'
-- API, as Kong/lua-resty-worker-events keeps them, and the running of
-- them for one event.
--
-- Owns: the callback tree. Three levels, each with a weak and a strong
-- list: global (every event), per source, per source and event. An event
-- runs the global lists, then its source's, then its source's event's;
-- within a level the weak list, then the strong one, each in registration
-- order. unregister() only clears entries; the next event that walks a list
-- closes its holes (so a GC'ed weak handler goes the same way). The shape
-- (weak_count, weak_list, strong_count, strong_list, subs) is the
-- library's own, since configure{ debug = true } exposes the tree as
-- `_callbacks`.

local cjson = require("cjson.safe").new()

local assert = assert
local getmetatable = getmetatable
local ipairs = ipairs
local next = next
local setmetatable = setmetatable
local tostring = tostring
local traceback = debug.traceback
local type = type
local xpcall = xpcall
local ngx = ngx
local log = ngx.log
local ERR = ngx.ERR
local DEBUG = ngx.DEBUG

local _M = {}


local function new_level()
    return {
        weak_count = 0,
        weak_list = setmetatable({}, { __mode = "v" }),
        strong_count = 0,
        strong_list = {},
        subs = {},
    }
end


-- subs[key] makes the level it names on first use, down to `depth` levels
local function autosubs__index(self, key)
    local mt = getmetatable(self)
    local level = new_level()
    if mt.depth ~= 1 then
        setmetatable(level.subs, { __index = mt.__index, depth = mt.depth - 1 })
    end
    self[key] = level
    return level
end


-- A new, empty tree: global level, sources under it, events under those.
function _M.new()
    local root = new_level()
    setmetatable(root.subs, { __index = autosubs__index, depth = 2 })
    return root
end


local KEYS = {
    weak = { "weak_count", "weak_list" },
    strong = { "strong_count", "strong_list" },
}


-- register(tree, callback, "weak"|"strong", source, event...)
function _M.register(tree, callback, mode, source, ...)
    assert(type(callback) == "function", "expected function, got: "
           .. type(callback))

    local count_key, list_key = KEYS[mode][1], KEYS[mode][2]

    local function add(level)
        local n = level[count_key] + 1
        level[count_key] = n
        level[list_key][n] = callback
    end

    if not source then
        add(tree)
        return
    end

    local events = { ... }
    if #events == 0 then
        add(tree.subs[source])
        return
    end

    for _, event in ipairs(events) do
        add(tree.subs[source].subs[event])
    end
end


-- True when the callback was found (in a weak or strong list) at least once.
function _M.unregister(tree, callback, source, ...)
    assert(type(callback) == "function", "expected function, got: "
           .. type(callback))

    local found = false

    local function remove(level)
        for _, keys in ipairs({ KEYS.weak, KEYS.strong }) do
            local list = level[keys[2]]
            for i = 1, level[keys[1]] do
                if list[i] == callback then
                    list[i] = nil
                    found = true
                end
            end
        end
    end

    if not source then
        remove(tree)
    else
        local events = { ... }
        if not next(events) then
            remove(tree.subs[source])
        else
            for _, event in ipairs(events) do
                remove(tree.subs[source].subs[event])
            end
        end
    end

    return found
end


local function run_list(level, count_key, list_key, source, event, data, pid)
    local list = level[list_key]
    local i = 1
    while i <= level[count_key] do
        local handler = list[i]
        if type(handler) ~= "function" then
            -- unregistered or collected: move the last one into the hole
            local last = level[count_key]
            list[i] = list[last]
            list[last] = nil
            level[count_key] = last - 1
        else
            local ok, err = xpcall(handler, traceback, data, event, source,
                                   pid)
            if not ok then
                local d, e
                if type(data) == "table" then
                    d, e = cjson.encode(data)
                    if not d then d = tostring(e) end
                else
                    d = tostring(data)
                end
                log(ERR, "worker-events: event callback failed; source=",
                    source, ", event=", event, ", pid=", pid, " error='",
                    tostring(err), "', data=", d)
            end
            i = i + 1
        end
    end
end


local function run_level(level, source, event, data, pid)
    run_list(level, "weak_count", "weak_list", source, event, data, pid)
    run_list(level, "strong_count", "strong_list", source, event, data, pid)
end


-- Runs every callback that wants this event, one after the other (a
-- callback may yield; the next waits for it). A callback's error is logged
-- and the others still run.
function _M.run(tree, source, event, data, pid)
    log(DEBUG, "worker-events: handling event; source=", source,
        ", event=", event, ", pid=", pid)   -- data may be private: not logged

    run_level(tree, source, event, data, pid)
    local level = tree.subs[source]
    run_level(level, source, event, data, pid)
    run_level(level.subs[event], source, event, data, pid)
end


return _M
