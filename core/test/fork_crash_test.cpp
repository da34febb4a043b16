// ngx_ipc core tests: SIGKILL at a random moment. A writer process killed
// while it writes 1 MiB fragmented messages never makes the reader see a
// partial or corrupt message (stats.resets stays 0), and the next process in
// its slot is heard at once: if the dead one held the inbox's lock, the
// next one takes it over at its retry timer's first flush (fork_util.h);
// a reader killed mid-message is replaced by one that receives whole
// messages only.

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <vector>

#include "fork_util.h"
#include "ngx_ipc/endpoint.h"
#include "stress.h"
#include "test_util.h"

namespace ngx_ipc {
namespace {

using test::Child;
using test::jitter;
using test::World;

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t MiB = 1024 * KiB;

// Stops the writer in a copy: lets_write() gives it room (reads what it
// wrote), then the lock is watched (a bounded spin) until it holds it,
// and it is stopped at once; if it let the lock go before the stop landed,
// it goes on and the next try begins, for up to 150 ms. Returns true with
// the writer stopped holding the lock, false with it running.
template <typename LetsWrite>
bool stop_in_copy(Child& writer, const std::atomic<std::uint64_t>& lock, std::uint64_t me,
                  LetsWrite lets_write) {
  test::Deadline d(std::chrono::milliseconds(150));
  while (!d.expired()) {
    lets_write();
    int spin = 0;
    while (spin < 1000000 && lock.load(std::memory_order_relaxed) != me) ++spin;
    if (spin == 1000000) continue;
    if (!test::stop_child(writer)) {
      ADD_FAILURE() << "could not stop writer " << writer.pid();
      return false;
    }
    if (lock.load() == me) return true;
    test::continue_child(writer);
  }
  return false;
}

TEST(ForkCrash, WriterKilledMidMessageNeverCorruptsTheReader) {
  World w(2, 64 * KiB, 2 * MiB, 4 * MiB, /*start_all=*/false);
  const std::int32_t parent = getpid();
  w.start(0, parent);
  Endpoint& reader = w.ep(0);
  const int kKills = 25;
  const std::uint64_t kPerWriter = 64;  // 64 MiB: far more than a writer lives for
  const test::SizeMix one_mib{1 * MiB, 0, 0, 1 * MiB};
  const std::uint64_t seed = test::test_seed();
  test::Rng rng(seed);
  test::Deadline deadline(std::chrono::seconds(240));
  InboxCtl* ctl = w.shm().ctl(0);
  std::uint64_t delivered = 0, max_dropped = 0;
  int held_lock = 0;  // kills that landed while the writer held the lock

  for (int iter = 0; iter <= kKills; ++iter) {
    const bool last = iter == kKills;  // the last writer is not killed
    const std::uint32_t tag = static_cast<std::uint32_t>(iter + 1);
    const std::uint64_t count = last ? 5 : kPerWriter;
    SCOPED_TRACE(testing::Message() << "writer " << iter << ", seed " << seed);
    Child writer([&] {
      w.ep(1).start(getpid());
      return test::child_report(
          test::run_timed_sender(w.ep(1), w.fds()[1], parent, tag, count, seed, one_mib, deadline));
    });
    // Kill once the writer has published this many bytes: at once (after
    // a jitter), or, one writer in two, in a copy: stopped while it holds
    // the inbox's lock, if that can be caught within 150 ms.
    const std::uint64_t head0 = ctl->head.load();
    const std::uint64_t threshold = rng.range(64 * KiB, 8 * MiB);
    const bool aim_at_copy = iter % 2 == 1;
    const std::uint64_t me = make_writer(1, static_cast<std::uint32_t>(iter + 1));
    std::uint64_t next_seq = 0;
    bool killed = false;
    Delivery out[8];
    // Checks k deliveries: whole, byte-exact, in order.
    auto take = [&](int k) {
      for (int i = 0; i < k; ++i) {
        test::MsgId id;
        if (out[i].sender_pid != writer.pid() || out[i].data_len != 1 * MiB ||
            !test::parse_message(out[i].data, out[i].data_len, &id) || id.tag != tag) {
          ADD_FAILURE() << "partial or corrupt message after seq " << next_seq;
          return false;
        }
        if (id.seq != next_seq) {
          ADD_FAILURE() << "seq " << id.seq << ", not " << next_seq << ": lost or repeated";
          return false;
        }
        ++next_seq;
      }
      return true;
    };
    while (true) {
      ASSERT_FALSE(deadline.expired()) << next_seq << " messages received";
      int k = reader.receive(out, 8);
      ASSERT_TRUE(take(k));
      ASSERT_EQ(reader.stats().resets, 0u);
      if (!last && !killed && ctl->head.load() - head0 >= threshold) {
        if (aim_at_copy) {
          bool ok = true;
          stop_in_copy(writer, ctl->lock, me, [&] {
            ok = ok && take(reader.receive(out, 8, /*arm=*/false));
            reader.release();  // room: the writer, woken, takes the lock and copies
          });
          ASSERT_TRUE(ok);
        } else {
          jitter(rng);
        }
        ASSERT_NO_FATAL_FAILURE(test::kill_and_reap(writer));
        if (ctl->lock.load() == me) ++held_lock;
        killed = true;
        continue;  // drain what the dead writer published
      }
      if (k != 0) continue;
      if (killed) break;  // all published records read
      if (last && next_seq == count) break;
      ASSERT_TRUE(test::wait_fd(w.fds()[0], deadline.remaining_ms()))
          << "wake-up lost with " << next_seq << " messages received";
    }
    if (last) {
      int status = 0;
      ASSERT_TRUE(writer.wait(30000, &status));
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << test::describe_status(status);
      EXPECT_EQ(next_seq, count) << "the last writer's messages all arrive";
    } else {
      EXPECT_LT(next_seq, count) << "killed before it finished";
      ++max_dropped;  // at most its partial message
    }
    delivered += next_seq;
    std::printf("writer %d: %llu messages of 1 MiB, killed after %llu bytes published\n", iter,
                static_cast<unsigned long long>(next_seq),
                static_cast<unsigned long long>(ctl->head.load() - head0));
  }
  EXPECT_EQ(reader.stats().received, delivered);
  EXPECT_EQ(reader.stats().received_bytes, delivered * MiB);
  EXPECT_LE(reader.stats().dropped, max_dropped);
  EXPECT_EQ(reader.stats().resets, 0u);
  std::printf("%d of %d kills landed while the writer held the inbox's lock\n", held_lock, kKills);
}

TEST(ForkCrash, ReaderKilledMidMessageIsReplaced) {
  World w(2, 64 * KiB, 2 * MiB, 4 * MiB, /*start_all=*/false);
  const std::int32_t parent = getpid();
  w.start(0, parent);
  Endpoint& writer = w.ep(0);
  const std::uint64_t seed = test::test_seed();
  test::Rng rng(seed + 1);
  test::Deadline deadline(std::chrono::seconds(120));
  const std::uint64_t total = 60;  // 1 MiB broadcasts, then an "end" broadcast
  InboxCtl* ctl = w.shm().ctl(1);

  // A reader: checks every message it gets (whole, byte-exact, in order
  // from its first), until "end"; its exit status says whether all was well.
  auto read_until_end = [&]() -> int {
    Endpoint& e = w.ep(1);
    e.start(getpid());
    Delivery out[8];
    std::uint64_t next = ~std::uint64_t{0};
    for (;;) {
      int k = e.receive(out, 8);
      for (int i = 0; i < k; ++i) {
        std::string name(reinterpret_cast<const char*>(out[i].name), out[i].name_len);
        if (name == "end") {
          CHILD_CHECK(next == total);
          CHILD_CHECK(e.stats().resets == 0);
          return 0;
        }
        test::MsgId id;
        CHILD_CHECK(test::parse_message(out[i].data, out[i].data_len, &id));
        CHILD_CHECK(out[i].data_len == 1 * MiB);
        CHILD_CHECK(next == ~std::uint64_t{0} || id.seq == next);
        next = id.seq + 1;
      }
      if (k == 0) CHILD_CHECK(test::wait_fd(w.fds()[1], deadline.remaining_ms()));
    }
  };
  auto first = std::make_unique<Child>(read_until_end);
  std::unique_ptr<Child> second;
  const std::uint64_t threshold = rng.range(256 * KiB, 20 * MiB);
  const std::uint64_t tail0 = ctl->tail.load();

  const test::SizeMix one_mib{1 * MiB, 0, 0, 1 * MiB};
  for (std::uint64_t seq = 0; seq <= total; ++seq) {
    std::vector<unsigned char> m = test::make_message(0, seq, one_mib.size(seed, 0, seq));
    const std::string name = seq == total ? "end" : "b";
    for (int steps = 0;; ++steps) {
      ASSERT_LT(steps, 1000000);
      // Checked before every send, not only when the backlog is full: a
      // reader that keeps up (the writer descheduled) is killed all the
      // same, before "end" is sent.
      if (!second && ctl->tail.load() - tail0 >= threshold) {
        jitter(rng);
        ASSERT_NO_FATAL_FAILURE(test::kill_and_reap(*first));
        second = std::make_unique<Child>(read_until_end);
      }
      Status st = w.ep(0).broadcast(reinterpret_cast<const unsigned char*>(name.data()),
                                    name.size(), m.data(), m.size(), false);
      if (st == Status::kOk) break;
      ASSERT_EQ(st, Status::kQueueFull);
      if (writer.flush()) continue;
      ASSERT_TRUE(test::wait_fd(w.fds()[0], deadline.remaining_ms()))
          << "producer wake-up lost at seq " << seq;
    }
  }
  while (!writer.flush()) {
    ASSERT_TRUE(test::wait_fd(w.fds()[0], deadline.remaining_ms())) << "lost while flushing";
  }
  ASSERT_TRUE(second) << "the first reader was never killed";
  int status = 0;
  ASSERT_TRUE(second->wait(60000, &status));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << test::describe_status(status);
}

}  // namespace
}  // namespace ngx_ipc
