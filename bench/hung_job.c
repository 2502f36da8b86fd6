/* The job of the user-path benchmark (bench/job_path.sh): hung_job N MIB GO_FILE
 *
 * N processes (this one and N-1 forked children), each with MIB MiB of its own
 * memory, wait in a ring for a token nobody sends: a hung job, as a user would
 * capture it.  Once GO_FILE exists (the bench creates it after the capture, so
 * only a replay sees it), rank 0 sends the token round the ring and every
 * process checks its memory and exits; the parent prints PASS when all did.
 * Prints READY once every process has filled its memory and waits. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static uint64_t fill(uint8_t* m, size_t n, uint64_t seed) {
  uint64_t x = seed | 1, sum = 0;
  for (size_t i = 0; i + 8 <= n; i += 8) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    memcpy(m + i, &x, 8);
    sum += x;
  }
  return sum;
}

static uint64_t checksum(const uint8_t* m, size_t n) {
  uint64_t sum = 0, x;
  for (size_t i = 0; i + 8 <= n; i += 8) memcpy(&x, m + i, 8), sum += x;
  return sum;
}

/* Where the debugger finds every rank: blocked here, in read(). */
__attribute__((noinline)) static int wait_for_token(int fd, const char* go, int rank) {
  char c;
  for (;;) {
    if (rank == 0 && access(go, F_OK) == 0) return 1;
    if (rank == 0) {
      usleep(20000);
      continue;
    }
    ssize_t r = read(fd, &c, 1);
    if (r == 1) return 1;
    if (r == 0) return 0;
  }
}

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: hung_job N MIB GO_FILE\n");
    return 2;
  }
  int n = atoi(argv[1]);
  size_t bytes = (size_t)atoi(argv[2]) << 20;
  const char* go = argv[3];
  if (n < 1 || n > 1024) return 2;
  int (*ring)[2] = calloc((size_t)n, sizeof *ring);
  for (int i = 0; i < n; i++)
    if (pipe(ring[i])) return perror("pipe"), 1;
  int ready[2];
  if (pipe(ready)) return 1;
  pid_t* kids = calloc((size_t)n, sizeof *kids);
  int rank = 0;
  for (int i = 1; i < n; i++) {
    pid_t p = fork();
    if (p == 0) {
      rank = i;
      break;
    }
    kids[i] = p;
  }
  uint8_t* mem = mmap(NULL, bytes ? bytes : 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  uint64_t want = fill(mem, bytes, 0x9e3779b97f4a7c15ull * (uint64_t)(rank + 1));
  if (write(ready[1], "r", 1) != 1) return 1;
  if (rank == 0) {
    char c;
    for (int i = 0; i < n; i++)
      if (read(ready[0], &c, 1) != 1) return 1;
    printf("READY %d processes\n", n);
    fflush(stdout);
  }
  /* rank r reads from ring[r] and writes to ring[(r+1)%n]. */
  if (!wait_for_token(ring[rank][0], go, rank)) return 1;
  if (n > 1 && write(ring[(rank + 1) % n][1], "t", 1) != 1) return 1;
  if (rank == 0 && n > 1) {
    char c;
    if (read(ring[0][0], &c, 1) != 1) return 1;
  }
  int ok = checksum(mem, bytes) == want;
  if (rank != 0) return ok ? 0 : 1;
  for (int i = 1; i < n; i++) {
    int st;
    if (waitpid(kids[i], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) ok = 0;
  }
  printf("%s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
