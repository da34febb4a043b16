// ngx_ipc core tests: the reload bridge's sends (src/ngx_ipc_bridge.cpp).
// Multicast to the incarnations that hold the listed slots (or to the
// listed PIDs there), send_slot to a slot while a given PID holds it,
// check_room before a multicast (all or none for a live slot, a dead slot's
// backlog dropped), and forget, which drops one slot's backlog.

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "bridge_util.h"
#include "ngx_ipc/endpoint.h"
#include "test_util.h"

namespace ngx_ipc {
namespace {

using test::always_alive;
using test::bytes;
using test::is_message;
using test::multicast_str;
using test::pump_all;
using test::Received;
using test::Slots;
using test::World;

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t MiB = 1024 * KiB;

bool never_alive(std::int32_t) { return false; }

Status multicast_bytes(Endpoint& ep, const Slots& slots, const std::string& name,
                       const std::vector<unsigned char>& data) {
  return ep.multicast(slots.data(), nullptr, slots.size(), bytes(name), name.size(), data.data(),
                      data.size());
}

Status check_room(Endpoint& ep, const Slots& slots) {
  return ep.check_room(slots.data(), slots.size());
}

// The header of the record at byte `at` of receiver's inbox ring.
RecordHeader record_at(test::Shm& shm, std::uint32_t receiver, std::uint64_t at = 0) {
  RecordHeader h;
  std::memcpy(&h, shm.data(receiver) + at, sizeof h);
  return h;
}

// ---------------------------------------------------------------------------
// Multicast and send_slot

TEST(Bridge, MulticastReachesExactlyTheListedLiveSlots) {
  // 0 sends; 1 and 5 run; 2 runs but is not listed; 3 never started; 4
  // stopped cleanly; 9 is out of range; 0 is the sender itself.
  World w(6, 4096, 1 * MiB, 64 * KiB, /*start_all=*/false);
  for (std::uint32_t i : {0u, 1u, 2u, 4u, 5u}) w.start(i, static_cast<std::int32_t>(10000 + i));
  w.ep(4).stop();
  std::vector<unsigned char> data = test::make_message(0, 42, 300);
  data[20] = 0;
  data[21] = 0xff;
  const std::string name("cache:purge\0x", 13);
  ASSERT_EQ(multicast_bytes(w.ep(0), {0, 1, 3, 4, 5, 9}, name, data), Status::kOk);
  EXPECT_EQ(w.ep(0).stats().sent, 2u);
  EXPECT_EQ(w.ep(0).stats().sent_bytes, 600u);
  EXPECT_EQ(w.ep(0).stats().refused, 0u);

  // One record for each, a broadcast addressed to the incarnation there.
  for (std::uint32_t k : {1u, 5u}) {
    RecordHeader h = record_at(w.shm(), k);
    EXPECT_EQ(h.flags, kBroadcast | kFirst | kLast) << "slot " << k;
    EXPECT_EQ(h.target_incarnation, 1u) << "slot " << k;
    EXPECT_EQ(h.sender_pid, 10000);
    EXPECT_EQ(h.sender_slot, 0u);
    EXPECT_EQ(h.sender_incarnation, 1u);
    EXPECT_EQ(h.total_len, name.size() + data.size());
    EXPECT_EQ(w.shm().ctl(k)->head_msgs.load(), 1u);
  }
  for (std::uint32_t k : {0u, 2u, 3u, 4u}) {
    EXPECT_EQ(w.shm().ctl(k)->head.load(), 0u) << "slot " << k << " was not to get it";
  }

  for (std::uint32_t k : {1u, 5u}) {
    std::vector<Received> got = test::drain(w.ep(k));
    ASSERT_EQ(got.size(), 1u) << "slot " << k;
    EXPECT_EQ(got[0].name, name);
    ASSERT_EQ(got[0].data.size(), data.size());
    EXPECT_EQ(std::memcmp(got[0].data.data(), data.data(), data.size()), 0);
    EXPECT_EQ(got[0].sender_pid, 10000);
    EXPECT_EQ(got[0].flags, static_cast<std::uint32_t>(kBroadcast));
    EXPECT_EQ(got[0].call_id, 0u);
    EXPECT_EQ(w.ep(k).stats().received, 1u);
    EXPECT_EQ(w.ep(k).stats().received_bytes, 300u);
  }
  for (std::uint32_t k : {0u, 2u}) EXPECT_TRUE(test::drain(w.ep(k)).empty()) << "slot " << k;
  // Unlike a broadcast, a multicast is not kept for a slot that starts
  // later, nor for the next process of a slot that stopped.
  w.start(3, 10003);
  w.respawn(4, 20004);
  for (std::uint32_t k : {3u, 4u}) {
    EXPECT_TRUE(test::drain(w.ep(k)).empty()) << "slot " << k;
    EXPECT_EQ(w.ep(k).stats().dropped, 0u) << "slot " << k;
  }

  // A later incarnation is addressed as such.
  w.respawn(5, 20005);
  w.respawn(5, 30005);
  ASSERT_EQ(w.ep(5).incarnation(), 3u);
  const std::uint64_t at = w.shm().ctl(5)->head.load();
  ASSERT_EQ(multicast_str(w.ep(0), {5}, "again", "3"), Status::kOk);
  EXPECT_EQ(record_at(w.shm(), 5, at).target_incarnation, 3u);
  std::vector<Received> got = test::drain(w.ep(5));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "3");
  EXPECT_EQ(w.ep(5).stats().dropped, 0u);

  // Nothing to send to: ok, nothing counted.
  ASSERT_EQ(multicast_str(w.ep(0), {}, "n", "d"), Status::kOk);
  ASSERT_EQ(multicast_str(w.ep(0), {0, 200}, "n", "d"), Status::kOk);
  EXPECT_EQ(w.ep(0).stats().sent, 3u);
  EXPECT_EQ(w.ep(0).stats().refused, 0u);
}

TEST(Bridge, MulticastBiggerThanTheRingArrivesWholeAtEach) {
  World w(4, 4096, 1 * MiB, 64 * KiB);
  std::vector<unsigned char> data = test::make_message(0, 9, 40 * KiB);
  ASSERT_EQ(multicast_bytes(w.ep(0), {1, 3}, "f", data), Status::kOk);
  EXPECT_GT(w.ep(0).backlog_bytes(1), 0u);
  EXPECT_GT(w.ep(0).backlog_bytes(3), 0u);
  EXPECT_EQ(w.ep(0).backlog_bytes(2), 0u);
  std::vector<std::vector<Received>> got;
  ASSERT_TRUE(pump_all(w.ep(0), {&w.ep(1), &w.ep(2), &w.ep(3)}, &got));
  for (std::size_t j : {0u, 2u}) {
    ASSERT_EQ(got[j].size(), 1u) << "receiver " << j;
    EXPECT_TRUE(is_message(got[j][0], 0, 9, 40 * KiB));
    EXPECT_EQ(got[j][0].flags, static_cast<std::uint32_t>(kBroadcast));
    EXPECT_EQ(got[j][0].sender_pid, w.pid(0));
  }
  EXPECT_TRUE(got[1].empty());
  EXPECT_EQ(w.ep(0).stats().queued_bytes, 0u);
  EXPECT_EQ(w.shm().ctl(2)->head.load(), 0u);
}

TEST(Bridge, MulticastToAPreviousIncarnationIsDroppedBroadcastIsNot) {
  World w(3, 4096);
  ASSERT_EQ(multicast_str(w.ep(0), {1, 2}, "m", "for incarnation 1"), Status::kOk);
  ASSERT_EQ(test::broadcast_str(w.ep(0), "b", "for the slot", false), Status::kOk);

  // Slot 1's process was killed before it read them; the next one comes.
  Endpoint& fresh = w.respawn(1, 20001);
  ASSERT_EQ(fresh.incarnation(), 2u);
  std::vector<Received> got = test::drain(fresh);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].name, "b");
  EXPECT_EQ(got[0].data, "for the slot");
  EXPECT_EQ(got[0].flags, static_cast<std::uint32_t>(kBroadcast));
  EXPECT_EQ(fresh.stats().dropped, 1u);
  EXPECT_EQ(fresh.stats().received, 1u);
  EXPECT_EQ(fresh.stats().resets, 0u);

  // Slot 2's process, the one addressed, gets both, in order.
  got = test::drain(w.ep(2));
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].data, "for incarnation 1");
  EXPECT_EQ(got[1].data, "for the slot");
  EXPECT_EQ(w.ep(2).stats().dropped, 0u);

  // A multicast sent now is for the new process.
  ASSERT_EQ(multicast_str(w.ep(0), {1}, "m", "for incarnation 2"), Status::kOk);
  got = test::drain(fresh);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "for incarnation 2");
  EXPECT_EQ(fresh.stats().dropped, 1u);
}

TEST(Bridge, FragmentedMulticastToAPreviousIncarnationIsDroppedOnce) {
  World w(2, 4096, 2 * MiB, 4 * MiB);
  std::vector<unsigned char> big = test::make_message(0, 0, 1 * MiB);
  ASSERT_EQ(multicast_bytes(w.ep(0), {1}, "big", big), Status::kOk);
  ASSERT_GT(w.ep(0).backlog_bytes(1), 0u);  // the ring took only the start
  ASSERT_EQ(test::broadcast_str(w.ep(0), "b", "after", false), Status::kOk);

  Endpoint& fresh = w.respawn(1, 20001);
  bool ok;
  std::vector<Received> got = test::pump(w.ep(0), fresh, &ok);
  ASSERT_TRUE(ok);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "after");
  EXPECT_EQ(fresh.stats().dropped, 1u);
  EXPECT_EQ(fresh.stats().received, 1u);
  EXPECT_EQ(w.ep(0).stats().queued_bytes, 0u);
}

TEST(Bridge, MulticastErrors) {
  World w(3, 4096, 1 * MiB, 64 * KiB);
  Endpoint& e = w.ep(0);
  e.set_limits(1000, 64 * KiB);
  const std::string long_name(kMaxNameLen + 1, 'x');
  EXPECT_EQ(multicast_str(e, {1, 2}, "", "d"), Status::kEmptyName);
  EXPECT_EQ(multicast_str(e, {1, 2}, long_name, "d"), Status::kNameTooLong);
  EXPECT_EQ(multicast_str(e, {1, 2}, "n", std::string(1001, 'd')), Status::kTooLarge);
  EXPECT_EQ(e.stats().refused, 3u);
  EXPECT_EQ(e.stats().sent, 0u);
  for (std::uint32_t k = 0; k < 3; ++k) EXPECT_EQ(w.shm().ctl(k)->head.load(), 0u);
  // The limits themselves are accepted.
  ASSERT_EQ(multicast_str(e, {1, 2}, std::string(kMaxNameLen, 'n'), std::string(1000, 'd')),
            Status::kOk);
  EXPECT_EQ(e.stats().sent, 2u);
  std::vector<std::vector<Received>> got;
  ASSERT_TRUE(pump_all(e, {&w.ep(1), &w.ep(2)}, &got));
  for (std::size_t j = 0; j < 2; ++j) {
    ASSERT_EQ(got[j].size(), 1u);
    EXPECT_EQ(got[j][0].name, std::string(kMaxNameLen, 'n'));
    EXPECT_EQ(got[j][0].data, std::string(1000, 'd'));
  }
}

TEST(Bridge, MulticastWithPidsSkipsASlotAnotherProcessHoldsNow) {
  World w(3, 4096, 1 * MiB, 64 * KiB);
  const Slots slots = {1, 2};
  const std::int32_t listed[] = {w.ep(1).pid(), 777};  // slot 2 is not 777's
  ASSERT_EQ(w.ep(0).multicast(slots.data(), listed, slots.size(), bytes("n"), 1, bytes("d"), 1),
            Status::kOk);
  std::vector<Received> one = test::drain(w.ep(1));
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].data, "d");
  EXPECT_TRUE(test::drain(w.ep(2)).empty());
  EXPECT_EQ(w.ep(2).stats().dropped, 0u);
  EXPECT_EQ(w.ep(0).stats().sent, 1u);
}

TEST(Bridge, SendSlotGoesToThatSlotOnlyWhileThatPidHoldsIt) {
  World w(3, 4096, 1 * MiB, 64 * KiB);
  const std::int32_t pid2 = w.ep(2).pid();
  EXPECT_EQ(w.ep(0).send_slot(2, pid2, bytes("n"), 1, bytes("x"), 1), Status::kOk);
  // the PID of slot 2 named with slot 1: refused, nothing written
  EXPECT_EQ(w.ep(0).send_slot(1, pid2, bytes("n"), 1, bytes("y"), 1), Status::kNoSuchWorker);
  EXPECT_EQ(w.ep(0).send_slot(7, pid2, bytes("n"), 1, bytes("y"), 1), Status::kNoSuchWorker);
  EXPECT_EQ(w.ep(0).stats().refused, 2u);
  std::vector<Received> got = test::drain(w.ep(2));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "x");
  EXPECT_TRUE(test::drain(w.ep(1)).empty());
}

// ---------------------------------------------------------------------------
// check_room, forget

TEST(Bridge, CheckRoomAndMulticastRefuseForAFullLiveSlot) {
  World w(4, 4096, 1 * MiB, 1 * MiB);
  Endpoint& e = w.ep(0);
  e.set_limits(1 * MiB, 4 * KiB);
  e.set_alive_check(&always_alive);
  // Slot 1 does not read: 10 KiB fill its ring and more than 4 KiB of backlog.
  std::vector<unsigned char> m = test::make_message(0, 0, 10 * KiB);
  ASSERT_EQ(test::send_bytes(e, w.pid(1), "fill", m), Status::kOk);
  ASSERT_GE(e.backlog_bytes(1), 4 * KiB);
  EXPECT_EQ(test::send_str(e, w.pid(1), "n", "x"), Status::kQueueFull);
  EXPECT_EQ(e.stats().refused, 1u);

  EXPECT_EQ(check_room(e, {1, 2, 3}), Status::kQueueFull);
  EXPECT_EQ(check_room(e, {3, 2, 1}), Status::kQueueFull);
  EXPECT_EQ(e.stats().refused, 3u);
  EXPECT_EQ(check_room(e, {2, 3}), Status::kOk);
  EXPECT_EQ(check_room(e, {0, 2, 7}), Status::kOk);
  EXPECT_EQ(check_room(e, {}), Status::kOk);
  EXPECT_EQ(e.stats().refused, 3u);

  // All or none: nothing for 2 and 3 either.
  const CoreStats before = e.stats();
  const std::uint64_t backlog1 = e.backlog_bytes(1);
  EXPECT_EQ(multicast_str(e, {2, 1, 3}, "mc", "1"), Status::kQueueFull);
  EXPECT_EQ(e.stats().refused, before.refused + 1);
  EXPECT_EQ(e.stats().sent, before.sent);
  EXPECT_EQ(e.stats().queued_bytes, before.queued_bytes);
  EXPECT_EQ(e.stats().dropped, 0u);
  EXPECT_EQ(e.backlog_bytes(1), backlog1);
  EXPECT_EQ(w.shm().ctl(2)->head.load(), 0u);
  EXPECT_EQ(w.shm().ctl(3)->head.load(), 0u);
  EXPECT_TRUE(test::drain(w.ep(2)).empty());
  EXPECT_TRUE(test::drain(w.ep(3)).empty());

  // Without the full slot it goes.
  ASSERT_EQ(multicast_str(e, {2, 3}, "mc", "2"), Status::kOk);
  for (std::uint32_t k : {2u, 3u}) {
    std::vector<Received> got = test::drain(w.ep(k));
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].data, "2");
  }
  // Once slot 1 drains below the limit, there is room again.
  std::vector<Received> got1;
  for (int i = 0; i < 1000 && e.backlog_bytes(1) >= 4 * KiB; ++i) {
    std::vector<Received> more = test::drain(w.ep(1));
    got1.insert(got1.end(), more.begin(), more.end());
    e.flush();
  }
  ASSERT_LT(e.backlog_bytes(1), 4 * KiB);
  EXPECT_EQ(check_room(e, {1, 2, 3}), Status::kOk);
  ASSERT_EQ(multicast_str(e, {1, 2, 3}, "mc", "3"), Status::kOk);
  std::vector<std::vector<Received>> got;
  ASSERT_TRUE(pump_all(e, {&w.ep(1), &w.ep(2), &w.ep(3)}, &got));
  got1.insert(got1.end(), got[0].begin(), got[0].end());
  ASSERT_EQ(got1.size(), 2u);
  EXPECT_TRUE(is_message(got1[0], 0, 0, 10 * KiB));
  EXPECT_EQ(got1[1].data, "3");
  for (std::size_t j : {1u, 2u}) {
    ASSERT_EQ(got[j].size(), 1u);
    EXPECT_EQ(got[j][0].data, "3");
  }
  EXPECT_EQ(e.stats().dropped, 0u);
}

TEST(Bridge, CheckRoomAndMulticastSkipAFullDeadSlot) {
  World w(4, 4096, 1 * MiB, 1 * MiB);
  Endpoint& e = w.ep(0);
  e.set_limits(1 * MiB, 4 * KiB);
  std::vector<unsigned char> m = test::make_message(0, 0, 10 * KiB);
  ASSERT_EQ(test::send_bytes(e, w.pid(1), "fill", m), Status::kOk);
  ASSERT_GE(e.backlog_bytes(1), 4 * KiB);
  const std::uint64_t head01 = w.shm().ctl(1)->head.load();

  // Slot 1's process is gone: check_room drops the backlog and says ok.
  e.set_alive_check(&never_alive);
  EXPECT_EQ(check_room(e, {1, 2}), Status::kOk);
  EXPECT_EQ(e.backlog_bytes(1), 0u);
  EXPECT_EQ(e.stats().dropped, 1u);
  EXPECT_EQ(e.stats().queued_bytes, 0u);
  EXPECT_EQ(e.stats().refused, 0u);
  EXPECT_EQ(w.shm().slot(0)->counters.queued_msgs, 0u);

  // Full again (the ring still is, so all goes to the backlog); multicast
  // itself drops it, skips slot 1 and reaches slot 2.
  ASSERT_EQ(test::send_bytes(e, w.pid(1), "fill", m), Status::kOk);
  ASSERT_EQ(e.backlog_bytes(1), 10 * KiB + 4);
  ASSERT_EQ(multicast_str(e, {1, 2}, "mc", "to the living"), Status::kOk);
  EXPECT_EQ(e.backlog_bytes(1), 0u);
  EXPECT_EQ(w.shm().ctl(1)->head.load(), head01) << "nothing more for slot 1";
  EXPECT_EQ(e.stats().dropped, 2u);
  EXPECT_EQ(e.stats().queued_bytes, 0u);
  EXPECT_EQ(e.stats().refused, 0u);
  EXPECT_EQ(e.stats().sent, 3u);  // two fills, one multicast to slot 2
  std::vector<Received> got = test::drain(w.ep(2));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "to the living");
  EXPECT_EQ(got[0].flags, static_cast<std::uint32_t>(kBroadcast));
  // Slot 1 (were anyone to read it) holds only the start of the first fill.
  EXPECT_TRUE(test::drain(w.ep(1)).empty());
}

TEST(Bridge, ForgetDropsTheBacklogAndCountsIt) {
  World w(3, 4096, 1 * MiB, 1 * MiB);
  Endpoint& e = w.ep(0);
  std::vector<unsigned char> big1 = test::make_message(1, 0, 10 * KiB);
  std::vector<unsigned char> big2 = test::make_message(2, 0, 10 * KiB);
  ASSERT_EQ(test::send_bytes(e, w.pid(1), "big", big1), Status::kOk);
  ASSERT_EQ(test::send_str(e, w.pid(1), "s", "small 1"), Status::kOk);
  ASSERT_EQ(test::send_str(e, w.pid(1), "s", "small 2"), Status::kOk);
  ASSERT_EQ(test::send_bytes(e, w.pid(2), "big", big2), Status::kOk);
  const std::uint64_t backlog2 = e.backlog_bytes(2);
  ASSERT_GT(backlog2, 0u);
  ASSERT_GT(e.backlog_bytes(1), 16u);
  // The sender's slot counts the messages of all its backlogs: 3 + 1.
  EXPECT_EQ(w.shm().slot(0)->counters.queued_msgs, 4u);
  EXPECT_EQ(e.stats().queued_bytes, e.backlog_bytes(1) + backlog2);

  e.forget(1);
  EXPECT_EQ(e.backlog_bytes(1), 0u);
  EXPECT_EQ(e.stats().dropped, 3u);
  EXPECT_EQ(e.stats().queued_bytes, backlog2);
  EXPECT_EQ(e.stats().sent, 4u);
  EXPECT_EQ(e.stats().refused, 0u);
  EXPECT_EQ(w.shm().slot(0)->counters.queued_msgs, 1u);
  EXPECT_EQ(e.backlog_bytes(2), backlog2) << "another slot's backlog is kept";
  // Nothing left to forget, or nothing there: no change.
  e.forget(1);
  e.forget(0);
  e.forget(3);
  e.forget(1000);
  EXPECT_EQ(e.stats().dropped, 3u);
  EXPECT_EQ(e.backlog_bytes(1000), 0u);

  // Slot 1 holds the start of the first message only: its reader drops it
  // (counted there) when the next message comes, and gets that whole.
  EXPECT_TRUE(test::drain(w.ep(1)).empty());
  ASSERT_EQ(test::send_str(e, w.pid(1), "next", "after forget"), Status::kOk);
  std::vector<std::vector<Received>> got;
  ASSERT_TRUE(pump_all(e, {&w.ep(1), &w.ep(2)}, &got));
  ASSERT_EQ(got[0].size(), 1u);
  EXPECT_EQ(got[0][0].name, "next");
  EXPECT_EQ(got[0][0].data, "after forget");
  EXPECT_EQ(w.ep(1).stats().dropped, 1u);
  ASSERT_EQ(got[1].size(), 1u);
  EXPECT_TRUE(is_message(got[1][0], 2, 0, 10 * KiB));
  EXPECT_EQ(e.stats().queued_bytes, 0u);
  EXPECT_EQ(e.stats().dropped, 3u);
}

}  // namespace
}  // namespace ngx_ipc
