/* A child started with fork + execve of an environment the program made up
 * itself (no LD_PRELOAD, nothing of ibdbg's): it is still captured and comes
 * back in the replay with its own state, pid and parent. */
#include "zdtm.h"

#include <sys/wait.h>

static int exec_child(const char *go, int up) {
  zdtm_go = go;
  long state = 0;
  for (int i = 1; i <= 1000; i++) state += i;
  pid_t pid0 = getpid(), ppid0 = getppid();
  write(up, "r", 1);
  zdtm_wait_go();
  int ok = state == 500500 && getpid() == pid0 && getppid() == ppid0 && getenv("FOO") &&
           strcmp(getenv("FOO"), "bar") == 0;
  write(up, ok ? "k" : "x", 1);
  return ok ? 0 : 1;
}

int main(int argc, char **argv) {
  if (argc == 4 && strcmp(argv[1], "--exec-child") == 0) return exec_child(argv[2], atoi(argv[3]));
  zdtm_init(argc, argv);
  int up[2];
  pipe(up);
  pid_t c = fork();
  if (c == 0) {
    close(up[0]);
    char fd[16];
    snprintf(fd, sizeof fd, "%d", up[1]);
    char *args[] = {argv[0], "--exec-child", (char *)zdtm_go, fd, NULL};
    char *env[] = {"FOO=bar", "PATH=/usr/bin:/bin", NULL};
    execve("/proc/self/exe", args, env);
    _exit(127);
  }
  close(up[1]);
  char r = 0;
  if (read(up[0], &r, 1) != 1 || r != 'r') return printf("FAIL: child did not start\n"), 1;
  zdtm_ready();
  zdtm_wait_go();
  char v = 0;
  ZDTM_CHECK(read(up[0], &v, 1) == 1 && v == 'k', "the exec'd child found its state wrong (%c)", v);
  int st;
  ZDTM_CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child exit status");
  return zdtm_verdict();
}
