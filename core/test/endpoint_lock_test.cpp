// ngx_ipc core tests: one inbox per receiver, written by every sender under
// its lock. Several senders' fragmented messages interleave in one ring and
// are reassembled apart; a sender that finds the lock taken keeps its
// messages in its backlog, in order, behind which its later sends queue; a
// broadcast stays all or nothing when a busy lock fills one backlog; a
// holder that died is taken over by a probing flush only. Endpoints driven
// by one thread, the lock held by hand where a test needs it held.

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "ngx_ipc/endpoint.h"
#include "ngx_ipc/inbox_lock.h"
#include "test_util.h"

namespace ngx_ipc {
namespace {

using test::Received;
using test::World;

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t MiB = 1024 * KiB;

bool byte_exact(const Received& r, test::MsgId* id) {
  return test::parse_message(reinterpret_cast<const unsigned char*>(r.data.data()), r.data.size(),
                             id);
}

// True if, in this stream of records, some sender's record comes between
// the first and the last record of another sender's message.
struct InterleaveWatch {
  std::vector<int> open;  // by sender slot: 1 inside a message
  bool seen = false;
  explicit InterleaveWatch(std::uint32_t nslots) : open(nslots, 0) {}
  void feed(const std::vector<RecordHeader>& records) {
    for (const RecordHeader& h : records) {
      for (std::uint32_t s = 0; s < open.size(); ++s) {
        if (s != h.sender_slot && open[s] != 0) seen = true;
      }
      open[h.sender_slot] = (h.flags & kLast) == 0;
    }
  }
};

TEST(InboxLock, SeveralSendersFragmentsInterleaveAndReassemble) {
  // Three senders' messages, most bigger than the 4 KiB ring: each round
  // the senders flush in turn (starting with a different one each time), so
  // a ring-full of one sender's fragments follows another's unfinished
  // message. The receiver reassembles each sender's messages apart.
  World w(4, 4096, 256 * KiB, 1 * MiB);
  test::Rng rng(test::test_seed() + 5);
  const std::uint64_t per_sender = 12;
  for (std::uint64_t seq = 0; seq < per_sender; ++seq) {
    for (std::uint32_t s = 1; s <= 3; ++s) {
      std::size_t len = seq % 3 == 2 ? 40 : rng.range(5 * KiB, 60 * KiB);
      ASSERT_EQ(test::send_bytes(w.ep(s), w.pid(0), "f", test::make_message(s, seq, len)),
                Status::kOk);
    }
  }
  InterleaveWatch watch(4);
  std::vector<std::uint64_t> next(4, 0);
  std::uint64_t got = 0;
  for (int round = 0; round < 10000 && got < 3 * per_sender; ++round) {
    for (std::uint32_t i = 0; i < 3; ++i) w.ep(1 + (round + i) % 3).flush();
    watch.feed(test::peek_records(w.shm().header(), 0));
    for (const Received& r : test::drain(w.ep(0))) {
      test::MsgId id;
      ASSERT_TRUE(byte_exact(r, &id)) << "message " << got << " corrupt";
      ASSERT_EQ(r.sender_pid, w.pid(id.tag));
      EXPECT_EQ(id.seq, next[id.tag]++) << "from slot " << id.tag;
      ++got;
    }
  }
  EXPECT_EQ(got, 3 * per_sender);
  EXPECT_TRUE(watch.seen) << "no two messages interleaved: the test proved little";
  EXPECT_EQ(w.ep(0).stats().received, 3 * per_sender);
  EXPECT_EQ(w.ep(0).stats().dropped, 0u);
  EXPECT_EQ(w.ep(0).stats().resets, 0u);
}

TEST(InboxLock, BigBroadcastsFromTwoSendersReachEveryInboxWhole) {
  // Each broadcast is kept once and shared by the backlogs of every
  // destination; the receivers drain at different paces, so each backlog
  // entry is at another offset of the shared copy.
  World w(4, 4096, 256 * KiB, 1 * MiB);
  for (std::uint64_t seq = 0; seq < 3; ++seq) {
    for (std::uint32_t s = 0; s <= 1; ++s) {
      std::vector<unsigned char> m = test::make_message(s, seq, 30 * KiB + seq * 1000);
      ASSERT_EQ(w.ep(s).broadcast(reinterpret_cast<const unsigned char*>("b"), 1, m.data(),
                                  m.size(), true),
                Status::kOk);
    }
  }
  std::vector<std::vector<std::uint64_t>> next(4, std::vector<std::uint64_t>(2, 0));
  std::uint64_t got = 0;
  for (int round = 0; round < 100000 && got < 4 * 6; ++round) {
    w.ep(round % 2).flush();
    w.ep(1 - round % 2).flush();
    for (std::uint32_t r = 0; r < 4; ++r) {
      if (round % (r + 1) != 0) continue;
      for (const Received& m : test::drain(w.ep(r))) {
        test::MsgId id;
        ASSERT_TRUE(byte_exact(m, &id)) << "slot " << r << ": corrupt broadcast";
        ASSERT_LE(id.tag, 1u);
        EXPECT_EQ(m.flags, static_cast<std::uint32_t>(kBroadcast));
        EXPECT_EQ(id.seq, next[r][id.tag]++) << "slot " << r << " from " << id.tag;
        ++got;
      }
    }
  }
  EXPECT_EQ(got, 4u * 6u);
  for (std::uint32_t s = 0; s <= 1; ++s) EXPECT_EQ(w.ep(s).stats().queued_bytes, 0u);
}

TEST(InboxLock, BacklogKeepsItsOrderWhileTheLockIsBusy) {
  World w(4, 64 * KiB);
  ShmHeader* h = w.shm().header();
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "m", "0"), Status::kOk);
  ASSERT_TRUE(test::hold_lock(h, 0, test::live_writer(h, 3)));
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "m", "1"), Status::kOk);
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "m", std::string(10 * KiB, '2')), Status::kOk);
  EXPECT_EQ(w.ep(1).counters().queued_msgs, 2u) << "both kept in the backlog";
  EXPECT_EQ(w.ep(1).stats().queued_bytes, (1u + 1u) + (1u + 10 * KiB)) << "name and data";
  EXPECT_EQ(w.ep(1).stats().sent, 3u) << "queued counts as sent";
  EXPECT_EQ(test::peek_records(h, 0).size(), 1u) << "nothing written past the first";
  EXPECT_TRUE(w.shm().waits(0, 1, WaitFor::kLock));
  EXPECT_FALSE(w.ep(1).flush()) << "still taken";
  // Another destination's inbox has a lock of its own.
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(2), "m", "other"), Status::kOk);
  EXPECT_EQ(test::drain(w.ep(2)).size(), 1u);

  test::unlock_as_holder(h, 0, w.fds().fds());
  EXPECT_EQ(w.fds().take(1), 1u);
  // The lock is free, but the backlog is not empty: the next send goes
  // behind it, not ahead.
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "m", "3"), Status::kOk);
  EXPECT_EQ(w.ep(1).stats().queued_bytes, 0u) << "send() flushed the backlog first";
  EXPECT_EQ(w.ep(1).counters().queued_msgs, 0u);
  EXPECT_FALSE(w.shm().waits(0, 1, WaitFor::kLock));
  std::vector<Received> got = test::drain(w.ep(0));
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[0].data, "0");
  EXPECT_EQ(got[1].data, "1");
  EXPECT_EQ(got[2].data, std::string(10 * KiB, '2'));
  EXPECT_EQ(got[3].data, "3");
}

TEST(InboxLock, BroadcastIsAllOrNothingWhenABusyLockFillsABacklog) {
  World w(4, 4096, 1 * MiB, 16 * KiB);
  ShmHeader* h = w.shm().header();
  ASSERT_TRUE(test::hold_lock(h, 2, test::live_writer(h, 3)));
  Status st = Status::kOk;
  int queued = 0;
  for (; queued < 100 && st == Status::kOk; ++queued) {
    st = test::send_str(w.ep(0), w.pid(2), "u", std::string(4 * KiB, 'u'));
  }
  ASSERT_EQ(st, Status::kQueueFull);
  const CoreStats before = w.ep(0).stats();
  EXPECT_EQ(test::broadcast_str(w.ep(0), "b", "all", true), Status::kQueueFull);
  EXPECT_EQ(w.ep(0).stats().sent, before.sent);
  EXPECT_EQ(w.ep(0).stats().refused, before.refused + 1);
  EXPECT_EQ(w.ep(0).stats().queued_bytes, before.queued_bytes);
  for (std::uint32_t k : {0u, 1u, 3u}) {
    EXPECT_EQ(w.shm().ctl(k)->head.load(), 0u) << "the broadcast reached slot " << k;
    EXPECT_EQ(w.ep(0).backlog_bytes(k), 0u) << "the broadcast waits for slot " << k;
  }

  test::unlock_as_holder(h, 2, w.fds().fds());
  EXPECT_EQ(w.fds().take(0), 1u) << "the lock waiter is woken";
  bool ok;
  EXPECT_EQ(test::pump(w.ep(0), w.ep(2), &ok).size(), static_cast<std::size_t>(queued - 1));
  ASSERT_TRUE(ok);
  ASSERT_EQ(test::broadcast_str(w.ep(0), "b", "all", true), Status::kOk);
  for (std::uint32_t k = 0; k < 4; ++k) {
    std::vector<Received> got = test::drain(w.ep(k));
    ASSERT_EQ(got.size(), 1u) << "slot " << k;
    EXPECT_EQ(got[0].data, "all");
  }
}

// Slot 2's process holds receiver 0's lock, then dies in one of the ways
// `die` plays; slot 1 has a message waiting behind it.
void dead_holder_case(const char* how, void (*die)(World& w)) {
  SCOPED_TRACE(how);
  World w(3, 4096, 1 * MiB, 64 * KiB, /*start_all=*/false);
  w.start(0, 10000);
  w.start(1, 10001);
  w.start(2, static_cast<std::int32_t>(::getpid()));  // alive, as far as kill(pid, 0) knows
  ShmHeader* h = w.shm().header();
  const std::uint64_t holder = test::live_writer(h, 2);
  ASSERT_TRUE(test::hold_lock(h, 0, holder));
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "m", "behind"), Status::kOk);
  ASSERT_GT(w.ep(1).stats().queued_bytes, 0u);

  // While its holder lives, nobody takes the lock, probing or not.
  EXPECT_FALSE(w.ep(1).flush(false));
  EXPECT_FALSE(w.ep(1).flush(true));
  EXPECT_EQ(w.shm().ctl(0)->lock.load(), holder);

  // It dies holding the lock, half-way through a record it never published.
  die(w);
  EXPECT_FALSE(writer_alive(nullptr, h, holder));
  const std::uint64_t head = w.shm().ctl(0)->head.load();
  std::memset(w.shm().data(0) + (head & 4095), 0xee, 200);
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(w.ep(1).flush(false)) << "no probe, no takeover";
  EXPECT_EQ(w.shm().ctl(0)->lock.load(), holder);
  EXPECT_TRUE(w.ep(1).flush(true)) << "a probing flush takes the lock over";
  EXPECT_EQ(w.shm().ctl(0)->lock.load(), 0u) << "and gives it back";
  EXPECT_EQ(w.ep(1).stats().queued_bytes, 0u);
  EXPECT_FALSE(w.shm().waits(0, 1, WaitFor::kLock));

  std::vector<Received> got = test::drain(w.ep(0));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "behind");
  EXPECT_EQ(w.ep(0).stats().resets, 0u) << "the dead holder's garbage was overwritten";
  EXPECT_EQ(w.ep(0).stats().dropped, 0u);
}

TEST(InboxLock, DeadHolderIsTakenOverByAProbingFlushOnly) {
  dead_holder_case("a new process took its slot",
                   [](World& w) { w.respawn(2, static_cast<std::int32_t>(::getpid())); });
  dead_holder_case("its slot says it exited", [](World& w) {
    Slot* s = w.shm().slot(2);
    s->identity.store(make_identity(identity_incarnation(s->identity.load()), 0));
  });
  dead_holder_case("its PID is gone", [](World& w) {
    Slot* s = w.shm().slot(2);
    s->identity.store(make_identity(identity_incarnation(s->identity.load()), test::dead_pid()));
  });
}

TEST(InboxLock, TheDeadHoldersSuccessorTakesOverItsLock) {
  // Slot 1's process died holding receiver 0's lock, with a message half
  // published; its successor sends: its probing flush takes the lock over,
  // and the receiver drops the half message, not the new ones.
  World w(2, 4096, 1 * MiB, 1 * MiB);
  ShmHeader* h = w.shm().header();
  std::vector<unsigned char> big = test::make_message(1, 0, 100 * KiB);
  ASSERT_EQ(test::send_bytes(w.ep(1), w.pid(0), "big", big), Status::kOk);
  ASSERT_TRUE(test::hold_lock(h, 0, test::live_writer(h, 1)));  // its last flush, never ended
  EXPECT_TRUE(test::drain(w.ep(0)).empty());  // the receiver reads on: the ring has room
  Endpoint& next = w.respawn(1, 20001);
  ASSERT_EQ(test::send_str(next, w.pid(0), "new", "one"), Status::kOk);
  EXPECT_GT(next.stats().queued_bytes, 0u);
  EXPECT_FALSE(next.flush(false));
  EXPECT_TRUE(next.flush(true));
  ASSERT_EQ(test::send_str(next, w.pid(0), "new", "two"), Status::kOk);
  std::vector<Received> got = test::drain(w.ep(0));
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].data, "one");
  EXPECT_EQ(got[1].data, "two");
  EXPECT_EQ(got[1].sender_pid, 20001);
  EXPECT_EQ(w.ep(0).stats().dropped, 1u) << "the predecessor's half message";
  EXPECT_EQ(w.ep(0).stats().resets, 0u);
}

}  // namespace
}  // namespace ngx_ipc
