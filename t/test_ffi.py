"""The C ABI is declared once (src/ngx_ipc_ffi.h): what LuaJIT's ffi.cdef
made of the embedded header has the layout the module was compiled with."""


def test_ffi_layout_matches_the_module(nginx):
    n = nginx(workers=1)
    [rows] = n.lua("""
        local ffi = require "ffi"
        require "ngx.ipc.ffi"
        local out = ffi.new("const ngx_ipc_layout_t *[1]")
        local count = ffi.C.ngx_ipc_ffi_layout(out)
        local rows = {}
        for i = 0, count - 1 do
            local e = out[0][i]
            local t, f = ffi.string(e.type), ffi.string(e.field)
            local lua = f == "" and ffi.sizeof(t) or ffi.offsetof(t, f)
            rows[#rows + 1] = { t, f, tonumber(e.value), lua }
        end
        return rows
    """)
    assert len(rows) >= 30
    assert [r for r in rows if r[2] != r[3]] == []
    types = {r[0] for r in rows}
    assert {"ngx_ipc_msg_t", "ngx_ipc_stats_t", "ngx_ipc_worker_status_t",
            "ngx_ipc_exit_t", "ngx_ipc_cluster_info_t",
            "ngx_ipc_cluster_entry_t", "ngx_ipc_cluster_link_t"} <= types


def test_ffi_constants_come_from_the_header(nginx):
    n = nginx(workers=1)
    assert n.lua("""
        local ffi = require "ffi"
        require "ngx.ipc.ffi"
        local C = ffi.C
        return C.ngx_ipc_ffi_version() == C.NGX_IPC_FFI_VERSION,
               C.NGX_IPC_FFI_BATCH, C.NGX_IPC_FFI_MAX_SLOTS
    """) == [True, 64, 1024]
