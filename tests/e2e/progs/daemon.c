/* A daemon made the classic way (fork, setsid, fork again, the middle one
 * exits) and a vfork+exec'd helper: the daemon is captured with the job (it
 * was reparented to ibdbg run, the job's subreaper) and comes back in the
 * session its vanished parent made, with its state and its pipe. */
#include "zdtm.h"

#include <sys/wait.h>

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  int p[2];
  pipe(p);
  pid_t mid = fork();
  if (mid == 0) {
    setsid();
    if (fork() != 0) _exit(0);
    close(p[0]);
    long counter = 7;
    pid_t me = getpid(), sid0 = getsid(0);
    write(p[1], &me, sizeof me);
    zdtm_wait_go();
    /* Not a session leader (that is the point of the second fork): in the
     * session its vanished parent made. */
    char ok = getsid(0) == sid0 && sid0 != getpid() && getpid() == me && counter == 7 ? 'k' : 'x';
    write(p[1], &ok, 1);
    _exit(0);
  }
  close(p[1]);
  waitpid(mid, NULL, 0);
  pid_t daemon_pid = 0;
  if (read(p[0], &daemon_pid, sizeof daemon_pid) != sizeof daemon_pid) return printf("FAIL: no daemon\n"), 1;
  /* vfork + exec of a short-lived helper, collected before the capture. */
  pid_t v = vfork();
  if (v == 0) {
    execl("/bin/true", "true", (char *)NULL);
    _exit(127);
  }
  int st;
  if (waitpid(v, &st, 0) != v || !WIFEXITED(st) || WEXITSTATUS(st) != 0) return printf("FAIL: vfork helper\n"), 1;
  zdtm_ready();
  zdtm_wait_go();
  char ok = 0;
  ZDTM_CHECK(read(p[0], &ok, 1) == 1 && ok == 'k', "the daemon found its state wrong (%c)", ok);
  v = vfork();
  if (v == 0) {
    execl("/bin/true", "true", (char *)NULL);
    _exit(127);
  }
  ZDTM_CHECK(waitpid(v, &st, 0) == v && WIFEXITED(st) && WEXITSTATUS(st) == 0, "vfork+exec after replay failed");
  return zdtm_verdict();
}
