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
  const std::uint64_t* from = reinterpret_cast<const std::uint64_t*>(&s->counters.stats);
  std::uint64_t* to = reinterpret_cast<std::uint64_t*>(&out->stats);
  for (std::size_t i = 0; i < sizeof(Stats) / sizeof(std::uint64_t); ++i) {
    to[i] = load_counter(from + i);
  }
  out->busy_poll_ns = load_counter(&s->counters.busy_poll_ns);
}

bool read_pair(const ShmHeader* h, std::uint32_t sender, std::uint32_t receiver, PairStatus* out) {
  const RingCtl* c = ring_ctl(const_cast<ShmHeader*>(h), sender, receiver);
  // Tail before head: the consumer never passes the head, so used >= 0 even
  // if both move between the loads. Relaxed: nothing is read through them.
  std::uint64_t tail_msgs = c->tail_msgs.load(std::memory_order_relaxed);
  std::uint64_t tail = c->tail.load(std::memory_order_relaxed);
  std::uint64_t head = c->head.load(std::memory_order_acquire);
  std::uint64_t head_msgs = c->head_msgs.load(std::memory_order_relaxed);
  out->ring_capacity = h->ring_size;
  out->ring_used = head >= tail ? head - tail : 0;
  if (out->ring_used > h->ring_size) out->ring_used = h->ring_size;
  out->backlog_bytes = c->backlog_bytes.load(std::memory_order_relaxed);
  out->waiting = (head_msgs >= tail_msgs ? head_msgs - tail_msgs : 0) +
                 c->backlog_msgs.load(std::memory_order_relaxed);
  out->bytes_total = head;
  return head != 0 || out->backlog_bytes != 0;
}

}  // namespace ngx_ipc
