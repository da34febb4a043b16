// ngx_ipc core tests: a corrupt record in an inbox ring is detected, the
// ring is reset (stats.resets), nothing corrupt is delivered, and later good
// messages arrive.

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "ngx_ipc/endpoint.h"
#include "test_util.h"

namespace ngx_ipc {
namespace {

using test::Received;
using test::World;

constexpr std::uint64_t KiB = 1024;

struct LogSink {
  std::vector<std::string> lines;
  static void log(void* ctx, const char* msg, int) {
    static_cast<LogSink*>(ctx)->lines.emplace_back(msg);
  }
};

TEST(Corrupt, GarbagePublishedPastHeadIsSkipped) {
  World w(2, 4096);
  LogSink sink;
  w.ep(0).set_logger(&LogSink::log, &sink);
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "good", "0"), Status::kOk);
  ASSERT_EQ(test::drain(w.ep(0)).size(), 1u);

  // Garbage written into ring 1 -> 0 and published by bumping head.
  RingCtl* ctl = w.shm().ctl(1, 0);
  std::uint64_t head = ctl->head.load();
  test::Rng rng(test::test_seed());
  unsigned char* at = w.shm().data(1, 0) + (head & 4095);
  for (int i = 0; i < 256; ++i) at[i] = static_cast<unsigned char>(rng.next());
  at[4] = 0;  // not the record magic, whatever the seed
  ctl->head.store(head + 256, std::memory_order_release);

  EXPECT_TRUE(test::drain(w.ep(0)).empty());
  EXPECT_EQ(w.ep(0).stats().resets, 1u);
  EXPECT_EQ(w.ep(0).stats().received, 1u);
  ASSERT_EQ(sink.lines.size(), 1u);
  EXPECT_EQ(sink.lines[0], "corrupt record in an inbox ring, ring reset");
  EXPECT_EQ(ctl->tail.load(), head + 256) << "the garbage was released";

  // The slot's next process resumes at the published head.
  Endpoint& s = w.respawn(1, 20001);
  for (int i = 1; i <= 50; ++i) {
    ASSERT_EQ(test::send_str(s, w.pid(0), "good", std::to_string(i)), Status::kOk);
  }
  std::vector<Received> got = test::drain(w.ep(0));
  ASSERT_EQ(got.size(), 50u);
  for (int i = 1; i <= 50; ++i) EXPECT_EQ(got[i - 1].data, std::to_string(i));
  EXPECT_EQ(w.ep(0).stats().resets, 1u);
  EXPECT_EQ(w.ep(0).stats().dropped, 0u);
}

TEST(Corrupt, ScribbledRecordStopsTheBatchThenTheRingGoesOn) {
  World w(2, 4096);
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "m", std::to_string(i)), Status::kOk);
  }
  // Each record is 40 + 2 bytes, 48 aligned: the second starts at 48.
  unsigned char* ring = w.shm().data(1, 0);
  RecordHeader h;
  std::memcpy(&h, ring + 48, sizeof h);
  ASSERT_EQ(h.magic, kRecordMagic);
  h.name_len = 0;  // what a stray write could do
  std::memcpy(ring + 48, &h, sizeof h);

  std::vector<Received> got = test::drain(w.ep(0));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "0");
  EXPECT_EQ(w.ep(0).stats().resets, 1u);

  // The same sender goes on; nothing was published past its head.
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "m", "3"), Status::kOk);
  got = test::drain(w.ep(0));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "3");
  EXPECT_EQ(w.ep(0).stats().resets, 1u);
}

// Spoils the next unread record of ring 1 -> 0 after the receiver has
// taken the first fragments of a 100 KiB message, then checks that the
// message is not delivered and that the next one is.
void spoil_mid_message(void (*spoil)(RecordHeader*), std::uint64_t resets) {
  World w(2, 4096, 1 << 20, 1 << 20);
  std::vector<unsigned char> big = test::make_message(1, 0, 100 * KiB);
  ASSERT_EQ(test::send_bytes(w.ep(1), w.pid(0), "big", big), Status::kOk);
  Delivery out[4];
  ASSERT_EQ(w.ep(0).receive(out, 4), 0);  // first fragment copied, released
  w.ep(1).flush();                        // the next fragment published
  RingCtl* ctl = w.shm().ctl(1, 0);
  ASSERT_GT(ctl->head.load(), ctl->tail.load());
  unsigned char* rec = w.shm().data(1, 0) + (ctl->tail.load() & 4095);
  RecordHeader h;
  std::memcpy(&h, rec, sizeof h);
  ASSERT_EQ(h.magic, kRecordMagic);
  ASSERT_EQ(h.flags & kFirst, 0);
  spoil(&h);
  std::memcpy(rec, &h, sizeof h);

  bool ok;
  std::vector<Received> got = test::pump(w.ep(1), w.ep(0), &ok);
  ASSERT_TRUE(ok);
  EXPECT_TRUE(got.empty()) << "a message with a hole was delivered";
  EXPECT_EQ(w.ep(0).stats().resets, resets);
  // Counted once, when the partial is dropped (not again at its last fragment).
  EXPECT_EQ(w.ep(0).stats().dropped, 1u);

  std::vector<unsigned char> next = test::make_message(1, 1, 50 * KiB);
  ASSERT_EQ(test::send_bytes(w.ep(1), w.pid(0), "next", next), Status::kOk);
  got = test::pump(w.ep(1), w.ep(0), &ok);
  ASSERT_TRUE(ok);
  ASSERT_EQ(got.size(), 1u);
  test::MsgId id;
  ASSERT_TRUE(test::parse_message(reinterpret_cast<const unsigned char*>(got[0].data.data()),
                                  got[0].data.size(), &id));
  EXPECT_EQ(id.seq, 1u);
  EXPECT_EQ(w.ep(0).stats().resets, resets);
}

TEST(Corrupt, ResetInTheMiddleOfAFragmentedMessage) {
  // A header the ring itself rejects: the ring is reset.
  spoil_mid_message([](RecordHeader* h) { h->size = 8; }, 1);
}

TEST(Corrupt, FragmentOutOfPlaceDropsTheMessage) {
  // A well-formed fragment at the wrong offset: reassembly drops the
  // message, the ring needs no reset.
  spoil_mid_message([](RecordHeader* h) { h->offset += 8; }, 0);
}

TEST(Corrupt, OtherSendersAreNotAffected) {
  World w(3, 4096);
  for (int i = 0; i < 5; ++i) {
    ASSERT_EQ(test::send_str(w.ep(2), w.pid(0), "ok", std::to_string(i)), Status::kOk);
  }
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "bad", "x"), Status::kOk);
  w.shm().data(1, 0)[4] ^= 0xff;  // the magic of ring 1 -> 0's only record
  for (int i = 5; i < 10; ++i) {
    ASSERT_EQ(test::send_str(w.ep(2), w.pid(0), "ok", std::to_string(i)), Status::kOk);
  }
  std::vector<Received> got = test::drain(w.ep(0));
  ASSERT_EQ(got.size(), 10u);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(got[i].data, std::to_string(i));
  EXPECT_EQ(w.ep(0).stats().resets, 1u);
}

}  // namespace
}  // namespace ngx_ipc
