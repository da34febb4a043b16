// libFuzzer target: the inbox side of ngx_ipc reads records that another
// process wrote into shared memory, so it must survive any bytes there.
//
// The input fills one ring (sender slot 0 -> receiver slot 1) and sets its
// head; the receiving Endpoint then drains it. Under AddressSanitizer any
// read outside the ring or a delivered view that points outside it fails.
// Mode byte 0: the ring holds raw input bytes. Mode byte 1: the ring holds
// valid messages written by a real Producer, then input-chosen bytes of it
// are overwritten (a torn or hostile writer).
//
// Build and run: make fuzz (FUZZ_SECONDS=N for longer).

#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ngx_ipc/endpoint.h"
#include "ngx_ipc/layout.h"
#include "ngx_ipc/ring.h"

using namespace ngx_ipc;

namespace {

constexpr std::uint64_t kRing = 4096;

struct World {
  void* base = nullptr;
  ShmHeader* shm = nullptr;
  std::uint64_t size = 0;
  int fds[2] = {-1, -1};

  World() {
    Config c;
    c.nslots = 2;
    c.ring_size = kRing;
    c.max_message = 1 << 20;
    c.queue_limit = 1 << 20;
    size = compute_layout(c).total_size;
    base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) abort();
    shm = init_shm(base, c);
    fds[0] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    fds[1] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  }

  void reset() {
    std::memset(ring_ctl(shm, 0, 1), 0, sizeof(RingCtl));
    std::memset(ring_data(shm, 0, 1), 0, kRing);
    slot_at(shm, 0)->identity.store(make_identity(1, 100));
    slot_at(shm, 1)->identity.store(0);
  }
};

// Reads every delivered byte, so AddressSanitizer sees any view that
// points outside the ring or its reassembly buffer.
void touch(const unsigned char* p, std::uint64_t n) {
  volatile unsigned char sink = 0;
  for (std::uint64_t i = 0; i < n; ++i) sink = sink + p[i];
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static World w;
  if (size < 9) return 0;
  w.reset();
  unsigned char* ring = ring_data(w.shm, 0, 1);
  RingCtl* ctl = ring_ctl(w.shm, 0, 1);
  std::uint8_t mode = data[0] & 1;
  std::uint64_t head;
  std::memcpy(&head, data + 1, 8);
  data += 9;
  size -= 9;

  if (mode == 0) {
    std::memcpy(ring, data, size < kRing ? size : kRing);
    ctl->head.store(head % (2 * kRing + 64));
  } else {
    // Valid traffic from a real producer, then corruption at chosen places.
    Producer p;
    p.attach(ctl, ring, kRing);
    std::uint64_t i = 0;
    while (i + 2 <= size && i < 64) {
      std::uint32_t name_len = 1 + data[i] % 40;
      std::uint32_t data_len = (data[i + 1] * 37u) % 9000;
      std::vector<unsigned char> payload(name_len + data_len, static_cast<unsigned char>(i));
      MessageMeta m;
      m.flags = (data[i] & 0x80) ? kBroadcast : 0;
      m.sender_pid = 100;
      m.target_incarnation = 1;
      m.name_len = name_len;
      m.total_len = name_len + data_len;
      Payload pl{payload.data(), payload.size(), nullptr, 0};
      std::uint64_t done = p.write(m, pl, 0);
      p.publish();
      if (done < m.total_len) break;  // ring full: enough
      i += 2;
    }
    for (; i + 3 <= size; i += 3) {
      std::uint16_t at;
      std::memcpy(&at, data + i, 2);
      ring[at % kRing] = data[i + 2];
    }
    if (head & 1) ctl->head.store(ctl->head.load() + (head >> 1) % 128);
  }

  Endpoint e(w.shm, 1, w.fds);
  e.start(200);
  Delivery batch[16];
  for (int rounds = 0; rounds < 64; ++rounds) {
    int n = e.receive(batch, 16);
    if (n <= 0) break;
    for (int k = 0; k < n; ++k) {
      if (batch[k].name_len == 0 || batch[k].name_len > kMaxNameLen) abort();
      touch(batch[k].name, batch[k].name_len);
      touch(batch[k].data, batch[k].data_len);
      // A view into the ring must lie inside it.
      if (batch[k].name >= ring && batch[k].name < ring + kRing &&
          batch[k].data + batch[k].data_len > ring + kRing) {
        abort();
      }
    }
  }
  e.stop();
  return 0;
}
