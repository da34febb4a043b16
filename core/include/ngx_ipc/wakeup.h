// ngx_ipc core: the sleep/wake-up handshake between processes.
//
// A process writes another's wake-up fd (an eventfd) only when that process
// may be asleep, so a busy pair exchanges messages with no syscall. Two
// flags in the mapping say who may be asleep, and each is one handshake of
// a store, a seq_cst fence and a load on each side: whatever the
// interleaving, at least one side sees the other's store, so either the
// sleeper sees the work or the worker sees the sleeper and wakes it.
//
// Fence pairs, one line each (the argument is in docs/ARCHITECTURE.md):
//   A. receiver: sleeping.store(1); fence; re-read the inbox heads
//      (arm_begin()) -- sender: publish head; fence; load sleeping
//      (notify()): either the receiver sees the record or the sender sees
//      the flag and writes the fd.
//   B. producer with a backlog: producer_waiting.store(1); fence; re-read
//      the ring's tail (await_space_begin()) -- consumer: store tail
//      (Consumer::release); fence; load producer_waiting (after_release()):
//      either the producer sees the space or the consumer sees the flag
//      and writes the fd.
// Whoever clears a flag with exchange(0) writes the fd: one wake-up per
// sleep. The flags themselves are relaxed: the fences order them.
//
// Not thread-safe: one per endpoint, used by its process's one thread.

#ifndef NGX_IPC_WAKEUP_H
#define NGX_IPC_WAKEUP_H

#include <atomic>
#include <cstdint>
#include <vector>

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

  // A, the sender's side, after it published records for slot k.
  void notify(std::uint32_t k) {
    std::atomic<std::uint32_t>& f = slot_at(shm_, k)->sleeping;
    // Seq_cst fence (A): orders the head store (publish) before the load
    // of sleeping; pairs with the fence in arm_begin().
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (f.load(std::memory_order_relaxed) == 0) return;
    if (f.exchange(0, std::memory_order_relaxed) != 0) wake(k);
  }

  // B, the producer's side: it holds a backlog for ring ctl; the caller
  // then writes what the ring takes, and calls await_space_end() once the
  // backlog is empty.
  static void await_space_begin(RingCtl* ctl) {
    ctl->producer_waiting.store(1, std::memory_order_relaxed);
    // Seq_cst fence (B): orders the store of producer_waiting before the
    // re-read of tail; pairs with the fence in after_release().
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
  static void await_space_end(RingCtl* ctl) {
    ctl->producer_waiting.store(0, std::memory_order_relaxed);
  }

  // B, the consumer's side: it stored the tails of the inbox rings from
  // the slots in `from` (Consumer::release).
  void after_release(const std::vector<std::uint32_t>& from) {
    if (from.empty()) return;
    // Seq_cst fence (B): orders the tail stores before the loads of
    // producer_waiting; pairs with the fence in await_space_begin().
    std::atomic_thread_fence(std::memory_order_seq_cst);
    for (std::uint32_t k : from) {
      std::atomic<std::uint32_t>& f = ring_ctl(shm_, k, self_)->producer_waiting;
      if (f.load(std::memory_order_relaxed) != 0 && f.exchange(0, std::memory_order_relaxed) != 0) {
        wake(k);
      }
    }
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
