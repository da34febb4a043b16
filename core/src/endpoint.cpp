// ngx_ipc core: the per-process endpoint (see endpoint.h).

#include "ngx_ipc/endpoint.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>

namespace ngx_ipc {

const char* status_message(Status s) {
  switch (s) {
    case Status::kOk:
      return "ok";
    case Status::kNoSuchWorker:
      return "no such worker";
    case Status::kNameTooLong:
      return "name too long";
    case Status::kTooLarge:
      return "message too large";
    case Status::kQueueFull:
      return "queue full";
    case Status::kNoMemory:
      return "no memory";
    case Status::kEmptyName:
      return "empty name";
  }
  return "unknown error";
}

Endpoint::Endpoint(ShmHeader* shm, std::uint32_t self, const int* wake_fds, CoreStats* stats,
                   std::uint64_t* queued_msgs)
    : shm_(shm),
      self_(self),
      nslots_(shm->nslots),
      max_message_(shm->max_message),
      queue_limit_(shm->queue_limit),
      stats_(stats != nullptr ? stats : &slot_at(shm, self)->counters.core),
      wakeup_(shm, self, wake_fds, &log_),
      outbox_(shm, self, stats_,
              queued_msgs != nullptr ? queued_msgs : &slot_at(shm, self)->counters.queued_msgs,
              &wakeup_, &log_),
      inbox_(shm, self, stats_, &wakeup_, &log_),
      picked_(shm->nslots),
      pid_hint_(kPidHints, 0) {
  targets_.reserve(shm->nslots);
  incarnations_.reserve(shm->nslots);
}

Endpoint::~Endpoint() = default;

void Endpoint::start(std::int32_t pid, bool skip_unread) {
  Slot* me = slot_at(shm_, self_);
  // Only this slot's processes write its identity, one at a time (the next
  // one is forked after the previous one died), so load + store is enough.
  incarnation_ = identity_incarnation(me->identity.load(std::memory_order_relaxed)) + 1;
  if (incarnation_ == 0) incarnation_ = 1;  // 0 means "any" in a record
  pid_ = pid;
  outbox_.attach(incarnation_);
  inbox_.attach(incarnation_, skip_unread, max_message_);
  // Counters since this process started: the owner's plain stores (a
  // status reader may see a mix of old and zero meanwhile). A new process
  // has no backlog either.
  std::memset(static_cast<void*>(&me->counters), 0, sizeof me->counters);
  me->sleeping.store(0, std::memory_order_relaxed);
  // Only a real PID's start time is known (tests give made-up PIDs).
  me->start_time.store(pid == ::getpid() ? process_start_time(pid) : 0, std::memory_order_relaxed);
  // Release: publishes the slot's new identity after the state above.
  me->identity.store(make_identity(incarnation_, pid), std::memory_order_release);
  started_ = true;
  // A predecessor in this slot may have died in the middle of a wake-up
  // handshake; the first process of a slot has none (and with 1024
  // workers starting at once, n * n wake-ups cost seconds).
  if (incarnation_ > 1) {
    for (std::uint32_t k = 0; k < nslots_; ++k) wakeup_.wake(k);
  }
}

void Endpoint::stop() {
  if (!started_) return;
  slot_at(shm_, self_)->identity.store(make_identity(incarnation_, 0), std::memory_order_release);
  started_ = false;
}

std::int32_t Endpoint::slot_pid(std::uint32_t i) const {
  if (i >= nslots_) return 0;
  return identity_pid(slot_at(shm_, i)->identity.load(std::memory_order_acquire));
}

Status Endpoint::send(std::int32_t pid, const unsigned char* name, std::size_t name_len,
                      const unsigned char* data, std::size_t data_len, std::uint16_t flags,
                      std::uint32_t call_id) {
  if (name_len == 0) return refuse(Status::kEmptyName);
  if (name_len > kMaxNameLen) return refuse(Status::kNameTooLong);
  if (data_len > max_message_) return refuse(Status::kTooLarge);
  int k = slot_of(pid);
  if (k < 0) return refuse(Status::kNoSuchWorker);
  return send_slot(static_cast<std::uint32_t>(k), pid, name, name_len, data, data_len, flags,
                   call_id);
}

int Endpoint::slot_of(std::int32_t pid) const {
  if (pid <= 0) return -1;
  // One load when the hint holds (a worker sends to the same few PIDs);
  // a scan of every slot's identity otherwise.
  std::uint16_t& hint = pid_hint_[static_cast<std::uint32_t>(pid) % kPidHints];
  if (hint != 0 && hint <= nslots_ &&
      identity_pid(slot_at(shm_, hint - 1u)->identity.load(std::memory_order_acquire)) == pid) {
    return hint - 1;
  }
  int k = find_slot(pid);
  if (k >= 0) hint = static_cast<std::uint16_t>(k + 1);
  return k;
}

int Endpoint::find_slot(std::int32_t pid) const {
  for (std::uint32_t k = 0; k < nslots_; ++k) {
    // Acquire: pairs with start()'s release store of the identity.
    if (identity_pid(slot_at(shm_, k)->identity.load(std::memory_order_acquire)) == pid) {
      return static_cast<int>(k);
    }
  }
  return -1;
}

Status Endpoint::send_slot(std::uint32_t k, std::int32_t pid, const unsigned char* name,
                           std::size_t name_len, const unsigned char* data, std::size_t data_len,
                           std::uint16_t flags, std::uint32_t call_id) {
  if (name_len == 0) return refuse(Status::kEmptyName);
  if (name_len > kMaxNameLen) return refuse(Status::kNameTooLong);
  if (data_len > max_message_) return refuse(Status::kTooLarge);
  if (k >= nslots_ || pid <= 0) return refuse(Status::kNoSuchWorker);
  // Acquire: pairs with start()'s release store of the identity.
  std::uint64_t id = slot_at(shm_, k)->identity.load(std::memory_order_acquire);
  if (identity_pid(id) != pid) return refuse(Status::kNoSuchWorker);
  if (outbox_.backlog_bytes(k) >= queue_limit_) {
    return refuse(full_for_the_dead(k) ? Status::kNoSuchWorker : Status::kQueueFull);
  }

  MessageMeta meta;
  meta.flags = flags;
  meta.sender_pid = pid_;
  meta.target_incarnation = identity_incarnation(id);
  meta.name_len = static_cast<std::uint32_t>(name_len);
  meta.call_id = call_id;
  meta.sender_slot = self_;
  meta.sender_incarnation = incarnation_;
  meta.total_len = name_len + data_len;
  Status s = outbox_.send(k, meta, name, data, data_len);
  if (s != Status::kOk) return refuse(s);
  return Status::kOk;
}

bool Endpoint::slot_exited(std::uint32_t k) const {
  std::uint64_t id = slot_at(shm_, k)->identity.load(std::memory_order_acquire);
  return identity_pid(id) == 0 && identity_incarnation(id) != 0;
}

Status Endpoint::broadcast(const unsigned char* name, std::size_t name_len,
                           const unsigned char* data, std::size_t data_len, bool include_self) {
  if (name_len == 0) return refuse(Status::kEmptyName);
  if (name_len > kMaxNameLen) return refuse(Status::kNameTooLong);
  if (data_len > max_message_) return refuse(Status::kTooLarge);
  // Every slot, except ours if asked, and those whose process exited cleanly
  // (nginx is stopping or reloading: nobody will read them again). A slot not
  // started yet, or whose process crashed, keeps its messages for the next
  // process there.
  targets_.clear();
  for (std::uint32_t k = 0; k < nslots_; ++k) {
    if (!include_self && k == self_) continue;
    if (k != self_ && slot_exited(k)) continue;
    // All or nothing: check every destination before queueing for any. A
    // full backlog for a process that died (and that nobody respawns, as in
    // an old generation) is dropped, and the slot skipped, so it does not
    // block everyone's broadcasts.
    if (outbox_.backlog_bytes(k) >= queue_limit_) {
      if (!full_for_the_dead(k)) return refuse(Status::kQueueFull);
      continue;
    }
    targets_.push_back(k);
  }
  MessageMeta meta;
  meta.flags = kBroadcast;
  meta.sender_pid = pid_;
  meta.target_incarnation = 0;
  meta.name_len = static_cast<std::uint32_t>(name_len);
  meta.sender_slot = self_;
  meta.sender_incarnation = incarnation_;
  meta.total_len = name_len + data_len;
  return deliver_all(meta, nullptr, name, data, data_len);
}

Status Endpoint::check_room(const std::uint32_t* slots, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t k = slots[i];
    if (k >= nslots_ || k == self_) continue;
    if (outbox_.backlog_bytes(k) >= queue_limit_ && !full_for_the_dead(k)) {
      return refuse(Status::kQueueFull);
    }
  }
  return Status::kOk;
}

Status Endpoint::multicast(const std::uint32_t* slots, const std::int32_t* pids, std::size_t n,
                           const unsigned char* name, std::size_t name_len,
                           const unsigned char* data, std::size_t data_len) {
  if (name_len == 0) return refuse(Status::kEmptyName);
  if (name_len > kMaxNameLen) return refuse(Status::kNameTooLong);
  if (data_len > max_message_) return refuse(Status::kTooLarge);
  targets_.clear();
  incarnations_.clear();
  bool full = false;
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t k = slots[i];
    if (k >= nslots_ || k == self_ || picked_[k]) continue;  // each slot once
    picked_[k] = 1;
    // Acquire: pairs with start()'s release store of the identity.
    std::uint64_t id = slot_at(shm_, k)->identity.load(std::memory_order_acquire);
    if (identity_pid(id) == 0) continue;
    // Another process than the one listed holds the slot now: skipped.
    if (pids != nullptr && identity_pid(id) != pids[i]) continue;
    if (outbox_.backlog_bytes(k) >= queue_limit_) {
      if (!full_for_the_dead(k)) {
        full = true;
        break;
      }
      continue;
    }
    targets_.push_back(k);
    incarnations_.push_back(identity_incarnation(id));
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (slots[i] < nslots_) picked_[slots[i]] = 0;
  }
  if (full) return refuse(Status::kQueueFull);
  MessageMeta meta;
  meta.flags = kBroadcast;
  meta.sender_pid = pid_;
  meta.name_len = static_cast<std::uint32_t>(name_len);
  meta.sender_slot = self_;
  meta.sender_incarnation = incarnation_;
  meta.total_len = name_len + data_len;
  return deliver_all(meta, incarnations_.data(), name, data, data_len);
}

// Sends meta's message to every slot in targets_ (with incarnations[i] for
// targets_[i], or meta's own). All or none: room for a copy of the payload
// is made before anything is written, so once the first destination has
// the message nothing can fail; the copy is made only if a destination
// keeps a rest in its backlog, and every such backlog shares it. The room
// is kept for the next broadcast while no backlog holds it (no allocation
// per broadcast), unless it is over 1 MiB.
Status Endpoint::deliver_all(const MessageMeta& meta, const std::uint32_t* incarnations,
                             const unsigned char* name, const unsigned char* data,
                             std::size_t data_len) {
  if (!bcast_room_ || bcast_room_.use_count() > 1 || bcast_cap_ < meta.total_len) {
    std::uint64_t cap = meta.total_len < 4096 ? 4096 : meta.total_len;
    bcast_room_.reset(new (std::nothrow) unsigned char[cap]);
    bcast_cap_ = bcast_room_ ? cap : 0;
    if (!bcast_room_) {
      log_("no memory for a broadcast", ENOMEM);
      return refuse(Status::kNoMemory);
    }
  }
  SharedPayload shared{bcast_room_, false};
  MessageMeta m = meta;
  for (std::size_t i = 0; i < targets_.size(); ++i) {
    if (incarnations != nullptr) m.target_incarnation = incarnations[i];
    // (kNoMemory here: a backlog's entry could not be made; that slot
    // misses it, and the log says so)
    (void)outbox_.send(targets_[i], m, name, data, data_len, &shared);
  }
  if (bcast_cap_ > (1u << 20)) {
    bcast_room_.reset();
    bcast_cap_ = 0;
  }
  return Status::kOk;
}

// Called when slot k's backlog is at the limit: if the process in slot k is
// gone (kill(pid, 0) fails with ESRCH), nothing will ever drain that backlog
// before a successor takes the slot, so it is dropped and counted. A syscall,
// but only on this path, never per message.
bool Endpoint::full_for_the_dead(std::uint32_t k) {
  if (k == self_) return false;
  std::int32_t pid = slot_pid(k);
  if (pid > 0 && (slot_alive_ != nullptr ? slot_alive_(alive_ctx_, k, pid) : alive_(pid))) {
    return false;
  }
  outbox_.drop_backlog(k);
  return true;
}

bool Endpoint::process_alive(std::int32_t pid) {
  return ::kill(pid, 0) == 0 || errno != ESRCH;  // EPERM: alive, not ours
}

// Each destination with a backlog, in slot order: fn(k), or the backlog
// dropped if k's process exited cleanly (nobody will read it). True if
// every fn(k) was.
template <typename Fn>
bool Endpoint::each_backlog(Fn fn) {
  if (outbox_.idle()) return true;  // no O(n) walk when nothing waits
  bool all = true;
  for (std::uint32_t k = 0; k < nslots_; ++k) {
    if (outbox_.backlog_empty(k)) continue;
    if (k != self_ && slot_exited(k)) {
      outbox_.drop_backlog(k);
      continue;
    }
    all = fn(k) && all;
  }
  return all;
}

bool Endpoint::retry_all() {
  return each_backlog([this](std::uint32_t k) { return outbox_.retry(k); });
}

bool Endpoint::flush(bool probe) {
  return each_backlog([this, probe](std::uint32_t k) { return outbox_.flush(k, probe); });
}

}  // namespace ngx_ipc
