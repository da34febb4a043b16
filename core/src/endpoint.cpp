// ngx_ipc core: the per-process endpoint (see endpoint.h).

#include "ngx_ipc/endpoint.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>

namespace ngx_ipc {

const char* status_message(Status s) {
  switch (s) {
    case Status::kOk:
      return "ok";
    case Status::kNoSuchWorker:
      return "no such worker";
    case Status::kNameTooLong:
      return "name too long";
    case Status::kTooLarge:
      return "message too large";
    case Status::kQueueFull:
      return "queue full";
    case Status::kNoMemory:
      return "no memory";
    case Status::kEmptyName:
      return "empty name";
  }
  return "unknown error";
}

Endpoint::Endpoint(ShmHeader* shm, std::uint32_t self, const int* wake_fds)
    : shm_(shm),
      self_(self),
      nslots_(shm->nslots),
      max_message_(shm->max_message),
      queue_limit_(shm->queue_limit),
      wake_fds_(wake_fds, wake_fds + shm->nslots),
      out_(shm->nslots),
      in_(shm->nslots),
      queued_before_(shm->nslots),
      stats_(&slot_at(shm, self)->counters.core) {
  released_.reserve(shm->nslots);
  targets_.reserve(shm->nslots);
  // receive() may then collect a batch without allocating (no bad_alloc
  // halfway through a batch): the Lua side asks for 64 at most
  batch_bufs_.reserve(kMaxBatch);
}

Endpoint::~Endpoint() = default;

void Endpoint::start(std::int32_t pid) {
  Slot* me = slot_at(shm_, self_);
  for (std::uint32_t k = 0; k < nslots_; ++k) {
    out_[k].producer.attach(ring_ctl(shm_, self_, k), ring_data(shm_, self_, k), shm_->ring_size);
    in_[k].consumer.attach(ring_ctl(shm_, k, self_), ring_data(shm_, k, self_), shm_->ring_size,
                           max_message_);
  }
  // Only this slot's processes write its identity, one at a time (the next
  // one is forked after the previous one died), so load + store is enough.
  incarnation_ = identity_incarnation(me->identity.load(std::memory_order_relaxed)) + 1;
  if (incarnation_ == 0) incarnation_ = 1;  // 0 means "any" in a record
  pid_ = pid;
  // Counters since this process started: the owner's plain stores (a
  // status reader may see a mix of old and zero meanwhile). A new process
  // has no backlog either.
  std::memset(static_cast<void*>(&me->counters), 0, sizeof me->counters);
  for (std::uint32_t k = 0; k < nslots_; ++k) {
    RingCtl* ctl = ring_ctl(shm_, self_, k);
    ctl->backlog_bytes.store(0, std::memory_order_relaxed);
    ctl->backlog_msgs.store(0, std::memory_order_relaxed);
  }
  me->sleeping.store(0, std::memory_order_relaxed);
  // Release: publishes the slot's new identity after the state above.
  me->identity.store(make_identity(incarnation_, pid), std::memory_order_release);
  started_ = true;
  for (std::uint32_t k = 0; k < nslots_; ++k) wake(k);
}

void Endpoint::stop() {
  if (!started_) return;
  slot_at(shm_, self_)->identity.store(make_identity(incarnation_, 0), std::memory_order_release);
  started_ = false;
}

std::int32_t Endpoint::slot_pid(std::uint32_t i) const {
  if (i >= nslots_) return 0;
  return identity_pid(slot_at(shm_, i)->identity.load(std::memory_order_acquire));
}

Status Endpoint::send(std::int32_t pid, const unsigned char* name, std::size_t name_len,
                      const unsigned char* data, std::size_t data_len, std::uint16_t flags,
                      std::uint32_t call_id) {
  if (name_len == 0) return refuse(Status::kEmptyName);
  if (name_len > kMaxNameLen) return refuse(Status::kNameTooLong);
  if (data_len > max_message_) return refuse(Status::kTooLarge);
  if (pid <= 0) return refuse(Status::kNoSuchWorker);
  std::uint32_t k = 0;
  std::uint64_t id = 0;
  for (; k < nslots_; ++k) {
    // Acquire: pairs with start()'s release store of the identity.
    id = slot_at(shm_, k)->identity.load(std::memory_order_acquire);
    if (identity_pid(id) == pid) break;
  }
  if (k == nslots_) return refuse(Status::kNoSuchWorker);
  if (out_[k].backlog_bytes >= queue_limit_) {
    return refuse(full_for_the_dead(k) ? Status::kNoSuchWorker : Status::kQueueFull);
  }

  MessageMeta meta;
  meta.flags = flags;
  meta.sender_pid = pid_;
  meta.target_incarnation = identity_incarnation(id);
  meta.name_len = static_cast<std::uint32_t>(name_len);
  meta.call_id = call_id;
  meta.total_len = name_len + data_len;
  Status s = enqueue(k, meta, name, data, data_len);
  if (s != Status::kOk) return refuse(s);
  if (out_[k].producer.publish()) notify(k);
  if (!out_[k].backlog.empty()) await_space(k);
  return Status::kOk;
}

bool Endpoint::slot_exited(std::uint32_t k) const {
  std::uint64_t id = slot_at(shm_, k)->identity.load(std::memory_order_acquire);
  return identity_pid(id) == 0 && identity_incarnation(id) != 0;
}

Status Endpoint::broadcast(const unsigned char* name, std::size_t name_len,
                           const unsigned char* data, std::size_t data_len, bool include_self) {
  if (name_len == 0) return refuse(Status::kEmptyName);
  if (name_len > kMaxNameLen) return refuse(Status::kNameTooLong);
  if (data_len > max_message_) return refuse(Status::kTooLarge);
  // Every slot, except ours if asked, and those whose process exited cleanly
  // (nginx is stopping or reloading: nobody will read them again). A slot not
  // started yet, or whose process crashed, keeps its messages for the next
  // process there.
  targets_.clear();
  for (std::uint32_t k = 0; k < nslots_; ++k) {
    if (!include_self && k == self_) continue;
    if (k != self_ && slot_exited(k)) continue;
    // All or nothing: check every destination before queueing for any. A
    // full backlog for a process that died (and that nobody respawns, as in
    // an old generation) is dropped, and the slot skipped, so it does not
    // block everyone's broadcasts.
    if (out_[k].backlog_bytes >= queue_limit_) {
      if (!full_for_the_dead(k)) return refuse(Status::kQueueFull);
      continue;
    }
    targets_.push_back(k);
  }
  MessageMeta meta;
  meta.flags = kBroadcast;
  meta.sender_pid = pid_;
  meta.target_incarnation = 0;
  meta.name_len = static_cast<std::uint32_t>(name_len);
  meta.total_len = name_len + data_len;
  for (std::size_t i = 0; i < targets_.size(); ++i) {
    std::uint32_t k = targets_[i];
    std::size_t queued = out_[k].backlog.size();
    Status s = enqueue(k, meta, name, data, data_len);
    if (s != Status::kOk) {
      // Undo the destinations done so far: nothing was published yet.
      for (std::size_t j = 0; j < i; ++j) unqueue(targets_[j], queued_before_[j], data_len);
      return refuse(s);
    }
    queued_before_[i] = queued;
  }
  for (std::uint32_t k : targets_) {
    if (out_[k].producer.publish()) notify(k);
    if (!out_[k].backlog.empty()) await_space(k);
  }
  return Status::kOk;
}

// Takes back a message that enqueue() accepted for slot k in this call.
void Endpoint::unqueue(std::uint32_t k, std::size_t backlog_before, std::size_t data_len) {
  OutRing& o = out_[k];
  o.producer.rollback();
  while (o.backlog.size() > backlog_before) {
    std::uint64_t rest = o.backlog.back().len;
    o.backlog_bytes -= rest;
    stats_->queued_bytes -= rest;
    o.backlog.pop_back();
  }
  publish_backlog(k);
  --stats_->sent;
  stats_->sent_bytes -= data_len;
}

Status Endpoint::enqueue(std::uint32_t k, const MessageMeta& meta, const unsigned char* name,
                         const unsigned char* data, std::size_t data_len) {
  OutRing& o = out_[k];
  Payload p{name, meta.name_len, data, data_len};
  std::uint64_t written = 0;
  if (o.backlog.empty()) written = o.producer.write(meta, p, 0);
  if (written < meta.total_len) {
    std::uint64_t rest = meta.total_len - written;
    Pending pending{meta, written, rest, 0, nullptr};
    pending.buf.reset(new (std::nothrow) unsigned char[rest]);
    bool queued = false;
    if (pending.buf) {
      p.copy_out(pending.buf.get(), written, rest);
      try {
        o.backlog.push_back(std::move(pending));
        queued = true;
      } catch (const std::bad_alloc&) {
      }
    }
    if (!queued) {
      // Nothing of this message may become visible: callers publish once
      // per call, so what is unpublished now is this message only.
      o.producer.rollback();
      log("no memory for the send backlog", ENOMEM);
      return Status::kNoMemory;
    }
    o.backlog_bytes += rest;
    stats_->queued_bytes += rest;
    publish_backlog(k);
  }
  ++stats_->sent;
  stats_->sent_bytes += data_len;
  return Status::kOk;
}

bool Endpoint::flush_ring(std::uint32_t k) {
  OutRing& o = out_[k];
  while (!o.backlog.empty()) {
    Pending& p = o.backlog.front();
    Payload rest{p.buf.get() + p.done, p.len - p.done, nullptr, 0};
    std::uint64_t n = o.producer.write(p.meta, rest, p.start + p.done);
    p.done += n;
    o.backlog_bytes -= n;
    stats_->queued_bytes -= n;
    if (p.done < p.len) break;
    o.backlog.pop_front();
  }
  publish_backlog(k);
  if (o.producer.publish()) notify(k);
  return o.backlog.empty();
}

// For the status page: the backlog's figures on the ring's head line,
// which this process stores to anyway. Only called where the backlog
// changed, never on a send that the ring took whole.
void Endpoint::publish_backlog(std::uint32_t k) {
  RingCtl* ctl = ring_ctl(shm_, self_, k);
  ctl->backlog_bytes.store(out_[k].backlog_bytes, std::memory_order_relaxed);
  ctl->backlog_msgs.store(out_[k].backlog.size(), std::memory_order_relaxed);
}

void Endpoint::await_space(std::uint32_t k) {
  RingCtl* ctl = out_[k].producer.ctl();
  ctl->producer_waiting.store(1, std::memory_order_relaxed);
  // Seq_cst fence: orders the store of producer_waiting before the re-read
  // of tail in flush_ring(); pairs with the fence in release() between the
  // consumer's tail store and its load of producer_waiting, so either we see
  // the space it freed or it sees our flag and wakes us.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (flush_ring(k)) ctl->producer_waiting.store(0, std::memory_order_relaxed);
}

// Called when slot k's backlog is at the limit: if the process in slot k is
// gone (kill(pid, 0) fails with ESRCH), nothing will ever drain that backlog
// before a successor takes the slot, so it is dropped and counted. A syscall,
// but only on this path, never per message.
bool Endpoint::full_for_the_dead(std::uint32_t k) {
  if (k == self_) return false;
  std::int32_t pid = slot_pid(k);
  if (pid > 0 && alive_(pid)) return false;
  drop_backlog(k);
  return true;
}

bool Endpoint::process_alive(std::int32_t pid) {
  return ::kill(pid, 0) == 0 || errno != ESRCH;  // EPERM: alive, not ours
}

void Endpoint::drop_backlog(std::uint32_t k) {
  OutRing& o = out_[k];
  stats_->dropped += o.backlog.size();
  stats_->queued_bytes -= o.backlog_bytes;
  o.backlog_bytes = 0;
  o.backlog.clear();
  publish_backlog(k);
}

bool Endpoint::flush() {
  bool all = true;
  for (std::uint32_t k = 0; k < nslots_; ++k) {
    if (out_[k].backlog.empty()) continue;
    if (k != self_ && slot_exited(k)) {
      drop_backlog(k);  // its process exited cleanly: nobody will read it
      continue;
    }
    if (flush_ring(k)) {
      out_[k].producer.ctl()->producer_waiting.store(0, std::memory_order_relaxed);
    } else {
      await_space(k);
      all = all && out_[k].backlog.empty();
    }
  }
  return all;
}

void Endpoint::notify(std::uint32_t k) {
  Slot* s = slot_at(shm_, k);
  // Seq_cst fence: orders the head store (publish) before the load of
  // sleeping; pairs with the fence in receive() between the receiver's store
  // of sleeping and its re-read of the heads (see docs/ARCHITECTURE.md).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (s->sleeping.load(std::memory_order_relaxed) == 0) return;
  // Whoever clears the flag writes the fd: one wake-up per sleep.
  if (s->sleeping.exchange(0, std::memory_order_relaxed) != 0) wake(k);
}

void Endpoint::wake(std::uint32_t k) {
  std::uint64_t one = 1;
  ssize_t n;
  do {
    n = ::write(wake_fds_[k], &one, sizeof one);
  } while (n < 0 && errno == EINTR);
  // EAGAIN: the eventfd counter is saturated, so the fd is readable anyway.
  if (n < 0 && errno != EAGAIN) log("write() to a wake-up fd failed", errno);
}

int Endpoint::receive(Delivery* out, int max, bool arm) {
  release();
  if (max > kMaxBatch) max = kMaxBatch;
  int n = scan(out, max);
  if (n == 0 && arm) {
    Slot* me = slot_at(shm_, self_);
    me->sleeping.store(1, std::memory_order_relaxed);
    // Seq_cst fence: pairs with the fence in notify(); see there.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    n = scan(out, max);
    if (n != 0) me->sleeping.store(0, std::memory_order_relaxed);
  }
  // Records that were read but not delivered (dropped) free their space now.
  if (n == 0) release();
  return n;
}

bool Endpoint::rearm() {
  Slot* me = slot_at(shm_, self_);
  me->sleeping.store(1, std::memory_order_relaxed);
  // Seq_cst fence: the same handshake as in receive().
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (!inbox_pending()) return false;
  me->sleeping.store(0, std::memory_order_relaxed);
  return true;
}

int Endpoint::scan(Delivery* out, int max) {
  int n = 0;
  std::uint64_t bytes = 0;
  // A batch ends at kBatchBytes once it holds a message: never before, or
  // a message bigger than that would never complete.
  auto room = [&] { return n < max && (n == 0 || bytes < kBatchBytes); };
  for (std::uint32_t i = 0; i < nslots_ && room(); ++i) {
    std::uint32_t k = (rr_ + i) % nslots_;
    InRing& r = in_[k];
    RecordView v;
    while (room()) {
      Consumer::Next st = r.consumer.next(&v);
      if (st == Consumer::Next::kEmpty) break;
      r.read = true;
      if (st == Consumer::Next::kCorrupt) {
        log("corrupt record in an inbox ring, ring reset", 0);
        ++stats_->resets;
        drop_partial(r);
        r.consumer.reset();
        break;
      }
      bytes += v.payload_len;
      if (take(r, v, &out[n])) ++n;
    }
  }
  rr_ = (rr_ + 1) % nslots_;
  return n;
}

void Endpoint::drop_partial(InRing& r) {
  if (r.active && !r.discard) {
    ++stats_->dropped;
    r.counted = true;  // its remaining fragments, if any come, are not counted again
  }
  r.active = false;
  r.discard = false;
  r.buf.reset();
}

// Feeds one record to ring r's reassembly; true if it completes a message
// for this process, described in *out.
bool Endpoint::take(InRing& r, const RecordView& v, Delivery* out) {
  const RecordHeader& h = v.header;
  bool mine = (h.flags & kBroadcast) != 0 || h.target_incarnation == incarnation_;
  const unsigned char* msg;
  if (h.flags & kFirst) {
    drop_partial(r);  // a predecessor of the sender died mid-message
    r.counted = false;
    if (!mine) {
      ++stats_->dropped;  // addressed to a previous process in this slot
      if (!(h.flags & kLast)) r.active = r.discard = true;
      r.first = h;
      r.filled = v.payload_len;
      return false;
    }
    if (h.flags & kLast) {
      msg = v.payload;
    } else {
      r.buf.reset(new (std::nothrow) unsigned char[h.total_len]);
      r.active = true;
      r.first = h;
      r.filled = v.payload_len;
      if (!r.buf) {
        log("no memory to reassemble a message, dropped", ENOMEM);
        ++stats_->dropped;
        r.discard = true;
        return false;
      }
      std::memcpy(r.buf.get(), v.payload, v.payload_len);
      return false;
    }
  } else {
    if (!r.active || h.offset != r.filled || h.total_len != r.first.total_len ||
        h.sender_pid != r.first.sender_pid) {
      // Its first fragment was read by a predecessor of this process, or the
      // sender restarted: the message cannot be completed.
      drop_partial(r);
      if (h.flags & kLast) {
        if (!r.counted) ++stats_->dropped;  // counted once, at its end
        r.counted = false;
      }
      return false;
    }
    if (!r.discard) std::memcpy(r.buf.get() + r.filled, v.payload, v.payload_len);
    r.filled += v.payload_len;
    if (!(h.flags & kLast)) return false;
    bool discard = r.discard;
    r.active = r.discard = false;
    if (discard) return false;
    msg = r.buf.get();
    batch_bufs_.push_back(std::move(r.buf));
  }
  out->name = msg;
  out->name_len = h.name_len;
  out->data = msg + h.name_len;
  out->data_len = h.total_len - h.name_len;
  out->sender_pid = h.sender_pid;
  out->flags = h.flags & ~(kFirst | kLast);
  out->call_id = h.call_id;
  ++stats_->received;
  stats_->received_bytes += out->data_len;
  return true;
}

void Endpoint::release() {
  batch_bufs_.clear();
  released_.clear();
  for (std::uint32_t k = 0; k < nslots_; ++k) {
    InRing& r = in_[k];
    if (!r.read) continue;
    r.read = false;
    if (r.consumer.release()) released_.push_back(k);
  }
  if (released_.empty()) return;
  // Seq_cst fence: orders the tail stores before the loads of
  // producer_waiting; pairs with the fence in await_space(), so either the
  // producer sees the space or we see its flag.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  for (std::uint32_t k : released_) {
    RingCtl* ctl = in_[k].consumer.ctl();
    if (ctl->producer_waiting.load(std::memory_order_relaxed) != 0 &&
        ctl->producer_waiting.exchange(0, std::memory_order_relaxed) != 0) {
      wake(k);
    }
  }
}

bool Endpoint::inbox_pending() {
  for (InRing& r : in_) {
    if (r.consumer.pending()) return true;
  }
  return false;
}

}  // namespace ngx_ipc
