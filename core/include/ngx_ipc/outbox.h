// ngx_ipc core: an endpoint's send side.
//
// One Producer per destination ring, plus a private backlog per destination
// for what the ring cannot take yet (the endpoint bounds it by
// queue_limit). Messages go to the ring directly while the backlog is
// empty, so they stay in order whatever their sizes; flush_ring() moves
// the backlog on as the reader frees space. The backlog's figures are
// stored beside the ring's head for the status page.
//
// Not thread-safe: one per endpoint, used by its process's one thread.

#ifndef NGX_IPC_OUTBOX_H
#define NGX_IPC_OUTBOX_H

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "ngx_ipc/layout.h"
#include "ngx_ipc/ring.h"
#include "ngx_ipc/wakeup.h"

namespace ngx_ipc {

enum class Status : int;

class Outbox {
 public:
  Outbox(ShmHeader* shm, std::uint32_t self, CoreStats* stats, Wakeup* wakeup, const CoreLog* log);

  // Binds the producers to this slot's rings (Endpoint::start()).
  void attach();

  std::uint64_t backlog_bytes(std::uint32_t k) const { return out_[k].backlog_bytes; }
  bool backlog_empty(std::uint32_t k) const { return out_[k].backlog.empty(); }
  std::size_t backlog_size(std::uint32_t k) const { return out_[k].backlog.size(); }

  // Writes one message for slot k, to the ring as far as it takes it (when
  // the backlog is empty) and the rest to the backlog; nothing is visible
  // to the reader before publish(). kOk or kNoMemory (nothing written).
  Status enqueue(std::uint32_t k, const MessageMeta& meta, const unsigned char* name,
                 const unsigned char* data, std::size_t data_len);
  // Takes back what enqueue() accepted for slot k in this call (backlog
  // held backlog_before entries before it).
  void unqueue(std::uint32_t k, std::size_t backlog_before, std::size_t data_len);
  // Makes what enqueue() wrote visible and wakes slot k if it sleeps; with a
  // backlog left, asks slot k to wake this process when it frees space.
  void publish(std::uint32_t k) {
    if (out_[k].producer.publish()) wakeup_->notify(k);
    if (!out_[k].backlog.empty()) await_space(k);
  }
  // Moves slot k's backlog on as far as the ring takes it; true if it is
  // now empty (and no wake-up for space is wanted any more).
  bool flush(std::uint32_t k);
  // Drops slot k's backlog (its reader is gone), counting its messages.
  void drop_backlog(std::uint32_t k);

 private:
  struct Pending {
    MessageMeta meta;
    std::uint64_t start;  // payload offset of buf[0]
    std::uint64_t len;    // bytes in buf
    std::uint64_t done;   // bytes of buf already written
    std::unique_ptr<unsigned char[]> buf;
  };
  struct OutRing {
    Producer producer;
    std::deque<Pending> backlog;
    std::uint64_t backlog_bytes = 0;
  };

  bool flush_ring(std::uint32_t k);
  void await_space(std::uint32_t k);
  void publish_backlog(std::uint32_t k);

  ShmHeader* shm_;
  std::uint32_t self_;
  CoreStats* stats_;
  Wakeup* wakeup_;
  const CoreLog* log_;
  std::vector<OutRing> out_;
};

}  // namespace ngx_ipc

#endif  // NGX_IPC_OUTBOX_H
