// ngx_ipc core tests: the senders' waits (fence pairs B and C of wakeup.h).
// A sender that finds a receiver's inbox lock taken marks itself a lock
// waiter and is woken by the holder after it unlocks; a sender that holds
// the lock and finds the ring full marks itself a room waiter and is woken
// by the receiver after it releases. Each handshake is driven step by step
// in every interleaving, then through the endpoints: one waiter woken per
// unlock or release, in turn, however many marks and waiters, and a room
// waiter is not woken by other senders' unlocks (while a receiver is
// stopped, nobody spins).

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "ngx_ipc/endpoint.h"
#include "ngx_ipc/inbox_lock.h"
#include "ngx_ipc/outbox.h"
#include "ngx_ipc/ring.h"
#include "ngx_ipc/wakeup.h"
#include "test_util.h"

namespace ngx_ipc {
namespace {

using test::Received;
using test::World;

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t MiB = 1024 * KiB;

// A one-record message from sender slot s (name "n", data "d...").
struct SmallMessage {
  unsigned char bytes[200] = {'n'};
  MessageMeta meta;
  explicit SmallMessage(std::uint32_t s) {
    meta.name_len = 1;
    meta.sender_slot = s;
    meta.total_len = sizeof bytes;
  }
  Payload payload() const { return Payload{bytes, sizeof bytes, nullptr, 0}; }
};

// Pair B, step by step. Sender 1 holds receiver 0's lock and finds the ring
// full (the receiver has read every record, not yet released them). Sender:
// a0 marks itself a room waiter (bit, flag, fence: InboxLock::wait_begin),
// a1 tries its write again (which re-reads tail). Receiver: b0 stores tail
// (Consumer::release), b1 fences and wakes the room waiters
// (Wakeup::after_release). In every order, the sender finds the room or
// is woken.
TEST(WakeupWaiters, PairBInEveryInterleaving) {
  for (const char* order : test::kInterleavings) {
    SCOPED_TRACE(order);
    test::Shm shm(test::make_config(2, 4096, 1 << 20, 1 << 20));
    test::EventFds fds(2);
    CoreLog log;
    Wakeup rx(shm.header(), 0, fds.fds(), &log);
    ASSERT_TRUE(test::hold_lock(shm.header(), 0, make_writer(1, 1)));
    InboxWriter writer;
    writer.attach(shm.ctl(0), shm.data(0), 4096);
    writer.begin();
    SmallMessage m(1);
    int records = 0;
    while (records < 100 && writer.write(m.meta, m.payload(), 0) != 0) ++records;
    ASSERT_GT(records, 10);
    ASSERT_TRUE(writer.publish());
    Consumer consumer;
    consumer.attach(shm.ctl(0), shm.data(0), 4096, 1 << 20, 2);
    RecordView v;
    for (int i = 0; i < records; ++i) ASSERT_EQ(consumer.next(&v), Consumer::Next::kRecord);
    ASSERT_EQ(consumer.next(&v), Consumer::Next::kEmpty);

    std::uint64_t wrote = 0;
    const std::function<void()> sender[2] = {
        [&] { InboxLock::wait_begin(shm.header(), 0, 1, WaitFor::kRoom); },
        [&] { wrote = writer.write(m.meta, m.payload(), 0); }};
    const std::function<void()> receiver[2] = {[&] { ASSERT_TRUE(consumer.release()); },
                                               [&] { rx.after_release(); }};
    test::interleave(order, sender, receiver);
    bool woken = fds.take(1) != 0;
    EXPECT_TRUE(wrote != 0 || woken) << "space freed, the sender neither saw it nor was woken";
    EXPECT_EQ(wrote != 0, test::runs_before(order, 'b', 0, 'a', 1));
    EXPECT_EQ(woken, test::runs_before(order, 'a', 0, 'b', 1));
    EXPECT_EQ(shm.waits(0, 1, WaitFor::kRoom), !woken) << "whoever wakes clears the bit";
    EXPECT_EQ(fds.take(0), 0u);
  }
}

// Pair C, step by step. Writer 1 holds receiver 0's lock; sender 2 found it
// taken. Sender: a0 marks itself a lock waiter (InboxLock::wait_begin), a1
// tries the lock again. Holder: b0 unlocks, b1 fences and wakes the lock
// waiters (Wakeup::after_write). In every order, the sender gets the lock
// or is woken.
TEST(WakeupWaiters, PairCInEveryInterleaving) {
  for (const char* order : test::kInterleavings) {
    SCOPED_TRACE(order);
    test::Shm shm(test::make_config(3, 4096, 1 << 20, 1 << 20));
    test::EventFds fds(3);
    CoreLog log;
    Wakeup holder_side(shm.header(), 1, fds.fds(), &log);
    ASSERT_TRUE(test::hold_lock(shm.header(), 0, make_writer(1, 1)));
    ASSERT_FALSE(test::hold_lock(shm.header(), 0, make_writer(2, 1)));  // the first try

    bool locked = false;
    const std::function<void()> sender[2] = {
        [&] { InboxLock::wait_begin(shm.header(), 0, 2, WaitFor::kLock); },
        [&] { locked = test::hold_lock(shm.header(), 0, make_writer(2, 1)); }};
    const std::function<void()> holder[2] = {[&] { InboxLock::unlock(shm.header(), 0); },
                                             [&] { holder_side.after_write(0, true); }};
    test::interleave(order, sender, holder);
    bool woken = fds.take(2) != 0;
    EXPECT_TRUE(locked || woken) << "the lock came free, the sender neither took it nor was woken";
    EXPECT_EQ(locked, test::runs_before(order, 'b', 0, 'a', 1));
    EXPECT_EQ(woken, test::runs_before(order, 'a', 0, 'b', 1));
    EXPECT_EQ(shm.waits(0, 2, WaitFor::kLock), !woken) << "whoever wakes clears the bit";
    EXPECT_EQ(shm.ctl(0)->lock.load(), locked ? make_writer(2, 1) : 0u);
    EXPECT_EQ(fds.take(1), 0u);
  }
}

// Pair C inside Outbox::flush(), in the order the stress tests rarely hit:
// the holder unlocks after the sender's first try failed and before the
// sender marked itself, so the holder finds no mark and wakes no one; the
// sender's second try, after its mark, must take the lock. The one seam in
// that window is the probe of the holder (try_lock asks whether it is
// alive): here the holder unlocks there, as a holder does, and is alive.
TEST(WakeupWaiters, HolderUnlockingBeforeTheMarkLeavesTheLockToTheSecondTry) {
  test::Shm shm(test::make_config(3, 4096, 1 << 20, 1 << 20));
  ShmHeader* h = shm.header();
  test::EventFds fds(3);
  CoreLog log;
  CoreStats stats{};
  std::uint64_t queued_msgs = 0;
  Wakeup wakeup(h, 1, fds.fds(), &log);
  Outbox outbox(h, 1, &stats, &queued_msgs, &wakeup, &log);
  outbox.attach(1);
  struct Holder {
    ShmHeader* h;
    const int* fds;
    int probes = 0;
    static bool alive(void* ctx, ShmHeader*, std::uint64_t) {
      auto* self = static_cast<Holder*>(ctx);
      if (self->probes++ == 0) test::unlock_as_holder(self->h, 0, self->fds);
      return true;
    }
  } holder{h, fds.fds()};
  outbox.set_alive_check(&Holder::alive, &holder);

  ASSERT_TRUE(test::hold_lock(h, 0, make_writer(2, 1)));
  SmallMessage m(1);
  ASSERT_EQ(outbox.send(0, m.meta, m.bytes, m.bytes + 1, sizeof m.bytes - 1), Status::kOk);
  ASSERT_FALSE(outbox.backlog_empty(0));
  ASSERT_TRUE(shm.waits(0, 1, WaitFor::kLock));
  // The holder unlocks (waking the sender) and takes the lock again: no
  // mark is left.
  test::unlock_as_holder(h, 0, fds.fds());
  ASSERT_EQ(fds.take(1), 1u);
  ASSERT_TRUE(test::hold_lock(h, 0, make_writer(2, 1)));
  ASSERT_FALSE(shm.waits(0, 1, WaitFor::kLock));

  EXPECT_TRUE(outbox.flush(0, /*probe=*/true)) << "lock freed before the mark: not taken";
  EXPECT_EQ(holder.probes, 1) << "the window was not hit";
  EXPECT_TRUE(outbox.backlog_empty(0));
  EXPECT_EQ(test::peek_records(h, 0).size(), 1u);
  EXPECT_FALSE(shm.waits(0, 1, WaitFor::kLock));
  EXPECT_EQ(shm.ctl(0)->lock.load(), 0u);
  EXPECT_EQ(fds.take(1), 0u);
}

TEST(WakeupWaiters, LockWaiterIsWokenByTheHoldersUnlock) {
  World w(3, 4096);
  ASSERT_TRUE(test::hold_lock(w.shm().header(), 0, test::live_writer(w.shm().header(), 2)));
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "n", "waits"), Status::kOk);
  EXPECT_GT(w.ep(1).stats().queued_bytes, 0u) << "the lock was taken: kept in the backlog";
  EXPECT_TRUE(w.shm().waits(0, 1, WaitFor::kLock));
  EXPECT_EQ(w.shm().flag(0, WaitFor::kLock), 1u);
  EXPECT_FALSE(w.shm().waits(0, 1, WaitFor::kRoom)) << "it never held the lock";
  EXPECT_FALSE(w.ep(0).inbox_pending());
  EXPECT_EQ(w.fds().take(1), 0u);

  test::unlock_as_holder(w.shm().header(), 0, w.fds().fds());
  EXPECT_EQ(w.fds().take(1), 1u) << "the holder's unlock wakes its lock waiter";
  EXPECT_FALSE(w.shm().waits(0, 1, WaitFor::kLock));
  EXPECT_EQ(w.shm().flag(0, WaitFor::kLock), 0u);
  EXPECT_TRUE(w.ep(1).flush());
  std::vector<Received> got = test::drain(w.ep(0));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "waits");
}

TEST(WakeupWaiters, TheNextSendersUnlockWakesLockWaitersToo) {
  // The flag and the bits belong to the inbox, not to one holder: a holder
  // that took the lock after the waiter marked itself wakes it as well.
  World w(4, 4096);
  ASSERT_TRUE(test::hold_lock(w.shm().header(), 0, test::live_writer(w.shm().header(), 3)));
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "n", "first"), Status::kOk);
  InboxLock::unlock(w.shm().header(), 0);  // no wake-up of its own
  EXPECT_EQ(w.fds().take(1), 0u);
  ASSERT_EQ(test::send_str(w.ep(2), w.pid(0), "n", "second"), Status::kOk);
  EXPECT_EQ(w.ep(2).stats().queued_bytes, 0u) << "the lock was free for slot 2";
  EXPECT_EQ(w.fds().take(1), 1u) << "slot 2's unlock wakes slot 1";
  EXPECT_TRUE(w.ep(1).flush());
  std::vector<Received> got = test::drain(w.ep(0));
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].data, "second");
  EXPECT_EQ(got[1].data, "first");
}

TEST(WakeupWaiters, ASenderThatTakesTheLockIsNotWokenByItsOwnUnlock) {
  // A lock waiter that gets the lock clears its bit before it unlocks.
  World w(3, 4096);
  ASSERT_TRUE(test::hold_lock(w.shm().header(), 0, test::live_writer(w.shm().header(), 2)));
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "n", "x"), Status::kOk);
  ASSERT_TRUE(w.shm().waits(0, 1, WaitFor::kLock));
  InboxLock::unlock(w.shm().header(), 0);
  EXPECT_TRUE(w.ep(1).flush());
  EXPECT_FALSE(w.shm().waits(0, 1, WaitFor::kLock));
  EXPECT_EQ(w.fds().take(1), 0u);
  EXPECT_EQ(test::drain(w.ep(0)).size(), 1u);
}

TEST(WakeupWaiters, LockWaitersAreWokenOneAtATimeForManyMarks) {
  // Slots 1 and 2 mark themselves again at every send while a stranger
  // holds the lock. Its unlock wakes one of them (one write however many
  // marks), the first in turn, with the inbox in its ready bits; the other
  // stays marked with the flag set, and the woken sender's unlock wakes it.
  World w(4, 4096);
  ShmHeader* h = w.shm().header();
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(round);
    ASSERT_TRUE(test::hold_lock(h, 0, test::live_writer(h, 3)));
    for (int i = 0; i < 5; ++i) {  // each send marks its sender again
      for (std::uint32_t s = 1; s <= 2; ++s) {
        ASSERT_EQ(test::send_str(w.ep(s), w.pid(0), "n", std::to_string(s * 10 + i)), Status::kOk);
      }
    }
    test::unlock_as_holder(h, 0, w.fds().fds());
    EXPECT_EQ(w.fds().take(1), 1u) << "one write for slot 1";
    EXPECT_EQ(w.fds().take(2), 0u) << "one waiter per unlock";
    EXPECT_EQ(w.fds().take(3), 0u) << "the holder does not wake itself";
    EXPECT_TRUE(w.shm().ready(1, 0));
    EXPECT_FALSE(w.shm().waits(0, 1, WaitFor::kLock));
    EXPECT_TRUE(w.shm().waits(0, 2, WaitFor::kLock));
    EXPECT_EQ(w.shm().flag(0, WaitFor::kLock), 1u) << "slot 2 still waits";

    EXPECT_TRUE(w.ep(1).flush_ready());
    EXPECT_FALSE(w.shm().ready(1, 0)) << "read by flush_ready()";
    EXPECT_EQ(w.fds().take(2), 1u) << "slot 1's unlock wakes the next in turn";
    EXPECT_TRUE(w.shm().ready(2, 0));
    EXPECT_EQ(w.shm().flag(0, WaitFor::kLock), 0u);
    EXPECT_TRUE(w.ep(2).flush_ready());
    for (std::uint32_t s = 1; s <= 3; ++s) EXPECT_EQ(w.fds().take(s), 0u) << "slot " << s;
    // Nobody marked since: the next unlock wakes no one.
    ASSERT_TRUE(test::hold_lock(h, 0, test::live_writer(h, 3)));
    test::unlock_as_holder(h, 0, w.fds().fds());
    for (std::uint32_t s = 1; s <= 3; ++s) EXPECT_EQ(w.fds().take(s), 0u) << "slot " << s;

    std::vector<std::string> from[3];
    for (const Received& r : test::drain(w.ep(0))) from[r.sender_pid - w.pid(0)].push_back(r.data);
    for (std::uint32_t s = 1; s <= 2; ++s) {
      ASSERT_EQ(from[s].size(), 5u);
      for (int i = 0; i < 5; ++i) EXPECT_EQ(from[s][i], std::to_string(s * 10 + i));
    }
    w.fds().take(0);
  }
}

// Slots 1 and 2 fill receiver 0's ring with a message bigger than it each:
// both are room waiters until slot 0 reads.
void two_room_waiters(World& w) {
  for (std::uint32_t s = 1; s <= 2; ++s) {
    std::vector<unsigned char> big = test::make_message(s, 0, 20 * KiB);
    ASSERT_EQ(test::send_bytes(w.ep(s), w.pid(0), "big", big), Status::kOk);
    ASSERT_GT(w.ep(s).stats().queued_bytes, 0u);
    ASSERT_TRUE(w.shm().waits(0, s, WaitFor::kRoom)) << "slot " << s;
  }
}

TEST(WakeupWaiters, RoomWaitersAreWokenOnePerReleaseInTurn) {
  World w(3, 4096, 1 * MiB, 1 * MiB);
  two_room_waiters(w);
  EXPECT_EQ(w.shm().flag(0, WaitFor::kRoom), 1u);
  Delivery out[4];
  ASSERT_EQ(w.ep(0).receive(out, 4), 0);  // reads the fragments, releases them
  EXPECT_EQ(w.fds().take(1), 1u) << "the first in turn";
  EXPECT_EQ(w.fds().take(2), 0u) << "one room waiter per release";
  EXPECT_TRUE(w.shm().ready(1, 0));
  EXPECT_TRUE(w.shm().waits(0, 2, WaitFor::kRoom));
  EXPECT_EQ(w.shm().flag(0, WaitFor::kRoom), 1u) << "slot 2 still waits";
  // Nothing new read: the next receive releases nothing, wakes no one.
  ASSERT_EQ(w.ep(0).receive(out, 4), 0);
  EXPECT_EQ(w.fds().take(1), 0u);
  EXPECT_EQ(w.fds().take(2), 0u);
  // Slot 1 writes a ring-full and waits again: the next release wakes slot
  // 2, the one after slot 1 again.
  EXPECT_FALSE(w.ep(1).flush_ready());
  EXPECT_TRUE(w.shm().waits(0, 1, WaitFor::kRoom));
  EXPECT_EQ(w.fds().take(2), 0u) << "the ring is full: no room to pass on";
  for (std::uint32_t s : {2u, 1u}) {
    ASSERT_EQ(w.ep(0).receive(out, 4), 0);
    EXPECT_EQ(w.fds().take(s), 1u) << "slot " << s << "'s turn";
    EXPECT_EQ(w.fds().take(3 - s), 0u);
    EXPECT_FALSE(w.ep(s).flush_ready());
  }

  bool ok;
  std::vector<Received> got = test::pump_ready(w, {1, 2}, 0, &ok);
  ASSERT_TRUE(ok) << "a room waiter was never woken";
  ASSERT_EQ(got.size(), 2u);
  for (const Received& r : got) {
    test::MsgId id;
    EXPECT_TRUE(test::parse_message(reinterpret_cast<const unsigned char*>(r.data.data()),
                                    r.data.size(), &id));
    EXPECT_EQ(r.sender_pid, w.pid(id.tag));
  }
  for (std::uint32_t s = 1; s <= 2; ++s) {
    EXPECT_FALSE(w.shm().waits(0, s, WaitFor::kRoom)) << "no mark left once the backlog is empty";
    EXPECT_FALSE(w.shm().waits(0, s, WaitFor::kLock));
  }
}

TEST(WakeupWaiters, RoomWaiterIsNotWokenByOtherSendersUnlocks) {
  // The receiver is stopped (it does not read): slot 1 waits for room. Slot
  // 2 keeps taking and giving back the lock, and a stranger too: none of
  // those unlocks wakes slot 1, which would only find the ring full again.
  World w(4, 4096, 1 * MiB, 1 * MiB);
  ShmHeader* h = w.shm().header();
  std::vector<unsigned char> big = test::make_message(1, 0, 20 * KiB);
  ASSERT_EQ(test::send_bytes(w.ep(1), w.pid(0), "big", big), Status::kOk);
  ASSERT_TRUE(w.shm().waits(0, 1, WaitFor::kRoom));
  for (int i = 0; i < 20; ++i) {
    ASSERT_EQ(test::send_str(w.ep(2), w.pid(0), "s", std::to_string(i)), Status::kOk);
    w.ep(2).flush();
    ASSERT_TRUE(test::hold_lock(h, 0, test::live_writer(h, 3)));
    test::unlock_as_holder(h, 0, w.fds().fds());
    ASSERT_EQ(w.fds().take(1), 0u) << "step " << i << ": a room waiter woken by an unlock";
  }
  EXPECT_TRUE(w.shm().waits(0, 1, WaitFor::kRoom));
  EXPECT_TRUE(w.shm().waits(0, 2, WaitFor::kRoom));
  EXPECT_GT(w.ep(2).stats().queued_bytes, 0u) << "slot 2 found the ring full too";
  EXPECT_EQ(w.fds().take(2), 0u);

  Delivery out[4];
  ASSERT_EQ(w.ep(0).receive(out, 4), 0);
  EXPECT_EQ(w.fds().take(1), 1u) << "the receiver's release wakes it";
  EXPECT_EQ(w.fds().take(2), 0u) << "and it alone: slot 2 is next";
  EXPECT_TRUE(w.shm().waits(0, 2, WaitFor::kRoom));
  w.ep(1).flush_ready();
  bool ok;
  std::vector<Received> got = test::pump_ready(w, {1, 2}, 0, &ok);
  ASSERT_TRUE(ok) << "a room waiter was never woken";
  ASSERT_EQ(got.size(), 21u);
  int next = 0;
  for (const Received& r : got) {
    if (r.sender_pid == w.pid(2)) {
      EXPECT_EQ(r.data, std::to_string(next++));
    }
  }
  EXPECT_EQ(next, 20);
}

TEST(WakeupWaiters, ALockWaiterOfAStoppedReceiverIsWokenOnlyOnce) {
  // The receiver does not read: slot 1 waits for the lock that slot 2's
  // stranger holds; once woken, it takes the lock, finds the ring full and
  // waits for room: later unlocks no longer wake it.
  World w(4, 4096, 1 * MiB, 1 * MiB);
  ShmHeader* h = w.shm().header();
  std::vector<unsigned char> big = test::make_message(2, 0, 20 * KiB);
  ASSERT_EQ(test::send_bytes(w.ep(2), w.pid(0), "big", big), Status::kOk);  // fills the ring
  ASSERT_TRUE(test::hold_lock(h, 0, test::live_writer(h, 3)));
  // Too big for what the ring has left (a fragment is never that small).
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "n", std::string(1000, 'x')), Status::kOk);
  EXPECT_TRUE(w.shm().waits(0, 1, WaitFor::kLock));
  test::unlock_as_holder(h, 0, w.fds().fds());
  EXPECT_EQ(w.fds().take(1), 1u);
  EXPECT_FALSE(w.ep(1).flush());
  EXPECT_FALSE(w.shm().waits(0, 1, WaitFor::kLock));
  EXPECT_TRUE(w.shm().waits(0, 1, WaitFor::kRoom));
  for (int i = 0; i < 10; ++i) {
    EXPECT_FALSE(w.ep(2).flush());
    ASSERT_TRUE(test::hold_lock(h, 0, test::live_writer(h, 3)));
    test::unlock_as_holder(h, 0, w.fds().fds());
  }
  EXPECT_EQ(w.fds().take(1), 0u);
  EXPECT_EQ(w.fds().take(2), 0u);
  bool ok;
  EXPECT_EQ(test::pump_senders({&w.ep(1), &w.ep(2)}, w.ep(0), &ok).size(), 2u);
  EXPECT_TRUE(ok);
}

}  // namespace
}  // namespace ngx_ipc
