// ngx_ipc core: sizing and initialisation of the shared-memory layout.

#include "ngx_ipc/layout.h"

namespace ngx_ipc {

std::uint64_t floor_pow2(std::uint64_t n) {
  std::uint64_t p = 1;
  while (p <= n / 2) p <<= 1;
  return p;
}

std::uint64_t default_ring_size(std::uint32_t nslots) {
  std::uint64_t size = floor_pow2(kRingBudget / (nslots == 0 ? 1 : nslots));
  if (size < kDefaultRingMin) size = kDefaultRingMin;
  if (size > kDefaultRingMax) size = kDefaultRingMax;
  return size;
}

std::uint64_t effective_ring_size(std::uint32_t nslots, std::uint64_t requested) {
  if (requested == 0) return default_ring_size(nslots);
  if (requested < kMinRingSize) return kMinRingSize;
  if (requested > kMaxRingSize) return kMaxRingSize;
  return floor_pow2(requested);
}

static std::uint64_t round_up(std::uint64_t n, std::uint64_t to) { return (n + to - 1) / to * to; }

Layout compute_layout(const Config& config) {
  Layout l{};
  l.nslots = config.nslots;
  l.ring_size = effective_ring_size(config.nslots, config.ring_size);
  // a bit per slot, in whole cache lines: two kinds of waiters per
  // receiver, then the ready bits per sender
  l.waiter_words = static_cast<std::uint32_t>(round_up((l.nslots + 63) / 64, 8));
  l.slots_offset = sizeof(ShmHeader);
  l.ctl_offset = l.slots_offset + l.nslots * sizeof(Slot);
  l.waiters_offset = l.ctl_offset + l.nslots * sizeof(InboxCtl);
  // Inbox data starts on a page so each inbox's pages are its own.
  l.data_offset =
      round_up(l.waiters_offset + std::uint64_t{l.nslots} * 3 * l.waiter_words * 8, 4096);
  l.total_size = l.data_offset + std::uint64_t{l.nslots} * l.ring_size;
  return l;
}

ShmHeader* init_shm(void* base, const Config& config) {
  Layout l = compute_layout(config);
  auto* h = static_cast<ShmHeader*>(base);
  h->magic = kShmMagic;
  h->version = kShmVersion;
  h->nslots = l.nslots;
  h->ring_size = l.ring_size;
  h->max_message = config.max_message;
  h->queue_limit = config.queue_limit;
  h->slots_offset = l.slots_offset;
  h->ctl_offset = l.ctl_offset;
  h->waiters_offset = l.waiters_offset;
  h->waiter_words = l.waiter_words;
  h->data_offset = l.data_offset;
  h->total_size = l.total_size;
  h->generation = config.generation;
  h->busy_poll_us = config.busy_poll_us;
  return h;
}

const ShmHeader* check_shm(const void* base, std::uint64_t mapped_size) {
  const auto* h = static_cast<const ShmHeader*>(base);
  if (base == nullptr || mapped_size < sizeof(ShmHeader)) return nullptr;
  if (h->magic != kShmMagic || h->version != kShmVersion) return nullptr;
  if (h->nslots == 0 || h->nslots > kMaxMappingSlots) return nullptr;
  Config c;
  c.nslots = h->nslots;
  c.ring_size = h->ring_size;
  Layout l = compute_layout(c);
  if (l.ring_size != h->ring_size || l.total_size != h->total_size ||
      l.slots_offset != h->slots_offset || l.ctl_offset != h->ctl_offset ||
      l.waiters_offset != h->waiters_offset || l.waiter_words != h->waiter_words ||
      l.data_offset != h->data_offset || h->total_size > mapped_size) {
    return nullptr;
  }
  return h;
}

}  // namespace ngx_ipc
