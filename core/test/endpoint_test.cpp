// ngx_ipc core tests: Endpoint send / broadcast / receive, error statuses
// and the counters; endpoints driven by one thread. The backlog is in
// endpoint_backlog_test.cpp, what the inbox lock changes (several senders
// in one inbox, a busy or dead holder) in endpoint_lock_test.cpp.

#include "ngx_ipc/endpoint.h"

#include <gtest/gtest.h>

#include <climits>
#include <map>
#include <string>
#include <vector>

#include "test_util.h"

namespace ngx_ipc {
namespace {

using test::Received;
using test::World;

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t MiB = 1024 * KiB;

TEST(Endpoint, SendAndReceiveBetweenTwoSlots) {
  World w(2, 4096);
  const std::string data("wor\0ld\xff", 7);
  ASSERT_EQ(test::send_str(w.ep(0), w.pid(1), "hello", data), Status::kOk);
  EXPECT_TRUE(w.ep(1).inbox_pending());
  EXPECT_FALSE(w.ep(0).inbox_pending());
  std::vector<Received> got = test::drain(w.ep(1));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].name, "hello");
  EXPECT_EQ(got[0].data, data);
  EXPECT_EQ(got[0].sender_pid, w.pid(0));
  EXPECT_EQ(got[0].flags, 0u);
  EXPECT_EQ(got[0].call_id, 0u);
  EXPECT_TRUE(test::drain(w.ep(0)).empty());
  EXPECT_FALSE(w.ep(1).inbox_pending());

  ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "back", ""), Status::kOk);
  got = test::drain(w.ep(0));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].name, "back");
  EXPECT_EQ(got[0].data, "");
  EXPECT_EQ(got[0].sender_pid, w.pid(1));
}

TEST(Endpoint, SendToSelf) {
  World w(2, 4096);
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(1), "me", "myself"), Status::kOk);
  EXPECT_TRUE(test::drain(w.ep(0)).empty());
  std::vector<Received> got = test::drain(w.ep(1));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].name, "me");
  EXPECT_EQ(got[0].data, "myself");
  EXPECT_EQ(got[0].sender_pid, w.pid(1));
}

TEST(Endpoint, SingleSlotMessagesItself) {
  // master_process off: one process, one slot.
  World w(1, 0);
  for (int i = 0; i < 100; ++i) {
    ASSERT_EQ(test::send_str(w.ep(0), w.pid(0), "n", std::to_string(i)), Status::kOk);
  }
  std::vector<Received> got = test::drain(w.ep(0));
  ASSERT_EQ(got.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(got[i].data, std::to_string(i));
}

TEST(Endpoint, FlagsAndCallIdTravel) {
  World w(2, 4096);
  const std::string name = "rpc";
  ASSERT_EQ(w.ep(0).send(w.pid(1), reinterpret_cast<const unsigned char*>(name.data()), name.size(),
                         nullptr, 0, kRequest, 42),
            Status::kOk);
  const std::uint16_t reply = kReply | (2u << 6);
  ASSERT_EQ(w.ep(0).send(w.pid(1), reinterpret_cast<const unsigned char*>(name.data()), name.size(),
                         reinterpret_cast<const unsigned char*>("r"), 1, reply, 0xffffffffu),
            Status::kOk);
  std::vector<Received> got = test::drain(w.ep(1));
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].flags, static_cast<std::uint32_t>(kRequest));
  EXPECT_EQ(got[0].call_id, 42u);
  EXPECT_EQ(got[0].data, "");
  EXPECT_EQ(got[1].flags, reply);
  EXPECT_EQ((got[1].flags & kStatusMask) >> 6, 2u);
  EXPECT_EQ(got[1].call_id, 0xffffffffu);
}

TEST(Endpoint, BatchesRespectMax) {
  World w(2, 64 * KiB);
  for (int i = 0; i < 10; ++i) {
    ASSERT_EQ(test::send_str(w.ep(0), w.pid(1), "b", std::to_string(i)), Status::kOk);
  }
  Delivery out[4];
  int expect = 0;
  for (int round = 0; round < 10 && expect < 10; ++round) {
    int n = w.ep(1).receive(out, 3);
    ASSERT_LE(n, 3);
    ASSERT_GT(n, 0);
    for (int j = 0; j < n; ++j) {
      EXPECT_EQ(test::copy_delivery(out[j]).data, std::to_string(expect++));
    }
  }
  EXPECT_EQ(expect, 10);
  EXPECT_EQ(w.ep(1).receive(out, 3), 0);
}

TEST(Endpoint, BatchesEndAtKBatchBytesOnceTheyHoldAMessage) {
  // Big messages come one or a few per batch, so that their ring space goes
  // back to the sender early; one bigger than kBatchBytes still comes whole.
  World w(2, 8 * MiB, 4 * MiB, 16 * MiB);
  const std::uint64_t part = kBatchBytes / 2 + 1;  // two of them pass the mark
  for (int i = 0; i < 4; ++i) {
    ASSERT_EQ(test::send_str(w.ep(0), w.pid(1), "p", std::string(part, char('a' + i))),
              Status::kOk);
  }
  ASSERT_EQ(test::send_str(w.ep(0), w.pid(1), "big", std::string(3 * MiB, 'z')), Status::kOk);
  Delivery out[16];
  ASSERT_EQ(w.ep(1).receive(out, 16), 2);
  EXPECT_EQ(test::copy_delivery(out[0]).data, std::string(part, 'a'));
  EXPECT_EQ(test::copy_delivery(out[1]).data, std::string(part, 'b'));
  ASSERT_EQ(w.ep(1).receive(out, 16), 2);
  EXPECT_EQ(test::copy_delivery(out[1]).data, std::string(part, 'd'));
  ASSERT_EQ(w.ep(1).receive(out, 16), 1);
  EXPECT_EQ(test::copy_delivery(out[0]).name, "big");
  EXPECT_EQ(out[0].data_len, 3 * MiB);
  EXPECT_EQ(w.ep(1).receive(out, 16), 0);
}

TEST(Endpoint, AMessageBiggerThanTheRingAndKBatchBytesCompletes) {
  // Fragments of one message past kBatchBytes: the batch may not end before
  // the message is whole, or the rest would wait for a wake-up that never
  // comes (the sender has published everything).
  World w(2, 64 * KiB, 8 * MiB, 16 * MiB);
  std::vector<unsigned char> data = test::make_message(1, 3, 3 * MiB);
  ASSERT_EQ(test::send_bytes(w.ep(0), w.pid(1), "f", data), Status::kOk);
  bool ok;
  std::vector<Received> got = test::pump(w.ep(0), w.ep(1), &ok);
  ASSERT_TRUE(ok);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data.size(), 3 * MiB);
}

TEST(Endpoint, LongestNameAndLargeDataArriveWhole) {
  World w(2, 4096, 2 * MiB, 64 * KiB);
  std::string name(kMaxNameLen, 'n');
  for (std::size_t i = 0; i < name.size(); ++i) name[i] = static_cast<char>('a' + i % 26);
  std::vector<unsigned char> data = test::make_message(1, 7, 2 * MiB);
  ASSERT_EQ(test::send_bytes(w.ep(0), w.pid(1), name, data), Status::kOk);
  bool ok;
  std::vector<Received> got = test::pump(w.ep(0), w.ep(1), &ok);
  ASSERT_TRUE(ok);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].name, name);
  test::MsgId id;
  ASSERT_TRUE(test::parse_message(reinterpret_cast<const unsigned char*>(got[0].data.data()),
                                  got[0].data.size(), &id));
  EXPECT_EQ(id.seq, 7u);
}

TEST(Endpoint, BroadcastIncludingSelf) {
  World w(4, 4096);
  ASSERT_EQ(test::broadcast_str(w.ep(1), "all", "news", true), Status::kOk);
  EXPECT_EQ(w.ep(1).stats().sent, 4u);
  for (std::uint32_t i = 0; i < 4; ++i) {
    std::vector<Received> got = test::drain(w.ep(i));
    ASSERT_EQ(got.size(), 1u) << "slot " << i;
    EXPECT_EQ(got[0].name, "all");
    EXPECT_EQ(got[0].data, "news");
    EXPECT_EQ(got[0].sender_pid, w.pid(1));
    EXPECT_EQ(got[0].flags, static_cast<std::uint32_t>(kBroadcast));
  }
}

TEST(Endpoint, BroadcastExcludingSelf) {
  World w(4, 4096);
  ASSERT_EQ(test::broadcast_str(w.ep(2), "others", "x", false), Status::kOk);
  EXPECT_EQ(w.ep(2).stats().sent, 3u);
  for (std::uint32_t i = 0; i < 4; ++i) {
    EXPECT_EQ(test::drain(w.ep(i)).size(), i == 2 ? 0u : 1u) << "slot " << i;
  }
}

TEST(Endpoint, BroadcastReachesASlotThatStartsLater) {
  World w(3, 4096, 1 * MiB, 64 * KiB, /*start_all=*/false);
  w.start(0, 10000);
  w.start(1, 10001);
  ASSERT_EQ(test::broadcast_str(w.ep(0), "early", "bird", true), Status::kOk);
  EXPECT_EQ(test::drain(w.ep(1)).size(), 1u);
  w.start(2, 10002);
  std::vector<Received> got = test::drain(w.ep(2));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "bird");
}

TEST(Endpoint, BroadcastSkipsACleanlyExitedSlot) {
  // A process that stopped cleanly (nginx quitting or reloading) reads no
  // more: broadcasts skip its slot instead of filling its ring and backlog.
  World w(3, 4096, 1 * MiB, 16 * KiB);
  w.ep(2).stop();
  const std::string data(10 * KiB, 'b');
  for (int i = 0; i < 50; ++i) {
    ASSERT_EQ(test::broadcast_str(w.ep(0), "b", data, true), Status::kOk) << i;
    std::size_t got0 = 0, got1 = 0;
    for (int round = 0; round < 100 && (got0 == 0 || got1 == 0); ++round) {
      w.ep(0).flush();
      got0 += test::drain(w.ep(0)).size();
      got1 += test::drain(w.ep(1)).size();
    }
    ASSERT_EQ(got0, 1u);
    ASSERT_EQ(got1, 1u);
  }
  EXPECT_EQ(w.ep(0).stats().sent, 100u);
  EXPECT_EQ(w.shm().ctl(2)->head.load(), 0u) << "nothing written to its inbox";
  EXPECT_EQ(w.ep(0).stats().queued_bytes, 0u);
  // The slot's next process gets the broadcasts sent from then on.
  Endpoint& next = w.respawn(2, 20002);
  EXPECT_TRUE(test::drain(next).empty());
  ASSERT_EQ(test::broadcast_str(w.ep(0), "b", "again", false), Status::kOk);
  std::vector<Received> got = test::drain(next);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "again");
}

TEST(Endpoint, ErrorStatuses) {
  World w(2, 4096, 1 * MiB, 64 * KiB);
  Endpoint& e = w.ep(0);
  const std::string ok_name(kMaxNameLen, 'x');
  const std::string long_name(kMaxNameLen + 1, 'x');
  std::vector<unsigned char> max_data(1 * MiB, 'd');
  std::vector<unsigned char> over_data(1 * MiB + 1, 'd');

  EXPECT_EQ(test::send_str(e, 999999, "n", "d"), Status::kNoSuchWorker);
  EXPECT_EQ(test::send_str(e, 0, "n", "d"), Status::kNoSuchWorker);
  EXPECT_EQ(test::send_str(e, -1, "n", "d"), Status::kNoSuchWorker);
  EXPECT_EQ(test::send_str(e, INT_MIN, "n", "d"), Status::kNoSuchWorker);
  EXPECT_EQ(test::send_str(e, w.pid(1), long_name, "d"), Status::kNameTooLong);
  EXPECT_EQ(test::broadcast_str(e, long_name, "d", true), Status::kNameTooLong);
  EXPECT_EQ(test::send_bytes(e, w.pid(1), "n", over_data), Status::kTooLarge);
  EXPECT_EQ(e.broadcast(reinterpret_cast<const unsigned char*>("n"), 1, over_data.data(),
                        over_data.size(), false),
            Status::kTooLarge);
  EXPECT_EQ(e.stats().refused, 8u);
  EXPECT_EQ(e.stats().sent, 0u);
  EXPECT_EQ(e.stats().queued_bytes, 0u);
  for (std::uint32_t k = 0; k < 2; ++k) {
    EXPECT_EQ(w.shm().ctl(k)->head.load(), 0u) << "a refused send wrote to inbox " << k;
    EXPECT_EQ(w.shm().ctl(k)->lock.load(), 0u) << "a refused send left inbox " << k << " locked";
  }

  // The limits themselves are accepted.
  EXPECT_EQ(test::send_str(e, w.pid(1), ok_name, "d"), Status::kOk);
  EXPECT_EQ(test::send_bytes(e, w.pid(0), "n", max_data), Status::kOk);
  EXPECT_EQ(e.stats().refused, 8u);
  EXPECT_EQ(e.stats().sent, 2u);

  // A slot whose process stopped cleanly has no PID.
  std::int32_t gone = w.pid(1);
  w.ep(1).stop();
  EXPECT_EQ(w.ep(0).slot_pid(1), 0);
  EXPECT_EQ(test::send_str(e, gone, "n", "d"), Status::kNoSuchWorker);
  EXPECT_EQ(e.stats().refused, 9u);
}

TEST(Endpoint, StatusMessages) {
  EXPECT_STREQ(status_message(Status::kOk), "ok");
  EXPECT_STREQ(status_message(Status::kNoSuchWorker), "no such worker");
  EXPECT_STREQ(status_message(Status::kNameTooLong), "name too long");
  EXPECT_STREQ(status_message(Status::kTooLarge), "message too large");
  EXPECT_STREQ(status_message(Status::kQueueFull), "queue full");
  EXPECT_STREQ(status_message(Status::kNoMemory), "no memory");
  EXPECT_STREQ(status_message(static_cast<Status>(77)), "unknown error");
}

TEST(Endpoint, SlotIdentity) {
  World w(3, 4096, 1 * MiB, 64 * KiB, /*start_all=*/false);
  EXPECT_EQ(w.ep(0).slot_pid(0), 0);
  w.start(0, 500);
  w.start(2, 502);
  EXPECT_EQ(w.ep(0).slot(), 0u);
  EXPECT_EQ(w.ep(0).nslots(), 3u);
  EXPECT_EQ(w.ep(0).pid(), 500);
  EXPECT_EQ(w.ep(0).incarnation(), 1u);
  EXPECT_EQ(w.ep(0).slot_pid(0), 500);
  EXPECT_EQ(w.ep(0).slot_pid(1), 0);
  EXPECT_EQ(w.ep(0).slot_pid(2), 502);
  EXPECT_EQ(w.ep(0).slot_pid(3), 0);  // out of range
  EXPECT_EQ(test::send_str(w.ep(0), 502, "n", ""), Status::kOk);
  w.ep(2).stop();
  EXPECT_EQ(w.ep(0).slot_pid(2), 0);
  EXPECT_EQ(identity_incarnation(w.shm().slot(2)->identity.load()), 1u);
}

TEST(Endpoint, Counters) {
  World w(3, 4096, 64 * KiB, 16 * KiB);
  Endpoint& a = w.ep(0);
  ASSERT_EQ(test::send_str(a, w.pid(1), "n", "12345"), Status::kOk);         // 5 bytes
  ASSERT_EQ(test::broadcast_str(a, "nn", "1234567890", true), Status::kOk);  // 3 x 10
  std::vector<unsigned char> big = test::make_message(1, 1, 60 * KiB);
  ASSERT_EQ(test::send_bytes(a, w.pid(2), "big", big), Status::kOk);  // queued in part
  ASSERT_EQ(test::send_str(a, 4242, "n", ""), Status::kNoSuchWorker);
  ASSERT_EQ(test::send_str(a, w.pid(2), "n", ""), Status::kQueueFull);

  CoreStats s = a.stats();
  EXPECT_EQ(s.sent, 5u);
  EXPECT_EQ(s.sent_bytes, 5u + 30u + 60 * KiB);
  EXPECT_EQ(s.refused, 2u);
  EXPECT_GT(s.queued_bytes, 60 * KiB - 4096);
  EXPECT_EQ(s.received, 0u);

  EXPECT_EQ(test::drain(w.ep(1)).size(), 2u);
  EXPECT_EQ(w.ep(1).stats().received, 2u);
  EXPECT_EQ(w.ep(1).stats().received_bytes, 15u);
  EXPECT_EQ(test::drain(w.ep(0)).size(), 1u);
  EXPECT_EQ(w.ep(0).stats().received_bytes, 10u);
  bool ok;
  EXPECT_EQ(test::pump(a, w.ep(2), &ok).size(), 2u);
  ASSERT_TRUE(ok);
  EXPECT_EQ(w.ep(2).stats().received, 2u);
  EXPECT_EQ(w.ep(2).stats().received_bytes, 10u + 60 * KiB);
  EXPECT_EQ(a.stats().queued_bytes, 0u);
  for (std::uint32_t i = 0; i < 3; ++i) {
    EXPECT_EQ(w.ep(i).stats().dropped, 0u);
    EXPECT_EQ(w.ep(i).stats().resets, 0u);
  }
}

// Every slot sends to every slot: order holds per (sender, receiver) pair.
TEST(Endpoint, AllPairsKeepTheirOrder) {
  const std::uint32_t n = 6;
  World w(n, 8192, 256 * KiB, 1 * MiB);
  test::Rng rng(test::test_seed() + 3);
  const std::uint64_t per_pair = 60;
  std::map<std::pair<std::int32_t, std::uint32_t>, std::uint64_t> next_seq;
  std::uint64_t received = 0;
  auto collect = [&](std::uint32_t i) {
    w.ep(i).flush();
    for (const Received& r : test::drain(w.ep(i))) {
      test::MsgId id;
      ASSERT_TRUE(test::parse_message(reinterpret_cast<const unsigned char*>(r.data.data()),
                                      r.data.size(), &id));
      ASSERT_EQ(r.sender_pid, w.pid(id.tag));
      std::uint64_t& expect = next_seq[std::make_pair(r.sender_pid, i)];
      EXPECT_EQ(id.seq, expect++) << "from " << id.tag << " to " << i;
      ++received;
    }
  };
  for (std::uint64_t seq = 0; seq < per_pair; ++seq) {
    for (std::uint32_t from = 0; from < n; ++from) {
      for (std::uint32_t to = 0; to < n; ++to) {
        std::vector<unsigned char> m =
            test::make_message(from, seq, rng.next() % 5 == 0 ? rng.range(16, 40000) : 40);
        ASSERT_EQ(test::send_bytes(w.ep(from), w.pid(to), "p", m), Status::kOk);
      }
    }
    for (std::uint32_t i = 0; i < n; ++i) collect(i);
  }
  for (int round = 0; round < 1000 && received < n * n * per_pair; ++round) {
    for (std::uint32_t i = 0; i < n; ++i) collect(i);
  }
  EXPECT_EQ(received, n * n * per_pair);
}

}  // namespace
}  // namespace ngx_ipc
