/* read(2) into memory whose pages are not back yet after a lazy replay: the
 * kernel itself faults on them, and must get the image's bytes around what it
 * writes, never EFAULT and never stale bytes over what it wrote.
 *
 * Two regions: `target` (allocated first, so higher up: the page server,
 * which fills upwards, reaches it last) and `filler`, which keeps the server
 * busy.  Until the go file appears the program reads a file into slot after
 * slot of `target` (each time other bytes), each read starting mid-page, and
 * checks every byte around it; before a read it asks /proc/self/pagemap whether the page is
 * present, and says so once it saw a missing one (only a lazy replay has
 * those).  After the go file a forked child checks both regions too.  At the
 * end both regions must hold exactly what they should. */
#include "zdtm.h"

#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define MIB (1u << 20)
#define SLOTS 64          /* 1 MiB each */
#define FILLER (384 * MIB)
#define AT 100            /* a read starts this far into its slot */
#define LEN (3 * 4096 + 50)

static uint8_t img_byte(size_t i) { return (uint8_t)(i * 2654435761u >> 13); }
/* What the file holds at its version v: each read brings different bytes, so
 * that older bytes put back over them would show. */
static uint8_t file_byte(size_t i, uint32_t v) { return (uint8_t)(i * 40503u + 7 + v * 31u); }

/* Opened each time: a /proc/self/pagemap kept open stays bound to the
 * memory of the process that opened it. */
static int page_missing(const void *p) {
  int fd = open("/proc/self/pagemap", O_RDONLY);
  if (fd < 0) return 0;
  uint64_t e = 0;
  ssize_t n = pread(fd, &e, 8, (off_t)((uintptr_t)p / 4096 * 8));
  close(fd);
  return n == 8 && !(e >> 63 & 1) && !(e >> 62 & 1);
}

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  (void)zdtm_wait_go; /* it waits its own way, reading meanwhile */
  uint8_t *target = mmap(NULL, SLOTS * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  uint8_t *filler = mmap(NULL, FILLER, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (target == MAP_FAILED || filler == MAP_FAILED) return 2;
  for (size_t i = 0; i < SLOTS * MIB; i++) target[i] = img_byte(i);
  for (size_t i = 0; i < FILLER; i++) filler[i] = img_byte(i + 12345);

  char path[4200];
  snprintf(path, sizeof path, "%s.data", zdtm_go);
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return 2;
  static uint8_t data[LEN];

  zdtm_ready();
  uint32_t reads = 0;
  static uint32_t ver[SLOTS]; /* 0: never read into, else the file's version + 1 */
  int saw_missing = 0;
  /* One read into `slot`, checked. */
#define READ_SLOT(slot)                                                                  \
  do {                                                                                   \
    uint8_t *at = target + (size_t)(slot) * MIB + AT;                                    \
    uint32_t v = ++reads;                                                                \
    for (size_t i = 0; i < LEN; i++) data[i] = file_byte(i, v);                          \
    if (pwrite(fd, data, LEN, 0) != LEN) return 2;                                       \
    if (page_missing(at) && !saw_missing) {                                              \
      saw_missing = 1;                                                                   \
      printf("lazy: read(2) into a page not yet present\n");                             \
      fflush(stdout);                                                                    \
    }                                                                                    \
    ssize_t n = pread(fd, at, LEN, 0);                                                   \
    ZDTM_CHECK(n == LEN, "read into slot %d returned %zd (errno %d)", (int)(slot), n, errno); \
    for (size_t i = 0; i < LEN; i++)                                                     \
      if (at[i] != file_byte(i, v)) {                                                    \
        zdtm_fail("slot %d: byte %zu is not what read(2) put there", (int)(slot), i);    \
        break;                                                                           \
      }                                                                                  \
    ver[slot] = v + 1;                                                                   \
  } while (0)
  int slot = 0;
  while (access(zdtm_go, F_OK) != 0) {
    READ_SLOT(slot);
    slot = (slot + 1) % SLOTS;
    if (slot == 0) {
      struct timespec ts = {0, 2 * 1000 * 1000};
      nanosleep(&ts, NULL);
    }
  }
  /* Right after the replay (the go file is there by then): a child whose
   * pages come through a userfaultfd of its own (the fork event) checks the
   * filler, and every slot is read into once more, while the page server is
   * still busy. */
  pid_t child = fork();
  if (child == 0) {
    /* `target` first: the server reaches it last. */
    for (size_t s = 0; s < SLOTS; s++)
      for (size_t i = s * MIB; i < (s + 1) * MIB; i++) {
        size_t in = i - s * MIB;
        uint8_t want = ver[s] && in >= AT && in < AT + LEN ? file_byte(in - AT, ver[s] - 1) : img_byte(i);
        if (target[i] != want) _exit(3);
      }
    for (size_t i = 0; i < FILLER; i++)
      if (filler[i] != img_byte(i + 12345)) _exit(4);
    _exit(0);
  }
  for (int s = 0; s < SLOTS; s++) READ_SLOT(s);
  int st = 0;
  ZDTM_CHECK(child > 0 && waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0,
             "the child forked after the replay saw other memory (status %#x)", st);
  for (size_t s = 0; s < SLOTS; s++)
    for (size_t i = s * MIB; i < (s + 1) * MIB; i++) {
      size_t in = i - s * MIB;
      uint8_t want = ver[s] && in >= AT && in < AT + LEN ? file_byte(in - AT, ver[s] - 1) : img_byte(i);
      if (target[i] != want) {
        zdtm_fail("target byte %zu (slot %zu) changed", i, s);
        s = SLOTS;
        break;
      }
    }
  for (size_t i = 0; i < FILLER; i++)
    if (filler[i] != img_byte(i + 12345)) {
      zdtm_fail("filler byte %zu changed", i);
      break;
    }
  ZDTM_CHECK(reads > 0, "no read at all");
  unlink(path);
  return zdtm_verdict();
}
