-- Lua side of the test harness (see t/harness.py).
--
-- Loaded by init_by_lua, so every worker inherits it.  Handlers record what
-- they receive with T.push(); the harness locations /_h/* read it back.

local ngx = ngx
local concat, tostring, type, pairs, select = table.concat, tostring, type, pairs, select
local str_char, str_rep, str_format = string.char, string.rep, string.format

local _M = {
    state = {},  -- per-worker scratch space for tests
}

local function results()
    return ngx.shared.results
end


-- Append value (a string, or anything tostring() accepts) to the list `key`.
function _M.push(key, value)
    local dict = results()
    local n, err = dict:incr(key .. "#n", 1, 0)
    if not n then
        error("results:incr(" .. key .. ") failed: " .. tostring(err), 2)
    end
    local ok, err = dict:set(key .. "#" .. n, tostring(value))
    if not ok then
        error("results:set(" .. key .. ") failed: " .. tostring(err), 2)
    end
    return n
end


-- The list `key` as a Lua array, up to the first item counted but not yet
-- stored (T.push() in another worker between its incr and its set).
function _M.list(key)
    local dict = results()
    local n = dict:get(key .. "#n") or 0
    local out = {}
    for i = 1, n do
        local v = dict:get(key .. "#" .. i)
        if v == nil then
            break
        end
        out[i] = v
    end
    return out
end


function _M.set(key, value)
    assert(results():set(key, value))
end


function _M.get(key)
    return results():get(key)
end


local blocks = {}

-- size bytes of 0..255 rotated by seed, repeated; pattern() in harness.py
-- builds the same bytes.
function _M.pattern(size, seed)
    if size == 0 then
        return ""
    end
    seed = (seed or 0) % 256
    local block = blocks[seed]
    if not block then
        local t = {}
        for i = 0, 255 do
            t[i + 1] = (i + seed) % 256
        end
        block = str_char(unpack(t))
        blocks[seed] = block
    end
    return str_rep(block, math.ceil(size / 256)):sub(1, size)
end


-- "<length>:<md5 hex>", for payloads too big to store whole.
function _M.digest(s)
    return #s .. ":" .. ngx.md5(s)
end


-- Minimal JSON encoder for eval results.  Control bytes, '"', '\' and bytes
-- >= 0x80 become \u00XX, so the client maps them back one to one (latin-1).
local function encode_string(s)
    return '"' .. (s:gsub('[%c"\\\128-\255]', function(c)
        return str_format("\\u%04x", c:byte())
    end)) .. '"'
end


local function array_length(t)
    local n = 0
    for _ in pairs(t) do
        n = n + 1
    end
    for i = 1, n do
        if t[i] == nil then
            return nil
        end
    end
    return n
end


local function encode(v)
    local t = type(v)
    if t == "nil" then
        return "null"
    elseif t == "boolean" then
        return v and "true" or "false"
    elseif t == "number" then
        if v ~= v or v == math.huge or v == -math.huge then
            return encode_string(tostring(v))
        end
        return str_format("%.17g", v)
    elseif t == "string" then
        return encode_string(v)
    elseif t == "table" then
        local parts = {}
        local n = array_length(v)
        if n and n > 0 then
            for i = 1, n do
                parts[i] = encode(v[i])
            end
            return "[" .. concat(parts, ",") .. "]"
        end
        for k, x in pairs(v) do
            parts[#parts + 1] = encode_string(tostring(k)) .. ":" .. encode(x)
        end
        return "{" .. concat(parts, ",") .. "}"
    end
    return encode_string("<" .. tostring(v) .. ">")
end

_M.encode = encode


local env

local function eval_env()
    if not env then
        local ok, ipc = pcall(require, "ngx.ipc")
        env = setmetatable({ ipc = ok and ipc or nil, T = _M },
                           { __index = _G })
    end
    return env
end


local function pack(...)
    return { n = select("#", ...), ... }
end


-- Content handler of /_h/eval: run the POSTed chunk, answer
-- {"ok":true,"values":[...]} or {"ok":false,"error":"..."}.
function _M.eval()
    ngx.req.read_body()
    local code = ngx.req.get_body_data() or ""
    local body
    local fn, err = loadstring(code, "=eval")
    if not fn then
        body = '{"ok":false,"error":' .. encode_string(err) .. '}'
    else
        setfenv(fn, eval_env())
        local res = pack(pcall(fn))
        if res[1] then
            local values = {}
            for i = 2, res.n do
                values[i - 1] = encode(res[i])
            end
            body = '{"ok":true,"values":[' .. concat(values, ",") .. ']}'
        else
            body = '{"ok":false,"error":' .. encode_string(tostring(res[2])) .. '}'
        end
    end
    ngx.header.content_type = "application/json"
    ngx.print(body)
end


-- Content handler of /_h/list?key=K: the list as "<length>\n<bytes>" items.
function _M.serve_list()
    local items = _M.list(ngx.var.arg_key and ngx.unescape_uri(ngx.var.arg_key) or "")
    local out = {}
    for i, v in ipairs(items) do
        out[#out + 1] = #v .. "\n"
        out[#out + 1] = v
    end
    ngx.print(out)
end


-- Content handler of /_h/workers: "id pid" per worker that has started.
function _M.serve_workers()
    local dict = ngx.shared.harness
    for id = 0, ngx.worker.count() - 1 do
        local pid = dict:get("worker:" .. id)
        if pid then
            ngx.say(id, " ", pid)
        end
    end
end


-- Called first in init_worker_by_lua: announce this worker.
function _M.worker_started()
    ngx.shared.harness:set("worker:" .. ngx.worker.id(), ngx.worker.pid())
end


return _M
