/* The vdso: glibc keeps pointers into it, so it must be back at the same
 * address and working.  After replay clock_gettime (REALTIME, MONOTONIC,
 * BOOTTIME), gettimeofday and time() through libc must agree with the raw
 * system call, many times over. */
#include "zdtm.h"

#include <sys/auxv.h>
#include <sys/syscall.h>
#include <sys/time.h>

static int vdso_range(unsigned long *s, unsigned long *e) {
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f) return 0;
  char line[512];
  int found = 0;
  while (fgets(line, sizeof line, f))
    if (strstr(line, "[vdso]") && sscanf(line, "%lx-%lx", s, e) == 2) found = 1;
  fclose(f);
  return found;
}

static double ts_sec(const struct timespec *t) { return t->tv_sec + t->tv_nsec / 1e9; }

static double raw_clock(clockid_t c) {
  struct timespec t;
  syscall(SYS_clock_gettime, c, &t);
  return ts_sec(&t);
}

static int loop(int rounds, int *bad_clock, int *bad_tod, int *bad_time, int *backwards) {
  static const clockid_t clocks[] = {CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_BOOTTIME};
  double last_mono = 0;
  for (int i = 0; i < rounds; i++) {
    for (int k = 0; k < 3; k++) {
      struct timespec t;
      if (clock_gettime(clocks[k], &t) != 0) return 0;
      double d = ts_sec(&t) - raw_clock(clocks[k]);
      if (d > 1 || d < -1) (*bad_clock)++;
      if (k == 1) {
        if (ts_sec(&t) < last_mono) (*backwards)++;
        last_mono = ts_sec(&t);
      }
    }
    struct timeval tv;
    gettimeofday(&tv, NULL);
    double d = tv.tv_sec + tv.tv_usec / 1e6 - raw_clock(CLOCK_REALTIME);
    if (d > 1 || d < -1) (*bad_tod)++;
    time_t now = time(NULL);
    d = (double)now - raw_clock(CLOCK_REALTIME);
    if (d > 1.5 || d < -1.5) (*bad_time)++;
  }
  return 1;
}

static int range_is_executable(unsigned long s, unsigned long e) {
  FILE *f = fopen("/proc/self/maps", "r");
  char line[512];
  int ok = 0;
  while (f && fgets(line, sizeof line, f)) {
    unsigned long a, b;
    char perms[8];
    if (sscanf(line, "%lx-%lx %7s", &a, &b, perms) == 3 && a <= s && b >= e && perms[2] == 'x') ok = 1;
  }
  if (f) fclose(f);
  return ok;
}

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  unsigned long s0 = 0, e0 = 0;
  if (!vdso_range(&s0, &e0)) return fprintf(stderr, "no [vdso] in /proc/self/maps\n"), 2;
  unsigned long aux0 = getauxval(AT_SYSINFO_EHDR);
  int b1 = 0, b2 = 0, b3 = 0, b4 = 0;
  loop(1000, &b1, &b2, &b3, &b4);
  struct timespec mono0;
  clock_gettime(CLOCK_MONOTONIC, &mono0);

  zdtm_ready();
  zdtm_wait_go();

  unsigned long s1 = 0, e1 = 0;
  ZDTM_CHECK(vdso_range(&s1, &e1), "no [vdso] in /proc/self/maps after replay");
  /* On the capturing kernel the vdso is back at its address; on another one
   * (IBDBG_VDSO_PATCH=1 simulates it) the kernel's vdso lives elsewhere and
   * the captured range holds code that jumps there: executable either way. */
  if (getenv("ZDTM_VDSO_MAY_MOVE") == NULL)
    ZDTM_CHECK(s1 == s0 && e1 == e0, "[vdso] at %lx-%lx, was %lx-%lx", s1, e1, s0, e0);
  else
    ZDTM_CHECK(range_is_executable(s0, e0), "the captured vdso range %lx-%lx is not executable", s0, e0);
  ZDTM_CHECK(getauxval(AT_SYSINFO_EHDR) == aux0, "AT_SYSINFO_EHDR is %lx, was %lx", getauxval(AT_SYSINFO_EHDR), aux0);
  struct timespec mono1;
  clock_gettime(CLOCK_MONOTONIC, &mono1);
  ZDTM_CHECK(ts_sec(&mono1) >= ts_sec(&mono0), "CLOCK_MONOTONIC went back across the replay");
  b1 = b2 = b3 = b4 = 0;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  ZDTM_CHECK(loop(200000, &b1, &b2, &b3, &b4), "clock_gettime failed");
  clock_gettime(CLOCK_MONOTONIC, &t1);
  ZDTM_CHECK(b1 == 0, "clock_gettime disagreed with the system call %d times", b1);
  ZDTM_CHECK(b2 == 0, "gettimeofday disagreed with the system call %d times", b2);
  ZDTM_CHECK(b3 == 0, "time() disagreed with the system call %d times", b3);
  ZDTM_CHECK(b4 == 0, "CLOCK_MONOTONIC went backwards %d times", b4);
  /* Through the vdso, a million calls take well under a second. */
  clock_gettime(CLOCK_MONOTONIC, &t0);
  struct timespec t;
  for (int i = 0; i < 1000000; i++) clock_gettime(CLOCK_MONOTONIC, &t);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double took = ts_sec(&t1) - ts_sec(&t0);
  printf("1e6 clock_gettime calls: %.3f s\n", took);
  return zdtm_verdict();
}
