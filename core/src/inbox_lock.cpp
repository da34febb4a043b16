// ngx_ipc core: an inbox lock's holder, alive or not (see inbox_lock.h).

#include "ngx_ipc/inbox_lock.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace ngx_ipc {

std::uint64_t process_start_time(std::int32_t pid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd == -1) return 0;
  char buf[1024];
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so
  // fields are counted from the last ')'; starttime is field 22.
  const char* p = std::strrchr(buf, ')');
  if (p == nullptr) return 0;
  for (int field = 2; field < 22; ++field) {
    p = std::strchr(p + 1, ' ');
    if (p == nullptr) return 0;
  }
  return std::strtoull(p + 1, nullptr, 10);
}

bool writer_alive(void* /* ctx */, ShmHeader* shm, std::uint64_t w) {
  std::uint32_t slot = writer_slot(w);
  if (slot >= shm->nslots) return false;  // not a writer id: nobody's
  Slot* s = slot_at(shm, slot);
  // Acquire: pairs with Endpoint::start()'s release store of the identity
  // (and so of start_time before it).
  std::uint64_t id = s->identity.load(std::memory_order_acquire);
  // A later process took the slot (the holder died), or the holder exited
  // (it never keeps the lock across a send, so it died holding it).
  if (identity_incarnation(id) != writer_incarnation(w) || identity_pid(id) == 0) return false;
  std::int32_t pid = identity_pid(id);
  if (::kill(pid, 0) == -1 && errno == ESRCH) return false;  // EPERM: alive, not ours
  // The PID names a process: the holder (or its zombie, until the master
  // reaps it), or another process that the kernel gave the PID since.
  std::uint64_t started = s->start_time.load(std::memory_order_relaxed);
  if (started == 0) return true;  // unknown: trust the PID
  std::uint64_t now = process_start_time(pid);
  return now == 0 || now == started;
}

}  // namespace ngx_ipc
