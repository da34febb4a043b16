// ngx_ipc core tests: an inbox ring of framed records with one writer at a
// time (InboxWriter, under the inbox's lock) and its Consumer, driven
// directly on a ring in real shared memory: order, wrap-around, fragments,
// a full ring, re-attaching, and corrupt records. Several writers, a
// writer that died holding the lock, and threads: ring_writers_test.cpp.

#include "ngx_ipc/ring.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "ring_check.h"
#include "test_util.h"

namespace ngx_ipc {
namespace {

using test::RecordChecker;
using test::TestMessage;

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t MiB = 1024 * KiB;
constexpr std::uint32_t kSender = 1;

class Ring : public test::InboxRing {
 protected:
  // Sends the messages through the ring, one thread alternating between
  // sender kSender (a turn under the lock each time) and the consumer; the
  // writer goes on from where write() stopped.
  void roundtrip(const std::vector<std::size_t>& sizes, RecordChecker* checker) {
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      TestMessage m(kSender, i, sizes[i]);
      std::uint64_t done = 0;
      for (int spins = 0; done < m.size(); ++spins) {
        ASSERT_LT(spins, 100000) << "no progress on message " << i;
        done += turn(kSender, m, done);
        ASSERT_TRUE(checker->consume(consumer_));
        consumer_.release();
      }
    }
  }
  InboxWriter& writer() { return writers_[kSender]; }
};

TEST_F(Ring, EmptyUntilPublished) {
  make(4096);
  ASSERT_TRUE(lock(kSender));
  EXPECT_EQ(ctl()->lock.load(), make_writer(kSender, 1));
  TestMessage m(kSender, 0, 100);
  EXPECT_EQ(m.write(writer(), 0), 100u);
  RecordView v;
  EXPECT_EQ(consumer_.next(&v), Consumer::Next::kEmpty);
  EXPECT_FALSE(consumer_.pending());
  EXPECT_EQ(ctl()->head.load(), 0u);
  EXPECT_EQ(ctl()->head_msgs.load(), 0u);
  EXPECT_TRUE(unlock(kSender));
  EXPECT_EQ(ctl()->lock.load(), 0u);
  EXPECT_EQ(ctl()->head.load(), align8(sizeof(RecordHeader) + 100));
  EXPECT_EQ(ctl()->head_msgs.load(), 1u);
  ASSERT_TRUE(lock(kSender));
  EXPECT_FALSE(unlock(kSender)) << "nothing new to publish";
  EXPECT_TRUE(consumer_.pending());
  ASSERT_EQ(consumer_.next(&v), Consumer::Next::kRecord);
  EXPECT_EQ(v.header.flags & (kFirst | kLast), kFirst | kLast);
  EXPECT_EQ(v.header.sender_slot, kSender);
  EXPECT_EQ(v.header.sender_incarnation, 1u);
  EXPECT_EQ(v.payload_len, 100u);
  EXPECT_EQ(ctl()->tail.load(), 0u);  // not released yet
  EXPECT_TRUE(consumer_.release());
  EXPECT_FALSE(consumer_.release());
  EXPECT_EQ(ctl()->tail.load(), ctl()->head.load());
  EXPECT_EQ(ctl()->tail_msgs.load(), 1u);
  EXPECT_EQ(consumer_.next(&v), Consumer::Next::kEmpty);
}

TEST_F(Ring, ManyVariableSizeRecordsInOrder) {
  make(64 * KiB);
  test::Rng rng(test::test_seed());
  std::vector<std::size_t> sizes(20000);
  // Up to 4096 bytes: what a 64 KiB ring always carries as one record.
  for (auto& s : sizes) s = rng.range(1, 4096);
  RecordChecker checker;
  roundtrip(sizes, &checker);
  EXPECT_EQ(checker.messages(kSender), sizes.size());
  EXPECT_EQ(checker.records_, sizes.size()) << "a small message was split";
  EXPECT_EQ(checker.max_fragments_, 1u);
  EXPECT_EQ(ctl()->head_msgs.load(), sizes.size());
  EXPECT_EQ(ctl()->tail_msgs.load(), sizes.size());
}

TEST_F(Ring, WrapAroundWithPadding) {
  make(4096);
  test::Rng rng(test::test_seed() + 1);
  std::vector<std::size_t> sizes(5000);
  for (auto& s : sizes) s = rng.range(1, 3000);
  RecordChecker checker;
  roundtrip(sizes, &checker);
  EXPECT_EQ(checker.messages(kSender), sizes.size());
  std::uint64_t head = ctl()->head.load();
  EXPECT_EQ(ctl()->tail.load(), head);
  EXPECT_GT(head / cap_, 1000u) << "the ring wrapped many times";
  EXPECT_GT(head, checker.record_bytes_) << "padding records were written";
  EXPECT_GT(checker.records_, sizes.size()) << "messages over 1 KiB are fragmented";
  // Messages of up to a quarter of the ring (1 KiB) are never split; the
  // others in fragments of at least 512 bytes but the last.
  EXPECT_LE(checker.max_fragments_, 3000u / 512 + 1);
}

TEST_F(Ring, OneMiBThroughFourKiB) {
  make(4096);
  RecordChecker checker;
  roundtrip({1 * MiB, 1 * MiB + 1, 777, 3 * MiB - 5}, &checker);
  EXPECT_EQ(checker.messages(kSender), 4u);
  EXPECT_GE(checker.max_fragments_, 3 * MiB / 4096);
}

TEST_F(Ring, OneMiBThroughSixtyFourKiB) {
  make(64 * KiB);
  RecordChecker checker;
  roundtrip({1 * MiB, 5, 1 * MiB - 1, 64 * KiB, 64 * KiB + 1}, &checker);
  EXPECT_EQ(checker.messages(kSender), 5u);
  EXPECT_GE(checker.max_fragments_, 1 * MiB / (64 * KiB));
}

TEST_F(Ring, FullRingWritesWhatFits) {
  make(4096);
  TestMessage big(kSender, 0, 10000);
  ASSERT_TRUE(lock(kSender));
  std::uint64_t first = big.write(writer(), 0);
  EXPECT_GT(first, 0u);
  EXPECT_LT(first, 10000u);
  EXPECT_LE(first, cap_ - sizeof(RecordHeader));
  // Nothing more fits until the consumer releases.
  EXPECT_EQ(big.write(writer(), first), 0u);
  EXPECT_TRUE(unlock(kSender));
  EXPECT_EQ(turn(kSender, big, first), 0u);

  RecordView v;
  ASSERT_EQ(consumer_.next(&v), Consumer::Next::kRecord);
  EXPECT_EQ(v.header.flags & (kFirst | kLast), kFirst);
  EXPECT_EQ(v.payload_len, first);
  EXPECT_EQ(consumer_.next(&v), Consumer::Next::kEmpty);
  // Read but not released: still no room.
  EXPECT_EQ(turn(kSender, big, first), 0u);
  consumer_.release();

  RecordChecker checker;
  ASSERT_TRUE(checker.feed(v));  // the view stays valid: nothing overwrote it yet
  std::uint64_t done = first;
  for (int i = 0; i < 100 && done < 10000; ++i) {
    std::uint64_t n = turn(kSender, big, done);
    EXPECT_GT(n, 0u);
    done += n;
    ASSERT_TRUE(checker.consume(consumer_));
    consumer_.release();
  }
  EXPECT_EQ(done, 10000u);
  EXPECT_EQ(checker.messages(kSender), 1u);
}

TEST_F(Ring, SmallMessageIsNeverSplit) {
  make(4096);
  TestMessage big(kSender, 0, 3800);  // fits whole in an empty ring
  ASSERT_EQ(turn(kSender, big, 0), 3800u);
  std::uint64_t head_before = ctl()->head.load();
  // 256 bytes are left: a 500-byte message (under cap / 4) waits whole.
  TestMessage small(kSender, 1, 500);
  ASSERT_TRUE(lock(kSender));
  EXPECT_EQ(small.write(writer(), 0), 0u);
  EXPECT_FALSE(unlock(kSender));
  EXPECT_EQ(ctl()->head.load(), head_before);
  RecordChecker checker;
  ASSERT_TRUE(checker.consume(consumer_));
  consumer_.release();
  EXPECT_EQ(turn(kSender, small, 0), 500u);
  ASSERT_TRUE(checker.consume(consumer_));
  EXPECT_EQ(checker.messages(kSender), 2u);
  EXPECT_EQ(checker.records_, 2u);
}

TEST_F(Ring, WriterReattachBeginsAtThePublishedHead) {
  // A new writer (the sender's next process, or the same one after a turn)
  // keeps no position of its own: begin() takes head from the inbox.
  make(4096);
  RecordChecker checker;
  TestMessage m0(kSender, 0, 300);
  ASSERT_EQ(turn(kSender, m0, 0), 300u);
  std::uint64_t head = ctl()->head.load();
  writers_[kSender] = InboxWriter();
  writers_[kSender].attach(ctl(), data(), cap_);
  TestMessage m1(kSender, 1, 3000);
  std::uint64_t done = 0;
  for (int i = 0; i < 100 && done < 3000; ++i) {
    if (i == 0) {
      ASSERT_TRUE(lock(kSender));
      done += m1.write(writer(), done);
      // Nothing published yet: the records start where m0 ended.
      RecordHeader h;
      std::memcpy(&h, data() + (head & (cap_ - 1)), sizeof h);
      EXPECT_EQ(h.call_id, 1u);
      unlock(kSender);
    } else {
      done += turn(kSender, m1, done);
    }
    ASSERT_TRUE(checker.consume(consumer_));
    consumer_.release();
  }
  EXPECT_EQ(done, 3000u);
  EXPECT_EQ(checker.messages(kSender), 2u);
}

TEST_F(Ring, ConsumerReattachResumesAtTail) {
  make(4096);
  ASSERT_TRUE(lock(kSender));
  for (std::uint64_t i = 0; i < 3; ++i) {
    TestMessage m(kSender, i, 100);
    ASSERT_EQ(m.write(writer(), 0), 100u);
  }
  unlock(kSender);
  RecordView v;
  ASSERT_EQ(consumer_.next(&v), Consumer::Next::kRecord);
  consumer_.release();                                     // message 0 done
  ASSERT_EQ(consumer_.next(&v), Consumer::Next::kRecord);  // read, not released

  Consumer successor;
  successor.attach(ctl(), data(), cap_, 64 * MiB, header()->nslots);
  ASSERT_EQ(successor.next(&v), Consumer::Next::kRecord);
  EXPECT_EQ(v.header.call_id, 1u) << "the unreleased record is read again";
  ASSERT_EQ(successor.next(&v), Consumer::Next::kRecord);
  EXPECT_EQ(v.header.call_id, 2u);
  EXPECT_EQ(successor.next(&v), Consumer::Next::kEmpty);
  EXPECT_TRUE(successor.release());
  EXPECT_EQ(ctl()->tail_msgs.load(), 3u);
}

// Corrupt records: every inconsistency is reported as kCorrupt, never read
// past, and reset() skips to the published head.
class RingCorrupt : public test::InboxRing {
 protected:
  void SetUp() override { make(4096, 1 * MiB); }

  static RecordHeader valid(std::uint32_t payload) {
    RecordHeader h{};
    h.size = static_cast<std::uint32_t>(sizeof(RecordHeader) + payload);
    h.magic = kRecordMagic;
    h.flags = kFirst | kLast;
    h.sender_pid = 1;
    h.name_len = 1;
    h.sender_slot = 3;  // the last slot of 4
    h.sender_incarnation = 1;
    h.total_len = payload;
    h.offset = 0;
    return h;
  }
  // Places h at ring offset `at` and publishes head = at + published.
  void place(const RecordHeader& h, std::uint64_t at, std::uint64_t published) {
    std::memcpy(data() + at, &h, sizeof h);
    ctl()->head.store(at + published);
  }
  void expect_corrupt(const char* what) {
    RecordView v;
    EXPECT_EQ(consumer_.next(&v), Consumer::Next::kCorrupt) << what;
    consumer_.reset();
    EXPECT_EQ(consumer_.next(&v), Consumer::Next::kEmpty) << what;
    consumer_.release();
    EXPECT_EQ(ctl()->tail.load(), ctl()->head.load()) << what;
  }
};

TEST_F(RingCorrupt, ValidHandMadeRecordIsAccepted) {
  place(valid(16), 0, align8(sizeof(RecordHeader) + 16));
  RecordView v;
  ASSERT_EQ(consumer_.next(&v), Consumer::Next::kRecord);
  EXPECT_EQ(v.header.sender_slot, 3u);
}

TEST_F(RingCorrupt, EachBadFieldIsDetected) {
  struct Case {
    const char* what;
    void (*spoil)(RecordHeader*);
  };
  const Case cases[] = {
      {"magic", [](RecordHeader* h) { h->magic ^= 0x100; }},
      {"size under header", [](RecordHeader* h) { h->size = 8; }},
      {"size past ring end", [](RecordHeader* h) { h->size = 5000; }},
      {"size past head", [](RecordHeader* h) { h->size += 64; }},
      {"name_len 0", [](RecordHeader* h) { h->name_len = 0; }},
      {"name_len over max", [](RecordHeader* h) { h->name_len = kMaxNameLen + 1; }},
      {"total under name", [](RecordHeader* h) { h->name_len = 20; }},
      {"data over max",
       [](RecordHeader* h) {
         h->total_len = 2 * MiB;
         h->flags = kFirst;
       }},
      {"offset past total",
       [](RecordHeader* h) {
         h->offset = h->total_len + 1;
         h->flags = 0;
       }},
      {"payload past total", [](RecordHeader* h) { h->total_len -= 1; }},
      {"kFirst at offset",
       [](RecordHeader* h) {
         h->total_len += 8;
         h->offset = 8;
         h->flags = kFirst | kLast;
       }},
      {"offset 0 without kFirst", [](RecordHeader* h) { h->flags = kLast; }},
      {"kLast missing", [](RecordHeader* h) { h->flags = kFirst; }},
      {"kLast early", [](RecordHeader* h) { h->total_len += 1; }},
      // The receiver keeps one reassembler per slot of the mapping.
      {"sender_slot == nslots", [](RecordHeader* h) { h->sender_slot = 4; }},
      {"sender_slot past any mapping", [](RecordHeader* h) { h->sender_slot = 0xffffffffu; }},
  };
  for (const Case& c : cases) {
    RecordHeader h = valid(16);
    c.spoil(&h);
    // Each case starts where the previous one was reset to.
    std::uint64_t head = ctl()->head.load();
    std::memcpy(data() + (head & (cap_ - 1)), &h, sizeof h);
    ctl()->head.store(head + align8(sizeof(RecordHeader) + 16));
    expect_corrupt(c.what);
  }
}

TEST_F(RingCorrupt, BadPadding) {
  RecordHeader h = valid(0);
  h.flags = kPad;
  h.size = 64;  // a pad must reach the end of the ring
  place(h, 0, 64);
  expect_corrupt("short pad");
}

TEST_F(RingCorrupt, HeadTooFarAhead) {
  place(valid(16), 0, cap_ + 8);
  expect_corrupt("head - tail > ring size");
}

TEST_F(RingCorrupt, HeadNotOnARecordBoundary) {
  place(valid(16), 0, 20);  // part of a record published
  expect_corrupt("head inside a record");
}

TEST_F(RingCorrupt, UnalignedTail) {
  ctl()->tail.store(4);
  ctl()->head.store(64);
  consumer_.attach(ctl(), data(), cap_, 1 * MiB, header()->nslots);
  expect_corrupt("tail not 8-aligned");
}

TEST_F(RingCorrupt, GoodRecordsAfterAReset) {
  TestMessage m0(kSender, 0, 50);
  ASSERT_EQ(turn(kSender, m0, 0), 50u);
  RecordChecker checker;
  ASSERT_TRUE(checker.consume(consumer_));
  // Garbage published after it, as a stray writer would: the next holder
  // of the lock begins past it, at the published head.
  std::uint64_t head = ctl()->head.load();
  std::memset(data() + (head & (cap_ - 1)), 0xee, 128);
  ctl()->head.store(head + 128);
  RecordView v;
  EXPECT_EQ(consumer_.next(&v), Consumer::Next::kCorrupt);
  consumer_.reset();
  consumer_.release();
  for (std::uint64_t i = 1; i < 200; ++i) {
    TestMessage m(kSender, i, 1 + i * 13);
    std::uint64_t done = 0;
    for (int k = 0; k < 100 && done < m.size(); ++k) {
      done += turn(kSender, m, done);
      ASSERT_TRUE(checker.consume(consumer_));
      consumer_.release();
    }
  }
  EXPECT_EQ(checker.messages(kSender), 200u);
}

}  // namespace
}  // namespace ngx_ipc
