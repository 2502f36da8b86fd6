// Single-core memcpy bandwidth, the yardstick of the one-host RDMA goal
// (bench/softrdma.sh): copies a 64 KiB message like ib_write_bw does, between
// two buffers larger than the caches, for about a second.
//   memcpy_bw [MSG_BYTES [TOTAL_MIB]]  ->  "memcpy MSG GB/s"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char** argv) {
  size_t msg = argc > 1 ? strtoull(argv[1], 0, 0) : 65536;
  size_t total = (argc > 2 ? strtoull(argv[2], 0, 0) : 64) << 20;  // like perftest's buffer ring
  if (msg == 0 || msg > total) return 2;
  char* a = malloc(total);
  char* b = malloc(total);
  if (!a || !b) return 1;
  memset(a, 1, total);
  memset(b, 2, total);
  double best = 0;
  for (int rep = 0; rep < 5; rep++) {
    double t0 = now(), t;
    size_t bytes = 0, off = 0;
    do {
      memcpy(b + off, a + off, msg);
      bytes += msg;
      off += msg;
      if (off + msg > total) off = 0;
      t = now();
    } while (t - t0 < 0.2);
    double gbps = bytes / (t - t0) / 1e9;
    if (gbps > best) best = gbps;
  }
  // keep the copies observable
  volatile char sink = b[total / 2];
  (void)sink;
  printf("memcpy %zu %.3f\n", msg, best);
  return 0;
}
