// softrdma: the device, its context, queries, events and the small helpers
// of the verbs ABI (strings, rates, sysfs).
#include "logline.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

namespace softrdma {

std::atomic<int> g_debug{0};

void Log(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  VLogLine(fmt, ap);
  va_end(ap);
}

uint64_t NowNs() { return MonotonicNs(); }

namespace {

Host g_host;
Device g_device;
struct ibv_device* g_list[2];
pthread_once_t g_once = PTHREAD_ONCE_INIT;
bool g_init_ok = false;

// Optional LID table (ib personality): "LID IPv4" per line.
constexpr int kMaxLidTable = 1024;
struct LidEntry {
  uint16_t lid;
  uint32_t ip;
};
LidEntry g_lids[kMaxLidTable];
int g_nlids = 0;

void LoadLidTable(const char* path) {
  FILE* f = fopen(path, "re");
  if (!f) return;
  char line[256];
  while (g_nlids < kMaxLidTable && fgets(line, sizeof line, f)) {
    char ipstr[64];
    unsigned lid;
    if (line[0] == '#') continue;
    if (sscanf(line, "%i %63s", (int*)&lid, ipstr) != 2) continue;
    struct in_addr a;
    if (lid == 0 || lid >= 0xC000 || inet_pton(AF_INET, ipstr, &a) != 1) continue;
    g_lids[g_nlids++] = {uint16_t(lid), ntohl(a.s_addr)};
  }
  fclose(f);
}

uint32_t PickIp() {
  const char* e = getenv("SOFTRDMA_IP");
  struct in_addr a;
  if (e && *e && inet_pton(AF_INET, e, &a) == 1) return ntohl(a.s_addr);
  uint32_t ip = 0;
  struct ifaddrs* ifs = nullptr;
  if (getifaddrs(&ifs) == 0) {
    for (struct ifaddrs* i = ifs; i; i = i->ifa_next) {
      if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
      if (!(i->ifa_flags & IFF_UP) || (i->ifa_flags & IFF_LOOPBACK)) continue;
      ip = ntohl(reinterpret_cast<struct sockaddr_in*>(i->ifa_addr)->sin_addr.s_addr);
      break;
    }
    freeifaddrs(ifs);
  }
  return ip ? ip : 0x7f000001u;
}

void DoInit() {
  const char* d = getenv("SOFTRDMA_DEBUG");
  if (d && *d && *d != '0') g_debug = 1;
  const char* m = getenv("SOFTRDMA_MODE");
  g_host.mode = (m && strcmp(m, "ib") == 0) ? Personality::kIb : Personality::kRoce;
  g_host.ip = PickIp();
  const char* lt = getenv("SOFTRDMA_LID_TABLE");
  if (lt && *lt) LoadLidTable(lt);
  uint16_t lid = 0;
  for (int i = 0; i < g_nlids; i++)
    if (g_lids[i].ip == g_host.ip) lid = g_lids[i].lid;
  if (!lid) {
    lid = uint16_t(g_host.ip & 0xffff);
    if (lid == 0 || lid >= 0xC000) lid = uint16_t((g_host.ip & 0x3fff) | 1);
  }
  g_host.lid = lid;
  uint8_t g[8] = {0x02, 0x53, 0x52, uint8_t(g_host.mode == Personality::kIb ? 1 : 2),
                  uint8_t(g_host.ip >> 24), uint8_t(g_host.ip >> 16), uint8_t(g_host.ip >> 8),
                  uint8_t(g_host.ip)};
  memcpy(&g_host.guid_be, g, 8);
  memset(g_host.gid, 0, sizeof g_host.gid);
  g_host.gid[0].raw[0] = 0xfe;
  g_host.gid[0].raw[1] = 0x80;
  memcpy(&g_host.gid[0].raw[8], g, 8);
  if (g_host.mode == Personality::kRoce) {
    g_host.gid[1].raw[10] = 0xff;
    g_host.gid[1].raw[11] = 0xff;
    uint32_t nip = htonl(g_host.ip);
    memcpy(&g_host.gid[1].raw[12], &nip, 4);
  }
  memset(&g_device, 0, sizeof g_device);
  g_device.dev.node_type = IBV_NODE_CA;
  g_device.dev.transport_type = IBV_TRANSPORT_IB;
  snprintf(g_device.dev.name, sizeof g_device.dev.name, "softrdma0");
  snprintf(g_device.dev.dev_name, sizeof g_device.dev.dev_name, "uverbs-softrdma0");
  snprintf(g_device.dev.dev_path, sizeof g_device.dev.dev_path,
           "/sys/class/infiniband_verbs/uverbs-softrdma0");
  snprintf(g_device.dev.ibdev_path, sizeof g_device.dev.ibdev_path, "/sys/class/infiniband/softrdma0");
  g_list[0] = &g_device.dev;
  g_list[1] = nullptr;
  g_init_ok = true;
  char ipbuf[32];
  struct in_addr a;
  a.s_addr = htonl(g_host.ip);
  SR_LOG("softrdma: mode=%s ip=%s lid=%u", g_host.mode == Personality::kIb ? "ib" : "roce",
         inet_ntop(AF_INET, &a, ipbuf, sizeof ipbuf), g_host.lid);
}

bool IsOurs(struct ibv_device* d) { return d == &g_device.dev; }

int GidTblLen() { return g_host.mode == Personality::kIb ? 1 : 2; }

}  // namespace

bool InitOnce() {
  pthread_once(&g_once, DoInit);
  return g_init_ok;
}

const Host& host() { return g_host; }

uint32_t LidToIp(uint16_t lid) {
  for (int i = 0; i < g_nlids; i++)
    if (g_lids[i].lid == lid) return g_lids[i].ip;
  if (lid == 0 || lid >= 0xC000) return 0;
  return (g_host.ip & 0xffff0000u) | lid;
}

uint16_t IpToLid(uint32_t ip) {
  for (int i = 0; i < g_nlids; i++)
    if (g_lids[i].ip == ip) return g_lids[i].lid;
  uint16_t lid = uint16_t(ip & 0xffff);
  if (lid == 0 || lid >= 0xC000) lid = uint16_t((ip & 0x3fff) | 1);
  return lid;
}

static uint32_t GidToIp(const union ibv_gid& g) {
  static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (memcmp(g.raw, mapped, 12) == 0)
    return (uint32_t(g.raw[12]) << 24) | (uint32_t(g.raw[13]) << 16) | (uint32_t(g.raw[14]) << 8) | g.raw[15];
  // Our GUID-derived GIDs (any prefix): 02 53 52 mode ip[4]
  if (g.raw[8] == 0x02 && g.raw[9] == 0x53 && g.raw[10] == 0x52)
    return (uint32_t(g.raw[12]) << 24) | (uint32_t(g.raw[13]) << 16) | (uint32_t(g.raw[14]) << 8) | g.raw[15];
  return 0;
}

uint32_t ResolveAv(const struct ibv_ah_attr& av) {
  if (g_host.mode == Personality::kIb) {
    if (av.dlid) return LidToIp(av.dlid);
    if (av.is_global) return GidToIp(av.grh.dgid);
    return 0;
  }
  if (!av.is_global) return 0;
  return GidToIp(av.grh.dgid);
}

void PostAsync(Context* ctx, enum ibv_event_type type, void* obj) {
  struct {
    uint32_t type;
    uint32_t pad;
    void* obj;
  } rec = {uint32_t(type), 0, obj};
  if (ctx->async_wr >= 0) {
    ssize_t r = write(ctx->async_wr, &rec, sizeof rec);
    (void)r;
  }
}

int QueryDeviceImpl(struct ibv_context*, struct ibv_device_attr* a) {
  memset(a, 0, sizeof *a);
  snprintf(a->fw_ver, sizeof a->fw_ver, "softrdma 0.1");
  a->node_guid = g_host.guid_be;
  a->sys_image_guid = g_host.guid_be;
  a->max_mr_size = 1ull << 40;
  a->page_size_cap = 0xfffff000u;
  a->vendor_id = kVendorId;
  a->vendor_part_id = kVendorPartId;
  a->hw_ver = kHwVer;
  a->max_qp = kMaxQp;
  a->max_qp_wr = kMaxQpWr;
  a->device_cap_flags = IBV_DEVICE_RC_RNR_NAK_GEN;
  a->max_sge = kMaxSge;
  a->max_sge_rd = kMaxSge;
  a->max_cq = kMaxCq;
  a->max_cqe = kMaxCqe;
  a->max_mr = kMaxMr;
  a->max_pd = kMaxPd;
  a->max_qp_rd_atom = kMaxRdAtom;
  a->max_qp_init_rd_atom = kMaxRdAtom;
  a->max_res_rd_atom = kMaxRdAtom * 1024;
  a->atomic_cap = IBV_ATOMIC_HCA;
  a->max_ah = kMaxAh;
  a->max_srq = kMaxSrq;
  a->max_srq_wr = kMaxSrqWr;
  a->max_srq_sge = kMaxSge;
  a->max_pkeys = kPkeyTblLen;
  a->local_ca_ack_delay = 15;
  a->phys_port_cnt = 1;
  return 0;
}

static void FillPort(struct ibv_port_attr* a) {
  memset(a, 0, sizeof *a);
  a->state = IBV_PORT_ACTIVE;
  a->max_mtu = IBV_MTU_4096;
  a->active_mtu = IBV_MTU_4096;
  a->gid_tbl_len = GidTblLen();
  a->max_msg_sz = uint32_t(kMaxMsg);
  a->pkey_tbl_len = kPkeyTblLen;
  a->max_vl_num = 1;
  a->active_width = 1;   // 1X
  a->active_speed = 1;   // 2.5 Gb/s signalling: a nominal value, the wire is TCP
  a->phys_state = 5;     // LinkUp
  if (g_host.mode == Personality::kIb) {
    a->port_cap_flags = IBV_PORT_CM_SUP | IBV_PORT_SYS_IMAGE_GUID_SUP;
    a->lid = g_host.lid;
    a->sm_lid = 0;
    a->link_layer = IBV_LINK_LAYER_INFINIBAND;
  } else {
    a->port_cap_flags = IBV_PORT_CM_SUP | IBV_PORT_IP_BASED_GIDS;
    a->link_layer = IBV_LINK_LAYER_ETHERNET;
    a->flags = IBV_QPF_GRH_REQUIRED;
  }
}

int QueryPortImpl(struct ibv_context*, uint8_t port, struct ibv_port_attr* a, size_t len) {
  if (port != 1) return EINVAL;
  struct ibv_port_attr full;
  FillPort(&full);
  memcpy(a, &full, len < sizeof full ? len : sizeof full);
  return 0;
}

static int QueryDeviceEx(struct ibv_context* c, const struct ibv_query_device_ex_input* input,
                         struct ibv_device_attr_ex* attr, size_t attr_size) {
  if (input && input->comp_mask) return EINVAL;
  struct ibv_device_attr_ex full;
  memset(&full, 0, sizeof full);
  QueryDeviceImpl(c, &full.orig_attr);
  full.max_dm_size = 0;
  if (attr_size < sizeof(full.orig_attr)) return EINVAL;
  memcpy(attr, &full, attr_size < sizeof full ? attr_size : sizeof full);
  return 0;
}

void FillContextOpsDevice(Context* ctx);
void FillContextOpsDevice(Context* ctx) {
  ctx->vctx.query_port = QueryPortImpl;
  ctx->vctx.query_device_ex = QueryDeviceEx;
}

}  // namespace softrdma

using namespace softrdma;

// ------------------------------------------------------------ device list --
SR_EXPORT struct ibv_device** ibv_get_device_list(int* num) {
  if (!InitOnce()) {
    if (num) *num = 0;
    errno = ENOMEM;
    return nullptr;
  }
  struct ibv_device** l = static_cast<struct ibv_device**>(calloc(2, sizeof(*l)));
  if (!l) {
    errno = ENOMEM;
    return nullptr;
  }
  l[0] = g_list[0];
  if (num) *num = 1;
  return l;
}

SR_EXPORT void ibv_free_device_list(struct ibv_device** list) { free(list); }

SR_EXPORT const char* ibv_get_device_name(struct ibv_device* d) { return d ? d->name : nullptr; }

SR_EXPORT int ibv_get_device_index(struct ibv_device* d) { return IsOurs(d) ? 0 : -1; }

SR_EXPORT __be64 ibv_get_device_guid(struct ibv_device* d) {
  InitOnce();
  return IsOurs(d) ? g_host.guid_be : 0;
}

SR_EXPORT struct ibv_context* ibv_open_device(struct ibv_device* d) {
  if (!InitOnce() || !IsOurs(d)) {
    errno = ENODEV;
    return nullptr;
  }
  if (!EngineStart()) {
    errno = EIO;
    return nullptr;
  }
  Context* ctx = new (std::nothrow) Context;
  if (!ctx) {
    errno = ENOMEM;
    return nullptr;
  }
  memset(&ctx->vctx, 0, sizeof ctx->vctx);
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) {
    int e = errno;
    delete ctx;
    errno = e;
    return nullptr;
  }
  ctx->async_wr = p[1];
  OwnFd(p[0]);
  OwnFd(p[1]);
  struct ibv_context* c = &ctx->vctx.context;
  c->device = d;
  c->cmd_fd = -1;
  c->async_fd = p[0];
  c->num_comp_vectors = 1;
  pthread_mutex_init(&c->mutex, nullptr);
  c->abi_compat = __VERBS_ABI_IS_EXTENDED;
  ctx->vctx.sz = sizeof(struct verbs_context);
  FillContextOpsDevice(ctx);
  FillContextOps(ctx);
  return c;
}

SR_EXPORT int ibv_close_device(struct ibv_context* c) {
  Context* ctx = ToCtx(c);
  CloseOwned(c->async_fd);
  CloseOwned(ctx->async_wr);
  pthread_mutex_destroy(&c->mutex);
  delete ctx;
  return 0;
}

SR_EXPORT struct ibv_context* ibv_import_device(int) {
  errno = EOPNOTSUPP;
  return nullptr;
}

// ---------------------------------------------------------------- queries --
SR_EXPORT int ibv_query_device(struct ibv_context* c, struct ibv_device_attr* a) {
  return QueryDeviceImpl(c, a);
}

// The exported symbol takes the legacy port attribute layout (up to link_layer).
SR_EXPORT int ibv_query_port(struct ibv_context* c, uint8_t port, struct _compat_ibv_port_attr* a) {
  return QueryPortImpl(c, port, reinterpret_cast<struct ibv_port_attr*>(a),
                       offsetof(struct ibv_port_attr, flags));
}

SR_EXPORT int ibv_query_gid(struct ibv_context*, uint8_t port, int index, union ibv_gid* gid) {
  if (port != 1 || index < 0 || index >= GidTblLen()) {
    errno = EINVAL;
    return -1;
  }
  *gid = g_host.gid[index];
  return 0;
}

static uint32_t GidType(int index) {
  if (g_host.mode == Personality::kIb) return IBV_GID_TYPE_IB;
  (void)index;
  return IBV_GID_TYPE_ROCE_V2;
}

SR_EXPORT int _ibv_query_gid_ex(struct ibv_context*, uint32_t port, uint32_t index,
                                struct ibv_gid_entry* e, uint32_t flags, size_t entry_size) {
  if (flags) return EINVAL;
  if (port != 1 || index >= uint32_t(GidTblLen())) return ENODATA;
  struct ibv_gid_entry full;
  memset(&full, 0, sizeof full);
  full.gid = g_host.gid[index];
  full.gid_index = index;
  full.port_num = port;
  full.gid_type = GidType(int(index));
  full.ndev_ifindex = 0;
  memcpy(e, &full, entry_size < sizeof full ? entry_size : sizeof full);
  return 0;
}

SR_EXPORT ssize_t _ibv_query_gid_table(struct ibv_context* c, struct ibv_gid_entry* entries,
                                       size_t max_entries, uint32_t flags, size_t entry_size) {
  if (flags) return -EINVAL;
  size_t n = size_t(GidTblLen());
  if (max_entries < n) return -EINVAL;
  for (size_t i = 0; i < n; i++) {
    int r = _ibv_query_gid_ex(c, 1, uint32_t(i),
                              reinterpret_cast<struct ibv_gid_entry*>(reinterpret_cast<char*>(entries) + i * entry_size),
                              0, entry_size);
    if (r) return -r;
  }
  return ssize_t(n);
}

// rdma-core's private helper ibv_devinfo uses to print "RoCE v2": 0 = IB/RoCE v1, 1 = RoCE v2.
SR_EXPORT int ibv_query_gid_type(struct ibv_context*, uint8_t port, unsigned int index, unsigned int* type) {
  if (port != 1 || index >= unsigned(GidTblLen())) {
    errno = EINVAL;
    return -1;
  }
  *type = g_host.mode == Personality::kIb ? 0 : 1;
  return 0;
}

SR_EXPORT int ibv_query_pkey(struct ibv_context*, uint8_t port, int index, __be16* pkey) {
  if (port != 1 || index != 0) {
    errno = EINVAL;
    return -1;
  }
  *pkey = htons(0xffff);
  return 0;
}

SR_EXPORT int ibv_get_pkey_index(struct ibv_context*, uint8_t port, __be16 pkey) {
  if (port != 1) return -EINVAL;
  if ((ntohs(pkey) & 0x7fff) == 0x7fff) return 0;
  return -ENOENT;
}

// ---------------------------------------------------------------- events --
SR_EXPORT int ibv_get_async_event(struct ibv_context* c, struct ibv_async_event* ev) {
  struct {
    uint32_t type;
    uint32_t pad;
    void* obj;
  } rec;
  ssize_t n;
  do {
    n = read(c->async_fd, &rec, sizeof rec);
  } while (n < 0 && errno == EINTR);
  if (n != ssize_t(sizeof rec)) return -1;
  ev->event_type = static_cast<enum ibv_event_type>(rec.type);
  switch (ev->event_type) {
    case IBV_EVENT_CQ_ERR:
      ev->element.cq = static_cast<struct ibv_cq*>(rec.obj);
      break;
    case IBV_EVENT_QP_FATAL:
    case IBV_EVENT_QP_REQ_ERR:
    case IBV_EVENT_QP_ACCESS_ERR:
    case IBV_EVENT_COMM_EST:
    case IBV_EVENT_SQ_DRAINED:
    case IBV_EVENT_PATH_MIG:
    case IBV_EVENT_PATH_MIG_ERR:
    case IBV_EVENT_QP_LAST_WQE_REACHED:
      ev->element.qp = static_cast<struct ibv_qp*>(rec.obj);
      break;
    case IBV_EVENT_SRQ_ERR:
    case IBV_EVENT_SRQ_LIMIT_REACHED:
      ev->element.srq = static_cast<struct ibv_srq*>(rec.obj);
      break;
    default:
      ev->element.port_num = int(reinterpret_cast<uintptr_t>(rec.obj));
  }
  return 0;
}

SR_EXPORT void ibv_ack_async_event(struct ibv_async_event* ev) {
  switch (ev->event_type) {
    case IBV_EVENT_CQ_ERR: {
      struct ibv_cq* cq = ev->element.cq;
      pthread_mutex_lock(&cq->mutex);
      cq->async_events_completed++;
      pthread_cond_signal(&cq->cond);
      pthread_mutex_unlock(&cq->mutex);
      break;
    }
    case IBV_EVENT_QP_FATAL:
    case IBV_EVENT_QP_REQ_ERR:
    case IBV_EVENT_QP_ACCESS_ERR:
    case IBV_EVENT_COMM_EST:
    case IBV_EVENT_SQ_DRAINED:
    case IBV_EVENT_PATH_MIG:
    case IBV_EVENT_PATH_MIG_ERR:
    case IBV_EVENT_QP_LAST_WQE_REACHED: {
      struct ibv_qp* qp = ev->element.qp;
      pthread_mutex_lock(&qp->mutex);
      qp->events_completed++;
      pthread_cond_signal(&qp->cond);
      pthread_mutex_unlock(&qp->mutex);
      break;
    }
    case IBV_EVENT_SRQ_ERR:
    case IBV_EVENT_SRQ_LIMIT_REACHED: {
      struct ibv_srq* srq = ev->element.srq;
      pthread_mutex_lock(&srq->mutex);
      srq->events_completed++;
      pthread_cond_signal(&srq->cond);
      pthread_mutex_unlock(&srq->mutex);
      break;
    }
    default:
      break;
  }
}

// Completion channels: a pipe carrying one CQ pointer per event. The public
// struct is the first member of ours, which also keeps the pipe's write end.
SR_EXPORT struct ibv_comp_channel* ibv_create_comp_channel(struct ibv_context* c) {
  Channel* ch = static_cast<Channel*>(calloc(1, sizeof(Channel)));
  if (!ch) {
    errno = ENOMEM;
    return nullptr;
  }
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) {
    int e = errno;
    free(ch);
    errno = e;
    return nullptr;
  }
  ch->ch.context = c;
  ch->ch.fd = p[0];
  ch->ch.refcnt = 0;
  ch->wr = p[1];
  OwnFd(p[0]);
  OwnFd(p[1]);
  return &ch->ch;
}

SR_EXPORT int ibv_destroy_comp_channel(struct ibv_comp_channel* ch) {
  if (__atomic_load_n(&ch->refcnt, __ATOMIC_ACQUIRE) != 0) return EBUSY;
  CloseOwned(ch->fd);
  CloseOwned(reinterpret_cast<Channel*>(ch)->wr);
  free(ch);
  return 0;
}

SR_EXPORT int ibv_get_cq_event(struct ibv_comp_channel* ch, struct ibv_cq** cq, void** cq_context) {
  void* p;
  ssize_t n;
  do {
    n = read(ch->fd, &p, sizeof p);
  } while (n < 0 && errno == EINTR);
  if (n != ssize_t(sizeof p)) return -1;
  *cq = static_cast<struct ibv_cq*>(p);
  *cq_context = (*cq)->cq_context;
  return 0;
}

SR_EXPORT void ibv_ack_cq_events(struct ibv_cq* cq, unsigned int nevents) {
  pthread_mutex_lock(&cq->mutex);
  cq->comp_events_completed += nevents;
  pthread_cond_signal(&cq->cond);
  pthread_mutex_unlock(&cq->mutex);
}

// ---------------------------------------------------------------- fork --
SR_EXPORT int ibv_fork_init(void) { return 0; }
SR_EXPORT enum ibv_fork_status ibv_is_fork_initialized(void) { return IBV_FORK_UNNEEDED; }
SR_EXPORT int ibv_dontfork_range(void*, size_t) { return 0; }
SR_EXPORT int ibv_dofork_range(void*, size_t) { return 0; }

// ---------------------------------------------------------------- strings --
SR_EXPORT const char* ibv_node_type_str(enum ibv_node_type t) {
  switch (t) {
    case IBV_NODE_CA: return "InfiniBand channel adapter";
    case IBV_NODE_SWITCH: return "InfiniBand switch";
    case IBV_NODE_ROUTER: return "InfiniBand router";
    case IBV_NODE_RNIC: return "iWARP NIC";
    case IBV_NODE_USNIC: return "usNIC";
    case IBV_NODE_USNIC_UDP: return "usNIC UDP";
    case IBV_NODE_UNSPECIFIED: return "unspecified";
    default: return "unknown";
  }
}

SR_EXPORT const char* ibv_port_state_str(enum ibv_port_state s) {
  switch (s) {
    case IBV_PORT_NOP: return "PORT_NOP";
    case IBV_PORT_DOWN: return "PORT_DOWN";
    case IBV_PORT_INIT: return "PORT_INIT";
    case IBV_PORT_ARMED: return "PORT_ARMED";
    case IBV_PORT_ACTIVE: return "PORT_ACTIVE";
    case IBV_PORT_ACTIVE_DEFER: return "PORT_ACTIVE_DEFER";
    default: return "invalid state";
  }
}

SR_EXPORT const char* ibv_event_type_str(enum ibv_event_type e) {
  switch (e) {
    case IBV_EVENT_CQ_ERR: return "CQ error";
    case IBV_EVENT_QP_FATAL: return "local work queue catastrophic error";
    case IBV_EVENT_QP_REQ_ERR: return "invalid request local work queue error";
    case IBV_EVENT_QP_ACCESS_ERR: return "local access violation work queue error";
    case IBV_EVENT_COMM_EST: return "communication established";
    case IBV_EVENT_SQ_DRAINED: return "send queue drained";
    case IBV_EVENT_PATH_MIG: return "path migrated";
    case IBV_EVENT_PATH_MIG_ERR: return "path migration request error";
    case IBV_EVENT_DEVICE_FATAL: return "local catastrophic error";
    case IBV_EVENT_PORT_ACTIVE: return "port active";
    case IBV_EVENT_PORT_ERR: return "port error";
    case IBV_EVENT_LID_CHANGE: return "LID change";
    case IBV_EVENT_PKEY_CHANGE: return "P_Key change";
    case IBV_EVENT_SM_CHANGE: return "SM change";
    case IBV_EVENT_SRQ_ERR: return "SRQ catastrophic error";
    case IBV_EVENT_SRQ_LIMIT_REACHED: return "SRQ limit reached";
    case IBV_EVENT_QP_LAST_WQE_REACHED: return "last WQE reached";
    case IBV_EVENT_CLIENT_REREGISTER: return "client reregistration";
    case IBV_EVENT_GID_CHANGE: return "GID table change";
    case IBV_EVENT_WQ_FATAL: return "WQ fatal";
    default: return "unknown";
  }
}

SR_EXPORT const char* ibv_wc_status_str(enum ibv_wc_status s) {
  switch (s) {
    case IBV_WC_SUCCESS: return "success";
    case IBV_WC_LOC_LEN_ERR: return "local length error";
    case IBV_WC_LOC_QP_OP_ERR: return "local QP operation error";
    case IBV_WC_LOC_EEC_OP_ERR: return "local EE context operation error";
    case IBV_WC_LOC_PROT_ERR: return "local protection error";
    case IBV_WC_WR_FLUSH_ERR: return "Work Request Flushed Error";
    case IBV_WC_MW_BIND_ERR: return "memory window bind error";
    case IBV_WC_BAD_RESP_ERR: return "bad response error";
    case IBV_WC_LOC_ACCESS_ERR: return "local access error";
    case IBV_WC_REM_INV_REQ_ERR: return "remote invalid request error";
    case IBV_WC_REM_ACCESS_ERR: return "remote access error";
    case IBV_WC_REM_OP_ERR: return "remote operation error";
    case IBV_WC_RETRY_EXC_ERR: return "transport retry counter exceeded";
    case IBV_WC_RNR_RETRY_EXC_ERR: return "RNR retry counter exceeded";
    case IBV_WC_LOC_RDD_VIOL_ERR: return "local RDD violation error";
    case IBV_WC_REM_INV_RD_REQ_ERR: return "remote invalid RD request";
    case IBV_WC_REM_ABORT_ERR: return "aborted error";
    case IBV_WC_INV_EECN_ERR: return "invalid EE context number";
    case IBV_WC_INV_EEC_STATE_ERR: return "invalid EE context state";
    case IBV_WC_FATAL_ERR: return "fatal error";
    case IBV_WC_RESP_TIMEOUT_ERR: return "response timeout error";
    case IBV_WC_GENERAL_ERR: return "general error";
    case IBV_WC_TM_ERR: return "TM error";
    case IBV_WC_TM_RNDV_INCOMPLETE: return "TM software rendezvous";
    default: return "unknown";
  }
}

// ---------------------------------------------------------------- rates --
// IB static rate enum <-> multiples of 2.5 Gb/s and Mb/s.
namespace {
struct RateRow {
  enum ibv_rate rate;
  int mult;
  int mbps;
};
const RateRow kRates[] = {
    {IBV_RATE_2_5_GBPS, 1, 2500},      {IBV_RATE_5_GBPS, 2, 5000},
    {IBV_RATE_10_GBPS, 4, 10000},      {IBV_RATE_20_GBPS, 8, 20000},
    {IBV_RATE_30_GBPS, 12, 30000},     {IBV_RATE_40_GBPS, 16, 40000},
    {IBV_RATE_60_GBPS, 24, 60000},     {IBV_RATE_80_GBPS, 32, 80000},
    {IBV_RATE_120_GBPS, 48, 120000},   {IBV_RATE_14_GBPS, 5, 14062},
    {IBV_RATE_56_GBPS, 22, 56250},     {IBV_RATE_112_GBPS, 45, 112500},
    {IBV_RATE_168_GBPS, 67, 168750},   {IBV_RATE_25_GBPS, 10, 25781},
    {IBV_RATE_100_GBPS, 40, 103125},   {IBV_RATE_200_GBPS, 80, 206250},
    {IBV_RATE_300_GBPS, 120, 309375},  {IBV_RATE_28_GBPS, 11, 28125},
    {IBV_RATE_50_GBPS, 20, 53125},     {IBV_RATE_400_GBPS, 160, 425000},
    {IBV_RATE_600_GBPS, 240, 637500},
};
}  // namespace

SR_EXPORT int ibv_rate_to_mult(enum ibv_rate rate) {
  for (const RateRow& r : kRates)
    if (r.rate == rate) return r.mult;
  return -1;
}
SR_EXPORT enum ibv_rate mult_to_ibv_rate(int mult) {
  for (const RateRow& r : kRates)
    if (r.mult == mult) return r.rate;
  return IBV_RATE_MAX;
}
SR_EXPORT int ibv_rate_to_mbps(enum ibv_rate rate) {
  for (const RateRow& r : kRates)
    if (r.rate == rate) return r.mbps;
  return -1;
}
SR_EXPORT enum ibv_rate mbps_to_ibv_rate(int mbps) {
  for (const RateRow& r : kRates)
    if (r.mbps == mbps) return r.rate;
  return IBV_RATE_MAX;
}

// ---------------------------------------------------------------- sysfs --
// The device has no kernel side. Reads under its ibdev_path are answered from
// the device's own attributes; every other path is a plain file read.
SR_EXPORT const char* ibv_get_sysfs_path(void) { return "/sys"; }

static int VirtualSysfs(const char* rel, char* out, size_t outsz) {
  char v[128];
  v[0] = 0;
  unsigned idx;
  char tail[64];
  const uint8_t* g = reinterpret_cast<const uint8_t*>(&g_host.guid_be);
  char guid[32];
  snprintf(guid, sizeof guid, "%02x%02x:%02x%02x:%02x%02x:%02x%02x", g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]);
  if (!strcmp(rel, "board_id")) snprintf(v, sizeof v, "IBDBG_SOFTRDMA");
  else if (!strcmp(rel, "fw_ver")) snprintf(v, sizeof v, "softrdma 0.1");
  else if (!strcmp(rel, "hw_rev")) snprintf(v, sizeof v, "%u", kHwVer);
  else if (!strcmp(rel, "hca_type")) snprintf(v, sizeof v, "softrdma");
  else if (!strcmp(rel, "node_type")) snprintf(v, sizeof v, "1: CA");
  else if (!strcmp(rel, "node_guid") || !strcmp(rel, "sys_image_guid")) snprintf(v, sizeof v, "%s", guid);
  else if (!strcmp(rel, "node_desc")) snprintf(v, sizeof v, "ibdbg softrdma");
  else if (!strcmp(rel, "ports/1/link_layer"))
    snprintf(v, sizeof v, "%s", g_host.mode == Personality::kIb ? "InfiniBand" : "Ethernet");
  else if (!strcmp(rel, "ports/1/state")) snprintf(v, sizeof v, "4: ACTIVE");
  else if (!strcmp(rel, "ports/1/phys_state")) snprintf(v, sizeof v, "5: LinkUp");
  else if (!strcmp(rel, "ports/1/lid"))
    snprintf(v, sizeof v, "0x%x", g_host.mode == Personality::kIb ? g_host.lid : 0);
  else if (sscanf(rel, "ports/1/gid_attrs/types/%u%63s", &idx, tail) == 1) {
    if (idx >= unsigned(GidTblLen())) return -1;
    snprintf(v, sizeof v, "%s", g_host.mode == Personality::kIb ? "IB/RoCE v1" : "RoCE v2");
  } else
    return -1;
  size_t n = strlen(v);
  if (outsz == 0) return 0;
  if (n + 1 < outsz) {
    memcpy(out, v, n);
    out[n] = '\n';
    out[n + 1] = 0;
    return int(n + 1);
  }
  memcpy(out, v, outsz - 1);
  out[outsz - 1] = 0;
  return int(outsz - 1);
}

SR_EXPORT int ibv_read_sysfs_file(const char* dir, const char* file, char* buf, size_t size) {
  InitOnce();
  size_t n = strlen(g_device.dev.ibdev_path);
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, file);
  if (!strncmp(path, g_device.dev.ibdev_path, n) && path[n] == '/') {
    int r = VirtualSysfs(path + n + 1, buf, size);
    if (r < 0) errno = ENOENT;
    return r;
  }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t len = read(fd, buf, size);
  close(fd);
  if (len > 0 && size_t(len) < size) buf[len] = 0;
  return int(len);
}
