-- ngx.ipc.ffi: the C ABI of ngx_ipc_module, declared from its one source.
--
-- ngx_ipc_module.so embeds src/ngx_ipc_ffi.h and its loader calls this
-- chunk with that text: what lies between the header's two markers goes to
-- ffi.cdef, less its preprocessor lines. The structs, constants (enum
-- members, read as ffi.C.NAME) and prototypes that the files of
-- lib/ngx/ipc/ use are therefore the very ones the module was compiled
-- with; t/test_ffi.py compares the offsets too.

local ffi = require "ffi"

local header = ...

if type(header) ~= "string" then
    error("ngx.ipc.ffi is loaded by ngx_ipc_module (load_module "
          .. "ngx_ipc_module.so), not from a file", 2)
end

local decls = header:match("NGX_IPC_FFI_CDEF_BEGIN[^\n]*\n(.*)\n[^\n]*"
                           .. "NGX_IPC_FFI_CDEF_END")
if decls == nil then
    error("ngx.ipc.ffi: no declarations in the embedded ngx_ipc_ffi.h", 2)
end

ffi.cdef((decls:gsub("\n[ \t]*#[^\n]*", "\n")))

return { header = header }
