// ngx_ipc core tests: what the bridge*_test.cpp files share beyond
// test_util.h. A waker that writes down the slots it was asked to wake, an
// alive check that says yes, a multicast of strings, a check that a message
// is exactly make_message's bytes, and a pump from one sender to several
// receivers.
//
// Header only: the tests that need it include it; it adds nothing to the
// support library every test links.

#ifndef NGX_IPC_TEST_BRIDGE_UTIL_H
#define NGX_IPC_TEST_BRIDGE_UTIL_H

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "ngx_ipc/endpoint.h"
#include "test_util.h"

namespace ngx_ipc::test {

using Slots = std::vector<std::uint32_t>;

// A waker that writes down the slots it was asked to wake.
inline void record_wake(void* ctx, std::uint32_t k) { static_cast<Slots*>(ctx)->push_back(k); }

inline bool always_alive(std::int32_t) { return true; }

inline const unsigned char* bytes(const std::string& s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

inline Status multicast_str(Endpoint& ep, const Slots& slots, const std::string& name,
                            const std::string& data) {
  return ep.multicast(slots.data(), nullptr, slots.size(), bytes(name), name.size(), bytes(data),
                      data.size());
}

// True if got is exactly one message of `want`'s bytes (make_message).
inline ::testing::AssertionResult is_message(const Received& got, std::uint32_t tag,
                                             std::uint64_t seq, std::size_t len) {
  std::vector<unsigned char> want = test::make_message(tag, seq, len);
  if (got.data.size() != want.size()) {
    return ::testing::AssertionFailure() << got.data.size() << " bytes, not " << want.size();
  }
  if (std::memcmp(got.data.data(), want.data(), want.size()) != 0) {
    return ::testing::AssertionFailure() << "the bytes differ";
  }
  return ::testing::AssertionSuccess();
}

// Flushes the sender and drains the receivers until the sender's backlog is
// empty and nothing more arrives, at most `rounds` times; got[i] collects
// what receivers[i] took. False if the backlog did not empty.
inline bool pump_all(Endpoint& sender, const std::vector<Endpoint*>& receivers,
                     std::vector<std::vector<Received>>* got, int rounds = 10000) {
  got->assign(receivers.size(), {});
  for (int i = 0; i < rounds; ++i) {
    bool flushed = sender.flush();
    bool more = false;
    for (std::size_t j = 0; j < receivers.size(); ++j) {
      std::vector<Received> m = test::drain(*receivers[j]);
      more = more || !m.empty();
      (*got)[j].insert((*got)[j].end(), m.begin(), m.end());
    }
    if (flushed && !more) return true;
  }
  return false;
}

}  // namespace ngx_ipc::test

#endif  // NGX_IPC_TEST_BRIDGE_UTIL_H
