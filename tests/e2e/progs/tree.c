/* A process tree: parent, child, grandchild; a pipe from parent to child with
 * bytes in flight, a pipe back, shared anonymous memory between parent and
 * child, the child in its own process group.  After replay: same pids and
 * parents, bytes still there, memory still shared, waitpid sees the child. */
#include "zdtm.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

static volatile int *shared;

static int grandchild(void) {
  zdtm_wait_go();
  return getppid() == shared[2] ? 0 : 3;
}

static int child(int down, int up) {
  pid_t gc = fork();
  if (gc == 0) _exit(grandchild());
  shared[1] = getpid();
  shared[2] = getpid();
  shared[3] = gc;
  setpgid(0, 0);
  write(up, "r", 1); /* ready */
  zdtm_wait_go();
  int bad = 0;
  char buf[16] = {0};
  if (read(down, buf, 5) != 5 || strcmp(buf, "hello") != 0) bad |= 1;
  if (getppid() != shared[0]) bad |= 2;
  if (getpgid(0) != getpid()) bad |= 4;
  while (shared[4] != 42) usleep(1000); /* the parent writes it after go */
  shared[5] = 43;
  int st;
  if (waitpid(gc, &st, 0) != gc || !WIFEXITED(st) || WEXITSTATUS(st) != 0) bad |= 8;
  write(up, bad ? "x" : "k", 1);
  return bad;
}

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  shared[0] = getpid();
  int down[2], up[2];
  pipe(down);
  pipe(up);
  pid_t c = fork();
  if (c == 0) {
    close(down[1]);
    close(up[0]);
    _exit(child(down[0], up[1]));
  }
  close(down[0]);
  close(up[1]);
  char r;
  if (read(up[0], &r, 1) != 1) return 2;
  write(down[1], "hello", 5); /* in flight at capture */
  pid_t pid0 = getpid(), child0 = c;
  zdtm_ready();
  zdtm_wait_go();
  ZDTM_CHECK(getpid() == pid0, "parent pid changed");
  ZDTM_CHECK(shared[1] == child0, "shared memory lost the child's pid");
  shared[4] = 42;
  for (int i = 0; i < 5000 && shared[5] != 43; i++) usleep(1000);
  ZDTM_CHECK(shared[5] == 43, "memory is no longer shared between parent and child");
  char verdict = 0;
  ZDTM_CHECK(read(up[0], &verdict, 1) == 1 && verdict == 'k', "the child found its state wrong (%c)", verdict);
  int st;
  ZDTM_CHECK(waitpid(child0, &st, 0) == child0 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
             "waitpid on the child failed or it exited badly");
  return zdtm_verdict();
}
