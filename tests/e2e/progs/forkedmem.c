/* Memory written all the time, captured while the program runs on (a forked
 * capture: run_case.sh --image-while-running): the image must be the memory
 * of the moment the program stopped, not a mix of it and what the program
 * wrote while the image was being written.
 *
 * The program writes pass numbers: pass g writes g into the first word of
 * every page (of random bytes otherwise), from the last to the first, through private memory, then a MAP_SHARED region
 * (not copied by a fork: read while stopped), a MADV_WIPEONFORK region (zero
 * in a fork) and a MADV_DONTFORK one (absent from a fork); at the end of
 * each pass every page must hold g.  A replayed image that mixed in pages
 * written later holds g+1 (or more) in pages the interrupted pass had done
 * already, which the end of that pass notices. */
#include <stdint.h>
#include <sys/mman.h>

#include "zdtm.h"

#define PRIVATE_PAGES (64 * 256) /* 64 MiB */
#define OTHER_PAGES 64
#define WORDS (4096 / 8)

static volatile uint64_t *region[4];
static const size_t pages[4] = {PRIVATE_PAGES, OTHER_PAGES, OTHER_PAGES, OTHER_PAGES};
static const char *names[4] = {"private", "shared", "wipe-on-fork", "dont-fork"};

static int check_pass(uint64_t g) {
  for (int r = 0; r < 4; r++)
    for (size_t i = 0; i < pages[r]; i++) {
      uint64_t v = region[r][i * WORDS], idx = region[r][i * WORDS + 1];
      if (v != g || idx != i) {
        zdtm_fail("%s page %zu holds pass %llu (index %llu) at the end of pass %llu", names[r], i,
                  (unsigned long long)v, (unsigned long long)idx, (unsigned long long)g);
        return 0;
      }
    }
  return 1;
}

/* Downwards, while the image is read upwards: a pass that goes on during the
 * write rewrites the pages that the image reads last. */
static void pass(uint64_t g) {
  for (int r = 3; r >= 0; r--)
    for (size_t i = pages[r]; i-- > 0;) {
      region[r][i * WORDS] = g;
      region[r][i * WORDS + 1] = i;
    }
}

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  (void)zdtm_wait_go; /* the passes poll the harness's word themselves */
  for (int r = 0; r < 4; r++) {
    int flags = r == 1 ? MAP_SHARED | MAP_ANONYMOUS : MAP_PRIVATE | MAP_ANONYMOUS;
    void *p = mmap(NULL, pages[r] * 4096, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (p == MAP_FAILED) {
      perror("mmap");
      return 2;
    }
    if (r == 2 && madvise(p, pages[r] * 4096, MADV_WIPEONFORK) != 0) perror("madvise wipeonfork");
    if (r == 3 && madvise(p, pages[r] * 4096, MADV_DONTFORK) != 0) perror("madvise dontfork");
    region[r] = p;
    /* Incompressible, so that the image takes a while to write. */
    uint64_t x = 88172645463325252ull + (uint64_t)r;
    for (size_t w = 0; w < pages[r] * WORDS; w++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      region[r][w] = x;
    }
  }
  uint64_t g = 1;
  pass(g);
  check_pass(g);
  zdtm_ready();
  /* Passes go on while the image is written, until the harness's word. */
  for (;;) {
    g++;
    pass(g);
    if (!check_pass(g)) break;
    if (access(zdtm_go, F_OK) == 0) {
      /* One more whole pass after the replay. */
      g++;
      pass(g);
      check_pass(g);
      break;
    }
  }
  printf("passes: %llu\n", (unsigned long long)g);
  return zdtm_verdict();
}
