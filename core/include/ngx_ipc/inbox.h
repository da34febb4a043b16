// ngx_ipc core: an endpoint's receive side.
//
// One Consumer for this slot's inbox ring, which every sender writes, and a
// Reassembler per sender slot for the messages that came in fragments
// (the fragments of different senders interleave). receive() takes a
// batch, and arms the slot (wake-up handshake A of wakeup.h) when the
// inbox is empty; release() gives the space of the last batch back to the
// senders (handshake B).
//
// Not thread-safe: one per endpoint, used by its process's one thread.

#ifndef NGX_IPC_INBOX_H
#define NGX_IPC_INBOX_H

#include <cstdint>
#include <memory>
#include <vector>

#include "ngx_ipc/layout.h"
#include "ngx_ipc/ring.h"
#include "ngx_ipc/wakeup.h"

namespace ngx_ipc {

struct Delivery;

// The messages of one sender slot, record by record. A message written in
// several records (kFirst ... kLast) is copied into a buffer of its own; a
// message that cannot be completed (its sender died mid-message, or this
// process came in after its first record) is dropped and counted once.
class Reassembler {
 public:
  enum class State {
    kIdle,             // between messages
    kAssembling,       // copying a message for this process into buf_
    kDiscarding,       // skipping a message not for us (already counted)
    kSkippingCounted,  // skipping the rest of a message counted as dropped
  };

  // Feeds one record; true if it completes a message for this process
  // (incarnation), described in *out. A buffer it filled moves to *keep,
  // which must hold it until the batch is released.
  bool take(const RecordView& v, std::uint32_t incarnation, std::uint64_t max_data, Delivery* out,
            std::vector<std::unique_ptr<unsigned char[]>>* keep, CoreStats* stats,
            const CoreLog& log);
  // The ring is reset (corrupt) or a new message starts: what was being
  // assembled is dropped and counted.
  void drop_partial(CoreStats* stats);
  State state() const { return state_; }

 private:
  bool in_message() const { return state_ == State::kAssembling || state_ == State::kDiscarding; }

  State state_ = State::kIdle;
  RecordHeader first_{};
  std::uint64_t filled_ = 0;
  std::unique_ptr<unsigned char[]> buf_;
};

class Inbox {
 public:
  Inbox(ShmHeader* shm, std::uint32_t self, CoreStats* stats, Wakeup* wakeup, const CoreLog* log);

  // Binds the consumer to this slot's inbox, for a process of this
  // incarnation (Endpoint::start()). skip_unread: what the inbox holds now
  // is left unread (a slot that no record may address before it starts).
  // max_data: this process's own limit on a message's data (in a mapping
  // shared by configurations with other limits, a bigger message is
  // dropped and counted, not taken as corrupt).
  void attach(std::uint32_t incarnation, bool skip_unread = false,
              std::uint64_t max_data = ~std::uint64_t{0});

  // See Endpoint::receive().
  int receive(Delivery* out, int max, bool arm);
  void release();
  bool pending();
  // Arms the slot again after a busy poll: true if records came meanwhile.
  bool rearm();

 private:
  int scan(Delivery* out, int max);

  ShmHeader* shm_;
  std::uint32_t self_;
  std::uint32_t nslots_;
  std::uint32_t incarnation_ = 0;
  std::uint64_t max_data_ = ~std::uint64_t{0};
  CoreStats* stats_;
  Wakeup* wakeup_;
  const CoreLog* log_;
  Consumer consumer_;
  bool read_ = false;                      // read something since the last release
  std::vector<Reassembler> reassemblers_;  // by sender slot
  std::vector<std::unique_ptr<unsigned char[]>> batch_bufs_;  // reassembled, in a batch
};

}  // namespace ngx_ipc

#endif  // NGX_IPC_INBOX_H
