// ngx_ipc core tests: the bounded backlog. What an inbox cannot take yet
// waits in the sender's backlog for that destination, in order; a send is
// refused once the backlog holds queue_limit bytes, a broadcast if any
// destination's does (all or nothing); a backlog for a process that is
// gone is dropped and counted. Endpoints driven by one thread.

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

TEST(Backlog, BacklogForACleanlyExitedSlotIsDroppedAndCounted) {
  World w(3, 4096, 1 * MiB, 64 * KiB);
  std::vector<unsigned char> big = test::make_message(0, 0, 200 * KiB);
  ASSERT_EQ(test::send_bytes(w.ep(0), w.pid(2), "big", big), Status::kOk);
  ASSERT_EQ(test::send_str(w.ep(0), w.pid(2), "small", "x"), Status::kQueueFull);
  ASSERT_EQ(test::send_str(w.ep(0), w.pid(1), "other", "y"), Status::kOk);
  ASSERT_GT(w.ep(0).stats().queued_bytes, 0u);
  w.ep(2).stop();
  w.ep(0).flush();
  EXPECT_EQ(w.ep(0).stats().queued_bytes, 0u);
  EXPECT_EQ(w.ep(0).stats().dropped, 1u);
  EXPECT_EQ(test::drain(w.ep(1)).size(), 1u);
  // The partial message left in the ring is dropped by the slot's next
  // process, which then hears new messages.
  Endpoint& next = w.respawn(2, 20002);
  ASSERT_EQ(test::send_str(w.ep(0), 20002, "hello", "again"), Status::kOk);
  bool ok;
  std::vector<Received> got = test::pump(w.ep(0), next, &ok);
  ASSERT_TRUE(ok);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].name, "hello");
  EXPECT_EQ(next.stats().dropped, 1u);
  EXPECT_EQ(next.stats().resets, 0u);
}

TEST(Backlog, BroadcastIsAllOrNothing) {
  World w(3, 4096, 1 * MiB, 64 * KiB);
  // Slot 2 never reads: a 1 MiB unicast fills its ring and the backlog.
  std::vector<unsigned char> big = test::make_message(0, 0, 1 * MiB);
  ASSERT_EQ(test::send_bytes(w.ep(0), w.pid(2), "big", big), Status::kOk);
  const CoreStats before = w.ep(0).stats();
  const std::uint64_t head1 = w.shm().ctl(1)->head.load();
  EXPECT_EQ(test::broadcast_str(w.ep(0), "b", "1", true), Status::kQueueFull);
  EXPECT_EQ(test::broadcast_str(w.ep(0), "b", "2", false), Status::kQueueFull);
  EXPECT_EQ(w.ep(0).stats().sent, before.sent);
  EXPECT_EQ(w.ep(0).stats().refused, before.refused + 2);
  EXPECT_EQ(w.ep(0).stats().queued_bytes, before.queued_bytes);
  EXPECT_EQ(w.shm().ctl(1)->head.load(), head1) << "nothing queued for slot 1";
  EXPECT_EQ(w.shm().ctl(0)->head.load(), 0u) << "nothing queued for slot 0";
  EXPECT_TRUE(test::drain(w.ep(1)).empty());
  EXPECT_TRUE(test::drain(w.ep(0)).empty());

  // Once slot 2 drains, the broadcast goes to all.
  bool ok;
  std::vector<Received> got = test::pump(w.ep(0), w.ep(2), &ok);
  ASSERT_TRUE(ok);
  ASSERT_EQ(got.size(), 1u);
  ASSERT_EQ(test::broadcast_str(w.ep(0), "b", "3", true), Status::kOk);
  for (std::uint32_t i = 0; i < 3; ++i) {
    got = test::drain(w.ep(i));
    ASSERT_EQ(got.size(), 1u) << "slot " << i;
    EXPECT_EQ(got[0].data, "3");
  }
}

TEST(Backlog, FullBacklogForADeadProcessIsDroppedNotBlocking) {
  // Slot 1's process died and nobody respawns it (an old generation after a
  // reload): once the backlog for it is full, unicasts get "no such worker"
  // and broadcasts skip it, instead of "queue full" for ever.
  World w(3, 4096, 1 << 20, 16 << 10);
  std::int32_t gone = test::dead_pid();
  w.start(1, gone);
  std::string data(1000, 'x');
  Status s = Status::kOk;
  for (int i = 0; i < 1000 && s == Status::kOk; ++i) s = test::send_str(w.ep(0), gone, "n", data);
  EXPECT_EQ(s, Status::kNoSuchWorker);
  EXPECT_GT(w.ep(0).stats().dropped, 0u);
  EXPECT_EQ(w.ep(0).stats().queued_bytes, 0u);
  // 200 KB of broadcasts: the dead slot's backlog fills and is dropped
  // again and again, never refusing. Slot 2 is alive and drains as it goes:
  // it gets all 200, in order.
  std::uint64_t dropped = w.ep(0).stats().dropped;
  std::vector<Received> got;
  for (int i = 0; i < 200; ++i) {
    ASSERT_EQ(test::broadcast_str(w.ep(0), "b", std::to_string(i) + data, false), Status::kOk) << i;
    std::vector<Received> more = test::drain(w.ep(2));
    got.insert(got.end(), more.begin(), more.end());
    w.ep(0).flush();
  }
  for (int round = 0; round < 1000 && got.size() < 200; ++round) {
    std::vector<Received> more = test::drain(w.ep(2));
    got.insert(got.end(), more.begin(), more.end());
    w.ep(0).flush();
  }
  ASSERT_EQ(got.size(), 200u);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(got[i].data, std::to_string(i) + data);
  EXPECT_GT(w.ep(0).stats().dropped, dropped + 100);
}

// The backlog: a message that starts below queue_limit is accepted whatever
// its size (up to max_message); once the backlog holds queue_limit bytes or
// more, sends to that destination are refused until it drains.
TEST(Backlog, QueueFullOnlyOnceTheBacklogReachesTheLimit) {
  World w(2, 4096, 1 * MiB, 64 * KiB);
  Endpoint& s = w.ep(0);
  std::vector<unsigned char> big = test::make_message(0, 0, 1 * MiB);
  ASSERT_EQ(test::send_bytes(s, w.pid(1), "q", big), Status::kOk);
  EXPECT_GT(s.stats().queued_bytes, 1 * MiB - 4096);
  EXPECT_EQ(test::send_str(s, w.pid(1), "q", "tiny"), Status::kQueueFull);
  EXPECT_EQ(test::send_bytes(s, w.pid(1), "q", big), Status::kQueueFull);
  EXPECT_EQ(s.stats().refused, 2u);
  // Other destinations are not affected.
  EXPECT_EQ(test::send_str(s, w.pid(0), "q", "self"), Status::kOk);

  // Drain until the backlog is just under the limit: a whole 1 MiB is
  // accepted again.
  Delivery out[8];
  std::vector<Received> got;
  for (int i = 0; i < 100000 && s.stats().queued_bytes >= 64 * KiB; ++i) {
    int n = w.ep(1).receive(out, 8);
    for (int j = 0; j < n; ++j) got.push_back(test::copy_delivery(out[j]));
    s.flush();
  }
  ASSERT_LT(s.stats().queued_bytes, 64 * KiB);
  std::vector<unsigned char> big2 = test::make_message(0, 1, 1 * MiB);
  EXPECT_EQ(test::send_bytes(s, w.pid(1), "q", big2), Status::kOk);
  EXPECT_GE(s.stats().queued_bytes, 1 * MiB);

  bool ok;
  for (Received& r : test::pump(s, w.ep(1), &ok)) got.push_back(std::move(r));
  ASSERT_TRUE(ok);
  ASSERT_EQ(got.size(), 2u);
  for (std::uint64_t i = 0; i < 2; ++i) {
    test::MsgId id;
    ASSERT_TRUE(test::parse_message(reinterpret_cast<const unsigned char*>(got[i].data.data()),
                                    got[i].data.size(), &id));
    EXPECT_EQ(id.seq, i);
  }
  EXPECT_EQ(s.stats().queued_bytes, 0u);
  EXPECT_EQ(test::drain(w.ep(0)).size(), 1u);
}

TEST(Backlog, QueueLimitBoundaryWithSmallMessages) {
  const std::uint64_t limit = 20000;
  World w(2, 4096, 1 * MiB, limit);
  Endpoint& s = w.ep(0);
  std::uint64_t accepted = 0;
  bool refused = false;
  for (std::uint64_t i = 0; i < 1000 && !refused; ++i) {
    std::uint64_t before = s.stats().queued_bytes;
    std::vector<unsigned char> m = test::make_message(3, i, 1000);
    Status st = test::send_bytes(s, w.pid(1), "x", m);
    if (st == Status::kOk) {
      EXPECT_LT(before, limit) << "accepted at a backlog of " << before;
      ++accepted;
    } else {
      EXPECT_EQ(st, Status::kQueueFull);
      EXPECT_GE(before, limit) << "refused at a backlog of " << before;
      EXPECT_LT(before, limit + 1001) << "the last accepted message started below the limit";
      refused = true;
    }
  }
  ASSERT_TRUE(refused);
  bool ok;
  std::vector<Received> got = test::pump(s, w.ep(1), &ok);
  ASSERT_TRUE(ok);
  ASSERT_EQ(got.size(), accepted);
  for (std::uint64_t i = 0; i < accepted; ++i) {
    test::MsgId id;
    ASSERT_TRUE(test::parse_message(reinterpret_cast<const unsigned char*>(got[i].data.data()),
                                    got[i].data.size(), &id));
    EXPECT_EQ(id.seq, i);
    EXPECT_EQ(id.tag, 3u);
  }
}

// Mixed sizes through a small ring with the receiver draining a little at a
// time: everything accepted arrives once, in order, byte-exact, and the
// counters agree.
TEST(Backlog, BacklogDrainsInOrderAsTheReceiverFreesSpace) {
  World w(3, 4096, 512 * KiB, 64 * KiB);
  Endpoint& s = w.ep(0);
  Endpoint& r = w.ep(1);
  test::Rng rng(test::test_seed());
  const std::uint64_t n = 400;
  std::uint64_t next = 0, sent_bytes = 0, queue_full = 0;
  std::vector<Received> got;
  Delivery out[4];
  for (int round = 0; round < 1000000 && got.size() < n; ++round) {
    if (next < n) {
      std::size_t len = rng.next() % 4 == 0 ? rng.range(16, 512 * KiB) : rng.range(16, 3000);
      std::vector<unsigned char> m = test::make_message(0, next, len);
      Status st = test::send_bytes(s, w.pid(1), "m" + std::to_string(next), m);
      if (st == Status::kOk) {
        ++next;
        sent_bytes += len;
      } else {
        ASSERT_EQ(st, Status::kQueueFull);
        ++queue_full;
      }
    }
    // The receiver takes a random small batch; the sender flushes on wake-up.
    int k = w.ep(1).receive(out, static_cast<int>(rng.range(1, 4)));
    for (int j = 0; j < k; ++j) got.push_back(test::copy_delivery(out[j]));
    if (test::EventFds& f = w.fds(); f.take(0) != 0) s.flush();
    if (next == n) s.flush();
  }
  ASSERT_EQ(got.size(), n);
  for (std::uint64_t i = 0; i < n; ++i) {
    EXPECT_EQ(got[i].name, "m" + std::to_string(i));
    test::MsgId id;
    ASSERT_TRUE(test::parse_message(reinterpret_cast<const unsigned char*>(got[i].data.data()),
                                    got[i].data.size(), &id))
        << "message " << i << " is not byte-exact";
    EXPECT_EQ(id.seq, i);
  }
  EXPECT_GT(queue_full, 0u) << "the test did not reach the queue limit";
  EXPECT_EQ(s.stats().sent, n);
  EXPECT_EQ(s.stats().sent_bytes, sent_bytes);
  EXPECT_EQ(s.stats().refused, queue_full);
  EXPECT_EQ(s.stats().queued_bytes, 0u);
  EXPECT_EQ(r.stats().received, n);
  EXPECT_EQ(r.stats().received_bytes, sent_bytes);
  EXPECT_EQ(r.stats().dropped, 0u);
  EXPECT_EQ(r.stats().resets, 0u);
}

}  // namespace
}  // namespace ngx_ipc
