// The floor for ngx_ipc's throughput: the raw C++ core with no nginx and no
// Lua. Two fork()ed processes share one MAP_SHARED mapping laid out by
// init_shm() (default ring size for 2 slots, as nginx gets with 2 workers,
// and a backlog of at most one message);
// the parent sends N messages of SIZE bytes through ngx_ipc::Endpoint, the
// child drains them with receive()/release(), compares every payload with the
// expected body, and, when the inbox is empty, watches it for 50 us (as
// ipc_busy_poll does) before it poll()s its eventfd; the sender likewise
// when its backlog is full. The time runs from the first send to the last
// verified receipt (CLOCK_MONOTONIC).
//
// Build: g++ -O2 -std=c++17 -Icore/include -o core_throughput \
//            bench/floor/core_throughput.cpp core/src/endpoint.cpp core/src/layout.cpp
// Run:   ./core_throughput SIZE N      (prints msgs_per_s, bytes_per_s, verified)

#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ngx_ipc/endpoint.h"
#include "ngx_ipc/layout.h"

using ngx_ipc::Delivery;
using ngx_ipc::Endpoint;
using ngx_ipc::Status;

namespace {

constexpr int kDeadlineS = 60;     // every loop gives up after this
constexpr double kBusyPollUs = 50;  // ipc_busy_poll's default

double now_us() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

// Waits up to timeout_ms for the eventfd, then resets it. False on timeout.
bool wait_fd(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  int n;
  do {
    n = ::poll(&p, 1, timeout_ms);
  } while (n < 0 && errno == EINTR);
  if (n <= 0) return false;
  std::uint64_t v;
  ssize_t r = ::read(fd, &v, sizeof v);
  (void)r;
  return true;
}

struct Shared {  // results the receiver hands back, in their own mapping
  std::atomic<int> ready;
  double t_end_us;
  std::uint64_t verified;
  std::uint64_t received;
};

}  // namespace

int main(int argc, char** argv) {
  std::size_t size = argc > 1 ? std::strtoull(argv[1], nullptr, 0) : 16;
  std::uint64_t n = argc > 2 ? std::strtoull(argv[2], nullptr, 0) : 1000000;
  if (size == 0 || n == 0) {
    std::fprintf(stderr, "usage: %s SIZE N\n", argv[0]);
    return 2;
  }

  // A long-lived nginx worker has long since touched its rings and grown its
  // heap; a process started for one run has not. So the mapping is
  // populated up front, and the backlog's buffers come from a heap that is
  // kept (no mmap()/munmap() and page faults per big message).
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);

  ngx_ipc::Config config;
  config.nslots = 2;
  // What the rings themselves carry: the sender waits for ring space rather
  // than copying ahead into its backlog (at most one message there). A
  // 16 MiB backlog of 1 MiB messages, beside an 8 MiB ring, no longer fits
  // the CPU's cache: that halved this floor (measured, 2-vCPU EPYC VM).
  config.queue_limit = 1;
  std::uint64_t total = ngx_ipc::compute_layout(config).total_size;
  void* base = mmap(nullptr, total, PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  auto* shared = static_cast<Shared*>(mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE,
                                           MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  if (base == MAP_FAILED || shared == MAP_FAILED) {
    std::perror("mmap");
    return 1;
  }
  new (shared) Shared{};
  ngx_ipc::ShmHeader* shm = ngx_ipc::init_shm(base, config);
  int fds[2] = {eventfd(0, EFD_NONBLOCK), eventfd(0, EFD_NONBLOCK)};

  std::vector<unsigned char> body(size);
  for (std::size_t i = 0; i < size; ++i) body[i] = static_cast<unsigned char>('a' + i % 26);
  static const unsigned char kName[] = "s";

  pid_t child = fork();
  if (child < 0) {
    std::perror("fork");
    return 1;
  }
  if (child == 0) {  // receiver, slot 1
    Endpoint ep(shm, 1, fds);
    ep.start(getpid());
    shared->ready.store(1, std::memory_order_release);
    std::uint64_t got = 0, verified = 0;
    Delivery out[ngx_ipc::kMaxBatch];
    double deadline = now_us() + kDeadlineS * 1e6;
    while (got < n) {
      // As ngx_ipc_busy_poll does: watch the inbox a while, disarmed, and
      // only then arm the slot and sleep.
      int k = ep.receive(out, ngx_ipc::kMaxBatch, false);
      if (k == 0) {
        double spin_end = now_us() + kBusyPollUs;
        while (!ep.inbox_pending() && now_us() < spin_end) {
        }
        k = ep.receive(out, ngx_ipc::kMaxBatch);
      }
      for (int i = 0; i < k; ++i) {
        if (out[i].data_len == size && std::memcmp(out[i].data, body.data(), size) == 0)
          ++verified;
      }
      got += static_cast<std::uint64_t>(k);
      if (k > 0) {
        ep.release();
      } else {
        int left = static_cast<int>((deadline - now_us()) / 1e3);
        if (left <= 0 || !wait_fd(fds[1], left)) break;
      }
    }
    shared->t_end_us = now_us();
    shared->received = got;
    shared->verified = verified;
    ep.release();
    ep.stop();
    _exit(0);
  }

  // sender, slot 0
  Endpoint ep(shm, 0, fds);
  ep.start(getpid());
  double deadline = now_us() + kDeadlineS * 1e6;
  while ((shared->ready.load(std::memory_order_acquire) == 0 || ep.slot_pid(1) != child) &&
         now_us() < deadline)
    usleep(1000);
  usleep(20000);
  wait_fd(fds[0], 0);  // the wake-up the child's start() wrote
  double t0 = now_us();
  std::uint64_t sent = 0, full = 0;
  bool failed = false;
  while (sent < n && !failed) {
    Status st = ep.send(child, kName, 1, body.data(), size);
    if (st == Status::kOk) {
      ++sent;
      continue;
    }
    if (st != Status::kQueueFull) {
      std::fprintf(stderr, "send: %s\n", ngx_ipc::status_message(st));
      failed = true;
      break;
    }
    ++full;
    if (ep.flush()) continue;
    double spin_end = now_us() + kBusyPollUs;
    bool flushed = false;
    while (!(flushed = ep.flush()) && now_us() < spin_end) {
    }
    if (flushed) continue;
    int left = static_cast<int>((deadline - now_us()) / 1e3);
    if (left <= 0 || !wait_fd(fds[0], left)) failed = true;
  }
  while (!failed && !ep.flush()) {
    int left = static_cast<int>((deadline - now_us()) / 1e3);
    if (left <= 0 || !wait_fd(fds[0], left)) failed = true;
  }
  double t_sent = now_us();
  int status = 0;
  for (int i = 0; i < kDeadlineS * 100; ++i) {
    if (waitpid(child, &status, WNOHANG) == child) {
      child = 0;
      break;
    }
    usleep(10000);
  }
  if (child != 0) {
    kill(child, SIGKILL);
    waitpid(child, &status, 0);
    std::printf("error receiver did not finish\n");
    return 1;
  }
  if (failed || shared->received != n) {
    std::printf("error sent %llu received %llu of %llu\n", (unsigned long long)sent,
                (unsigned long long)shared->received, (unsigned long long)n);
    return 1;
  }
  double secs = (shared->t_end_us - t0) / 1e6;
  std::printf("msgs_per_s %.0f\nbytes_per_s %.0f\nverified %llu\nsend_loop_msgs_per_s %.0f\n"
              "queue_full %llu\n",
              n / secs, n * static_cast<double>(size) / secs,
              (unsigned long long)shared->verified, n / ((t_sent - t0) / 1e6),
              (unsigned long long)full);
  ep.stop();
  return shared->verified == n ? 0 : 1;
}
