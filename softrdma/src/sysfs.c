/* softrdma's sysfs: the kernel files a verbs device has, for programs that
 * read them directly instead of asking libibverbs (UCX, Open MPI's openib).
 *
 * softrdma has no kernel side, so /sys/class/infiniband, infiniband_verbs and
 * /dev/infiniband/uverbs-softrdma0 do not exist.  This small library, preloaded
 * next to softrdma's libibverbs.so.1 (it cannot live in that library, which
 * must export exactly libibverbs' symbols), generates those entries as an
 * ordinary tree of files under a private directory, unprivileged, and
 * redirects the path-taking calls (open, stat, access, opendir, realpath,
 * readlink ...) of absolute paths inside them onto that tree.  Everything
 * else passes through untouched.  The device file is a symbolic link to
 * /dev/null: UCX only checks that it is a character device it may open read
 * and write; nothing ever sends it a command.
 *
 * The tree's content depends only on the personality, the address and the
 * interface owning it, so one directory per (user, content) is made once,
 * atomically (built under a temporary name, then renamed), and reused by every
 * process of the job: ${TMPDIR:-/tmp}/softrdma-sysfs.v1.UID.MODE.IP.IFNAME.
 * A directory of that name not owned by us, or not a directory, is never
 * used (another user cannot plant a tree).
 *
 * C, libc only, no constructor: nothing happens until a redirected path is
 * first used.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <limits.h>
#include <net/if.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* ------------------------------------------------------------ real calls -- */
static int (*real_open)(const char*, int, ...);
static int (*real_openat)(int, const char*, int, ...);
static FILE* (*real_fopen)(const char*, const char*);
static int (*real_stat)(const char*, struct stat*);
static int (*real_lstat)(const char*, struct stat*);
static int (*real_fstatat)(int, const char*, struct stat*, int);
static int (*real_statx)(int, const char*, int, unsigned, struct statx*);
static int (*real_xstat)(int, const char*, struct stat*);
static int (*real_lxstat)(int, const char*, struct stat*);
static int (*real_fxstatat)(int, int, const char*, struct stat*, int);
static int (*real_access)(const char*, int);
static int (*real_faccessat)(int, const char*, int, int);
static DIR* (*real_opendir)(const char*);
static char* (*real_realpath)(const char*, char*);
static ssize_t (*real_readlink)(const char*, char*, size_t);
static ssize_t (*real_readlinkat)(int, const char*, char*, size_t);

static pthread_once_t g_sym_once = PTHREAD_ONCE_INIT;
static void LoadSyms(void) {
  real_open = dlsym(RTLD_NEXT, "open");
  real_openat = dlsym(RTLD_NEXT, "openat");
  real_fopen = dlsym(RTLD_NEXT, "fopen");
  real_stat = dlsym(RTLD_NEXT, "stat");
  real_lstat = dlsym(RTLD_NEXT, "lstat");
  real_fstatat = dlsym(RTLD_NEXT, "fstatat");
  real_statx = dlsym(RTLD_NEXT, "statx");
  real_xstat = dlsym(RTLD_NEXT, "__xstat");
  real_lxstat = dlsym(RTLD_NEXT, "__lxstat");
  real_fxstatat = dlsym(RTLD_NEXT, "__fxstatat");
  real_access = dlsym(RTLD_NEXT, "access");
  real_faccessat = dlsym(RTLD_NEXT, "faccessat");
  real_opendir = dlsym(RTLD_NEXT, "opendir");
  real_realpath = dlsym(RTLD_NEXT, "realpath");
  real_readlink = dlsym(RTLD_NEXT, "readlink");
  real_readlinkat = dlsym(RTLD_NEXT, "readlinkat");
}
#define SYMS() pthread_once(&g_sym_once, LoadSyms)
/* A libc without one of them (say, no statx): the call fails as unsupported. */
#define CALL(fn, ...) (fn ? fn(__VA_ARGS__) : (errno = ENOSYS, -1))
#define CALLP(fn, ...) (fn ? fn(__VA_ARGS__) : (errno = ENOSYS, (void*)0))

/* The 64-bit variants share the plain ones' structures (LP64). */
_Static_assert(sizeof(struct stat) == sizeof(struct stat64), "struct stat64 differs from struct stat");

/* ------------------------------------------------------------ the tree ---- */
static pthread_once_t g_tree_once = PTHREAD_ONCE_INIT;
static char g_root[PATH_MAX]; /* empty: no tree (the calls pass through) */
static size_t g_root_len;

/* The same rules as the device (device.cc): SOFTRDMA_IP, else the first
 * non-loopback IPv4 address that is up, else 127.0.0.1; and its interface. */
static uint32_t HostIp(char* ifname, size_t ifsz) {
  const char* e = getenv("SOFTRDMA_IP");
  struct in_addr a;
  uint32_t want = 0;
  if (e && *e && inet_pton(AF_INET, e, &a) == 1) want = ntohl(a.s_addr);
  uint32_t ip = 0;
  snprintf(ifname, ifsz, "lo");
  struct ifaddrs* ifs = NULL;
  if (getifaddrs(&ifs) == 0) {
    for (struct ifaddrs* i = ifs; i; i = i->ifa_next) {
      if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
      uint32_t x = ntohl(((struct sockaddr_in*)i->ifa_addr)->sin_addr.s_addr);
      if (want ? x != want : (!(i->ifa_flags & IFF_UP) || (i->ifa_flags & IFF_LOOPBACK))) continue;
      ip = x;
      snprintf(ifname, ifsz, "%s", i->ifa_name);
      break;
    }
    freeifaddrs(ifs);
  }
  if (want) return want;
  return ip ? ip : 0x7f000001u;
}

static int PutFile(const char* base, const char* rel, const char* fmt, ...) {
  char path[PATH_MAX], v[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(v, sizeof v, fmt, ap);
  va_end(ap);
  snprintf(path, sizeof path, "%s/%s", base, rel);
  /* parents */
  for (char* s = path + strlen(base) + 1; (s = strchr(s, '/')); s++) {
    *s = 0;
    if (mkdir(path, 0755) != 0 && errno != EEXIST) return -1;
    *s = '/';
  }
  int fd = real_open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
  if (fd < 0) return -1;
  size_t n = strlen(v);
  v[n++] = '\n';
  ssize_t w = write(fd, v, n);
  close(fd);
  return w == (ssize_t)n ? 0 : -1;
}

static int Populate(const char* t, int ib, uint32_t ip, const char* ifname) {
  char guid[32], gid0[64];
  unsigned char g[8] = {0x02, 0x53, 0x52, (unsigned char)(ib ? 1 : 2), (unsigned char)(ip >> 24),
                        (unsigned char)(ip >> 16), (unsigned char)(ip >> 8), (unsigned char)ip};
  snprintf(guid, sizeof guid, "%02x%02x:%02x%02x:%02x%02x:%02x%02x", g[0], g[1], g[2], g[3], g[4], g[5], g[6],
           g[7]);
  snprintf(gid0, sizeof gid0, "fe80:0000:0000:0000:%s", guid);
  /* LID as device.cc: the low 16 bits of the address (SOFTRDMA_LID_TABLE
   * is not consulted: nothing reads the LID from here but humans) */
  unsigned lid = ip & 0xffff;
  if (lid == 0 || lid >= 0xC000) lid = (ip & 0x3fff) | 1;
  const char* d = "sys/class/infiniband/softrdma0";
  char p[PATH_MAX + 64];
  int r = 0;
#define F(rel, ...) (snprintf(p, sizeof p, "%s/%s", d, rel), r |= PutFile(t, p, __VA_ARGS__))
  F("node_type", "1: CA");
  F("node_guid", "%s", guid);
  F("sys_image_guid", "%s", guid);
  F("node_desc", "ibdbg softrdma");
  F("fw_ver", "softrdma 0.1");
  F("hw_rev", "1");
  F("hca_type", "softrdma");
  F("board_id", "IBDBG_SOFTRDMA");
  F("ports/1/state", "4: ACTIVE");
  F("ports/1/phys_state", "5: LinkUp");
  F("ports/1/link_layer", ib ? "InfiniBand" : "Ethernet");
  F("ports/1/lid", "0x%x", ib ? lid : 0);
  F("ports/1/sm_lid", "0x0");
  F("ports/1/lid_mask_count", "0");
  F("ports/1/rate", "2.5 Gb/sec (1X SDR)");
  F("ports/1/pkeys/0", "0xffff");
  F("ports/1/gids/0", "%s", gid0);
  F("ports/1/gid_attrs/types/0", ib ? "IB/RoCE v1" : "RoCE v2");
  if (!ib) {
    F("ports/1/gids/1", "0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x", ip >> 24, (ip >> 16) & 0xff,
      (ip >> 8) & 0xff, ip & 0xff);
    F("ports/1/gid_attrs/types/1", "RoCE v2");
    F("ports/1/gid_attrs/ndevs/0", "%s", ifname);
    F("ports/1/gid_attrs/ndevs/1", "%s", ifname);
  }
#undef F
  r |= PutFile(t, "sys/class/infiniband_verbs/abi_version", "6");
  r |= PutFile(t, "sys/class/infiniband_verbs/uverbs-softrdma0/ibdev", "softrdma0");
  r |= PutFile(t, "sys/class/infiniband_verbs/uverbs-softrdma0/abi_version", "1");
  char dev[PATH_MAX + 64];
  snprintf(dev, sizeof dev, "%s/dev/infiniband", t);
  snprintf(p, sizeof p, "%s/dev", t);
  if (mkdir(p, 0755) != 0 || mkdir(dev, 0755) != 0) return -1;
  strncat(dev, "/uverbs-softrdma0", sizeof dev - strlen(dev) - 1);
  if (symlink("/dev/null", dev) != 0) return -1;
  return r;
}

static void RemoveTree(const char* path) {
  struct stat st;
  if (real_lstat(path, &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    DIR* d = real_opendir(path);
    if (d) {
      struct dirent* e;
      while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char sub[PATH_MAX];
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        RemoveTree(sub);
      }
      closedir(d);
    }
    rmdir(path);
  } else {
    unlink(path);
  }
}

static int Usable(const char* path) {
  struct stat st;
  return real_lstat(path, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == geteuid() &&
         !(st.st_mode & (S_IWGRP | S_IWOTH));
}

/* Without a tree the paths stay as they are (absent); say why when asked. */
static void NoTree(const char* what, const char* path) {
  const char* d = getenv("SOFTRDMA_DEBUG");
  if (d && *d && *d != '0') fprintf(stderr, "softrdma-sysfs: no tree: %s %s: %s\n", what, path, strerror(errno));
}

static void MakeTree(void) {
  SYMS();
  const char* m = getenv("SOFTRDMA_MODE");
  int ib = m && !strcmp(m, "ib");
  char ifname[IF_NAMESIZE + 1];
  uint32_t ip = HostIp(ifname, sizeof ifname);
  const char* tmp = getenv("TMPDIR");
  if (!tmp || tmp[0] != '/') tmp = "/tmp";
  char final[PATH_MAX], work[PATH_MAX];
  snprintf(final, sizeof final, "%s/softrdma-sysfs.v1.%u.%s.%u.%u.%u.%u.%s", tmp, (unsigned)geteuid(),
           ib ? "ib" : "roce", ip >> 24, (ip >> 16) & 0xff, (ip >> 8) & 0xff, ip & 0xff, ifname);
  if (!Usable(final)) {
    snprintf(work, sizeof work, "%s/softrdma-sysfs.tmp.XXXXXX", tmp);
    if (!mkdtemp(work)) {
      NoTree("cannot make", work);
      return;
    }
    if (Populate(work, ib, ip, ifname) != 0 || chmod(work, 0755) != 0 ||
        (rename(work, final) != 0 && errno != EEXIST && errno != ENOTEMPTY)) {
      NoTree("cannot make", final);
      RemoveTree(work);
      return;
    }
    RemoveTree(work); /* another process made it first: its copy is the same */
    if (!Usable(final)) {
      errno = EPERM;
      NoTree("not ours, or writable by others:", final);
      return;
    }
  }
  snprintf(g_root, sizeof g_root, "%s", final);
  g_root_len = strlen(g_root);
}

/* ------------------------------------------------------------ mapping ----- */
static int Under(const char* path, const char* prefix) {
  size_t n = strlen(prefix);
  return !strncmp(path, prefix, n) && (path[n] == 0 || path[n] == '/');
}

static int Ours(const char* path) {
  if (!path || path[0] != '/') return 0;
  return Under(path, "/sys/class/infiniband") || Under(path, "/sys/class/infiniband_verbs") ||
         Under(path, "/dev/infiniband/uverbs-softrdma0");
}

/* The path to use: the tree's copy of one of ours, else the path itself. */
static const char* Map(const char* path, char* buf) {
  SYMS();
  if (!Ours(path)) return path;
  pthread_once(&g_tree_once, MakeTree);
  if (!g_root_len) return path;
  if (snprintf(buf, PATH_MAX, "%s%s", g_root, path) >= PATH_MAX) return path;
  return buf;
}

/* A resolved path inside the tree is shown as the path it stands for. */
static char* Unmap(char* resolved) {
  if (resolved && g_root_len && !strncmp(resolved, g_root, g_root_len) && resolved[g_root_len] == '/')
    memmove(resolved, resolved + g_root_len, strlen(resolved + g_root_len) + 1);
  return resolved;
}

static int WantsMode(int flags) {
#ifdef O_TMPFILE
  if ((flags & O_TMPFILE) == O_TMPFILE) return 1;
#endif
  return (flags & O_CREAT) != 0;
}

/* ------------------------------------------------------------ interposers - */
#define OPEN_BODY(call_path)                  \
  mode_t mode = 0;                            \
  if (WantsMode(flags)) {                     \
    va_list ap;                               \
    va_start(ap, flags);                      \
    mode = va_arg(ap, mode_t);                \
    va_end(ap);                               \
  }                                           \
  char buf[PATH_MAX];                         \
  const char* p = Map(call_path, buf);

EXPORT int open(const char* path, int flags, ...) {
  OPEN_BODY(path)
  return CALL(real_open, p, flags, mode);
}
EXPORT int open64(const char* path, int flags, ...) {
  OPEN_BODY(path)
  return CALL(real_open, p, flags | O_LARGEFILE, mode);
}
EXPORT int openat(int dfd, const char* path, int flags, ...) {
  OPEN_BODY(path)
  return CALL(real_openat, dfd, p, flags, mode);
}
EXPORT int openat64(int dfd, const char* path, int flags, ...) {
  OPEN_BODY(path)
  return CALL(real_openat, dfd, p, flags | O_LARGEFILE, mode);
}
/* _FORTIFY_SOURCE versions (no mode argument) */
EXPORT int __open_2(const char* path, int flags) { return open(path, flags); }
EXPORT int __open64_2(const char* path, int flags) { return open64(path, flags); }
EXPORT int __openat_2(int dfd, const char* path, int flags) { return openat(dfd, path, flags); }
EXPORT int __openat64_2(int dfd, const char* path, int flags) { return openat64(dfd, path, flags); }

EXPORT FILE* fopen(const char* path, const char* m) {
  char buf[PATH_MAX];
  const char* p = Map(path, buf);
  return CALLP(real_fopen, p, m);
}
EXPORT FILE* fopen64(const char* path, const char* m) { return fopen(path, m); }

EXPORT int stat(const char* path, struct stat* st) {
  char buf[PATH_MAX];
  const char* p = Map(path, buf);
  return CALL(real_stat, p, st);
}
EXPORT int stat64(const char* path, struct stat64* st) { return stat(path, (struct stat*)st); }
EXPORT int lstat(const char* path, struct stat* st) {
  char buf[PATH_MAX];
  const char* p = Map(path, buf);
  return CALL(real_lstat, p, st);
}
EXPORT int lstat64(const char* path, struct stat64* st) { return lstat(path, (struct stat*)st); }
EXPORT int fstatat(int dfd, const char* path, struct stat* st, int flags) {
  char buf[PATH_MAX];
  const char* p = Map(path, buf);
  return CALL(real_fstatat, dfd, p, st, flags);
}
EXPORT int fstatat64(int dfd, const char* path, struct stat64* st, int flags) {
  return fstatat(dfd, path, (struct stat*)st, flags);
}
EXPORT int statx(int dfd, const char* path, int flags, unsigned mask, struct statx* st) {
  char buf[PATH_MAX];
  const char* p = Map(path, buf);
  return CALL(real_statx, dfd, p, flags, mask, st);
}
/* Programs built against glibc before 2.33 call these instead of stat(). */
EXPORT int __xstat(int ver, const char* path, struct stat* st) {
  char buf[PATH_MAX];
  const char* p = Map(path, buf);
  return CALL(real_xstat, ver, p, st);
}
EXPORT int __xstat64(int ver, const char* path, struct stat64* st) { return __xstat(ver, path, (struct stat*)st); }
EXPORT int __lxstat(int ver, const char* path, struct stat* st) {
  char buf[PATH_MAX];
  const char* p = Map(path, buf);
  return CALL(real_lxstat, ver, p, st);
}
EXPORT int __lxstat64(int ver, const char* path, struct stat64* st) {
  return __lxstat(ver, path, (struct stat*)st);
}
EXPORT int __fxstatat(int ver, int dfd, const char* path, struct stat* st, int flags) {
  char buf[PATH_MAX];
  const char* p = Map(path, buf);
  return CALL(real_fxstatat, ver, dfd, p, st, flags);
}
EXPORT int __fxstatat64(int ver, int dfd, const char* path, struct stat64* st, int flags) {
  return __fxstatat(ver, dfd, path, (struct stat*)st, flags);
}

EXPORT int access(const char* path, int m) {
  char buf[PATH_MAX];
  const char* p = Map(path, buf);
  return CALL(real_access, p, m);
}
EXPORT int faccessat(int dfd, const char* path, int m, int flags) {
  char buf[PATH_MAX];
  const char* p = Map(path, buf);
  return CALL(real_faccessat, dfd, p, m, flags);
}

EXPORT DIR* opendir(const char* path) {
  char buf[PATH_MAX];
  const char* p = Map(path, buf);
  return CALLP(real_opendir, p);
}

EXPORT char* realpath(const char* path, char* resolved) {
  char buf[PATH_MAX];
  const char* p = Map(path, buf);
  return Unmap(CALLP(real_realpath, p, resolved));
}

EXPORT ssize_t readlink(const char* path, char* out, size_t n) {
  char buf[PATH_MAX];
  const char* p = Map(path, buf);
  return CALL(real_readlink, p, out, n);
}
EXPORT ssize_t readlinkat(int dfd, const char* path, char* out, size_t n) {
  char buf[PATH_MAX];
  const char* p = Map(path, buf);
  return CALL(real_readlinkat, dfd, p, out, n);
}
