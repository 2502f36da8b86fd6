/* Children started by posix_spawn, popen and system, each still waiting on
 * its shell when the capture is taken: after replay they carry on, their
 * pipes to the parent work, and the parent collects their exit statuses
 * (system()'s caller blocks SIGCHLD and ignores SIGINT/SIGQUIT meanwhile). */
#include "zdtm.h"

#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

extern char **environ;
static char cmd_wait[512];
static int system_status = -1;

static void *system_thread(void *arg) {
  (void)arg;
  char cmd[700];
  snprintf(cmd, sizeof cmd, "%s; exit 7", cmd_wait);
  system_status = system(cmd);
  return NULL;
}

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  /* Children poll for the go-file the way the harness's programs do. */
  snprintf(cmd_wait, sizeof cmd_wait, "while [ ! -e '%s' ]; do sleep 0.02; done", zdtm_go);

  int to[2], from[2];
  pipe(to);
  pipe(from);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, to[0], 0);
  posix_spawn_file_actions_adddup2(&fa, from[1], 1);
  posix_spawn_file_actions_addclose(&fa, to[1]);
  posix_spawn_file_actions_addclose(&fa, from[0]);
  char script[700];
  snprintf(script, sizeof script, "%s; read x; echo $((x + 1))", cmd_wait);
  char *sargs[] = {"sh", "-c", script, NULL};
  pid_t sp;
  if (posix_spawnp(&sp, "sh", &fa, NULL, sargs, environ) != 0) return printf("FAIL: posix_spawn\n"), 1;
  close(to[0]);
  close(from[1]);

  char out[700];
  snprintf(out, sizeof out, "%s.popen", zdtm_go);
  char pcmd[1600];
  snprintf(pcmd, sizeof pcmd, "%s; read x; echo $((x * 2)) > '%s'", cmd_wait, out);
  FILE* p = popen(pcmd, "w");
  if (!p) return printf("FAIL: popen\n"), 1;

  pthread_t th;
  pthread_create(&th, NULL, system_thread, NULL);
  usleep(200 * 1000); /* the shells are up and polling */
  pid_t self = getpid();
  zdtm_ready();
  zdtm_wait_go();

  ZDTM_CHECK(getpid() == self, "pid changed");
  if (write(to[1], "41\n", 3) != 3) zdtm_fail("cannot write to the spawned child");
  char buf[32] = {0};
  ssize_t n = read(from[0], buf, sizeof buf - 1);
  ZDTM_CHECK(n > 0 && atoi(buf) == 42, "posix_spawn child answered '%s'", buf);
  int st = 0;
  ZDTM_CHECK(waitpid(sp, &st, 0) == sp && WIFEXITED(st) && WEXITSTATUS(st) == 0,
             "posix_spawn child not collected (status %x)", st);

  fputs("21\n", p);
  int pst = pclose(p);
  ZDTM_CHECK(WIFEXITED(pst) && WEXITSTATUS(pst) == 0, "popen child status %x", pst);
  FILE* f = fopen(out, "r");
  int v = 0;
  ZDTM_CHECK(f && fscanf(f, "%d", &v) == 1 && v == 42, "popen child wrote %d", v);
  if (f) fclose(f);
  unlink(out);

  pthread_join(th, NULL);
  ZDTM_CHECK(WIFEXITED(system_status) && WEXITSTATUS(system_status) == 7, "system() returned %x", system_status);
  return zdtm_verdict();
}
