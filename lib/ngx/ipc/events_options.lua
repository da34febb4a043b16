-- ngx.ipc.events_options: the options of resty.events' new(opts), checked
-- as lua-resty-events checks them, with the same defaults and error texts.
--
-- Owns: the defaults and the checks. One difference: `listening` is not
-- needed (nothing listens: events go through ngx.ipc); when given it must
-- still be a "unix:" string, so a configuration valid there is valid here.
-- Returns true, or nil and the error (new() asserts it).

local type = type
local assert = assert
local str_sub = string.sub
local worker_count = ngx.worker.count


local UNIX_PREFIX = "unix:"
local DEFAULT_UNIQUE_TIMEOUT = 5
local DEFAULT_MAX_QUEUE_LEN = 1024 * 10
local DEFAULT_MAX_PAYLOAD_LEN = 1024 * 64       -- 64KB
local LIMIT_MAX_PAYLOAD_LEN = 1024 * 1024 * 16  -- 16MB


local function check_options(opts)
    assert(type(opts) == "table", "Expected a table, got " .. type(opts))

    opts.broker_id = opts.broker_id or 0

    if type(opts.broker_id) ~= "number" then
        return nil, '"broker_id" option must be a number'
    end

    if opts.broker_id < 0 or opts.broker_id >= worker_count() then
        return nil, '"broker_id" option is invalid'
    end

    -- not needed over ngx.ipc; checked as lua-resty-events checks it
    -- when given, so that a configuration valid there is valid here
    if opts.listening ~= nil then
        if type(opts.listening) ~= "string" then
            return nil, '"listening" option must be a string'
        end

        if str_sub(opts.listening, 1, #UNIX_PREFIX) ~= UNIX_PREFIX then
            return nil, '"listening" option must start with ' .. UNIX_PREFIX
        end
    end

    opts.unique_timeout = opts.unique_timeout or DEFAULT_UNIQUE_TIMEOUT

    if type(opts.unique_timeout) ~= "number" then
        return nil, 'optional "unique_timeout" option must be a number'
    end

    if opts.unique_timeout <= 0 then
        return nil, '"unique_timeout" must be greater than 0'
    end

    opts.max_queue_len = opts.max_queue_len or DEFAULT_MAX_QUEUE_LEN

    if type(opts.max_queue_len) ~= "number" then
        return nil, '"max_queue_len" option must be a number'
    end

    if opts.max_queue_len <= 0 then
        return nil, '"max_queue_len" option is invalid'
    end

    opts.max_payload_len = opts.max_payload_len or DEFAULT_MAX_PAYLOAD_LEN

    if type(opts.max_payload_len) ~= "number" then
        return nil, '"max_payload_len" option must be a number'
    end

    if opts.max_payload_len <= 0
       or opts.max_payload_len > LIMIT_MAX_PAYLOAD_LEN
    then
        return nil, '"max_payload_len" option is invalid'
    end

    if opts.enable_privileged_agent ~= nil
       and type(opts.enable_privileged_agent) ~= "boolean"
    then
        return nil, '"enable_privileged_agent" option must be a boolean'
    end

    opts.testing = opts.testing or false

    if type(opts.testing) ~= "boolean" then
        return nil, '"testing" option must be a boolean'
    end

    return true
end


return check_options
