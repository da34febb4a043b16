// libFuzzer target: the receive side of ngx_ipc reads records that other
// processes wrote into its inbox, in shared memory, so it must survive any
// bytes there; and what several honest writers put there, taking turns
// under the inbox's lock, must come out exactly as it went in.
//
// One mapping of 3 slots; slot 1's Endpoint receives, slots 0 and 2 write
// its inbox. The first input byte picks a mode:
//   0  raw: the input is the ring's bytes, and it chooses head;
//   1  writers: two InboxWriters take turns under the lock (InboxLock),
//      each turn writing an input-chosen number of bytes of its messages,
//      so their fragments interleave; a writer may die holding the lock
//      and the other take it over. The receiver drains whenever a turn
//      finds the ring full, and every delivery is checked against what was
//      sent (per sender, in order, byte for byte; messages for another
//      incarnation dropped). Then input-chosen bytes of the ring are
//      overwritten (a torn or hostile writer) before the last drain,
//      which is then checked for memory safety only;
//   2  crafted: well-formed record headers with input-chosen flags,
//      senders, offsets and lengths, to drive the reassemblers' states.
// Under AddressSanitizer any read outside the ring, or a delivered view
// that points outside it or its reassembly buffer, fails.
//
// Build and run: make fuzz (FUZZ_SECONDS=N for longer).

#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <vector>

#include "ngx_ipc/endpoint.h"
#include "ngx_ipc/inbox_lock.h"
#include "ngx_ipc/layout.h"
#include "ngx_ipc/ring.h"

using namespace ngx_ipc;

namespace {

constexpr std::uint64_t kRing = 4096;
constexpr std::uint32_t kSlots = 3;
constexpr std::uint32_t kReceiver = 1;
constexpr std::uint32_t kWriters[2] = {0, 2};
constexpr std::int32_t kReceiverPid = 200;

struct World {
  void* base = nullptr;
  ShmHeader* shm = nullptr;
  int fds[kSlots] = {-1, -1, -1};

  World() {
    Config c;
    c.nslots = kSlots;
    c.ring_size = kRing;
    c.max_message = 1 << 20;
    c.queue_limit = 1 << 20;
    std::uint64_t size = compute_layout(c).total_size;
    base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) abort();
    shm = init_shm(base, c);
    for (int& fd : fds) fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  }

  // The receiver's inbox and every slot as a fresh mapping has them.
  void reset() {
    std::memset(static_cast<void*>(inbox_ctl(shm, kReceiver)), 0, sizeof(InboxCtl));
    std::memset(inbox_data(shm, kReceiver), 0, kRing);
    for (WaitFor k : {WaitFor::kLock, WaitFor::kRoom}) {
      std::memset(static_cast<void*>(waiter_bits(shm, kReceiver, k)), 0, shm->waiter_words * 8);
    }
    for (std::uint32_t s = 0; s < kSlots; ++s) slot_at(shm, s)->identity.store(0);
    for (int fd : fds) {  // the wake-ups of the previous run's start()
      std::uint64_t v;
      ssize_t r = read(fd, &v, sizeof v);
      (void)r;
    }
  }
  unsigned char* ring() { return inbox_data(shm, kReceiver); }
  InboxCtl* ctl() { return inbox_ctl(shm, kReceiver); }
};

// Reads every delivered byte, so AddressSanitizer sees any view that
// points outside the ring or its reassembly buffer.
void touch(const unsigned char* p, std::uint64_t n) {
  volatile unsigned char sink = 0;
  for (std::uint64_t i = 0; i < n; ++i) sink = sink + p[i];
}

void check_view(World& w, const Delivery& d) {
  if (d.name_len == 0 || d.name_len > kMaxNameLen) abort();
  touch(d.name, d.name_len);
  touch(d.data, d.data_len);
  // A view into the ring must lie inside it.
  const unsigned char* ring = w.ring();
  if (d.name >= ring && d.name < ring + kRing && d.data + d.data_len > ring + kRing) abort();
}

// Input bytes, read front to back; zeroes once they run out.
struct Input {
  const std::uint8_t* p;
  std::size_t n;
  std::uint8_t byte() {
    if (n == 0) return 0;
    --n;
    return *p++;
  }
  std::uint16_t u16() { return static_cast<std::uint16_t>(byte() | (byte() << 8)); }
};

// ---- mode 1: honest writers, then an oracle ----

struct Message {
  MessageMeta meta;
  std::vector<unsigned char> payload;  // name then data
  bool mine;                           // for the receiver's incarnation
};

struct Writer {
  std::uint32_t slot;
  std::uint32_t incarnation = 1;
  InboxWriter w;
  std::deque<Message> todo;
  std::uint64_t done = 0;               // of todo.front()
  std::vector<Message> turn_completed;  // written this turn, not yet published
  std::deque<Message> expect;           // published, for the receiver, in order
};

std::uint64_t g_dead = 0;  // writer id of a holder that died
bool fuzz_alive(void*, ShmHeader*, std::uint64_t w) { return w != g_dead; }

// Receives until the inbox is empty; with `oracle`, every delivery must be
// the next message expected from its sender.
void drain(World& w, Endpoint& e, Writer* writers, bool oracle) {
  Delivery batch[16];
  for (int rounds = 0; rounds < 4096; ++rounds) {
    int n = e.receive(batch, 16);
    if (n <= 0) return;
    for (int k = 0; k < n; ++k) {
      check_view(w, batch[k]);
      if (!oracle) continue;
      Writer* from = nullptr;
      for (int i = 0; i < 2; ++i) {
        if (batch[k].sender_pid == 100 + static_cast<std::int32_t>(writers[i].slot)) {
          from = &writers[i];
        }
      }
      if (from == nullptr || from->expect.empty()) abort();
      const Message& m = from->expect.front();
      if (batch[k].name_len != m.meta.name_len ||
          batch[k].data_len != m.meta.total_len - m.meta.name_len ||
          batch[k].flags != m.meta.flags ||
          std::memcmp(batch[k].name, m.payload.data(), batch[k].name_len) != 0 ||
          std::memcmp(batch[k].data, m.payload.data() + m.meta.name_len, batch[k].data_len) != 0) {
        abort();
      }
      from->expect.pop_front();
    }
  }
  abort();  // a ring of 4 KiB never holds 4096 batches
}

void run_writers(World& w, Endpoint& e, Input in) {
  Writer writers[2];
  for (int i = 0; i < 2; ++i) {
    writers[i].slot = kWriters[i];
    writers[i].w.attach(w.ctl(), w.ring(), kRing);
  }
  // Up to 48 messages: who sends, its flags and target, name and data sizes.
  std::uint8_t count = in.byte() % 49;
  for (std::uint8_t i = 0; i < count; ++i) {
    std::uint8_t how = in.byte();
    Message m;
    Writer& wr = writers[how & 1];
    std::uint32_t name_len = 1 + in.byte() % 40;
    std::uint32_t data_len = (in.u16() * 37u) % 9000;
    static const std::uint32_t targets[4] = {1, 2, 0, 1};  // 2: a previous receiver
    m.meta.flags = (how & 2) ? kBroadcast : 0;
    m.meta.target_incarnation = targets[(how >> 2) & 3];
    if (m.meta.target_incarnation == 0) m.meta.flags = kBroadcast;
    m.mine = m.meta.target_incarnation == 1 || m.meta.target_incarnation == 0;
    m.meta.name_len = name_len;
    m.meta.total_len = name_len + data_len;
    m.payload.resize(m.meta.total_len);
    for (std::uint32_t b = 0; b < m.meta.total_len; ++b) {
      m.payload[b] = static_cast<unsigned char>(b * 131 + i);
    }
    wr.todo.push_back(std::move(m));
  }
  g_dead = 0;
  for (int turns = 0; turns < 4096; ++turns) {
    if (writers[0].todo.empty() && writers[1].todo.empty()) break;
    std::uint8_t t = in.byte();
    Writer& wr = writers[t & 1].todo.empty() ? writers[~t & 1] : writers[t & 1];
    bool dies = (t & 0xf0) == 0xf0;  // one turn in 16 at random
    std::uint64_t budget = 64 + (in.byte() * 41u) % 12000;
    std::uint64_t me = make_writer(wr.slot, wr.incarnation), holder = 0;
    if (!InboxLock::try_lock(w.shm, kReceiver, me, true, &fuzz_alive, nullptr, &holder)) abort();
    wr.w.begin();
    std::uint64_t wrote = 0;
    while (!wr.todo.empty() && budget > 0) {
      Message& m = wr.todo.front();
      m.meta.sender_pid = 100 + static_cast<std::int32_t>(wr.slot);
      m.meta.sender_slot = wr.slot;
      m.meta.sender_incarnation = wr.incarnation;
      std::uint64_t left = m.meta.total_len - wr.done;
      Payload p{m.payload.data() + wr.done, left < budget ? left : budget, nullptr, 0};
      std::uint64_t n = wr.w.write(m.meta, p, wr.done);
      wr.done += n;
      wrote += n;
      budget -= n;
      if (wr.done < m.meta.total_len) break;
      wr.turn_completed.push_back(std::move(m));
      wr.todo.pop_front();
      wr.done = 0;
    }
    if (dies) {
      // No publish(), no unlock(): what it wrote this turn is lost, and so
      // is the message it was in (its next process starts a new one).
      g_dead = me;
      wr.turn_completed.clear();
      if (wr.done != 0) wr.todo.pop_front();
      wr.done = 0;
      ++wr.incarnation;
      continue;
    }
    wr.w.publish();
    InboxLock::unlock(w.shm, kReceiver);
    for (Message& m : wr.turn_completed) {
      if (m.mine) wr.expect.push_back(std::move(m));
    }
    wr.turn_completed.clear();
    if (wrote == 0 || (t & 0x0c) == 0) drain(w, e, writers, true);
  }
  // Overwrites, then a head past what was published, as a stray writer
  // would; without any, everything sent must have come.
  bool spoiled = false;
  while (in.n >= 3) {
    std::uint16_t at = in.u16();
    w.ring()[at % kRing] = in.byte();
    spoiled = true;
  }
  if (in.n == 1 && in.byte() != 0) {
    w.ctl()->head.store(w.ctl()->head.load() + 8 * (1 + in.n % 64));
    spoiled = true;
  }
  drain(w, e, writers, !spoiled);
  if (!spoiled && (!writers[0].expect.empty() || !writers[1].expect.empty())) abort();
}

// ---- mode 2: crafted record headers ----

void run_crafted(World& w, Input in) {
  std::uint64_t head = 0;
  while (in.n >= 12) {
    RecordHeader h{};
    h.magic = kRecordMagic;
    h.flags = in.byte() & 0x3b;                // kFirst, kLast, kBroadcast, kRequest, kReply
    h.sender_slot = in.byte() % (kSlots + 1);  // kSlots: no such slot
    h.sender_incarnation = in.byte() % 3;
    h.target_incarnation = in.byte() % 3;
    h.sender_pid = 100 + in.byte() % 3;
    h.name_len = in.byte() % 8;
    h.total_len = in.u16() % 700;
    h.offset = in.u16() % 700;
    std::uint32_t len = in.u16() % 700;
    h.size = static_cast<std::uint32_t>(sizeof h + len);
    std::uint64_t need = align8(h.size);
    std::uint64_t pos = head & (kRing - 1);
    if (kRing - pos < need) {
      RecordHeader pad{};
      pad.size = static_cast<std::uint32_t>(kRing - pos);
      pad.magic = kRecordMagic;
      pad.flags = kPad;
      std::memcpy(w.ring() + pos, &pad, kPadRecordSize);
      head += kRing - pos;
      pos = 0;
    }
    if (head + need > kRing) break;  // one ring's worth: the reader never released
    std::memcpy(w.ring() + pos, &h, sizeof h);
    for (std::uint32_t b = 0; b < len; ++b)
      w.ring()[pos + sizeof h + b] = static_cast<unsigned char>(b);
    head += need;
  }
  w.ctl()->head.store(head);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static World w;
  if (size < 1) return 0;
  w.reset();
  std::uint8_t mode = data[0] % 3;
  Input in{data + 1, size - 1};
  slot_at(w.shm, 0)->identity.store(make_identity(1, 100));
  slot_at(w.shm, 2)->identity.store(make_identity(1, 102));

  Endpoint e(w.shm, kReceiver, w.fds);
  e.start(kReceiverPid);  // incarnation 1
  if (mode == 0) {
    std::uint64_t head = 0;
    for (int i = 0; i < 8; ++i) head |= static_cast<std::uint64_t>(in.byte()) << (8 * i);
    std::memcpy(w.ring(), in.p, in.n < kRing ? in.n : kRing);
    w.ctl()->head.store(head % (2 * kRing + 64));
    drain(w, e, nullptr, false);
  } else if (mode == 1) {
    run_writers(w, e, in);
  } else {
    run_crafted(w, in);
    drain(w, e, nullptr, false);
  }
  e.stop();
  return 0;
}
