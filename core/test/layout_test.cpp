// ngx_ipc core tests: shared-memory layout, sizing and header checks.

#include "ngx_ipc/layout.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "test_util.h"

namespace ngx_ipc {
namespace {

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t MiB = 1024 * KiB;
constexpr std::uint64_t kPage = 4096;

bool is_pow2(std::uint64_t n) { return n != 0 && (n & (n - 1)) == 0; }

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
  // 32 MiB shared by n * n rings, each a power of two in [32 KiB, 8 MiB].
  EXPECT_EQ(default_ring_size(1), 8 * MiB);  // 32 MiB / 1, clamped
  EXPECT_EQ(default_ring_size(2), 8 * MiB);
  EXPECT_EQ(default_ring_size(4), 2 * MiB);
  EXPECT_EQ(default_ring_size(8), 512 * KiB);
  EXPECT_EQ(default_ring_size(16), 128 * KiB);
  EXPECT_EQ(default_ring_size(32), 32 * KiB);
  EXPECT_EQ(default_ring_size(64), 32 * KiB);  // 8 KiB, clamped up
  EXPECT_EQ(default_ring_size(kMaxSlots), 32 * KiB);
  EXPECT_EQ(default_ring_size(3), 2 * MiB);    // 32 MiB / 9 = 3.6 MiB -> 2 MiB
  EXPECT_EQ(default_ring_size(24), 32 * KiB);  // 32 MiB / 576 = 58254 -> 32 KiB

  std::uint64_t prev = default_ring_size(1);
  for (std::uint32_t n = 1; n <= kMaxSlots; ++n) {
    std::uint64_t r = default_ring_size(n);
    EXPECT_TRUE(is_pow2(r)) << n;
    EXPECT_GE(r, kDefaultRingMin) << n;
    EXPECT_LE(r, kDefaultRingMax) << n;
    EXPECT_LE(r, prev) << n;  // more workers never get bigger rings
    if (r > kDefaultRingMin) {
      EXPECT_LE(r * n * n, kRingBudget) << n;  // within budget unless at the floor
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
  const std::uint32_t counts[] = {1, 2, 3, 16, 64, kMaxSlots};
  const std::uint64_t rings[] = {0, 4096, 5000, 64 * KiB};
  for (std::uint32_t n : counts) {
    for (std::uint64_t ring : rings) {
      Config c;
      c.nslots = n;
      c.ring_size = ring;
      Layout l = compute_layout(c);
      SCOPED_TRACE(testing::Message() << "nslots " << n << " ring " << ring);
      std::uint64_t pairs = std::uint64_t{n} * n;
      EXPECT_EQ(l.nslots, n);
      EXPECT_EQ(l.ring_size, effective_ring_size(n, ring));
      EXPECT_EQ(l.slots_offset, sizeof(ShmHeader));
      EXPECT_EQ(l.slots_offset % kCacheLine, 0u);
      EXPECT_EQ(l.ctl_offset % kCacheLine, 0u);
      EXPECT_GE(l.ctl_offset, l.slots_offset + n * sizeof(Slot));
      EXPECT_EQ(l.data_offset % kPage, 0u);
      EXPECT_GE(l.data_offset, l.ctl_offset + pairs * sizeof(RingCtl));
      EXPECT_LT(l.data_offset, l.ctl_offset + pairs * sizeof(RingCtl) + kPage);
      EXPECT_EQ(l.total_size, l.data_offset + pairs * l.ring_size);
      EXPECT_EQ(l.total_size % kPage, 0u);  // every ring is whole pages
    }
  }
}

TEST(Layout, DefaultTotalSizes) {
  // What the master maps for a configuration with no ipc_ring_size.
  const std::pair<std::uint32_t, std::uint64_t> expect[] = {
      {1, 8 * MiB}, {2, 32 * MiB}, {4, 32 * MiB}, {16, 32 * MiB}, {64, 128 * MiB}};
  for (auto [n, rings] : expect) {
    Config c;
    c.nslots = n;
    Layout l = compute_layout(c);
    EXPECT_EQ(l.total_size - l.data_offset, rings) << n;
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
    shm_ = std::make_unique<test::Shm>(c);
  }
  ShmHeader* h() { return shm_->header(); }
  std::unique_ptr<test::Shm> shm_;
};

TEST_F(MappedLayout, InitWritesHeaderOnly) {
  map(3, 4096);
  EXPECT_EQ(h()->magic, kShmMagic);
  EXPECT_EQ(h()->version, kShmVersion);
  EXPECT_EQ(h()->nslots, 3u);
  EXPECT_EQ(h()->ring_size, 4096u);
  EXPECT_EQ(h()->max_message, 3 * MiB);
  EXPECT_EQ(h()->queue_limit, 5 * MiB);
  EXPECT_EQ(h()->total_size, shm_->size());
  for (std::uint32_t i = 0; i < 3; ++i) {
    EXPECT_EQ(shm_->slot(i)->identity.load(), 0u);
    EXPECT_EQ(shm_->slot(i)->sleeping.load(), 0u);
    for (std::uint32_t j = 0; j < 3; ++j) {
      EXPECT_EQ(shm_->ctl(i, j)->head.load(), 0u);
      EXPECT_EQ(shm_->ctl(i, j)->tail.load(), 0u);
      EXPECT_EQ(shm_->ctl(i, j)->producer_waiting.load(), 0u);
    }
  }
}

TEST_F(MappedLayout, AccessorsStayInsideTheirPart) {
  const std::uint32_t n = 5;
  map(n, 8192);
  auto* base = reinterpret_cast<unsigned char*>(h());
  auto off = [&](const void* p) {
    return static_cast<std::uint64_t>(static_cast<const unsigned char*>(p) - base);
  };
  for (std::uint32_t i = 0; i < n; ++i) {
    EXPECT_EQ(off(slot_at(h(), i)), h()->slots_offset + i * sizeof(Slot));
    EXPECT_EQ(off(slot_at(h(), i)) % kCacheLine, 0u);
    EXPECT_LE(off(slot_at(h(), i)) + sizeof(Slot), h()->ctl_offset);
  }
  std::vector<bool> seen(n * n, false);
  for (std::uint32_t s = 0; s < n; ++s) {
    for (std::uint32_t r = 0; r < n; ++r) {
      std::uint64_t c = off(ring_ctl(h(), s, r));
      EXPECT_EQ(c % kCacheLine, 0u);
      EXPECT_GE(c, h()->ctl_offset);
      EXPECT_LE(c + sizeof(RingCtl), h()->data_offset);
      std::uint64_t d = off(ring_data(h(), s, r));
      EXPECT_EQ(d % kPage, 0u);
      EXPECT_GE(d, h()->data_offset);
      EXPECT_LE(d + h()->ring_size, h()->total_size);
      std::uint64_t idx = (d - h()->data_offset) / h()->ring_size;
      ASSERT_LT(idx, seen.size());
      EXPECT_FALSE(seen[idx]) << "two pairs share ring " << idx;
      seen[idx] = true;
    }
  }
  // head, tail and producer_waiting each on their own cache line.
  RingCtl* c = ring_ctl(h(), 1, 2);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(&c->tail) - reinterpret_cast<std::uintptr_t>(&c->head),
            kCacheLine);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(&c->producer_waiting) -
                reinterpret_cast<std::uintptr_t>(&c->tail),
            kCacheLine);
  // Every byte of the mapping can be written.
  std::memset(ring_data(h(), n - 1, n - 1), 0xa5, h()->ring_size);
}

TEST_F(MappedLayout, CheckAcceptsAGoodHeader) {
  map(4, 16 * KiB);
  EXPECT_EQ(check_shm(h(), shm_->size()), h());
  EXPECT_EQ(check_shm(h(), shm_->size() + 4096), h());  // a larger mapping is fine
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
  expect_rejected("version zero", [](ShmHeader& x) { x.version = 0; });
  expect_rejected("no slots", [](ShmHeader& x) { x.nslots = 0; });
  expect_rejected("too many slots", [](ShmHeader& x) { x.nslots = kMaxMappingSlots + 1; });
  expect_rejected("nslots vs size", [](ShmHeader& x) { x.nslots = 3; });
  expect_rejected("ring not pow2", [](ShmHeader& x) { x.ring_size = 16 * KiB + 8; });
  expect_rejected("ring zero", [](ShmHeader& x) { x.ring_size = 0; });
  expect_rejected("ring too small", [](ShmHeader& x) { x.ring_size = 1024; });
  expect_rejected("ring vs size", [](ShmHeader& x) { x.ring_size = 32 * KiB; });
  expect_rejected("total small", [](ShmHeader& x) { x.total_size -= 4096; });
  expect_rejected("total large", [](ShmHeader& x) { x.total_size += 4096; });
  expect_rejected("slots offset", [](ShmHeader& x) { x.slots_offset += kCacheLine; });
  expect_rejected("ctl offset", [](ShmHeader& x) { x.ctl_offset += kCacheLine; });
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
