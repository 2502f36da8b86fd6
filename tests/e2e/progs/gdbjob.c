/* A job of several processes for gdb on a whole job: the parent forks three
 * workers; each stands in worker_wait(rank) with a known value in its own
 * memory, the parent in parent_wait().  gdb must show every process as an
 * inferior at its function; after gdb lets go, each worker checks its value
 * and the parent collects them all. */
#include "zdtm.h"

#include <sys/wait.h>

#define NWORKERS 3

/* What gdb reads in each worker: 1000 + its rank. */
volatile int worker_token;

__attribute__((noinline)) static int worker_wait(int rank, int ready) {
  worker_token = 1000 + rank;
  write(ready, "r", 1);
  zdtm_wait_go();
  __asm__ volatile("" ::: "memory");
  return worker_token == 1000 + rank ? 0 : 1;
}

__attribute__((noinline)) static void parent_wait(void) {
  zdtm_ready();
  zdtm_wait_go();
  __asm__ volatile("" ::: "memory");
}

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  pid_t kids[NWORKERS];
  int ready[2];
  if (pipe(ready) != 0) return 2;
  for (int r = 0; r < NWORKERS; r++) {
    kids[r] = fork();
    if (kids[r] < 0) return 2;
    if (kids[r] == 0) _exit(worker_wait(r + 1, ready[1]));
  }
  /* Every worker holds its token before the job says READY. */
  char c;
  for (int r = 0; r < NWORKERS; r++)
    if (read(ready[0], &c, 1) != 1) return 2;
  parent_wait();
  for (int r = 0; r < NWORKERS; r++) {
    int st;
    ZDTM_CHECK(waitpid(kids[r], &st, 0) == kids[r] && WIFEXITED(st) && WEXITSTATUS(st) == 0,
               "worker %d did not end well", r + 1);
  }
  return zdtm_verdict();
}
