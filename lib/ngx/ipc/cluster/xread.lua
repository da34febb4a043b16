-- ngx.ipc.cluster.xread: an XREAD reply, read one stream entry at a time,
-- so that the reader holds one entry however many the reply carries, and
-- no entry over its limit: a field that would take an entry past
-- `entry_bytes` is read and dropped in slices (resp.lua), and so is
-- everything past `max_fields`.

local resp = require "ngx.ipc.cluster.resp"


local _M = {}


-- XREAD COUNT count BLOCK ms STREAMS stream from, on conn (a resp.lua
-- connection), one entry at a time:
-- on_entry(id, fields, nf, problem) gets each entry's id and its fields
-- (an array of nf strings: name, value, ...), or a problem (the entry is
-- too large or has too many fields: fields is nil then); on_entry returns
-- false to stop (the connection is closed: the rest of the reply is never
-- read). Returns the number of entries (0 when BLOCK ran out), or nil, err.
-- An entry is at most `entry_bytes` long and has at most `max_fields`.
-- `before` (optional) is a request (resp.request) sent in the same write,
-- ahead of the XREAD, and on_before() reads its reply before the XREAD's
-- (true, or nil, err).
function _M.each(conn, count, block_ms, stream, from, entry_bytes,
                 max_fields, on_entry, before, on_before)
    local req = resp.request({ "XREAD", "COUNT", count, "BLOCK", block_ms,
                               "STREAMS", stream, from }, 8)
    local ok, err = conn.sock:send(before and { before, req } or req)
    if not ok then
        conn:close()
        return nil, err
    end

    if on_before then
        ok, err = on_before()
        if not ok then
            conn:close()
            return nil, err
        end
    end

    local n
    n, err = conn:header("*")
    if not n or n < 0 then
        return n and 0, err            -- a null array: BLOCK ran out
    end

    if n ~= 1 then
        conn:close()
        return nil, "XREAD answered " .. n .. " streams"
    end

    -- [ stream name, [ [id, [field, value, ...]], ... ] ]
    n, err = conn:header("*")
    if n ~= 2 then
        conn:close()
        return nil, err or "bad XREAD reply"
    end

    local name
    name, err = conn:read({ bulk = 1024, elements = 0 })
    if not name then
        return nil, err
    end

    local entries
    entries, err = conn:header("*")
    if not entries or entries < 0 then
        conn:close()
        return nil, err or "bad XREAD reply"
    end

    for i = 1, entries do
        n, err = conn:header("*")
        if n ~= 2 then
            conn:close()
            return nil, err or "bad XREAD entry"
        end

        local id
        id, err = conn:read({ bulk = 64, elements = 0 })
        if type(id) ~= "string" then
            conn:close()
            return nil, err or "bad XREAD entry id"
        end

        local nf
        nf, err = conn:header("*")
        if not nf then
            return nil, err
        end

        local fields, problem = {}, nil
        local budget = entry_bytes
        for k = 1, nf do
            local len
            len, err = conn:header("$")
            if not len then
                return nil, err
            end

            if len < 0 then
                problem = problem or "a null field"

            else
                -- past a problem, or past max_fields, everything is dropped
                local keep = (problem == nil and k <= max_fields) and budget
                             or 0
                local v
                v, err = conn:bulk(len, keep)
                if v == nil then
                    return nil, err
                end

                if problem == nil then
                    if k > max_fields then
                        problem = "more than " .. max_fields .. " fields"

                    elseif v == resp.TOO_LARGE then
                        problem = "larger than " .. entry_bytes .. " bytes"

                    else
                        fields[k] = v
                        budget = budget - #v
                    end
                end
            end
        end

        if problem then
            fields, nf = nil, 0
        end

        if on_entry(id, fields, nf, problem) == false then
            conn:close()
            return i
        end
    end

    return entries
end


return _M
