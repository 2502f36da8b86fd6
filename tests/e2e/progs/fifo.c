/* A named FIFO between two processes with bytes in flight (mpirun's
 * debugger_attach_fifo is opened O_RDONLY|O_NONBLOCK): after replay it is
 * still that FIFO, opened by name with the same modes, the bytes are there,
 * traffic goes on, and closing the writer gives the reader end-of-file. */
#include "zdtm.h"

#include <fcntl.h>
#include <libgen.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/wait.h>

static const char PENDING[] = "fifo-bytes-in-flight";

static int back[2]; /* parent -> writer: the bytes in flight were read */

static int check_reader(int fd, const char *path) {
  int bad = 0;
  struct stat a, b;
  if (fstat(fd, &a) != 0 || !S_ISFIFO(a.st_mode)) printf("FAIL: the reader is no FIFO\n"), bad = 1;
  if (stat(path, &b) != 0 || a.st_ino != b.st_ino || a.st_dev != b.st_dev)
    printf("FAIL: the reader is not the FIFO at %s\n", path), bad = 1;
  int fl = fcntl(fd, F_GETFL);
  if ((fl & O_ACCMODE) != O_RDONLY || !(fl & O_NONBLOCK)) printf("FAIL: reader flags %o\n", fl), bad = 1;
  char buf[64] = "";
  ssize_t n = read(fd, buf, sizeof buf - 1);
  if (n != (ssize_t)strlen(PENDING) || memcmp(buf, PENDING, n) != 0)
    printf("FAIL: bytes in flight lost (read %zd: '%s')\n", n, n > 0 ? buf : ""), bad = 1;
  write(back[1], "r", 1);
  struct pollfd pf = {fd, POLLIN, 0};
  if (poll(&pf, 1, 5000) != 1) printf("FAIL: nothing after replay\n"), bad = 1;
  n = read(fd, buf, sizeof buf - 1);
  if (n != 5 || memcmp(buf, "more!", 5) != 0) printf("FAIL: traffic after replay lost\n"), bad = 1;
  /* The writer closes: end-of-file (nobody else holds a write end). */
  for (int i = 0; i < 500; i++) {
    poll(&pf, 1, 10);
    n = read(fd, buf, sizeof buf);
    if (n == 0) break;
  }
  if (n != 0) printf("FAIL: no end-of-file once the writer is gone (%zd, %s)\n", n, strerror(errno)), bad = 1;
  return bad;
}

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", argv[1]);
  char path[4200];
  snprintf(path, sizeof path, "%s/fifo", dirname(dir));
  unlink(path);
  if (mkfifo(path, 0600) != 0) {
    printf("FAIL: mkfifo %s: %s\n", path, strerror(errno));
    return 1;
  }
  int rd = open(path, O_RDONLY | O_NONBLOCK);
  int go[2];
  if (rd < 0 || pipe(go) != 0 || pipe(back) != 0) return 1;
  pid_t kid = fork();
  if (kid == 0) {
    close(go[0]);
    int wr = open(path, O_WRONLY);
    if (wr < 0) _exit(3);
    write(wr, PENDING, strlen(PENDING));
    write(go[1], "k", 1);
    zdtm_wait_go();
    char r;
    if (read(back[0], &r, 1) != 1) _exit(6);
    struct stat sb;
    if (fstat(wr, &sb) != 0 || !S_ISFIFO(sb.st_mode) || (fcntl(wr, F_GETFL) & O_ACCMODE) != O_WRONLY) _exit(4);
    if (write(wr, "more!", 5) != 5) _exit(5);
    usleep(100 * 1000);
    close(wr);
    _exit(0);
  }
  close(go[1]);
  char k;
  if (read(go[0], &k, 1) != 1) {
    printf("FAIL: the writer did not start\n");
    return 1;
  }
  zdtm_ready();
  zdtm_wait_go();
  int bad = check_reader(rd, path);
  int st = 0;
  ZDTM_CHECK(waitpid(kid, &st, 0) == kid && WIFEXITED(st) && WEXITSTATUS(st) == 0, "the writer failed (%d)", st);
  unlink(path);
  if (bad) zdtm_failed = 1;
  return zdtm_verdict();
}
