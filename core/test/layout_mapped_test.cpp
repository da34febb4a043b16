// ngx_ipc core tests: a mapping as init_shm() writes it (layout version
// 3): the header alone written, every accessor inside its part, the
// waiter and ready bits apart per receiver, kind and sender, and
// check_shm() on good and bad headers. Sizing: layout_test.cpp.

#include <gtest/gtest.h>

#include <cstddef>
#include <cstring>
#include <memory>
#include <set>
#include <vector>

#include "ngx_ipc/inbox_lock.h"
#include "ngx_ipc/layout.h"
#include "test_util.h"

namespace ngx_ipc {
namespace {

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t MiB = 1024 * KiB;
constexpr std::uint64_t kPage = 4096;

Layout layout_of(std::uint32_t n, std::uint64_t ring = 0) {
  Config c;
  c.nslots = n;
  c.ring_size = ring;
  return compute_layout(c);
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
  // Each sender's ready bits are apart from every waiter bit, and one line
  // each.
  for (std::uint32_t s : {0u, 1u, 64u, n - 1}) {
    std::uint64_t o = off(ready_bits(h(), s));
    EXPECT_EQ(o % kCacheLine, 0u);
    EXPECT_GE(o, h()->waiters_offset + total_words * 8);
    EXPECT_LE(o + words * 8, h()->data_offset);
  }
  // The waker wakes the senders marked for its receiver and kind one at a
  // time, in turn, each with the receiver in its ready bits; the flag
  // stays set while others wait.
  const std::vector<std::uint32_t> marked = {0, 5, 63, 64, 100, 129};
  for (std::uint32_t s : marked) InboxLock::wait_begin(h(), 7, s, WaitFor::kRoom);
  InboxLock::wait_begin(h(), 7, 3, WaitFor::kLock);
  InboxLock::wait_begin(h(), 8, 9, WaitFor::kRoom);
  std::vector<std::uint32_t> woken;
  for (std::size_t i = 0; i < marked.size(); ++i) {
    EXPECT_EQ(inbox_ctl(h(), 7)->room_waiting.load(), 1u) << "others still wait";
    int s =
        InboxLock::wake_one(h(), 7, WaitFor::kRoom, [&](std::uint32_t x) { woken.push_back(x); });
    ASSERT_GE(s, 0);
    EXPECT_EQ(ready_bits(h(), s)[0].exchange(0), std::uint64_t{1} << 7);
  }
  EXPECT_EQ(woken, marked);
  EXPECT_EQ(InboxLock::wake_one(h(), 7, WaitFor::kRoom, [&](std::uint32_t) { FAIL(); }), -1);
  EXPECT_EQ(count_set(), 2u) << "the others are still marked";
  EXPECT_EQ(inbox_ctl(h(), 7)->room_waiting.load(), 0u);
  EXPECT_EQ(inbox_ctl(h(), 7)->lock_waiting.load(), 1u);
  // In turn: the search starts past the last one woken, on to the end,
  // wraps, and ends with the bits before it in its own word.
  auto wake_all = [&](std::vector<std::uint32_t> mark) {
    for (std::uint32_t s : mark) InboxLock::wait_begin(h(), 7, s, WaitFor::kRoom);
    woken.clear();
    for (std::size_t i = 0; i <= mark.size(); ++i) {  // the last finds no one
      InboxLock::wake_one(h(), 7, WaitFor::kRoom, [&](std::uint32_t x) { woken.push_back(x); });
    }
    return woken;
  };
  EXPECT_EQ(wake_all({69}), (std::vector<std::uint32_t>{69}));
  EXPECT_EQ(wake_all({65, 100}), (std::vector<std::uint32_t>{100, 65}));
  EXPECT_EQ(wake_all({3, 70, 66}), (std::vector<std::uint32_t>{66, 70, 3}));
  EXPECT_EQ(wake_all({0, n - 1}), (std::vector<std::uint32_t>{n - 1, 0}));
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
