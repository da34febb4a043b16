-- ngx.ipc.cluster.entry: a stream entry, as the writer makes it and as
-- every reader checks it.
--
-- An entry carries one node's batch of cluster broadcasts:
--   n  the node's name (1 to 255 bytes, no control character)
--   e  its epoch, the life of its shared memory (decimal, up to 20 digits)
--   c  how many messages (1 to 1024)
--   f  the first and l the last of their sequence numbers (1 to 2^53 - 1)
--   m  the messages, each "<seq>\n<pid>\n<name length>\n<data length>\n"
--      then the name and the data
--   h  with secret= only: HMAC-SHA256 of header() and m, in hex
-- Anyone who can write to the stream can write anything there, so decode()
-- checks every field before anything is used: lengths within the entry,
-- counts that agree with what is carried, sequence numbers that rise,
-- names within limits and none of the names ngx_ipc keeps for itself
-- ("ipc:cluster..."). It does work in proportion to the entry's size,
-- which the reader bounds (xread.lua), and allocates only the
-- fields' table.

local ffi = require "ffi"
local base = require "resty.core.base"

local C = ffi.C
local ffi_new = ffi.new
local ffi_string = ffi.string
local concat = table.concat
local str_byte = string.byte
local str_find = string.find
local str_gsub = string.gsub
local str_match = string.match
local str_sub = string.sub
local tonumber = tonumber
local type = type
local FFI_OK = base.FFI_OK


local MAX_COUNT = 1024             -- messages per entry (the writer's batch)
local MAX_SEQ = 2 ^ 53 - 1         -- sequence numbers stay exact in Lua
local MAX_NAME = 65535
local MAX_NODE = 255
local RESERVED = "ipc:cluster"     -- names of ngx_ipc's own messages
local RESERVED_BYTE = 105          -- its first byte, "i"
local MAC_HEX = 64
local CONTROL = "[%z\1-\31\127]"

local _M = { MAX_COUNT = MAX_COUNT, RESERVED = RESERVED }

local mac_buf = ffi_new("char[?]", MAC_HEX)


-- A decimal field of at most `digits` digits, as a number, or nil.
local function decimal(s, digits)
    if type(s) ~= "string" or #s == 0 or #s > digits
       or str_find(s, "%D")
    then
        return nil
    end
    return tonumber(s)
end


-- The decimal at byte `at` of s, up to a "\n" after at most `digits`
-- digits: its value and the byte after the "\n"; nil if there is no such
-- number. (A byte loop: LuaJIT compiles it, where a pattern with captures
-- would run interpreted, four times slower per message.)
local function number_at(s, at, digits)
    local v, i, stop = 0, at, at + digits
    while true do
        local b = str_byte(s, i)
        if b == 10 and i > at then
            return v, i + 1
        end

        if b == nil or b < 48 or b > 57 or i >= stop then
            return nil
        end

        v = v * 10 + (b - 48)
        i = i + 1
    end
end


-- Walks the messages of m from byte `at` (1 if nil): fn(seq, name_at,
-- name_len, data_at, data_len) for each, in order (fn may be nil, and may
-- yield). Returns count, first seq, last seq; or nil, why at the first
-- fault (messages before it were walked).
function _M.scan(m, max_message, fn, at)
    local size = #m
    at = at or 1
    local count, first, prev = 0, nil, nil

    while at <= size do
        local seq, pid, nlen, dlen, name_at
        seq, name_at = number_at(m, at, 16)
        if seq then
            pid, name_at = number_at(m, name_at, 10)
        end
        if pid then
            nlen, name_at = number_at(m, name_at, 5)
        end
        if nlen then
            dlen, name_at = number_at(m, name_at, 10)
        end
        if not dlen then
            return nil, "message " .. count + 1 .. " has no valid header"
        end

        if seq < 1 or seq > MAX_SEQ or pid > 0x7fffffff then
            return nil, "message " .. count + 1 .. " has a number out of range"
        end

        if prev and seq <= prev then
            return nil, "sequence numbers do not rise"
        end

        if nlen < 1 or nlen > MAX_NAME then
            return nil, "a name length of " .. nlen
        end

        if dlen > max_message then
            return nil, "a message of " .. dlen .. " bytes, over max_message"
        end

        local data_at = name_at + nlen
        local next_at = data_at + dlen
        if next_at - 1 > size then
            return nil, "lengths run past the end of the entry"
        end

        if nlen >= #RESERVED and str_byte(m, name_at) == RESERVED_BYTE
           and str_sub(m, name_at, name_at + #RESERVED - 1) == RESERVED
        then
            return nil, "a message name kept for ngx_ipc (\"" .. RESERVED
                        .. "...\")"
        end

        count = count + 1
        if count > MAX_COUNT then
            return nil, "more than " .. MAX_COUNT .. " messages"
        end

        first = first or seq
        prev = seq
        at = next_at

        if fn then
            fn(seq, name_at, nlen, data_at, dlen)
        end
    end

    if count == 0 then
        return nil, "no message"
    end

    return count, first, prev
end


-- What the MAC covers besides the messages: a version, the stream (so an
-- entry cannot be moved to another stream) and the header fields.
function _M.header(stream, node, epoch, count, first, last)
    return "ngx_ipc 1\n" .. stream .. "\n" .. node .. "\n" .. epoch .. "\n"
           .. count .. "\n" .. first .. "\n" .. last .. "\n"
end


-- The fields of an entry read from the stream (name, value, ...; nf of
-- them), checked. limits: max_message, stream, secret (this node checks
-- MACs). Returns the entry { node, epoch, count, first, last, m }; or nil,
-- why, kind ("malformed" or "unauthenticated").
function _M.decode(fields, nf, limits)
    if nf % 2 ~= 0 or nf > 14 then
        return nil, nf .. " fields", "malformed"
    end

    local f = {}
    for i = 1, nf, 2 do
        local k = fields[i]
        if k ~= "n" and k ~= "e" and k ~= "c" and k ~= "f" and k ~= "l"
           and k ~= "m" and k ~= "h"
        then
            return nil, "an unknown field", "malformed"
        end

        if f[k] then
            return nil, "field \"" .. k .. "\" twice", "malformed"
        end

        f[k] = fields[i + 1]
    end

    local node, epoch, m = f.n, f.e, f.m
    if not node or not epoch or not m or not f.c or not f.f or not f.l then
        return nil, "a field is missing (not an entry of ngx_ipc?)",
               "malformed"
    end

    if #node < 1 or #node > MAX_NODE or str_find(node, CONTROL) then
        return nil, "a node name that is empty, too long or holds a "
                    .. "control character", "malformed"
    end

    if not decimal(epoch, 20) then
        return nil, "a bad epoch", "malformed"
    end

    local count, first, last = decimal(f.c, 4), decimal(f.f, 16),
                               decimal(f.l, 16)
    if not count or not first or not last or count < 1
       or count > MAX_COUNT or first < 1 or last > MAX_SEQ or first > last
    then
        return nil, "a bad count or sequence number", "malformed"
    end

    local n, first_seen, last_seen = _M.scan(m, limits.max_message)
    if not n then
        return nil, first_seen, "malformed"
    end

    if n ~= count or first_seen ~= first or last_seen ~= last then
        return nil, "its count or sequence numbers disagree with its "
                    .. "messages", "malformed"
    end

    -- a batch is consecutive records of the outbox: its numbers skip only
    -- where a producer died holding the outbox's lock
    if last - first + 1 > count + MAX_COUNT then
        return nil, "sequence numbers spread too far", "malformed"
    end

    if limits.secret then
        local h = f.h
        local head = _M.header(limits.stream, node, epoch, f.c, f.f, f.l)
        if not h or C.ngx_ipc_ffi_cluster_mac_ok(head, #head, m, #m, h, #h)
                    ~= 1
        then
            return nil, "no valid MAC (is secret= the same on every node?)",
                   "unauthenticated"
        end
    end

    return { node = node, epoch = epoch, count = count, first = first,
             last = last, m = m }
end


-- The writer's side: the messages of a batch taken from the outbox
-- (ngx_ipc_cluster_entry_t[n]) as m, and the fields of its XADD. secret:
-- whether this node has one (the entry then carries its MAC).
function _M.encode(stream, node, epoch, batch, n, secret)
    local parts, np = {}, 0
    for i = 0, n - 1 do
        local e = batch[i]
        parts[np + 1] = tonumber(e.seq) .. "\n" .. e.pid .. "\n"
                        .. e.name_len .. "\n" .. tonumber(e.data_len) .. "\n"
        parts[np + 2] = ffi_string(e.name, e.name_len)
        parts[np + 3] = ffi_string(e.data, e.data_len)
        np = np + 3
    end

    local m = concat(parts, "", 1, np)
    local first, last = tonumber(batch[0].seq), tonumber(batch[n - 1].seq)
    local fields = { "n", node, "e", epoch, "c", n, "f", first, "l", last,
                     "m", m }

    if secret then
        local head = _M.header(stream, node, epoch, n, first, last)
        if C.ngx_ipc_ffi_cluster_mac(head, #head, m, #m, mac_buf) ~= FFI_OK then
            return nil, "cannot make the MAC"
        end
        fields[13], fields[14] = "h", ffi_string(mac_buf, MAC_HEX)
    end

    return fields
end


-- Stream ids "ms-seq", each part up to 20 digits: the parts without
-- leading zeros, or nil if id is not one.
local function id_parts(id)
    if type(id) ~= "string" or #id > 41 then
        return nil
    end

    local ms, seq = str_match(id, "^(%d+)%-(%d+)$")
    if not ms or #ms > 20 or #seq > 20 then
        return nil
    end

    return (str_gsub(ms, "^0+(%d)", "%1")), (str_gsub(seq, "^0+(%d)", "%1"))
end


function _M.valid_id(id)
    return id_parts(id) ~= nil
end


-- Compares two decimal strings without leading zeros, as numbers.
local function dec_cmp(a, b)
    if #a ~= #b then
        return #a < #b and -1 or 1
    end
    if a == b then
        return 0
    end
    return a < b and -1 or 1
end


-- -1, 0 or 1 as id a is before, the same as or after id b (as Redis orders
-- them, exactly, even past 2^53); nil if one is not an id.
function _M.id_cmp(a, b)
    local am, as = id_parts(a)
    local bm, bs = id_parts(b)
    if not am or not bm then
        return nil
    end

    local c = dec_cmp(am, bm)
    if c ~= 0 then
        return c
    end
    return dec_cmp(as, bs)
end


-- The milliseconds of an id, as a number (approximate past 2^53), or nil.
function _M.id_ms(id)
    local ms = id_parts(id)
    return ms and tonumber(ms)
end


return _M
