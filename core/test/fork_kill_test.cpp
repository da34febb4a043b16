// ngx_ipc core tests: a writer process stopped or killed at chosen points of
// a write into an inbox, under its lock (inbox_lock.h).
//
// The writer is a child that takes the lock and writes by hand (InboxLock,
// InboxWriter: the steps Outbox takes for one message), then stops itself
// (SIGSTOP) at the point under test:
//   - copying: its records written, none published;
//   - second fragment: the first fragment published, the second written
//     and not published, the lock still held;
//   - between fragments: the first fragment published and the lock given
//     back (a sender waiting for room does that);
//   - publishing: the whole message written, killed inside publish()
//     between its two stores (the message count, then head).
// The parent then kills it, or lets it go on (SIGCONT), and checks what the
// other processes see: a lock that only a flush(true) takes over, and only
// from a holder that is gone (its slot names another incarnation, or its
// PID is no process: a zombie still is one); nothing it did not publish;
// its partial message never delivered, counted as dropped when its slot's
// next process sends; everyone else's messages, whole and in order; and
// the status page's message counts back in step once the lock is taken
// over (a writer killed between its two stores leaves them apart).

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "fork_util.h"
#include "ngx_ipc/endpoint.h"
#include "ngx_ipc/inbox_lock.h"
#include "ngx_ipc/ring.h"
#include "ngx_ipc/status.h"
#include "ngx_ipc/wakeup.h"
#include "test_util.h"

namespace ngx_ipc {
namespace {

using test::Child;
using test::Received;
using test::World;

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t MiB = 1024 * KiB;

// Slots of these tests: 0 receives (this process), 1 is the writer that is
// stopped or killed (a child), 2 another sender and 3 another receiver
// (endpoints of this process too, with made-up PIDs).
constexpr std::uint32_t kReceiver = 0, kVictim = 1, kOther = 2, kElsewhere = 3;
constexpr std::uint64_t kRing = 16 * KiB;
constexpr std::size_t kVictimData = 12 * KiB;  // two fragments of about 6 KiB

enum class Stage { kCopying, kSecondFragment, kBetweenFragments, kPublishing };

const char* stage_name(Stage s) {
  switch (s) {
    case Stage::kCopying:
      return "copying";
    case Stage::kSecondFragment:
      return "second fragment";
    case Stage::kBetweenFragments:
      return "between fragments";
    case Stage::kPublishing:
      return "publishing";
  }
  return "?";
}

// True if sender s is marked waiting for receiver r's lock.
bool waits_for_lock(test::Shm& shm, std::uint32_t r, std::uint32_t s) {
  std::uint64_t bits = waiter_bits(shm.header(), r, WaitFor::kLock)[s / 64].load();
  return (bits >> (s % 64) & 1) != 0 && shm.ctl(r)->lock_waiting.load() != 0;
}

Payload bytes_of(const unsigned char* p, std::uint64_t n) { return Payload{p, n, nullptr, 0}; }

// In the child of slot kVictim: starts its endpoint, writes one message
// ("dead", kVictimData bytes) into the receiver's inbox by hand up to
// `stage`, then stops itself (stop_here(note)). If continued, it finishes
// the message as Outbox would: publishes, unlocks, wakes.
int victim(World& w, int note, Stage stage) {
  Endpoint& e = w.ep(kVictim);
  e.start(getpid());
  ShmHeader* shm = w.shm().header();
  const std::string name = "dead";
  const std::vector<unsigned char> data = test::make_message(kVictim, 0, kVictimData);
  std::vector<unsigned char> payload(name.begin(), name.end());
  payload.insert(payload.end(), data.begin(), data.end());
  MessageMeta m;
  m.sender_pid = getpid();
  m.target_incarnation = identity_incarnation(w.shm().slot(kReceiver)->identity.load());
  m.name_len = static_cast<std::uint32_t>(name.size());
  m.sender_slot = kVictim;
  m.sender_incarnation = e.incarnation();
  m.total_len = payload.size();
  const std::uint64_t half = payload.size() / 2, rest = payload.size() - half;

  std::uint64_t holder = 0;
  CHILD_CHECK(InboxLock::try_lock(shm, kReceiver, make_writer(kVictim, e.incarnation()), false,
                                  &writer_alive, nullptr, &holder));
  InboxWriter wr;
  wr.attach(w.shm().ctl(kReceiver), w.shm().data(kReceiver), shm->ring_size);
  wr.begin();
  CHILD_CHECK(wr.write(m, bytes_of(payload.data(), half), 0) == half);
  if (stage == Stage::kSecondFragment || stage == Stage::kBetweenFragments) {
    CHILD_CHECK(wr.publish());
  }
  if (stage == Stage::kBetweenFragments) {
    InboxLock::unlock(shm, kReceiver);
    test::stop_here(note);
    return 0;  // killed before
  }
  CHILD_CHECK(wr.write(m, bytes_of(payload.data() + half, rest), half) == rest);
  if (stage == Stage::kPublishing) {
    // InboxWriter::publish()'s first store, the message count; killed
    // before its second, head.
    InboxCtl* c = w.shm().ctl(kReceiver);
    c->head_msgs.store(c->head_msgs.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
  test::stop_here(note);
  // Continued: the end of Outbox::send().
  CHILD_CHECK(wr.publish());
  InboxLock::unlock(shm, kReceiver);
  CoreLog log;
  Wakeup(shm, kVictim, w.fds().fds(), &log).after_write(kReceiver, true);
  return 0;
}

// In the child of slot kVictim, as a reader: reads every record of its
// inbox by hand (Consumer) and gives the space back as release() does, up
// to its first store (tail; tail_msgs is the second), then stops itself.
int reader_victim(World& w, int note) {
  Endpoint& e = w.ep(kVictim);
  e.start(getpid());
  InboxCtl* c = w.shm().ctl(kVictim);
  Consumer reader;
  reader.attach(c, w.shm().data(kVictim), w.shm().header()->ring_size, 1 * MiB, w.nslots());
  RecordView v;
  int records = 0;
  while (reader.next(&v) == Consumer::Next::kRecord) ++records;
  CHILD_CHECK(records > 0);
  c->tail.store(c->head.load(), std::memory_order_release);
  test::stop_here(note);
  return 0;
}

// The parent's side: the mapping, the endpoints of this process, and the
// victim stopped at its stage.
class ForkKill : public ::testing::Test {
 protected:
  ForkKill() : w_(4, kRing, 1 * MiB, 1 * MiB, /*start_all=*/false), note_(1) {
    w_.start(kReceiver, getpid());
    w_.start(kOther, 10000 + kOther);
    w_.start(kElsewhere, 10000 + kElsewhere);
  }

  // Forks the victim and waits until it stopped at `stage`.
  void start_victim(Stage stage) {
    victim_ = std::make_unique<Child>([this, stage] { return victim(w_, note_[0], stage); });
    ASSERT_TRUE(test::wait_stopped(*victim_, note_[0])) << stage_name(stage);
    for (std::uint32_t k = 0; k < w_.nslots(); ++k) w_.fds().take(k);  // its start()'s
  }

  // What the receiver got, checked: never the victim's message, every
  // other one byte for byte.
  std::vector<Received> receive_checked(Endpoint& sender) {
    bool ok = false;
    std::vector<Received> got = test::pump(sender, receiver(), &ok);
    EXPECT_TRUE(ok) << "the backlog did not empty";
    for (const Received& r : got) EXPECT_NE(r.name, "dead") << "the dead writer's message";
    return got;
  }

  // Two messages from kOther: one whole, one in fragments (more than the
  // ring). Both stay in its backlog while the lock is taken.
  void send_from_other() {
    ASSERT_EQ(test::send_str(other(), getpid(), "a", "first"), Status::kOk);
    ASSERT_EQ(test::send_bytes(other(), getpid(), "b", big_), Status::kOk);
  }
  void expect_from_other(const std::vector<Received>& got, std::size_t at) {
    ASSERT_GE(got.size(), at + 2);
    EXPECT_EQ(got[at].name, "a");
    EXPECT_EQ(got[at].data, "first");
    EXPECT_EQ(got[at + 1].name, "b");
    test::MsgId id;
    EXPECT_TRUE(test::parse_message(reinterpret_cast<const unsigned char*>(got[at + 1].data.data()),
                                    got[at + 1].data.size(), &id));
    EXPECT_EQ(got[at + 1].data.size(), big_.size());
    EXPECT_EQ(got[at + 1].sender_pid, w_.pid(kOther));
  }

  Endpoint& receiver() { return w_.ep(kReceiver); }
  Endpoint& other() { return w_.ep(kOther); }
  InboxCtl* inbox() { return w_.shm().ctl(kReceiver); }
  // The victim's writer id: slot kVictim, its first incarnation.
  static std::uint64_t victim_id() { return make_writer(kVictim, 1); }

  World w_;
  test::EventFds note_;
  std::unique_ptr<Child> victim_;
  const std::vector<unsigned char> big_ = test::make_message(kOther, 1, 20 * KiB);
};

enum class TakeOver { kAfterReaping, kAfterRespawn };

class ForkKillHolder : public ForkKill,
                       public ::testing::WithParamInterface<std::tuple<Stage, TakeOver>> {};

// A writer killed while it holds the lock: nobody else takes the lock
// while the dead one may still run (stopped, or killed and not reaped);
// flush(false) never does; flush(true) does once its slot names another
// incarnation (respawned) or its PID is no process (reaped).
TEST_P(ForkKillHolder, OnlyAProbingFlushTakesTheLockOverOnceTheHolderIsGone) {
  const Stage stage = std::get<0>(GetParam());
  const TakeOver take_over = std::get<1>(GetParam());
  ASSERT_NO_FATAL_FAILURE(start_victim(stage));
  ASSERT_EQ(inbox()->lock.load(), victim_id());
  // Nothing unpublished is visible; a published first fragment is, but
  // no message is delivered.
  EXPECT_EQ(inbox()->head.load() != 0, stage == Stage::kSecondFragment);
  EXPECT_TRUE(test::drain(receiver()).empty());
  EXPECT_EQ(receiver().stats().dropped, 0u);

  // The lock is taken: everything waits in kOther's backlog, marked
  // waiting for the lock.
  ASSERT_NO_FATAL_FAILURE(send_from_other());
  EXPECT_EQ(other().backlog_bytes(kReceiver), 1 + 5 + 1 + big_.size());
  EXPECT_TRUE(waits_for_lock(w_.shm(), kReceiver, kOther));
  // Stopped is alive: no take-over, with probe or without.
  EXPECT_FALSE(other().flush());
  EXPECT_FALSE(other().flush(true));
  EXPECT_EQ(inbox()->lock.load(), victim_id());

  // Killed, not reaped: alive for kill(pid, 0) still.
  victim_->kill_now();
  EXPECT_FALSE(other().flush(true));
  EXPECT_EQ(inbox()->lock.load(), victim_id());

  if (take_over == TakeOver::kAfterReaping) {
    int status = 0;
    ASSERT_TRUE(victim_->wait(10000, &status));
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    EXPECT_FALSE(other().flush()) << "a flush without probe never takes a lock over";
    EXPECT_EQ(inbox()->lock.load(), victim_id());
    other().flush(true);  // its slot names the dead PID: ESRCH
    EXPECT_NE(inbox()->lock.load(), victim_id());
    w_.respawn(kVictim, 20000 + kVictim);
  } else {
    // The slot's next process (a zombie's slot: nginx reaps first, but
    // the incarnation alone tells).
    w_.respawn(kVictim, 20000 + kVictim);
    EXPECT_FALSE(other().flush()) << "a flush without probe never takes a lock over";
    EXPECT_EQ(inbox()->lock.load(), victim_id());
    other().flush(true);
    EXPECT_NE(inbox()->lock.load(), victim_id());
    int status = 0;
    ASSERT_TRUE(victim_->wait(10000, &status));
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  }
  EXPECT_FALSE(waits_for_lock(w_.shm(), kReceiver, kOther));

  // kOther's messages arrive, whole and in order; the dead writer's bytes
  // past the published head were overwritten, never read as records.
  std::vector<Received> got = receive_checked(other());
  ASSERT_EQ(got.size(), 2u);
  expect_from_other(got, 0);
  EXPECT_EQ(receiver().stats().resets, 0u);
  EXPECT_EQ(receiver().stats().dropped, 0u) << "a partial message is counted at its sender's next";

  // The slot's next process sends: the partial message (if any) is
  // dropped and counted, and the new one delivered.
  ASSERT_EQ(test::send_str(w_.ep(kVictim), getpid(), "next", "from incarnation 2"), Status::kOk);
  got = receive_checked(w_.ep(kVictim));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].name, "next");
  EXPECT_EQ(got[0].data, "from incarnation 2");
  EXPECT_EQ(got[0].sender_pid, 20000 + static_cast<std::int32_t>(kVictim));
  EXPECT_EQ(receiver().stats().dropped, stage == Stage::kSecondFragment ? 1u : 0u);
  EXPECT_EQ(receiver().stats().received, 3u);
  EXPECT_EQ(receiver().stats().resets, 0u);
  EXPECT_EQ(inbox()->lock.load(), 0u);
}

INSTANTIATE_TEST_SUITE_P(
    Stages, ForkKillHolder,
    ::testing::Combine(::testing::Values(Stage::kCopying, Stage::kSecondFragment),
                       ::testing::Values(TakeOver::kAfterReaping, TakeOver::kAfterRespawn)),
    [](const ::testing::TestParamInfo<ForkKillHolder::ParamType>& p) {
      std::string s = std::get<0>(p.param) == Stage::kCopying ? "Copying" : "SecondFragment";
      return s + (std::get<1>(p.param) == TakeOver::kAfterReaping ? "Reaped" : "Respawned");
    });

// A writer killed between two fragments of a message, not holding the
// lock (it gave it back to wait for room): nobody waits for it; its partial
// message is dropped at its slot's next message.
TEST_F(ForkKill, KilledBetweenFragmentsHoldsNothingUp) {
  ASSERT_NO_FATAL_FAILURE(start_victim(Stage::kBetweenFragments));
  EXPECT_EQ(inbox()->lock.load(), 0u);
  EXPECT_TRUE(test::drain(receiver()).empty());
  ASSERT_NO_FATAL_FAILURE(test::kill_and_reap(*victim_));
  ASSERT_NO_FATAL_FAILURE(send_from_other());
  std::vector<Received> got = receive_checked(other());
  ASSERT_EQ(got.size(), 2u);
  expect_from_other(got, 0);
  EXPECT_EQ(receiver().stats().dropped, 0u);

  w_.respawn(kVictim, 20000 + kVictim);
  ASSERT_EQ(test::send_str(w_.ep(kVictim), getpid(), "next", "x"), Status::kOk);
  got = receive_checked(w_.ep(kVictim));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].name, "next");
  EXPECT_EQ(receiver().stats().dropped, 1u);
  EXPECT_EQ(receiver().stats().resets, 0u);
}

// Fails (a core bug, in the report): a writer killed inside publish(),
// between its store of head_msgs and its store of head, leaves head_msgs
// counting a message that was never published, and every later holder
// counts on from there: the status page shows a message waiting in an
// inbox that holds none, for good. Everything else is right: the message
// itself is never seen, the others arrive.
TEST_F(ForkKill, KilledInsidePublishLeavesNoPhantomWaitingMessage) {
  ASSERT_NO_FATAL_FAILURE(start_victim(Stage::kPublishing));
  ASSERT_EQ(inbox()->lock.load(), victim_id());
  EXPECT_EQ(inbox()->head.load(), 0u);
  EXPECT_EQ(inbox()->head_msgs.load(), 1u);
  ASSERT_NO_FATAL_FAILURE(test::kill_and_reap(*victim_));
  ASSERT_NO_FATAL_FAILURE(send_from_other());
  other().flush(true);
  std::vector<Received> got = receive_checked(other());
  ASSERT_EQ(got.size(), 2u);
  expect_from_other(got, 0);
  EXPECT_FALSE(receiver().inbox_pending());

  InboxStatus st;
  ASSERT_TRUE(read_inbox(w_.shm().header(), kReceiver, &st));
  EXPECT_EQ(st.used, 0u);
  EXPECT_EQ(st.waiting, 0u) << "a message never published is counted as waiting";
}

// Fails (the same bug, the reader's side): a reader killed inside
// release(), between its store of tail and its store of tail_msgs, leaves
// tail_msgs short of what it read; its successor counts on from there,
// and the status page shows as waiting messages that were read.
TEST_F(ForkKill, ReaderKilledInsideReleaseLeavesNoPhantomWaitingMessage) {
  // Two broadcasts: kept in kVictim's inbox for the process to come.
  ASSERT_EQ(test::broadcast_str(other(), "b", "one", false), Status::kOk);
  ASSERT_EQ(test::broadcast_str(other(), "b", "two", false), Status::kOk);
  victim_ = std::make_unique<Child>([this] { return reader_victim(w_, note_[0]); });
  ASSERT_TRUE(test::wait_stopped(*victim_, note_[0]));
  ASSERT_NO_FATAL_FAILURE(test::kill_and_reap(*victim_));

  // Its successor: nothing left to read, nothing waiting.
  Endpoint& next = w_.respawn(kVictim, 20000 + kVictim);
  EXPECT_TRUE(test::drain(next).empty());
  EXPECT_EQ(next.stats().received, 0u);
  InboxStatus st;
  ASSERT_TRUE(read_inbox(w_.shm().header(), kVictim, &st));
  EXPECT_EQ(st.used, 0u);
  EXPECT_EQ(st.waiting, 0u) << "messages read are counted as waiting";
}

// A holder that is only stopped (SIGSTOP: alive) keeps its lock: no flush
// takes it over, other inboxes' traffic flows, and once it goes on
// (SIGCONT) its unlock wakes the sender that waits, and everything arrives.
TEST_F(ForkKill, StoppedHolderKeepsItsLockAndTheRestFlows) {
  ASSERT_NO_FATAL_FAILURE(start_victim(Stage::kSecondFragment));
  ASSERT_EQ(inbox()->lock.load(), victim_id());
  ASSERT_NO_FATAL_FAILURE(send_from_other());
  for (int i = 0; i < 5; ++i) {
    EXPECT_FALSE(other().flush(true)) << "try " << i;
    EXPECT_EQ(inbox()->lock.load(), victim_id());
  }
  EXPECT_TRUE(test::drain(receiver()).empty());

  // Other inboxes: kElsewhere's, and the stopped process's own.
  Endpoint& elsewhere = w_.ep(kElsewhere);
  ASSERT_EQ(test::send_str(other(), elsewhere.pid(), "e", "from other"), Status::kOk);
  ASSERT_EQ(test::send_str(receiver(), elsewhere.pid(), "e", "from receiver"), Status::kOk);
  ASSERT_EQ(test::send_str(elsewhere, other().pid(), "o", "from elsewhere"), Status::kOk);
  ASSERT_EQ(test::send_str(other(), victim_->pid(), "v", "for the stopped one"), Status::kOk);
  EXPECT_EQ(other().backlog_bytes(kElsewhere), 0u);
  EXPECT_EQ(other().backlog_bytes(kVictim), 0u);
  std::vector<Received> got = test::drain(elsewhere);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].data, "from other");
  EXPECT_EQ(got[1].data, "from receiver");
  got = test::drain(other());
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "from elsewhere");
  EXPECT_EQ(w_.shm().ctl(kVictim)->head_msgs.load(), 1u);

  // It goes on: its unlock wakes kOther, waiting for the lock.
  for (std::uint32_t k = 0; k < w_.nslots(); ++k) w_.fds().take(k);
  test::continue_child(*victim_);
  ASSERT_TRUE(test::wait_fd(w_.fds()[kOther], test::kWakeTimeoutMs))
      << "the holder's unlock did not wake the sender waiting for its lock";
  ASSERT_NO_FATAL_FAILURE(test::expect_exit0(*victim_, 10000));
  EXPECT_EQ(inbox()->lock.load(), 0u);

  bool ok = false;
  got = test::pump(other(), receiver(), &ok);
  ASSERT_TRUE(ok);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].name, "dead");
  test::MsgId id;
  EXPECT_TRUE(test::parse_message(reinterpret_cast<const unsigned char*>(got[0].data.data()),
                                  got[0].data.size(), &id));
  EXPECT_EQ(got[0].data.size(), kVictimData);
  EXPECT_EQ(got[0].sender_pid, victim_->pid());
  expect_from_other(got, 1);
  EXPECT_EQ(receiver().stats().dropped, 0u);
  EXPECT_EQ(receiver().stats().resets, 0u);
}

}  // namespace
}  // namespace ngx_ipc
