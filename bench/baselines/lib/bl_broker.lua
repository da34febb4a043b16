-- Unix-socket broker transport, the lua-resty-events way. Worker 0 is the
-- broker: the http server listening on unix:<prefix>/broker.sock takes the raw
-- request socket (ngx.req.socket(true)) of each worker's connection and
-- forwards every frame to the target worker's connection (or to all of them).
-- Every worker (0 included) keeps one cosocket connection to the broker from a
-- timer: that timer's thread reads and dispatches frames, a light thread
-- spawned next to it writes the worker's outgoing queue (request handlers
-- cannot use the timer's cosocket, so they only append to the queue and wake
-- the writer through an ngx.semaphore).
--
-- Frame: u32 big-endian length of the rest, then u16 target (0xffff = all
-- workers), u16 sender, u16 name length, name, data.
local bit = require "bit"
local semaphore = require "ngx.semaphore"
local band, rshift = bit.band, bit.rshift
local char, byte, sub, concat = string.char, string.byte, string.sub, table.concat

local M = {}
local BROKER_ID = 0
local ALL = 0xffff
local MAX_QUEUE_BYTES = 64 * 1024 * 1024   -- per-worker outgoing queue: "queue full" beyond
local MAX_BATCH = 256                      -- frames per send() call
local TIMEOUT_MS = 1000                    -- read/idle granularity (exit checks)

local handlers = {}
local my_id, path

local function u16(n) return char(band(rshift(n, 8), 255), band(n, 255)) end
local function u32(n)
    return char(band(rshift(n, 24), 255), band(rshift(n, 16), 255),
                band(rshift(n, 8), 255), band(n, 255))
end
local function get16(s, i) local a, b = byte(s, i, i + 1) return a * 256 + b end
local function get32(s)
    local a, b, c, d = byte(s, 1, 4)
    return ((a * 256 + b) * 256 + c) * 256 + d
end

-- a queue of strings plus the semaphore its writer sleeps on
local function new_queue()
    return { head = 1, tail = 0, bytes = 0, waiting = false, sema = semaphore.new(0) }
end
local function push(q, s)
    q.tail = q.tail + 1
    q[q.tail] = s
    q.bytes = q.bytes + #s
    if q.waiting then q.waiting = false q.sema:post(1) end
end

local function read_exact(sock, n)
    local buf
    while true do
        local data, err, partial = sock:receive(n)
        if data then
            if buf then buf[#buf + 1] = data return concat(buf) end
            return data
        end
        if err ~= "timeout" then return nil, err end
        if partial and #partial > 0 then
            buf = buf or {}
            buf[#buf + 1] = partial
            n = n - #partial
        end
        if ngx.worker.exiting() then return nil, "exiting" end
    end
end

local function read_frame(sock)
    local h, err = read_exact(sock, 4)
    if not h then return nil, err end
    local rest
    rest, err = read_exact(sock, get32(h))
    if not rest then return nil, err end
    return h, rest
end

-- drains q into sock until an error, exit, or `alive()` turns false
local function writer(sock, q, alive)
    while alive() and not ngx.worker.exiting() do
        if q.head > q.tail then
            q.waiting = true
            q.sema:wait(TIMEOUT_MS / 1000)
            q.waiting = false
        else
            local parts, bytes = {}, 0
            while q.head <= q.tail and #parts < MAX_BATCH do
                local s = q[q.head]
                q[q.head] = nil
                q.head = q.head + 1
                parts[#parts + 1] = s
                bytes = bytes + #s
            end
            q.bytes = q.bytes - bytes
            local ok, err = sock:send(parts)
            if not ok then
                ngx.log(ngx.ERR, "broker link send failed, ", #parts, " frames lost: ", err)
                return
            end
        end
    end
end

---------------------------------------------------------------- worker side
local outq = new_queue()

local function dispatch(rest)
    local from, nl = get16(rest, 3), get16(rest, 5)
    local name = sub(rest, 7, 6 + nl)
    local h = handlers[name]
    if h then
        local ok, err = pcall(h, sub(rest, 7 + nl), from)
        if not ok then ngx.log(ngx.ERR, "handler ", name, " failed: ", err) end
    end
end

local function session(sock)
    local alive = true
    local w = ngx.thread.spawn(writer, sock, outq, function() return alive end)
    while true do
        local h, rest = read_frame(sock)
        if not h then
            if rest ~= "exiting" and not ngx.worker.exiting() then ngx.log(ngx.ERR, "broker connection lost: ", rest) end
            break
        end
        dispatch(rest)
    end
    alive = false
    pcall(ngx.thread.kill, w)
    sock:close()
end

local function client(premature)
    if premature then return end
    for _ = 1, 100000 do                       -- reconnect attempts, bounded
        if ngx.worker.exiting() then return end
        local sock = ngx.socket.tcp()
        sock:settimeouts(TIMEOUT_MS, 30000, TIMEOUT_MS)
        local ok = sock:connect(path)
        if ok then
            sock:send("GET /broker?id=" .. my_id .. " HTTP/1.1\r\nHost: broker\r\n\r\n")
            local ack = sock:receive(1)        -- "K" from the broker worker;
            if ack == "K" then                 -- other workers close at once
                session(sock)
            else
                sock:close()
            end
        end
        ngx.sleep(0.005)
    end
    ngx.log(ngx.ERR, "gave up connecting to the broker")
end

function M.init(socket_path)
    my_id, path = ngx.worker.id(), "unix:" .. socket_path
    local ok, err = ngx.timer.at(0, client)
    if not ok then ngx.log(ngx.ERR, "timer.at failed: ", err) end
end

function M.on(name, handler) handlers[name] = handler end

local function enqueue(target, name, data)
    if outq.bytes > MAX_QUEUE_BYTES then return nil, "queue full" end
    local rest = u16(target) .. u16(my_id) .. u16(#name) .. name
    push(outq, u32(#rest + #data) .. rest)
    push(outq, data)
    return true
end

function M.send(to, name, data) return enqueue(to, name, data) end
function M.broadcast(name, data) return enqueue(ALL, name, data) end

---------------------------------------------------------------- broker side
local links = {}                               -- worker id -> { q, gen }

local function link(id)
    local l = links[id]
    if not l then l = { q = new_queue(), gen = 0 } links[id] = l end
    return l
end

-- content handler of the unix-socket server
function M.serve()
    if ngx.worker.id() ~= BROKER_ID then return ngx.exit(444) end
    local id = tonumber(ngx.var.arg_id)
    if not id then return ngx.exit(400) end
    local sock, err = ngx.req.socket(true)
    if not sock then ngx.log(ngx.ERR, "raw socket: ", err) return ngx.exit(500) end
    sock:settimeouts(TIMEOUT_MS, 30000, TIMEOUT_MS)
    if not sock:send("K") then return ngx.exit(444) end
    local l = link(id)
    l.gen = l.gen + 1
    local gen = l.gen
    local w = ngx.thread.spawn(writer, sock, l.q, function() return l.gen == gen end)
    while true do
        local h, rest = read_frame(sock)
        if not h then break end
        local target = get16(rest, 1)
        if target == ALL then
            for i = 0, ngx.worker.count() - 1 do
                local q = link(i).q
                push(q, h) push(q, rest)
            end
        else
            local q = link(target).q
            push(q, h) push(q, rest)
        end
    end
    if l.gen == gen then l.gen = gen + 1 end   -- stops this writer
    pcall(ngx.thread.kill, w)
    return ngx.exit(444)
end

return M
