// ngx_ipc core: the sleep/wake-up handshake (see wakeup.h).

#include "ngx_ipc/wakeup.h"

#include <unistd.h>

#include <cerrno>

namespace ngx_ipc {

void Wakeup::wake(std::uint32_t k) {
  if (waker_ != nullptr) {
    waker_(waker_ctx_, k);
    return;
  }
  if (k >= wake_fds_.size()) return;
  std::uint64_t one = 1;
  ssize_t n;
  do {
    n = ::write(wake_fds_[k], &one, sizeof one);
  } while (n < 0 && errno == EINTR);
  // EAGAIN: the eventfd counter is saturated, so the fd is readable anyway.
  if (n < 0 && errno != EAGAIN) (*log_)("write() to a wake-up fd failed", errno);
}

}  // namespace ngx_ipc
