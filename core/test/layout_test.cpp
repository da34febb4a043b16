// ngx_ipc core tests: shared-memory layout (version 3: one inbox per
// receiver), sizing, header checks and the waiters' bit addressing.

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
  // 32 MiB shared by n inboxes, each a power of two in [64 KiB, 16 MiB]:
  // up to 512 workers each sender has as much room in an inbox as a ring
  // per pair had (32 MiB / n / n), and 64 KiB each beyond.
  EXPECT_EQ(default_ring_size(0), 16 * MiB);  // as for 1
  EXPECT_EQ(default_ring_size(1), 16 * MiB);  // 32 MiB / 1, clamped
  EXPECT_EQ(default_ring_size(2), 16 * MiB);
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
      // A bit per sender, in whole cache lines.
      EXPECT_GE(l.waiter_words * 64ull, n);
      EXPECT_LT((l.waiter_words - 8) * 64ull, n);
      EXPECT_EQ(l.waiter_words % (kCacheLine / 8), 0u);
      const std::uint64_t waiters = std::uint64_t{n} * 2 * l.waiter_words * 8;
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
  // inboxes take 16 to 32 MiB up to 512 workers, 64 MiB at 1024, and what
  // the slots, the control blocks and the waiter bits add stays under a MiB.
  struct Expect {
    std::uint32_t n;
    std::uint64_t inboxes;
    std::uint64_t rest;  // data_offset: header, slots, control blocks, waiter bits
  };
  const Expect expect[] = {
      {1, 16 * MiB, 4 * KiB},    {2, 32 * MiB, 4 * KiB},     {3, 24 * MiB, 4 * KiB},
      {4, 32 * MiB, 4 * KiB},    {24, 24 * MiB, 16 * KiB},   {64, 32 * MiB, 40 * KiB},
      {128, 32 * MiB, 76 * KiB}, {512, 32 * MiB, 292 * KiB}, {1024, 64 * MiB, 708 * KiB},
  };
  for (const Expect& e : expect) {
    Layout l = layout_of(e.n);
    EXPECT_EQ(l.total_size - l.data_offset, e.inboxes) << e.n;
    EXPECT_EQ(l.data_offset, e.rest) << e.n;
  }
  EXPECT_LE(layout_of(128).total_size, 32 * MiB + 80 * KiB);
  EXPECT_LE(layout_of(1024).total_size, 64 * MiB + 1 * MiB);
  for (std::uint32_t n = 1; n <= kMaxSlots; ++n) {
    Layout l = layout_of(n);
    // The budget, or the floor's 64 KiB per inbox, whichever is more.
    std::uint64_t inboxes = std::max(kRingBudget, n * kDefaultRingMin);
    EXPECT_LE(l.total_size - l.data_offset, inboxes) << n;
    EXPECT_LE(l.data_offset, 1 * MiB) << n;
  }
  // The bridge's largest mapping: inboxes at the floor, 64 KiB each.
  Layout big = layout_of(kMaxMappingSlots);
  EXPECT_EQ(big.total_size - big.data_offset, 128 * MiB);
  EXPECT_LE(big.data_offset, 2 * MiB);
}

TEST(Layout, MemoryGrowsLinearlyInTheSlots) {
  // For a given inbox size, twice the slots take twice the memory (a ring
  // per pair took four times): n inboxes, n slots, n control blocks. Only
  // the waiter bits are n * n, two bits per pair in whole cache lines:
  // 128 bytes per receiver up to 512 slots, n / 4 bytes beyond.
  auto bits = [](const Layout& l) { return std::uint64_t{l.nslots} * 2 * l.waiter_words * 8; };
  for (std::uint64_t ring : {4 * KiB, 64 * KiB, 1 * MiB}) {
    for (std::uint32_t n = 1; 2 * n <= kMaxMappingSlots; n *= 2) {
      SCOPED_TRACE(testing::Message() << "n " << n << " ring " << ring);
      Layout one = layout_of(n, ring), two = layout_of(2 * n, ring);
      EXPECT_LE(two.total_size, 2 * one.total_size + bits(two));
      EXPECT_LE(bits(one), std::uint64_t{n} * std::max<std::uint64_t>(2 * kCacheLine, n / 4));
      const std::uint64_t per_slot = sizeof(Slot) + sizeof(InboxCtl) + ring;
      EXPECT_LE(one.total_size, sizeof(ShmHeader) + kPage + n * per_slot + bits(one));
    }
  }
}

class MappedLayout : public testing::Test {
 protected:
  void map(std::uint32_t n, std::uint64_t ring) {
    Config c;
    c.nslots = n;
    c.ring_size = ring;
    c.max_message = 3 * MiB;
    c.queue_limit = 5 * MiB;
    c.generation = 9;
    c.busy_poll_us = 50;
    shm_ = std::make_unique<test::Shm>(c);
  }
  ShmHeader* h() { return shm_->header(); }
  std::uint64_t off(const void* p) {
    return static_cast<std::uint64_t>(static_cast<const unsigned char*>(p) -
                                      reinterpret_cast<unsigned char*>(h()));
  }
  std::unique_ptr<test::Shm> shm_;
};

TEST_F(MappedLayout, InitWritesHeaderOnly) {
  map(3, 4096);
  Layout l = layout_of(3, 4096);
  EXPECT_EQ(h()->magic, kShmMagic);
  EXPECT_EQ(h()->version, kShmVersion);
  EXPECT_EQ(h()->nslots, 3u);
  EXPECT_EQ(h()->ring_size, 4096u);
  EXPECT_EQ(h()->max_message, 3 * MiB);
  EXPECT_EQ(h()->queue_limit, 5 * MiB);
  EXPECT_EQ(h()->generation, 9u);
  EXPECT_EQ(h()->busy_poll_us, 50u);
  EXPECT_EQ(h()->slots_offset, l.slots_offset);
  EXPECT_EQ(h()->ctl_offset, l.ctl_offset);
  EXPECT_EQ(h()->waiters_offset, l.waiters_offset);
  EXPECT_EQ(h()->waiter_words, l.waiter_words);
  EXPECT_EQ(h()->data_offset, l.data_offset);
  EXPECT_EQ(h()->total_size, shm_->size());
  for (std::uint32_t i = 0; i < 3; ++i) {
    EXPECT_EQ(shm_->slot(i)->identity.load(), 0u);
    EXPECT_EQ(shm_->slot(i)->sleeping.load(), 0u);
    InboxCtl* c = shm_->ctl(i);
    EXPECT_EQ(c->lock.load(), 0u);
    EXPECT_EQ(c->head.load(), 0u);
    EXPECT_EQ(c->tail.load(), 0u);
    EXPECT_EQ(c->head_msgs.load(), 0u);
    EXPECT_EQ(c->tail_msgs.load(), 0u);
    EXPECT_EQ(c->lock_waiting.load(), 0u);
    EXPECT_EQ(c->room_waiting.load(), 0u);
    for (WaitFor k : {WaitFor::kLock, WaitFor::kRoom}) {
      for (std::uint32_t word = 0; word < h()->waiter_words; ++word) {
        EXPECT_EQ(waiter_bits(h(), i, k)[word].load(), 0u);
      }
    }
  }
}

TEST_F(MappedLayout, AccessorsStayInsideTheirPart) {
  const std::uint32_t n = 5;
  map(n, 8192);
  for (std::uint32_t i = 0; i < n; ++i) {
    EXPECT_EQ(off(slot_at(h(), i)), h()->slots_offset + i * sizeof(Slot));
    EXPECT_LE(off(slot_at(h(), i)) + sizeof(Slot), h()->ctl_offset);
  }
  std::set<std::uint64_t> ctls, datas;
  for (std::uint32_t r = 0; r < n; ++r) {
    std::uint64_t c = off(inbox_ctl(h(), r));
    EXPECT_EQ(c, h()->ctl_offset + r * sizeof(InboxCtl));
    EXPECT_EQ(c % kCacheLine, 0u);
    EXPECT_LE(c + sizeof(InboxCtl), h()->waiters_offset);
    EXPECT_TRUE(ctls.insert(c).second);
    std::uint64_t d = off(inbox_data(h(), r));
    EXPECT_EQ(d % kPage, 0u);
    EXPECT_GE(d, h()->data_offset);
    EXPECT_LE(d + h()->ring_size, h()->total_size);
    EXPECT_EQ((d - h()->data_offset) % h()->ring_size, 0u);
    EXPECT_TRUE(datas.insert(d).second) << "two receivers share inbox " << r;
    EXPECT_EQ(shm_->ctl(r), inbox_ctl(h(), r));
    EXPECT_EQ(shm_->data(r), inbox_data(h(), r));
  }
  // Every byte of the mapping can be written.
  std::memset(inbox_data(h(), n - 1), 0xa5, h()->ring_size);
}

TEST_F(MappedLayout, WaiterBitsAreDistinctPerReceiverKindAndSender) {
  // 130 senders: three words of bits, in a line of eight, per (receiver, kind).
  const std::uint32_t n = 130;
  map(n, 4096);
  const std::uint32_t words = h()->waiter_words;
  ASSERT_EQ(words, 8u);
  auto* all = waiter_bits(h(), 0, WaitFor::kLock);
  const std::uint64_t total_words = std::uint64_t{n} * 2 * words;
  std::set<std::uint64_t> starts;
  for (std::uint32_t r = 0; r < n; ++r) {
    for (WaitFor k : {WaitFor::kLock, WaitFor::kRoom}) {
      std::uint64_t o = off(waiter_bits(h(), r, k));
      EXPECT_EQ(o % kCacheLine, 0u);
      EXPECT_GE(o, h()->waiters_offset);
      EXPECT_LE(o + words * 8, h()->data_offset);
      EXPECT_TRUE(starts.insert(o).second);
    }
  }
  auto count_set = [&] {
    std::uint64_t bits = 0;
    for (std::uint64_t i = 0; i < total_words; ++i) bits += __builtin_popcountll(all[i].load());
    return bits;
  };
  // Receivers and senders at the edges of words: each (receiver, kind,
  // sender) is one bit of its own, and it sets its inbox's flag of that
  // kind only.
  for (std::uint32_t r : {0u, 1u, 64u, n - 1}) {
    for (WaitFor k : {WaitFor::kLock, WaitFor::kRoom}) {
      for (std::uint32_t s : {0u, 63u, 64u, 127u, 128u, n - 1}) {
        SCOPED_TRACE(testing::Message()
                     << "receiver " << r << " kind " << static_cast<int>(k) << " sender " << s);
        InboxLock::wait_begin(h(), r, s, k);
        EXPECT_EQ(count_set(), 1u);
        EXPECT_EQ(waiter_bits(h(), r, k)[s / 64].load(), std::uint64_t{1} << (s % 64));
        EXPECT_EQ(waiting_flag(inbox_ctl(h(), r), k).load(), 1u);
        WaitFor other = k == WaitFor::kLock ? WaitFor::kRoom : WaitFor::kLock;
        EXPECT_EQ(waiting_flag(inbox_ctl(h(), r), other).load(), 0u);
        InboxLock::wait_end(h(), r, s, k);
        EXPECT_EQ(count_set(), 0u);
        waiting_flag(inbox_ctl(h(), r), k).store(0);
      }
    }
  }
  // The waker finds exactly the senders marked for its receiver and kind.
  const std::vector<std::uint32_t> marked = {0, 5, 63, 64, 100, 129};
  for (std::uint32_t s : marked) InboxLock::wait_begin(h(), 7, s, WaitFor::kRoom);
  InboxLock::wait_begin(h(), 7, 3, WaitFor::kLock);
  InboxLock::wait_begin(h(), 8, 9, WaitFor::kRoom);
  std::vector<std::uint32_t> woken;
  InboxLock::wake_waiters(h(), 7, WaitFor::kRoom, [&](std::uint32_t s) { woken.push_back(s); });
  EXPECT_EQ(woken, marked);
  EXPECT_EQ(count_set(), 2u) << "the others are still marked";
  EXPECT_EQ(inbox_ctl(h(), 7)->room_waiting.load(), 0u);
  EXPECT_EQ(inbox_ctl(h(), 7)->lock_waiting.load(), 1u);
}

TEST_F(MappedLayout, CheckAcceptsAGoodHeader) {
  map(4, 16 * KiB);
  EXPECT_EQ(check_shm(h(), shm_->size()), h());
  EXPECT_EQ(check_shm(h(), shm_->size() + 4096), h());  // a larger mapping is fine
}

TEST_F(MappedLayout, CheckAcceptsTheLargestMapping) {
  map(kMaxMappingSlots, 4096);
  EXPECT_EQ(check_shm(h(), shm_->size()), h());
  h()->nslots = kMaxMappingSlots + 1;
  EXPECT_EQ(check_shm(h(), shm_->size()), nullptr);
}

TEST_F(MappedLayout, CheckRejectsBadHeaders) {
  map(4, 16 * KiB);
  const ShmHeader good = *h();
  auto expect_rejected = [&](const char* what, auto&& spoil) {
    *h() = good;
    spoil(*h());
    EXPECT_EQ(check_shm(h(), shm_->size()), nullptr) << what;
    *h() = good;
  };
  expect_rejected("magic", [](ShmHeader& x) { x.magic ^= 1; });
  expect_rejected("magic zero", [](ShmHeader& x) { x.magic = 0; });
  expect_rejected("version", [](ShmHeader& x) { x.version = kShmVersion + 1; });
  expect_rejected("version 2 (a ring per pair)", [](ShmHeader& x) { x.version = 2; });
  expect_rejected("version zero", [](ShmHeader& x) { x.version = 0; });
  expect_rejected("no slots", [](ShmHeader& x) { x.nslots = 0; });
  expect_rejected("too many slots", [](ShmHeader& x) { x.nslots = kMaxMappingSlots + 1; });
  expect_rejected("nslots vs size", [](ShmHeader& x) { x.nslots = 3; });
  expect_rejected("nslots vs size, more", [](ShmHeader& x) { x.nslots = 5; });
  expect_rejected("ring not pow2", [](ShmHeader& x) { x.ring_size = 16 * KiB + 8; });
  expect_rejected("ring zero", [](ShmHeader& x) { x.ring_size = 0; });
  expect_rejected("ring too small", [](ShmHeader& x) { x.ring_size = 1024; });
  expect_rejected("ring too large", [](ShmHeader& x) { x.ring_size = 2 * kMaxRingSize; });
  expect_rejected("ring vs size", [](ShmHeader& x) { x.ring_size = 32 * KiB; });
  expect_rejected("total small", [](ShmHeader& x) { x.total_size -= 4096; });
  expect_rejected("total large", [](ShmHeader& x) { x.total_size += 4096; });
  expect_rejected("slots offset", [](ShmHeader& x) { x.slots_offset += kCacheLine; });
  expect_rejected("ctl offset", [](ShmHeader& x) { x.ctl_offset += kCacheLine; });
  expect_rejected("ctl offset zero", [](ShmHeader& x) { x.ctl_offset = 0; });
  expect_rejected("waiters offset", [](ShmHeader& x) { x.waiters_offset += kCacheLine; });
  expect_rejected("waiters offset in ctl", [](ShmHeader& x) { x.waiters_offset = x.ctl_offset; });
  expect_rejected("waiter words", [](ShmHeader& x) { x.waiter_words += 8; });
  expect_rejected("waiter words zero", [](ShmHeader& x) { x.waiter_words = 0; });
  expect_rejected("data offset", [](ShmHeader& x) { x.data_offset += 4096; });
  expect_rejected("data offset past the end", [](ShmHeader& x) { x.data_offset = x.total_size; });

  EXPECT_EQ(check_shm(h(), shm_->size() - 1), nullptr) << "mapping shorter than total_size";
  EXPECT_EQ(check_shm(h(), sizeof(ShmHeader) - 1), nullptr) << "mapping shorter than a header";
  EXPECT_EQ(check_shm(nullptr, shm_->size()), nullptr);
  EXPECT_EQ(check_shm(h(), shm_->size()), h()) << "restored";
}

TEST(Layout, CheckRejectsAZeroMapping) {
  alignas(kCacheLine) static unsigned char zero[8192];
  EXPECT_EQ(check_shm(zero, sizeof zero), nullptr);
}

}  // namespace
}  // namespace ngx_ipc
