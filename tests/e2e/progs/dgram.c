/* Unix message sockets with messages in flight: datagram and seqpacket
 * socket pairs (one across a fork), a datagram socket bound to a path that
 * receives from a named sender in the child and from an unnamed one, a
 * datagram socket with an abstract name and a client connected to it, a
 * seqpacket server on a path with a connection, and an abstract unix stream
 * server with a connection.  After replay every message comes in order, with
 * its boundaries and sender, the names are the same, and the servers accept. */
#include "zdtm.h"

#include <poll.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

/* Receives one message: it must be `want` exactly (len bytes) from `from`
 * ("" = unnamed, "@x" = abstract x, NULL = do not check). */
static int msg_is(int fd, const char *want, const char *from) {
  char buf[256];
  struct sockaddr_un sa;
  socklen_t sl = sizeof sa;
  memset(&sa, 0, sizeof sa);
  ssize_t n = recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&sa, &sl);
  if (n != (ssize_t)strlen(want) || memcmp(buf, want, (size_t)n) != 0) {
    printf("  got %zd '%.*s', want '%s'\n", n, n > 0 ? (int)n : 0, buf, want);
    return 0;
  }
  if (!from) return 1;
  char name[128] = "";
  if (sl > offsetof(struct sockaddr_un, sun_path)) {
    size_t len = sl - offsetof(struct sockaddr_un, sun_path);
    if (sa.sun_path[0] == 0) snprintf(name, sizeof name, "@%.*s", (int)len - 1, sa.sun_path + 1);
    else snprintf(name, sizeof name, "%s", sa.sun_path);
  }
  if (strcmp(name, from) != 0) {
    printf("  '%s' came from '%s', want '%s'\n", want, name, from);
    return 0;
  }
  return 1;
}

static socklen_t abstract(struct sockaddr_un *a, const char *name) {
  memset(a, 0, sizeof *a);
  a->sun_family = AF_UNIX;
  snprintf(a->sun_path + 1, sizeof a->sun_path - 1, "%s", name);
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
}

static socklen_t pathaddr(struct sockaddr_un *a, const char *suffix) {
  memset(a, 0, sizeof *a);
  a->sun_family = AF_UNIX;
  snprintf(a->sun_path, sizeof a->sun_path, "%s.%s", zdtm_go, suffix);
  unlink(a->sun_path);
  return sizeof *a;
}

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  char ab_dgram[64], ab_stream[64];
  snprintf(ab_dgram, sizeof ab_dgram, "ibdbg-dgram-%d", getpid());
  snprintf(ab_stream, sizeof ab_stream, "ibdbg-stream-%d", getpid());

  int dp[2], sp[2], xp[2];
  socketpair(AF_UNIX, SOCK_DGRAM, 0, dp);
  socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp);
  socketpair(AF_UNIX, SOCK_DGRAM, 0, xp); /* across the fork */
  send(dp[0], "one", 3, 0);
  send(dp[0], "", 0, 0);
  send(dp[0], "three!", 6, 0);
  send(dp[1], "back", 4, 0);
  send(sp[0], "s1", 2, 0);
  send(sp[0], "s-two", 5, 0);
  send(sp[1], "rev", 3, 0);
  send(sp[1], "rev2", 4, 0);

  struct sockaddr_un ra, sa1, aba, ssa, sta;
  socklen_t ral = pathaddr(&ra, "dgr");
  socklen_t sa1l = pathaddr(&sa1, "dgs");
  int r = socket(AF_UNIX, SOCK_DGRAM, 0);
  if (bind(r, (struct sockaddr *)&ra, ral)) return printf("FAIL: bind %s\n", ra.sun_path), 1;
  socklen_t abl = abstract(&aba, ab_dgram);
  int ar = socket(AF_UNIX, SOCK_DGRAM, 0);
  if (bind(ar, (struct sockaddr *)&aba, abl)) return printf("FAIL: bind abstract\n"), 1;
  int ac = socket(AF_UNIX, SOCK_DGRAM, 0);
  if (connect(ac, (struct sockaddr *)&aba, abl)) return printf("FAIL: connect abstract\n"), 1;
  send(ac, "abs-1", 5, 0);
  send(ac, "abs-2", 5, 0);

  socklen_t ssl = pathaddr(&ssa, "seq");
  int sl = socket(AF_UNIX, SOCK_SEQPACKET, 0);
  if (bind(sl, (struct sockaddr *)&ssa, ssl) || listen(sl, 4)) return printf("FAIL: seqpacket listen\n"), 1;
  int sc = socket(AF_UNIX, SOCK_SEQPACKET, 0);
  if (connect(sc, (struct sockaddr *)&ssa, ssl)) return printf("FAIL: seqpacket connect\n"), 1;
  int sa = accept(sl, NULL, NULL);
  send(sc, "q1", 2, 0);
  send(sc, "q22", 3, 0);
  send(sa, "a1", 2, 0);

  socklen_t stl = abstract(&sta, ab_stream);
  int tl = socket(AF_UNIX, SOCK_STREAM, 0);
  if (bind(tl, (struct sockaddr *)&sta, stl) || listen(tl, 4)) return printf("FAIL: abstract stream listen\n"), 1;
  int tc = socket(AF_UNIX, SOCK_STREAM, 0);
  if (connect(tc, (struct sockaddr *)&sta, stl)) return printf("FAIL: abstract stream connect\n"), 1;
  int ta = accept(tl, NULL, NULL);
  write(tc, "abstract-stream", 15);

  pid_t c = fork();
  if (c == 0) {
    close(xp[0]);
    int s1 = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (bind(s1, (struct sockaddr *)&sa1, sa1l)) _exit(3);
    int s2 = socket(AF_UNIX, SOCK_DGRAM, 0);
    sendto(s1, "from-named-1", 12, 0, (struct sockaddr *)&ra, ral);
    sendto(s2, "from-unnamed", 12, 0, (struct sockaddr *)&ra, ral);
    sendto(s1, "from-named-2", 12, 0, (struct sockaddr *)&ra, ral);
    send(xp[1], "to-parent", 9, 0);
    send(xp[1], "to-parent-2", 11, 0);
    zdtm_wait_go();
    int bad = 0;
    struct pollfd pf = {xp[1], POLLIN, 0};
    poll(&pf, 1, 5000);
    if (!msg_is(xp[1], "to-child", NULL)) bad |= 1;
    /* The named sender still has its name and still reaches the receiver. */
    struct sockaddr_un me;
    socklen_t ml = sizeof me;
    if (getsockname(s1, (struct sockaddr *)&me, &ml) || strcmp(me.sun_path, sa1.sun_path)) bad |= 2;
    if (sendto(s1, "after", 5, 0, (struct sockaddr *)&ra, ral) != 5) bad |= 4;
    send(xp[1], bad ? "bad" : "ok", bad ? 3 : 2, 0);
    _exit(bad);
  }
  close(xp[1]);
  send(xp[0], "to-child", 8, 0);
  /* The child's messages are all sent once the last one is here. */
  struct pollfd pf = {xp[0], POLLIN, 0};
  poll(&pf, 1, 5000);
  usleep(100 * 1000);
  zdtm_ready();
  zdtm_wait_go();

  ZDTM_CHECK(msg_is(dp[1], "one", NULL) && msg_is(dp[1], "", NULL) && msg_is(dp[1], "three!", NULL),
             "datagram pair: messages lost or reordered");
  ZDTM_CHECK(msg_is(dp[0], "back", NULL), "datagram pair: the other direction lost");
  ZDTM_CHECK(recv(dp[1], (char[8]){0}, 8, MSG_DONTWAIT) < 0 && errno == EAGAIN, "datagram pair: extra messages");
  ZDTM_CHECK(send(dp[1], "new", 3, 0) == 3 && msg_is(dp[0], "new", NULL), "datagram pair: not connected any more");
  ZDTM_CHECK(msg_is(sp[1], "s1", NULL) && msg_is(sp[1], "s-two", NULL), "seqpacket pair: messages lost or merged");
  ZDTM_CHECK(msg_is(sp[0], "rev", NULL) && msg_is(sp[0], "rev2", NULL), "seqpacket pair: the other direction lost");
  ZDTM_CHECK(msg_is(r, "from-named-1", sa1.sun_path) && msg_is(r, "from-unnamed", "") &&
                 msg_is(r, "from-named-2", sa1.sun_path),
             "named datagram socket: messages or senders wrong");
  char abname[80];
  snprintf(abname, sizeof abname, "@%s", ab_dgram);
  ZDTM_CHECK(msg_is(ar, "abs-1", "") && msg_is(ar, "abs-2", ""), "abstract datagram socket: messages wrong");
  ZDTM_CHECK(send(ac, "abs-3", 5, 0) == 5 && msg_is(ar, "abs-3", ""), "connected datagram client: not connected any more");
  struct sockaddr_un pa;
  socklen_t pal = sizeof pa;
  ZDTM_CHECK(getpeername(ac, (struct sockaddr *)&pa, &pal) == 0 && pal == abl && memcmp(&pa, &aba, abl) == 0,
             "connected datagram client: another peer");
  ZDTM_CHECK(msg_is(xp[0], "to-parent", NULL) && msg_is(xp[0], "to-parent-2", NULL), "pair across fork: messages lost");
  ZDTM_CHECK(msg_is(sa, "q1", NULL) && msg_is(sa, "q22", NULL), "named seqpacket: messages to the server wrong");
  ZDTM_CHECK(msg_is(sc, "a1", NULL), "named seqpacket: messages to the client wrong");
  int sc2 = socket(AF_UNIX, SOCK_SEQPACKET, 0);
  ZDTM_CHECK(connect(sc2, (struct sockaddr *)&ssa, ssl) == 0 && send(sc2, "n", 1, 0) == 1, "seqpacket server gone");
  int sa2 = accept(sl, NULL, NULL);
  ZDTM_CHECK(sa2 >= 0 && msg_is(sa2, "n", NULL), "seqpacket server does not accept");
  char buf[32] = {0};
  ZDTM_CHECK(read(ta, buf, 15) == 15 && memcmp(buf, "abstract-stream", 15) == 0, "abstract stream: bytes lost");
  struct sockaddr_un tn;
  socklen_t tnl = sizeof tn;
  ZDTM_CHECK(getsockname(ta, (struct sockaddr *)&tn, &tnl) == 0 && tnl == stl && memcmp(&tn, &sta, stl) == 0,
             "abstract stream: the accepted end lost its name");
  int tc2 = socket(AF_UNIX, SOCK_STREAM, 0);
  ZDTM_CHECK(connect(tc2, (struct sockaddr *)&sta, stl) == 0, "abstract stream server gone");
  int ta2 = accept(tl, NULL, NULL);
  ZDTM_CHECK(ta2 >= 0 && write(tc2, "x", 1) == 1 && read(ta2, buf, 1) == 1 && buf[0] == 'x',
             "abstract stream server does not accept");

  struct timespec ts = {0, 200 * 1000 * 1000};
  nanosleep(&ts, NULL);
  char v[4] = {0};
  ZDTM_CHECK(recv(xp[0], v, sizeof v, 0) == 2 && strcmp(v, "ok") == 0, "the child found its sockets wrong (%s)", v);
  ZDTM_CHECK(msg_is(r, "after", sa1.sun_path), "named sender cannot send after replay");
  int st;
  ZDTM_CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child exit status %d", WEXITSTATUS(st));
  unlink(ra.sun_path);
  unlink(sa1.sun_path);
  unlink(ssa.sun_path);
  return zdtm_verdict();
}
