/* UDP sockets of two processes on 127.0.0.1 with datagrams queued both ways:
 * the parent's socket u1 holds datagrams from the child's connected socket u2
 * and from the parent's own unconnected u3, interleaved; u2 holds datagrams
 * from u1.  After replay they come in order, whole, with their source
 * addresses; the bound addresses, u2's peer and u3's SO_BROADCAST are the
 * same; new datagrams go both ways. */
#include "zdtm.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>

static int udp_bound(struct sockaddr_in *a, int broadcast) {
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  setsockopt(s, SOL_SOCKET, SO_BROADCAST, &broadcast, sizeof broadcast);
  memset(a, 0, sizeof *a);
  a->sin_family = AF_INET;
  a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t l = sizeof *a;
  if (bind(s, (struct sockaddr *)a, sizeof *a) || getsockname(s, (struct sockaddr *)a, &l)) return -1;
  return s;
}

/* One datagram: `want` from port `from_port` (network order). */
static int dgram_is(int fd, const char *want, in_port_t from_port) {
  struct pollfd pf = {fd, POLLIN, 0};
  poll(&pf, 1, 2000);
  char buf[256];
  struct sockaddr_in from;
  socklen_t fl = sizeof from;
  ssize_t n = recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
  if (n != (ssize_t)strlen(want) || memcmp(buf, want, (size_t)n) != 0) {
    printf("  got %zd '%.*s', want '%s'\n", n, n > 0 ? (int)n : 0, buf, want);
    return 0;
  }
  if (from.sin_port != from_port || from.sin_addr.s_addr != htonl(INADDR_LOOPBACK)) {
    printf("  '%s' came from port %d, want %d\n", want, ntohs(from.sin_port), ntohs(from_port));
    return 0;
  }
  return 1;
}

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  struct sockaddr_in a1, a2, a3;
  int u1 = udp_bound(&a1, 0), u3 = udp_bound(&a3, 1);
  int ready[2];
  if (u1 < 0 || u3 < 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, ready)) return printf("FAIL: bind\n"), 1;
  pid_t c = fork();
  if (c == 0) {
    close(ready[0]);
    ready[0] = ready[1];
    int u2 = udp_bound(&a2, 0);
    if (u2 < 0 || connect(u2, (struct sockaddr *)&a1, sizeof a1)) _exit(3);
    if (write(ready[1], &a2, sizeof a2) != sizeof a2) _exit(3);
    send(u2, "c-1", 3, 0);
    char x;
    if (read(ready[0], &x, 1) != 1) _exit(3); /* the parent's u3 datagram is in between */
    send(u2, "c-2 longer", 10, 0);
    send(u2, "", 0, 0);
    if (write(ready[1], "k", 1) != 1) _exit(3);
    zdtm_wait_go();
    int bad = 0;
    if (!dgram_is(u2, "p-1", a1.sin_port) || !dgram_is(u2, "p-2", a1.sin_port)) bad |= 1;
    struct sockaddr_in me, peer;
    socklen_t ml = sizeof me, pl = sizeof peer;
    if (getsockname(u2, (struct sockaddr *)&me, &ml) || me.sin_port != a2.sin_port) bad |= 2;
    if (getpeername(u2, (struct sockaddr *)&peer, &pl) || peer.sin_port != a1.sin_port) bad |= 4;
    if (send(u2, "c-after", 7, 0) != 7) bad |= 8;
    if (!dgram_is(u2, "p-after", a1.sin_port)) bad |= 16;
    _exit(bad);
  }
  close(ready[1]);
  ready[1] = ready[0];
  if (read(ready[0], &a2, sizeof a2) != sizeof a2) return printf("FAIL: child did not start\n"), 1;
  struct pollfd pf = {u1, POLLIN, 0};
  poll(&pf, 1, 5000); /* c-1 is here */
  sendto(u3, "u3-between", 10, 0, (struct sockaddr *)&a1, sizeof a1);
  if (write(ready[1], "g", 1) != 1) return 1;
  usleep(50 * 1000);
  char x;
  if (read(ready[0], &x, 1) != 1) return printf("FAIL: child did not go on\n"), 1;
  sendto(u1, "p-1", 3, 0, (struct sockaddr *)&a2, sizeof a2);
  sendto(u1, "p-2", 3, 0, (struct sockaddr *)&a2, sizeof a2);
  usleep(100 * 1000);
  zdtm_ready();
  zdtm_wait_go();
  ZDTM_CHECK(dgram_is(u1, "c-1", a2.sin_port), "first datagram from the child wrong");
  ZDTM_CHECK(dgram_is(u1, "u3-between", a3.sin_port), "datagram from u3 wrong");
  ZDTM_CHECK(dgram_is(u1, "c-2 longer", a2.sin_port) && dgram_is(u1, "", a2.sin_port), "later datagrams from the child wrong");
  struct sockaddr_in me;
  socklen_t ml = sizeof me;
  ZDTM_CHECK(getsockname(u1, (struct sockaddr *)&me, &ml) == 0 && me.sin_port == a1.sin_port &&
                 me.sin_addr.s_addr == htonl(INADDR_LOOPBACK),
             "u1's address changed");
  ml = sizeof me;
  ZDTM_CHECK(getsockname(u3, (struct sockaddr *)&me, &ml) == 0 && me.sin_port == a3.sin_port, "u3's address changed");
  int bc = 0;
  socklen_t bl = sizeof bc;
  ZDTM_CHECK(getsockopt(u3, SOL_SOCKET, SO_BROADCAST, &bc, &bl) == 0 && bc == 1, "u3 lost SO_BROADCAST");
  ZDTM_CHECK(dgram_is(u1, "c-after", a2.sin_port), "no new datagram from the child");
  sendto(u1, "p-after", 7, 0, (struct sockaddr *)&a2, sizeof a2);
  int st;
  ZDTM_CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child exit status %d", WEXITSTATUS(st));
  return zdtm_verdict();
}
