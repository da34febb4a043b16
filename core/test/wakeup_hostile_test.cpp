// ngx_ipc core tests: the wake-up words another process writes (waiter
// bits, their flags, the cursors, the ready bits) hold garbage: every bit
// set, past the last slot too, and a cursor out of range. Nobody is woken
// who is not a slot, nothing is written past the ready bits, no endpoint
// reads past its own destinations (ASan), and messages go on. A lock word
// that names no writer is taken over by the retry sweep's probe.

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "ngx_ipc/endpoint.h"
#include "ngx_ipc/inbox_lock.h"
#include "test_util.h"

namespace ngx_ipc {
namespace {

using test::Received;
using test::World;

// Every bit of receiver r's waiter words and of every sender's ready
// words, both flags set, both cursors far out of range.
void fill_garbage(World& w, std::uint32_t r) {
  ShmHeader* h = w.shm().header();
  for (WaitFor k : {WaitFor::kLock, WaitFor::kRoom}) {
    std::atomic<std::uint64_t>* bits = waiter_bits(h, r, k);
    for (std::uint32_t i = 0; i < h->waiter_words; ++i) bits[i].store(~std::uint64_t{0});
    waiting_flag(w.shm().ctl(r), k).store(1);
    wake_cursor(w.shm().ctl(r), k).store(0xfffffff0u);
  }
  for (std::uint32_t s = 0; s < h->nslots; ++s) {
    std::atomic<std::uint64_t>* ready = ready_bits(h, s);
    for (std::uint32_t i = 0; i < h->waiter_words; ++i) ready[i].store(~std::uint64_t{0});
  }
}

// The bytes between the last ready word and the first inbox: zero, as
// init_shm() left them (a waker that took a bit past the last slot for a
// sender would set a ready bit there).
bool tail_is_zero(World& w) {
  ShmHeader* h = w.shm().header();
  const unsigned char* end =
      reinterpret_cast<const unsigned char*>(ready_bits(h, h->nslots - 1) + h->waiter_words);
  const unsigned char* data = reinterpret_cast<const unsigned char*>(h) + h->data_offset;
  for (const unsigned char* p = end; p < data; ++p) {
    if (*p != 0) return false;
  }
  return true;
}

TEST(WakeupHostile, GarbageWaiterAndReadyBitsWakeOnlySlots) {
  World w(3, 4096);
  ShmHeader* h = w.shm().header();
  ASSERT_LT(reinterpret_cast<unsigned char*>(ready_bits(h, 2) + h->waiter_words),
            reinterpret_cast<unsigned char*>(h) + h->data_offset)
      << "the test needs room after the ready bits to see a stray write";
  fill_garbage(w, 0);

  // Slot 1's send to slot 0 unlocks its inbox: the waker scans the garbage.
  // Round after round, it wakes slots 1 and 2 (bits that name slots), and
  // nobody else.
  for (int round = 0; round < 8; ++round) {
    SCOPED_TRACE(round);
    ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "m", std::to_string(round)), Status::kOk);
    // every endpoint reads its garbage ready bits: only its own
    // destinations are looked at
    for (std::uint32_t s = 0; s < 3; ++s) w.ep(s).flush_ready();
    EXPECT_TRUE(tail_is_zero(w));
    EXPECT_LT(wake_cursor(w.shm().ctl(0), WaitFor::kLock).load(), 4u);
  }
  std::vector<Received> got = test::drain(w.ep(0));
  ASSERT_EQ(got.size(), 8u);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(got[i].data, std::to_string(i));
  EXPECT_EQ(w.ep(0).stats().resets, 0u);

  // The receiver's releases scan the room bits the same way.
  fill_garbage(w, 0);
  ASSERT_EQ(test::send_str(w.ep(2), w.pid(0), "m", "after"), Status::kOk);
  got = test::drain(w.ep(0));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "after");
  EXPECT_TRUE(tail_is_zero(w));
}

TEST(WakeupHostile, BitsPastTheLastSlotAloneWakeNobody) {
  // Only the bits past slot 2 are set: the waker finds no sender and keeps
  // no flag set for them, so the next unlock does not scan again.
  World w(3, 4096);
  ShmHeader* h = w.shm().header();
  for (WaitFor k : {WaitFor::kLock, WaitFor::kRoom}) {
    waiter_bits(h, 0, k)[0].store(~std::uint64_t{7});
    waiting_flag(w.shm().ctl(0), k).store(1);
  }
  ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "m", "x"), Status::kOk);
  w.fds().take(0);
  for (std::uint32_t s = 1; s < 3; ++s) EXPECT_EQ(w.fds().take(s), 0u) << "slot " << s;
  EXPECT_EQ(w.shm().flag(0, WaitFor::kLock), 0u);
  EXPECT_TRUE(tail_is_zero(w));
  EXPECT_EQ(test::drain(w.ep(0)).size(), 1u);
}

TEST(WakeupHostile, ALockWordThatNamesNoWriterIsTakenOverByAProbe) {
  // Garbage in receiver 0's lock word: a slot past the last. A send keeps
  // its message (no probe on the send path); the retry sweep's probe finds
  // no such writer and takes the lock over; everything arrives.
  World w(3, 4096);
  for (std::uint64_t garbage : {make_writer(1000, 7), ~std::uint64_t{0}}) {
    SCOPED_TRACE(garbage);
    w.shm().ctl(0)->lock.store(garbage);
    ASSERT_EQ(test::send_str(w.ep(1), w.pid(0), "m", "held"), Status::kOk);
    EXPECT_GT(w.ep(1).stats().queued_bytes, 0u) << "not written past a held lock";
    EXPECT_FALSE(w.ep(1).retry_all()) << "first sweep: a new holder, left alone";
    EXPECT_TRUE(w.ep(1).retry_all()) << "the same word a whole tick: probed, taken over";
    std::vector<Received> got = test::drain(w.ep(0));
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].data, "held");
    EXPECT_EQ(w.shm().ctl(0)->lock.load(), 0u);
  }
}

}  // namespace
}  // namespace ngx_ipc
