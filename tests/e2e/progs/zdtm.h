/* Shared scaffolding of the end-to-end test programs (after CRIU's zdtm).
 *
 * Each program sets its feature up, prints "READY" on stdout, then waits until
 * the file named by argv[1] exists: the harness captures it meanwhile, kills
 * it, replays the image, and only then creates that file.  The program then
 * checks its own state and prints "PASS" or "FAIL: reason" and exits 0 or 1. */
#ifndef ZDTM_H
#define ZDTM_H
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char *zdtm_go;
static int zdtm_failed;

static void zdtm_ready(void) {
  printf("READY\n");
  fflush(stdout);
}

/* Waits for the harness's word; returns once the replayed process may check. */
static void zdtm_wait_go(void) {
  while (access(zdtm_go, F_OK) != 0) {
    struct timespec ts = {0, 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
}

static void zdtm_fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("FAIL: ");
  vprintf(fmt, ap);
  printf("\n");
  fflush(stdout);
  va_end(ap);
  zdtm_failed = 1;
}

#define ZDTM_CHECK(cond, ...) \
  do {                        \
    if (!(cond)) zdtm_fail(__VA_ARGS__); \
  } while (0)

/* A TCP listener on a free loopback port; *a says where. */
__attribute__((unused)) static int zdtm_loopback_listener(struct sockaddr_in *a) {
  int lst = socket(AF_INET, SOCK_STREAM, 0);
  *a = (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int one = 1;
  setsockopt(lst, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  bind(lst, (struct sockaddr *)a, sizeof *a);
  listen(lst, 1);
  socklen_t al = sizeof *a;
  getsockname(lst, (struct sockaddr *)a, &al);
  return lst;
}

static int zdtm_verdict(void) {
  printf(zdtm_failed ? "RESULT: FAIL\n" : "PASS\n");
  fflush(stdout);
  return zdtm_failed ? 1 : 0;
}

static void zdtm_init(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s GO_FILE\n", argv[0]);
    exit(2);
  }
  zdtm_go = argv[1];
  setvbuf(stdout, NULL, _IOLBF, 0);
}
#endif
