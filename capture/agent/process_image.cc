#include "process_image.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/sockios.h>
#include <linux/unix_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/utsname.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <dirent.h>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "ibdbg/image_chain.h"
#include "ibdbg/image_file.h"
#include "ibdbg/written_pages.h"
#include "ibdbg/maps.h"
#include "ibdbg/pty.h"
#include "ibdbg/restorer_layout.h"
#include "ipc_objects.h"

namespace ibdbg::capture {
namespace {

constexpr uint64_t kPage = 4096;

[[noreturn]] void Fail(const std::string& what) { throw std::runtime_error(what); }
std::string Errno(const std::string& what) { return what + ": " + strerror(errno); }

struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

std::string ReadLink(const std::string& path) {
  char buf[IBDBG_PATH_MAX];
  ssize_t n = readlink(path.c_str(), buf, sizeof buf - 1);
  if (n < 0) return {};
  return std::string(buf, (size_t)n);
}

std::string ReadSmallFile(const std::string& path) {
  Fd f(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (f.fd < 0) return {};
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(f.fd, buf, sizeof buf)) > 0) out.append(buf, (size_t)n);
  return out;
}

bool AllZero(const uint8_t* p, size_t len) {
  const uint64_t* q = (const uint64_t*)p;
  for (size_t i = 0; i < len / 8; i++)
    if (q[i]) return false;
  return true;
}

uint32_t ImageKind(const MapEntry& m) {
  switch (m.kind) {
    case MapKind::Vdso: return IBDBG_IVMA_VDSO;
    case MapKind::Vvar: return IBDBG_IVMA_VVAR;
    case MapKind::VvarVclock: return IBDBG_IVMA_VVAR_VCLOCK;
    case MapKind::Heap: return IBDBG_IVMA_HEAP;
    case MapKind::Stack: return IBDBG_IVMA_STACK;
    case MapKind::Anon:
    case MapKind::OtherSpecial: return m.shared ? IBDBG_IVMA_SHARED_ANON : IBDBG_IVMA_ANON;
    case MapKind::File:
      if (m.shared && m.deleted && m.path.rfind("/SYSV", 0) == 0) return IBDBG_IVMA_SYSV_SHM;
      if (m.shared) return m.deleted || m.inode == 0 ? IBDBG_IVMA_SHARED_ANON : IBDBG_IVMA_FILE_SHARED;
      return m.deleted ? IBDBG_IVMA_FILE_DELETED : IBDBG_IVMA_FILE;
    default: return 0;
  }
}

// Not a kind of the image: a writable shared mapping of a regular file,
// whose pages are stored whole (the file may be missing or changed when the
// image is replayed) and written back into the file at replay.
constexpr uint32_t kFileSharedKept = 0x1000;

// Which pages of a region go into the image.
bool WantPage(uint32_t kind, uint64_t pm) {
  if (kind == kFileSharedKept) return true;
  bool present = pm >> 63 & 1, swapped = pm >> 62 & 1, filepage = pm >> 61 & 1;
  switch (kind) {
    case IBDBG_IVMA_FILE: return (present && !filepage) || swapped;  // copy-on-write copies only
    case IBDBG_IVMA_FILE_SHARED: return false;
    case IBDBG_IVMA_FILE_DELETED: return true;  // the file is gone: keep every page
    case IBDBG_IVMA_VDSO: return true;          // small, and needed whole on another kernel
    default: return present || swapped;
  }
}

// Regions replayed as anonymous memory start out zero: zero pages need no bytes.
bool ZeroIsFree(uint32_t kind) { return kind != IBDBG_IVMA_FILE && kind != kFileSharedKept; }

class MemoryWriter {
 public:
  MemoryWriter(pid_t pid, image::ImageWriter& w) : w_(w) {
    std::string base = "/proc/" + std::to_string(pid);
    mem_ = open((base + "/mem").c_str(), O_RDONLY | O_CLOEXEC);
    if (mem_ < 0) Fail(Errno("cannot read the memory of process " + std::to_string(pid)));
    pagemap_ = open((base + "/pagemap").c_str(), O_RDONLY | O_CLOEXEC);
    if (pagemap_ < 0) Fail(Errno("cannot read the page map of process " + std::to_string(pid)));
    buf_.resize(kChunk);
    pm_.resize(kPmBatch);
  }
  ~MemoryWriter() {
    close(mem_);
    close(pagemap_);
  }

  // Stores the wanted pages of [start, end); returns pages stored.
  uint64_t Write(uint64_t start, uint64_t end, uint32_t kind) {
    uint64_t stored = 0;
    run_start_ = run_len_ = 0;
    for (uint64_t a = start; a < end;) {
      uint64_t n = std::min<uint64_t>((end - a) / kPage, kPmBatch);
      ssize_t got = pread(pagemap_, pm_.data(), n * 8, (off_t)(a / kPage * 8));
      if (got != (ssize_t)(n * 8)) Fail(Errno("cannot read the page map"));
      for (uint64_t i = 0; i < n; i++) {
        uint64_t page = a + i * kPage;
        if (!WantPage(kind, pm_[i])) {
          Flush(kind, &stored);
          continue;
        }
        if (run_len_ == 0) run_start_ = page;
        run_len_ += kPage;
        if (run_len_ == kChunk) Flush(kind, &stored);
      }
      a += n * kPage;
    }
    Flush(kind, &stored);
    return stored;
  }

 private:
  static constexpr size_t kChunk = 1 << 20;
  static constexpr size_t kPmBatch = 65536;

  void Flush(uint32_t kind, uint64_t* stored) {
    if (!run_len_) return;
    ssize_t got = pread(mem_, buf_.data(), run_len_, (off_t)run_start_);
    if (got != (ssize_t)run_len_) {
      char msg[128];
      snprintf(msg, sizeof msg, "cannot read memory at 0x%llx (%llu bytes)", (unsigned long long)run_start_,
               (unsigned long long)run_len_);
      Fail(Errno(msg));
    }
    // Split around zero pages where zero costs nothing at replay.
    uint64_t s = 0;
    for (uint64_t off = 0; off <= run_len_; off += kPage) {
      bool cut = off == run_len_ || (ZeroIsFree(kind) && AllZero(buf_.data() + off, kPage));
      if (!cut) continue;
      if (off > s) {
        w_.AddPages(run_start_ + s, buf_.data() + s, off - s);
        *stored += (off - s) / kPage;
      }
      s = off + kPage;
    }
    run_len_ = 0;
  }

  image::ImageWriter& w_;
  int mem_ = -1, pagemap_ = -1;
  std::vector<uint8_t> buf_;
  std::vector<uint64_t> pm_;
  uint64_t run_start_ = 0, run_len_ = 0;
};

// fdinfo: "pos:\t123\nflags:\t0100002\n..."
void ParseFdInfo(const std::string& text, uint64_t* pos, int* flags) {
  size_t p = text.find("pos:");
  if (p != std::string::npos) *pos = strtoull(text.c_str() + p + 4, nullptr, 10);
  p = text.find("flags:");
  if (p != std::string::npos) *flags = (int)strtol(text.c_str() + p + 6, nullptr, 8);
}

int PidfdGetfd(pid_t pid, int fd) {
  int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (pidfd < 0) return -1;
  int r = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
  close(pidfd);
  return r;
}

// The inode of a unix socket's peer, from the kernel's socket diagnostics;
// with `shutdown`, also the socket's own shutdown bits (RCV 1, SEND 2).
uint64_t UnixPeerInode(uint64_t ino, uint8_t* shutdown = nullptr) {
  int nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (nl < 0) return 0;
  struct {
    nlmsghdr nlh;
    unix_diag_req r;
  } req{};
  req.nlh.nlmsg_len = sizeof req;
  req.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.nlh.nlmsg_flags = NLM_F_REQUEST;
  req.r.sdiag_family = AF_UNIX;
  req.r.udiag_states = ~0u;
  req.r.udiag_ino = (uint32_t)ino;
  req.r.udiag_show = UDIAG_SHOW_PEER;
  req.r.udiag_cookie[0] = req.r.udiag_cookie[1] = ~0u;
  uint64_t peer = 0;
  if (send(nl, &req, sizeof req, 0) == (ssize_t)sizeof req) {
    alignas(nlmsghdr) char buf[8192];
    ssize_t n = recv(nl, buf, sizeof buf, 0);
    for (nlmsghdr* h = (nlmsghdr*)buf; n > 0 && NLMSG_OK(h, (unsigned)n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY) break;
      unix_diag_msg* m = (unix_diag_msg*)NLMSG_DATA(h);
      int len = (int)(h->nlmsg_len - NLMSG_LENGTH(sizeof *m));
      for (rtattr* a = (rtattr*)(m + 1); RTA_OK(a, len); a = RTA_NEXT(a, len))
        if (a->rta_type == UNIX_DIAG_PEER) peer = *(uint32_t*)RTA_DATA(a);
        else if (a->rta_type == UNIX_DIAG_SHUTDOWN && shutdown) *shutdown = *(uint8_t*)RTA_DATA(a);
    }
  }
  close(nl);
  return peer;
}

// Every message queued on a message socket, oldest first, with its sender's
// address, as ibdbg_sock_msg records, without taking any: MSG_PEEK alone only
// ever shows the first, so a peek offset (SO_PEEK_OFF, which this socket
// shares with the process: put back afterwards) walks the queue.  On a
// socket shut for reading (or whose seqpacket peer is gone) an empty read is
// the end of the queue, not an empty message.
void PeekMessages(int s, int fd, std::string* data, bool rcv_shut, bool seqpacket) {
  int old_off = -1;
  socklen_t l = sizeof old_off;
  getsockopt(s, SOL_SOCKET, SO_PEEK_OFF, &old_off, &l);
  int zero = 0;
  bool walk = setsockopt(s, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof zero) == 0;
  // A refused capture leaves the job running: as it was.
  auto refuse = [&](const std::string& why) {
    if (walk) setsockopt(s, SOL_SOCKET, SO_PEEK_OFF, &old_off, sizeof old_off);
    close(s);
    Fail("fd " + std::to_string(fd) + ": " + why);
  };
  std::vector<char> buf(1 << 20);
  for (int count = 0;; count++) {
    iovec iov = {buf.data(), buf.size()};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 64)];
    sockaddr_storage from{};
    msghdr mh{};
    mh.msg_name = &from;
    mh.msg_namelen = sizeof from;
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control;
    mh.msg_controllen = sizeof control;
    ssize_t n = recvmsg(s, &mh, MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN && count < 16) continue;  // a pending error report (ICMP) goes first
    if (n < 0 || (n == 0 && rcv_shut)) break;
    bool passed_fds = false;
    for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        passed_fds = true;
        int* fds = (int*)CMSG_DATA(c);
        for (size_t k = 0; k < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); k++) close(fds[k]);
      }
    if (passed_fds || (mh.msg_flags & MSG_CTRUNC))
      refuse("descriptors are in flight on a unix socket (SCM_RIGHTS); ibdbg cannot carry them yet");
    if (mh.msg_flags & MSG_TRUNC) refuse("a queued message is larger than 1 MiB");
    ibdbg_sock_msg h{(uint32_t)n, mh.msg_namelen > sizeof(sa_family_t) ? (uint32_t)mh.msg_namelen : 0u};
    data->append((const char*)&h, sizeof h);
    data->append((const char*)&from, h.addr_len);
    data->append(buf.data(), (size_t)n);
    if (!walk) {
      // Without a peek offset only the first message can be seen: more would
      // be lost.  Only a seqpacket socket tells how much is queued in all.
      int queued = 0;
      if (!seqpacket || ioctl(s, SIOCINQ, &queued) != 0 || queued != n)
        refuse("messages are queued on a socket this kernel cannot peek past the first of (no SO_PEEK_OFF)");
      break;
    }
    if (count > (1 << 20)) refuse("endless message queue");
  }
  if (walk) setsockopt(s, SOL_SOCKET, SO_PEEK_OFF, &old_off, sizeof old_off);
}

uint32_t UnixShutOpts(uint8_t shut) {
  return ((shut & 1) ? IBDBG_SOCKOPT_SHUT_RD : 0) | ((shut & 2) ? IBDBG_SOCKOPT_SHUT_WR : 0);
}

bool IsUdp(int s, bool inet) {
  int proto = 0;
  socklen_t l = sizeof proto;
  return inet && getsockopt(s, SOL_SOCKET, SO_PROTOCOL, &proto, &l) == 0 && proto == IPPROTO_UDP;
}

// Whether this end of a TCP connection has sent its FIN (shutdown(SHUT_WR)
// or close of a shared copy), from the connection's state.
bool TcpSentFin(int s) {
  tcp_info ti{};
  socklen_t l = sizeof ti;
  if (getsockopt(s, IPPROTO_TCP, TCP_INFO, &ti, &l) != 0) return false;
  switch (ti.tcpi_state) {
    case TCP_FIN_WAIT1:
    case TCP_FIN_WAIT2:
    case TCP_CLOSING:
    case TCP_LAST_ACK:
    case TCP_TIME_WAIT: return true;
    default: return false;
  }
}

// A TCP socket that was connected and is closed now (both FINs, or a reset;
// as a replayed connection to a peer outside the job is): unlike a new one,
// reading it gives its last bytes or end of file, not ENOTCONN.
bool TcpEnded(int s) {
  tcp_info ti{};
  socklen_t l = sizeof ti;
  char c;
  return getsockopt(s, IPPROTO_TCP, TCP_INFO, &ti, &l) == 0 && ti.tcpi_state == TCP_CLOSE &&
         recv(s, &c, 1, MSG_PEEK | MSG_DONTWAIT) >= 0;
}

void DescribeSocket(pid_t pid, ibdbg_fd_info* fi, uint64_t ino, std::string* data) {
  fi->kind = IBDBG_FD_OTHER;
  fi->sock_id = ino;
  int s = PidfdGetfd(pid, fi->fd);
  if (s < 0) return;
  int v = 0;
  socklen_t l = sizeof v;
  if (getsockopt(s, SOL_SOCKET, SO_DOMAIN, &v, &l) == 0) fi->sock_family = v;
  l = sizeof v;
  if (getsockopt(s, SOL_SOCKET, SO_TYPE, &v, &l) == 0) fi->sock_type = v;
  int listening = 0;
  l = sizeof listening;
  getsockopt(s, SOL_SOCKET, SO_ACCEPTCONN, &listening, &l);
  socklen_t al = sizeof fi->sock_addr;
  if (getsockname(s, (sockaddr*)fi->sock_addr, &al) == 0) fi->sock_addr_len = al;
  socklen_t pl = sizeof fi->peer_addr;
  bool connected = getpeername(s, (sockaddr*)fi->peer_addr, &pl) == 0;
  if (connected) fi->peer_addr_len = pl;
  l = sizeof v;
  if (getsockopt(s, SOL_SOCKET, SO_KEEPALIVE, &v, &l) == 0 && v) fi->sock_opts |= IBDBG_SOCKOPT_KEEPALIVE;
  bool inet = fi->sock_family == AF_INET || fi->sock_family == AF_INET6;
  l = sizeof v;
  if (inet && getsockopt(s, IPPROTO_TCP, TCP_NODELAY, &v, &l) == 0 && v) fi->sock_opts |= IBDBG_SOCKOPT_NODELAY;
  l = sizeof v;
  if (fi->sock_family == AF_INET6 && getsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &v, &l) == 0 && v)
    fi->sock_opts |= IBDBG_SOCKOPT_V6ONLY;
  if (listening) {
    fi->kind = IBDBG_FD_SOCKET_LISTEN;
    fi->sock_backlog = 128;
  } else if (connected && fi->sock_family == AF_UNIX && fi->sock_type == SOCK_SEQPACKET) {
    fi->kind = IBDBG_FD_SOCKET_CONN;
    uint8_t shut = 0;
    fi->peer_id = UnixPeerInode(ino, &shut);
    fi->sock_opts |= UnixShutOpts(shut);
    PeekMessages(s, fi->fd, data, shut & 1, true);
  } else if (fi->sock_type == SOCK_DGRAM && (fi->sock_family == AF_UNIX || IsUdp(s, inet))) {
    fi->kind = IBDBG_FD_SOCKET_DGRAM;
    uint8_t shut = 0;
    if (fi->sock_family == AF_UNIX) fi->peer_id = UnixPeerInode(ino, &shut);
    fi->sock_opts |= UnixShutOpts(shut);
    l = sizeof v;
    if (getsockopt(s, SOL_SOCKET, SO_REUSEADDR, &v, &l) == 0 && v) fi->sock_opts |= IBDBG_SOCKOPT_REUSEADDR;
    l = sizeof v;
    if (getsockopt(s, SOL_SOCKET, SO_REUSEPORT, &v, &l) == 0 && v) fi->sock_opts |= IBDBG_SOCKOPT_REUSEPORT;
    l = sizeof v;
    if (getsockopt(s, SOL_SOCKET, SO_BROADCAST, &v, &l) == 0 && v) fi->sock_opts |= IBDBG_SOCKOPT_BROADCAST;
    PeekMessages(s, fi->fd, data, shut & 1, false);
  } else if (fi->sock_type == SOCK_STREAM && (inet || fi->sock_family == AF_UNIX) &&
             (connected || (inet && TcpEnded(s)))) {
    // (A TCP connection that has ended keeps what it had not read; without
    // a peer address it replays as a closed connection, as it is.)
    fi->kind = IBDBG_FD_SOCKET_CONN;
    uint8_t shut = 0;
    if (fi->sock_family == AF_UNIX) fi->peer_id = UnixPeerInode(ino, &shut);
    fi->sock_opts |= UnixShutOpts(shut);
    if (inet && TcpSentFin(s)) fi->sock_opts |= IBDBG_SOCKOPT_SHUT_WR;
    // Bytes that reached this end but were not read: peeked, not taken.
    int queued = 0;
    if (ioctl(s, SIOCINQ, &queued) == 0 && queued > 0) {
      data->resize((size_t)queued);
      iovec iov = {data->data(), data->size()};
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 64)];
      msghdr mh{};
      mh.msg_iov = &iov;
      mh.msg_iovlen = 1;
      mh.msg_control = control;
      mh.msg_controllen = sizeof control;
      ssize_t n = recvmsg(s, &mh, MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
      bool passed_fds = false;
      for (cmsghdr* c = CMSG_FIRSTHDR(&mh); n >= 0 && c; c = CMSG_NXTHDR(&mh, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
          passed_fds = true;
          int* fds = (int*)CMSG_DATA(c);
          for (size_t k = 0; k < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); k++) close(fds[k]);
        }
      // A unix stream stops a peek at a message carrying descriptors.
      if (passed_fds || (mh.msg_flags & MSG_CTRUNC) || (fi->sock_family == AF_UNIX && n >= 0 && n < queued)) {
        close(s);
        Fail("fd " + std::to_string(fi->fd) +
             ": descriptors are in flight on a unix socket (SCM_RIGHTS); ibdbg cannot carry them yet");
      }
      data->resize(n > 0 ? (size_t)n : 0);
    }
    // Bytes written but not yet at the peer would be lost: refuse rather.
    int unsent = 0;
    if (inet && ioctl(s, SIOCOUTQ, &unsent) == 0 && unsent > 0) {
      close(s);
      Fail("fd " + std::to_string(fi->fd) + ": a TCP connection has " + std::to_string(unsent) +
           " bytes not yet delivered to its peer; try the capture again");
    }
  }
  close(s);
}

}  // namespace

void ForEachTcpSocket(pid_t pid, const std::function<bool(int fd, int sock)>& fn) {
  std::string base = "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = opendir(base.c_str());
  if (!d) return;
  std::vector<int> socks;
  while (dirent* e = readdir(d))
    if (e->d_name[0] != '.' && ReadLink(base + "/" + e->d_name).rfind("socket:[", 0) == 0) socks.push_back(atoi(e->d_name));
  closedir(d);
  for (int fd : socks) {
    int s = PidfdGetfd(pid, fd);
    if (s < 0) continue;
    int dom = 0, type = 0;
    socklen_t l = sizeof dom;
    getsockopt(s, SOL_SOCKET, SO_DOMAIN, &dom, &l);
    l = sizeof type;
    getsockopt(s, SOL_SOCKET, SO_TYPE, &type, &l);
    bool go_on = !((dom == AF_INET || dom == AF_INET6) && type == SOCK_STREAM) || fn(fd, s);
    close(s);
    if (!go_on) break;
  }
}

std::string WaitTcpSent(pid_t pid, std::chrono::steady_clock::time_point until) {
  std::string err;
  ForEachTcpSocket(pid, [&](int fd, int s) {
    int unsent = 0;
    while (ioctl(s, SIOCOUTQ, &unsent) == 0 && unsent > 0) {
      if (std::chrono::steady_clock::now() > until) {
        err = "process " + std::to_string(pid) + " fd " + std::to_string(fd) + ": " + std::to_string(unsent) +
              " bytes of a TCP connection do not reach its peer (is the peer outside the job, and not reading?)";
        return false;
      }
      usleep(1000);
    }
    return true;
  });
  return err;
}

namespace {

// Everything a non-blocking pipe or FIFO holds now.
std::string ReadAvailable(int fd) {
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, (size_t)n);
  }
  return out;
}

std::string DrainPipe(pid_t pid, int fd) {
  std::string path = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd);
  // A fresh open of the pipe: non-blocking without touching the process's own
  // descriptor flags.
  Fd f(open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
  return f.fd < 0 ? std::string() : ReadAvailable(f.fd);
}

// A pty master of the job (mpirun holds one per rank): its pair's state and
// the bytes in flight both ways, taken out (a tty has no peek) and put back
// by RefillPipes when the job runs on.
void DescribePtyMaster(pid_t pid, ibdbg_fd_info* fi, std::string* data, std::vector<PipeRefill>* refills) {
  fi->kind = IBDBG_FD_PTY_MASTER;
  int m = PidfdGetfd(pid, fi->fd);
  if (m < 0) Fail(Errno("fd " + std::to_string(fi->fd) + ": cannot take a copy of a pseudo-terminal master"));
  ibdbg_pty_state st;
  std::string err, out, in;
  if (!pty::ReadState(m, &st, &err)) {
    close(m);
    Fail("fd " + std::to_string(fi->fd) + ": " + err);
  }
  st.devpts_dev = pty::SlaveDev(m);
  pty::Drain(m, st, &out, &in, &err);
  close(m);
  st.out_len = (uint32_t)out.size();
  st.in_len = (uint32_t)in.size();
  data->assign((const char*)&st, sizeof st);
  *data += out;
  *data += in;
  if (refills && (!out.empty() || !in.empty())) {
    PipeRefill r;
    r.fd = fi->fd;
    r.data = out;
    r.pty = true;
    r.pty_in = in;
    r.pty_state = st;
    refills->push_back(std::move(r));
  }
}

// A pty slave: which pair it is of (the replay pairs it with the job's master
// of that devpts instance and index, if any) and the settings it saw.
void DescribePtySlave(pid_t pid, ibdbg_fd_info* fi, const struct stat& sb, std::string* data) {
  fi->kind = IBDBG_FD_PTY_SLAVE;
  ibdbg_pty_state st{};
  st.index = (uint32_t)pty::SlaveIndex(sb.st_rdev);
  st.devpts_dev = (uint64_t)sb.st_dev;
  int s = PidfdGetfd(pid, fi->fd);
  if (s >= 0) {
    struct termios t;
    struct winsize ws {};
    if (tcgetattr(s, &t) == 0 && ioctl(s, TIOCGWINSZ, &ws) == 0) {
      memcpy(st.termios, &t, sizeof t);
      st.winsize[0] = ws.ws_row;
      st.winsize[1] = ws.ws_col;
      st.winsize[2] = ws.ws_xpixel;
      st.winsize[3] = ws.ws_ypixel;
      st.flags |= IBDBG_PTY_TERMIOS;
    }
    close(s);
  }
  data->assign((const char*)&st, sizeof st);
}

// The pid of `outer` in the innermost pid namespace it is in (the job may
// run in a replay's), or 0 when it is gone.
long InnerPidOf(long outer) {
  std::string status = ReadSmallFile("/proc/" + std::to_string(outer) + "/status");
  size_t ns = status.find("NSpid:");
  if (ns == std::string::npos) return 0;
  long inner = 0;
  const char* q = status.c_str() + ns + 6;
  for (char* qe; *q && *q != '\n'; q = qe) {
    long v = strtol(q, &qe, 10);
    if (qe == q) break;
    inner = v;
  }
  return inner;
}

// The index of the pty slave that is the process's controlling terminal (or
// -1) and the terminal's foreground process group as the job sees it (0 if
// unknown).
long ControllingPty(pid_t pid, long* fg) {
  *fg = 0;
  std::string stat = ReadSmallFile("/proc/" + std::to_string(pid) + "/stat");
  size_t rp = stat.rfind(')');
  if (rp == std::string::npos) return -1;
  // After ") ": state ppid pgrp session tty_nr tpgid
  const char* f = stat.c_str() + rp + 1;
  unsigned long tty_nr = 0;
  char state;
  long ppid, pgrp, sess, tpgid = 0;
  if (sscanf(f, " %c %ld %ld %ld %lu %ld", &state, &ppid, &pgrp, &sess, &tty_nr, &tpgid) != 6 || !tty_nr) return -1;
  unsigned ma = (tty_nr >> 8) & 0xfff, mi = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
  // tpgid is a pid of our namespace; the group's leader names it in the job's.
  if (tpgid > 0) *fg = InnerPidOf(tpgid);
  return pty::SlaveIndex(makedev(ma, mi));
}

// A named FIFO: reopened by name at replay; the bytes in it are carried as a
// pipe's are (taken out once per FIFO, put back when the job runs on).
void DescribeFifo(pid_t pid, ibdbg_fd_info* fi, const struct stat& sb, std::string link,
                  std::vector<uint64_t>* drained, std::string* data, std::vector<PipeRefill>* refills) {
  fi->kind = IBDBG_FD_FIFO;
  fi->pipe_id = sb.st_ino;
  const std::string deleted_suffix = " (deleted)";
  if (link.size() > deleted_suffix.size() &&
      link.compare(link.size() - deleted_suffix.size(), deleted_suffix.size(), deleted_suffix) == 0) {
    fi->deleted = 1;
    link.resize(link.size() - deleted_suffix.size());
    snprintf(fi->path, sizeof fi->path, "%s", link.c_str());
  }
  if (std::find(drained->begin(), drained->end(), fi->pipe_id) != drained->end()) return;
  drained->push_back(fi->pipe_id);
  *data = DrainPipe(pid, fi->fd);
  if (!data->empty() && refills) {
    PipeRefill r;
    r.fd = fi->fd;
    r.data = *data;
    r.fifo = true;
    refills->push_back(std::move(r));
  }
}

std::string ReadWholeFd(const std::string& path) {
  Fd f(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (f.fd < 0) Fail(Errno("cannot read " + path));
  std::string out;
  char buf[1 << 16];
  ssize_t n;
  while ((n = pread(f.fd, buf, sizeof buf, (off_t)out.size())) > 0) out.append(buf, (size_t)n);
  return out;
}

void WriteFds(pid_t pid, const ProcessMeta& meta, image::ImageWriter& w, WriteStats* st,
              std::vector<PipeRefill>* refills) {
  std::string base = "/proc/" + std::to_string(pid);
  DIR* d = opendir((base + "/fd").c_str());
  if (!d) Fail(Errno("cannot list descriptors of process " + std::to_string(pid)));
  std::vector<int> fds;
  while (dirent* e = readdir(d))
    if (e->d_name[0] != '.') fds.push_back(atoi(e->d_name));
  closedir(d);
  std::sort(fds.begin(), fds.end());
  std::vector<uint64_t> drained_pipes, drained_fifos;
  for (int fd : fds) {
    if (fd == meta.proc.control_fd) continue;
    auto fi = std::make_unique<ibdbg_fd_info>();
    memset(fi.get(), 0, sizeof *fi);
    fi->fd = fd;
    std::string link = ReadLink(base + "/fd/" + std::to_string(fd));
    if (link.empty()) continue;  // closed meanwhile
    uint64_t pos = 0;
    int flags = 0;
    ParseFdInfo(ReadSmallFile(base + "/fdinfo/" + std::to_string(fd)), &pos, &flags);
    fi->offset = pos;
    fi->open_flags = flags & ~O_CLOEXEC;
    fi->fd_flags = (flags & O_CLOEXEC) ? FD_CLOEXEC : 0;
    struct stat sb {};
    std::string target = base + "/fd/" + std::to_string(fd);
    bool have_stat = stat(target.c_str(), &sb) == 0;
    fi->mode = have_stat ? sb.st_mode : 0;
    fi->size = have_stat ? (uint64_t)sb.st_size : 0;
    if (have_stat && S_ISREG(sb.st_mode)) {
      fi->file_dev = ((uint64_t)major(sb.st_dev) << 32) | minor(sb.st_dev);
      fi->file_ino = sb.st_ino;
    }
    snprintf(fi->path, sizeof fi->path, "%s", link.c_str());
    std::string data;
    const std::string deleted_suffix = " (deleted)";
    if (link.rfind("pipe:[", 0) == 0) {
      fi->kind = IBDBG_FD_PIPE;
      fi->pipe_id = have_stat ? sb.st_ino : 0;
      bool reader = (flags & O_ACCMODE) == O_RDONLY;
      // A fresh open of the pipe: its capacity (F_GETPIPE_SZ, which the
      // application may have set), and its bytes, read non-blocking without
      // touching the process's own descriptor flags.
      Fd pf(open(target.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
      int cap = pf.fd >= 0 ? fcntl(pf.fd, F_GETPIPE_SZ) : -1;
      fi->size = cap > 0 ? (uint64_t)cap : 0;
      bool seen = std::find(drained_pipes.begin(), drained_pipes.end(), fi->pipe_id) != drained_pipes.end();
      if (reader && !seen && pf.fd >= 0) {
        drained_pipes.push_back(fi->pipe_id);
        data = ReadAvailable(pf.fd);
        if (!data.empty() && refills) refills->push_back({fd, data});
      }
    } else if (link == "anon_inode:[eventfd]" || link == "anon_inode:[timerfd]" ||
               link == "anon_inode:[signalfd]" || link == "anon_inode:[eventpoll]") {
      fi->kind = link == "anon_inode:[eventfd]"    ? IBDBG_FD_EVENTFD
                 : link == "anon_inode:[timerfd]"  ? IBDBG_FD_TIMERFD
                 : link == "anon_inode:[signalfd]" ? IBDBG_FD_SIGNALFD
                                                   : IBDBG_FD_EPOLL;
      // The kernel's own description says all that is needed to remake it.
      data = ReadSmallFile(base + "/fdinfo/" + std::to_string(fd));
    } else if (link.rfind("socket:[", 0) == 0) {
      DescribeSocket(pid, fi.get(), have_stat ? sb.st_ino : 0, &data);
    } else if (have_stat && S_ISCHR(sb.st_mode) && sb.st_rdev == makedev(5, 2)) {
      // /dev/ptmx or a devpts instance's ptmx: a master (opening its path
      // again would make another pair).
      DescribePtyMaster(pid, fi.get(), &data, refills);
    } else if (have_stat && S_ISCHR(sb.st_mode) && pty::SlaveIndex(sb.st_rdev) >= 0) {
      DescribePtySlave(pid, fi.get(), sb, &data);
    } else if (link.rfind("/dev/pts/", 0) == 0 || link == "/dev/tty" || link == "/dev/console" ||
               (have_stat && S_ISCHR(sb.st_mode) && isatty(0) && link.rfind("/dev/tty", 0) == 0)) {
      fi->kind = IBDBG_FD_TTY;
    } else if (link[0] == '/' && have_stat && S_ISCHR(sb.st_mode)) {
      fi->kind = IBDBG_FD_DEVNULL;
    } else if (link[0] == '/' && have_stat && (S_ISREG(sb.st_mode) || S_ISDIR(sb.st_mode))) {
      fi->kind = IBDBG_FD_FILE;
      if (link.size() > deleted_suffix.size() &&
          link.compare(link.size() - deleted_suffix.size(), deleted_suffix.size(), deleted_suffix) == 0 &&
          S_ISREG(sb.st_mode)) {
        fi->deleted = 1;
        link.resize(link.size() - deleted_suffix.size());
        snprintf(fi->path, sizeof fi->path, "%s", link.c_str());
        data = ReadWholeFd(target);
      } else if (S_ISREG(sb.st_mode) && (flags & O_ACCMODE) != O_RDONLY && (uint64_t)sb.st_size <= IBDBG_SCRATCH_MAX &&
                 (link.rfind("/tmp/", 0) == 0 || link.rfind("/var/tmp/", 0) == 0)) {
        fi->deleted = IBDBG_FD_SCRATCH_COPY;
        data = ReadWholeFd(target);
      }
    } else if (link[0] == '/' && have_stat && S_ISFIFO(sb.st_mode)) {
      DescribeFifo(pid, fi.get(), sb, link, &drained_fifos, &data, refills);
    } else {
      fi->kind = IBDBG_FD_OTHER;
    }
    std::vector<uint8_t> rec(sizeof *fi + data.size());
    memcpy(rec.data(), fi.get(), sizeof *fi);
    if (!data.empty()) memcpy(rec.data() + sizeof *fi, data.data(), data.size());
    w.AddRecord(image::RecordType::Fd, (uint64_t)fd, rec.data(), rec.size());
    st->fds++;
  }
}

// Children that exited and wait for their parent to collect them: their pids
// and wait statuses, so that the replayed parent can still collect them.
void WriteZombies(pid_t pid, image::ImageWriter& w) {
  nlohmann::json z = nlohmann::json::array();
  std::string base = "/proc/" + std::to_string(pid) + "/task";
  DIR* d = opendir(base.c_str());
  if (!d) return;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::string kids = ReadSmallFile(base + "/" + e->d_name + "/children");
    for (char* c = kids.data(); *c;) {
      char* end;
      long kid = strtol(c, &end, 10);
      if (end == c) break;
      c = end;
      std::string stat = ReadSmallFile("/proc/" + std::to_string(kid) + "/stat");
      size_t rp = stat.rfind(')');
      if (rp == std::string::npos || rp + 2 >= stat.size() || stat[rp + 2] != 'Z') continue;
      // Field 52, exit_code: the wait status.
      const char* f = stat.c_str() + rp + 2;
      for (int field = 3; field < 52 && *f; f++)
        if (*f == ' ') field++;
      // The pid the parent knows: the innermost of its namespaces (a job may
      // itself run in a replay's pid namespace).
      long inner = kid;
      std::string status = ReadSmallFile("/proc/" + std::to_string(kid) + "/status");
      size_t ns = status.find("NSpid:");
      if (ns != std::string::npos) {
        const char* q = status.c_str() + ns + 6;
        for (char* qe; *q && *q != '\n'; q = qe) {
          long v = strtol(q, &qe, 10);
          if (qe == q) break;
          inner = v;
        }
      }
      z.push_back({{"pid", inner}, {"status", atol(f)}});
    }
  }
  closedir(d);
  if (!z.empty()) w.AddRecord(image::RecordType::Json, 0, nlohmann::json{{"zombies", z}}.dump());
}

std::string Iso8601(int64_t ns) {
  time_t t = (time_t)(ns / 1000000000);
  struct tm tm;
  gmtime_r(&t, &tm);
  char buf[64];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

void RefillPty(pid_t pid, const PipeRefill& r) {
  Fd m(PidfdGetfd(pid, r.fd));
  if (m.fd < 0) return;
  // The settings are the process's own still: only the bytes go back.
  ibdbg_pty_state st = r.pty_state;
  st.flags &= ~IBDBG_PTY_TERMIOS;
  std::string err;
  pty::Refill(m.fd, st, r.data, r.pty_in, &err);
}

}  // namespace

ProcessMeta ParseBlob(const std::vector<uint8_t>& blob) {
  ProcessMeta m;
  bool have_proc = false, have_sig = false;
  size_t off = 0;
  while (off < blob.size()) {
    if (blob.size() - off < sizeof(ibdbg_blob_hdr)) Fail("malformed metadata from the capture library");
    ibdbg_blob_hdr h;
    memcpy(&h, blob.data() + off, sizeof h);
    off += sizeof h;
    if (blob.size() - off < h.len) Fail("malformed metadata from the capture library");
    const uint8_t* p = blob.data() + off;
    switch (h.type) {
      case IBDBG_BLOB_PROCESS:
        if (h.len != sizeof m.proc) Fail("capture library of another version");
        memcpy(&m.proc, p, h.len);
        have_proc = true;
        break;
      case IBDBG_BLOB_THREAD: {
        if (h.len != sizeof(ibdbg_thread_info)) Fail("capture library of another version");
        ibdbg_thread_info t;
        memcpy(&t, p, h.len);
        m.threads.push_back(t);
        break;
      }
      case IBDBG_BLOB_SIGNALS:
        if (h.len != sizeof m.sig) Fail("capture library of another version");
        memcpy(&m.sig, p, h.len);
        have_sig = true;
        break;
      case IBDBG_BLOB_VERBS:
        m.verbs.assign(p, p + h.len);
        break;
      default: break;
    }
    off += h.len;
  }
  if (!have_proc || !have_sig || m.threads.empty()) Fail("incomplete metadata from the capture library");
  return m;
}

struct ImageInProgress {
  pid_t pid = 0;
  std::unique_ptr<image::ImageWriter> w;
  WriteStats st;
  std::vector<MapEntry> maps;
  struct Region {
    size_t map;  // index in maps
    uint32_t kind;
    uint64_t end;  // where its stored pages end
    bool done = false;
    // Incremental: only these pages (written since the parent) are stored.
    bool incremental = false;
    std::vector<PageRange> written;
  };
  std::vector<Region> regions;
};

namespace {

// Regions a fork does not copy as they are: MADV_DONTFORK ("dc", absent in
// the child) and MADV_WIPEONFORK ("wf", zero in the child), by start address.
std::set<uint64_t> NotCopiedByFork(pid_t pid) {
  std::set<uint64_t> out;
  std::string text = ReadSmallFile("/proc/" + std::to_string(pid) + "/smaps");
  uint64_t start = 0;
  for (size_t at = 0; at < text.size();) {
    size_t nl = text.find('\n', at);
    if (nl == std::string::npos) nl = text.size();
    const char* line = text.c_str() + at;
    if (isxdigit((unsigned char)line[0]) && strchr(line, '-') && strchr(line, '-') < text.c_str() + nl) {
      start = strtoull(line, nullptr, 16);
    } else if (strncmp(line, "VmFlags:", 8) == 0) {
      std::string flags(line + 8, text.c_str() + nl);
      if (flags.find(" dc") != std::string::npos || flags.find(" wf") != std::string::npos) out.insert(start);
    }
    at = nl + 1;
  }
  return out;
}

// PAGEMAP_SCAN (Linux 6.7), which this system's headers may lack.
struct PmScanArg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted, category_mask,
      category_anyof_mask, return_mask;
};
struct PageRegion {
  uint64_t start, end, categories;
};
constexpr unsigned long kPagemapScan = _IOWR('f', 16, PmScanArg);
constexpr uint64_t kPageIsPresent = 1 << 3, kPageIsSwapped = 1 << 4;

// Whether [start, end) of a process has any page (1), none (0), or the
// kernel cannot tell cheaply (-1).  Stops at the first page found.
int HasAnyPage(int pagemap, uint64_t start, uint64_t end) {
  PageRegion r{};
  PmScanArg a{};
  a.size = sizeof a;
  a.start = start;
  a.end = end;
  a.vec = (uint64_t)(uintptr_t)&r;
  a.vec_len = 1;
  a.max_pages = 1;
  a.category_anyof_mask = a.return_mask = kPageIsPresent | kPageIsSwapped;
  long n = ioctl(pagemap, kPagemapScan, &a);
  return n < 0 ? -1 : n > 0;
}

// Whether a region's pages must be read from the process itself while it is
// stopped, rather than from a copy-on-write fork of it: shared memory is the
// same object in both (it changes once the process runs on), a deleted
// file's unread pages would come from the file as it is later, and a fork
// does not copy some regions at all.
bool NeedsTheProcess(uint32_t kind, bool not_copied) {
  return not_copied || kind == kFileSharedKept || kind == IBDBG_IVMA_SHARED_ANON || kind == IBDBG_IVMA_FILE_DELETED;
}

void WriteRegions(ImageInProgress& img, pid_t memory_pid, const std::function<bool(const ImageInProgress::Region&)>& which) {
  MemoryWriter mw(memory_pid, *img.w);
  for (auto& r : img.regions) {
    if (r.done || !which(r)) continue;
    if (r.incremental) {
      for (const PageRange& x : r.written) img.st.memory_bytes += mw.Write(x.start, x.end, r.kind) * kPage;
    } else {
      img.st.memory_bytes += mw.Write(img.maps[r.map].start, r.end, r.kind) * kPage;
    }
    r.done = true;
  }
}

// Private memory whose pages only this process writes: what write tracking
// can follow.  Shared memory is written by others too, a deleted file's
// mapping is stored whole anyway (NeedsTheProcess), the vdso is tiny.
bool Trackable(uint32_t kind) {
  return kind == IBDBG_IVMA_ANON || kind == IBDBG_IVMA_HEAP || kind == IBDBG_IVMA_STACK || kind == IBDBG_IVMA_FILE;
}

// In the pause: for each private region, the pages written since the last
// capture (re-armed in the same walk), if the tracker followed it since;
// else it is registered now and stored whole.  An incremental image gets an
// Inherit record per followed region: its pages that exist and were not
// written are the parent's (a page written, or dropped, and zero now is in
// neither list, and reads as zero).
void TrackRegions(ImageInProgress& img, const WriteOptions& opts) {
  if (opts.track_uffd < 0) return;
  bool incremental = !opts.parent_ref.empty();
  Fd pm(open(("/proc/" + std::to_string(img.pid) + "/pagemap").c_str(), O_RDONLY | O_CLOEXEC));
  if (pm.fd < 0) Fail(Errno("cannot read the page map of process " + std::to_string(img.pid)));
  for (auto& r : img.regions) {
    if (!Trackable(r.kind)) continue;
    const MapEntry& m = img.maps[r.map];
    std::vector<PageRange> written, present;
    std::string err;
    if (ScanWrittenPages(pm.fd, m.start, r.end, true, &written, &err)) {
      img.st.tracked_regions++;
      if (!incremental) continue;
      if (!ScanPresentPages(pm.fd, m.start, r.end, &present, &err)) Fail(err);
      image::Ranges p, w;
      for (auto& x : present) p.push_back({x.start, x.end});
      for (auto& x : written) w.push_back({x.start, x.end});
      image::Ranges inherit = image::Subtract(image::Normalize(p), image::Normalize(w));
      r.incremental = true;
      r.written = std::move(written);
      if (inherit.empty()) continue;
      img.st.inherited_bytes += image::RangeBytes(inherit);
      img.w->AddRecord(image::RecordType::Inherit, m.start, inherit.data(), inherit.size() * sizeof inherit[0]);
      continue;
    }
    // Not followed since the last capture (new, moved, or another
    // userfaultfd's: the application's own, a lazy replay's page server,
    // which the kernel refuses to share): stored whole; followed from now on
    // where the kernel lets us.
    written.clear();
    if (TrackWrites(opts.track_uffd, m.start, m.end - m.start, &err) &&
        ScanWrittenPages(pm.fd, m.start, r.end, true, &written, &err))
      img.st.tracked_regions++;
  }
}

}  // namespace

void ImageInProgressDeleter::operator()(ImageInProgress* p) const { delete p; }

WriteStats WriteProcessImage(pid_t pid, const ProcessMeta& meta, int out_fd, const WriteOptions& opts,
                             std::vector<PipeRefill>* refills) {
  auto img = BeginProcessImage(pid, meta, out_fd, opts, refills, false);
  return FinishProcessImage(*img, pid);
}

WriteStats FinishProcessImage(ImageInProgress& img, pid_t memory_pid) {
  WriteRegions(img, memory_pid, [](const ImageInProgress::Region&) { return true; });
  img.w->Finish();
  img.st.file_bytes = img.w->bytes_written();
  return img.st;
}

ImageInProgressPtr BeginProcessImage(pid_t pid, const ProcessMeta& meta, int out_fd, const WriteOptions& opts,
                                     std::vector<PipeRefill>* refills, bool for_copy) {
  ImageInProgressPtr img(new ImageInProgress);
  img->pid = pid;
  WriteStats& st = img->st;
  image::WriterOptions wo;
  wo.zstd_level = opts.zstd_level;
  wo.threads = opts.threads;
  img->w = std::make_unique<image::ImageWriter>(out_fd, wo);
  image::ImageWriter& w = *img->w;

  struct utsname un {};
  uname(&un);
  nlohmann::json h = {
      {"format", image::kFormatVersion},
      {"ibdbg_version", opts.ibdbg_version},
      {"job_id", opts.job_id},
      {"host", meta.proc.hostname},
      {"kernel", un.release},
      {"machine", un.machine},
      {"time", Iso8601(meta.proc.capture_time_ns)},
      {"time_ns", meta.proc.capture_time_ns},
      {"pid", meta.proc.pid},
      {"exe", meta.proc.exe},
      {"comm", meta.proc.comm},
      {"generation", meta.proc.generation},
      {"threads", meta.threads.size()},
  };
  if (!opts.parent_ref.empty()) h["parent"] = nlohmann::json::parse(opts.parent_ref);
  w.AddRecord(image::RecordType::Header, 0, h.dump());
  w.AddRecord(image::RecordType::Process, 0, &meta.proc, sizeof meta.proc);
  for (const auto& t : meta.threads) w.AddRecord(image::RecordType::Thread, (uint64_t)t.tid, &t, sizeof t);
  w.AddRecord(image::RecordType::Signals, 0, &meta.sig, sizeof meta.sig);
  if (!meta.verbs.empty()) w.AddRecord(image::RecordType::Verbs, 0, meta.verbs.data(), meta.verbs.size());

  WriteFds(pid, meta, w, &st, refills);
  WriteZombies(pid, w);
  // The controlling terminal, when it is a pty: the replay makes the slave of
  // the job's pair with that index the session's terminal again.
  long fg = 0;
  if (long ctty = ControllingPty(pid, &fg); ctty >= 0)
    w.AddRecord(image::RecordType::Json, 0, nlohmann::json{{"ctty", {{"index", ctty}, {"fg", fg}}}}.dump());
  std::set<std::pair<uint64_t, uint64_t>> whole;  // memory objects stored whole
  WriteIpcObjects(pid, w, &whole, opts.ipc_stored);

  img->maps = ReadMaps(pid);
  const std::vector<MapEntry>& maps = img->maps;
  std::vector<std::pair<const MapEntry*, uint32_t>> regions;
  std::map<uint64_t, uint64_t> vma_size_of;  // start -> file size as recorded
  auto vma = std::make_unique<ibdbg_image_vma>();
  for (const MapEntry& m : maps) {
    if (m.kind == MapKind::Vsyscall) continue;
    // What is left of the restorer in a replayed process is not the application's.
    if (m.start >= IBDBG_RESTORER_BASE && m.end <= IBDBG_RESTORER_END) continue;
    uint32_t kind = ImageKind(m);
    if (!kind) continue;
    memset(vma.get(), 0, sizeof *vma);
    vma->start = m.start;
    vma->end = m.end;
    vma->offset = m.offset;
    vma->prot = (m.r ? PROT_READ : 0) | (m.w ? PROT_WRITE : 0) | (m.x ? PROT_EXEC : 0);
    vma->kind = kind;
    vma->shared = m.shared;
    vma->deleted = m.deleted;
    vma->inode = m.inode;
    vma->dev_major = m.dev_major;
    vma->dev_minor = m.dev_minor;
    snprintf(vma->path, sizeof vma->path, "%s", m.path.c_str());
    uint32_t page_kind = kind;
    if (kind == IBDBG_IVMA_FILE || kind == IBDBG_IVMA_FILE_SHARED) {
      struct stat sb {};
      // The process's own view of the path first (a replay's mounts are its own).
      std::string via = "/proc/" + std::to_string(pid) + "/root" + m.path;
      bool have = (kind == IBDBG_IVMA_FILE_SHARED && stat(via.c_str(), &sb) == 0) || stat(m.path.c_str(), &sb) == 0;
      if (have) {
        vma->file_size = (uint64_t)sb.st_size;
        vma->file_mtime_ns = (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
      }
      // The replay decides alike from the record: writable, a regular file
      // with bytes, not in /dev/shm (whose files are Ipc records).
      if (kind == IBDBG_IVMA_FILE_SHARED && m.w && have && S_ISREG(sb.st_mode) && sb.st_size > 0 &&
          !IsDevShmPath(m.path))
        page_kind = kFileSharedKept;
      else if (kind == IBDBG_IVMA_FILE_SHARED && m.w)
        vma->file_size = 0;  // says "no pages" to the replay
    }
    // Page counts are known only after the pages are written; the launcher
    // does not need them up front.
    w.AddRecord(image::RecordType::Vma, m.start, vma.get(), sizeof *vma);
    vma_size_of[m.start] = vma->file_size;
    regions.push_back({&m, page_kind});
    st.vmas++;
  }
  {
    for (auto& [m, kind] : regions) {
      // The vdso's code is kept (a few KiB): on another kernel the replay
      // needs it to send the application's vdso calls to the new one.
      if (kind == IBDBG_IVMA_VVAR || kind == IBDBG_IVMA_VVAR_VCLOCK || kind == IBDBG_IVMA_SYSV_SHM) continue;
      uint64_t end = m->end;
      if (kind == IBDBG_IVMA_SHARED_ANON &&
          whole.count({((uint64_t)m->dev_major << 32) | m->dev_minor, m->inode}))
        continue;
      if (kind == IBDBG_IVMA_FILE_SHARED) continue;  // the file (or its Ipc record) holds the data
      if (kind == kFileSharedKept) {
        // Pages past the end of the file cannot be read (nor written back).
        uint64_t file_end = (vma_size_of[m->start] + kPage - 1) & ~(kPage - 1);
        if (file_end <= m->offset) continue;
        end = std::min(end, m->start + (file_end - m->offset));
      }
      img->regions.push_back({(size_t)(m - maps.data()), kind, end, false, false, {}});
    }
  }
  TrackRegions(*img, opts);
  if (for_copy)
    WriteRegions(*img, pid, [&](const ImageInProgress::Region& r) { return NeedsTheProcess(r.kind, false); });
  return img;
}

void WriteWhatTheCopyLacks(ImageInProgress& img, pid_t copy) {
  // Regions a fork does not copy as they are: MADV_DONTFORK (absent from the
  // copy) and MADV_WIPEONFORK (no page in the copy where the process has
  // some).  Cheap per region with PAGEMAP_SCAN (it stops at the first page);
  // otherwise the flags in smaps, which cost a walk of every page.
  std::set<uint64_t> in_copy;
  for (const MapEntry& m : ReadMaps(copy)) in_copy.insert(m.start);
  Fd copy_pm(open(("/proc/" + std::to_string(copy) + "/pagemap").c_str(), O_RDONLY | O_CLOEXEC));
  Fd own_pm(open(("/proc/" + std::to_string(img.pid) + "/pagemap").c_str(), O_RDONLY | O_CLOEXEC));
  std::optional<std::set<uint64_t>> flagged;
  WriteRegions(img, img.pid, [&](const ImageInProgress::Region& r) {
    const MapEntry& m = img.maps[r.map];
    if (!in_copy.count(m.start)) return true;
    // Wipe-on-fork applies to private anonymous memory only (elsewhere a
    // fork leaves file pages unmapped, to be faulted in again).
    if (r.kind != IBDBG_IVMA_ANON && r.kind != IBDBG_IVMA_HEAP && r.kind != IBDBG_IVMA_STACK) return false;
    int copy_has = HasAnyPage(copy_pm.fd, m.start, r.end), own_has = 0;
    if (copy_has == 0) own_has = HasAnyPage(own_pm.fd, m.start, r.end);
    if (copy_has >= 0 && own_has >= 0) return copy_has == 0 && own_has == 1;
    if (!flagged) flagged = NotCopiedByFork(img.pid);
    return flagged->count(m.start) > 0;
  });
}

void RefillPipes(pid_t pid, const std::vector<PipeRefill>& refills) {
  for (const auto& r : refills) {
    if (r.pty) {
      RefillPty(pid, r);
      continue;
    }
    std::string path = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(r.fd);
    Fd f(open(path.c_str(), (r.fifo ? O_RDWR : O_WRONLY) | O_CLOEXEC));
    if (f.fd < 0) continue;
    size_t off = 0;
    while (off < r.data.size()) {
      ssize_t n = write(f.fd, r.data.data() + off, r.data.size() - off);
      if (n <= 0) break;
      off += (size_t)n;
    }
  }
}

}  // namespace ibdbg::capture
