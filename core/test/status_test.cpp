// ngx_ipc core tests: the counters in shared memory and what the status
// page reads from them (ngx_ipc/status.h): per worker state, identity and
// counters, zeroed by a new process in the slot; per pair ring use, the
// sender's backlog and the messages waiting.

#include "ngx_ipc/status.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

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
  World w(2, 4096);
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "n", "x"), Status::kOk);
  }
  w.ep(1).counters().busy_poll_ns = 1234;
  EXPECT_EQ(worker(w, 1).stats.sent, 3u);
  EXPECT_EQ(worker(w, 1).busy_poll_ns, 1234u);
  w.respawn(1, 20001);
  WorkerStatus s = worker(w, 1);
  EXPECT_EQ(s.pid, 20001);
  EXPECT_EQ(s.incarnation, 2u);
  EXPECT_EQ(s.stats.sent, 0u);
  EXPECT_EQ(s.busy_poll_ns, 0u);
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "n", "y"), Status::kOk);
  EXPECT_EQ(worker(w, 1).stats.sent, 1u);
}

TEST(Status, PairsShowRingBacklogAndWaitingMessages) {
  World w(2, 4096, 1 * MiB, 64 * KiB);
  PairStatus p{};
  EXPECT_FALSE(read_pair(w.shm().header(), 0, 1, &p)) << "no traffic yet";
  EXPECT_EQ(p.ring_capacity, 4096u);
  EXPECT_EQ(p.waiting, 0u);

  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(test::send_str(w.ep(0), w.pid(1), "n", "abc"), Status::kOk);
  }
  ASSERT_TRUE(read_pair(w.shm().header(), 0, 1, &p));
  EXPECT_EQ(p.waiting, 3u);
  EXPECT_EQ(p.ring_used, 3 * align8(sizeof(RecordHeader) + 4));
  EXPECT_EQ(p.backlog_bytes, 0u);
  EXPECT_FALSE(read_pair(w.shm().header(), 1, 0, &p)) << "the other direction is idle";

  // 10 KiB does not fit a 4 KiB ring: the rest waits in the sender's backlog.
  const std::string big(10 * KiB, 'b');
  ASSERT_EQ(test::send_str(w.ep(0), w.pid(1), "big", big), Status::kOk);
  ASSERT_TRUE(read_pair(w.shm().header(), 0, 1, &p));
  EXPECT_EQ(p.waiting, 4u);
  EXPECT_GT(p.backlog_bytes, 5 * KiB);
  EXPECT_EQ(p.backlog_bytes, w.ep(0).stats().queued_bytes);

  std::size_t got = 0;
  for (int round = 0; round < 100 && got < 4; ++round) {
    got += test::drain(w.ep(1)).size();
    w.ep(0).flush();
  }
  ASSERT_EQ(got, 4u);
  w.ep(1).release();
  ASSERT_TRUE(read_pair(w.shm().header(), 0, 1, &p));
  EXPECT_EQ(p.waiting, 0u);
  EXPECT_EQ(p.ring_used, 0u);
  EXPECT_EQ(p.backlog_bytes, 0u);
  EXPECT_GT(p.bytes_total, 10 * KiB);
}

TEST(Status, ARefusedBroadcastCountsNoMessage) {
  // Slot 2 never reads: its backlog fills, and a broadcast is refused for
  // everyone, so nothing is counted as waiting for slot 1 either.
  World w(3, 4096, 1 * MiB, 64 * KiB);
  const std::string big(200 * KiB, 'b');
  ASSERT_EQ(test::send_str(w.ep(0), w.pid(2), "big", big), Status::kOk);
  ASSERT_EQ(test::send_str(w.ep(0), w.pid(1), "one", "x"), Status::kOk);
  PairStatus before{}, after{};
  ASSERT_TRUE(read_pair(w.shm().header(), 0, 1, &before));
  EXPECT_EQ(before.waiting, 1u);
  EXPECT_EQ(test::broadcast_str(w.ep(0), "b", "y", true), Status::kQueueFull);
  ASSERT_TRUE(read_pair(w.shm().header(), 0, 1, &after));
  EXPECT_EQ(after.waiting, 1u);
  EXPECT_EQ(after.ring_used, before.ring_used);
  PairStatus to2{};
  ASSERT_TRUE(read_pair(w.shm().header(), 0, 2, &to2));
  EXPECT_EQ(to2.waiting, 1u) << "the big message, partly in the ring";
  EXPECT_EQ(to2.backlog_bytes, w.ep(0).stats().queued_bytes);
}

TEST(Status, ARespawnedSenderHasNoBacklog) {
  World w(2, 4096, 1 * MiB, 64 * KiB);
  const std::string big(10 * KiB, 'b');
  ASSERT_EQ(test::send_str(w.ep(0), w.pid(1), "big", big), Status::kOk);
  PairStatus p{};
  ASSERT_TRUE(read_pair(w.shm().header(), 0, 1, &p));
  ASSERT_GT(p.backlog_bytes, 0u);
  w.respawn(0, 20000);  // the backlog died with the process
  ASSERT_TRUE(read_pair(w.shm().header(), 0, 1, &p));
  EXPECT_EQ(p.backlog_bytes, 0u);
  EXPECT_EQ(p.waiting, 0u) << "the partial message in the ring has no last record";
}

TEST(Status, ReadFromAnotherProcess) {
  // The owner counts in a forked child; the parent reads the mapping.
  World w(2, 4096);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    for (int i = 0; i < 1000; ++i) {
      if (test::send_str(w.ep(1), w.pid(1), "self", "0123456789") != Status::kOk) _exit(1);
      if (test::drain(w.ep(1)).size() != 1) _exit(2);
    }
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0);
  WorkerStatus s = worker(w, 1);
  EXPECT_EQ(s.stats.sent, 1000u);
  EXPECT_EQ(s.stats.received, 1000u);
  EXPECT_EQ(s.stats.sent_bytes, 10000u);
  EXPECT_EQ(s.stats.received_bytes, 10000u);
}

}  // namespace
}  // namespace ngx_ipc
