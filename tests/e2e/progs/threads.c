/* 64 threads, blocked in read, futex (condition variable), nanosleep, poll and
 * accept, plus busy ones with thread-local state.  After replay every blocked
 * call must complete as if nothing happened (no EINTR), thread ids and TLS
 * must be those of before, and glibc's rseq registration must be live. */
#include "zdtm.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/rseq.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#define NREAD 12
#define NCOND 12
#define NSLEEP 12
#define NPOLL 12
#define NBUSY 15
#define NTHREADS (NREAD + NCOND + NSLEEP + NPOLL + 1 + NBUSY)

static int read_pipe[NREAD][2], poll_pipe[NPOLL][2];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int released;
static int listen_fd;
static atomic_int blocked, stop_busy;
static pid_t tids[NTHREADS];
static int results[NTHREADS];
static __thread long tls_marker;

static void record_tid(int id) { tids[id] = (pid_t)syscall(SYS_gettid); }

/* 1 if this thread's tid and TLS are what they were, and rseq is registered. */
static int thread_intact(int id) {
  if ((pid_t)syscall(SYS_gettid) != tids[id]) return 0;
  if (gettid() != tids[id]) return 0;
  if (tls_marker != 1000 + id) return 0;
  if (__rseq_size > 0) {
    struct rseq *rs = (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
    /* Registering again must be refused as busy if the kernel knows the area. */
    long r = syscall(SYS_rseq, rs, 32, 0, 0x53053053);
    if (!(r == -1 && errno == EBUSY)) return 0;
    if (sched_getcpu() < 0) return 0;
  }
  return 1;
}

static void *reader(void *arg) {
  int id = (int)(long)arg;
  record_tid(id);
  tls_marker = 1000 + id;
  char c = 0;
  blocked++;
  ssize_t n = read(read_pipe[id][0], &c, 1);
  results[id] = n == 1 && c == 'x' && thread_intact(id);
  return NULL;
}

static void *cond_waiter(void *arg) {
  int id = (int)(long)arg;
  record_tid(id);
  tls_marker = 1000 + id;
  pthread_mutex_lock(&mu);
  blocked++;
  while (!released) pthread_cond_wait(&cv, &mu);
  pthread_mutex_unlock(&mu);
  results[id] = thread_intact(id);
  return NULL;
}

static void *sleeper(void *arg) {
  int id = (int)(long)arg;
  record_tid(id);
  tls_marker = 1000 + id;
  struct timespec ts = {4, 0}, t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  blocked++;
  int r = nanosleep(&ts, NULL);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  results[id] = r == 0 && thread_intact(id);
  return NULL;
}

static void *poller(void *arg) {
  int id = (int)(long)arg;
  int k = id - NREAD - NCOND - NSLEEP;
  record_tid(id);
  tls_marker = 1000 + id;
  struct pollfd p = {poll_pipe[k][0], POLLIN, 0};
  blocked++;
  int r = poll(&p, 1, -1);
  results[id] = r == 1 && (p.revents & POLLIN) && thread_intact(id);
  return NULL;
}

static void *acceptor(void *arg) {
  int id = (int)(long)arg;
  record_tid(id);
  tls_marker = 1000 + id;
  blocked++;
  int c = accept(listen_fd, NULL, NULL);
  char buf[4] = {0};
  results[id] = c >= 0 && read(c, buf, 3) == 3 && strcmp(buf, "hey") == 0 && thread_intact(id);
  if (c >= 0) close(c);
  return NULL;
}

static void *busy(void *arg) {
  int id = (int)(long)arg;
  record_tid(id);
  tls_marker = 1000 + id;
  volatile unsigned long x = 0;
  blocked++;
  while (!stop_busy) x++;
  results[id] = thread_intact(id);
  return NULL;
}

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  pid_t pid0 = getpid();
  listen_fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int one = 1;
  setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(listen_fd, (struct sockaddr *)&a, sizeof a) || listen(listen_fd, 4)) return perror("listen"), 2;
  socklen_t al = sizeof a;
  getsockname(listen_fd, (struct sockaddr *)&a, &al);
  pthread_t th[NTHREADS];
  int id = 0;
  for (int i = 0; i < NREAD; i++, id++) pipe(read_pipe[i]), pthread_create(&th[id], NULL, reader, (void *)(long)id);
  for (int i = 0; i < NCOND; i++, id++) pthread_create(&th[id], NULL, cond_waiter, (void *)(long)id);
  for (int i = 0; i < NSLEEP; i++, id++) pthread_create(&th[id], NULL, sleeper, (void *)(long)id);
  for (int i = 0; i < NPOLL; i++, id++) pipe(poll_pipe[i]), pthread_create(&th[id], NULL, poller, (void *)(long)id);
  pthread_create(&th[id], NULL, acceptor, (void *)(long)id), id++;
  for (int i = 0; i < NBUSY; i++, id++) pthread_create(&th[id], NULL, busy, (void *)(long)id);
  while (blocked < NTHREADS) usleep(1000);
  usleep(50000); /* let the blocked ones actually enter their calls */
  zdtm_ready();
  zdtm_wait_go();

  ZDTM_CHECK(getpid() == pid0, "getpid() changed from %d to %d", pid0, getpid());
  for (int i = 0; i < NREAD; i++) write(read_pipe[i][1], "x", 1);
  pthread_mutex_lock(&mu);
  released = 1;
  pthread_cond_broadcast(&cv);
  pthread_mutex_unlock(&mu);
  for (int i = 0; i < NPOLL; i++) write(poll_pipe[i][1], "p", 1);
  int c = socket(AF_INET, SOCK_STREAM, 0);
  ZDTM_CHECK(connect(c, (struct sockaddr *)&a, sizeof a) == 0, "connect to the listening socket: %s", strerror(errno));
  write(c, "hey", 3);
  stop_busy = 1;
  for (int i = 0; i < NTHREADS; i++) pthread_join(th[i], NULL);
  close(c);
  const char *kind[] = {"read", "cond", "nanosleep", "poll", "accept", "busy"};
  for (int i = 0; i < NTHREADS; i++) {
    int k = i < NREAD ? 0 : i < NREAD + NCOND ? 1 : i < NREAD + NCOND + NSLEEP ? 2 : i < NREAD + NCOND + NSLEEP + NPOLL ? 3 : i == NTHREADS - NBUSY - 1 ? 4 : 5;
    ZDTM_CHECK(results[i], "thread %d (%s) did not continue correctly", i, kind[k]);
  }
  return zdtm_verdict();
}
