// ngx_ipc core: the shared-memory layout.
//
// One mapping per nginx configuration, created by the master before it forks
// the workers, holds everything the workers share:
//
//   +-----------------+  offset 0
//   | ShmHeader       |  magic, version, sizes, offsets of the parts below
//   +-----------------+  slots_offset
//   | Slot[n]         |  per worker slot: identity (incarnation|pid), sleeping,
//   |                 |  the worker's counters (SlotCounters)
//   +-----------------+  ctl_offset
//   | InboxCtl[n]     |  per receiver: the writers' lock and head, the
//   |                 |  reader's tail, two "someone waits" flags
//   +-----------------+  waiters_offset
//   | waiter bits[n]  |  per receiver: one bit per sender that waits for
//   |                 |  the lock, one per sender that waits for room
//   | ready bits[n]   |  per sender: one bit per inbox that woke it
//   +-----------------+  data_offset
//   | inbox data[n]   |  ring_size bytes per receiver
//   +-----------------+  total_size
//
// Memory grows with n, not n * n: one inbox ring per worker, which every
// sender writes under the inbox's lock (inbox_lock.h), plus three bits per
// (receiver, sender) pair.
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
// Bumped whenever a struct below changes. 2: counters in the slots, message
// counts and backlog figures in the ring control blocks, generation. 3: one
// inbox per receiver (not a ring per pair), the sender's slot in records.
constexpr std::uint32_t kShmVersion = 3;

constexpr std::uint32_t kMaxSlots = 1024;  // nginx's NGX_MAX_PROCESSES
// A mapping may hold more slots than one configuration's workers: the
// reload bridge (src/ngx_ipc_bridge.cpp) has one per process of every
// generation that runs at once.
constexpr std::uint32_t kMaxMappingSlots = 2048;
constexpr std::uint32_t kMaxNameLen = 65535;
constexpr int kMaxBatch = 256;  // messages one receive() may return

constexpr std::uint64_t kMinRingSize = 4096;
constexpr std::uint64_t kMaxRingSize = 1ULL << 30;
// Default inbox sizing: the n inboxes share this budget, each a power of
// two between the two bounds (see docs/ARCHITECTURE.md): from 4 to 512
// workers the inboxes take 32 MiB together (each sender has as much room
// in each inbox as a ring per pair had: budget / n / n), beyond that
// 64 KiB each. The cap is 8 MiB, not 16: a stream sweeps the whole inbox,
// and at 2 workers a 16 MiB one took the 64 KiB stream from 457k to 333k
// messages/s on the development VM (caches), where 8 MiB matches the ring
// per pair of the old design in every stream.
constexpr std::uint64_t kRingBudget = 32ULL << 20;
constexpr std::uint64_t kDefaultRingMin = 64ULL << 10;
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
  std::uint64_t ring_size;    // of each inbox; a power of two
  std::uint64_t max_message;  // largest data accepted, bytes
  std::uint64_t queue_limit;  // per-destination sender backlog, bytes
  std::uint64_t slots_offset;
  std::uint64_t ctl_offset;
  std::uint64_t waiters_offset;
  std::uint64_t data_offset;
  std::uint64_t total_size;
  std::uint64_t generation;    // 1 for the master's first configuration, +1 per reload
  std::uint64_t busy_poll_us;  // ipc_busy_poll, for the status page only
  std::uint32_t waiter_words;  // 64-bit words of one kind of waiter bits
  std::uint32_t pad_;
};
static_assert(std::is_standard_layout_v<ShmHeader>);
static_assert(sizeof(ShmHeader) == 2 * kCacheLine);

// A worker's counters since it started (ipc.stats(); the Lua side mirrors
// this struct as ngx_ipc_stats_t, field for field). They live in the
// worker's slot, so any process can read them (the status page), but only
// the slot's own process writes them: plain, aligned 64-bit stores from C++
// and from LuaJIT, never a read-modify-write shared with anyone. Readers
// load each one with a relaxed atomic load (load_counter): every figure is
// one the owner stored, and the set is not a snapshot taken at one instant.
// What the endpoint counts, written only by the slot's process from C++
// (the core and the glue).
struct CoreStats {
  std::uint64_t sent;            // messages queued, per destination
  std::uint64_t received;        // messages taken from the inbox for us
  std::uint64_t sent_bytes;      // data bytes of those
  std::uint64_t received_bytes;  // data bytes of those
  std::uint64_t dropped;         // received for no one (see docs)
  std::uint64_t refused;         // sends that returned an error
  std::uint64_t queued_bytes;    // payload bytes held now in the backlog
  std::uint64_t resets;          // inbox rings reset after a corrupt record
};
static_assert(std::is_standard_layout_v<CoreStats>);
static_assert(sizeof(CoreStats) == 8 * sizeof(std::uint64_t));

// What the Lua library counts (ngx_ipc_lua_counters_t in src/ngx_ipc_ffi.h),
// written only by the slot's process from Lua; start() zeroes them with the
// rest before the process runs any Lua.
struct LuaStats {
  std::uint64_t dropped;         // answers and messages no one took
  std::int64_t refused;          // sends Lua refused, less the core's
                                 // "queue full" of sends that then waited
  std::uint64_t handler_errors;  // handlers that raised
  std::uint64_t calls;           // ipc.call requests
  std::uint64_t call_timeouts;   // of them, timed out
  std::uint64_t unhandled;       // messages no handler took (not in dropped)
};
static_assert(std::is_standard_layout_v<LuaStats>);
static_assert(sizeof(LuaStats) == 6 * sizeof(std::uint64_t));

// A worker's counters as ipc.stats() and the status page show them
// (ngx_ipc_stats_t): CoreStats and LuaStats added up by read_worker().
struct Stats {
  std::uint64_t sent;
  std::uint64_t received;
  std::uint64_t sent_bytes;
  std::uint64_t received_bytes;
  std::uint64_t dropped;
  std::uint64_t refused;
  std::uint64_t handler_errors;
  std::uint64_t calls;
  std::uint64_t call_timeouts;
  std::uint64_t queued_bytes;
  std::uint64_t resets;
  std::uint64_t unhandled;
};
static_assert(std::is_standard_layout_v<Stats>);
static_assert(sizeof(Stats) == 12 * sizeof(std::uint64_t));

// What a slot's process counts, on cache lines of its own: the owner
// writes them at every send and receive, and nobody else touches these
// lines except a status reader, once per request. Each part has one
// writer: core from C++, busy_poll_ns from the glue's busy poll, lua from
// lib/ngx/ipc.lua.
struct alignas(kCacheLine) SlotCounters {
  CoreStats core;
  std::uint64_t busy_poll_ns;  // time spent busy polling (ipc_busy_poll)
  LuaStats lua;
  std::uint64_t queued_msgs;  // messages (or their rests) in the backlog now
};
static_assert(std::is_standard_layout_v<SlotCounters>);
static_assert(sizeof(SlotCounters) == 2 * kCacheLine);

// A relaxed atomic load of a counter written by another process with plain
// aligned stores (GCC/Clang builtin: no std::atomic_ref before C++20).
inline std::uint64_t load_counter(const std::uint64_t* p) {
  return __atomic_load_n(p, __ATOMIC_RELAXED);
}

// A worker slot is one nginx worker number (ngx_worker, 0 .. n-1): stable
// across respawns, so the incarnation tells the processes of a slot apart.
struct alignas(kCacheLine) Slot {
  // (incarnation << 32) | pid, written only by the slot's own process: at
  // start with pid set, at clean exit with pid 0. One word, so a reader never
  // pairs the PID of one incarnation with the number of another.
  std::atomic<std::uint64_t> identity;
  // When the slot's process started (clock ticks since boot, field 22 of
  // /proc/<pid>/stat; 0: unknown), stored before identity: tells a PID the
  // kernel gave to another process from the one that held an inbox's lock.
  std::atomic<std::uint64_t> start_time;
  char pad0_[kCacheLine - 2 * sizeof(std::atomic<std::uint64_t>)];
  // 1 while the slot's dispatcher may be asleep: a sender that finds it set
  // (and clears it) writes the slot's wake-up fd. Own line: senders poll it.
  std::atomic<std::uint32_t> sleeping;
  char pad1_[kCacheLine - sizeof(std::atomic<std::uint32_t>)];
  // Written only by the slot's process; zeroed by each new one in start().
  SlotCounters counters;
};
static_assert(std::is_standard_layout_v<Slot>);
static_assert(sizeof(Slot) == 4 * kCacheLine);
static_assert(offsetof(Slot, counters) == 2 * kCacheLine);

inline std::uint64_t make_identity(std::uint32_t incarnation, std::int32_t pid) {
  return (static_cast<std::uint64_t>(incarnation) << 32) | static_cast<std::uint32_t>(pid);
}
inline std::int32_t identity_pid(std::uint64_t id) {
  return static_cast<std::int32_t>(id & 0xffffffffu);
}
inline std::uint32_t identity_incarnation(std::uint64_t id) {
  return static_cast<std::uint32_t>(id >> 32);
}

// Control block of one receiver's inbox: a ring that every sender writes,
// one at a time, under `lock`, and only its receiver reads. head and tail
// are byte counts since the ring was created (never wrapped; 2^64 bytes is
// centuries), each on its own cache line so that writers and the reader do
// not false-share.
//
// lock is 0, or the writer id (make_writer) of the process that holds it:
// a writer takes it with a CAS, never waits for it (a sender that finds it
// taken keeps its message in its backlog), and may take it over from a
// holder that is gone (inbox_lock.h). Only the holder stores head.
//
// The message counts are for the status page only and sit on the line
// their writer stores to anyway. All relaxed: they order nothing.
struct InboxCtl {
  alignas(kCacheLine) std::atomic<std::uint64_t> lock;  // 0, or the holder
  std::atomic<std::uint64_t> head;                      // written by the holder
  std::atomic<std::uint64_t> head_msgs;                 // messages whose last record is published
  alignas(kCacheLine) std::atomic<std::uint64_t> tail;  // written by the receiver
  std::atomic<std::uint64_t> tail_msgs;                 // messages whose last record is released
  // 1 once a sender set its bit in the lock waiters (it found the lock
  // taken): the holder, after it unlocked, finds it set (and clears it)
  // and wakes them.
  alignas(kCacheLine) std::atomic<std::uint32_t> lock_waiting;
  // 1 once a sender set its bit in the room waiters (it found the ring
  // full): the receiver, after it freed space, wakes them.
  std::atomic<std::uint32_t> room_waiting;
  // Where the next search for a waiter to wake starts (a slot), per kind:
  // waiters are woken one at a time, in turn (InboxLock::wake_one()).
  std::atomic<std::uint32_t> lock_cursor;
  std::atomic<std::uint32_t> room_cursor;
};
static_assert(std::is_standard_layout_v<InboxCtl>);
static_assert(sizeof(InboxCtl) == 3 * kCacheLine);

// A writer's id in an inbox lock: its slot (+ 1, so that 0 is no one) and
// its incarnation, so that a holder that died is told from its successor.
inline std::uint64_t make_writer(std::uint32_t slot, std::uint32_t incarnation) {
  return (static_cast<std::uint64_t>(slot + 1) << 32) | incarnation;
}
inline std::uint32_t writer_slot(std::uint64_t w) {
  return static_cast<std::uint32_t>(w >> 32) - 1;
}
inline std::uint32_t writer_incarnation(std::uint64_t w) {
  return static_cast<std::uint32_t>(w & 0xffffffffu);
}

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
  std::uint32_t sender_slot;         // the fragments of one sender are
  std::uint32_t sender_incarnation;  // reassembled apart from the others'
  std::uint64_t total_len;           // name_len + data length
  std::uint64_t offset;              // of this fragment's payload in the message
};
static_assert(std::is_standard_layout_v<RecordHeader>);
static_assert(sizeof(RecordHeader) == 48);
static_assert(sizeof(RecordHeader) % 8 == 0);

constexpr std::size_t kPadRecordSize = 8;  // size, magic, flags: all a pad needs

constexpr std::uint64_t align8(std::uint64_t n) { return (n + 7) & ~std::uint64_t{7}; }

// What the master chooses for one configuration.
struct Config {
  std::uint32_t nslots = 1;
  std::uint64_t ring_size = 0;  // 0: default sizing from nslots
  std::uint64_t max_message = kDefaultMaxMessage;
  std::uint64_t queue_limit = kDefaultQueueLimit;
  std::uint64_t generation = 1;  // reported on the status page
  std::uint64_t busy_poll_us = 0;
};

struct Layout {
  std::uint32_t nslots;
  std::uint64_t ring_size;
  std::uint32_t waiter_words;
  std::uint64_t slots_offset;
  std::uint64_t ctl_offset;
  std::uint64_t waiters_offset;
  std::uint64_t data_offset;
  std::uint64_t total_size;
};

// Largest power of two <= n (n >= 1).
std::uint64_t floor_pow2(std::uint64_t n);
// The default inbox size for nslots workers.
std::uint64_t default_ring_size(std::uint32_t nslots);
// Ring size actually used for a requested size (0: default): rounded down to a
// power of two and clamped to [kMinRingSize, kMaxRingSize].
std::uint64_t effective_ring_size(std::uint32_t nslots, std::uint64_t requested);
Layout compute_layout(const Config& config);

// Initialises a zero-filled mapping of at least compute_layout(config).total_size
// bytes. Only the header is written: inboxes and slots start as zero, so the
// pages of inboxes that are never used are never touched.
ShmHeader* init_shm(void* base, const Config& config);

// Checks a mapping's header (magic, version, sizes); nullptr if it is not one.
const ShmHeader* check_shm(const void* base, std::uint64_t mapped_size);

inline Slot* slot_at(ShmHeader* h, std::uint32_t i) {
  return reinterpret_cast<Slot*>(reinterpret_cast<char*>(h) + h->slots_offset) + i;
}
inline InboxCtl* inbox_ctl(ShmHeader* h, std::uint32_t receiver) {
  return reinterpret_cast<InboxCtl*>(reinterpret_cast<char*>(h) + h->ctl_offset) + receiver;
}
// Who waits for a receiver's inbox: for its lock (woken by the holder that
// unlocks) or for room in it (woken by the receiver).
enum class WaitFor : std::uint32_t { kLock = 0, kRoom = 1 };
// The receiver's waiter bits of one kind: bit s of word s / 64 is sender s.
inline std::atomic<std::uint64_t>* waiter_bits(ShmHeader* h, std::uint32_t receiver, WaitFor w) {
  return reinterpret_cast<std::atomic<std::uint64_t>*>(reinterpret_cast<char*>(h) +
                                                       h->waiters_offset) +
         (static_cast<std::uint64_t>(receiver) * 2 + static_cast<std::uint32_t>(w)) *
             h->waiter_words;
}
inline std::atomic<std::uint32_t>& waiting_flag(InboxCtl* c, WaitFor w) {
  return w == WaitFor::kLock ? c->lock_waiting : c->room_waiting;
}
inline std::atomic<std::uint32_t>& wake_cursor(InboxCtl* c, WaitFor w) {
  return w == WaitFor::kLock ? c->lock_cursor : c->room_cursor;
}
// The sender's ready bits, after the waiter bits: bit r of word r / 64 is
// "receiver r's inbox woke you" (set by the waker before it writes the
// sender's eventfd), so a woken sender retries only those inboxes.
inline std::atomic<std::uint64_t>* ready_bits(ShmHeader* h, std::uint32_t sender) {
  return reinterpret_cast<std::atomic<std::uint64_t>*>(reinterpret_cast<char*>(h) +
                                                       h->waiters_offset) +
         (static_cast<std::uint64_t>(h->nslots) * 2 + sender) * h->waiter_words;
}
inline unsigned char* inbox_data(ShmHeader* h, std::uint32_t receiver) {
  return reinterpret_cast<unsigned char*>(h) + h->data_offset +
         static_cast<std::uint64_t>(receiver) * h->ring_size;
}

}  // namespace ngx_ipc

#endif  // NGX_IPC_LAYOUT_H
