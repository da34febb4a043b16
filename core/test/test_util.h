// ngx_ipc core tests: shared memory, eventfds, message patterns, deadlines
// and child processes, as the tests of every file need them.
//
// Nothing here sleeps to synchronise: waits are poll() on an eventfd or a
// pidfd, each with a timeout, and every loop has a count or a deadline.

#ifndef NGX_IPC_TEST_UTIL_H
#define NGX_IPC_TEST_UTIL_H

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ngx_ipc/endpoint.h"
#include "ngx_ipc/inbox_lock.h"
#include "ngx_ipc/layout.h"
#include "ngx_ipc/ring.h"
#include "ngx_ipc/wakeup.h"

namespace ngx_ipc::test {

// How long a test waits for a wake-up that must come before it calls it lost.
constexpr int kWakeTimeoutMs = 5000;

// A MAP_SHARED | MAP_ANONYMOUS mapping of compute_layout(config).total_size
// bytes, initialised by init_shm(): shared with fork()ed children as nginx's
// zone is shared with its workers.
class Shm {
 public:
  explicit Shm(const Config& config);
  ~Shm();
  Shm(const Shm&) = delete;
  Shm& operator=(const Shm&) = delete;

  ShmHeader* header() const { return header_; }
  std::uint64_t size() const { return size_; }
  // Receiver r's inbox: its control block and its ring's bytes.
  InboxCtl* ctl(std::uint32_t receiver) const { return inbox_ctl(header_, receiver); }
  unsigned char* data(std::uint32_t receiver) const { return inbox_data(header_, receiver); }
  Slot* slot(std::uint32_t i) const { return slot_at(header_, i); }
  // Whether sender s is marked waiting for receiver r's lock (kLock) or
  // for room in its ring (kRoom): its bit in r's waiter bits.
  bool waits(std::uint32_t receiver, std::uint32_t sender, WaitFor w) const;
  // Whether receiver r's inbox is in sender s's ready bits (it woke s).
  bool ready(std::uint32_t sender, std::uint32_t receiver) const;
  // Receiver r's lock_waiting (kLock) or room_waiting (kRoom) flag.
  std::uint32_t flag(std::uint32_t receiver, WaitFor w) const {
    return waiting_flag(ctl(receiver), w).load();
  }

 private:
  void* base_ = nullptr;
  std::uint64_t size_ = 0;
  ShmHeader* header_ = nullptr;
};

// One eventfd (EFD_NONBLOCK | EFD_CLOEXEC) per slot: the wake-up fds.
class EventFds {
 public:
  explicit EventFds(std::uint32_t n);
  ~EventFds();
  EventFds(const EventFds&) = delete;
  EventFds& operator=(const EventFds&) = delete;

  const int* fds() const { return fds_.data(); }
  int operator[](std::uint32_t i) const { return fds_[i]; }
  // Reads (and so resets) the counter of slot i's eventfd: 0 if it was zero.
  std::uint64_t take(std::uint32_t i) const;

 private:
  std::vector<int> fds_;
};

// Waits up to timeout_ms for fd to become readable, then reads the eventfd
// counter. Returns false on timeout.
bool wait_fd(int fd, int timeout_ms);

class Deadline {
 public:
  explicit Deadline(std::chrono::milliseconds d) : end_(std::chrono::steady_clock::now() + d) {}
  bool expired() const { return std::chrono::steady_clock::now() >= end_; }
  // Milliseconds left, at least 0, at most cap.
  int remaining_ms(int cap = kWakeTimeoutMs) const;

 private:
  std::chrono::steady_clock::time_point end_;
};

// Deterministic pseudo-random bytes: byte i of the stream with seed s is a
// function of (s, i), so a fragment copied to the wrong offset is caught.
void fill_pattern(unsigned char* p, std::size_t len, std::uint64_t seed, std::size_t from = 0);
bool check_pattern(const unsigned char* p, std::size_t len, std::uint64_t seed,
                   std::size_t from = 0);

// Message data of `len` bytes (len >= kMsgHeader) that says who sent it
// (tag), its sequence number and its length, followed by a pattern seeded by
// those: a reader can verify any message without knowing what to expect.
constexpr std::size_t kMsgHeader = 16;
std::vector<unsigned char> make_message(std::uint32_t tag, std::uint64_t seq, std::size_t len);
struct MsgId {
  std::uint32_t tag;
  std::uint64_t seq;
};
// False if the data is not exactly such a message (wrong length, any wrong byte).
bool parse_message(const unsigned char* data, std::size_t len, MsgId* id);

// A small xorshift generator, so that tests are reproducible from a seed.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : s_(seed ? seed : 0x9e3779b97f4a7c15ULL) {}
  std::uint64_t next() {
    s_ ^= s_ << 13;
    s_ ^= s_ >> 7;
    s_ ^= s_ << 17;
    return s_;
  }
  // Uniform in [lo, hi].
  std::uint64_t range(std::uint64_t lo, std::uint64_t hi) { return lo + next() % (hi - lo + 1); }

 private:
  std::uint64_t s_;
};

// Seed for randomised tests: $NGX_IPC_TEST_SEED if set, else fixed; printed
// by the tests that use it so a failure can be replayed.
std::uint64_t test_seed();

// Convenience over Endpoint with std::string names and byte vectors.
inline Status send_bytes(Endpoint& ep, std::int32_t pid, const std::string& name,
                         const std::vector<unsigned char>& data) {
  return ep.send(pid, reinterpret_cast<const unsigned char*>(name.data()), name.size(), data.data(),
                 data.size());
}
inline Status send_str(Endpoint& ep, std::int32_t pid, const std::string& name,
                       const std::string& data) {
  return ep.send(pid, reinterpret_cast<const unsigned char*>(name.data()), name.size(),
                 reinterpret_cast<const unsigned char*>(data.data()), data.size());
}
inline Status broadcast_str(Endpoint& ep, const std::string& name, const std::string& data,
                            bool include_self) {
  return ep.broadcast(reinterpret_cast<const unsigned char*>(name.data()), name.size(),
                      reinterpret_cast<const unsigned char*>(data.data()), data.size(),
                      include_self);
}

// n slots in one mapping with their eventfds, and an Endpoint per slot
// (started with the fake PID 10000 + slot unless told otherwise). Endpoints
// of one World may be driven by one thread, or one thread each. A made-up
// PID (one no process had when start() was given it) counts as alive while
// its World lives; any other PID is asked to the OS, so a forked child that
// the kernel gave a PID of that range is dead once it is reaped.
class World {
 public:
  World(std::uint32_t nslots, std::uint64_t ring_size, std::uint64_t max_message = 1 << 20,
        std::uint64_t queue_limit = 64 << 10, bool start_all = true);
  ~World();
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  Endpoint& ep(std::uint32_t i) { return *eps_[i]; }
  std::int32_t pid(std::uint32_t i) const { return eps_[i]->pid(); }
  Shm& shm() { return shm_; }
  EventFds& fds() { return fds_; }
  std::uint32_t nslots() const { return shm_.header()->nslots; }
  // A new process in slot i: a fresh Endpoint started with `pid`; the old
  // one is destroyed without stop(), as if its process had been killed.
  Endpoint& respawn(std::uint32_t i, std::int32_t pid);
  // Starts slot i's endpoint, then consumes the wake-ups start() writes.
  void start(std::uint32_t i, std::int32_t pid);

 private:
  Shm shm_;
  EventFds fds_;
  std::vector<std::unique_ptr<Endpoint>> eps_;
  std::vector<std::int32_t> made_up_;  // registered by start(), released by ~World
};

Config make_config(std::uint32_t nslots, std::uint64_t ring_size, std::uint64_t max_message,
                   std::uint64_t queue_limit);

// The inbox lock by hand. Tests drive their endpoints from one thread, so
// no endpoint holds a lock between two calls: a test that needs one held
// takes it under a writer id of its own making (make_writer()), such as:
//
// slot s's writer id for the process that holds the slot now (alive to
// writer_alive() while that process's PID is).
std::uint64_t live_writer(ShmHeader* shm, std::uint32_t slot);
// Takes receiver r's lock as writer w (never probing the holder); false if
// someone holds it.
bool hold_lock(ShmHeader* shm, std::uint32_t receiver, std::uint64_t writer);
// Gives it back as a holder does: unlocks, then wakes the senders marked
// waiting for the lock (Wakeup::after_write) through `fds`, one per slot.
void unlock_as_holder(ShmHeader* shm, std::uint32_t receiver, const int* fds);

// Two sides of a handshake, two steps each, driven from one thread in each
// of the six orders that keep each side's steps in program order: 'a' runs
// side a's next step, 'b' side b's ("abba": a0, b0, b1, a1).
extern const char* const kInterleavings[6];
void interleave(const char* order, const std::function<void()> (&a)[2],
                const std::function<void()> (&b)[2]);
// True if step i of side x comes before step j of side y in `order`.
bool runs_before(const char* order, char x, int i, char y, int j);

// The record headers published in receiver r's inbox and not yet released,
// as its reader would take them (padding skipped): a Consumer of its own
// that never releases, so the inbox is left as it was.
std::vector<RecordHeader> peek_records(ShmHeader* shm, std::uint32_t receiver);

// A delivered message, copied out of the inbox.
struct Received {
  std::string name;
  std::string data;
  std::int32_t sender_pid;
  std::uint32_t flags;
  std::uint32_t call_id;
};
Received copy_delivery(const Delivery& d);

// Calls receive() until it returns 0 (which arms the slot's sleeping flag)
// or max_batches batches were taken; returns every delivery, copied.
std::vector<Received> drain(Endpoint& ep, int max_batches = 100000);

// Runs receiver and sender endpoints that share one thread until the
// sender's backlog is empty and the receiver's inbox drained; bounded by
// `rounds`. Returns every delivery to the receiver. False in *ok if the
// backlog did not empty.
std::vector<Received> pump(Endpoint& sender, Endpoint& receiver, bool* ok, int rounds = 100000);
// The same with several senders, each flushed in turn every round.
std::vector<Received> pump_senders(const std::vector<Endpoint*>& senders, Endpoint& receiver,
                                   bool* ok, int rounds = 100000);

// The same as the glue runs its senders: one moves its backlogs on only
// when woken (its eventfd was written), through flush_ready() (the inboxes
// in its ready bits), never a full flush. Each round the receiver drains
// its inbox (each release wakes the next room waiter), then every sender
// that was woken flushes its ready inboxes. *ok: every backlog emptied and
// the inbox drained; false if a round woke no sender while a backlog
// waits (nothing can move any more: a stall), or after `rounds`. wakes (if
// not null): the wake-ups counted per slot (EventFds::take).
std::vector<Received> pump_ready(World& w, const std::vector<std::uint32_t>& senders,
                                 std::uint32_t receiver, bool* ok,
                                 std::vector<std::uint64_t>* wakes = nullptr, int rounds = 100000);

// A fork()ed child running fn; its exit status is fn's return value (a
// thrown exception exits 99). The parent waits for it with a timeout through
// a pidfd, and kills it (SIGKILL) if it is still running when destroyed.
class Child {
 public:
  explicit Child(const std::function<int()>& fn);
  ~Child();
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  // Waits up to timeout_ms; true and the wait status in *status if it ended.
  bool wait(int timeout_ms, int* status);
  void kill_now();  // SIGKILL, not waited

 private:
  pid_t pid_ = -1;
  int pidfd_ = -1;
  bool reaped_ = false;
};

// The PID of a process that has exited and been reaped (fork(), _exit(0),
// waitpid()): kill(pid, 0) says ESRCH until the PID is reused.
std::int32_t dead_pid();

// "exited 0", "exited 3", "killed by signal 9"
std::string describe_status(int status);

// A child's exit status for the error a run_* helper returned: 0 for ""
// (success); else the error is printed on stderr and the status is 1.
int child_report(const std::string& err);

// In a child: reports a failed check on stderr and exits with code 2.
[[noreturn]] void child_fail(const char* file, int line, const std::string& what);
#define CHILD_CHECK(cond)                                                                 \
  do {                                                                                    \
    if (!(cond)) ::ngx_ipc::test::child_fail(__FILE__, __LINE__, "check failed: " #cond); \
  } while (0)

}  // namespace ngx_ipc::test

#endif  // NGX_IPC_TEST_UTIL_H
