// Single-core memcpy bandwidth, the yardstick of the one-host RDMA goal
// (bench/softrdma.sh): copies MSG-byte messages from one buffer of BUF bytes
// to another, cycling through them, for about a second (best of five 0.2 s
// runs). BUF = MSG (the default) is what ib_write_bw does: perftest writes
// the same message buffer again and again, so it stays in the caches; a BUF
// larger than the caches gives the memory's bandwidth.
// With "cma" the copies are process_vm_readv() from the process itself: the
// kernel's cross-memory copy, the ceiling of softrdma's one-copy path.
//   memcpy_bw [MSG [BUF [cma]]]  ->  "memcpy|cma MSG BUF GB/s"
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char** argv) {
  size_t msg = argc > 1 ? strtoull(argv[1], 0, 0) : 65536;
  size_t total = argc > 2 ? strtoull(argv[2], 0, 0) : msg;
  int cma = argc > 3 && strcmp(argv[3], "cma") == 0;
  if (msg == 0 || msg > total) return 2;
  // page-aligned like perftest's buffers: a copy whose source and destination
  // are misaligned to each other is several times slower on some CPUs
  size_t alloc = (total + 4095) & ~(size_t)4095;
  char* a = aligned_alloc(4096, alloc);
  char* b = aligned_alloc(4096, alloc);
  if (!a || !b) return 1;
  memset(a, 1, total);
  memset(b, 2, total);
  double best = 0;
  for (int rep = 0; rep < 5; rep++) {
    double t0 = now(), t;
    size_t bytes = 0, off = 0;
    do {
      if (cma) {
        struct iovec l = {b + off, msg}, r = {a + off, msg};
        if (process_vm_readv(getpid(), &l, 1, &r, 1, 0) != (ssize_t)msg) return 1;
      } else {
        memcpy(b + off, a + off, msg);
      }
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
  printf("%s %zu %zu %.3f\n", cma ? "cma" : "memcpy", msg, total, best);
  return 0;
}
