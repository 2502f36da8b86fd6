/* Memory of every common kind: malloc heap, brk, anonymous mappings, private
 * (copy-on-write) and shared file mappings, PROT_NONE and read-only areas, a
 * 64 GiB sparse MAP_NORESERVE reservation and shared anonymous memory.  After
 * replay contents, permissions and the program break must be those of before,
 * and the heap and brk must keep working. */
#include "zdtm.h"

#include <fcntl.h>
#include <libgen.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#define PG 4096UL

static unsigned char pat(uint64_t seed, uint64_t i) { return (unsigned char)((i * 131 + seed * 17 + (i >> 12)) ^ (seed >> 3)); }
static void fill(void *p, size_t len, uint64_t seed) {
  for (size_t i = 0; i < len; i++) ((unsigned char *)p)[i] = pat(seed, i);
}
static int check(const void *p, size_t len, uint64_t seed) {
  for (size_t i = 0; i < len; i++)
    if (((const unsigned char *)p)[i] != pat(seed, i)) return 0;
  return 1;
}
static int all_zero(const void *p, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (((const unsigned char *)p)[i]) return 0;
  return 1;
}

/* The permissions ("rwxp") /proc/self/maps shows for the page at addr. */
static int perms_of(void *addr, char out[5]) {
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f) return 0;
  char line[512];
  int found = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned long s, e;
    char pm[5];
    if (sscanf(line, "%lx-%lx %4s", &s, &e, pm) == 3 && (unsigned long)addr >= s && (unsigned long)addr < e) {
      memcpy(out, pm, 5);
      found = 1;
      break;
    }
  }
  fclose(f);
  return found;
}

static sigjmp_buf fault_jmp;
static void on_segv(int sig) { siglongjmp(fault_jmp, sig); }
/* 1 if writing one byte at p faults. */
static int write_faults(volatile char *p) {
  if (sigsetjmp(fault_jmp, 1)) return 1;
  *p = 1;
  return 0;
}
static int read_faults(volatile char *p) {
  if (sigsetjmp(fault_jmp, 1)) return 1;
  (void)*p;
  return 0;
}

#define NBLK 3000
static char *blk[NBLK];
static size_t blk_len[NBLK];

static void make_file(const char *path, size_t len, uint64_t seed) {
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) perror(path), exit(2);
  char *b = malloc(len);
  fill(b, len, seed);
  if (write(fd, b, len) != (ssize_t)len) perror("write"), exit(2);
  free(b);
  close(fd);
}

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  char *dirbuf = strdup(argv[1]);
  const char *dir = dirname(dirbuf);
  char priv_path[4096], shared_path[4096];
  snprintf(priv_path, sizeof priv_path, "%s/memory-private.bin", dir);
  snprintf(shared_path, sizeof shared_path, "%s/memory-shared.bin", dir);

  /* brk, before malloc has a reason to move it further */
  char *brk0 = sbrk(0);
  const size_t brk_len = 5 * PG + 123;
  char *brk_area = sbrk(brk_len);
  if (brk_area == (void *)-1) return perror("sbrk"), 2;
  fill(brk_area, brk_len, 1);
  char *brk_end = sbrk(0);
  if (brk_end != brk_area + brk_len || brk_area != brk0) return fprintf(stderr, "odd sbrk\n"), 2;

  /* heap: small and large (mmap'ed by malloc) blocks, a third freed */
  for (int i = 0; i < NBLK; i++) {
    blk_len[i] = i % 97 == 0 ? 200000 + (size_t)i : 16 + (size_t)(i * 37 % 3000);
    blk[i] = malloc(blk_len[i]);
    fill(blk[i], blk_len[i], 1000 + i);
  }
  for (int i = 0; i < NBLK; i += 3) free(blk[i]), blk[i] = NULL;

  /* anonymous private mapping */
  const size_t anon_len = 3 << 20;
  char *anon = mmap(NULL, anon_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  fill(anon, anon_len, 2);

  /* private file mapping with some pages copied on write */
  const size_t file_pages = 16;
  make_file(priv_path, file_pages * PG, 3);
  int pfd = open(priv_path, O_RDWR);
  char *priv = mmap(NULL, file_pages * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, pfd, 0);
  close(pfd);
  if (priv == MAP_FAILED) return perror("mmap private"), 2;
  volatile unsigned sum = 0;
  for (size_t i = 0; i < file_pages * PG; i += PG) sum += (unsigned char)priv[i]; /* file pages present */
  static const int cow_pages[] = {2, 5, 6, 11, 15};
  for (size_t k = 0; k < sizeof cow_pages / sizeof *cow_pages; k++) fill(priv + cow_pages[k] * PG, PG, 40 + k);
  priv[9 * PG + 100] ^= 0xff; /* one byte of a page is enough to copy it */

  /* shared file mapping */
  const size_t sh_len = 8 * PG;
  make_file(shared_path, sh_len, 4);
  int sfd = open(shared_path, O_RDWR);
  char *shfile = mmap(NULL, sh_len, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
  if (shfile == MAP_FAILED) return perror("mmap shared"), 2;
  fill(shfile, sh_len, 5); /* before the capture: must be in the file */

  /* guard (PROT_NONE) in the middle of a mapping, and a read-only area */
  char *guarded = mmap(NULL, 12 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  fill(guarded, 12 * PG, 6);
  mprotect(guarded + 4 * PG, 4 * PG, PROT_NONE);
  char *ro = mmap(NULL, 6 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  fill(ro, 6 * PG, 7);
  mprotect(ro, 6 * PG, PROT_READ);
  char perm_guard[5], perm_ro[5], perm_below[5], perm_above[5];
  perms_of(guarded + 4 * PG, perm_guard);
  perms_of(ro, perm_ro);
  perms_of(guarded, perm_below);
  perms_of(guarded + 8 * PG, perm_above);

  /* 64 GiB sparse reservation */
  const size_t huge_len = 64UL << 30;
  char *huge = mmap(NULL, huge_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (huge == MAP_FAILED) return perror("mmap 64 GiB"), 2;
  static const size_t touched[] = {0, 4096UL * 3 + (1UL << 30), 17UL << 30, (40UL << 30) + 12345, huge_len - PG};
  static const size_t untouched[] = {PG, 2UL << 30, (17UL << 30) + PG, 50UL << 30, huge_len - 2 * PG};
  for (size_t k = 0; k < sizeof touched / sizeof *touched; k++) {
    char *p = huge + (touched[k] & ~(PG - 1));
    fill(p, PG, 60 + k);
  }

  /* shared anonymous */
  const size_t sa_len = 256 * PG;
  char *shanon = mmap(NULL, sa_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  fill(shanon, sa_len, 8);

  zdtm_ready();
  brk_end = sbrk(0); /* malloc moved it on meanwhile */
  zdtm_wait_go();

  /* brk */
  ZDTM_CHECK(sbrk(0) == brk_end, "sbrk(0) is %p, was %p", sbrk(0), brk_end);
  ZDTM_CHECK((char *)syscall(SYS_brk, 0) == brk_end, "the kernel's break is %p, was %p", (void *)syscall(SYS_brk, 0), brk_end);
  ZDTM_CHECK(check(brk_area, brk_len, 1), "brk area content changed");
  char *more = sbrk(3 * PG);
  ZDTM_CHECK(more == brk_end, "sbrk grows at %p, not at the old break %p", more, brk_end);
  if (more == brk_end) {
    fill(more, 3 * PG, 9);
    ZDTM_CHECK(check(more, 3 * PG, 9), "grown brk area does not keep data");
    ZDTM_CHECK(sbrk(0) == brk_end + 3 * PG, "sbrk(0) after growing is %p", sbrk(0));
    ZDTM_CHECK(check(brk_area, brk_len, 1), "brk area content changed after growing");
  }

  /* heap */
  int bad = 0;
  for (int i = 0; i < NBLK; i++)
    if (blk[i] && !check(blk[i], blk_len[i], 1000 + i)) bad++;
  ZDTM_CHECK(bad == 0, "%d malloc blocks changed", bad);
  for (int i = 0; i < NBLK; i += 2) free(blk[i]), blk[i] = NULL;
  for (int i = 0; i < NBLK; i++)
    if (!blk[i]) {
      blk_len[i] = i % 101 == 0 ? 300000 : 8 + (size_t)(i * 53 % 5000);
      blk[i] = malloc(blk_len[i]);
      if (blk[i]) fill(blk[i], blk_len[i], 5000 + i);
    }
  bad = 0;
  for (int i = 0; i < NBLK; i++) {
    uint64_t seed = (i % 2 == 0 || i % 3 == 0) ? 5000 + i : 1000 + i;
    if (!blk[i] || !check(blk[i], blk_len[i], seed)) bad++;
    free(blk[i]);
  }
  ZDTM_CHECK(bad == 0, "%d malloc blocks wrong after more malloc/free", bad);

  /* anonymous */
  ZDTM_CHECK(check(anon, anon_len, 2), "anonymous mapping content changed");

  /* private file mapping */
  {
    char *file = malloc(file_pages * PG);
    int fd = open(priv_path, O_RDONLY);
    ZDTM_CHECK(fd >= 0 && pread(fd, file, file_pages * PG, 0) == (ssize_t)(file_pages * PG), "cannot read %s", priv_path);
    if (fd >= 0) close(fd);
    ZDTM_CHECK(check(file, file_pages * PG, 3), "the privately mapped file itself changed");
    for (size_t pg = 0; pg < file_pages; pg++) {
      int k = -1;
      for (size_t j = 0; j < sizeof cow_pages / sizeof *cow_pages; j++)
        if (cow_pages[j] == (int)pg) k = (int)j;
      char *p = priv + pg * PG;
      if (k >= 0) {
        ZDTM_CHECK(check(p, PG, 40 + k), "private file mapping: modified page %zu lost its modification", pg);
      } else if (pg == 9) {
        int ok = p[100] == (char)(file[9 * PG + 100] ^ 0xff);
        p[100] ^= 0xff;
        ok = ok && memcmp(p, file + pg * PG, PG) == 0;
        ZDTM_CHECK(ok, "private file mapping: partly modified page 9 wrong");
      } else {
        ZDTM_CHECK(memcmp(p, file + pg * PG, PG) == 0, "private file mapping: page %zu differs from the file", pg);
      }
    }
    free(file);
  }

  /* shared file mapping */
  {
    char *file = malloc(sh_len);
    ZDTM_CHECK(pread(sfd, file, sh_len, 0) == (ssize_t)sh_len, "cannot pread the shared file");
    ZDTM_CHECK(check(file, sh_len, 5), "writes to the shared mapping before capture are not in the file");
    ZDTM_CHECK(check(shfile, sh_len, 5), "shared file mapping content wrong");
    fill(shfile, sh_len, 10);
    ZDTM_CHECK(pread(sfd, file, sh_len, 0) == (ssize_t)sh_len && check(file, sh_len, 10),
               "writes to the shared mapping after replay do not reach the file");
    free(file);
  }

  /* permissions */
  struct sigaction sa = {0};
  sa.sa_handler = on_segv;
  sa.sa_flags = SA_NODEFER;
  sigaction(SIGSEGV, &sa, NULL);
  char pm[5] = "";
  ZDTM_CHECK(perms_of(guarded + 4 * PG, pm) && strcmp(pm, perm_guard) == 0 && strcmp(pm, "---p") == 0,
             "guard area permissions %s, were %s", pm, perm_guard);
  ZDTM_CHECK(perms_of(guarded + 7 * PG, pm) && strcmp(pm, perm_guard) == 0, "guard area end permissions %s", pm);
  ZDTM_CHECK(perms_of(guarded + 3 * PG, pm) && strcmp(pm, perm_below) == 0, "below the guard: %s, was %s", pm, perm_below);
  ZDTM_CHECK(perms_of(guarded + 8 * PG, pm) && strcmp(pm, perm_above) == 0, "above the guard: %s, was %s", pm, perm_above);
  ZDTM_CHECK(perms_of(ro + 5 * PG, pm) && strcmp(pm, perm_ro) == 0 && strcmp(pm, "r--p") == 0,
             "read-only area permissions %s, were %s", pm, perm_ro);
  ZDTM_CHECK(read_faults(guarded + 5 * PG), "reading the PROT_NONE guard does not fault");
  ZDTM_CHECK(write_faults(ro + 2 * PG + 7), "writing the read-only area does not fault");
  ZDTM_CHECK(check(ro, 6 * PG, 7), "read-only area content changed");
  mprotect(guarded + 4 * PG, 4 * PG, PROT_READ | PROT_WRITE);
  ZDTM_CHECK(check(guarded, 12 * PG, 6), "guarded mapping content changed (guard pages included)");
  sa.sa_handler = SIG_DFL;
  sigaction(SIGSEGV, &sa, NULL);

  /* 64 GiB reservation */
  for (size_t k = 0; k < sizeof touched / sizeof *touched; k++)
    ZDTM_CHECK(check(huge + (touched[k] & ~(PG - 1)), PG, 60 + k), "sparse area: page at +0x%zx lost", touched[k]);
  for (size_t k = 0; k < sizeof untouched / sizeof *untouched; k++)
    ZDTM_CHECK(all_zero(huge + untouched[k], PG), "sparse area: untouched page at +0x%zx not zero", untouched[k]);
  huge[(33UL << 30) + 5] = 42;
  ZDTM_CHECK(huge[(33UL << 30) + 5] == 42, "sparse area not writable");

  /* shared anonymous */
  ZDTM_CHECK(check(shanon, sa_len, 8), "shared anonymous mapping content changed");
  fill(shanon, sa_len, 11);
  ZDTM_CHECK(check(shanon, sa_len, 11), "shared anonymous mapping not writable");

  (void)sum;
  return zdtm_verdict();
}
