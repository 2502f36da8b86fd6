/* Connections to peers outside the job (run_case.sh --outside starts them):
 * TCP to a loopback listener, unix stream to a listener on a path, and a
 * named unix datagram socket connected to one.  Each peer's greeting (the
 * datagram peer's reply) is unread at capture.  After replay the application
 * reads it, then end of file, promptly; writes fail; no connection reaches
 * another peer. */
#include "zdtm.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>

static const char hello[] = "hello-from-outside";

static int greeted(int fd) {
  char buf[64];
  for (int i = 0; i < 500; i++) {
    if (recv(fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT) == (ssize_t)strlen(hello)) return 1;
    usleep(10 * 1000);
  }
  return 0;
}

/* The greeting, then end of file (or a reset), each within 3 s. */
static int closed_after_greeting(int fd, const char *what) {
  char buf[64] = {0};
  size_t got = 0;
  while (got < strlen(hello)) {
    struct pollfd pf = {fd, POLLIN, 0};
    if (poll(&pf, 1, 3000) != 1) return printf("  %s: no greeting\n", what), 0;
    ssize_t r = read(fd, buf + got, strlen(hello) - got);
    if (r <= 0) return printf("  %s: greeting lost (%zd)\n", what, r), 0;
    got += (size_t)r;
  }
  if (strcmp(buf, hello) != 0) return printf("  %s: read '%s'\n", what, buf), 0;
  struct pollfd pf = {fd, POLLIN, 0};
  if (poll(&pf, 1, 3000) != 1) return printf("  %s: hangs after the greeting\n", what), 0;
  ssize_t r = read(fd, buf, sizeof buf);
  if (r != 0 && !(r < 0 && errno == ECONNRESET)) return printf("  %s: read %zd after the greeting\n", what, r), 0;
  return 1;
}

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  char dir[200], path[300];
  snprintf(dir, sizeof dir, "%s", zdtm_go);
  char *slash = strrchr(dir, '/');
  if (slash) *slash = 0;
  else snprintf(dir, sizeof dir, ".");
  snprintf(path, sizeof path, "%s/outside.port", dir);
  FILE *f = fopen(path, "r");
  int port = 0;
  if (!f || fscanf(f, "%d", &port) != 1) return printf("FAIL: no outside peer (run_case.sh --outside)\n"), 1;
  fclose(f);

  int t = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (connect(t, (struct sockaddr *)&a, sizeof a)) return printf("FAIL: connect to the outside TCP peer\n"), 1;
  struct sockaddr_un ua = {.sun_family = AF_UNIX};
  snprintf(ua.sun_path, sizeof ua.sun_path, "%.80s/outside.sock", dir);
  int u = socket(AF_UNIX, SOCK_STREAM, 0);
  if (connect(u, (struct sockaddr *)&ua, sizeof ua)) return printf("FAIL: connect to the outside unix peer\n"), 1;
  struct sockaddr_un da = {.sun_family = AF_UNIX};
  snprintf(da.sun_path, sizeof da.sun_path, "%.80s/outside.dgram", dir);
  struct sockaddr_un ia = {.sun_family = AF_UNIX};
  snprintf(ia.sun_path, sizeof ia.sun_path, "%.80s/inside.dgram", dir);
  int d = socket(AF_UNIX, SOCK_DGRAM, 0);
  if (bind(d, (struct sockaddr *)&ia, sizeof ia) || connect(d, (struct sockaddr *)&da, sizeof da))
    return printf("FAIL: connect to the outside datagram peer\n"), 1;
  send(d, "hi", 2, 0);
  char reply[32] = {0};
  for (int i = 0; i < 500 && recv(d, reply, sizeof reply, MSG_PEEK | MSG_DONTWAIT) <= 0; i++) usleep(10 * 1000);
  if (!greeted(t) || !greeted(u) || strcmp(reply, "reply-from-outside") != 0)
    return printf("FAIL: the outside peers did not greet\n"), 1;
  zdtm_ready();
  zdtm_wait_go();

  ZDTM_CHECK(closed_after_greeting(t, "TCP"), "TCP connection to the outside is not closed after replay");
  ZDTM_CHECK(closed_after_greeting(u, "unix"), "unix connection to the outside is not closed after replay");
  ZDTM_CHECK(write(t, "x", 1) < 0 && (errno == EPIPE || errno == ECONNRESET), "TCP: writing to the outside works");
  ZDTM_CHECK(write(u, "x", 1) < 0 && errno == EPIPE, "unix: writing to the outside works");
  struct sockaddr_in p;
  socklen_t pl = sizeof p;
  ZDTM_CHECK(getpeername(t, (struct sockaddr *)&p, &pl) != 0 || (p.sin_port == a.sin_port && pl == sizeof a),
             "TCP: connected to another peer (port %d)", ntohs(p.sin_port));
  ZDTM_CHECK(send(d, "x", 1, MSG_DONTWAIT) < 0, "datagram: sending to the outside works");
  struct pollfd pf = {d, POLLIN, 0};
  char b[32] = {0};
  ZDTM_CHECK(recv(d, b, sizeof b, MSG_DONTWAIT) == 18 && strcmp(b, "reply-from-outside") == 0,
             "datagram: the queued reply from the outside is lost");
  ZDTM_CHECK(poll(&pf, 1, 3000) == 1 && recv(d, b, sizeof b, 0) == 0, "datagram: reading hangs");
  return zdtm_verdict();
}
