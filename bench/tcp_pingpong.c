// TCP ping-pong latency, the yardstick of ib_send_lat (bench/softrdma.sh):
// one byte-message of SIZE bytes each way over one TCP_NODELAY connection,
// blocking reads, ITERS round trips; prints the typical (median) one-way
// latency in microseconds, as ib_send_lat's t_typical is.
//   tcp_pingpong -s [-p PORT] [-n ITERS] [-m SIZE]          (server)
//   tcp_pingpong -c ADDR [-p PORT] [-n ITERS] [-m SIZE]     (client) -> "tcp_lat SIZE usec_typical usec_avg"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec * 1e-3;
}

static int full(int fd, char* p, size_t n, int wr) {
  while (n) {
    ssize_t k = wr ? write(fd, p, n) : read(fd, p, n);
    if (k <= 0) return -1;
    p += k;
    n -= (size_t)k;
  }
  return 0;
}

static int cmp(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char** argv) {
  int server = 0, port = 18515, iters = 10000, opt;
  size_t size = 2;
  const char* addr = NULL;
  while ((opt = getopt(argc, argv, "sc:p:n:m:")) != -1) {
    switch (opt) {
      case 's': server = 1; break;
      case 'c': addr = optarg; break;
      case 'p': port = atoi(optarg); break;
      case 'n': iters = atoi(optarg); break;
      case 'm': size = strtoull(optarg, 0, 0); break;
      default: return 2;
    }
  }
  if (!server && !addr) return 2;
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((unsigned short)port);
  int fd, one = 1;
  if (server) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sa.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(l, (struct sockaddr*)&sa, sizeof sa) || listen(l, 1)) { perror("listen"); return 1; }
    fd = accept(l, NULL, NULL);
    close(l);
  } else {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    inet_pton(AF_INET, addr, &sa.sin_addr);
    int ok = -1;
    for (int i = 0; i < 100 && ok; i++) {  // the server may not listen yet
      ok = connect(fd, (struct sockaddr*)&sa, sizeof sa);
      if (ok) { close(fd); fd = socket(AF_INET, SOCK_STREAM, 0); usleep(50000); }
    }
    if (ok) { perror("connect"); return 1; }
  }
  if (fd < 0) return 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  char* buf = calloc(1, size);
  double* rtt = calloc((size_t)iters, sizeof *rtt);
  for (int i = 0; i < iters; i++) {
    double t0 = now_us();
    if (server) {
      if (full(fd, buf, size, 0) || full(fd, buf, size, 1)) return 1;
    } else {
      if (full(fd, buf, size, 1) || full(fd, buf, size, 0)) return 1;
    }
    rtt[i] = now_us() - t0;
  }
  if (!server) {
    double sum = 0;
    for (int i = 0; i < iters; i++) sum += rtt[i];
    qsort(rtt, (size_t)iters, sizeof *rtt, cmp);
    printf("tcp_lat %zu %.2f %.2f\n", size, rtt[iters / 2] / 2, sum / iters / 2);
  }
  close(fd);
  return 0;
}
