/* A process with a lot of incompressible memory, so that a capture takes long
 * enough to be interrupted: bigmem GO_FILE MIB. */
#include "zdtm.h"

#include <stdint.h>

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 512;
  size_t n = mib << 17; /* 8-byte words */
  uint64_t *a = malloc(n * 8);
  if (!a) return 2;
  /* BIGMEM_PATTERN=1: a short stream repeated (compresses well). */
  const char *pat = getenv("BIGMEM_PATTERN");
  int repeat = pat && *pat == '1';
  uint64_t x = 88172645463325252ull, sum = 0;
  for (size_t i = 0; i < n; i++) {
    if (repeat && (i & 511) == 0) x = 88172645463325252ull;
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    a[i] = x;
    sum += x;
  }
  zdtm_ready();
  zdtm_wait_go();
  uint64_t again = 0;
  for (size_t i = 0; i < n; i++) again += a[i];
  ZDTM_CHECK(again == sum, "memory changed");
  return zdtm_verdict();
}
