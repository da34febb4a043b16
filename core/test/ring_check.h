// ngx_ipc core tests: messages and a record checker for the tests that
// drive an inbox ring directly (InboxWriter, InboxLock, Consumer), without
// endpoints: ring_test.cpp and ring_writers_test.cpp.
//
// A test message is a pattern seeded by its sender slot and its sequence
// number, so the checker verifies every byte of every sender's messages,
// their order per sender and the continuity of each sender's fragment
// offsets, whatever the interleaving of the senders' records.

#ifndef NGX_IPC_TEST_RING_CHECK_H
#define NGX_IPC_TEST_RING_CHECK_H

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "ngx_ipc/inbox_lock.h"
#include "ngx_ipc/ring.h"
#include "test_util.h"

namespace ngx_ipc::test {

// Fields every test record carries, checked by RecordChecker.
constexpr std::int32_t kPidBase = 4000;  // sender_pid = kPidBase + sender slot
constexpr std::uint32_t kTargetIncarnation = 7;

inline std::uint64_t ring_message_seed(std::uint32_t sender, std::uint64_t seq) {
  return (static_cast<std::uint64_t>(sender) << 40) ^ seq;
}

// One message: the payload (name then data) is a pattern seeded by
// (sender, seq), and the name is its first name_len bytes.
struct TestMessage {
  std::uint32_t sender;
  std::uint64_t seq;
  std::vector<unsigned char> bytes;
  std::uint32_t name_len;
  std::uint32_t incarnation = 1;

  TestMessage(std::uint32_t s, std::uint64_t q, std::size_t len) : sender(s), seq(q), bytes(len) {
    fill_pattern(bytes.data(), len, ring_message_seed(s, q));
    name_len = static_cast<std::uint32_t>(1 + q % std::min<std::size_t>(len, 40));
  }
  std::uint64_t size() const { return bytes.size(); }
  MessageMeta meta() const {
    MessageMeta m;
    m.sender_pid = kPidBase + static_cast<std::int32_t>(sender);
    m.target_incarnation = kTargetIncarnation;
    m.name_len = name_len;
    m.call_id = static_cast<std::uint32_t>(seq);
    m.sender_slot = sender;
    m.sender_incarnation = incarnation;
    m.total_len = bytes.size();
    return m;
  }
  // At most n payload bytes from byte `from` on, in two pieces when `from`
  // is in the name (as the endpoint passes a name and its data).
  Payload from(std::uint64_t from, std::uint64_t n = ~std::uint64_t{0}) const {
    std::uint64_t end = bytes.size() - from < n ? bytes.size() : from + n;
    Payload p;
    p.a = bytes.data() + from;
    if (from < name_len && end > name_len) {
      p.a_len = name_len - from;
      p.b = bytes.data() + name_len;
      p.b_len = end - name_len;
    } else {
      p.a_len = end - from;
    }
    return p;
  }
  // Writes from `done` on, at most n bytes, as far as the ring takes them.
  std::uint64_t write(InboxWriter& w, std::uint64_t done,
                      std::uint64_t n = ~std::uint64_t{0}) const {
    return w.write(meta(), from(done, n), done);
  }
};

// Reassembles each sender's records apart and checks each message against
// its pattern, in order per sender (seq 0, 1, 2, ... from each sender).
class RecordChecker {
 public:
  // Feeds one record; false (with a gtest failure) on any inconsistency.
  bool feed(const RecordView& v) {
    const RecordHeader& h = v.header;
    ++records_;
    record_bytes_ += align8(h.size);
    if (h.magic != kRecordMagic || (h.flags & kPad)) return fail(h, "bad record");
    Sender& s = senders_[h.sender_slot];
    ++s.records;
    for (const auto& [slot, other] : senders_) {
      if (slot != h.sender_slot && other.active) {
        ++interleaved_;  // a record while another sender's message is open
        break;
      }
    }
    if (h.flags & kFirst) {
      if (s.active) return fail(h, "kFirst while a message of this sender is open");
      if (h.offset != 0) return fail(h, "kFirst at offset != 0");
      s.active = true;
      s.buf.assign(h.total_len, 0);
      s.filled = 0;
      s.first = h;
      s.fragments = 0;
    } else if (!s.active) {
      return fail(h, "fragment without kFirst");
    }
    if (h.offset != s.filled) return fail(h, "fragment offset not continuous");
    if (h.total_len != s.first.total_len || h.call_id != s.first.call_id ||
        h.sender_incarnation != s.first.sender_incarnation) {
      return fail(h, "fragment of another message");
    }
    if (v.payload_len > h.total_len - s.filled) return fail(h, "fragment too long");
    std::copy(v.payload, v.payload + v.payload_len, s.buf.begin() + s.filled);
    s.filled += v.payload_len;
    ++s.fragments;
    max_fragments_ = std::max(max_fragments_, s.fragments);
    if (!(h.flags & kLast)) {
      if (s.filled == h.total_len) return fail(h, "complete without kLast");
      return true;
    }
    if (s.filled != h.total_len) return fail(h, "kLast before the end");
    s.active = false;
    std::uint64_t seq = s.messages;
    if (h.call_id != static_cast<std::uint32_t>(seq)) return fail(h, "out of order");
    if (h.sender_pid != kPidBase + static_cast<std::int32_t>(h.sender_slot) ||
        h.target_incarnation != kTargetIncarnation) {
      return fail(h, "meta");
    }
    TestMessage expect(h.sender_slot, seq, s.buf.size());
    if (h.name_len != expect.name_len) return fail(h, "name_len");
    if (s.buf != expect.bytes) return fail(h, "payload bytes");
    ++s.messages;
    ++messages_;
    return true;
  }

  // Reads everything published; false on a failure.
  bool consume(Consumer& c) {
    RecordView v;
    for (int i = 0; i < 1000000; ++i) {
      Consumer::Next st = c.next(&v);
      if (st == Consumer::Next::kEmpty) return true;
      if (st == Consumer::Next::kCorrupt) {
        ADD_FAILURE() << "kCorrupt after record " << records_;
        return false;
      }
      if (!feed(v)) return false;
    }
    ADD_FAILURE() << "consume did not end";
    return false;
  }

  std::uint64_t messages(std::uint32_t sender) const {
    auto it = senders_.find(sender);
    return it == senders_.end() ? 0 : it->second.messages;
  }
  // True if a message of this sender has records but not its last one.
  bool open(std::uint32_t sender) const {
    auto it = senders_.find(sender);
    return it != senders_.end() && it->second.active;
  }
  std::uint64_t records(std::uint32_t sender) const {
    auto it = senders_.find(sender);
    return it == senders_.end() ? 0 : it->second.records;
  }

  std::uint64_t messages_ = 0;      // complete, all senders
  std::uint64_t records_ = 0;       // padding excluded
  std::uint64_t record_bytes_ = 0;  // aligned bytes of records, padding excluded
  std::uint64_t max_fragments_ = 0;
  std::uint64_t interleaved_ = 0;  // records that came inside another sender's message

 private:
  struct Sender {
    bool active = false;
    RecordHeader first{};
    std::vector<unsigned char> buf;
    std::uint64_t filled = 0;
    std::uint64_t fragments = 0;
    std::uint64_t messages = 0;
    std::uint64_t records = 0;
  };

  bool fail(const RecordHeader& h, const char* what) {
    ADD_FAILURE() << what << " (sender " << h.sender_slot << ", message "
                  << senders_[h.sender_slot].messages << ", record " << records_ << ")";
    return false;
  }

  std::map<std::uint32_t, Sender> senders_;
};

// One inbox (receiver slot 0's) in real shared memory, a writer per
// sender slot and the receiver's consumer, driven by the test's thread(s).
class InboxRing : public testing::Test {
 protected:
  static constexpr std::uint32_t kReceiver = 0;

  void make(std::uint64_t ring_size, std::uint64_t max_message = 64ULL << 20,
            std::uint32_t nslots = 4) {
    shm_ = std::make_unique<Shm>(make_config(nslots, ring_size, max_message, 1 << 20));
    cap_ = shm_->header()->ring_size;
    writers_.assign(nslots, InboxWriter());
    for (InboxWriter& w : writers_) w.attach(ctl(), data(), cap_);
    consumer_.attach(ctl(), data(), cap_, max_message, nslots);
  }
  ShmHeader* header() { return shm_->header(); }
  InboxCtl* ctl() { return shm_->ctl(kReceiver); }
  unsigned char* data() { return shm_->data(kReceiver); }

  // Sender s (incarnation 1) tries the inbox's lock once, without probing
  // the holder; on success its writer begins where head is.
  bool lock(std::uint32_t s) {
    std::uint64_t holder = 0;
    if (!InboxLock::try_lock(header(), kReceiver, make_writer(s, 1), false, &writer_alive, nullptr,
                             &holder)) {
      return false;
    }
    writers_[s].begin();
    return true;
  }
  // Publishes what sender s wrote and gives the lock back.
  bool unlock(std::uint32_t s) {
    bool published = writers_[s].publish();
    InboxLock::unlock(header(), kReceiver);
    return published;
  }
  // One turn of sender s: lock, write message m from `done` on (at most n
  // bytes), publish, unlock. Returns the bytes written.
  std::uint64_t turn(std::uint32_t s, const TestMessage& m, std::uint64_t done,
                     std::uint64_t n = ~std::uint64_t{0}) {
    if (!lock(s)) {
      ADD_FAILURE() << "the lock is taken";
      return 0;
    }
    std::uint64_t w = m.write(writers_[s], done, n);
    unlock(s);
    return w;
  }

  std::unique_ptr<Shm> shm_;
  std::uint64_t cap_ = 0;
  std::vector<InboxWriter> writers_;  // by sender slot
  Consumer consumer_;
};

}  // namespace ngx_ipc::test

#endif  // NGX_IPC_TEST_RING_CHECK_H
