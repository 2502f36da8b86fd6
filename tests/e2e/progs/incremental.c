/* Incremental capture (tests/e2e/incremental.sh): known patterns, a full
 * capture, then about 1% of the pages changed -- new bytes, zeros over
 * non-zero pages, pages dropped with MADV_DONTNEED, pages of a hole written
 * for the first time, a region unmapped, one mapped anew, one split by
 * mprotect -- then an incremental capture.  After the replay of the
 * incremental image every byte is checked against what the code says it
 * must be (not against a copy in memory, which would be restored alike).
 *
 *   zdtm-incremental GO_FILE      waits for GO_FILE.step, changes, prints
 *                                 CHANGED, waits for GO_FILE, checks. */
#include "zdtm.h"

#include <stdint.h>
#include <sys/mman.h>

#define PAGE 4096
#define A_PAGES 8192 /* 32 MiB */
#define B_PAGES 1024
#define C_PAGES 512
#define HOLE_START 100
#define HOLE_END 200

static uint8_t *a, *b, *c;
static uint64_t *heap;

static uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return (x ^ (x >> 31)) | 1; /* never a zero word */
}

static void fill(uint8_t *page, uint64_t id, uint64_t seed) {
  uint64_t *w = (uint64_t *)page;
  for (int i = 0; i < PAGE / 8; i++) w[i] = mix(id * 512 + i + seed);
}

/* What page i of A must hold: 0 zero, else the seed of its pattern. */
enum { ZERO = 0, BASE = 1, NEW = 2 };
static int state[A_PAGES];

static void expected_before(void) {
  for (int i = 0; i < A_PAGES; i++) state[i] = (i >= HOLE_START && i < HOLE_END) ? ZERO : BASE;
}

/* The changes, in this order; about 1% of A. */
#define N_NEW 60
#define N_ZERO 20
#define N_DROP 10
static int new_page(int k) { return 37 + k * 97; }
static int zero_page(int k) { return 50 + k * 101; }
static int drop_page(int k) { return 6000 + k * 3; }

static void expected_after(void) {
  expected_before();
  for (int k = 0; k < N_NEW; k++) state[new_page(k)] = NEW;
  for (int k = 0; k < N_ZERO; k++) state[zero_page(k)] = ZERO;
  for (int k = 0; k < N_DROP; k++) state[drop_page(k)] = ZERO;
  for (int i = 120; i < 125; i++) state[i] = NEW; /* first writes in the hole */
}

static void apply(void) {
  for (int i = 0; i < A_PAGES; i++)
    if (state[i] == BASE) fill(a + (size_t)i * PAGE, i, 1);
}

static void change(void) {
  for (int k = 0; k < N_NEW; k++) fill(a + (size_t)new_page(k) * PAGE, new_page(k), 2);
  for (int k = 0; k < N_ZERO; k++) memset(a + (size_t)zero_page(k) * PAGE, 0, PAGE);
  for (int k = 0; k < N_DROP; k++) madvise(a + (size_t)drop_page(k) * PAGE, PAGE, MADV_DONTNEED);
  for (int i = 120; i < 125; i++) fill(a + (size_t)i * PAGE, i, 2);
  /* A split: the pages keep their bytes. */
  mprotect(a + 5000 * PAGE, 16 * PAGE, PROT_READ);
  munmap(b, (size_t)B_PAGES * PAGE);
  c = mmap(NULL, (size_t)C_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  for (int i = 0; i < C_PAGES; i++) fill(c + (size_t)i * PAGE, i, 3);
  heap[7] = 0x1234567812345678ull;
}

static void check(void) {
  expected_after();
  static uint8_t want[PAGE];
  int bad = 0, first = -1;
  for (int i = 0; i < A_PAGES; i++) {
    if (state[i] == ZERO)
      memset(want, 0, PAGE);
    else
      fill(want, i, state[i] == BASE ? 1 : 2);
    if (memcmp(want, a + (size_t)i * PAGE, PAGE) != 0) {
      if (first < 0) first = i;
      bad++;
    }
  }
  ZDTM_CHECK(bad == 0, "%d pages of A differ, the first %d (state %d)", bad, first, first >= 0 ? state[first] : -1);
  bad = 0;
  for (int i = 0; i < C_PAGES; i++) {
    fill(want, i, 3);
    if (memcmp(want, c + (size_t)i * PAGE, PAGE) != 0) bad++;
  }
  ZDTM_CHECK(bad == 0, "%d pages of the region mapped after the full capture differ", bad);
  ZDTM_CHECK(msync(b, PAGE, MS_ASYNC) != 0 && errno == ENOMEM, "the region unmapped after the full capture is back");
  for (int i = 0; i < 1024; i++) {
    uint64_t w = i == 7 ? 0x1234567812345678ull : mix((uint64_t)i + 4);
    if (heap[i] != w) {
      zdtm_fail("heap word %d differs", i);
      break;
    }
  }
  /* Still writable where it was, read-only where mprotect said. */
  a[0] = 1;
  unsigned char vec;
  ZDTM_CHECK(mincore(a + 5000 * PAGE, PAGE, &vec) == 0, "the read-only part of A is gone");
}

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  char step[4096];
  snprintf(step, sizeof step, "%s.step", argv[1]);
  a = mmap(NULL, (size_t)A_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  b = mmap(NULL, (size_t)B_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  heap = malloc(1024 * 8);
  if (a == MAP_FAILED || b == MAP_FAILED || !heap) return 2;
  expected_before();
  apply();
  for (int i = 0; i < B_PAGES; i++) fill(b + (size_t)i * PAGE, i, 5);
  for (int i = 0; i < 1024; i++) heap[i] = mix((uint64_t)i + 4);
  zdtm_ready();
  while (access(step, F_OK) != 0) {
    struct timespec ts = {0, 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  change();
  printf("CHANGED\n");
  fflush(stdout);
  zdtm_wait_go();
  check();
  return zdtm_verdict();
}
