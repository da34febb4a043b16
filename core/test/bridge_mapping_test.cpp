// ngx_ipc core tests: mappings of up to kMaxMappingSlots slots, the reload
// bridge's (src/ngx_ipc_bridge.cpp): check_shm() takes kMaxMappingSlots and
// refuses one more, and the bridge's mapping of 2048 inboxes of 64 KiB
// costs pages only where written (mincore()).

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "bridge_util.h"
#include "ngx_ipc/endpoint.h"
#include "test_util.h"

namespace ngx_ipc {
namespace {

using test::bytes;
using test::is_message;
using test::multicast_str;
using test::Received;
using test::record_wake;
using test::Slots;

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t MiB = 1024 * KiB;

TEST(Bridge, MappingOfKMaxMappingSlotsPassesCheckShm) {
  static_assert(kMaxMappingSlots == 2048);  // NGX_IPC_BRIDGE_SLOTS
  for (std::uint32_t n : {kMaxSlots + 1, kMaxMappingSlots}) {
    Config c = test::make_config(n, 4096, 1 * MiB, 64 * KiB);
    test::Shm shm(c);  // compute_layout(c).total_size bytes, init_shm()
    ASSERT_EQ(shm.size(), compute_layout(c).total_size);
    EXPECT_EQ(shm.header()->nslots, n);
    EXPECT_EQ(check_shm(shm.header(), shm.size()), shm.header()) << n;
    EXPECT_EQ(check_shm(shm.header(), shm.size() - 1), nullptr) << n;
  }
}

TEST(Bridge, MappingOfMoreThanKMaxMappingSlotsFailsCheckShm) {
  Config c = test::make_config(kMaxMappingSlots + 1, 4096, 1 * MiB, 64 * KiB);
  test::Shm shm(c);
  ASSERT_EQ(shm.size(), compute_layout(c).total_size);
  // A consistent header: only the slot count is wrong.
  EXPECT_EQ(shm.header()->nslots, kMaxMappingSlots + 1);
  EXPECT_EQ(shm.header()->total_size, shm.size());
  EXPECT_EQ(check_shm(shm.header(), shm.size()), nullptr);
  EXPECT_EQ(check_shm(shm.header(), shm.size() + 4096), nullptr);
}

// Pages of [p, p + len) resident in memory (mincore()): for a shared
// anonymous mapping, the pages some process touched. -1 if mincore() fails.
long resident_pages(const void* p, std::uint64_t len) {
  const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> vec((len + page - 1) / page);
  if (::mincore(const_cast<void*>(p), len, vec.data()) != 0) return -1;
  return std::count_if(vec.begin(), vec.end(), [](unsigned char v) { return (v & 1) != 0; });
}

// The reload bridge's mapping (src/ngx_ipc_bridge.cpp): kMaxMappingSlots
// slots, an inbox of 64 KiB each. Its size grows with n, not n * n, and an
// inbox nobody writes costs no memory, only address space.
TEST(Bridge, BridgeSizedMappingCostsOnlyThePagesTouched) {
  constexpr std::uint32_t n = kMaxMappingSlots;
  constexpr std::uint64_t kBridgeRing = 64 * KiB;  // NGX_IPC_BRIDGE_RING
  test::Shm shm(test::make_config(n, kBridgeRing, 1 * MiB, 64 * KiB));
  ASSERT_NE(check_shm(shm.header(), shm.size()), nullptr);
  const ShmHeader* h = shm.header();
  EXPECT_EQ(h->ring_size, kBridgeRing);
  // Header, slots, inbox control blocks and three bits per (receiver,
  // sender) pair (two kinds of waiters, the ready bits), rounded up to a
  // page; then the inboxes, one ring per receiver.
  const std::uint64_t waiter_bytes = std::uint64_t{n} * 3 * (n / 64) * 8;
  const std::uint64_t ctl_part =
      sizeof(ShmHeader) + n * sizeof(Slot) + n * sizeof(InboxCtl) + waiter_bytes;
  EXPECT_EQ(h->data_offset, (ctl_part + 4095) / 4096 * 4096);
  EXPECT_LT(h->data_offset, 5 * MiB / 2);
  EXPECT_EQ(h->total_size, h->data_offset + n * kBridgeRing);  // 128 MiB + under 2.5 MiB
  EXPECT_EQ(shm.size(), h->total_size);
  // A fresh mapping: init_shm() wrote the header only.
  EXPECT_EQ(resident_pages(h, h->total_size), 1);

  const std::uint32_t last = n - 1;
  Slots woken_by_a, woken_by_z;
  Endpoint a(shm.header(), 0, nullptr);
  Endpoint z(shm.header(), last, nullptr);
  a.set_waker(&record_wake, &woken_by_a);
  z.set_waker(&record_wake, &woken_by_z);
  a.start(100);
  EXPECT_TRUE(woken_by_a.empty());
  // The last slot's second process: a successor wakes every slot once.
  Endpoint(shm.header(), last, nullptr).start(55);
  z.start(355);
  ASSERT_EQ(z.incarnation(), 2u);
  ASSERT_EQ(woken_by_z.size(), n);
  for (std::uint32_t k = 0; k < n; ++k) ASSERT_EQ(woken_by_z[k], k);
  woken_by_z.clear();

  Delivery out[4];
  ASSERT_EQ(z.receive(out, 4), 0);
  // The bridge addresses slots (send_slot), never looks a PID up.
  std::vector<unsigned char> data = test::make_message(0, 1, 3000);
  ASSERT_EQ(a.send_slot(last, 355, bytes("far"), 3, data.data(), data.size()), Status::kOk);
  EXPECT_EQ(woken_by_a, (Slots{last}));
  std::vector<Received> got = test::drain(z);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_TRUE(is_message(got[0], 0, 1, 3000));
  EXPECT_EQ(got[0].sender_pid, 100);

  // Slot 17 has no process: skipped, its inbox untouched.
  ASSERT_EQ(multicast_str(z, {0, 17, last}, "mc", "back"), Status::kOk);
  EXPECT_EQ(z.stats().sent, 1u);
  got = test::drain(a);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "back");
  EXPECT_EQ(got[0].sender_pid, 355);
  EXPECT_EQ(got[0].flags, static_cast<std::uint32_t>(kBroadcast));

  // Only the two inboxes written hold pages (one each: a record of 3 KiB,
  // one of a few bytes); the other 2046 cost nothing.
  long used = 0;
  for (std::uint32_t k = 0; k < n; ++k) {
    long pages = resident_pages(inbox_data(shm.header(), k), kBridgeRing);
    ASSERT_GE(pages, 0) << "mincore() failed";
    if (k == 0 || k == last) {
      EXPECT_EQ(pages, 1) << "inbox " << k;
    } else {
      ASSERT_EQ(pages, 0) << "inbox " << k << " was never written";
    }
    used += pages;
  }
  EXPECT_EQ(used, 2);
  // The control part: the header, two slots, two inboxes' control blocks
  // and waiter bits; a few pages of its 2.4 MiB.
  long ctl_pages = resident_pages(h, h->data_offset);
  EXPECT_GT(ctl_pages, 0);
  EXPECT_LE(ctl_pages, 8) << "of " << h->data_offset / 4096;
  std::printf("bridge-sized mapping: %llu bytes, %ld pages resident (%ld in the control part)\n",
              static_cast<unsigned long long>(h->total_size), ctl_pages + used, ctl_pages);

  // A send by PID looks the PID up in every slot's identity: that reads
  // the slot array (n * 256 bytes), still no inbox.
  ASSERT_EQ(test::send_str(a, 355, "by pid", "x"), Status::kOk);
  ASSERT_EQ(test::drain(z).size(), 1u);
  EXPECT_LE(resident_pages(h, h->data_offset),
            ctl_pages + static_cast<long>(n * sizeof(Slot) / 4096));
  EXPECT_EQ(resident_pages(inbox_data(shm.header(), 0), h->total_size - h->data_offset), 2);
}

}  // namespace
}  // namespace ngx_ipc
