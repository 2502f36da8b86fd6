// softrdma's librdmacm: the RDMA connection manager of Debian's librdmacm.so.1
// (RDMACM_1.0 ... 1.3), for programs that run on softrdma, where there is no
// kernel rdma_cm (/dev/infiniband/rdma_cm) to talk to.
//
// The IB CM's exchanges (REQ/REP/RTU, REJ, DREQ/DREP, SIDR REQ/REP) travel
// over one TCP connection per connected rdma_cm_id: an rdma_cm port number is
// the TCP port of the same number on the id's address (a listener on
// 0.0.0.0:7174 for `rping -s -p 7174`). Each side tells the other its QPN,
// start PSN, GID and LID, so the QPs are moved to RTS with the peer's real
// identity, the way the kernel CM does it, whatever the addressing rules
// guessed at address resolution.
//
// Event channels are pipes: the read end is readable while an event is
// queued, so programs may poll it, set it non-blocking, or block in
// rdma_get_cm_event. One thread per process (started with the first channel
// or id, signals blocked, named "softrdma-cm") accepts and reads the CM
// sockets; everything else runs in the caller's thread under one mutex.
// Control path only: allocation here is fine, the data path is softrdma's.
#include "logline.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include <new>

#undef ibv_reg_mr

#define SR_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

// ------------------------------------------------------------------ wire --
constexpr uint32_t kMagic = 0x4d435253;  // "SRCM"
enum MsgType : uint8_t { kReq = 1, kRep, kRtu, kRej, kDreq, kDrep, kSidrReq, kSidrRep };

struct Msg {
  uint32_t magic;
  uint8_t type;
  uint8_t pd_len;
  uint8_t resp_res;
  uint8_t init_depth;
  uint8_t retry;
  uint8_t rnr_retry;
  uint8_t flow_control;
  uint8_t srq;
  uint16_t reason;  // REJ reason, SIDR REP status
  uint16_t lid;     // sender's LID (ib)
  uint32_t qpn;
  uint32_t psn;
  uint32_t qkey;
  uint8_t gid[16];  // sender's GID
  uint8_t priv[256];
};

// Private data sizes of the IB CM messages; the receiver always sees the full
// (zero-padded) size, as with the kernel CM. REQ and SIDR REQ lose the
// rdma_cm header (36 bytes) in the IP port spaces.
constexpr int kReqPriv = 92, kSidrReqPriv = 216, kRepPriv = 196, kRejPriv = 148, kSidrRepPriv = 136;
constexpr int kCmaHdr = 36;
// IB CM reject reasons and SIDR statuses reported as event status.
constexpr int kRejTimeout = 1, kRejInvalidServiceId = 8, kRejConsumer = 28, kRejVendorOption = 35;
constexpr int kSidrReject = 1, kSidrUnsupported = 2;

constexpr uint64_t kConnectTimeoutNs = 10ull * 1000000000ull;
constexpr uint64_t kTimewaitNs = 1000000000ull;

// ------------------------------------------------------------------ state --
enum class St {
  kIdle, kBound, kAddr, kRoute, kListen,
  kAwaitReq,    // passive, TCP accepted, no REQ yet (not visible to the user)
  kConnecting,  // active, TCP connect in progress (REQ not sent yet)
  kReqSent,     // active, waiting for REP / SIDR REP
  kRepRcvd,     // active, REP arrived, RTU not sent (CONNECT_RESPONSE)
  kReqRcvd,     // passive, CONNECT_REQUEST reported
  kRepSent,     // passive, accepted, waiting for RTU
  kConnected,
  kDreqSent, kDreqRcvd, kTimewait,
  kDone,        // rejected, failed, or a finished SIDR exchange
};

struct Chan {
  struct rdma_event_channel ch;  // must be first
  int wr = -1;
  struct Ev* head = nullptr;
  struct Ev* tail = nullptr;
  int bytes = 0;  // bytes in the pipe: > 0 exactly while events are queued
  int waiters = 0;  // threads blocked in rdma_get_cm_event on it
};

struct Id;
struct Ev {
  struct rdma_cm_event ev;  // must be first
  Ev* next = nullptr;
  Id* owner = nullptr;      // whose ack count this event completes
  uint8_t priv[256];
};

struct Id {
  struct rdma_cm_id id;  // must be first
  uint64_t serial = 0;
  Id* next_all = nullptr;
  St st = St::kIdle;
  bool sync = false;
  bool hidden = false;
  bool cm_started = false;
  bool wild = false;  // bound to the wildcard address
  int sock = -1;
  bool connecting = false;
  Id* listener = nullptr;
  uint64_t deadline_ns = 0;
  uint64_t timewait_ns = 0;
  uint32_t reported = 0, acked = 0;
  uint32_t psn = 0;
  uint32_t qkey = RDMA_UDP_QKEY;
  uint8_t tos = 0, ack_timeout = 14;
  uint8_t resp_res = 0, init_depth = 0, retry = 7, rnr_retry = 7;
  bool have_peer = false;
  uint32_t peer_qpn = 0, peer_psn = 0, peer_qkey = 0;
  uint16_t peer_lid = 0;
  union ibv_gid peer_gid {};
  Msg out {};  // the REQ sent once the TCP connection is up
  uint8_t rbuf[sizeof(Msg)];
  size_t rlen = 0;
  struct ibv_sa_path_rec path {};
  struct ibv_qp_init_attr* ep_attr = nullptr;
  uint8_t connect_data[256];
  size_t connect_len = 0;
  struct ibv_ece local_ece {};
};

pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
pthread_once_t g_once = PTHREAD_ONCE_INIT;
int g_init_err = 0;
Id* g_ids = nullptr;
uint64_t g_next_serial = 1;
int g_ep = -1, g_wake = -1;
struct ibv_context* g_ctx = nullptr;
struct ibv_pd* g_pd = nullptr;
bool g_roce = true;
uint8_t g_sgid_index = 1;
union ibv_gid g_sgid;
uint16_t g_lid = 0;
uint32_t g_ip = 0;  // host order, the device's address (from its GID)
uint8_t g_max_rd = 0, g_max_init_rd = 0;
bool g_debug = false;

void Log(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void Log(const char* fmt, ...) {
  if (!g_debug) return;
  va_list ap;
  va_start(ap, fmt);
  softrdma::VLogLine(fmt, ap);
  va_end(ap);
}

uint64_t NowNs() { return softrdma::MonotonicNs(); }

int Fail(int e) {
  errno = e;
  return -1;
}

Id* ToId(struct rdma_cm_id* id) { return reinterpret_cast<Id*>(id); }
Chan* ToChan(struct rdma_event_channel* c) { return reinterpret_cast<Chan*>(c); }

void* CmThread(void*);

void Wake() {
  uint64_t one = 1;
  ssize_t r = write(g_wake, &one, sizeof one);
  (void)r;
}

void DoInit() {
  const char* d = getenv("SOFTRDMA_DEBUG");
  g_debug = d && *d && *d != '0';
  int n = 0;
  struct ibv_device** list = ibv_get_device_list(&n);
  if (!list || n < 1) {
    if (list) ibv_free_device_list(list);
    g_init_err = ENODEV;
    return;
  }
  g_ctx = ibv_open_device(list[0]);
  ibv_free_device_list(list);
  if (!g_ctx) {
    g_init_err = ENODEV;
    return;
  }
  struct ibv_device_attr da;
  struct ibv_port_attr pa;
  if (ibv_query_device(g_ctx, &da) || ibv_query_port(g_ctx, 1, &pa)) {
    g_init_err = ENODEV;
    return;
  }
  g_max_rd = uint8_t(da.max_qp_rd_atom > 255 ? 255 : da.max_qp_rd_atom);
  g_max_init_rd = uint8_t(da.max_qp_init_rd_atom > 255 ? 255 : da.max_qp_init_rd_atom);
  g_roce = pa.link_layer == IBV_LINK_LAYER_ETHERNET;
  g_lid = pa.lid;
  // RoCE: the IPv4-mapped GID (RoCE v2), as rdma_cm picks it; ib: the port GID.
  g_sgid_index = g_roce && pa.gid_tbl_len > 1 ? 1 : 0;
  if (ibv_query_gid(g_ctx, 1, g_sgid_index, &g_sgid)) {
    g_init_err = ENODEV;
    return;
  }
  // Both of softrdma's GIDs end with the host's IPv4 address.
  g_ip = (uint32_t(g_sgid.raw[12]) << 24) | (uint32_t(g_sgid.raw[13]) << 16) | (uint32_t(g_sgid.raw[14]) << 8) |
         g_sgid.raw[15];
  g_pd = ibv_alloc_pd(g_ctx);
  g_ep = epoll_create1(EPOLL_CLOEXEC);
  g_wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (!g_pd || g_ep < 0 || g_wake < 0) {
    g_init_err = ENOMEM;
    return;
  }
  struct epoll_event e {};
  e.events = EPOLLIN;
  e.data.u64 = 0;
  epoll_ctl(g_ep, EPOLL_CTL_ADD, g_wake, &e);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t t;
  int r = pthread_create(&t, nullptr, CmThread, nullptr);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (r) {
    g_init_err = r;
    return;
  }
  pthread_detach(t);
}

bool Init() {
  pthread_once(&g_once, DoInit);
  if (g_init_err) errno = g_init_err;
  return g_init_err == 0;
}

// ----------------------------------------------------------- addressing --
bool IsLocal(uint32_t ip) { return (ip >> 24) == 127 || ip == g_ip; }

// The GID and LID softrdma gives the host at IPv4 address ip. Only a guess
// until the CM exchange brings the peer's own values.
void GuessPeer(uint32_t ip, union ibv_gid* gid, uint16_t* lid) {
  if (IsLocal(ip)) {
    *gid = g_sgid;
    *lid = g_lid;
    return;
  }
  memset(gid, 0, sizeof *gid);
  if (g_roce) {
    gid->raw[10] = gid->raw[11] = 0xff;
  } else {
    const uint8_t pre[12] = {0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x02, 0x53, 0x52, 0x01};
    memcpy(gid->raw, pre, 12);
  }
  uint32_t nip = htonl(ip);
  memcpy(&gid->raw[12], &nip, 4);
  uint16_t l = uint16_t(ip & 0xffff);
  if (l == 0 || l >= 0xC000) l = uint16_t((ip & 0x3fff) | 1);
  *lid = g_roce ? 0 : l;
}

uint32_t SinIp(const struct sockaddr* sa) {
  return ntohl(reinterpret_cast<const struct sockaddr_in*>(sa)->sin_addr.s_addr);
}

void FillPath(Id* id, const union ibv_gid& dgid, uint16_t dlid) {
  struct ibv_sa_path_rec& p = id->path;
  memset(&p, 0, sizeof p);
  p.dgid = dgid;
  p.sgid = g_sgid;
  p.dlid = htons(dlid);
  p.slid = htons(g_roce ? 0 : g_lid);
  p.hop_limit = g_roce ? 64 : 0;
  p.traffic_class = id->tos;
  p.reversible = 1;
  p.numb_path = 1;
  p.pkey = htons(0xffff);
  p.mtu_selector = 2;
  p.mtu = IBV_MTU_4096;
  p.rate_selector = 2;
  p.rate = IBV_RATE_2_5_GBPS;
  p.packet_life_time_selector = 2;
  p.packet_life_time = 14;
  id->id.route.addr.addr.ibaddr.sgid = g_sgid;
  id->id.route.addr.addr.ibaddr.dgid = dgid;
  id->id.route.addr.addr.ibaddr.pkey = htons(0xffff);
  id->id.route.path_rec = &id->path;
  id->id.route.num_paths = 1;
}

void AttachDevice(Id* id) {
  id->id.verbs = g_ctx;
  id->id.port_num = 1;
  if (!id->id.pd) id->id.pd = g_pd;
  id->id.route.addr.addr.ibaddr.sgid = g_sgid;
  id->id.route.addr.addr.ibaddr.pkey = htons(0xffff);
}

struct ibv_ah_attr PeerAh(Id* id) {
  struct ibv_ah_attr a;
  memset(&a, 0, sizeof a);
  a.port_num = 1;
  if (g_roce) {
    a.is_global = 1;
    a.grh.dgid = id->peer_gid;
    a.grh.sgid_index = g_sgid_index;
    a.grh.hop_limit = 64;
    a.grh.traffic_class = id->tos;
  } else {
    a.dlid = id->peer_lid;
  }
  return a;
}

// ------------------------------------------------------------- channels --
void Push(Chan* c, Ev* e) {
  e->next = nullptr;
  if (c->tail) c->tail->next = e;
  else c->head = e;
  c->tail = e;
  if (c->bytes < 1024) {
    char b = 1;
    if (write(c->wr, &b, 1) == 1) c->bytes++;
  }
}

void DrainIfEmpty(Chan* c) {
  if (c->head || !c->bytes) return;
  char b[1024];
  // The bytes are known to be there: this read does not block.
  ssize_t n = read(c->ch.fd, b, size_t(c->bytes));
  if (n > 0) c->bytes -= int(n);
}

Ev* Pop(Chan* c) {
  Ev* e = c->head;
  if (!e) return nullptr;
  c->head = e->next;
  if (!c->head) c->tail = nullptr;
  DrainIfEmpty(c);
  return e;
}

Ev* NewEv(Id* id, enum rdma_cm_event_type type, int status) {
  Ev* e = new (std::nothrow) Ev;
  if (!e) return nullptr;
  memset(&e->ev, 0, sizeof e->ev);
  memset(e->priv, 0, sizeof e->priv);
  e->ev.id = &id->id;
  e->ev.event = type;
  e->ev.status = status;
  e->owner = id;
  return e;
}

void Queue(Id* id, enum rdma_cm_event_type type, int status) {
  Ev* e = NewEv(id, type, status);
  if (e) Push(ToChan(id->id.channel), e);
  Log("softrdma-cm: id %p %s status %d", static_cast<void*>(id), rdma_event_str(type), status);
}

void ConnParam(Ev* e, const Msg& m, int padded) {
  struct rdma_conn_param& p = e->ev.param.conn;
  memcpy(e->priv, m.priv, m.pd_len);
  p.private_data = e->priv;
  p.private_data_len = uint8_t(padded > 255 ? 255 : padded);
  // The peer's view, turned around: its initiator depth is our responder
  // resources and the other way round.
  p.responder_resources = m.init_depth;
  p.initiator_depth = m.resp_res;
  p.flow_control = m.flow_control;
  p.retry_count = m.retry;
  p.rnr_retry_count = m.rnr_retry;
  p.srq = m.srq;
  p.qp_num = m.qpn;
}

// Removes the undelivered events of id (or owned by it) from its channel.
// CONNECT_REQUEST events of a listener take their unreported child along.
void DestroyLocked(Id* id);
void DropEvents(Id* id) {
  Chan* c = ToChan(id->id.channel);
  if (!c) return;
  Ev** pp = &c->head;
  Ev* prev = nullptr;
  while (*pp) {
    Ev* e = *pp;
    if (e->owner == id || e->ev.id == &id->id) {
      *pp = e->next;
      if (c->tail == e) c->tail = prev;
      if (e->ev.event == RDMA_CM_EVENT_CONNECT_REQUEST && e->ev.id != &id->id) {
        Id* child = ToId(e->ev.id);
        delete e;
        child->listener = nullptr;
        DestroyLocked(child);
        delete child;  // never reported: no acks to wait for
        // DestroyLocked may have edited this list: start over.
        pp = &c->head;
        prev = nullptr;
        continue;
      }
      delete e;
      continue;
    }
    prev = e;
    pp = &e->next;
  }
  DrainIfEmpty(c);
}

// --------------------------------------------------------------- sockets --
void EpollSet(Id* id, uint32_t events, bool add) {
  struct epoll_event e {};
  e.events = events;
  e.data.u64 = id->serial;
  epoll_ctl(g_ep, add ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, id->sock, &e);
}

void CloseSock(Id* id) {
  if (id->sock < 0) return;
  epoll_ctl(g_ep, EPOLL_CTL_DEL, id->sock, nullptr);
  // Read what is left so that close sends FIN, not RST (an RST may make the
  // peer lose our last message).
  char b[512];
  while (recv(id->sock, b, sizeof b, MSG_DONTWAIT) > 0) {
  }
  close(id->sock);
  id->sock = -1;
  id->connecting = false;
  id->rlen = 0;
}

bool Send(Id* id, Msg& m) {
  if (id->sock < 0) return false;
  m.magic = kMagic;
  m.lid = g_lid;
  memcpy(m.gid, g_sgid.raw, 16);
  ssize_t n = send(id->sock, &m, sizeof m, MSG_NOSIGNAL | MSG_DONTWAIT);
  Log("softrdma-cm: id %p sends type %u (%zd)", static_cast<void*>(id), m.type, n);
  return n == ssize_t(sizeof m);
}

bool SendSimple(Id* id, uint8_t type, uint16_t reason, const void* pd, int pd_len) {
  Msg m {};
  m.type = type;
  m.reason = reason;
  if (pd && pd_len > 0) {
    memcpy(m.priv, pd, size_t(pd_len));
    m.pd_len = uint8_t(pd_len);
  }
  return Send(id, m);
}

int NewTcpSocket() {
  int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s < 0) return -1;
  int one = 1;
  // A listener's port must be reusable while connections of an earlier run
  // are in TIME_WAIT; Linux still refuses a second listener on it.
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return s;
}

int BindLocked(Id* id, const struct sockaddr* addr) {
  if (!addr) return Fail(EINVAL);
  if (addr->sa_family != AF_INET) return Fail(EAFNOSUPPORT);
  if (id->st != St::kIdle) return Fail(EINVAL);
  int s = NewTcpSocket();
  if (s < 0) return -1;
  if (bind(s, addr, sizeof(struct sockaddr_in)) != 0) {
    int e = errno;
    close(s);
    return Fail(e);
  }
  struct sockaddr_in sin;
  socklen_t len = sizeof sin;
  getsockname(s, reinterpret_cast<struct sockaddr*>(&sin), &len);
  id->sock = s;
  memset(&id->id.route.addr.src_storage, 0, sizeof id->id.route.addr.src_storage);
  memcpy(&id->id.route.addr.src_sin, &sin, sizeof sin);
  id->wild = sin.sin_addr.s_addr == htonl(INADDR_ANY);
  // An id bound to a specific address belongs to the device at once; a
  // wildcard one only gets it when a connection comes in.
  if (!id->wild) AttachDevice(id);
  id->st = St::kBound;
  return 0;
}

// ----------------------------------------------------------- QP attributes --
int QpAttrFor(Id* id, struct ibv_qp_attr* a, int* mask) {
  enum ibv_qp_state st = a->qp_state;
  memset(a, 0, sizeof *a);
  a->qp_state = st;
  bool ud = id->id.qp_type == IBV_QPT_UD;
  bool rc = id->id.qp_type == IBV_QPT_RC;
  switch (st) {
    case IBV_QPS_INIT:
      a->pkey_index = 0;
      a->port_num = 1;
      *mask = IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT;
      if (ud) {
        a->qkey = id->qkey;
        *mask |= IBV_QP_QKEY;
      } else {
        // As the IB CM: remote writes once a connection is being set up,
        // reads and atomics when this side offers responder resources.
        if (id->cm_started)
          a->qp_access_flags = IBV_ACCESS_REMOTE_WRITE |
                               (id->resp_res ? IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC : 0);
        *mask |= IBV_QP_ACCESS_FLAGS;
      }
      return 0;
    case IBV_QPS_RTR:
      if (ud) {
        *mask = IBV_QP_STATE;
        return 0;
      }
      if (!id->have_peer) return Fail(EINVAL);
      a->path_mtu = IBV_MTU_4096;
      a->dest_qp_num = id->peer_qpn;
      a->rq_psn = id->peer_psn;
      a->ah_attr = PeerAh(id);
      *mask = IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN;
      if (rc) {
        a->max_dest_rd_atomic = id->resp_res;
        a->min_rnr_timer = 12;
        *mask |= IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER;
      }
      return 0;
    case IBV_QPS_RTS:
      a->sq_psn = ud ? 0 : id->psn;
      *mask = IBV_QP_STATE | IBV_QP_SQ_PSN;
      if (rc) {
        if (!id->have_peer) return Fail(EINVAL);
        a->timeout = id->ack_timeout;
        a->retry_cnt = id->retry;
        a->rnr_retry = id->rnr_retry;
        a->max_rd_atomic = id->init_depth;
        *mask |= IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_MAX_QP_RD_ATOMIC;
      }
      return 0;
    default:
      return Fail(EINVAL);
  }
}

int ModifyTo(Id* id, enum ibv_qp_state st) {
  struct ibv_qp_attr a;
  int mask;
  a.qp_state = st;
  if (QpAttrFor(id, &a, &mask)) return -1;
  int r = ibv_modify_qp(id->id.qp, &a, mask);
  return r ? Fail(r) : 0;
}

// INIT again (the access rights are known now), RTR, RTS.
int ConnectQp(Id* id) {
  if (!id->id.qp) return 0;
  if (ModifyTo(id, IBV_QPS_INIT) || ModifyTo(id, IBV_QPS_RTR) || ModifyTo(id, IBV_QPS_RTS)) return -1;
  return 0;
}

void QpToErr(Id* id) {
  if (!id->id.qp) return;
  struct ibv_qp_attr a;
  memset(&a, 0, sizeof a);
  a.qp_state = IBV_QPS_ERR;
  ibv_modify_qp(id->id.qp, &a, IBV_QP_STATE);
}

void LearnPeer(Id* id, const Msg& m) {
  id->have_peer = true;
  id->peer_qpn = m.qpn & 0xffffff;
  id->peer_psn = m.psn & 0xffffff;
  id->peer_qkey = m.qkey;
  id->peer_lid = m.lid;
  memcpy(id->peer_gid.raw, m.gid, 16);
  FillPath(id, id->peer_gid, m.lid);
}

void EnterTimewait(Id* id) {
  id->st = St::kTimewait;
  id->timewait_ns = NowNs() + kTimewaitNs;
  Wake();
}

// ------------------------------------------------------- CM thread side --
Id* FindSerial(uint64_t serial) {
  for (Id* i = g_ids; i; i = i->next_all)
    if (i->serial == serial) return i;
  return nullptr;
}

Id* NewId(struct rdma_event_channel* ch, void* ctx, enum rdma_port_space ps, enum ibv_qp_type qpt) {
  Id* id = new (std::nothrow) Id;
  if (!id) return nullptr;
  memset(&id->id, 0, sizeof id->id);
  id->id.channel = ch;
  id->id.context = ctx;
  id->id.ps = ps;
  id->id.qp_type = qpt;
  id->serial = g_next_serial++;
  uint64_t x = NowNs() ^ (id->serial * 0x9E3779B97F4A7C15ull) ^ (uint64_t(getpid()) << 32);
  x ^= x >> 29;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 32;
  id->psn = uint32_t(x) & 0xffffff;
  id->next_all = g_ids;
  g_ids = id;
  return id;
}

void Unlink(Id* id) {
  for (Id** pp = &g_ids; *pp; pp = &(*pp)->next_all)
    if (*pp == id) {
      *pp = id->next_all;
      return;
    }
}

void OnAccept(Id* l) {
  for (;;) {
    int s = accept4(l->sock, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (s < 0) return;
    int one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    Id* c = NewId(l->id.channel, l->id.context, l->id.ps, l->id.qp_type);
    if (!c) {
      close(s);
      continue;
    }
    c->hidden = true;
    c->listener = l;
    c->sock = s;
    c->st = St::kAwaitReq;
    c->tos = l->tos;
    c->ack_timeout = l->ack_timeout;
    EpollSet(c, EPOLLIN, true);
  }
}

// The connection went away (or a deadline passed) before the exchange ended.
void Unreachable(Id* id, int status) {
  CloseSock(id);
  id->deadline_ns = 0;
  id->st = St::kDone;
  if (id->id.qp_type == IBV_QPT_UD)
    Queue(id, RDMA_CM_EVENT_UNREACHABLE, status == -ETIMEDOUT ? status : kSidrUnsupported);
  else
    Queue(id, RDMA_CM_EVENT_UNREACHABLE, status);
}

void ConnectFailed(Id* id, int err) {
  CloseSock(id);
  id->deadline_ns = 0;
  id->st = St::kDone;
  if (err == ECONNREFUSED) {
    // Nobody listens on that port: the remote CM's answer.
    if (id->id.qp_type == IBV_QPT_UD) {
      Queue(id, RDMA_CM_EVENT_UNREACHABLE, kSidrUnsupported);
    } else {
      Ev* e = NewEv(id, RDMA_CM_EVENT_REJECTED, kRejInvalidServiceId);
      if (e) {
        e->ev.param.conn.private_data = e->priv;
        e->ev.param.conn.private_data_len = kRejPriv;
        Push(ToChan(id->id.channel), e);
      }
    }
    Log("softrdma-cm: id %p: connection refused", static_cast<void*>(id));
  } else {
    Queue(id, RDMA_CM_EVENT_UNREACHABLE, -ETIMEDOUT);
  }
}

void OnReq(Id* c, const Msg& m) {
  bool ud = m.type == kSidrReq;
  if (ud != (c->id.qp_type == IBV_QPT_UD)) {
    // A UD request to an RC listener or the other way round: no such service.
    if (ud) SendSimple(c, kSidrRep, kSidrUnsupported, nullptr, 0);
    else SendSimple(c, kRej, kRejInvalidServiceId, nullptr, 0);
    CloseSock(c);
    Unlink(c);
    delete c;
    return;
  }
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  getsockname(c->sock, reinterpret_cast<struct sockaddr*>(&a), &len);
  memcpy(&c->id.route.addr.src_sin, &a, sizeof a);
  len = sizeof a;
  getpeername(c->sock, reinterpret_cast<struct sockaddr*>(&a), &len);
  memcpy(&c->id.route.addr.dst_sin, &a, sizeof a);
  Id* l = c->listener;
  c->id.channel = l->id.channel;  // the listener may have migrated since
  AttachDevice(c);
  LearnPeer(c, m);
  c->cm_started = true;
  c->resp_res = m.init_depth;
  c->init_depth = m.resp_res;
  c->retry = m.retry;
  c->rnr_retry = m.rnr_retry;
  c->hidden = false;
  c->st = St::kReqRcvd;
  Ev* e = NewEv(c, RDMA_CM_EVENT_CONNECT_REQUEST, 0);
  if (!e) return;
  e->owner = l;
  e->ev.listen_id = &l->id;
  int off = c->id.ps == RDMA_PS_IB ? 0 : kCmaHdr;
  if (ud) {
    memcpy(e->priv, m.priv, m.pd_len);
    e->ev.param.ud.private_data = e->priv;
    e->ev.param.ud.private_data_len = uint8_t(kSidrReqPriv - off);
  } else {
    ConnParam(e, m, kReqPriv - off);
  }
  Push(ToChan(l->id.channel), e);
  Log("softrdma-cm: listener %p: CONNECT_REQUEST, child %p, peer qpn 0x%x", static_cast<void*>(l),
      static_cast<void*>(c), c->peer_qpn);
}

void OnMsg(Id* id, const Msg& m) {
  Log("softrdma-cm: id %p (state %d) got type %u", static_cast<void*>(id), int(id->st), m.type);
  switch (m.type) {
    case kReq:
    case kSidrReq:
      if (id->st == St::kAwaitReq) OnReq(id, m);
      return;
    case kRep:
      if (id->st != St::kReqSent) return;
      LearnPeer(id, m);
      // The responder's resources bound our initiator depth and the other
      // way round (the IB CM's REP handling).
      id->init_depth = m.resp_res;
      id->resp_res = m.init_depth;
      id->rnr_retry = m.rnr_retry;
      id->deadline_ns = 0;
      id->st = St::kRepRcvd;
      if (Ev* e = NewEv(id, RDMA_CM_EVENT_CONNECT_RESPONSE, 0)) {
        ConnParam(e, m, kRepPriv);
        Push(ToChan(id->id.channel), e);
      }
      return;
    case kSidrRep:
      if (id->st != St::kReqSent) return;
      id->deadline_ns = 0;
      CloseSock(id);
      if (m.reason) {
        id->st = St::kDone;
        Ev* e = NewEv(id, RDMA_CM_EVENT_UNREACHABLE, m.reason);
        if (e) {
          memcpy(e->priv, m.priv, m.pd_len);
          e->ev.param.ud.private_data = e->priv;
          e->ev.param.ud.private_data_len = kSidrRepPriv;
          Push(ToChan(id->id.channel), e);
        }
        return;
      }
      LearnPeer(id, m);
      id->st = St::kConnected;
      if (Ev* e = NewEv(id, RDMA_CM_EVENT_ESTABLISHED, 0)) {
        memcpy(e->priv, m.priv, m.pd_len);
        e->ev.param.ud.private_data = e->priv;
        e->ev.param.ud.private_data_len = kSidrRepPriv;
        e->ev.param.ud.ah_attr = PeerAh(id);
        e->ev.param.ud.qp_num = id->peer_qpn;
        e->ev.param.ud.qkey = id->peer_qkey;
        Push(ToChan(id->id.channel), e);
      }
      return;
    case kRtu:
      if (id->st != St::kRepSent) return;
      id->st = St::kConnected;
      Queue(id, RDMA_CM_EVENT_ESTABLISHED, 0);
      return;
    case kRej:
      if (id->st != St::kReqSent && id->st != St::kRepSent && id->st != St::kRepRcvd && id->st != St::kReqRcvd)
        return;
      id->st = St::kDone;
      id->deadline_ns = 0;
      if (Ev* e = NewEv(id, RDMA_CM_EVENT_REJECTED, m.reason)) {
        ConnParam(e, m, kRejPriv);
        Push(ToChan(id->id.channel), e);
      }
      return;
    case kDreq:
      if (id->st == St::kConnected || id->st == St::kRepSent || id->st == St::kRepRcvd) {
        id->st = St::kDreqRcvd;
        Queue(id, RDMA_CM_EVENT_DISCONNECTED, 0);
      } else if (id->st == St::kDreqSent) {
        // Both sides disconnected at once: each answers the other's DREQ.
        SendSimple(id, kDrep, 0, nullptr, 0);
        EnterTimewait(id);
        Queue(id, RDMA_CM_EVENT_DISCONNECTED, 0);
      }
      return;
    case kDrep:
      if (id->st == St::kDreqSent) {
        EnterTimewait(id);
        Queue(id, RDMA_CM_EVENT_DISCONNECTED, 0);
      }
      return;
    default:
      return;
  }
}

void OnEof(Id* id) {
  Log("softrdma-cm: id %p (state %d): peer closed", static_cast<void*>(id), int(id->st));
  switch (id->st) {
    case St::kAwaitReq:
      CloseSock(id);
      Unlink(id);
      delete id;
      return;
    case St::kConnecting:
    case St::kReqSent:
    case St::kRepRcvd:
    case St::kReqRcvd:
    case St::kRepSent:
      Unreachable(id, -ETIMEDOUT);
      return;
    case St::kConnected:
      CloseSock(id);
      if (id->id.qp_type == IBV_QPT_UD) return;
      id->st = St::kDreqRcvd;
      Queue(id, RDMA_CM_EVENT_DISCONNECTED, 0);
      return;
    case St::kDreqSent:
      // The peer is gone without answering: its DREP will not come.
      CloseSock(id);
      EnterTimewait(id);
      Queue(id, RDMA_CM_EVENT_DISCONNECTED, 0);
      return;
    default:
      CloseSock(id);
      return;
  }
}

void OnReadable(Id* id) {
  uint64_t serial = id->serial;
  while (id->sock >= 0) {
    ssize_t n = recv(id->sock, id->rbuf + id->rlen, sizeof(Msg) - id->rlen, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) {
      OnEof(id);
      return;
    }
    id->rlen += size_t(n);
    if (id->rlen < sizeof(Msg)) continue;
    Msg m;
    memcpy(&m, id->rbuf, sizeof m);
    id->rlen = 0;
    if (m.magic != kMagic) {
      OnEof(id);
      return;
    }
    OnMsg(id, m);
    if (!FindSerial(serial)) return;
  }
}

void OnConnected(Id* id) {
  int err = 0;
  socklen_t len = sizeof err;
  getsockopt(id->sock, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err) {
    ConnectFailed(id, err);
    return;
  }
  id->connecting = false;
  id->st = St::kReqSent;
  EpollSet(id, EPOLLIN, false);
  if (!Send(id, id->out)) Unreachable(id, -ETIMEDOUT);
}

int RunTimers() {
  uint64_t now = NowNs(), next = 0;
  for (Id* id = g_ids; id; id = id->next_all) {
    if (id->deadline_ns && now >= id->deadline_ns) {
      id->deadline_ns = 0;
      if (id->st == St::kConnecting || id->st == St::kReqSent) Unreachable(id, -ETIMEDOUT);
    }
    if (id->timewait_ns && now >= id->timewait_ns) {
      id->timewait_ns = 0;
      CloseSock(id);
      Queue(id, RDMA_CM_EVENT_TIMEWAIT_EXIT, 0);
    }
    if (id->deadline_ns && (!next || id->deadline_ns < next)) next = id->deadline_ns;
    if (id->timewait_ns && (!next || id->timewait_ns < next)) next = id->timewait_ns;
  }
  if (!next) return -1;
  return int((next - now) / 1000000 + 1);
}

void* CmThread(void*) {
  prctl(PR_SET_NAME, "softrdma-cm", 0, 0, 0);
  struct epoll_event evs[32];
  int timeout = -1;
  for (;;) {
    int n = epoll_wait(g_ep, evs, 32, timeout);
    pthread_mutex_lock(&g_mu);
    for (int i = 0; i < n; i++) {
      if (evs[i].data.u64 == 0) {
        uint64_t v;
        ssize_t r = read(g_wake, &v, sizeof v);
        (void)r;
        continue;
      }
      Id* id = FindSerial(evs[i].data.u64);
      if (!id || id->sock < 0) continue;
      if (id->st == St::kListen) OnAccept(id);
      else if (id->connecting) OnConnected(id);
      else OnReadable(id);
    }
    timeout = RunTimers();
    pthread_mutex_unlock(&g_mu);
  }
  return nullptr;
}

// ------------------------------------------------------- caller side --
// Sends the farewell the IB CM sends when an id goes away in this state.
void Farewell(Id* id) {
  switch (id->st) {
    case St::kReqSent: SendSimple(id, kRej, kRejTimeout, nullptr, 0); break;
    case St::kReqRcvd:
      if (id->id.qp_type == IBV_QPT_UD) SendSimple(id, kSidrRep, kSidrReject, nullptr, 0);
      else SendSimple(id, kRej, kRejConsumer, nullptr, 0);
      break;
    case St::kRepSent:
    case St::kRepRcvd: SendSimple(id, kRej, kRejConsumer, nullptr, 0); break;
    case St::kConnected: SendSimple(id, kDreq, 0, nullptr, 0); break;
    case St::kDreqRcvd: SendSimple(id, kDrep, 0, nullptr, 0); break;
    default: break;
  }
}

// Takes the id out of the CM (g_mu held); the caller waits for its acks.
void DestroyLocked(Id* id) {
  Farewell(id);
  CloseSock(id);
  Unlink(id);
  id->st = St::kDone;
  id->deadline_ns = id->timewait_ns = 0;
  DropEvents(id);
  // Children that never became visible go with their listener; visible ones
  // stay the user's.
  Id* i = g_ids;
  while (i) {
    Id* nx = i->next_all;
    if (i->listener == id) {
      i->listener = nullptr;
      if (i->hidden) {
        CloseSock(i);
        Unlink(i);
        delete i;
        nx = g_ids;  // the list changed under us
      }
    }
    i = nx;
  }
}

Chan* NewChan() {
  Chan* c = new (std::nothrow) Chan;
  if (!c) {
    errno = ENOMEM;
    return nullptr;
  }
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) {
    int e = errno;
    delete c;
    errno = e;
    return nullptr;
  }
  c->ch.fd = p[0];
  c->wr = p[1];
  return c;
}

void FreeChan(Chan* c) {
  while (Ev* e = c->head) {
    c->head = e->next;
    delete e;
  }
  close(c->ch.fd);
  close(c->wr);
  delete c;
}

// Moves id's undelivered events to channel to (g_mu held).
void MoveEvents(Id* id, Chan* from, Chan* to) {
  Ev** pp = &from->head;
  Ev* prev = nullptr;
  while (*pp) {
    Ev* e = *pp;
    if (e->ev.id == &id->id && e->ev.event != RDMA_CM_EVENT_CONNECT_REQUEST) {
      *pp = e->next;
      if (from->tail == e) from->tail = prev;
      Push(to, e);
      continue;
    }
    prev = e;
    pp = &e->next;
  }
  DrainIfEmpty(from);
}

int GetEvent(Chan* c, struct rdma_cm_event** out);

// The synchronous ids' wait for the result of an operation (an id created
// without a channel).
int Complete(Id* id) {
  if (!id->sync) return 0;
  if (id->id.event) {
    rdma_ack_cm_event(id->id.event);
    id->id.event = nullptr;
  }
  if (GetEvent(ToChan(id->id.channel), &id->id.event)) return -1;
  struct rdma_cm_event* e = id->id.event;
  if (!e->status) return 0;
  if (e->event == RDMA_CM_EVENT_REJECTED) return Fail(ECONNREFUSED);
  return Fail(e->status < 0 ? -e->status : e->status);
}

// What rdma_get_cm_event does to an event before the user sees it (g_mu held).
void Process(Ev* e) {
  Id* id = ToId(e->ev.id);
  switch (e->ev.event) {
    case RDMA_CM_EVENT_CONNECT_RESPONSE:
      if (!id->id.qp || id->st != St::kRepRcvd) return;  // rdma_establish sends the RTU
      if (ConnectQp(id) == 0) {
        SendSimple(id, kRtu, 0, nullptr, 0);
        id->st = St::kConnected;
        e->ev.event = RDMA_CM_EVENT_ESTABLISHED;
      } else {
        int err = errno;
        SendSimple(id, kRej, kRejConsumer, nullptr, 0);
        QpToErr(id);
        CloseSock(id);
        id->st = St::kDone;
        e->ev.event = RDMA_CM_EVENT_CONNECT_ERROR;
        e->ev.status = -err;
      }
      return;
    case RDMA_CM_EVENT_REJECTED:
      QpToErr(id);
      return;
    case RDMA_CM_EVENT_CONNECT_REQUEST: {
      Id* l = ToId(e->ev.listen_id);
      if (!l->sync) return;
      // A synchronous listener's request gets its own synchronous channel.
      Chan* c = NewChan();
      if (!c) return;
      MoveEvents(id, ToChan(id->id.channel), c);
      id->id.channel = &c->ch;
      id->sync = true;
      return;
    }
    default:
      return;
  }
}

int GetEvent(Chan* c, struct rdma_cm_event** out) {
  if (!out) return Fail(EINVAL);
  pthread_mutex_lock(&g_mu);
  for (;;) {
    Ev* e = Pop(c);
    if (e) {
      e->owner->reported++;
      Process(e);
      pthread_mutex_unlock(&g_mu);
      *out = &e->ev;
      return 0;
    }
    int fl = fcntl(c->ch.fd, F_GETFL);
    if (fl >= 0 && (fl & O_NONBLOCK)) {
      pthread_mutex_unlock(&g_mu);
      return Fail(EAGAIN);
    }
    c->waiters++;
    pthread_mutex_unlock(&g_mu);
    struct pollfd p = {c->ch.fd, POLLIN, 0};
    poll(&p, 1, -1);
    pthread_mutex_lock(&g_mu);
    c->waiters--;
  }
}

int PdMax(Id* id, int kind) {
  int off = id->id.ps == RDMA_PS_IB ? 0 : kCmaHdr;
  switch (kind) {
    case kReq: return kReqPriv - off;
    case kSidrReq: return kSidrReqPriv - off;
    case kRep: return kRepPriv;
    case kSidrRep: return kSidrRepPriv;
    default: return kRejPriv;
  }
}

bool ValidParam(Id* id, const struct rdma_conn_param* p) {
  if (id->id.ps != RDMA_PS_TCP) return true;
  if (!id->id.qp && !p) return false;
  if (!p) return true;
  if (p->responder_resources != RDMA_MAX_RESP_RES && p->responder_resources > g_max_rd) return false;
  if (p->initiator_depth != RDMA_MAX_INIT_DEPTH && p->initiator_depth > g_max_init_rd) return false;
  return true;
}

uint8_t Min8(uint8_t a, uint8_t b) { return a < b ? a : b; }

int CreateIdImpl(struct rdma_event_channel* ch, struct rdma_cm_id** out, void* ctx, enum rdma_port_space ps,
                 enum ibv_qp_type qpt) {
  if (!out) return Fail(EINVAL);
  if (!Init()) return -1;
  bool sync = false;
  if (!ch) {
    Chan* c = NewChan();
    if (!c) return -1;
    ch = &c->ch;
    sync = true;
  }
  pthread_mutex_lock(&g_mu);
  Id* id = NewId(ch, ctx, ps, qpt);
  if (id) id->sync = sync;
  pthread_mutex_unlock(&g_mu);
  if (!id) {
    if (sync) FreeChan(ToChan(ch));
    return Fail(ENOMEM);
  }
  *out = &id->id;
  return 0;
}

}  // namespace

// ================================================================ ABI ====

SR_EXPORT struct rdma_event_channel* rdma_create_event_channel(void) {
  if (!Init()) return nullptr;
  Chan* c = NewChan();
  return c ? &c->ch : nullptr;
}

SR_EXPORT void rdma_destroy_event_channel(struct rdma_event_channel* ch) {
  if (!ch) return;
  Chan* c = ToChan(ch);
  pthread_mutex_lock(&g_mu);
  // A thread blocked on the channel (rping's event thread when main returns)
  // keeps blocking, as on the kernel's rdma_cm file: the channel is left
  // open and allocated for it.
  bool busy = c->waiters > 0;
  pthread_mutex_unlock(&g_mu);
  if (!busy) FreeChan(c);
}

SR_EXPORT int rdma_create_id(struct rdma_event_channel* ch, struct rdma_cm_id** id, void* ctx,
                             enum rdma_port_space ps) {
  enum ibv_qp_type t = (ps == RDMA_PS_IPOIB || ps == RDMA_PS_UDP) ? IBV_QPT_UD : IBV_QPT_RC;
  if (ps != RDMA_PS_TCP && ps != RDMA_PS_UDP && ps != RDMA_PS_IB && ps != RDMA_PS_IPOIB) return Fail(EINVAL);
  return CreateIdImpl(ch, id, ctx, ps, t);
}

SR_EXPORT int rdma_destroy_id(struct rdma_cm_id* cid) {
  if (!cid) return Fail(EINVAL);
  Id* id = ToId(cid);
  if (id->id.event) {
    rdma_ack_cm_event(id->id.event);
    id->id.event = nullptr;
  }
  pthread_mutex_lock(&g_mu);
  DestroyLocked(id);
  while (id->acked < id->reported) pthread_cond_wait(&g_cv, &g_mu);
  pthread_mutex_unlock(&g_mu);
  if (id->sync) FreeChan(ToChan(id->id.channel));
  delete id->ep_attr;
  delete id;
  return 0;
}

SR_EXPORT int rdma_bind_addr(struct rdma_cm_id* cid, struct sockaddr* addr) {
  Id* id = ToId(cid);
  pthread_mutex_lock(&g_mu);
  int r = BindLocked(id, addr);
  int e = errno;
  pthread_mutex_unlock(&g_mu);
  errno = e;
  return r;
}

SR_EXPORT int rdma_resolve_addr(struct rdma_cm_id* cid, struct sockaddr* src, struct sockaddr* dst, int) {
  Id* id = ToId(cid);
  if (!dst) return Fail(EINVAL);
  if (dst->sa_family != AF_INET || (src && src->sa_family != AF_INET)) return Fail(EAFNOSUPPORT);
  pthread_mutex_lock(&g_mu);
  int r = 0, err = 0;
  if (id->st == St::kIdle) {
    struct sockaddr_in s;
    if (src) {
      memcpy(&s, src, sizeof s);
    } else {
      memset(&s, 0, sizeof s);
      s.sin_family = AF_INET;
    }
    if (s.sin_addr.s_addr == htonl(INADDR_ANY)) {
      // The source address routing picks for the destination, as the kernel
      // CM does.
      int u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
      struct sockaddr_in d;
      memcpy(&d, dst, sizeof d);
      if (!d.sin_port) d.sin_port = htons(9);
      socklen_t len = sizeof s;
      struct sockaddr_in got;
      if (u >= 0 && connect(u, reinterpret_cast<struct sockaddr*>(&d), sizeof d) == 0 &&
          getsockname(u, reinterpret_cast<struct sockaddr*>(&got), &len) == 0) {
        s.sin_addr = got.sin_addr;
      } else {
        err = errno;
      }
      if (u >= 0) close(u);
    }
    if (!err) r = BindLocked(id, reinterpret_cast<struct sockaddr*>(&s));
    if (r) err = errno;
  } else if (id->st != St::kBound) {
    r = -1;
    err = EINVAL;
  }
  if (r) {
    pthread_mutex_unlock(&g_mu);
    return Fail(err);
  }
  memset(&id->id.route.addr.dst_storage, 0, sizeof id->id.route.addr.dst_storage);
  memcpy(&id->id.route.addr.dst_sin, dst, sizeof(struct sockaddr_in));
  AttachDevice(id);
  if (err) {
    Queue(id, RDMA_CM_EVENT_ADDR_ERROR, -err);
  } else {
    union ibv_gid g;
    uint16_t lid;
    GuessPeer(SinIp(dst), &g, &lid);
    id->id.route.addr.addr.ibaddr.dgid = g;
    id->st = St::kAddr;
    Queue(id, RDMA_CM_EVENT_ADDR_RESOLVED, 0);
  }
  pthread_mutex_unlock(&g_mu);
  return Complete(id);
}

SR_EXPORT int rdma_resolve_route(struct rdma_cm_id* cid, int) {
  Id* id = ToId(cid);
  pthread_mutex_lock(&g_mu);
  if (id->st != St::kAddr) {
    pthread_mutex_unlock(&g_mu);
    return Fail(EINVAL);
  }
  union ibv_gid g;
  uint16_t lid;
  GuessPeer(SinIp(&id->id.route.addr.dst_addr), &g, &lid);
  FillPath(id, g, lid);
  id->st = St::kRoute;
  Queue(id, RDMA_CM_EVENT_ROUTE_RESOLVED, 0);
  pthread_mutex_unlock(&g_mu);
  return Complete(id);
}

SR_EXPORT int rdma_listen(struct rdma_cm_id* cid, int backlog) {
  Id* id = ToId(cid);
  pthread_mutex_lock(&g_mu);
  int r = 0;
  if (id->st == St::kIdle) {
    struct sockaddr_in any;
    memset(&any, 0, sizeof any);
    any.sin_family = AF_INET;
    r = BindLocked(id, reinterpret_cast<struct sockaddr*>(&any));
  }
  if (!r && id->st != St::kBound) r = Fail(EINVAL);
  if (!r && listen(id->sock, backlog > 0 ? backlog : SOMAXCONN) != 0) r = -1;
  int e = errno;
  if (!r) {
    id->st = St::kListen;
    EpollSet(id, EPOLLIN, true);
    Log("softrdma-cm: id %p listens on port %u", static_cast<void*>(id), ntohs(id->id.route.addr.src_sin.sin_port));
  }
  pthread_mutex_unlock(&g_mu);
  errno = e;
  return r;
}

SR_EXPORT int rdma_connect(struct rdma_cm_id* cid, struct rdma_conn_param* p) {
  Id* id = ToId(cid);
  pthread_mutex_lock(&g_mu);
  bool ud = id->id.qp_type == IBV_QPT_UD;
  int type = ud ? kSidrReq : kReq;
  size_t pd_len = id->connect_len + (p && p->private_data ? p->private_data_len : 0);
  if (id->st != St::kRoute || !ValidParam(id, p) || pd_len > size_t(PdMax(id, type))) {
    pthread_mutex_unlock(&g_mu);
    return Fail(EINVAL);
  }
  id->init_depth = p && p->initiator_depth != RDMA_MAX_INIT_DEPTH ? p->initiator_depth : g_max_init_rd;
  id->resp_res = p && p->responder_resources != RDMA_MAX_RESP_RES ? p->responder_resources : g_max_rd;
  id->retry = p ? p->retry_count : 7;
  id->rnr_retry = p ? p->rnr_retry_count : 7;
  Msg& m = id->out;
  memset(&m, 0, sizeof m);
  m.type = uint8_t(type);
  m.qpn = id->id.qp ? id->id.qp->qp_num : (p ? p->qp_num : 0);
  m.srq = id->id.qp ? id->id.qp->srq != nullptr : (p ? p->srq : 0);
  m.psn = id->psn;
  m.resp_res = id->resp_res;
  m.init_depth = id->init_depth;
  m.retry = id->retry & 7;
  m.rnr_retry = id->rnr_retry & 7;
  m.flow_control = p ? p->flow_control : 0;
  m.qkey = id->qkey;
  memcpy(m.priv, id->connect_data, id->connect_len);
  if (p && p->private_data && p->private_data_len)
    memcpy(m.priv + id->connect_len, p->private_data, p->private_data_len);
  m.pd_len = uint8_t(pd_len);
  id->connect_len = 0;
  id->cm_started = true;
  int r = connect(id->sock, &id->id.route.addr.dst_addr, sizeof(struct sockaddr_in));
  if (r == 0 || errno == EINPROGRESS) {
    id->connecting = true;
    id->st = St::kConnecting;
    id->deadline_ns = NowNs() + kConnectTimeoutNs;
    EpollSet(id, EPOLLOUT | EPOLLIN, true);
    Wake();
  } else {
    ConnectFailed(id, errno);
  }
  pthread_mutex_unlock(&g_mu);
  return Complete(id);
}

SR_EXPORT int rdma_establish(struct rdma_cm_id* cid) {
  Id* id = ToId(cid);
  if (id->id.qp) return Fail(EINVAL);
  pthread_mutex_lock(&g_mu);
  int r = 0;
  if (id->st != St::kRepRcvd) {
    r = Fail(EINVAL);
  } else {
    SendSimple(id, kRtu, 0, nullptr, 0);
    id->st = St::kConnected;
  }
  pthread_mutex_unlock(&g_mu);
  return r;
}

SR_EXPORT int rdma_get_request(struct rdma_cm_id* listen, struct rdma_cm_id** out) {
  Id* l = ToId(listen);
  if (!l->sync) return Fail(EINVAL);
  if (l->id.event) {
    rdma_ack_cm_event(l->id.event);
    l->id.event = nullptr;
  }
  struct rdma_cm_event* e;
  if (GetEvent(ToChan(l->id.channel), &e)) return -1;
  int r = 0;
  if (e->event == RDMA_CM_EVENT_REJECTED) r = Fail(ECONNREFUSED);
  else if (e->status) r = Fail(e->status < 0 ? -e->status : e->status);
  else if (e->event != RDMA_CM_EVENT_CONNECT_REQUEST) r = Fail(EINVAL);
  else if (l->ep_attr) {
    struct ibv_qp_init_attr a = *l->ep_attr;
    r = rdma_create_qp(e->id, l->id.pd, &a);
  }
  if (r) {
    l->id.event = e;
    return r;
  }
  *out = e->id;
  e->id->event = e;
  return 0;
}

SR_EXPORT int rdma_accept(struct rdma_cm_id* cid, struct rdma_conn_param* p) {
  Id* id = ToId(cid);
  pthread_mutex_lock(&g_mu);
  bool ud = id->id.qp_type == IBV_QPT_UD;
  int type = ud ? kSidrRep : kRep;
  size_t pd_len = p && p->private_data ? p->private_data_len : 0;
  if (id->st != St::kReqRcvd || !ValidParam(id, p) || pd_len > size_t(PdMax(id, type))) {
    pthread_mutex_unlock(&g_mu);
    return Fail(EINVAL);
  }
  Msg m {};
  m.type = uint8_t(type);
  m.qpn = id->id.qp ? id->id.qp->qp_num : (p ? p->qp_num : 0);
  m.srq = id->id.qp ? id->id.qp->srq != nullptr : (p ? p->srq : 0);
  if (pd_len) memcpy(m.priv, p->private_data, pd_len);
  m.pd_len = uint8_t(pd_len);
  if (ud) {
    m.qkey = id->qkey;
    bool ok = Send(id, m);
    CloseSock(id);
    id->st = St::kConnected;
    pthread_mutex_unlock(&g_mu);
    return ok ? 0 : Fail(ECONNRESET);
  }
  id->init_depth = !p || p->initiator_depth == RDMA_MAX_INIT_DEPTH ? Min8(id->init_depth, g_max_init_rd)
                                                                   : p->initiator_depth;
  id->resp_res = !p || p->responder_resources == RDMA_MAX_RESP_RES ? Min8(id->resp_res, g_max_rd)
                                                                   : p->responder_resources;
  if (ConnectQp(id)) {
    int e = errno;
    pthread_mutex_unlock(&g_mu);
    return Fail(e);
  }
  m.psn = id->psn;
  m.resp_res = id->resp_res;
  m.init_depth = id->init_depth;
  m.rnr_retry = p ? p->rnr_retry_count & 7 : 7;
  m.flow_control = p ? p->flow_control : 0;
  if (!Send(id, m)) {
    QpToErr(id);
    pthread_mutex_unlock(&g_mu);
    return Fail(ECONNRESET);
  }
  id->st = St::kRepSent;
  pthread_mutex_unlock(&g_mu);
  return Complete(id);
}

static int RejectImpl(struct rdma_cm_id* cid, const void* pd, uint8_t len, int reason) {
  Id* id = ToId(cid);
  pthread_mutex_lock(&g_mu);
  bool ud = id->id.qp_type == IBV_QPT_UD;
  int r = 0;
  if ((id->st != St::kReqRcvd && id->st != St::kRepRcvd) || len > PdMax(id, ud ? kSidrRep : kRej)) {
    r = Fail(EINVAL);
  } else {
    if (ud) SendSimple(id, kSidrRep, kSidrReject, pd, len);
    else SendSimple(id, kRej, uint16_t(reason), pd, len);
    id->st = St::kDone;
  }
  pthread_mutex_unlock(&g_mu);
  return r;
}

SR_EXPORT int rdma_reject(struct rdma_cm_id* id, const void* pd, uint8_t len) {
  return RejectImpl(id, pd, len, kRejConsumer);
}

SR_EXPORT int rdma_reject_ece(struct rdma_cm_id* id, const void* pd, uint8_t len) {
  return RejectImpl(id, pd, len, kRejVendorOption);
}

SR_EXPORT int rdma_notify(struct rdma_cm_id* cid, enum ibv_event_type ev) {
  Id* id = ToId(cid);
  pthread_mutex_lock(&g_mu);
  // Data arrived before the RTU: the connection is established.
  if (ev == IBV_EVENT_COMM_EST && id->st == St::kRepSent) {
    id->st = St::kConnected;
    Queue(id, RDMA_CM_EVENT_ESTABLISHED, 0);
  }
  pthread_mutex_unlock(&g_mu);
  return 0;
}

SR_EXPORT int rdma_disconnect(struct rdma_cm_id* cid) {
  Id* id = ToId(cid);
  if (!id->id.verbs) return Fail(EINVAL);
  pthread_mutex_lock(&g_mu);
  if (id->id.qp_type == IBV_QPT_UD) {
    bool ok = id->cm_started;
    pthread_mutex_unlock(&g_mu);
    return ok ? 0 : Fail(EINVAL);
  }
  QpToErr(id);
  bool wait = true;
  switch (id->st) {
    case St::kConnected:
    case St::kRepSent:
    case St::kRepRcvd:
      if (SendSimple(id, kDreq, 0, nullptr, 0)) {
        id->st = St::kDreqSent;
      } else {
        // The peer is gone: nobody will answer.
        CloseSock(id);
        EnterTimewait(id);
        Queue(id, RDMA_CM_EVENT_DISCONNECTED, 0);
      }
      break;
    case St::kDreqRcvd:
      SendSimple(id, kDrep, 0, nullptr, 0);
      EnterTimewait(id);
      break;
    case St::kDreqSent:
    case St::kTimewait:
    case St::kDone:
      wait = false;
      break;
    default:
      pthread_mutex_unlock(&g_mu);
      return Fail(EINVAL);
  }
  pthread_mutex_unlock(&g_mu);
  return wait ? Complete(id) : 0;
}

SR_EXPORT int rdma_get_cm_event(struct rdma_event_channel* ch, struct rdma_cm_event** ev) {
  if (!ch) return Fail(EINVAL);
  return GetEvent(ToChan(ch), ev);
}

SR_EXPORT int rdma_ack_cm_event(struct rdma_cm_event* ev) {
  if (!ev) return Fail(EINVAL);
  Ev* e = reinterpret_cast<Ev*>(ev);
  pthread_mutex_lock(&g_mu);
  e->owner->acked++;
  pthread_cond_broadcast(&g_cv);
  pthread_mutex_unlock(&g_mu);
  delete e;
  return 0;
}

SR_EXPORT const char* rdma_event_str(enum rdma_cm_event_type ev) {
  switch (ev) {
    case RDMA_CM_EVENT_ADDR_RESOLVED: return "RDMA_CM_EVENT_ADDR_RESOLVED";
    case RDMA_CM_EVENT_ADDR_ERROR: return "RDMA_CM_EVENT_ADDR_ERROR";
    case RDMA_CM_EVENT_ROUTE_RESOLVED: return "RDMA_CM_EVENT_ROUTE_RESOLVED";
    case RDMA_CM_EVENT_ROUTE_ERROR: return "RDMA_CM_EVENT_ROUTE_ERROR";
    case RDMA_CM_EVENT_CONNECT_REQUEST: return "RDMA_CM_EVENT_CONNECT_REQUEST";
    case RDMA_CM_EVENT_CONNECT_RESPONSE: return "RDMA_CM_EVENT_CONNECT_RESPONSE";
    case RDMA_CM_EVENT_CONNECT_ERROR: return "RDMA_CM_EVENT_CONNECT_ERROR";
    case RDMA_CM_EVENT_UNREACHABLE: return "RDMA_CM_EVENT_UNREACHABLE";
    case RDMA_CM_EVENT_REJECTED: return "RDMA_CM_EVENT_REJECTED";
    case RDMA_CM_EVENT_ESTABLISHED: return "RDMA_CM_EVENT_ESTABLISHED";
    case RDMA_CM_EVENT_DISCONNECTED: return "RDMA_CM_EVENT_DISCONNECTED";
    case RDMA_CM_EVENT_DEVICE_REMOVAL: return "RDMA_CM_EVENT_DEVICE_REMOVAL";
    case RDMA_CM_EVENT_MULTICAST_JOIN: return "RDMA_CM_EVENT_MULTICAST_JOIN";
    case RDMA_CM_EVENT_MULTICAST_ERROR: return "RDMA_CM_EVENT_MULTICAST_ERROR";
    case RDMA_CM_EVENT_ADDR_CHANGE: return "RDMA_CM_EVENT_ADDR_CHANGE";
    case RDMA_CM_EVENT_TIMEWAIT_EXIT: return "RDMA_CM_EVENT_TIMEWAIT_EXIT";
    default: return "UNKNOWN EVENT";
  }
}

SR_EXPORT int rdma_init_qp_attr(struct rdma_cm_id* cid, struct ibv_qp_attr* a, int* mask) {
  pthread_mutex_lock(&g_mu);
  int r = QpAttrFor(ToId(cid), a, mask);
  int e = errno;
  pthread_mutex_unlock(&g_mu);
  errno = e;
  return r;
}

static void DestroyCqs(struct rdma_cm_id* id) {
  if (id->recv_cq) {
    ibv_destroy_cq(id->recv_cq);
    if (id->send_cq && id->send_cq != id->recv_cq) ibv_destroy_cq(id->send_cq);
  } else if (id->send_cq) {
    ibv_destroy_cq(id->send_cq);
  }
  id->recv_cq = id->send_cq = nullptr;
  if (id->recv_cq_channel) {
    ibv_destroy_comp_channel(id->recv_cq_channel);
    if (id->send_cq_channel && id->send_cq_channel != id->recv_cq_channel)
      ibv_destroy_comp_channel(id->send_cq_channel);
  } else if (id->send_cq_channel) {
    ibv_destroy_comp_channel(id->send_cq_channel);
  }
  id->recv_cq_channel = id->send_cq_channel = nullptr;
}

// The CQs (each with its completion channel) rdma_create_qp makes when the
// caller gives none, as rdma_create_ep users expect (rdma_get_recv_comp).
static int CreateCqs(struct rdma_cm_id* id, uint32_t send_size, uint32_t recv_size) {
  if (recv_size) {
    id->recv_cq_channel = ibv_create_comp_channel(id->verbs);
    if (!id->recv_cq_channel) goto err;
    id->recv_cq = ibv_create_cq(id->verbs, int(recv_size), id, id->recv_cq_channel, 0);
    if (!id->recv_cq) goto err;
  }
  if (send_size) {
    id->send_cq_channel = ibv_create_comp_channel(id->verbs);
    if (!id->send_cq_channel) goto err;
    id->send_cq = ibv_create_cq(id->verbs, int(send_size), id, id->send_cq_channel, 0);
    if (!id->send_cq) goto err;
  }
  return 0;
err:
  DestroyCqs(id);
  return -1;
}

SR_EXPORT int rdma_create_qp_ex(struct rdma_cm_id* cid, struct ibv_qp_init_attr_ex* attr) {
  Id* id = ToId(cid);
  if (id->id.qp || !id->id.verbs) return Fail(EINVAL);
  if (!(attr->comp_mask & IBV_QP_INIT_ATTR_PD) || !attr->pd) {
    attr->comp_mask |= IBV_QP_INIT_ATTR_PD;
    attr->pd = id->id.pd;
  } else if (attr->pd->context != id->id.verbs) {
    return Fail(EINVAL);
  }
  if ((cid->recv_cq && attr->recv_cq && cid->recv_cq != attr->recv_cq) ||
      (cid->send_cq && attr->send_cq && cid->send_cq != attr->send_cq))
    return Fail(EINVAL);
  if (attr->qp_type == IBV_QPT_XRC_RECV || attr->qp_type == IBV_QPT_XRC_SEND) return Fail(EOPNOTSUPP);
  if (CreateCqs(cid, attr->send_cq || cid->send_cq ? 0 : attr->cap.max_send_wr,
                attr->recv_cq || cid->recv_cq ? 0 : attr->cap.max_recv_wr))
    return -1;
  if (!attr->send_cq) attr->send_cq = cid->send_cq;
  if (!attr->recv_cq) attr->recv_cq = cid->recv_cq;
  if (cid->srq && !attr->srq) attr->srq = cid->srq;
  struct ibv_qp* qp = ibv_create_qp_ex(cid->verbs, attr);
  if (!qp) {
    int e = errno;
    DestroyCqs(cid);
    return Fail(e);
  }
  cid->qp = qp;
  pthread_mutex_lock(&g_mu);
  int r = ModifyTo(id, IBV_QPS_INIT);
  if (!r && qp->qp_type == IBV_QPT_UD) r = ModifyTo(id, IBV_QPS_RTR) || ModifyTo(id, IBV_QPS_RTS) ? -1 : 0;
  int e = errno;
  pthread_mutex_unlock(&g_mu);
  if (r) {
    cid->qp = nullptr;
    ibv_destroy_qp(qp);
    DestroyCqs(cid);
    return Fail(e);
  }
  cid->pd = qp->pd;
  return 0;
}

SR_EXPORT int rdma_create_qp(struct rdma_cm_id* id, struct ibv_pd* pd, struct ibv_qp_init_attr* a) {
  struct ibv_qp_init_attr_ex x;
  memset(&x, 0, sizeof x);
  memcpy(&x, a, sizeof *a);
  x.comp_mask = IBV_QP_INIT_ATTR_PD;
  x.pd = pd ? pd : id->pd;
  int r = rdma_create_qp_ex(id, &x);
  memcpy(a, &x, sizeof *a);
  return r;
}

SR_EXPORT void rdma_destroy_qp(struct rdma_cm_id* id) {
  ibv_destroy_qp(id->qp);
  id->qp = nullptr;
  DestroyCqs(id);
}

SR_EXPORT int rdma_create_srq_ex(struct rdma_cm_id* id, struct ibv_srq_init_attr_ex* attr) {
  if (!id->verbs) return Fail(EINVAL);
  if ((attr->comp_mask & IBV_SRQ_INIT_ATTR_TYPE) && attr->srq_type != IBV_SRQT_BASIC) return Fail(EOPNOTSUPP);
  struct ibv_pd* pd = (attr->comp_mask & IBV_SRQ_INIT_ATTR_PD) && attr->pd ? attr->pd : id->pd;
  struct ibv_srq_init_attr a;
  memset(&a, 0, sizeof a);
  a.srq_context = attr->srq_context;
  a.attr = attr->attr;
  struct ibv_srq* srq = ibv_create_srq(pd, &a);
  if (!srq) return -1;
  attr->attr = a.attr;
  id->srq = srq;
  id->pd = pd;
  return 0;
}

SR_EXPORT int rdma_create_srq(struct rdma_cm_id* id, struct ibv_pd* pd, struct ibv_srq_init_attr* a) {
  struct ibv_srq_init_attr_ex x;
  memset(&x, 0, sizeof x);
  x.srq_context = a->srq_context;
  x.attr = a->attr;
  x.comp_mask = IBV_SRQ_INIT_ATTR_TYPE | IBV_SRQ_INIT_ATTR_PD;
  x.srq_type = IBV_SRQT_BASIC;
  x.pd = pd ? pd : id->pd;
  int r = rdma_create_srq_ex(id, &x);
  a->attr = x.attr;
  return r;
}

SR_EXPORT void rdma_destroy_srq(struct rdma_cm_id* id) {
  ibv_destroy_srq(id->srq);
  id->srq = nullptr;
  DestroyCqs(id);
}

SR_EXPORT struct ibv_context** rdma_get_devices(int* num) {
  if (!Init()) {
    if (num) *num = 0;
    return nullptr;
  }
  struct ibv_context** l = static_cast<struct ibv_context**>(calloc(2, sizeof *l));
  if (!l) {
    errno = ENOMEM;
    return nullptr;
  }
  l[0] = g_ctx;
  if (num) *num = 1;
  return l;
}

SR_EXPORT void rdma_free_devices(struct ibv_context** list) { free(list); }

SR_EXPORT __be16 rdma_get_src_port(struct rdma_cm_id* id) {
  return id->route.addr.src_addr.sa_family == AF_INET ? id->route.addr.src_sin.sin_port : 0;
}

SR_EXPORT __be16 rdma_get_dst_port(struct rdma_cm_id* id) {
  return id->route.addr.dst_addr.sa_family == AF_INET ? id->route.addr.dst_sin.sin_port : 0;
}

SR_EXPORT int rdma_set_option(struct rdma_cm_id* cid, int level, int name, void* val, size_t len) {
  Id* id = ToId(cid);
  if (!val) return Fail(EINVAL);
  if (level == RDMA_OPTION_ID) {
    switch (name) {
      case RDMA_OPTION_ID_TOS:
        if (len != sizeof(uint8_t)) return Fail(EINVAL);
        id->tos = *static_cast<uint8_t*>(val);
        return 0;
      case RDMA_OPTION_ID_REUSEADDR:
      case RDMA_OPTION_ID_AFONLY:
        // Listeners always reuse addresses (see NewTcpSocket); IPv4 only.
        return len == sizeof(int) ? 0 : Fail(EINVAL);
      case RDMA_OPTION_ID_ACK_TIMEOUT:
        if (len != sizeof(uint8_t)) return Fail(EINVAL);
        id->ack_timeout = *static_cast<uint8_t*>(val);
        return 0;
      default:
        return Fail(ENOSYS);
    }
  }
  return Fail(ENOSYS);
}

SR_EXPORT int rdma_migrate_id(struct rdma_cm_id* cid, struct rdma_event_channel* ch) {
  Id* id = ToId(cid);
  if (id->sync && !ch) return Fail(EINVAL);
  bool sync = !ch;
  Chan* to = sync ? NewChan() : ToChan(ch);
  if (!to) return -1;
  if (id->sync && id->id.event) {
    rdma_ack_cm_event(id->id.event);
    id->id.event = nullptr;
  }
  pthread_mutex_lock(&g_mu);
  Chan* from = ToChan(id->id.channel);
  MoveEvents(id, from, to);
  id->id.channel = &to->ch;
  bool was_sync = id->sync;
  id->sync = sync;
  // Events already handed out on the old channel are acknowledged there.
  while (id->acked < id->reported) pthread_cond_wait(&g_cv, &g_mu);
  pthread_mutex_unlock(&g_mu);
  if (was_sync) FreeChan(from);
  return 0;
}

SR_EXPORT int rdma_join_multicast(struct rdma_cm_id*, struct sockaddr*, void*) { return Fail(ENOSYS); }
SR_EXPORT int rdma_join_multicast_ex(struct rdma_cm_id*, struct rdma_cm_join_mc_attr_ex*, void*) {
  return Fail(ENOSYS);
}
SR_EXPORT int rdma_leave_multicast(struct rdma_cm_id*, struct sockaddr*) { return Fail(ENOSYS); }

SR_EXPORT int rdma_set_local_ece(struct rdma_cm_id* cid, struct ibv_ece* ece) {
  if (!cid || cid->qp || !ece || !ece->vendor_id || ece->comp_mask) return Fail(EINVAL);
  ToId(cid)->local_ece = *ece;
  return 0;
}

// softrdma has no enhanced connection establishment options: the peer's are
// always empty.
SR_EXPORT int rdma_get_remote_ece(struct rdma_cm_id* cid, struct ibv_ece* ece) {
  if (!cid || cid->qp || !ece) return Fail(EINVAL);
  memset(ece, 0, sizeof *ece);
  return 0;
}

// ------------------------------------------------------------ addrinfo --
static int CopyAddr(struct sockaddr** dst, socklen_t* dlen, const struct sockaddr* src, socklen_t len) {
  *dst = static_cast<struct sockaddr*>(malloc(len));
  if (!*dst) return Fail(ENOMEM);
  memcpy(*dst, src, len);
  *dlen = len;
  return 0;
}

SR_EXPORT void rdma_freeaddrinfo(struct rdma_addrinfo* res) {
  while (res) {
    struct rdma_addrinfo* n = res->ai_next;
    free(res->ai_connect);
    free(res->ai_route);
    free(res->ai_src_canonname);
    free(res->ai_dst_canonname);
    free(res->ai_src_addr);
    free(res->ai_dst_addr);
    free(res);
    res = n;
  }
}

SR_EXPORT int rdma_getaddrinfo(const char* node, const char* service, const struct rdma_addrinfo* hints,
                               struct rdma_addrinfo** res) {
  if (!node && !service && !hints) return Fail(EINVAL);
  struct rdma_addrinfo* rai = static_cast<struct rdma_addrinfo*>(calloc(1, sizeof *rai));
  if (!rai) return Fail(ENOMEM);
  int ret = 0;
  if (node || service) {
    struct addrinfo h;
    memset(&h, 0, sizeof h);
    if (hints) {
      if (hints->ai_flags & RAI_PASSIVE) h.ai_flags |= AI_PASSIVE;
      if (hints->ai_flags & RAI_NUMERICHOST) h.ai_flags |= AI_NUMERICHOST;
      if (hints->ai_family != AF_IB) h.ai_family = hints->ai_family;
      if (hints->ai_qp_type == IBV_QPT_UD) h.ai_socktype = SOCK_DGRAM;
      else if (hints->ai_qp_type) h.ai_socktype = SOCK_STREAM;
      if (hints->ai_port_space == RDMA_PS_TCP) h.ai_protocol = IPPROTO_TCP;
      else if (hints->ai_port_space == RDMA_PS_UDP || hints->ai_port_space == RDMA_PS_IPOIB)
        h.ai_protocol = IPPROTO_UDP;
    }
    // softrdma's addresses are IPv4: "localhost" is 127.0.0.1, not ::1.
    if (h.ai_family == AF_UNSPEC) h.ai_family = AF_INET;
    struct addrinfo* ai = nullptr;
    ret = getaddrinfo(node, service, &h, &ai);
    if (ret) {
      free(rai);
      return ret;
    }
    rai->ai_qp_type = hints && hints->ai_qp_type ? hints->ai_qp_type
                                                 : (ai->ai_socktype == SOCK_DGRAM ? IBV_QPT_UD : IBV_QPT_RC);
    rai->ai_port_space = hints && hints->ai_port_space
                             ? hints->ai_port_space
                             : (ai->ai_protocol == IPPROTO_UDP ? RDMA_PS_UDP : RDMA_PS_TCP);
    rai->ai_family = ai->ai_family;
    if (h.ai_flags & AI_PASSIVE) {
      rai->ai_flags = RAI_PASSIVE;
      if (ai->ai_canonname) rai->ai_src_canonname = strdup(ai->ai_canonname);
      ret = CopyAddr(&rai->ai_src_addr, &rai->ai_src_len, ai->ai_addr, ai->ai_addrlen);
    } else {
      if (ai->ai_canonname) rai->ai_dst_canonname = strdup(ai->ai_canonname);
      ret = CopyAddr(&rai->ai_dst_addr, &rai->ai_dst_len, ai->ai_addr, ai->ai_addrlen);
    }
    freeaddrinfo(ai);
  } else {
    rai->ai_flags = hints->ai_flags;
    rai->ai_family = hints->ai_family;
    rai->ai_qp_type = hints->ai_qp_type;
    rai->ai_port_space = hints->ai_port_space;
    if (hints->ai_dst_len) ret = CopyAddr(&rai->ai_dst_addr, &rai->ai_dst_len, hints->ai_dst_addr, hints->ai_dst_len);
  }
  if (!ret && !rai->ai_src_len && hints && hints->ai_src_len)
    ret = CopyAddr(&rai->ai_src_addr, &rai->ai_src_len, hints->ai_src_addr, hints->ai_src_len);
  if (ret) {
    rdma_freeaddrinfo(rai);
    return ret;
  }
  *res = rai;
  return 0;
}

// ------------------------------------------------------------- endpoints --
SR_EXPORT int rdma_create_ep(struct rdma_cm_id** out, struct rdma_addrinfo* res, struct ibv_pd* pd,
                             struct ibv_qp_init_attr* qp_init_attr) {
  struct rdma_cm_id* cid;
  if (!out || !res) return Fail(EINVAL);
  if (CreateIdImpl(nullptr, &cid, nullptr, static_cast<enum rdma_port_space>(res->ai_port_space),
                   static_cast<enum ibv_qp_type>(res->ai_qp_type)))
    return -1;
  Id* id = ToId(cid);
  int r;
  if (res->ai_flags & RAI_PASSIVE) {
    r = rdma_bind_addr(cid, res->ai_src_addr);
    if (!r && pd) cid->pd = pd;
    if (!r && qp_init_attr) {
      id->ep_attr = new (std::nothrow) struct ibv_qp_init_attr(*qp_init_attr);
      if (!id->ep_attr) r = Fail(ENOMEM);
      else id->ep_attr->qp_type = static_cast<enum ibv_qp_type>(res->ai_qp_type);
    }
  } else {
    r = rdma_resolve_addr(cid, res->ai_src_addr, res->ai_dst_addr, 2000);
    if (!r) r = rdma_resolve_route(cid, 2000);
    if (!r && qp_init_attr) {
      qp_init_attr->qp_type = static_cast<enum ibv_qp_type>(res->ai_qp_type);
      r = rdma_create_qp(cid, pd, qp_init_attr);
    }
    if (!r && res->ai_connect_len) {
      if (res->ai_connect_len > sizeof id->connect_data) {
        r = Fail(EINVAL);
      } else {
        memcpy(id->connect_data, res->ai_connect, res->ai_connect_len);
        id->connect_len = res->ai_connect_len;
      }
    }
  }
  if (r) {
    int e = errno;
    rdma_destroy_ep(cid);
    return Fail(e);
  }
  *out = cid;
  return 0;
}

SR_EXPORT void rdma_destroy_ep(struct rdma_cm_id* id) {
  if (id->qp) rdma_destroy_qp(id);
  if (id->srq) rdma_destroy_srq(id);
  rdma_destroy_id(id);
}
