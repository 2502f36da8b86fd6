/* A descriptor in flight over a unix socket (SCM_RIGHTS) cannot be carried
 * yet: the capture must refuse with a clear message and the job run on.
 * With a second argument "dgram": behind another message on a datagram
 * socket pair, and the job still reads both messages afterwards. */
#include "zdtm.h"

#include <sys/socket.h>

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  int dgram = argc > 2 && strcmp(argv[2], "dgram") == 0;
  int sp[2];
  socketpair(AF_UNIX, dgram ? SOCK_DGRAM : SOCK_STREAM, 0, sp);
  if (dgram) send(sp[0], "first", 5, 0);
  int passed = dup(1);
  char byte = 'x';
  struct iovec iov = {&byte, 1};
  char control[CMSG_SPACE(sizeof(int))];
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
  struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &passed, sizeof(int));
  if (sendmsg(sp[0], &mh, 0) != 1) return printf("FAIL: sendmsg\n"), 1;
  zdtm_ready();
  zdtm_wait_go();
  if (dgram) {
    /* The refused capture walked this queue: it must be as it was. */
    char buf[8] = {0};
    ZDTM_CHECK(recv(sp[1], buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT) == 5 && memcmp(buf, "first", 5) == 0,
               "the first message is not first any more");
    ZDTM_CHECK(recv(sp[1], buf, sizeof buf, 0) == 5 && recv(sp[1], buf, sizeof buf, 0) == 1 && buf[0] == 'x',
               "the messages changed");
  }
  return zdtm_verdict();
}
