/* What an MPI launcher and its ranks have (MPICH's hydra with UCX):
 *  - processes that keep writing memory shared between them while the others
 *    are still being replayed: each process counts in its own slot of a shared
 *    page and must always find there what it wrote last (a replay that let one
 *    run before another's memory was filled wrote the stale page back);
 *  - an epoll instance watching another one at a higher descriptor number;
 *  - a child whose stdin is a socket connected to its parent (hydra_pmi_proxy);
 *  - a library whose constructor calls the capture library's wrappers before
 *    that library's own constructor ran (libucs), launcher_early.c. */
#include "zdtm.h"

#include <stdint.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>

extern int launcher_early_ok;

struct shared {
  volatile uint64_t count[2];
};

/* Private memory the replay fills before the shared page (mapped later, so
 * lower): the later-filled process takes that long to be ready. */
enum { BULK = 24 << 20 };

static int go_exists(void) { return access(zdtm_go, F_OK) == 0; }

/* Counts in slot `me` until the go file appears, and on for a while after
 * (the harness may make it before the replay has even started: the counting
 * must overlap the other process being filled); 0 if every value read back
 * was the one written before. */
static int count_until_go(struct shared *sh, int me, uint64_t *mine) {
  int bad = 0;
  for (int after = 0; after < 40; after += go_exists()) {
    for (int i = 0; i < 50; i++) {
      if (sh->count[me] != *mine && !bad) {
        printf("FAIL: process %d found %llu in its shared slot, wrote %llu\n", me,
               (unsigned long long)sh->count[me], (unsigned long long)*mine);
        bad = 1;
      }
      sh->count[me] = ++*mine;
      struct timespec ts = {0, 100 * 1000};
      nanosleep(&ts, NULL);
    }
  }
  return bad;
}

static char *bulk(void) {
  char *b = mmap(NULL, BULK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  for (size_t i = 0; i < BULK; i += 4096) b[i] = (char)((i >> 12) + 1);
  return b;
}

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  (void)zdtm_wait_go;  /* the processes count while they wait */
  if (!launcher_early_ok) {
    printf("FAIL: sigaction or nanosleep failed in a library's constructor\n");
    return 1;
  }
  struct shared *sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  int sp[2];
  socketpair(AF_UNIX, SOCK_STREAM, 0, sp);
  pid_t child = fork();
  if (child == 0) {
    dup2(sp[1], 0);
    close(sp[0]);
    close(sp[1]);
    char *b = bulk();
    uint64_t mine = 0;
    int bad = count_until_go(sh, 1, &mine);
    char c = 0;
    if (read(0, &c, 1) != 1 || c != 'x') {
      printf("FAIL: the child's stdin is not the connection to its parent\n");
      bad = 1;
    }
    _exit(bad || b[4096] != 2 ? 1 : 0);
  }
  close(sp[1]);
  char *b = bulk();
  /* The outer instance gets the lower number: it is created first. */
  int outer = epoll_create1(0);
  int p[2];
  pipe(p);
  int inner = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 11};
  epoll_ctl(inner, EPOLL_CTL_ADD, p[0], &ev);
  ev.data.u64 = 22;
  epoll_ctl(outer, EPOLL_CTL_ADD, inner, &ev);
  zdtm_ready();
  uint64_t mine = 0;
  int bad = count_until_go(sh, 0, &mine);
  ZDTM_CHECK(!bad, "the parent's shared slot changed behind its back");
  ZDTM_CHECK(b[4096] == 2, "private memory lost");

  write(p[1], "y", 1);
  struct epoll_event out[2];
  int n = epoll_wait(outer, out, 2, 1000);
  ZDTM_CHECK(n == 1 && out[0].data.u64 == 22, "the outer epoll did not report the inner one");
  n = epoll_wait(inner, out, 2, 0);
  ZDTM_CHECK(n == 1 && out[0].data.u64 == 11, "the inner epoll did not report the pipe");

  ZDTM_CHECK(write(sp[0], "x", 1) == 1, "cannot write to the child's stdin");
  int st = 0;
  waitpid(child, &st, 0);
  ZDTM_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child failed (status %#x)", st);
  return zdtm_verdict();
}
