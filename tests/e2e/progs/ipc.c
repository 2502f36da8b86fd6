/* eventfd (count kept), timerfd (still ticking), signalfd (still catching),
 * epoll (same interest list and user data) across capture and replay. */
#include "zdtm.h"

#include <sys/stat.h>

#include <signal.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  int efd = eventfd(5, EFD_NONBLOCK);
  int sem = eventfd(2, EFD_SEMAPHORE | EFD_CLOEXEC);
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
  struct itimerspec its = {{0, 50 * 1000 * 1000}, {0, 50 * 1000 * 1000}};
  timerfd_settime(tfd, 0, &its, NULL);
  sigset_t m;
  sigemptyset(&m);
  sigaddset(&m, SIGUSR1);
  sigprocmask(SIG_BLOCK, &m, NULL);
  int sfd = signalfd(-1, &m, SFD_NONBLOCK);
  int p[2];
  pipe(p);
  /* A pipe made bigger, with bytes in it: still a pipe of that size after. */
  int big[2];
  pipe(big);
  int big_size = fcntl(big[1], F_SETPIPE_SZ, 256 * 1024);
  write(big[1], "in flight", 9);
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0x1122334455667788ull};
  epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev);
  ev.events = EPOLLIN | EPOLLET;
  ev.data.u64 = 77;
  epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);
  zdtm_ready();
  zdtm_wait_go();

  struct stat pst;
  ZDTM_CHECK(fstat(big[0], &pst) == 0 && S_ISFIFO(pst.st_mode), "the pipe is no longer a pipe");
  ZDTM_CHECK(big_size >= 256 * 1024 && fcntl(big[1], F_GETPIPE_SZ) == big_size, "pipe size %d, was %d",
             fcntl(big[1], F_GETPIPE_SZ), big_size);
  char pbuf[16] = {0};
  ZDTM_CHECK(read(big[0], pbuf, sizeof pbuf) == 9 && memcmp(pbuf, "in flight", 9) == 0, "the pipe lost its bytes");
  uint64_t v = 0;
  ZDTM_CHECK(read(efd, &v, 8) == 8 && v == 5, "eventfd count %llu, expected 5", (unsigned long long)v);
  ZDTM_CHECK(read(efd, &v, 8) == -1 && errno == EAGAIN, "eventfd lost O_NONBLOCK");
  ZDTM_CHECK(read(sem, &v, 8) == 8 && v == 1, "semaphore eventfd does not count down by one");
  ZDTM_CHECK(fcntl(sem, F_GETFD) & FD_CLOEXEC, "eventfd lost FD_CLOEXEC");
  struct timespec ts = {0, 200 * 1000 * 1000};
  nanosleep(&ts, NULL);
  ZDTM_CHECK(read(tfd, &v, 8) == 8 && v >= 1, "the timerfd stopped ticking");
  write(p[1], "x", 1);
  raise(SIGUSR1);
  struct epoll_event out[4];
  int n = epoll_wait(ep, out, 4, 1000);
  int saw_pipe = 0, saw_sig = 0;
  for (int i = 0; i < n; i++) {
    if (out[i].data.u64 == 0x1122334455667788ull) saw_pipe = 1;
    if (out[i].data.u64 == 77) saw_sig = 1;
  }
  ZDTM_CHECK(saw_pipe, "epoll did not report the pipe with its data");
  ZDTM_CHECK(saw_sig, "epoll did not report the signalfd with its data");
  struct signalfd_siginfo si;
  ZDTM_CHECK(read(sfd, &si, sizeof si) == sizeof si && si.ssi_signo == SIGUSR1, "signalfd did not catch SIGUSR1");
  return zdtm_verdict();
}
