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
    // counted at its first record: its remaining fragments are not
    // counted again
    state_ = State::kSkippingCounted;
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
        h.sender_pid != first_.sender_pid || h.sender_incarnation != first_.sender_incarnation) {
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
      reassemblers_(shm->nslots) {
  // receive() may then collect a batch without allocating (no bad_alloc
  // halfway through a batch): it returns kMaxBatch messages at most
  batch_bufs_.reserve(kMaxBatch);
}

void Inbox::attach(std::uint32_t incarnation, bool skip_unread, std::uint64_t max_data) {
  incarnation_ = incarnation;
  max_data_ = max_data;
  consumer_.attach(inbox_ctl(shm_, self_), inbox_data(shm_, self_), shm_->ring_size,
                   shm_->max_message, nslots_);
  for (Reassembler& r : reassemblers_) r = Reassembler();
  if (skip_unread) {
    consumer_.reset();  // what a predecessor left unread was not ours
    read_ = true;
    release();
  }
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
  if (n == 0) {
    release();
    consumer_.sync_msgs();  // the status page's message counts, after a crash
  }
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
  RecordView v;
  // A batch ends at kBatchBytes once it holds a message: never before, or
  // a message bigger than that would never complete.
  while (n < max && (n == 0 || bytes < kBatchBytes)) {
    Consumer::Next st = consumer_.next(&v);
    if (st == Consumer::Next::kEmpty) break;
    read_ = true;
    if (st == Consumer::Next::kCorrupt) {
      // Every sender's message in flight goes with it: the inbox is one
      // ring now. (Only a process that can write the mapping can do this.)
      (*log_)("corrupt record in an inbox, inbox reset", 0);
      ++stats_->resets;
      for (Reassembler& r : reassemblers_) r.drop_partial(stats_);
      stats_->dropped += consumer_.reset();  // what it skips is lost too
      break;
    }
    bytes += v.payload_len;
    Reassembler& r = reassemblers_[v.header.sender_slot];
    if (r.take(v, incarnation_, max_data_, &out[n], &batch_bufs_, stats_, *log_)) ++n;
  }
  return n;
}

void Inbox::release() {
  batch_bufs_.clear();
  if (!read_) return;
  read_ = false;
  if (consumer_.release()) wakeup_->after_release();
}

bool Inbox::pending() { return consumer_.pending(); }

}  // namespace ngx_ipc
