// ngx_ipc core: the shared-memory layout.
//
// One mapping per nginx configuration, created by the master before it forks
// the workers, holds everything the workers share:
//
//   +-----------------+  offset 0
//   | ShmHeader       |  magic, version, sizes, offsets of the parts below
//   +-----------------+  slots_offset
//   | Slot[n]         |  per worker slot: identity (incarnation|pid), sleeping
//   +-----------------+  ctl_offset
//   | RingCtl[n * n]  |  per (sender, receiver) pair: head, tail, waiting
//   +-----------------+  data_offset
//   | ring data[n * n]|  ring_size bytes per pair, sender-major
//   +-----------------+  total_size
//
// Everything is standard-layout, fixed-size and addressed by offsets, so the
// mapping may sit at a different address in every process. No nginx header is
// used here: GoogleTest drives this code in plain processes. The full design
// (diagram, record format, wake-up protocol) is in docs/ARCHITECTURE.md.

#ifndef NGX_IPC_LAYOUT_H
#define NGX_IPC_LAYOUT_H

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace ngx_ipc {

// Destructive interference size; x86-64 and most ARM64 cores use 64 bytes.
constexpr std::size_t kCacheLine = 64;

constexpr std::uint64_t kShmMagic = 0x3163'7069'5f78'676eULL;  // "ngx_ipc1"
constexpr std::uint32_t kShmVersion = 1;

constexpr std::uint32_t kMaxSlots = 128;  // worker_processes beyond this: refused
constexpr std::uint32_t kMaxNameLen = 65535;
constexpr int kMaxBatch = 256;  // messages one receive() may return

constexpr std::uint64_t kMinRingSize = 4096;
constexpr std::uint64_t kMaxRingSize = 1ULL << 30;
// Default ring sizing: the rings of all n * n pairs share this budget, each
// ring a power of two between the two bounds (see docs/ARCHITECTURE.md).
constexpr std::uint64_t kRingBudget = 32ULL << 20;
constexpr std::uint64_t kDefaultRingMin = 32ULL << 10;
constexpr std::uint64_t kDefaultRingMax = 8ULL << 20;

// receive() ends a batch once it holds this many payload bytes, so that a
// stream of big messages gives ring space back message by message instead
// of once per ring-full (the sender then rarely needs its backlog).
constexpr std::uint64_t kBatchBytes = 1ULL << 20;

constexpr std::uint64_t kDefaultMaxMessage = 64ULL << 20;
constexpr std::uint64_t kDefaultQueueLimit = 16ULL << 20;

static_assert(std::atomic<std::uint64_t>::is_always_lock_free,
              "64-bit atomics must be lock-free to live in shared memory");
static_assert(std::atomic<std::uint32_t>::is_always_lock_free,
              "32-bit atomics must be lock-free to live in shared memory");

struct alignas(kCacheLine) ShmHeader {
  std::uint64_t magic;
  std::uint32_t version;
  std::uint32_t nslots;
  std::uint64_t ring_size;    // power of two
  std::uint64_t max_message;  // largest data accepted, bytes
  std::uint64_t queue_limit;  // per-destination sender backlog, bytes
  std::uint64_t slots_offset;
  std::uint64_t ctl_offset;
  std::uint64_t data_offset;
  std::uint64_t total_size;
};
static_assert(std::is_standard_layout_v<ShmHeader>);
static_assert(sizeof(ShmHeader) == 2 * kCacheLine);

// A worker slot is one nginx worker number (ngx_worker, 0 .. n-1): stable
// across respawns, so the incarnation tells the processes of a slot apart.
struct alignas(kCacheLine) Slot {
  // (incarnation << 32) | pid, written only by the slot's own process: at
  // start with pid set, at clean exit with pid 0. One word, so a reader never
  // pairs the PID of one incarnation with the number of another.
  std::atomic<std::uint64_t> identity;
  char pad0_[kCacheLine - sizeof(std::atomic<std::uint64_t>)];
  // 1 while the slot's dispatcher may be asleep: a sender that finds it set
  // (and clears it) writes the slot's wake-up fd. Own line: senders poll it.
  std::atomic<std::uint32_t> sleeping;
  char pad1_[kCacheLine - sizeof(std::atomic<std::uint32_t>)];
};
static_assert(std::is_standard_layout_v<Slot>);
static_assert(sizeof(Slot) == 2 * kCacheLine);

inline std::uint64_t make_identity(std::uint32_t incarnation, std::int32_t pid) {
  return (static_cast<std::uint64_t>(incarnation) << 32) | static_cast<std::uint32_t>(pid);
}
inline std::int32_t identity_pid(std::uint64_t id) {
  return static_cast<std::int32_t>(id & 0xffffffffu);
}
inline std::uint32_t identity_incarnation(std::uint64_t id) {
  return static_cast<std::uint32_t>(id >> 32);
}

// Control block of one single-producer single-consumer ring. head and tail
// are byte counts since the ring was created (never wrapped; 2^64 bytes is
// centuries), each on its own cache line so producer and consumer do not
// false-share; each side keeps a private cached copy of the other's index.
struct RingCtl {
  alignas(kCacheLine) std::atomic<std::uint64_t> head;  // written by producer
  alignas(kCacheLine) std::atomic<std::uint64_t> tail;  // written by consumer
  // Set by the producer while it holds a backlog for this ring; the consumer
  // that frees space and finds it set (and clears it) wakes the producer.
  alignas(kCacheLine) std::atomic<std::uint32_t> producer_waiting;
};
static_assert(std::is_standard_layout_v<RingCtl>);
static_assert(sizeof(RingCtl) == 3 * kCacheLine);

// Record format inside a ring (8-byte aligned; see docs/ARCHITECTURE.md).
// A message's payload is its name followed by its data; it travels as one
// record (kFirst | kLast) or as several fragments in order.
constexpr std::uint16_t kRecordMagic = 0x1b7c;

enum RecordFlags : std::uint16_t {
  kFirst = 1u << 0,       // first fragment of a message
  kLast = 1u << 1,        // last fragment of a message
  kPad = 1u << 2,         // filler up to the end of the ring; no payload
  kBroadcast = 1u << 3,   // addressed to the slot, any incarnation
  kRequest = 1u << 4,     // ipc.call request; call_id set
  kReply = 1u << 5,       // ipc.call reply; call_id set
  kStatusMask = 3u << 6,  // reply status (kReply only)
};

struct RecordHeader {
  std::uint32_t size;  // header + payload bytes of this record, unpadded
  std::uint16_t magic;
  std::uint16_t flags;
  std::int32_t sender_pid;
  std::uint32_t target_incarnation;  // unicast: receiver's incarnation
  std::uint32_t name_len;            // of the whole message
  std::uint32_t call_id;             // kRequest / kReply
  std::uint64_t total_len;           // name_len + data length
  std::uint64_t offset;              // of this fragment's payload in the message
};
static_assert(std::is_standard_layout_v<RecordHeader>);
static_assert(sizeof(RecordHeader) == 40);
static_assert(sizeof(RecordHeader) % 8 == 0);

constexpr std::size_t kPadRecordSize = 8;  // size, magic, flags: all a pad needs

constexpr std::uint64_t align8(std::uint64_t n) { return (n + 7) & ~std::uint64_t{7}; }

// What the master chooses for one configuration.
struct Config {
  std::uint32_t nslots = 1;
  std::uint64_t ring_size = 0;  // 0: default sizing from nslots
  std::uint64_t max_message = kDefaultMaxMessage;
  std::uint64_t queue_limit = kDefaultQueueLimit;
};

struct Layout {
  std::uint32_t nslots;
  std::uint64_t ring_size;
  std::uint64_t slots_offset;
  std::uint64_t ctl_offset;
  std::uint64_t data_offset;
  std::uint64_t total_size;
};

// Largest power of two <= n (n >= 1).
std::uint64_t floor_pow2(std::uint64_t n);
// The default ring size for nslots workers.
std::uint64_t default_ring_size(std::uint32_t nslots);
// Ring size actually used for a requested size (0: default): rounded down to a
// power of two and clamped to [kMinRingSize, kMaxRingSize].
std::uint64_t effective_ring_size(std::uint32_t nslots, std::uint64_t requested);
Layout compute_layout(const Config& config);

// Initialises a zero-filled mapping of at least compute_layout(config).total_size
// bytes. Only the header is written: rings and slots start as zero, so the
// pages of rings that are never used are never touched.
ShmHeader* init_shm(void* base, const Config& config);

// Checks a mapping's header (magic, version, sizes); nullptr if it is not one.
const ShmHeader* check_shm(const void* base, std::uint64_t mapped_size);

inline Slot* slot_at(ShmHeader* h, std::uint32_t i) {
  return reinterpret_cast<Slot*>(reinterpret_cast<char*>(h) + h->slots_offset) + i;
}
inline RingCtl* ring_ctl(ShmHeader* h, std::uint32_t sender, std::uint32_t receiver) {
  return reinterpret_cast<RingCtl*>(reinterpret_cast<char*>(h) + h->ctl_offset) +
         (static_cast<std::uint64_t>(sender) * h->nslots + receiver);
}
inline unsigned char* ring_data(ShmHeader* h, std::uint32_t sender, std::uint32_t receiver) {
  return reinterpret_cast<unsigned char*>(h) + h->data_offset +
         (static_cast<std::uint64_t>(sender) * h->nslots + receiver) * h->ring_size;
}

}  // namespace ngx_ipc

#endif  // NGX_IPC_LAYOUT_H
