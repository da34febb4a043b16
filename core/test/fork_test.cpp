// ngx_ipc core tests: endpoints in fork()ed processes, as nginx runs them.
// The mapping and the eventfds are made before the fork, like the master's
// zone and fds; each process starts its slot with its real PID. Every
// sender writes a receiver's one inbox, under its lock, so the waits and
// wake-ups of several writers (for the lock, for room) cross processes.
//
// A child never returns into GoogleTest: it runs a function whose value is
// its exit status (see test::Child), and reports failures on stderr.

#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <unistd.h>

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
constexpr std::uint64_t MiB = 1024 * KiB;

using test::expect_exit0;

// Receives until one message arrives; returns it, or sets *err.
test::Received wait_one(Endpoint& ep, int fd, const test::Deadline& d, std::string* err) {
  Delivery out[1];
  for (;;) {
    if (ep.receive(out, 1) == 1) return test::copy_delivery(out[0]);
    if (!test::wait_fd(fd, d.remaining_ms())) {
      *err = "no message came";
      return {};
    }
  }
}

TEST(Fork, ParentAndChildExchange) {
  World w(2, 4096, 1 * MiB, 4 * MiB, /*start_all=*/false);
  const std::int32_t parent = getpid();
  w.start(0, parent);
  test::Deadline deadline(std::chrono::seconds(30));
  Child child([&] {
    Endpoint& e = w.ep(1);
    e.start(getpid());
    std::vector<unsigned char> big = test::make_message(1, 0, 300 * KiB);
    CHILD_CHECK(test::send_bytes(e, parent, "hello", big) == Status::kOk);
    while (!e.flush()) CHILD_CHECK(test::wait_fd(w.fds()[1], deadline.remaining_ms()));
    std::string err;
    test::Received r = wait_one(e, w.fds()[1], deadline, &err);
    CHILD_CHECK(err.empty());
    CHILD_CHECK(r.name == "reply" && r.data == "from parent" && r.sender_pid == parent);
    CHILD_CHECK(e.stats().received == 1 && e.stats().sent == 1);
    return 0;
  });
  std::string err;
  test::Received r = wait_one(w.ep(0), w.fds()[0], deadline, &err);
  ASSERT_EQ(err, "");
  EXPECT_EQ(r.name, "hello");
  EXPECT_EQ(r.sender_pid, child.pid());
  test::MsgId id;
  EXPECT_TRUE(test::parse_message(reinterpret_cast<const unsigned char*>(r.data.data()),
                                  r.data.size(), &id));
  EXPECT_EQ(w.ep(0).slot_pid(1), child.pid());
  ASSERT_EQ(test::send_str(w.ep(0), child.pid(), "reply", "from parent"), Status::kOk);
  expect_exit0(child);
}

TEST(Fork, ProducerProcessConsumerProcess) {
  World w(2, 4096, 256 * KiB, 64 * KiB, /*start_all=*/false);
  w.start(0, getpid());
  const std::uint64_t n = 20000, seed = test::test_seed();
  test::SizeMix mix{600, 100 * KiB, 50};
  test::Deadline deadline(std::chrono::seconds(120));
  Child producer([&] {
    w.ep(1).start(getpid());
    return test::child_report(
        test::run_sender(w.ep(1), w.fds()[1], w.ep(0).pid(), 1, n, seed, mix, deadline));
  });
  EXPECT_EQ(test::run_receiver(w.ep(0), w.fds()[0], {{producer.pid(), 1, n}}, deadline), "");
  expect_exit0(producer);
  EXPECT_EQ(w.ep(0).stats().received, n);
  EXPECT_EQ(w.ep(0).stats().dropped, 0u);
}

// Three processes write one inbox, taking turns at its lock: a sender that
// finds it taken keeps the message in its backlog until the holder's
// unlock wakes it.
TEST(Fork, ThreeProducerProcesses) {
  World w(4, 8192, 256 * KiB, 32 * KiB, /*start_all=*/false);
  w.start(0, getpid());
  const std::uint64_t n = 4000, seed = test::test_seed();
  test::SizeMix mix{300, 60 * KiB, 40};
  test::Deadline deadline(std::chrono::seconds(120));
  std::vector<std::unique_ptr<Child>> producers;
  std::vector<test::Expect> expect;
  for (std::uint32_t i = 1; i < 4; ++i) {
    producers.push_back(std::make_unique<Child>([&, i] {
      w.ep(i).start(getpid());
      return test::child_report(
          test::run_sender(w.ep(i), w.fds()[i], w.ep(0).pid(), i, n, seed, mix, deadline));
    }));
    expect.push_back({producers.back()->pid(), i, n});
  }
  EXPECT_EQ(test::run_receiver(w.ep(0), w.fds()[0], expect, deadline), "");
  for (auto& p : producers) expect_exit0(*p);
}

// Each of nprocs processes (slot i, tag i) broadcasts n messages to every
// other while it receives theirs: every inbox has nprocs - 1 writers, each
// of which also reads its own. Checks each message byte for byte, and each
// sender's order. Returns "" or what went wrong.
std::string run_mesh(Endpoint& ep, int wake_fd, std::uint32_t nprocs, std::uint64_t n,
                     std::uint64_t seed, const test::SizeMix& mix, const test::Deadline& deadline) {
  const std::uint32_t self = ep.slot();
  std::vector<std::uint64_t> next(nprocs, 0);
  const std::uint64_t want = n * (nprocs - 1);
  std::uint64_t sent = 0, got = 0;
  std::vector<unsigned char> m;
  Delivery out[32];
  while (sent < n || got < want) {
    if (deadline.expired()) {
      return "deadline passed: sent " + std::to_string(sent) + ", got " + std::to_string(got);
    }
    bool progress = false;
    if (sent < n) {
      if (m.empty()) m = test::make_message(self, sent, mix.size(seed, self, sent));
      Status st = ep.broadcast(reinterpret_cast<const unsigned char*>("m"), 1, m.data(), m.size(),
                               /*include_self=*/false);
      if (st == Status::kOk) {
        ++sent;
        m.clear();
        progress = true;
      } else if (st != Status::kQueueFull) {
        return "broadcast: " + std::string(status_message(st));
      }
    }
    int k = ep.receive(out, 32);
    for (int i = 0; i < k; ++i) {
      test::MsgId id;
      if (!test::parse_message(out[i].data, out[i].data_len, &id) || id.tag >= nprocs ||
          id.tag == self || out[i].sender_pid != ep.slot_pid(id.tag)) {
        return "corrupt message from pid " + std::to_string(out[i].sender_pid);
      }
      if (id.seq != next[id.tag]++) {
        return "out of order from slot " + std::to_string(id.tag) + ": seq " +
               std::to_string(id.seq) + ", expected " + std::to_string(next[id.tag] - 1);
      }
    }
    got += static_cast<std::uint64_t>(k);
    bool flushed = ep.flush();
    if (k > 0 || (sent < n && flushed)) progress = true;
    // receive() returned 0 (armed), and the backlog, if any, is marked
    // waiting (for a lock or for room): any of these wakes us.
    if (!progress && !test::wait_fd(wake_fd, deadline.remaining_ms())) {
      return "wake-up lost: sent " + std::to_string(sent) + ", got " + std::to_string(got);
    }
  }
  while (!ep.flush()) {
    if (!test::wait_fd(wake_fd, deadline.remaining_ms())) return "wake-up lost while flushing";
  }
  if (ep.stats().resets != 0 || ep.stats().dropped != 0) return "resets or drops";
  return "";
}

TEST(Fork, EveryProcessBroadcastsToEveryOther) {
  constexpr std::uint32_t kProcs = 4;
  World w(kProcs, 8192, 256 * KiB, 32 * KiB, /*start_all=*/false);
  const std::int32_t parent = getpid();
  w.start(0, parent);
  const std::uint64_t n = 4000, seed = test::test_seed();
  test::SizeMix mix{400, 30 * KiB, 50};
  test::Deadline deadline(std::chrono::seconds(120));
  // Nobody broadcasts before every process started: a full backlog for a
  // slot with no process yet is dropped (as for a dead one). Each child
  // says "ready" to the parent, then waits for `go` (one count each).
  struct Fd {
    int fd;
    ~Fd() { ::close(fd); }
  } go_fd{::eventfd(0, EFD_SEMAPHORE | EFD_CLOEXEC)};
  const int go = go_fd.fd;
  ASSERT_GE(go, 0);
  std::vector<std::unique_ptr<Child>> peers;
  for (std::uint32_t i = 1; i < kProcs; ++i) {
    peers.push_back(std::make_unique<Child>([&, i] {
      w.ep(i).start(getpid());
      CHILD_CHECK(test::send_str(w.ep(i), parent, "ready", "") == Status::kOk);
      CHILD_CHECK(test::wait_fd(go, test::kWakeTimeoutMs));
      return test::child_report(run_mesh(w.ep(i), w.fds()[i], kProcs, n, seed, mix, deadline));
    }));
  }
  for (std::uint32_t ready = 0; ready < kProcs - 1;) {
    for (const test::Received& r : test::drain(w.ep(0))) ready += r.name == "ready";
    if (ready < kProcs - 1) {
      ASSERT_TRUE(test::wait_fd(w.fds()[0], test::kWakeTimeoutMs)) << ready << " ready";
    }
  }
  std::uint64_t all = kProcs - 1;
  ASSERT_EQ(::write(go, &all, sizeof all), static_cast<ssize_t>(sizeof all));
  EXPECT_EQ(run_mesh(w.ep(0), w.fds()[0], kProcs, n, seed, mix, deadline), "");
  for (auto& p : peers) expect_exit0(*p);
  EXPECT_EQ(w.ep(0).stats().received, n * (kProcs - 1) + (kProcs - 1));
}

TEST(Fork, PingPongProcesses) {
  World w(2, 4096, 64 * KiB, 64 * KiB, /*start_all=*/false);
  w.start(0, getpid());
  const std::uint64_t rounds = 10000;
  test::Deadline deadline(std::chrono::seconds(120));
  // The child pings first, so the parent knows its PID is live.
  Child pinger([&] {
    w.ep(1).start(getpid());
    return test::child_report(
        test::run_pinger(w.ep(1), w.fds()[1], w.ep(0).pid(), rounds, deadline));
  });
  EXPECT_EQ(test::run_ponger(w.ep(0), w.fds()[0], pinger.pid(), rounds, deadline), "");
  expect_exit0(pinger);
}

TEST(Fork, BothWaysWithFullRingsProcesses) {
  World w(2, 4096, 128 * KiB, 16 * KiB, /*start_all=*/false);
  const std::int32_t parent = getpid();
  w.start(0, parent);
  const std::uint64_t n = 8000, seed = test::test_seed();
  test::SizeMix mix{500, 40 * KiB, 30};
  test::Deadline deadline(std::chrono::seconds(120));
  Child peer([&] {
    w.ep(1).start(getpid());
    CHILD_CHECK(test::send_str(w.ep(1), parent, "hello", "") == Status::kOk);
    return test::child_report(
        test::run_duplex(w.ep(1), w.fds()[1], parent, 1, 0, n, seed, mix, deadline));
  });
  std::string err;
  test::Received hello = wait_one(w.ep(0), w.fds()[0], deadline, &err);
  ASSERT_EQ(err, "");
  ASSERT_EQ(hello.name, "hello");
  EXPECT_EQ(test::run_duplex(w.ep(0), w.fds()[0], peer.pid(), 0, 1, n, seed, mix, deadline), "");
  expect_exit0(peer);
}

// A worker killed and respawned in its slot: what was sent to the old
// process is dropped by the new one, broadcasts reach it, and the old PID
// is refused once the new process has started.
TEST(Fork, RespawnedProcessGetsBroadcastsNotTheOldUnicasts) {
  World w(2, 4096, 1 * MiB, 4 * MiB, /*start_all=*/false);
  const std::int32_t parent = getpid();
  w.start(0, parent);
  test::Deadline deadline(std::chrono::seconds(30));
  test::EventFds never(1);  // nobody writes it: the first child idles on it

  Child first([&] {
    w.ep(1).start(getpid());
    CHILD_CHECK(test::send_str(w.ep(1), parent, "hello", "") == Status::kOk);
    test::wait_fd(never[0], 30000);  // killed long before
    return 3;
  });
  std::string err;
  ASSERT_EQ(wait_one(w.ep(0), w.fds()[0], deadline, &err).name, "hello");
  ASSERT_EQ(err, "");
  const std::int32_t old_pid = first.pid();
  ASSERT_EQ(test::send_str(w.ep(0), old_pid, "u", "for the old one"), Status::kOk);
  std::vector<unsigned char> big = test::make_message(0, 0, 200 * KiB);  // fragmented
  ASSERT_EQ(test::send_bytes(w.ep(0), old_pid, "u", big), Status::kOk);
  ASSERT_EQ(test::broadcast_str(w.ep(0), "b", "for the slot", false), Status::kOk);
  first.kill_now();
  int status = 0;
  ASSERT_TRUE(first.wait(10000, &status));
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << test::describe_status(status);

  Child second([&] {
    Endpoint& e = w.ep(1);
    e.start(getpid());
    CHILD_CHECK(e.incarnation() == 2);
    std::vector<test::Received> got;
    while (got.empty()) {
      for (test::Received& r : test::drain(e)) got.push_back(std::move(r));
      if (got.empty()) CHILD_CHECK(test::wait_fd(w.fds()[1], deadline.remaining_ms()));
    }
    CHILD_CHECK(got.size() == 1);
    CHILD_CHECK(got[0].data == "for the slot" && got[0].flags == kBroadcast);
    CHILD_CHECK(e.stats().dropped == 2);
    CHILD_CHECK(test::send_str(e, parent, "ok", "") == Status::kOk);
    std::string err2;
    test::Received bye = wait_one(e, w.fds()[1], deadline, &err2);
    CHILD_CHECK(err2.empty() && bye.name == "bye");
    return 0;
  });
  // The parent keeps flushing the fragmented unicast (woken as the new
  // process frees space) until the new process reports.
  bool got_ok = false;
  Delivery out[4];
  while (!got_ok) {
    w.ep(0).flush();
    int k = w.ep(0).receive(out, 4);
    for (int i = 0; i < k; ++i) got_ok = got_ok || test::copy_delivery(out[i]).name == "ok";
    if (k == 0) {
      ASSERT_TRUE(test::wait_fd(w.fds()[0], deadline.remaining_ms())) << "wake-up lost";
    }
  }
  EXPECT_EQ(test::send_str(w.ep(0), old_pid, "u", "late"), Status::kNoSuchWorker);
  ASSERT_EQ(test::send_str(w.ep(0), second.pid(), "bye", ""), Status::kOk);
  expect_exit0(second);
}

}  // namespace
}  // namespace ngx_ipc
