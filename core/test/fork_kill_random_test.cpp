// ngx_ipc core tests: writer processes of one inbox SIGKILLed at random
// moments, the way nginx loses a worker, each replaced in its slot by a
// new process (a new incarnation).
//
// kWriters children send to this process, continuously, whole and
// fragmented messages (test::make_message, most small, one in four up to
// 40 KiB, through a 16 KiB inbox): they take turns at the inbox's lock,
// wait for it or for room, and flush on their retry timer as workers do
// (fork_util.h). This process receives and, between reads, kills a writer:
// at a random moment, or, one kill in two, while it holds the lock (in a
// copy, stopped there first). Every message it gets must be whole and
// byte-exact, and each writer's must come in the order sent, from seq 0
// with no gap: a killed writer's messages are a prefix of what it sent,
// its partial message never delivered. In the end every writer of the last
// generation is told to stop, sends "end" with its count, and all of its
// messages arrive before a deadline: nothing wedged.

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "fork_util.h"
#include "ngx_ipc/endpoint.h"
#include "stress.h"
#include "test_util.h"

namespace ngx_ipc {
namespace {

using test::Child;
using test::World;

constexpr std::uint64_t KiB = 1024;
constexpr std::uint32_t kWriters = 4;  // slots 1 .. kWriters; this process is slot 0
constexpr int kKills = 30;

// One writer process, in a child: sends "w" messages (tag, seq 0, 1, ...)
// to `to` until it is told "stop", then "end" (seq = how many it sent),
// flushes, and exits 0.
int writer(World& w, std::uint32_t slot, std::uint32_t tag, std::int32_t to, std::uint64_t seed,
           const test::Deadline& deadline) {
  Endpoint& e = w.ep(slot);
  e.start(getpid());
  const int fd = w.fds()[slot];
  const test::SizeMix mix{600, 40 * KiB, 4};
  test::RetryTimer timer;
  std::vector<unsigned char> m;
  std::uint64_t seq = 0;
  Delivery out[4];
  for (bool stop = false; !stop;) {
    CHILD_CHECK(!deadline.expired());
    int k = e.receive(out, 4);
    for (int i = 0; i < k; ++i) {
      stop = stop ||
             std::string(reinterpret_cast<const char*>(out[i].name), out[i].name_len) == "stop";
    }
    if (stop) break;
    if (m.empty()) m = test::make_message(tag, seq, mix.size(seed, tag, seq));
    Status st = test::send_bytes(e, to, "w", m);
    if (st == Status::kOk) {
      ++seq;
      m.clear();
      continue;
    }
    CHILD_CHECK(st == Status::kQueueFull);
    timer.wait_and_flush(e, fd);
  }
  std::vector<unsigned char> end = test::make_message(tag, seq, test::kMsgHeader);
  for (;;) {
    CHILD_CHECK(!deadline.expired());
    Status st = test::send_bytes(e, to, "end", end);
    if (st == Status::kOk) break;
    CHILD_CHECK(st == Status::kQueueFull);
    timer.wait_and_flush(e, fd);
  }
  CHILD_CHECK(timer.flush_all(e, fd, deadline));
  return 0;
}

// What this process knows of each writer process, by tag (one per process).
struct Sender {
  std::int32_t pid;
  std::uint64_t next = 0;  // seq expected next
  bool ended = false;      // its "end" came
};

class Senders {
 public:
  void add(std::uint32_t tag, std::int32_t pid) { by_tag_[tag] = Sender{pid}; }
  const Sender& at(std::uint32_t tag) const { return by_tag_.at(tag); }
  std::uint64_t delivered() const { return delivered_; }

  // Checks one delivery: a whole message of a known writer process, the
  // next in its order. ADD_FAILURE and false if not.
  bool take(const Delivery& d) {
    const std::string name(reinterpret_cast<const char*>(d.name), d.name_len);
    test::MsgId id;
    if ((name != "w" && name != "end") || !test::parse_message(d.data, d.data_len, &id)) {
      ADD_FAILURE() << "partial or corrupt message \"" << name << "\" from pid " << d.sender_pid;
      return false;
    }
    auto it = by_tag_.find(id.tag);
    if (it == by_tag_.end() || it->second.pid != d.sender_pid) {
      ADD_FAILURE() << "tag " << id.tag << " from pid " << d.sender_pid << ": no such writer";
      return false;
    }
    Sender& s = it->second;
    if (s.ended || id.seq != s.next) {
      ADD_FAILURE() << "writer " << id.tag << ": " << name << " seq " << id.seq << ", expected "
                    << s.next << (s.ended ? " (ended)" : "");
      return false;
    }
    if (name == "end") {
      s.ended = true;
    } else {
      ++s.next;
    }
    ++delivered_;
    return true;
  }

 private:
  std::map<std::uint32_t, Sender> by_tag_;
  std::uint64_t delivered_ = 0;
};

TEST(ForkKillRandom, WritersOfOneInboxKilledAtRandomNothingWedgedNothingPartial) {
  World w(1 + kWriters, 16 * KiB, 256 * KiB, 32 * KiB, /*start_all=*/false);
  const std::int32_t parent = getpid();
  w.start(0, parent);
  Endpoint& reader = w.ep(0);
  InboxCtl* inbox = w.shm().ctl(0);
  const std::uint64_t seed = test::test_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  test::Rng rng(seed);
  test::Deadline deadline(std::chrono::seconds(60));

  Senders senders;
  std::vector<std::unique_ptr<Child>> procs(1 + kWriters);
  std::vector<std::uint32_t> tag_of(1 + kWriters, 0);
  std::uint32_t next_tag = 1;
  auto spawn = [&](std::uint32_t slot) {
    const std::uint32_t tag = next_tag++;
    tag_of[slot] = tag;
    procs[slot] = std::make_unique<Child>(
        [&, slot, tag] { return writer(w, slot, tag, parent, seed, deadline); });
    senders.add(tag, procs[slot]->pid());
  };
  // The writer id of slot s's process in the inbox lock, once it started
  // (a process may be killed before it did); 0 before.
  auto writer_id = [&](std::uint32_t s) -> std::uint64_t {
    std::uint64_t id = w.shm().slot(s)->identity.load();
    return identity_pid(id) == procs[s]->pid() ? make_writer(s, identity_incarnation(id)) : 0;
  };
  for (std::uint32_t s = 1; s <= kWriters; ++s) spawn(s);

  Delivery out[32];
  bool ok = true;
  // Receives one batch (arm: may sleep after it) and checks it.
  auto read_batch = [&](bool arm) {
    int k = reader.receive(out, 32, arm);
    for (int i = 0; i < k && ok; ++i) ok = senders.take(out[i]);
    return k;
  };

  int held = 0;  // kills that landed while the victim held the lock
  for (int kill = 0; kill < kKills; ++kill) {
    // The writers run for a while (1 to 30 ms), this process reading.
    test::Deadline run(std::chrono::milliseconds(rng.range(1, 30)));
    while (ok && !run.expired()) {
      if (read_batch(true) == 0) test::wait_fd(w.fds()[0], run.remaining_ms());
    }
    ASSERT_TRUE(ok);
    ASSERT_FALSE(deadline.expired());

    // The victim: a random writer, killed at once (after a jitter); or,
    // one kill in two, the one caught holding the lock (in its claim or
    // copy): every writer is stopped at a random moment, and if one of
    // them holds the lock it is killed there; if none does, they all go on
    // and the next try begins, for up to 300 ms (5 s for the last one if
    // none was caught yet: at least one kill lands in a copy).
    std::uint32_t slot = static_cast<std::uint32_t>(rng.range(1, kWriters));
    if (kill % 2 == 1) {
      const bool must = held == 0 && kill + 2 >= kKills;
      for (test::Deadline aim(std::chrono::milliseconds(must ? 5000 : 300)); !aim.expired();) {
        read_batch(false);
        reader.release();  // room: writers, woken, take the lock and copy
        ASSERT_TRUE(ok);
        test::jitter(rng, 20000);
        for (std::uint32_t s = 1; s <= kWriters; ++s) ASSERT_TRUE(test::stop_child(*procs[s]));
        const std::uint64_t holder = inbox->lock.load();
        const std::uint32_t s = writer_slot(holder);
        const bool caught = holder != 0 && s >= 1 && s <= kWriters && holder == writer_id(s);
        if (caught) slot = s;
        for (std::uint32_t t = 1; t <= kWriters; ++t) {
          if (!caught || t != slot) test::continue_child(*procs[t]);
        }
        if (caught) break;
      }
    } else {
      test::jitter(rng);
    }
    const std::uint64_t me = writer_id(slot);
    ASSERT_NO_FATAL_FAILURE(test::kill_and_reap(*procs[slot]));
    if (me != 0 && inbox->lock.load() == me) ++held;
    spawn(slot);
  }

  // The last generation: heard from (the last respawned too), then
  // stopped; each sends "end", and all of it arrives.
  auto all = [&](auto pred) {
    for (std::uint32_t s = 1; s <= kWriters; ++s) {
      if (!pred(senders.at(tag_of[s]))) return false;
    }
    return true;
  };
  while (!all([](const Sender& s) { return s.next > 0; })) {
    ASSERT_FALSE(deadline.expired()) << "a new writer was never heard";
    if (read_batch(true) == 0) {
      ASSERT_TRUE(test::wait_fd(w.fds()[0], deadline.remaining_ms())) << "wake-up lost";
    }
    ASSERT_TRUE(ok);
  }
  for (std::uint32_t s = 1; s <= kWriters; ++s) {
    ASSERT_EQ(test::send_str(reader, procs[s]->pid(), "stop", ""), Status::kOk);
  }
  ASSERT_TRUE(reader.flush());
  while (!all([](const Sender& s) { return s.ended; })) {
    ASSERT_FALSE(deadline.expired()) << "wedged: not every writer's messages arrived";
    if (read_batch(true) == 0) {
      ASSERT_TRUE(test::wait_fd(w.fds()[0], deadline.remaining_ms()))
          << "wake-up lost before every writer's end";
    }
    ASSERT_TRUE(ok);
  }
  for (std::uint32_t s = 1; s <= kWriters; ++s) {
    ASSERT_NO_FATAL_FAILURE(test::expect_exit0(*procs[s], 30000));
  }
  EXPECT_EQ(reader.receive(out, 32), 0) << "nothing after the ends";

  const CoreStats& st = reader.stats();
  EXPECT_EQ(st.received, senders.delivered());
  EXPECT_EQ(st.resets, 0u);
  // Each killed writer left at most one partial message, dropped (and
  // counted) when its slot's next process sent.
  EXPECT_LE(st.dropped, static_cast<std::uint64_t>(kKills));
  EXPECT_EQ(inbox->lock.load(), 0u);
  EXPECT_GT(held, 0) << "no kill landed while a writer held the lock";
  std::printf(
      "%d writers killed (%d holding the inbox's lock), %llu messages delivered, %llu "
      "partial ones dropped\n",
      kKills, held, static_cast<unsigned long long>(st.received),
      static_cast<unsigned long long>(st.dropped));
}

}  // namespace
}  // namespace ngx_ipc
