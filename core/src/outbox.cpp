// ngx_ipc core: an endpoint's send side (see outbox.h).

#include "ngx_ipc/outbox.h"

#include <cerrno>
#include <new>

#include "ngx_ipc/endpoint.h"

namespace ngx_ipc {

Outbox::Outbox(ShmHeader* shm, std::uint32_t self, CoreStats* stats, Wakeup* wakeup,
               const CoreLog* log)
    : shm_(shm), self_(self), stats_(stats), wakeup_(wakeup), log_(log), out_(shm->nslots) {}

void Outbox::attach() {
  for (std::uint32_t k = 0; k < shm_->nslots; ++k) {
    out_[k].producer.attach(ring_ctl(shm_, self_, k), ring_data(shm_, self_, k), shm_->ring_size);
  }
}

Status Outbox::enqueue(std::uint32_t k, const MessageMeta& meta, const unsigned char* name,
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
      (*log_)("no memory for the send backlog", ENOMEM);
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

void Outbox::unqueue(std::uint32_t k, std::size_t backlog_before, std::size_t data_len) {
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

bool Outbox::flush_ring(std::uint32_t k) {
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
  if (o.producer.publish()) wakeup_->notify(k);
  return o.backlog.empty();
}

bool Outbox::flush(std::uint32_t k) {
  if (flush_ring(k)) {
    Wakeup::await_space_end(out_[k].producer.ctl());
    return true;
  }
  await_space(k);
  return out_[k].backlog.empty();
}

// The fence pair B of wakeup.h: either this process sees the space the
// reader freed (flush_ring() re-reads tail), or the reader sees the flag.
void Outbox::await_space(std::uint32_t k) {
  RingCtl* ctl = out_[k].producer.ctl();
  Wakeup::await_space_begin(ctl);
  if (flush_ring(k)) Wakeup::await_space_end(ctl);
}

// For the status page: the backlog's figures on the ring's head line,
// which this process stores to anyway. Only called where the backlog
// changed, never on a send that the ring took whole.
void Outbox::publish_backlog(std::uint32_t k) {
  RingCtl* ctl = ring_ctl(shm_, self_, k);
  ctl->backlog_bytes.store(out_[k].backlog_bytes, std::memory_order_relaxed);
  ctl->backlog_msgs.store(out_[k].backlog.size(), std::memory_order_relaxed);
}

void Outbox::drop_backlog(std::uint32_t k) {
  OutRing& o = out_[k];
  stats_->dropped += o.backlog.size();
  stats_->queued_bytes -= o.backlog_bytes;
  o.backlog_bytes = 0;
  o.backlog.clear();
  publish_backlog(k);
}

}  // namespace ngx_ipc
