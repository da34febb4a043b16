// ngx_ipc core tests: what the fork*_test.cpp files share beyond
// test_util.h. A sender that waits the way a worker does (woken by the
// receiver or by the holder of the lock, or else by its 100 ms retry timer,
// whose flush asks whether a holder in the way still runs); children
// stopped (by themselves at a chosen point, or by the parent wherever they
// are), killed and reaped; their exit statuses.
//
// Header only: the tests that need it include it; it adds nothing to the
// support library every test links.

#ifndef NGX_IPC_TEST_FORK_UTIL_H
#define NGX_IPC_TEST_FORK_UTIL_H

#include <gtest/gtest.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <string>
#include <vector>

#include "ngx_ipc/endpoint.h"
#include "stress.h"
#include "test_util.h"

namespace ngx_ipc::test {

// The glue's retry timer (ngx_ipc_backlog_watch, src/ngx_ipc_worker.cpp):
// every 100 ms while a backlog waits, flush(true). Only that flush takes an
// inbox's lock over from a holder that died: a dead holder wakes nobody.
constexpr std::chrono::milliseconds kRetry{100};

class RetryTimer {
 public:
  // Waits for a wake-up of wake_fd, at most until the timer is due, then
  // flushes: with probe if the timer is due (it is then set again).
  // Returns true if the backlog is empty (the timer stops).
  bool wait_and_flush(Endpoint& ep, int wake_fd) {
    using Clock = std::chrono::steady_clock;
    if (!armed_) {
      due_ = Clock::now() + kRetry;
      armed_ = true;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(due_ - Clock::now());
    if (left.count() > 0) wait_fd(wake_fd, static_cast<int>(left.count()) + 1);
    const bool tick = Clock::now() >= due_;
    if (tick) due_ = Clock::now() + kRetry;
    const bool empty = ep.flush(tick);
    if (empty) armed_ = false;
    return empty;
  }
  // Flushes the backlog until it is empty, waiting as above; false if the
  // deadline passed first.
  bool flush_all(Endpoint& ep, int wake_fd, const Deadline& deadline) {
    while (!ep.flush()) {
      if (deadline.expired()) return false;
      if (wait_and_flush(ep, wake_fd)) break;
    }
    armed_ = false;
    return true;
  }

 private:
  std::chrono::steady_clock::time_point due_{};
  bool armed_ = false;
};

// test::run_sender with the retry timer: sends messages seq = 0 .. n-1
// (tag `tag`, name "s<tag>", as run_receiver expects them) to `to`, then
// flushes. A backlog at the limit waits for a wake-up or the timer. Returns
// "" or what went wrong.
inline std::string run_timed_sender(Endpoint& ep, int wake_fd, std::int32_t to, std::uint32_t tag,
                                    std::uint64_t n, std::uint64_t seed, const SizeMix& mix,
                                    const Deadline& deadline) {
  const std::string name = "s" + std::to_string(tag);
  RetryTimer timer;
  for (std::uint64_t seq = 0; seq < n; ++seq) {
    std::vector<unsigned char> m = make_message(tag, seq, mix.size(seed, tag, seq));
    for (;;) {
      Status st = send_bytes(ep, to, name, m);
      if (st == Status::kOk) break;
      if (st != Status::kQueueFull) return "send: " + std::string(status_message(st));
      if (deadline.expired()) return "deadline passed at seq " + std::to_string(seq);
      timer.wait_and_flush(ep, wake_fd);
    }
  }
  if (!timer.flush_all(ep, wake_fd, deadline)) return "deadline passed while flushing";
  return "";
}

inline void expect_exit0(Child& c, int timeout_ms = 60000) {
  int status = 0;
  ASSERT_TRUE(c.wait(timeout_ms, &status)) << "child " << c.pid() << " did not end";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "child " << c.pid() << " " << describe_status(status);
}

// Kills a child with SIGKILL and reaps it (a killed child stays a zombie,
// alive for kill(pid, 0), until it is reaped).
inline void kill_and_reap(Child& c) {
  c.kill_now();
  int status = 0;
  ASSERT_TRUE(c.wait(10000, &status)) << "child " << c.pid() << " not reaped";
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << describe_status(status);
}

// Waits for child c's next stop (waitpid(WUNTRACED): a stop, or its end).
inline ::testing::AssertionResult waited_stop(Child& c) {
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(c.pid(), &status, WUNTRACED);
  } while (r < 0 && errno == EINTR);
  if (r != c.pid() || !WIFSTOPPED(status)) {
    return ::testing::AssertionFailure() << "child " << c.pid() << " " << describe_status(status);
  }
  return ::testing::AssertionSuccess();
}

// Stops a running child (SIGSTOP) and waits until it is stopped, wherever
// it was: in a copy, between two stores, in a syscall.
inline ::testing::AssertionResult stop_child(Child& c) {
  if (::kill(c.pid(), SIGSTOP) != 0) {
    return ::testing::AssertionFailure() << "kill(" << c.pid() << ", SIGSTOP) failed";
  }
  return waited_stop(c);
}

inline void continue_child(Child& c) { ::kill(c.pid(), SIGCONT); }

// A short, random busy wait (up to about a millisecond): moves a kill off
// the moment the parent decided it, so that it lands anywhere in the
// victim's loop.
inline void jitter(Rng& rng, std::uint64_t max = 200000) {
  volatile std::uint64_t x = 0;
  for (std::uint64_t i = rng.range(0, max); i > 0; --i) x = x + i;
}

// In a child: says so on the eventfd `note`, then stops itself (SIGSTOP)
// until the parent sends SIGCONT (or SIGKILL).
inline void stop_here(int note) {
  std::uint64_t one = 1;
  ssize_t n;
  do {
    n = ::write(note, &one, sizeof one);
  } while (n < 0 && errno == EINTR);
  ::raise(SIGSTOP);
}

// In the parent: waits until child c stopped itself with stop_here(note).
// The note bounds the wait: once it came, the child is one raise() away
// from the stop, or gone (waitpid() then reports its end).
inline ::testing::AssertionResult wait_stopped(Child& c, int note) {
  if (!wait_fd(note, kWakeTimeoutMs)) {
    return ::testing::AssertionFailure() << "child " << c.pid() << " never reached its stop";
  }
  return waited_stop(c);
}

}  // namespace ngx_ipc::test

#endif  // NGX_IPC_TEST_FORK_UTIL_H
