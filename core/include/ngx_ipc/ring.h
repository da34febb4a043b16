// ngx_ipc core: one receiver's inbox, a ring of framed records.
//
// The ring lives in shared memory (InboxCtl + ring_size bytes). Every
// sender writes it, one at a time, while it holds the inbox's lock
// (inbox_lock.h): InboxWriter is a sender's private half, Consumer the
// receiver's. Records are 8-byte aligned and never straddle the end of
// the ring: a writer that reaches the end pads it (kPad) and goes on at
// offset 0. A record becomes visible only when the writer stores head with
// release after writing all of it, so the consumer never sees half a
// record, even if the writer dies mid-write: the next holder of the lock
// starts from the published head and overwrites what it left.
//
// Memory ordering, in one line per pair (the argument is in docs/):
//   writer head.store(release)   -> consumer head.load(acquire):
//       publishes the record bytes written before the store;
//   writer lock.store(0, release) -> next writer lock CAS(acquire):
//       hands over head (and the bytes before it) to the next holder;
//   consumer tail.store(release) -> writer tail.load(acquire):
//       publishes that the consumer is done reading the bytes before tail,
//       so a writer may overwrite them.

#ifndef NGX_IPC_RING_H
#define NGX_IPC_RING_H

#include <cstdint>
#include <cstring>

#include "ngx_ipc/layout.h"

namespace ngx_ipc {

// A message's payload (name then data) from some offset on, as up to two
// pieces, so the writer copies straight from the caller's name and data.
struct Payload {
  const unsigned char* a = nullptr;
  std::uint64_t a_len = 0;
  const unsigned char* b = nullptr;
  std::uint64_t b_len = 0;

  std::uint64_t size() const { return a_len + b_len; }
  void copy_out(unsigned char* dst, std::uint64_t from, std::uint64_t n) const {
    if (from < a_len) {
      std::uint64_t k = a_len - from < n ? a_len - from : n;
      std::memcpy(dst, a + from, k);
      dst += k;
      n -= k;
      from = a_len;
    }
    if (n != 0) std::memcpy(dst, b + (from - a_len), n);
  }
};

// Fields of a message that every fragment repeats.
struct MessageMeta {
  std::uint16_t flags = 0;  // kBroadcast, kRequest, kReply, status
  std::int32_t sender_pid = 0;
  std::uint32_t target_incarnation = 0;
  std::uint32_t name_len = 0;
  std::uint32_t call_id = 0;
  std::uint32_t sender_slot = 0;
  std::uint32_t sender_incarnation = 0;
  std::uint64_t total_len = 0;  // name_len + data length
};

// A sender's writes into one inbox, made only while it holds the inbox's
// lock: begin() after taking it, publish() before giving it back.
class InboxWriter {
 public:
  void attach(InboxCtl* ctl, unsigned char* data, std::uint64_t cap) {
    ctl_ = ctl;
    data_ = data;
    cap_ = cap;
    mask_ = cap - 1;
    // Messages up to small_ bytes always travel as one record; larger ones
    // are split, in fragments of at least min_chunk_ bytes.
    small_ = cap / 4 < 4096 ? cap / 4 : 4096;
    min_chunk_ = cap / 8 < 1024 ? cap / 8 : 1024;
  }

  // With the lock held: where the previous holder left head. Relaxed: the
  // lock's acquire made its release of the lock, and so its stores of
  // head and the record bytes before it, visible. After a takeover
  // (took_over) the previous holder died holding the lock and released
  // nothing: head is read with a read-modify-write, which reads the last
  // value stored (its last publish). What it wrote past that is garbage
  // that we overwrite.
  void begin(bool took_over = false) {
    if (took_over) {
      head_ = published_ = ctl_->head.fetch_add(0, std::memory_order_acquire);
      msgs_ = ctl_->head_msgs.fetch_add(0, std::memory_order_relaxed);
    } else {
      head_ = published_ = ctl_->head.load(std::memory_order_relaxed);
      msgs_ = ctl_->head_msgs.load(std::memory_order_relaxed);
    }
    cached_tail_ = ctl_->tail.load(std::memory_order_acquire);
  }

  // Appends records carrying the payload bytes of message m from offset
  // `start` on (p holds exactly those bytes; a payload is never empty, since
  // a name has at least one byte). Writes as many as fit and returns how many
  // payload bytes it wrote. Nothing is visible until publish().
  std::uint64_t write(const MessageMeta& m, const Payload& p, std::uint64_t start) {
    std::uint64_t done = 0;
    const std::uint64_t total = p.size();
    while (done < total) {
      std::uint64_t remaining = total - done;
      bool whole = (start + done == 0) && remaining <= small_;
      std::uint64_t need = align8(sizeof(RecordHeader) + (whole ? remaining : min_chunk_));
      if (!ensure_free(need)) break;
      std::uint64_t contig = cap_ - (head_ & mask_);
      if (contig < need) {
        if (!ensure_free(contig + need)) break;
        write_pad(contig);
        contig = cap_;
      }
      std::uint64_t room = free_bytes();
      if (room > contig) room = contig;
      room &= ~std::uint64_t{7};
      std::uint64_t chunk = room - sizeof(RecordHeader);
      if (chunk > remaining) chunk = remaining;  // room <= cap <= 1 GiB: fits in size

      std::uint64_t off = start + done;
      RecordHeader h;
      h.size = static_cast<std::uint32_t>(sizeof(RecordHeader) + chunk);
      h.magic = kRecordMagic;
      h.flags = static_cast<std::uint16_t>(m.flags | (off == 0 ? kFirst : 0) |
                                           (off + chunk == m.total_len ? kLast : 0));
      h.sender_pid = m.sender_pid;
      h.target_incarnation = m.target_incarnation;
      h.name_len = m.name_len;
      h.call_id = m.call_id;
      h.sender_slot = m.sender_slot;
      h.sender_incarnation = m.sender_incarnation;
      h.total_len = m.total_len;
      h.offset = off;
      unsigned char* at = data_ + (head_ & mask_);
      std::memcpy(at, &h, sizeof h);
      p.copy_out(at + sizeof h, done, chunk);
      head_ += align8(h.size);
      if (h.flags & kLast) ++msgs_;
      done += chunk;
    }
    return done;
  }

  // Makes everything written since begin() visible to the consumer.
  // Returns false if there was nothing new.
  bool publish() {
    if (head_ == published_) return false;
    // Status only; before head, so whoever sees head sees at least the
    // messages it holds. Release: a reader that sees this count sees our
    // lock taken (Consumer::sync_msgs()).
    ctl_->head_msgs.store(msgs_, std::memory_order_release);
    // Release: publishes the record bytes written above to the consumer's
    // acquire load of head.
    ctl_->head.store(head_, std::memory_order_release);
    published_ = head_;
    return true;
  }

  InboxCtl* ctl() const { return ctl_; }
  // Bytes free as far as this writer knows (its cached tail).
  std::uint64_t room() const { return free_bytes(); }

 private:
  std::uint64_t free_bytes() const { return cap_ - (head_ - cached_tail_); }

  bool ensure_free(std::uint64_t need) {
    if (free_bytes() >= need) return true;
    // Acquire: pairs with the consumer's release store of tail, so the bytes
    // it released are no longer read when we overwrite them.
    cached_tail_ = ctl_->tail.load(std::memory_order_acquire);
    return free_bytes() >= need;
  }

  void write_pad(std::uint64_t n) {
    RecordHeader h;
    h.size = static_cast<std::uint32_t>(n);
    h.magic = kRecordMagic;
    h.flags = kPad;
    std::memcpy(data_ + (head_ & mask_), &h, kPadRecordSize);
    head_ += n;
  }

  InboxCtl* ctl_ = nullptr;
  unsigned char* data_ = nullptr;
  std::uint64_t cap_ = 0;
  std::uint64_t mask_ = 0;
  std::uint64_t head_ = 0;       // private copy while the lock is held
  std::uint64_t published_ = 0;  // last value stored to ctl_->head
  std::uint64_t msgs_ = 0;       // messages completed in the ring (kLast written)
  std::uint64_t cached_tail_ = 0;
  std::uint64_t small_ = 0;
  std::uint64_t min_chunk_ = 0;
};

// A record as the consumer sees it: a validated copy of the header and a
// pointer to its payload inside the ring, valid until the tail passes it.
struct RecordView {
  RecordHeader header;
  const unsigned char* payload;
  std::uint64_t payload_len;
};

class Consumer {
 public:
  enum class Next { kEmpty, kRecord, kCorrupt };

  void attach(InboxCtl* ctl, unsigned char* data, std::uint64_t cap, std::uint64_t max_total,
              std::uint32_t nslots) {
    ctl_ = ctl;
    data_ = data;
    cap_ = cap;
    mask_ = cap - 1;
    max_total_ = max_total;
    nslots_ = nslots;
    read_ = released_ = ctl->tail.load(std::memory_order_relaxed);
    read_msgs_ = ctl->tail_msgs.load(std::memory_order_relaxed);
    cached_head_ = ctl->head.load(std::memory_order_acquire);
  }

  // Reads the next record past the read position (padding skipped) and
  // moves the read position past it. The bytes stay reserved until release().
  // kCorrupt: the record header is invalid; the caller resets the ring.
  Next next(RecordView* out) {
    for (;;) {
      if (read_ == cached_head_) {
        // Acquire: pairs with the writers' release store of head; makes
        // the records before it readable.
        cached_head_ = ctl_->head.load(std::memory_order_acquire);
        if (read_ == cached_head_) return Next::kEmpty;
      }
      std::uint64_t avail = cached_head_ - read_;
      std::uint64_t pos = read_ & mask_;
      if (avail > cap_ || avail < kPadRecordSize || (read_ & 7) != 0) return Next::kCorrupt;
      const unsigned char* at = data_ + pos;
      RecordHeader h;
      std::memcpy(&h, at, kPadRecordSize);
      if (h.magic != kRecordMagic) return Next::kCorrupt;
      if (h.flags & kPad) {
        if (h.size != cap_ - pos || h.size > avail) return Next::kCorrupt;
        read_ += h.size;
        continue;
      }
      if (h.size < sizeof h || pos + h.size > cap_ || align8(h.size) > avail) {
        return Next::kCorrupt;
      }
      std::memcpy(&h, at, sizeof h);
      std::uint64_t len = h.size - sizeof h;
      bool first = h.flags & kFirst, last = h.flags & kLast;
      if (h.name_len == 0 || h.name_len > kMaxNameLen || h.total_len < h.name_len ||
          h.total_len - h.name_len > max_total_ || h.offset > h.total_len ||
          len > h.total_len - h.offset || first != (h.offset == 0) ||
          last != (h.offset + len == h.total_len) || h.sender_slot >= nslots_) {
        return Next::kCorrupt;
      }
      out->header = h;
      out->payload = at + sizeof h;
      out->payload_len = len;
      read_ += align8(h.size);
      if (last) ++read_msgs_;
      return Next::kRecord;
    }
  }

  // Gives the bytes read so far back to the writers. Returns false if
  // nothing new was read.
  bool release() {
    if (read_ == released_) return false;
    // Release: publishes that we are done reading the bytes before read_,
    // pairs with the writers' acquire load of tail.
    ctl_->tail.store(read_, std::memory_order_release);
    ctl_->tail_msgs.store(read_msgs_, std::memory_order_relaxed);  // status only
    released_ = read_;
    return true;
  }

  // Skips everything published so far (after a corrupt record). Returns
  // how many messages ended in what it skipped, as the writers counted
  // them (head_msgs), at most what the ring can hold.
  std::uint64_t reset() {
    cached_head_ = ctl_->head.load(std::memory_order_acquire);
    read_ = cached_head_;
    std::uint64_t msgs = ctl_->head_msgs.load(std::memory_order_relaxed);
    std::uint64_t skipped = msgs - read_msgs_;
    read_msgs_ = msgs;
    return skipped > cap_ / sizeof(RecordHeader) ? cap_ / sizeof(RecordHeader) : skipped;
  }

  // Status only: with everything published read and released, and no
  // writer between its stores of head_msgs and head, head_msgs counts
  // exactly the messages read. A process killed between two of these
  // stores (a writer in publish(), a reader in release()) leaves the
  // counts apart for good; the reader, idle, puts them back together.
  // Acquire loads, in this order: a head_msgs stored by a writer since we
  // read head at read_ happens after that writer took the lock, so the
  // lock load sees it held, or given back (and then head moved).
  void sync_msgs() {
    if (read_ != cached_head_ || read_ != released_) return;
    std::uint64_t m = ctl_->head_msgs.load(std::memory_order_acquire);
    if (m == read_msgs_) return;
    if (ctl_->lock.load(std::memory_order_acquire) != 0) return;
    if (ctl_->head.load(std::memory_order_acquire) != read_) return;
    read_msgs_ = m;
    ctl_->tail_msgs.store(m, std::memory_order_relaxed);
  }

  // True if writers have published records not yet read.
  bool pending() {
    if (read_ != cached_head_) return true;
    cached_head_ = ctl_->head.load(std::memory_order_acquire);
    return read_ != cached_head_;
  }

  InboxCtl* ctl() const { return ctl_; }

 private:
  InboxCtl* ctl_ = nullptr;
  const unsigned char* data_ = nullptr;
  std::uint64_t cap_ = 0;
  std::uint64_t mask_ = 0;
  std::uint64_t max_total_ = 0;
  std::uint32_t nslots_ = 0;
  std::uint64_t read_ = 0;       // private read position
  std::uint64_t released_ = 0;   // last value stored to ctl_->tail
  std::uint64_t read_msgs_ = 0;  // messages whose last record was read
  std::uint64_t cached_head_ = 0;
};

}  // namespace ngx_ipc

#endif  // NGX_IPC_RING_H
