/* A descriptor in flight over a unix socket (SCM_RIGHTS) cannot be carried
 * yet: the capture must refuse with a clear message and the job run on. */
#include "zdtm.h"

#include <sys/socket.h>

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  int sp[2];
  socketpair(AF_UNIX, SOCK_STREAM, 0, sp);
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
  return zdtm_verdict();
}
