// ngx_ipc core tests: SIGKILL at a random moment. A writer process killed
// while it writes 1 MiB fragmented messages never makes the reader see a
// partial or corrupt message (stats.resets stays 0), and the next process in
// its slot is heard at once; a reader killed mid-message is replaced by one
// that receives whole messages only.

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "ngx_ipc/endpoint.h"
#include "stress.h"
#include "test_util.h"

namespace ngx_ipc {
namespace {

using test::Child;
using test::World;

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t MiB = 1024 * KiB;

// A short, random busy wait: moves the kill off the moment the parent
// noticed progress, so that it lands anywhere in the writer's loop.
void jitter(test::Rng& rng) {
  volatile std::uint64_t x = 0;
  for (std::uint64_t i = rng.range(0, 200000); i > 0; --i) x = x + i;
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
  RingCtl* ctl = w.shm().ctl(1, 0);
  std::uint64_t delivered = 0, max_dropped = 0;

  for (int iter = 0; iter <= kKills; ++iter) {
    const bool last = iter == kKills;  // the last writer is not killed
    const std::uint32_t tag = static_cast<std::uint32_t>(iter + 1);
    const std::uint64_t count = last ? 5 : kPerWriter;
    SCOPED_TRACE(testing::Message() << "writer " << iter << ", seed " << seed);
    Child writer([&] {
      w.ep(1).start(getpid());
      return test::child_report(
          test::run_sender(w.ep(1), w.fds()[1], parent, tag, count, seed, one_mib, deadline));
    });
    // Kill once the writer has published this many bytes.
    const std::uint64_t head0 = ctl->head.load();
    const std::uint64_t threshold = rng.range(64 * KiB, 12 * MiB);
    std::uint64_t next_seq = 0;
    bool killed = false;
    Delivery out[8];
    for (int steps = 0;; ++steps) {
      ASSERT_LT(steps, 1000000);
      int k = reader.receive(out, 8);
      for (int i = 0; i < k; ++i) {
        test::MsgId id;
        ASSERT_EQ(out[i].sender_pid, writer.pid());
        ASSERT_TRUE(test::parse_message(out[i].data, out[i].data_len, &id))
            << "partial or corrupt message after seq " << next_seq;
        ASSERT_EQ(out[i].data_len, 1 * MiB);
        ASSERT_EQ(id.tag, tag);
        ASSERT_EQ(id.seq, next_seq) << "a message was lost or repeated";
        ++next_seq;
      }
      ASSERT_EQ(reader.stats().resets, 0u);
      if (!last && !killed && ctl->head.load() - head0 >= threshold) {
        jitter(rng);
        writer.kill_now();
        int status = 0;
        ASSERT_TRUE(writer.wait(10000, &status));
        ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
            << test::describe_status(status);
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
  RingCtl* ctl = w.shm().ctl(0, 1);

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
      Status st = w.ep(0).broadcast(reinterpret_cast<const unsigned char*>(name.data()),
                                    name.size(), m.data(), m.size(), false);
      if (st == Status::kOk) break;
      ASSERT_EQ(st, Status::kQueueFull);
      if (!second && ctl->tail.load() - tail0 >= threshold) {
        jitter(rng);
        first->kill_now();
        int status = 0;
        ASSERT_TRUE(first->wait(10000, &status));
        ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
        second = std::make_unique<Child>(read_until_end);
      }
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
