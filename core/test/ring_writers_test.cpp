// ngx_ipc core tests: several senders writing one inbox ring, one at a
// time under its lock (InboxLock, InboxWriter), read by its Consumer:
// turns with interleaved fragments, a busy lock never waited for, a holder
// that died with unpublished records, and writer threads that contend for
// the lock against one consumer.

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ngx_ipc/inbox_lock.h"
#include "ngx_ipc/ring.h"
#include "ring_check.h"
#include "test_util.h"

namespace ngx_ipc {
namespace {

using test::RecordChecker;
using test::TestMessage;

constexpr std::uint64_t KiB = 1024;

bool always_alive(void*, ShmHeader*, std::uint64_t) { return true; }

class RingWriters : public test::InboxRing {
 protected:
  // Each message from its sender, `per_turn` bytes a turn, the senders in
  // turn, the consumer draining after every round.
  void take_turns(const std::vector<TestMessage*>& msgs, std::uint64_t per_turn,
                  RecordChecker* checker) {
    std::vector<std::uint64_t> done(msgs.size(), 0);
    for (int round = 0; round < 100000; ++round) {
      bool all = true;
      for (std::size_t i = 0; i < msgs.size(); ++i) {
        if (done[i] == msgs[i]->size()) continue;
        done[i] += turn(msgs[i]->sender, *msgs[i], done[i], per_turn);
        all = all && done[i] == msgs[i]->size();
      }
      ASSERT_TRUE(checker->consume(consumer_));
      consumer_.release();
      if (all) return;
    }
    FAIL() << "no progress";
  }
};

TEST_F(RingWriters, TwoWritersTakeTurnsWithInterleavedFragments) {
  make(4096);
  RecordChecker checker;
  // Two rounds of messages from senders 1 and 2, 1000 bytes a turn: each
  // message travels in fragments between the other sender's.
  for (std::uint64_t seq = 0; seq < 2; ++seq) {
    TestMessage a(1, seq, 10000 + seq), b(2, seq, 7000 + 3 * seq);
    take_turns({&a, &b}, 1000, &checker);
  }
  EXPECT_EQ(checker.messages(1), 2u);
  EXPECT_EQ(checker.messages(2), 2u);
  EXPECT_FALSE(checker.open(1));
  EXPECT_FALSE(checker.open(2));
  EXPECT_GE(checker.records(1), 20u);
  EXPECT_GE(checker.records(2), 14u);
  // Every record but the first and the tail end of a's came while the
  // other sender's message was open.
  EXPECT_GE(checker.interleaved_, 30u);
  EXPECT_EQ(ctl()->head_msgs.load(), 4u);
  EXPECT_EQ(ctl()->lock.load(), 0u);
}

TEST_F(RingWriters, SmallMessagesOfManySendersInOneTurnEach) {
  make(64 * KiB);
  RecordChecker checker;
  test::Rng rng(test::test_seed() + 3);
  std::vector<std::uint64_t> seq(4, 0);
  for (int i = 0; i < 4000; ++i) {
    std::uint32_t s = static_cast<std::uint32_t>(rng.range(0, 3));  // the receiver too
    TestMessage m(s, seq[s]++, rng.range(1, 2000));
    ASSERT_EQ(turn(s, m, 0), m.size());
    if (i % 16 == 15) {
      ASSERT_TRUE(checker.consume(consumer_));
      consumer_.release();
    }
  }
  ASSERT_TRUE(checker.consume(consumer_));
  for (std::uint32_t s = 0; s < 4; ++s) EXPECT_EQ(checker.messages(s), seq[s]) << s;
  EXPECT_EQ(checker.records_, 4000u);
}

TEST_F(RingWriters, ABusyLockIsNeverWaitedFor) {
  make(4096);
  ASSERT_TRUE(lock(1));
  std::uint64_t holder = 0;
  // Without a probe, and with a probe that finds the holder alive, another
  // sender's try fails at once and names the holder.
  EXPECT_FALSE(InboxLock::try_lock(header(), kReceiver, make_writer(2, 1), false, &always_alive,
                                   nullptr, &holder));
  EXPECT_EQ(holder, make_writer(1, 1));
  EXPECT_EQ(writer_slot(holder), 1u);
  EXPECT_EQ(writer_incarnation(holder), 1u);
  holder = 0;
  EXPECT_FALSE(InboxLock::try_lock(header(), kReceiver, make_writer(2, 1), true, &always_alive,
                                   nullptr, &holder));
  EXPECT_EQ(holder, make_writer(1, 1));
  EXPECT_EQ(ctl()->lock.load(), make_writer(1, 1));
  unlock(1);
  EXPECT_TRUE(lock(2));
  EXPECT_EQ(ctl()->lock.load(), make_writer(2, 1));
  unlock(2);
}

// Sender 1 takes the lock, publishes m0, writes more and dies holding the
// lock: sender 2 takes it over once the holder is known dead, begins at
// the published head and overwrites what sender 1 left there.
TEST_F(RingWriters, ADeadHoldersUnpublishedRecordsAreOverwritten) {
  make(4096);
  RecordChecker checker;
  // Sender 1's process: slot 1, incarnation 1, alive (this process).
  shm_->slot(1)->identity.store(make_identity(1, getpid()));
  TestMessage m0(1, 0, 300);
  ASSERT_EQ(turn(1, m0, 0), 300u);
  const std::uint64_t published = ctl()->head.load();
  ASSERT_TRUE(lock(1));
  TestMessage lost1(1, 1, 1000), lost2(1, 2, 5000);
  ASSERT_EQ(lost1.write(writers_[1], 0), 1000u);
  ASSERT_GT(lost2.write(writers_[1], 0), 0u);
  // ... and dies here: no publish(), no unlock().
  RecordHeader h;
  std::memcpy(&h, data() + published, sizeof h);
  ASSERT_EQ(h.magic, kRecordMagic);
  ASSERT_EQ(h.sender_slot, 1u);  // its records are in the ring, unpublished
  EXPECT_EQ(ctl()->head.load(), published);
  ASSERT_TRUE(checker.consume(consumer_));
  consumer_.release();
  EXPECT_EQ(checker.messages(1), 1u);

  std::uint64_t holder = 0;
  const std::uint64_t me = make_writer(2, 1);
  EXPECT_FALSE(InboxLock::try_lock(header(), kReceiver, me, false, &writer_alive, nullptr, &holder))
      << "no probe: never asks";
  EXPECT_EQ(holder, make_writer(1, 1));
  EXPECT_FALSE(InboxLock::try_lock(header(), kReceiver, me, true, &writer_alive, nullptr, &holder))
      << "the holder's process still runs";
  // Slot 1's next process starts: the holder is gone.
  shm_->slot(1)->identity.store(make_identity(2, getpid()));
  ASSERT_TRUE(InboxLock::try_lock(header(), kReceiver, me, true, &writer_alive, nullptr, &holder));
  EXPECT_EQ(ctl()->lock.load(), me);
  InboxWriter& w = writers_[2];
  w.begin();
  TestMessage b0(2, 0, 200);
  ASSERT_EQ(b0.write(w, 0), 200u);
  std::memcpy(&h, data() + published, sizeof h);
  EXPECT_EQ(h.sender_slot, 2u) << "written over the dead holder's first record";
  EXPECT_EQ(h.offset, 0u);
  EXPECT_TRUE(w.publish());
  InboxLock::unlock(header(), kReceiver);

  TestMessage b1(2, 1, 6000);
  std::uint64_t done = 0;
  for (int i = 0; i < 100 && done < b1.size(); ++i) {
    ASSERT_TRUE(checker.consume(consumer_));
    consumer_.release();
    done += turn(2, b1, done);
  }
  ASSERT_TRUE(checker.consume(consumer_));
  EXPECT_EQ(done, b1.size());
  EXPECT_EQ(checker.messages(2), 2u);
  EXPECT_EQ(checker.messages(1), 1u) << "none of the unpublished messages was seen";
  EXPECT_FALSE(checker.open(1));
  EXPECT_EQ(ctl()->head_msgs.load(), 3u);
}

TEST_F(RingWriters, AHolderThatDiedMidMessageLeavesItOpen) {
  // What sender 1 published of its message stays (the receiver drops the
  // message when the sender's next one starts: incarnation_test.cpp); the
  // new holder's records follow it.
  make(4096);
  TestMessage big(1, 0, 20000);
  ASSERT_TRUE(lock(1));
  std::uint64_t first = big.write(writers_[1], 0, 1500);
  ASSERT_EQ(first, 1500u);
  writers_[1].publish();
  ASSERT_GT(big.write(writers_[1], first, 1500), 0u);  // not published; dies
  RecordChecker checker;
  ASSERT_TRUE(checker.consume(consumer_));
  consumer_.release();
  EXPECT_TRUE(checker.open(1));

  std::uint64_t holder = 0;
  ASSERT_TRUE(InboxLock::try_lock(
      header(), kReceiver, make_writer(2, 1), true,
      [](void*, ShmHeader*, std::uint64_t) { return false; }, nullptr, &holder));
  writers_[2].begin();
  TestMessage m(2, 0, 2500);
  ASSERT_EQ(m.write(writers_[2], 0), 2500u);
  unlock(2);
  ASSERT_TRUE(checker.consume(consumer_));
  EXPECT_EQ(checker.messages(2), 1u);
  EXPECT_TRUE(checker.open(1));
  EXPECT_EQ(checker.records(1), 1u) << "only the published fragment";
}

TEST(WriterAlive, AsksTheSlotThenTheProcess) {
  test::Shm shm(test::make_config(4, 4096, 1 << 20, 1 << 20));
  ShmHeader* h = shm.header();
  const std::int32_t me = getpid();
  EXPECT_FALSE(writer_alive(nullptr, h, make_writer(1, 1))) << "slot never started";
  shm.slot(1)->identity.store(make_identity(1, me));
  EXPECT_TRUE(writer_alive(nullptr, h, make_writer(1, 1)));
  EXPECT_FALSE(writer_alive(nullptr, h, make_writer(1, 2))) << "another incarnation";
  EXPECT_FALSE(writer_alive(nullptr, h, make_writer(4, 1))) << "no such slot";
  EXPECT_FALSE(writer_alive(nullptr, h, 0)) << "not a writer id";
  shm.slot(1)->identity.store(make_identity(1, 0));
  EXPECT_FALSE(writer_alive(nullptr, h, make_writer(1, 1))) << "exited";
  // A process that exited and was reaped: kill() says ESRCH.
  std::int32_t gone;
  {
    test::Child c([] { return 0; });
    gone = c.pid();
    int status = 0;
    ASSERT_TRUE(c.wait(test::kWakeTimeoutMs, &status));
  }
  shm.slot(2)->identity.store(make_identity(3, gone));
  EXPECT_FALSE(writer_alive(nullptr, h, make_writer(2, 3))) << "process gone";
}

// Writer threads, each a sender slot, contend for the lock with try_lock
// and never wait for it: a failed try is retried after a yield. One
// consumer checks every message byte for byte and each sender's order.
// Bounded by a deadline; the acquire/release pairs on the lock, head and
// tail are what ThreadSanitizer checks.
TEST_F(RingWriters, WriterThreadsContendForTheLock) {
  constexpr std::uint32_t kWriters = 3;
  constexpr std::uint64_t kPerWriter = 3000;
  make(16 * KiB);
  const std::uint64_t seed = test::test_seed() + 4;
  test::Deadline deadline(std::chrono::seconds(60));
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> failed_tries{0};

  auto writer = [&](std::uint32_t s) {
    test::Rng rng(seed + s);
    InboxWriter& w = writers_[s];
    const std::uint64_t me = make_writer(s, 1);
    std::uint64_t seq = 0, done = 0;
    std::unique_ptr<TestMessage> m;
    while (seq < kPerWriter && !stop.load(std::memory_order_relaxed)) {
      std::uint64_t holder = 0;
      if (!InboxLock::try_lock(header(), kReceiver, me, false, &writer_alive, nullptr, &holder)) {
        failed_tries.fetch_add(1, std::memory_order_relaxed);
        std::this_thread::yield();
        continue;
      }
      w.begin();
      // Up to 6 KiB a turn, so that big messages interleave with the others.
      std::uint64_t budget = 6 * KiB, wrote = 0;
      while (seq < kPerWriter && budget > 0) {
        if (!m) {
          std::size_t len = rng.next() % 8 == 0 ? rng.range(1, 64 * KiB) : rng.range(1, 3000);
          m = std::make_unique<TestMessage>(s, seq, len);
        }
        std::uint64_t n = m->write(w, done, budget);
        done += n;
        wrote += n;
        budget -= n;
        if (done < m->size()) break;
        m.reset();
        done = 0;
        ++seq;
      }
      w.publish();
      InboxLock::unlock(header(), kReceiver);
      if (wrote == 0) std::this_thread::yield();  // full: the consumer's turn
    }
  };
  std::vector<std::thread> threads;
  for (std::uint32_t s = 1; s <= kWriters; ++s) threads.emplace_back(writer, s);

  RecordChecker checker;
  RecordView v;
  bool ok = true;
  while (checker.messages_ < kWriters * kPerWriter) {
    Consumer::Next st = consumer_.next(&v);
    if (st == Consumer::Next::kRecord) {
      if (!checker.feed(v)) {
        ok = false;
        break;
      }
      if (v.header.flags & kLast) consumer_.release();
      continue;
    }
    if (st == Consumer::Next::kCorrupt) {
      ADD_FAILURE() << "kCorrupt";
      ok = false;
      break;
    }
    consumer_.release();
    if (deadline.expired()) break;
    std::this_thread::yield();
  }
  stop.store(true);
  for (std::thread& t : threads) t.join();
  EXPECT_TRUE(ok);
  for (std::uint32_t s = 1; s <= kWriters; ++s) {
    EXPECT_EQ(checker.messages(s), kPerWriter) << "sender " << s;
  }
  EXPECT_EQ(ctl()->lock.load(), 0u);
  RecordProperty("failed_tries", std::to_string(failed_tries.load()));
  RecordProperty("interleaved_records", std::to_string(checker.interleaved_));
}

}  // namespace
}  // namespace ngx_ipc
