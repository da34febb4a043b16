// ngx_ipc core tests: sender and receiver loops (see stress.h).

#include "stress.h"

#include <map>
#include <thread>

namespace ngx_ipc::test {

namespace {

std::uint64_t hash3(std::uint64_t a, std::uint64_t b, std::uint64_t c) {
  std::uint64_t z = a * 0x9e3779b97f4a7c15ULL ^ (b << 32) ^ c;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

std::string lost(const char* what, const Deadline& deadline, std::uint64_t got,
                 std::uint64_t want) {
  std::string s = deadline.expired() ? "deadline passed" : what;
  return s + " (" + std::to_string(got) + " of " + std::to_string(want) + ")";
}

std::string name_of(std::uint32_t tag) { return "s" + std::to_string(tag); }

// Checks one delivery against the next message expected from its sender.
std::string check(const Delivery& d, std::map<std::int32_t, Expect>* next) {
  auto it = next->find(d.sender_pid);
  if (it == next->end()) return "message from unknown pid " + std::to_string(d.sender_pid);
  Expect& e = it->second;
  std::string name(reinterpret_cast<const char*>(d.name), d.name_len);
  MsgId id;
  if (name != name_of(e.tag) || !parse_message(d.data, d.data_len, &id) || id.tag != e.tag) {
    return "corrupt message from pid " + std::to_string(d.sender_pid) + " after seq " +
           std::to_string(e.n);
  }
  if (id.seq != e.n) {
    return "out of order from pid " + std::to_string(d.sender_pid) + ": seq " +
           std::to_string(id.seq) + ", expected " + std::to_string(e.n);
  }
  ++e.n;  // here: the next seq expected
  return "";
}

}  // namespace

std::size_t SizeMix::size(std::uint64_t seed, std::uint32_t tag, std::uint64_t seq) const {
  std::uint64_t h = hash3(seed, tag, seq);
  if (large_one_in != 0 && h % large_one_in == 0 && large_max > kMsgHeader) {
    return kMsgHeader + (h >> 16) % (large_max - kMsgHeader + 1);
  }
  std::size_t lo = min_size < kMsgHeader ? kMsgHeader : min_size;
  return lo + (h >> 16) % (small_max - lo + 1);
}

std::string run_sender(Endpoint& ep, int wake_fd, std::int32_t to, std::uint32_t tag,
                       std::uint64_t n, std::uint64_t seed, const SizeMix& mix,
                       const Deadline& deadline) {
  const std::string name = name_of(tag);
  for (std::uint64_t seq = 0; seq < n; ++seq) {
    std::vector<unsigned char> m = make_message(tag, seq, mix.size(seed, tag, seq));
    for (;;) {
      Status st = send_bytes(ep, to, name, m);
      if (st == Status::kOk) break;
      if (st != Status::kQueueFull) return "send: " + std::string(status_message(st));
      // The backlog is at the limit: wait until the receiver frees space.
      // As the module's wake handler does: a wake-up flushes the inboxes in
      // our ready bits only, so a waiter nobody woke in turn stalls here.
      if (!wait_fd(wake_fd, deadline.remaining_ms())) {
        return lost("producer wake-up lost", deadline, seq, n);
      }
      ep.flush_ready();
    }
  }
  while (ep.stats().queued_bytes != 0) {
    if (!wait_fd(wake_fd, deadline.remaining_ms())) {
      return lost("producer wake-up lost while flushing", deadline, n, n);
    }
    ep.flush_ready();
  }
  return "";
}

std::string run_receiver(Endpoint& ep, int wake_fd, const std::vector<Expect>& senders,
                         const Deadline& deadline) {
  std::map<std::int32_t, Expect> next;
  std::uint64_t want = 0, got = 0;
  for (const Expect& e : senders) {
    next[e.pid] = Expect{e.pid, e.tag, 0};
    want += e.n;
  }
  Delivery out[32];
  while (got < want) {
    int k = ep.receive(out, 32);
    for (int i = 0; i < k; ++i) {
      std::string err = check(out[i], &next);
      if (!err.empty()) return err;
    }
    got += static_cast<std::uint64_t>(k);
    if (k == 0 && !wait_fd(wake_fd, deadline.remaining_ms())) {
      return lost("receiver wake-up lost", deadline, got, want);
    }
  }
  if (ep.receive(out, 32) != 0) return "more messages than sent";
  if (ep.stats().resets != 0) return "a ring was reset";
  return "";
}

std::string run_fan_in_threads(World& w, std::uint32_t receiver,
                               const std::vector<std::uint32_t>& senders, std::uint64_t n,
                               std::uint64_t seed, const SizeMix& mix, const Deadline& deadline) {
  std::vector<std::string> errors(senders.size());
  std::vector<Expect> expect;
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < senders.size(); ++i) {
    std::uint32_t s = senders[i];
    expect.push_back(Expect{w.pid(s), s, n});
    threads.emplace_back([&w, &errors, &deadline, &mix, i, s, receiver, n, seed] {
      errors[i] = run_sender(w.ep(s), w.fds()[s], w.pid(receiver), s, n, seed, mix, deadline);
    });
  }
  std::string err = run_receiver(w.ep(receiver), w.fds()[receiver], expect, deadline);
  for (std::thread& t : threads) t.join();
  std::string all = err.empty() ? "" : "receiver: " + err;
  for (std::size_t i = 0; i < senders.size(); ++i) {
    if (errors[i].empty()) continue;
    all += (all.empty() ? "" : "; ") + ("sender " + std::to_string(senders[i]) + ": " + errors[i]);
  }
  return all;
}

std::string run_duplex(Endpoint& ep, int wake_fd, std::int32_t peer, std::uint32_t tag,
                       std::uint32_t peer_tag, std::uint64_t n, std::uint64_t seed,
                       const SizeMix& mix, const Deadline& deadline) {
  const std::string name = name_of(tag);
  std::map<std::int32_t, Expect> next;
  next[peer] = Expect{peer, peer_tag, 0};
  std::uint64_t sent = 0, got = 0;
  std::vector<unsigned char> m;
  Delivery out[32];
  while (sent < n || got < n) {
    bool progress = false;
    if (sent < n) {
      if (m.empty()) m = make_message(tag, sent, mix.size(seed, tag, sent));
      Status st = send_bytes(ep, peer, name, m);
      if (st == Status::kOk) {
        ++sent;
        m.clear();
        progress = true;
      } else if (st != Status::kQueueFull) {
        return "send: " + std::string(status_message(st));
      }
    }
    int k = ep.receive(out, 32);
    for (int i = 0; i < k; ++i) {
      std::string err = check(out[i], &next);
      if (!err.empty()) return err;
    }
    got += static_cast<std::uint64_t>(k);
    bool flushed = ep.flush_ready() && ep.stats().queued_bytes == 0;
    if (k > 0 || (sent < n && flushed)) progress = true;
    // Nothing to do: receive() returned 0 (the slot is marked asleep) and
    // either nothing is left to send or the backlog waits (flush() marked
    // us waiting for the peer's lock or for room in its inbox). Every kind
    // of wake-up writes our fd.
    if (!progress && !wait_fd(wake_fd, deadline.remaining_ms())) {
      return lost("duplex wake-up lost", deadline, got + sent, 2 * n);
    }
  }
  while (ep.stats().queued_bytes != 0) {
    if (!wait_fd(wake_fd, deadline.remaining_ms())) {
      return lost("producer wake-up lost while flushing", deadline, n, n);
    }
    ep.flush_ready();
  }
  if (ep.stats().resets != 0) return "a ring was reset";
  return "";
}

std::string run_pinger(Endpoint& ep, int wake_fd, std::int32_t peer, std::uint64_t rounds,
                       const Deadline& deadline) {
  Delivery out[4];
  for (std::uint64_t i = 0; i < rounds; ++i) {
    std::vector<unsigned char> m = make_message(1, i, 24);
    Status st = send_bytes(ep, peer, "ping", m);
    if (st != Status::kOk) return "ping: " + std::string(status_message(st));
    for (bool answered = false; !answered;) {
      int k = ep.receive(out, 4);
      if (k > 1) return "more than one pong";
      if (k == 1) {
        MsgId id;
        if (!parse_message(out[0].data, out[0].data_len, &id) || id.tag != 2 || id.seq != i) {
          return "bad pong " + std::to_string(i);
        }
        answered = true;
      } else if (!wait_fd(wake_fd, deadline.remaining_ms())) {
        return lost("pinger wake-up lost", deadline, i, rounds);
      }
    }
  }
  return "";
}

std::string run_ponger(Endpoint& ep, int wake_fd, std::int32_t peer, std::uint64_t rounds,
                       const Deadline& deadline) {
  Delivery out[4];
  for (std::uint64_t i = 0; i < rounds;) {
    int k = ep.receive(out, 4);
    if (k > 1) return "more than one ping";
    if (k == 1) {
      MsgId id;
      if (!parse_message(out[0].data, out[0].data_len, &id) || id.tag != 1 || id.seq != i) {
        return "bad ping " + std::to_string(i);
      }
      std::vector<unsigned char> m = make_message(2, i, 24);
      Status st = send_bytes(ep, peer, "pong", m);
      if (st != Status::kOk) return "pong: " + std::string(status_message(st));
      ++i;
    } else if (!wait_fd(wake_fd, deadline.remaining_ms())) {
      return lost("ponger wake-up lost", deadline, i, rounds);
    }
  }
  return "";
}

}  // namespace ngx_ipc::test
