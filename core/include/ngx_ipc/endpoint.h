// ngx_ipc core: the per-process endpoint.
//
// One Endpoint per worker process, bound to its slot in a mapping made by
// init_shm(). It composes three parts:
//   Outbox (outbox.h)  sends to other slots: into each one's inbox, under
//                      its lock, plus a private backlog per destination,
//                      which the endpoint bounds by queue_limit;
//   Inbox (inbox.h)    drains this slot's inbox in batches: one Consumer,
//                      with a Reassembler per sender for fragmented
//                      messages;
//   Wakeup (wakeup.h)  wakes other processes through their wake-up fds
//                      (eventfd, or any fd that takes an 8-byte write) only
//                      when they may be asleep: all its fence pairs.
// The endpoint itself owns the slot's identity (start/stop), addressing
// (which slot has a PID, which slots a broadcast goes to) and the limits.
//
// Not thread-safe: one endpoint is used by one thread of one process.

#ifndef NGX_IPC_ENDPOINT_H
#define NGX_IPC_ENDPOINT_H

#include <cstdint>
#include <memory>
#include <vector>

#include "ngx_ipc/inbox.h"
#include "ngx_ipc/layout.h"
#include "ngx_ipc/outbox.h"
#include "ngx_ipc/ring.h"
#include "ngx_ipc/wakeup.h"

namespace ngx_ipc {

// A received message (mirrors ngx_ipc_msg_t). name and data stay valid until
// the next receive() or release().
struct Delivery {
  const unsigned char* name;
  const unsigned char* data;
  std::uint64_t data_len;
  std::uint32_t name_len;
  std::int32_t sender_pid;
  std::uint32_t flags;  // RecordFlags: kBroadcast, kRequest, kReply, status
  std::uint32_t call_id;
};
static_assert(std::is_standard_layout_v<Delivery>);

enum class Status : int {
  kOk = 0,
  kNoSuchWorker,
  kNameTooLong,
  kTooLarge,
  kQueueFull,
  kNoMemory,
  kEmptyName,  // the Lua API raises before: this guards the C ABI
};
// The short lower-case message the Lua API returns for a status.
const char* status_message(Status s);

class Endpoint {
 public:
  // Called for events an operator should see (a corrupt ring, a failed
  // write to a wake-up fd, memory exhausted). The glue rate-limits it.
  using LogFn = CoreLog::Fn;

  // shm: a mapping initialised by init_shm(); self: this process's slot;
  // wake_fds: one fd per slot (nslots entries), written to wake that slot,
  // or nullptr with a waker (set_waker). stats: where this endpoint counts,
  // by default its slot's CoreStats (the reload bridge's endpoint counts in
  // the process's slot of its own configuration), and queued_msgs where it
  // counts the messages of its backlog (by default its slot's).
  Endpoint(ShmHeader* shm, std::uint32_t self, const int* wake_fds, CoreStats* stats = nullptr,
           std::uint64_t* queued_msgs = nullptr);
  ~Endpoint();
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;

  void set_logger(LogFn fn, void* ctx) {
    log_.fn = fn;
    log_.ctx = ctx;
  }

  // Whether a process is alive; by default kill(pid, 0). Asked only when a
  // destination's backlog is full (tests give slots made-up PIDs).
  using AliveFn = bool (*)(std::int32_t pid);
  void set_alive_check(AliveFn fn) { alive_ = fn; }
  // The same asked about slot k's process, when a PID alone cannot tell
  // (the reload bridge's slots change hands); replaces the one above.
  using SlotAliveFn = bool (*)(void* ctx, std::uint32_t k, std::int32_t pid);
  void set_slot_alive_check(SlotAliveFn fn, void* ctx) {
    slot_alive_ = fn;
    alive_ctx_ = ctx;
  }
  // Wakes slots without fds (see Wakeup::set_waker).
  void set_waker(Wakeup::WakeFn fn, void* ctx) { wakeup_.set_waker(fn, ctx); }
  // Limits other than the mapping's (the bridge's mapping serves processes
  // of several configurations, each with its own).
  void set_limits(std::uint64_t max_message, std::uint64_t queue_limit) {
    max_message_ = max_message;
    queue_limit_ = queue_limit;
  }
  static bool process_alive(std::int32_t pid);

  // Takes the slot for this process: a new incarnation with this PID. A
  // successor of a process (incarnation > 1) then wakes every slot once: a
  // process killed in the middle of a wake-up handshake (flag cleared, fd
  // not yet written) may have left a receiver asleep or a sender waiting;
  // a spurious wake-up costs little.
  // skip_unread: leave what the inbox rings hold unread (the reload
  // bridge's slots change hands between unrelated processes).
  void start(std::int32_t pid, bool skip_unread = false);
  // Clean exit: the slot's PID becomes 0 (its incarnation stays).
  void stop();

  // Queues one message for the live process `pid` of this mapping.
  // send_slot(): the same for the process `pid` known to be in slot k
  // (kNoSuchWorker if another holds it now).
  Status send_slot(std::uint32_t k, std::int32_t pid, const unsigned char* name,
                   std::size_t name_len, const unsigned char* data, std::size_t data_len,
                   std::uint16_t flags = 0, std::uint32_t call_id = 0);
  Status send(std::int32_t pid, const unsigned char* name, std::size_t name_len,
              const unsigned char* data, std::size_t data_len, std::uint16_t flags = 0,
              std::uint32_t call_id = 0);
  // Queues one message for every slot (or every other slot): all or none.
  Status broadcast(const unsigned char* name, std::size_t name_len, const unsigned char* data,
                   std::size_t data_len, bool include_self);
  // Queues one broadcast for each of the n slots listed (a slot listed
  // twice gets it once), addressed to the process each holds now (a slot
  // without one is skipped; with pids, so is slots[i] unless process
  // pids[i] holds it): all or none.
  Status multicast(const std::uint32_t* slots, const std::int32_t* pids, std::size_t n,
                   const unsigned char* name, std::size_t name_len, const unsigned char* data,
                   std::size_t data_len);
  // kQueueFull if one of the n slots' backlogs is at the limit (and its
  // process alive): what multicast() would refuse for, checked first.
  Status check_room(const std::uint32_t* slots, std::size_t n);

  // Takes up to max messages from the inbox. Returns 0 only when the inbox
  // was empty after this slot was marked asleep: from then on, any sender
  // writes this slot's wake-up fd. Releases the previous batch first.
  // With arm false (a busy poll watches the inbox), an empty inbox returns 0
  // and leaves the slot as it is.
  int receive(Delivery* out, int max, bool arm = true) { return inbox_.receive(out, max, arm); }
  // Gives the ring space of the last batch back to the senders.
  void release() { inbox_.release(); }
  // Writes what the backlog holds as far as the inboxes take it. Returns
  // true if the backlog is now empty. probe: ask whether a process that
  // held an inbox's lock at the last try still runs (after a wake-up
  // nobody sent: a timer).
  bool flush(bool probe = false);
  // Moves on only the backlogs of the inboxes that woke this process
  // (after a wake-up: O(1) per inbox that woke it, not O(workers)).
  // Always reads the ready bits: a turn that came with nothing to write is
  // handed on.
  bool flush_ready() { return outbox_.flush_ready(); }
  // The glue's timer while a backlog waits (every 100 ms): every waiting
  // destination's Outbox::retry(); a destination whose process exited
  // cleanly is dropped. True if no backlog is left.
  bool retry_all();
  // Bytes waiting for slot k beyond its ring.
  std::uint64_t backlog_bytes(std::uint32_t k) const {
    return k < nslots_ ? outbox_.backlog_bytes(k) : 0;
  }
  // Drops what waits for slot k (its process is gone), counted as dropped.
  void forget(std::uint32_t k) {
    if (k < nslots_ && !outbox_.backlog_empty(k)) outbox_.drop_backlog(k);
  }
  // True if the inbox holds unread records.
  bool inbox_pending() { return inbox_.pending(); }
  // True while this slot is marked asleep (armed): a sender will wake it.
  bool armed() const { return wakeup_.armed(); }
  // Writes this process's own wake-up fd.
  void wake_self() { wakeup_.wake(self_); }
  // Busy polling: while the owner watches inbox_pending() itself, senders
  // need not write the wake-up fd. disarm() clears the flag; rearm() sets it
  // again and returns true if the inbox has records (the owner must then
  // drain it with receive(), which arms the slot when it is empty).
  void disarm() { wakeup_.disarm(); }
  bool rearm() { return inbox_.rearm(); }

  // This process's counters (CoreStats, in layout.h), in its slot of the
  // mapping: zeroed by start(), written only by this process, from C++.
  CoreStats& stats() { return *stats_; }
  SlotCounters& counters() { return slot_at(shm_, self_)->counters; }
  std::uint32_t slot() const { return self_; }
  std::uint32_t nslots() const { return nslots_; }
  std::uint32_t incarnation() const { return incarnation_; }
  std::int32_t pid() const { return pid_; }
  // The slot whose identity holds pid, -1 if none.
  int slot_of(std::int32_t pid) const;
  // PID of the process in slot i, 0 if none has started or it exited cleanly.
  std::int32_t slot_pid(std::uint32_t i) const;

 private:
  bool slot_exited(std::uint32_t k) const;
  template <typename Fn>
  bool each_backlog(Fn fn);
  Status deliver_all(const MessageMeta& meta, const std::uint32_t* incarnations,
                     const unsigned char* name, const unsigned char* data, std::size_t data_len);
  int find_slot(std::int32_t pid) const;
  bool full_for_the_dead(std::uint32_t k);
  Status refuse(Status s) {
    ++stats_->refused;
    return s;
  }

  ShmHeader* shm_;
  std::uint32_t self_;
  std::uint32_t nslots_;
  std::uint64_t max_message_;
  std::uint64_t queue_limit_;
  CoreLog log_;
  CoreStats* stats_;  // &slot_at(shm_, self_)->counters.core
  Wakeup wakeup_;
  Outbox outbox_;
  Inbox inbox_;
  std::vector<std::uint32_t> targets_;           // scratch for broadcast()
  std::vector<std::uint32_t> incarnations_;      // scratch for multicast()
  std::vector<std::uint8_t> picked_;             // scratch for multicast()
  std::shared_ptr<unsigned char[]> bcast_room_;  // deliver_all()'s, kept
  std::uint64_t bcast_cap_ = 0;
  // slot_of()'s hint: pid % kPidHints -> slot + 1, checked against the
  // slot's identity before it is trusted
  static constexpr std::uint32_t kPidHints = 4096;
  mutable std::vector<std::uint16_t> pid_hint_;
  bool started_ = false;
  std::int32_t pid_ = 0;
  std::uint32_t incarnation_ = 0;
  AliveFn alive_ = &process_alive;
  SlotAliveFn slot_alive_ = nullptr;
  void* alive_ctx_ = nullptr;
};

}  // namespace ngx_ipc

#endif  // NGX_IPC_ENDPOINT_H
