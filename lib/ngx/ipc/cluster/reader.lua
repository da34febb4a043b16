-- ngx.ipc.cluster.reader: the agent's reader. It follows the stream (XREAD
-- BLOCK from its cursor), checks every entry (entry.decode), takes or
-- refuses it by its sequence numbers (window.lua), and fans the entries of
-- other nodes out to this node's workers through the local path, one
-- local message per entry. Where it is in the stream, and what it does
-- when that cannot be right, is position.lua's. See docs/ARCHITECTURE.md
-- §11.

local ffi = require "ffi"
local entry = require "ngx.ipc.cluster.entry"
local position = require "ngx.ipc.cluster.position"
local window = require "ngx.ipc.cluster.window"
local xread = require "ngx.ipc.cluster.xread"

local C = ffi.C
local math_min = math.min
local setmetatable = setmetatable
local tostring = tostring
local ngx = ngx
local ngx_log = ngx.log
local ngx_ERR = ngx.ERR
local ngx_NOTICE = ngx.NOTICE
local ngx_now = ngx.now
local ngx_sleep = ngx.sleep
local update_time = ngx.update_time


local BLOCK_MS = 500             -- XREAD BLOCK: how soon an idle reader
                                 -- checks its position, or ends
local MAX_FIELDS = 14            -- an entry's fields (names and values)
local YIELD_BYTES = 4 * 1024 * 1024  -- fanned out between two yields
local NODES_PERIOD = 1           -- seconds between two records of position
local BACKOFF_MIN, BACKOFF_MAX = 0.1, 5   -- seconds between reconnects

local K_CONNECTED = C.NGX_IPC_FFI_CLUSTER_CONNECTED
local K_RECEIVED = C.NGX_IPC_FFI_CLUSTER_RECEIVED
local K_RECONNECTS = C.NGX_IPC_FFI_CLUSTER_RECONNECTS
local K_LAG_MS = C.NGX_IPC_FFI_CLUSTER_LAG_MS
local K_NODE_CLASHES = C.NGX_IPC_FFI_CLUSTER_NODE_CLASHES

local _M = {}
local mt = { __index = _M }


-- One entry of the XREAD reply: checked, then fanned out. Returns false
-- when the agent stops.
function _M.on_entry(self, id, fields, nf, problem)
    if not self.link:active() then
        return false
    end

    local pos = self.pos
    pos:advance(id)

    local e, why, kind
    if problem then
        why, kind = problem, "malformed"
    elseif pos:from_the_future(id) then
        why, kind = "its id is far ahead of the Redis server's clock",
                    "malformed"
    else
        e, why, kind = entry.decode(fields, nf, self.limits)
    end

    if not e then
        self.link:skip(kind, id, why)
        pos:save(id)
        return true
    end

    local cfg = self.cfg
    if e.node == cfg.node then
        if e.epoch == cfg.epoch then
            pos:save(id)
            return true               -- ours: delivered here at once
        end

        if entry.id_cmp(id, pos.start_id) == 1 then
            self.link:count(K_NODE_CLASHES)
            self.link:log(ngx_ERR, "clash", "another nginx uses this node's ",
                          "name \"", e.node, "\" (set node= in ipc_cluster); ",
                          "its messages are delivered here all the same")
        end
    end

    if self.window:admit(id, e.node .. "/" .. e.epoch, e.node, e.first,
                         e.last)
    then
        local ok, err = self.link:deliver(self.link.IN_NAME, e.node .. "\n"
                                          .. e.epoch .. "\n" .. e.m)
        if not ok then
            if not self.link:active() then
                return false
            end

            self.link:log(ngx_ERR, "fanout", "entry ", id, " (", #e.m,
                          " bytes) not delivered here: ", err)
        end

        self.link:count(K_RECEIVED, e.count)
        self.last_ms = entry.id_ms(id)

        -- no run of big entries keeps this worker from its requests
        self.unyielded = self.unyielded + #e.m
        if self.unyielded >= YIELD_BYTES then
            self.unyielded = 0
            ngx_sleep(0.001)
        end
    end

    pos:save(id)
    return true
end


-- Connects, syncs the clock and resumes; nil, err on failure (nil alone
-- when the dial failed: link:dial logged it).
function _M.connect(self)
    local conn = self.link:dial("reader")
    if not conn then
        return nil
    end

    self.conn, self.pos.conn = conn, conn
    local ok, err = self.pos:sync_clock()
    if ok then
        ok, err = self.pos:resume()
        if not ok then
            err = "cannot resume: " .. tostring(err)
        end
    end

    if not ok then
        self:close()
        return nil, err
    end

    return true
end


function _M.close(self)
    if self.conn then
        self.conn:close()
    end
    self.conn, self.pos.conn = nil, nil
end


function _M.run(link)
    local cfg = link.cfg
    local win = window.new(link)
    local self = setmetatable({
        link = link, cfg = cfg, conn = nil, window = win,
        pos = position.new(link, win), unyielded = 0, last_ms = nil,
        limits = { max_message = cfg.max_message, stream = cfg.stream,
                   secret = cfg.secret },
    }, mt)
    local pos = self.pos

    local backoff = BACKOFF_MIN
    local first = true
    local recorded = 0
    local on_entry = function(id, fields, nf, problem)
        return self:on_entry(id, fields, nf, problem)
    end
    -- every XREAD goes with an XINFO STREAM ahead of it: the trim check
    local on_info = function()
        return pos:read_info()
    end

    while link:active() do
        if not self.conn then
            local ok, err = self:connect()
            if not ok then
                link:gauge(K_CONNECTED, 0)
                if err then
                    link:fail("reader", err)
                end
                link:pause(backoff)
                backoff = math_min(backoff * 2, BACKOFF_MAX)

            else
                if not first then
                    link:count(K_RECONNECTS)
                    ngx_log(ngx_NOTICE, "ngx_ipc cluster: connected again to ",
                            cfg.where, " (", self.conn.where, "), resuming ",
                            "after ", pos.cursor)
                end
                first = false
                pos.start_id = pos.start_id or pos.cursor
                backoff = BACKOFF_MIN
                link:connected()
                link:gauge(K_CONNECTED, 1)
            end

        else
            local n, err = xread.each(self.conn, cfg.read_count, BLOCK_MS,
                                      cfg.stream, pos.cursor,
                                      cfg.entry_bytes, MAX_FIELDS, on_entry,
                                      pos.info_request, on_info)
            local idle = n == 0
            if idle then
                local ok
                ok, err = pos:idle()
                n = ok and 0
            end

            if not n then
                self:close()
                link:gauge(K_CONNECTED, 0)
                if link:active() then
                    link:fail("reader", "XREAD failed: " .. tostring(err))
                end

            elseif not idle and self.last_ms then
                update_time()
                local lag = ngx_now() * 1000 + pos.clock - self.last_ms
                link:gauge(K_LAG_MS, lag > 0 and lag or 0)
            end

            -- our position, for the gap check of a later run of this node
            if self.conn and self.conn:open() and pos.position
               and ngx_now() - recorded >= NODES_PERIOD
            then
                recorded = ngx_now()
                self.conn:command("HSET", cfg.nodes_key, cfg.node,
                                  pos.position)
            end

            if self.conn and not self.conn:open() then
                self:close()                 -- the agent stopped mid-reply
            end
        end
    end

    self:close()
end


return _M
