// Small helpers both softrdma libraries (libibverbs.so.1 and librdmacm.so.1)
// compile in: each library is self-contained, so they share source, not code.
#pragma once

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

namespace softrdma {

inline uint64_t MonotonicNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

// One line on stderr in one write(2), so that lines of several threads and
// processes do not interleave; no allocation (callable on the data path).
inline void VLogLine(const char* fmt, va_list ap) {
  char buf[512];
  int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
  if (n < 0) return;
  if (n > int(sizeof buf) - 2) n = sizeof buf - 2;
  buf[n++] = '\n';
  ssize_t r = write(2, buf, size_t(n));
  (void)r;
}

}  // namespace softrdma
