// ngx_ipc core: who writes a receiver's inbox, and who waits to.
//
// Every sender writes a receiver's inbox ring, one at a time: the lock word
// (InboxCtl::lock) holds the writer id (slot and incarnation, make_writer)
// of the process that writes it now. Nobody ever waits for it:
//   - a sender takes it with one CAS; if another process holds it, the
//     message stays in the sender's private backlog for that receiver, and
//     the sender marks itself waiting for the lock (its bit in the
//     receiver's lock waiters, then the lock_waiting flag); a sender that
//     holds the lock and finds the ring full marks itself waiting for
//     room the same way;
//   - the holder, after it unlocked, wakes the lock waiters, and the
//     receiver, after it freed space, the room waiters (wake_one(): one
//     at a time, in turn; the woken sender finds the inbox in its ready
//     bits and retries only that one);
//   - a holder that died (its slot's identity names another incarnation,
//     or no process, or kill(pid, 0) says it is gone) never unlocks: the
//     next sender that looks takes the lock over. What the dead holder
//     wrote past the published head was never visible, and is overwritten.
// The receiver never touches the lock: it reads the published head.
//
// Fence pair C, one line (the argument is in docs/ARCHITECTURE.md):
//   sender: set its lock-waiter bit and the flag; fence; try the lock
//   again (wait_begin()) -- holder: unlock; fence; load the flag
//   (wake_one()): either the sender finds the lock free, or the
//   holder sees the flag and wakes it. Pair B is the same with the room
//   waiters and tail in place of the lock: the sender, holding the lock,
//   re-reads tail; the receiver stores tail, fences, loads room_waiting.

#ifndef NGX_IPC_INBOX_LOCK_H
#define NGX_IPC_INBOX_LOCK_H

#include <atomic>
#include <cstdint>

#include "ngx_ipc/layout.h"

namespace ngx_ipc {

// Whether the process that wrote writer id w still runs: its slot still
// names that incarnation and a PID that is a process, started when the
// slot's process started (a PID the kernel gave again is not the holder).
using WriterAliveFn = bool (*)(void* ctx, ShmHeader* shm, std::uint64_t w);
bool writer_alive(void* ctx, ShmHeader* shm, std::uint64_t w);
// When process pid started (clock ticks since boot, /proc/<pid>/stat
// field 22); 0 if it cannot tell.
std::uint64_t process_start_time(std::int32_t pid);

class InboxLock {
 public:
  // Takes receiver r's inbox for writer `me`, if no live process holds it.
  // `probe`: if a process holds it, ask whether it is alive (a syscall;
  // the caller asks only when a holder was in the way at its last try
  // too). Returns true if the lock is ours now; *took_over says it was
  // taken from a holder that died (InboxWriter::begin(true)).
  static bool try_lock(ShmHeader* shm, std::uint32_t r, std::uint64_t me, bool probe,
                       WriterAliveFn alive, void* ctx, std::uint64_t* holder,
                       bool* took_over = nullptr) {
    std::atomic<std::uint64_t>& lock = inbox_ctl(shm, r)->lock;
    std::uint64_t v = 0;
    bool ignored;
    if (took_over == nullptr) took_over = &ignored;
    *took_over = false;
    // Acquire: pairs with the previous holder's release in unlock(); its
    // head and the records before it are ours to read and to extend.
    if (lock.compare_exchange_strong(v, me, std::memory_order_acquire, std::memory_order_relaxed)) {
      return true;
    }
    *holder = v;
    if (!probe || alive(ctx, shm, v)) return false;
    // The holder is gone: its half-written records are not published. It
    // never released the lock, so nothing orders its last store of head
    // before us: InboxWriter::begin(true) reads head with a
    // read-modify-write, which reads the last value stored.
    *took_over =
        lock.compare_exchange_strong(v, me, std::memory_order_acquire, std::memory_order_relaxed);
    return *took_over;
  }

  // Release: hands head and the records before it to the next holder.
  static void unlock(ShmHeader* shm, std::uint32_t r) {
    inbox_ctl(shm, r)->lock.store(0, std::memory_order_release);
  }

  // Pairs B and C, the sender's side: sender s waits for r's lock (C) or
  // for room in r's inbox (B). The caller then tries once more: the lock
  // (kLock), or the ring's space while it holds the lock (kRoom).
  static void wait_begin(ShmHeader* shm, std::uint32_t r, std::uint32_t s, WaitFor w) {
    waiter_bits(shm, r, w)[s / 64].fetch_or(std::uint64_t{1} << (s % 64),
                                            std::memory_order_relaxed);
    // Release, and a read-modify-write, so that every sender's mark heads
    // or extends one release sequence: a waker whose acquire exchange reads
    // the flag set (by us, or by a sender after us) sees our bit too. (The
    // fence below orders the mark before our retry; it does not make a
    // waker that read the flag see the bit.)
    waiting_flag(inbox_ctl(shm, r), w).exchange(1, std::memory_order_release);
    // Seq_cst fence (B, C): orders the stores of the bit and the flag
    // before the caller's new try of the lock (or load of tail); pairs
    // with the fence in the waker's path (Wakeup::after_write(),
    // Wakeup::after_release()).
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
  // Sender s no longer waits that way: spares it a wake-up it would not
  // need (the flag stays: a waker then finds no bit, which costs a scan).
  static void wait_end(ShmHeader* shm, std::uint32_t r, std::uint32_t s, WaitFor w) {
    waiter_bits(shm, r, w)[s / 64].fetch_and(~(std::uint64_t{1} << (s % 64)),
                                             std::memory_order_relaxed);
  }

  // Pairs B and C, the waker's side, after a seq_cst fence that follows
  // its unlock (kLock) or its store of tail (kRoom): wakes ONE sender
  // marked waiting that way for r's inbox, the next one after the last
  // woken (in turn), clearing its mark and setting r in its ready bits
  // before wake(s) writes its eventfd. If others still wait, the flag is
  // set again: the woken sender's own unlock (kLock) or the receiver's
  // next release (kRoom) wakes the next, so n waiters cost n wake-ups, not
  // n per unlock or release. The holder wakes lock waiters only and the
  // receiver room waiters only, so a sender that waits for room is not
  // woken by other senders' unlocks (while the receiver is stopped, nobody
  // spins). Returns the slot woken, or -1.
  template <typename WakeFn>
  static int wake_one(ShmHeader* shm, std::uint32_t r, WaitFor w, WakeFn wake) {
    InboxCtl* c = inbox_ctl(shm, r);
    std::atomic<std::uint32_t>& flag = waiting_flag(c, w);
    if (flag.load(std::memory_order_relaxed) == 0) return -1;
    // Acquire: pairs with the release in wait_begin(); the bits set before
    // the flag are visible to the scan below.
    if (flag.exchange(0, std::memory_order_acquire) == 0) return -1;
    std::atomic<std::uint64_t>* bits = waiter_bits(shm, r, w);
    std::uint32_t n = shm->nslots;
    std::uint32_t words = (n + 63) / 64;
    std::atomic<std::uint32_t>& cursor = wake_cursor(c, w);
    std::uint32_t start = cursor.load(std::memory_order_relaxed);
    if (start >= n) start = 0;
    // Bits past the last slot are no sender: whatever another process wrote
    // there is ignored, never woken nor taken for a waiter still waiting.
    auto valid = [n, words](std::uint32_t wi) {
      return wi + 1 < words || n % 64 == 0 ? ~std::uint64_t{0} : (std::uint64_t{1} << (n % 64)) - 1;
    };
    int woken = -1;
    bool more = false;
    // Words from the cursor's on, wrapping, and the cursor's word once
    // more at the end for its bits before the cursor.
    for (std::uint32_t i = 0; i <= words && woken < 0; ++i) {
      std::uint32_t wi = (start / 64 + i) % words;
      std::uint64_t b = bits[wi].load(std::memory_order_relaxed) & valid(wi);
      std::uint64_t from = std::uint64_t{1} << (start % 64);
      if (i == 0) b &= ~(from - 1);
      if (i == words) b &= from - 1;
      while (b != 0 && woken < 0) {
        std::uint64_t m = b & (~b + 1);
        std::uint64_t old = bits[wi].fetch_and(~m, std::memory_order_relaxed);
        if (old & m) {
          woken = static_cast<int>(wi * 64 + static_cast<std::uint32_t>(__builtin_ctzll(m)));
          more = (old & ~m & valid(wi)) != 0;
        }
        b &= ~m;  // (another waker took that one)
      }
    }
    if (woken < 0) return -1;
    for (std::uint32_t i = 0; i < words && !more; ++i) {
      more = (bits[i].load(std::memory_order_relaxed) & valid(i)) != 0;
    }
    cursor.store(static_cast<std::uint32_t>(woken) + 1, std::memory_order_relaxed);
    // Before the wake-up: the sender that reads it (after its read of the
    // eventfd, a syscall) finds r among its ready inboxes.
    ready_bits(shm, static_cast<std::uint32_t>(woken))[r / 64].fetch_or(
        std::uint64_t{1} << (r % 64), std::memory_order_release);
    // The others still wait: the next waker finds the flag set. (Set once
    // more, never cleared while a bit is set: at worst a waker scans for
    // nothing.)
    if (more) flag.exchange(1, std::memory_order_release);
    wake(static_cast<std::uint32_t>(woken));
    return woken;
  }
};

}  // namespace ngx_ipc

#endif  // NGX_IPC_INBOX_LOCK_H
