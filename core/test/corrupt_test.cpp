// ngx_ipc core tests: a corrupt record in an inbox is detected, the inbox
// is reset (stats.resets), the message every sender had in flight is
// dropped and counted once, nothing corrupt is delivered, and later
// messages from every sender arrive.

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
constexpr std::uint32_t kReceiver = 0;

struct LogSink {
  std::vector<std::string> lines;
  static void log(void* ctx, const char* msg, int) {
    static_cast<LogSink*>(ctx)->lines.emplace_back(msg);
  }
};

// Bytes a record of a one-byte name and one-byte data takes in the ring.
constexpr std::uint64_t kTinyRecord = (sizeof(RecordHeader) + 2 + 7) & ~std::uint64_t{7};

// Writes `n` random bytes at the inbox's head and publishes them, as a
// stray write by any process of the mapping could.
void publish_garbage(World& w, std::uint64_t n, std::uint64_t seed) {
  InboxCtl* ctl = w.shm().ctl(kReceiver);
  std::uint64_t head = ctl->head.load();
  std::uint64_t cap = w.shm().header()->ring_size;
  unsigned char* at = w.shm().data(kReceiver) + (head & (cap - 1));
  test::Rng rng(seed);
  for (std::uint64_t i = 0; i < n; ++i) at[i] = static_cast<unsigned char>(rng.next());
  at[4] = 0;  // not the record magic, whatever the seed
  ctl->head.store(head + n, std::memory_order_release);
}

// Flushes every sender and drains the receiver until the backlogs are
// empty and the inbox is drained; bounded by rounds.
std::vector<Received> pump_all(World& w, const std::vector<std::uint32_t>& senders, bool* ok) {
  std::vector<Received> got;
  *ok = false;
  for (int round = 0; round < 100000; ++round) {
    bool flushed = true;
    for (std::uint32_t s : senders) flushed = w.ep(s).flush() && flushed;
    std::vector<Received> more = test::drain(w.ep(kReceiver));
    bool idle = more.empty();
    for (Received& r : more) got.push_back(std::move(r));
    if (flushed && idle && !w.ep(kReceiver).inbox_pending()) {
      *ok = true;
      break;
    }
  }
  return got;
}

// Checks that `got` holds messages seq from..to-1 of each sender (made by
// test::make_message with the sender's slot as tag), each sender's in order.
void expect_from_each(const std::vector<Received>& got, const std::vector<std::uint32_t>& senders,
                      std::uint64_t from, std::uint64_t to) {
  std::vector<std::uint64_t> next(8, from);
  for (const Received& r : got) {
    test::MsgId id;
    ASSERT_TRUE(test::parse_message(reinterpret_cast<const unsigned char*>(r.data.data()),
                                    r.data.size(), &id))
        << "a message with a wrong byte";
    ASSERT_LT(id.tag, next.size());
    EXPECT_EQ(id.seq, next[id.tag]++) << "sender " << id.tag;
    EXPECT_EQ(r.sender_pid, 10000 + static_cast<std::int32_t>(id.tag));
  }
  for (std::uint32_t s : senders) EXPECT_EQ(next[s], to) << "sender " << s;
}

TEST(Corrupt, GarbagePublishedPastHeadIsSkipped) {
  World w(3, 4096);
  LogSink sink;
  w.ep(kReceiver).set_logger(&LogSink::log, &sink);
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(kReceiver), "good", "0"), Status::kOk);
  ASSERT_EQ(test::drain(w.ep(kReceiver)).size(), 1u);

  InboxCtl* ctl = w.shm().ctl(kReceiver);
  std::uint64_t head = ctl->head.load();
  publish_garbage(w, 256, test::test_seed());
  EXPECT_TRUE(test::drain(w.ep(kReceiver)).empty());
  EXPECT_EQ(w.ep(kReceiver).stats().resets, 1u);
  EXPECT_EQ(w.ep(kReceiver).stats().received, 1u);
  EXPECT_EQ(w.ep(kReceiver).stats().dropped, 0u) << "no message was in flight";
  ASSERT_EQ(sink.lines.size(), 1u);
  EXPECT_EQ(sink.lines[0], "corrupt record in an inbox, inbox reset");
  EXPECT_EQ(ctl->tail.load(), head + 256) << "the garbage was released";

  // Every sender's next turn begins at the published head, past the
  // garbage: the same sender, another one, and the first one's next process.
  std::vector<Received> got;
  for (int i = 1; i <= 30; ++i) {
    std::uint32_t s = 1 + i % 2;
    ASSERT_EQ(test::send_str(w.ep(s), w.pid(kReceiver), "good", std::to_string(i)), Status::kOk);
    if (i % 8 == 0) {
      for (Received& r : test::drain(w.ep(kReceiver))) got.push_back(std::move(r));
    }
  }
  Endpoint& s = w.respawn(1, 20001);
  ASSERT_EQ(test::send_str(s, w.pid(kReceiver), "good", "31"), Status::kOk);
  for (Received& r : test::drain(w.ep(kReceiver))) got.push_back(std::move(r));
  ASSERT_EQ(got.size(), 31u);
  for (int i = 1; i <= 31; ++i) EXPECT_EQ(got[i - 1].data, std::to_string(i));
  EXPECT_EQ(got[30].sender_pid, 20001);
  EXPECT_EQ(w.ep(kReceiver).stats().resets, 1u);
  EXPECT_EQ(w.ep(kReceiver).stats().dropped, 0u);
}

TEST(Corrupt, ScribbledRecordStopsTheBatchThenTheInboxGoesOn) {
  World w(2, 4096);
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(test::send_str(w.ep(1), w.pid(kReceiver), "m", std::to_string(i)), Status::kOk);
  }
  // Each record is 48 + 2 bytes, 56 aligned: the second starts at 56.
  unsigned char* ring = w.shm().data(kReceiver);
  RecordHeader h;
  std::memcpy(&h, ring + kTinyRecord, sizeof h);
  ASSERT_EQ(h.magic, kRecordMagic);
  ASSERT_EQ(h.sender_slot, 1u);
  h.name_len = 0;  // what a stray write could do
  std::memcpy(ring + kTinyRecord, &h, sizeof h);

  std::vector<Received> got = test::drain(w.ep(kReceiver));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "0");
  EXPECT_EQ(w.ep(kReceiver).stats().resets, 1u);

  // The same sender goes on; nothing was published past its head.
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(kReceiver), "m", "3"), Status::kOk);
  got = test::drain(w.ep(kReceiver));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "3");
  EXPECT_EQ(w.ep(kReceiver).stats().resets, 1u);
}

TEST(Corrupt, ASenderSlotOutsideTheMappingIsCorrupt) {
  // The receiver keeps a reassembler per slot: a record naming a slot the
  // mapping does not have resets the inbox instead of indexing past them.
  World w(3, 4096);
  ASSERT_EQ(test::send_str(w.ep(2), w.pid(kReceiver), "m", "0"), Status::kOk);
  ASSERT_EQ(test::send_str(w.ep(2), w.pid(kReceiver), "m", "1"), Status::kOk);
  unsigned char* rec = w.shm().data(kReceiver) + kTinyRecord;
  RecordHeader h;
  std::memcpy(&h, rec, sizeof h);
  h.sender_slot = 3;
  std::memcpy(rec, &h, sizeof h);
  std::vector<Received> got = test::drain(w.ep(kReceiver));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "0");
  EXPECT_EQ(w.ep(kReceiver).stats().resets, 1u);
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(kReceiver), "m", "2"), Status::kOk);
  got = test::drain(w.ep(kReceiver));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "2");
}

// Spoils the next unread record of sender 1 after the receiver has taken
// the first fragments of a 100 KiB message, then checks that the message
// is not delivered and that the next one is.
void spoil_mid_message(void (*spoil)(RecordHeader*), std::uint64_t resets) {
  World w(2, 4096, 1 << 20, 1 << 20);
  Endpoint& rx = w.ep(kReceiver);
  std::vector<unsigned char> big = test::make_message(1, 0, 100 * KiB);
  ASSERT_EQ(test::send_bytes(w.ep(1), w.pid(kReceiver), "big", big), Status::kOk);
  Delivery out[4];
  ASSERT_EQ(rx.receive(out, 4), 0);  // first fragment copied, released
  w.ep(1).flush();                   // the next fragment published
  InboxCtl* ctl = w.shm().ctl(kReceiver);
  ASSERT_GT(ctl->head.load(), ctl->tail.load());
  unsigned char* rec = w.shm().data(kReceiver) + (ctl->tail.load() & 4095);
  RecordHeader h;
  std::memcpy(&h, rec, sizeof h);
  ASSERT_EQ(h.magic, kRecordMagic);
  ASSERT_EQ(h.flags & kFirst, 0);
  spoil(&h);
  std::memcpy(rec, &h, sizeof h);

  bool ok;
  std::vector<Received> got = test::pump(w.ep(1), rx, &ok);
  ASSERT_TRUE(ok);
  EXPECT_TRUE(got.empty()) << "a message with a hole was delivered";
  EXPECT_EQ(rx.stats().resets, resets);
  // Counted once, when the partial is dropped (not again at its last fragment).
  EXPECT_EQ(rx.stats().dropped, 1u);

  std::vector<unsigned char> next = test::make_message(1, 1, 50 * KiB);
  ASSERT_EQ(test::send_bytes(w.ep(1), w.pid(kReceiver), "next", next), Status::kOk);
  got = test::pump(w.ep(1), rx, &ok);
  ASSERT_TRUE(ok);
  ASSERT_EQ(got.size(), 1u);
  test::MsgId id;
  ASSERT_TRUE(test::parse_message(reinterpret_cast<const unsigned char*>(got[0].data.data()),
                                  got[0].data.size(), &id));
  EXPECT_EQ(id.seq, 1u);
  EXPECT_EQ(rx.stats().resets, resets);
  EXPECT_EQ(rx.stats().dropped, 1u);
}

TEST(Corrupt, ResetInTheMiddleOfAFragmentedMessage) {
  // A header the ring itself rejects: the inbox is reset.
  spoil_mid_message([](RecordHeader* h) { h->size = 8; }, 1);
}

TEST(Corrupt, FragmentOutOfPlaceDropsTheMessage) {
  // A well-formed fragment at the wrong offset: reassembly drops the
  // message, the inbox needs no reset.
  spoil_mid_message([](RecordHeader* h) { h->offset += 8; }, 0);
}

TEST(Corrupt, FragmentClaimingAnotherSenderDropsTheMessage) {
  // Well-formed but under another sender's slot: that sender has no
  // message open, so it continues nothing; sender 1's message has a hole.
  spoil_mid_message([](RecordHeader* h) { h->sender_slot = 0; }, 0);
}

TEST(Corrupt, EverySendersPartialIsDroppedAndCountedOnce) {
  // Senders 1, 2 and 3 each have a message half-way through the inbox when
  // garbage arrives: the reset drops all three, counted once each (their
  // remaining fragments are skipped uncounted), and every sender's next
  // messages arrive.
  const std::vector<std::uint32_t> senders = {1, 2, 3};
  World w(4, 4096, 1 << 20, 1 << 20);
  Endpoint& rx = w.ep(kReceiver);
  LogSink sink;
  rx.set_logger(&LogSink::log, &sink);
  Delivery out[4];
  for (std::uint32_t s : senders) {
    std::vector<unsigned char> big = test::make_message(s, 0, 20 * KiB);
    ASSERT_EQ(test::send_bytes(w.ep(s), w.pid(kReceiver), "big", big), Status::kOk);
  }
  // Sender 1's first fragment filled the ring; 2 and 3 kept everything.
  EXPECT_LT(w.ep(1).backlog_bytes(kReceiver), 20 * KiB);
  EXPECT_GT(w.ep(2).backlog_bytes(kReceiver), 20 * KiB);
  for (std::uint32_t s : senders) {
    w.ep(s).flush();
    ASSERT_EQ(rx.receive(out, 4), 0) << "sender " << s;  // its first fragment, copied
    EXPECT_GT(w.ep(s).backlog_bytes(kReceiver), 0u);
  }
  EXPECT_EQ(rx.stats().dropped, 0u);
  publish_garbage(w, 128, test::test_seed() + 1);
  EXPECT_EQ(rx.receive(out, 4), 0);
  EXPECT_EQ(rx.stats().resets, 1u);
  EXPECT_EQ(rx.stats().dropped, 3u) << "one per sender's message in flight";
  ASSERT_EQ(sink.lines.size(), 1u);

  bool ok;
  std::vector<Received> got = pump_all(w, senders, &ok);
  ASSERT_TRUE(ok);
  EXPECT_TRUE(got.empty()) << "the rests of the dropped messages were delivered";
  EXPECT_EQ(rx.stats().dropped, 3u) << "their rests were counted again";

  // Later messages, interleaved among the senders, some fragmented.
  for (std::uint64_t seq = 1; seq <= 10; ++seq) {
    for (std::uint32_t s : senders) {
      std::vector<unsigned char> m = test::make_message(s, seq, seq % 3 == 0 ? 9 * KiB : 100);
      ASSERT_EQ(test::send_bytes(w.ep(s), w.pid(kReceiver), "later", m), Status::kOk);
    }
  }
  got = pump_all(w, senders, &ok);
  ASSERT_TRUE(ok);
  ASSERT_EQ(got.size(), 30u);
  expect_from_each(got, senders, 1, 11);
  EXPECT_EQ(rx.stats().resets, 1u);
  EXPECT_EQ(rx.stats().dropped, 3u);
  EXPECT_EQ(sink.lines.size(), 1u);
}

TEST(Corrupt, AMessageBeingDiscardedIsCountedOnceAcrossAReset) {
  // A message for the receiver's previous process is dropped and counted
  // at its first record, then skipped (kDiscarding). A reset in the middle
  // of it must not count it again when its rest arrives.
  World w(2, 4096, 1 << 20, 1 << 20);
  std::vector<unsigned char> big = test::make_message(1, 0, 20 * KiB);
  ASSERT_EQ(test::send_bytes(w.ep(1), w.pid(kReceiver), "big", big), Status::kOk);
  Endpoint& rx = w.respawn(kReceiver, 20000);  // the message was for its predecessor
  Delivery out[4];
  ASSERT_EQ(rx.receive(out, 4), 0);
  EXPECT_EQ(rx.stats().dropped, 1u) << "counted at its first record";
  w.ep(1).flush();
  ASSERT_EQ(rx.receive(out, 4), 0);
  ASSERT_GT(w.ep(1).backlog_bytes(kReceiver), 0u) << "the message is not all through yet";
  publish_garbage(w, 64, test::test_seed() + 2);
  ASSERT_EQ(rx.receive(out, 4), 0);
  EXPECT_EQ(rx.stats().resets, 1u);
  bool ok;
  std::vector<Received> got = test::pump(w.ep(1), rx, &ok);
  ASSERT_TRUE(ok);
  EXPECT_TRUE(got.empty());
  EXPECT_EQ(rx.stats().dropped, 1u) << "the discarded message was counted again at its end";

  ASSERT_EQ(test::send_str(w.ep(1), rx.pid(), "next", "1"), Status::kOk);
  got = test::drain(rx);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(rx.stats().dropped, 1u);
}

TEST(Corrupt, WhatFollowsTheCorruptRecordGoesWithTheReset) {
  // The inbox is one ring: the receiver cannot read past a corrupt record,
  // so what any sender published after it, before the reset, is skipped
  // too. What was published before it arrives, and so does what comes
  // after the reset.
  World w(3, 4096);
  for (int i = 0; i < 5; ++i) {
    ASSERT_EQ(test::send_str(w.ep(2), w.pid(kReceiver), "ok", std::to_string(i)), Status::kOk);
  }
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(kReceiver), "bad", "x"), Status::kOk);
  w.shm().data(kReceiver)[5 * kTinyRecord + 4] ^= 0xff;  // sender 1's record's magic
  for (int i = 5; i < 10; ++i) {
    ASSERT_EQ(test::send_str(w.ep(2), w.pid(kReceiver), "ok", std::to_string(i)), Status::kOk);
  }
  std::vector<Received> got = test::drain(w.ep(kReceiver));
  ASSERT_EQ(got.size(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(got[i].data, std::to_string(i));
  EXPECT_EQ(w.ep(kReceiver).stats().resets, 1u);
  // the corrupt message and the five after it: lost, and counted
  EXPECT_EQ(w.ep(kReceiver).stats().dropped, 6u);
  EXPECT_EQ(w.shm().ctl(kReceiver)->tail.load(), w.shm().ctl(kReceiver)->head.load());

  for (int i = 10; i < 20; ++i) {
    std::uint32_t s = 1 + i % 2;
    ASSERT_EQ(test::send_str(w.ep(s), w.pid(kReceiver), "ok", std::to_string(i)), Status::kOk);
  }
  got = test::drain(w.ep(kReceiver));
  ASSERT_EQ(got.size(), 10u);
  for (int i = 10; i < 20; ++i) EXPECT_EQ(got[i - 10].data, std::to_string(i));
  EXPECT_EQ(w.ep(kReceiver).stats().resets, 1u);
}

}  // namespace
}  // namespace ngx_ipc
