/* POSIX shared memory: a shm_open file mapped shared (its descriptor closed)
 * and another only open; a /dev/shm file mapped shared by parent and child
 * and then deleted (as Open MPI does); a memfd open and mapped by both; a
 * regular file mapped shared and writable (as Open MPI's session files),
 * which the harness removes before the replay.
 * After replay: contents, modes and offsets kept, shm_open by name finds the
 * files, and each object is still one object shared by both processes and
 * by descriptor and mapping. */
#include "zdtm.h"

#include <fcntl.h>
#include <libgen.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define PG 4096UL
#define A_LEN (5 * PG + 10)
#define D_LEN (4 * PG)
#define M_LEN (3 * PG)

static unsigned char pat(size_t i, int seed) { return (unsigned char)(i * 13 + seed * 31 + (i >> 12)); }
static void fill(unsigned char *p, size_t n, int seed) {
  for (size_t i = 0; i < n; i++) p[i] = pat(i, seed);
}
static int check(const unsigned char *p, size_t n, int seed) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != pat(i, seed)) return 0;
  return 1;
}

static char name_a[64], name_b[64], path_d[96];
static unsigned char *a, *d, *m, *sf;
static int fd_b, mfd;

/* The last page of each region is the handshake: byte 0 from the parent,
 * byte 1 from the child, each written only after the replay. */
static int wait_byte(volatile unsigned char *p, unsigned char v) {
  for (int i = 0; i < 5000 && *p != v; i++) usleep(1000);
  return *p == v;
}

static int child(int up) {
  write(up, "r", 1);
  zdtm_wait_go();
  int bad = 0;
  if (!check(a, 4 * PG, 1)) bad |= 1;
  if (!check(d, 3 * PG, 2)) bad |= 2;
  if (!check(m, 2 * PG, 3)) bad |= 4;
  if (!wait_byte(a + 4 * PG, 0x11)) bad |= 8;
  a[4 * PG + 1] = 0x21;
  if (!wait_byte(d + 3 * PG, 0x12)) bad |= 16;
  d[3 * PG + 1] = 0x22;
  if (!wait_byte(m + 2 * PG, 0x13)) bad |= 32;
  /* Through the descriptor: the parent must see it in its mapping. */
  unsigned char x = 0x23;
  if (pwrite(mfd, &x, 1, 2 * PG + 1) != 1) bad |= 64;
  return bad;
}

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  const char *dir = dirname(strdup(argv[1]));
  snprintf(name_a, sizeof name_a, "/ibdbg-posixshm-a.%d", getpid());
  snprintf(name_b, sizeof name_b, "/ibdbg-posixshm-b.%d", getpid());
  snprintf(path_d, sizeof path_d, "/dev/shm/ibdbg-posixshm-d.%d", getpid());
  char cpath[4096];
  snprintf(cpath, sizeof cpath, "%s/ipc-cleanup", dir);
  FILE *cf = fopen(cpath, "w");
  if (cf) fprintf(cf, "f %s\nf %s\nf %s\n", name_a, name_b, path_d), fclose(cf);

  int fa = shm_open(name_a, O_CREAT | O_EXCL | O_RDWR, 0640);
  if (fa < 0 || ftruncate(fa, A_LEN) != 0) return perror("shm_open a"), 2;
  a = mmap(NULL, A_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fa, 0);
  close(fa);
  fill(a, 4 * PG, 1);
  memset(a + 4 * PG, 0, PG);
  memcpy(a + 5 * PG, "tail-bytes", 10);

  fd_b = shm_open(name_b, O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd_b < 0 || write(fd_b, "hello posix shm", 15) != 15) return perror("shm_open b"), 2;
  lseek(fd_b, 6, SEEK_SET);

  int fdd = open(path_d, O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fdd < 0 || ftruncate(fdd, D_LEN) != 0) return perror(path_d), 2;
  d = mmap(NULL, D_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fdd, 0);
  /* Bytes no process ever touches through a mapping. */
  pwrite(fdd, "written, never mapped in", 24, 3 * PG + 100);
  close(fdd);
  unlink(path_d);
  fill(d, 3 * PG, 2);

  mfd = memfd_create("ibdbg-memfd", MFD_CLOEXEC);
  if (mfd < 0 || ftruncate(mfd, M_LEN) != 0) return perror("memfd"), 2;
  m = mmap(NULL, M_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
  unsigned char *tmp = malloc(2 * PG);
  fill(tmp, 2 * PG, 3);
  pwrite(mfd, tmp, 2 * PG, 0); /* through the descriptor: pages the mapping never touched */
  free(tmp);

  /* The replay writes what the mapping held back into the file. */
  char spath[4096];
  snprintf(spath, sizeof spath, "%s/session.bin", dir);
  int fs = open(spath, O_CREAT | O_TRUNC | O_RDWR, 0600);
  if (fs < 0 || ftruncate(fs, 2 * PG + 50) != 0) return perror(spath), 2;
  sf = mmap(NULL, 3 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fs, 0);
  close(fs);
  fill(sf, 2 * PG + 50, 4);
  snprintf(cpath, sizeof cpath, "%s/remove-before-replay", dir);
  cf = fopen(cpath, "w");
  if (cf) fprintf(cf, "%s\n", spath), fclose(cf);

  int up[2];
  pipe(up);
  pid_t c = fork();
  if (c == 0) _exit(child(up[1]));
  char r;
  if (read(up[0], &r, 1) != 1) return 2;
  zdtm_ready();
  zdtm_wait_go();

  ZDTM_CHECK(check(a, 4 * PG, 1) && memcmp(a + 5 * PG, "tail-bytes", 10) == 0, "shm_open mapping contents wrong");
  int fa2 = shm_open(name_a, O_RDWR, 0);
  ZDTM_CHECK(fa2 >= 0, "shm_open(%s) by name fails after replay: %s", name_a, strerror(errno));
  if (fa2 >= 0) {
    struct stat sb;
    fstat(fa2, &sb);
    ZDTM_CHECK(sb.st_size == (off_t)A_LEN && (sb.st_mode & 0777) == 0640, "%s: size %ld mode %o", name_a,
               (long)sb.st_size, sb.st_mode & 0777);
    unsigned char buf[10];
    ZDTM_CHECK(pread(fa2, buf, 10, 5 * PG) == 10 && memcmp(buf, "tail-bytes", 10) == 0,
               "reading %s by name does not give its contents", name_a);
    /* Written through a new descriptor: seen in the old mapping. */
    unsigned char x = 0x77;
    pwrite(fa2, &x, 1, 5 * PG + 3);
    ZDTM_CHECK(a[5 * PG + 3] == 0x77, "%s opened by name is another object than the mapping", name_a);
    close(fa2);
  }
  char buf[32] = {0};
  ZDTM_CHECK(read(fd_b, buf, 9) == 9 && memcmp(buf, "posix shm", 9) == 0, "shm fd offset or contents wrong ('%s')", buf);
  int fb2 = shm_open(name_b, O_RDONLY, 0);
  ZDTM_CHECK(fb2 >= 0 && pread(fb2, buf, 5, 0) == 5 && memcmp(buf, "hello", 5) == 0, "shm_open(%s) by name fails", name_b);
  ZDTM_CHECK(access(path_d, F_OK) != 0, "the deleted /dev/shm file is back under its name");
  ZDTM_CHECK(check(d, 3 * PG, 2), "deleted /dev/shm file mapping contents wrong");
  /* Only a privileged capture may open the object behind a mapping
   * (/proc/PID/map_files); an unprivileged one keeps the pages mapped in. */
  if (geteuid() == 0)
    ZDTM_CHECK(memcmp(d + 3 * PG + 100, "written, never mapped in", 24) == 0,
               "bytes of the deleted /dev/shm file that no mapping had touched are lost");
  ZDTM_CHECK(check(m, 2 * PG, 3), "memfd mapping contents wrong");
  char link[128] = {0}, lp[64];
  snprintf(lp, sizeof lp, "/proc/self/fd/%d", mfd);
  readlink(lp, link, sizeof link - 1);
  ZDTM_CHECK(strstr(link, "memfd:ibdbg-memfd") != NULL, "the memfd is now '%s'", link);

  ZDTM_CHECK(check(sf, 2 * PG + 50, 4), "shared file mapping contents wrong");
  fs = open(spath, O_RDONLY);
  struct stat ss;
  ZDTM_CHECK(fs >= 0 && fstat(fs, &ss) == 0 && ss.st_size == (off_t)(2 * PG + 50), "%s was not made again with its size",
             spath);
  if (fs >= 0) {
    unsigned char *fb = malloc(2 * PG + 50);
    ZDTM_CHECK(pread(fs, fb, 2 * PG + 50, 0) == (ssize_t)(2 * PG + 50) && check(fb, 2 * PG + 50, 4),
               "%s does not hold what the mapping held", spath);
    sf[7] = 0x5a;
    ZDTM_CHECK(pread(fs, fb, 8, 0) == 8 && fb[7] == 0x5a, "the mapping no longer reaches %s", spath);
    free(fb);
    close(fs);
  }

  a[4 * PG] = 0x11;
  ZDTM_CHECK(wait_byte(a + 4 * PG + 1, 0x21), "the shm_open mapping is no longer shared with the child");
  d[3 * PG] = 0x12;
  ZDTM_CHECK(wait_byte(d + 3 * PG + 1, 0x22), "the deleted /dev/shm file is no longer shared with the child");
  m[2 * PG] = 0x13;
  ZDTM_CHECK(wait_byte(m + 2 * PG + 1, 0x23), "the memfd is no longer one object (child's descriptor, our mapping)");
  int st;
  ZDTM_CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0,
             "the child found its state wrong (bits %d)", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
  shm_unlink(name_a);
  shm_unlink(name_b);
  return zdtm_verdict();
}
