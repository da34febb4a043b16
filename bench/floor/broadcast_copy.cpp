// What writing a broadcast's payload into every inbox costs, against the
// copies a broadcast costs anyway (docs/ARCHITECTURE.md §13).
//
// One process, one mapping of N slots laid out by init_shm() with the
// default inbox size, an Endpoint per slot. Slot 0 broadcasts a SIZE-byte
// message to the N-1 others; then each other slot takes it and copies it
// out, as the Lua side does (ffi.string makes a Lua string of every
// message: one copy per receiver in any design). Nobody sleeps, so no
// wake-up syscall is timed: only the core's work and the copies. Printed,
// per broadcast, medians of ROUNDS (after untimed ones that touch every
// page of every inbox once):
//   send_us     Endpoint::broadcast(): a lock, a record header and a copy
//               of the payload per inbox
//   memcpy_us   the payload copied N-1 times, nothing else: what writing
//               it once would save at most
//   receive_us  the N-1 receivers' receive(), copy out, release()
//
// Build: g++ -O2 -std=c++17 -Icore/include -o broadcast_copy \
//            bench/floor/broadcast_copy.cpp core/src/*.cpp
// Run:   ./broadcast_copy N SIZE ROUNDS

#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "ngx_ipc/endpoint.h"
#include "ngx_ipc/layout.h"

namespace {

double now_us() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s N SIZE ROUNDS\n", argv[0]);
    return 2;
  }
  std::uint32_t n = static_cast<std::uint32_t>(std::atoi(argv[1]));
  std::size_t size = static_cast<std::size_t>(std::atol(argv[2]));
  int rounds = std::atoi(argv[3]);
  if (n < 2 || n > ngx_ipc::kMaxSlots || rounds < 1 || rounds > 100000) {
    std::printf("error bad arguments\n");
    return 2;
  }

  ngx_ipc::Config c;
  c.nslots = n;
  ngx_ipc::Layout l = ngx_ipc::compute_layout(c);
  void* base = mmap(nullptr, l.total_size, PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) {
    std::printf("error mmap\n");
    return 1;
  }
  ngx_ipc::ShmHeader* shm = ngx_ipc::init_shm(base, c);
  // No fds: nobody is armed (receive(..., false) never arms), so nobody is
  // woken; a waker that counts proves it.
  static int wakes = 0;
  std::vector<std::unique_ptr<ngx_ipc::Endpoint>> eps;
  for (std::uint32_t i = 0; i < n; ++i) {
    eps.emplace_back(new ngx_ipc::Endpoint(shm, i, nullptr));
    eps[i]->set_waker([](void*, std::uint32_t) { ++wakes; }, nullptr);
    eps[i]->start(100000 + static_cast<std::int32_t>(i));
  }
  wakes = 0;

  std::vector<unsigned char> payload(size, 'b'), out(size);
  const unsigned char name[] = "bench";
  std::vector<double> send, copy, recv;
  // Untimed first: until every inbox has wrapped once, so that no timed
  // round pays for a page's first touch (a cost paid once per page).
  int warm = static_cast<int>(shm->ring_size / (size + 64)) + 2;
  if (warm > 5000) warm = 5000;
  for (int r = -warm; r < rounds; ++r) {
    double t0 = now_us();
    if (eps[0]->broadcast(name, 5, payload.data(), size, false) != ngx_ipc::Status::kOk) {
      std::printf("error broadcast refused\n");
      return 1;
    }
    double t1 = now_us();
    for (std::uint32_t i = 1; i < n; ++i) {
      ngx_ipc::Delivery d;
      if (eps[i]->receive(&d, 1, false) != 1 || d.data_len != size) {
        std::printf("error slot %u did not get it\n", i);
        return 1;
      }
      std::memcpy(out.data(), d.data, size);
      eps[i]->release();
    }
    double t2 = now_us();
    // into each inbox at a moving place half a ring away from where the
    // broadcast wrote: memory that is no more in the cache than its was
    std::uint64_t at =
        (static_cast<std::uint64_t>(r + warm) * (size + 64) + shm->ring_size / 2) % shm->ring_size;
    if (at + size > shm->ring_size) at = 0;
    for (std::uint32_t i = 1; i < n; ++i) {
      std::memcpy(shm->ring_size >= size ? ngx_ipc::inbox_data(shm, i) + at : out.data(),
                  payload.data(), size);
    }
    asm volatile("" ::: "memory");
    double t3 = now_us();
    eps[0]->flush();
    if (r < 0) continue;
    send.push_back(t1 - t0);
    recv.push_back(t2 - t1);
    copy.push_back(t3 - t2);
  }
  std::printf("workers %u\nsize %zu\nsend_us %.2f\nmemcpy_us %.2f\nreceive_us %.2f\nwakes %d\n", n,
              size, median(send), median(copy), median(recv), wakes);
  return 0;
}
