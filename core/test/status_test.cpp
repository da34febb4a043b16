// ngx_ipc core tests: the counters in shared memory and what the status
// page reads from them (ngx_ipc/status.h): per worker state, identity,
// counters and the messages of its backlog, zeroed by a new process in the
// slot; per inbox its use, capacity and the messages waiting in it.

#include "ngx_ipc/status.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "ngx_ipc/endpoint.h"
#include "test_util.h"

namespace ngx_ipc {
namespace {

using test::World;

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t MiB = 1024 * KiB;

// The World's slots hold made-up PIDs: alive unless listed here.
std::int32_t g_dead_pid = 0;
bool fake_alive(std::int32_t pid) { return pid != g_dead_pid; }

WorkerStatus worker(World& w, std::uint32_t slot) {
  WorkerStatus s{};
  read_worker(w.shm().header(), slot, &s, &fake_alive);
  return s;
}

TEST(Status, CountersLiveInTheSlot) {
  World w(2, 4096);
  // stats() is the slot's SlotCounters in the mapping, so another process
  // reads what the owner writes.
  EXPECT_EQ(static_cast<void*>(&w.ep(1).stats()),
            static_cast<void*>(&w.shm().slot(1)->counters.core));
  ASSERT_EQ(test::send_str(w.ep(0), w.pid(1), "n", "12345"), Status::kOk);
  ASSERT_EQ(test::send_str(w.ep(0), 999999, "n", "x"), Status::kNoSuchWorker);
  ASSERT_EQ(test::drain(w.ep(1)).size(), 1u);
  WorkerStatus s0 = worker(w, 0), s1 = worker(w, 1);
  EXPECT_EQ(s0.pid, w.pid(0));
  EXPECT_EQ(s0.slot, 0u);
  EXPECT_EQ(s0.incarnation, 1u);
  EXPECT_EQ(s0.state, static_cast<int>(WorkerState::kRunning));
  EXPECT_EQ(s0.stats.sent, 1u);
  EXPECT_EQ(s0.stats.sent_bytes, 5u);
  EXPECT_EQ(s0.stats.refused, 1u);
  EXPECT_EQ(s1.stats.received, 1u);
  EXPECT_EQ(s1.stats.received_bytes, 5u);
  EXPECT_EQ(s1.stats.sent, 0u);
}

TEST(Status, States) {
  World w(3, 4096, 1 * MiB, 64 * KiB, /*start_all=*/false);
  w.start(0, 500);
  w.start(1, 501);
  EXPECT_STREQ(state_name(static_cast<WorkerState>(worker(w, 2).state)), "not_started");
  EXPECT_EQ(worker(w, 2).pid, 0);
  EXPECT_STREQ(state_name(static_cast<WorkerState>(worker(w, 0).state)), "running");
  w.ep(0).stop();
  EXPECT_STREQ(state_name(static_cast<WorkerState>(worker(w, 0).state)), "exited");
  EXPECT_EQ(worker(w, 0).incarnation, 1u);
  g_dead_pid = 501;
  EXPECT_STREQ(state_name(static_cast<WorkerState>(worker(w, 1).state)), "dead");
  EXPECT_EQ(worker(w, 1).pid, 501);
  g_dead_pid = 0;
}

TEST(Status, AddsWhatLuaCountsToWhatTheCoreCounts) {
  World w(2, 4096);
  ASSERT_EQ(test::send_str(w.ep(1), 999999, "n", "x"), Status::kNoSuchWorker);
  w.ep(1).stats().dropped = 2;
  LuaStats& lua = w.shm().slot(1)->counters.lua;  // what the Lua side writes
  lua.dropped = 3;
  lua.refused = -1;  // a "queue full" of the core's that then waited
  lua.handler_errors = 4;
  lua.calls = 5;
  lua.call_timeouts = 6;
  WorkerStatus s = worker(w, 1);
  EXPECT_EQ(s.stats.dropped, 5u);
  EXPECT_EQ(s.stats.refused, 0u);
  EXPECT_EQ(s.stats.handler_errors, 4u);
  EXPECT_EQ(s.stats.calls, 5u);
  EXPECT_EQ(s.stats.call_timeouts, 6u);
  w.respawn(1, 20001);
  EXPECT_EQ(worker(w, 1).stats.calls, 0u) << "start() zeroes Lua's part too";
}

TEST(Status, ARespawnStartsFromZero) {
  World w(2, 4096, 1 * MiB, 64 * KiB);
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "n", "x"), Status::kOk);
  }
  // 10 KiB do not fit the 4 KiB inbox: the rest waits in slot 1's backlog.
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "big", std::string(10 * KiB, 'b')), Status::kOk);
  w.ep(1).counters().busy_poll_ns = 1234;
  w.ep(1).stats().resets = 2;  // as if its own inbox had been reset twice
  WorkerStatus before = worker(w, 1);
  EXPECT_EQ(before.stats.sent, 4u);
  EXPECT_EQ(before.busy_poll_ns, 1234u);
  EXPECT_EQ(before.queued_msgs, 1u);
  EXPECT_GT(before.stats.queued_bytes, 5 * KiB);
  EXPECT_EQ(before.stats.resets, 2u);
  w.respawn(1, 20001);
  WorkerStatus s = worker(w, 1);
  EXPECT_EQ(s.pid, 20001);
  EXPECT_EQ(s.incarnation, 2u);
  EXPECT_EQ(s.stats.sent, 0u);
  EXPECT_EQ(s.stats.sent_bytes, 0u);
  EXPECT_EQ(s.stats.resets, 0u);
  EXPECT_EQ(s.busy_poll_ns, 0u);
  EXPECT_EQ(s.queued_msgs, 0u) << "the backlog died with the process";
  EXPECT_EQ(s.stats.queued_bytes, 0u);
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "n", "y"), Status::kOk);
  EXPECT_EQ(worker(w, 1).stats.sent, 1u);
}

TEST(Status, InboxShowsUseCapacityAndWaitingMessages) {
  World w(3, 4096, 1 * MiB, 64 * KiB);
  ShmHeader* h = w.shm().header();
  InboxStatus in{};
  EXPECT_FALSE(read_inbox(h, 1, &in)) << "no traffic yet";
  EXPECT_EQ(in.capacity, 4096u);
  EXPECT_EQ(in.used, 0u);
  EXPECT_EQ(in.waiting, 0u);
  EXPECT_EQ(in.bytes_total, 0u);

  // Two senders write slot 1's one inbox.
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(test::send_str(w.ep(0), w.pid(1), "n", "abc"), Status::kOk);
    ASSERT_EQ(test::send_str(w.ep(2), w.pid(1), "n", "abc"), Status::kOk);
  }
  const std::uint64_t record = align8(sizeof(RecordHeader) + 4);
  ASSERT_TRUE(read_inbox(h, 1, &in));
  EXPECT_EQ(in.waiting, 6u);
  EXPECT_EQ(in.used, 6 * record);
  EXPECT_EQ(in.bytes_total, 6 * record);
  EXPECT_FALSE(read_inbox(h, 0, &in)) << "slot 0's inbox is idle";
  EXPECT_FALSE(read_inbox(h, 2, &in));

  // 10 KiB do not fit: the inbox fills, the rest waits in sender 0's
  // backlog, and a message whose last record is not in the inbox is not
  // waiting there yet.
  const std::string big(10 * KiB, 'b');
  ASSERT_EQ(test::send_str(w.ep(0), w.pid(1), "big", big), Status::kOk);
  ASSERT_TRUE(read_inbox(h, 1, &in));
  EXPECT_EQ(in.waiting, 6u);
  EXPECT_GT(in.used, 4096u - 1024u);
  EXPECT_LE(in.used, in.capacity);
  EXPECT_EQ(worker(w, 0).queued_msgs, 1u);
  EXPECT_GT(worker(w, 0).stats.queued_bytes, 5 * KiB);
  EXPECT_EQ(worker(w, 0).stats.queued_bytes, w.ep(0).backlog_bytes(1));
  // Sender 2's next message finds no room: all of it waits in its backlog.
  ASSERT_EQ(test::send_str(w.ep(2), w.pid(1), "n", "abc"), Status::kOk);
  EXPECT_EQ(worker(w, 2).queued_msgs, 1u);
  EXPECT_EQ(worker(w, 2).stats.queued_bytes, 4u);

  std::size_t got = 0;
  for (int round = 0; round < 100 && got < 8; ++round) {
    got += test::drain(w.ep(1)).size();
    w.ep(0).flush();
    w.ep(2).flush();
  }
  ASSERT_EQ(got, 8u);
  w.ep(1).release();
  ASSERT_TRUE(read_inbox(h, 1, &in));
  EXPECT_EQ(in.waiting, 0u);
  EXPECT_EQ(in.used, 0u);
  EXPECT_GT(in.bytes_total, 10 * KiB);
  EXPECT_EQ(worker(w, 0).queued_msgs, 0u);
  EXPECT_EQ(worker(w, 0).stats.queued_bytes, 0u);
  EXPECT_EQ(worker(w, 2).queued_msgs, 0u);
}

TEST(Status, QueuedMsgsCountsWhatTheBacklogHolds) {
  World w(3, 4096, 1 * MiB, 64 * KiB);
  // Slot 2 holds slot 1's inbox lock (mid-write, as far as anyone knows):
  // slot 0 keeps whole messages in its backlog and never waits.
  w.shm().ctl(1)->lock.store(make_writer(2, w.ep(2).incarnation()));
  for (int i = 0; i < 5; ++i) {
    ASSERT_EQ(test::send_str(w.ep(0), w.pid(1), "n", "abcd"), Status::kOk);
  }
  ASSERT_EQ(test::send_str(w.ep(0), w.pid(2), "n", "to 2"), Status::kOk);  // another inbox
  WorkerStatus s = worker(w, 0);
  EXPECT_EQ(s.queued_msgs, 5u);
  EXPECT_EQ(s.stats.queued_bytes, 5 * 5u);  // name and data
  EXPECT_EQ(s.stats.sent, 6u);
  InboxStatus in{};
  EXPECT_FALSE(read_inbox(w.shm().header(), 1, &in));
  EXPECT_EQ(in.waiting, 0u);
  EXPECT_FALSE(w.ep(0).flush()) << "the lock is still taken";
  EXPECT_EQ(worker(w, 0).queued_msgs, 5u);
  // Slot 0 is marked waiting for that lock, for the holder to wake.
  EXPECT_EQ(waiter_bits(w.shm().header(), 1, WaitFor::kLock)[0].load(), 1u);
  EXPECT_EQ(w.shm().ctl(1)->lock_waiting.load(), 1u);

  w.shm().ctl(1)->lock.store(0);
  EXPECT_TRUE(w.ep(0).flush());
  EXPECT_EQ(waiter_bits(w.shm().header(), 1, WaitFor::kLock)[0].load(), 0u);
  s = worker(w, 0);
  EXPECT_EQ(s.queued_msgs, 0u);
  EXPECT_EQ(s.stats.queued_bytes, 0u);
  ASSERT_TRUE(read_inbox(w.shm().header(), 1, &in));
  EXPECT_EQ(in.waiting, 5u);
  EXPECT_EQ(test::drain(w.ep(1)).size(), 5u);
}

TEST(Status, ARefusedBroadcastCountsNoMessage) {
  // Slot 2 never reads: its backlog fills, and a broadcast is refused for
  // everyone, so nothing is counted as waiting for slot 1 either.
  World w(3, 4096, 1 * MiB, 64 * KiB);
  ShmHeader* h = w.shm().header();
  const std::string big(200 * KiB, 'b');
  ASSERT_EQ(test::send_str(w.ep(0), w.pid(2), "big", big), Status::kOk);
  ASSERT_EQ(test::send_str(w.ep(0), w.pid(1), "one", "x"), Status::kOk);
  InboxStatus before{}, after{};
  ASSERT_TRUE(read_inbox(h, 1, &before));
  EXPECT_EQ(before.waiting, 1u);
  WorkerStatus s0 = worker(w, 0);
  EXPECT_EQ(s0.queued_msgs, 1u);
  EXPECT_EQ(test::broadcast_str(w.ep(0), "b", "y", true), Status::kQueueFull);
  ASSERT_TRUE(read_inbox(h, 1, &after));
  EXPECT_EQ(after.waiting, 1u);
  EXPECT_EQ(after.used, before.used);
  EXPECT_EQ(after.bytes_total, before.bytes_total);
  EXPECT_EQ(worker(w, 0).queued_msgs, 1u);
  EXPECT_EQ(worker(w, 0).stats.queued_bytes, s0.stats.queued_bytes);
  InboxStatus to2{};
  ASSERT_TRUE(read_inbox(h, 2, &to2));
  EXPECT_EQ(to2.waiting, 0u) << "the big message is partly in the inbox: not waiting yet";
  EXPECT_GT(to2.used, 0u);
  EXPECT_EQ(s0.stats.queued_bytes, w.ep(0).backlog_bytes(2));
}

TEST(Status, ARespawnedSenderLeavesAPartialMessageNotWaiting) {
  World w(2, 4096, 1 * MiB, 64 * KiB);
  const std::string big(10 * KiB, 'b');
  ASSERT_EQ(test::send_str(w.ep(0), w.pid(1), "big", big), Status::kOk);
  ASSERT_EQ(worker(w, 0).queued_msgs, 1u);
  w.respawn(0, 20000);  // the backlog died with the process
  EXPECT_EQ(worker(w, 0).queued_msgs, 0u);
  EXPECT_EQ(worker(w, 0).stats.queued_bytes, 0u);
  InboxStatus in{};
  ASSERT_TRUE(read_inbox(w.shm().header(), 1, &in));
  EXPECT_EQ(in.waiting, 0u) << "the partial message in the inbox has no last record";
  EXPECT_GT(in.used, 0u);
}

TEST(Status, ReadFromAnotherProcess) {
  // The owner counts in a forked child; the parent reads the mapping.
  World w(2, 4096);
  test::Child child([&] {
    for (int i = 0; i < 1000; ++i) {
      CHILD_CHECK(test::send_str(w.ep(1), w.pid(1), "self", "0123456789") == Status::kOk);
      CHILD_CHECK(test::drain(w.ep(1)).size() == 1);
    }
    // Left in its backlog when it exits: 10 KiB through slot 0's 4 KiB inbox.
    CHILD_CHECK(test::send_str(w.ep(1), w.pid(0), "big", std::string(10 * KiB, 'b')) ==
                Status::kOk);
    return 0;
  });
  int status = 0;
  ASSERT_TRUE(child.wait(30000, &status));
  ASSERT_EQ(test::describe_status(status), "exited 0");
  WorkerStatus s = worker(w, 1);
  EXPECT_EQ(s.stats.sent, 1001u);
  EXPECT_EQ(s.stats.received, 1000u);
  EXPECT_EQ(s.stats.sent_bytes, 10000u + 10 * KiB);
  EXPECT_EQ(s.stats.received_bytes, 10000u);
  EXPECT_EQ(s.queued_msgs, 1u);
  EXPECT_GT(s.stats.queued_bytes, 5 * KiB);
  InboxStatus own{}, other{};
  ASSERT_TRUE(read_inbox(w.shm().header(), 1, &own));
  EXPECT_EQ(own.bytes_total, 1000 * align8(sizeof(RecordHeader) + 14));
  EXPECT_EQ(own.used, 0u);
  EXPECT_EQ(own.waiting, 0u);
  ASSERT_TRUE(read_inbox(w.shm().header(), 0, &other));
  EXPECT_GT(other.used, 0u);
  EXPECT_EQ(other.waiting, 0u);
}

}  // namespace
}  // namespace ngx_ipc
