-- ngx.ipc.dispatch: runs the handler of one message, in the runner's light
-- thread, one object per worker.
--
-- A message goes to ipc.handlers[name], else to ipc.default_handler, else
-- nowhere: then it is counted in `unhandled`, and the first such message
-- of each name is logged at warn (at most 64 names per worker, then one
-- line saying that the others are only counted). An ipc.call request goes
-- to ipc.handlers[name] only, and its answer (the handler's first value,
-- its error, or "no handler") goes back to the caller (calls.answer). A
-- handler runs under pcall, with the handler context entered before and
-- left after, here and nowhere else; what it raises is logged (ten lines
-- a second at most, then a count) and counted in `handler_errors`.

local ffi = require "ffi"
local bit = require "bit"
local errors = require "ngx.ipc.errors"
local limiter = require "ngx.ipc.limiter"

local C = ffi.C
local band = bit.band
local getmetatable = debug.getmetatable
local next = next
local pcall = pcall
local rawget = rawget
local setmetatable = setmetatable
local str_byte = string.byte
local str_format = string.format
local str_gsub = string.gsub
local str_sub = string.sub
local tostring = tostring
local type = type
local ngx_log = ngx.log
local ngx_ERR = ngx.ERR
local ngx_WARN = ngx.WARN


local F_REQUEST = C.NGX_IPC_FFI_F_REQUEST
local LOG_BURST = 10       -- handler-error log lines per second, at most
local TOLD_MAX = 64        -- names without a handler logged, per worker
local NAME_MAX = 256       -- bytes of a name in a log line

local _M = {}
local mt = { __index = _M }


-- A name as a log line shows it: at most NAME_MAX bytes, control and
-- non-ASCII bytes as \xNN (a name may come from another node).
local function printable(name)
    if #name > NAME_MAX then
        name = str_sub(name, 1, NAME_MAX) .. "..."
    end

    return (str_gsub(name, "[%c\128-\255]", function(c)
        return str_format("\\x%02x", str_byte(c))
    end))
end

_M.printable = printable


-- A handler's error value as text: a string or a number as such, an
-- object through its __tostring, anything else as Lua's own interpreter
-- says it ("(error object is a table value)"). Whatever the object does
-- (a metatable whose __index or __tostring raises), this never raises.
function _M.error_text(err)
    local t = type(err)
    if t == "string" then
        return err
    end

    if t == "number" then
        return tostring(err)
    end

    local meta = getmetatable(err)
    if type(meta) == "table" and rawget(meta, "__tostring") ~= nil then
        local ok, s = pcall(tostring, err)
        if ok and type(s) == "string" then
            return s
        end
    end

    return "(error object is a " .. t .. " value)"
end

local error_text = _M.error_text


-- api: the public table (ipc.handlers, ipc.default_handler); ctx: the
-- handler context; counts: the Lua counters; calls: for the answers;
-- cluster: ngx.ipc.cluster or false; node: this node's name (ipc_cluster).
function _M.new(api, ctx, counts, calls, cluster, node)
    return setmetatable({
        api = api, ctx = ctx, counts = counts, calls = calls,
        cluster = cluster, node = node,
        cluster_in = cluster and cluster.IN_NAME,
        errors_log = limiter.new(1, LOG_BURST),
        told = {}, told_n = 0,
    }, mt)
end


function _M.log_error(self, name, err)
    local ok, skipped = self.errors_log:allow("handler")
    if not ok then
        return
    end

    if skipped > 0 then
        ngx_log(ngx_ERR, "ngx_ipc: ", skipped,
                " more handler errors not logged")
    end

    ngx_log(ngx_ERR, "ngx_ipc: handler for message \"", printable(name),
            "\" failed: ", error_text(err))
end


-- A message no handler took: counted, and told once per name.
function _M.unhandled(self, name, sender, node)
    self.counts.unhandled = self.counts.unhandled + 1

    if self.told[name] or self.told_n > TOLD_MAX then
        return
    end

    self.told_n = self.told_n + 1
    if self.told_n > TOLD_MAX then
        ngx_log(ngx_WARN, "ngx_ipc: ", TOLD_MAX, " names without a handler ",
                "were logged in this worker: messages of further such ",
                "names are only counted (stats().unhandled)")
        return
    end

    self.told[name] = true

    local api = self.api
    local none = type(api.handlers) ~= "table" or next(api.handlers) == nil
    ngx_log(ngx_WARN, "ngx_ipc: no handler for message \"", printable(name),
            "\" (from ", sender and "worker " .. sender
                         or "node \"" .. printable(tostring(node)) .. "\"",
            "): it is dropped and counted in stats().unhandled, and so is ",
            "every later one of that name; ",
            none and "this worker registered no handler at all (register "
                     .. "them with ipc.receive in init_worker_by_lua*)"
                 or "register it with ipc.receive, or set "
                    .. "ipc.default_handler")
end


-- In pcall: the handler of a message, else default_handler. false if
-- there is neither.
local function run_handler(api, name, data)
    local handlers = api.handlers
    local handler = type(handlers) == "table" and handlers[name] or nil
    if handler then
        handler(data)
        return true
    end

    local default = rawget(api, "default_handler")
    if default then
        default(name, data)
        return true
    end

    return false
end


-- One message that is not a request: sender nil and node set for a
-- message of another node.
function _M.run(self, name, data, sender, node)
    local ctx = self.ctx
    ctx:enter(name, sender, node, nil)
    local ok, found = pcall(run_handler, self.api, name, data)
    ctx:leave()

    if not ok then
        self.counts.handler_errors = self.counts.handler_errors + 1
        self:log_error(name, found)

    elseif not found then
        self:unhandled(name, sender, node)
    end
end


-- In pcall: the request's handler, and its first value.
local function run_request(api, name, data)
    local handlers = api.handlers
    local handler = type(handlers) == "table" and handlers[name] or nil
    if not handler then
        return false
    end

    return true, handler(data)
end


-- An ipc.call request: its handler runs, and its answer goes back.
function _M.request(self, name, data, sender, id)
    local ctx, calls = self.ctx, self.calls
    ctx:enter(name, sender, self.node, id)
    local ok, found, res = pcall(run_request, self.api, name, data)
    ctx:leave()

    local status, answer
    if ok and not found then
        status, answer = calls.S_NO_HANDLER, ""

    elseif ok then
        local t = type(res)
        if t == "string" then
            status, answer = calls.S_OK, res
        elseif t == "number" then
            status, answer = calls.S_OK, tostring(res)
        elseif res == nil then
            status, answer = calls.S_OK, ""
        else
            ok, found = false, "bad response (string expected, got " .. t
                               .. ")"
        end
    end

    if not ok then
        self.counts.handler_errors = self.counts.handler_errors + 1
        self:log_error(name, found)
        status, answer = calls.S_ERROR, error_text(found)
    end

    local rc = calls:answer(sender, status, id, answer)
    if rc ~= errors.OK then
        self:log_error(name, "reply not sent: " .. errors.text(rc))
    end
end


-- A handler that ended its light thread (ngx.exit(), an error inside a
-- coroutine) did not answer its call: the caller learns it now.
function _M.abandoned(self, name, sender, id)
    self.counts.handler_errors = self.counts.handler_errors + 1
    self.calls:answer(sender, self.calls.S_ERROR, id,
                      "the handler ended its light thread (ngx.exit(), or "
                      .. "an error in a coroutine it ran) before it returned")
end


-- One message taken from the queue. pace() lets the event loop run now
-- and then (between the messages of a cluster entry too).
function _M.handle(self, name, data, sender, flags, id, pace)
    if band(flags, F_REQUEST) ~= 0 then
        return self:request(name, data, sender, id)
    end

    if name == self.cluster_in then
        -- entries of another node, fanned out here by the cluster agent
        local ctx = self.ctx
        ctx:enter_batch(data)
        self.cluster.each(data, function(n, d, _, node)
            self:run(n, d, nil, node)
        end, pace)
        ctx:leave_batch()
        return
    end

    self:run(name, data, sender, self.node)
end


return _M
