/* For `ibdbg core`: threads each blocked in a function of its own, holding a
 * known local, and globals given their values at run time (so that only the
 * process's memory, not the executable, has them).  Prints READY once every
 * thread is in its function (and the descriptor the reading thread waits on),
 * then waits to be captured (and killed). */
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

long core_global = 1;
char *core_heap;
static int pipefd[2];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static volatile int entered;

static void arrived(void) { __atomic_fetch_add(&entered, 1, __ATOMIC_SEQ_CST); }

__attribute__((noinline)) void blocked_in_read(void) {
  volatile long marker_read = 1001;
  char c;
  arrived();
  while (read(pipefd[0], &c, 1) != 0) {
  }
  (void)marker_read;
}

__attribute__((noinline)) void blocked_in_cond(void) {
  volatile long marker_cond = 2002;
  pthread_mutex_lock(&mu);
  arrived();
  for (;;) pthread_cond_wait(&cv, &mu);
  (void)marker_cond;
}

__attribute__((noinline)) void blocked_in_poll(void) {
  volatile long marker_poll = 3003;
  arrived();
  for (;;) poll(NULL, 0, -1);
  (void)marker_poll;
}

__attribute__((noinline)) void blocked_in_sleep(void) {
  volatile long marker_sleep = 4004;
  arrived();
  for (;;) sleep(1000);
  (void)marker_sleep;
}

__attribute__((noinline)) void main_waits(void) {
  volatile long marker_main = 5005;
  for (;;) pause();
  (void)marker_main;
}

static void *run(void *f) {
  ((void (*)(void))f)();
  return NULL;
}

int main(void) {
  void (*fns[])(void) = {blocked_in_read, blocked_in_cond, blocked_in_poll, blocked_in_sleep};
  if (pipe(pipefd) != 0) return 1;
  for (int i = 0; i < 4; i++) {
    pthread_t t;
    if (pthread_create(&t, NULL, run, (void *)fns[i]) != 0) return 1;
  }
  while (entered < 4) usleep(1000);
  core_global = 0x5eed0000 + 42;
  core_heap = strdup("heap-value-for-gdb");
  printf("READY fd %d\n", pipefd[0]);
  fflush(stdout);
  main_waits();
  return 0;
}
