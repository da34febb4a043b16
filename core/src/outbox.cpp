// ngx_ipc core: an endpoint's send side (see outbox.h).

#include "ngx_ipc/outbox.h"

#include <atomic>
#include <cerrno>
#include <new>

#include "ngx_ipc/endpoint.h"

namespace ngx_ipc {

Outbox::Outbox(ShmHeader* shm, std::uint32_t self, CoreStats* stats, std::uint64_t* queued_msgs,
               Wakeup* wakeup, const CoreLog* log)
    : shm_(shm),
      self_(self),
      stats_(stats),
      queued_msgs_(queued_msgs),
      wakeup_(wakeup),
      log_(log),
      out_(shm->nslots) {}

void Outbox::attach(std::uint32_t incarnation) {
  me_ = make_writer(self_, incarnation);
  for (std::uint32_t k = 0; k < shm_->nslots; ++k) {
    out_[k].writer.attach(inbox_ctl(shm_, k), inbox_data(shm_, k), shm_->ring_size);
  }
}

namespace {

// How many times a unicast looks again at a lock held by another sender
// before its message goes to the backlog: about 2 µs of pause instructions,
// more than the copy of a small message takes. Waiting that long is cheaper
// than what not waiting costs: a backlog, a lock-waiter mark, the holder's
// write(2) to wake us and a wake-up of this process (tens of µs on a VM).
// Bounded, so a holder that was preempted or stopped costs this much once
// per send, never a wait. A broadcast does not spin: it has other inboxes
// to write, and comes back to this one when woken.
constexpr int kLockSpins = 64;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#else
  std::atomic_signal_fence(std::memory_order_seq_cst);
#endif
}

}  // namespace

bool Outbox::lock(std::uint32_t k, bool probe, bool spin) {
  OutInbox& o = out_[k];
  std::uint64_t holder = 0;
  // Probe a holder only if one was in the way at our last try too: a live
  // holder keeps the lock for one copy into the ring.
  bool took_over = false;
  bool got = InboxLock::try_lock(shm_, k, me_, probe && o.holder != 0, alive_, alive_ctx_, &holder,
                                 &took_over);
  if (!got && spin) {
    std::atomic<std::uint64_t>& word = inbox_ctl(shm_, k)->lock;
    for (int i = 0; i < kLockSpins && !got; ++i) {
      cpu_relax();
      got = word.load(std::memory_order_relaxed) == 0 &&
            InboxLock::try_lock(shm_, k, me_, false, alive_, alive_ctx_, &holder);
    }
  }
  if (got) {
    o.holder = 0;
    if (o.lock_wait) {  // before our unlock, so that it does not wake us
      InboxLock::wait_end(shm_, k, self_, WaitFor::kLock);
      o.lock_wait = false;
    }
    o.writer.begin(took_over);
    return true;
  }
  o.holder = holder;
  return false;
}

void Outbox::unlock(std::uint32_t k, bool published) {
  std::uint64_t room = out_[k].writer.room();
  InboxLock::unlock(shm_, k);
  wakeup_->after_write(k, published, room);
}

void Outbox::queued(std::uint32_t k, std::int64_t bytes, std::int64_t msgs) {
  out_[k].backlog_bytes += static_cast<std::uint64_t>(bytes);
  stats_->queued_bytes += static_cast<std::uint64_t>(bytes);
  *queued_msgs_ += static_cast<std::uint64_t>(msgs);
}

Status Outbox::send(std::uint32_t k, const MessageMeta& meta, const unsigned char* name,
                    const unsigned char* data, std::size_t data_len, SharedPayload* shared) {
  OutInbox& o = out_[k];
  Payload p{name, meta.name_len, data, data_len};
  std::uint64_t written = 0;
  if (o.backlog.empty() && lock(k, false, shared == nullptr)) {
    written = o.writer.write(meta, p, 0);
    // Unlocked before the rest is kept: the lock is held for a copy into
    // the ring, never across an allocation. Our rest stays first in line
    // for us (the backlog is not empty now), and other senders' records
    // may come between our fragments (the receiver reassembles per sender).
    unlock(k, o.writer.publish());
  }
  if (written == meta.total_len) {
    ++stats_->sent;
    stats_->sent_bytes += data_len;
    return Status::kOk;
  }

  std::uint64_t rest = meta.total_len - written;
  Pending pending{meta, written, rest, 0, nullptr, 0};
  if (shared != nullptr) {
    // A broadcast's: copied once, when the first destination needs it, into
    // room made before anything was sent; every backlog shares it.
    if (!shared->filled) {
      p.copy_out(shared->buf.get(), 0, meta.total_len);
      shared->filled = true;
    }
    pending.buf = shared->buf;
    pending.base = written;
  } else {
    pending.buf.reset(new (std::nothrow) unsigned char[rest]);
    if (pending.buf) p.copy_out(pending.buf.get(), written, rest);
  }
  bool kept = false;
  if (pending.buf) {
    try {
      o.backlog.push_back(std::move(pending));
      kept = true;
      if (o.backlog.size() == 1) ++backlogs_;
    } catch (const std::bad_alloc&) {
    }
  }
  if (!kept) {
    // What was written stays (its first fragments are never delivered);
    // nothing else of this message goes.
    (*log_)("no memory for the send backlog", ENOMEM);
    return Status::kNoMemory;
  }
  queued(k, static_cast<std::int64_t>(rest), 1);
  flush(k);  // the lock (it was taken, or the backlog was not empty) or room
  ++stats_->sent;
  stats_->sent_bytes += data_len;
  return Status::kOk;
}

// With the lock held: the backlog's messages, in order, as far as the
// inbox takes them. Returns the bytes written.
std::uint64_t Outbox::write_backlog(std::uint32_t k) {
  OutInbox& o = out_[k];
  std::uint64_t total = 0;
  while (!o.backlog.empty()) {
    Pending& p = o.backlog.front();
    Payload rest{p.buf.get() + p.base + p.done, p.len - p.done, nullptr, 0};
    std::uint64_t n = o.writer.write(p.meta, rest, p.start + p.done);
    p.done += n;
    total += n;
    queued(k, -static_cast<std::int64_t>(n), 0);
    if (p.done < p.len) break;
    o.backlog.pop_front();
    queued(k, 0, -1);
    if (o.backlog.empty()) --backlogs_;
  }
  return total;
}

// With the lock held and the ring full: marks us waiting for room (fence
// pair B), then looks at the ring's space once more.
void Outbox::wait_for_room(std::uint32_t k) {
  OutInbox& o = out_[k];
  InboxLock::wait_begin(shm_, k, self_, WaitFor::kRoom);
  o.room_wait = true;
  write_backlog(k);
}

// After an unlock: no mark left behind once the backlog is empty.
void Outbox::settle(std::uint32_t k) {
  OutInbox& o = out_[k];
  if (o.backlog.empty() && o.room_wait) {
    InboxLock::wait_end(shm_, k, self_, WaitFor::kRoom);
    o.room_wait = false;
  }
}

bool Outbox::flush(std::uint32_t k, bool probe) {
  OutInbox& o = out_[k];
  if (o.backlog.empty()) return true;
  if (!lock(k, probe)) {
    // Fence pair C: marked waiting for the lock, try once more; either
    // that try succeeds or the holder sees the mark when it unlocks. (A
    // holder that died never unlocks: the glue's timer flushes with probe.)
    InboxLock::wait_begin(shm_, k, self_, WaitFor::kLock);
    o.lock_wait = true;
    if (!lock(k, probe)) return false;
  }
  write_backlog(k);
  if (!o.backlog.empty()) wait_for_room(k);
  unlock(k, o.writer.publish());
  settle(k);
  return o.backlog.empty();
}

bool Outbox::retry(std::uint32_t k) {
  OutInbox& o = out_[k];
  if (o.backlog.empty()) return true;
  InboxCtl* c = inbox_ctl(shm_, k);
  // Loads first: a sweep of every waiting destination must not cost each
  // one a lock, a mark and a fence, every 100 ms, in every worker.
  std::uint64_t v = c->lock.load(std::memory_order_relaxed);
  if (v != 0) {
    if (v != o.tick_holder) {  // a new holder since the last sweep: it writes
      o.tick_holder = v;
      return false;
    }
    return flush(k, true);  // the same one for a whole sweep: alive?
  }
  o.tick_holder = 0;
  if (o.room_wait &&
      (waiter_bits(shm_, k, WaitFor::kRoom)[self_ / 64].load(std::memory_order_relaxed) &
       (std::uint64_t{1} << (self_ % 64))) != 0) {
    std::uint64_t used =
        c->head.load(std::memory_order_relaxed) - c->tail.load(std::memory_order_relaxed);
    if (used <= shm_->ring_size && shm_->ring_size - used < shm_->ring_size / 4) {
      return false;  // still marked, the ring still full: the receiver owes us a wake-up
    }
  }
  return flush(k);
}

bool Outbox::flush_ready() {
  std::atomic<std::uint64_t>* ready = ready_bits(shm_, self_);
  std::uint32_t words = (shm_->nslots + 63) / 64;
  bool all = true;
  for (std::uint32_t i = 0; i < words; ++i) {
    if (ready[i].load(std::memory_order_relaxed) == 0) continue;
    // Acquire: pairs with the waker's release in InboxLock::wake_one().
    std::uint64_t b = ready[i].exchange(0, std::memory_order_acquire);
    while (b != 0) {
      std::uint32_t k = i * 64 + static_cast<std::uint32_t>(__builtin_ctzll(b));
      b &= b - 1;
      if (k >= shm_->nslots) break;  // past the last slot: written by no waker of ours
      if (out_[k].backlog.empty()) {
        wakeup_->pass_on(k);  // our turn, but nothing to write: the next one's
        continue;
      }
      all = flush(k) && all;
    }
  }
  return all;
}

void Outbox::drop_backlog(std::uint32_t k) {
  OutInbox& o = out_[k];
  stats_->dropped += o.backlog.size();
  queued(k, -static_cast<std::int64_t>(o.backlog_bytes),
         -static_cast<std::int64_t>(o.backlog.size()));
  if (!o.backlog.empty()) --backlogs_;
  o.backlog.clear();
  if (o.lock_wait) InboxLock::wait_end(shm_, k, self_, WaitFor::kLock);
  if (o.room_wait) InboxLock::wait_end(shm_, k, self_, WaitFor::kRoom);
  o.lock_wait = o.room_wait = false;
}

}  // namespace ngx_ipc
