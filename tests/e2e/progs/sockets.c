/* Connections inside the job, with bytes in flight both ways: a unix socket
 * pair inside one process, one between parent and child, and a TCP
 * connection over loopback between parent and child (same addresses after
 * replay). */
#include "zdtm.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/wait.h>

static int expect(int fd, const char *want) {
  char buf[64] = {0};
  size_t n = strlen(want), got = 0;
  while (got < n) {
    ssize_t r = read(fd, buf + got, n - got);
    if (r <= 0) return 0;
    got += (size_t)r;
  }
  return memcmp(buf, want, n) == 0;
}

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  int self[2], pc[2];
  socketpair(AF_UNIX, SOCK_STREAM, 0, self);
  socketpair(AF_UNIX, SOCK_STREAM, 0, pc);
  write(self[0], "to-self", 7);
  struct sockaddr_in a;
  int lst = zdtm_loopback_listener(&a);
  pid_t c = fork();
  if (c == 0) {
    close(pc[0]);
    int t = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(t, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(t, (struct sockaddr *)&a, sizeof a)) _exit(3);
    struct sockaddr_in me, peer;
    socklen_t l1 = sizeof me, l2 = sizeof peer;
    getsockname(t, (struct sockaddr *)&me, &l1);
    getpeername(t, (struct sockaddr *)&peer, &l2);
    write(t, "ping", 4);         /* unread by the parent at capture */
    write(pc[1], "up", 2);       /* unread by the parent at capture */
    zdtm_wait_go();
    int bad = 0;
    if (!expect(pc[1], "down")) bad |= 1;
    if (!expect(t, "pong")) bad |= 2;
    struct sockaddr_in me2, peer2;
    socklen_t l3 = sizeof me2, l4 = sizeof peer2;
    getsockname(t, (struct sockaddr *)&me2, &l3);
    getpeername(t, (struct sockaddr *)&peer2, &l4);
    if (me2.sin_port != me.sin_port || peer2.sin_port != peer.sin_port) bad |= 4;
    int nd = 0;
    socklen_t nl = sizeof nd;
    getsockopt(t, IPPROTO_TCP, TCP_NODELAY, &nd, &nl);
    if (!nd) bad |= 8;
    write(t, "after", 5);
    write(pc[1], bad ? "x" : "k", 1);
    _exit(bad);
  }
  close(pc[1]);
  int t = accept(lst, NULL, NULL);
  write(t, "pong", 4);           /* unread by the child at capture */
  write(pc[0], "down", 4);       /* unread by the child at capture */
  char sync[2];
  if (!expect(pc[0], "up")) return printf("FAIL: child did not start\n"), 1;
  /* "up" was read to know the child is ready; put something back in flight. */
  usleep(100 * 1000);
  zdtm_ready();
  zdtm_wait_go();
  (void)sync;
  ZDTM_CHECK(expect(self[1], "to-self"), "bytes in flight inside one process lost");
  ZDTM_CHECK(expect(t, "ping"), "TCP bytes in flight to the parent lost");
  ZDTM_CHECK(expect(t, "after"), "TCP connection does not carry new bytes");
  char v = 0;
  ZDTM_CHECK(read(pc[0], &v, 1) == 1 && v == 'k', "the child found its connections wrong (%c)", v);
  int st;
  ZDTM_CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child exit status %d", WEXITSTATUS(st));
  return zdtm_verdict();
}
