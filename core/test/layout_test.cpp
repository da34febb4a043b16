// ngx_ipc core tests: shared-memory layout (version 3: one inbox per
// receiver): structs, writer ids, inbox sizing, offsets and the total
// mapping size per worker count. A mapped header: layout_mapped_test.cpp.

#include "ngx_ipc/layout.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <set>
#include <vector>

#include "ngx_ipc/inbox_lock.h"
#include "test_util.h"

namespace ngx_ipc {
namespace {

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t MiB = 1024 * KiB;
constexpr std::uint64_t kPage = 4096;

bool is_pow2(std::uint64_t n) { return n != 0 && (n & (n - 1)) == 0; }

Layout layout_of(std::uint32_t n, std::uint64_t ring = 0) {
  Config c;
  c.nslots = n;
  c.ring_size = ring;
  return compute_layout(c);
}

TEST(Layout, StructsAreWhatEveryProcessExpects) {
  // The mapping is shared by processes built apart (the module, the reload
  // bridge's peers): these are its ABI.
  EXPECT_EQ(sizeof(ShmHeader), 128u);
  EXPECT_EQ(offsetof(ShmHeader, ctl_offset), 48u);
  EXPECT_EQ(offsetof(ShmHeader, waiters_offset), 56u);
  EXPECT_EQ(offsetof(ShmHeader, data_offset), 64u);
  EXPECT_EQ(offsetof(ShmHeader, waiter_words), 96u);
  EXPECT_EQ(sizeof(Slot), 4 * kCacheLine);
  EXPECT_EQ(alignof(Slot), kCacheLine);
  EXPECT_EQ(offsetof(Slot, sleeping), kCacheLine);
  EXPECT_EQ(offsetof(Slot, counters), 2 * kCacheLine);
  EXPECT_EQ(offsetof(SlotCounters, queued_msgs), 15 * sizeof(std::uint64_t));
  // The lock and head share the writers' line, tail the reader's, the two
  // "someone waits" flags a third, polled by both sides.
  EXPECT_EQ(sizeof(InboxCtl), 3 * kCacheLine);
  EXPECT_EQ(alignof(InboxCtl), kCacheLine);
  EXPECT_EQ(offsetof(InboxCtl, lock), 0u);
  EXPECT_EQ(offsetof(InboxCtl, head), 8u);
  EXPECT_EQ(offsetof(InboxCtl, head_msgs), 16u);
  EXPECT_EQ(offsetof(InboxCtl, tail), kCacheLine);
  EXPECT_EQ(offsetof(InboxCtl, tail_msgs), kCacheLine + 8);
  EXPECT_EQ(offsetof(InboxCtl, lock_waiting), 2 * kCacheLine);
  EXPECT_EQ(offsetof(InboxCtl, room_waiting), 2 * kCacheLine + 4);
  // Records: 48 bytes, the sender's slot and incarnation in them.
  EXPECT_EQ(sizeof(RecordHeader), 48u);
  EXPECT_EQ(offsetof(RecordHeader, size), 0u);
  EXPECT_EQ(offsetof(RecordHeader, magic), 4u);
  EXPECT_EQ(offsetof(RecordHeader, flags), 6u);
  EXPECT_EQ(offsetof(RecordHeader, sender_slot), 24u);
  EXPECT_EQ(offsetof(RecordHeader, sender_incarnation), 28u);
  EXPECT_EQ(offsetof(RecordHeader, total_len), 32u);
  EXPECT_EQ(offsetof(RecordHeader, offset), 40u);
  EXPECT_EQ(kPadRecordSize, 8u);
  EXPECT_EQ(kShmVersion, 3u);
}

TEST(Layout, WriterIds) {
  // 0 is "nobody holds the lock": slot 0, incarnation 0 is not 0.
  EXPECT_NE(make_writer(0, 0), 0u);
  for (std::uint32_t slot : {0u, 1u, 63u, kMaxMappingSlots - 1}) {
    for (std::uint32_t inc : {0u, 1u, 0xffffffffu}) {
      std::uint64_t w = make_writer(slot, inc);
      EXPECT_EQ(writer_slot(w), slot);
      EXPECT_EQ(writer_incarnation(w), inc);
    }
  }
  EXPECT_NE(make_writer(1, 2), make_writer(2, 1));
  EXPECT_NE(make_writer(1, 2), make_writer(1, 3));
}

TEST(Layout, FloorPow2) {
  EXPECT_EQ(floor_pow2(1), 1u);
  EXPECT_EQ(floor_pow2(2), 2u);
  EXPECT_EQ(floor_pow2(3), 2u);
  EXPECT_EQ(floor_pow2(4095), 2048u);
  EXPECT_EQ(floor_pow2(4096), 4096u);
  EXPECT_EQ(floor_pow2(4097), 4096u);
  EXPECT_EQ(floor_pow2(~std::uint64_t{0}), 1ULL << 63);
}

TEST(Layout, DefaultRingSizeSharesTheBudget) {
  // 32 MiB shared by n inboxes, each a power of two in [64 KiB, 8 MiB]:
  // up to 512 workers each sender has as much room in an inbox as a ring
  // per pair had (32 MiB / n / n), and 64 KiB each beyond.
  EXPECT_EQ(default_ring_size(0), 8 * MiB);  // as for 1
  EXPECT_EQ(default_ring_size(1), 8 * MiB);  // 32 MiB / 1, clamped
  EXPECT_EQ(default_ring_size(2), 8 * MiB);  // 16 MiB, clamped
  EXPECT_EQ(default_ring_size(3), 8 * MiB);  // 10.7 MiB -> 8 MiB
  EXPECT_EQ(default_ring_size(4), 8 * MiB);
  EXPECT_EQ(default_ring_size(8), 4 * MiB);
  EXPECT_EQ(default_ring_size(16), 2 * MiB);
  EXPECT_EQ(default_ring_size(24), 1 * MiB);  // 1.33 MiB -> 1 MiB
  EXPECT_EQ(default_ring_size(64), 512 * KiB);
  EXPECT_EQ(default_ring_size(128), 256 * KiB);
  EXPECT_EQ(default_ring_size(512), 64 * KiB);
  EXPECT_EQ(default_ring_size(1000), 64 * KiB);  // 32 KiB, clamped up
  EXPECT_EQ(default_ring_size(kMaxSlots), 64 * KiB);
  EXPECT_EQ(default_ring_size(kMaxMappingSlots), 64 * KiB);

  std::uint64_t prev = default_ring_size(1);
  for (std::uint32_t n = 1; n <= kMaxMappingSlots; ++n) {
    std::uint64_t r = default_ring_size(n);
    EXPECT_TRUE(is_pow2(r)) << n;
    EXPECT_GE(r, kDefaultRingMin) << n;
    EXPECT_LE(r, kDefaultRingMax) << n;
    EXPECT_LE(r, prev) << n;  // more workers never get bigger inboxes
    if (r > kDefaultRingMin) {
      EXPECT_LE(r * n, kRingBudget) << n;  // within budget, off the floor
    }
    if (r < kDefaultRingMax) {
      EXPECT_GT(2 * r * n, kRingBudget) << n;  // and over half of it, off the ceiling
    }
    prev = r;
  }
}

TEST(Layout, EffectiveRingSizeRoundsDownAndClamps) {
  EXPECT_EQ(effective_ring_size(4, 0), default_ring_size(4));
  EXPECT_EQ(effective_ring_size(64, 0), default_ring_size(64));
  EXPECT_EQ(effective_ring_size(2, 1), kMinRingSize);
  EXPECT_EQ(effective_ring_size(2, 4095), kMinRingSize);
  EXPECT_EQ(effective_ring_size(2, 4096), 4096u);
  EXPECT_EQ(effective_ring_size(2, 4097), 4096u);
  EXPECT_EQ(effective_ring_size(2, 8191), 4096u);
  EXPECT_EQ(effective_ring_size(2, 65535), 32 * KiB);
  EXPECT_EQ(effective_ring_size(2, 64 * KiB), 64 * KiB);
  EXPECT_EQ(effective_ring_size(2, 100000), 64 * KiB);
  EXPECT_EQ(effective_ring_size(2, 3 * MiB), 2 * MiB);
  EXPECT_EQ(effective_ring_size(2, kMaxRingSize), kMaxRingSize);
  EXPECT_EQ(effective_ring_size(2, kMaxRingSize + 1), kMaxRingSize);
  EXPECT_EQ(effective_ring_size(2, ~std::uint64_t{0}), kMaxRingSize);
}

TEST(Layout, OffsetsAlignedAndDisjoint) {
  const std::uint32_t counts[] = {1, 2, 3, 16, 63, 64, 65, 512, 513, kMaxSlots, kMaxMappingSlots};
  const std::uint64_t rings[] = {0, 4096, 5000, 64 * KiB};
  for (std::uint32_t n : counts) {
    for (std::uint64_t ring : rings) {
      Layout l = layout_of(n, ring);
      SCOPED_TRACE(testing::Message() << "nslots " << n << " ring " << ring);
      EXPECT_EQ(l.nslots, n);
      EXPECT_EQ(l.ring_size, effective_ring_size(n, ring));
      EXPECT_EQ(l.slots_offset, sizeof(ShmHeader));
      EXPECT_EQ(l.ctl_offset, l.slots_offset + n * sizeof(Slot));
      EXPECT_EQ(l.waiters_offset, l.ctl_offset + n * sizeof(InboxCtl));
      EXPECT_EQ(l.ctl_offset % kCacheLine, 0u);
      EXPECT_EQ(l.waiters_offset % kCacheLine, 0u);
      // A bit per sender (per receiver, of each kind of waiter) and per
      // receiver (per sender, its ready bits), in whole cache lines.
      EXPECT_GE(l.waiter_words * 64ull, n);
      EXPECT_LT((l.waiter_words - 8) * 64ull, n);
      EXPECT_EQ(l.waiter_words % (kCacheLine / 8), 0u);
      const std::uint64_t waiters = std::uint64_t{n} * 3 * l.waiter_words * 8;
      EXPECT_EQ(l.data_offset % kPage, 0u);
      EXPECT_GE(l.data_offset, l.waiters_offset + waiters);
      EXPECT_LT(l.data_offset, l.waiters_offset + waiters + kPage);
      EXPECT_EQ(l.total_size, l.data_offset + n * l.ring_size);
      EXPECT_EQ(l.total_size % kPage, 0u);  // every inbox is whole pages
    }
  }
}

TEST(Layout, DefaultTotalSizes) {
  // What the master maps for a configuration with no ipc_ring_size: the
  // inboxes take 8 MiB at 1 worker, 16 at 2, 24 to 32 MiB up to 512, 64 MiB at 1024, and what
  // the slots, the control blocks, the waiter and the ready bits add stays
  // under a MiB.
  struct Expect {
    std::uint32_t n;
    std::uint64_t inboxes;
    std::uint64_t rest;  // data_offset: header, slots, control blocks, waiter and ready bits
  };
  const Expect expect[] = {
      {1, 8 * MiB, 4 * KiB},     {2, 16 * MiB, 4 * KiB},     {3, 24 * MiB, 4 * KiB},
      {4, 32 * MiB, 4 * KiB},    {24, 24 * MiB, 16 * KiB},   {64, 32 * MiB, 44 * KiB},
      {128, 32 * MiB, 84 * KiB}, {512, 32 * MiB, 324 * KiB}, {1024, 64 * MiB, 836 * KiB},
  };
  for (const Expect& e : expect) {
    Layout l = layout_of(e.n);
    EXPECT_EQ(l.total_size - l.data_offset, e.inboxes) << e.n;
    EXPECT_EQ(l.data_offset, e.rest) << e.n;
  }
  EXPECT_LE(layout_of(128).total_size, 32 * MiB + 84 * KiB);
  EXPECT_LE(layout_of(1024).total_size, 64 * MiB + 1 * MiB);
  for (std::uint32_t n = 1; n <= kMaxSlots; ++n) {
    Layout l = layout_of(n);
    // The budget, or the floor's 64 KiB per inbox, whichever is more.
    std::uint64_t inboxes = std::max(kRingBudget, n * kDefaultRingMin);
    EXPECT_LE(l.total_size - l.data_offset, inboxes) << n;
    EXPECT_LE(l.data_offset, 1 * MiB) << n;
  }
  // The bridge's largest mapping: inboxes at the floor, 64 KiB each; the
  // bits, three per pair, take 1.5 MiB of its control part.
  Layout big = layout_of(kMaxMappingSlots);
  EXPECT_EQ(big.total_size - big.data_offset, 128 * MiB);
  EXPECT_EQ(big.data_offset, 2436 * KiB);
}

TEST(Layout, MemoryGrowsLinearlyInTheSlots) {
  // For a given inbox size, twice the slots take twice the memory (a ring
  // per pair took four times): n inboxes, n slots, n control blocks. Only
  // the waiter and ready bits are n * n, three bits per pair in whole cache
  // lines: 192 bytes per slot up to 512 slots, 3n / 8 bytes beyond.
  auto bits = [](const Layout& l) { return std::uint64_t{l.nslots} * 3 * l.waiter_words * 8; };
  for (std::uint64_t ring : {4 * KiB, 64 * KiB, 1 * MiB}) {
    for (std::uint32_t n = 1; 2 * n <= kMaxMappingSlots; n *= 2) {
      SCOPED_TRACE(testing::Message() << "n " << n << " ring " << ring);
      Layout one = layout_of(n, ring), two = layout_of(2 * n, ring);
      EXPECT_LE(two.total_size, 2 * one.total_size + bits(two));
      EXPECT_LE(bits(one), std::uint64_t{n} * std::max<std::uint64_t>(3 * kCacheLine, 3 * n / 8));
      const std::uint64_t per_slot = sizeof(Slot) + sizeof(InboxCtl) + ring;
      EXPECT_LE(one.total_size, sizeof(ShmHeader) + kPage + n * per_slot + bits(one));
    }
  }
}

}  // namespace
}  // namespace ngx_ipc
