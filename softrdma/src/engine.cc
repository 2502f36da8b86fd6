// softrdma engine: listening sockets, TCP connections, the wire protocol and
// the progress thread that executes the remote side of every operation.
//
// Connections. An RC or UC queue pair has two TCP connections to its peer:
// "out" (we connected; it carries our requests and the peer's responses) and
// "in" (the peer connected; it carries the peer's requests and our
// responses). TCP keeps each direction in order, so PSNs only match
// responses to requests. UD datagrams travel on one cached connection per
// destination process ("ud-in" on the receiving side) and are dropped when no
// receive is posted, as UD allows.
//
// Threads and locks. Application threads post and transmit (qp->mu). The
// progress thread does all reception and sends responses, taking qp->mu of the
// QP a connection belongs to. Connections are closed and freed only by the
// progress thread; QP destruction waits for a barrier so that the progress
// thread holds no pointer to the QP any more. "Progress thread" below means
// whichever thread runs a Pass() under g_eng->pass: usually that thread, but
// an application thread polling an empty CQ runs one itself when it can.
//
// An ACK can also ride on a request of ours to the peer (TakeAckForRequest):
// a ping-pong then costs one frame per message, not two.
//
// One host: large RC payloads skip the stream (see "shared-memory ring" and
// "one-copy" below).
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <vector>

#include "internal.h"

namespace softrdma {
namespace {

constexpr uint32_t kStage = 65536;
constexpr int kTxIov = 64;
constexpr int kTxHdrs = 32;
constexpr uint32_t kMaxListeners = 255;
constexpr uint64_t kPendingHelloNs = 5ull * 1000000000ull;
constexpr uint64_t kReconnectNs = 20ull * 1000000ull;
constexpr uint64_t kStepAsideNs = 200000;

enum Tag { kTagListener = 1, kTagWake = 2, kTagConn = 3 };

struct Listener {
  int tag = kTagListener;
  int fd = -1;
  uint16_t port = 0;
  uint32_t used = 0;  // allocated slots
};

enum class Role { kPending, kOut, kIn, kUdIn };

enum Fin : uint8_t {
  kFinNone,
  kFinRecv,       // responder: SEND / WRITE_IMM finished: recv completion + ACK
  kFinAck,        // responder: WRITE finished: ACK
  kFinNakErr,     // responder: payload discarded after an error: NAK, then error
  kFinReadResp,   // requester: read data placed
  kFinDrop,       // discard, nothing more
};

}  // namespace

struct Conn {
  int tag = kTagConn;
  int fd = -1;
  Role role = Role::kPending;
  uint32_t kind = 0;
  std::atomic<Qp*> qp{nullptr};
  bool dead = false;
  bool connected = false;
  bool hello_sent = false;
  bool parked = false;
  bool waiting = false;  // in the engine's waiting list (pending or parked)
  bool in_again = false;  // in the engine's again list
  uint32_t events = 0;
  uint64_t deadline = 0;
  uint32_t peer_qpn = 0;
  uint32_t peer_ip = 0;
  uint32_t hello_opts = 0;
  // rx
  char* stage = nullptr;
  uint32_t st_off = 0, st_len = 0;
  // a read in this RxRun returned less than asked: the socket is empty, and
  // (level-triggered) epoll says when it is not; no recv just to see EAGAIN
  bool drained = false;
  bool in_payload = false;
  WireHdr h{};
  struct iovec iov[kMaxSge + 1];
  int niov = 0, iov_i = 0;
  uint64_t remaining = 0;
  bool discard = false;
  Fin fin = kFinNone;
  uint16_t fin_nak = 0;
  uint32_t fin_status = 0;  // recv completion status
  RecvWqe* rw = nullptr;    // receive WQE being filled (kMaxSge entries)
  bool have_rw = false;
  // tx
  struct iovec tiov[kTxIov];
  int tn = 0, ti = 0;
  WireHdr th[kTxHdrs];
  int thn = 0;
  uint32_t batch_resp = 0;
  uint32_t batch_sq_end = 0;
  bool batch_uc = false;
  // one-copy (same host): the responder accepted this stream (cma, with the
  // requester's pid) or the requester was told so (cma_ok)
  bool cma = false;
  bool cma_ok = false;
  uint32_t peer_pid = 0;
  // shared-memory ring (one host): the requester makes it with its HELLO,
  // the responder maps it (shm); see "shared-memory ring" below
  char* shm = nullptr;      // ShmHdr, request ring, response ring
  uint64_t shm_size = 0;    // bytes of each ring
  int shm_fd = -1;          // requester, until the responder answered
  bool shm_ok = false;      // requester: the responder maps the ring
  bool shm_wait = false;    // requester: a request waits for ring space
  uint64_t shm_head = 0;    // requester: next byte of the request ring
  uint64_t shm_rhead = 0, shm_rtail = 0;  // requester: response ring in use
  uint64_t td[kTxHdrs][2 * kMaxSge];  // descriptors of the batch's frames
};

namespace {

struct UdOut {
  uint32_t ip = 0;
  uint16_t port = 0;
  int fd = -1;
  std::mutex mu;
};

struct Engine {
  int ep = -1;
  int wake = -1;
  int wake_tag = kTagWake;
  std::mutex mu;  // listeners and QPN allocation
  Listener* lst[kMaxListeners] = {};
  std::atomic<uint32_t> nlst{0};
  std::atomic<Qp*> qps[kMaxListeners * 256];
  std::atomic<uint32_t> nqps{0};
  std::mutex cmu;  // leaf: close requests, barrier
  pthread_cond_t ccv = PTHREAD_COND_INITIALIZER;
  std::vector<Conn*> close_req;
  uint64_t barrier_req = 0, barrier_done = 0;
  std::atomic<bool> kicked{false};
  // progress thread only
  std::vector<Conn*> waiting;
  std::vector<Conn*> again;  // stopped by their budget with frames still buffered
  std::vector<Conn*> to_free;
  std::mutex pass;  // held while a thread runs Pass(); guards the "progress thread only" state
  uint64_t last_timer = 0;
  std::atomic<int> next_timeout{-1};
  std::atomic<uint64_t> poll_ns{0};  // last time an application thread ran a pass
  bool app_pass = false;             // the pass running is an application thread's
  std::vector<uint32_t> deferred;    // QPNs with an ACK deferred (ack_deferred)
  std::mutex umu;
  std::vector<UdOut*> ud;
};

Engine* g_eng = nullptr;
pthread_once_t g_eng_once = PTHREAD_ONCE_INIT;
bool g_eng_ok = false;

// ------------------------------------------------------------ one-copy ----
// Within one host the payload of large RC requests does not travel on the
// stream: the requester sends descriptors of its own (registered) memory and
// the responder, after the same checks as for a streamed payload, copies
// straight between the two address spaces with process_vm_readv/writev.
// SOFTRDMA_TRANSPORT: tcp (never), auto (default: peers in the same network
// namespace of the same boot), cma (also across network namespaces; a peer
// that cannot do it is refused, so tests know which path ran).
enum CmaMode { kCmaOff, kCmaAuto, kCmaRequired, kShmRequired };
int g_cma_mode = kCmaAuto;
uint64_t g_shm_size = 1 << 20;  // bytes of each ring of a connection
uint64_t g_cma_min = 16384;  // smaller messages are cheaper on the stream
uint64_t g_boot = 0;         // hash of the boot id
uint32_t g_netns = 0;
uint64_t g_cookie = 0;       // a peer reads it to prove it can reach our memory

void CmaInit() {
  const char* t = getenv("SOFTRDMA_TRANSPORT");
  if (t && strcmp(t, "tcp") == 0) g_cma_mode = kCmaOff;
  else if (t && strcmp(t, "cma") == 0) g_cma_mode = kCmaRequired;
  else if (t && strcmp(t, "shm") == 0) g_cma_mode = kShmRequired;
  const char* r = getenv("SOFTRDMA_SHM_RING");
  if (r && *r) {
    uint64_t v = strtoull(r, nullptr, 0);
    if (v >= 4096 && v <= (1ull << 30)) g_shm_size = (v + 4095) & ~uint64_t(4095);
  }
  const char* m = getenv("SOFTRDMA_CMA_MIN");
  if (m && *m) g_cma_min = strtoull(m, nullptr, 0);
  char id[64] = {};
  int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
  ssize_t n = fd >= 0 ? read(fd, id, sizeof id - 1) : -1;
  if (fd >= 0) close(fd);
  if (n <= 0) {
    g_cma_mode = kCmaOff;  // cannot tell whether a peer shares our kernel
    return;
  }
  uint64_t h = 1469598103934665603ull;
  for (ssize_t i = 0; i < n; i++) h = (h ^ uint8_t(id[i])) * 1099511628211ull;
  g_boot = h;
  struct stat st;
  if (stat("/proc/self/ns/net", &st) == 0) g_netns = uint32_t(st.st_ino);
  if (getrandom(&g_cookie, sizeof g_cookie, GRND_NONBLOCK) != sizeof g_cookie) g_cookie = NowNs();
  g_cookie |= 1;
}

bool SameHost(const WireHdr& h) {
  if (g_cma_mode == kCmaOff || h.arg0 != g_boot) return false;
  return h.imm == g_netns || g_cma_mode == kCmaRequired || g_cma_mode == kShmRequired || (h.flags & kFCmaAny);
}

// Responder, on a HELLO that offers one-copy: same kernel, and can we really
// read the requester's memory (same uid, no Yama, same pid namespace)?
bool CmaAccept(const WireHdr& h) {
  if (g_cma_mode == kShmRequired || !(h.flags & kFCma) || !SameHost(h)) return false;
  uint64_t v = 0;
  struct iovec l = {&v, sizeof v};
  struct iovec r = {reinterpret_cast<void*>(h.arg1), sizeof v};
  return process_vm_readv(pid_t(h.psn), &l, 1, &r, 1, 0) == ssize_t(sizeof v) && v == h.raddr;
}

// Copies between our iovecs and the peer's descriptors; false unless all of
// len bytes moved (the requester unmapped its memory meanwhile).
bool CmaCopy(uint32_t pid, bool to_peer, struct iovec* loc, int nloc, const char* desc, uint32_t ndesc,
             uint64_t len) {
  struct iovec rem[kMaxSge];
  if (ndesc > kMaxSge) return false;
  for (uint32_t i = 0; i < ndesc; i++) {
    uint64_t d[2];
    memcpy(d, desc + 16 * i, 16);
    rem[i].iov_base = reinterpret_cast<void*>(d[0]);
    rem[i].iov_len = d[1];
  }
  int li = 0, ri = 0;
  while (len) {
    ssize_t n = to_peer ? process_vm_writev(pid_t(pid), loc + li, unsigned(nloc - li), rem + ri, ndesc - ri, 0)
                        : process_vm_readv(pid_t(pid), loc + li, unsigned(nloc - li), rem + ri, ndesc - ri, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    len -= uint64_t(n) < len ? uint64_t(n) : len;
    // a call moves at most ~2 GiB: advance both sides for the next one
    for (size_t k = size_t(n); k;) {
      size_t a = loc[li].iov_len < k ? loc[li].iov_len : k;
      loc[li].iov_base = static_cast<char*>(loc[li].iov_base) + a;
      loc[li].iov_len -= a;
      k -= a;
      if (!loc[li].iov_len) li++;
    }
    for (size_t k = size_t(n); k;) {
      size_t a = rem[ri].iov_len < k ? rem[ri].iov_len : k;
      rem[ri].iov_base = static_cast<char*>(rem[ri].iov_base) + a;
      rem[ri].iov_len -= a;
      k -= a;
      if (!rem[ri].iov_len) ri++;
    }
    while (li < nloc && !loc[li].iov_len) li++;
    while (ri < int(ndesc) && !rem[ri].iov_len) ri++;
    if (len && (li == nloc || ri == int(ndesc))) return false;
  }
  return true;
}

// ------------------------------------------------- shared-memory ring ----
// Within one host the payloads of RC requests up to the ring's size travel
// through a memfd that the requester creates with its connection and the
// responder maps (it opens /proc/PID/fd/N and finds our random cookie in it,
// so it is our file and our pid namespace). The requester copies a SEND's
// or WRITE's payload into the request ring when it transmits the request;
// the header still travels on the stream, in order, and the responder,
// after the same checks as for a streamed payload, copies it out into the
// target and then frees the ring space (req_tail). Two user-space copies, by
// two threads (usually on two cores) in a pipeline, instead of the kernel's
// cross-memory copy (process_vm_readv pins the pages of every call and is
// several times slower than memcpy). A READ names a range of the response
// ring (the requester allocates it, in order); the responder puts the data
// there when it executes the READ and the requester copies it out when the
// response arrives. Registered memory stays the application's private
// memory: only this ring, softrdma's own, is shared.
struct ShmHdr {
  uint64_t cookie;
  uint64_t size;
  alignas(64) std::atomic<uint64_t> req_tail;  // responder: consumed up to
};
constexpr uint64_t kShmHdr = 4096;
static_assert(sizeof(ShmHdr) <= kShmHdr);

inline ShmHdr* Shm(Conn* c) { return reinterpret_cast<ShmHdr*>(c->shm); }
inline char* ReqRing(Conn* c) { return c->shm + kShmHdr; }
inline char* RespRing(Conn* c) { return c->shm + kShmHdr + c->shm_size; }

// Copies len bytes between the ring (position pos, wrapping) and iovecs.
void RingIov(char* ring, uint64_t size, uint64_t pos, const struct iovec* v, int n, uint64_t len, bool to_ring) {
  uint64_t off = pos % size;
  for (int i = 0; i < n && len; i++) {
    char* p = static_cast<char*>(v[i].iov_base);
    uint64_t k = v[i].iov_len < len ? v[i].iov_len : len;
    len -= k;
    while (k) {
      uint64_t m = size - off < k ? size - off : k;
      if (to_ring) memcpy(ring + off, p, m);
      else memcpy(p, ring + off, m);
      p += m;
      k -= m;
      off = (off + m) % size;
    }
  }
}

// Requester, building its HELLO: a new ring for this connection.
bool ShmCreate(Conn* c) {
  uint64_t total = kShmHdr + 2 * g_shm_size;
  int fd = memfd_create("softrdma-ring", MFD_CLOEXEC);
  if (fd < 0) return false;
  void* p = MAP_FAILED;
  if (ftruncate(fd, off_t(total)) == 0) p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    close(fd);
    return false;
  }
  madvise(p, total, MADV_DONTFORK);  // a forked child has no softrdma engine
  c->shm = static_cast<char*>(p);
  c->shm_fd = fd;
  c->shm_size = g_shm_size;
  Shm(c)->cookie = g_cookie;
  Shm(c)->size = g_shm_size;
  Shm(c)->req_tail.store(0, std::memory_order_relaxed);
  return true;
}

void ShmUnmap(Conn* c) {
  if (c->shm) munmap(c->shm, kShmHdr + 2 * c->shm_size);
  c->shm = nullptr;
  if (c->shm_fd >= 0) close(c->shm_fd);
  c->shm_fd = -1;
  c->shm_ok = false;
}

// Responder, on a HELLO that offers the ring: map the requester's memfd.
bool ShmAccept(Conn* c, const WireHdr& h) {
  if (g_cma_mode == kCmaRequired || !(h.flags & kFShm) || !SameHost(h)) return false;
  char path[64], target[64] = {};
  snprintf(path, sizeof path, "/proc/%u/fd/%u", h.psn, h.len);
  // only ever one of our rings: the HELLO could name any file the process has open
  static const char kName[] = "/memfd:softrdma-ring ";
  if (readlink(path, target, sizeof target - 1) < ssize_t(sizeof kName - 1) ||
      memcmp(target, kName, sizeof kName - 1) != 0)
    return false;
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st;
  ShmHdr hdr;
  bool ok = fstat(fd, &st) == 0 && pread(fd, &hdr, 16, 0) == 16 && hdr.cookie == h.raddr && hdr.size >= 4096 &&
            hdr.size <= (1ull << 30) && uint64_t(st.st_size) == kShmHdr + 2 * hdr.size;
  void* p = ok ? mmap(nullptr, kShmHdr + 2 * hdr.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
  close(fd);
  if (p == MAP_FAILED) return false;
  madvise(p, kShmHdr + 2 * hdr.size, MADV_DONTFORK);
  c->shm = static_cast<char*>(p);
  c->shm_size = hdr.size;
  return true;
}

inline bool PsnLe(uint32_t a, uint32_t b) { return ((b - a) & 0xffffff) < 0x800000; }

void Wake() {
  uint64_t one = 1;
  ssize_t r = write(g_eng->wake, &one, sizeof one);
  (void)r;
}

void SetEvents(Conn* c, uint32_t ev) {
  if (c->dead || c->events == ev) return;
  struct epoll_event e;
  e.events = ev;
  e.data.ptr = c;
  epoll_ctl(g_eng->ep, EPOLL_CTL_MOD, c->fd, &e);
  c->events = ev;
}

Conn* NewConn(int fd, Role role) {
  Conn* c = new (std::nothrow) Conn;
  if (!c) return nullptr;
  c->stage = static_cast<char*>(malloc(kStage));
  c->rw = static_cast<RecvWqe*>(malloc(sizeof(RecvWqe) + kMaxSge * sizeof(struct ibv_sge)));
  if (!c->stage || !c->rw) {
    free(c->stage);
    free(c->rw);
    delete c;
    return nullptr;
  }
  c->fd = fd;
  c->role = role;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return c;
}

bool AddConn(Conn* c, uint32_t ev) {
  struct epoll_event e;
  e.events = ev;
  e.data.ptr = c;
  c->events = ev;
  return epoll_ctl(g_eng->ep, EPOLL_CTL_ADD, c->fd, &e) == 0;
}

// Progress thread only.
void KillConn(Conn* c) {
  if (c->dead) return;
  c->dead = true;
  epoll_ctl(g_eng->ep, EPOLL_CTL_DEL, c->fd, nullptr);
  CloseOwned(c->fd);
  c->fd = -1;
  g_eng->to_free.push_back(c);
}

// Application thread (qp->mu held): detach a connection and let the progress
// thread close it.
void RequestClose(Conn* c) {
  if (!c) return;
  c->qp.store(nullptr);
  {
    std::lock_guard<std::mutex> g(g_eng->cmu);
    g_eng->close_req.push_back(c);
  }
  Wake();
}

void SetWaiting(Conn* c, uint64_t deadline) {
  c->deadline = deadline;
  if (!c->waiting) {
    c->waiting = true;
    g_eng->waiting.push_back(c);
  }
}

// ------------------------------------------------------------------ tx ----
void TxAddHdr(Conn* c, const WireHdr& h) {
  c->th[c->thn] = h;
  c->tiov[c->tn].iov_base = &c->th[c->thn];
  c->tiov[c->tn].iov_len = sizeof(WireHdr);
  c->thn++;
  c->tn++;
}

// Writes the current batch; true when it is fully written.
bool TxWrite(Conn* c, bool* broken) {
  while (c->ti < c->tn) {
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = &c->tiov[c->ti];
    m.msg_iovlen = size_t(c->tn - c->ti);
    ssize_t n = sendmsg(c->fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) *broken = true;
      return false;
    }
    size_t left = size_t(n);
    while (left && c->ti < c->tn) {
      struct iovec& v = c->tiov[c->ti];
      if (left >= v.iov_len) {
        left -= v.iov_len;
        c->ti++;
      } else {
        v.iov_base = static_cast<char*>(v.iov_base) + left;
        v.iov_len -= left;
        left = 0;
      }
    }
    while (c->ti < c->tn && c->tiov[c->ti].iov_len == 0) c->ti++;
  }
  return true;
}

bool WqeNeedsResp(uint32_t op) {
  return op == IBV_WR_RDMA_READ || op == IBV_WR_ATOMIC_CMP_AND_SWP || op == IBV_WR_ATOMIC_FETCH_AND_ADD;
}

// An ACK that the responder side of this QP has queued but not started to
// write rides on the request instead (qp->mu held): one frame, one system
// call and one wake-up less per message when both sides talk, as in a
// ping-pong. Only the unsent tail ACK is taken; responses queued before it
// (READ/atomic) still go on the responses' stream, and the peer completes
// nothing that waits for one of them before it came (CompleteAcked).
void TakeAckForRequest(Qp* qp, WireHdr* h) {
  Conn* in = qp->in;
  if (!in || in->dead || !qp->resp_count || qp->goto_err_after_resp) return;
  if (qp->resp_count <= in->batch_resp) return;  // the tail is being written
  uint32_t tail = (qp->resp_head + qp->resp_count - 1) % qp->resp_cap;
  if (qp->resp[tail].op != kOpAck) return;
  h->flags |= kFAck;
  h->qkey = qp->resp[tail].psn;
  qp->resp_count--;
  if (qp->resp_count == in->batch_resp) qp->ack_deferred = false;
}

// Requester transmit on qp->out (qp->mu held). Builds batches of frames from
// the send queue and writes them without blocking.
void PumpOut(Qp* qp) {
  Conn* c = qp->out;
  if (!c || !c->connected || c->dead) return;
  bool broken = false;
  for (;;) {
    if (c->ti < c->tn) {
      if (!TxWrite(c, &broken)) {
        if (!broken) SetEvents(c, EPOLLIN | EPOLLOUT);
        return;
      }
    }
    // batch done
    if (c->batch_uc) {
      // UC: a send completes once it is on the wire.
      while (qp->sq_done != c->batch_sq_end) {
        SendWqe* w = SqAt(qp, qp->sq_done);
        CompleteSendLocked(qp, w, IBV_WC_SUCCESS);
      }
      c->batch_uc = false;
    }
    c->tn = c->ti = c->thn = 0;
    if (!c->hello_sent) {
      WireHdr h{};
      h.op = kOpHello;
      h.dst_qpn = qp->attr.dest_qp_num;
      h.src_qpn = qp->ex.qp_base.qp_num;
      h.rkey = host().ip;
      h.qkey = (qp->ex.qp_base.qp_type == IBV_QPT_RC ? kKindRc : kKindUc) |
               (uint32_t(qp->attr.rnr_retry & 7) << 8) | (uint32_t(qp->attr.retry_cnt & 7) << 12) |
               (uint32_t(qp->attr.timeout & 31) << 16);
      if (g_cma_mode != kCmaOff && qp->ex.qp_base.qp_type == IBV_QPT_RC) {
        if (g_cma_mode != kShmRequired) h.flags |= kFCma;
        if (g_cma_mode != kCmaRequired && (c->shm || ShmCreate(c))) {
          h.flags |= kFShm;
          h.len = uint32_t(c->shm_fd);
        }
        if (g_cma_mode == kCmaRequired || g_cma_mode == kShmRequired) h.flags |= kFCmaAny;
        h.psn = uint32_t(getpid());
        h.arg0 = g_boot;
        h.arg1 = reinterpret_cast<uint64_t>(&g_cookie);
        h.raddr = g_cookie;
        h.imm = g_netns;
      }
      TxAddHdr(c, h);
      c->hello_sent = true;
    }
    if (qp->st == QpState::kRts) {
      bool uc = qp->ex.qp_base.qp_type == IBV_QPT_UC;
      while (qp->sq_tx != qp->sq_head && c->thn < kTxHdrs && c->tn + int(kMaxSge) + 1 <= kTxIov) {
        SendWqe* w = SqAt(qp, qp->sq_tx);
        if (w->status) {
          // A post-time error: report it in order, then the QP is in error.
          if (qp->sq_done != qp->sq_tx || c->tn) break;
          qp->sq_tx++;
          CompleteSendLocked(qp, w, static_cast<enum ibv_wc_status>(w->status));
          QpToErrorLocked(qp);
          return;
        }
        bool rd = WqeNeedsResp(w->opcode);
        if (rd && qp->rd_outstanding >= (qp->attr.max_rd_atomic ? qp->attr.max_rd_atomic : 1u)) break;
        if ((w->send_flags & IBV_SEND_FENCE) && qp->rd_outstanding) break;
        bool has_data = w->opcode != IBV_WR_ATOMIC_CMP_AND_SWP && w->opcode != IBV_WR_ATOMIC_FETCH_AND_ADD;
        bool big = has_data && w->length && w->length >= g_cma_min;
        bool shm = big && c->shm_ok && w->length <= c->shm_size;
        if (shm) {
          // the ring is full: an acknowledgement comes once the responder
          // has copied out (it frees space before it acknowledges)
          bool room = w->opcode == IBV_WR_RDMA_READ
                          ? c->shm_rhead + w->length - c->shm_rtail <= c->shm_size
                          : c->shm_head + w->length - Shm(c)->req_tail.load(std::memory_order_acquire) <= c->shm_size;
          c->shm_wait = !room;
          if (!room) break;
        }
        WireHdr h{};
        h.dst_qpn = qp->attr.dest_qp_num;
        h.src_qpn = qp->ex.qp_base.qp_num;
        w->psn = qp->next_psn;
        qp->next_psn = (qp->next_psn + 1) & 0xffffff;
        h.psn = w->psn;
        bool payload = true;
        switch (w->opcode) {
          case IBV_WR_SEND_WITH_IMM:
            h.flags |= kFImm;
            h.imm = w->imm;
            [[fallthrough]];
          case IBV_WR_SEND:
            h.op = kOpSend;
            break;
          case IBV_WR_RDMA_WRITE_WITH_IMM:
            h.flags |= kFImm;
            h.imm = w->imm;
            [[fallthrough]];
          case IBV_WR_RDMA_WRITE:
            h.op = kOpWrite;
            h.raddr = w->raddr;
            h.rkey = w->rkey;
            break;
          case IBV_WR_RDMA_READ:
            h.op = kOpReadReq;
            h.raddr = w->raddr;
            h.rkey = w->rkey;
            payload = false;
            break;
          case IBV_WR_ATOMIC_CMP_AND_SWP:
            h.op = kOpCmpSwap;
            h.raddr = w->raddr;
            h.rkey = w->rkey;
            h.arg0 = w->swap;
            h.arg1 = w->cmp;
            payload = false;
            break;
          case IBV_WR_ATOMIC_FETCH_AND_ADD:
            h.op = kOpFetchAdd;
            h.raddr = w->raddr;
            h.rkey = w->rkey;
            h.arg0 = w->swap;
            payload = false;
            break;
        }
        if (w->send_flags & IBV_SEND_SOLICITED) h.flags |= kFSolicited;
        if (!uc) TakeAckForRequest(qp, &h);
        h.len = uint32_t(w->length);
        bool cma = !shm && big && c->cma_ok;
        if (shm) {
          uint64_t pos;
          if (w->opcode == IBV_WR_RDMA_READ) {
            pos = c->shm_rhead;
            c->shm_rhead += w->length;
          } else {
            struct iovec v[kMaxSge];
            int nv = 0;
            if (w->inline_len) {
              v[0].iov_base = &w->sge[w->num_sge];
              v[0].iov_len = w->inline_len;
              nv = 1;
            } else {
              for (uint32_t i = 0; i < w->num_sge; i++) {
                if (!w->sge[i].length) continue;
                Mr* m = LookupKey(w->sge[i].lkey);
                v[nv].iov_base = m ? MrPtr(m, w->sge[i].addr, w->sge[i].length) : nullptr;
                v[nv].iov_len = w->sge[i].length;
                nv++;
              }
            }
            pos = c->shm_head;
            RingIov(ReqRing(c), c->shm_size, pos, v, nv, w->length, true);
            c->shm_head += w->length;
          }
          h.flags |= kFShm;
          h.arg0 = pos;
          TxAddHdr(c, h);
          payload = false;
        } else if (cma) {
          // descriptors instead of the payload: where the responder reads
          // our data (or, for a READ, writes its own)
          uint64_t* d = c->td[c->thn];
          uint32_t nd = 0;
          if (w->inline_len) {
            d[0] = reinterpret_cast<uint64_t>(&w->sge[w->num_sge]);
            d[1] = w->inline_len;
            nd = 1;
          } else {
            for (uint32_t i = 0; i < w->num_sge; i++) {
              if (!w->sge[i].length) continue;
              Mr* m = LookupKey(w->sge[i].lkey);
              d[2 * nd] = reinterpret_cast<uint64_t>(m ? MrPtr(m, w->sge[i].addr, w->sge[i].length) : nullptr);
              d[2 * nd + 1] = w->sge[i].length;
              nd++;
            }
          }
          h.flags |= kFCma;
          h.arg0 = nd;
          TxAddHdr(c, h);
          c->tiov[c->tn].iov_base = d;
          c->tiov[c->tn].iov_len = 16 * nd;
          c->tn++;
          payload = false;
        } else {
          TxAddHdr(c, h);
        }
        if (payload && w->length) {
          if (w->inline_len) {
            c->tiov[c->tn].iov_base = reinterpret_cast<char*>(&w->sge[w->num_sge]);
            c->tiov[c->tn].iov_len = w->inline_len;
            c->tn++;
          } else {
            for (uint32_t i = 0; i < w->num_sge; i++) {
              if (!w->sge[i].length) continue;
              Mr* m = LookupKey(w->sge[i].lkey);
              char* p = m ? MrPtr(m, w->sge[i].addr, w->sge[i].length) : nullptr;
              c->tiov[c->tn].iov_base = p;
              c->tiov[c->tn].iov_len = w->sge[i].length;
              c->tn++;
            }
          }
        }
        if (rd) qp->rd_outstanding++;
        if (qp->sq_done == qp->sq_tx && !qp->first_unacked_ns) qp->first_unacked_ns = NowNs();
        qp->sq_tx++;
        if (uc) {
          c->batch_uc = true;
          c->batch_sq_end = qp->sq_tx;
        }
      }
    }
    if (c->tn == 0) {
      SetEvents(c, EPOLLIN);
      return;
    }
  }
}

// Responder transmit on qp->in: responses in order (qp->mu held).
void PumpIn(Qp* qp) {
  Conn* c = qp->in;
  if (!c || c->dead) return;
  bool broken = false;
  for (;;) {
    if (c->ti < c->tn) {
      if (!TxWrite(c, &broken)) {
        if (!broken) SetEvents(c, c->parked ? uint32_t(EPOLLOUT) : uint32_t(EPOLLIN | EPOLLOUT));
        return;
      }
    }
    // retire the batch
    bool to_err = false;
    while (c->batch_resp) {
      Qp::Resp& r = qp->resp[qp->resp_head];
      if (r.op == kOpNak && qp->goto_err_after_resp) to_err = true;
      qp->resp_head = (qp->resp_head + 1) % qp->resp_cap;
      qp->resp_count--;
      c->batch_resp--;
    }
    c->tn = c->ti = c->thn = 0;
    if (to_err) {
      QpToErrorLocked(qp);
      return;
    }
    uint32_t idx = qp->resp_head;
    for (uint32_t k = 0; k < qp->resp_count && c->thn < kTxHdrs && c->tn + 2 <= kTxIov; k++) {
      Qp::Resp& r = qp->resp[idx];
      WireHdr h{};
      h.op = r.op;
      h.syndrome = r.syndrome;
      h.psn = r.psn;
      h.dst_qpn = qp->attr.dest_qp_num;
      h.src_qpn = qp->ex.qp_base.qp_num;
      h.len = (r.op == kOpReadResp) ? r.len : 0;
      h.arg0 = r.value;
      TxAddHdr(c, h);
      if (r.op == kOpReadResp && r.len) {
        c->tiov[c->tn].iov_base = reinterpret_cast<void*>(r.raddr_ptr);
        c->tiov[c->tn].iov_len = r.len;
        c->tn++;
      }
      c->batch_resp++;
      idx = (idx + 1) % qp->resp_cap;
      if (r.op == kOpNak) break;
    }
    if (c->tn == 0) {
      SetEvents(c, c->parked ? 0u : uint32_t(EPOLLIN));
      return;
    }
  }
}

// Queues a response (qp->mu held). ACKs coalesce into an unsent tail ACK.
bool QueueResp(Qp* qp, uint8_t op, uint32_t psn, uint16_t syn = 0, uint64_t ptr = 0, uint32_t len = 0,
               uint64_t value = 0) {
  if (op == kOpAck && qp->resp_count) {
    uint32_t tail = (qp->resp_head + qp->resp_count - 1) % qp->resp_cap;
    bool tail_unsent = qp->in && (qp->resp_count > qp->in->batch_resp);
    if (qp->resp[tail].op == kOpAck && tail_unsent) {
      qp->resp[tail].psn = psn;
      return true;
    }
  }
  if (qp->resp_count == qp->resp_cap) return false;
  Qp::Resp& r = qp->resp[(qp->resp_head + qp->resp_count) % qp->resp_cap];
  r.op = op;
  r.psn = psn;
  r.syndrome = syn;
  r.raddr_ptr = ptr;
  r.len = len;
  r.value = value;
  qp->resp_count++;
  return true;
}

// ------------------------------------------------------------------ rx ----
enum RxStatus { kRxAgain, kRxClosed, kRxParked, kRxBudget };
enum Verdict { kVPayload, kVDone, kVPark, kVClose, kVNeedMore };

// 1: got bytes, 0: EOF, -1: EAGAIN, -2: error
int Fill(Conn* c) {
  if (c->st_off == c->st_len) c->st_off = c->st_len = 0;
  if (c->st_len == kStage) {
    if (c->st_off == 0) return -2;
    memmove(c->stage, c->stage + c->st_off, c->st_len - c->st_off);
    c->st_len -= c->st_off;
    c->st_off = 0;
  }
  if (c->drained) return -1;
  for (;;) {
    size_t want = kStage - c->st_len;
    ssize_t n = recv(c->fd, c->stage + c->st_len, want, MSG_DONTWAIT);
    if (n > 0) {
      c->st_len += uint32_t(n);
      if (size_t(n) < want) c->drained = true;
      return 1;
    }
    if (n == 0) return 0;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return -1;
    return -2;
  }
}

bool Ensure(Conn* c, uint32_t n, int* rc) {
  while (c->st_len - c->st_off < n) {
    if (kStage - c->st_off < n) {
      memmove(c->stage, c->stage + c->st_off, c->st_len - c->st_off);
      c->st_len -= c->st_off;
      c->st_off = 0;
    }
    int r = Fill(c);
    if (r <= 0) {
      *rc = r;
      return false;
    }
  }
  return true;
}

void Sink(Conn* c, const char* src, uint64_t n) {
  if (c->discard) return;
  while (n && c->iov_i < c->niov) {
    struct iovec& v = c->iov[c->iov_i];
    size_t k = v.iov_len < n ? v.iov_len : size_t(n);
    memcpy(v.iov_base, src, k);
    v.iov_base = static_cast<char*>(v.iov_base) + k;
    v.iov_len -= k;
    src += k;
    n -= k;
    if (!v.iov_len) c->iov_i++;
  }
}

// Sets c->iov from a receive WQE's SGEs; false when an SGE is not valid.
bool IovFromSges(Conn* c, const struct ibv_sge* sge, uint32_t n, uint64_t len, struct ibv_pd* pd) {
  c->niov = c->iov_i = 0;
  uint64_t left = len;
  for (uint32_t i = 0; i < n && left; i++) {
    if (!sge[i].length) continue;
    Mr* m = LookupKey(sge[i].lkey);
    if (!m || m->mr.pd != pd || !(m->access & IBV_ACCESS_LOCAL_WRITE)) return false;
    char* p = MrPtr(m, sge[i].addr, sge[i].length);
    if (!p) return false;
    size_t k = sge[i].length < left ? sge[i].length : size_t(left);
    c->iov[c->niov].iov_base = p;
    c->iov[c->niov].iov_len = k;
    c->niov++;
    left -= k;
  }
  return true;
}

uint64_t SgeTotal(const struct ibv_sge* sge, uint32_t n) {
  uint64_t t = 0;
  for (uint32_t i = 0; i < n; i++) t += sge[i].length;
  return t;
}

// Checks a remote access (responder). Returns the target pointer or nullptr.
char* CheckRemote(Qp* qp, uint32_t rkey, uint64_t addr, uint64_t len, int need) {
  if (!(qp->attr.qp_access_flags & need)) return nullptr;
  Mr* m = LookupKey(rkey);
  if (!m || m->mr.pd != qp->ex.qp_base.pd || !(m->access & need)) return nullptr;
  if (len == 0) return static_cast<char*>(m->mr.addr);
  return MrPtr(m, addr, len);
}

void RecvCompletion(Qp* qp, Conn* c, enum ibv_wc_status st, uint32_t byte_len) {
  struct ibv_wc wc;
  memset(&wc, 0, sizeof wc);
  wc.wr_id = c->rw->wr_id;
  wc.status = st;
  wc.qp_num = qp->ex.qp_base.qp_num;
  wc.src_qp = c->h.src_qpn;
  if (st == IBV_WC_SUCCESS) {
    wc.byte_len = byte_len;
    if (c->h.op == kOpWrite) {
      wc.opcode = IBV_WC_RECV_RDMA_WITH_IMM;
    } else {
      wc.opcode = IBV_WC_RECV;
    }
    if (c->h.flags & kFImm) {
      wc.wc_flags |= IBV_WC_WITH_IMM;
      wc.imm_data = c->h.imm;
    }
  } else {
    wc.opcode = IBV_WC_RECV;
  }
  if (host().mode == Personality::kIb) wc.slid = IpToLid(c->peer_ip);
  CqPush(qp->rcq, wc, (c->h.flags & kFSolicited) != 0);
  c->have_rw = false;
}

void BeginDiscard(Conn* c, uint64_t len) {
  c->discard = true;
  c->niov = c->iov_i = 0;
  c->remaining = len;
}

void NoteAck(Qp* qp, uint32_t psn);
void CompleteAcked(Qp* qp);

// Responder side of RC/UC (qp->mu held).
Verdict DispatchIn(Conn* c, Qp* qp) {
  WireHdr& h = c->h;
  bool rc = qp->ex.qp_base.qp_type == IBV_QPT_RC;
  c->discard = false;
  c->niov = c->iov_i = 0;
  c->fin = kFinNone;
  uint64_t payload = (h.op == kOpSend || h.op == kOpWrite) ? h.len : 0;
  if ((h.flags & kFAck) && rc && qp->st == QpState::kRts) {
    NoteAck(qp, h.qkey);
    CompleteAcked(qp);
  }
  if (qp->st != QpState::kRtr && qp->st != QpState::kRts) {
    // Error (or reset) state: drop everything.
    c->st_off += sizeof(WireHdr);
    BeginDiscard(c, payload);
    c->fin = kFinDrop;
    return kVPayload;
  }
  auto nak = [&](uint16_t code) {
    c->st_off += sizeof(WireHdr);
    BeginDiscard(c, payload);
    c->fin = rc ? kFinNakErr : kFinDrop;
    c->fin_nak = code;
    return kVPayload;
  };
  switch (h.op) {
    case kOpSend:
    case kOpWrite: {
      bool needs_recv = h.op == kOpSend || (h.flags & kFImm);
      if (h.op == kOpWrite) {
        char* p = h.len ? CheckRemote(qp, h.rkey, h.raddr, h.len, IBV_ACCESS_REMOTE_WRITE)
                        : reinterpret_cast<char*>(1);
        if (!p || (h.len == 0 && !(qp->attr.qp_access_flags & IBV_ACCESS_REMOTE_WRITE)))
          return nak(qp->attr.qp_access_flags & IBV_ACCESS_REMOTE_WRITE ? kNakAccess : kNakInvReq);
        if (h.len) {
          c->iov[0].iov_base = p;
          c->iov[0].iov_len = h.len;
          c->niov = 1;
        }
      }
      if (needs_recv) {
        if (!c->have_rw) {
          if (!TakeRecv(qp, c->rw, kMaxSge)) {
            if (!rc) return nak(0);  // UC: silently dropped
            return kVPark;
          }
          c->have_rw = true;
        }
        if (c->rw->status) {
          c->fin_status = c->rw->status;
          RecvCompletion(qp, c, static_cast<enum ibv_wc_status>(c->rw->status), 0);
          return nak(kNakOp);
        }
        if (h.op == kOpSend) {
          if (SgeTotal(c->rw->sge, c->rw->num_sge) < h.len) {
            RecvCompletion(qp, c, IBV_WC_LOC_LEN_ERR, 0);
            return nak(kNakInvReq);
          }
          if (!IovFromSges(c, c->rw->sge, c->rw->num_sge, h.len, qp->ex.qp_base.pd)) {
            RecvCompletion(qp, c, IBV_WC_LOC_PROT_ERR, 0);
            return nak(kNakOp);
          }
        }
        c->fin = kFinRecv;
      } else {
        c->fin = kFinAck;
      }
      c->st_off += sizeof(WireHdr);
      c->remaining = h.len;
      return kVPayload;
    }
    case kOpReadReq:
    case kOpCmpSwap:
    case kOpFetchAdd: {
      if (!rc) return nak(0);
      if (qp->resp_count + 2 > qp->resp_cap) return kVPark;  // wait for responses to drain
      if (h.op == kOpReadReq) {
        char* p = CheckRemote(qp, h.rkey, h.raddr, h.len, IBV_ACCESS_REMOTE_READ);
        if (!p) return nak(qp->attr.qp_access_flags & IBV_ACCESS_REMOTE_READ ? kNakAccess : kNakInvReq);
        c->st_off += sizeof(WireHdr);
        if (h.flags & kFShm) {
          // the requester reserved [arg0, arg0 + len) of the response ring
          struct iovec src = {p, h.len};
          RingIov(RespRing(c), c->shm_size, h.arg0, &src, 1, h.len, true);
          QueueResp(qp, kOpReadResp, h.psn, kSynShmPlaced, 0, 0, h.arg0);
          return kVDone;
        }
        if (h.flags & kFCma) {
          // one-copy: place the data now, in order with the requests before it
          struct iovec src = {p, h.len};
          if (!CmaCopy(c->peer_pid, true, &src, 1, c->stage + c->st_off, uint32_t(h.arg0), h.len)) {
            c->st_off -= sizeof(WireHdr);
            return nak(kNakOp);
          }
          QueueResp(qp, kOpReadResp, h.psn, kSynCmaPlaced);
          return kVDone;
        }
        QueueResp(qp, kOpReadResp, h.psn, 0, reinterpret_cast<uint64_t>(p), h.len);
        return kVDone;
      }
      if (h.raddr & 7) return nak(kNakInvReq);
      char* p = CheckRemote(qp, h.rkey, h.raddr, 8, IBV_ACCESS_REMOTE_ATOMIC);
      if (!p) return nak(qp->attr.qp_access_flags & IBV_ACCESS_REMOTE_ATOMIC ? kNakAccess : kNakInvReq);
      uint64_t* t = reinterpret_cast<uint64_t*>(p);
      uint64_t orig;
      if (h.op == kOpCmpSwap) {
        orig = h.arg1;
        __atomic_compare_exchange_n(t, &orig, h.arg0, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
      } else {
        orig = __atomic_fetch_add(t, h.arg0, __ATOMIC_SEQ_CST);
      }
      c->st_off += sizeof(WireHdr);
      QueueResp(qp, kOpAtomicResp, h.psn, 0, 0, 0, orig);
      return kVDone;
    }
    default:
      return kVClose;
  }
}

// Requester side: responses on qp->out (qp->mu held).
// Completes what an acknowledgement carried on a peer's request covers, in
// order, up to the first WQE still waiting for its READ/atomic response.
void CompleteAcked(Qp* qp) {
  if (!qp->ack_valid) return;
  bool any = false;
  while (qp->sq_done != qp->sq_tx) {
    SendWqe* w = SqAt(qp, qp->sq_done);
    if (!PsnLe(w->psn, qp->ack_psn) || WqeNeedsResp(w->opcode)) break;
    CompleteSendLocked(qp, w, IBV_WC_SUCCESS);
    any = true;
  }
  if (any) qp->first_unacked_ns = (qp->sq_done != qp->sq_tx) ? NowNs() : 0;
}

void NoteAck(Qp* qp, uint32_t psn) {
  if (!qp->ack_valid || PsnLe(qp->ack_psn, psn)) qp->ack_psn = psn;
  qp->ack_valid = true;
}

// A response on the responses' stream: everything up to psn is done.
void CompleteUpTo(Qp* qp, uint32_t psn) {
  while (qp->sq_done != qp->sq_tx) {
    SendWqe* w = SqAt(qp, qp->sq_done);
    if (!PsnLe(w->psn, psn)) break;
    if (WqeNeedsResp(w->opcode) && qp->rd_outstanding) qp->rd_outstanding--;
    CompleteSendLocked(qp, w, IBV_WC_SUCCESS);
  }
  qp->first_unacked_ns = (qp->sq_done != qp->sq_tx) ? NowNs() : 0;
  NoteAck(qp, psn);
  CompleteAcked(qp);  // acknowledgements that came on requests, beyond psn
}

enum ibv_wc_status NakStatus(uint16_t code) {
  switch (code) {
    case kNakInvReq: return IBV_WC_REM_INV_REQ_ERR;
    case kNakAccess: return IBV_WC_REM_ACCESS_ERR;
    case kNakOp: return IBV_WC_REM_OP_ERR;
    case kNakRnr: return IBV_WC_RNR_RETRY_EXC_ERR;
    default: return IBV_WC_RETRY_EXC_ERR;
  }
}

void FailHead(Qp* qp, enum ibv_wc_status st) {
  if (qp->st == QpState::kErr) return;
  if (qp->sq_done != qp->sq_head) {
    SendWqe* w = SqAt(qp, qp->sq_done);
    if (qp->sq_tx == qp->sq_done) qp->sq_tx++;
    CompleteSendLocked(qp, w, st);
  }
  QpToErrorLocked(qp);
}

SendWqe* FindPsn(Qp* qp, uint32_t psn) {
  for (uint32_t i = qp->sq_done; i != qp->sq_tx; i++) {
    SendWqe* w = SqAt(qp, i);
    if (w->psn == psn) return w;
  }
  return nullptr;
}

Verdict DispatchOut(Conn* c, Qp* qp) {
  WireHdr& h = c->h;
  c->discard = false;
  c->niov = c->iov_i = 0;
  c->fin = kFinNone;
  c->st_off += sizeof(WireHdr);
  uint64_t payload = h.op == kOpReadResp ? h.len : 0;
  if (qp->st != QpState::kRts && qp->st != QpState::kRtr) {
    BeginDiscard(c, payload);
    c->fin = kFinDrop;
    return kVPayload;
  }
  switch (h.op) {
    case kOpAck:
      CompleteUpTo(qp, h.psn);
      return kVDone;
    case kOpNak: {
      SR_LOG("softrdma: qp 0x%x: NAK %u for psn 0x%x", qp->ex.qp_base.qp_num, h.syndrome, h.psn);
      if (h.syndrome == kNakNoQp) return kVClose;  // no such QP there: like silence, see Timers
      SendWqe* w = FindPsn(qp, h.psn);
      if (w) {
        // everything before it succeeded
        uint32_t prev = (h.psn - 1) & 0xffffff;
        CompleteUpTo(qp, prev);
      }
      FailHead(qp, NakStatus(h.syndrome));
      return kVDone;
    }
    case kOpCmaOk:
      c->cma_ok = (h.syndrome & kCmaOkCma) != 0;
      if (c->cma_ok)
        SR_LOG("softrdma: qp 0x%x: one-copy path to qp 0x%x", qp->ex.qp_base.qp_num, qp->attr.dest_qp_num);
      if ((h.syndrome & kCmaOkShm) && c->shm) {
        c->shm_ok = true;
        close(c->shm_fd);  // the responder has its own mapping now
        c->shm_fd = -1;
        SR_LOG("softrdma: qp 0x%x: shared-memory ring to qp 0x%x", qp->ex.qp_base.qp_num, qp->attr.dest_qp_num);
      }
      return kVDone;
    case kOpReadResp: {
      SendWqe* w = FindPsn(qp, h.psn);
      if (w && h.syndrome == kSynCmaPlaced && h.len == 0 && w->opcode == IBV_WR_RDMA_READ) {
        CompleteUpTo(qp, h.psn);
        return kVDone;
      }
      if (w && h.syndrome == kSynShmPlaced && h.len == 0 && w->opcode == IBV_WR_RDMA_READ && c->shm_ok &&
          h.arg0 == c->shm_rtail && w->length <= c->shm_rhead - c->shm_rtail) {
        struct iovec v[kMaxSge];
        int nv = 0;
        for (uint32_t i = 0; i < w->num_sge; i++) {
          if (!w->sge[i].length) continue;
          Mr* m = LookupKey(w->sge[i].lkey);
          v[nv].iov_base = MrPtr(m, w->sge[i].addr, w->sge[i].length);
          v[nv].iov_len = w->sge[i].length;
          nv++;
        }
        RingIov(RespRing(c), c->shm_size, h.arg0, v, nv, w->length, false);
        c->shm_rtail += w->length;
        CompleteUpTo(qp, h.psn);
        return kVDone;
      }
      if (!w || w->opcode != IBV_WR_RDMA_READ || h.len != w->length) return kVClose;
      // The destination was validated at post time.
      c->niov = c->iov_i = 0;
      for (uint32_t i = 0; i < w->num_sge; i++) {
        if (!w->sge[i].length) continue;
        Mr* m = LookupKey(w->sge[i].lkey);
        c->iov[c->niov].iov_base = MrPtr(m, w->sge[i].addr, w->sge[i].length);
        c->iov[c->niov].iov_len = w->sge[i].length;
        c->niov++;
      }
      c->remaining = h.len;
      c->fin = kFinReadResp;
      return kVPayload;
    }
    case kOpAtomicResp: {
      SendWqe* w = FindPsn(qp, h.psn);
      if (!w || !WqeNeedsResp(w->opcode)) return kVClose;
      Mr* m = LookupKey(w->sge[0].lkey);
      char* p = m ? MrPtr(m, w->sge[0].addr, 8) : nullptr;
      if (p) memcpy(p, &h.arg0, 8);
      CompleteUpTo(qp, h.psn);
      return kVDone;
    }
    default:
      return kVClose;
  }
}

void FinishFrame(Conn* c, Qp* qp) {
  WireHdr& h = c->h;
  switch (c->fin) {
    case kFinRecv:
      RecvCompletion(qp, c, IBV_WC_SUCCESS, h.len);
      if (qp->ex.qp_base.qp_type == IBV_QPT_RC) QueueResp(qp, kOpAck, h.psn);
      break;
    case kFinAck:
      if (qp->ex.qp_base.qp_type == IBV_QPT_RC) QueueResp(qp, kOpAck, h.psn);
      break;
    case kFinNakErr:
      QueueResp(qp, kOpNak, h.psn, c->fin_nak);
      qp->goto_err_after_resp = true;
      break;
    case kFinReadResp:
      CompleteUpTo(qp, h.psn);
      break;
    default:
      break;
  }
  c->fin = kFinNone;
  c->discard = false;
}

// UD reception: the whole frame is in the stage buffer.
Verdict DispatchUd(Conn* c) {
  WireHdr h;
  memcpy(&h, c->stage + c->st_off, sizeof h);
  if (h.op != kOpUdSend || h.len > kMtu) return kVClose;
  int rc;
  if (!Ensure(c, sizeof(WireHdr) + h.len, &rc)) return rc == -1 ? kVNeedMore : kVClose;
  const char* data = c->stage + c->st_off + sizeof(WireHdr);
  c->st_off += sizeof(WireHdr) + h.len;
  Qp* qp = EngineLookupQp(h.dst_qpn);
  if (!qp) return kVDone;
  std::lock_guard<std::mutex> g(qp->mu);
  if (qp->ex.qp_base.qp_type != IBV_QPT_UD || (qp->st != QpState::kRtr && qp->st != QpState::kRts))
    return kVDone;
  if (h.qkey != qp->attr.qkey) return kVDone;
  if (!TakeRecv(qp, c->rw, kMaxSge)) return kVDone;  // UD: no receive, no delivery
  struct ibv_wc wc;
  memset(&wc, 0, sizeof wc);
  wc.wr_id = c->rw->wr_id;
  wc.qp_num = qp->ex.qp_base.qp_num;
  wc.src_qp = h.src_qpn;
  wc.opcode = IBV_WC_RECV;
  wc.pkey_index = 0;
  if (host().mode == Personality::kIb) {
    wc.slid = IpToLid(h.rkey);
  }
  uint64_t cap = SgeTotal(c->rw->sge, c->rw->num_sge);
  if (c->rw->status) {
    wc.status = static_cast<enum ibv_wc_status>(c->rw->status);
  } else if (cap < uint64_t(h.len) + 40) {
    wc.status = IBV_WC_LOC_LEN_ERR;
  } else {
    // 40 bytes of GRH space, then the payload.
    unsigned char grh[40];
    memset(grh, 0, sizeof grh);
    bool has_grh = (h.flags & kFGrh) != 0;
    if (has_grh) {
      grh[0] = 0x60;
      uint16_t plen = htons(uint16_t(h.len));
      memcpy(grh + 4, &plen, 2);
      grh[6] = 0x1b;
      grh[7] = 64;
      // sgid: the sender's GID of the same kind as the dgid it used
      union ibv_gid sg;
      memset(&sg, 0, sizeof sg);
      uint32_t nip = htonl(h.rkey);
      if (h.flags & kFGidMapped) {
        sg.raw[10] = sg.raw[11] = 0xff;
        memcpy(&sg.raw[12], &nip, 4);
      } else {
        sg.raw[0] = 0xfe;
        sg.raw[1] = 0x80;
        uint8_t g[8] = {0x02, 0x53, 0x52, uint8_t(host().mode == Personality::kIb ? 1 : 2), 0, 0, 0, 0};
        memcpy(&g[4], &nip, 4);
        memcpy(&sg.raw[8], g, 8);
      }
      memcpy(grh + 8, sg.raw, 16);
      memcpy(grh + 24, &h.raddr, 8);
      memcpy(grh + 32, &h.arg0, 8);
      wc.wc_flags |= IBV_WC_GRH;
    }
    bool ok = true;
    // scatter grh (only if present) and payload
    uint64_t off = 0;
    const uint64_t total = 40 + uint64_t(h.len);
    for (uint32_t i = 0; i < c->rw->num_sge && off < total && ok; i++) {
      const struct ibv_sge& s = c->rw->sge[i];
      if (!s.length) continue;
      Mr* m = LookupKey(s.lkey);
      uint64_t k = s.length < total - off ? s.length : total - off;
      char* p = (m && m->mr.pd == qp->ex.qp_base.pd && (m->access & IBV_ACCESS_LOCAL_WRITE)) ? MrPtr(m, s.addr, k)
                                                                                             : nullptr;
      if (!p) {
        ok = false;
        break;
      }
      for (uint64_t j = 0; j < k;) {
        uint64_t pos = off + j;
        if (pos < 40) {
          uint64_t n = 40 - pos < k - j ? 40 - pos : k - j;
          if (has_grh) memcpy(p + j, grh + pos, n);
          j += n;
        } else {
          uint64_t n = k - j;
          memcpy(p + j, data + (pos - 40), n);
          j += n;
        }
      }
      off += k;
    }
    if (!ok) {
      wc.status = IBV_WC_LOC_PROT_ERR;
    } else {
      wc.status = IBV_WC_SUCCESS;
      wc.byte_len = uint32_t(total);
      if (h.flags & kFImm) {
        wc.wc_flags |= IBV_WC_WITH_IMM;
        wc.imm_data = h.imm;
      }
    }
  }
  CqPush(qp->rcq, wc, (h.flags & kFSolicited) != 0);
  return kVDone;
}

Verdict DispatchHello(Conn* c);

RxStatus RxRun(Conn* c, Qp* qp) {
  uint64_t budget = 8ull << 20;
  c->drained = false;
  for (;;) {
    if (c->dead) return kRxClosed;
    if (!c->in_payload) {
      int rc;
      if (!Ensure(c, sizeof(WireHdr), &rc)) return rc == -1 ? kRxAgain : kRxClosed;
      memcpy(&c->h, c->stage + c->st_off, sizeof(WireHdr));
      uint32_t ndesc = 0;
      bool shm = c->role == Role::kIn && (c->h.flags & kFShm);
      if (shm && (!c->shm || c->h.len > c->shm_size || (c->h.flags & kFCma))) return kRxClosed;
      if (c->role == Role::kIn && (c->h.flags & kFCma)) {
        if (!c->cma || c->h.arg0 > kMaxSge) return kRxClosed;
        ndesc = uint32_t(c->h.arg0);
        if (!Ensure(c, sizeof(WireHdr) + 16 * ndesc, &rc)) return rc == -1 ? kRxAgain : kRxClosed;
      }
      Verdict v;
      switch (c->role) {
        case Role::kPending: v = DispatchHello(c); break;
        case Role::kIn: v = DispatchIn(c, qp); break;
        case Role::kOut: v = DispatchOut(c, qp); break;
        case Role::kUdIn: v = DispatchUd(c); break;
        default: v = kVClose;
      }
      if (v == kVPark) return kRxParked;
      if (v == kVClose) return kRxClosed;
      if (v == kVNeedMore) return kRxAgain;
      if (shm && (c->h.op == kOpSend || c->h.op == kOpWrite)) {
        // the payload is in the request ring: copy it out (unless the
        // checks said discard), then free its space
        if (v == kVPayload) {
          if (!c->discard && c->niov) RingIov(ReqRing(c), c->shm_size, c->h.arg0, c->iov, c->niov, c->h.len, false);
          c->remaining = 0;
          c->niov = c->iov_i = 0;
        }
        Shm(c)->req_tail.store(c->h.arg0 + c->h.len, std::memory_order_release);
      }
      if (ndesc || (c->role == Role::kIn && (c->h.flags & kFCma))) {
        // the payload is in the requester's memory, not on the stream
        const char* desc = c->stage + c->st_off;
        c->st_off += 16 * ndesc;
        if (v == kVPayload) {
          if (!c->discard && c->niov && !CmaCopy(c->peer_pid, false, c->iov, c->niov, desc, ndesc, c->h.len)) {
            if (c->fin == kFinRecv) RecvCompletion(qp, c, IBV_WC_GENERAL_ERR, 0);
            c->fin = kFinNakErr;
            c->fin_nak = kNakOp;
          }
          c->remaining = 0;
          c->niov = c->iov_i = 0;
        }
      }
      if (v == kVDone) {
        if (c->role == Role::kPending || (c->role == Role::kIn && qp != c->qp.load())) return kRxBudget;
        continue;
      }
      c->in_payload = true;
    }
    while (c->remaining) {
      uint32_t avail = c->st_len - c->st_off;
      if (avail) {
        uint64_t n = avail < c->remaining ? avail : c->remaining;
        Sink(c, c->stage + c->st_off, n);
        c->st_off += uint32_t(n);
        c->remaining -= n;
        continue;
      }
      if (!c->discard && c->remaining >= 16384 && c->iov_i < c->niov) {
        struct iovec v[kMaxSge + 1];
        int nv = 0;
        uint64_t want = c->remaining;
        for (int i = c->iov_i; i < c->niov && want; i++) {
          v[nv] = c->iov[i];
          if (v[nv].iov_len > want) v[nv].iov_len = want;
          want -= v[nv].iov_len;
          nv++;
        }
        if (c->drained) return kRxAgain;
        ssize_t n = readv(c->fd, v, nv);
        if (n == 0) return kRxClosed;
        if (n < 0) {
          if (errno == EINTR) continue;
          if (errno == EAGAIN || errno == EWOULDBLOCK) return kRxAgain;
          return kRxClosed;
        }
        uint64_t left = uint64_t(n);
        if (left < c->remaining) c->drained = true;
        c->remaining -= left;
        while (left && c->iov_i < c->niov) {
          struct iovec& iv = c->iov[c->iov_i];
          size_t k = iv.iov_len < left ? iv.iov_len : size_t(left);
          iv.iov_base = static_cast<char*>(iv.iov_base) + k;
          iv.iov_len -= k;
          left -= k;
          if (!iv.iov_len) c->iov_i++;
        }
        if (budget < uint64_t(n)) return kRxBudget;
        budget -= uint64_t(n);
        continue;
      }
      int r = Fill(c);
      if (r == 0 || r == -2) return kRxClosed;
      if (r == -1) return kRxAgain;
    }
    c->in_payload = false;
    FinishFrame(c, qp);
    if (budget < c->h.len + 64) {
      // Frames already in the stage buffer raise no epoll event: come back
      // to them after the other connections had their turn.
      if (c->st_off < c->st_len && !c->in_again) {
        c->in_again = true;
        g_eng->again.push_back(c);
      }
      return kRxBudget;
    }
    budget -= c->h.len + 64;
  }
}

// An inbound connection says which QP it is for.
Verdict DispatchHello(Conn* c) {
  WireHdr& h = c->h;
  if (h.op != kOpHello) return kVClose;
  uint32_t kind = h.qkey & 0xff;
  if (kind == kKindUd) {
    c->st_off += sizeof(WireHdr);
    c->role = Role::kUdIn;
    c->kind = kKindUd;
    return kVDone;
  }
  Qp* qp = EngineLookupQp(h.dst_qpn);
  auto reject = [&]() {
    WireHdr n{};
    n.op = kOpNak;
    n.syndrome = kNakNoQp;
    n.psn = 0xffffffff;
    ssize_t r = send(c->fd, &n, sizeof n, MSG_DONTWAIT | MSG_NOSIGNAL);
    (void)r;
    return kVClose;
  };
  if (!qp) return reject();
  std::lock_guard<std::mutex> g(qp->mu);
  uint32_t want = qp->ex.qp_base.qp_type == IBV_QPT_RC ? uint32_t(kKindRc)
                  : (qp->ex.qp_base.qp_type == IBV_QPT_UC ? uint32_t(kKindUc) : 0u);
  if (want != kind) return reject();
  if (qp->st == QpState::kReset || qp->st == QpState::kInit ||
      (qp->st != QpState::kErr && qp->attr.dest_qp_num != h.src_qpn)) {
    // Not ready yet: hold the connection (the requester would retry).
    SetWaiting(c, NowNs() + kPendingHelloNs);
    return kVPark;
  }
  if (qp->st == QpState::kErr) return reject();
  bool cma = kind == kKindRc && CmaAccept(h);
  if (!cma && kind == kKindRc && g_cma_mode == kCmaRequired) {
    SR_LOG("softrdma: qp 0x%x: SOFTRDMA_TRANSPORT=cma and qp 0x%x cannot use one-copy: refused",
           qp->ex.qp_base.qp_num, h.src_qpn);
    return reject();
  }
  bool shm = kind == kKindRc && !c->shm && ShmAccept(c, h);
  if (!shm && kind == kKindRc && g_cma_mode == kShmRequired) {
    SR_LOG("softrdma: qp 0x%x: SOFTRDMA_TRANSPORT=shm and qp 0x%x cannot use a shared-memory ring: refused",
           qp->ex.qp_base.qp_num, h.src_qpn);
    return reject();
  }
  c->st_off += sizeof(WireHdr);
  if (qp->in) {
    Conn* old = qp->in;
    old->qp.store(nullptr);
    KillConn(old);
  }
  c->role = Role::kIn;
  c->kind = kind;
  c->peer_qpn = h.src_qpn;
  c->peer_ip = h.rkey;
  c->hello_opts = h.qkey;
  c->qp.store(qp);
  c->parked = false;
  qp->in = c;
  qp->resp_head = qp->resp_count = 0;
  qp->goto_err_after_resp = false;
  c->cma = cma;
  if (cma) c->peer_pid = h.psn;
  if (cma || shm) QueueResp(qp, kOpCmaOk, 0, uint16_t((cma ? kCmaOkCma : 0) | (shm ? kCmaOkShm : 0)));
  return kVDone;
}

// A responder stream stopped: no receive WQE (RNR) or too many outstanding
// reads. With a finite rnr_retry the requester gives up after its RNR retries:
// 10 ms per retry here (min_rnr_timer is not modelled finer than that).
void OnParked(Conn* c) {
  c->parked = true;
  uint64_t dl = 0;
  uint32_t rnr = (c->hello_opts >> 8) & 7;
  if ((c->h.op == kOpSend || c->h.op == kOpWrite) && rnr != 7) dl = NowNs() + 10000000ull * (rnr + 1);
  SetWaiting(c, dl);
}

// In an application thread's pass, a lone ACK is not written at once: that
// thread is likely to answer with a request of its own (a ping-pong), which
// carries it (TakeAckForRequest), and the next pass sends it otherwise.
bool DeferAck(Qp* qp, Conn* c) {
  if (!g_eng->app_pass || c->tn || qp->resp_count != 1 || qp->goto_err_after_resp ||
      qp->resp[qp->resp_head].op != kOpAck || qp->ex.qp_base.qp_type != IBV_QPT_RC)
    return false;
  if (!qp->ack_deferred) {
    qp->ack_deferred = true;
    g_eng->deferred.push_back(qp->ex.qp_base.qp_num);
  }
  return true;
}

void FlushDeferred() {
  // PumpIn defers nothing: the list does not change under this loop, and
  // clear() keeps its capacity (the data path does not allocate)
  for (uint32_t qpn : g_eng->deferred) {
    Qp* qp = EngineLookupQp(qpn);
    if (!qp) continue;
    std::lock_guard<std::mutex> g(qp->mu);
    if (!qp->ack_deferred) continue;
    qp->ack_deferred = false;
    PumpIn(qp);
  }
  g_eng->deferred.clear();
}

// Handles readable/writable on a connection (progress thread).
void HandleConn(Conn* c, uint32_t events) {
  if (c->dead) return;
  Qp* qp = c->qp.load();
  if (c->role == Role::kPending || c->role == Role::kUdIn) {
    RxStatus s = RxRun(c, nullptr);
    if (s == kRxClosed) {
      KillConn(c);
      return;
    }
    if (s == kRxParked) {
      SetEvents(c, 0);
      return;
    }
    if (c->role == Role::kIn) {
      // just attached: continue with its QP
      qp = c->qp.load();
      if (!qp) return;
      std::lock_guard<std::mutex> g(qp->mu);
      if (c->qp.load() != qp) return;
      SetEvents(c, EPOLLIN);
      RxStatus s2 = RxRun(c, qp);
      if (s2 == kRxParked) OnParked(c);
      PumpIn(qp);
      if (s2 == kRxClosed) {
        if (qp->in == c) qp->in = nullptr;
        c->qp.store(nullptr);
        KillConn(c);
      }
    }
    return;
  }
  if (!qp) return;  // detached: a close request is on its way
  std::lock_guard<std::mutex> g(qp->mu);
  if (c->qp.load() != qp || c->dead) return;
  if (c->role == Role::kOut) {
    if (!c->connected) {
      int err = 0;
      socklen_t l = sizeof err;
      getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
      if (err || !(events & EPOLLOUT)) {
        if (!err && !(events & (EPOLLERR | EPOLLHUP))) return;
        qp->out = nullptr;
        c->qp.store(nullptr);
        KillConn(c);
        qp->next_connect_ns = NowNs() + kReconnectNs;
        return;
      }
      c->connected = true;
      SetEvents(c, EPOLLIN);
    }
    RxStatus s = kRxAgain;
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) s = RxRun(c, qp);
    if (s == kRxClosed) {
      qp->out = nullptr;
      c->qp.store(nullptr);
      KillConn(c);
      if (qp->sq_done != qp->sq_head && qp->st == QpState::kRts) {
        // The peer is gone with requests unanswered. A real requester would
        // retry for timeout x retry_cnt and then fail: do the same (Timers).
        SR_LOG("softrdma: qp 0x%x: connection to the peer closed with %u requests unanswered",
               qp->ex.qp_base.qp_num, qp->sq_head - qp->sq_done);
        qp->peer_lost = true;
        qp->first_unacked_ns = NowNs();
      }
      return;
    }
    PumpOut(qp);
    return;
  }
  if (c->role == Role::kIn) {
    RxStatus s = kRxAgain;
    if (c->parked && (events & (EPOLLERR | EPOLLHUP))) s = kRxClosed;
    else if (!c->parked && (events & (EPOLLIN | EPOLLERR | EPOLLHUP))) s = RxRun(c, qp);
    if (s == kRxParked) OnParked(c);
    // acknowledgements carried on the peer's requests may have freed ring space
    if (qp->out && qp->out->shm_wait) PumpOut(qp);
    if (s != kRxClosed && DeferAck(qp, c)) return;
    PumpIn(qp);
    if (s == kRxClosed && !c->dead) {
      if (qp->in == c) qp->in = nullptr;
      c->qp.store(nullptr);
      KillConn(c);
    }
  }
}

// Retries waiting connections (progress thread): pending HELLOs whose QP may
// now be ready and parked streams whose receive queue may now have WQEs.
void RetryWaiting(uint64_t now) {
  std::vector<Conn*> w;
  w.swap(g_eng->waiting);
  for (Conn* c : w) c->waiting = false;
  for (Conn* c : w) {
    if (c->dead) continue;
    if (c->role == Role::kPending) {
      uint64_t dl = c->deadline;
      RxStatus s = RxRun(c, nullptr);
      if (s == kRxClosed) {
        KillConn(c);
        continue;
      }
      if (s == kRxParked) {
        if (now > dl) {
          KillConn(c);
          continue;
        }
        c->deadline = dl;
        continue;
      }
      if (c->role == Role::kIn || c->role == Role::kUdIn) {
        SetEvents(c, EPOLLIN);
        HandleConn(c, EPOLLIN);
      }
      continue;
    }
    Qp* qp = c->qp.load();
    if (!qp) continue;
    std::lock_guard<std::mutex> g(qp->mu);
    if (c->qp.load() != qp || c->dead) continue;
    c->parked = false;
    RxStatus s = RxRun(c, qp);
    if (s == kRxParked) {
      c->parked = true;
      if (c->deadline && now > c->deadline && (c->h.op == kOpSend || c->h.op == kOpWrite)) {
        // RNR retries exhausted: the requester fails, this stream drops the message.
        c->parked = false;
        QueueResp(qp, kOpNak, c->h.psn, kNakRnr);
        c->st_off += sizeof(WireHdr);
        uint64_t payload = c->h.len;
        if (c->h.flags & kFCma) {
          c->st_off += 16 * uint32_t(c->h.arg0);
          payload = 0;
        }
        if ((c->h.flags & kFShm) && c->shm) {
          Shm(c)->req_tail.store(c->h.arg0 + c->h.len, std::memory_order_release);
          payload = 0;
        }
        BeginDiscard(c, payload);
        c->fin = kFinDrop;
        c->in_payload = true;
        SetWaiting(c, 0);
        c->deadline = 0;
      } else {
        SetWaiting(c, c->deadline);
      }
    } else if (s == kRxClosed) {
      if (qp->in == c) qp->in = nullptr;
      c->qp.store(nullptr);
      KillConn(c);
      continue;
    } else {
      SetEvents(c, EPOLLIN);
    }
    PumpIn(qp);
  }
  // Conns re-added to waiting during this pass stay there.
}

void StartConnect(Qp* qp);

// Periodic work: reconnects, retry windows.
void Timers(uint64_t now) {
  uint32_t n = g_eng->nlst * 256;
  for (uint32_t i = 0; i < n; i++) {
    Qp* qp = g_eng->qps[i].load();
    if (!qp) continue;
    std::lock_guard<std::mutex> g(qp->mu);
    uint32_t t = qp->ex.qp_base.qp_type;
    if ((t != IBV_QPT_RC && t != IBV_QPT_UC) || (qp->st != QpState::kRtr && qp->st != QpState::kRts)) continue;
    if (!qp->out && qp->next_connect_ns && now >= qp->next_connect_ns && !qp->peer_lost) {
      qp->next_connect_ns = 0;
      StartConnect(qp);
    }
    if (qp->sq_done != qp->sq_head && qp->st == QpState::kRts && (qp->attr.timeout || qp->peer_lost) &&
        (!qp->out || !qp->out->connected)) {
      if (!qp->first_unacked_ns) qp->first_unacked_ns = now;
      uint64_t window = (4096ull << qp->attr.timeout) * (qp->attr.retry_cnt + 1ull);
      if (window < 500000000ull) window = 500000000ull;
      if (now - qp->first_unacked_ns > window) {
        SR_LOG("softrdma: qp 0x%x: no connection to the peer within the retry window", qp->ex.qp_base.qp_num);
        FailHead(qp, IBV_WC_RETRY_EXC_ERR);
      }
    }
  }
}

// One pass of the device's work: what is readable now, waiting streams,
// timers, close requests, the destruction barrier. Whoever holds g_eng->pass
// runs it: the progress thread, or an application thread whose poll of an
// empty CQ would otherwise only wait for the progress thread to be scheduled.
// True when there was something to do.
bool Pass() {
  struct epoll_event evs[64];
  {
    if (!g_eng->deferred.empty()) FlushDeferred();
    int n = epoll_wait(g_eng->ep, evs, 64, 0);
    uint64_t& last_timer = g_eng->last_timer;
    if (n < 0) n = 0;
    bool busy = n > 0 || !g_eng->again.empty();
    bool woke = false;
    for (int i = 0; i < n; i++) {
      int tag = *static_cast<int*>(evs[i].data.ptr);
      if (tag == kTagWake) {
        uint64_t v;
        ssize_t r = read(g_eng->wake, &v, sizeof v);
        (void)r;
        woke = true;
      } else if (tag == kTagListener) {
        Listener* l = static_cast<Listener*>(evs[i].data.ptr);
        for (;;) {
          int fd = accept4(l->fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (fd < 0) break;
          OwnFd(fd);
          Conn* c = NewConn(fd, Role::kPending);
          if (!c) {
            CloseOwned(fd);
            continue;
          }
          if (!AddConn(c, EPOLLIN)) {
            CloseOwned(fd);
            delete c;
          }
        }
      } else {
        HandleConn(static_cast<Conn*>(evs[i].data.ptr), evs[i].events);
      }
    }
    if (!g_eng->again.empty()) {
      std::vector<Conn*> again;
      again.swap(g_eng->again);
      for (Conn* c : again) c->in_again = false;
      for (Conn* c : again) HandleConn(c, EPOLLIN);
    }
    uint64_t now = NowNs();
    bool kicked = g_eng->kicked.exchange(false);
    if (kicked || woke || now - last_timer >= 10000000ull) {
      if (!g_eng->waiting.empty()) RetryWaiting(now);
    }
    if (now - last_timer >= 10000000ull) {
      last_timer = now;
      Timers(now);
    }
    std::vector<Conn*> req;
    uint64_t barrier;
    {
      std::lock_guard<std::mutex> g(g_eng->cmu);
      req.swap(g_eng->close_req);
      barrier = g_eng->barrier_req;
    }
    for (Conn* c : req) KillConn(c);
    for (Conn* c : g_eng->to_free) {
      if (c->in_again) {
        for (size_t k = 0; k < g_eng->again.size(); k++)
          if (g_eng->again[k] == c) {
            g_eng->again.erase(g_eng->again.begin() + long(k));
            break;
          }
      }
      if (c->waiting) {
        for (size_t k = 0; k < g_eng->waiting.size(); k++)
          if (g_eng->waiting[k] == c) {
            g_eng->waiting.erase(g_eng->waiting.begin() + long(k));
            break;
          }
      }
      ShmUnmap(c);
      free(c->stage);
      free(c->rw);
      delete c;
    }
    g_eng->to_free.clear();
    {
      std::lock_guard<std::mutex> g(g_eng->cmu);
      if (g_eng->barrier_done < barrier) {
        g_eng->barrier_done = barrier;
        pthread_cond_broadcast(&g_eng->ccv);
      }
    }
    int timeout = (g_eng->nqps.load() || !g_eng->waiting.empty()) ? 10 : -1;
    if (!g_eng->again.empty() || !g_eng->deferred.empty()) timeout = 0;
    g_eng->next_timeout.store(timeout, std::memory_order_relaxed);
    return busy;
  }
}

void* ProgressMain(void*) {
  g_progress_tid.store(int(syscall(SYS_gettid)), std::memory_order_release);
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);
  for (;;) {
    // An application thread is polling and so doing this work itself: do
    // not take the CPU from it (2 threads on a small machine), look again
    // soon. Checked before epoll_wait, which would wake this thread for every
    // frame the polling thread is about to handle anyway.
    uint64_t polled = g_eng->poll_ns.load(std::memory_order_relaxed);
    if (polled && NowNs() - polled < kStepAsideNs) {
      struct timespec ts = {0, long(kStepAsideNs)};
      nanosleep(&ts, nullptr);
      continue;
    }
    // Sleep until there is work; the pass itself looks again under the lock.
    struct epoll_event ev;
    epoll_wait(g_eng->ep, &ev, 1, g_eng->next_timeout.load(std::memory_order_relaxed));
    polled = g_eng->poll_ns.load(std::memory_order_relaxed);
    if (polled && NowNs() - polled < kStepAsideNs) continue;
    std::lock_guard<std::mutex> g(g_eng->pass);
    Pass();
  }
  return nullptr;
}

void EngineInit() {
  Engine* e = new (std::nothrow) Engine;
  if (!e) return;
  for (auto& q : e->qps) q.store(nullptr);
  e->ep = epoll_create1(EPOLL_CLOEXEC);
  e->wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  OwnFd(e->ep);
  OwnFd(e->wake);
  if (e->ep < 0 || e->wake < 0) return;
  CmaInit();
  struct epoll_event ev;
  ev.events = EPOLLIN;
  ev.data.ptr = &e->wake_tag;
  epoll_ctl(e->ep, EPOLL_CTL_ADD, e->wake, &ev);
  e->last_timer = NowNs();
  e->deferred.reserve(256);
  g_eng = e;
  pthread_attr_t a;
  pthread_attr_init(&a);
  pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
  pthread_t t;
  if (pthread_create(&t, &a, ProgressMain, nullptr) != 0) {
    g_eng = nullptr;
    return;
  }
  pthread_setname_np(t, "softrdma");
  g_eng_ok = true;
}

Listener* NewListener() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return nullptr;
  OwnFd(fd);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(host().ip);
  a.sin_port = 0;
  if (bind(fd, reinterpret_cast<struct sockaddr*>(&a), sizeof a) != 0 || listen(fd, 128) != 0) {
    SR_LOG("softrdma: cannot listen: %s", strerror(errno));
    CloseOwned(fd);
    return nullptr;
  }
  socklen_t l = sizeof a;
  getsockname(fd, reinterpret_cast<struct sockaddr*>(&a), &l);
  Listener* li = new (std::nothrow) Listener;
  if (!li) {
    CloseOwned(fd);
    return nullptr;
  }
  li->fd = fd;
  li->port = ntohs(a.sin_port);
  struct epoll_event ev;
  ev.events = EPOLLIN;
  ev.data.ptr = li;
  epoll_ctl(g_eng->ep, EPOLL_CTL_ADD, fd, &ev);
  return li;
}

int ConnectTo(uint32_t ip, uint16_t port, bool blocking) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (blocking ? 0 : SOCK_NONBLOCK), 0);
  if (fd < 0) return -1;
  OwnFd(fd);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(ip);
  a.sin_port = htons(port);
  if (blocking) {
    struct timeval tv = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }
  int r = connect(fd, reinterpret_cast<struct sockaddr*>(&a), sizeof a);
  if (r != 0 && !(errno == EINPROGRESS && !blocking)) {
    CloseOwned(fd);
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

void StartConnect(Qp* qp) {
  if (qp->out || !qp->dest_ip) return;
  int fd = ConnectTo(qp->dest_ip, QpnPort(qp->attr.dest_qp_num), false);
  if (fd < 0) {
    qp->next_connect_ns = NowNs() + kReconnectNs;
    return;
  }
  Conn* c = NewConn(fd, Role::kOut);
  if (!c) {
    CloseOwned(fd);
    return;
  }
  c->kind = qp->ex.qp_base.qp_type == IBV_QPT_RC ? kKindRc : kKindUc;
  c->qp.store(qp);
  qp->out = c;
  if (!AddConn(c, EPOLLOUT | EPOLLIN)) {
    qp->out = nullptr;
    CloseOwned(fd);
    free(c->stage);
    free(c->rw);
    delete c;
  }
}

}  // namespace

// A program that exits right after its poll returned a receive (without
// destroying its QPs) must not take the ACK of that message with it.
__attribute__((destructor)) void FlushDeferredAtExit() {
  if (!g_eng || g_eng->deferred.empty() || !g_eng->pass.try_lock()) return;
  FlushDeferred();
  g_eng->pass.unlock();
}

// ------------------------------------------------------------------ API ----
bool EngineProgressFromPoll() {
  if (!g_eng || !g_eng->pass.try_lock()) return false;
  int saved = errno;
  g_eng->poll_ns.store(NowNs(), std::memory_order_relaxed);
  g_eng->app_pass = true;
  bool busy = Pass();
  g_eng->app_pass = false;
  g_eng->pass.unlock();
  errno = saved;
  return busy;
}

bool EngineStart() {
  pthread_once(&g_eng_once, EngineInit);
  return g_eng_ok;
}

int EngineAllocQpn(Qp* qp, uint32_t* qpn) {
  std::lock_guard<std::mutex> g(g_eng->mu);
  for (uint32_t li = 0;; li++) {
    if (li == g_eng->nlst) {
      if (g_eng->nlst == kMaxListeners) return ENOMEM;
      Listener* l = NewListener();
      if (!l) return EAGAIN;
      g_eng->lst[g_eng->nlst.load()] = l;
      g_eng->nlst.store(g_eng->nlst.load() + 1);
    }
    Listener* l = g_eng->lst[li];
    if (l->used == 255) continue;
    for (uint32_t s = 1; s < 256; s++) {
      if (g_eng->qps[li * 256 + s].load()) continue;
      l->used++;
      qp->slot = li * 256 + s;
      *qpn = (uint32_t(l->port) << 8) | s;
      g_eng->qps[qp->slot].store(qp);
      g_eng->nqps++;
      return 0;
    }
  }
}

void EngineFreeQpn(uint32_t qpn) {
  Qp* qp = nullptr;
  {
    std::lock_guard<std::mutex> g(g_eng->mu);
    for (uint32_t li = 0; li < g_eng->nlst; li++) {
      if (g_eng->lst[li]->port != QpnPort(qpn)) continue;
      uint32_t slot = li * 256 + (qpn & 0xff);
      qp = g_eng->qps[slot].exchange(nullptr);
      if (qp) {
        g_eng->lst[li]->used--;
        g_eng->nqps--;
      }
    }
  }
  // Barrier: the progress thread finishes its current pass and so drops
  // every pointer to the QP.
  std::unique_lock<std::mutex> g(g_eng->cmu);
  uint64_t my = ++g_eng->barrier_req;
  Wake();
  while (g_eng->barrier_done < my) {
    pthread_cond_wait(&g_eng->ccv, g.mutex()->native_handle());
  }
}

Qp* EngineLookupQp(uint32_t qpn) {
  uint16_t port = QpnPort(qpn);
  uint32_t s = qpn & 0xff;
  if (!s || !g_eng) return nullptr;
  uint32_t n = g_eng->nlst;
  for (uint32_t li = 0; li < n; li++) {
    Listener* l = g_eng->lst[li];
    if (l && l->port == port) return g_eng->qps[li * 256 + s].load();
  }
  return nullptr;
}

void EngineQpStateChanged(Qp* qp) {
  uint32_t t = qp->ex.qp_base.qp_type;
  if (t != IBV_QPT_RC && t != IBV_QPT_UC) return;
  switch (qp->st) {
    case QpState::kRtr:
    case QpState::kRts:
      // Requests only leave in RTS, and the HELLO carries RTS attributes.
      if (!qp->out && qp->st == QpState::kRts) StartConnect(qp);
      // a HELLO for us may be waiting
      g_eng->kicked = true;
      Wake();
      if (qp->st == QpState::kRts) PumpOut(qp);
      break;
    case QpState::kErr:
    case QpState::kReset: {
      // a deferred ACK acknowledges requests already executed here: the
      // peer gets it even though this QP goes away (hardware would have
      // sent it when the request arrived)
      if (qp->ack_deferred) {
        qp->ack_deferred = false;
        PumpIn(qp);
      }
      Conn* o = qp->out;
      Conn* i = qp->in;
      qp->out = qp->in = nullptr;
      RequestClose(o);
      RequestClose(i);
      break;
    }
    default:
      break;
  }
}

void EngineTxLocked(Qp* qp) {
  if (qp->st != QpState::kRts) return;
  if (!qp->out) {
    if (!qp->next_connect_ns && !qp->peer_lost) StartConnect(qp);
    return;
  }
  PumpOut(qp);
}

void EngineKick(Qp* qp) {
  if (qp->in && qp->in->parked) {
    g_eng->kicked = true;
    Wake();
  }
}

void EngineKickSrq(Srq*) {
  g_eng->kicked = true;
  Wake();
}

int EngineUdSend(Qp* qp, SendWqe* w, const void* data, uint32_t len) {
  if (!w->ud_ip) return 0;  // unroutable: a datagram may be lost
  uint16_t port = QpnPort(w->ud_qpn);
  UdOut* u = nullptr;
  {
    std::lock_guard<std::mutex> g(g_eng->umu);
    for (UdOut* x : g_eng->ud)
      if (x->ip == w->ud_ip && x->port == port) u = x;
    if (!u) {
      u = new (std::nothrow) UdOut;
      if (!u) return ENOMEM;
      u->ip = w->ud_ip;
      u->port = port;
      g_eng->ud.push_back(u);
    }
  }
  std::lock_guard<std::mutex> g(u->mu);
  WireHdr h{};
  h.op = kOpUdSend;
  h.len = len;
  h.dst_qpn = w->ud_qpn;
  h.src_qpn = qp->ex.qp_base.qp_num;
  h.rkey = host().ip;
  h.qkey = w->ud_qkey;
  if (w->opcode == IBV_WR_SEND_WITH_IMM) {
    h.flags |= kFImm;
    h.imm = w->imm;
  }
  if (w->send_flags & IBV_SEND_SOLICITED) h.flags |= kFSolicited;
  if (w->ud_grh) {
    h.flags |= kFGrh;
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(w->ud_dgid.raw, mapped, 12) == 0) h.flags |= kFGidMapped;
    memcpy(&h.raddr, &w->ud_dgid.raw[0], 8);
    memcpy(&h.arg0, &w->ud_dgid.raw[8], 8);
  }
  for (int attempt = 0; attempt < 2; attempt++) {
    if (u->fd < 0) {
      u->fd = ConnectTo(u->ip, u->port, true);
      if (u->fd < 0) return 0;  // nobody there: the datagram is lost
      WireHdr hello{};
      hello.op = kOpHello;
      hello.qkey = kKindUd;
      hello.rkey = host().ip;
      if (send(u->fd, &hello, sizeof hello, MSG_NOSIGNAL) != ssize_t(sizeof hello)) {
        CloseOwned(u->fd);
        u->fd = -1;
        continue;
      }
    }
    struct iovec v[2] = {{&h, sizeof h}, {const_cast<void*>(data), len}};
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = v;
    m.msg_iovlen = len ? 2 : 1;
    size_t total = sizeof h + len;
    size_t done = 0;
    bool ok = true;
    while (done < total) {
      ssize_t n = sendmsg(u->fd, &m, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        ok = false;
        break;
      }
      done += size_t(n);
      size_t left = size_t(n);
      while (left && m.msg_iovlen) {
        if (left >= m.msg_iov[0].iov_len) {
          left -= m.msg_iov[0].iov_len;
          m.msg_iov++;
          m.msg_iovlen--;
        } else {
          m.msg_iov[0].iov_base = static_cast<char*>(m.msg_iov[0].iov_base) + left;
          m.msg_iov[0].iov_len -= left;
          left = 0;
        }
      }
    }
    if (ok) return 0;
    CloseOwned(u->fd);
    u->fd = -1;
    if (done) return 0;  // partially sent: the stream is gone, the datagram lost
  }
  return 0;
}

}  // namespace softrdma
