// ngx_ipc core: what the status page reads from a mapping (see status.h).

#include "ngx_ipc/status.h"

#include <signal.h>

#include <cerrno>

namespace ngx_ipc {

const char* state_name(WorkerState s) {
  switch (s) {
    case WorkerState::kNotStarted:
      return "not_started";
    case WorkerState::kRunning:
      return "running";
    case WorkerState::kExited:
      return "exited";
    case WorkerState::kDead:
      return "dead";
  }
  return "unknown";
}

bool status_process_alive(std::int32_t pid) {
  return ::kill(pid, 0) == 0 || errno != ESRCH;  // EPERM: alive, not ours
}

void read_stats(const SlotCounters& c, Stats* out) {
  const CoreStats& core = c.core;
  const LuaStats& lua = c.lua;
  out->sent = load_counter(&core.sent);
  out->received = load_counter(&core.received);
  out->sent_bytes = load_counter(&core.sent_bytes);
  out->received_bytes = load_counter(&core.received_bytes);
  out->dropped = load_counter(&core.dropped) + load_counter(&lua.dropped);
  // Unsigned: Lua's part may be below zero while the sum is not.
  out->refused = load_counter(&core.refused) +
                 load_counter(reinterpret_cast<const std::uint64_t*>(&lua.refused));
  out->handler_errors = load_counter(&lua.handler_errors);
  out->calls = load_counter(&lua.calls);
  out->call_timeouts = load_counter(&lua.call_timeouts);
  out->queued_bytes = load_counter(&core.queued_bytes);
  out->resets = load_counter(&core.resets);
  out->unhandled = load_counter(&lua.unhandled);
}

void read_worker(const ShmHeader* h, std::uint32_t slot, WorkerStatus* out, StatusAliveFn alive) {
  const Slot* s = slot_at(const_cast<ShmHeader*>(h), slot);
  // Acquire: pairs with start()'s release store of the identity, so the
  // counters read below are at least the new process's zeroes.
  std::uint64_t id = s->identity.load(std::memory_order_acquire);
  out->pid = identity_pid(id);
  out->incarnation = identity_incarnation(id);
  out->slot = slot;
  if (out->incarnation == 0) {
    out->state = static_cast<std::int32_t>(WorkerState::kNotStarted);
  } else if (out->pid == 0) {
    out->state = static_cast<std::int32_t>(WorkerState::kExited);
  } else {
    out->state =
        static_cast<std::int32_t>(alive(out->pid) ? WorkerState::kRunning : WorkerState::kDead);
  }
  read_stats(s->counters, &out->stats);
  out->busy_poll_ns = load_counter(&s->counters.busy_poll_ns);
  out->queued_msgs = load_counter(&s->counters.queued_msgs);
}

bool read_inbox(const ShmHeader* h, std::uint32_t receiver, InboxStatus* out) {
  const InboxCtl* c = inbox_ctl(const_cast<ShmHeader*>(h), receiver);
  // Tail before head: the reader never passes the head, so used >= 0 even
  // if both move between the loads. Relaxed: nothing is read through them.
  std::uint64_t tail_msgs = c->tail_msgs.load(std::memory_order_relaxed);
  std::uint64_t tail = c->tail.load(std::memory_order_relaxed);
  std::uint64_t head = c->head.load(std::memory_order_acquire);
  std::uint64_t head_msgs = c->head_msgs.load(std::memory_order_relaxed);
  out->capacity = h->ring_size;
  out->used = head >= tail ? head - tail : 0;
  if (out->used > h->ring_size) out->used = h->ring_size;
  out->waiting = head_msgs >= tail_msgs ? head_msgs - tail_msgs : 0;
  out->bytes_total = head;
  return head != 0;
}

}  // namespace ngx_ipc
