/* Pending signals.  Before the capture, with the signals blocked:
 *  - process-wide: SIGUSR2 queued twice (value 42, then 99: a standard signal
 *    is pending once, with the first value) and SIGRTMIN queued twice (43,
 *    then 1043: both must arrive, in that order);
 *  - directed at one thread that blocks them: SIGUSR1 (44) and SIGRTMIN+1
 *    twice (45, 1045).
 * After replay sigpending() must show them; unblocking must run the handlers
 * with the queued values, in the right thread, as many times as queued. */
#include "zdtm.h"

#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>

#define MAXREC 8
struct rec {
  int n;
  int values[MAXREC];
  int codes[MAXREC];
  pid_t pids[MAXREC];
  pid_t tids[MAXREC];
};
static struct rec got[65];
static pid_t worker_tid;
static int go_pipe[2], done_pipe[2];

static void handler(int sig, siginfo_t *si, void *uc) {
  (void)uc;
  struct rec *r = &got[sig];
  if (r->n < MAXREC) {
    r->values[r->n] = si->si_value.sival_int;
    r->codes[r->n] = si->si_code;
    r->pids[r->n] = si->si_pid;
    r->tids[r->n] = (pid_t)syscall(SYS_gettid);
  }
  r->n++;
}

static void expect(int sig, const char *name, int count, const int *values, pid_t tid) {
  struct rec *r = &got[sig];
  ZDTM_CHECK(r->n == count, "%s arrived %d times, want %d", name, r->n, count);
  for (int i = 0; i < r->n && i < count && i < MAXREC; i++) {
    ZDTM_CHECK(r->values[i] == values[i], "%s #%d has si_value %d, want %d", name, i + 1, r->values[i], values[i]);
    ZDTM_CHECK(r->codes[i] == SI_QUEUE, "%s #%d has si_code %d, want SI_QUEUE", name, i + 1, r->codes[i]);
    ZDTM_CHECK(r->pids[i] == getpid(), "%s #%d has si_pid %d, want %d", name, i + 1, r->pids[i], getpid());
    if (tid) ZDTM_CHECK(r->tids[i] == tid, "%s #%d handled by thread %d, want %d", name, i + 1, r->tids[i], tid);
  }
}

static void *worker(void *arg) {
  (void)arg;
  worker_tid = (pid_t)syscall(SYS_gettid);
  char c;
  if (read(go_pipe[0], &c, 1) != 1) return NULL;
  /* After replay: what is pending for this thread (and the process)? */
  sigset_t pend;
  sigpending(&pend);
  ZDTM_CHECK(sigismember(&pend, SIGUSR1) == 1, "SIGUSR1 not pending for the worker thread");
  ZDTM_CHECK(sigismember(&pend, SIGRTMIN + 1) == 1, "SIGRTMIN+1 not pending for the worker thread");
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGUSR1);
  sigaddset(&s, SIGRTMIN + 1);
  pthread_sigmask(SIG_UNBLOCK, &s, NULL);
  write(done_pipe[1], "d", 1);
  return NULL;
}

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  struct sigaction sa = {0};
  sa.sa_sigaction = handler;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  int sigs[] = {SIGUSR1, SIGUSR2, SIGRTMIN, SIGRTMIN + 1};
  for (int i = 0; i < 4; i++) sigaction(sigs[i], &sa, NULL);

  /* Blocked everywhere (the worker inherits the mask). */
  sigset_t s;
  sigemptyset(&s);
  for (int i = 0; i < 4; i++) sigaddset(&s, sigs[i]);
  pthread_sigmask(SIG_BLOCK, &s, NULL);
  pipe(go_pipe);
  pipe(done_pipe);
  pthread_t th;
  pthread_create(&th, NULL, worker, NULL);
  while (!__atomic_load_n(&worker_tid, __ATOMIC_SEQ_CST)) usleep(1000);

  union sigval v;
  v.sival_int = 42;
  sigqueue(getpid(), SIGUSR2, v);
  v.sival_int = 99;
  sigqueue(getpid(), SIGUSR2, v); /* merged with the first */
  v.sival_int = 43;
  sigqueue(getpid(), SIGRTMIN, v);
  v.sival_int = 1043;
  sigqueue(getpid(), SIGRTMIN, v);
  v.sival_int = 44;
  pthread_sigqueue(th, SIGUSR1, v);
  v.sival_int = 45;
  pthread_sigqueue(th, SIGRTMIN + 1, v);
  v.sival_int = 1045;
  pthread_sigqueue(th, SIGRTMIN + 1, v);

  sigset_t pend;
  sigpending(&pend);
  if (!sigismember(&pend, SIGUSR2) || !sigismember(&pend, SIGRTMIN)) return fprintf(stderr, "not pending\n"), 2;
  usleep(50000);
  zdtm_ready();
  zdtm_wait_go();

  /* Process-wide, seen from the main thread. */
  sigpending(&pend);
  ZDTM_CHECK(sigismember(&pend, SIGUSR2) == 1, "SIGUSR2 no longer pending");
  ZDTM_CHECK(sigismember(&pend, SIGRTMIN) == 1, "SIGRTMIN no longer pending");
  ZDTM_CHECK(sigismember(&pend, SIGUSR1) == 0, "SIGUSR1 (sent to the worker) pending for the main thread");
  sigset_t u;
  sigemptyset(&u);
  sigaddset(&u, SIGUSR2);
  sigaddset(&u, SIGRTMIN);
  pthread_sigmask(SIG_UNBLOCK, &u, NULL); /* delivered here, before returning */
  int v_usr2[] = {42}, v_rt[] = {43, 1043};
  expect(SIGUSR2, "SIGUSR2", 1, v_usr2, (pid_t)syscall(SYS_gettid));
  expect(SIGRTMIN, "SIGRTMIN", 2, v_rt, (pid_t)syscall(SYS_gettid));

  /* Thread-directed. */
  write(go_pipe[1], "g", 1);
  char c;
  read(done_pipe[0], &c, 1);
  pthread_join(th, NULL);
  int v_usr1[] = {44}, v_rt1[] = {45, 1045};
  expect(SIGUSR1, "SIGUSR1 (thread-directed)", 1, v_usr1, worker_tid);
  expect(SIGRTMIN + 1, "SIGRTMIN+1 (thread-directed)", 2, v_rt1, worker_tid);
  return zdtm_verdict();
}
