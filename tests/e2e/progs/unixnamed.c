/* A named unix stream server and a client connected to it, in parent and
 * child, with bytes in flight: after replay the connection works, the names
 * are the same, and the server still accepts new clients on its path. */
#include "zdtm.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  snprintf(a.sun_path, sizeof a.sun_path, "%s.sock", zdtm_go);
  unlink(a.sun_path);
  int lst = socket(AF_UNIX, SOCK_STREAM, 0);
  if (bind(lst, (struct sockaddr *)&a, sizeof a) || listen(lst, 4)) return printf("FAIL: listen\n"), 1;
  pid_t c = fork();
  if (c == 0) {
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&a, sizeof a)) _exit(3);
    write(s, "hi", 2);
    zdtm_wait_go();
    struct sockaddr_un peer;
    socklen_t l = sizeof peer;
    char buf[8] = {0};
    int bad = read(s, buf, 3) != 3 || strcmp(buf, "hey") != 0;
    if (getpeername(s, (struct sockaddr *)&peer, &l) || strcmp(peer.sun_path, a.sun_path) != 0) bad |= 2;
    int s2 = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(s2, (struct sockaddr *)&a, sizeof a)) bad |= 4;
    write(s2, "new", 3);
    _exit(bad);
  }
  int s = accept(lst, NULL, NULL);
  write(s, "hey", 3);
  usleep(100 * 1000);
  zdtm_ready();
  zdtm_wait_go();
  char buf[8] = {0};
  ZDTM_CHECK(read(s, buf, 2) == 2 && strcmp(buf, "hi") == 0, "bytes in flight to the server lost");
  struct sockaddr_un me;
  socklen_t l = sizeof me;
  ZDTM_CHECK(getsockname(s, (struct sockaddr *)&me, &l) == 0 && strcmp(me.sun_path, a.sun_path) == 0,
             "the accepted socket lost its name");
  int s2 = accept(lst, NULL, NULL);
  memset(buf, 0, sizeof buf);
  ZDTM_CHECK(s2 >= 0 && read(s2, buf, 3) == 3 && strcmp(buf, "new") == 0, "the server no longer accepts on its path");
  int st;
  ZDTM_CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "client status %d", WEXITSTATUS(st));
  unlink(a.sun_path);
  return zdtm_verdict();
}
