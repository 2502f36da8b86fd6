// libibdbg_verbs.so: the verbs layer, preloaded right after libibdbg_capture.so.
//
// It stands between the application and the verbs backend (libibverbs with a
// provider, or softrdma): every exported entry point that takes a verbs object
// is defined here with the version applications bind to, and resolves the
// backend's definition with dlvsym(RTLD_NEXT, ...).  The application gets
// virtual objects (VCtx, VPd, VMr, VCq, VQp, VSrq, VAh, VChan) that live in its
// own heap, so they are in every image; each points at the backend's object.
// Virtual contexts carry our own ibv_context_ops and verbs_context tables, so
// the inline verbs (ibv_post_send, ibv_poll_cq, ibv_wr_*, ibv_start_poll ...)
// come here too.  Until a replay the ids the application sees are the
// backend's own (QPNs, keys, LIDs): the data path passes work requests through
// untouched; only UD sends are copied (on the stack, 16 at a time) to put the
// backend's address handle in.
//
// Rules of the capture library hold here: no C++ runtime, no exceptions,
// hidden symbols but the verbs ABI (libibdbg_verbs.map), no constructors that
// allocate; the data path neither allocates nor locks (one atomic counter per
// post or poll call, for the capture's quiesce).  See README.md.
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <infiniband/verbs.h>
#include <linux/futex.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "capture/verbs/hooks.h"
#include "ibdbg/proto.h"

#undef ibv_query_port
#undef ibv_reg_mr
#undef ibv_reg_mr_iova

#define EXPORT extern "C" __attribute__((visibility("default")))

namespace {

// ---- small tools -----------------------------------------------------------------
long futex(volatile uint32_t* a, int op, uint32_t v, const struct timespec* ts) {
  return syscall(SYS_futex, a, op, v, ts, nullptr, 0);
}
int64_t now_ms() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
  nanosleep(&ts, nullptr);
}
void say(const char* a, const char* b = "", const char* c = "") {
  // One write: lines of several processes do not interleave.
  char line[512];
  size_t n = 0;
  const char* parts[] = {"ibdbg: verbs: ", a, b, c, "\n"};
  for (const char* s : parts)
    for (; *s && n < sizeof line; s++) line[n++] = *s;
  ssize_t r = write(2, line, n);
  (void)r;
}
void utoa(uint64_t v, char* out) {
  char t[24];
  int n = 0;
  do t[n++] = (char)('0' + v % 10), v /= 10;
  while (v);
  while (n) *out++ = t[--n];
  *out = 0;
}

// A futex lock (pthread's would do, but the capture keeps it across a stop).
struct Lock {
  volatile uint32_t v;
};
void lock(Lock* l) {
  while (__atomic_exchange_n(&l->v, 1, __ATOMIC_ACQUIRE)) futex(&l->v, FUTEX_WAIT_PRIVATE, 1, nullptr);
}
bool lock_timed(Lock* l, long ms) {
  int64_t end = now_ms() + ms;
  while (__atomic_exchange_n(&l->v, 1, __ATOMIC_ACQUIRE)) {
    if (now_ms() > end) return false;
    struct timespec ts = {0, 10000000};
    futex(&l->v, FUTEX_WAIT_PRIVATE, 1, &ts);
  }
  return true;
}
void unlock(Lock* l) {
  __atomic_store_n(&l->v, 0, __ATOMIC_RELEASE);
  futex(&l->v, FUTEX_WAKE_PRIVATE, 1, nullptr);
}

// ---- the backend: the next definition of each entry point -----------------------
// Inside a backend call: a backend may call exported verbs itself (softrdma's
// ibv_reg_mr calls ibv_reg_mr_iova2 through its PLT), which then reach us
// with its own objects and go straight on.  Threads started and descriptors
// opened while it is set are the backend's (see README.md).
__thread int t_depth __attribute__((tls_model("initial-exec")));
struct Backend {
  Backend() { t_depth++; }
  ~Backend() { t_depth--; }
};

// The backend's threads and descriptors: what appears during a verbs call
// that makes objects (g_ctl held, so one at a time).  Another application
// thread opening a descriptor at that moment is counted too (see README).
const int kMaxFd = IBDBG_VERBS_MAX_FDS;
uint64_t g_fd_before[kMaxFd / 64];
uint64_t g_backend_fd[kMaxFd / 64];
int32_t g_backend_tid[IBDBG_VERBS_MAX_TIDS];
uint32_t g_nbackend_tid;
int32_t g_tids_before[256];
uint32_t g_ntids_before;
char g_dents[16384];

// Calls f(number) for each numeric entry of a /proc directory.
template <class F>
void each_entry(const char* dir, F f) {
  int d = (int)syscall(SYS_openat, AT_FDCWD, dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d < 0) return;
  for (;;) {
    long n = syscall(SYS_getdents64, d, g_dents, sizeof g_dents);
    if (n <= 0) break;
    for (long off = 0; off < n;) {
      struct D {
        uint64_t ino;
        int64_t off;
        unsigned short reclen;
        unsigned char type;
        char name[];
      }* e = (D*)(g_dents + off);
      off += e->reclen;
      if (e->name[0] < '0' || e->name[0] > '9') continue;
      int v = 0;
      for (const char* c = e->name; *c; c++) v = v * 10 + (*c - '0');
      if (v != d) f(v);
    }
  }
  close(d);
}

bool g_tracking;  // under g_ctl: the outermost tracked call snapshots
struct Track {
  bool on;
  Track() : on(!g_tracking) {
    if (!on) return;
    g_tracking = true;
    memset(g_fd_before, 0, sizeof g_fd_before);
    each_entry("/proc/self/fd", [](int fd) {
      if (fd < kMaxFd) g_fd_before[fd / 64] |= 1ull << (fd % 64);
    });
    g_ntids_before = 0;
    each_entry("/proc/self/task", [](int tid) {
      if (g_ntids_before < 256) g_tids_before[g_ntids_before++] = tid;
    });
  }
  ~Track() {
    if (!on) return;
    g_tracking = false;
    uint64_t now[kMaxFd / 64] = {};
    each_entry("/proc/self/fd", [&](int fd) {
      if (fd < kMaxFd) now[fd / 64] |= 1ull << (fd % 64);
    });
    for (int i = 0; i < kMaxFd / 64; i++) {
      g_backend_fd[i] |= now[i] & ~g_fd_before[i];
      g_backend_fd[i] &= now[i] | ~g_fd_before[i];  // closed during the call: no longer anyone's
    }
    each_entry("/proc/self/task", [](int tid) {
      for (uint32_t i = 0; i < g_ntids_before; i++)
        if (g_tids_before[i] == tid) return;
      for (uint32_t i = 0; i < g_nbackend_tid; i++)
        if (g_backend_tid[i] == tid) return;
      if (g_nbackend_tid < IBDBG_VERBS_MAX_TIDS) g_backend_tid[g_nbackend_tid++] = tid;
    });
  }
};

// After a replay the next definitions are the fresh backend's, loaded with
// dlmopen (README.md: the lower half); each generation binds them again.
void* g_lower;
volatile uint32_t g_lower_gen;
template <class F>
F next_fn(F* slot, uint32_t* gen, const char* name, const char* ver) {
  uint32_t g = __atomic_load_n(&g_lower_gen, __ATOMIC_ACQUIRE);
  F f = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
  if (!f || __atomic_load_n(gen, __ATOMIC_ACQUIRE) != g) {
    f = (F)dlvsym(g ? g_lower : RTLD_NEXT, name, ver);
    __atomic_store_n(slot, f, __ATOMIC_RELEASE);
    __atomic_store_n(gen, g, __ATOMIC_RELEASE);
  }
  return f;
}
#define NEXT(name, ver)                                           \
  ({                                                              \
    static decltype(&::name) slot_;                               \
    static uint32_t gen_;                                         \
    next_fn(&slot_, &gen_, #name, ver);                           \
  })
#define V10 "IBVERBS_1.0"
#define V11 "IBVERBS_1.1"

// ---- unsupported features: reported once, and a capture refuses ------------------
enum Feature {
  F_ODP, F_DMABUF, F_REREG, F_IMPORT, F_MW, F_DM, F_XRC, F_FLOW, F_WQ, F_TD, F_COUNTERS, F_MCAST,
  F_ADVISE, F_NULL_MR, F_RATE_LIMIT, F_OPEN_QP, F_WR_OTHER, F_CQ_PD, F_NFEATURES
};
const char* const kFeatureName[F_NFEATURES] = {
    "on-demand paging (IBV_ACCESS_ON_DEMAND)", "dma-buf memory regions (ibv_reg_dmabuf_mr)",
    "ibv_rereg_mr", "imported devices/objects (ibv_import_*)", "memory windows",
    "device memory (ibv_alloc_dm)", "XRC (ibv_open_xrcd, XRC SRQs/QPs)", "flow steering and flow actions",
    "work queues and RSS tables (ibv_create_wq)", "thread domains and parent domains",
    "counters (ibv_create_counters)", "multicast (ibv_attach_mcast)", "ibv_advise_mr", "ibv_alloc_null_mr",
    "ibv_modify_qp_rate_limit", "ibv_open_qp", "ibv_wr_* operations without a virtual equivalent (bind_mw, local_inv, send_inv, tso, xrc)",
    "CQs in a parent domain"};
volatile uint32_t g_reported[F_NFEATURES];
volatile int g_refused = -1;  // first unsupported feature used

void unsupported(Feature f) {
  if (__atomic_exchange_n(&g_reported[f], 1, __ATOMIC_RELAXED)) return;
  int none = -1;
  __atomic_compare_exchange_n(&g_refused, &none, (int)f, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  say(kFeatureName[f], " is not supported by ibdbg: a capture of this process will refuse");
}

// ---- virtual objects --------------------------------------------------------------
struct VObj {
  VObj* next;
  VObj* prev;
  uint32_t kind;  // ibdbg_verbs_kind
};
VObj g_objs = {&g_objs, &g_objs, 0};
Lock g_ctl;  // the object list and control verbs; held from quiesce to resume
uint32_t g_nobjs;

void link_obj(VObj* o, uint32_t kind) {
  o->kind = kind;
  o->next = &g_objs;
  o->prev = g_objs.prev;
  g_objs.prev->next = o;
  g_objs.prev = o;
  g_nobjs++;
}
void unlink_obj(VObj* o) {
  o->prev->next = o->next;
  o->next->prev = o->prev;
  g_nobjs--;
}
template <class T>
T* new_obj() {
  T* t = (T*)calloc(1, sizeof(T));
  return t;
}

struct VCtx {
  VObj o;
  struct ibv_context* real;
  struct verbs_context* real_vctx;  // the backend's extended ops, or NULL
  struct verbs_context vc;          // vc.context is what the application holds
  // Port 1 as the application saw it when it opened the device: the record's
  // fabric (link layer, LID, GID) for translate and replay.
  struct ibv_port_attr port;
  union ibv_gid gid0;
  bool port_known;
  union ibv_gid gids[IBDBG_VCTX_MAX_GIDS];  // port 1's table as the application saw it
  uint32_t ngids;
};
struct VPd {
  struct ibv_pd pd;
  VObj o;
  struct ibv_pd* real;
};
struct VMr {
  struct ibv_mr mr;
  VObj o;
  struct ibv_mr* real;
  int access;
};
struct VChan {
  struct ibv_comp_channel ch;
  VObj o;
  struct ibv_comp_channel* real;
};
struct VCq {
  struct ibv_cq_ex cq;  // also the ibv_cq of CQs made with ibv_create_cq
  VObj o;
  struct ibv_cq* real;
  struct ibv_cq_ex* rx;  // extended CQs only
  int (*poll)(struct ibv_cq*, int, struct ibv_wc*);
  VChan* chan;
  // Completions taken out of the backend by a capture, returned first.
  Lock lk;
  struct ibv_wc* buf;
  uint32_t cap, head;
  volatile uint32_t n;
  volatile uint32_t pollers;  // unlocked polls in progress
  // Successful completions taken from the backend (returned or buffered),
  // for the image: a peer's sends against our receives (README.md).
  volatile uint64_t sends_taken, recvs_taken;
  // The extended poll session (one thread at a time, by the API's contract).
  struct ibv_wc cur;
  bool cur_buffered, real_open, locked;
  volatile uint32_t armed;   // req_notify_cq since the last event: 1, or 2 solicited only
  volatile uint32_t synth;   // events we made (buffered completions) not acked yet
  volatile uint32_t real_unacked;  // events of the current backend not acked yet
};
// Posted receives not completed yet, so that a replay can post them again:
// one ring per RQ or SRQ, allocated at create (a post copies into it, a
// completion pops: in order for an RQ, by wr_id for an SRQ, which leaves
// holes that the head skips).
struct RecvEnt {
  uint64_t wr_id;
  uint32_t num_sge;
  uint32_t live;
  struct ibv_sge sge[];  // max_sge of them
};
struct Ring {
  Lock lk;
  uint32_t cap, max_sge, head, n;  // n: entries from head on, holes included
  uint32_t live;
  bool by_id, overflow;
  size_t esz;
  char* ents;
};
RecvEnt* ring_at(Ring* r, uint32_t i) { return (RecvEnt*)(r->ents + (size_t)((r->head + i) % r->cap) * r->esz); }
bool ring_init(Ring* r, uint32_t wr, uint32_t max_sge, bool by_id) {
  r->max_sge = max_sge < IBDBG_VERBS_RECV_MAX_SGE ? max_sge : IBDBG_VERBS_RECV_MAX_SGE;
  if (!r->max_sge) r->max_sge = 1;
  r->cap = (wr ? wr : 1) * (by_id ? 2 : 1) + 1;
  r->by_id = by_id;
  r->esz = sizeof(RecvEnt) + r->max_sge * sizeof(struct ibv_sge);
  r->ents = (char*)calloc(r->cap, r->esz);
  if (!r->ents) r->overflow = true;
  return r->ents != nullptr;
}
// Drops holes (SRQ): only when the ring is full of them.
void ring_compact(Ring* r) {
  uint32_t w = 0;
  for (uint32_t i = 0; i < r->n; i++) {
    RecvEnt* e = ring_at(r, i);
    if (!e->live) continue;
    if (w != i) memcpy(ring_at(r, w), e, r->esz);
    w++;
  }
  r->n = w;
}
void ring_push(Ring* r, const struct ibv_recv_wr* wr) {
  if (!r->ents) return;
  if (r->n == r->cap && r->by_id) ring_compact(r);
  if (r->n == r->cap || wr->num_sge > (int)r->max_sge) {
    r->overflow = true;  // a capture refuses: it could not repost this one
    return;
  }
  RecvEnt* e = ring_at(r, r->n++);
  e->wr_id = wr->wr_id;
  e->num_sge = (uint32_t)wr->num_sge;
  e->live = 1;
  if (wr->num_sge > 0) memcpy(e->sge, wr->sg_list, (size_t)wr->num_sge * sizeof(struct ibv_sge));
  r->live++;
}
void ring_unpush(Ring* r) {  // the backend refused the last one pushed
  if (!r->ents || !r->n) return;
  r->n--;
  r->live--;
}
void ring_skip_holes(Ring* r) {
  while (r->n && !ring_at(r, 0)->live) r->head = (r->head + 1) % r->cap, r->n--;
}
void ring_pop(Ring* r, uint64_t wr_id) {
  if (!r->ents) return;
  lock(&r->lk);
  if (!r->by_id) {
    if (r->n) ring_at(r, 0)->live = 0, r->live--;
  } else {
    for (uint32_t i = 0; i < r->n; i++) {
      RecvEnt* e = ring_at(r, i);
      if (e->live && e->wr_id == wr_id) {
        e->live = 0;
        r->live--;
        break;
      }
    }
  }
  ring_skip_holes(r);
  unlock(&r->lk);
}

// old key -> new key after a replay (local lkeys; a peer's rkeys): open
// addressing, made at the replay, read without locks.
struct KeyEnt {
  uint32_t old_key, new_key, used;
};
struct KeyMap {
  uint32_t cap;
  KeyEnt* t;
};
void keymap_init(KeyMap* m, uint32_t n) {
  uint32_t cap = 16;
  while (cap < 2 * n + 2) cap *= 2;
  m->t = (KeyEnt*)calloc(cap, sizeof(KeyEnt));
  m->cap = m->t ? cap : 0;
}
void keymap_put(KeyMap* m, uint32_t o, uint32_t n) {
  if (!m->cap) return;
  for (uint32_t i = (o * 2654435761u) & (m->cap - 1);; i = (i + 1) & (m->cap - 1))
    if (!m->t[i].used || m->t[i].old_key == o) {
      m->t[i].old_key = o, m->t[i].new_key = n, m->t[i].used = 1;
      return;
    }
}
inline uint32_t keymap_get(const KeyMap* m, uint32_t o) {
  if (!m || !m->cap) return o;
  for (uint32_t i = (o * 2654435761u) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
    if (!m->t[i].used) return o;  // a key made after the replay: the backend's own
    if (m->t[i].old_key == o) return m->t[i].new_key;
  }
}
KeyMap g_lkeys;
volatile uint32_t g_xlate;  // after a replay: ids the application holds are the old ones
volatile uint32_t g_dead;   // the captured backend is gone and the fresh one not there yet

struct VSrq {
  struct ibv_srq srq;
  VObj o;
  struct ibv_srq* real;
  struct ibv_srq_attr attr;
  volatile int64_t recvs;  // posted and not completed
  Ring ring;
};
// A UD destination (address handle, remote QPN) that sends named: a replay
// finds the peer's new QPN for each.  Fixed size, filled at post without
// allocation; a QP that names more refuses the capture.
const uint32_t kUdDests = 256;
struct UdDest {
  uint32_t used, old_qpn, new_qpn;
  struct VAh* ah;
};
inline uint32_t ud_slot(uint32_t qpn, const void* ah) {
  return (uint32_t)((qpn * 2654435761u) ^ (uint32_t)((uintptr_t)ah >> 4)) & (kUdDests - 1);
}

struct VAh {
  struct ibv_ah ah;
  VObj o;
  struct ibv_ah* real;
  struct ibv_ah_attr attr;
};
struct VQp {
  struct ibv_qp_ex qx;  // qx.qp_base is the ibv_qp the application holds
  VObj o;
  struct ibv_qp* real;
  struct ibv_qp_ex* rx;  // with send_ops_flags
  int (*post_send)(struct ibv_qp*, struct ibv_send_wr*, struct ibv_send_wr**);
  int (*post_recv)(struct ibv_qp*, struct ibv_recv_wr*, struct ibv_recv_wr**);
  VSrq* srq;
  VCq* send_cq;
  VCq* recv_cq;
  bool sig_all;
  volatile int64_t sends_out;  // signaled sends posted and not completed
  volatile int64_t recvs;      // receives posted and not completed
  int64_t batch_sig;           // ibv_wr_* session: signaled requests so far
  // Unsignaled sends posted after the last signaled one: only the backend
  // can tell when they are done (the capture asks it, see quiesce).
  volatile int64_t unsig_tail;
  int64_t batch_tail;  // ibv_wr_* session: the same within the session
  struct ibv_qp_cap cap;
  struct ibv_qp_attr attr;  // what modify_qp set, accumulated
  int attr_mask;
  Ring ring;               // receives posted and not completed (no SRQ)
  struct UdDest* ud;       // UD: the destinations its sends named (a replay looks them up)
  bool ud_overflow;
  // Messages that take a receive of the peer (send, send with immediate,
  // write with immediate): posted here, and received here.  A replay
  // compares each side's with its peer's: a completion that came to the
  // backend after its last drain is made again from the sender's note.
  volatile uint64_t msgs_posted, msgs_recvd;
  struct MsgNote {
    uint32_t len, imm, opcode;
  } last[16];
  KeyMap* peer_rkeys;      // after a replay: the peer's old rkey -> new
  uint32_t dest_new;       // after a replay: the peer's new QPN
};

VCtx* ctx_of(struct ibv_context* c) { return (VCtx*)((char*)c - offsetof(VCtx, vc.context)); }
VPd* pd_of(struct ibv_pd* p) { return (VPd*)p; }
VCq* cq_of(struct ibv_cq* c) { return (VCq*)c; }
VCq* cqx_of(struct ibv_cq_ex* c) { return (VCq*)c; }
VQp* qp_of(struct ibv_qp* q) { return (VQp*)q; }
VQp* qpx_of(struct ibv_qp_ex* q) { return (VQp*)q; }
VSrq* srq_of(struct ibv_srq* s) { return (VSrq*)s; }
VAh* ah_of(struct ibv_ah* a) { return (VAh*)a; }
struct ibv_pd* real_pd(struct ibv_pd* p) { return p ? pd_of(p)->real : nullptr; }
struct ibv_cq* real_cq(struct ibv_cq* c) { return c ? cq_of(c)->real : nullptr; }
struct ibv_srq* real_srq(struct ibv_srq* s) { return s ? srq_of(s)->real : nullptr; }

// QPN -> VQp, for the completions' accounting: open addressing, never resized
// on the data path (grown under g_ctl when half full).
struct QpSlot {
  uint32_t qpn;
  VQp* qp;  // NULL with qpn != 0: a removed entry
};
QpSlot* g_qpn;
uint32_t g_qpn_cap, g_qpn_used;

uint32_t qpn_hash(uint32_t q) { return q * 2654435761u; }
void qpn_put_raw(QpSlot* t, uint32_t cap, uint32_t qpn, VQp* qp) {
  for (uint32_t i = qpn_hash(qpn) & (cap - 1);; i = (i + 1) & (cap - 1))
    if (!t[i].qp) {
      t[i].qpn = qpn, t[i].qp = qp;
      return;
    }
}
void qpn_put(uint32_t qpn, VQp* qp) {
  if (2 * (g_qpn_used + 1) > g_qpn_cap) {
    uint32_t cap = g_qpn_cap ? g_qpn_cap * 2 : 256;
    QpSlot* t = (QpSlot*)calloc(cap, sizeof *t);
    if (!t) return;
    for (uint32_t i = 0; i < g_qpn_cap; i++)
      if (g_qpn[i].qp) qpn_put_raw(t, cap, g_qpn[i].qpn, g_qpn[i].qp);
    // The old table may be read by a poller right now: it is leaked, not freed.
    __atomic_store_n(&g_qpn_cap, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&g_qpn, t, __ATOMIC_RELEASE);
    __atomic_store_n(&g_qpn_cap, cap, __ATOMIC_RELEASE);
  }
  qpn_put_raw(g_qpn, g_qpn_cap, qpn, qp);
  g_qpn_used++;
}
VQp* qpn_get(uint32_t qpn) {
  uint32_t cap = __atomic_load_n(&g_qpn_cap, __ATOMIC_ACQUIRE);
  QpSlot* t = __atomic_load_n(&g_qpn, __ATOMIC_ACQUIRE);
  if (!cap) return nullptr;
  for (uint32_t i = qpn_hash(qpn) & (cap - 1), k = 0; k < cap; i = (i + 1) & (cap - 1), k++) {
    if (!t[i].qpn && !t[i].qp) return nullptr;
    if (t[i].qpn == qpn && t[i].qp) return t[i].qp;
  }
  return nullptr;
}
void qpn_del(uint32_t qpn) {
  if (!g_qpn_cap) return;
  for (uint32_t i = qpn_hash(qpn) & (g_qpn_cap - 1), k = 0; k < g_qpn_cap; i = (i + 1) & (g_qpn_cap - 1), k++)
    if (g_qpn[i].qpn == qpn && g_qpn[i].qp) {
      g_qpn[i].qp = nullptr;  // qpn stays: a removed entry keeps probes going
      return;
    }
}

// ---- the capture gate: posts wait while a capture quiesces ------------------------
volatile uint32_t g_block;
volatile uint32_t g_inflight;
// Receives have a gate of their own: they stay open until the drain, so that
// a peer's last sends find the receives our application reposts (a capture
// holding them would leave those sends waiting, README.md).
volatile uint32_t g_block_recv;
volatile uint32_t g_inflight_recv;
volatile uint32_t g_quiesce;  // polls take the locked path
uint64_t g_blocked_posts;

// Debug counters (IBDBG_VERBS_DEBUG=1): prove that calls come through here.
bool g_debug;
uint64_t g_n_post_send, g_n_post_recv, g_n_poll, g_n_wr;

inline void gate_enter(volatile uint32_t* block = &g_block, volatile uint32_t* inflight = &g_inflight) {
  for (;;) {
    __atomic_add_fetch(inflight, 1, __ATOMIC_SEQ_CST);
    if (__builtin_expect(!__atomic_load_n(block, __ATOMIC_SEQ_CST), 1)) return;
    if (__atomic_sub_fetch(inflight, 1, __ATOMIC_SEQ_CST) == 0) futex(inflight, FUTEX_WAKE_PRIVATE, 1, nullptr);
    __atomic_add_fetch(&g_blocked_posts, 1, __ATOMIC_RELAXED);
    while (__atomic_load_n(block, __ATOMIC_SEQ_CST)) futex(block, FUTEX_WAIT_PRIVATE, 1, nullptr);
  }
}
inline void gate_exit(volatile uint32_t* block = &g_block, volatile uint32_t* inflight = &g_inflight) {
  if (__atomic_sub_fetch(inflight, 1, __ATOMIC_SEQ_CST) == 0 && __atomic_load_n(block, __ATOMIC_SEQ_CST))
    futex(inflight, FUTEX_WAKE_PRIVATE, 1, nullptr);
}
inline void recv_gate_enter() { gate_enter(&g_block_recv, &g_inflight_recv); }
inline void recv_gate_exit() { gate_exit(&g_block_recv, &g_inflight_recv); }

// ---- completions: accounting, buffers ---------------------------------------------
VQp* account(uint32_t qpn, enum ibv_wc_status st, enum ibv_wc_opcode op, uint64_t wr_id) {
  VQp* q = qpn_get(qpn);
  if (!q || st != IBV_WC_SUCCESS) return q;  // the opcode of a failed completion is undefined
  if (op & IBV_WC_RECV) {
    __atomic_add_fetch(&q->msgs_recvd, 1, __ATOMIC_RELAXED);
    if (q->srq) __atomic_sub_fetch(&q->srq->recvs, 1, __ATOMIC_RELAXED), ring_pop(&q->srq->ring, wr_id);
    else __atomic_sub_fetch(&q->recvs, 1, __ATOMIC_RELAXED), ring_pop(&q->ring, wr_id);
  } else {
    __atomic_sub_fetch(&q->sends_out, 1, __ATOMIC_RELAXED);
  }
  return q;
}
// Accounts completions taken from v, and counts them for the image (one
// atomic per kind and call).  After a replay the application sees the QPNs it
// knew.
void account_cq(VCq* v, struct ibv_wc* wc, int n) {
  uint64_t sends = 0, recvs = 0;
  for (int i = 0; i < n; i++) {
    VQp* q = account(wc[i].qp_num, wc[i].status, wc[i].opcode, wc[i].wr_id);
    if (__builtin_expect(g_xlate, 0) && q) wc[i].qp_num = q->qx.qp_base.qp_num;
    if (wc[i].status == IBV_WC_SUCCESS) (wc[i].opcode & IBV_WC_RECV) ? recvs++ : sends++;
  }
  if (sends) __atomic_add_fetch(&v->sends_taken, sends, __ATOMIC_RELAXED);
  if (recvs) __atomic_add_fetch(&v->recvs_taken, recvs, __ATOMIC_RELAXED);
}

// Takes everything the backend holds for this CQ into its buffer (v->lk held,
// no unlocked poller).  Returns false when the buffer is full.
bool drain_cq(VCq* v) {
  for (;;) {
    if (v->n == v->cap) return false;
    uint32_t tail = (v->head + v->n) % v->cap;
    struct ibv_wc* w = &v->buf[tail];
    int r;
    if (!v->rx) {
      r = v->poll(v->real, 1, w);
      if (r <= 0) return true;
      account_cq(v, w, 1);
    } else {
      struct ibv_poll_cq_attr a = {};
      struct ibv_cq_ex* x = v->rx;
      if (x->start_poll(x, &a) != 0) return true;
      bool ok = true;
      for (int more = 0; more == 0; more = x->next_poll(x)) {
        if (v->n == v->cap) {
          ok = false;
          break;
        }
        w = &v->buf[(v->head + v->n) % v->cap];
        memset(w, 0, sizeof *w);
        w->wr_id = x->wr_id;
        w->status = x->status;
        w->opcode = x->read_opcode(x);
        if (x->read_vendor_err) w->vendor_err = x->read_vendor_err(x);
        if (x->read_byte_len) w->byte_len = x->read_byte_len(x);
        if (x->read_imm_data) w->imm_data = x->read_imm_data(x);
        if (x->read_qp_num) w->qp_num = x->read_qp_num(x);
        if (x->read_src_qp) w->src_qp = x->read_src_qp(x);
        if (x->read_wc_flags) w->wc_flags = x->read_wc_flags(x);
        if (x->read_slid) w->slid = x->read_slid(x);
        if (x->read_sl) w->sl = x->read_sl(x);
        if (x->read_dlid_path_bits) w->dlid_path_bits = x->read_dlid_path_bits(x);
        account_cq(v, w, 1);
        __atomic_store_n(&v->n, v->n + 1, __ATOMIC_RELEASE);
      }
      x->end_poll(x);
      if (!ok) return false;
      continue;
    }
    __atomic_store_n(&v->n, v->n + 1, __ATOMIC_RELEASE);
  }
}

int take_buffered(VCq* v, int n, struct ibv_wc* wc) {
  int got = 0;
  while (got < n && v->n) {
    wc[got++] = v->buf[v->head];
    v->head = (v->head + 1) % v->cap;
    __atomic_store_n(&v->n, v->n - 1, __ATOMIC_RELEASE);
  }
  return got;
}

// ---- the data path: legacy ops ------------------------------------------------------
int v_poll_cq(struct ibv_cq* c, int n, struct ibv_wc* wc) {
  VCq* v = cq_of(c);
  if (__builtin_expect(g_debug, 0)) __atomic_add_fetch(&g_n_poll, 1, __ATOMIC_RELAXED);
  if (__builtin_expect(!__atomic_load_n(&v->n, __ATOMIC_ACQUIRE), 1)) {
    __atomic_add_fetch(&v->pollers, 1, __ATOMIC_SEQ_CST);
    if (__builtin_expect(!__atomic_load_n(&g_quiesce, __ATOMIC_SEQ_CST), 1)) {
      int r = v->poll(v->real, n, wc);
      if (r > 0) account_cq(v, wc, r);
      __atomic_sub_fetch(&v->pollers, 1, __ATOMIC_RELEASE);
      return r;
    }
    __atomic_sub_fetch(&v->pollers, 1, __ATOMIC_RELEASE);
  }
  // Buffered completions, or a capture in progress: in order, under the lock.
  lock(&v->lk);
  int got = take_buffered(v, n, wc);
  if (got < n && !__atomic_load_n(&g_dead, __ATOMIC_ACQUIRE)) {
    int r = v->poll(v->real, n - got, wc + got);
    if (r > 0) account_cq(v, wc + got, r), got += r;
    else if (r < 0 && got == 0) got = r;
  }
  unlock(&v->lk);
  return got;
}

// While the backend is parked (end of a quiesce to resume) or dead (a replay
// rebuilding it), nobody enters it.
void wait_backend() {
  while (__atomic_load_n(&g_dead, __ATOMIC_ACQUIRE)) futex(&g_dead, FUTEX_WAIT_PRIVATE, 1, nullptr);
}
void backend_back() {
  __atomic_store_n(&g_dead, 0, __ATOMIC_SEQ_CST);
  futex(&g_dead, FUTEX_WAKE_PRIVATE, 0x7fffffff, nullptr);
}

int v_req_notify_cq(struct ibv_cq* c, int solicited) {
  VCq* v = cq_of(c);
  wait_backend();
  // Remembered: a replay arms the fresh CQ again, and completions a capture
  // buffered make an event of their own (ibv_get_cq_event).
  __atomic_store_n(&v->armed, solicited ? 2 : 1, __ATOMIC_RELEASE);
  return v->real->context->ops.req_notify_cq(v->real, solicited);
}

void note_msgs(VQp* q, struct ibv_send_wr* wr, struct ibv_send_wr* stop) {
  for (; wr && wr != stop; wr = wr->next) {
    if (wr->opcode != IBV_WR_SEND && wr->opcode != IBV_WR_SEND_WITH_IMM && wr->opcode != IBV_WR_RDMA_WRITE_WITH_IMM)
      continue;
    uint32_t len = 0;
    for (int i = 0; i < wr->num_sge; i++) len += wr->sg_list[i].length;
    uint64_t n = __atomic_fetch_add(&q->msgs_posted, 1, __ATOMIC_RELAXED);
    q->last[n % 16] = {len, wr->imm_data, (uint32_t)wr->opcode};
  }
}

int count_signaled(VQp* q, struct ibv_send_wr* wr, struct ibv_send_wr* stop) {
  int n = 0;
  int64_t tail = q->unsig_tail;
  for (; wr && wr != stop; wr = wr->next)
    if (q->sig_all || (wr->send_flags & IBV_SEND_SIGNALED)) n++, tail = 0;
    else tail++;
  __atomic_store_n(&q->unsig_tail, tail, __ATOMIC_RELAXED);
  return n;
}

// UD (the backend must see its own address handles) and every QP after a
// replay (the application's lkeys and its peer's rkeys are the old ones):
// the requests are copied, 16 at a time with their SGEs, on the stack;
// *bad names the application's request.
const int kBatch = 16, kBatchSge = 256;
// Before a replay: notes the destination; after: its QPN now.
inline uint32_t ud_dest(VQp* q, VAh* ah, uint32_t qpn, bool after_replay) {
  UdDest* t = q->ud;
  if (!t) return qpn;
  for (uint32_t i = ud_slot(qpn, ah), k = 0; k < kUdDests; i = (i + 1) & (kUdDests - 1), k++) {
    UdDest* d = &t[i];
    if (!__atomic_load_n(&d->used, __ATOMIC_ACQUIRE)) {
      if (after_replay) return qpn;  // named first after the replay: as the application gave it
      // Two posting threads may race for a slot: the loser looks on.
      uint32_t z = 0;
      if (!__atomic_compare_exchange_n(&d->used, &z, 2, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        while (__atomic_load_n(&d->used, __ATOMIC_ACQUIRE) == 2) {
        }
        if (d->old_qpn == qpn && d->ah == ah) return qpn;
        continue;
      }
      d->old_qpn = qpn, d->ah = ah, d->new_qpn = qpn;
      __atomic_store_n(&d->used, 1, __ATOMIC_RELEASE);
      return qpn;
    }
    while (__atomic_load_n(&d->used, __ATOMIC_ACQUIRE) == 2) {
    }
    if (d->old_qpn == qpn && d->ah == ah) return after_replay ? d->new_qpn : qpn;
  }
  q->ud_overflow = true;
  return qpn;
}
inline void xlate_sges(struct ibv_sge* out, const struct ibv_sge* in, int n) {
  for (int i = 0; i < n; i++) out[i] = in[i], out[i].lkey = keymap_get(&g_lkeys, in[i].lkey);
}
int post_send_copy(VQp* q, struct ibv_send_wr* wr, struct ibv_send_wr** bad) {
  struct ibv_send_wr tmp[kBatch];
  struct ibv_sge sges[kBatchSge];
  bool x = __atomic_load_n(&g_xlate, __ATOMIC_RELAXED);
  while (wr) {
    struct ibv_send_wr* orig[kBatch];
    int k = 0, used = 0;
    int sig = 0;
    for (; wr && k < kBatch; wr = wr->next, k++) {
      int ns = wr->num_sge > 0 ? wr->num_sge : 0;
      if (x && !(wr->send_flags & IBV_SEND_INLINE) && used + ns > kBatchSge) {
        if (k) break;
        ns = kBatchSge;  // more SGEs than any backend takes: it refuses
      }
      orig[k] = wr;
      if (q->sig_all || (wr->send_flags & IBV_SEND_SIGNALED)) sig++;
      tmp[k] = *wr;
      tmp[k].next = nullptr;
      if (k) tmp[k - 1].next = &tmp[k];
      if (q->qx.qp_base.qp_type == IBV_QPT_UD && wr->wr.ud.ah) {
        tmp[k].wr.ud.ah = ah_of(wr->wr.ud.ah)->real;
        tmp[k].wr.ud.remote_qpn = ud_dest(q, ah_of(wr->wr.ud.ah), wr->wr.ud.remote_qpn, x);
      }
      if (x) {
        if (!(wr->send_flags & IBV_SEND_INLINE) && ns) {
          xlate_sges(sges + used, wr->sg_list, ns);
          tmp[k].sg_list = sges + used;
          used += ns;
        }
        switch (wr->opcode) {
          case IBV_WR_RDMA_WRITE:
          case IBV_WR_RDMA_WRITE_WITH_IMM:
          case IBV_WR_RDMA_READ: tmp[k].wr.rdma.rkey = keymap_get(q->peer_rkeys, wr->wr.rdma.rkey); break;
          case IBV_WR_ATOMIC_CMP_AND_SWP:
          case IBV_WR_ATOMIC_FETCH_AND_ADD:
            tmp[k].wr.atomic.rkey = keymap_get(q->peer_rkeys, wr->wr.atomic.rkey);
            break;
          default: break;
        }
      }
    }
    struct ibv_send_wr* rbad = nullptr;
    int rc = q->post_send(q->real, tmp, &rbad);
    if (!rc) count_signaled(q, orig[0], wr);  // for its unsignaled tail
    if (rc) {
      int i = rbad ? (int)(rbad - tmp) : 0;
      if (i < 0 || i >= k) i = 0;
      *bad = orig[i];
      __atomic_add_fetch(&q->sends_out, count_signaled(q, orig[0], orig[i]), __ATOMIC_RELAXED);
      note_msgs(q, orig[0], orig[i]);
      return rc;
    }
    __atomic_add_fetch(&q->sends_out, sig, __ATOMIC_RELAXED);
    note_msgs(q, orig[0], wr);
  }
  return 0;
}

int v_post_send(struct ibv_qp* qp, struct ibv_send_wr* wr, struct ibv_send_wr** bad) {
  VQp* q = qp_of(qp);
  if (__builtin_expect(g_debug, 0)) __atomic_add_fetch(&g_n_post_send, 1, __ATOMIC_RELAXED);
  gate_enter();
  int rc;
  if (qp->qp_type == IBV_QPT_UD || __builtin_expect(g_xlate, 0)) {
    rc = post_send_copy(q, wr, bad);
  } else {
    rc = q->post_send(q->real, wr, bad);
    __atomic_add_fetch(&q->sends_out, count_signaled(q, wr, rc ? *bad : nullptr), __ATOMIC_RELAXED);
    note_msgs(q, wr, rc ? *bad : nullptr);
  }
  gate_exit();
  return rc;
}

int count_recvs(struct ibv_recv_wr* wr, struct ibv_recv_wr* stop) {
  int n = 0;
  for (; wr && wr != stop; wr = wr->next) n++;
  return n;
}

// Posts receives one at a time, each recorded in the ring before the backend
// has it (its completion may come at once) and taken back if refused.
int post_recv_ringed(Ring* r, struct ibv_recv_wr* wr, struct ibv_recv_wr** bad,
                     int (*post)(void*, struct ibv_recv_wr*, struct ibv_recv_wr**), void* real) {
  bool x = __atomic_load_n(&g_xlate, __ATOMIC_RELAXED);
  lock(&r->lk);
  int rc = 0;
  for (; wr; wr = wr->next) {
    struct ibv_recv_wr one = *wr;
    one.next = nullptr;
    struct ibv_sge sges[kBatchSge];
    if (x && wr->num_sge > 0 && wr->num_sge <= kBatchSge) {
      xlate_sges(sges, wr->sg_list, wr->num_sge);
      one.sg_list = sges;
    }
    ring_push(r, wr);
    struct ibv_recv_wr* rbad = nullptr;
    rc = post(real, &one, &rbad);
    if (rc) {
      ring_unpush(r);
      *bad = wr;
      break;
    }
  }
  unlock(&r->lk);
  return rc;
}

int v_post_recv(struct ibv_qp* qp, struct ibv_recv_wr* wr, struct ibv_recv_wr** bad) {
  VQp* q = qp_of(qp);
  if (__builtin_expect(g_debug, 0)) __atomic_add_fetch(&g_n_post_recv, 1, __ATOMIC_RELAXED);
  recv_gate_enter();
  int rc = post_recv_ringed(&q->ring, wr, bad, (int (*)(void*, struct ibv_recv_wr*, struct ibv_recv_wr**))q->post_recv,
                            q->real);
  __atomic_add_fetch(&q->recvs, count_recvs(wr, rc ? *bad : nullptr), __ATOMIC_RELAXED);
  recv_gate_exit();
  return rc;
}

int v_post_srq_recv(struct ibv_srq* s, struct ibv_recv_wr* wr, struct ibv_recv_wr** bad) {
  VSrq* v = srq_of(s);
  if (__builtin_expect(g_debug, 0)) __atomic_add_fetch(&g_n_post_recv, 1, __ATOMIC_RELAXED);
  recv_gate_enter();
  int rc = post_recv_ringed(&v->ring, wr, bad,
                            (int (*)(void*, struct ibv_recv_wr*, struct ibv_recv_wr**))v->real->context->ops.post_srq_recv,
                            v->real);
  __atomic_add_fetch(&v->recvs, count_recvs(wr, rc ? *bad : nullptr), __ATOMIC_RELAXED);
  recv_gate_exit();
  return rc;
}

struct ibv_mw* v_alloc_mw(struct ibv_pd*, enum ibv_mw_type) {
  unsupported(F_MW);
  errno = EOPNOTSUPP;
  return nullptr;
}
int v_bind_mw(struct ibv_qp*, struct ibv_mw*, struct ibv_mw_bind*) {
  unsupported(F_MW);
  return EOPNOTSUPP;
}
int v_dealloc_mw(struct ibv_mw*) {
  unsupported(F_MW);
  return EOPNOTSUPP;
}

// ---- the data path: extended CQs --------------------------------------------------
void cur_from_real(VCq* v) {
  struct ibv_cq_ex* x = v->rx;
  v->cq.wr_id = x->wr_id;
  v->cq.status = x->status;
  v->cur_buffered = false;
  enum ibv_wc_opcode op = x->read_opcode(x);
  account(x->read_qp_num(x), x->status, op, x->wr_id);
  if (x->status == IBV_WC_SUCCESS) __atomic_add_fetch((op & IBV_WC_RECV) ? &v->recvs_taken : &v->sends_taken, 1, __ATOMIC_RELAXED);
}
void cur_from_buf(VCq* v) {
  take_buffered(v, 1, &v->cur);
  v->cq.wr_id = v->cur.wr_id;
  v->cq.status = v->cur.status;
  v->cur_buffered = true;
}

int v_start_poll(struct ibv_cq_ex* c, struct ibv_poll_cq_attr* attr) {
  VCq* v = cqx_of(c);
  if (__builtin_expect(g_debug, 0)) __atomic_add_fetch(&g_n_poll, 1, __ATOMIC_RELAXED);
  v->locked = v->real_open = false;
  if (__builtin_expect(!__atomic_load_n(&v->n, __ATOMIC_ACQUIRE), 1)) {
    __atomic_add_fetch(&v->pollers, 1, __ATOMIC_SEQ_CST);
    if (__builtin_expect(!__atomic_load_n(&g_quiesce, __ATOMIC_SEQ_CST), 1)) {
      int r = v->rx->start_poll(v->rx, attr);
      if (r == 0) {
        v->real_open = true;
        cur_from_real(v);
      } else {
        __atomic_sub_fetch(&v->pollers, 1, __ATOMIC_RELEASE);
      }
      return r;  // the session ends in v_end_poll, which drops pollers
    }
    __atomic_sub_fetch(&v->pollers, 1, __ATOMIC_RELEASE);
  }
  lock(&v->lk);
  v->locked = true;
  if (v->n) {
    cur_from_buf(v);
    return 0;
  }
  int r = __atomic_load_n(&g_dead, __ATOMIC_ACQUIRE) ? ENOENT : v->rx->start_poll(v->rx, attr);
  if (r == 0) {
    v->real_open = true;
    cur_from_real(v);
    return 0;
  }
  v->locked = false;
  unlock(&v->lk);
  return r;
}

int v_next_poll(struct ibv_cq_ex* c) {
  VCq* v = cqx_of(c);
  if (v->real_open) {
    int r = v->rx->next_poll(v->rx);
    if (r == 0) cur_from_real(v);
    return r;
  }
  if (v->n) {
    cur_from_buf(v);
    return 0;
  }
  if (__atomic_load_n(&g_dead, __ATOMIC_ACQUIRE)) return ENOENT;
  struct ibv_poll_cq_attr a = {};
  int r = v->rx->start_poll(v->rx, &a);
  if (r == 0) {
    v->real_open = true;
    cur_from_real(v);
  }
  return r;
}

void v_end_poll(struct ibv_cq_ex* c) {
  VCq* v = cqx_of(c);
  if (v->real_open) v->rx->end_poll(v->rx);
  v->real_open = false;
  if (v->locked) {
    v->locked = false;
    unlock(&v->lk);
  } else {
    __atomic_sub_fetch(&v->pollers, 1, __ATOMIC_RELEASE);
  }
}

#define READ_FN(type, name, field)                       \
  type v_read_##name(struct ibv_cq_ex* c) {              \
    VCq* v = cqx_of(c);                                  \
    if (v->cur_buffered) return (type)v->cur.field;      \
    return v->rx->read_##name(v->rx);                    \
  }
READ_FN(enum ibv_wc_opcode, opcode, opcode)
READ_FN(uint32_t, vendor_err, vendor_err)
READ_FN(uint32_t, byte_len, byte_len)
READ_FN(__be32, imm_data, imm_data)
uint32_t v_read_qp_num(struct ibv_cq_ex* c) {
  VCq* v = cqx_of(c);
  if (v->cur_buffered) return v->cur.qp_num;
  uint32_t qpn = v->rx->read_qp_num(v->rx);
  if (__builtin_expect(g_xlate, 0))
    if (VQp* q = qpn_get(qpn)) return q->qx.qp_base.qp_num;
  return qpn;
}
READ_FN(uint32_t, src_qp, src_qp)
READ_FN(unsigned int, wc_flags, wc_flags)
READ_FN(uint32_t, slid, slid)
READ_FN(uint8_t, sl, sl)
READ_FN(uint8_t, dlid_path_bits, dlid_path_bits)
// Fields an ibv_wc does not have: a buffered completion answers 0.
READ_FN(uint64_t, completion_ts, wr_id * 0)
READ_FN(uint16_t, cvlan, wr_id * 0)
READ_FN(uint32_t, flow_tag, wr_id * 0)
READ_FN(uint64_t, completion_wallclock_ns, wr_id * 0)
void v_read_tm_info(struct ibv_cq_ex* c, struct ibv_wc_tm_info* tm) {
  VCq* v = cqx_of(c);
  if (v->cur_buffered) memset(tm, 0, sizeof *tm);
  else v->rx->read_tm_info(v->rx, tm);
}

// ---- the data path: ibv_wr_* --------------------------------------------------------
inline struct ibv_qp_ex* wr_sync(struct ibv_qp_ex* x, bool starts_wr) {
  VQp* q = qpx_of(x);
  struct ibv_qp_ex* r = q->rx;
  r->wr_id = x->wr_id;
  r->wr_flags = x->wr_flags;
  if (starts_wr) {
    if (q->sig_all || (x->wr_flags & IBV_SEND_SIGNALED)) q->batch_sig++, q->batch_tail = 0;
    else q->batch_tail++;
  }
  if (starts_wr && __builtin_expect(g_debug, 0)) __atomic_add_fetch(&g_n_wr, 1, __ATOMIC_RELAXED);
  return r;
}
void v_wr_start(struct ibv_qp_ex* x) {
  gate_enter();  // left in v_wr_complete / v_wr_abort
  qpx_of(x)->batch_sig = qpx_of(x)->batch_tail = 0;
  qpx_of(x)->rx->wr_start(qpx_of(x)->rx);
}
int v_wr_complete(struct ibv_qp_ex* x) {
  VQp* q = qpx_of(x);
  int rc = q->rx->wr_complete(q->rx);
  if (rc == 0) {
    __atomic_store_n(&q->unsig_tail, q->batch_sig ? q->batch_tail : q->unsig_tail + q->batch_tail, __ATOMIC_RELAXED);
    __atomic_add_fetch(&q->sends_out, q->batch_sig, __ATOMIC_RELAXED);
  }
  gate_exit();
  return rc;
}
void v_wr_abort(struct ibv_qp_ex* x) {
  qpx_of(x)->rx->wr_abort(qpx_of(x)->rx);
  gate_exit();
}
void v_wr_send(struct ibv_qp_ex* x) {
  struct ibv_qp_ex* r = wr_sync(x, true);
  r->wr_send(r);
}
void v_wr_send_imm(struct ibv_qp_ex* x, __be32 imm) {
  struct ibv_qp_ex* r = wr_sync(x, true);
  r->wr_send_imm(r, imm);
}
void v_wr_rdma_write(struct ibv_qp_ex* x, uint32_t rkey, uint64_t addr) {
  struct ibv_qp_ex* r = wr_sync(x, true);
  r->wr_rdma_write(r, keymap_get(qpx_of(x)->peer_rkeys, rkey), addr);
}
void v_wr_rdma_write_imm(struct ibv_qp_ex* x, uint32_t rkey, uint64_t addr, __be32 imm) {
  struct ibv_qp_ex* r = wr_sync(x, true);
  r->wr_rdma_write_imm(r, keymap_get(qpx_of(x)->peer_rkeys, rkey), addr, imm);
}
void v_wr_rdma_read(struct ibv_qp_ex* x, uint32_t rkey, uint64_t addr) {
  struct ibv_qp_ex* r = wr_sync(x, true);
  r->wr_rdma_read(r, keymap_get(qpx_of(x)->peer_rkeys, rkey), addr);
}
void v_wr_atomic_cmp_swp(struct ibv_qp_ex* x, uint32_t rkey, uint64_t addr, uint64_t cmp, uint64_t swp) {
  struct ibv_qp_ex* r = wr_sync(x, true);
  r->wr_atomic_cmp_swp(r, keymap_get(qpx_of(x)->peer_rkeys, rkey), addr, cmp, swp);
}
void v_wr_atomic_fetch_add(struct ibv_qp_ex* x, uint32_t rkey, uint64_t addr, uint64_t add) {
  struct ibv_qp_ex* r = wr_sync(x, true);
  r->wr_atomic_fetch_add(r, keymap_get(qpx_of(x)->peer_rkeys, rkey), addr, add);
}
void v_wr_set_ud_addr(struct ibv_qp_ex* x, struct ibv_ah* ah, uint32_t qpn, uint32_t qkey) {
  struct ibv_qp_ex* r = wr_sync(x, false);
  if (ah) qpn = ud_dest(qpx_of(x), ah_of(ah), qpn, __atomic_load_n(&g_xlate, __ATOMIC_RELAXED));
  r->wr_set_ud_addr(r, ah ? ah_of(ah)->real : nullptr, qpn, qkey);
}
void v_wr_set_sge(struct ibv_qp_ex* x, uint32_t lkey, uint64_t addr, uint32_t len) {
  struct ibv_qp_ex* r = wr_sync(x, false);
  r->wr_set_sge(r, keymap_get(&g_lkeys, lkey), addr, len);
}
void v_wr_set_sge_list(struct ibv_qp_ex* x, size_t n, const struct ibv_sge* l) {
  struct ibv_qp_ex* r = wr_sync(x, false);
  if (__builtin_expect(g_xlate, 0) && n <= (size_t)kBatchSge) {
    struct ibv_sge t[kBatchSge];
    xlate_sges(t, l, (int)n);
    r->wr_set_sge_list(r, n, t);
    return;
  }
  r->wr_set_sge_list(r, n, l);
}
void v_wr_set_inline_data(struct ibv_qp_ex* x, void* addr, size_t len) {
  struct ibv_qp_ex* r = wr_sync(x, false);
  r->wr_set_inline_data(r, addr, len);
}
void v_wr_set_inline_data_list(struct ibv_qp_ex* x, size_t n, const struct ibv_data_buf* b) {
  struct ibv_qp_ex* r = wr_sync(x, false);
  r->wr_set_inline_data_list(r, n, b);
}
// Operations on objects we do not virtualize: reported, then passed on.
void v_wr_bind_mw(struct ibv_qp_ex* x, struct ibv_mw* mw, uint32_t rkey, const struct ibv_mw_bind_info* bi) {
  unsupported(F_WR_OTHER);
  struct ibv_qp_ex* r = wr_sync(x, true);
  r->wr_bind_mw(r, mw, rkey, bi);
}
void v_wr_local_inv(struct ibv_qp_ex* x, uint32_t rkey) {
  unsupported(F_WR_OTHER);
  struct ibv_qp_ex* r = wr_sync(x, true);
  r->wr_local_inv(r, rkey);
}
void v_wr_send_inv(struct ibv_qp_ex* x, uint32_t rkey) {
  unsupported(F_WR_OTHER);
  struct ibv_qp_ex* r = wr_sync(x, true);
  r->wr_send_inv(r, rkey);
}
void v_wr_send_tso(struct ibv_qp_ex* x, void* hdr, uint16_t sz, uint16_t mss) {
  unsupported(F_WR_OTHER);
  struct ibv_qp_ex* r = wr_sync(x, true);
  r->wr_send_tso(r, hdr, sz, mss);
}
void v_wr_set_xrc_srqn(struct ibv_qp_ex* x, uint32_t srqn) {
  unsupported(F_WR_OTHER);
  struct ibv_qp_ex* r = wr_sync(x, false);
  r->wr_set_xrc_srqn(r, srqn);
}
void v_wr_atomic_write(struct ibv_qp_ex* x, uint32_t rkey, uint64_t addr, const void* w) {
  unsupported(F_WR_OTHER);
  struct ibv_qp_ex* r = wr_sync(x, true);
  r->wr_atomic_write(r, rkey, addr, w);
}

// ---- object construction ---------------------------------------------------------------
VCq* make_cq(VCtx* c, struct ibv_cq* real, struct ibv_cq_ex* rx, VChan* ch, void* app_ctx) {
  VCq* v = new_obj<VCq>();
  if (!v) return nullptr;
  v->real = real;
  v->rx = rx;
  v->poll = real->context->ops.poll_cq;
  v->chan = ch;
  v->cap = (uint32_t)(real->cqe > 0 ? real->cqe : 1) + 1;
  v->buf = (struct ibv_wc*)calloc(v->cap, sizeof(struct ibv_wc));
  if (!v->buf) {
    free(v);
    return nullptr;
  }
  v->cq.context = &c->vc.context;
  v->cq.channel = ch ? &ch->ch : nullptr;
  v->cq.cq_context = app_ctx;
  v->cq.handle = real->handle;
  v->cq.cqe = real->cqe;
  if (rx) {
    v->cq.comp_mask = rx->comp_mask;
    v->cq.start_poll = v_start_poll;
    v->cq.next_poll = v_next_poll;
    v->cq.end_poll = v_end_poll;
#define SET_READ(name) \
  if (rx->read_##name) v->cq.read_##name = v_read_##name;
    SET_READ(opcode) SET_READ(vendor_err) SET_READ(byte_len) SET_READ(imm_data) SET_READ(qp_num) SET_READ(src_qp)
    SET_READ(wc_flags) SET_READ(slid) SET_READ(sl) SET_READ(dlid_path_bits) SET_READ(completion_ts) SET_READ(cvlan)
    SET_READ(flow_tag) SET_READ(tm_info) SET_READ(completion_wallclock_ns)
#undef SET_READ
  }
  // The backend hands completion events and async events back with its own
  // CQ: its context is the way home.
  real->cq_context = v;
  return v;
}

VQp* make_qp(VCtx* c, struct ibv_qp* real, struct ibv_pd* pd, struct ibv_cq* scq, struct ibv_cq* rcq,
             struct ibv_srq* srq, void* app_ctx, bool sig_all, const struct ibv_qp_cap* cap, bool ex) {
  VQp* v = new_obj<VQp>();
  if (!v) return nullptr;
  v->real = real;
  v->post_send = real->context->ops.post_send;
  v->post_recv = real->context->ops.post_recv;
  v->srq = srq ? srq_of(srq) : nullptr;
  v->send_cq = scq ? cq_of(scq) : nullptr;
  v->recv_cq = rcq ? cq_of(rcq) : nullptr;
  v->sig_all = sig_all;
  if (cap) v->cap = *cap;
  struct ibv_qp* q = &v->qx.qp_base;
  q->context = &c->vc.context;
  q->qp_context = app_ctx;
  q->pd = pd;
  q->send_cq = scq;
  q->recv_cq = rcq;
  q->srq = srq;
  q->handle = real->handle;
  q->qp_num = real->qp_num;
  q->state = real->state;
  q->qp_type = real->qp_type;
  if (ex) {
    auto f = NEXT(ibv_qp_to_qp_ex, "IBVERBS_1.6");
    v->rx = f ? f(real) : nullptr;
  }
  if (v->rx) {
    struct ibv_qp_ex* x = &v->qx;
    x->comp_mask = v->rx->comp_mask;
    x->wr_start = v_wr_start;
    x->wr_complete = v_wr_complete;
    x->wr_abort = v_wr_abort;
#define SET_WR(name) \
  if (v->rx->name) x->name = v_##name;
    SET_WR(wr_send) SET_WR(wr_send_imm) SET_WR(wr_rdma_write) SET_WR(wr_rdma_write_imm) SET_WR(wr_rdma_read)
    SET_WR(wr_atomic_cmp_swp) SET_WR(wr_atomic_fetch_add) SET_WR(wr_set_ud_addr) SET_WR(wr_set_sge)
    SET_WR(wr_set_sge_list) SET_WR(wr_set_inline_data) SET_WR(wr_set_inline_data_list) SET_WR(wr_bind_mw)
    SET_WR(wr_local_inv) SET_WR(wr_send_inv) SET_WR(wr_send_tso) SET_WR(wr_set_xrc_srqn) SET_WR(wr_atomic_write)
#undef SET_WR
  }
  real->qp_context = v;
  return v;
}

// ---- extended context ops ------------------------------------------------------------------
int v_query_port(struct ibv_context* c, uint8_t port, struct ibv_port_attr* a, size_t len) {
  Backend in_backend;
  VCtx* v = ctx_of(c);
  int rc;
  if (v->real_vctx && v->real_vctx->query_port) rc = v->real_vctx->query_port(v->real, port, a, len);
  else rc = NEXT(ibv_query_port, V11)(v->real, port, (struct _compat_ibv_port_attr*)a);
  if (rc == 0 && g_xlate && port == 1 && v->port_known) a->lid = v->port.lid;  // the LID it knew
  return rc;
}
int v_query_device_ex(struct ibv_context* c, const struct ibv_query_device_ex_input* in, struct ibv_device_attr_ex* a,
                      size_t len) {
  VCtx* v = ctx_of(c);
  if (!v->real_vctx || !v->real_vctx->query_device_ex) return EOPNOTSUPP;
  return v->real_vctx->query_device_ex(v->real, in, a, len);
}
int v_query_rt_values(struct ibv_context* c, struct ibv_values_ex* val) {
  VCtx* v = ctx_of(c);
  if (!v->real_vctx || !v->real_vctx->query_rt_values) return EOPNOTSUPP;
  return v->real_vctx->query_rt_values(v->real, val);
}

struct ibv_cq_ex* v_create_cq_ex(struct ibv_context* c, struct ibv_cq_init_attr_ex* a) {
  Backend in_backend;
  VCtx* v = ctx_of(c);
  if (!v->real_vctx || !v->real_vctx->create_cq_ex) {
    errno = EOPNOTSUPP;
    return nullptr;
  }
  if (a->comp_mask & IBV_CQ_INIT_ATTR_MASK_PD) {
    unsupported(F_CQ_PD);
    errno = EOPNOTSUPP;
    return nullptr;
  }
  struct ibv_cq_init_attr_ex r = *a;
  VChan* ch = a->channel ? (VChan*)a->channel : nullptr;
  r.channel = ch ? ch->real : nullptr;
  r.cq_context = nullptr;
  // The capture's accounting needs every completion's QP.
  r.wc_flags |= IBV_WC_EX_WITH_QP_NUM;
  lock(&g_ctl);
  Track track;
  struct ibv_cq_ex* rx = v->real_vctx->create_cq_ex(v->real, &r);
  VCq* q = rx ? make_cq(v, ibv_cq_ex_to_cq(rx), rx, ch, a->cq_context) : nullptr;
  if (q) link_obj(&q->o, IBDBG_VERBS_CQ);
  unlock(&g_ctl);
  return q ? &q->cq : nullptr;
}

struct ibv_qp* create_qp_common(VCtx* c, struct ibv_qp_init_attr_ex* a) {
  Backend in_backend;
  if (a->comp_mask & (IBV_QP_INIT_ATTR_XRCD | IBV_QP_INIT_ATTR_RX_HASH | IBV_QP_INIT_ATTR_IND_TABLE)) {
    unsupported(a->comp_mask & IBV_QP_INIT_ATTR_XRCD ? F_XRC : F_WQ);
    errno = EOPNOTSUPP;
    return nullptr;
  }
  if (a->qp_type == IBV_QPT_XRC_SEND || a->qp_type == IBV_QPT_XRC_RECV) {
    unsupported(F_XRC);
    errno = EOPNOTSUPP;
    return nullptr;
  }
  struct ibv_qp_init_attr_ex r = *a;
  r.qp_context = nullptr;
  r.send_cq = real_cq(a->send_cq);
  r.recv_cq = real_cq(a->recv_cq);
  r.srq = real_srq(a->srq);
  r.pd = real_pd(a->pd);
  bool ex = (a->comp_mask & ~(uint32_t)IBV_QP_INIT_ATTR_PD) != 0;
  struct ibv_qp* real;
  lock(&g_ctl);
  Track track;
  if (!ex) {
    struct ibv_qp_init_attr l;
    memset(&l, 0, sizeof l);
    l.send_cq = r.send_cq;
    l.recv_cq = r.recv_cq;
    l.srq = r.srq;
    l.cap = r.cap;
    l.qp_type = r.qp_type;
    l.sq_sig_all = r.sq_sig_all;
    auto f = NEXT(ibv_create_qp, V11);
    real = f(r.pd, &l);
    r.cap = l.cap;
  } else if (c->real_vctx && c->real_vctx->create_qp_ex) {
    real = c->real_vctx->create_qp_ex(c->real, &r);
  } else {
    errno = EOPNOTSUPP;
    real = nullptr;
  }
  VQp* q = real ? make_qp(c, real, a->pd, a->send_cq, a->recv_cq, a->srq, a->qp_context, a->sq_sig_all, &r.cap,
                          (a->comp_mask & IBV_QP_INIT_ATTR_SEND_OPS_FLAGS) != 0)
                : nullptr;
  if (q) {
    if (!a->srq) ring_init(&q->ring, r.cap.max_recv_wr, r.cap.max_recv_sge, false);
    if (a->qp_type == IBV_QPT_UD) {
      q->ud = (UdDest*)calloc(kUdDests, sizeof(UdDest));
      if (!q->ud) q->ud_overflow = true;
    }
    link_obj(&q->o, IBDBG_VERBS_QP);
    qpn_put(real->qp_num, q);
    a->cap = r.cap;
  }
  unlock(&g_ctl);
  return q ? &q->qx.qp_base : nullptr;
}

struct ibv_qp* v_create_qp_ex(struct ibv_context* c, struct ibv_qp_init_attr_ex* a) {
  return create_qp_common(ctx_of(c), a);
}

VSrq* make_srq(struct ibv_context* c, struct ibv_srq* real, struct ibv_pd* pd, void* app_ctx,
               const struct ibv_srq_attr* attr) {
  VSrq* v = new_obj<VSrq>();
  if (!v) return nullptr;
  v->real = real;
  v->attr = *attr;
  v->srq.context = c;
  v->srq.srq_context = app_ctx;
  v->srq.pd = pd;
  v->srq.handle = real->handle;
  real->srq_context = v;
  ring_init(&v->ring, attr->max_wr, attr->max_sge, true);
  return v;
}

struct ibv_srq* v_create_srq_ex(struct ibv_context* c, struct ibv_srq_init_attr_ex* a) {
  Backend in_backend;
  VCtx* v = ctx_of(c);
  if ((a->comp_mask & IBV_SRQ_INIT_ATTR_TYPE) && a->srq_type != IBV_SRQT_BASIC) {
    unsupported(a->srq_type == IBV_SRQT_XRC ? F_XRC : F_WR_OTHER);
    errno = EOPNOTSUPP;
    return nullptr;
  }
  if (!v->real_vctx || !v->real_vctx->create_srq_ex) {
    errno = EOPNOTSUPP;
    return nullptr;
  }
  struct ibv_srq_init_attr_ex r = *a;
  r.pd = real_pd(a->pd);
  r.cq = real_cq(a->cq);
  r.srq_context = nullptr;
  lock(&g_ctl);
  Track track;
  struct ibv_srq* real = v->real_vctx->create_srq_ex(v->real, &r);
  VSrq* s = real ? make_srq(c, real, a->pd, a->srq_context, &r.attr) : nullptr;
  if (s) {
    link_obj(&s->o, IBDBG_VERBS_SRQ);
    a->attr = r.attr;
  }
  unlock(&g_ctl);
  return s ? &s->srq : nullptr;
}

int v_get_srq_num(struct ibv_srq* s, uint32_t* num) {
  VSrq* v = srq_of(s);
  VCtx* c = ctx_of(s->context);
  if (!c->real_vctx || !c->real_vctx->get_srq_num) return EOPNOTSUPP;
  return c->real_vctx->get_srq_num(v->real, num);
}

int v_modify_cq(struct ibv_cq* cq, struct ibv_modify_cq_attr* a) {
  Backend in_backend;
  VCtx* c = ctx_of(cq->context);
  if (!c->real_vctx || !c->real_vctx->modify_cq) return EOPNOTSUPP;
  return c->real_vctx->modify_cq(cq_of(cq)->real, a);
}

// Extended ops of features we do not carry: reported, refused.
#define REFUSE_PTR(fn, feature, ...) \
  void* fn(__VA_ARGS__) {            \
    unsupported(feature);            \
    errno = EOPNOTSUPP;              \
    return nullptr;                  \
  }
#define REFUSE_INT(fn, feature, ...) \
  int fn(__VA_ARGS__) {              \
    unsupported(feature);            \
    return EOPNOTSUPP;               \
  }
REFUSE_PTR(r_open_xrcd, F_XRC, struct ibv_context*, struct ibv_xrcd_init_attr*)
REFUSE_INT(r_close_xrcd, F_XRC, struct ibv_xrcd*)
REFUSE_PTR(r_open_qp, F_OPEN_QP, struct ibv_context*, struct ibv_qp_open_attr*)
REFUSE_PTR(r_create_flow, F_FLOW, struct ibv_qp*, struct ibv_flow_attr*)
REFUSE_INT(r_destroy_flow, F_FLOW, struct ibv_flow*)
REFUSE_PTR(r_create_wq, F_WQ, struct ibv_context*, struct ibv_wq_init_attr*)
REFUSE_INT(r_modify_wq, F_WQ, struct ibv_wq*, struct ibv_wq_attr*)
REFUSE_INT(r_destroy_wq, F_WQ, struct ibv_wq*)
REFUSE_PTR(r_create_rwq_ind_table, F_WQ, struct ibv_context*, struct ibv_rwq_ind_table_init_attr*)
REFUSE_INT(r_destroy_rwq_ind_table, F_WQ, struct ibv_rwq_ind_table*)
REFUSE_INT(r_post_srq_ops, F_WQ, struct ibv_srq*, struct ibv_ops_wr*, struct ibv_ops_wr**)
REFUSE_PTR(r_alloc_td, F_TD, struct ibv_context*, struct ibv_td_init_attr*)
REFUSE_INT(r_dealloc_td, F_TD, struct ibv_td*)
REFUSE_PTR(r_alloc_parent_domain, F_TD, struct ibv_context*, struct ibv_parent_domain_init_attr*)
REFUSE_INT(r_modify_qp_rate_limit, F_RATE_LIMIT, struct ibv_qp*, struct ibv_qp_rate_limit_attr*)
REFUSE_PTR(r_create_flow_action_esp, F_FLOW, struct ibv_context*, struct ibv_flow_action_esp_attr*)
REFUSE_INT(r_destroy_flow_action, F_FLOW, struct ibv_flow_action*)
REFUSE_INT(r_modify_flow_action_esp, F_FLOW, struct ibv_flow_action*, struct ibv_flow_action_esp_attr*)
REFUSE_PTR(r_alloc_dm, F_DM, struct ibv_context*, struct ibv_alloc_dm_attr*)
REFUSE_INT(r_free_dm, F_DM, struct ibv_dm*)
REFUSE_PTR(r_reg_dm_mr, F_DM, struct ibv_pd*, struct ibv_dm*, uint64_t, size_t, unsigned int)
REFUSE_PTR(r_create_counters, F_COUNTERS, struct ibv_context*, struct ibv_counters_init_attr*)
REFUSE_INT(r_destroy_counters, F_COUNTERS, struct ibv_counters*)
REFUSE_INT(r_attach_counters_point_flow, F_COUNTERS, struct ibv_counters*, struct ibv_counter_attach_attr*,
           struct ibv_flow*)
REFUSE_INT(r_read_counters, F_COUNTERS, struct ibv_counters*, uint64_t*, uint32_t, uint32_t)
REFUSE_PTR(r_alloc_null_mr, F_NULL_MR, struct ibv_pd*)
REFUSE_INT(r_advise_mr, F_ADVISE, struct ibv_pd*, enum ibv_advise_mr_advice, uint32_t, struct ibv_sge*, uint32_t)

void fill_ops(VCtx* v) {
  struct verbs_context* vc = &v->vc;
  struct ibv_context_ops* o = &vc->context.ops;
  o->poll_cq = v_poll_cq;
  o->req_notify_cq = v_req_notify_cq;
  o->post_send = v_post_send;
  o->post_recv = v_post_recv;
  o->post_srq_recv = v_post_srq_recv;
  o->alloc_mw = v_alloc_mw;
  o->bind_mw = v_bind_mw;
  o->dealloc_mw = v_dealloc_mw;
  vc->sz = sizeof *vc;
  vc->query_port = v_query_port;
  vc->query_device_ex = v_query_device_ex;
  vc->query_rt_values = v_query_rt_values;
  vc->create_cq_ex = v_create_cq_ex;
  vc->create_qp_ex = v_create_qp_ex;
  vc->create_srq_ex = v_create_srq_ex;
  vc->get_srq_num = v_get_srq_num;
  vc->modify_cq = v_modify_cq;
#define R(op, fn) vc->op = (decltype(vc->op))fn;
  R(open_xrcd, r_open_xrcd) R(close_xrcd, r_close_xrcd) R(open_qp, r_open_qp) R(ibv_create_flow, r_create_flow)
  R(ibv_destroy_flow, r_destroy_flow) R(create_wq, r_create_wq) R(modify_wq, r_modify_wq) R(destroy_wq, r_destroy_wq)
  R(create_rwq_ind_table, r_create_rwq_ind_table) R(destroy_rwq_ind_table, r_destroy_rwq_ind_table)
  R(post_srq_ops, r_post_srq_ops) R(alloc_td, r_alloc_td) R(dealloc_td, r_dealloc_td)
  R(alloc_parent_domain, r_alloc_parent_domain) R(modify_qp_rate_limit, r_modify_qp_rate_limit)
  R(create_flow_action_esp, r_create_flow_action_esp) R(destroy_flow_action, r_destroy_flow_action)
  R(modify_flow_action_esp, r_modify_flow_action_esp) R(alloc_dm, r_alloc_dm) R(free_dm, r_free_dm)
  R(reg_dm_mr, r_reg_dm_mr) R(create_counters, r_create_counters) R(destroy_counters, r_destroy_counters)
  R(attach_counters_point_flow, r_attach_counters_point_flow) R(read_counters, r_read_counters)
  R(alloc_null_mr, r_alloc_null_mr) R(advise_mr, r_advise_mr)
#undef R
}

struct verbs_context* real_verbs_ctx(struct ibv_context* c) {
  return verbs_get_ctx(c);
}

}  // namespace

// ==== the exported verbs ===========================================================================

namespace {
// Which library implements the verbs, for the record: found here, since the
// capture describes with every other thread stopped (dladdr takes ld.so's lock).
char g_backend_path[128];
void note_backend(void* fn) {
  Dl_info di;
  if (!g_backend_path[0] && fn && dladdr(fn, &di) && di.dli_fname)
    strncpy(g_backend_path, di.dli_fname, sizeof g_backend_path - 1);
}
}  // namespace

EXPORT struct ibv_context* ibv_open_device(struct ibv_device* dev) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_open_device, V11)(dev);
  Backend in_backend;
  auto f = NEXT(ibv_open_device, V11);
  if (!f) {
    errno = ENOSYS;
    return nullptr;
  }
  lock(&g_ctl);
  Track track;
  note_backend((void*)f);
  struct ibv_context* real = f(dev);
  VCtx* v = real ? new_obj<VCtx>() : nullptr;
  if (v) {
    v->real = real;
    v->real_vctx = real_verbs_ctx(real);
    struct ibv_context* c = &v->vc.context;
    c->device = real->device;
    c->cmd_fd = real->cmd_fd;
    c->async_fd = real->async_fd;
    c->num_comp_vectors = real->num_comp_vectors;
    c->abi_compat = __VERBS_ABI_IS_EXTENDED;
    fill_ops(v);
    v->port_known = NEXT(ibv_query_port, V11)(real, 1, (struct _compat_ibv_port_attr*)&v->port) == 0;
    if (v->port_known && NEXT(ibv_query_gid, V11)(real, 1, 0, &v->gid0) != 0) memset(&v->gid0, 0, sizeof v->gid0);
    for (int i = 0; v->port_known && i < IBDBG_VCTX_MAX_GIDS && i < v->port.gid_tbl_len; i++)
      if (NEXT(ibv_query_gid, V11)(real, 1, i, &v->gids[i]) == 0) v->ngids = (uint32_t)i + 1;
      else break;
    link_obj(&v->o, IBDBG_VERBS_CONTEXT);
  } else if (real) {
    NEXT(ibv_close_device, V11)(real);
    errno = ENOMEM;
  }
  unlock(&g_ctl);
  return v ? &v->vc.context : nullptr;
}

EXPORT int ibv_close_device(struct ibv_context* c) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_close_device, V11)(c);
  Backend in_backend;
  VCtx* v = ctx_of(c);
  lock(&g_ctl);
  Track track;
  int rc = NEXT(ibv_close_device, V11)(v->real);
  if (rc == 0) {
    unlink_obj(&v->o);
    free(v);
  }
  unlock(&g_ctl);
  return rc;
}

EXPORT int ibv_query_device(struct ibv_context* c, struct ibv_device_attr* a) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_query_device, V11)(c, a);
  Backend in_backend;
  return NEXT(ibv_query_device, V11)(ctx_of(c)->real, a);
}
EXPORT int ibv_query_port(struct ibv_context* c, uint8_t port, struct _compat_ibv_port_attr* a) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_query_port, V11)(c, port, a);
  Backend in_backend;
  int rc = NEXT(ibv_query_port, V11)(ctx_of(c)->real, port, a);
  // After a replay the application's LID is the one it had.
  if (rc == 0 && g_xlate && port == 1 && ctx_of(c)->port_known) ((struct ibv_port_attr*)a)->lid = ctx_of(c)->port.lid;
  return rc;
}
EXPORT int ibv_query_gid(struct ibv_context* c, uint8_t port, int index, union ibv_gid* gid) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_query_gid, V11)(c, port, index, gid);
  Backend in_backend;
  VCtx* v = ctx_of(c);
  if (g_xlate && port == 1 && index >= 0 && (uint32_t)index < v->ngids) {
    *gid = v->gids[index];
    return 0;
  }
  return NEXT(ibv_query_gid, V11)(v->real, port, index, gid);
}
EXPORT int ibv_query_pkey(struct ibv_context* c, uint8_t port, int index, __be16* pkey) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_query_pkey, V11)(c, port, index, pkey);
  Backend in_backend;
  return NEXT(ibv_query_pkey, V11)(ctx_of(c)->real, port, index, pkey);
}
EXPORT int ibv_get_pkey_index(struct ibv_context* c, uint8_t port, __be16 pkey) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_get_pkey_index, "IBVERBS_1.5")(c, port, pkey);
  Backend in_backend;
  return NEXT(ibv_get_pkey_index, "IBVERBS_1.5")(ctx_of(c)->real, port, pkey);
}
EXPORT int _ibv_query_gid_ex(struct ibv_context* c, uint32_t port, uint32_t idx, struct ibv_gid_entry* e,
                             uint32_t flags, size_t sz) {
  if (__builtin_expect(t_depth, 0)) return NEXT(_ibv_query_gid_ex, "IBVERBS_1.11")(c, port, idx, e, flags, sz);
  Backend in_backend;
  return NEXT(_ibv_query_gid_ex, "IBVERBS_1.11")(ctx_of(c)->real, port, idx, e, flags, sz);
}
EXPORT ssize_t _ibv_query_gid_table(struct ibv_context* c, struct ibv_gid_entry* e, size_t n, uint32_t flags,
                                    size_t sz) {
  if (__builtin_expect(t_depth, 0)) return NEXT(_ibv_query_gid_table, "IBVERBS_1.11")(c, e, n, flags, sz);
  Backend in_backend;
  return NEXT(_ibv_query_gid_table, "IBVERBS_1.11")(ctx_of(c)->real, e, n, flags, sz);
}
EXPORT int ibv_resolve_eth_l2_from_gid(struct ibv_context* c, struct ibv_ah_attr* a, uint8_t mac[6],
                                       uint16_t* vid) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_resolve_eth_l2_from_gid, V11)(c, a, mac, vid);
  Backend in_backend;
  return NEXT(ibv_resolve_eth_l2_from_gid, V11)(ctx_of(c)->real, a, mac, vid);
}

EXPORT int ibv_get_async_event(struct ibv_context* c, struct ibv_async_event* ev) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_get_async_event, V11)(c, ev);
  Backend in_backend;
  int rc = NEXT(ibv_get_async_event, V11)(ctx_of(c)->real, ev);
  if (rc) return rc;
  switch (ev->event_type) {
    case IBV_EVENT_CQ_ERR:
      ev->element.cq = ibv_cq_ex_to_cq(&((VCq*)ev->element.cq->cq_context)->cq);
      break;
    case IBV_EVENT_QP_FATAL:
    case IBV_EVENT_QP_REQ_ERR:
    case IBV_EVENT_QP_ACCESS_ERR:
    case IBV_EVENT_COMM_EST:
    case IBV_EVENT_SQ_DRAINED:
    case IBV_EVENT_PATH_MIG:
    case IBV_EVENT_PATH_MIG_ERR:
    case IBV_EVENT_QP_LAST_WQE_REACHED:
      ev->element.qp = &((VQp*)ev->element.qp->qp_context)->qx.qp_base;
      break;
    case IBV_EVENT_SRQ_ERR:
    case IBV_EVENT_SRQ_LIMIT_REACHED:
      ev->element.srq = &((VSrq*)ev->element.srq->srq_context)->srq;
      break;
    default: break;
  }
  return 0;
}

EXPORT void ibv_ack_async_event(struct ibv_async_event* ev) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_ack_async_event, V11)(ev);
  Backend in_backend;
  struct ibv_async_event r = *ev;
  switch (ev->event_type) {
    case IBV_EVENT_CQ_ERR: r.element.cq = cq_of(ev->element.cq)->real; break;
    case IBV_EVENT_QP_FATAL:
    case IBV_EVENT_QP_REQ_ERR:
    case IBV_EVENT_QP_ACCESS_ERR:
    case IBV_EVENT_COMM_EST:
    case IBV_EVENT_SQ_DRAINED:
    case IBV_EVENT_PATH_MIG:
    case IBV_EVENT_PATH_MIG_ERR:
    case IBV_EVENT_QP_LAST_WQE_REACHED: r.element.qp = qp_of(ev->element.qp)->real; break;
    case IBV_EVENT_SRQ_ERR:
    case IBV_EVENT_SRQ_LIMIT_REACHED: r.element.srq = srq_of(ev->element.srq)->real; break;
    default: break;
  }
  NEXT(ibv_ack_async_event, V11)(&r);
}

EXPORT struct ibv_pd* ibv_alloc_pd(struct ibv_context* c) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_alloc_pd, V11)(c);
  Backend in_backend;
  VCtx* v = ctx_of(c);
  lock(&g_ctl);
  Track track;
  struct ibv_pd* real = NEXT(ibv_alloc_pd, V11)(v->real);
  VPd* p = real ? new_obj<VPd>() : nullptr;
  if (p) {
    p->real = real;
    p->pd.context = c;
    p->pd.handle = real->handle;
    link_obj(&p->o, IBDBG_VERBS_PD);
  }
  unlock(&g_ctl);
  return p ? &p->pd : nullptr;
}

EXPORT int ibv_dealloc_pd(struct ibv_pd* pd) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_dealloc_pd, V11)(pd);
  Backend in_backend;
  VPd* p = pd_of(pd);
  lock(&g_ctl);
  int rc = NEXT(ibv_dealloc_pd, V11)(p->real);
  if (rc == 0) unlink_obj(&p->o), free(p);
  unlock(&g_ctl);
  return rc;
}

namespace {
struct ibv_mr* wrap_mr(struct ibv_pd* pd, struct ibv_mr* real, int access) {
  VMr* m = real ? new_obj<VMr>() : nullptr;
  if (!m) return nullptr;
  m->real = real;
  m->access = access;
  m->mr = *real;
  m->mr.context = pd->context;
  m->mr.pd = pd;
  link_obj(&m->o, IBDBG_VERBS_MR);
  return &m->mr;
}
void check_access(unsigned access) {
  if (access & IBV_ACCESS_ON_DEMAND) unsupported(F_ODP);
}
}  // namespace

EXPORT struct ibv_mr* ibv_reg_mr(struct ibv_pd* pd, void* addr, size_t len, int access) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_reg_mr, V11)(pd, addr, len, access);
  Backend in_backend;
  check_access((unsigned)access);
  lock(&g_ctl);
  struct ibv_mr* m = wrap_mr(pd, NEXT(ibv_reg_mr, V11)(pd_of(pd)->real, addr, len, access), access);
  unlock(&g_ctl);
  return m;
}
EXPORT struct ibv_mr* ibv_reg_mr_iova(struct ibv_pd* pd, void* addr, size_t len, uint64_t iova, int access) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_reg_mr_iova, "IBVERBS_1.7")(pd, addr, len, iova, access);
  Backend in_backend;
  check_access((unsigned)access);
  lock(&g_ctl);
  struct ibv_mr* m =
      wrap_mr(pd, NEXT(ibv_reg_mr_iova, "IBVERBS_1.7")(pd_of(pd)->real, addr, len, iova, access), access);
  unlock(&g_ctl);
  return m;
}
EXPORT struct ibv_mr* ibv_reg_mr_iova2(struct ibv_pd* pd, void* addr, size_t len, uint64_t iova, unsigned access) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_reg_mr_iova2, "IBVERBS_1.8")(pd, addr, len, iova, access);
  Backend in_backend;
  check_access(access);
  lock(&g_ctl);
  struct ibv_mr* m =
      wrap_mr(pd, NEXT(ibv_reg_mr_iova2, "IBVERBS_1.8")(pd_of(pd)->real, addr, len, iova, access), (int)access);
  unlock(&g_ctl);
  return m;
}
EXPORT struct ibv_mr* ibv_reg_dmabuf_mr(struct ibv_pd* pd, uint64_t off, size_t len, uint64_t iova, int fd,
                                        int access) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_reg_dmabuf_mr, "IBVERBS_1.12")(pd, off, len, iova, fd, access);
  Backend in_backend;
  unsupported(F_DMABUF);
  lock(&g_ctl);
  struct ibv_mr* m =
      wrap_mr(pd, NEXT(ibv_reg_dmabuf_mr, "IBVERBS_1.12")(pd_of(pd)->real, off, len, iova, fd, access), access);
  unlock(&g_ctl);
  return m;
}
EXPORT int ibv_rereg_mr(struct ibv_mr* mr, int flags, struct ibv_pd* pd, void* addr, size_t len, int access) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_rereg_mr, V11)(mr, flags, pd, addr, len, access);
  Backend in_backend;
  unsupported(F_REREG);
  VMr* m = (VMr*)mr;
  lock(&g_ctl);
  int rc = NEXT(ibv_rereg_mr, V11)(m->real, flags, pd ? pd_of(pd)->real : nullptr, addr, len, access);
  if (rc == 0) {
    m->mr.addr = m->real->addr, m->mr.length = m->real->length;
    m->mr.lkey = m->real->lkey, m->mr.rkey = m->real->rkey;
    if (flags & IBV_REREG_MR_CHANGE_PD) m->mr.pd = pd;
    if (flags & IBV_REREG_MR_CHANGE_ACCESS) m->access = access;
  }
  unlock(&g_ctl);
  return rc;
}
EXPORT int ibv_dereg_mr(struct ibv_mr* mr) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_dereg_mr, V11)(mr);
  Backend in_backend;
  VMr* m = (VMr*)mr;
  lock(&g_ctl);
  int rc = NEXT(ibv_dereg_mr, V11)(m->real);
  if (rc == 0) unlink_obj(&m->o), free(m);
  unlock(&g_ctl);
  return rc;
}

EXPORT struct ibv_comp_channel* ibv_create_comp_channel(struct ibv_context* c) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_create_comp_channel, V10)(c);
  Backend in_backend;
  lock(&g_ctl);
  Track track;
  struct ibv_comp_channel* real = NEXT(ibv_create_comp_channel, V10)(ctx_of(c)->real);
  VChan* ch = real ? new_obj<VChan>() : nullptr;
  if (ch) {
    ch->real = real;
    ch->ch.context = c;
    ch->ch.fd = real->fd;
    ch->ch.refcnt = 0;
    link_obj(&ch->o, IBDBG_VERBS_CHANNEL);
  }
  unlock(&g_ctl);
  return ch ? &ch->ch : nullptr;
}
EXPORT int ibv_destroy_comp_channel(struct ibv_comp_channel* c) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_destroy_comp_channel, V10)(c);
  Backend in_backend;
  VChan* ch = (VChan*)c;
  lock(&g_ctl);
  Track track;
  int rc = NEXT(ibv_destroy_comp_channel, V10)(ch->real);
  if (rc == 0) unlink_obj(&ch->o), free(ch);
  unlock(&g_ctl);
  return rc;
}

EXPORT struct ibv_cq* ibv_create_cq(struct ibv_context* c, int cqe, void* cq_context, struct ibv_comp_channel* chan,
                                    int vec) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_create_cq, V11)(c, cqe, cq_context, chan, vec);
  Backend in_backend;
  VChan* ch = chan ? (VChan*)chan : nullptr;
  lock(&g_ctl);
  Track track;
  struct ibv_cq* real = NEXT(ibv_create_cq, V11)(ctx_of(c)->real, cqe, nullptr, ch ? ch->real : nullptr, vec);
  VCq* v = real ? make_cq(ctx_of(c), real, nullptr, ch, cq_context) : nullptr;
  if (v) link_obj(&v->o, IBDBG_VERBS_CQ);
  else if (real) NEXT(ibv_destroy_cq, V11)(real), errno = ENOMEM;
  unlock(&g_ctl);
  return v ? ibv_cq_ex_to_cq(&v->cq) : nullptr;
}
EXPORT int ibv_resize_cq(struct ibv_cq* cq, int cqe) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_resize_cq, V11)(cq, cqe);
  Backend in_backend;
  VCq* v = cq_of(cq);
  lock(&g_ctl);
  int rc = NEXT(ibv_resize_cq, V11)(v->real, cqe);
  if (rc == 0) {
    lock(&v->lk);
    uint32_t cap = (uint32_t)(v->real->cqe > 0 ? v->real->cqe : 1) + 1;
    if (cap > v->n) {
      struct ibv_wc* nb = (struct ibv_wc*)calloc(cap, sizeof *nb);
      if (nb) {
        uint32_t n = v->n;
        take_buffered(v, (int)n, nb);
        free(v->buf);
        v->buf = nb, v->cap = cap, v->head = 0;
        __atomic_store_n(&v->n, n, __ATOMIC_RELEASE);
      }
    }
    v->cq.cqe = v->real->cqe;
    unlock(&v->lk);
  }
  unlock(&g_ctl);
  return rc;
}
EXPORT int ibv_destroy_cq(struct ibv_cq* cq) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_destroy_cq, V11)(cq);
  Backend in_backend;
  VCq* v = cq_of(cq);
  lock(&g_ctl);
  Track track;
  int rc = NEXT(ibv_destroy_cq, V11)(v->real);
  if (rc == 0) unlink_obj(&v->o), free(v->buf), free(v);
  unlock(&g_ctl);
  return rc;
}
namespace {
// An armed CQ of this channel with completions a capture buffered: the
// backend will not signal them (they left it), so the event is ours.
VCq* synthetic_event(VChan* ch) {
  VCq* found = nullptr;
  lock(&g_ctl);
  for (VObj* o = g_objs.next; o != &g_objs && !found; o = o->next) {
    if (o->kind != IBDBG_VERBS_CQ) continue;
    VCq* v = (VCq*)((char*)o - offsetof(VCq, o));
    if (v->chan == ch && __atomic_load_n(&v->n, __ATOMIC_ACQUIRE) && __atomic_load_n(&v->armed, __ATOMIC_ACQUIRE))
      found = v;
  }
  unlock(&g_ctl);
  return found;
}
}  // namespace

EXPORT int ibv_get_cq_event(struct ibv_comp_channel* chan, struct ibv_cq** cq, void** cq_context) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_get_cq_event, V11)(chan, cq, cq_context);
  VChan* ch = (VChan*)chan;
  VCq* v;
  // The wait is here, not in the backend: a thread stopped by a capture must
  // not sit in the backend's code, which a replay does not bring back.
  for (;;) {
    if ((v = synthetic_event(ch))) {
      __atomic_store_n(&v->armed, 0, __ATOMIC_RELEASE);
      __atomic_add_fetch(&v->synth, 1, __ATOMIC_RELAXED);
      break;
    }
    wait_backend();
    if (!(fcntl(ch->ch.fd, F_GETFL) & O_NONBLOCK)) {
      struct pollfd p = {ch->ch.fd, POLLIN, 0};
      if (poll(&p, 1, -1) < 0 && errno != EINTR) return -1;
      if (__atomic_load_n(&g_dead, __ATOMIC_ACQUIRE)) continue;
      if (!(p.revents & POLLIN)) continue;
    }
    Backend in_backend;
    struct ibv_cq* rcq = nullptr;
    void* rctx = nullptr;
    int rc = NEXT(ibv_get_cq_event, V11)(ch->real, &rcq, &rctx);
    if (rc) return rc;
    v = (VCq*)rctx;
    __atomic_store_n(&v->armed, 0, __ATOMIC_RELEASE);
    __atomic_add_fetch(&v->real_unacked, 1, __ATOMIC_RELAXED);
    break;
  }
  *cq = ibv_cq_ex_to_cq(&v->cq);
  *cq_context = v->cq.cq_context;
  return 0;
}
EXPORT void ibv_ack_cq_events(struct ibv_cq* cq, unsigned int n) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_ack_cq_events, V11)(cq, n);
  Backend in_backend;
  VCq* v = cq_of(cq);
  // Our own events are not the backend's to count, nor are those of a
  // backend that a replay left behind: only what this one delivered.
  for (uint32_t s = __atomic_load_n(&v->synth, __ATOMIC_RELAXED); s && n;) {
    uint32_t k = s < n ? s : n;
    if (__atomic_compare_exchange_n(&v->synth, &s, s - k, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) n -= k, s -= k;
  }
  uint32_t fwd = 0;
  for (uint32_t r = __atomic_load_n(&v->real_unacked, __ATOMIC_RELAXED); r && n;) {
    uint32_t k = r < n ? r : n;
    if (__atomic_compare_exchange_n(&v->real_unacked, &r, r - k, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
      fwd = k, n = 0;
  }
  if (fwd) NEXT(ibv_ack_cq_events, V11)(v->real, fwd);
}

EXPORT struct ibv_srq* ibv_create_srq(struct ibv_pd* pd, struct ibv_srq_init_attr* a) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_create_srq, V11)(pd, a);
  Backend in_backend;
  struct ibv_srq_init_attr r = *a;
  r.srq_context = nullptr;
  lock(&g_ctl);
  Track track;
  struct ibv_srq* real = NEXT(ibv_create_srq, V11)(pd_of(pd)->real, &r);
  VSrq* s = real ? make_srq(pd->context, real, pd, a->srq_context, &r.attr) : nullptr;
  if (s) {
    link_obj(&s->o, IBDBG_VERBS_SRQ);
    a->attr = r.attr;
  }
  unlock(&g_ctl);
  return s ? &s->srq : nullptr;
}
EXPORT int ibv_modify_srq(struct ibv_srq* srq, struct ibv_srq_attr* a, int mask) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_modify_srq, V11)(srq, a, mask);
  Backend in_backend;
  VSrq* s = srq_of(srq);
  lock(&g_ctl);
  int rc = NEXT(ibv_modify_srq, V11)(s->real, a, mask);
  if (rc == 0) {
    if (mask & IBV_SRQ_MAX_WR) s->attr.max_wr = a->max_wr;
    if (mask & IBV_SRQ_LIMIT) s->attr.srq_limit = a->srq_limit;
  }
  unlock(&g_ctl);
  return rc;
}
EXPORT int ibv_query_srq(struct ibv_srq* srq, struct ibv_srq_attr* a) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_query_srq, V11)(srq, a);
  Backend in_backend;
  return NEXT(ibv_query_srq, V11)(srq_of(srq)->real, a);
}
EXPORT int ibv_destroy_srq(struct ibv_srq* srq) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_destroy_srq, V11)(srq);
  Backend in_backend;
  VSrq* s = srq_of(srq);
  lock(&g_ctl);
  int rc = NEXT(ibv_destroy_srq, V11)(s->real);
  if (rc == 0) unlink_obj(&s->o), free(s->ring.ents), free(s);
  unlock(&g_ctl);
  return rc;
}

EXPORT struct ibv_qp* ibv_create_qp(struct ibv_pd* pd, struct ibv_qp_init_attr* a) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_create_qp, V11)(pd, a);
  Backend in_backend;
  struct ibv_qp_init_attr_ex x;
  memset(&x, 0, sizeof x);
  x.qp_context = a->qp_context;
  x.send_cq = a->send_cq;
  x.recv_cq = a->recv_cq;
  x.srq = a->srq;
  x.cap = a->cap;
  x.qp_type = a->qp_type;
  x.sq_sig_all = a->sq_sig_all;
  x.comp_mask = IBV_QP_INIT_ATTR_PD;
  x.pd = pd;
  struct ibv_qp* q = create_qp_common(ctx_of(pd->context), &x);
  if (q) a->cap = x.cap;
  return q;
}
EXPORT struct ibv_qp_ex* ibv_qp_to_qp_ex(struct ibv_qp* qp) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_qp_to_qp_ex, "IBVERBS_1.6")(qp);
  Backend in_backend;
  VQp* q = qp_of(qp);
  return q->rx ? &q->qx : nullptr;
}
EXPORT int ibv_modify_qp(struct ibv_qp* qp, struct ibv_qp_attr* a, int mask) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_modify_qp, V11)(qp, a, mask);
  Backend in_backend;
  VQp* q = qp_of(qp);
  lock(&g_ctl);
  Track track;
  int rc = NEXT(ibv_modify_qp, V11)(q->real, a, mask);
  if (rc == 0) {
    qp->state = q->real->state;
    struct ibv_qp_attr* s = &q->attr;
    if (mask & IBV_QP_STATE) s->qp_state = a->qp_state;
    if (mask & IBV_QP_PKEY_INDEX) s->pkey_index = a->pkey_index;
    if (mask & IBV_QP_PORT) s->port_num = a->port_num;
    if (mask & IBV_QP_QKEY) s->qkey = a->qkey;
    if (mask & IBV_QP_ACCESS_FLAGS) s->qp_access_flags = a->qp_access_flags;
    if (mask & IBV_QP_AV) s->ah_attr = a->ah_attr;
    if (mask & IBV_QP_PATH_MTU) s->path_mtu = a->path_mtu;
    if (mask & IBV_QP_DEST_QPN) s->dest_qp_num = a->dest_qp_num;
    if (mask & IBV_QP_RQ_PSN) s->rq_psn = a->rq_psn;
    if (mask & IBV_QP_MAX_DEST_RD_ATOMIC) s->max_dest_rd_atomic = a->max_dest_rd_atomic;
    if (mask & IBV_QP_MIN_RNR_TIMER) s->min_rnr_timer = a->min_rnr_timer;
    if (mask & IBV_QP_SQ_PSN) s->sq_psn = a->sq_psn;
    if (mask & IBV_QP_TIMEOUT) s->timeout = a->timeout;
    if (mask & IBV_QP_RETRY_CNT) s->retry_cnt = a->retry_cnt;
    if (mask & IBV_QP_RNR_RETRY) s->rnr_retry = a->rnr_retry;
    if (mask & IBV_QP_MAX_QP_RD_ATOMIC) s->max_rd_atomic = a->max_rd_atomic;
    q->attr_mask |= mask;
  }
  unlock(&g_ctl);
  return rc;
}
EXPORT int ibv_query_qp(struct ibv_qp* qp, struct ibv_qp_attr* a, int mask, struct ibv_qp_init_attr* init) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_query_qp, V11)(qp, a, mask, init);
  Backend in_backend;
  VQp* q = qp_of(qp);
  int rc = NEXT(ibv_query_qp, V11)(q->real, a, mask, init);
  if (rc == 0 && init) {
    init->qp_context = qp->qp_context;
    init->send_cq = qp->send_cq;
    init->recv_cq = qp->recv_cq;
    init->srq = qp->srq;
  }
  if (rc == 0) qp->state = q->real->state;
  // After a replay the peer is named as the application knew it.
  if (rc == 0 && g_xlate && (q->attr_mask & IBV_QP_DEST_QPN)) {
    a->dest_qp_num = q->attr.dest_qp_num;
    a->ah_attr = q->attr.ah_attr;
  }
  return rc;
}
EXPORT int ibv_query_qp_data_in_order(struct ibv_qp* qp, enum ibv_wr_opcode op, uint32_t flags) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_query_qp_data_in_order, "IBVERBS_1.14")(qp, op, flags);
  Backend in_backend;
  return NEXT(ibv_query_qp_data_in_order, "IBVERBS_1.14")(qp_of(qp)->real, op, flags);
}
EXPORT int ibv_query_ece(struct ibv_qp* qp, struct ibv_ece* ece) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_query_ece, "IBVERBS_1.10")(qp, ece);
  Backend in_backend;
  return NEXT(ibv_query_ece, "IBVERBS_1.10")(qp_of(qp)->real, ece);
}
EXPORT int ibv_set_ece(struct ibv_qp* qp, struct ibv_ece* ece) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_set_ece, "IBVERBS_1.10")(qp, ece);
  Backend in_backend;
  return NEXT(ibv_set_ece, "IBVERBS_1.10")(qp_of(qp)->real, ece);
}
EXPORT int ibv_destroy_qp(struct ibv_qp* qp) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_destroy_qp, V11)(qp);
  Backend in_backend;
  VQp* q = qp_of(qp);
  lock(&g_ctl);
  Track track;
  uint32_t qpn = q->real->qp_num;
  int rc = NEXT(ibv_destroy_qp, V11)(q->real);
  if (rc == 0) qpn_del(qpn), unlink_obj(&q->o), free(q->ring.ents), free(q->ud), free(q);
  unlock(&g_ctl);
  return rc;
}
EXPORT int ibv_attach_mcast(struct ibv_qp* qp, const union ibv_gid* gid, uint16_t lid) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_attach_mcast, V11)(qp, gid, lid);
  Backend in_backend;
  unsupported(F_MCAST);
  return NEXT(ibv_attach_mcast, V11)(qp_of(qp)->real, gid, lid);
}
EXPORT int ibv_detach_mcast(struct ibv_qp* qp, const union ibv_gid* gid, uint16_t lid) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_detach_mcast, V11)(qp, gid, lid);
  Backend in_backend;
  return NEXT(ibv_detach_mcast, V11)(qp_of(qp)->real, gid, lid);
}

namespace {
struct ibv_ah* wrap_ah(struct ibv_pd* pd, struct ibv_ah* real, const struct ibv_ah_attr* attr) {
  VAh* a = real ? new_obj<VAh>() : nullptr;
  if (!a) return nullptr;
  a->real = real;
  if (attr) a->attr = *attr;
  a->ah.context = pd->context;
  a->ah.pd = pd;
  a->ah.handle = real->handle;
  link_obj(&a->o, IBDBG_VERBS_AH);
  return &a->ah;
}
}  // namespace

EXPORT struct ibv_ah* ibv_create_ah(struct ibv_pd* pd, struct ibv_ah_attr* attr) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_create_ah, V11)(pd, attr);
  Backend in_backend;
  lock(&g_ctl);
  Track track;
  struct ibv_ah* a = wrap_ah(pd, NEXT(ibv_create_ah, V11)(pd_of(pd)->real, attr), attr);
  unlock(&g_ctl);
  return a;
}
EXPORT int ibv_init_ah_from_wc(struct ibv_context* c, uint8_t port, struct ibv_wc* wc, struct ibv_grh* grh,
                               struct ibv_ah_attr* attr) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_init_ah_from_wc, V11)(c, port, wc, grh, attr);
  Backend in_backend;
  return NEXT(ibv_init_ah_from_wc, V11)(ctx_of(c)->real, port, wc, grh, attr);
}
EXPORT struct ibv_ah* ibv_create_ah_from_wc(struct ibv_pd* pd, struct ibv_wc* wc, struct ibv_grh* grh,
                                            uint8_t port) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_create_ah_from_wc, V11)(pd, wc, grh, port);
  Backend in_backend;
  struct ibv_ah_attr attr;
  memset(&attr, 0, sizeof attr);
  lock(&g_ctl);
  NEXT(ibv_init_ah_from_wc, V11)(ctx_of(pd->context)->real, port, wc, grh, &attr);
  struct ibv_ah* a = wrap_ah(pd, NEXT(ibv_create_ah_from_wc, V11)(pd_of(pd)->real, wc, grh, port), &attr);
  unlock(&g_ctl);
  return a;
}
EXPORT int ibv_destroy_ah(struct ibv_ah* ah) {
  if (__builtin_expect(t_depth, 0)) return NEXT(ibv_destroy_ah, V11)(ah);
  Backend in_backend;
  VAh* a = ah_of(ah);
  lock(&g_ctl);
  int rc = NEXT(ibv_destroy_ah, V11)(a->real);
  if (rc == 0) unlink_obj(&a->o), free(a);
  unlock(&g_ctl);
  return rc;
}

// Objects shared between processes through the kernel: refused.
EXPORT struct ibv_context* ibv_import_device(int) {
  unsupported(F_IMPORT);
  errno = EOPNOTSUPP;
  return nullptr;
}
EXPORT struct ibv_pd* ibv_import_pd(struct ibv_context*, uint32_t) {
  unsupported(F_IMPORT);
  errno = EOPNOTSUPP;
  return nullptr;
}
EXPORT void ibv_unimport_pd(struct ibv_pd*) {}
EXPORT struct ibv_mr* ibv_import_mr(struct ibv_pd*, uint32_t) {
  unsupported(F_IMPORT);
  errno = EOPNOTSUPP;
  return nullptr;
}
EXPORT void ibv_unimport_mr(struct ibv_mr*) {}
EXPORT struct ibv_dm* ibv_import_dm(struct ibv_context*, uint32_t) {
  unsupported(F_IMPORT);
  errno = EOPNOTSUPP;
  return nullptr;
}
EXPORT void ibv_unimport_dm(struct ibv_dm*) {}

// ==== the capture's side ==================================================================
namespace {

char g_why_buf[256];

const char* refuse(const char* a, uint64_t n = ~0ull, const char* b = "") {
  size_t k = 0;
  char num[24] = "";
  if (n != ~0ull) utoa(n, num);
  const char* parts[] = {"verbs: ", a, num, b};
  for (const char* s : parts)
    for (; *s && k + 1 < sizeof g_why_buf; s++) g_why_buf[k++] = *s;
  g_why_buf[k] = 0;
  return g_why_buf;
}

Ring* ring_of(VObj* o) {
  if (o->kind == IBDBG_VERBS_QP) return &((VQp*)((char*)o - offsetof(VQp, o)))->ring;
  if (o->kind == IBDBG_VERBS_SRQ) return &((VSrq*)((char*)o - offsetof(VSrq, o)))->ring;
  return nullptr;
}

// From the end of the quiesce until resume, polls return only buffered
// completions: no application thread is inside the backend when the process
// stops (a replay would resume it in the dead backend's code).
void park_pollers() {
  __atomic_store_n(&g_dead, 1, __ATOMIC_SEQ_CST);
  for (VObj* o = g_objs.next; o != &g_objs; o = o->next) {
    if (o->kind != IBDBG_VERBS_CQ) continue;
    VCq* v = (VCq*)((char*)o - offsetof(VCq, o));
    lock(&v->lk);
    unlock(&v->lk);
  }
}

const char* rings_refusal() {
  for (VObj* o = g_objs.next; o != &g_objs; o = o->next) {
    if (o->kind == IBDBG_VERBS_QP && ((VQp*)((char*)o - offsetof(VQp, o)))->ud_overflow)
      return refuse("a UD QP sent to more than ", kUdDests, " destinations (address handle, QPN)");
    Ring* r = ring_of(o);
    if (r && r->overflow)
      return refuse("a posted receive could not be recorded (more than the queue's max_recv_wr, more than ",
                    IBDBG_VERBS_RECV_MAX_SGE, " SGEs, or no memory)");
  }
  return nullptr;
}

bool g_ctl_ours;  // quiesce holds g_ctl until resume

// What the backend can tell (softrdma's SOFTRDMA_PRIVATE_1 exports, README.md):
// send requests not yet retired on a QP, signaled or not; the descriptors and
// threads it owns, including those its own threads opened or started after the
// calls we watched.  NULL for a backend without them.
int (*g_sends_pending)(struct ibv_qp*);
int (*g_owned_fds)(int*, int);
int (*g_owned_tids)(int*, int);
void find_backend_exports() {
  static bool looked;
  if (looked) return;
  looked = true;
  g_sends_pending = (int (*)(struct ibv_qp*))dlvsym(RTLD_DEFAULT, "softrdma_qp_sends_pending", "SOFTRDMA_PRIVATE_1");
  g_owned_fds = (int (*)(int*, int))dlvsym(RTLD_DEFAULT, "softrdma_owned_fds", "SOFTRDMA_PRIVATE_1");
  g_owned_tids = (int (*)(int*, int))dlvsym(RTLD_DEFAULT, "softrdma_owned_tids", "SOFTRDMA_PRIVATE_1");
}

// Every CQ's completions into its buffer (no poller in an unlocked section).
const char* drain_all(int64_t end) {
  bool full = false;
  for (VObj* o = g_objs.next; o != &g_objs; o = o->next) {
    if (o->kind != IBDBG_VERBS_CQ) continue;
    VCq* v = (VCq*)((char*)o - offsetof(VCq, o));
    // An extended poll session ends with its end_poll; one that posts
    // meanwhile waits at the gate, and the capture refuses.
    while (__atomic_load_n(&v->pollers, __ATOMIC_SEQ_CST)) {
      if (now_ms() > end) return refuse("an ibv_start_poll session does not end (does it post before its end_poll?)");
      sleep_ms(1);
    }
    lock(&v->lk);
    if (!drain_cq(v)) full = true;
    unlock(&v->lk);
  }
  if (full) return refuse("a CQ's capture buffer is full (the application has not polled its completions)");
  return nullptr;
}

// A QP with sends of ours still in flight: *pending gets how many are known
// (-1: unsignaled ones after the last signaled, which the backend cannot
// count for us).
bool sends_in_flight(VQp* q, int64_t* pending) {
  if (q->qx.qp_base.state != IBV_QPS_RTS) return false;
  int64_t sig = __atomic_load_n(&q->sends_out, __ATOMIC_RELAXED);
  if (g_sends_pending) {
    // The backend retires unsignaled requests too (a real RC QP does when a
    // later signaled one completes): it counts them all.
    int64_t n = g_sends_pending(q->real);
    if (n < sig) n = sig;
    *pending = n;
    return n > 0;
  }
  if (sig > 0) {
    *pending = sig;
    return true;
  }
  // UD: a datagram is done once sent, and may be lost anyway.
  if (q->qx.qp_base.qp_type != IBV_QPT_UD && __atomic_load_n(&q->unsig_tail, __ATOMIC_RELAXED) > 0) {
    *pending = -1;
    return true;
  }
  return false;
}

const char* busy_refusal(VQp* q, int64_t pending, const char* when) {
  if (pending < 0)
    return refuse("unsignaled sends posted after the last signaled one on QP ", q->qx.qp_base.qp_num,
                  ": this backend cannot tell whether they completed");
  return refuse("sends posted on QP ", q->qx.qp_base.qp_num, when);
}

// Closes a gate and waits (bounded) for the posts inside to leave.
bool gate_close(volatile uint32_t* block, volatile uint32_t* inflight) {
  __atomic_store_n(block, 1, __ATOMIC_SEQ_CST);
  int64_t end = now_ms() + 10000;
  for (;;) {
    uint32_t in = __atomic_load_n(inflight, __ATOMIC_SEQ_CST);
    if (!in) return true;
    if (now_ms() > end) return false;
    struct timespec ts = {0, 10000000};
    futex(inflight, FUTEX_WAIT_PRIVATE, in, &ts);
  }
}

const char* presuspend() {
  if (g_refused >= 0) return refuse(kFeatureName[g_refused], ~0ull, " was used by this process (not supported)");
  if (const char* why = rings_refusal()) return why;
  find_backend_exports();
  // Control verbs wait from now on (they hold g_ctl), sends at the gate;
  // receives until the drain.
  if (!lock_timed(&g_ctl, 10000)) return refuse("a control verb (create/modify/destroy) does not return");
  g_ctl_ours = true;
  __atomic_store_n(&g_quiesce, 1, __ATOMIC_SEQ_CST);
  if (!gate_close(&g_block, &g_inflight)) return refuse("a post (or an ibv_wr_start session) does not end");
  // Posted sends complete, signaled or not (the peer's receives are its
  // application's business, which may still post them: a send waiting for
  // one may never complete, hence the bound); every completion on the way
  // goes to the buffers.
  int64_t end = now_ms() + 5000;
  for (;;) {
    if (const char* why = drain_all(end)) return why;
    VQp* busy = nullptr;
    int64_t pending = 0;
    for (VObj* o = g_objs.next; o != &g_objs && !busy; o = o->next) {
      if (o->kind != IBDBG_VERBS_QP) continue;
      VQp* q = (VQp*)((char*)o - offsetof(VQp, o));
      if (sends_in_flight(q, &pending)) busy = q;
    }
    if (!busy) break;
    if (pending < 0 || now_ms() > end) return busy_refusal(busy, pending, " do not complete within 5 s");
    sleep_ms(1);
  }
  return nullptr;
}

// The backend's own descriptors and threads, as it tells them (README.md).
uint64_t g_owned_fd[kMaxFd / 64];
int g_owned_list[4 * kMaxFd];
void take_backend_owned() {
  memset(g_owned_fd, 0, sizeof g_owned_fd);
  if (g_owned_fds) {
    int n = g_owned_fds(g_owned_list, 4 * kMaxFd);
    for (int i = 0; i < n && i < 4 * kMaxFd; i++)
      if (g_owned_list[i] >= 0 && g_owned_list[i] < kMaxFd) g_owned_fd[g_owned_list[i] / 64] |= 1ull << (g_owned_list[i] % 64);
  }
  if (g_owned_tids) {
    int tids[IBDBG_VERBS_MAX_TIDS];
    int n = g_owned_tids(tids, IBDBG_VERBS_MAX_TIDS);
    for (int i = 0; i < n && i < IBDBG_VERBS_MAX_TIDS; i++) {
      bool known = false;
      for (uint32_t k = 0; k < g_nbackend_tid; k++) known |= g_backend_tid[k] == tids[i];
      if (!known && g_nbackend_tid < IBDBG_VERBS_MAX_TIDS) g_backend_tid[g_nbackend_tid++] = tids[i];
    }
  }
}

const char* drain() {
  // Every process of the job has its posts held and its sends complete, so
  // what the peers' sends produced here is in our backend's CQs by now
  // (a reliable responder completes the receive before it acknowledges).
  // Receives posted until now were for them; from here on nothing changes.
  if (!gate_close(&g_block_recv, &g_inflight_recv)) return refuse("a receive post does not end");
  if (const char* why = drain_all(now_ms() + 5000)) return why;
  for (VObj* o = g_objs.next; o != &g_objs; o = o->next) {
    if (o->kind != IBDBG_VERBS_QP) continue;
    VQp* q = (VQp*)((char*)o - offsetof(VQp, o));
    int64_t pending = 0;
    if (sends_in_flight(q, &pending)) return busy_refusal(q, pending, " are in flight again after the job-wide barrier");
  }
  // Not before: until every process of the job is presuspended, the
  // application must see its new receive completions (to post receives that
  // a peer's last sends need).
  park_pollers();
  take_backend_owned();
  return nullptr;
}

const char* quiesce() {
  if (const char* why = presuspend()) return why;
  return drain();
}

size_t describe(void* out, size_t cap) {
  if (!g_nobjs) return 0;
  size_t total = g_nobjs;
  for (VObj* o = g_objs.next; o != &g_objs; o = o->next)
    if (Ring* r = ring_of(o)) total += r->live;
  size_t need = sizeof(ibdbg_verbs_hdr) + total * sizeof(ibdbg_verbs_obj);
  if (need > cap) return 0;
  ibdbg_verbs_hdr* h = (ibdbg_verbs_hdr*)out;
  memset(h, 0, sizeof *h);
  h->magic = IBDBG_VERBS_MAGIC;
  h->posts_blocked = g_blocked_posts;
  memcpy(h->backend, g_backend_path, sizeof h->backend - 1);
  if (g_refused >= 0) strncpy(h->refused, kFeatureName[g_refused], sizeof h->refused - 1);
  for (uint32_t i = 0; i < g_nbackend_tid; i++)
    if (syscall(SYS_tgkill, getpid(), g_backend_tid[i], 0) == 0) h->backend_tids[h->nbackend_tids++] = g_backend_tid[i];
  for (int fd = 0; fd < kMaxFd; fd++)
    if ((g_backend_fd[fd / 64] | g_owned_fd[fd / 64]) & (1ull << (fd % 64))) h->backend_fds[h->nbackend_fds++] = fd;
  ibdbg_verbs_obj* objs = (ibdbg_verbs_obj*)(h + 1);
  uint32_t n = 0;
  for (VObj* o = g_objs.next; o != &g_objs && n < total; o = o->next, n++) {
    ibdbg_verbs_obj* e = &objs[n];
    memset(e, 0, sizeof *e);
    e->kind = o->kind;
    switch (o->kind) {
      case IBDBG_VERBS_CONTEXT: {
        VCtx* v = (VCtx*)((char*)o - offsetof(VCtx, o));
        e->handle = (uint64_t)&v->vc.context;
        if (v->vc.context.device) memcpy(e->name, v->vc.context.device->name, sizeof e->name - 1);
        e->u[IBDBG_VCTX_CMD_FD] = (uint64_t)(int64_t)v->vc.context.cmd_fd;
        e->u[IBDBG_VCTX_ASYNC_FD] = (uint64_t)(int64_t)v->vc.context.async_fd;
        if (v->port_known) {
          const struct ibv_port_attr& pa = v->port;
          // Older backends leave link_layer 0 (unspecified), which means InfiniBand.
          e->u[IBDBG_VCTX_LINK_LAYER] = pa.link_layer ? pa.link_layer : IBV_LINK_LAYER_INFINIBAND;
          e->u[IBDBG_VCTX_LID] = pa.lid, e->u[IBDBG_VCTX_ACTIVE_MTU] = pa.active_mtu;
          e->u[IBDBG_VCTX_PORT_STATE] = pa.state, e->u[IBDBG_VCTX_GID_TBL_LEN] = (uint64_t)pa.gid_tbl_len;
          memcpy(e->gid, v->gid0.raw, 16);
          e->u[IBDBG_VCTX_NGIDS] = v->ngids;
          for (uint32_t i = 0; i < v->ngids; i++) memcpy(&e->u[IBDBG_VCTX_GIDS + 2 * i], v->gids[i].raw, 16);
          if (!h->link_layer) h->link_layer = (uint32_t)e->u[IBDBG_VCTX_LINK_LAYER];
        }
        break;
      }
      case IBDBG_VERBS_PD: {
        VPd* v = (VPd*)((char*)o - offsetof(VPd, o));
        e->handle = (uint64_t)&v->pd;
        e->parent[0] = (uint64_t)v->pd.context;
        break;
      }
      case IBDBG_VERBS_MR: {
        VMr* v = (VMr*)((char*)o - offsetof(VMr, o));
        e->handle = (uint64_t)&v->mr;
        e->parent[0] = (uint64_t)v->mr.pd;
        e->u[0] = (uint64_t)v->mr.addr, e->u[1] = v->mr.length, e->u[2] = (uint64_t)v->access;
        e->u[3] = v->mr.lkey, e->u[4] = v->mr.rkey;
        break;
      }
      case IBDBG_VERBS_CHANNEL: {
        VChan* v = (VChan*)((char*)o - offsetof(VChan, o));
        e->handle = (uint64_t)&v->ch;
        e->parent[0] = (uint64_t)v->ch.context;
        e->u[0] = (uint64_t)(int64_t)v->ch.fd;
        break;
      }
      case IBDBG_VERBS_CQ: {
        VCq* v = (VCq*)((char*)o - offsetof(VCq, o));
        e->handle = (uint64_t)&v->cq;
        e->parent[0] = (uint64_t)v->cq.context;
        e->parent[1] = (uint64_t)v->cq.channel;
        e->u[0] = (uint64_t)v->cq.cqe, e->u[1] = v->n, e->u[2] = v->rx != nullptr;
        e->u[3] = v->sends_taken, e->u[4] = v->recvs_taken;
        break;
      }
      case IBDBG_VERBS_SRQ: {
        VSrq* v = (VSrq*)((char*)o - offsetof(VSrq, o));
        e->handle = (uint64_t)&v->srq;
        e->parent[0] = (uint64_t)v->srq.pd;
        e->u[0] = v->attr.max_wr, e->u[1] = v->attr.max_sge, e->u[2] = v->attr.srq_limit;
        e->u[3] = (uint64_t)v->recvs;
        break;
      }
      case IBDBG_VERBS_AH: {
        VAh* v = (VAh*)((char*)o - offsetof(VAh, o));
        e->handle = (uint64_t)&v->ah;
        e->parent[0] = (uint64_t)v->ah.pd;
        const struct ibv_ah_attr& a = v->attr;
        uint64_t* u = e->u;
        u[IBDBG_VAH_DLID] = a.dlid, u[IBDBG_VAH_PORT] = a.port_num, u[IBDBG_VAH_IS_GLOBAL] = a.is_global;
        u[IBDBG_VAH_SGID_INDEX] = a.grh.sgid_index, u[IBDBG_VAH_SL] = a.sl;
        u[IBDBG_VAH_SRC_PATH_BITS] = a.src_path_bits, u[IBDBG_VAH_STATIC_RATE] = a.static_rate;
        u[IBDBG_VAH_HOP_LIMIT] = a.grh.hop_limit, u[IBDBG_VAH_TRAFFIC_CLASS] = a.grh.traffic_class;
        u[IBDBG_VAH_FLOW_LABEL] = a.grh.flow_label;
        memcpy(e->gid, a.grh.dgid.raw, 16);
        break;
      }
      case IBDBG_VERBS_QP: {
        VQp* v = (VQp*)((char*)o - offsetof(VQp, o));
        struct ibv_qp* q = &v->qx.qp_base;
        e->handle = (uint64_t)q;
        e->parent[0] = (uint64_t)q->pd, e->parent[1] = (uint64_t)q->send_cq;
        e->parent[2] = (uint64_t)q->recv_cq, e->parent[3] = (uint64_t)q->srq;
        e->flags = v->rx != nullptr;
        uint64_t* u = e->u;
        u[IBDBG_VQP_QPN] = q->qp_num, u[IBDBG_VQP_TYPE] = q->qp_type, u[IBDBG_VQP_STATE] = q->state;
        u[IBDBG_VQP_MAX_SEND_WR] = v->cap.max_send_wr, u[IBDBG_VQP_MAX_RECV_WR] = v->cap.max_recv_wr;
        u[IBDBG_VQP_MAX_SEND_SGE] = v->cap.max_send_sge, u[IBDBG_VQP_MAX_RECV_SGE] = v->cap.max_recv_sge;
        u[IBDBG_VQP_MAX_INLINE] = v->cap.max_inline_data;
        u[IBDBG_VQP_DEST_QPN] = v->attr.dest_qp_num, u[IBDBG_VQP_RQ_PSN] = v->attr.rq_psn;
        u[IBDBG_VQP_SQ_PSN] = v->attr.sq_psn, u[IBDBG_VQP_DLID] = v->attr.ah_attr.dlid;
        u[IBDBG_VQP_PORT] = v->attr.port_num, u[IBDBG_VQP_QKEY] = v->attr.qkey;
        u[IBDBG_VQP_SENDS_OUTSTANDING] = (uint64_t)v->sends_out;
        u[IBDBG_VQP_RECVS_POSTED] = (uint64_t)(v->srq ? 0 : v->recvs);
        const struct ibv_qp_attr& a = v->attr;
        u[IBDBG_VQP_ATTR_MASK] = (uint64_t)v->attr_mask, u[IBDBG_VQP_PATH_MTU] = a.path_mtu;
        u[IBDBG_VQP_PKEY_INDEX] = a.pkey_index, u[IBDBG_VQP_ACCESS_FLAGS] = a.qp_access_flags;
        u[IBDBG_VQP_SL] = a.ah_attr.sl, u[IBDBG_VQP_SRC_PATH_BITS] = a.ah_attr.src_path_bits;
        u[IBDBG_VQP_STATIC_RATE] = a.ah_attr.static_rate, u[IBDBG_VQP_IS_GLOBAL] = a.ah_attr.is_global;
        u[IBDBG_VQP_SGID_INDEX] = a.ah_attr.grh.sgid_index, u[IBDBG_VQP_HOP_LIMIT] = a.ah_attr.grh.hop_limit;
        u[IBDBG_VQP_TRAFFIC_CLASS] = a.ah_attr.grh.traffic_class, u[IBDBG_VQP_FLOW_LABEL] = a.ah_attr.grh.flow_label;
        u[IBDBG_VQP_TIMEOUT] = a.timeout, u[IBDBG_VQP_RETRY_CNT] = a.retry_cnt;
        u[IBDBG_VQP_RNR_RETRY] = a.rnr_retry, u[IBDBG_VQP_MIN_RNR_TIMER] = a.min_rnr_timer;
        u[IBDBG_VQP_MAX_RD_ATOMIC] = a.max_rd_atomic, u[IBDBG_VQP_MAX_DEST_RD_ATOMIC] = a.max_dest_rd_atomic;
        u[IBDBG_VQP_SQ_SIG_ALL] = v->sig_all;
        if (v->attr.ah_attr.is_global) memcpy(e->gid, v->attr.ah_attr.grh.dgid.raw, 16);
        break;
      }
    }
    // The receives still posted, in posting order, after their queue.
    if (Ring* r = ring_of(o)) {
      for (uint32_t i = 0; i < r->n && n + 1 < total; i++) {
        RecvEnt* re = ring_at(r, i);
        if (!re->live) continue;
        ibdbg_verbs_obj* x = &objs[++n];
        memset(x, 0, sizeof *x);
        x->kind = IBDBG_VERBS_RECV;
        x->handle = (uint64_t)re;
        x->parent[0] = e->handle;
        x->u[0] = re->wr_id, x->u[1] = re->num_sge;
        for (uint32_t k = 0; k < re->num_sge && k < IBDBG_VERBS_RECV_MAX_SGE; k++) {
          x->u[2 + 2 * k] = re->sge[k].addr;
          x->u[3 + 2 * k] = re->sge[k].length | (uint64_t)re->sge[k].lkey << 32;
        }
      }
    }
  }
  h->nobjs = n;
  return sizeof *h + (size_t)n * sizeof(ibdbg_verbs_obj);
}

void resume() {
  backend_back();
  __atomic_store_n(&g_quiesce, 0, __ATOMIC_SEQ_CST);
  __atomic_store_n(&g_block, 0, __ATOMIC_SEQ_CST);
  __atomic_store_n(&g_block_recv, 0, __ATOMIC_SEQ_CST);
  futex(&g_block, FUTEX_WAKE_PRIVATE, 0x7fffffff, nullptr);
  futex(&g_block_recv, FUTEX_WAKE_PRIVATE, 0x7fffffff, nullptr);
  if (g_ctl_ours) g_ctl_ours = false, unlock(&g_ctl);
}

void print_counters() {
  char line[256], num[24];
  size_t k = 0;
  auto put = [&](const char* s) {
    for (; *s && k + 1 < sizeof line; s++) line[k++] = *s;
  };
  put("counters pid=");
  utoa((uint64_t)getpid(), num), put(num);
  put(" post_send="), utoa(g_n_post_send, num), put(num);
  put(" post_recv="), utoa(g_n_post_recv, num), put(num);
  put(" poll="), utoa(g_n_poll, num), put(num);
  put(" wr="), utoa(g_n_wr, num), put(num);
  line[k] = 0;
  say(line);
}

}  // namespace

// ==== the replay's side ===================================================================
// README.md "the lower half": the captured backend's memory is dead; the
// backend is loaded fresh (dlmopen) and every object made again through it,
// from the verbs record of the image (path attributes, which `ibdbg
// translate` may have rewritten) and the virtual objects in our memory.
namespace {

char g_rs_why[512];
const char* rs_fail(const char* a, const char* b = "", const char* c = "", const char* d = "") {
  snprintf(g_rs_why, sizeof g_rs_why, "verbs: %s%s%s%s", a, b, c, d);
  return g_rs_why;
}
const char* rs_errno(const char* what) { return rs_fail(what, ": ", strerror(errno)); }

void hex_of(const uint8_t* b, size_t n, char* out) {
  static const char d[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) out[2 * i] = d[b[i] >> 4], out[2 * i + 1] = d[b[i] & 15];
  out[2 * n] = 0;
}
bool unhex(const char* s, uint8_t* b, size_t n) {
  auto v = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; };
  for (size_t i = 0; i < n; i++) {
    int h = v(s[2 * i]), l = h < 0 ? -1 : v(s[2 * i + 1]);
    if (h < 0 || l < 0) return false;
    b[i] = (uint8_t)(h << 4 | l);
  }
  return true;
}

bool is_ours(VObj* o) {
  for (VObj* x = g_objs.next; x != &g_objs; x = x->next)
    if (x == o) return true;
  return false;
}
// The virtual object a record entry names (its handle is the address the
// application holds), if it is one of ours of that kind.
VObj* vobj_of(const ibdbg_verbs_obj* e) {
  VObj* o = nullptr;
  switch (e->kind) {
    case IBDBG_VERBS_CONTEXT: o = &ctx_of((struct ibv_context*)e->handle)->o; break;
    case IBDBG_VERBS_PD: o = &((VPd*)e->handle)->o; break;
    case IBDBG_VERBS_MR: o = &((VMr*)e->handle)->o; break;
    case IBDBG_VERBS_CQ: o = &((VCq*)e->handle)->o; break;
    case IBDBG_VERBS_QP: o = &((VQp*)e->handle)->o; break;
    case IBDBG_VERBS_SRQ: o = &((VSrq*)e->handle)->o; break;
    case IBDBG_VERBS_AH: o = &((VAh*)e->handle)->o; break;
    case IBDBG_VERBS_CHANNEL: o = &((VChan*)e->handle)->o; break;
    default: return nullptr;
  }
  return is_ours(o) && o->kind == e->kind ? o : nullptr;
}
template <class T>
T* outer(VObj* o) {
  return (T*)((char*)o - offsetof(T, o));
}

// A descriptor number the application knows gets the fresh backend's (the
// launcher held it with /dev/null).
bool put_fd_at(int fresh, int old) {
  if (fresh < 0 || old < 0 || fresh == old) return true;
  if (dup2(fresh, old) != old) return false;
  if (old < kMaxFd) g_backend_fd[old / 64] |= 1ull << (old % 64);  // the backend's again, at its number
  return true;
}

const char* link_name(uint64_t ll) { return ll == IBV_LINK_LAYER_ETHERNET ? "roce" : "ib"; }

// Name-service keys under which a QP is found: the ids a peer recorded for
// it (its dlid, or the dgid it used, and its QPN).
void qp_key(char* out, size_t cap, bool global, const uint8_t* gid, uint32_t lid, uint32_t qpn) {
  char h[33];
  if (global) hex_of(gid, 16, h), snprintf(out, cap, "verbs/G%s/%u", h, qpn);
  else snprintf(out, cap, "verbs/L%u/%u", lid, qpn);
}

struct Rebuild {
  const ibdbg_verbs_hdr* h;
  const ibdbg_verbs_obj* objs;
  uint32_t n;
  const ibdbg_verbs_replay_env* env;
  char rkeys[8192];  // "old:new,..." of our MRs, for the peers
};

const char* open_lower(Rebuild& R, char* devname, size_t devcap) {
  const char* dev = R.env->device ? R.env->device : "";
  char path[256];
  snprintf(path, sizeof path, "%s", R.h->backend);
  devname[0] = 0;
  if (!strncmp(dev, "softrdma:", 9)) {
    const char* mode = dev + 9;
    if (strcmp(mode, "ib") && strcmp(mode, "roce")) return rs_fail("unknown target device ", dev);
    if (!strstr(path, "softrdma")) {
      const char* d = getenv("IBDBG_SOFTRDMA_DIR");
      if (!d) return rs_fail("the image's verbs backend is not softrdma and IBDBG_SOFTRDMA_DIR is not set");
      snprintf(path, sizeof path, "%s/libibverbs.so.1", d);
    }
    // The fresh copy's libc reads our environment when it starts.
    setenv("SOFTRDMA_MODE", mode, 1);
  } else if (*dev) {
    snprintf(devname, devcap, "%s", dev);
  }
  if (!path[0]) return rs_fail("the image does not say which library implemented the verbs");
  g_lower = dlmopen(LM_ID_NEWLM, path, RTLD_NOW | RTLD_LOCAL);
  if (!g_lower) return rs_fail("cannot load the verbs backend: ", dlerror());
  __atomic_add_fetch(&g_lower_gen, 1, __ATOMIC_SEQ_CST);
  return nullptr;
}

const char* rebuild_context(Rebuild& R, const ibdbg_verbs_obj* e, VCtx* v, const char* devname) {
  int nd = 0;
  struct ibv_device** list = NEXT(ibv_get_device_list, V11)(&nd);
  if (!list || nd <= 0) return rs_fail("the verbs backend has no device");
  const char* want = devname[0] ? devname : e->name;
  struct ibv_device* d = nullptr;
  for (int i = 0; i < nd && !d; i++)
    if (!strcmp(NEXT(ibv_get_device_name, V11)(list[i]), want)) d = list[i];
  if (!d && devname[0]) return rs_fail("no verbs device ", devname);
  if (!d) d = list[0];
  struct ibv_context* real = NEXT(ibv_open_device, V11)(d);
  if (!real) return rs_errno("cannot open the verbs device");
  struct ibv_port_attr pa;
  memset(&pa, 0, sizeof pa);
  if (NEXT(ibv_query_port, V11)(real, 1, (struct _compat_ibv_port_attr*)&pa) != 0)
    return rs_fail("cannot query port 1 of the verbs device");
  uint64_t ll = pa.link_layer ? pa.link_layer : IBV_LINK_LAYER_INFINIBAND;
  uint64_t want_ll = R.h->link_layer ? R.h->link_layer : e->u[IBDBG_VCTX_LINK_LAYER];
  if (want_ll && want_ll != ll) {
    static char msg[300];
    snprintf(msg, sizeof msg, "the image is for %s and device %s is %s: run `ibdbg translate IMAGE -o OUT --fabric %s` first",
             want_ll == IBV_LINK_LAYER_ETHERNET ? "RoCE" : "InfiniBand", NEXT(ibv_get_device_name, V11)(d),
             ll == IBV_LINK_LAYER_ETHERNET ? "RoCE" : "InfiniBand", link_name(ll));
    return rs_fail(msg);
  }
  v->real = real;
  v->real_vctx = real_verbs_ctx(real);
  if (!put_fd_at(real->async_fd, v->vc.context.async_fd) || !put_fd_at(real->cmd_fd, v->vc.context.cmd_fd))
    return rs_errno("cannot give the device's descriptors their numbers");
  v->vc.context.device = real->device;
  return nullptr;
}

const char* rebuild_objects(Rebuild& R, const char* devname) {
  uint32_t nmr = 0;
  for (uint32_t i = 0; i < R.n; i++) nmr += R.objs[i].kind == IBDBG_VERBS_MR;
  keymap_init(&g_lkeys, nmr);
  size_t rk = 0;
  R.rkeys[0] = 0;
  for (uint32_t i = 0; i < R.n; i++) {
    const ibdbg_verbs_obj* e = &R.objs[i];
    if (e->kind == IBDBG_VERBS_RECV) continue;
    VObj* o = vobj_of(e);
    if (!o) return rs_fail("the verbs record names an object this process does not have");
    switch (e->kind) {
      case IBDBG_VERBS_CONTEXT:
        if (const char* why = rebuild_context(R, e, outer<VCtx>(o), devname)) return why;
        break;
      case IBDBG_VERBS_PD: {
        VPd* p = outer<VPd>(o);
        p->real = NEXT(ibv_alloc_pd, V11)(ctx_of(p->pd.context)->real);
        if (!p->real) return rs_errno("cannot allocate a protection domain");
        break;
      }
      case IBDBG_VERBS_MR: {
        VMr* m = outer<VMr>(o);
        m->real = NEXT(ibv_reg_mr, V11)(pd_of(m->mr.pd)->real, m->mr.addr, m->mr.length, m->access);
        if (!m->real) return rs_errno("cannot register a memory region again");
        keymap_put(&g_lkeys, m->mr.lkey, m->real->lkey);
        if (rk + 24 < sizeof R.rkeys)
          rk += (size_t)snprintf(R.rkeys + rk, sizeof R.rkeys - rk, "%s%u:%u", rk ? "," : "", m->mr.rkey, m->real->rkey);
        break;
      }
      case IBDBG_VERBS_CHANNEL: {
        VChan* ch = outer<VChan>(o);
        ch->real = NEXT(ibv_create_comp_channel, V10)(ctx_of(ch->ch.context)->real);
        if (!ch->real) return rs_errno("cannot create a completion channel");
        if (!put_fd_at(ch->real->fd, ch->ch.fd)) return rs_errno("cannot give a completion channel its number");
        break;
      }
      case IBDBG_VERBS_CQ: {
        VCq* v = outer<VCq>(o);
        VCtx* c = ctx_of(v->cq.context);
        struct ibv_comp_channel* rch = v->chan ? v->chan->real : nullptr;
        if (v->rx) {
          if (!c->real_vctx || !c->real_vctx->create_cq_ex) return rs_fail("the verbs backend has no extended CQs");
          struct ibv_cq_init_attr_ex a;
          memset(&a, 0, sizeof a);
          a.cqe = (uint32_t)v->cq.cqe;
          a.channel = rch;
          a.wc_flags = IBV_WC_STANDARD_FLAGS | IBV_WC_EX_WITH_QP_NUM;
          v->rx = c->real_vctx->create_cq_ex(c->real, &a);
          v->real = v->rx ? ibv_cq_ex_to_cq(v->rx) : nullptr;
        } else {
          v->real = NEXT(ibv_create_cq, V11)(c->real, v->cq.cqe, nullptr, rch, 0);
        }
        if (!v->real) return rs_errno("cannot create a completion queue");
        v->poll = v->real->context->ops.poll_cq;
        v->real->cq_context = v;
        v->real_unacked = 0;
        // Armed when captured (and not yet signaled): armed again.
        if (v->armed && v->real->context->ops.req_notify_cq(v->real, v->armed == 2) != 0)
          return rs_errno("cannot arm a completion queue again");
        break;
      }
      case IBDBG_VERBS_SRQ: {
        VSrq* v = outer<VSrq>(o);
        struct ibv_srq_init_attr a;
        memset(&a, 0, sizeof a);
        a.attr.max_wr = v->attr.max_wr, a.attr.max_sge = v->attr.max_sge;
        v->real = NEXT(ibv_create_srq, V11)(pd_of(v->srq.pd)->real, &a);
        if (!v->real) return rs_errno("cannot create a shared receive queue");
        v->real->srq_context = v;
        if (v->attr.srq_limit) {
          struct ibv_srq_attr l = v->attr;
          NEXT(ibv_modify_srq, V11)(v->real, &l, IBV_SRQ_LIMIT);
        }
        break;
      }
      case IBDBG_VERBS_QP: {
        VQp* v = outer<VQp>(o);
        struct ibv_qp* q = &v->qx.qp_base;
        uint64_t t = e->u[IBDBG_VQP_TYPE];
        if (t != IBV_QPT_RC && t != IBV_QPT_UC && t != IBV_QPT_UD)
          return rs_fail("a QP of a type the replay does not rebuild");
        struct ibv_qp_init_attr_ex a;
        memset(&a, 0, sizeof a);
        a.send_cq = real_cq(q->send_cq);
        a.recv_cq = real_cq(q->recv_cq);
        a.srq = real_srq(q->srq);
        a.cap.max_send_wr = (uint32_t)e->u[IBDBG_VQP_MAX_SEND_WR];
        a.cap.max_recv_wr = (uint32_t)e->u[IBDBG_VQP_MAX_RECV_WR];
        a.cap.max_send_sge = (uint32_t)e->u[IBDBG_VQP_MAX_SEND_SGE];
        a.cap.max_recv_sge = (uint32_t)e->u[IBDBG_VQP_MAX_RECV_SGE];
        a.cap.max_inline_data = (uint32_t)e->u[IBDBG_VQP_MAX_INLINE];
        a.qp_type = (enum ibv_qp_type)t;
        a.sq_sig_all = (int)e->u[IBDBG_VQP_SQ_SIG_ALL];
        a.pd = real_pd(q->pd);
        a.comp_mask = IBV_QP_INIT_ATTR_PD;
        VCtx* c = ctx_of(q->context);
        struct ibv_qp* real;
        if (v->rx) {
          a.comp_mask |= IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;
          a.send_ops_flags = IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_SEND_WITH_IMM;
          if (t != IBV_QPT_UD) a.send_ops_flags |= IBV_QP_EX_WITH_RDMA_WRITE | IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM;
          if (t == IBV_QPT_RC)
            a.send_ops_flags |= IBV_QP_EX_WITH_RDMA_READ | IBV_QP_EX_WITH_ATOMIC_CMP_AND_SWP | IBV_QP_EX_WITH_ATOMIC_FETCH_AND_ADD;
          if (!c->real_vctx || !c->real_vctx->create_qp_ex) return rs_fail("the verbs backend has no extended QPs");
          real = c->real_vctx->create_qp_ex(c->real, &a);
        } else {
          struct ibv_qp_init_attr l;
          memset(&l, 0, sizeof l);
          l.send_cq = a.send_cq, l.recv_cq = a.recv_cq, l.srq = a.srq, l.cap = a.cap;
          l.qp_type = a.qp_type, l.sq_sig_all = a.sq_sig_all;
          real = NEXT(ibv_create_qp, V11)(a.pd, &l);
        }
        if (!real) return rs_errno("cannot create a queue pair");
        v->real = real;
        v->post_send = real->context->ops.post_send;
        v->post_recv = real->context->ops.post_recv;
        if (v->rx) v->rx = NEXT(ibv_qp_to_qp_ex, "IBVERBS_1.6")(real);
        real->qp_context = v;
        break;
      }
      case IBDBG_VERBS_AH: {
        // One host keeps its LIDs and GIDs (softrdma derives them from the
        // address): the recorded attributes, as `ibdbg translate` left them.
        VAh* v = outer<VAh>(o);
        struct ibv_ah_attr a;
        memset(&a, 0, sizeof a);
        const uint64_t* u = e->u;
        a.dlid = (uint16_t)u[IBDBG_VAH_DLID], a.port_num = (uint8_t)u[IBDBG_VAH_PORT];
        a.is_global = (uint8_t)u[IBDBG_VAH_IS_GLOBAL], a.sl = (uint8_t)u[IBDBG_VAH_SL];
        a.src_path_bits = (uint8_t)u[IBDBG_VAH_SRC_PATH_BITS], a.static_rate = (uint8_t)u[IBDBG_VAH_STATIC_RATE];
        a.grh.sgid_index = (uint8_t)u[IBDBG_VAH_SGID_INDEX], a.grh.hop_limit = (uint8_t)u[IBDBG_VAH_HOP_LIMIT];
        a.grh.traffic_class = (uint8_t)u[IBDBG_VAH_TRAFFIC_CLASS], a.grh.flow_label = (uint32_t)u[IBDBG_VAH_FLOW_LABEL];
        memcpy(a.grh.dgid.raw, e->gid, 16);
        v->real = NEXT(ibv_create_ah, V11)(pd_of(v->ah.pd)->real, &a);
        if (!v->real) return rs_errno("cannot create an address handle");
        break;
      }
    }
  }
  return nullptr;
}

// Our QPs under the ids peers know them by (our memory's: the ids the
// application saw, whatever `ibdbg translate` did to the record's paths):
// every GID of the port (a peer names one of them), and the LID.  The value:
// new QPN, new LID, which GID the key named (255: the LID), our MRs' rkeys
// old:new, and the port's new GIDs.
const char* publish(Rebuild& R) {
  char key[128], val[sizeof R.rkeys + 64 + IBDBG_VCTX_MAX_GIDS * 33 + 16 * 40];
  for (VObj* o = g_objs.next; o != &g_objs; o = o->next) {
    if (o->kind != IBDBG_VERBS_QP) continue;
    VQp* v = outer<VQp>(o);
    VCtx* c = ctx_of(v->qx.qp_base.context);
    struct ibv_port_attr pa;
    memset(&pa, 0, sizeof pa);
    NEXT(ibv_query_port, V11)(c->real, 1, (struct _compat_ibv_port_attr*)&pa);
    char gids[IBDBG_VCTX_MAX_GIDS * 33 + 1];
    size_t gl = 0;
    gids[0] = 0;
    for (int g = 0; g < IBDBG_VCTX_MAX_GIDS && g < pa.gid_tbl_len; g++) {
      union ibv_gid ng;
      if (NEXT(ibv_query_gid, V11)(c->real, 1, g, &ng) != 0) break;
      if (gl) gids[gl++] = ',';
      hex_of(ng.raw, 16, gids + gl);
      gl += 32;
    }
    if (!gl) snprintf(gids, sizeof gids, "-");
    uint32_t oldqpn = v->qx.qp_base.qp_num;
    for (uint32_t g = 0; g <= c->ngids; g++) {
      if (g < c->ngids) qp_key(key, sizeof key, true, c->gids[g].raw, 0, oldqpn);
      else if (c->port_known && c->port.lid) qp_key(key, sizeof key, false, nullptr, c->port.lid, oldqpn);
      else continue;
      char notes[16 * 40] = "-";
      size_t nl = 0;
      uint64_t m = v->msgs_posted;
      for (uint64_t k = m > 16 ? m - 16 : 0; k < m; k++)
        nl += (size_t)snprintf(notes + nl, sizeof notes - nl, "%s%u/%u/%u", nl ? "," : "", v->last[k % 16].len,
                               v->last[k % 16].imm, v->last[k % 16].opcode);
      snprintf(val, sizeof val, "%u %u %u %s %s %llu %s", v->real->qp_num, pa.lid, g < c->ngids ? g : 255,
               R.rkeys[0] ? R.rkeys : "-", gids, (unsigned long long)m, notes);
      if (getenv("IBDBG_VERBS_TRACE")) say("put ", key, val);
      if (R.env->ns_put(key, val) != 0) return rs_fail("the agent went away (name service)");
    }
  }
  return nullptr;
}

// A peer as it is now: found under the ids we knew it by.
struct Peer {
  unsigned qpn, lid, idx;
  char rkeys[8192];
  char gids[IBDBG_VCTX_MAX_GIDS * 33 + 1];
  unsigned long long msgs;
  char notes[16 * 40];
};
const char* find_peer(Rebuild& R, bool global, const uint8_t* gid, uint32_t lid, uint32_t qpn, Peer* p) {
  char key[128], val[sizeof p->rkeys + 64 + sizeof p->gids + sizeof p->notes];
  qp_key(key, sizeof key, global, gid, lid, qpn);
  if (getenv("IBDBG_VERBS_TRACE")) say("get ", key);
  if (R.env->ns_get(key, val, sizeof val) != 0) return rs_fail("the peer of a QP did not come back (", key, ")");
  if (sscanf(val, "%u %u %u %8191s %264s %llu %639s", &p->qpn, &p->lid, &p->idx, p->rkeys, p->gids, &p->msgs, p->notes) != 7)
    return rs_fail("a peer's name-service entry is damaged");
  return nullptr;
}
// Its new GID number i (the one the key named, or the record's sgid index).
bool peer_gid(const Peer& p, unsigned i, uint8_t* out) {
  const char* g = p.gids;
  for (unsigned k = 0; k < i && g; k++) {
    g = strchr(g, ',');
    if (g) g++;
  }
  return g && unhex(g, out, 16);
}

// Messages the peer sent (and saw complete) whose receive completions this
// process never took: they came to its backend after its last drain (a
// capture without a job-wide drain barrier).  Their data is in our memory
// (the backend placed it): the completions are made again from the peer's
// notes, in order, after what the capture buffered.
const char* remake_lost_recvs(VQp* v, const Peer& p) {
  uint64_t got = v->msgs_recvd;
  if (p.msgs <= got) return nullptr;
  uint64_t lost = p.msgs - got;
  if (lost > 16) return rs_fail("more messages to a QP were lost at the capture than the replay can make again");
  VCq* cq = v->recv_cq;
  Ring* r = v->srq ? &v->srq->ring : &v->ring;
  // The notes of messages got+1 .. p.msgs: the last `lost` of the peer's list.
  const char* notes[16];
  int nn = 0;
  for (const char* s = p.notes; s && *s && *s != '-' && nn < 16; s = strchr(s, ','), s = s ? s + 1 : s) notes[nn++] = s;
  if ((uint64_t)nn < lost || !cq) return rs_fail("a peer's notes of its last messages are missing");
  for (uint64_t k = 0; k < lost; k++) {
    unsigned len = 0, imm = 0, op = 0;
    sscanf(notes[nn - lost + k], "%u/%u/%u", &len, &imm, &op);
    lock(&r->lk);
    ring_skip_holes(r);
    if (!r->n) {
      unlock(&r->lk);
      return rs_fail("a message came to a QP that had no receive posted");
    }
    RecvEnt* re = ring_at(r, 0);
    struct ibv_wc wc;
    memset(&wc, 0, sizeof wc);
    wc.wr_id = re->wr_id;
    wc.status = IBV_WC_SUCCESS;
    wc.opcode = op == IBV_WR_RDMA_WRITE_WITH_IMM ? IBV_WC_RECV_RDMA_WITH_IMM : IBV_WC_RECV;
    wc.byte_len = op == IBV_WR_RDMA_WRITE_WITH_IMM ? 0 : len;
    wc.imm_data = imm;
    wc.wc_flags = op == IBV_WR_SEND ? 0 : IBV_WC_WITH_IMM;
    wc.qp_num = v->qx.qp_base.qp_num;
    re->live = 0;
    r->live--;
    ring_skip_holes(r);
    unlock(&r->lk);
    lock(&cq->lk);
    if (cq->n == cq->cap) {
      unlock(&cq->lk);
      return rs_fail("a CQ's buffer is full");
    }
    cq->buf[(cq->head + cq->n) % cq->cap] = wc;
    __atomic_store_n(&cq->n, cq->n + 1, __ATOMIC_RELEASE);
    unlock(&cq->lk);
    if (v->srq) __atomic_sub_fetch(&v->srq->recvs, 1, __ATOMIC_RELAXED);
    else __atomic_sub_fetch(&v->recvs, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&v->msgs_recvd, 1, __ATOMIC_RELAXED);
  }
  if (getenv("IBDBG_VERBS_TRACE")) say("made again the completions of messages lost at the capture");
  return nullptr;
}

// Each connected QP's peer, as it is now; then RESET -> INIT -> RTR -> RTS
// with the recorded attributes and PSNs (both sides were quiesced with
// nothing in flight, so fresh QPs start where the recorded ones started).
const char* connect_qps(Rebuild& R) {
  Peer* peer = (Peer*)calloc(1, sizeof(Peer));
  if (!peer) return rs_fail("out of memory");
  for (uint32_t i = 0; i < R.n; i++) {
    const ibdbg_verbs_obj* e = &R.objs[i];
    if (e->kind != IBDBG_VERBS_QP) continue;
    VQp* v = outer<VQp>(vobj_of(e));
    const uint64_t* u = e->u;
    uint64_t t = u[IBDBG_VQP_TYPE], st = u[IBDBG_VQP_STATE];
    if (st == IBV_QPS_RESET) continue;
    if (st != IBV_QPS_INIT && st != IBV_QPS_RTR && st != IBV_QPS_RTS)
      return rs_fail("a QP was captured in a state the replay does not rebuild (SQD, SQE or error)");
    // UD: the new QPN of every destination its sends named.
    for (uint32_t k = 0; v->ud && k < kUdDests; k++) {
      UdDest* d = &v->ud[k];
      if (d->used != 1 || !is_ours(&d->ah->o)) continue;
      const struct ibv_ah_attr& aa = d->ah->attr;
      if (const char* why = find_peer(R, aa.is_global, aa.grh.dgid.raw, aa.dlid, d->old_qpn, peer)) return why;
      d->new_qpn = peer->qpn;
    }
    struct ibv_qp_attr a;
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_INIT;
    a.pkey_index = (uint16_t)u[IBDBG_VQP_PKEY_INDEX];
    a.port_num = (uint8_t)(u[IBDBG_VQP_PORT] ? u[IBDBG_VQP_PORT] : 1);
    int mask = IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT;
    if (t == IBV_QPT_UD) a.qkey = (uint32_t)u[IBDBG_VQP_QKEY], mask |= IBV_QP_QKEY;
    else a.qp_access_flags = (unsigned)u[IBDBG_VQP_ACCESS_FLAGS], mask |= IBV_QP_ACCESS_FLAGS;
    if (NEXT(ibv_modify_qp, V11)(v->real, &a, mask) != 0) return rs_errno("cannot move a QP to INIT");
    if (st == IBV_QPS_INIT) continue;
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_RTR;
    mask = IBV_QP_STATE;
    if (t != IBV_QPT_UD) {
      const struct ibv_ah_attr& old = v->attr.ah_attr;
      if (const char* why = find_peer(R, old.is_global, old.grh.dgid.raw, old.dlid, v->attr.dest_qp_num, peer))
        return why;
      bool global = u[IBDBG_VQP_IS_GLOBAL] != 0;  // the record's path (translate may have made it global)
      a.ah_attr.is_global = global;
      a.ah_attr.dlid = (uint16_t)peer->lid;
      a.ah_attr.sl = (uint8_t)u[IBDBG_VQP_SL];
      a.ah_attr.src_path_bits = (uint8_t)u[IBDBG_VQP_SRC_PATH_BITS];
      a.ah_attr.static_rate = (uint8_t)u[IBDBG_VQP_STATIC_RATE];
      a.ah_attr.port_num = (uint8_t)(u[IBDBG_VQP_PORT] ? u[IBDBG_VQP_PORT] : 1);
      a.ah_attr.grh.sgid_index = (uint8_t)u[IBDBG_VQP_SGID_INDEX];
      a.ah_attr.grh.hop_limit = (uint8_t)u[IBDBG_VQP_HOP_LIMIT];
      a.ah_attr.grh.traffic_class = (uint8_t)u[IBDBG_VQP_TRAFFIC_CLASS];
      a.ah_attr.grh.flow_label = (uint32_t)u[IBDBG_VQP_FLOW_LABEL];
      if (global && !peer_gid(*peer, peer->idx != 255 ? peer->idx : a.ah_attr.grh.sgid_index, a.ah_attr.grh.dgid.raw))
        return rs_fail("a peer's GID is missing");
      a.path_mtu = (enum ibv_mtu)u[IBDBG_VQP_PATH_MTU];
      a.dest_qp_num = peer->qpn;
      a.rq_psn = (uint32_t)u[IBDBG_VQP_RQ_PSN];
      mask |= IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN;
      if (t == IBV_QPT_RC) {
        a.max_dest_rd_atomic = (uint8_t)u[IBDBG_VQP_MAX_DEST_RD_ATOMIC];
        a.min_rnr_timer = (uint8_t)u[IBDBG_VQP_MIN_RNR_TIMER];
        mask |= IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER;
      }
      v->dest_new = peer->qpn;
      if (t == IBV_QPT_RC)
        if (const char* why = remake_lost_recvs(v, *peer)) return why;
      // The peer's rkeys, old -> new.
      uint32_t nrk = 0;
      for (const char* p = peer->rkeys; *p; p++) nrk += *p == ',';
      KeyMap* km = (KeyMap*)calloc(1, sizeof *km);
      if (!km) return rs_fail("out of memory");
      keymap_init(km, nrk + 1);
      for (const char* p = peer->rkeys; *p && *p != '-';) {
        unsigned o = 0, nw = 0;
        if (sscanf(p, "%u:%u", &o, &nw) == 2) keymap_put(km, o, nw);
        const char* c = strchr(p, ',');
        if (!c) break;
        p = c + 1;
      }
      v->peer_rkeys = km;
    }
    if (NEXT(ibv_modify_qp, V11)(v->real, &a, mask) != 0) return rs_errno("cannot move a QP to RTR");
    if (st == IBV_QPS_RTR) continue;
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_RTS;
    a.sq_psn = (uint32_t)u[IBDBG_VQP_SQ_PSN];
    mask = IBV_QP_STATE | IBV_QP_SQ_PSN;
    if (t == IBV_QPT_RC) {
      a.timeout = (uint8_t)u[IBDBG_VQP_TIMEOUT];
      a.retry_cnt = (uint8_t)u[IBDBG_VQP_RETRY_CNT];
      a.rnr_retry = (uint8_t)u[IBDBG_VQP_RNR_RETRY];
      a.max_rd_atomic = (uint8_t)u[IBDBG_VQP_MAX_RD_ATOMIC];
      mask |= IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_MAX_QP_RD_ATOMIC;
    }
    if (NEXT(ibv_modify_qp, V11)(v->real, &a, mask) != 0) return rs_errno("cannot move a QP to RTS");
  }
  free(peer);
  return nullptr;
}

// The receives that were posted and not completed, again, in their order.
const char* repost(Ring* r, int (*post)(void*, struct ibv_recv_wr*, struct ibv_recv_wr**), void* real) {
  for (uint32_t i = 0; i < r->n; i++) {
    RecvEnt* e = ring_at(r, i);
    if (!e->live) continue;
    struct ibv_sge sg[IBDBG_VERBS_RECV_MAX_SGE];
    xlate_sges(sg, e->sge, (int)e->num_sge);
    struct ibv_recv_wr wr, *bad = nullptr;
    memset(&wr, 0, sizeof wr);
    wr.wr_id = e->wr_id;
    wr.sg_list = sg;
    wr.num_sge = (int)e->num_sge;
    if (post(real, &wr, &bad) != 0) return rs_fail("cannot post a recorded receive again");
  }
  return nullptr;
}

const char* restart(const ibdbg_verbs_replay_env* env) {
  Backend in_backend;
  __atomic_store_n(&g_dead, 1, __ATOMIC_SEQ_CST);
  Rebuild* R = (Rebuild*)calloc(1, sizeof(Rebuild));
  if (!R) return rs_fail("out of memory");
  R->env = env;
  R->h = (const ibdbg_verbs_hdr*)env->record;
  if (env->record_len < sizeof(ibdbg_verbs_hdr) || R->h->magic != IBDBG_VERBS_MAGIC ||
      env->record_len != sizeof(ibdbg_verbs_hdr) + (size_t)R->h->nobjs * sizeof(ibdbg_verbs_obj))
    return rs_fail("the image's verbs record is missing or of another format");
  R->objs = (const ibdbg_verbs_obj*)(R->h + 1);
  R->n = R->h->nobjs;
  char devname[128];
  if (const char* why = open_lower(*R, devname, sizeof devname)) return why;
  // The dead backend's threads and descriptors are no one's now; the fresh
  // one's are tracked as at the first run.
  memset(g_backend_fd, 0, sizeof g_backend_fd);
  g_nbackend_tid = 0;
  const char* why;
  {
    Track track;
    why = rebuild_objects(*R, devname);
  }
  if (why) return why;
  // Completions name QPs by their new numbers from now on.
  __atomic_store_n(&g_qpn_cap, 0, __ATOMIC_RELEASE);
  g_qpn = nullptr, g_qpn_used = 0;
  for (VObj* o = g_objs.next; o != &g_objs; o = o->next)
    if (o->kind == IBDBG_VERBS_QP) qpn_put(outer<VQp>(o)->real->qp_num, outer<VQp>(o));
  if ((why = publish(*R)) || (why = connect_qps(*R))) return why;
  for (VObj* o = g_objs.next; o != &g_objs; o = o->next) {
    if (o->kind == IBDBG_VERBS_QP && !outer<VQp>(o)->srq) {
      VQp* q = outer<VQp>(o);
      why = repost(&q->ring, (int (*)(void*, struct ibv_recv_wr*, struct ibv_recv_wr**))q->post_recv, q->real);
    } else if (o->kind == IBDBG_VERBS_SRQ) {
      VSrq* s = outer<VSrq>(o);
      why = repost(&s->ring, (int (*)(void*, struct ibv_recv_wr*, struct ibv_recv_wr**))s->real->context->ops.post_srq_recv,
                   s->real);
    }
    if (why) return why;
  }
  free(R);
  __atomic_store_n(&g_xlate, 1, __ATOMIC_SEQ_CST);
  backend_back();
  return nullptr;
}

}  // namespace

namespace {
int is_backend_thread(int tid) {
  for (uint32_t i = 0; i < g_nbackend_tid && i < IBDBG_VERBS_MAX_TIDS; i++)
    if (g_backend_tid[i] == tid) return 1;
  return 0;
}
}  // namespace

EXPORT const struct ibdbg_verbs_hooks ibdbg_verbs_hooks = {IBDBG_VERBS_HOOKS_VERSION, quiesce, describe, resume,
                                                          is_backend_thread, presuspend, drain, restart};

namespace {
__attribute__((constructor)) void verbs_init() {
  const char* d = getenv("IBDBG_VERBS_DEBUG");
  g_debug = d && *d == '1';
}
__attribute__((destructor)) void verbs_fini() {
  if (g_debug) print_counters();
}
}  // namespace
