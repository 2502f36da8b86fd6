/* The application of the image benchmark: heartbeat CTL_DIR MIB random|compressible
 *
 * Fills MIB MiB, prints "READY checksum=HEX", then beats every millisecond.
 * Pauses are measured here, by the application itself, because that is what a
 * job sees: a gap between two beats is time it did not run (a capture that
 * stops it, a replay that has not yet resumed it).
 *
 * Commands come as a file CTL_DIR/cmd holding a word and an argument (polled
 * every beat, so the bench needs no pid and signals need not cross ibdbg's
 * namespaces; the bench names the answers, as a replayed program's own
 * counters are those of the moment it was captured):
 *   report TAG  write CTL_DIR/report.TAG: the longest gap since the last
 *           report, the memory's checksum now and the one at fill time, MiB resident
 *   dirty   change 1% of the pages (for incremental captures)
 *   flip    change one bit without telling anyone: the bench's self-test that a
 *           replay whose memory differs by a single bit is caught
 *   exit TAG  write PASS or FAIL to CTL_DIR/verdict.TAG (and stdout, which a
 *           replay shares with the original) as the memory checksum still
 *           equals the expected or not, and exit
 * Every gap over 50 ms is also appended to CTL_DIR/gaps as
 * "REALTIME_NS_AT_END GAP_NS", so that the bench can tell when the first
 * instruction after a replay ran (CLOCK_REALTIME: the bench compares it with
 * its own clock).  Checksums are computed between beats; the time they take is
 * excluded from the gaps. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static uint64_t *mem;
static size_t words;
static const char *ctl;

static int64_t now_ns(clockid_t c) {
  struct timespec ts;
  clock_gettime(c, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Position-dependent (a page swapped with another one changes it); four
 * independent lanes so that 4 GiB take well under a second. */
static uint64_t checksum(void) {
  uint64_t h[4] = {1, 2, 3, 4};
  const uint64_t k = 0x9E3779B97F4A7C15ull;
  size_t i = 0;
  for (; i + 4 <= words; i += 4)
    for (int l = 0; l < 4; l++) h[l] = (h[l] ^ mem[i + l]) * k + i;
  for (; i < words; i++) h[0] = (h[0] ^ mem[i]) * k + i;
  return h[0] ^ (h[1] * 3) ^ (h[2] * 5) ^ (h[3] * 7);
}

static long resident_mib(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  long size = 0, rss = 0;
  if (f) {
    if (fscanf(f, "%ld %ld", &size, &rss) != 2) rss = 0;
    fclose(f);
  }
  return rss * (sysconf(_SC_PAGESIZE) / 1024) / 1024;
}

static void append(const char *name, const char *line) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", ctl, name);
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (fd < 0) return;
  if (write(fd, line, strlen(line)) < 0) {
  }
  close(fd);
}

/* Reads and removes CTL_DIR/cmd; returns the word or "" if there is none, and
 * its argument in *arg. */
static const char *take_cmd(char *buf, size_t len, const char **arg) {
  char path[4096];
  snprintf(path, sizeof path, "%s/cmd", ctl);
  int fd = open(path, O_RDONLY);
  if (fd < 0) return "";
  ssize_t n = read(fd, buf, len - 1);
  close(fd);
  unlink(path);
  if (n <= 0) return "";
  buf[n] = 0;
  buf[strcspn(buf, "\n")] = 0;
  char *space = strchr(buf, ' ');
  *arg = "";
  if (space) *space = 0, *arg = space + 1;
  return buf;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s CTL_DIR MIB random|compressible\n", argv[0]);
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  ctl = argv[1];
  size_t bytes = (size_t)atol(argv[2]) << 20;
  int compressible = strcmp(argv[3], "compressible") == 0;
  if (!compressible && strcmp(argv[3], "random") != 0) {
    fprintf(stderr, "heartbeat: memory kind must be random or compressible, not %s\n", argv[3]);
    return 2;
  }
  words = bytes / 8;
  mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    perror("heartbeat: mmap");
    return 2;
  }
  /* Compressible keeps one random byte per word: about 8:1 for a general
   * compressor, yet no page is zero or repeats, so nothing is skipped or
   * deduplicated for free. */
  uint64_t x = 88172645463325252ull;
  for (size_t i = 0; i < words; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    mem[i] = compressible ? (x & 0xff) : x;
  }
  uint64_t expected = checksum();
  printf("READY checksum=%016" PRIx64 " mib=%zu kind=%s\n", expected, bytes >> 20, argv[3]);

  int64_t last = now_ns(CLOCK_MONOTONIC), max_gap = 0;
  uint64_t dirty_seed = 1, beats = 0;
  for (;;) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
    int64_t t = now_ns(CLOCK_MONOTONIC), gap = t - last;
    last = t;
    if (gap > max_gap) max_gap = gap;
    if (gap > 50000000) {
      char line[128];
      snprintf(line, sizeof line, "%" PRId64 " %" PRId64 "\n", now_ns(CLOCK_REALTIME), gap);
      append("gaps", line);
    }
    /* A bench that died leaves no 4 GiB process behind: its scratch directory goes. */
    if (++beats % 1000 == 0 && access(ctl, F_OK) != 0) {
      fprintf(stderr, "heartbeat: %s is gone, exiting\n", ctl);
      return 3;
    }
    char buf[64];
    const char *arg;
    const char *cmd = take_cmd(buf, sizeof buf, &arg);
    if (!*cmd) continue;
    if (strcmp(cmd, "report") == 0) {
      uint64_t sum = checksum();
      char line[256], name[32];
      snprintf(line, sizeof line, "max_gap_ns=%" PRId64 " checksum=%016" PRIx64 " expected=%016" PRIx64 " rss_mib=%ld\n",
               max_gap, sum, expected, resident_mib());
      snprintf(name, sizeof name, "report.%.20s.tmp", arg);
      append(name, line);
      char from[4096], to[4096];
      snprintf(from, sizeof from, "%s/%s", ctl, name);
      snprintf(to, sizeof to, "%s/report.%.20s", ctl, arg);
      rename(from, to);
      max_gap = 0;
    } else if (strcmp(cmd, "dirty") == 0) {
      size_t stride = 100 * 512; /* one word in every 100th page */
      for (size_t i = (dirty_seed++ % 512); i < words; i += stride) mem[i] ^= 0x5a5a5a5a5a5a5a5aull;
      expected = checksum();
    } else if (strcmp(cmd, "flip") == 0) {
      mem[words / 3] ^= 1ull << 17;
    } else if (strcmp(cmd, "exit") == 0) {
      uint64_t sum = checksum();
      char line[128], name[32];
      if (sum == expected)
        snprintf(line, sizeof line, "PASS\n");
      else
        snprintf(line, sizeof line, "FAIL: checksum %016" PRIx64 " expected %016" PRIx64 "\n", sum, expected);
      snprintf(name, sizeof name, "verdict.%.20s", arg);
      append(name, line);
      fputs(line, stdout);
      return sum == expected ? 0 : 1;
    } else {
      fprintf(stderr, "heartbeat: unknown command %s\n", cmd);
    }
    /* The checksum's own time is not a pause anyone caused. */
    last = now_ns(CLOCK_MONOTONIC);
  }
}
