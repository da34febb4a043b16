// ngx_ipc core tests: what the reload bridge (src/ngx_ipc_bridge.cpp) asks
// of one endpoint. A waker instead of wake-up fds, counters kept elsewhere
// than in the slot, a start that leaves the inbox unread, and limits other
// than the mapping's (the sender's, and the receiver's own). Multicast,
// send_slot, check_room and forget are in bridge_multicast_test.cpp;
// mappings of up to kMaxMappingSlots slots in bridge_mapping_test.cpp.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "bridge_util.h"
#include "ngx_ipc/endpoint.h"
#include "test_util.h"

namespace ngx_ipc {
namespace {

using test::always_alive;
using test::is_message;
using test::multicast_str;
using test::pump_all;
using test::Received;
using test::record_wake;
using test::Slots;
using test::World;

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t MiB = 1024 * KiB;

bool is_zero(const CoreStats& s) {
  CoreStats zero{};
  return std::memcmp(&s, &zero, sizeof s) == 0;
}

// True if sender's bit is set in receiver's waiters of kind w (and the
// inbox's flag for that kind with it).
bool marked_waiting(test::Shm& shm, std::uint32_t receiver, std::uint32_t sender, WaitFor w) {
  std::uint64_t bits = waiter_bits(shm.header(), receiver, w)[sender / 64].load();
  return (bits >> (sender % 64) & 1) != 0 && waiting_flag(shm.ctl(receiver), w).load() != 0;
}

std::vector<std::string> sorted_data(const std::vector<Received>& got) {
  std::vector<std::string> v;
  for (const Received& r : got) v.push_back(r.data);
  std::sort(v.begin(), v.end());
  return v;
}

// ---------------------------------------------------------------------------
// The waker

TEST(Bridge, WakerIsCalledInsteadOfAnFdWrite) {
  test::Shm shm(test::make_config(3, 4096, 1 * MiB, 64 * KiB));
  test::EventFds fds(3);
  Slots woken_by_a, woken_by_b;
  // a has fds too: the waker wins over them. b has none at all.
  Endpoint a(shm.header(), 0, fds.fds());
  Endpoint b(shm.header(), 1, nullptr);
  a.set_waker(&record_wake, &woken_by_a);
  b.set_waker(&record_wake, &woken_by_b);

  // The first process of a slot wakes nobody at start(); a successor
  // wakes every slot once, itself included, through the waker.
  a.start(100);
  EXPECT_TRUE(woken_by_a.empty());
  Endpoint(shm.header(), 1, nullptr).start(51);  // slot 1's first process, gone
  b.start(101);
  ASSERT_EQ(b.incarnation(), 2u);
  EXPECT_EQ(woken_by_b, (Slots{0, 1, 2}));
  woken_by_b.clear();

  // b sleeps: a's send wakes slot 1, once however many messages follow.
  Delivery out[4];
  ASSERT_EQ(b.receive(out, 4), 0);
  ASSERT_TRUE(b.armed());
  ASSERT_EQ(test::send_str(a, 101, "n", std::string("on\0e", 4)), Status::kOk);
  EXPECT_EQ(woken_by_a, (Slots{1}));
  EXPECT_FALSE(b.armed());
  ASSERT_EQ(test::send_str(a, 101, "n", "two"), Status::kOk);
  EXPECT_EQ(woken_by_a, (Slots{1})) << "an awake receiver is not woken again";
  std::vector<Received> got = test::drain(b);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].name, "n");
  EXPECT_EQ(got[0].data, std::string("on\0e", 4));
  EXPECT_EQ(got[0].sender_pid, 100);
  EXPECT_EQ(got[1].data, "two");
  EXPECT_TRUE(b.armed());

  // The other way: b, without fds, wakes a sleeping a through its waker.
  ASSERT_EQ(a.receive(out, 4), 0);
  ASSERT_EQ(test::send_str(b, 100, "back", "x"), Status::kOk);
  EXPECT_EQ(woken_by_b, (Slots{0}));
  got = test::drain(a);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "x");
  EXPECT_EQ(got[0].sender_pid, 101);

  a.wake_self();
  EXPECT_EQ(woken_by_a, (Slots{1, 0}));
  EXPECT_EQ(woken_by_b, (Slots{0}));
  // Not one fd write, neither by start() nor by a send.
  for (std::uint32_t k = 0; k < 3; ++k) EXPECT_EQ(fds.take(k), 0u) << "slot " << k;
}

TEST(Bridge, WakerWakesASenderWaitingForSpace) {
  // A message four times the ring: the receiver's releases wake the
  // sender (slot 0), the sender's flushes wake the receiver (slot 1), all
  // through the wakers, and the message arrives whole with no fd anywhere.
  test::Shm shm(test::make_config(2, 4096, 1 * MiB, 1 * MiB));
  Slots woken_by_a, woken_by_b;
  Endpoint a(shm.header(), 0, nullptr);
  Endpoint b(shm.header(), 1, nullptr);
  a.set_waker(&record_wake, &woken_by_a);
  b.set_waker(&record_wake, &woken_by_b);
  a.start(100);
  b.start(101);
  woken_by_a.clear();
  woken_by_b.clear();

  std::vector<unsigned char> big = test::make_message(7, 1, 16 * KiB);
  ASSERT_EQ(test::send_bytes(a, 101, "big", big), Status::kOk);
  ASSERT_GT(a.backlog_bytes(1), 0u);
  // a held b's inbox and found it full: it waits for room (not for the lock).
  EXPECT_TRUE(marked_waiting(shm, 1, 0, WaitFor::kRoom));
  EXPECT_FALSE(marked_waiting(shm, 1, 0, WaitFor::kLock));
  EXPECT_EQ(shm.ctl(1)->lock.load(), 0u) << "a never keeps the lock while it waits";

  // Each side acts only when the other woke it.
  std::vector<Received> got;
  std::size_t wakes_of_a = 0, wakes_of_b = 0;
  for (int round = 0; round < 1000 && got.empty(); ++round) {
    std::vector<Received> more = test::drain(b);
    got.insert(got.end(), more.begin(), more.end());
    if (!got.empty() || woken_by_b.empty()) break;
    for (std::uint32_t k : woken_by_b) EXPECT_EQ(k, 0u);
    wakes_of_a += woken_by_b.size();
    woken_by_b.clear();
    a.flush();
    for (std::uint32_t k : woken_by_a) EXPECT_EQ(k, 1u);
    wakes_of_b += woken_by_a.size();
    woken_by_a.clear();
  }
  ASSERT_EQ(got.size(), 1u) << "a wake-up was lost";
  EXPECT_TRUE(is_message(got[0], 7, 1, 16 * KiB));
  EXPECT_EQ(a.backlog_bytes(1), 0u);
  EXPECT_GT(wakes_of_a, 0u);
  EXPECT_GT(wakes_of_b, 0u);
}

// ---------------------------------------------------------------------------
// Counters elsewhere

TEST(Bridge, StatsOverrideCountsThereAndNotInTheSlot) {
  test::Shm shm(test::make_config(3, 4096, 1 * MiB, 64 * KiB));
  test::EventFds fds(3);
  CoreStats sa{}, sb{};
  sa.sent = 7;  // counts of the endpoint these belong to: start() keeps them
  Endpoint a(shm.header(), 0, fds.fds(), &sa);
  Endpoint b(shm.header(), 1, fds.fds(), &sb);
  Endpoint c(shm.header(), 2, fds.fds());  // counts in its slot
  a.set_alive_check(&always_alive);
  a.start(100);
  b.start(101);
  c.start(102);
  EXPECT_EQ(&a.stats(), &sa);
  EXPECT_EQ(&b.stats(), &sb);
  EXPECT_EQ(&c.stats(), &shm.slot(2)->counters.core);
  EXPECT_EQ(sa.sent, 7u);
  sa = CoreStats{};

  ASSERT_EQ(test::send_str(a, 101, "n", "hello"), Status::kOk);                       // 5 bytes
  ASSERT_EQ(test::broadcast_str(a, "b", "xyz", /*include_self=*/true), Status::kOk);  // 3 x 3
  ASSERT_EQ(test::send_str(a, 999999, "n", "x"), Status::kNoSuchWorker);
  EXPECT_EQ(sa.sent, 4u);
  EXPECT_EQ(sa.sent_bytes, 14u);
  EXPECT_EQ(sa.refused, 1u);
  EXPECT_TRUE(is_zero(shm.slot(0)->counters.core));

  std::vector<Received> got = test::drain(b);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].data, "hello");
  EXPECT_EQ(got[1].data, "xyz");
  EXPECT_EQ(sb.received, 2u);
  EXPECT_EQ(sb.received_bytes, 8u);
  EXPECT_TRUE(is_zero(shm.slot(1)->counters.core));
  ASSERT_EQ(test::drain(a).size(), 1u);
  EXPECT_EQ(sa.received, 1u);
  EXPECT_EQ(sa.received_bytes, 3u);
  ASSERT_EQ(test::drain(c).size(), 1u);
  EXPECT_EQ(shm.slot(2)->counters.core.received, 1u);
  EXPECT_TRUE(is_zero(shm.slot(0)->counters.core));

  // The backlog's bytes count there too...
  std::vector<unsigned char> big = test::make_message(0, 0, 20 * KiB);
  ASSERT_EQ(test::send_bytes(a, 102, "big", big), Status::kOk);
  EXPECT_EQ(sa.queued_bytes, a.backlog_bytes(2));
  EXPECT_GT(sa.queued_bytes, 0u);
  EXPECT_EQ(shm.slot(0)->counters.core.queued_bytes, 0u);
  // ... and what a receiver drops: slot 1's next process, with counters of
  // its own, drops a unicast for its predecessor.
  ASSERT_EQ(test::send_str(a, 101, "u", "for the old one"), Status::kOk);
  CoreStats sb2{};
  Endpoint b2(shm.header(), 1, fds.fds(), &sb2);
  b2.start(201);
  EXPECT_TRUE(test::drain(b2).empty());
  EXPECT_EQ(sb2.dropped, 1u);
  EXPECT_EQ(sb2.received, 0u);
  EXPECT_EQ(sb.dropped, 0u);
  EXPECT_TRUE(is_zero(shm.slot(1)->counters.core));

  bool ok;
  got = test::pump(a, c, &ok);
  ASSERT_TRUE(ok);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_TRUE(is_message(got[0], 0, 0, 20 * KiB));
  EXPECT_EQ(sa.queued_bytes, 0u);
  EXPECT_EQ(sa.sent, 6u);
  EXPECT_EQ(sa.sent_bytes, 14u + 20 * KiB + 15u);
  EXPECT_TRUE(is_zero(shm.slot(0)->counters.core));
}

// ---------------------------------------------------------------------------
// start() with skip_unread

TEST(Bridge, SkipUnreadLeavesWhatWaitsUnreadAndUncounted) {
  World w(3, 16 * KiB);
  const std::int32_t old = w.pid(1);
  // Everything slot 1's inbox can hold: unicasts, a broadcast and a
  // multicast from the others, and what its process sent itself.
  ASSERT_EQ(test::send_str(w.ep(0), old, "u", "a0"), Status::kOk);
  ASSERT_EQ(test::broadcast_str(w.ep(0), "b", "b0", false), Status::kOk);
  ASSERT_EQ(test::send_str(w.ep(2), old, "u", "a2"), Status::kOk);
  ASSERT_EQ(multicast_str(w.ep(2), {1}, "m", "m2"), Status::kOk);
  ASSERT_EQ(test::send_str(w.ep(1), old, "s", "self"), Status::kOk);

  // Its process is killed; the next one starts with skip_unread.
  Endpoint fresh(w.shm().header(), 1, w.fds().fds());
  fresh.set_alive_check(&always_alive);
  fresh.start(20001, /*skip_unread=*/true);
  EXPECT_EQ(fresh.incarnation(), 2u);
  // The inbox's space goes back to every sender at once.
  InboxCtl* in = w.shm().ctl(1);
  EXPECT_EQ(in->head_msgs.load(), 5u);
  EXPECT_GT(in->head.load(), 0u);
  EXPECT_EQ(in->tail.load(), in->head.load());
  EXPECT_EQ(in->tail_msgs.load(), in->head_msgs.load());
  EXPECT_FALSE(fresh.inbox_pending());
  EXPECT_TRUE(test::drain(fresh).empty());
  EXPECT_EQ(fresh.stats().received, 0u);
  EXPECT_EQ(fresh.stats().dropped, 0u);
  EXPECT_EQ(fresh.stats().resets, 0u);

  // What comes next is delivered, from every sender.
  ASSERT_EQ(test::send_str(w.ep(0), 20001, "u", "a0 again"), Status::kOk);
  ASSERT_EQ(test::broadcast_str(w.ep(2), "b", "b2 again", false), Status::kOk);
  ASSERT_EQ(multicast_str(w.ep(2), {1}, "m", "m2 again"), Status::kOk);
  ASSERT_EQ(test::send_str(fresh, 20001, "s", "self again"), Status::kOk);
  std::vector<Received> got = test::drain(fresh);
  EXPECT_EQ(sorted_data(got),
            (std::vector<std::string>{"a0 again", "b2 again", "m2 again", "self again"}));
  EXPECT_EQ(fresh.stats().received, 4u);
  EXPECT_EQ(fresh.stats().dropped, 0u);
  EXPECT_EQ(fresh.stats().resets, 0u);
}

TEST(Bridge, WithoutSkipUnreadTheSameInboxIsReadAndCounted) {
  // The same as above with a plain start(): the broadcast is delivered,
  // everything addressed to the previous process counted as dropped.
  World w(3, 16 * KiB);
  const std::int32_t old = w.pid(1);
  ASSERT_EQ(test::send_str(w.ep(0), old, "u", "a0"), Status::kOk);
  ASSERT_EQ(test::broadcast_str(w.ep(0), "b", "b0", false), Status::kOk);
  ASSERT_EQ(test::send_str(w.ep(2), old, "u", "a2"), Status::kOk);
  ASSERT_EQ(multicast_str(w.ep(2), {1}, "m", "m2"), Status::kOk);
  ASSERT_EQ(test::send_str(w.ep(1), old, "s", "self"), Status::kOk);
  Endpoint& fresh = w.respawn(1, 20001);
  std::vector<Received> got = test::drain(fresh);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "b0");
  EXPECT_EQ(fresh.stats().dropped, 4u);
}

TEST(Bridge, SkipUnreadWakesASenderWaitingForSpace) {
  test::Shm shm(test::make_config(2, 4096, 1 * MiB, 1 * MiB));
  Slots woken_by_a, woken_by_b, woken_by_next;
  Endpoint a(shm.header(), 0, nullptr);
  Endpoint b(shm.header(), 1, nullptr);
  a.set_waker(&record_wake, &woken_by_a);
  b.set_waker(&record_wake, &woken_by_b);
  a.start(100);
  b.start(101);
  std::vector<unsigned char> big = test::make_message(0, 0, 32 * KiB);
  ASSERT_EQ(test::send_bytes(a, 101, "big", big), Status::kOk);
  ASSERT_GT(a.backlog_bytes(1), 0u);
  ASSERT_TRUE(marked_waiting(shm, 1, 0, WaitFor::kRoom));

  // b is killed; its successor skips what the ring holds, which frees the
  // whole ring: the waiting sender is woken for it, then once more with
  // every slot by start().
  Endpoint next(shm.header(), 1, nullptr);
  next.set_waker(&record_wake, &woken_by_next);
  next.start(201, /*skip_unread=*/true);
  EXPECT_EQ(woken_by_next, (Slots{0, 0, 1}));
  EXPECT_EQ(shm.ctl(1)->room_waiting.load(), 0u);
  EXPECT_EQ(waiter_bits(shm.header(), 1, WaitFor::kRoom)[0].load(), 0u) << "a's mark cleared";
  EXPECT_EQ(shm.ctl(1)->tail.load(), shm.ctl(1)->head.load());

  // a goes on with the rest of the message it was writing for the dead
  // process: the new one drops it, counted once at its end (it came after
  // the start), and gets what follows.
  ASSERT_EQ(test::send_str(a, 201, "after", "x"), Status::kOk);
  bool ok;
  std::vector<Received> got = test::pump(a, next, &ok);
  ASSERT_TRUE(ok);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].name, "after");
  EXPECT_EQ(got[0].data, "x");
  EXPECT_EQ(next.stats().dropped, 1u);
  EXPECT_EQ(next.stats().received, 1u);
  EXPECT_EQ(a.stats().queued_bytes, 0u);
}

// ---------------------------------------------------------------------------
// Limits other than the mapping's

TEST(Bridge, SetLimitsOverridesTheMappingsLimits) {
  // The mapping says 1 MiB and 4 KiB; endpoint 0 says 8 KiB and 1 MiB.
  World w(3, 4096, 1 * MiB, 4 * KiB);
  Endpoint& e = w.ep(0);
  e.set_limits(8 * KiB, 1 * MiB);
  EXPECT_EQ(test::send_str(e, w.pid(1), "n", std::string(8 * KiB + 1, 'd')), Status::kTooLarge);
  EXPECT_EQ(test::broadcast_str(e, "n", std::string(8 * KiB + 1, 'd'), true), Status::kTooLarge);
  EXPECT_EQ(e.stats().refused, 2u);
  // Up to 1 MiB of backlog: far past the mapping's 4 KiB.
  std::uint64_t sent = 0;
  for (std::uint64_t i = 0; i < 20; ++i) {
    std::vector<unsigned char> m = test::make_message(0, i, 8 * KiB);
    ASSERT_EQ(test::send_bytes(e, w.pid(1), "n", m), Status::kOk) << i;
    ++sent;
  }
  EXPECT_GT(e.backlog_bytes(1), 100 * KiB);
  // Endpoint 2 keeps the mapping's: 4 KiB of backlog is its limit.
  std::vector<unsigned char> m = test::make_message(2, 0, 8 * KiB);
  ASSERT_EQ(test::send_bytes(w.ep(2), w.pid(1), "n", m), Status::kOk);
  EXPECT_EQ(test::send_bytes(w.ep(2), w.pid(1), "n", m), Status::kQueueFull);

  std::vector<std::vector<Received>> got;
  ASSERT_TRUE(pump_all(e, {&w.ep(1)}, &got));
  std::uint64_t from0 = 0;
  for (const Received& r : got[0]) {
    if (r.sender_pid != w.pid(0)) continue;
    EXPECT_TRUE(is_message(r, 0, from0, 8 * KiB)) << from0;
    ++from0;
  }
  EXPECT_EQ(from0, sent);
}

TEST(Bridge, AMessageOverTheReceiversOwnLimitIsDroppedAndCountedNotReset) {
  // Slot 1's process has a 100-byte limit; the mapping allows 1 MiB.
  World w(2, 64 * KiB, 1 * MiB, 4 * MiB, /*start_all=*/false);
  w.start(0, 10000);
  w.ep(1).set_limits(100, 4 * MiB);
  w.start(1, 10001);
  const std::string small(100, 's'), big(101, 'b'), huge(20000, 'h');
  ASSERT_EQ(test::send_str(w.ep(0), 10001, "m", small), Status::kOk);
  ASSERT_EQ(test::send_str(w.ep(0), 10001, "m", big), Status::kOk);
  ASSERT_EQ(test::send_str(w.ep(0), 10001, "m", huge), Status::kOk);  // fragments
  ASSERT_EQ(test::send_str(w.ep(0), 10001, "m", small), Status::kOk);
  std::vector<Received> got = test::drain(w.ep(1));
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].data, small);
  EXPECT_EQ(got[1].data, small);
  EXPECT_EQ(w.ep(1).stats().dropped, 2u);
  EXPECT_EQ(w.ep(1).stats().resets, 0u);
}

}  // namespace
}  // namespace ngx_ipc
