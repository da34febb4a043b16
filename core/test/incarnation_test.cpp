// ngx_ipc core tests: incarnations. A slot's new process (start() with
// another PID) never gets what was addressed to its predecessor, still gets
// broadcasts, and a sender's restart in the middle of a fragmented message
// drops the partial without disturbing what follows, from it or from the
// other senders whose fragments share the inbox (one reassembler each).

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "ngx_ipc/endpoint.h"
#include "test_util.h"

namespace ngx_ipc {
namespace {

using test::Received;
using test::World;

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t MiB = 1024 * KiB;

TEST(Incarnation, CountsUpAndSkipsZero) {
  World w(2, 4096, 1 * MiB, 64 * KiB, /*start_all=*/false);
  w.start(1, 300);
  EXPECT_EQ(w.ep(1).incarnation(), 1u);
  EXPECT_EQ(w.shm().slot(1)->identity.load(), make_identity(1, 300));
  w.ep(1).stop();
  EXPECT_EQ(w.shm().slot(1)->identity.load(), make_identity(1, 0));
  EXPECT_EQ(w.respawn(1, 301).incarnation(), 2u);
  EXPECT_EQ(w.respawn(1, 302).incarnation(), 3u);
  EXPECT_EQ(w.ep(1).slot_pid(1), 302);
  // 0 means "any incarnation" in a record: the counter wraps past it.
  w.shm().slot(1)->identity.store(make_identity(0xffffffffu, 302));
  EXPECT_EQ(w.respawn(1, 303).incarnation(), 1u);
  EXPECT_EQ(identity_pid(make_identity(7, -5)), -5);
  EXPECT_EQ(identity_incarnation(make_identity(7, -5)), 7u);
}

TEST(Incarnation, UnicastToThePreviousProcessIsDroppedBroadcastIsNot) {
  World w(2, 4096);
  const std::int32_t old_pid = w.pid(1);
  ASSERT_EQ(test::send_str(w.ep(0), old_pid, "u", "for the old one"), Status::kOk);
  ASSERT_EQ(test::broadcast_str(w.ep(0), "b", "for the slot", false), Status::kOk);

  Endpoint& fresh = w.respawn(1, 20001);
  EXPECT_EQ(fresh.incarnation(), 2u);
  EXPECT_EQ(test::send_str(w.ep(0), old_pid, "u", "late"), Status::kNoSuchWorker);
  ASSERT_EQ(test::send_str(w.ep(0), 20001, "u", "for the new one"), Status::kOk);

  std::vector<Received> got = test::drain(fresh);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].data, "for the slot");
  EXPECT_EQ(got[0].flags, static_cast<std::uint32_t>(kBroadcast));
  EXPECT_EQ(got[1].data, "for the new one");
  EXPECT_EQ(fresh.stats().dropped, 1u);
  EXPECT_EQ(fresh.stats().received, 2u);
  EXPECT_EQ(fresh.stats().resets, 0u);
}

TEST(Incarnation, FragmentedUnicastToThePreviousProcessIsDroppedOnce) {
  World w(2, 4096, 2 * MiB, 4 * MiB);
  std::vector<unsigned char> big = test::make_message(0, 0, 1 * MiB);
  ASSERT_EQ(test::send_bytes(w.ep(0), w.pid(1), "big", big), Status::kOk);
  ASSERT_GT(w.ep(0).stats().queued_bytes, 0u);  // the ring took only the start
  ASSERT_EQ(test::broadcast_str(w.ep(0), "b", "after", false), Status::kOk);

  Endpoint& fresh = w.respawn(1, 20001);
  bool ok;
  std::vector<Received> got = test::pump(w.ep(0), fresh, &ok);
  ASSERT_TRUE(ok);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "after");
  EXPECT_EQ(fresh.stats().dropped, 1u);
  EXPECT_EQ(w.ep(0).stats().queued_bytes, 0u);

  std::vector<unsigned char> big2 = test::make_message(0, 1, 1 * MiB);
  ASSERT_EQ(test::send_bytes(w.ep(0), 20001, "big", big2), Status::kOk);
  got = test::pump(w.ep(0), fresh, &ok);
  ASSERT_TRUE(ok);
  ASSERT_EQ(got.size(), 1u);
  test::MsgId id;
  ASSERT_TRUE(test::parse_message(reinterpret_cast<const unsigned char*>(got[0].data.data()),
                                  got[0].data.size(), &id));
  EXPECT_EQ(id.seq, 1u);
  EXPECT_EQ(fresh.stats().dropped, 1u);
}

TEST(Incarnation, ReceiverRestartInTheMiddleOfAMessage) {
  // The old receiver took (and released) the first fragments of a
  // broadcast; its successor sees the rest without a first fragment.
  World w(2, 4096, 2 * MiB, 4 * MiB);
  std::vector<unsigned char> big = test::make_message(0, 0, 512 * KiB);
  ASSERT_EQ(w.ep(0).broadcast(reinterpret_cast<const unsigned char*>("b"), 1, big.data(),
                              big.size(), false),
            Status::kOk);
  Delivery out[4];
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(w.ep(1).receive(out, 4), 0);
    w.ep(0).flush();
  }
  ASSERT_EQ(test::send_str(w.ep(0), 20001, "x", ""), Status::kNoSuchWorker);
  Endpoint& fresh = w.respawn(1, 20001);
  ASSERT_EQ(test::send_str(w.ep(0), 20001, "next", "one"), Status::kOk);
  bool ok;
  std::vector<Received> got = test::pump(w.ep(0), fresh, &ok);
  ASSERT_TRUE(ok);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].name, "next");
  EXPECT_EQ(fresh.stats().dropped, 1u);
  EXPECT_EQ(fresh.stats().resets, 0u);
}

TEST(Incarnation, SenderRestartInTheMiddleOfAMessage) {
  World w(2, 4096, 2 * MiB, 4 * MiB);
  Endpoint& r = w.ep(0);
  std::vector<unsigned char> big = test::make_message(1, 0, 1 * MiB);
  ASSERT_EQ(test::send_bytes(w.ep(1), w.pid(0), "big", big), Status::kOk);
  // The receiver copies the first fragments; the sender writes a few more.
  Delivery out[4];
  for (int i = 0; i < 10; ++i) {
    ASSERT_EQ(r.receive(out, 4), 0);
    w.ep(1).flush();
  }
  // The sender dies with most of the message in its backlog; its successor
  // sends small and large messages.
  Endpoint& s = w.respawn(1, 20001);
  const std::size_t sizes[] = {16, 100, 200 * KiB, 16, 3000, 1 * MiB};
  for (std::size_t i = 0; i < std::size(sizes); ++i) {
    std::vector<unsigned char> m = test::make_message(2, i, sizes[i]);
    ASSERT_EQ(test::send_bytes(s, w.pid(0), "new", m), Status::kOk);
  }
  bool ok;
  std::vector<Received> got = test::pump(s, r, &ok);
  ASSERT_TRUE(ok);
  ASSERT_EQ(got.size(), std::size(sizes));
  for (std::size_t i = 0; i < got.size(); ++i) {
    test::MsgId id;
    ASSERT_TRUE(test::parse_message(reinterpret_cast<const unsigned char*>(got[i].data.data()),
                                    got[i].data.size(), &id));
    EXPECT_EQ(id.tag, 2u);
    EXPECT_EQ(id.seq, i);
    EXPECT_EQ(got[i].sender_pid, 20001);
  }
  EXPECT_EQ(r.stats().dropped, 1u);
  EXPECT_EQ(r.stats().received, std::size(sizes));
  EXPECT_EQ(r.stats().resets, 0u);
}

TEST(Incarnation, OldAndNewUnicastsInOneInbox) {
  World w(2, 64 * KiB);
  const std::int32_t old_pid = w.pid(1);
  for (int i = 0; i < 5; ++i) {
    ASSERT_EQ(test::send_str(w.ep(0), old_pid, "u", "old" + std::to_string(i)), Status::kOk);
  }
  Endpoint& fresh = w.respawn(1, 20001);
  for (int i = 0; i < 5; ++i) {
    ASSERT_EQ(test::send_str(w.ep(0), 20001, "u", "new" + std::to_string(i)), Status::kOk);
  }
  std::vector<Received> got = test::drain(fresh);
  ASSERT_EQ(got.size(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(got[i].data, "new" + std::to_string(i));
  EXPECT_EQ(fresh.stats().dropped, 5u);
}

// Slot 0 reads; slots 1 and 2 each have a fragmented message half in its
// inbox (the receiver copied the first fragments) and the rest in their
// backlogs.
void two_half_messages(World& w) {
  for (std::uint32_t s = 1; s <= 2; ++s) {
    std::vector<unsigned char> big = test::make_message(s, 0, 64 * KiB);
    ASSERT_EQ(test::send_bytes(w.ep(s), w.pid(0), "big", big), Status::kOk);
  }
  Delivery out[4];
  for (int i = 0; i < 6; ++i) {
    ASSERT_EQ(w.ep(0).receive(out, 4), 0);
    w.ep(1 + i % 2).flush();
    w.ep(2 - i % 2).flush();
  }
  ASSERT_GT(w.ep(1).stats().queued_bytes, 0u);
  ASSERT_GT(w.ep(2).stats().queued_bytes, 0u);
}

TEST(Incarnation, SenderRestartLeavesTheOtherSendersMessageWhole) {
  World w(3, 4096, 2 * MiB, 4 * MiB);
  two_half_messages(w);
  // Slot 1 dies mid-message; its successor sends while slot 2's message
  // is still coming, fragment after fragment.
  Endpoint& s1 = w.respawn(1, 20001);
  ASSERT_EQ(test::send_bytes(s1, w.pid(0), "new", test::make_message(1, 1, 30 * KiB)), Status::kOk);
  bool ok;
  std::vector<Received> got = test::pump_senders({&s1, &w.ep(2)}, w.ep(0), &ok);
  ASSERT_TRUE(ok);
  ASSERT_EQ(got.size(), 2u);
  for (const Received& r : got) {
    test::MsgId id;
    ASSERT_TRUE(test::parse_message(reinterpret_cast<const unsigned char*>(r.data.data()),
                                    r.data.size(), &id));
    if (r.sender_pid == 20001) {
      EXPECT_EQ(id.tag, 1u);
      EXPECT_EQ(id.seq, 1u) << "the new process's message";
    } else {
      EXPECT_EQ(r.sender_pid, w.pid(2));
      EXPECT_EQ(id.tag, 2u);
      EXPECT_EQ(id.seq, 0u) << "slot 2's message, whole";
    }
  }
  EXPECT_EQ(w.ep(0).stats().dropped, 1u) << "slot 1's half message, once";
  EXPECT_EQ(w.ep(0).stats().resets, 0u);
}

TEST(Incarnation, ReceiverRestartDropsEachSendersHalfMessageOnce) {
  // The old receiver copied the first fragments of two senders' messages;
  // its successor sees the rest of each without a first fragment.
  World w(3, 4096, 2 * MiB, 4 * MiB);
  two_half_messages(w);
  Endpoint& fresh = w.respawn(0, 20000);
  for (std::uint32_t s = 1; s <= 2; ++s) {
    ASSERT_EQ(test::send_str(w.ep(s), 20000, "next", std::to_string(s)), Status::kOk);
  }
  bool ok;
  std::vector<Received> got = test::pump_senders({&w.ep(1), &w.ep(2)}, fresh, &ok);
  ASSERT_TRUE(ok);
  ASSERT_EQ(got.size(), 2u);
  for (const Received& r : got) {
    EXPECT_EQ(r.name, "next");
    EXPECT_EQ(r.data, std::to_string(r.sender_pid - 10000));
  }
  EXPECT_EQ(fresh.stats().dropped, 2u);
  EXPECT_EQ(fresh.stats().resets, 0u);
}

}  // namespace
}  // namespace ngx_ipc
