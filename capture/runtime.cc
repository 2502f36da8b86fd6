// The capture runtime: preloaded into every process of a job.
//
// It lives in someone else's process, so it keeps to a few rules:
//  - no C++ runtime (no exceptions, RTTI or libstdc++), no static objects with
//    constructors; state is plain zero-initialised data;
//  - once other threads are stopped it only makes raw system calls: a stopped
//    thread may hold malloc's or stdio's lock, so touching them would deadlock;
//  - its only exported symbols are the libc functions it wraps (version script).
//
// A capture: the agent sends SUSPEND; the checkpoint thread signals every other
// thread, each records where it is (its signal frame is its whole user context)
// and waits; the checkpoint thread then signals itself, records the process
// state in the same way, sends it to the agent and blocks while the agent reads
// memory through /proc.  After RESUME every thread returns from the handler.
// After a replay the restorer brings every thread back through rt_sigreturn on
// the recorded frame, so application threads never run this code again, and the
// checkpoint thread finds ibdbg_restart_info filled in and reconnects.
#include <dirent.h>
#include <spawn.h>
#include <stdarg.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/msg.h>
#include <sys/select.h>
#include <sys/sem.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>
#include <asm/prctl.h>
#include <sys/ioctl.h>
#include <linux/userfaultfd.h>

#include "capture/verbs/hooks.h"
#include "ibdbg/proto.h"

#define EXPORT extern "C" __attribute__((visibility("default")))

extern "C" {
extern const ptrdiff_t __rseq_offset __attribute__((weak));
extern const unsigned int __rseq_size __attribute__((weak));
}

namespace {

// ---- raw system calls ------------------------------------------------------
long sys(long n, long a = 0, long b = 0, long c = 0, long d = 0, long e = 0, long f = 0) {
  long ret;
  register long r10 asm("r10") = d;
  register long r8 asm("r8") = e;
  register long r9 asm("r9") = f;
  asm volatile("syscall"
               : "=a"(ret)
               : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
               : "rcx", "r11", "memory");
  return ret;
}

int raw_gettid() { return (int)sys(SYS_gettid); }
int raw_getpid() { return (int)sys(SYS_getpid); }

void futex_wait(volatile uint32_t* addr, uint32_t val, long timeout_ms) {
  struct timespec ts = {timeout_ms / 1000, (timeout_ms % 1000) * 1000000};
  sys(SYS_futex, (long)addr, FUTEX_WAIT_PRIVATE, val, timeout_ms >= 0 ? (long)&ts : 0);
}
void futex_wake(volatile uint32_t* addr) { sys(SYS_futex, (long)addr, FUTEX_WAKE_PRIVATE, 0x7fffffff); }

size_t slen(const char* s) {
  size_t n = 0;
  while (s[n]) n++;
  return n;
}
void scopy(char* dst, const char* src, size_t cap) {
  size_t i = 0;
  for (; src[i] && i + 1 < cap; i++) dst[i] = src[i];
  dst[i] = 0;
}
// What follows the last '/'.
const char* base_name(const char* path) {
  const char* base = path;
  for (const char* c = path; *c; c++)
    if (*c == '/') base = c + 1;
  return base;
}
// Reads a small /proc file into buf with plain syscalls.
long read_file(const char* path, char* buf, size_t cap) {
  int fd = (int)sys(SYS_openat, AT_FDCWD, (long)path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fd;
  size_t n = 0;
  while (n < cap) {
    long r = sys(SYS_read, fd, (long)(buf + n), cap - n);
    if (r <= 0) break;
    n += (size_t)r;
  }
  sys(SYS_close, fd);
  return (long)n;
}

bool write_all(int fd, const void* data, size_t len) {
  const char* p = (const char*)data;
  while (len) {
    long r = sys(SYS_sendto, fd, (long)p, len, MSG_NOSIGNAL, 0, 0);
    if (r == -EINTR) continue;
    if (r <= 0) return false;
    p += r, len -= (size_t)r;
  }
  return true;
}
bool read_all(int fd, void* data, size_t len) {
  char* p = (char*)data;
  while (len) {
    long r = sys(SYS_read, fd, (long)p, len);
    if (r == -EINTR) continue;
    if (r <= 0) return false;
    p += r, len -= (size_t)r;
  }
  return true;
}

// ---- state -------------------------------------------------------------------
struct Slot {
  ibdbg_thread_info info;
  volatile uint32_t done;  // set (release) once info and the thread's pending signals are in
};

int g_sig;                         // the checkpoint signal
int g_sock = -1;                   // connection to the agent
int g_ckpt_tid;
char g_agent[108];
char g_preload[512];   // our own entry of LD_PRELOAD
char g_job_dir[IBDBG_PATH_MAX];
char g_job_id[64];
char g_rsh[256];                   // basename of the job's remote shell (ssh)
char g_rsh_full[1024];             // ... as the job was told it
char g_ibdbg_exe[IBDBG_PATH_MAX];  // ibdbg itself, run on the remote host
volatile uint32_t g_capturing;     // handler ignores the signal unless set
volatile uint32_t g_resume_gen;    // bumped to let stopped threads go
volatile uint32_t g_nslots;
volatile uint32_t g_entered;       // threads that reached the handler
Slot g_slots[IBDBG_MAX_THREADS];
char* g_blob;                      // metadata buffer, mapped once at start
size_t g_blob_cap;
uint32_t g_generation;
// The verbs layer (libibdbg_verbs.so), when it is preloaded too; its state
// record is written into g_verbs_buf while the process is stopped.
const ibdbg_verbs_hooks* g_vh;
char* g_verbs_buf;
const size_t kVerbsBufCap = 1 << 20;
bool g_verbs_held;  // posts are held by a quiesce that no resume ended yet
// PRESUSPEND answered: the SUSPEND that follows only drains (the job-wide
// barrier is behind us), a RESUME instead releases the posts.
bool g_presuspended;
struct sigaction g_app_action;     // what the application asked for g_sig
__thread unsigned t_interrupts __attribute__((tls_model("initial-exec")));
// Pending signals taken out of the kernel's queues during a capture, to be
// queued again (with their siginfo) on resume or by the restorer.
ibdbg_pending_signal g_pending[IBDBG_MAX_PENDING];
volatile uint32_t g_npending;

}  // namespace

// Written by the restorer (its address travels in the image).
ibdbg_restart_info g_restart_info;

namespace {

// ---- the real libc functions behind our wrappers ------------------------------
struct RealFns {
  int (*nanosleep)(const struct timespec*, struct timespec*);
  int (*clock_nanosleep)(clockid_t, int, const struct timespec*, struct timespec*);
  int (*poll)(struct pollfd*, nfds_t, int);
  int (*ppoll)(struct pollfd*, nfds_t, const struct timespec*, const sigset_t*);
  int (*select)(int, fd_set*, fd_set*, fd_set*, struct timeval*);
  int (*epoll_wait)(int, struct epoll_event*, int, int);
  int (*epoll_pwait)(int, struct epoll_event*, int, int, const sigset_t*);
  int (*sigaction)(int, const struct sigaction*, struct sigaction*);
  int (*sigprocmask)(int, const sigset_t*, sigset_t*);
  int (*pthread_sigmask)(int, const sigset_t*, sigset_t*);
};
RealFns real;

void resolve_real() {
  real.nanosleep = (decltype(real.nanosleep))dlsym(RTLD_NEXT, "nanosleep");
  real.clock_nanosleep = (decltype(real.clock_nanosleep))dlsym(RTLD_NEXT, "clock_nanosleep");
  real.poll = (decltype(real.poll))dlsym(RTLD_NEXT, "poll");
  real.ppoll = (decltype(real.ppoll))dlsym(RTLD_NEXT, "ppoll");
  real.select = (decltype(real.select))dlsym(RTLD_NEXT, "select");
  real.epoll_wait = (decltype(real.epoll_wait))dlsym(RTLD_NEXT, "epoll_wait");
  real.epoll_pwait = (decltype(real.epoll_pwait))dlsym(RTLD_NEXT, "epoll_pwait");
  real.sigaction = (decltype(real.sigaction))dlsym(RTLD_NEXT, "sigaction");
  real.sigprocmask = (decltype(real.sigprocmask))dlsym(RTLD_NEXT, "sigprocmask");
  real.pthread_sigmask = (decltype(real.pthread_sigmask))dlsym(RTLD_NEXT, "pthread_sigmask");
}

// Other libraries' constructors may run before ours and already call our
// wrappers (UCX's ucs_init installs signal handlers from libucs's constructor).
const RealFns& R() {
  if (!real.pthread_sigmask) resolve_real();
  return real;
}

// ---- recording a thread ---------------------------------------------------------
void record_self(Slot* s, ucontext_t* uc) {
  ibdbg_thread_info* t = &s->info;
  memset(t, 0, sizeof *t);
  t->tid = raw_gettid();
  if (t->tid == raw_getpid()) t->flags |= IBDBG_THREAD_MAIN;
  if (t->tid == g_ckpt_tid) t->flags |= IBDBG_THREAD_CKPT;
  if (g_vh && g_vh->is_backend_thread(t->tid)) t->flags |= IBDBG_THREAD_BACKEND;
  unsigned long fs = 0;
  sys(SYS_arch_prctl, ARCH_GET_FS, (long)&fs);
  t->fs_base = fs;
  t->uc_addr = (uint64_t)uc;
  t->resume_rip = (uint64_t)uc->uc_mcontext.gregs[REG_RIP];
  t->resume_rsp = (uint64_t)uc->uc_mcontext.gregs[REG_RSP];
  uint64_t tidaddr = 0;
  sys(SYS_prctl, PR_GET_TID_ADDRESS, (long)&tidaddr);
  t->clear_child_tid = tidaddr;
  if (&__rseq_size && &__rseq_offset && __rseq_size > 0) {
    t->rseq_addr = fs + (uint64_t)__rseq_offset;
    // glibc registers the whole 32-byte area even when it advertises less.
    t->rseq_len = __rseq_size < 32 ? 32 : __rseq_size;
    t->rseq_sig = 0x53053053;
  }
  stack_t ss;
  if (sys(SYS_sigaltstack, 0, (long)&ss) == 0) {
    t->altstack_sp = (uint64_t)ss.ss_sp;
    t->altstack_size = ss.ss_size;
    t->altstack_flags = ss.ss_flags & ~SS_ONSTACK;
  }
  sys(SYS_prctl, PR_GET_NAME, (long)t->name);
}

void ckpt_describe_and_wait();

// The "SigPnd:" (this thread) or "ShdPnd:" (process) mask of a status file.
uint64_t pending_mask(const char* path, const char* key) {
  char buf[4096];
  long n = read_file(path, buf, sizeof buf - 1);
  if (n <= 0) return 0;
  buf[n] = 0;
  size_t kl = slen(key);
  for (char* p = buf; *p; p++) {
    bool match = true;
    for (size_t i = 0; i < kl; i++)
      if (p[i] != key[i]) match = false;
    if (!match) continue;
    p += kl;
    while (*p == ' ' || *p == '\t') p++;
    uint64_t v = 0;
    for (;; p++) {
      int d = *p >= '0' && *p <= '9' ? *p - '0' : *p >= 'a' && *p <= 'f' ? *p - 'a' + 10 : -1;
      if (d < 0) break;
      v = v * 16 + (uint64_t)d;
    }
    return v;
  }
  return 0;
}

// Takes every pending signal of one queue (this thread's, or the process's)
// out of the kernel, keeping its siginfo.  tid 0 records process-wide ones.
void take_pending(const char* path, const char* key, int tid) {
  for (int guard = 0; guard < 4 * IBDBG_MAX_PENDING; guard++) {
    uint64_t mask = pending_mask(path, key);
    if (g_sig > 0) mask &= ~(1ull << (g_sig - 1));
    if (!mask) return;
    int signo = __builtin_ctzll(mask) + 1;
    uint64_t set = 1ull << (signo - 1);
    struct timespec zero = {0, 0};
    uint32_t idx = __atomic_fetch_add(&g_npending, 1, __ATOMIC_SEQ_CST);
    if (idx >= IBDBG_MAX_PENDING) return;  // reported as an error by the capture
    ibdbg_pending_signal* ps = &g_pending[idx];
    memset(ps, 0, sizeof *ps);
    long r = sys(SYS_rt_sigtimedwait, (long)&set, (long)ps->siginfo, (long)&zero, 8);
    if (r <= 0) {
      ps->signo = 0;  // raced away; leave an empty slot
      continue;
    }
    ps->signo = (int)r;
    ps->tid = tid;
  }
}

// Queues taken signals again, to the same thread or to the process.
void requeue_pending() {
  int pid = raw_getpid();
  uint32_t n = g_npending < IBDBG_MAX_PENDING ? g_npending : IBDBG_MAX_PENDING;
  for (uint32_t i = 0; i < n; i++) {
    ibdbg_pending_signal* ps = &g_pending[i];
    if (!ps->signo) continue;
    if (ps->tid) sys(SYS_rt_tgsigqueueinfo, pid, ps->tid, ps->signo, (long)ps->siginfo);
    else sys(SYS_rt_sigqueueinfo, pid, ps->signo, (long)ps->siginfo);
  }
  g_npending = 0;
}

void handler(int, siginfo_t* si, void* ucv) {
  int saved_errno = errno;
  // Only our own checkpoint thread's tgkill counts; anything else is dropped
  // rather than confusing the application (the signal is reserved).
  if (si->si_code != SI_TKILL || si->si_pid != raw_getpid() || !g_capturing) {
    errno = saved_errno;
    return;
  }
  t_interrupts++;
  uint32_t gen = g_resume_gen;
  uint32_t idx = __atomic_fetch_add(&g_nslots, 1, __ATOMIC_SEQ_CST);
  if (idx < IBDBG_MAX_THREADS) record_self(&g_slots[idx], (ucontext_t*)ucv);
  take_pending("/proc/thread-self/status", "SigPnd:", raw_gettid());
  if (idx < IBDBG_MAX_THREADS) __atomic_store_n(&g_slots[idx].done, 1, __ATOMIC_RELEASE);
  __atomic_fetch_add(&g_entered, 1, __ATOMIC_SEQ_CST);
  futex_wake(&g_entered);
  if (raw_gettid() == g_ckpt_tid) {
    ckpt_describe_and_wait();
  } else {
    while (g_resume_gen == gen) futex_wait(&g_resume_gen, gen, -1);
  }
  errno = saved_errno;
}

// ---- the metadata blob ------------------------------------------------------------
size_t g_blob_len;
bool blob_add(uint32_t type, const void* data, size_t len) {
  if (g_blob_len + sizeof(ibdbg_blob_hdr) + len > g_blob_cap) return false;
  ibdbg_blob_hdr h = {type, (uint32_t)len};
  memcpy(g_blob + g_blob_len, &h, sizeof h);
  memcpy(g_blob + g_blob_len + sizeof h, data, len);
  g_blob_len += sizeof h + len;
  return true;
}

// Fields of /proc/self/stat after the command name, 1-based as in proc(5).
uint64_t stat_field(const char* stat, int field) {
  const char* p = stat;
  const char* rp = nullptr;
  for (const char* q = stat; *q; q++)
    if (*q == ')') rp = q;
  if (!rp) return 0;
  p = rp + 2;  // field 3
  for (int f = 3; f < field && *p; p++)
    if (*p == ' ') f++;
  uint64_t v = 0;
  bool neg = *p == '-';
  if (neg) p++;
  while (*p >= '0' && *p <= '9') v = v * 10 + (uint64_t)(*p++ - '0');
  return neg ? (uint64_t)-(int64_t)v : v;
}

ibdbg_process_info g_pinfo;
ibdbg_signal_state g_sigstate;

void describe_process() {
  ibdbg_process_info* p = &g_pinfo;
  memset(p, 0, sizeof *p);
  p->proto_version = IBDBG_PROTO_VERSION;
  p->pid = raw_getpid();
  p->ppid = (int)sys(SYS_getppid);
  p->pgid = (int)sys(SYS_getpgid, 0);
  p->sid = (int)sys(SYS_getsid, 0);
  uint32_t um = (uint32_t)sys(SYS_umask, 022);
  sys(SYS_umask, um);
  p->umask = um;
  p->generation = g_generation;
  p->dumpable = (int)sys(SYS_prctl, PR_GET_DUMPABLE);
  static char stat[4096];
  long n = read_file("/proc/self/stat", stat, sizeof stat - 1);
  stat[n > 0 ? n : 0] = 0;
  p->start_code = stat_field(stat, 26);
  p->end_code = stat_field(stat, 27);
  p->start_stack = stat_field(stat, 28);
  p->start_data = stat_field(stat, 45);
  p->end_data = stat_field(stat, 46);
  p->start_brk = stat_field(stat, 47);
  p->arg_start = stat_field(stat, 48);
  p->arg_end = stat_field(stat, 49);
  p->env_start = stat_field(stat, 50);
  p->env_end = stat_field(stat, 51);
  p->brk = (uint64_t)sys(SYS_brk, 0);
  long an = read_file("/proc/self/auxv", (char*)p->auxv, sizeof p->auxv);
  p->auxv_words = an > 0 ? (uint32_t)(an / 8) : 0;
  p->nthreads = g_nslots;
  p->restart_info_addr = (uint64_t)&g_restart_info;
  p->control_fd = g_sock;
  p->ckpt_signal = g_sig;
  for (int r = 0; r < 16; r++) {
    struct rlimit rl;
    if (sys(SYS_prlimit64, 0, r, 0, (long)&rl) == 0) p->rlimits[r].cur = rl.rlim_cur, p->rlimits[r].max = rl.rlim_max;
  }
  long l = sys(SYS_readlinkat, AT_FDCWD, (long)"/proc/self/cwd", (long)p->cwd, sizeof p->cwd - 1);
  p->cwd[l > 0 ? l : 0] = 0;
  l = sys(SYS_readlinkat, AT_FDCWD, (long)"/proc/self/exe", (long)p->exe, sizeof p->exe - 1);
  p->exe[l > 0 ? l : 0] = 0;
  read_file("/proc/self/comm", p->comm, sizeof p->comm - 1);
  for (char* c = p->comm; *c; c++)
    if (*c == '\n') *c = 0;
  struct utsname_raw {
    char f[6][65];
  } un;
  if (sys(SYS_uname, (long)&un) == 0) scopy(p->hostname, un.f[1], sizeof p->hostname);
  struct timespec ts;
  sys(SYS_clock_gettime, CLOCK_REALTIME, (long)&ts);
  p->capture_time_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;

  ibdbg_signal_state* s = &g_sigstate;
  memset(s, 0, sizeof *s);
  s->ckpt_signal = (uint32_t)g_sig;
  take_pending("/proc/self/status", "ShdPnd:", 0);
  uint32_t np = g_npending < IBDBG_MAX_PENDING ? g_npending : IBDBG_MAX_PENDING;
  for (uint32_t i = 0; i < np; i++)
    if (g_pending[i].signo) s->pending[s->npending++] = g_pending[i];
  for (int sig = 1; sig <= IBDBG_NSIG; sig++) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    ibdbg_ksigaction ka;
    if (sys(SYS_rt_sigaction, sig, 0, (long)&ka, 8) == 0) s->act[sig - 1] = ka;
  }
  // Our own signal: the image records what the application asked for, so a
  // replay without ibdbg would behave as the application expects; the
  // restorer installs ours again from the live record.
  for (int w = 0; w < 3; w++) {
    struct itimerval it;
    if (sys(SYS_getitimer, w, (long)&it) == 0) {
      s->itimer[w].interval_sec = it.it_interval.tv_sec;
      s->itimer[w].interval_usec = it.it_interval.tv_usec;
      s->itimer[w].value_sec = it.it_value.tv_sec;
      s->itimer[w].value_usec = it.it_value.tv_usec;
    }
  }
}

void send_error(const char* why) {
  ibdbg_msg_hdr h = {IBDBG_MSG_ERROR, (uint32_t)slen(why)};
  write_all(g_sock, &h, sizeof h);
  write_all(g_sock, why, h.len);
}

// The copy the agent reads memory from: it only waits, with no descriptor
// of the application's (a copy of a pipe's write end or a socket would keep
// the application's peers from seeing it closed), in a session of its own
// (terminal signals are not for it), every signal blocked (the handler runs
// with all of them blocked already: the application's handlers never run
// here).  It ends when the agent kills it, or when the agent goes away.
[[noreturn]] void frozen_copy_wait() {
  if (g_sock > 0) sys(SYS_close_range, 0, g_sock - 1, 0);
  sys(SYS_close_range, g_sock + 1, ~0u, 0);
  sys(SYS_setsid);
  sys(SYS_prctl, PR_SET_NAME, (long)"ibdbg-frozen");
  for (;;) {
    struct pollfd p = {g_sock, POLLRDHUP, 0};
    long r = sys(SYS_poll, (long)&p, 1, -1);
    if (r > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))) break;
  }
  sys(SYS_exit_group, 0);
  __builtin_unreachable();
}

// clone(flags) whose child runs fn(arg) on `stack_top` and then exits; the
// parent gets the child's pid (or -errno).
long clone_on_stack(unsigned long flags, void* stack_top, void (*fn)(void*), void* arg) {
  void** sp = (void**)stack_top;
  *--sp = arg;
  *--sp = (void*)fn;
  long ret;
  register long r10 asm("r10") = 0;
  register long r8 asm("r8") = 0;
  asm volatile(
      "syscall\n\t"
      "test %%rax, %%rax\n\t"
      "jnz 1f\n\t"
      "xor %%ebp, %%ebp\n\t"
      "pop %%rax\n\t"
      "pop %%rdi\n\t"
      "call *%%rax\n\t"
      "mov $60, %%eax\n\t"
      "xor %%edi, %%edi\n\t"
      "syscall\n\t"
      "1:\n\t"
      : "=a"(ret)
      : "a"((long)SYS_clone), "D"(flags), "S"(sp), "d"(0L), "r"(r10), "r"(r8)
      : "rcx", "r11", "memory");
  return ret;
}

// One message to the agent carrying a descriptor (SCM_RIGHTS), by raw
// system call (other threads may be stopped holding libc's locks).
long send_with_fd(const void* msg, size_t len, int fd) {
  struct iovec iov = {const_cast<void*>(msg), len};
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  memset(control, 0, sizeof control);
  struct msghdr mh;
  memset(&mh, 0, sizeof mh);
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = control;
  mh.msg_controllen = sizeof control;
  struct cmsghdr* c = CMSG_FIRSTHDR(&mh);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &fd, sizeof fd);
  return sys(SYS_sendmsg, g_sock, (long)&mh, MSG_NOSIGNAL);
}


// Runs in the intermediate child (sharing our memory, we wait meanwhile):
// forks the copy, hands the agent its pidfd.
void make_frozen_copy(void*) {
  int pidfd = -1;
  long copy = sys(SYS_clone, CLONE_PIDFD | SIGCHLD, 0, (long)&pidfd, 0, 0);
  if (copy == 0) frozen_copy_wait();
  if (copy < 0) {
    send_error("cannot fork a frozen copy (out of memory?)");
    return;
  }
  struct {
    ibdbg_msg_hdr h;
    int32_t pid;
  } __attribute__((packed)) m = {{IBDBG_MSG_FORKED, sizeof(int32_t)}, (int32_t)copy};
  if (send_with_fd(&m, sizeof m, pidfd) != (long)sizeof m) sys(SYS_kill, copy, SIGKILL);
}

// Forks a frozen copy of this (stopped) process: its private memory is the
// memory of this moment, copy-on-write, so the agent reads it there while
// the application runs on.  Only raw system calls: other threads are stopped
// and may hold libc's locks, and libc's fork handlers must not run.  Two
// steps, so that the copy is nobody's child in the job: an intermediate
// child (sharing our memory, vfork-style, so that the page tables are copied
// once, for the copy; exit signal 0: a "clone" child, which the
// application's wait() does not see; reaped here) forks the copy, hands the
// agent a pidfd of it and exits; the copy is reparented to the agent (a
// subreaper).
void fork_frozen_copy() {
  static char stack[16384] __attribute__((aligned(16)));
  long mid = clone_on_stack(CLONE_VM | CLONE_VFORK, stack + sizeof stack, make_frozen_copy, nullptr);
  if (mid < 0) {
    send_error("cannot fork a frozen copy");
    return;
  }
  int status;
  while (sys(SYS_wait4, mid, (long)&status, __WALL, 0) == -EINTR) {
  }
}

// Incremental capture: a userfaultfd made here (it acts on the memory of the
// process that makes it) in asynchronous write-protect mode, which never
// stops a thread: the kernel only notes the first write to each protected
// page.  The agent registers the ranges and reads the notes (PAGEMAP_SCAN);
// the descriptor goes to it and none stays here, so the application never
// sees one.  WP_ASYNC (1<<15), WP_UNPOPULATED (1<<13): Linux 6.7, spelled out
// for older headers.
void send_tracker() {
  long fd = sys(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
  if (fd < 0) {
    send_error("no userfaultfd for write tracking (kernel without it, or vm.unprivileged_userfaultfd)");
    return;
  }
  struct uffdio_api api;
  memset(&api, 0, sizeof api);
  api.api = UFFD_API;
  api.features = (1ull << 15) | (1ull << 13);
  if (sys(SYS_ioctl, fd, (long)UFFDIO_API, (long)&api) != 0) {
    sys(SYS_close, fd);
    send_error("this kernel has no asynchronous write protection (Linux 6.7)");
    return;
  }
  ibdbg_msg_hdr h = {IBDBG_MSG_TRACKER, 0};
  send_with_fd(&h, sizeof h, (int)fd);
  sys(SYS_close, fd);
}

// Runs in the checkpoint thread's own signal handler, so that its context is
// a signal frame like every other thread's.
void ckpt_describe_and_wait() {
  describe_process();
  g_blob_len = 0;
  bool ok = blob_add(IBDBG_BLOB_PROCESS, &g_pinfo, sizeof g_pinfo);
  uint32_t n = g_nslots < IBDBG_MAX_THREADS ? g_nslots : IBDBG_MAX_THREADS;
  for (uint32_t i = 0; i < n && ok; i++) ok = blob_add(IBDBG_BLOB_THREAD, &g_slots[i].info, sizeof g_slots[i].info);
  if (ok) ok = blob_add(IBDBG_BLOB_SIGNALS, &g_sigstate, sizeof g_sigstate);
  if (ok && g_vh && g_verbs_buf) {
    size_t vl = g_vh->describe(g_verbs_buf, kVerbsBufCap);
    if (vl) ok = blob_add(IBDBG_BLOB_VERBS, g_verbs_buf, vl);
  }
  if (!ok || g_nslots > IBDBG_MAX_THREADS) {
    send_error("too many threads for one capture");
    return;
  }
  if (g_npending > IBDBG_MAX_PENDING) {
    send_error("too many pending signals for one capture");
    return;
  }
  ibdbg_msg_hdr h = {IBDBG_MSG_SUSPENDED, (uint32_t)g_blob_len};
  if (!write_all(g_sock, &h, sizeof h) || !write_all(g_sock, g_blob, g_blob_len)) return;
  // Blocked here while the agent reads our memory (or until it has a frozen
  // copy to read it from).  After a replay, execution continues after the
  // tgkill in ckpt_capture() instead.
  for (;;) {
    ibdbg_msg_hdr reply;
    if (!read_all(g_sock, &reply, sizeof reply)) return;
    if (reply.type == IBDBG_MSG_TRACK) {
      send_tracker();
      continue;
    }
    if (reply.type != IBDBG_MSG_FORK) return;
    fork_frozen_copy();
  }
}

// Stops every thread but this one; returns false (with all running again) if
// some thread does not answer in time.
bool stop_all_threads(const char** why) {
  static int signaled[IBDBG_MAX_THREADS];
  int nsignaled = 0;
  int pid = raw_getpid(), self = raw_gettid();
  static char dents[32768];
  for (int round = 0; round < 1000; round++) {
    int fd = (int)sys(SYS_openat, AT_FDCWD, (long)"/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
      *why = "cannot list /proc/self/task";
      return false;
    }
    int fresh = 0;
    for (;;) {
      long n = sys(SYS_getdents64, fd, (long)dents, sizeof dents);
      if (n <= 0) break;
      for (long off = 0; off < n;) {
        struct linux_dirent64 {
          uint64_t ino;
          int64_t off;
          unsigned short reclen;
          unsigned char type;
          char name[];
        }* d = (linux_dirent64*)(dents + off);
        off += d->reclen;
        if (d->name[0] < '0' || d->name[0] > '9') continue;
        int tid = 0;
        for (const char* c = d->name; *c; c++) tid = tid * 10 + (*c - '0');
        if (tid == self) continue;
        bool known = false;
        for (int i = 0; i < nsignaled; i++)
          if (signaled[i] == tid) known = true;
        if (known) continue;
        if (nsignaled >= IBDBG_MAX_THREADS) {
          sys(SYS_close, fd);
          *why = "too many threads for one capture";
          return false;
        }
        if (sys(SYS_tgkill, pid, tid, g_sig) == 0) signaled[nsignaled++] = tid, fresh++;
      }
    }
    sys(SYS_close, fd);
    // Wait until every signalled thread has entered the handler or is gone.
    for (int waited = 0;; waited++) {
      int alive = 0;
      for (int i = 0; i < nsignaled; i++) {
        bool in = false;
        for (uint32_t k = 0; k < g_nslots && k < IBDBG_MAX_THREADS; k++)
          if (__atomic_load_n(&g_slots[k].done, __ATOMIC_ACQUIRE) && g_slots[k].info.tid == signaled[i]) in = true;
        if (!in && sys(SYS_tgkill, pid, signaled[i], 0) == 0) alive++;
      }
      if (alive == 0) break;
      if (waited > 1000) {  // ~10 s
        *why = "a thread does not stop for the checkpoint signal (is it blocked with a raw system call?)";
        return false;
      }
      uint32_t e = g_entered;
      futex_wait(&g_entered, e, 10);
    }
    if (fresh == 0) return true;  // a full scan found nobody new
  }
  *why = "threads keep appearing during the capture";
  return false;
}

void release_threads() {
  requeue_pending();
  g_capturing = 0;
  __atomic_fetch_add(&g_resume_gen, 1, __ATOMIC_SEQ_CST);
  futex_wake(&g_resume_gen);
}

// tries: attempts 20 ms apart.  Start-up makes one (an agent that is not
// there must not delay every program the job starts); the checkpoint thread
// keeps trying.
bool connect_agent(int tries) {
  int fd = (int)sys(SYS_socket, AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  struct sockaddr_un a;
  memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  size_t len = slen(g_agent);
  if (len + 1 >= sizeof a.sun_path) len = sizeof a.sun_path - 2;
  // A leading '@' names an abstract socket.
  memcpy(a.sun_path, g_agent, len);
  if (a.sun_path[0] == '@') a.sun_path[0] = 0;
  socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
  for (int attempt = 0; attempt < tries; attempt++) {
    if (sys(SYS_connect, fd, (long)&a, alen) == 0) {
      // Keep the descriptor out of the application's way.
      long hi = sys(SYS_fcntl, fd, F_DUPFD_CLOEXEC, 900);
      if (hi >= 0) {
        sys(SYS_close, fd);
        fd = (int)hi;
      }
      g_sock = fd;
      ibdbg_hello hello;
      memset(&hello, 0, sizeof hello);
      hello.pid = raw_getpid();
      hello.restarted = (int)g_generation;
      long l = sys(SYS_readlinkat, AT_FDCWD, (long)"/proc/self/exe", (long)hello.exe, sizeof hello.exe - 1);
      hello.exe[l > 0 ? l : 0] = 0;
      ibdbg_msg_hdr h = {IBDBG_MSG_HELLO, sizeof hello};
      return write_all(g_sock, &h, sizeof h) && write_all(g_sock, &hello, sizeof hello);
    }
    if (attempt + 1 == tries) break;
    struct timespec ts = {0, 20000000};
    sys(SYS_nanosleep, (long)&ts, 0);
  }
  sys(SYS_close, fd);
  return false;
}

// After a replay the agent has another name; children the application starts
// through libc's own paths (system, popen) read it from environ.  Names have
// a fixed length, so the value is overwritten in place, without allocating.
void update_environ_agent() {
  const char key[] = "IBDBG_AGENT=";
  for (char** e = environ; e && *e; e++) {
    if (memcmp(*e, key, sizeof key - 1) != 0) continue;
    char* v = *e + sizeof key - 1;
    if (slen(v) == slen(g_agent)) memcpy(v, g_agent, slen(g_agent));
  }
}

void verbs_release() {
  if (g_vh && g_verbs_held) g_vh->resume();
  g_verbs_held = false;
}

// The name service of the replayed job, through the agent (only the
// checkpoint thread uses g_sock, and it is here).
int verbs_ns_put(const char* key, const char* value) {
  size_t kl = slen(key), vl = slen(value);
  ibdbg_msg_hdr h = {IBDBG_MSG_NS_PUT, (uint32_t)(kl + 1 + vl)};
  return write_all(g_sock, &h, sizeof h) && write_all(g_sock, key, kl + 1) && write_all(g_sock, value, vl) ? 0 : -1;
}
int verbs_ns_get(const char* key, char* value, size_t cap) {
  ibdbg_msg_hdr h = {IBDBG_MSG_NS_GET, (uint32_t)slen(key)};
  if (!write_all(g_sock, &h, sizeof h) || !write_all(g_sock, key, h.len)) return -1;
  if (!read_all(g_sock, &h, sizeof h) || h.type != IBDBG_MSG_NS_GET || h.len >= cap) return -1;
  if (!read_all(g_sock, value, h.len)) return -1;
  value[h.len] = 0;
  return 0;
}

[[noreturn]] void verbs_replay_fails(const char* why) {
  char line[512];
  size_t k = 0;
  const char* parts[] = {"ibdbg: replay: ", why, "\n"};
  for (const char* part : parts)
    for (const char* c = part; *c && k < sizeof line; c++) line[k++] = *c;
  sys(SYS_write, 2, (long)line, (long)k);
  sys(SYS_exit_group, 70);
  __builtin_unreachable();
}

// A replayed process with verbs objects: the record comes from the image
// (through the agent: `ibdbg translate` may have rewritten it), not from our
// memory; the verbs layer rebuilds the objects, then posts go on.
void verbs_restart() {
  if (g_vh->describe(g_verbs_buf, kVerbsBufCap) == 0) {
    verbs_release();
    return;
  }
  if (g_sock < 0) verbs_replay_fails("verbs: no agent to ask for the verbs record");
  ibdbg_msg_hdr h = {IBDBG_MSG_VERBS_RECORD, 0};
  if (!write_all(g_sock, &h, sizeof h) || !read_all(g_sock, &h, sizeof h) || h.type != IBDBG_MSG_VERBS_RECORD ||
      h.len < 4 || h.len > kVerbsBufCap || !read_all(g_sock, g_verbs_buf, h.len))
    verbs_replay_fails("verbs: the agent sent no verbs record");
  uint32_t dl;
  memcpy(&dl, g_verbs_buf, 4);
  if (dl > 255 || 4 + dl > h.len) verbs_replay_fails("verbs: the agent's verbs record is damaged");
  static char device[256];
  memcpy(device, g_verbs_buf + 4, dl);
  device[dl] = 0;
  ibdbg_verbs_replay_env env;
  env.record = g_verbs_buf + 4 + dl;
  env.record_len = h.len - 4 - dl;
  env.device = device;
  env.ns_put = verbs_ns_put;
  env.ns_get = verbs_ns_get;
  if (const char* why = g_vh->restart(&env)) verbs_replay_fails(why);
  verbs_release();
}

void ckpt_capture() {
  const char* why = nullptr;
  for (uint32_t k = 0; k < g_nslots && k < IBDBG_MAX_THREADS; k++) g_slots[k].done = 0;
  g_nslots = 0;
  g_entered = 0;
  g_npending = 0;
  // Verbs first, while every thread runs: posts stop, sends complete, CQs
  // are drained into the buffers the application's next polls return.
  // After a PRESUSPEND (every process of the job past it) only the drain is
  // left.
  bool pre = g_presuspended && g_verbs_held;
  g_presuspended = false;
  if (g_vh) {
    g_verbs_held = true;
    if (const char* vwhy = pre ? g_vh->drain() : g_vh->quiesce()) {
      verbs_release();
      send_error(vwhy);
      return;
    }
  }
  g_capturing = 1;
  if (!stop_all_threads(&why)) {
    release_threads();
    verbs_release();
    send_error(why);
    return;
  }
  uint32_t gen_before = g_generation;
  sys(SYS_tgkill, raw_getpid(), raw_gettid(), g_sig);
  // Either the agent said RESUME (same process, same generation) or we are a
  // replayed process whose restorer filled g_restart_info.
  if (g_restart_info.magic == IBDBG_RESTART_MAGIC && g_restart_info.generation != gen_before) {
    g_generation = g_restart_info.generation;
    scopy(g_agent, g_restart_info.agent, sizeof g_agent);
    g_capturing = 0;
    g_npending = 0;  // the restorer queued them again
    update_environ_agent();
    // The old control socket's number was left free by the launcher.
    g_sock = -1;
    connect_agent(50);
    // The backend's objects are gone with the captured process: the verbs
    // layer rebuilds them (posts held meanwhile), or the process cannot go on.
    if (g_vh && g_verbs_held) verbs_restart();
    return;
  }
  release_threads();
  verbs_release();
}

// The first step of a capture (capture/verbs/README.md, the job-wide drain
// barrier): verbs posts held and this process's sends complete while every
// process of the job still runs (a peer's backend must answer them).  A
// process without the verbs layer passes at once.
void ckpt_presuspend() {
  if (g_vh && !g_verbs_held) {
    g_verbs_held = true;
    if (const char* vwhy = g_vh->presuspend()) {
      verbs_release();
      send_error(vwhy);
      return;
    }
  }
  g_presuspended = true;
  ibdbg_msg_hdr h = {IBDBG_MSG_PRESUSPENDED, 0};
  write_all(g_sock, &h, sizeof h);
}

void* ckpt_main(void*) {
  sigset_t all;
  sigfillset(&all);
  sigdelset(&all, g_sig);
  real.pthread_sigmask(SIG_SETMASK, &all, nullptr);
  sys(SYS_prctl, PR_SET_NAME, (long)"ibdbg-ckpt");
  g_ckpt_tid = raw_gettid();
  if (g_sock < 0 && !connect_agent(50)) return nullptr;
  for (;;) {
    ibdbg_msg_hdr h;
    if (!read_all(g_sock, &h, sizeof h)) {
      sys(SYS_close, g_sock);
      g_sock = -1;
      return nullptr;  // the agent went away: the process runs on, uncapturable
    }
    static char scratch[4096];
    for (uint32_t left = h.len; left;) {
      uint32_t k = left < sizeof scratch ? left : sizeof scratch;
      if (!read_all(g_sock, scratch, k)) return nullptr;
      left -= k;
    }
    if (h.type == IBDBG_MSG_SUSPEND) {
      ckpt_capture();
    } else if (h.type == IBDBG_MSG_PRESUSPEND) {
      ckpt_presuspend();
    } else if (h.type == IBDBG_MSG_RESUME && g_presuspended) {
      // The capture was abandoned between its two steps.
      g_presuspended = false;
      verbs_release();
    }
  }
}

void start_ckpt_thread() {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  pthread_t th;
  // The new thread must not take application signals.
  sigset_t all, old;
  sigfillset(&all);
  real.pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_create(&th, &attr, ckpt_main, nullptr);
  real.pthread_sigmask(SIG_SETMASK, &old, nullptr);
  pthread_attr_destroy(&attr);
}

void install_handler() {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = handler;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigfillset(&sa.sa_mask);
  real.sigaction(g_sig, &sa, nullptr);
}

void after_fork_child() {
  // The child has no checkpoint thread and shares our agent connection: it
  // gets its own of both, registered before fork() returns to it.
  if (g_sock >= 0) sys(SYS_close, g_sock);
  g_sock = -1;
  g_capturing = 0;
  g_ckpt_tid = 0;
  if (!g_agent[0]) return;
  connect_agent(1);
  start_ckpt_thread();
}

// `ibdbg run` preloads the verbs layer right after us: an exec puts both
// back, as one entry "capture:verbs".
void extend_preload_with_verbs(const char* after) {
  if (*after != ':') return;
  const char* s = after + 1;
  const char* e = s;
  while (*e && *e != ':' && *e != ' ') e++;
  const char name[] = "libibdbg_verbs.so";
  size_t n = (size_t)(e - s), have = slen(g_preload);
  if (n < sizeof name - 1 || memcmp(e - (sizeof name - 1), name, sizeof name - 1) != 0) return;
  if (have + 1 + n >= sizeof g_preload) return;
  g_preload[have] = ':';
  memcpy(g_preload + have + 1, s, n);
  g_preload[have + 1 + n] = 0;
}

__attribute__((constructor)) void ibdbg_capture_init() {
  resolve_real();
  const char* agent = getenv("IBDBG_AGENT");
  if (!agent || !*agent) return;  // preloaded outside ibdbg run: stay inert
  // ibdbg itself (an agent for another host's part, started by the job's
  // remote shell, inherits the job's environment) is never part of a job.
  if (const char* me = getenv("IBDBG_EXE"); me && *me) {
    scopy(g_ibdbg_exe, me, sizeof g_ibdbg_exe);
    char self[IBDBG_PATH_MAX];
    long l = sys(SYS_readlinkat, AT_FDCWD, (long)"/proc/self/exe", (long)self, sizeof self - 1);
    if (l > 0) {
      self[l] = 0;
      if (strcmp(self, me) == 0) return;
    }
  }
  scopy(g_agent, agent, sizeof g_agent);
  if (const char* pre = getenv("LD_PRELOAD")) {
    // Our entry: the one naming this library.
    const char* start = pre;
    for (const char* c = pre;; c++) {
      if (*c == ':' || *c == ' ' || !*c) {
        size_t n = (size_t)(c - start);
        const char name[] = "libibdbg_capture.so";
        if (n >= sizeof name - 1 && n < sizeof g_preload && memcmp(c - (sizeof name - 1), name, sizeof name - 1) == 0) {
          memcpy(g_preload, start, n);
          g_preload[n] = 0;
          extend_preload_with_verbs(c);
        }
        if (!*c) break;
        start = c + 1;
      }
    }
  }
  if (const char* jd = getenv("IBDBG_JOB_DIR")) scopy(g_job_dir, jd, sizeof g_job_dir);
  if (const char* ji = getenv("IBDBG_JOB_ID")) scopy(g_job_id, ji, sizeof g_job_id);
  if (const char* r = getenv("IBDBG_REMOTE_SHELL")) {
    scopy(g_rsh_full, r, sizeof g_rsh_full);
    scopy(g_rsh, base_name(r), sizeof g_rsh);
  }
  const char* s = getenv("IBDBG_SIGNAL");
  g_sig = s && *s ? atoi(s) : SIGRTMAX - 2;
  if (g_sig <= 0 || g_sig >= 65) g_sig = SIGRTMAX - 2;
  g_blob_cap = sizeof(ibdbg_process_info) + sizeof(ibdbg_signal_state) +
               (size_t)IBDBG_MAX_THREADS * (sizeof(ibdbg_thread_info) + sizeof(ibdbg_blob_hdr)) + 4096 +
               kVerbsBufCap;
  void* b = mmap(nullptr, g_blob_cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (b == MAP_FAILED) return;
  g_blob = (char*)b;
  g_vh = (const ibdbg_verbs_hooks*)dlsym(RTLD_DEFAULT, "ibdbg_verbs_hooks");
  if (g_vh && g_vh->version != IBDBG_VERBS_HOOKS_VERSION) g_vh = nullptr;
  if (g_vh) {
    void* vb = mmap(nullptr, kVerbsBufCap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    g_verbs_buf = vb == MAP_FAILED ? nullptr : (char*)vb;
  }
  install_handler();
  pthread_atfork(nullptr, nullptr, after_fork_child);
  // Registered before main() runs: a capture requested as soon as the program
  // shows signs of life must find it.
  connect_agent(1);
  start_ckpt_thread();
}

bool is_ours(int sig) { return g_agent[0] && sig == g_sig; }

sigset_t without_ours(const sigset_t* set) {
  sigset_t s = *set;
  if (g_agent[0]) sigdelset(&s, g_sig);
  return s;
}

}  // namespace

// ---- wrappers: calls that a checkpoint signal would turn into EINTR ----------
// SA_RESTART restarts read, accept or futex waits by itself; these calls return
// EINTR whatever the flags say, so they are retried here when (and only when)
// our own signal interrupted them.  The counter lives in TLS, which a replay
// restores, so the retry also happens for a call interrupted before a capture
// and resumed in a replay.

EXPORT int nanosleep(const struct timespec* req, struct timespec* rem) {
  struct timespec left = *req, r;
  for (;;) {
    unsigned before = t_interrupts;
    int rc = R().nanosleep(&left, &r);
    if (rc == -1 && errno == EINTR && t_interrupts != before) {
      left = r;
      continue;
    }
    if (rc == -1 && errno == EINTR && rem) *rem = r;
    return rc;
  }
}

EXPORT int clock_nanosleep(clockid_t clk, int flags, const struct timespec* req, struct timespec* rem) {
  struct timespec left = *req, r;
  for (;;) {
    unsigned before = t_interrupts;
    int rc = R().clock_nanosleep(clk, flags, &left, &r);
    if (rc == EINTR && t_interrupts != before) {
      if (!(flags & TIMER_ABSTIME)) left = r;
      continue;
    }
    if (rc == EINTR && rem && !(flags & TIMER_ABSTIME)) *rem = r;
    return rc;
  }
}

EXPORT unsigned int sleep(unsigned int seconds) {
  struct timespec ts = {(time_t)seconds, 0}, rem = {0, 0};
  if (nanosleep(&ts, &rem) == -1) return (unsigned)rem.tv_sec + (rem.tv_nsec > 0);
  return 0;
}

EXPORT int usleep(useconds_t usec) {
  struct timespec ts = {(time_t)(usec / 1000000), (long)(usec % 1000000) * 1000};
  return nanosleep(&ts, nullptr);
}

namespace {
int64_t mono_ms() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
}  // namespace

EXPORT int poll(struct pollfd* fds, nfds_t n, int timeout) {
  int64_t deadline = timeout > 0 ? mono_ms() + timeout : 0;
  for (;;) {
    unsigned before = t_interrupts;
    int rc = R().poll(fds, n, timeout);
    if (rc == -1 && errno == EINTR && t_interrupts != before) {
      if (timeout > 0) {
        int64_t left = deadline - mono_ms();
        // After a replay the monotonic clock may have jumped: never wait
        // longer than the application asked for.
        timeout = left < 0 ? 0 : left > timeout ? timeout : (int)left;
      }
      continue;
    }
    return rc;
  }
}

// Makes `call` again while our checkpoint signal is what interrupted it:
// for calls whose arguments need no update on the way (no time left to
// recompute), the application never sees EINTR of ours.
template <class Call>
auto again_if_ours(Call call) {
  for (;;) {
    unsigned before = t_interrupts;
    auto rc = call();
    if (rc == -1 && errno == EINTR && t_interrupts != before) continue;
    return rc;
  }
}

EXPORT int ppoll(struct pollfd* fds, nfds_t n, const struct timespec* tmo, const sigset_t* mask) {
  return again_if_ours([&] { return R().ppoll(fds, n, tmo, mask); });
}

EXPORT int select(int nfds, fd_set* r, fd_set* w, fd_set* e, struct timeval* tv) {
  fd_set r0, w0, e0;
  if (r) r0 = *r;
  if (w) w0 = *w;
  if (e) e0 = *e;
  for (;;) {
    unsigned before = t_interrupts;
    int rc = R().select(nfds, r, w, e, tv);  // Linux updates tv with the time left
    if (rc == -1 && errno == EINTR && t_interrupts != before) {
      if (r) *r = r0;
      if (w) *w = w0;
      if (e) *e = e0;
      continue;
    }
    return rc;
  }
}

EXPORT int epoll_wait(int ep, struct epoll_event* ev, int max, int timeout) {
  int64_t deadline = timeout > 0 ? mono_ms() + timeout : 0;
  for (;;) {
    unsigned before = t_interrupts;
    int rc = R().epoll_wait(ep, ev, max, timeout);
    if (rc == -1 && errno == EINTR && t_interrupts != before) {
      if (timeout > 0) {
        int64_t left = deadline - mono_ms();
        timeout = left < 0 ? 0 : left > timeout ? timeout : (int)left;
      }
      continue;
    }
    return rc;
  }
}

EXPORT int epoll_pwait(int ep, struct epoll_event* ev, int max, int timeout, const sigset_t* mask) {
  return again_if_ours([&] { return R().epoll_pwait(ep, ev, max, timeout, mask); });
}

// SysV IPC waits are never restarted after a handler (signal(7)); an
// interrupted one has done nothing, so it is simply made again.  Resolved on
// first use: few programs call them.
namespace {
template <class F>
F real_fn(F* slot, const char* name) {
  F f = __atomic_load_n(slot, __ATOMIC_RELAXED);
  if (!f) {
    f = (F)dlsym(RTLD_NEXT, name);
    __atomic_store_n(slot, f, __ATOMIC_RELAXED);
  }
  return f;
}
int (*g_real_semop)(int, struct sembuf*, size_t);
int (*g_real_semtimedop)(int, struct sembuf*, size_t, const struct timespec*);
ssize_t (*g_real_msgrcv)(int, void*, size_t, long, int);
int (*g_real_msgsnd)(int, const void*, size_t, int);
}  // namespace

EXPORT int semop(int id, struct sembuf* ops, size_t n) {
  auto f = real_fn(&g_real_semop, "semop");
  return again_if_ours([&] { return f(id, ops, n); });
}

EXPORT int semtimedop(int id, struct sembuf* ops, size_t n, const struct timespec* tmo) {
  auto f = real_fn(&g_real_semtimedop, "semtimedop");
  int64_t total = tmo ? (int64_t)tmo->tv_sec * 1000000000 + tmo->tv_nsec : 0;
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  struct timespec left = tmo ? *tmo : timespec{0, 0};
  for (;;) {
    unsigned before = t_interrupts;
    int rc = f(id, ops, n, tmo ? &left : nullptr);
    if (rc == -1 && errno == EINTR && t_interrupts != before) {
      if (tmo) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        int64_t spent = (int64_t)(now.tv_sec - t0.tv_sec) * 1000000000 + (now.tv_nsec - t0.tv_nsec);
        // After a replay the clock may have jumped: never wait longer than asked.
        int64_t rest = spent < 0 || spent > total ? 0 : total - spent;
        left.tv_sec = rest / 1000000000;
        left.tv_nsec = rest % 1000000000;
      }
      continue;
    }
    return rc;
  }
}

EXPORT ssize_t msgrcv(int id, void* msg, size_t size, long type, int flags) {
  auto f = real_fn(&g_real_msgrcv, "msgrcv");
  return again_if_ours([&] { return f(id, msg, size, type, flags); });
}

EXPORT int msgsnd(int id, const void* msg, size_t size, int flags) {
  auto f = real_fn(&g_real_msgsnd, "msgsnd");
  return again_if_ours([&] { return f(id, msg, size, flags); });
}

// ---- keeping the checkpoint signal ours ----------------------------------------
EXPORT int sigaction(int sig, const struct sigaction* act, struct sigaction* old) {
  if (is_ours(sig)) {
    if (old) *old = g_app_action;
    if (act) g_app_action = *act;
    return 0;
  }
  return R().sigaction(sig, act, old);
}

EXPORT int sigprocmask(int how, const sigset_t* set, sigset_t* old) {
  if (!set) return R().sigprocmask(how, set, old);
  sigset_t s = without_ours(set);
  return R().sigprocmask(how, &s, old);
}

EXPORT int pthread_sigmask(int how, const sigset_t* set, sigset_t* old) {
  if (!set) return R().pthread_sigmask(how, set, old);
  sigset_t s = without_ours(set);
  return R().pthread_sigmask(how, &s, old);
}

// ---- exec: the new program is captured too ----------------------------------------
// A program may start another with an environment of its own making; ours goes
// back into it (LD_PRELOAD, and the agent's current name, which a replay
// changes).  Only the stack is used: a vfork child calls these too.
namespace {

bool has_prefix(const char* s, const char* p) {
  while (*p)
    if (*s++ != *p++) return false;
  return true;
}

struct EnvFix {
  char** envp;
  char preload[1024 + 16];
  char agent[160];
  char jobdir[IBDBG_PATH_MAX + 32];
  char jobid[96];
};

void build(char* dst, size_t cap, const char* a, const char* b, const char* c) {
  size_t n = 0;
  const char* parts[3] = {a, b, c};
  for (int i = 0; i < 3; i++)
    for (const char* p = parts[i]; p && *p && n + 1 < cap; p++) dst[n++] = *p;
  dst[n] = 0;
}

// out has room for count(envp) + 5 entries.
void fix_env(char* const* envp, EnvFix* f, char** out) {
  size_t n = 0;
  bool pre = false, jd = false, ji = false;
  for (char* const* e = envp; e && *e; e++) {
    if (has_prefix(*e, "IBDBG_AGENT=")) continue;
    if (has_prefix(*e, "LD_PRELOAD=")) {
      pre = true;
      const char* v = *e + 11;
      bool mine = false;
      for (const char* c = v; *c && !mine; c++)
        if (has_prefix(c, g_preload)) mine = true;
      if (!mine) {
        build(f->preload, sizeof f->preload, "LD_PRELOAD=", g_preload, *v ? ":" : "");
        size_t l = slen(f->preload);
        build(f->preload + l, sizeof f->preload - l, v, nullptr, nullptr);
        out[n++] = f->preload;
        continue;
      }
    }
    if (has_prefix(*e, "IBDBG_JOB_DIR=")) jd = true;
    if (has_prefix(*e, "IBDBG_JOB_ID=")) ji = true;
    out[n++] = *e;
  }
  if (!pre) {
    build(f->preload, sizeof f->preload, "LD_PRELOAD=", g_preload, nullptr);
    out[n++] = f->preload;
  }
  build(f->agent, sizeof f->agent, "IBDBG_AGENT=", g_agent, nullptr);
  out[n++] = f->agent;
  if (!jd && g_job_dir[0]) build(f->jobdir, sizeof f->jobdir, "IBDBG_JOB_DIR=", g_job_dir, nullptr), out[n++] = f->jobdir;
  if (!ji && g_job_id[0]) build(f->jobid, sizeof f->jobid, "IBDBG_JOB_ID=", g_job_id, nullptr), out[n++] = f->jobid;
  out[n] = nullptr;
}

size_t env_count(char* const* envp) {
  size_t n = 0;
  while (envp && envp[n]) n++;
  return n;
}

bool capturing_enabled() { return g_agent[0] && g_preload[0]; }

template <typename F>
int with_env(char* const* envp, F call) {
  if (!capturing_enabled()) return call(envp);
  EnvFix f;
  char** out = (char**)__builtin_alloca((env_count(envp) + 6) * sizeof(char*));
  fix_env(envp, &f, out);
  return call(out);
}

// ---- remote shells: what a job starts on other hosts is captured too ----------------
// A job reaches other hosts through its remote shell (ssh, or what `ibdbg run
// --remote-shell` names); used as one uses ssh, it runs a command line on the
// remote host.  That line is wrapped so that an agent of this job runs it
// there: `ibdbg run --dir JOB --via HOST:PID:PPID --remote-shell RSH -- sh
// -c 'LINE'`, which
// names this process and its parent, so that a replay can put the remote
// part's launcher in its place.  Only the stack is used (a vfork child calls this too).

// ssh's options that take an argument.
bool ssh_opt_with_arg(char c) {
  for (const char* p = "BbcDEeFIiJLlmOoPpQRSWw"; *p; p++)
    if (*p == c) return true;
  return false;
}

size_t quoted_len(const char* s) {
  size_t n = 2;
  for (; *s; s++) n += *s == '\'' ? 4 : 1;
  return n;
}

char* put_quoted(char* d, const char* s) {
  *d++ = '\'';
  for (; *s; s++) {
    if (*s == '\'') {
      memcpy(d, "'\\''", 4);
      d += 4;
    } else {
      *d++ = *s;
    }
  }
  *d++ = '\'';
  return d;
}

void utoa(unsigned long v, char* out) {
  char tmp[24];
  int n = 0;
  do tmp[n++] = (char)('0' + v % 10), v /= 10;
  while (v);
  while (n) *out++ = tmp[--n];
  *out = 0;
}

char* put(char* d, const char* s) {
  while (*s) *d++ = *s++;
  return d;
}

bool is_remote_shell(const char* path) {
  if (!capturing_enabled() || !g_rsh[0] || !g_ibdbg_exe[0] || !g_job_dir[0] || !path) return false;
  return strcmp(base_name(path), g_rsh) == 0;
}

// The index of the first word of the remote command, or 0 when there is none
// (an interactive login is left alone).
size_t remote_command_index(char* const argv[]) {
  size_t i = 1;
  while (argv[i] && argv[i][0] == '-') {
    if (argv[i][1] == '-' && !argv[i][2]) {
      i++;
      break;
    }
    size_t l = slen(argv[i]);
    i += (l == 2 && ssh_opt_with_arg(argv[i][1]) && argv[i + 1]) ? 2 : 1;
  }
  if (!argv[i] || !argv[i + 1]) return 0;  // argv[i] is the host
  return i + 1;
}

// Fills `line` (room: wrapped_len) with the wrapped command.
size_t wrapped_len(char* const argv[], size_t first) {
  size_t n = 256 + quoted_len(g_ibdbg_exe) + quoted_len(g_job_dir) + quoted_len(g_rsh_full) + 2;
  for (size_t i = first; argv[i]; i++) n += slen(argv[i]) + 1;
  return n * 4 + 16;  // quoting twice at worst
}

void wrap_line(char* const argv[], size_t first, char* line, char* scratch) {
  // LINE: the words joined by spaces, as ssh sends them.
  char* s = scratch;
  for (size_t i = first; argv[i]; i++) {
    if (i > first) *s++ = ' ';
    s = put(s, argv[i]);
  }
  *s = 0;
  struct {
    char f[6][65];
  } un;
  char host[80] = "?";
  if (sys(SYS_uname, (long)&un) == 0) scopy(host, un.f[1], sizeof host);
  char via[160];
  char pid[24], ppid[24];
  utoa((unsigned long)sys(SYS_getpid), pid);
  utoa((unsigned long)sys(SYS_getppid), ppid);
  build(via, sizeof via, host, ":", pid);
  size_t vl = slen(via);
  build(via + vl, sizeof via - vl, ":", ppid, nullptr);
  char* d = line;
  d = put(d, "exec env -u LD_PRELOAD -u IBDBG_AGENT ");
  d = put_quoted(d, g_ibdbg_exe);
  d = put(d, " run --dir ");
  d = put_quoted(d, g_job_dir);
  d = put(d, " --via ");
  d = put_quoted(d, via);
  // That part may reach further hosts the same way (mpirun's tree spawn).
  d = put(d, " --remote-shell ");
  d = put_quoted(d, g_rsh_full);
  d = put(d, " -- sh -c ");
  d = put_quoted(d, scratch);
  *d = 0;
}

template <typename F>
int with_remote_wrap(const char* path, char* const argv[], F call) {
  size_t first = is_remote_shell(path) ? remote_command_index(argv) : 0;
  if (!first) return call(argv);
  size_t cap = wrapped_len(argv, first);
  char* line = (char*)__builtin_alloca(cap);
  char* scratch = (char*)__builtin_alloca(cap);
  wrap_line(argv, first, line, scratch);
  char** out = (char**)__builtin_alloca((first + 2) * sizeof(char*));
  for (size_t i = 0; i < first; i++) out[i] = argv[i];
  out[first] = line;
  out[first + 1] = nullptr;
  return call(out);
}

using execve_fn = int (*)(const char*, char* const*, char* const*);
using fexecve_fn = int (*)(int, char* const*, char* const*);
using spawn_fn = int (*)(pid_t*, const char*, const posix_spawn_file_actions_t*, const posix_spawnattr_t*,
                         char* const*, char* const*);

template <typename T>
T next_fn(const char* name) {
  return (T)dlsym(RTLD_NEXT, name);
}

}  // namespace

EXPORT int execve(const char* path, char* const argv[], char* const envp[]) {
  static execve_fn real_fn;
  if (!real_fn) real_fn = next_fn<execve_fn>("execve");
  return with_remote_wrap(path, argv, [&](char* const* a) {
    return with_env(envp, [&](char* const* e) { return real_fn(path, a, e); });
  });
}

EXPORT int execvpe(const char* file, char* const argv[], char* const envp[]) {
  static execve_fn real_fn;
  if (!real_fn) real_fn = next_fn<execve_fn>("execvpe");
  return with_remote_wrap(file, argv, [&](char* const* a) {
    return with_env(envp, [&](char* const* e) { return real_fn(file, a, e); });
  });
}

EXPORT int execv(const char* path, char* const argv[]) { return execve(path, argv, environ); }
EXPORT int execvp(const char* file, char* const argv[]) { return execvpe(file, argv, environ); }

EXPORT int fexecve(int fd, char* const argv[], char* const envp[]) {
  static fexecve_fn real_fn;
  if (!real_fn) real_fn = next_fn<fexecve_fn>("fexecve");
  return with_env(envp, [&](char* const* e) { return real_fn(fd, argv, e); });
}

namespace {
// argv of an execl-style call, on the stack.
#define IBDBG_COLLECT_ARGS(first, ap, argv)                      \
  size_t argc_ = 1;                                               \
  {                                                               \
    va_list cp;                                                   \
    va_copy(cp, ap);                                              \
    while (va_arg(cp, char*)) argc_++;                            \
    va_end(cp);                                                   \
  }                                                               \
  char** argv = (char**)__builtin_alloca((argc_ + 1) * sizeof(char*)); \
  argv[0] = (char*)(first);                                       \
  for (size_t i_ = 1; i_ <= argc_; i_++) argv[i_] = va_arg(ap, char*);
}  // namespace

EXPORT int execl(const char* path, const char* arg, ...) {
  va_list ap;
  va_start(ap, arg);
  IBDBG_COLLECT_ARGS(arg, ap, argv);
  va_end(ap);
  return execve(path, argv, environ);
}

EXPORT int execlp(const char* file, const char* arg, ...) {
  va_list ap;
  va_start(ap, arg);
  IBDBG_COLLECT_ARGS(arg, ap, argv);
  va_end(ap);
  return execvpe(file, argv, environ);
}

EXPORT int execle(const char* path, const char* arg, ...) {
  va_list ap;
  va_start(ap, arg);
  IBDBG_COLLECT_ARGS(arg, ap, argv);
  char* const* envp = va_arg(ap, char* const*);
  va_end(ap);
  return execve(path, argv, envp);
}

EXPORT int posix_spawn(pid_t* pid, const char* path, const posix_spawn_file_actions_t* fa,
                       const posix_spawnattr_t* attr, char* const argv[], char* const envp[]) {
  static spawn_fn real_fn;
  if (!real_fn) real_fn = next_fn<spawn_fn>("posix_spawn");
  return with_env(envp, [&](char* const* e) { return real_fn(pid, path, fa, attr, argv, e); });
}

EXPORT int posix_spawnp(pid_t* pid, const char* file, const posix_spawn_file_actions_t* fa,
                        const posix_spawnattr_t* attr, char* const argv[], char* const envp[]) {
  static spawn_fn real_fn;
  if (!real_fn) real_fn = next_fn<spawn_fn>("posix_spawnp");
  return with_env(envp, [&](char* const* e) { return real_fn(pid, file, fa, attr, argv, e); });
}
