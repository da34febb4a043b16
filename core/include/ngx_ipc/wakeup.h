// ngx_ipc core: the sleep/wake-up handshake between processes.
//
// A process writes another's wake-up fd (an eventfd) only when that process
// may be asleep, so a busy pair exchanges messages with no syscall. Flags
// in the mapping say who may be asleep, and each is one handshake of a
// store, a seq_cst fence and a load on each side: whatever the
// interleaving, at least one side sees the other's store, so either the
// sleeper sees the work or the worker sees the sleeper and wakes it.
//
// Fence pairs, one line each (the argument is in docs/ARCHITECTURE.md):
//   A. receiver: sleeping.store(1); fence; re-read the inbox head
//      (arm_begin()) -- sender: publish head; fence; load sleeping
//      (after_write()): either the receiver sees the record or the sender
//      sees the flag and writes the fd.
//   B. sender that holds an inbox's lock and found its ring full: its
//      room-waiter bit and the inbox's room_waiting flag; fence; re-read
//      the inbox's tail (InboxLock::wait_begin()) -- receiver: store tail
//      (Consumer::release); fence; load room_waiting (after_release()):
//      either the sender sees the space or the receiver sees the flag and
//      writes the fd.
//   C. sender that found the lock taken: its lock-waiter bit and the
//      lock_waiting flag; fence; try the lock again -- holder: unlock;
//      fence; load lock_waiting (after_write(); inbox_lock.h).
// Whoever clears a flag with exchange(0) writes the fd: one wake-up per
// sleep (waiters: one waiter per wake, in turn, the flag set again while
// others wait; inbox_lock.h). The fences order the flags; the waiter
// flags are also a release/acquire pair, for the bits set before them.
//
// Not thread-safe: one per endpoint, used by its process's one thread.

#ifndef NGX_IPC_WAKEUP_H
#define NGX_IPC_WAKEUP_H

#include <atomic>
#include <cstdint>
#include <vector>

#include "ngx_ipc/inbox_lock.h"
#include "ngx_ipc/layout.h"

namespace ngx_ipc {

// Where the core reports events an operator should see (a corrupt ring, a
// failed write to a wake-up fd, memory exhausted); the glue rate-limits it.
struct CoreLog {
  using Fn = void (*)(void* ctx, const char* msg, int err);
  Fn fn = nullptr;
  void* ctx = nullptr;
  void operator()(const char* msg, int err = 0) const {
    if (fn != nullptr) fn(ctx, msg, err);
  }
};

class Wakeup {
 public:
  // wake_fds: one per slot, or nullptr if a waker (set_waker) wakes them.
  Wakeup(ShmHeader* shm, std::uint32_t self, const int* wake_fds, const CoreLog* log)
      : shm_(shm), self_(self), log_(log) {
    if (wake_fds != nullptr) wake_fds_.assign(wake_fds, wake_fds + shm->nslots);
  }

  // How slot k is woken when it has no fd in this process (the reload
  // bridge sends a datagram to the slot's socket instead).
  using WakeFn = void (*)(void* ctx, std::uint32_t k);
  void set_waker(WakeFn fn, void* ctx) {
    waker_ = fn;
    waker_ctx_ = ctx;
  }

  // Writes slot k's wake-up fd (or calls the waker).
  void wake(std::uint32_t k);

  // A, the receiver's side. arm_begin() marks this slot asleep; the caller
  // then looks at its inbox again and, if it found records after all,
  // calls arm_cancel().
  void arm_begin() {
    sleeping().store(1, std::memory_order_relaxed);
    // Seq_cst fence (A): orders the store of sleeping before the re-read
    // of the heads; pairs with the fence in notify().
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
  void arm_cancel() { sleeping().store(0, std::memory_order_relaxed); }
  bool armed() const { return slot_at(shm_, self_)->sleeping.load(std::memory_order_relaxed) != 0; }
  // Busy polling: the owner watches its inbox itself, senders need not
  // write the fd. Senders load this line after every publish: write it
  // only if needed.
  void disarm() {
    if (sleeping().load(std::memory_order_relaxed) != 0) arm_cancel();
  }

  // A and C, the sender's side, after it wrote into slot k's inbox and
  // unlocked it: wakes slot k if it published records there and k may be
  // asleep, and the next sender waiting for k's lock. `room`: the bytes
  // free in k's inbox as it left it; with a quarter of the ring or more
  // free, the next sender waiting for room is woken too (the receiver
  // wakes room waiters one per release: this lets several write while
  // there is room, without waking them all).
  void after_write(std::uint32_t k, bool published, std::uint64_t room = 0) {
    // Seq_cst fence (A, C): orders the head store and the unlock before
    // the loads of sleeping and lock_waiting; pairs with the fences in
    // arm_begin() and InboxLock::wait_begin().
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (published) {
      std::atomic<std::uint32_t>& f = slot_at(shm_, k)->sleeping;
      if (f.load(std::memory_order_relaxed) != 0 && f.exchange(0, std::memory_order_relaxed) != 0) {
        wake(k);
      }
    }
    InboxLock::wake_one(shm_, k, WaitFor::kLock, [this](std::uint32_t s) { wake(s); });
    if (room >= shm_->ring_size / 4) {
      InboxLock::wake_one(shm_, k, WaitFor::kRoom, [this](std::uint32_t s) { wake(s); });
    }
  }

  // B, the receiver's side: it stored its inbox's tail (Consumer::release).
  void after_release() {
    // Seq_cst fence (B): orders the tail store before the load of
    // room_waiting; pairs with the fence in InboxLock::wait_begin().
    std::atomic_thread_fence(std::memory_order_seq_cst);
    InboxLock::wake_one(shm_, self_, WaitFor::kRoom, [this](std::uint32_t s) { wake(s); });
  }

  // A sender woken for slot k's inbox that has nothing for it any more
  // hands the turn on: the next waiter of each kind, if any.
  void pass_on(std::uint32_t k) {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    InboxLock::wake_one(shm_, k, WaitFor::kLock, [this](std::uint32_t s) { wake(s); });
    InboxLock::wake_one(shm_, k, WaitFor::kRoom, [this](std::uint32_t s) { wake(s); });
  }

 private:
  std::atomic<std::uint32_t>& sleeping() { return slot_at(shm_, self_)->sleeping; }

  ShmHeader* shm_;
  std::uint32_t self_;
  std::vector<int> wake_fds_;
  const CoreLog* log_;
  WakeFn waker_ = nullptr;
  void* waker_ctx_ = nullptr;
};

}  // namespace ngx_ipc

#endif  // NGX_IPC_WAKEUP_H
