/* A small multi-threaded solver to capture: heat diffusion on a ring, split
 * across worker threads that meet at a barrier every step.  It prints its
 * progress, then the final checksum and whether it matches a single-threaded
 * recomputation, so a replayed run proves it carried on correctly. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CELLS 4096

static double grid[2][CELLS];
static int nthreads = 4, steps = 300;
static long step_us = 10000;
static pthread_barrier_t barrier;

static void solver_step(int from, int to, int cur) {
  const double *a = grid[cur];
  double *b = grid[cur ^ 1];
  for (int i = from; i < to; i++) b[i] = a[i] + 0.25 * (a[(i + CELLS - 1) % CELLS] - 2 * a[i] + a[(i + 1) % CELLS]);
}

static void *worker_main(void *arg) {
  int id = (int)(long)arg;
  int from = CELLS * id / nthreads, to = CELLS * (id + 1) / nthreads;
  for (int s = 0; s < steps; s++) {
    solver_step(from, to, s & 1);
    struct timespec ts = {0, step_us * 1000};
    nanosleep(&ts, NULL); /* stands for real work: gives a capture time to land */
    pthread_barrier_wait(&barrier);
    if (id == 0 && s % 50 == 0) printf("step %d\n", s), fflush(stdout);
  }
  return NULL;
}

static void init(double g[CELLS]) {
  for (int i = 0; i < CELLS; i++) g[i] = (i * 7919) % 1000 / 10.0;
}

static double checksum(const double g[CELLS]) {
  double s = 0;
  for (int i = 0; i < CELLS; i++) s += g[i] * (i % 13 + 1);
  return s;
}

int main(int argc, char **argv) {
  if (argc > 1) nthreads = atoi(argv[1]);
  if (argc > 2) steps = atoi(argv[2]);
  if (argc > 3) step_us = atol(argv[3]);
  if (nthreads < 1 || nthreads > 256 || steps < 1) {
    fprintf(stderr, "usage: heat [THREADS [STEPS [STEP_US]]]\n");
    return 2;
  }
  init(grid[0]);
  pthread_barrier_init(&barrier, NULL, (unsigned)nthreads);
  pthread_t *t = calloc((size_t)nthreads, sizeof *t);
  for (int i = 0; i < nthreads; i++) pthread_create(&t[i], NULL, worker_main, (void *)(long)i);
  for (int i = 0; i < nthreads; i++) pthread_join(t[i], NULL);
  double got = checksum(grid[steps & 1]);

  /* The same computation on one thread, as the reference. */
  static double ref[2][CELLS];
  init(ref[0]);
  for (int s = 0; s < steps; s++)
    for (int i = 0; i < CELLS; i++) {
      const double *a = ref[s & 1];
      ref[(s & 1) ^ 1][i] = a[i] + 0.25 * (a[(i + CELLS - 1) % CELLS] - 2 * a[i] + a[(i + 1) % CELLS]);
    }
  double want = checksum(ref[steps & 1]);
  int ok = memcmp(&got, &want, sizeof got) == 0;
  printf("heat: %d threads, %d steps, checksum %.6f %s\n", nthreads, steps, got, ok ? "OK" : "MISMATCH");
  return ok ? 0 : 1;
}
