// ngx_ipc core tests: what the reload bridge (src/ngx_ipc_bridge.cpp) asks
// of the core. A waker instead of wake-up fds, counters kept elsewhere than
// in the slot, limits other than the mapping's, a start that leaves the
// inbox unread, multicast to the incarnations that hold the listed slots,
// check_room, forget, and mappings of up to kMaxMappingSlots slots.

#include <gtest/gtest.h>

#include <algorithm>
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
constexpr std::uint64_t MiB = 1024 * KiB;

using Slots = std::vector<std::uint32_t>;

// A waker that writes down the slots it was asked to wake.
void record_wake(void* ctx, std::uint32_t k) { static_cast<Slots*>(ctx)->push_back(k); }

bool always_alive(std::int32_t) { return true; }
bool never_alive(std::int32_t) { return false; }

const unsigned char* bytes(const std::string& s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

Status multicast_str(Endpoint& ep, const Slots& slots, const std::string& name,
                     const std::string& data) {
  return ep.multicast(slots.data(), nullptr, slots.size(), bytes(name), name.size(), bytes(data),
                      data.size());
}

Status multicast_bytes(Endpoint& ep, const Slots& slots, const std::string& name,
                       const std::vector<unsigned char>& data) {
  return ep.multicast(slots.data(), nullptr, slots.size(), bytes(name), name.size(), data.data(),
                      data.size());
}

Status check_room(Endpoint& ep, const Slots& slots) {
  return ep.check_room(slots.data(), slots.size());
}

bool is_zero(const CoreStats& s) {
  CoreStats zero{};
  return std::memcmp(&s, &zero, sizeof s) == 0;
}

// The header of the record at byte `at` of the ring from `sender` to `receiver`.
RecordHeader record_at(test::Shm& shm, std::uint32_t sender, std::uint32_t receiver,
                       std::uint64_t at = 0) {
  RecordHeader h;
  std::memcpy(&h, shm.data(sender, receiver) + at, sizeof h);
  return h;
}

// True if got is exactly one message of `want`'s bytes (make_message).
::testing::AssertionResult is_message(const Received& got, std::uint32_t tag, std::uint64_t seq,
                                      std::size_t len) {
  std::vector<unsigned char> want = test::make_message(tag, seq, len);
  if (got.data.size() != want.size()) {
    return ::testing::AssertionFailure() << got.data.size() << " bytes, not " << want.size();
  }
  if (std::memcmp(got.data.data(), want.data(), want.size()) != 0) {
    return ::testing::AssertionFailure() << "the bytes differ";
  }
  return ::testing::AssertionSuccess();
}

std::vector<std::string> sorted_data(const std::vector<Received>& got) {
  std::vector<std::string> v;
  for (const Received& r : got) v.push_back(r.data);
  std::sort(v.begin(), v.end());
  return v;
}

// Flushes the sender and drains the receivers until the sender's backlog is
// empty and nothing more arrives, at most `rounds` times; got[i] collects
// what receivers[i] took. False if the backlog did not empty.
bool pump_all(Endpoint& sender, const std::vector<Endpoint*>& receivers,
              std::vector<std::vector<Received>>* got, int rounds = 10000) {
  got->assign(receivers.size(), {});
  for (int i = 0; i < rounds; ++i) {
    bool flushed = sender.flush();
    bool more = false;
    for (std::size_t j = 0; j < receivers.size(); ++j) {
      std::vector<Received> m = test::drain(*receivers[j]);
      more = more || !m.empty();
      (*got)[j].insert((*got)[j].end(), m.begin(), m.end());
    }
    if (flushed && !more) return true;
  }
  return false;
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

  // start() wakes every slot once, itself included, through the waker.
  a.start(100);
  EXPECT_EQ(woken_by_a, (Slots{0, 1, 2}));
  b.start(101);
  EXPECT_EQ(woken_by_b, (Slots{0, 1, 2}));
  woken_by_a.clear();
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
  EXPECT_EQ(shm.ctl(0, 1)->producer_waiting.load(), 1u);

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
// Multicast

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
    RecordHeader h = record_at(w.shm(), 0, k);
    EXPECT_EQ(h.flags, kBroadcast | kFirst | kLast) << "slot " << k;
    EXPECT_EQ(h.target_incarnation, 1u) << "slot " << k;
    EXPECT_EQ(h.sender_pid, 10000);
    EXPECT_EQ(h.total_len, name.size() + data.size());
    EXPECT_EQ(w.shm().ctl(0, k)->head_msgs.load(), 1u);
  }
  for (std::uint32_t k : {0u, 2u, 3u, 4u}) {
    EXPECT_EQ(w.shm().ctl(0, k)->head.load(), 0u) << "slot " << k << " was not to get it";
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
  const std::uint64_t at = w.shm().ctl(0, 5)->head.load();
  ASSERT_EQ(multicast_str(w.ep(0), {5}, "again", "3"), Status::kOk);
  EXPECT_EQ(record_at(w.shm(), 0, 5, at).target_incarnation, 3u);
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
  EXPECT_EQ(w.shm().ctl(0, 2)->head.load(), 0u);
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
  for (std::uint32_t k = 0; k < 3; ++k) EXPECT_EQ(w.shm().ctl(0, k)->head.load(), 0u);
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

// ---------------------------------------------------------------------------
// start() with skip_unread

TEST(Bridge, SkipUnreadLeavesWhatWaitsUnreadAndUncounted) {
  World w(3, 16 * KiB);
  const std::int32_t old = w.pid(1);
  // Everything slot 1's inbox rings can hold: unicasts, a broadcast and a
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
  // The rings' space goes back to their senders at once.
  for (std::uint32_t s = 0; s < 3; ++s) {
    EXPECT_GT(w.shm().ctl(s, 1)->head.load(), 0u) << "from " << s;
    EXPECT_EQ(w.shm().ctl(s, 1)->tail.load(), w.shm().ctl(s, 1)->head.load()) << "from " << s;
    EXPECT_EQ(w.shm().ctl(s, 1)->tail_msgs.load(), w.shm().ctl(s, 1)->head_msgs.load());
  }
  EXPECT_FALSE(fresh.inbox_pending());
  EXPECT_TRUE(test::drain(fresh).empty());
  EXPECT_EQ(fresh.stats().received, 0u);
  EXPECT_EQ(fresh.stats().dropped, 0u);
  EXPECT_EQ(fresh.stats().resets, 0u);

  // What comes next is delivered, through every ring.
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
  ASSERT_EQ(shm.ctl(0, 1)->producer_waiting.load(), 1u);

  // b is killed; its successor skips what the ring holds, which frees the
  // whole ring: the waiting sender is woken for it, then once more with
  // every slot by start().
  Endpoint next(shm.header(), 1, nullptr);
  next.set_waker(&record_wake, &woken_by_next);
  next.start(201, /*skip_unread=*/true);
  EXPECT_EQ(woken_by_next, (Slots{0, 0, 1}));
  EXPECT_EQ(shm.ctl(0, 1)->producer_waiting.load(), 0u);
  EXPECT_EQ(shm.ctl(0, 1)->tail.load(), shm.ctl(0, 1)->head.load());

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
// Limits, check_room, forget

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
  EXPECT_EQ(w.shm().ctl(0, 2)->head.load(), 0u);
  EXPECT_EQ(w.shm().ctl(0, 3)->head.load(), 0u);
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
  const std::uint64_t head01 = w.shm().ctl(0, 1)->head.load();

  // Slot 1's process is gone: check_room drops the backlog and says ok.
  e.set_alive_check(&never_alive);
  EXPECT_EQ(check_room(e, {1, 2}), Status::kOk);
  EXPECT_EQ(e.backlog_bytes(1), 0u);
  EXPECT_EQ(e.stats().dropped, 1u);
  EXPECT_EQ(e.stats().queued_bytes, 0u);
  EXPECT_EQ(e.stats().refused, 0u);
  EXPECT_EQ(w.shm().ctl(0, 1)->backlog_bytes.load(), 0u);
  EXPECT_EQ(w.shm().ctl(0, 1)->backlog_msgs.load(), 0u);

  // Full again (the ring still is, so all goes to the backlog); multicast
  // itself drops it, skips slot 1 and reaches slot 2.
  ASSERT_EQ(test::send_bytes(e, w.pid(1), "fill", m), Status::kOk);
  ASSERT_EQ(e.backlog_bytes(1), 10 * KiB + 4);
  ASSERT_EQ(multicast_str(e, {1, 2}, "mc", "to the living"), Status::kOk);
  EXPECT_EQ(e.backlog_bytes(1), 0u);
  EXPECT_EQ(w.shm().ctl(0, 1)->head.load(), head01) << "nothing more for slot 1";
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
  EXPECT_EQ(w.shm().ctl(0, 1)->backlog_msgs.load(), 3u);
  EXPECT_EQ(e.stats().queued_bytes, e.backlog_bytes(1) + backlog2);

  e.forget(1);
  EXPECT_EQ(e.backlog_bytes(1), 0u);
  EXPECT_EQ(e.stats().dropped, 3u);
  EXPECT_EQ(e.stats().queued_bytes, backlog2);
  EXPECT_EQ(e.stats().sent, 4u);
  EXPECT_EQ(e.stats().refused, 0u);
  EXPECT_EQ(w.shm().ctl(0, 1)->backlog_bytes.load(), 0u);
  EXPECT_EQ(w.shm().ctl(0, 1)->backlog_msgs.load(), 0u);
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

// ---------------------------------------------------------------------------
// Mappings of up to kMaxMappingSlots slots

TEST(Bridge, MappingOfKMaxMappingSlotsPassesCheckShm) {
  static_assert(kMaxMappingSlots == 256);
  for (std::uint32_t n : {kMaxSlots + 1, kMaxMappingSlots}) {
    Config c = test::make_config(n, 4096, 1 * MiB, 64 * KiB);
    test::Shm shm(c);  // compute_layout(c).total_size bytes, init_shm()
    ASSERT_EQ(shm.size(), compute_layout(c).total_size);
    EXPECT_EQ(shm.header()->nslots, n);
    EXPECT_EQ(check_shm(shm.header(), shm.size()), shm.header()) << n;
    EXPECT_EQ(check_shm(shm.header(), shm.size() - 1), nullptr) << n;
  }
}

TEST(Bridge, MappingOfMoreThanKMaxMappingSlotsFailsCheckShm) {
  Config c = test::make_config(kMaxMappingSlots + 1, 4096, 1 * MiB, 64 * KiB);
  test::Shm shm(c);
  ASSERT_EQ(shm.size(), compute_layout(c).total_size);
  // A consistent header: only the slot count is wrong.
  EXPECT_EQ(shm.header()->nslots, kMaxMappingSlots + 1);
  EXPECT_EQ(shm.header()->total_size, shm.size());
  EXPECT_EQ(check_shm(shm.header(), shm.size()), nullptr);
  EXPECT_EQ(check_shm(shm.header(), shm.size() + 4096), nullptr);
}

TEST(Bridge, FirstAndLastOf256SlotsTalk) {
  test::Shm shm(test::make_config(kMaxMappingSlots, 4096, 1 * MiB, 64 * KiB));
  ASSERT_NE(check_shm(shm.header(), shm.size()), nullptr);
  const std::uint32_t last = kMaxMappingSlots - 1;
  Slots woken_by_a, woken_by_z;
  Endpoint a(shm.header(), 0, nullptr);
  Endpoint z(shm.header(), last, nullptr);
  a.set_waker(&record_wake, &woken_by_a);
  z.set_waker(&record_wake, &woken_by_z);
  a.start(100);
  z.start(355);
  ASSERT_EQ(woken_by_z.size(), kMaxMappingSlots);
  for (std::uint32_t k = 0; k < kMaxMappingSlots; ++k) ASSERT_EQ(woken_by_z[k], k);
  woken_by_a.clear();
  woken_by_z.clear();

  Delivery out[4];
  ASSERT_EQ(z.receive(out, 4), 0);
  std::vector<unsigned char> data = test::make_message(0, 1, 3000);
  ASSERT_EQ(test::send_bytes(a, 355, "far", data), Status::kOk);
  EXPECT_EQ(woken_by_a, (Slots{last}));
  std::vector<Received> got = test::drain(z);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_TRUE(is_message(got[0], 0, 1, 3000));
  EXPECT_EQ(got[0].sender_pid, 100);

  ASSERT_EQ(multicast_str(z, {0, 17, last}, "mc", "back"), Status::kOk);
  EXPECT_EQ(z.stats().sent, 1u);
  got = test::drain(a);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "back");
  EXPECT_EQ(got[0].sender_pid, 355);
  EXPECT_EQ(got[0].flags, static_cast<std::uint32_t>(kBroadcast));
}

}  // namespace
}  // namespace ngx_ipc

namespace ngx_ipc {
namespace {

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
