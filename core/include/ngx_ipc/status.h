// ngx_ipc core: what the status page reads from a mapping.
//
// Any process of the configuration may call these, at any time: they only
// load what the slots' owners store (identity, counters, inbox indexes and
// the figures beside them), never write, and never wait. Each figure is one
// its owner stored; together they are not a snapshot of one instant (a
// counter may move between two loads), which monitoring does not need.

#ifndef NGX_IPC_STATUS_H
#define NGX_IPC_STATUS_H

#include <cstdint>

#include "ngx_ipc/layout.h"

namespace ngx_ipc {

enum class WorkerState : int {
  kNotStarted = 0,  // no process has taken the slot yet
  kRunning = 1,     // its process is alive
  kExited = 2,      // its last process exited cleanly (stop())
  kDead = 3,        // its process died (killed, crashed); nginx respawns it
};
// "not_started", "running", "exited", "dead"
const char* state_name(WorkerState s);

// One worker slot (mirrors ngx_ipc_worker_status_t in lib/ngx/ipc.lua).
struct WorkerStatus {
  std::int32_t pid;  // of its current or last process, 0 if none
  std::uint32_t incarnation;
  std::int32_t state;  // WorkerState
  std::uint32_t slot;
  Stats stats;
  std::uint64_t busy_poll_ns;
  std::uint64_t queued_msgs;  // messages (or their rests) in its backlog
};
static_assert(std::is_standard_layout_v<WorkerStatus>);
static_assert(sizeof(WorkerStatus) == 16 + sizeof(Stats) + 16);

// One worker's inbox.
struct InboxStatus {
  std::uint64_t used;         // bytes published and not yet released
  std::uint64_t capacity;     // ring_size
  std::uint64_t waiting;      // messages in it, not yet read
  std::uint64_t bytes_total;  // bytes ever published (0: no traffic ever)
};

// Whether a process is alive; kill(pid, 0) by default.
using StatusAliveFn = bool (*)(std::int32_t pid);
bool status_process_alive(std::int32_t pid);

// A slot's counters as one Stats: what C++ and Lua count, added up.
void read_stats(const SlotCounters& c, Stats* out);
void read_worker(const ShmHeader* h, std::uint32_t slot, WorkerStatus* out,
                 StatusAliveFn alive = &status_process_alive);
// True if the inbox has ever carried traffic.
bool read_inbox(const ShmHeader* h, std::uint32_t receiver, InboxStatus* out);

}  // namespace ngx_ipc

#endif  // NGX_IPC_STATUS_H
