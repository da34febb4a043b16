// ngx_ipc core tests: the SPSC ring of framed records (Producer / Consumer),
// driven directly on a ring in real shared memory.

#include "ngx_ipc/ring.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "test_util.h"

namespace ngx_ipc {
namespace {

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t MiB = 1024 * KiB;

// One message as the ring tests make it: the payload (name then data) is a
// pattern seeded by seq, and the name is its first name_len bytes.
struct TestMessage {
  std::uint64_t seq;
  std::vector<unsigned char> bytes;
  std::uint32_t name_len;

  TestMessage(std::uint64_t s, std::size_t len) : seq(s), bytes(len) {
    test::fill_pattern(bytes.data(), len, s);
    name_len = static_cast<std::uint32_t>(1 + s % std::min<std::size_t>(len, 40));
  }
  MessageMeta meta() const {
    MessageMeta m;
    m.sender_pid = 4242;
    m.target_incarnation = 7;
    m.name_len = name_len;
    m.call_id = static_cast<std::uint32_t>(seq);
    m.total_len = bytes.size();
    return m;
  }
  // The payload from byte `from` on, in two pieces when `from` is in the name.
  Payload from(std::uint64_t from) const {
    Payload p;
    if (from < name_len) {
      p.a = bytes.data() + from;
      p.a_len = name_len - from;
      p.b = bytes.data() + name_len;
      p.b_len = bytes.size() - name_len;
    } else {
      p.a = bytes.data() + from;
      p.a_len = bytes.size() - from;
    }
    return p;
  }
};

// Reassembles records and checks each message against the pattern, in order.
class Checker {
 public:
  // Feeds one record; false (with a gtest failure) on any inconsistency.
  bool feed(const RecordView& v) {
    const RecordHeader& h = v.header;
    ++records_;
    record_bytes_ += align8(h.size);
    if (h.magic != kRecordMagic || (h.flags & kPad)) return fail("bad record");
    if (h.flags & kFirst) {
      if (active_) return fail("kFirst while a message is open");
      if (h.offset != 0) return fail("kFirst at offset != 0");
      active_ = true;
      buf_.assign(h.total_len, 0);
      filled_ = 0;
      first_ = h;
      fragments_ = 0;
    } else if (!active_) {
      return fail("fragment without kFirst");
    }
    if (h.offset != filled_ || h.total_len != first_.total_len) return fail("fragment offset");
    if (v.payload_len > h.total_len - filled_) return fail("fragment too long");
    std::copy(v.payload, v.payload + v.payload_len, buf_.begin() + filled_);
    filled_ += v.payload_len;
    ++fragments_;
    max_fragments_ = std::max(max_fragments_, fragments_);
    if (!(h.flags & kLast)) {
      if (filled_ == h.total_len) return fail("complete without kLast");
      return true;
    }
    if (filled_ != h.total_len) return fail("kLast before the end");
    active_ = false;
    std::uint64_t seq = next_seq_++;
    if (h.call_id != static_cast<std::uint32_t>(seq)) return fail("out of order");
    if (h.sender_pid != 4242 || h.target_incarnation != 7) return fail("meta");
    TestMessage expect(seq, buf_.size());
    if (h.name_len != expect.name_len) return fail("name_len");
    if (!test::check_pattern(buf_.data(), buf_.size(), seq)) return fail("payload bytes");
    ++messages_;
    return true;
  }
  // Reads everything published; false on a failure.
  bool consume(Consumer& c) {
    RecordView v;
    for (int i = 0; i < 1000000; ++i) {
      Consumer::Next st = c.next(&v);
      if (st == Consumer::Next::kEmpty) return true;
      if (st == Consumer::Next::kCorrupt) return fail("kCorrupt");
      if (!feed(v)) return false;
    }
    return fail("consume did not end");
  }

  std::uint64_t messages_ = 0;
  std::uint64_t records_ = 0;
  std::uint64_t record_bytes_ = 0;  // aligned bytes of records, padding excluded
  std::uint64_t max_fragments_ = 0;

 private:
  bool fail(const char* what) {
    ADD_FAILURE() << what << " (message " << next_seq_ << ", record " << records_ << ")";
    return false;
  }
  bool active_ = false;
  RecordHeader first_{};
  std::vector<unsigned char> buf_;
  std::uint64_t filled_ = 0;
  std::uint64_t fragments_ = 0;
  std::uint64_t next_seq_ = 0;
};

class Ring : public testing::Test {
 protected:
  void make(std::uint64_t ring_size, std::uint64_t max_message = 64 * MiB) {
    Config c;
    c.nslots = 1;
    c.ring_size = ring_size;
    c.max_message = max_message;
    shm_ = std::make_unique<test::Shm>(c);
    cap_ = shm_->header()->ring_size;
    producer_.attach(ctl(), data(), cap_);
    consumer_.attach(ctl(), data(), cap_, max_message);
  }
  RingCtl* ctl() { return shm_->ctl(0, 0); }
  unsigned char* data() { return shm_->data(0, 0); }

  // Sends `sizes.size()` messages through the ring, one thread alternating
  // between producer and consumer; the producer goes on from where write()
  // stopped.
  void roundtrip(const std::vector<std::size_t>& sizes, Checker* checker) {
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      TestMessage m(i, sizes[i]);
      std::uint64_t done = 0;
      for (int spins = 0; done < m.bytes.size(); ++spins) {
        ASSERT_LT(spins, 100000) << "no progress on message " << i;
        std::uint64_t n = producer_.write(m.meta(), m.from(done), done);
        done += n;
        if (done < m.bytes.size()) {
          producer_.publish();
          ASSERT_TRUE(checker->consume(consumer_));
          consumer_.release();
        }
      }
    }
    producer_.publish();
    ASSERT_TRUE(checker->consume(consumer_));
    consumer_.release();
  }

  std::unique_ptr<test::Shm> shm_;
  std::uint64_t cap_ = 0;
  Producer producer_;
  Consumer consumer_;
};

TEST_F(Ring, EmptyUntilPublished) {
  make(4096);
  TestMessage m(0, 100);
  EXPECT_EQ(producer_.write(m.meta(), m.from(0), 0), 100u);
  RecordView v;
  EXPECT_EQ(consumer_.next(&v), Consumer::Next::kEmpty);
  EXPECT_FALSE(consumer_.pending());
  EXPECT_EQ(ctl()->head.load(), 0u);
  EXPECT_TRUE(producer_.publish());
  EXPECT_FALSE(producer_.publish());  // nothing new
  EXPECT_EQ(ctl()->head.load(), align8(sizeof(RecordHeader) + 100));
  EXPECT_TRUE(consumer_.pending());
  ASSERT_EQ(consumer_.next(&v), Consumer::Next::kRecord);
  EXPECT_EQ(v.header.flags & (kFirst | kLast), kFirst | kLast);
  EXPECT_EQ(v.payload_len, 100u);
  EXPECT_EQ(ctl()->tail.load(), 0u);  // not released yet
  EXPECT_TRUE(consumer_.release());
  EXPECT_FALSE(consumer_.release());
  EXPECT_EQ(ctl()->tail.load(), ctl()->head.load());
  EXPECT_EQ(consumer_.next(&v), Consumer::Next::kEmpty);
}

TEST_F(Ring, ManyVariableSizeRecordsInOrder) {
  make(64 * KiB);
  test::Rng rng(test::test_seed());
  std::vector<std::size_t> sizes(20000);
  // Up to 4096 bytes: what a 64 KiB ring always carries as one record.
  for (auto& s : sizes) s = rng.range(1, 4096);
  Checker checker;
  roundtrip(sizes, &checker);
  EXPECT_EQ(checker.messages_, sizes.size());
  EXPECT_EQ(checker.records_, sizes.size()) << "a small message was split";
  EXPECT_EQ(checker.max_fragments_, 1u);
}

TEST_F(Ring, WrapAroundWithPadding) {
  make(4096);
  test::Rng rng(test::test_seed() + 1);
  std::vector<std::size_t> sizes(5000);
  for (auto& s : sizes) s = rng.range(1, 3000);
  Checker checker;
  roundtrip(sizes, &checker);
  EXPECT_EQ(checker.messages_, sizes.size());
  std::uint64_t head = ctl()->head.load();
  EXPECT_EQ(ctl()->tail.load(), head);
  EXPECT_GT(head / cap_, 1000u) << "the ring wrapped many times";
  EXPECT_GT(head, checker.record_bytes_) << "padding records were written";
  EXPECT_GT(checker.records_, checker.messages_) << "messages over 1 KiB are fragmented";
  // Messages of up to a quarter of the ring (1 KiB) are never split.
  EXPECT_LE(checker.max_fragments_, 3000u / 512 + 1);
}

TEST_F(Ring, OneMiBThroughFourKiB) {
  make(4096);
  Checker checker;
  roundtrip({1 * MiB, 1 * MiB + 1, 777, 3 * MiB - 5}, &checker);
  EXPECT_EQ(checker.messages_, 4u);
  EXPECT_GE(checker.max_fragments_, 3 * MiB / 4096);
}

TEST_F(Ring, OneMiBThroughSixtyFourKiB) {
  make(64 * KiB);
  Checker checker;
  roundtrip({1 * MiB, 5, 1 * MiB - 1, 64 * KiB, 64 * KiB + 1}, &checker);
  EXPECT_EQ(checker.messages_, 5u);
  EXPECT_GE(checker.max_fragments_, 1 * MiB / (64 * KiB));
}

TEST_F(Ring, FullRingWritesWhatFits) {
  make(4096);
  TestMessage big(0, 10000);
  std::uint64_t first = producer_.write(big.meta(), big.from(0), 0);
  EXPECT_GT(first, 0u);
  EXPECT_LT(first, 10000u);
  EXPECT_LE(first, cap_ - sizeof(RecordHeader));
  // Nothing more fits until the consumer releases.
  EXPECT_EQ(producer_.write(big.meta(), big.from(first), first), 0u);
  EXPECT_TRUE(producer_.publish());
  EXPECT_EQ(producer_.write(big.meta(), big.from(first), first), 0u);

  RecordView v;
  ASSERT_EQ(consumer_.next(&v), Consumer::Next::kRecord);
  EXPECT_EQ(v.header.flags & (kFirst | kLast), kFirst);
  EXPECT_EQ(v.payload_len, first);
  EXPECT_EQ(consumer_.next(&v), Consumer::Next::kEmpty);
  // Read but not released: still no room.
  EXPECT_EQ(producer_.write(big.meta(), big.from(first), first), 0u);
  consumer_.release();

  Checker checker;
  ASSERT_TRUE(checker.feed(v));  // the view stays valid: nothing overwrote it yet
  std::uint64_t done = first;
  for (int i = 0; i < 100 && done < 10000; ++i) {
    std::uint64_t n = producer_.write(big.meta(), big.from(done), done);
    EXPECT_GT(n, 0u);
    done += n;
    producer_.publish();
    ASSERT_TRUE(checker.consume(consumer_));
    consumer_.release();
  }
  EXPECT_EQ(done, 10000u);
  EXPECT_EQ(checker.messages_, 1u);
}

TEST_F(Ring, SmallMessageIsNeverSplit) {
  make(4096);
  TestMessage big(0, 3800);  // fits whole in an empty ring
  ASSERT_EQ(producer_.write(big.meta(), big.from(0), 0), 3800u);
  std::uint64_t head_before = producer_.publish() ? ctl()->head.load() : 0;
  // 256 bytes are left: a 500-byte message (under cap / 4) waits whole.
  TestMessage small(1, 500);
  EXPECT_EQ(producer_.write(small.meta(), small.from(0), 0), 0u);
  EXPECT_FALSE(producer_.publish());
  EXPECT_EQ(ctl()->head.load(), head_before);
  Checker checker;
  ASSERT_TRUE(checker.consume(consumer_));
  consumer_.release();
  EXPECT_EQ(producer_.write(small.meta(), small.from(0), 0), 500u);
  producer_.publish();
  ASSERT_TRUE(checker.consume(consumer_));
  EXPECT_EQ(checker.messages_, 2u);
  EXPECT_EQ(checker.records_, 2u);
}

TEST_F(Ring, ProducerReattachDropsUnpublishedBytes) {
  // A producer that dies after writing but before publishing leaves garbage
  // past head; its successor starts at the published head and overwrites it.
  make(4096);
  Checker checker;
  TestMessage m0(0, 300);
  ASSERT_EQ(producer_.write(m0.meta(), m0.from(0), 0), 300u);
  producer_.publish();
  TestMessage lost(99, 2000);
  ASSERT_GT(producer_.write(lost.meta(), lost.from(0), 0), 0u);  // never published

  Producer successor;
  successor.attach(ctl(), data(), cap_);
  TestMessage m1(1, 3000);
  std::uint64_t done = 0;
  for (int i = 0; i < 100 && done < 3000; ++i) {
    done += successor.write(m1.meta(), m1.from(done), done);
    successor.publish();
    ASSERT_TRUE(checker.consume(consumer_));
    consumer_.release();
  }
  EXPECT_EQ(done, 3000u);
  EXPECT_EQ(checker.messages_, 2u);
}

TEST_F(Ring, ConsumerReattachResumesAtTail) {
  make(4096);
  for (std::uint64_t i = 0; i < 3; ++i) {
    TestMessage m(i, 100);
    ASSERT_EQ(producer_.write(m.meta(), m.from(0), 0), 100u);
  }
  producer_.publish();
  RecordView v;
  ASSERT_EQ(consumer_.next(&v), Consumer::Next::kRecord);
  consumer_.release();                                     // message 0 done
  ASSERT_EQ(consumer_.next(&v), Consumer::Next::kRecord);  // read, not released

  Consumer successor;
  successor.attach(ctl(), data(), cap_, 64 * MiB);
  ASSERT_EQ(successor.next(&v), Consumer::Next::kRecord);
  EXPECT_EQ(v.header.call_id, 1u) << "the unreleased record is read again";
  ASSERT_EQ(successor.next(&v), Consumer::Next::kRecord);
  EXPECT_EQ(v.header.call_id, 2u);
  EXPECT_EQ(successor.next(&v), Consumer::Next::kEmpty);
}

// Producer and consumer in two threads, spinning (bounded by a deadline):
// the acquire/release pairs on head and tail are what ThreadSanitizer checks.
TEST_F(Ring, ProducerAndConsumerThreads) {
  make(16 * KiB);
  test::Rng rng(test::test_seed() + 2);
  std::vector<std::size_t> sizes(2000);
  for (auto& s : sizes) s = rng.next() % 16 == 0 ? rng.range(1, 200 * KiB) : rng.range(1, 4000);
  sizes[10] = 1 * MiB;
  test::Deadline deadline(std::chrono::seconds(60));
  std::atomic<bool> failed{false};

  std::thread producer([&] {
    for (std::size_t i = 0; i < sizes.size() && !failed.load(); ++i) {
      TestMessage m(i, sizes[i]);
      std::uint64_t done = 0;
      while (done < m.bytes.size()) {
        std::uint64_t n = producer_.write(m.meta(), m.from(done), done);
        done += n;
        producer_.publish();
        if (n == 0) {
          if (deadline.expired() || failed.load()) {
            failed.store(true);
            return;
          }
          std::this_thread::yield();
        }
      }
    }
  });
  Checker checker;
  RecordView v;
  while (checker.messages_ < sizes.size()) {
    Consumer::Next st = consumer_.next(&v);
    if (st == Consumer::Next::kRecord) {
      if (!checker.feed(v)) break;
      if (v.header.flags & kLast) consumer_.release();
      continue;
    }
    ASSERT_NE(st, Consumer::Next::kCorrupt);
    consumer_.release();
    if (deadline.expired() || failed.load()) break;
    std::this_thread::yield();
  }
  failed.store(checker.messages_ < sizes.size());
  producer.join();
  EXPECT_FALSE(failed.load()) << "only " << checker.messages_ << " of " << sizes.size();
  EXPECT_EQ(checker.messages_, sizes.size());
}

// Corrupt records: every inconsistency is reported as kCorrupt, never read
// past, and reset() skips to the published head.
class RingCorrupt : public Ring {
 protected:
  void SetUp() override { make(4096, 1 * MiB); }

  static RecordHeader valid(std::uint32_t payload) {
    RecordHeader h{};
    h.size = static_cast<std::uint32_t>(sizeof(RecordHeader) + payload);
    h.magic = kRecordMagic;
    h.flags = kFirst | kLast;
    h.sender_pid = 1;
    h.name_len = 1;
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
  EXPECT_EQ(consumer_.next(&v), Consumer::Next::kRecord);
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
  consumer_.attach(ctl(), data(), cap_, 1 * MiB);
  expect_corrupt("tail not 8-aligned");
}

TEST_F(RingCorrupt, GoodRecordsAfterAReset) {
  TestMessage m0(0, 50);
  ASSERT_EQ(producer_.write(m0.meta(), m0.from(0), 0), 50u);
  producer_.publish();
  Checker checker;
  ASSERT_TRUE(checker.consume(consumer_));
  // Garbage published after it, through the producer's own head: the
  // producer is then re-attached, as a respawned sender would be.
  std::uint64_t head = ctl()->head.load();
  std::memset(data() + (head & (cap_ - 1)), 0xee, 128);
  ctl()->head.store(head + 128);
  RecordView v;
  EXPECT_EQ(consumer_.next(&v), Consumer::Next::kCorrupt);
  consumer_.reset();
  consumer_.release();
  producer_.attach(ctl(), data(), cap_);
  for (std::uint64_t i = 1; i < 200; ++i) {
    TestMessage m(i, 1 + i * 13);
    std::uint64_t done = 0;
    for (int k = 0; k < 100 && done < m.bytes.size(); ++k) {
      done += producer_.write(m.meta(), m.from(done), done);
      producer_.publish();
      ASSERT_TRUE(checker.consume(consumer_));
      consumer_.release();
    }
  }
  EXPECT_EQ(checker.messages_, 200u);
}

}  // namespace
}  // namespace ngx_ipc
