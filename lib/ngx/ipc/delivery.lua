-- ngx.ipc.delivery: the two light threads (timers) that deliver a worker's
-- messages, one object per worker.
--
--   the reader sleeps on the worker's inbox semaphore, which the module's
--   event handler posts when the inbox has messages; it takes them in
--   batches, copies them out of shared memory, hands answers to the
--   ipc.call()s waiting for them at once, and queues the rest;
--   the runner runs the queued messages' handlers one at a time, in
--   arrival order (dispatch.lua). A handler may yield, even in an
--   ipc.call() to another worker: the reader goes on delivering answers.
--
-- Either may end before its time: a handler's ngx.exit() (or an error in
-- a coroutine it ran) ends the runner's whole light thread, which the
-- module notices (the timer's request pool is freed) and tells the reader,
-- which starts a new runner; a reader that fails is logged and started
-- again. Both wait on semaphores counted in the module's exit state, so a
-- worker that shuts down exits once only they are left (docs/ARCHITECTURE
-- §8).

local ffi = require "ffi"
local bit = require "bit"
local base = require "resty.core.base"

local C = ffi.C
local band = bit.band
local ffi_new = ffi.new
local ffi_string = ffi.string
local pcall = pcall
local setmetatable = setmetatable
local ngx = ngx
local ngx_log = ngx.log
local ngx_ERR = ngx.ERR
local ngx_NOTICE = ngx.NOTICE
local get_request = base.get_request
local FFI_OK = base.FFI_OK
local timer_at = ngx.timer.at
local worker_exiting = ngx.worker.exiting


local IDLE_WAIT = 3600     -- seconds; the light threads are woken by events
local RUN_BURST = 128      -- handlers run between two visits to the event loop
local RESTART_DELAY = 0.1  -- seconds before a failed reader starts again

local BATCH = C.NGX_IPC_FFI_BATCH
local F_REPLY = C.NGX_IPC_FFI_F_REPLY
local F_STATUS = C.NGX_IPC_FFI_F_STATUS
local S_KICK = C.NGX_IPC_FFI_S_KICK

local _M = {}
local mt = { __index = _M }

local msgs = ffi_new("ngx_ipc_msg_t[?]", BATCH)


-- w: the worker (worker.lua): its semaphores, exit state, queue, handler
-- context, dispatcher, calls and cluster link.
function _M.new(w)
    local self = setmetatable({ w = w, burst = 0, runner_idle = false,
                                reader_full = false, reader_done = false,
                                reader_on = false, runner_on = false }, mt)
    self.pace_fn = function() self:pace() end
    self.run = function(premature) self:runner(premature) end
    self.read = function(premature) self:reader(premature) end
    return self
end


-- Starts what does not run yet; nil, err if a timer cannot be made (then
-- `failed` says so, and the next API call tries again).
function _M.start(self)
    local ok, err = true, nil
    if not self.runner_on then
        ok, err = timer_at(0, self.run)
        self.runner_on = ok and true or false
    end

    if ok and not self.reader_on then
        ok, err = timer_at(0, self.read)
        self.reader_on = ok and true or false
    end

    self.failed = not ok
    return ok, err
end


-- A semaphore wait of the light threads, counted for the shutdown watch.
function _M.wait(self, sema)
    local exit_state = self.w.exit_state
    exit_state.waits = exit_state.waits + 1
    local ok, err = sema:wait(IDLE_WAIT)
    exit_state.waits = exit_state.waits - 1
    return ok, err
end


-- The runner's timer ended while a handler ran: that handler is over. If
-- an ipc.call waits for it, the caller learns it now; if it was part of a
-- cluster entry, the rest of the entry goes first in the new runner (what
-- was handled already is skipped by its sequence numbers).
function _M.restart_runner(self)
    local w = self.w
    local ctx = w.ctx
    w.exit_state.runner_gone = 0
    self.runner_idle = false

    if ctx.name then
        ngx_log(ngx_NOTICE, "ngx_ipc: the handler for message \"",
                w.dispatcher.printable(ctx.name), "\" ended its light ",
                "thread; delivery goes on in a new one")

        if ctx.call then
            w.dispatcher:abandoned(ctx.name, ctx.sender, ctx.call)
        end
    end
    ctx:leave()

    if ctx.batch then
        w.queue:unshift(w.dispatcher.cluster_in, ctx.batch, 0, 0, 0)
        ctx:leave_batch()
    end

    self.runner_on = false
    local ok, err = self:start()
    if not ok then
        ngx_log(ngx_ERR, "ngx_ipc: cannot restart the runner: ", err)
    end
end


-- Copies a batch out of shared memory; answers go to their calls at once.
-- Returns whether anything was queued.
function _M.take_batch(self, n)
    local w = self.w
    local queue, calls = w.queue, w.calls
    local queued = false

    for i = 0, n - 1 do
        local m = msgs[i]
        local data = ffi_string(m.data, m.data_len)
        local flags = m.flags

        if band(flags, F_REPLY) ~= 0 then
            if band(flags, F_STATUS) == S_KICK then
                if w.cluster then
                    w.cluster.kick()
                end
            else
                calls:resolve(m.call_id, flags, data)
            end

        else
            queue:push(ffi_string(m.name, m.name_len), data, m.sender_pid,
                       flags, m.call_id)
            queued = true
        end
    end

    -- the space goes back before any handler runs
    C.ngx_ipc_ffi_take_done()
    return queued
end


-- The reader's loop; returns when the worker may exit.
function _M.read_loop(self)
    local w = self.w
    local queue, exit_state = w.queue, w.exit_state

    while true do
        if exit_state.runner_gone ~= 0 and not worker_exiting() then
            self:restart_runner()
        end

        if queue:full() then
            -- whatever wakes us (room in the queue, a new message, a
            -- runner to replace), the loop looks again
            self.reader_full = true
            self:wait(w.inbox_sema)
            self.reader_full = false

        else
            local n = C.ngx_ipc_ffi_take(msgs, BATCH)

            if n > 0 then
                if self:take_batch(n) and self.runner_idle then
                    self.runner_idle = false
                    w.work_sema:post(1)
                end

            elseif n == 0 then
                -- a worker shutting down goes on receiving until nothing
                -- but these waits keeps it alive: then the module says so
                if exit_state.release ~= 0 and worker_exiting() then
                    return
                end

                local ok, err = self:wait(w.inbox_sema)
                if not ok and err ~= "timeout" then
                    return "reader stopped: " .. err
                end

            else
                return "reader stopped: receive failed"
            end
        end
    end
end


function _M.reader(self, premature)
    if premature then
        return
    end

    local ok, err = pcall(self.read_loop, self)
    if not ok or err then
        -- a bug, or a failure of the semaphore: logged, and a new reader
        ngx_log(ngx_ERR, "ngx_ipc: ", not ok and "reader failed: " or "", err)
        if not worker_exiting() then
            ok, err = timer_at(RESTART_DELAY, self.read)
            if ok then
                return
            end
            ngx_log(ngx_ERR, "ngx_ipc: cannot restart the reader: ", err)
        end
    end

    self.reader_on = false
    self.reader_done = true
    self.w.work_sema:post(1)
end


-- Counts a handler run; every RUN_BURST of them, visits the event loop.
-- Posted events chain the light threads: without a visit now and then, a
-- burst would starve requests. (Not ngx.sleep(0): without OpenResty's
-- delayed-events patch it logs a warning each time.)
function _M.pace(self)
    local burst = self.burst + 1
    if burst >= RUN_BURST then
        burst = 0
        local sema = self.w.yield_sema
        if C.ngx_ipc_ffi_yield(sema.sem) == FFI_OK then
            self:wait(sema)
        end
    end
    self.burst = burst
end


function _M.runner(self, premature)
    if premature then
        return
    end

    local w = self.w
    local queue, dispatcher = w.queue, w.dispatcher

    if C.ngx_ipc_ffi_watch_runner(get_request()) ~= FFI_OK then
        ngx_log(ngx_ERR, "ngx_ipc: cannot watch the runner")
    end

    -- marks the runner's context, which the coroutines and light threads a
    -- handler starts share: ipc.sender, ipc.reply and the deadlock check
    ngx.ctx.ngx_ipc_runner = true

    while true do
        local name, data, sender, flags, id = queue:pop()
        if name == nil then
            if self.reader_done then
                break
            end

            self.runner_idle = true
            self:wait(w.work_sema)
            self.runner_idle = false

        else
            if self.reader_full and not queue:full() then
                self.reader_full = false
                w.inbox_sema:post(1)
            end

            dispatcher:handle(name, data, sender, flags, id, self.pace_fn)
            self:pace()
        end
    end

    self.runner_on = false
end


return _M
