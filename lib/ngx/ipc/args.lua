-- ngx.ipc.args: the checks of the public functions' arguments.
--
-- Each returns the argument as the API takes it, or nil and the message of
-- the error to raise. The public function raises it itself, with
-- error(msg, 2): so the error always names the line of its caller, however
-- these helpers call each other (t/test_misuse.py checks it for each
-- public function). Messages are in the style of Lua's own:
--   bad argument #2 to 'send' (string expected, got table)

local errors = require "ngx.ipc.errors"

local C = require("ffi").C
local pairs = pairs
local str_sub = string.sub
local tonumber = tonumber
local tostring = tostring
local type = type
local get_phase = ngx.get_phase


local MAX_WAIT = 2147483   -- seconds: ngx.semaphore waits take int ms
local MAX_NAME = C.NGX_IPC_FFI_MAX_NAME
local CLUSTER_RESERVED = "ipc:cluster"  -- names no cluster entry may carry

-- where ngx.sleep may be used, and so a call or a send that waits
local YIELDABLE = {
    rewrite = true, server_rewrite = true, access = true, content = true,
    timer = true, ssl_cert = true, ssl_session_fetch = true,
    ssl_client_hello = true,
}

local _M = { MAX_WAIT = MAX_WAIT }


local function bad(n, fname, msg)
    return nil, "bad argument #" .. n .. " to '" .. fname .. "' (" .. msg
                .. ")"
end


function _M.type(v, want, n, fname)
    if type(v) ~= want then
        return bad(n, fname, want .. " expected, got " .. type(v))
    end
    return v
end


-- name: a non-empty string, or a number (its string form), as ngx_lua_ipc
-- takes it (luaL_checklstring).
function _M.name(v, n, fname)
    local t = type(v)
    if t == "number" then
        return tostring(v)
    end

    if t ~= "string" then
        return bad(n, fname, "string expected, got " .. t)
    end

    if v == "" then
        return bad(n, fname, "non-empty string expected")
    end

    return v
end


-- pid: a number, or a string that converts to one, as from ngx.var
-- (ngx_lua_ipc takes it with luaL_checknumber).
function _M.pid(v, n, fname)
    local t = type(v)
    if t == "number" then
        return v
    end

    if t == "string" then
        local num = tonumber(v)
        if num then
            return num
        end
    end

    return bad(n, fname, "number expected, got " .. t)
end


-- data: a string, a number (sent as its string form), or nil (sent as "").
function _M.data(v, n, fname)
    local t = type(v)
    if t == "string" then
        return v
    end

    if t == "number" then
        return tostring(v)
    end

    if v == nil then
        return ""
    end

    return bad(n, fname, "string expected, got " .. t)
end


-- Whether code may yield here (like ngx.sleep); what it is called, for the
-- message.
function _M.can_yield()
    local phase = get_phase()
    return YIELDABLE[phase] == true, phase
end


-- opts.wait of send and broadcast: false (do not wait) or the seconds to
-- wait for room, where the caller can yield.
function _M.wait(opts, n, fname)
    local w = opts.wait
    if w == nil then
        return false
    end

    if type(w) ~= "number" then
        return bad(n, fname, "wait: number expected, got " .. type(w))
    end

    if not (w >= 0) then            -- NaN too
        return bad(n, fname, "wait: non-negative number expected")
    end

    if w == 0 then
        return false        -- no waiting: a plain send, anywhere
    end

    local ok, phase = _M.can_yield()
    if not ok then
        return nil, "ipc." .. fname .. " with wait is not allowed in the "
                    .. "context of " .. phase .. " (it must be able to "
                    .. "yield, like ngx.sleep)"
    end

    return w > MAX_WAIT and MAX_WAIT or w
end


-- broadcast's options (opts a table): include_self, scope ("local",
-- "cluster" or nil), wait (false: do not wait), or nil, nil, nil and the
-- message.
function _M.broadcast_opts(opts, name)
    local _, err = _M.type(opts, "table", 3, "broadcast")
    if err then
        return nil, nil, nil, err
    end

    local include_self = true
    if opts.include_self ~= nil then
        include_self = opts.include_self and true or false
    end

    local scope = opts.scope
    if scope ~= nil and scope ~= "local" and scope ~= "cluster" then
        return nil, nil, nil, "bad argument #3 to 'broadcast' (scope "
               .. "\"local\" or \"cluster\" expected, got "
               .. tostring(scope) .. ")"
    end

    local wait
    wait, err = _M.wait(opts, 3, "broadcast")
    if err then
        return nil, nil, nil, err
    end

    if scope == "cluster" then
        if str_sub(name, 1, #CLUSTER_RESERVED) == CLUSTER_RESERVED then
            -- every node refuses such an entry: ngx_ipc's own messages
            return nil, nil, nil, "bad argument #1 to 'broadcast' (names "
                   .. "that start with \"" .. CLUSTER_RESERVED .. "\" are "
                   .. "kept for ngx_ipc)"
        end

        if wait then
            -- the outbox drains at Redis's pace, not a local receiver's:
            -- no local event would wake such a wait
            return nil, nil, nil, "bad argument #3 to 'broadcast' (wait is "
                   .. "not available with scope \"cluster\": check for "
                   .. "\"queue full\")"
        end
    end

    return include_self, scope, wait
end


-- receive's table of handlers (handler: receive's second argument, nil):
-- the table with its names as strings; or nil and the message; or nil,
-- nil and an errors code ("name too long").
function _M.handlers(t, handler)
    if handler ~= nil then
        return nil, "bad argument #2 to 'receive' (nil expected with a "
                    .. "table of handlers, got " .. type(handler) .. ")"
    end

    -- all checked before any is registered
    local names = {}
    for k, v in pairs(t) do
        local tk = type(k)
        if tk == "number" then
            k = tostring(k)

        elseif tk ~= "string" or k == "" then
            return nil, "bad argument #1 to 'receive' (table keys must be "
                        .. "non-empty strings, got " .. tk .. ")"
        end

        if #k > MAX_NAME then
            return nil, nil, errors.NAME_TOO_LONG
        end

        if type(v) ~= "function" then
            return nil, "bad argument #1 to 'receive' (function expected "
                        .. "for \"" .. k .. "\", got " .. type(v) .. ")"
        end

        names[k] = v
    end

    return names
end


-- stats()'s argument: nil (this worker), "all", or a PID: the PID (nil for
-- the others), or nil and the message.
function _M.which(v)
    if v == nil or v == "all" then
        return nil
    end

    local pid = tonumber(v)
    local t = type(v)
    if (t ~= "number" and t ~= "string") or pid == nil then
        return nil, "bad argument #1 to 'stats' (number or \"all\" "
                    .. "expected, got " .. (t == "string" and "\""
                                             .. str_sub(v, 1, 32) .. "\""
                                             or t) .. ")"
    end

    return pid
end


-- call's timeout: a positive number of seconds (default `default`).
function _M.timeout(v, default)
    if v == nil then
        return default
    end

    if type(v) ~= "number" then
        return bad(4, "call", "number expected, got " .. type(v))
    end

    if not (v > 0) then             -- NaN too
        return bad(4, "call", "positive number expected")
    end

    return v > MAX_WAIT and MAX_WAIT or v
end


return _M
