// ngx_ipc core tests: sender and receiver loops for the stress tests, the
// same whether the endpoints run in threads or in fork()ed processes.
//
// They wait the way the nginx glue does: a receiver calls receive() until it
// returns 0 (which arms its slot's `sleeping` flag), then poll()s its
// eventfd; a sender whose backlog is at the limit (send() left it marked
// waiting for the inbox's lock, or for room in its ring) poll()s its
// eventfd and, woken, calls flush_ready(): only the inboxes whose turn came
// (its ready bits) are written, so a wake-up owed and not given stalls the
// loop, as it would stall a worker. Every poll has a timeout: a wake-up
// that does not come within it is reported as lost, and the loop fails
// instead of hanging.

#ifndef NGX_IPC_TEST_STRESS_H
#define NGX_IPC_TEST_STRESS_H

#include <cstdint>
#include <string>
#include <vector>

#include "ngx_ipc/endpoint.h"
#include "test_util.h"

namespace ngx_ipc::test {

// Sizes of the data of the messages of a stress run: most from min_size to
// small_max bytes, one in large_one_in up to large_max (fragmented in a small
// ring).
struct SizeMix {
  std::size_t small_max = 256;
  std::size_t large_max = 0;
  unsigned large_one_in = 0;          // 0: never large
  std::size_t min_size = kMsgHeader;  // = small_max: every message that size
  std::size_t size(std::uint64_t seed, std::uint32_t tag, std::uint64_t seq) const;
};

// Sends messages seq = 0 .. n-1 (tag `tag`, name "s<tag>") to `to`, then
// flushes the backlog. Returns "" or what went wrong.
std::string run_sender(Endpoint& ep, int wake_fd, std::int32_t to, std::uint32_t tag,
                       std::uint64_t n, std::uint64_t seed, const SizeMix& mix,
                       const Deadline& deadline);

struct Expect {
  std::int32_t pid;  // sender
  std::uint32_t tag;
  std::uint64_t n;  // messages, seq 0 .. n-1, in order
};
// Receives until every sender's messages have arrived, each byte-exact and in
// order. Returns "" or what went wrong.
std::string run_receiver(Endpoint& ep, int wake_fd, const std::vector<Expect>& senders,
                         const Deadline& deadline);

// Several senders into one inbox: slot `receiver` of w runs run_receiver()
// in the calling thread, each slot of `senders` run_sender() in a thread of
// its own, n messages each (tag: the sender's slot). Returns "" or what
// went wrong, side by side.
std::string run_fan_in_threads(World& w, std::uint32_t receiver,
                               const std::vector<std::uint32_t>& senders, std::uint64_t n,
                               std::uint64_t seed, const SizeMix& mix, const Deadline& deadline);

// Sends n messages to `peer` while receiving n from it (tag peer_tag), with
// the waits of both loops above combined. Returns "" or what went wrong.
std::string run_duplex(Endpoint& ep, int wake_fd, std::int32_t peer, std::uint32_t tag,
                       std::uint32_t peer_tag, std::uint64_t n, std::uint64_t seed,
                       const SizeMix& mix, const Deadline& deadline);

// Ping-pong: `rounds` requests from the initiator, each answered before the
// next is sent, so every message needs a wake-up of a sleeping receiver.
std::string run_pinger(Endpoint& ep, int wake_fd, std::int32_t peer, std::uint64_t rounds,
                       const Deadline& deadline);
std::string run_ponger(Endpoint& ep, int wake_fd, std::int32_t peer, std::uint64_t rounds,
                       const Deadline& deadline);

}  // namespace ngx_ipc::test

#endif  // NGX_IPC_TEST_STRESS_H
