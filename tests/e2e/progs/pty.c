/* A pseudo-terminal pair made inside the job (as mpirun makes one per rank):
 * the parent holds the master, a child in a session of its own has the
 * slave as stdin, stdout and controlling terminal.  Unusual settings, a
 * window size and bytes in flight both ways at the capture; after replay
 * the same /dev/pts/N, the settings, the bytes, traffic both ways and the
 * controlling terminal. */
#include "zdtm.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <termios.h>

#define ROWS 37
#define COLS 101
#define VMIN_ODD 3

static const char PENDING_IN[] = "ping-in";   /* written to the master, unread by the child */
static const char PENDING_OUT[] = "pong-out"; /* written by the child, unread by the parent */

static int inq(int fd) {
  int n = -1;
  ioctl(fd, FIONREAD, &n);
  return n;
}

static void wait_inq(int fd, int want) {
  for (int i = 0; i < 2000 && inq(fd) < want; i++) usleep(1000);
}

/* Reads exactly n bytes within a few seconds; returns how many came. */
static int read_n(int fd, char *buf, int n) {
  int got = 0;
  while (got < n) {
    struct pollfd pf = {fd, POLLIN, 0};
    if (poll(&pf, 1, 5000) <= 0) break;
    ssize_t r = read(fd, buf + got, n - got);
    if (r <= 0) break;
    got += r;
  }
  buf[got] = 0;
  return got;
}

/* The child reports failures through the slave: the parent prints them. */
static void child_fail(int *bad, const char *what) {
  char line[256];
  snprintf(line, sizeof line, "CHILDFAIL %s|", what);
  write(1, line, strlen(line));
  *bad = 1;
}

static int tty_nr_of_self(void) {
  FILE *f = fopen("/proc/self/stat", "r");
  if (!f) return -1;
  char buf[1024];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')');
  int tty = -1;
  char st;
  int a, b, c;
  if (!p || sscanf(p + 1, " %c %d %d %d %d", &st, &a, &b, &c, &tty) != 5) return -1;
  return tty;
}

static int ctty_is(int fd) {
  struct stat sb;
  int tty_nr = tty_nr_of_self();
  return fstat(fd, &sb) == 0 && tty_nr == (int)((minor(sb.st_rdev) & 0xff) | (major(sb.st_rdev) << 8) |
                                                ((minor(sb.st_rdev) & ~0xffu) << 12));
}

/* A member of the child's session in a group of its own, the terminal's
 * foreground group at the capture: it has that terminal too, still in the
 * foreground, and hands the foreground back to the child. */
static void grandchild(void) {
  setpgid(0, 0);
  signal(SIGTTOU, SIG_IGN); /* a failed replay must not stop it at the hand-back */
  zdtm_wait_go();
  int ok = ctty_is(1) && getsid(0) == getppid();
  int t = open("/dev/tty", O_RDWR);
  ok = ok && t >= 0;
  int fg = tcgetpgrp(1) == getpid();
  tcsetpgrp(1, getsid(0));
  _exit(!ok ? 1 : !fg ? 2 : 0);
}

static int child(const char *slave_name, int sync_w) {
  setsid();
  int s = open(slave_name, O_RDWR | O_NOCTTY);
  if (s < 0 || ioctl(s, TIOCSCTTY, 0) != 0) _exit(10);
  dup2(s, 0);
  dup2(s, 1);
  close(s);
  pid_t g = fork();
  if (g == 0) grandchild();
  setpgid(g, g);
  if (tcsetpgrp(0, g) != 0) _exit(11);
  write(1, "hello\n", 6);
  wait_inq(0, strlen(PENDING_IN));
  write(1, PENDING_OUT, strlen(PENDING_OUT));
  char k = 'k';
  write(sync_w, &k, 1);
  zdtm_wait_go();

  int bad = 0;
  /* The grandchild first: until it hands the foreground back, reading the
   * terminal would stop this process. */
  int gst = 0;
  if (waitpid(g, &gst, 0) != g || !WIFEXITED(gst) || WEXITSTATUS(gst) == 1)
    child_fail(&bad, "the session's other process lost the terminal");
  else if (WEXITSTATUS(gst) == 2)
    child_fail(&bad, "the foreground group is lost");
  char name[64] = "";
  if (ttyname_r(1, name, sizeof name) != 0 || strcmp(name, slave_name) != 0) child_fail(&bad, "slave renamed");
  struct termios t;
  if (tcgetattr(0, &t) != 0 || (t.c_lflag & (ICANON | ECHO)) || t.c_cc[VMIN] != VMIN_ODD || (t.c_oflag & OPOST))
    child_fail(&bad, "slave settings lost");
  struct winsize ws;
  if (ioctl(0, TIOCGWINSZ, &ws) != 0 || ws.ws_row != ROWS || ws.ws_col != COLS) child_fail(&bad, "window size lost");
  if (tcgetsid(0) != getpid()) child_fail(&bad, "slave is not the session's terminal");
  if (tcgetpgrp(0) != getpgrp()) child_fail(&bad, "not the foreground group of the terminal");
  if (!ctty_is(1)) child_fail(&bad, "controlling terminal (tty_nr) is not the slave");

  int ctty = open("/dev/tty", O_RDWR);
  if (ctty < 0) child_fail(&bad, "/dev/tty cannot be opened");
  close(ctty);
  char buf[64];
  if (read_n(0, buf, strlen(PENDING_IN)) != (int)strlen(PENDING_IN) || strcmp(buf, PENDING_IN) != 0)
    child_fail(&bad, "input in flight lost");
  write(1, "after-out\n", 10);
  if (read_n(0, buf, 8) != 8 || strcmp(buf, "after-in") != 0) child_fail(&bad, "input after replay lost");
  write(1, bad ? "CHILD-BAD\n" : "CHILD-OK\n", bad ? 10 : 9);
  _exit(bad);
}

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  /* Two pairs made before and dropped: the job's pair is not number 0, and
   * numbers below it are free at the capture. */
  int d1 = posix_openpt(O_RDWR | O_NOCTTY), d2 = posix_openpt(O_RDWR | O_NOCTTY);
  int m = posix_openpt(O_RDWR | O_NOCTTY);
  close(d1);
  close(d2);
  if (m < 0 || grantpt(m) != 0 || unlockpt(m) != 0) {
    printf("FAIL: cannot make a pseudo-terminal: %s\n", strerror(errno));
    return 1;
  }
  char slave_name[64];
  snprintf(slave_name, sizeof slave_name, "%s", ptsname(m));
  unsigned index_before = 0;
  ioctl(m, TIOCGPTN, &index_before);
  struct termios t;
  tcgetattr(m, &t);
  cfmakeraw(&t);
  t.c_cc[VMIN] = VMIN_ODD;
  t.c_cc[VTIME] = 0;
  tcsetattr(m, TCSANOW, &t);
  struct winsize ws = {ROWS, COLS, 0, 0};
  ioctl(m, TIOCSWINSZ, &ws);
  int syncp[2];
  if (pipe(syncp) != 0) return 1;
  pid_t kid = fork();
  if (kid == 0) {
    close(m);
    close(syncp[0]);
    return child(slave_name, syncp[1]);
  }
  close(syncp[1]);
  char buf[256];
  if (read_n(m, buf, 6) != 6 || strcmp(buf, "hello\n") != 0) {
    printf("FAIL: no greeting through the pair (got '%s')\n", buf);
    return 1;
  }
  write(m, PENDING_IN, strlen(PENDING_IN));
  char k;
  if (read(syncp[0], &k, 1) != 1) {
    printf("FAIL: the child did not get ready\n");
    return 1;
  }
  wait_inq(m, strlen(PENDING_OUT));
  if (inq(m) != (int)strlen(PENDING_OUT)) {
    printf("FAIL: output in flight not in place before the capture\n");
    return 1;
  }
  zdtm_ready();
  zdtm_wait_go();

  ZDTM_CHECK(strcmp(ptsname(m), slave_name) == 0, "slave is %s, was %s", ptsname(m), slave_name);
  unsigned index_after = ~0u;
  ZDTM_CHECK(ioctl(m, TIOCGPTN, &index_after) == 0 && index_after == index_before, "pty number %u, was %u",
             index_after, index_before);
  struct termios t2;
  ZDTM_CHECK(tcgetattr(m, &t2) == 0 && t2.c_cc[VMIN] == VMIN_ODD && !(t2.c_lflag & ICANON) &&
                 t2.c_iflag == t.c_iflag && t2.c_oflag == t.c_oflag && t2.c_lflag == t.c_lflag,
             "settings differ after replay");
  struct winsize ws2 = {0};
  ZDTM_CHECK(ioctl(m, TIOCGWINSZ, &ws2) == 0 && ws2.ws_row == ROWS && ws2.ws_col == COLS, "window size %ux%u",
             ws2.ws_row, ws2.ws_col);
  struct stat sb;
  ZDTM_CHECK(fstat(m, &sb) == 0 && S_ISCHR(sb.st_mode), "the master is no character device");
  ZDTM_CHECK(read_n(m, buf, strlen(PENDING_OUT)) == (int)strlen(PENDING_OUT) && strcmp(buf, PENDING_OUT) == 0,
             "output in flight lost (got '%s')", buf);
  ZDTM_CHECK(read_n(m, buf, 10) == 10 && strcmp(buf, "after-out\n") == 0, "no output after replay (got '%s')", buf);
  write(m, "after-in", 8);
  /* Whatever else the child says, up to its verdict. */
  char rest[512] = "";
  int got = 0;
  while (got < (int)sizeof rest - 1 && !strstr(rest, "CHILD-")) {
    int r = read_n(m, rest + got, 1);
    if (r <= 0) break;
    got += r;
  }
  while (got < (int)sizeof rest - 1 && rest[got - 1] != '\n' && read_n(m, rest + got, 1) == 1) got++;
  int st = 0;
  ZDTM_CHECK(waitpid(kid, &st, 0) == kid && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child failed: %s", rest);
  ZDTM_CHECK(strstr(rest, "CHILD-OK") != NULL, "child said: %s", rest);
  return zdtm_verdict();
}
