/* Descriptors and per-process file state: a read-write file at an offset, an
 * O_APPEND file, a file deleted while open, descriptors with and without
 * FD_CLOEXEC, a directory descriptor, stdin on /dev/null, the working
 * directory, umask and resource limits. */
#include "zdtm.h"

#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

static unsigned char pat(int seed, size_t i) { return (unsigned char)(i * 7 + seed * 31 + (i >> 8)); }

static void make_file(const char *path, size_t len, int seed) {
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) perror(path), exit(2);
  for (size_t i = 0; i < len; i++) {
    unsigned char c = pat(seed, i);
    write(fd, &c, 1);
  }
  close(fd);
}

static int check_bytes(const unsigned char *b, size_t len, int seed, size_t from) {
  for (size_t i = 0; i < len; i++)
    if (b[i] != pat(seed, from + i)) return 0;
  return 1;
}

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  char *dirbuf = strdup(argv[1]);
  char dir[PATH_MAX];
  if (!realpath(dirname(dirbuf), dir)) return perror("realpath"), 2;
  if (chdir(dir)) return perror("chdir"), 2;

  /* stdin on /dev/null */
  int nul = open("/dev/null", O_RDONLY);
  dup2(nul, 0);
  close(nul);

  /* read-write at offset 123 */
  make_file("files-data.bin", 8192, 1);
  int rw = open("files-data.bin", O_RDWR);
  lseek(rw, 123, SEEK_SET);

  /* append */
  int app = open("files-append.log", O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
  write(app, "first\n", 6);

  /* deleted while open */
  make_file("files-gone.bin", 20000, 2);
  int gone = open("files-gone.bin", O_RDWR);
  lseek(gone, 777, SEEK_SET);
  unlink("files-gone.bin");

  /* close-on-exec and not */
  int cx = open("files-data.bin", O_RDONLY | O_CLOEXEC);
  int ncx = open("files-data.bin", O_RDONLY);
  lseek(ncx, 4000, SEEK_SET);

  /* a directory descriptor */
  mkdir("files-sub", 0755);
  make_file("files-sub/inner.bin", 100, 3);
  int dfd = open("files-sub", O_RDONLY | O_DIRECTORY);

  umask(027);
  struct rlimit core, nofile;
  getrlimit(RLIMIT_CORE, &core);
  core.rlim_cur = 0;
  setrlimit(RLIMIT_CORE, &core);
  getrlimit(RLIMIT_NOFILE, &nofile);
  nofile.rlim_cur = nofile.rlim_max >= 4096 ? 4096 : nofile.rlim_max;
  setrlimit(RLIMIT_NOFILE, &nofile);
  getrlimit(RLIMIT_CORE, &core);
  getrlimit(RLIMIT_NOFILE, &nofile);

  pid_t pid0 = getpid();
  if (rw < 0 || app < 0 || gone < 0 || cx < 0 || ncx < 0 || dfd < 0) return perror("open"), 2;

  zdtm_ready();
  zdtm_wait_go();

  ZDTM_CHECK(getpid() == pid0, "getpid() is %d, was %d", getpid(), pid0);
  ZDTM_CHECK(getppid() > 0 && getppid() != getpid() && kill(getppid(), 0) == 0, "getppid() is %d", getppid());

  /* cwd, umask, limits */
  char cwd[PATH_MAX];
  ZDTM_CHECK(getcwd(cwd, sizeof cwd) && strcmp(cwd, dir) == 0, "cwd is %s, was %s", cwd, dir);
  mode_t um = umask(022);
  umask(um);
  ZDTM_CHECK(um == 027, "umask is %03o, was 027", um);
  struct rlimit rl;
  getrlimit(RLIMIT_CORE, &rl);
  ZDTM_CHECK(rl.rlim_cur == core.rlim_cur && rl.rlim_max == core.rlim_max, "RLIMIT_CORE is %llu/%llu, was %llu/%llu",
             (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max, (unsigned long long)core.rlim_cur,
             (unsigned long long)core.rlim_max);
  getrlimit(RLIMIT_NOFILE, &rl);
  ZDTM_CHECK(rl.rlim_cur == nofile.rlim_cur && rl.rlim_max == nofile.rlim_max,
             "RLIMIT_NOFILE is %llu/%llu, was %llu/%llu", (unsigned long long)rl.rlim_cur,
             (unsigned long long)rl.rlim_max, (unsigned long long)nofile.rlim_cur, (unsigned long long)nofile.rlim_max);

  /* stdin */
  struct stat st;
  ZDTM_CHECK(fstat(0, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3), "stdin is not /dev/null");
  char c;
  ZDTM_CHECK(read(0, &c, 1) == 0, "reading stdin does not give end of file");

  /* read-write file */
  unsigned char buf[20000];
  ZDTM_CHECK(lseek(rw, 0, SEEK_CUR) == 123, "offset of the O_RDWR file is %lld, was 123", (long long)lseek(rw, 0, SEEK_CUR));
  ZDTM_CHECK(read(rw, buf, 100) == 100 && check_bytes(buf, 100, 1, 123), "reading on from offset 123 gives wrong bytes");
  ZDTM_CHECK((fcntl(rw, F_GETFL) & O_ACCMODE) == O_RDWR, "O_RDWR file is no longer read-write");
  ZDTM_CHECK(write(rw, "XY", 2) == 2 && pread(rw, buf, 2, 223) == 2 && memcmp(buf, "XY", 2) == 0,
             "writing to the O_RDWR file at its offset fails");

  /* append */
  int fl = fcntl(app, F_GETFL);
  ZDTM_CHECK(fl >= 0 && (fl & O_APPEND), "O_APPEND lost (flags 0%o)", fl);
  ZDTM_CHECK((fl & O_ACCMODE) == O_WRONLY, "append file access mode changed (flags 0%o)", fl);
  lseek(app, 0, SEEK_SET);
  write(app, "second\n", 7);
  int r = open("files-append.log", O_RDONLY);
  ssize_t n = read(r, buf, sizeof buf);
  close(r);
  ZDTM_CHECK(n == 13 && memcmp(buf, "first\nsecond\n", 13) == 0, "append file holds %zd bytes '%.*s'", n,
             (int)(n > 0 ? n : 0), buf);

  /* deleted */
  ZDTM_CHECK(fstat(gone, &st) == 0 && st.st_nlink == 0, "deleted file has st_nlink %lu", (unsigned long)st.st_nlink);
  ZDTM_CHECK(st.st_size == 20000, "deleted file has size %lld", (long long)st.st_size);
  ZDTM_CHECK(lseek(gone, 0, SEEK_CUR) == 777, "deleted file offset is %lld", (long long)lseek(gone, 0, SEEK_CUR));
  ZDTM_CHECK(pread(gone, buf, 20000, 0) == 20000 && check_bytes(buf, 20000, 2, 0), "deleted file content changed");
  ZDTM_CHECK(access("files-gone.bin", F_OK) != 0, "the deleted file reappeared by name");
  ZDTM_CHECK((fcntl(gone, F_GETFL) & O_ACCMODE) == O_RDWR, "deleted file no longer read-write");

  /* close-on-exec */
  ZDTM_CHECK(fcntl(cx, F_GETFD) == FD_CLOEXEC, "FD_CLOEXEC lost (F_GETFD %d)", fcntl(cx, F_GETFD));
  ZDTM_CHECK(fcntl(ncx, F_GETFD) == 0, "FD_CLOEXEC set on a descriptor without it (F_GETFD %d)", fcntl(ncx, F_GETFD));
  ZDTM_CHECK(lseek(ncx, 0, SEEK_CUR) == 4000, "second descriptor offset is %lld", (long long)lseek(ncx, 0, SEEK_CUR));
  ZDTM_CHECK(lseek(cx, 0, SEEK_CUR) == 0, "close-on-exec descriptor offset is %lld", (long long)lseek(cx, 0, SEEK_CUR));

  /* directory descriptor */
  int in = openat(dfd, "inner.bin", O_RDONLY);
  ZDTM_CHECK(in >= 0 && read(in, buf, 100) == 100 && check_bytes(buf, 100, 3, 0), "openat on the directory fd fails");
  if (in >= 0) close(in);
  ZDTM_CHECK(fchdir(dfd) == 0, "fchdir: %s", strerror(errno));
  char sub[PATH_MAX + 16];
  snprintf(sub, sizeof sub, "%s/files-sub", dir);
  ZDTM_CHECK(getcwd(cwd, sizeof cwd) && strcmp(cwd, sub) == 0, "after fchdir cwd is %s, want %s", cwd, sub);
  chdir(dir);
  return zdtm_verdict();
}
