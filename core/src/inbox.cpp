// ngx_ipc core: an endpoint's receive side (see inbox.h).

#include "ngx_ipc/inbox.h"

#include <cerrno>
#include <cstring>
#include <new>

#include "ngx_ipc/endpoint.h"

namespace ngx_ipc {

void Reassembler::drop_partial(CoreStats* stats) {
  if (state_ == State::kAssembling) {
    ++stats->dropped;
    // its remaining fragments, if any come, are not counted again
    state_ = State::kSkippingCounted;
  } else if (state_ == State::kDiscarding) {
    state_ = State::kIdle;
  }
  buf_.reset();
}

bool Reassembler::take(const RecordView& v, std::uint32_t incarnation, std::uint64_t max_data,
                       Delivery* out, std::vector<std::unique_ptr<unsigned char[]>>* keep,
                       CoreStats* stats, const CoreLog& log) {
  const RecordHeader& h = v.header;
  // A broadcast addressed to the slot (incarnation 0) is for whoever holds
  // it; anything else, a broadcast too (the reload bridge addresses each
  // process), only for the incarnation it names.
  bool mine = h.target_incarnation == incarnation ||
              ((h.flags & kBroadcast) != 0 && h.target_incarnation == 0);
  const unsigned char* msg;
  if (h.flags & kFirst) {
    drop_partial(stats);  // a predecessor of the sender died mid-message
    state_ = State::kIdle;
    if (mine && h.total_len - h.name_len > max_data) {
      // from a worker of another configuration, with a larger limit
      log("a message over this worker's ipc_max_message was dropped", 0);
      mine = false;
    }
    if (!mine) {
      ++stats->dropped;  // addressed to a previous process in this slot, or too big
      if (!(h.flags & kLast)) state_ = State::kDiscarding;
      first_ = h;
      filled_ = v.payload_len;
      return false;
    }
    if (h.flags & kLast) {
      msg = v.payload;
    } else {
      buf_.reset(new (std::nothrow) unsigned char[h.total_len]);
      state_ = State::kAssembling;
      first_ = h;
      filled_ = v.payload_len;
      if (!buf_) {
        log("no memory to reassemble a message, dropped", ENOMEM);
        ++stats->dropped;
        state_ = State::kDiscarding;
        return false;
      }
      std::memcpy(buf_.get(), v.payload, v.payload_len);
      return false;
    }
  } else {
    if (!in_message() || h.offset != filled_ || h.total_len != first_.total_len ||
        h.sender_pid != first_.sender_pid) {
      // Its first fragment was read by a predecessor of this process, or the
      // sender restarted: the message cannot be completed.
      drop_partial(stats);
      if (h.flags & kLast) {
        if (state_ != State::kSkippingCounted) ++stats->dropped;  // counted once, at its end
        state_ = State::kIdle;
      }
      return false;
    }
    if (state_ == State::kAssembling) std::memcpy(buf_.get() + filled_, v.payload, v.payload_len);
    filled_ += v.payload_len;
    if (!(h.flags & kLast)) return false;
    bool discard = state_ == State::kDiscarding;
    state_ = State::kIdle;
    if (discard) return false;
    msg = buf_.get();
    keep->push_back(std::move(buf_));
  }
  out->name = msg;
  out->name_len = h.name_len;
  out->data = msg + h.name_len;
  out->data_len = h.total_len - h.name_len;
  out->sender_pid = h.sender_pid;
  out->flags = h.flags & ~(kFirst | kLast);
  out->call_id = h.call_id;
  ++stats->received;
  stats->received_bytes += out->data_len;
  return true;
}

Inbox::Inbox(ShmHeader* shm, std::uint32_t self, CoreStats* stats, Wakeup* wakeup,
             const CoreLog* log)
    : shm_(shm),
      self_(self),
      nslots_(shm->nslots),
      stats_(stats),
      wakeup_(wakeup),
      log_(log),
      in_(shm->nslots) {
  released_.reserve(shm->nslots);
  // receive() may then collect a batch without allocating (no bad_alloc
  // halfway through a batch): it returns kMaxBatch messages at most
  batch_bufs_.reserve(kMaxBatch);
}

void Inbox::attach(std::uint32_t incarnation, bool skip_unread, std::uint64_t max_data) {
  incarnation_ = incarnation;
  max_data_ = max_data;
  for (std::uint32_t k = 0; k < nslots_; ++k) {
    InRing& r = in_[k];
    r.consumer.attach(ring_ctl(shm_, k, self_), ring_data(shm_, k, self_), shm_->ring_size,
                      shm_->max_message);
    r.reassembler = Reassembler();
    if (skip_unread) {
      r.consumer.reset();  // what a predecessor left unread was not ours
      r.read = true;
    }
  }
  if (skip_unread) release();
}

int Inbox::receive(Delivery* out, int max, bool arm) {
  release();
  if (max > kMaxBatch) max = kMaxBatch;
  int n = scan(out, max);
  if (n == 0 && arm) {
    // The fence pair A of wakeup.h: look again once marked asleep.
    wakeup_->arm_begin();
    n = scan(out, max);
    if (n != 0) wakeup_->arm_cancel();
  }
  // Records that were read but not delivered (dropped) free their space now.
  if (n == 0) release();
  return n;
}

bool Inbox::rearm() {
  wakeup_->arm_begin();  // the same handshake as in receive()
  if (!pending()) return false;
  wakeup_->arm_cancel();
  return true;
}

int Inbox::scan(Delivery* out, int max) {
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
        (*log_)("corrupt record in an inbox ring, ring reset", 0);
        ++stats_->resets;
        r.reassembler.drop_partial(stats_);
        r.consumer.reset();
        break;
      }
      bytes += v.payload_len;
      if (r.reassembler.take(v, incarnation_, max_data_, &out[n], &batch_bufs_, stats_, *log_)) ++n;
    }
  }
  rr_ = (rr_ + 1) % nslots_;
  return n;
}

void Inbox::release() {
  batch_bufs_.clear();
  released_.clear();
  for (std::uint32_t k = 0; k < nslots_; ++k) {
    InRing& r = in_[k];
    if (!r.read) continue;
    r.read = false;
    if (r.consumer.release()) released_.push_back(k);
  }
  wakeup_->after_release(released_);
}

bool Inbox::pending() {
  for (InRing& r : in_) {
    if (r.consumer.pending()) return true;
  }
  return false;
}

}  // namespace ngx_ipc
