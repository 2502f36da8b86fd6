/* ibdbg-restore: becomes the captured process.
 *
 * A static program without libc, linked far from where applications live
 * (IBDBG_RESTORER_BASE).  The launcher has already put the file descriptors,
 * cwd, umask and limits in place and made this process's pid the captured one.
 * The restorer reads a plan on the descriptor named by argv[1], clears its own
 * address space, moves its vdso block to where the image had it, maps every
 * region, lets the launcher fill the pages (process_vm_writev), sets the
 * process-wide state, recreates each thread with its own tid and TLS, and
 * finally brings every thread back with rt_sigreturn on the signal frame the
 * capture left on that thread's stack.  In gdb mode threads park just before
 * that last system call, and gdb steps them over it.
 */
#include <stddef.h>
#include <stdint.h>

#include <asm/unistd.h>
#include <linux/capability.h>
#include <linux/elf.h>
#include <asm/sigcontext.h>
#include <linux/fcntl.h>
#include <linux/futex.h>
#include <linux/mman.h>
#include <linux/prctl.h>
#include <linux/sched.h>
#include <linux/shm.h>
#include <linux/time.h>
#include <linux/ioctl.h>
#include <linux/userfaultfd.h>

#include "ibdbg/proto.h"
#include "ibdbg/restorer_layout.h"

/* ---- system calls ---------------------------------------------------------- */
static long sys6(long n, long a, long b, long c, long d, long e, long f) {
  long ret;
  register long r10 __asm__("r10") = d;
  register long r8 __asm__("r8") = e;
  register long r9 __asm__("r9") = f;
  __asm__ volatile("syscall"
                   : "=a"(ret)
                   : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                   : "rcx", "r11", "memory");
  return ret;
}
#define S0(n) sys6(n, 0, 0, 0, 0, 0, 0)
#define S1(n, a) sys6(n, (long)(a), 0, 0, 0, 0, 0)
#define S2(n, a, b) sys6(n, (long)(a), (long)(b), 0, 0, 0, 0)
#define S3(n, a, b, c) sys6(n, (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define S4(n, a, b, c, d) sys6(n, (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)
#define S5(n, a, b, c, d, e) sys6(n, (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), 0)
#define S6(n, a, b, c, d, e, f) sys6(n, (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))

/* The compiler may emit calls to these even with -ffreestanding. */
void* memcpy(void* d, const void* s, size_t n) {
  char* dp = d;
  const char* sp = s;
  while (n--) *dp++ = *sp++;
  return d;
}
void* memset(void* d, int c, size_t n) {
  char* dp = d;
  while (n--) *dp++ = (char)c;
  return d;
}

static size_t slen(const char* s) {
  size_t n = 0;
  while (s[n]) n++;
  return n;
}

/* ---- state ------------------------------------------------------------------ */
static struct ibdbg_plan_hdr hdr;
static struct ibdbg_plan_vma* vmas;
static struct ibdbg_plan_thread* threads;
static volatile uint32_t parked;
static volatile uint32_t go;
static int status_fd = -1;

extern void park_and_sigreturn(uint64_t uc_addr, volatile uint32_t* go_flag);
extern char ibdbg_sigreturn_insn[];
extern long clone3_thread(struct clone_args* args, size_t size);

static void put(const char* s) {
  if (status_fd >= 0) S3(__NR_write, status_fd, s, slen(s));
}

static void put_hex(uint64_t v) {
  char b[19];
  b[0] = '0', b[1] = 'x';
  int i = 0;
  char tmp[16];
  do {
    tmp[i++] = "0123456789abcdef"[v & 15];
    v >>= 4;
  } while (v);
  int k = 2;
  while (i) b[k++] = tmp[--i];
  b[k] = 0;
  put(b);
}

static void put_dec(long v) {
  char b[24];
  int i = 0;
  if (v < 0) {
    put("-");
    v = -v;
  }
  char tmp[24];
  do {
    tmp[i++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  int k = 0;
  while (i) b[k++] = tmp[--i];
  b[k] = 0;
  put(b);
}

/* 'F', a one-line reason, NUL; then die. */
static void __attribute__((noreturn)) fail(const char* what, long err, uint64_t addr) {
  put("F");
  put(what);
  if (addr) {
    put(" at ");
    put_hex(addr);
  }
  if (err) {
    put(" (errno ");
    put_dec(-err);
    put(")");
  }
  S3(__NR_write, status_fd, "", 1);
  S1(__NR_exit_group, 127);
  __builtin_unreachable();
}

static void read_exact(int fd, void* buf, size_t len) {
  char* p = buf;
  while (len) {
    long r = S3(__NR_read, fd, p, len);
    if (r == -4 /* EINTR */) continue;
    if (r <= 0) fail("plan pipe closed early", r, 0);
    p += r;
    len -= (size_t)r;
  }
}

static void* scratch_alloc(size_t len) {
  static uint64_t next = IBDBG_RESTORER_SCRATCH;
  len = (len + 4095) & ~(size_t)4095;
  long r = S6(__NR_mmap, next, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (r < 0 && r > -4096) fail("scratch mmap failed", r, next);
  next += len + 4096;
  return (void*)r;
}

/* ---- our own address space ----------------------------------------------------- */
struct own_map {
  uint64_t start, end;
  int kind; /* 0 other, IBDBG_VMA_VDSO, IBDBG_VMA_VVAR, IBDBG_VMA_VVAR_VCLOCK, -1 vsyscall */
};
static struct own_map own[64];
static int nown;

static uint64_t parse_hex(const char** p) {
  uint64_t v = 0;
  for (;;) {
    char c = **p;
    if (c >= '0' && c <= '9') v = v * 16 + (uint64_t)(c - '0');
    else if (c >= 'a' && c <= 'f') v = v * 16 + (uint64_t)(c - 'a' + 10);
    else break;
    (*p)++;
  }
  return v;
}

static int streq(const char* a, const char* b) {
  while (*a && *a == *b) a++, b++;
  return *a == *b;
}

static void read_own_maps(void) {
  static char buf[65536];
  int fd = (int)S3(__NR_open, "/proc/self/maps", O_RDONLY, 0);
  if (fd < 0) fail("cannot open /proc/self/maps", fd, 0);
  size_t n = 0;
  for (;;) {
    long r = S3(__NR_read, fd, buf + n, sizeof buf - 1 - n);
    if (r <= 0) break;
    n += (size_t)r;
  }
  S1(__NR_close, fd);
  buf[n] = 0;
  nown = 0;
  for (const char* p = buf; *p && nown < 64;) {
    struct own_map m;
    m.start = parse_hex(&p);
    p++;
    m.end = parse_hex(&p);
    const char* eol = p;
    while (*eol && *eol != '\n') eol++;
    const char* name = eol;
    while (name > p && name[-1] != ' ') name--;
    char nm[32];
    size_t k = 0;
    while (name + k < eol && k < sizeof nm - 1) nm[k] = name[k], k++;
    nm[k] = 0;
    m.kind = 0;
    if (streq(nm, "[vdso]")) m.kind = IBDBG_VMA_VDSO;
    else if (streq(nm, "[vvar]")) m.kind = IBDBG_VMA_VVAR;
    else if (streq(nm, "[vvar_vclock]")) m.kind = IBDBG_VMA_VVAR_VCLOCK;
    else if (streq(nm, "[vsyscall]")) m.kind = -1;
    own[nown++] = m;
    p = *eol ? eol + 1 : eol;
  }
}

static int in_reserved(uint64_t a) { return a >= IBDBG_RESTORER_BASE && a < IBDBG_RESTORER_END; }

/* Everything the kernel gave us outside the reserved range goes, except the
 * vdso block (moved below) and vsyscall (fixed, harmless). */
static void clear_address_space(void) {
  read_own_maps();
  for (int i = 0; i < nown; i++) {
    if (own[i].kind != 0 || in_reserved(own[i].start)) continue;
    long r = S2(__NR_munmap, own[i].start, own[i].end - own[i].start);
    if (r < 0) fail("cannot unmap restorer region", r, own[i].start);
  }
}

/* The application (glibc) holds pointers into the vdso it saw at capture, so
 * the vdso block must reappear at the same place.  On the same kernel the
 * block has the same shape and moving ours there is exact. */
static uint64_t own_vdso_base;

/* Moves our vdso block (keeping its inner layout) so that it starts at base. */
static void move_own_vdso(uint64_t own_min, uint64_t base) {
  /* Two hops, so that the source and the target never overlap. */
  for (int hop = 0; hop < 2; hop++) {
    uint64_t to_base = hop == 0 ? IBDBG_RESTORER_VDSO_TMP : base;
    for (int j = 0; j < nown; j++) {
      if (own[j].kind <= 0) continue;
      uint64_t len = own[j].end - own[j].start;
      uint64_t to = to_base + (own[j].start - own_min);
      long r = S5(__NR_mremap, own[j].start, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to);
      if (r < 0 && r > -4096) fail("cannot move the vdso", r, to);
      own[j].start = to;
      own[j].end = to + len;
    }
    own_min = to_base;
  }
  for (int j = 0; j < nown; j++)
    if (own[j].kind == IBDBG_VMA_VDSO) own_vdso_base = own[j].start;
}

/* The application (glibc) holds pointers into the vdso it saw at capture, so
 * those addresses must work again.  On the same kernel the block has the same
 * shape and moving ours there is exact; on another one (vdso_patch) ours goes
 * nearby and the captured code, refilled at its place, jumps into it. */
static void place_vdso(void) {
  uint64_t own_min = ~0ull, span = 0;
  int own_n = 0;
  for (int i = 0; i < nown; i++)
    if (own[i].kind > 0) {
      own_n++;
      if (own[i].start < own_min) own_min = own[i].start;
    }
  for (int i = 0; i < nown; i++)
    if (own[i].kind > 0 && own[i].end - own_min > span) span = own[i].end - own_min;
  if (!own_n) {
    if (hdr.vdso_patch) fail("this kernel gave us no vdso", 0, 0);
    return;
  }
  if (hdr.vdso_patch) {
    uint64_t anchor = hdr.vdso_old, target = 0;
    for (int j = 0; j < 1024 && !target; j++) {
      uint64_t step = (uint64_t)(j / 2 + 1) << 21;
      uint64_t cand = (j & 1) ? ((anchor + step) & ~0x1fffffull) : ((anchor - span - step) & ~0x1fffffull);
      int clash = in_reserved(cand) || cand < 0x10000;
      for (uint32_t i = 0; i < hdr.nvmas && !clash; i++)
        if (cand < vmas[i].end && cand + span > vmas[i].start) clash = 1;
      if (!clash) target = cand;
    }
    if (!target) fail("no room for this kernel's vdso near the captured one", 0, 0);
    move_own_vdso(own_min, target);
    return;
  }
  uint64_t img_min = ~0ull;
  int img_n = 0;
  for (uint32_t i = 0; i < hdr.nvmas; i++) {
    uint32_t k = vmas[i].kind & 0xff;
    if (k == IBDBG_VMA_VDSO || k == IBDBG_VMA_VVAR || k == IBDBG_VMA_VVAR_VCLOCK) {
      img_n++;
      if (vmas[i].start < img_min) img_min = vmas[i].start;
    }
  }
  if (img_n == 0) return;
  int same = img_n == own_n;
  for (uint32_t i = 0; i < hdr.nvmas && same; i++) {
    uint32_t k = vmas[i].kind & 0xff;
    if (k != IBDBG_VMA_VDSO && k != IBDBG_VMA_VVAR && k != IBDBG_VMA_VVAR_VCLOCK) continue;
    int found = 0;
    for (int j = 0; j < nown; j++)
      if (own[j].kind == (int)k && own[j].end - own[j].start == vmas[i].end - vmas[i].start &&
          own[j].start - own_min == vmas[i].start - img_min)
        found = 1;
    if (!found) same = 0;
  }
  if (!same) fail("the vdso of this kernel differs from the captured one and the launcher did not prepare for it", 0, 0);
  move_own_vdso(own_min, img_min);
}

/* ---- another kernel's vdso ------------------------------------------------------- */
struct vdso_elf {
  uint64_t base, load;
  Elf64_Sym* syms;
  uint32_t nsyms;
  const char* strs;
};

static int vdso_open(uint64_t base, struct vdso_elf* e) {
  Elf64_Ehdr* eh = (Elf64_Ehdr*)base;
  if (eh->e_ident[0] != 0x7f || eh->e_ident[1] != 'E' || eh->e_ident[2] != 'L' || eh->e_ident[3] != 'F') return 0;
  e->base = base;
  e->load = 0;
  Elf64_Phdr* ph = (Elf64_Phdr*)(base + eh->e_phoff);
  for (int i = 0; i < eh->e_phnum; i++)
    if (ph[i].p_type == PT_LOAD) {
      e->load = ph[i].p_vaddr - ph[i].p_offset;
      break;
    }
  Elf64_Shdr* sh = (Elf64_Shdr*)(base + eh->e_shoff);
  e->syms = 0;
  for (int i = 0; i < eh->e_shnum; i++)
    if (sh[i].sh_type == SHT_DYNSYM && sh[i].sh_entsize) {
      e->syms = (Elf64_Sym*)(base + sh[i].sh_offset);
      e->nsyms = (uint32_t)(sh[i].sh_size / sh[i].sh_entsize);
      e->strs = (const char*)(base + sh[sh[i].sh_link].sh_offset);
    }
  return e->syms != 0;
}

/* Every function of the captured vdso jumps to its namesake in ours: the
 * application keeps calling the addresses glibc resolved at its start. */
static void patch_vdso(void) {
  uint64_t old_base = 0;
  for (uint32_t i = 0; i < hdr.nvmas; i++)
    if ((vmas[i].kind & 0xff) == IBDBG_VMA_ANON && vmas[i].start == hdr.vdso_old) old_base = vmas[i].start;
  if (!old_base || !own_vdso_base) fail("vdso to patch not found", 0, 0);
  struct vdso_elf o, n;
  if (!vdso_open(old_base, &o)) fail("the captured vdso is not readable as ELF", 0, old_base);
  if (!vdso_open(own_vdso_base, &n)) fail("this kernel's vdso is not readable as ELF", 0, own_vdso_base);
  for (uint32_t i = 0; i < o.nsyms; i++) {
    Elf64_Sym* os = &o.syms[i];
    if (!os->st_name || !os->st_shndx || ELF64_ST_TYPE(os->st_info) != STT_FUNC) continue;
    const char* name = o.strs + os->st_name;
    for (uint32_t j = 0; j < n.nsyms; j++) {
      Elf64_Sym* ns = &n.syms[j];
      if (!ns->st_name || !ns->st_shndx || !streq(name, n.strs + ns->st_name)) continue;
      uint64_t at = old_base + os->st_value - o.load;
      uint64_t to = own_vdso_base + ns->st_value - n.load;
      int64_t rel = (int64_t)(to - (at + 5));
      if (rel != (int32_t)rel) fail("this kernel's vdso is too far from the captured one", 0, at);
      unsigned char* p = (unsigned char*)at;
      p[0] = 0xe9;
      int32_t r32 = (int32_t)rel;
      memcpy(p + 1, &r32, 4);
      break;
    }
  }
}

/* A SysV attachment, or the part [offset, offset + len) of one that the
 * application had split: attached anywhere, then moved into place (the vma
 * keeps its page offset, so shmdt of the original address still finds it). */
static void map_sysv(struct ibdbg_plan_vma* v) {
  long id = (long)v->flags;
  long shmflg = (v->prot & PROT_WRITE) ? 0 : SHM_RDONLY;
  if (v->prot & PROT_EXEC) shmflg |= SHM_EXEC;
  struct shmid64_ds ds;
  long r = S3(__NR_shmctl, id, IPC_STAT, &ds);
  if (r < 0) fail("cannot find a SysV shared memory segment", r, v->start);
  uint64_t seg = (ds.shm_segsz + 4095) & ~4095ull, len = v->end - v->start;
  if (v->offset + len > seg) fail("a SysV shared memory segment is smaller than its attachment", 0, v->start);
  if (v->offset == 0 && len == seg) {
    r = S3(__NR_shmat, id, v->start, shmflg | SHM_REMAP);
    if (r < 0 && r > -4096) fail("cannot attach SysV shared memory", r, v->start);
  } else {
    long tmp = S3(__NR_shmat, id, 0, shmflg);
    if (tmp < 0 && tmp > -4096) fail("cannot attach SysV shared memory", tmp, v->start);
    r = S5(__NR_mremap, tmp + v->offset, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, v->start);
    if (r < 0 && r > -4096) fail("cannot place SysV shared memory", r, v->start);
    if (v->offset) S2(__NR_munmap, tmp, v->offset);
    if (v->offset + len < seg) S2(__NR_munmap, tmp + v->offset + len, seg - v->offset - len);
  }
  r = S3(__NR_mprotect, v->start, len, v->prot);
  if (r < 0) fail("cannot protect SysV shared memory", r, v->start);
  /* Removed while attached, as it was: it goes when the last process detaches. */
  if (v->kind & IBDBG_VMA_SHM_RMID) S3(__NR_shmctl, id, IPC_RMID, 0);
}

static void map_regions(void) {
  for (uint32_t i = 0; i < hdr.nvmas; i++) {
    struct ibdbg_plan_vma* v = &vmas[i];
    uint32_t k = v->kind & 0xff;
    if (k == IBDBG_VMA_VDSO || k == IBDBG_VMA_VVAR || k == IBDBG_VMA_VVAR_VCLOCK) continue;
    if (in_reserved(v->start) || in_reserved(v->end - 1)) fail("image region overlaps the restorer", 0, v->start);
    if (k == IBDBG_VMA_SYSV) {
      map_sysv(v);
      continue;
    }
    long prot = (v->kind & IBDBG_VMA_FILL) ? (PROT_READ | PROT_WRITE) : v->prot;
    long flags = MAP_FIXED | (long)v->flags;
    if (v->kind & IBDBG_VMA_GROWSDOWN) flags |= MAP_GROWSDOWN;
    long fd = -1, off = 0;
    if (k == IBDBG_VMA_FILE) {
      fd = v->fd;
      off = (long)v->offset;
    } else {
      flags |= MAP_ANONYMOUS | MAP_NORESERVE;
    }
    long r = S6(__NR_mmap, v->start, v->end - v->start, prot, flags, fd, off);
    if (r < 0 && r > -4096) fail("cannot map region", r, v->start);
  }
}

/* Lazy replay: the launcher's page server answers faults in the LAZY regions
 * from the image and fills them in the background.  Faults of system calls
 * wait for it too (no UFFD_USER_MODE_ONLY), and fork, mremap, munmap and
 * madvise reach it as events.  Eager replay: the launcher fills the LAZY
 * regions with UFFDIO_COPY, which needs no zeroed page first. */
static void make_userfaultfd(void) {
  if (hdr.lazy_uffd_fd <= 0) return;
  int fill = hdr.uffd_fill_only != 0;
  /* Filling only: the launcher copies every page before anything runs, so
   * faults from user mode are all there could be (and there are none). */
  long fd = S1(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK | (fill ? UFFD_USER_MODE_ONLY : 0));
  if (fd < 0 && fill) return; /* the launcher writes the pages itself then */
  if (fd < 0) fail("userfaultfd refused (lazy replay needs root)", fd, 0);
  struct uffdio_api api;
  memset(&api, 0, sizeof api);
  api.api = UFFD_API;
  if (!fill)
    api.features = UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP;
  long r = S3(__NR_ioctl, fd, UFFDIO_API, &api);
  if (r < 0 && fill) {
    S1(__NR_close, fd);
    return;
  }
  if (r < 0) fail("userfaultfd refused the events lazy replay needs (fork, mremap, munmap, madvise)", r, 0);
  for (uint32_t i = 0; i < hdr.nvmas; i++) {
    struct ibdbg_plan_vma* v = &vmas[i];
    if (!(v->kind & IBDBG_VMA_LAZY)) continue;
    struct uffdio_register reg;
    memset(&reg, 0, sizeof reg);
    reg.range.start = v->start;
    reg.range.len = v->end - v->start;
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    r = S3(__NR_ioctl, fd, UFFDIO_REGISTER, &reg);
    if (r < 0 && fill) {
      S1(__NR_close, fd); /* every registration goes with it */
      return;
    }
    if (r < 0) fail("cannot register a region with userfaultfd", r, v->start);
  }
  r = S3(__NR_dup3, fd, hdr.lazy_uffd_fd, O_CLOEXEC);
  if (r < 0) fail("cannot place the userfaultfd", r, 0);
  S1(__NR_close, fd);
}

static void protect_regions(void) {
  for (uint32_t i = 0; i < hdr.nvmas; i++) {
    struct ibdbg_plan_vma* v = &vmas[i];
    if (!(v->kind & IBDBG_VMA_FILL) || v->prot == (PROT_READ | PROT_WRITE)) continue;
    long r = S3(__NR_mprotect, v->start, v->end - v->start, v->prot);
    if (r < 0) fail("cannot protect region", r, v->start);
  }
}

/* ---- process-wide state ------------------------------------------------------------ */
struct k_sigaction {
  uint64_t handler, flags, restorer, mask;
};

static void restore_process_state(void) {
  struct ibdbg_process_info* p = &hdr.proc;
  struct prctl_mm_map m;
  memset(&m, 0, sizeof m);
  m.start_code = p->start_code;
  m.end_code = p->end_code;
  m.start_data = p->start_data;
  m.end_data = p->end_data;
  m.start_brk = p->start_brk;
  m.brk = p->brk;
  m.start_stack = p->start_stack;
  m.arg_start = p->arg_start;
  m.arg_end = p->arg_end;
  m.env_start = p->env_start;
  m.env_end = p->env_end;
  m.auxv = (__u64*)p->auxv;
  m.auxv_size = p->auxv_words * 8;
  m.exe_fd = hdr.exe_fd >= 0 ? (uint32_t)hdr.exe_fd : (uint32_t)-1;
  long r = S5(__NR_prctl, PR_SET_MM, PR_SET_MM_MAP, &m, sizeof m, 0);
  if (r < 0 && m.exe_fd != (uint32_t)-1) {
    /* Without the capability /proc/self/exe stays ours; the rest still works. */
    m.exe_fd = (uint32_t)-1;
    r = S5(__NR_prctl, PR_SET_MM, PR_SET_MM_MAP, &m, sizeof m, 0);
  }
  if (r < 0) fail("prctl(PR_SET_MM_MAP) refused the captured memory layout", r, 0);

  for (int sig = 1; sig <= IBDBG_NSIG; sig++) {
    if (sig == 9 || sig == 19) continue;
    struct k_sigaction ka;
    memcpy(&ka, &hdr.sig.act[sig - 1], sizeof ka);
    S4(__NR_rt_sigaction, sig, &ka, 0, 8);
  }
  for (int w = 0; w < 3; w++) {
    struct {
      long isec, iusec, vsec, vusec;
    } it = {hdr.sig.itimer[w].interval_sec, hdr.sig.itimer[w].interval_usec, hdr.sig.itimer[w].value_sec,
            hdr.sig.itimer[w].value_usec};
    if (it.vsec || it.vusec) S3(__NR_setitimer, w, &it, 0);
  }
  if (hdr.restart_info_addr) memcpy((void*)hdr.restart_info_addr, &hdr.restart_info, sizeof hdr.restart_info);
}

static void drop_caps(void) {
  if (S0(__NR_getuid) == 0) return; /* a root job stays root */
  struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct d[2];
  memset(d, 0, sizeof d);
  S2(__NR_capset, &h, d);
}

/* ---- FPU state of another CPU ---------------------------------------------------------- */
static uint64_t cpu_xfeatures(void) {
  uint32_t a = 1, b, c, d;
  __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "=c"(c), "=d"(d));
  if (!(c & (1u << 27))) return 0; /* no OSXSAVE: no extended state at all */
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return ((uint64_t)hi << 32) | lo;
}

/* rt_sigreturn refuses a frame whose extended state names features this CPU
 * does not have.  Then (only then: it drops AVX and wider registers) the frame
 * is made a legacy one, whose x87/SSE part every x86-64 restores. */
static void fit_fpstate(uint64_t uc_addr, uint64_t have) {
  /* ucontext: uc_flags, uc_link, uc_stack (24 bytes), then the sigcontext. */
  struct sigcontext_64* sc = (struct sigcontext_64*)(uc_addr + 8 + 8 + 24);
  if (!sc->fpstate) return;
  struct _fpx_sw_bytes* sw = (struct _fpx_sw_bytes*)((char*)(uintptr_t)sc->fpstate + 464);
  if (sw->magic1 != FP_XSTATE_MAGIC1) return;
  if (!hdr.fp_legacy && (sw->xfeatures & ~have) == 0) return;
  sw->magic1 = 0;
}

/* ---- threads ----------------------------------------------------------------------- */
static void thread_setup(struct ibdbg_plan_thread* t) {
  /* New threads got their TLS from clone; the initial thread has none yet. */
  S2(__NR_arch_prctl, 0x1002 /* ARCH_SET_FS */, t->fs_base);
  if (t->name[0]) S2(__NR_prctl, PR_SET_NAME, t->name);
  if (t->clear_child_tid) S1(__NR_set_tid_address, t->clear_child_tid);
  if (t->rseq_len) S4(__NR_rseq, t->rseq_addr, t->rseq_len, 0, t->rseq_sig);
  if (t->altstack_sp && !(t->altstack_flags & 2 /* SS_DISABLE */)) {
    struct {
      uint64_t sp;
      int flags;
      uint64_t size;
    } ss = {t->altstack_sp, t->altstack_flags, t->altstack_size};
    S2(__NR_sigaltstack, &ss, 0);
  }
  drop_caps();
}

static void __attribute__((used)) thread_main(struct ibdbg_plan_thread* t) {
  thread_setup(t);
  __atomic_fetch_add(&parked, 1, __ATOMIC_SEQ_CST);
  S3(__NR_futex, &parked, FUTEX_WAKE_PRIVATE, 1);
  park_and_sigreturn(t->uc_addr, &go);
}

static void create_threads(void) {
  uint32_t others = 0;
  for (uint32_t i = 0; i < hdr.nthreads; i++)
    if (!(threads[i].flags & IBDBG_THREAD_MAIN)) others++;
  if (!others) return;
  const uint64_t stack = 64 * 1024;
  char* stacks = scratch_alloc(stack * others);
  uint32_t k = 0;
  for (uint32_t i = 0; i < hdr.nthreads; i++) {
    struct ibdbg_plan_thread* t = &threads[i];
    if (t->flags & IBDBG_THREAD_MAIN) continue;
    uint64_t top = (uint64_t)(stacks + stack * (k + 1));
    uint64_t* slot = (uint64_t*)(top - 16);
    slot[0] = (uint64_t)thread_main;
    slot[1] = (uint64_t)t;
    int64_t tid = t->tid;
    struct clone_args ca;
    memset(&ca, 0, sizeof ca);
    ca.flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM | CLONE_SETTLS;
    ca.stack = (uint64_t)(stacks + stack * k);
    ca.stack_size = (top - 16) - ca.stack;
    ca.tls = t->fs_base;
    ca.set_tid = (uint64_t)&tid;
    ca.set_tid_size = 1;
    long r = clone3_thread(&ca, sizeof ca);
    if (r < 0) fail("cannot recreate a thread with its tid (clone3 set_tid)", r, (uint64_t)t->tid);
    k++;
  }
  while (parked < others) {
    uint32_t p = parked;
    if (p < others) S4(__NR_futex, &parked, FUTEX_WAIT_PRIVATE, p, 0);
  }
}

static long parse_dec(const char* s) {
  long v = 0;
  while (*s >= '0' && *s <= '9') v = v * 10 + (*s++ - '0');
  return v;
}

void __attribute__((used, noreturn)) restorer_main(uint64_t* sp) {
  long argc = (long)sp[0];
  char** argv = (char**)(sp + 1);
  if (argc < 2) S1(__NR_exit_group, 126);
  int plan_fd = (int)parse_dec(argv[1]);

  uint64_t all = ~0ull;
  S4(__NR_rt_sigprocmask, 2 /* SIG_SETMASK */, &all, 0, 8);

  read_exact(plan_fd, &hdr, sizeof hdr);
  status_fd = hdr.status_fd;
  if (hdr.magic != IBDBG_PLAN_MAGIC) fail("bad plan from the launcher", 0, 0);
  if (hdr.nvmas > 1u << 20 || hdr.nthreads > IBDBG_MAX_THREADS || hdr.nthreads == 0)
    fail("implausible plan from the launcher", 0, 0);
  vmas = scratch_alloc(sizeof(*vmas) * hdr.nvmas);
  threads = scratch_alloc(sizeof(*threads) * hdr.nthreads);
  read_exact(plan_fd, vmas, sizeof(*vmas) * hdr.nvmas);
  read_exact(plan_fd, threads, sizeof(*threads) * hdr.nthreads);
  if (hdr.ncloexec > 1u << 20) fail("implausible plan from the launcher", 0, 0);
  if (hdr.ncloexec) {
    int32_t* fds = scratch_alloc(sizeof(int32_t) * hdr.ncloexec);
    read_exact(plan_fd, fds, sizeof(int32_t) * hdr.ncloexec);
    for (uint32_t i = 0; i < hdr.ncloexec; i++) S3(__NR_fcntl, fds[i], F_SETFD, FD_CLOEXEC);
  }

  clear_address_space();
  place_vdso();
  map_regions();
  make_userfaultfd();
  put("M");
  char c = 0;
  read_exact(plan_fd, &c, 1);
  if (c != IBDBG_RST_FILLED) fail("launcher did not fill memory", 0, 0);
  /* The page server holds the userfaultfd now.  Ours would keep it alive
   * after the server closes its own (all pages present): faults would then
   * wait for nobody instead of becoming plain zero fill. */
  if (hdr.lazy_uffd_fd > 0) S1(__NR_close, hdr.lazy_uffd_fd);
  if (hdr.vdso_patch) patch_vdso();
  protect_regions();
  restore_process_state();
  uint64_t have = cpu_xfeatures();
  for (uint32_t i = 0; i < hdr.nthreads; i++) fit_fpstate(threads[i].uc_addr, have);
  create_threads();

  struct ibdbg_plan_thread* main_t = 0;
  for (uint32_t i = 0; i < hdr.nthreads; i++)
    if (threads[i].flags & IBDBG_THREAD_MAIN) main_t = &threads[i];

  /* Signals that were pending at capture, with their siginfo.  Every thread
   * still blocks everything, so they wait for the application's own masks. */
  for (uint32_t i = 0; i < hdr.sig.npending && i < IBDBG_MAX_PENDING; i++) {
    struct ibdbg_pending_signal* ps = &hdr.sig.pending[i];
    if (ps->signo <= 0 || ps->signo > 64) continue;
    long pid = S0(__NR_getpid);
    if (ps->tid) S4(__NR_rt_tgsigqueueinfo, pid, ps->tid, ps->signo, ps->siginfo);
    else S3(__NR_rt_sigqueueinfo, pid, ps->signo, ps->siginfo);
  }

  /* 'P' and the address gdb needs to step each thread over rt_sigreturn. */
  char msg[9];
  msg[0] = IBDBG_RST_PARKED;
  uint64_t insn = (uint64_t)ibdbg_sigreturn_insn;
  memcpy(msg + 1, &insn, 8);
  S3(__NR_write, status_fd, msg, 9);
  int gdb = hdr.gdb_mode;
  S3(__NR_close_range, hdr.close_from, ~0u, 0);
  status_fd = -1;
  if (!gdb) {
    go = 1;
    S3(__NR_futex, &go, FUTEX_WAKE_PRIVATE, 0x7fffffff);
  }
  if (main_t) {
    thread_setup(main_t);
    park_and_sigreturn(main_t->uc_addr, &go);
  }
  drop_caps();
  /* The captured main thread had exited; the others run on without it. */
  for (;;) S1(__NR_exit, 0);
}

/* Entry, thread start and the final jump, in assembly: no stack may be
 * trusted at these points. */
__asm__(
    ".text\n"
    ".globl _start\n"
    "_start:\n"
    "  mov %rsp, %rdi\n"
    "  lea restorer_stack_top(%rip), %rsp\n"
    "  and $-16, %rsp\n"
    "  call restorer_main\n"
    "  hlt\n"

    /* long clone3_thread(struct clone_args*, size_t): the child starts on a
     * stack whose top holds {fn, arg}. */
    ".globl clone3_thread\n"
    "clone3_thread:\n"
    "  mov $435, %eax\n"
    "  syscall\n"
    "  test %rax, %rax\n"
    "  jnz 1f\n"
    "  pop %rax\n"
    "  pop %rdi\n"
    "  and $-16, %rsp\n"
    "  call *%rax\n"
    "  ud2\n"
    "1: ret\n"

    /* park_and_sigreturn(uc_addr, go): wait until *go, then rt_sigreturn with
     * rsp at the ucontext.  r15 keeps uc_addr for gdb's stepping. */
    ".globl park_and_sigreturn\n"
    "park_and_sigreturn:\n"
    "  mov %rdi, %r15\n"
    "  mov %rsi, %r14\n"
    "2: mov (%r14), %eax\n"
    "  test %eax, %eax\n"
    "  jnz 3f\n"
    "  mov %r14, %rdi\n"
    "  mov $128, %esi\n" /* FUTEX_WAIT_PRIVATE */
    "  xor %edx, %edx\n"
    "  xor %r10d, %r10d\n"
    "  mov $202, %eax\n"
    "  syscall\n"
    "  jmp 2b\n"
    "3: mov %r15, %rsp\n"
    "  mov $15, %eax\n"
    ".globl ibdbg_sigreturn_insn\n"
    "ibdbg_sigreturn_insn:\n"
    "  syscall\n"
    "  ud2\n");

static char restorer_stack[256 * 1024] __attribute__((aligned(64), used));
__asm__(".globl restorer_stack_top\n.set restorer_stack_top, restorer_stack + 256*1024\n");
