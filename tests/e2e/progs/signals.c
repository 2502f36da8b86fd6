/* Signal state: an SA_SIGINFO handler with its flags and mask, the main
 * thread's blocked set, an alternate signal stack used by an SA_ONSTACK
 * handler, SIGPIPE ignored and a 100 ms ITIMER_REAL interval timer.  After
 * replay all of it must be in force: handlers run, on the right stack, and the
 * timer keeps ticking.  (Pending signals: see pending.c.) */
#include "zdtm.h"

#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <sys/time.h>

static volatile sig_atomic_t usr1_count, usr1_signo, usr1_code, usr1_term_blocked;
static volatile sig_atomic_t alt_count, alt_on_stack, alt_ss_onstack;
static volatile sig_atomic_t alrm_count;
static char *alt_base;
static const size_t alt_size = 64 * 1024;

static void on_usr1(int sig, siginfo_t *si, void *ucv) {
  (void)sig;
  ucontext_t *uc = ucv;
  usr1_count++;
  usr1_signo = si->si_signo;
  usr1_code = si->si_code;
  sigset_t cur;
  sigprocmask(SIG_BLOCK, NULL, &cur);
  usr1_term_blocked = sigismember(&cur, SIGTERM) == 1 && (uc != NULL);
}

static void on_winch(int sig, siginfo_t *si, void *uc) {
  (void)sig, (void)si, (void)uc;
  volatile char local = 0;
  uintptr_t a = (uintptr_t)&local;
  alt_on_stack = a >= (uintptr_t)alt_base && a < (uintptr_t)alt_base + alt_size;
  stack_t ss;
  sigaltstack(NULL, &ss);
  alt_ss_onstack = (ss.ss_flags & SS_ONSTACK) != 0;
  alt_count++;
}

static void on_alrm(int sig) {
  (void)sig;
  alrm_count++;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  zdtm_init(argc, argv);

  struct sigaction sa = {0};
  sa.sa_sigaction = on_usr1;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaddset(&sa.sa_mask, SIGTERM);
  if (sigaction(SIGUSR1, &sa, NULL)) return perror("sigaction"), 2;

  alt_base = malloc(alt_size);
  stack_t ss = {.ss_sp = alt_base, .ss_size = alt_size, .ss_flags = 0};
  if (sigaltstack(&ss, NULL)) return perror("sigaltstack"), 2;
  sa.sa_sigaction = on_winch;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGWINCH, &sa, NULL)) return perror("sigaction"), 2;

  signal(SIGPIPE, SIG_IGN);

  sigset_t block;
  sigemptyset(&block);
  sigaddset(&block, SIGUSR2);
  sigprocmask(SIG_BLOCK, &block, NULL);

  struct sigaction alrm = {0};
  alrm.sa_handler = on_alrm;
  alrm.sa_flags = SA_RESTART;
  sigaction(SIGALRM, &alrm, NULL);
  struct itimerval it = {{0, 100000}, {0, 100000}};
  if (setitimer(ITIMER_REAL, &it, NULL)) return perror("setitimer"), 2;

  /* Everything works before the capture. */
  raise(SIGUSR1);
  raise(SIGWINCH);
  if (usr1_count != 1 || alt_count != 1 || !alt_on_stack) return fprintf(stderr, "handlers do not work\n"), 2;
  double t0 = now();
  while (alrm_count < 2 && now() - t0 < 2) usleep(10000);
  if (alrm_count < 2) return fprintf(stderr, "the timer does not tick\n"), 2;

  struct sigaction before_usr1, before_winch;
  sigaction(SIGUSR1, NULL, &before_usr1);
  sigaction(SIGWINCH, NULL, &before_winch);

  zdtm_ready();
  zdtm_wait_go();

  /* SA_SIGINFO handler with its mask and flags */
  struct sigaction cur;
  sigaction(SIGUSR1, NULL, &cur);
  ZDTM_CHECK(cur.sa_sigaction == on_usr1, "SIGUSR1 handler is %p, not %p", (void *)cur.sa_sigaction, (void *)on_usr1);
  ZDTM_CHECK(cur.sa_flags == before_usr1.sa_flags, "SIGUSR1 flags 0x%x, were 0x%x", cur.sa_flags, before_usr1.sa_flags);
  ZDTM_CHECK(sigismember(&cur.sa_mask, SIGTERM) == 1 && sigismember(&cur.sa_mask, SIGINT) == 0,
             "SIGUSR1 handler's sa_mask changed");
  usr1_count = 0;
  usr1_signo = 0;
  raise(SIGUSR1);
  ZDTM_CHECK(usr1_count == 1, "SIGUSR1 handler ran %d times", (int)usr1_count);
  ZDTM_CHECK(usr1_signo == SIGUSR1, "SIGUSR1 handler got si_signo %d", (int)usr1_signo);
  ZDTM_CHECK(usr1_code == SI_TKILL, "SIGUSR1 handler got si_code %d, want SI_TKILL", (int)usr1_code);
  ZDTM_CHECK(usr1_term_blocked, "SIGTERM not blocked while the SIGUSR1 handler ran");

  /* blocked set */
  sigset_t mask;
  sigprocmask(SIG_BLOCK, NULL, &mask);
  ZDTM_CHECK(sigismember(&mask, SIGUSR2) == 1, "SIGUSR2 no longer blocked");
  ZDTM_CHECK(sigismember(&mask, SIGUSR1) == 0 && sigismember(&mask, SIGALRM) == 0 && sigismember(&mask, SIGWINCH) == 0,
             "signals blocked that were not");

  /* alternate stack */
  stack_t now_ss;
  sigaltstack(NULL, &now_ss);
  ZDTM_CHECK(now_ss.ss_sp == alt_base && now_ss.ss_size == alt_size && now_ss.ss_flags == 0,
             "sigaltstack is %p/%zu/0x%x, was %p/%zu/0", now_ss.ss_sp, now_ss.ss_size, now_ss.ss_flags, alt_base,
             alt_size);
  sigaction(SIGWINCH, NULL, &cur);
  ZDTM_CHECK(cur.sa_sigaction == on_winch && cur.sa_flags == before_winch.sa_flags, "SIGWINCH handler or flags changed");
  alt_count = 0;
  alt_on_stack = 0;
  raise(SIGWINCH);
  ZDTM_CHECK(alt_count == 1, "SA_ONSTACK handler ran %d times", (int)alt_count);
  ZDTM_CHECK(alt_on_stack, "SA_ONSTACK handler did not run on the alternate stack");
  ZDTM_CHECK(alt_ss_onstack, "sigaltstack() in the handler does not report SS_ONSTACK");

  /* SIGPIPE ignored */
  sigaction(SIGPIPE, NULL, &cur);
  ZDTM_CHECK(cur.sa_handler == SIG_IGN, "SIGPIPE is no longer ignored");
  int p[2];
  if (pipe(p) == 0) {
    close(p[0]);
    errno = 0;
    ssize_t n = write(p[1], "x", 1);
    ZDTM_CHECK(n == -1 && errno == EPIPE, "write to a broken pipe: %zd, %s", n, strerror(errno));
    close(p[1]);
  }

  /* the interval timer keeps ticking */
  struct itimerval itv;
  getitimer(ITIMER_REAL, &itv);
  ZDTM_CHECK(itv.it_interval.tv_sec == 0 && itv.it_interval.tv_usec == 100000, "ITIMER_REAL interval is %ld.%06ld",
             (long)itv.it_interval.tv_sec, (long)itv.it_interval.tv_usec);
  ZDTM_CHECK(itv.it_value.tv_sec != 0 || itv.it_value.tv_usec != 0, "ITIMER_REAL is disarmed");
  int a0 = alrm_count;
  t0 = now();
  while (alrm_count - a0 < 5 && now() - t0 < 3) usleep(10000);
  double took = now() - t0;
  ZDTM_CHECK(alrm_count - a0 >= 5, "SIGALRM came %d times in %.1f s after replay", (int)(alrm_count - a0), took);
  ZDTM_CHECK(took > 0.3, "5 SIGALRM in %.2f s: faster than 100 ms apart", took);

  it.it_value.tv_usec = 0;
  it.it_interval.tv_usec = 0;
  setitimer(ITIMER_REAL, &it, NULL);
  return zdtm_verdict();
}
