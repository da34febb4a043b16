// ngx_ipc core tests: busy polling (ipc_busy_poll). While a process watches
// its own inbox with inbox_pending(), disarm() tells senders not to write its
// wake-up fd; rearm() marks it asleep again with the receive() handshake and
// says whether records came in meanwhile. A polling process's own sends
// still wait as usual: it is woken for the lock and for room whatever its
// `sleeping` flag. No message may be lost across the switch between polling
// and sleeping (stress tests with endpoints in threads, one or several
// senders into the polling inbox, which ThreadSanitizer checks).

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "ngx_ipc/endpoint.h"
#include "test_util.h"

namespace ngx_ipc {
namespace {

using test::World;

constexpr std::uint64_t KiB = 1024;

std::uint32_t sleeping(World& w, std::uint32_t i) { return w.shm().slot(i)->sleeping.load(); }

TEST(BusyPoll, DisarmedSlotIsNotWoken) {
  World w(2, 4096);
  Delivery out[4];
  ASSERT_EQ(w.ep(0).receive(out, 4), 0);  // empty: armed, a send would wake it
  ASSERT_TRUE(w.ep(0).armed());
  w.ep(0).disarm();
  EXPECT_FALSE(w.ep(0).armed());
  EXPECT_EQ(sleeping(w, 0), 0u);
  EXPECT_FALSE(w.ep(0).inbox_pending());

  for (int i = 0; i < 5; ++i) {
    ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "n", std::to_string(i)), Status::kOk);
    EXPECT_EQ(w.fds().take(0), 0u) << "send " << i << " wrote the fd of a polling slot";
    EXPECT_TRUE(w.ep(0).inbox_pending()) << "the poll must see send " << i;
  }
  EXPECT_EQ(w.fds().take(1), 0u);

  std::vector<test::Received> got = test::drain(w.ep(0));  // ends with receive() == 0
  ASSERT_EQ(got.size(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(got[i].data, std::to_string(i));
  EXPECT_TRUE(w.ep(0).armed()) << "receive() returning 0 arms the slot again";
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "n", "after"), Status::kOk);
  EXPECT_EQ(w.fds().take(0), 1u);
}

TEST(BusyPoll, RearmWithAnEmptyInboxArms) {
  World w(2, 4096);
  for (int round = 0; round < 3; ++round) {
    w.ep(0).disarm();
    EXPECT_FALSE(w.ep(0).rearm()) << "round " << round << ": nothing arrived";
    EXPECT_TRUE(w.ep(0).armed());
    EXPECT_EQ(w.fds().take(0), 0u) << "arming writes nothing";
    // Asleep again: the next send writes the fd, once for any number of sends.
    ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "n", "a"), Status::kOk);
    ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "n", "b"), Status::kOk);
    EXPECT_EQ(w.fds().take(0), 1u) << "round " << round;
    EXPECT_EQ(test::drain(w.ep(0)).size(), 2u);
  }
}

TEST(BusyPoll, RearmWithPendingRecordsLeavesTheSlotDisarmed) {
  // Three slots: two senders write the one inbox, and each sender's
  // messages arrive in its order.
  World w(3, 4096);
  Delivery out[4];
  ASSERT_EQ(w.ep(0).receive(out, 4), 0);
  w.ep(0).disarm();
  ASSERT_EQ(test::send_str(w.ep(2), w.pid(0), "n", "first"), Status::kOk);
  EXPECT_EQ(w.fds().take(0), 0u);

  EXPECT_TRUE(w.ep(0).rearm()) << "a record is pending: the owner must drain it";
  EXPECT_FALSE(w.ep(0).armed()) << "the owner drains now: no sender need wake it";
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "n", "second"), Status::kOk);
  ASSERT_EQ(test::send_str(w.ep(2), w.pid(0), "n", "third"), Status::kOk);
  EXPECT_EQ(w.fds().take(0), 0u) << "a slot left disarmed by rearm() was woken";

  std::vector<test::Received> got = test::drain(w.ep(0));
  ASSERT_EQ(got.size(), 3u);
  std::vector<std::string> from2;
  for (const test::Received& r : got) {
    if (r.sender_pid == w.pid(2)) from2.push_back(r.data);
  }
  EXPECT_EQ(from2, (std::vector<std::string>{"first", "third"}));
  EXPECT_TRUE(w.ep(0).armed()) << "receive() returning 0 arms the slot";
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "n", "fourth"), Status::kOk);
  EXPECT_EQ(w.fds().take(0), 1u);
  EXPECT_EQ(w.ep(0).stats().received, 3u);
}

TEST(BusyPoll, DisarmConcernsOnlyItsOwnSlot) {
  World w(4, 4096);
  Delivery out[4];
  for (std::uint32_t i = 0; i < 4; ++i) ASSERT_EQ(w.ep(i).receive(out, 4), 0);
  w.ep(1).disarm();
  ASSERT_EQ(test::broadcast_str(w.ep(3), "b", "x", true), Status::kOk);
  for (std::uint32_t i = 0; i < 4; ++i) {
    EXPECT_EQ(w.fds().take(i), i == 1 ? 0u : 1u) << "slot " << i;
    EXPECT_EQ(test::drain(w.ep(i)).size(), 1u) << "slot " << i;
  }
}

TEST(BusyPoll, DisarmedSenderIsStillWokenWhenSpaceFrees) {
  // A polling worker with a backlog for a full ring waits as a room waiter
  // (its bit in the receiver's room waiters), not through `sleeping`:
  // disarm() must not silence that wake-up.
  World w(2, 4096, 1 << 20, 1 << 20);
  Delivery out[4];
  ASSERT_EQ(w.ep(1).receive(out, 4), 0);
  std::vector<unsigned char> big = test::make_message(7, 0, 20 * KiB);
  ASSERT_EQ(test::send_bytes(w.ep(0), w.pid(1), "big", big), Status::kOk);
  ASSERT_NE(w.ep(0).stats().queued_bytes, 0u) << "the message must leave a backlog";
  EXPECT_EQ(w.fds().take(1), 1u);
  EXPECT_TRUE(w.shm().waits(1, 0, WaitFor::kRoom));
  w.ep(0).disarm();

  int wakes = 0;
  for (int i = 0; i < 1000 && w.ep(0).stats().queued_bytes != 0; ++i) {
    ASSERT_EQ(w.ep(1).receive(out, 4), 0);  // takes fragments, frees space
    ASSERT_EQ(w.fds().take(0), 1u) << "space freed, disarmed sender not woken, step " << i;
    ++wakes;
    w.ep(0).flush();
  }
  EXPECT_EQ(w.ep(0).stats().queued_bytes, 0u);
  EXPECT_GT(wakes, 2);
  std::vector<test::Received> got = test::drain(w.ep(1));
  ASSERT_EQ(got.size(), 1u);
  test::MsgId id;
  EXPECT_TRUE(test::parse_message(reinterpret_cast<const unsigned char*>(got[0].data.data()),
                                  got[0].data.size(), &id));
}

TEST(BusyPoll, DisarmedSenderIsStillWokenWhenTheLockFrees) {
  // The same for a backlog kept because another process held the lock.
  World w(3, 4096);
  ShmHeader* h = w.shm().header();
  Delivery out[4];
  ASSERT_EQ(w.ep(0).receive(out, 4), 0);
  w.ep(0).disarm();
  ASSERT_TRUE(test::hold_lock(h, 1, test::live_writer(h, 2)));
  ASSERT_EQ(test::send_str(w.ep(0), w.pid(1), "n", "later"), Status::kOk);
  EXPECT_TRUE(w.shm().waits(1, 0, WaitFor::kLock));
  EXPECT_FALSE(w.ep(0).armed());
  test::unlock_as_holder(h, 1, w.fds().fds());
  EXPECT_EQ(w.fds().take(0), 1u) << "lock freed, disarmed sender not woken";
  EXPECT_TRUE(w.ep(0).flush());
  std::vector<test::Received> got = test::drain(w.ep(1));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "later");
}

// The stress tests: consumers that wait as the nginx glue does. After
// receive() found nothing, a consumer either sleeps on its eventfd or first
// opens a poll window: disarm(), then looks at inbox_pending() a random
// number of times (0 included: disarm and rearm back to back), with
// receive(arm = false) calls in between as the reader may make them while
// the poll runs, and rearm() at the end. Messages land before, during and
// after the windows and around the rearm; none may be lost.

struct Poller {
  Endpoint& ep;
  int fd;
  test::Rng rng;
  std::uint64_t max_looks;
  bool polling = false;
  std::uint64_t looks_left = 0;
  std::uint64_t polls = 0, poll_hits = 0, rearm_hits = 0, sleeps = 0;

  // Takes a batch. An empty inbox arms the slot, except while a window is
  // open: the poll watches, senders need not write the fd.
  int receive(Delivery* out, int max) { return ep.receive(out, max, !polling); }

  // After receive() returned 0. Returns false if a wake-up did not come
  // within the timeout: a lost message.
  bool wait(const test::Deadline& deadline) {
    if (!polling) {  // armed by receive()
      if (rng.range(0, 3) == 0) return sleep(deadline);
      ++polls;
      polling = true;
      looks_left = rng.range(0, 3) == 0 ? 0 : rng.range(1, max_looks);
      ep.disarm();
    }
    for (std::uint64_t burst = rng.range(1, 64); looks_left > 0 && burst > 0;
         --looks_left, --burst) {
      if (ep.inbox_pending()) {
        ++poll_hits;
        polling = false;  // the reader drains; its empty receive() arms
        return true;
      }
      if ((looks_left & 63) == 0) std::this_thread::yield();
    }
    if (looks_left > 0) return true;  // the reader runs meanwhile
    polling = false;
    if (ep.rearm()) {
      ++rearm_hits;
      return true;  // left disarmed: the reader drains; its empty receive() arms
    }
    return sleep(deadline);
  }

  bool sleep(const test::Deadline& deadline) {
    ++sleeps;
    return test::wait_fd(fd, deadline.remaining_ms());
  }

  std::string describe() const {
    return std::to_string(polls) + " polls (" + std::to_string(poll_hits) + " found a message, " +
           std::to_string(rearm_hits) + " at the rearm), " + std::to_string(sleeps) + " sleeps";
  }
};

// Sends seq 0 .. n-1 to `to`, with random pauses so that the consumer's
// windows also run out. Returns "" or what went wrong.
std::string produce(Endpoint& ep, int fd, std::int32_t to, std::uint32_t tag, std::uint64_t n,
                    std::uint64_t seed, const test::Deadline& deadline) {
  test::Rng rng(seed);
  const std::string name = "s" + std::to_string(tag);
  for (std::uint64_t seq = 0; seq < n; ++seq) {
    std::vector<unsigned char> m =
        test::make_message(tag, seq, static_cast<std::size_t>(rng.range(test::kMsgHeader, 300)));
    for (;;) {
      Status st = test::send_bytes(ep, to, name, m);
      if (st == Status::kOk) break;
      if (st != Status::kQueueFull) return "send: " + std::string(status_message(st));
      if (ep.flush()) continue;
      if (!test::wait_fd(fd, deadline.remaining_ms())) {
        return "producer wake-up lost at seq " + std::to_string(seq);
      }
    }
    if (rng.range(0, 15) == 0) {
      auto until = std::chrono::steady_clock::now() +
                   std::chrono::microseconds(static_cast<std::int64_t>(rng.range(0, 50)));
      for (int i = 0; i < 100000 && std::chrono::steady_clock::now() < until; ++i) {
      }
      if (rng.range(0, 3) == 0) std::this_thread::yield();
    }
  }
  while (!ep.flush()) {
    if (!test::wait_fd(fd, deadline.remaining_ms())) return "producer wake-up lost while flushing";
  }
  return "";
}

// Receives n messages from each sender (pid, tag), byte-exact and in each
// sender's order, waiting through `poller`. Returns "" or what went wrong.
std::string consume(Poller& poller, const std::vector<std::pair<std::int32_t, std::uint32_t>>& from,
                    std::uint64_t n, const test::Deadline& deadline) {
  Delivery out[32];
  std::vector<std::uint64_t> next(from.size(), 0);
  std::uint64_t got = 0;
  while (got < n * from.size()) {
    int k = poller.receive(out, 32);
    for (int i = 0; i < k; ++i) {
      std::size_t s = 0;
      while (s < from.size() && from[s].first != out[i].sender_pid) ++s;
      test::MsgId id;
      bool ok = s < from.size() && test::parse_message(out[i].data, out[i].data_len, &id) &&
                id.tag == from[s].second;
      if (!ok) return "corrupt message after " + std::to_string(got);
      if (id.seq != next[s]) {
        return "tag " + std::to_string(id.tag) + ": seq " + std::to_string(id.seq) + ", expected " +
               std::to_string(next[s]);
      }
      ++next[s];
      ++got;
    }
    if (k == 0 && !poller.wait(deadline)) {
      return (deadline.expired() ? "deadline passed" : "consumer wake-up lost") +
             std::string(" with ") + std::to_string(got) + " of " + std::to_string(n * from.size());
    }
  }
  if (poller.ep.receive(out, 32) != 0) return "more messages than sent";
  return "";
}

TEST(BusyPollStress, PollingConsumerLosesNothing) {
  World w(2, 16 * KiB, 64 * KiB, 16 * KiB);  // a small ring: the producer also waits
  const std::uint64_t n = 30000, seed = test::test_seed();
  test::Deadline deadline(std::chrono::seconds(60));
  std::string producer_error;
  std::thread producer(
      [&] { producer_error = produce(w.ep(1), w.fds()[1], w.pid(0), 1, n, seed, deadline); });
  Poller poller{w.ep(0), w.fds()[0], test::Rng(seed + 1), 400};
  std::string consumer_error = consume(poller, {{w.pid(1), 1}}, n, deadline);
  producer.join();
  EXPECT_EQ(producer_error, "");
  EXPECT_EQ(consumer_error, "");
  EXPECT_EQ(w.ep(0).stats().received, n);
  EXPECT_EQ(w.ep(0).stats().resets, 0u);
  EXPECT_EQ(w.ep(1).stats().queued_bytes, 0u);
  std::printf("consumer: %s\n", poller.describe().c_str());
  // Both ways of waiting were taken, or the test proved little.
  EXPECT_GT(poller.polls, 0u);
  EXPECT_GT(poller.sleeps, 0u);
}

TEST(BusyPollStress, PollingConsumerWithThreeProducers) {
  // Three senders share the polling inbox (and its lock), through a small
  // ring: they also wait for the lock and for room.
  World w(4, 8 * KiB, 64 * KiB, 8 * KiB);
  const std::uint64_t n = 8000, seed = test::test_seed();
  test::Deadline deadline(std::chrono::seconds(60));
  std::string errors[4];
  std::vector<std::thread> producers;
  for (std::uint32_t i = 1; i <= 3; ++i) {
    producers.emplace_back(
        [&, i] { errors[i] = produce(w.ep(i), w.fds()[i], w.pid(0), i, n, seed + i, deadline); });
  }
  Poller poller{w.ep(0), w.fds()[0], test::Rng(seed + 7), 400};
  errors[0] = consume(poller, {{w.pid(1), 1}, {w.pid(2), 2}, {w.pid(3), 3}}, n, deadline);
  for (std::thread& t : producers) t.join();
  for (const std::string& e : errors) EXPECT_EQ(e, "");
  EXPECT_EQ(w.ep(0).stats().received, 3 * n);
  EXPECT_EQ(w.ep(0).stats().resets, 0u);
  std::printf("consumer: %s\n", poller.describe().c_str());
  EXPECT_GT(poller.polls, 0u);
  EXPECT_GT(poller.sleeps, 0u);
}

// One side of a ping-pong in which both sides poll: the nginx ping-pong with
// ipc_busy_poll on both workers. The pinger (tag 0) sends ping s after pong
// s - 1; the ponger (tag 1) answers ping s with pong s. Each message must
// arrive, in order, through a poll or a wake-up.
std::string ping_pong_side(World& w, std::uint32_t me, std::uint64_t rounds, Poller& poller,
                           const test::Deadline& deadline) {
  const bool pinger = me == 0;
  const std::int32_t peer = w.pid(1 - me);
  auto send = [&](std::uint64_t seq) {
    return test::send_bytes(w.ep(me), peer, "p", test::make_message(me, seq, 24)) == Status::kOk;
  };
  if (pinger && !send(0)) return "ping 0 refused";
  Delivery out[4];
  for (std::uint64_t got = 0; got < rounds;) {
    int k = poller.receive(out, 4);
    if (k > 1) return "more than one message in flight";
    if (k == 0) {
      if (!poller.wait(deadline)) return "wake-up lost after " + std::to_string(got) + " messages";
      continue;
    }
    test::MsgId id;
    if (!test::parse_message(out[0].data, out[0].data_len, &id) || id.tag != 1 - me ||
        id.seq != got) {
      return "bad message, expected seq " + std::to_string(got);
    }
    ++got;
    std::uint64_t reply = pinger ? got : got - 1;
    if (!(pinger && reply == rounds) && !send(reply)) return "send refused";
  }
  return "";
}

TEST(BusyPollStress, PingPongBothSidesPolling) {
  World w(2, 4096);
  const std::uint64_t rounds = 10000, seed = test::test_seed();
  test::Deadline deadline(std::chrono::seconds(60));
  Poller pinger_poll{w.ep(0), w.fds()[0], test::Rng(seed + 2), 2000};
  Poller ponger_poll{w.ep(1), w.fds()[1], test::Rng(seed + 3), 2000};
  std::string ponger_error;
  std::thread ponger([&] { ponger_error = ping_pong_side(w, 1, rounds, ponger_poll, deadline); });
  std::string pinger_error = ping_pong_side(w, 0, rounds, pinger_poll, deadline);
  ponger.join();
  EXPECT_EQ(pinger_error, "");
  EXPECT_EQ(ponger_error, "");
  EXPECT_EQ(w.ep(0).stats().received, rounds);
  EXPECT_EQ(w.ep(1).stats().received, rounds);
  std::printf("pinger: %s\nponger: %s\n", pinger_poll.describe().c_str(),
              ponger_poll.describe().c_str());
}

}  // namespace
}  // namespace ngx_ipc
