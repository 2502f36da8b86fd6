/* Children that exited before the capture and were not collected yet: after
 * replay the parent still collects them, with their pids and statuses. */
#include "zdtm.h"

#include <signal.h>
#include <sys/wait.h>

static char state_of(pid_t p) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", p);
  FILE *f = fopen(path, "r");
  if (!f) return '?';
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *rp = strrchr(buf, ')');
  return rp ? rp[2] : '?';
}

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  pid_t a = fork();
  if (a == 0) _exit(42);
  pid_t b = fork();
  if (b == 0) {
    raise(SIGTERM);
    _exit(0);
  }
  while (state_of(a) != 'Z' || state_of(b) != 'Z') usleep(1000);
  zdtm_ready();
  zdtm_wait_go();
  int st;
  ZDTM_CHECK(waitpid(a, &st, 0) == a && WIFEXITED(st) && WEXITSTATUS(st) == 42, "first child: not collected with 42");
  ZDTM_CHECK(waitpid(b, &st, 0) == b && WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM,
             "second child: not collected as killed by SIGTERM");
  return zdtm_verdict();
}
