// The floor for ngx_ipc's wake-up design: two processes ping-pong through
// eventfds, each blocked in epoll_wait like an nginx worker. Prints the
// median and 99th percentile round trip in microseconds.
// Build: g++ -O2 -o eventfd_pingpong eventfd_pingpong.cpp ; run: ./eventfd_pingpong [N]

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

static void wait_fd(int ep, int fd) {
  epoll_event ev;
  while (epoll_wait(ep, &ev, 1, 5000) != 1) {
  }
  std::uint64_t v;
  if (read(fd, &v, sizeof v) != sizeof v) std::abort();
}

static void signal_fd(int fd) {
  std::uint64_t one = 1;
  if (write(fd, &one, sizeof one) != sizeof one) std::abort();
}

static int make_epoll(int fd) {
  int ep = epoll_create1(0);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = fd;
  epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  return ep;
}

int main(int argc, char** argv) {
  int n = argc > 1 ? std::atoi(argv[1]) : 100000;
  int to_child = eventfd(0, EFD_NONBLOCK), to_parent = eventfd(0, EFD_NONBLOCK);
  pid_t pid = fork();
  if (pid == 0) {
    int ep = make_epoll(to_child);
    for (int i = 0; i < n; ++i) {
      wait_fd(ep, to_child);
      signal_fd(to_parent);
    }
    _exit(0);
  }
  int ep = make_epoll(to_parent);
  std::vector<double> rtt(n);
  for (int i = 0; i < n; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    signal_fd(to_child);
    wait_fd(ep, to_parent);
    rtt[i] = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  }
  waitpid(pid, nullptr, 0);
  std::sort(rtt.begin(), rtt.end());
  std::printf("floor_eventfd_pingpong_p50_us %.1f\nfloor_eventfd_pingpong_p99_us %.1f\n",
              rtt[n / 2], rtt[n * 99 / 100]);
  return 0;
}
