// ngx_ipc core: an endpoint's send side.
//
// One InboxWriter per destination (its inbox ring, written under the
// inbox's lock: inbox_lock.h), plus a private backlog per destination for
// what the inbox cannot take yet: its ring is full, or another sender
// holds its lock (the endpoint bounds the backlog by queue_limit). A
// message goes to the inbox directly while the backlog is empty, so a
// destination's messages stay in order whatever their sizes; flush() moves
// the backlog on when the destination freed space or the lock came free
// (both wake this process: after_release(), after_write()), or when the
// glue's timer asks (a holder that died never wakes anyone).
//
// A broadcast's rest is kept once, shared by the backlogs of every
// destination that needs it (SharedPayload), not copied per destination.
//
// Not thread-safe: one per endpoint, used by its process's one thread.

#ifndef NGX_IPC_OUTBOX_H
#define NGX_IPC_OUTBOX_H

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "ngx_ipc/inbox_lock.h"
#include "ngx_ipc/layout.h"
#include "ngx_ipc/ring.h"
#include "ngx_ipc/wakeup.h"

namespace ngx_ipc {

enum class Status : int;

// A broadcast's payload for the backlogs that need it: buf holds room for
// the whole payload, made before anything is sent (so that nothing can
// fail halfway through a broadcast); the first destination that keeps a
// rest copies the payload in, and every backlog shares it.
struct SharedPayload {
  std::shared_ptr<unsigned char[]> buf;
  bool filled = false;
};

class Outbox {
 public:
  Outbox(ShmHeader* shm, std::uint32_t self, CoreStats* stats, std::uint64_t* queued_msgs,
         Wakeup* wakeup, const CoreLog* log);

  // Binds the writers to the inboxes, for this process's incarnation
  // (Endpoint::start()): its writer id in the inbox locks.
  void attach(std::uint32_t incarnation);
  void set_alive_check(WriterAliveFn fn, void* ctx) {
    alive_ = fn;
    alive_ctx_ = ctx;
  }

  std::uint64_t backlog_bytes(std::uint32_t k) const { return out_[k].backlog_bytes; }
  bool backlog_empty(std::uint32_t k) const { return out_[k].backlog.empty(); }
  // No backlog for any destination.
  bool idle() const { return backlogs_ == 0; }

  // Sends one message to slot k: into its inbox as far as it takes it
  // (when the backlog is empty and the lock is free), the rest into the
  // backlog, and wakes slot k if it sleeps. `shared`: the whole payload,
  // kept already (a broadcast's), which the backlog then shares. kOk, or
  // kNoMemory if the backlog could not take the rest: then slot k may have
  // the message's first fragments, which it never delivers (a sender's
  // next message drops them).
  Status send(std::uint32_t k, const MessageMeta& meta, const unsigned char* name,
              const unsigned char* data, std::size_t data_len, SharedPayload* shared = nullptr);
  // Moves slot k's backlog on as far as its inbox takes it; true if it is
  // now empty. `probe`: ask whether a holder of the lock seen before is
  // still alive (a syscall; see InboxLock::try_lock).
  bool flush(std::uint32_t k, bool probe = false);
  // Moves on the backlogs of the inboxes that woke this process (its ready
  // bits); an inbox whose turn came with nothing for it is handed on.
  // False if one of them still waits.
  bool flush_ready();
  // The glue's timer, for slot k's backlog: looks at the inbox first and
  // flushes only if that may move something (the lock free, and not still
  // marked waiting for room in a full ring), or probes a holder that held
  // the lock for a whole sweep (flush(k, true)). False if it still waits.
  bool retry(std::uint32_t k);
  // Drops slot k's backlog (its reader is gone), counting its messages.
  void drop_backlog(std::uint32_t k);

 private:
  struct Pending {
    MessageMeta meta;
    std::uint64_t start;                   // payload offset of the first byte kept
    std::uint64_t len;                     // bytes kept, from start
    std::uint64_t done;                    // of them, already written
    std::shared_ptr<unsigned char[]> buf;  // its own copy, or a broadcast's
    std::uint64_t base;                    // where `start` is in buf
  };
  struct OutInbox {
    InboxWriter writer;
    std::deque<Pending> backlog;
    std::uint64_t backlog_bytes = 0;
    std::uint64_t holder = 0;       // who held the lock at our last failed try
    std::uint64_t tick_holder = 0;  // who held it at the last retry()
    bool lock_wait = false;         // our bit may be set in its lock waiters
    bool room_wait = false;         // our bit may be set in its room waiters
  };

  // `spin`: a unicast's first try, which waits a little (kLockSpins
  // loads, bounded, never blocking) for a holder that is copying.
  bool lock(std::uint32_t k, bool probe, bool spin = false);
  void unlock(std::uint32_t k, bool published);
  std::uint64_t write_backlog(std::uint32_t k);
  void wait_for_room(std::uint32_t k);
  void settle(std::uint32_t k);
  void queued(std::uint32_t k, std::int64_t bytes, std::int64_t msgs);

  ShmHeader* shm_;
  std::uint32_t self_;
  std::uint64_t me_ = 0;  // writer id
  CoreStats* stats_;
  std::uint64_t* queued_msgs_;
  Wakeup* wakeup_;
  const CoreLog* log_;
  WriterAliveFn alive_ = &writer_alive;
  void* alive_ctx_ = nullptr;
  std::vector<OutInbox> out_;
  std::uint32_t backlogs_ = 0;  // destinations whose backlog is not empty
};

}  // namespace ngx_ipc

#endif  // NGX_IPC_OUTBOX_H
