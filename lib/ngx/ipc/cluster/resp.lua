-- ngx.ipc.cluster.resp: the cluster link's Redis client, RESP2 over a
-- cosocket, with what a reply may cost bounded.
--
-- Replies carry what other writers to the stream put there, so nothing in
-- one is trusted to be small: a bulk string over its limit is read and
-- dropped in slices, never held (it reads as resp.TOO_LARGE), an array keeps
-- at most its limit of elements (the rest are read and dropped), and nesting
-- is bounded. XREAD replies are read one stream entry at a time
-- (xread.lua), so the link holds at most one entry however many the reply
-- carries. The protocol's own lines (types, lengths, simple strings,
-- errors) come from the Redis server, which the link trusts (README,
-- "Security"); what a stream writer controls only ever arrives in bulks.
--
-- conn:command(...) returns the reply; false, message for an error reply
-- (the connection stays usable); nil, err when the connection failed (it
-- is closed then).

local ngx_now = ngx.now
local ngx_sleep = ngx.sleep
local update_time = ngx.update_time
local setmetatable = setmetatable
local str_byte = string.byte
local str_sub = string.sub
local tonumber = tonumber
local tostring = tostring
local type = type


local SLICE = 65536                   -- bytes per read of a dropped bulk
local YIELD_BYTES = 8 * 1024 * 1024   -- dropped bytes between two yields
local MAX_DEPTH = 8                   -- nested arrays in a reply, at most
local DEFAULTS = { bulk = 1024 * 1024, elements = 1024 }

local TOO_LARGE = setmetatable({}, {
    __tostring = function() return "(bulk string over its limit)" end
})

local _M = { TOO_LARGE = TOO_LARGE }
local mt = { __index = _M }


-- The request: RESP2's array of bulk strings. An argument may be a table of
-- strings sent as one bulk (no copy: the cosocket writes the pieces).
function _M.request(args, n)
    local out, k = { "*", n, "\r\n" }, 3
    for i = 1, n do
        local a = args[i]
        if type(a) == "table" then
            local len = 0
            for j = 1, #a do
                len = len + #a[j]
            end
            out[k + 1], out[k + 2], out[k + 3] = "$", len, "\r\n"
            out[k + 4], out[k + 5] = a, "\r\n"
            k = k + 5
        else
            a = tostring(a)
            out[k + 1], out[k + 2], out[k + 3] = "$", #a, "\r\n"
            out[k + 4], out[k + 5] = a, "\r\n"
            k = k + 5
        end
    end
    return out
end


-- A line without its CR LF, or nil, err (the connection is closed then).
function _M.line(self)
    local line, err = self.sock:receive("*l")
    if not line then
        self:close()
        return nil, err
    end
    return line
end


-- Reads and drops n bytes (a bulk over its limit, with its CR LF),
-- yielding now and then so that no reply holds up the event loop.
function _M.drop(self, n)
    local since = 0
    while n > 0 do
        local want = n < SLICE and n or SLICE
        local data, err = self.sock:receive(want)
        if not data then
            self:close()
            return nil, err
        end
        n = n - want
        since = since + want
        if since >= YIELD_BYTES then
            since = 0
            ngx_sleep(0.001)
        end
    end
    return true
end


-- The payload of a bulk whose header said `len`: the string if it is at
-- most `limit` bytes, TOO_LARGE if it is over (read and dropped), or nil,
-- err.
function _M.bulk(self, len, limit)
    if len > limit then
        local ok, err = self:drop(len + 2)
        if not ok then
            return nil, err
        end
        return TOO_LARGE
    end

    local data, err = self.sock:receive(len + 2)
    if not data then
        self:close()
        return nil, err
    end
    return str_sub(data, 1, len)
end


-- One reply, within limits { bulk = bytes, elements = n }. An error reply
-- inside an array reads as false.
function _M.read(self, limits, depth)
    limits = limits or DEFAULTS
    depth = depth or 0

    local line, err = self:line()
    if not line then
        return nil, err
    end

    local kind = str_byte(line)
    local rest = str_sub(line, 2)

    if kind == 43 then                 -- "+"
        return rest
    end

    if kind == 45 then                 -- "-"
        return false, rest
    end

    local n = tonumber(rest)
    if kind == 58 then                 -- ":"
        if not n then
            self:close()
            return nil, "bad integer reply"
        end
        return n
    end

    if not n or n % 1 ~= 0 then
        self:close()
        return nil, "bad reply from Redis: " .. str_sub(line, 1, 32)
    end

    if kind == 36 then                 -- "$"
        if n < 0 then
            return nil, nil, true      -- a null bulk
        end
        return self:bulk(n, limits.bulk)
    end

    if kind ~= 42 then                 -- "*"
        self:close()
        return nil, "bad reply from Redis: " .. str_sub(line, 1, 32)
    end

    if n < 0 then
        return nil, nil, true          -- a null array
    end

    if depth >= MAX_DEPTH then
        self:close()
        return nil, "reply nested too deep"
    end

    local t = {}
    for i = 1, n do
        local v, e, null = self:read(limits, depth + 1)
        if v == nil and not null then
            return nil, e
        end
        if i <= limits.elements then
            t[i] = v
            if v == nil then
                t[i] = false
            end
        end
    end
    if n > limits.elements then
        t.truncated = n
    end
    return t
end


-- Sends one command and reads its reply (see the top of the file).
function _M.command(self, ...)
    return self:command_limited(DEFAULTS, ...)
end


function _M.command_limited(self, limits, ...)
    local args = { ... }
    local ok, err = self.sock:send(_M.request(args, #args))
    if not ok then
        self:close()
        return nil, err
    end

    local res, rerr, null = self:read(limits)
    if res == nil and null then
        return self.NULL
    end
    if res == false or res == nil then
        return res, rerr
    end
    return res
end


-- The number of a "*N" or "$N" line of the expected kind.
function _M.header(self, kind)
    local line, err = self:line()
    if not line then
        return nil, err
    end

    local n = tonumber(str_sub(line, 2))
    if str_sub(line, 1, 1) ~= kind or not n or n % 1 ~= 0 then
        self:close()
        if str_sub(line, 1, 1) == "-" then
            return nil, str_sub(line, 2)
        end
        return nil, "bad reply from Redis: " .. str_sub(line, 1, 32)
    end
    return n
end


-- The Redis server's clock (TIME) in milliseconds, and ours when it came;
-- or nil, err.
function _M.time_ms(self)
    local res, err = self:command("TIME")
    if type(res) ~= "table" or not tonumber(res[1]) or not tonumber(res[2])
    then
        return nil, "TIME failed: " .. tostring(err)
    end

    update_time()
    return tonumber(res[1]) * 1000 + tonumber(res[2]) / 1000,
           ngx_now() * 1000
end


function _M.open(self)
    return self.sock ~= nil
end


function _M.close(self)
    if self.sock then
        self.sock:close()
        self.sock = nil
    end
end


-- A connection over sock (connected, and through TLS if the link uses
-- it: dial.lua).
function _M.wrap(sock)
    return setmetatable({ sock = sock }, mt)
end


-- Logs in: authenticated (user and password, or password, if not ""), on
-- database db (if not 0), named `name` for CLIENT LIST (if given). Returns
-- self, or nil, err (closed then).
function _M.login(self, user, password, db, name)
    local res, err
    if password ~= "" then
        if user ~= "" then
            res, err = self:command("AUTH", user, password)
        else
            res, err = self:command("AUTH", password)
        end
        if not res then
            self:close()
            return nil, "authentication failed: " .. tostring(err)
        end
    end

    if db ~= 0 then
        res, err = self:command("SELECT", db)
        if not res then
            self:close()
            return nil, "SELECT " .. db .. " failed: " .. tostring(err)
        end
    end

    if name then
        res, err = self:command("CLIENT", "SETNAME", name)
        if not res then
            self:close()
            return nil, "CLIENT SETNAME failed: " .. tostring(err)
        end
    end

    return self
end


-- what a null bulk or array reads as, from command()
_M.NULL = setmetatable({}, {
    __tostring = function() return "(nil)" end
})


return _M
