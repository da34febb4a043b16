// ngx_ipc core tests: the receiver's wake-ups (fence pair A of wakeup.h). A
// receiver is woken through its eventfd only after receive() returned 0
// (its `sleeping` flag armed), once per sleep however many messages and
// senders follow; a sender with a backlog is woken when the receiver frees
// space; and the window between "found the inbox empty" and "marked asleep"
// loses nothing, in every interleaving of the two sides' steps. The
// senders' own waits (pairs B and C) are in wakeup_waiters_test.cpp, the
// stress tests with threads in wakeup_stress_test.cpp.

#include "ngx_ipc/wakeup.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "ngx_ipc/endpoint.h"
#include "ngx_ipc/inbox_lock.h"
#include "ngx_ipc/ring.h"
#include "test_util.h"

namespace ngx_ipc {
namespace {

using test::World;

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t MiB = 1024 * KiB;

std::uint32_t sleeping(World& w, std::uint32_t i) { return w.shm().slot(i)->sleeping.load(); }

TEST(Wakeup, StartWakesEverySlotOnce) {
  // A process killed between clearing a wake-up flag and writing the fd
  // must not leave anyone asleep: its successor's start() wakes everyone.
  World w(3, 4096);
  Slot* s = slot_at(w.shm().header(), 2);
  s->sleeping.store(0);  // as if a sender cleared it and died
  w.ep(1).start(20001);
  for (std::uint32_t k = 0; k < 3; ++k) EXPECT_EQ(w.fds().take(k), 1u) << "slot " << k;
}

TEST(Wakeup, ReceiveReturningZeroArmsSleeping) {
  World w(2, 4096);
  EXPECT_EQ(sleeping(w, 1), 0u);
  Delivery out[4];
  EXPECT_EQ(w.ep(1).receive(out, 4), 0);
  EXPECT_EQ(sleeping(w, 1), 1u);
  EXPECT_EQ(w.fds().take(1), 0u) << "arming writes nothing";
  // A receive that finds messages leaves the flag to the sender that clears it.
  ASSERT_EQ(test::send_str(w.ep(0), w.pid(1), "n", "d"), Status::kOk);
  EXPECT_EQ(sleeping(w, 1), 0u);
  EXPECT_EQ(w.fds().take(1), 1u);
  EXPECT_EQ(w.ep(1).receive(out, 4), 1);
  EXPECT_EQ(sleeping(w, 1), 0u);
  // A new process in the slot starts awake.
  EXPECT_EQ(w.ep(1).receive(out, 4), 0);
  EXPECT_EQ(sleeping(w, 1), 1u);
  w.respawn(1, 20001);
  EXPECT_EQ(sleeping(w, 1), 0u);
}

TEST(Wakeup, ReceiveWithoutArmLeavesTheSlotAlone) {
  // A busy poll watches the inbox: an empty receive must not arm the slot,
  // and one that finds messages delivers them as usual.
  World w(2, 4096);
  Delivery out[4];
  EXPECT_EQ(w.ep(1).receive(out, 4, false), 0);
  EXPECT_EQ(sleeping(w, 1), 0u);
  ASSERT_EQ(test::send_str(w.ep(0), w.pid(1), "n", "d"), Status::kOk);
  EXPECT_EQ(w.fds().take(1), 0u) << "a disarmed slot is not woken";
  ASSERT_EQ(w.ep(1).receive(out, 4, false), 1);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(out[0].data), out[0].data_len), "d");
  EXPECT_EQ(w.ep(1).receive(out, 4, false), 0);
  EXPECT_EQ(sleeping(w, 1), 0u);
  // And an armed slot stays armed through it.
  EXPECT_EQ(w.ep(1).receive(out, 4), 0);
  EXPECT_EQ(sleeping(w, 1), 1u);
  EXPECT_EQ(w.ep(1).receive(out, 4, false), 0);
  EXPECT_EQ(sleeping(w, 1), 1u);
}

TEST(Wakeup, NoWakeUpWhileTheReceiverIsAwake) {
  World w(2, 64 * KiB);
  for (int i = 0; i < 50; ++i) ASSERT_EQ(test::send_str(w.ep(0), w.pid(1), "n", "d"), Status::kOk);
  EXPECT_EQ(w.fds().take(1), 0u);
  EXPECT_EQ(test::drain(w.ep(1)).size(), 50u);
}

TEST(Wakeup, OneWakeUpForManySends) {
  World w(2, 64 * KiB);
  Delivery out[64];
  for (int round = 0; round < 5; ++round) {
    ASSERT_EQ(w.ep(1).receive(out, 64), 0);
    ASSERT_EQ(sleeping(w, 1), 1u);
    for (int i = 0; i < 200; ++i) {
      ASSERT_EQ(test::send_str(w.ep(0), w.pid(1), "n", std::to_string(i)), Status::kOk);
    }
    ASSERT_EQ(test::broadcast_str(w.ep(0), "b", "x", false), Status::kOk);
    EXPECT_EQ(w.fds().take(1), 1u) << "round " << round << ": exactly one write";
    EXPECT_EQ(w.fds().take(1), 0u);
    EXPECT_EQ(w.fds().take(0), 0u) << "the sender was never asleep";
    EXPECT_EQ(test::drain(w.ep(1)).size(), 201u);  // ends with receive() == 0: armed again
  }
}

TEST(Wakeup, OneWakeUpForManySendersIntoOneInbox) {
  // Every sender writes the same inbox: the first publish after the
  // receiver armed wakes it, the others find `sleeping` cleared.
  World w(4, 64 * KiB);
  Delivery out[64];
  for (int round = 0; round < 3; ++round) {
    ASSERT_EQ(w.ep(0).receive(out, 64), 0);
    for (int i = 0; i < 30; ++i) {
      for (std::uint32_t s = 1; s < 4; ++s) {
        ASSERT_EQ(test::send_str(w.ep(s), w.pid(0), "n", std::to_string(i)), Status::kOk);
      }
    }
    EXPECT_EQ(w.fds().take(0), 1u) << "round " << round << ": exactly one write";
    for (std::uint32_t s = 1; s < 4; ++s) EXPECT_EQ(w.fds().take(s), 0u) << "sender " << s;
    EXPECT_EQ(test::drain(w.ep(0)).size(), 90u);
  }
}

TEST(Wakeup, BroadcastWakesEverySleeperOnce) {
  World w(5, 4096);
  Delivery out[4];
  for (std::uint32_t i = 0; i < 5; ++i) {
    if (i == 3) continue;  // slot 3 stays awake
    ASSERT_EQ(w.ep(i).receive(out, 4), 0);
  }
  for (int i = 0; i < 10; ++i) ASSERT_EQ(test::broadcast_str(w.ep(2), "b", "x", true), Status::kOk);
  for (std::uint32_t i = 0; i < 5; ++i) {
    EXPECT_EQ(w.fds().take(i), i == 3 ? 0u : 1u) << "slot " << i;
    EXPECT_EQ(test::drain(w.ep(i)).size(), 10u);
  }
}

TEST(Wakeup, SendToSelfWakesSelf) {
  World w(1, 4096);
  Delivery out[4];
  ASSERT_EQ(w.ep(0).receive(out, 4), 0);
  ASSERT_EQ(test::send_str(w.ep(0), w.pid(0), "me", ""), Status::kOk);
  EXPECT_EQ(w.fds().take(0), 1u);
  EXPECT_EQ(w.ep(0).receive(out, 4), 1);
}

TEST(Wakeup, SenderIsWokenWhenSpaceFrees) {
  World w(2, 4096, 1 * MiB, 64 * KiB);
  std::vector<unsigned char> big = test::make_message(0, 0, 200 * KiB);
  ASSERT_EQ(test::send_bytes(w.ep(0), w.pid(1), "big", big), Status::kOk);
  EXPECT_TRUE(w.shm().waits(1, 0, WaitFor::kRoom)) << "a backlog for a full ring: a room waiter";
  EXPECT_EQ(w.shm().flag(1, WaitFor::kRoom), 1u);
  EXPECT_FALSE(w.shm().waits(1, 0, WaitFor::kLock)) << "the lock was free";
  EXPECT_EQ(w.fds().take(0), 0u);

  Delivery out[4];
  int wakes = 0;
  for (int i = 0; i < 10000 && w.ep(0).stats().queued_bytes != 0; ++i) {
    ASSERT_EQ(w.ep(1).receive(out, 4), 0);  // takes fragments, frees space
    std::uint64_t v = w.fds().take(0);
    ASSERT_EQ(v, 1u) << "one wake-up each time space frees, at step " << i;
    EXPECT_EQ(w.shm().flag(1, WaitFor::kRoom), 0u) << "cleared by whoever wakes";
    EXPECT_FALSE(w.shm().waits(1, 0, WaitFor::kRoom)) << "the bit too";
    ++wakes;
    w.ep(0).flush();  // marks itself again if the backlog is still there
  }
  EXPECT_EQ(w.ep(0).stats().queued_bytes, 0u);
  EXPECT_FALSE(w.shm().waits(1, 0, WaitFor::kRoom));
  EXPECT_GT(wakes, 40);
  std::vector<test::Received> got = test::drain(w.ep(1));
  ASSERT_EQ(got.size(), 1u);
  test::MsgId id;
  EXPECT_TRUE(test::parse_message(reinterpret_cast<const unsigned char*>(got[0].data.data()),
                                  got[0].data.size(), &id));
  // Nothing waits any more: releasing space wakes no one.
  EXPECT_EQ(w.fds().take(0), 0u);
}

// Fence pair A, step by step: the receiver arms (sleeping = 1, fence) and
// looks at its inbox again; the sender publishes (head) and, after its
// fence, loads `sleeping`. Whatever the order of those four steps, the
// receiver sees the record or the sender writes its fd: in a careless
// protocol, "publish, load sleeping, arm, look" loses the message.
TEST(Wakeup, PairAInEveryInterleaving) {
  for (const char* order : test::kInterleavings) {
    SCOPED_TRACE(order);
    test::Shm shm(test::make_config(2, 4096, 1 << 20, 1 << 20));
    test::EventFds fds(2);
    CoreLog log;
    Wakeup rx(shm.header(), 0, fds.fds(), &log), tx(shm.header(), 1, fds.fds(), &log);
    Consumer consumer;
    consumer.attach(shm.ctl(0), shm.data(0), 4096, 1 << 20, 2);
    ASSERT_FALSE(consumer.pending());  // the scan that found nothing
    ASSERT_TRUE(test::hold_lock(shm.header(), 0, make_writer(1, 1)));
    InboxWriter writer;
    writer.attach(shm.ctl(0), shm.data(0), 4096);
    writer.begin();
    const unsigned char payload[] = "nd";
    MessageMeta meta;
    meta.name_len = 1;
    meta.sender_slot = 1;
    meta.total_len = 2;
    ASSERT_EQ(writer.write(meta, Payload{payload, 2, nullptr, 0}, 0), 2u);

    bool found = false;
    const std::function<void()> receiver[2] = {[&] { rx.arm_begin(); },
                                               [&] { found = consumer.pending(); }};
    const std::function<void()> sender[2] = {[&] { ASSERT_TRUE(writer.publish()); },
                                             [&] { tx.after_write(0, true); }};
    test::interleave(order, receiver, sender);
    bool woken = fds.take(0) != 0;
    EXPECT_TRUE(found || woken) << "the message is neither seen nor signalled";
    EXPECT_EQ(found, test::runs_before(order, 'b', 0, 'a', 1));
    EXPECT_EQ(woken, test::runs_before(order, 'a', 0, 'b', 1));
    EXPECT_EQ(rx.armed(), !woken) << "whoever wakes clears `sleeping`";
  }
}

// Pair A through receive() itself: a message published while receive()
// scans is returned by that call, or its fd is written. To publish inside
// receive(), the test uses the one hook it has: the logger, called when the
// scan meets a message over this process's own ipc_max_message (sent by
// slot 2 under the mapping's larger limit); the logger sends from slot 1.
TEST(Wakeup, MessagePublishedDuringTheScanIsNotLost) {
  World w(3, 4096, 1 * MiB, 64 * KiB, /*start_all=*/false);
  w.ep(0).set_limits(100, 64 * KiB);
  for (std::uint32_t i = 0; i < 3; ++i) w.start(i, static_cast<std::int32_t>(10000 + i));
  struct Hook {
    World* w;
    int sends = 0;
    static void log(void* ctx, const char*, int) {
      auto* h = static_cast<Hook*>(ctx);
      ++h->sends;
      test::send_str(h->w->ep(1), h->w->pid(0), "during", std::to_string(h->sends));
    }
  } hook{&w};
  w.ep(0).set_logger(&Hook::log, &hook);
  Delivery out[4];
  const std::string too_big(200, 'x');
  for (int round = 0; round < 12; ++round) {
    ASSERT_EQ(w.ep(0).receive(out, 4), 0);  // asleep
    w.fds().take(0);
    ASSERT_EQ(test::send_str(w.ep(2), w.pid(0), "big", too_big), Status::kOk);
    EXPECT_EQ(w.fds().take(0), 1u);
    int k = w.ep(0).receive(out, 4);
    ASSERT_EQ(hook.sends, round + 1);
    if (k == 1) {
      EXPECT_EQ(test::copy_delivery(out[0]).data, std::to_string(round + 1));
    } else {
      EXPECT_EQ(k, 0);
      EXPECT_EQ(w.fds().take(0), 1u) << "round " << round << ": message neither returned nor "
                                     << "signalled: the wake-up is lost";
      EXPECT_EQ(test::drain(w.ep(0)).size(), 1u);
    }
  }
  EXPECT_EQ(w.ep(0).stats().dropped, 12u);
  EXPECT_EQ(w.ep(0).stats().received, 12u);
  EXPECT_EQ(w.ep(0).stats().resets, 0u);
}

// Pair B through the endpoints: space freed right after the sender marked
// itself waiting for room. The hook: the sender's endpoint gets an invalid
// wake-up fd for the receiver, so each of its after_write() calls (after
// it marked itself and unlocked, in send() or flush()) logs a failure; the
// logger drains the receiver there, which frees the whole ring. Whenever
// the sender is left with a backlog, its own fd must have been written.
// (Every order of the four steps: WakeupWaiters.PairBInEveryInterleaving.)
TEST(Wakeup, SpaceFreedWhileTheSenderFlushesIsNotLost) {
  test::Shm shm(test::make_config(2, 4096, 1 << 20, 1 << 20));
  test::EventFds fds(2);
  const int sender_fds[2] = {-1, fds[1]};  // slot 0's fd as the sender sees it: broken
  Endpoint receiver(shm.header(), 0, fds.fds());
  Endpoint sender(shm.header(), 1, sender_fds);
  receiver.start(100);
  sender.start(101);
  struct Hook {
    Endpoint* receiver;
    std::uint64_t received = 0;
    int calls = 0;
    static void log(void* ctx, const char*, int) {
      auto* h = static_cast<Hook*>(ctx);
      ++h->calls;
      h->received += test::drain(*h->receiver).size();  // frees the ring; arms sleeping
    }
  } hook{&receiver};
  sender.set_logger(&Hook::log, &hook);
  Delivery out[4];
  ASSERT_EQ(receiver.receive(out, 4), 0);  // asleep: the sender's notify() will try to wake it

  const std::string big(20000, 'x');
  for (int m = 0; m < 20; ++m) {
    ASSERT_EQ(test::send_str(sender, 100, "big", big), Status::kOk);
    for (int step = 0; step < 100 && sender.stats().queued_bytes != 0; ++step) {
      // A backlog is left: the space freed inside the call must have woken us.
      ASSERT_GE(fds.take(1), 1u) << "message " << m << ", step " << step
                                 << ": space freed, sender not woken";
      sender.flush();
    }
    ASSERT_EQ(sender.stats().queued_bytes, 0u);
    fds.take(1);
  }
  hook.received += test::drain(receiver).size();
  EXPECT_EQ(hook.received, 20u);
  EXPECT_GT(hook.calls, 20);
}

}  // namespace
}  // namespace ngx_ipc
