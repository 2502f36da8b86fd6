/* Half-closed connections with bytes in flight: a unix stream pair, a unix
 * seqpacket pair and a TCP connection (parent and child) whose one end wrote,
 * then shut its writing half.  After replay the other end reads those bytes,
 * then end of file, and can still write back. */
#include "zdtm.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>

/* Reads exactly `want`, then (with eof) end of file; never blocks long. */
static int reads(int fd, const char *want, int eof) {
  char buf[64] = {0};
  size_t n = strlen(want), got = 0;
  while (got < n) {
    struct pollfd pf = {fd, POLLIN, 0};
    if (poll(&pf, 1, 3000) != 1) return printf("  timeout reading '%s'\n", want), 0;
    ssize_t r = read(fd, buf + got, n - got);
    if (r <= 0) return printf("  read %zd (%s) reading '%s'\n", r, strerror(errno), want), 0;
    got += (size_t)r;
  }
  if (memcmp(buf, want, n) != 0) return printf("  read '%s', want '%s'\n", buf, want), 0;
  if (!eof) return 1;
  struct pollfd pf = {fd, POLLIN, 0};
  if (poll(&pf, 1, 3000) != 1) return printf("  no end of file after '%s'\n", want), 0;
  ssize_t r = read(fd, buf, sizeof buf);
  if (r != 0) return printf("  read %zd after '%s', want end of file\n", r, want), 0;
  return 1;
}

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  int us[2], sq[2];
  socketpair(AF_UNIX, SOCK_STREAM, 0, us);
  socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sq);
  write(us[0], "unix-last-words", 15);
  shutdown(us[0], SHUT_WR);
  send(sq[0], "pkt", 3, 0);
  shutdown(sq[0], SHUT_WR);

  struct sockaddr_in a;
  int lst = zdtm_loopback_listener(&a);
  int sync[2];
  socketpair(AF_UNIX, SOCK_STREAM, 0, sync);
  pid_t c = fork();
  if (c == 0) {
    close(sync[0]);
    int t = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(t, (struct sockaddr *)&a, sizeof a)) _exit(3);
    write(t, "tcp-last-words", 14);
    shutdown(t, SHUT_WR);
    write(sync[1], "s", 1);
    zdtm_wait_go();
    int bad = 0;
    if (!reads(t, "answer", 1)) bad |= 1;
    if (write(t, "x", 1) >= 0 || errno != EPIPE) bad |= 2;
    _exit(bad);
  }
  close(sync[1]);
  int t = accept(lst, NULL, NULL);
  char s;
  if (read(sync[0], &s, 1) != 1) return printf("FAIL: child did not start\n"), 1;
  usleep(100 * 1000);
  zdtm_ready();
  zdtm_wait_go();
  ZDTM_CHECK(reads(us[1], "unix-last-words", 1), "unix stream: bytes or end of file lost");
  ZDTM_CHECK(write(us[1], "back", 4) == 4 && reads(us[0], "back", 0), "unix stream: the open half does not work");
  ZDTM_CHECK(write(us[0], "no", 2) < 0 && errno == EPIPE, "unix stream: the closed half writes again");
  ZDTM_CHECK(reads(sq[1], "pkt", 1), "seqpacket: message or end of file lost");
  ZDTM_CHECK(send(sq[1], "ack", 3, 0) == 3 && reads(sq[0], "ack", 0), "seqpacket: the open half does not work");
  ZDTM_CHECK(reads(t, "tcp-last-words", 1), "TCP: bytes or end of file lost");
  ZDTM_CHECK(write(t, "answer", 6) == 6, "TCP: the open half does not write");
  shutdown(t, SHUT_WR);
  int st;
  ZDTM_CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child exit status %d", WEXITSTATUS(st));
  return zdtm_verdict();
}
