// ngx_ipc core tests: shared helpers (see test_util.h).

#include "test_util.h"

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace ngx_ipc::test {

Shm::Shm(const Config& config) {
  size_ = compute_layout(config).total_size;
  base_ = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (base_ == MAP_FAILED)
    throw std::runtime_error(std::string("mmap() failed: ") + strerror(errno));
  header_ = init_shm(base_, config);
}

Shm::~Shm() { ::munmap(base_, size_); }

bool Shm::waits(std::uint32_t receiver, std::uint32_t sender, WaitFor w) const {
  std::uint64_t word = waiter_bits(header_, receiver, w)[sender / 64].load();
  return (word >> (sender % 64)) & 1;
}

bool Shm::ready(std::uint32_t sender, std::uint32_t receiver) const {
  std::uint64_t word = ready_bits(header_, sender)[receiver / 64].load();
  return (word >> (receiver % 64)) & 1;
}

EventFds::EventFds(std::uint32_t n) {
  for (std::uint32_t i = 0; i < n; ++i) {
    int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0) throw std::runtime_error(std::string("eventfd() failed: ") + strerror(errno));
    fds_.push_back(fd);
  }
}

EventFds::~EventFds() {
  for (int fd : fds_) ::close(fd);
}

std::uint64_t EventFds::take(std::uint32_t i) const {
  std::uint64_t v = 0;
  ssize_t n;
  do {
    n = ::read(fds_[i], &v, sizeof v);
  } while (n < 0 && errno == EINTR);
  return n == sizeof v ? v : 0;
}

bool wait_fd(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  int n;
  do {
    n = ::poll(&p, 1, timeout_ms);
  } while (n < 0 && errno == EINTR);
  if (n <= 0) return false;
  std::uint64_t v;
  ssize_t r;
  do {
    r = ::read(fd, &v, sizeof v);
  } while (r < 0 && errno == EINTR);
  return true;
}

int Deadline::remaining_ms(int cap) const {
  auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(end_ - std::chrono::steady_clock::now())
          .count();
  if (left < 0) return 0;
  return left > cap ? cap : static_cast<int>(left);
}

static std::uint64_t mix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static unsigned char pattern_byte(std::uint64_t seed, std::size_t i, std::uint64_t* word,
                                  std::size_t* word_index) {
  std::size_t w = i / 8;
  if (w != *word_index) {
    *word = mix64(seed ^ mix64(w));
    *word_index = w;
  }
  return static_cast<unsigned char>(*word >> ((i % 8) * 8));
}

void fill_pattern(unsigned char* p, std::size_t len, std::uint64_t seed, std::size_t from) {
  std::uint64_t word = 0;
  std::size_t word_index = static_cast<std::size_t>(-1);
  for (std::size_t i = 0; i < len; ++i) p[i] = pattern_byte(seed, from + i, &word, &word_index);
}

bool check_pattern(const unsigned char* p, std::size_t len, std::uint64_t seed, std::size_t from) {
  std::uint64_t word = 0;
  std::size_t word_index = static_cast<std::size_t>(-1);
  for (std::size_t i = 0; i < len; ++i) {
    if (p[i] != pattern_byte(seed, from + i, &word, &word_index)) return false;
  }
  return true;
}

static std::uint64_t message_seed(std::uint32_t tag, std::uint64_t seq, std::size_t len) {
  return mix64((static_cast<std::uint64_t>(tag) << 40) ^ seq ^ mix64(len));
}

std::vector<unsigned char> make_message(std::uint32_t tag, std::uint64_t seq, std::size_t len) {
  if (len < kMsgHeader) len = kMsgHeader;
  std::vector<unsigned char> v(len);
  auto len32 = static_cast<std::uint32_t>(len);
  std::memcpy(v.data(), &seq, 8);
  std::memcpy(v.data() + 8, &tag, 4);
  std::memcpy(v.data() + 12, &len32, 4);
  fill_pattern(v.data() + kMsgHeader, len - kMsgHeader, message_seed(tag, seq, len));
  return v;
}

bool parse_message(const unsigned char* data, std::size_t len, MsgId* id) {
  if (len < kMsgHeader) return false;
  std::uint32_t len32;
  std::memcpy(&id->seq, data, 8);
  std::memcpy(&id->tag, data + 8, 4);
  std::memcpy(&len32, data + 12, 4);
  if (len32 != len) return false;
  return check_pattern(data + kMsgHeader, len - kMsgHeader, message_seed(id->tag, id->seq, len));
}

std::uint64_t test_seed() {
  const char* s = std::getenv("NGX_IPC_TEST_SEED");
  if (s != nullptr && *s != '\0') return std::strtoull(s, nullptr, 0);
  return 0x5eed'1234'abcdULL;
}

Config make_config(std::uint32_t nslots, std::uint64_t ring_size, std::uint64_t max_message,
                   std::uint64_t queue_limit) {
  Config c;
  c.nslots = nslots;
  c.ring_size = ring_size;
  c.max_message = max_message;
  c.queue_limit = queue_limit;
  return c;
}

World::World(std::uint32_t nslots, std::uint64_t ring_size, std::uint64_t max_message,
             std::uint64_t queue_limit, bool start_all)
    : shm_(make_config(nslots, ring_size, max_message, queue_limit)), fds_(nslots) {
  for (std::uint32_t i = 0; i < nslots; ++i) {
    eps_.push_back(std::make_unique<Endpoint>(shm_.header(), i, fds_.fds()));
    if (start_all) start(i, static_cast<std::int32_t>(10000 + i));
  }
}

// The made-up PIDs of the Worlds alive now, 10000 up to 10000 + kMaxSlots:
// how many Worlds use each.
static std::atomic<std::uint32_t> g_made_up[kMaxSlots];

static bool in_made_up_range(std::int32_t pid) {
  return pid >= 10000 && pid < 10000 + static_cast<std::int32_t>(kMaxSlots);
}

static bool world_alive(std::int32_t pid) {
  return (in_made_up_range(pid) && g_made_up[pid - 10000].load(std::memory_order_relaxed) != 0) ||
         Endpoint::process_alive(pid);
}

World::~World() {
  for (std::int32_t pid : made_up_) g_made_up[pid - 10000].fetch_sub(1);
}

void World::start(std::uint32_t i, std::int32_t pid) {
  if (in_made_up_range(pid) && pid != ::getpid() && !Endpoint::process_alive(pid)) {
    g_made_up[pid - 10000].fetch_add(1);
    made_up_.push_back(pid);
  }
  eps_[i]->set_alive_check(&world_alive);
  eps_[i]->start(pid);
  // start() wakes every slot once (Wakeup.StartWakesEverySlotOnce); the
  // tests count the wake-ups of what they do next.
  for (std::uint32_t k = 0; k < nslots(); ++k) fds_.take(k);
}

Endpoint& World::respawn(std::uint32_t i, std::int32_t pid) {
  eps_[i] = std::make_unique<Endpoint>(shm_.header(), i, fds_.fds());
  start(i, pid);
  return *eps_[i];
}

Received copy_delivery(const Delivery& d) {
  return Received{std::string(reinterpret_cast<const char*>(d.name), d.name_len),
                  std::string(reinterpret_cast<const char*>(d.data), d.data_len), d.sender_pid,
                  d.flags, d.call_id};
}

std::vector<Received> drain(Endpoint& ep, int max_batches) {
  std::vector<Received> got;
  Delivery batch[16];
  for (int i = 0; i < max_batches; ++i) {
    int n = ep.receive(batch, 16);
    if (n == 0) break;
    for (int j = 0; j < n; ++j) got.push_back(copy_delivery(batch[j]));
  }
  return got;
}

std::uint64_t live_writer(ShmHeader* shm, std::uint32_t slot) {
  return make_writer(slot, identity_incarnation(slot_at(shm, slot)->identity.load()));
}

bool hold_lock(ShmHeader* shm, std::uint32_t receiver, std::uint64_t writer) {
  std::uint64_t holder = 0;
  return InboxLock::try_lock(shm, receiver, writer, /*probe=*/false, &writer_alive, nullptr,
                             &holder);
}

void unlock_as_holder(ShmHeader* shm, std::uint32_t receiver, const int* fds) {
  CoreLog log;
  Wakeup wakeup(shm, receiver, fds, &log);
  InboxLock::unlock(shm, receiver);
  wakeup.after_write(receiver, /*published=*/false);
}

const char* const kInterleavings[6] = {"aabb", "abab", "abba", "baab", "baba", "bbaa"};

void interleave(const char* order, const std::function<void()> (&a)[2],
                const std::function<void()> (&b)[2]) {
  int next_a = 0, next_b = 0;
  for (const char* c = order; *c != '\0'; ++c) {
    if (*c == 'a') {
      a[next_a++]();
    } else {
      b[next_b++]();
    }
  }
}

// Index in `order` of side x's step i.
static int position(const char* order, char x, int i) {
  for (int p = 0; order[p] != '\0'; ++p) {
    if (order[p] == x && i-- == 0) return p;
  }
  return -1;
}

bool runs_before(const char* order, char x, int i, char y, int j) {
  return position(order, x, i) < position(order, y, j);
}

std::vector<RecordHeader> peek_records(ShmHeader* shm, std::uint32_t receiver) {
  Consumer c;
  c.attach(inbox_ctl(shm, receiver), inbox_data(shm, receiver), shm->ring_size, shm->max_message,
           shm->nslots);
  std::vector<RecordHeader> out;
  RecordView v;
  for (std::uint64_t i = 0; i < shm->ring_size / kPadRecordSize; ++i) {
    if (c.next(&v) != Consumer::Next::kRecord) break;
    out.push_back(v.header);
  }
  return out;
}

std::vector<Received> pump(Endpoint& sender, Endpoint& receiver, bool* ok, int rounds) {
  return pump_senders({&sender}, receiver, ok, rounds);
}

std::vector<Received> pump_senders(const std::vector<Endpoint*>& senders, Endpoint& receiver,
                                   bool* ok, int rounds) {
  std::vector<Received> got;
  *ok = false;
  for (int i = 0; i < rounds; ++i) {
    bool flushed = true;
    for (Endpoint* s : senders) flushed = s->flush() && flushed;
    std::vector<Received> more = drain(receiver);
    for (Received& r : more) got.push_back(std::move(r));
    if (flushed && more.empty() && !receiver.inbox_pending()) {
      *ok = true;
      break;
    }
  }
  return got;
}

std::vector<Received> pump_ready(World& w, const std::vector<std::uint32_t>& senders,
                                 std::uint32_t receiver, bool* ok,
                                 std::vector<std::uint64_t>* wakes, int rounds) {
  std::vector<Received> got;
  *ok = false;
  if (wakes != nullptr) wakes->assign(w.nslots(), 0);
  for (int i = 0; i < rounds; ++i) {
    std::vector<Received> more = drain(w.ep(receiver));
    for (Received& r : more) got.push_back(std::move(r));
    w.fds().take(receiver);  // its own wake-ups: the senders published
    bool woken = false, queued = false;
    for (std::uint32_t s : senders) {
      std::uint64_t n = w.fds().take(s);
      if (wakes != nullptr) (*wakes)[s] += n;
      if (n != 0) {
        woken = true;
        w.ep(s).flush_ready();
      }
      queued = queued || w.ep(s).stats().queued_bytes != 0;
    }
    if (!woken && queued) break;  // a stall
    if (!woken && more.empty() && !w.ep(receiver).inbox_pending()) {
      *ok = true;
      break;
    }
  }
  return got;
}

Child::Child(const std::function<int()>& fn) {
  std::fflush(nullptr);
  pid_ = ::fork();
  if (pid_ < 0) throw std::runtime_error(std::string("fork() failed: ") + strerror(errno));
  if (pid_ == 0) {
    int rc = 99;
    try {
      rc = fn();
    } catch (...) {
      rc = 99;
    }
    std::fflush(nullptr);
    ::_exit(rc);
  }
  pidfd_ = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
}

Child::~Child() {
  if (!reaped_) {
    ::kill(pid_, SIGKILL);
    int status;
    ::waitpid(pid_, &status, 0);
  }
  if (pidfd_ >= 0) ::close(pidfd_);
}

bool Child::wait(int timeout_ms, int* status) {
  if (reaped_) return false;
  if (pidfd_ >= 0) {
    pollfd p{pidfd_, POLLIN, 0};
    int n;
    do {
      n = ::poll(&p, 1, timeout_ms);
    } while (n < 0 && errno == EINTR);
    if (n <= 0) return false;
  } else {
    // No pidfd (kernel before 5.3): poll the child's state at 1 ms steps,
    // bounded by the timeout.
    for (int i = 0; i < timeout_ms; ++i) {
      if (::waitpid(pid_, status, WNOHANG) == pid_) {
        reaped_ = true;
        return true;
      }
      ::poll(nullptr, 0, 1);
    }
  }
  pid_t r;
  do {
    r = ::waitpid(pid_, status, 0);
  } while (r < 0 && errno == EINTR);
  reaped_ = r == pid_;
  return reaped_;
}

void Child::kill_now() {
  if (!reaped_) ::kill(pid_, SIGKILL);
}

std::int32_t dead_pid() {
  // Not a made-up PID of a World alive now, which counts as alive
  // (world_alive): the kernel's PIDs wrap into 10000..11023 too.
  for (int i = 0; i < 64; ++i) {
    std::fflush(nullptr);
    pid_t pid = ::fork();
    if (pid == 0) ::_exit(0);
    if (pid < 0) throw std::runtime_error(std::string("fork() failed: ") + strerror(errno));
    int status;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!in_made_up_range(pid) || g_made_up[pid - 10000].load() == 0) {
      return static_cast<std::int32_t>(pid);
    }
  }
  throw std::runtime_error("dead_pid(): 64 PIDs in a row were made-up ones");
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  return "status " + std::to_string(status);
}

void child_fail(const char* file, int line, const std::string& what) {
  std::fprintf(stderr, "[child %d] %s:%d: %s\n", static_cast<int>(::getpid()), file, line,
               what.c_str());
  std::fflush(stderr);
  ::_exit(2);
}

int child_report(const std::string& err) {
  if (err.empty()) return 0;
  std::fprintf(stderr, "[child %d] %s\n", static_cast<int>(getpid()), err.c_str());
  return 1;
}

}  // namespace ngx_ipc::test
