// softrdma: PD, MR, AH, CQ, SRQ and QP objects, the QP state machine, and the
// posting paths (classic and ibv_wr_*), polling (classic and ibv_start_poll).
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <new>

#include "internal.h"

namespace softrdma {

// ---------------------------------------------------------------- keys ----
namespace {
constexpr uint32_t kChunk = 1024;
constexpr uint32_t kChunks = kMaxMr / kChunk;
struct KeyChunk {
  std::atomic<Mr*> mr[kChunk];
  uint8_t gen[kChunk];
};
std::atomic<KeyChunk*> g_keys[kChunks];
std::mutex g_key_mu;
uint32_t g_key_next = 1;
uint32_t* g_key_free = nullptr;
uint32_t g_key_nfree = 0, g_key_capfree = 0;

KeyChunk* ChunkFor(uint32_t idx, bool create) {
  KeyChunk* c = g_keys[idx / kChunk].load(std::memory_order_acquire);
  if (c || !create) return c;
  c = static_cast<KeyChunk*>(calloc(1, sizeof(KeyChunk)));
  if (c) g_keys[idx / kChunk].store(c, std::memory_order_release);
  return c;
}

// Returns the key or 0 on exhaustion.
uint32_t KeyAlloc(Mr* m) {
  std::lock_guard<std::mutex> g(g_key_mu);
  uint32_t idx;
  if (g_key_nfree) {
    idx = g_key_free[--g_key_nfree];
  } else {
    if (g_key_next >= kMaxMr) return 0;
    idx = g_key_next++;
  }
  KeyChunk* c = ChunkFor(idx, true);
  if (!c) return 0;
  uint8_t gen = ++c->gen[idx % kChunk];
  c->mr[idx % kChunk].store(m, std::memory_order_release);
  return (idx << 8) | gen;
}

void KeyFree(uint32_t key) {
  std::lock_guard<std::mutex> g(g_key_mu);
  uint32_t idx = key >> 8;
  KeyChunk* c = ChunkFor(idx, false);
  if (!c) return;
  c->mr[idx % kChunk].store(nullptr, std::memory_order_release);
  if (g_key_nfree == g_key_capfree) {
    uint32_t n = g_key_capfree ? g_key_capfree * 2 : 256;
    uint32_t* p = static_cast<uint32_t*>(realloc(g_key_free, n * sizeof(uint32_t)));
    if (!p) return;  // the index is simply not reused
    g_key_free = p;
    g_key_capfree = n;
  }
  g_key_free[g_key_nfree++] = idx;
}
}  // namespace

Mr* LookupKey(uint32_t key) {
  uint32_t idx = key >> 8;
  if (idx == 0 || idx >= kMaxMr) return nullptr;
  KeyChunk* c = ChunkFor(idx, false);
  if (!c) return nullptr;
  Mr* m = c->mr[idx % kChunk].load(std::memory_order_acquire);
  if (!m || m->mr.lkey != key || !m->valid.load(std::memory_order_acquire)) return nullptr;
  return m;
}

// ---------------------------------------------------------------- CQ ------
bool CqPush(Cq* cq, const struct ibv_wc& wc, bool solicited) {
  int wr = -1;
  {
    std::lock_guard<std::mutex> g(cq->mu);
    if (cq->count == cq->cap) {
      if (!cq->overrun) {
        cq->overrun = true;
        PostAsync(cq->ctx, IBV_EVENT_CQ_ERR, &cq->ex);
      }
      return false;
    }
    cq->ring[(cq->head + cq->count) % cq->cap] = wc;
    cq->count++;
    if (cq->armed == 1 || (cq->armed == 2 && (solicited || wc.status != IBV_WC_SUCCESS))) {
      cq->armed = 0;
      if (cq->ex.channel) wr = reinterpret_cast<Channel*>(cq->ex.channel)->wr;
    }
  }
  if (wr >= 0) {
    void* p = &cq->ex;
    ssize_t r = write(wr, &p, sizeof p);
    (void)r;
  }
  return true;
}

namespace {

Cq* ToCq(struct ibv_cq* c) { return reinterpret_cast<Cq*>(c); }
Cq* ToCq(struct ibv_cq_ex* c) { return reinterpret_cast<Cq*>(c); }
Qp* ToQp(struct ibv_qp* q) { return reinterpret_cast<Qp*>(q); }
Qp* ToQp(struct ibv_qp_ex* q) { return reinterpret_cast<Qp*>(q); }
Srq* ToSrq(struct ibv_srq* s) { return reinterpret_cast<Srq*>(s); }

int PollCq(struct ibv_cq* c, int n, struct ibv_wc* wc) {
  Cq* cq = ToCq(c);
  int k = 0;
  for (int round = 0;; round++) {
    {
      std::lock_guard<std::mutex> g(cq->mu);
      if (cq->overrun) return -1;
      while (k < n && cq->count) {
        wc[k++] = cq->ring[cq->head];
        cq->head = (cq->head + 1) % cq->cap;
        cq->count--;
      }
    }
    if (k || round) return k;
    // An empty poll in a busy loop: do the device's work here (no wait for
    // the progress thread to be scheduled) and look again at once, or let
    // the thread doing it have the CPU.
    if (!EngineProgressFromPoll()) {
      sched_yield();
      return 0;
    }
  }
}

int ReqNotify(struct ibv_cq* c, int solicited_only) {
  Cq* cq = ToCq(c);
  std::lock_guard<std::mutex> g(cq->mu);
  if (!cq->ex.channel) return EINVAL;
  if (solicited_only) {
    if (cq->armed == 0) cq->armed = 2;
  } else {
    cq->armed = 1;
  }
  return 0;
}

// ibv_cq_ex polling: start_poll locks the CQ and shows the oldest entry;
// next_poll consumes it and shows the next; end_poll consumes and unlocks.
const struct ibv_wc& Cur(struct ibv_cq_ex* c) {
  Cq* cq = ToCq(c);
  return cq->ring[cq->head];
}
void ExLoad(Cq* cq) {
  const struct ibv_wc& w = cq->ring[cq->head];
  cq->ex.wr_id = w.wr_id;
  cq->ex.status = w.status;
  cq->ex_has_cur = true;
}
void ExConsume(Cq* cq) {
  if (!cq->ex_has_cur) return;
  cq->head = (cq->head + 1) % cq->cap;
  cq->count--;
  cq->ex_has_cur = false;
}
int ExStart(struct ibv_cq_ex* c, struct ibv_poll_cq_attr* attr) {
  Cq* cq = ToCq(c);
  if (attr && attr->comp_mask) return EINVAL;
  cq->mu.lock();
  if (cq->count == 0 || cq->overrun) {
    cq->mu.unlock();
    return ENOENT;
  }
  ExLoad(cq);
  return 0;
}
int ExNext(struct ibv_cq_ex* c) {
  Cq* cq = ToCq(c);
  ExConsume(cq);
  if (cq->count == 0) return ENOENT;
  ExLoad(cq);
  return 0;
}
void ExEnd(struct ibv_cq_ex* c) {
  Cq* cq = ToCq(c);
  ExConsume(cq);
  cq->mu.unlock();
}
enum ibv_wc_opcode ExOpcode(struct ibv_cq_ex* c) { return Cur(c).opcode; }
uint32_t ExVendorErr(struct ibv_cq_ex* c) { return Cur(c).vendor_err; }
uint32_t ExByteLen(struct ibv_cq_ex* c) { return Cur(c).byte_len; }
__be32 ExImm(struct ibv_cq_ex* c) { return Cur(c).imm_data; }
uint32_t ExQpNum(struct ibv_cq_ex* c) { return Cur(c).qp_num; }
uint32_t ExSrcQp(struct ibv_cq_ex* c) { return Cur(c).src_qp; }
unsigned int ExWcFlags(struct ibv_cq_ex* c) { return Cur(c).wc_flags; }
uint32_t ExSlid(struct ibv_cq_ex* c) { return Cur(c).slid; }
uint8_t ExSl(struct ibv_cq_ex* c) { return Cur(c).sl; }
uint8_t ExDlidBits(struct ibv_cq_ex* c) { return Cur(c).dlid_path_bits; }

constexpr uint64_t kSupportedWcFlags = IBV_WC_EX_WITH_BYTE_LEN | IBV_WC_EX_WITH_IMM | IBV_WC_EX_WITH_QP_NUM |
                                       IBV_WC_EX_WITH_SRC_QP | IBV_WC_EX_WITH_SLID | IBV_WC_EX_WITH_SL |
                                       IBV_WC_EX_WITH_DLID_PATH_BITS;

Cq* NewCq(struct ibv_context* c, int cqe, void* cq_context, struct ibv_comp_channel* ch, int vec,
          uint64_t wc_flags) {
  if (cqe < 1 || uint32_t(cqe) > kMaxCqe || vec < 0 || vec >= c->num_comp_vectors ||
      (wc_flags & ~kSupportedWcFlags)) {
    errno = EINVAL;
    return nullptr;
  }
  Cq* cq = new (std::nothrow) Cq;
  if (!cq) {
    errno = ENOMEM;
    return nullptr;
  }
  memset(&cq->ex, 0, sizeof cq->ex);
  cq->cap = uint32_t(cqe);
  cq->ring = static_cast<struct ibv_wc*>(calloc(cq->cap, sizeof(struct ibv_wc)));
  if (!cq->ring) {
    delete cq;
    errno = ENOMEM;
    return nullptr;
  }
  cq->ctx = ToCtx(c);
  cq->wc_flags_req = wc_flags;
  cq->ex.context = c;
  cq->ex.channel = ch;
  cq->ex.cq_context = cq_context;
  cq->ex.cqe = cqe;
  pthread_mutex_init(&cq->ex.mutex, nullptr);
  pthread_cond_init(&cq->ex.cond, nullptr);
  cq->ex.start_poll = ExStart;
  cq->ex.next_poll = ExNext;
  cq->ex.end_poll = ExEnd;
  cq->ex.read_opcode = ExOpcode;
  cq->ex.read_vendor_err = ExVendorErr;
  cq->ex.read_byte_len = ExByteLen;
  cq->ex.read_imm_data = ExImm;
  cq->ex.read_qp_num = ExQpNum;
  cq->ex.read_src_qp = ExSrcQp;
  cq->ex.read_wc_flags = ExWcFlags;
  cq->ex.read_slid = ExSlid;
  cq->ex.read_sl = ExSl;
  cq->ex.read_dlid_path_bits = ExDlidBits;
  if (ch) __atomic_add_fetch(&ch->refcnt, 1, __ATOMIC_ACQ_REL);
  return cq;
}

struct ibv_cq_ex* CreateCqEx(struct ibv_context* c, struct ibv_cq_init_attr_ex* a) {
  if (a->comp_mask & ~uint32_t(IBV_CQ_INIT_ATTR_MASK_FLAGS)) {
    errno = EOPNOTSUPP;
    return nullptr;
  }
  if ((a->comp_mask & IBV_CQ_INIT_ATTR_MASK_FLAGS) && (a->flags & ~uint32_t(IBV_CREATE_CQ_ATTR_SINGLE_THREADED))) {
    errno = EOPNOTSUPP;
    return nullptr;
  }
  Cq* cq = NewCq(c, int(a->cqe), a->cq_context, a->channel, int(a->comp_vector), a->wc_flags);
  return cq ? &cq->ex : nullptr;
}

// ---------------------------------------------------------------- SRQ -----
RecvWqe* SrqAt(Srq* s, uint32_t i) { return reinterpret_cast<RecvWqe*>(s->slots + size_t(i % s->cap) * s->slot_size); }

int PostSrqRecv(struct ibv_srq* is, struct ibv_recv_wr* wr, struct ibv_recv_wr** bad);

// ---------------------------------------------------------------- QP ------
bool ValidLocal(Qp* qp, const struct ibv_sge& s, int need) {
  if (!s.length) return true;
  Mr* m = LookupKey(s.lkey);
  if (!m || m->mr.pd != qp->ex.qp_base.pd) return false;
  if (need && !(m->access & need)) return false;
  return MrPtr(m, s.addr, s.length) != nullptr;
}

}  // namespace

SendWqe* SqAt(Qp* qp, uint32_t idx) { return reinterpret_cast<SendWqe*>(qp->sq + size_t(idx % qp->sq_cap) * qp->sq_slot); }
RecvWqe* RqAt(Qp* qp, uint32_t idx) { return reinterpret_cast<RecvWqe*>(qp->rq + size_t(idx % qp->rq_cap) * qp->rq_slot); }

static enum ibv_wc_opcode SendWcOpcode(uint32_t op) {
  switch (op) {
    case IBV_WR_RDMA_WRITE:
    case IBV_WR_RDMA_WRITE_WITH_IMM: return IBV_WC_RDMA_WRITE;
    case IBV_WR_RDMA_READ: return IBV_WC_RDMA_READ;
    case IBV_WR_ATOMIC_CMP_AND_SWP: return IBV_WC_COMP_SWAP;
    case IBV_WR_ATOMIC_FETCH_AND_ADD: return IBV_WC_FETCH_ADD;
    default: return IBV_WC_SEND;
  }
}

void CompleteSendLocked(Qp* qp, SendWqe* w, enum ibv_wc_status st) {
  if (st != IBV_WC_SUCCESS || qp->sq_sig_all || (w->send_flags & IBV_SEND_SIGNALED)) {
    struct ibv_wc wc;
    memset(&wc, 0, sizeof wc);
    wc.wr_id = w->wr_id;
    wc.status = st;
    wc.opcode = SendWcOpcode(w->opcode);
    wc.qp_num = qp->ex.qp_base.qp_num;
    if (st == IBV_WC_SUCCESS && (w->opcode == IBV_WR_RDMA_READ || w->opcode == IBV_WR_ATOMIC_CMP_AND_SWP ||
                                 w->opcode == IBV_WR_ATOMIC_FETCH_AND_ADD))
      wc.byte_len = uint32_t(w->length);
    CqPush(qp->scq, wc, false);
  }
  qp->sq_done++;
}

bool HasRecv(Qp* qp) {
  if (qp->srq) {
    std::lock_guard<std::mutex> g(qp->srq->mu);
    return qp->srq->count != 0;
  }
  return qp->rq_count != 0;
}

bool TakeRecv(Qp* qp, RecvWqe* out, uint32_t max_sge_cap) {
  if (qp->srq) {
    Srq* s = qp->srq;
    bool limit_event = false;
    {
      std::lock_guard<std::mutex> g(s->mu);
      if (!s->count) return false;
      RecvWqe* w = SrqAt(s, s->head);
      uint32_t n = w->num_sge < max_sge_cap ? w->num_sge : max_sge_cap;
      memcpy(out, w, sizeof(RecvWqe) + n * sizeof(struct ibv_sge));
      s->head = (s->head + 1) % s->cap;
      s->count--;
      if (s->limit && s->count < s->limit) {
        s->limit = 0;  // one event, then disarmed
        limit_event = true;
      }
    }
    if (limit_event) PostAsync(qp->ctx, IBV_EVENT_SRQ_LIMIT_REACHED, &s->srq);
    return true;
  }
  if (!qp->rq_count) return false;
  RecvWqe* w = RqAt(qp, qp->rq_head);
  uint32_t n = w->num_sge < max_sge_cap ? w->num_sge : max_sge_cap;
  memcpy(out, w, sizeof(RecvWqe) + n * sizeof(struct ibv_sge));
  qp->rq_head = (qp->rq_head + 1) % qp->rq_cap;
  qp->rq_count--;
  return true;
}

void QpFlushLocked(Qp* qp) {
  while (qp->sq_done != qp->sq_head) {
    SendWqe* w = SqAt(qp, qp->sq_done);
    CompleteSendLocked(qp, w, IBV_WC_WR_FLUSH_ERR);
  }
  qp->sq_tx = qp->sq_head;
  qp->rd_outstanding = 0;
  if (!qp->srq) {
    while (qp->rq_count) {
      RecvWqe* w = RqAt(qp, qp->rq_head);
      struct ibv_wc wc;
      memset(&wc, 0, sizeof wc);
      wc.wr_id = w->wr_id;
      wc.status = IBV_WC_WR_FLUSH_ERR;
      wc.opcode = IBV_WC_RECV;
      wc.qp_num = qp->ex.qp_base.qp_num;
      CqPush(qp->rcq, wc, false);
      qp->rq_head = (qp->rq_head + 1) % qp->rq_cap;
      qp->rq_count--;
    }
  }
}

void QpToErrorLocked(Qp* qp) {
  if (qp->st == QpState::kErr) {
    QpFlushLocked(qp);
    return;
  }
  bool had_srq = qp->srq != nullptr;
  qp->st = QpState::kErr;
  qp->ex.qp_base.state = IBV_QPS_ERR;
  EngineQpStateChanged(qp);
  QpFlushLocked(qp);
  if (had_srq) PostAsync(qp->ctx, IBV_EVENT_QP_LAST_WQE_REACHED, &qp->ex.qp_base);
}

namespace {

// Fills a send WQE from a work request; returns errno for immediate errors.
int BuildWqe(Qp* qp, SendWqe* w, uint64_t wr_id, uint32_t opcode, uint32_t flags) {
  memset(w, 0, sizeof *w);
  w->wr_id = wr_id;
  w->opcode = opcode;
  w->send_flags = flags;
  uint32_t t = qp->ex.qp_base.qp_type;
  switch (opcode) {
    case IBV_WR_SEND:
    case IBV_WR_SEND_WITH_IMM:
      break;
    case IBV_WR_RDMA_WRITE:
    case IBV_WR_RDMA_WRITE_WITH_IMM:
      if (t == IBV_QPT_UD) return EINVAL;
      break;
    case IBV_WR_RDMA_READ:
    case IBV_WR_ATOMIC_CMP_AND_SWP:
    case IBV_WR_ATOMIC_FETCH_AND_ADD:
      if (t != IBV_QPT_RC) return EINVAL;
      break;
    default:
      return EINVAL;
  }
  if ((flags & IBV_SEND_INLINE) && (opcode == IBV_WR_RDMA_READ || opcode == IBV_WR_ATOMIC_CMP_AND_SWP ||
                                    opcode == IBV_WR_ATOMIC_FETCH_AND_ADD))
    return EINVAL;
  return 0;
}

// Post-time checks that turn into error completions (not immediate errors).
void CheckWqe(Qp* qp, SendWqe* w) {
  if (w->status) return;
  uint64_t total = 0;
  if (w->inline_len) {
    total = w->inline_len;
  } else {
    int need = 0;
    if (w->opcode == IBV_WR_RDMA_READ || w->opcode == IBV_WR_ATOMIC_CMP_AND_SWP ||
        w->opcode == IBV_WR_ATOMIC_FETCH_AND_ADD)
      need = IBV_ACCESS_LOCAL_WRITE;
    for (uint32_t i = 0; i < w->num_sge; i++) {
      total += w->sge[i].length;
      if (!ValidLocal(qp, w->sge[i], need)) {
        w->status = IBV_WC_LOC_PROT_ERR;
        return;
      }
    }
  }
  w->length = total;
  if (w->opcode == IBV_WR_ATOMIC_CMP_AND_SWP || w->opcode == IBV_WR_ATOMIC_FETCH_AND_ADD) {
    if (total != 8 || w->num_sge != 1) w->status = IBV_WC_LOC_LEN_ERR;
    return;
  }
  // A UD message over the MTU is not an error (see UdTransmit).
  if (qp->ex.qp_base.qp_type != IBV_QPT_UD && total > kMaxMsg) w->status = IBV_WC_LOC_LEN_ERR;
}

void UdTransmit(Qp* qp, SendWqe* w) {
  CheckWqe(qp, w);
  if (w->status) {
    CompleteSendLocked(qp, w, static_cast<enum ibv_wc_status>(w->status));
    return;
  }
  // IBA C10-93.1.1: a UD message longer than the port's MTU emits no packet and
  // "the CI shall not generate an error due to this condition" (rxe does the same).
  if (w->length > kMtu) {
    CompleteSendLocked(qp, w, IBV_WC_SUCCESS);
    return;
  }
  char buf[kMtu];
  const void* data = buf;
  uint32_t len = uint32_t(w->length);
  if (w->inline_len) {
    data = &w->sge[w->num_sge];
  } else {
    uint32_t off = 0;
    for (uint32_t i = 0; i < w->num_sge; i++) {
      if (!w->sge[i].length) continue;
      Mr* m = LookupKey(w->sge[i].lkey);
      memcpy(buf + off, MrPtr(m, w->sge[i].addr, w->sge[i].length), w->sge[i].length);
      off += w->sge[i].length;
    }
  }
  EngineUdSend(qp, w, data, len);
  CompleteSendLocked(qp, w, IBV_WC_SUCCESS);
}

void SetUdDest(Qp* qp, SendWqe* w, struct ibv_ah* ah, uint32_t qpn, uint32_t qkey) {
  Ah* a = reinterpret_cast<Ah*>(ah);
  w->ud_ip = a->ip;
  w->ud_qpn = qpn;
  w->ud_qkey = (qkey & 0x80000000u) ? qp->attr.qkey : qkey;
  w->ud_grh = a->attr.is_global;
  w->ud_sgid_index = a->attr.grh.sgid_index;
  w->ud_dgid = a->attr.grh.dgid;
}

// Appends one WQE: RC/UC go to the ring, UD is sent at once.
int PostOne(Qp* qp, struct ibv_send_wr* wr) {
  if (qp->sq_head - qp->sq_done >= qp->sq_cap) return ENOMEM;
  if (wr->num_sge < 0 || uint32_t(wr->num_sge) > qp->cap.max_send_sge) return EINVAL;
  SendWqe* w = SqAt(qp, qp->sq_head);
  int r = BuildWqe(qp, w, wr->wr_id, wr->opcode, wr->send_flags);
  if (r) return r;
  if (wr->opcode == IBV_WR_SEND_WITH_IMM || wr->opcode == IBV_WR_RDMA_WRITE_WITH_IMM) w->imm = wr->imm_data;
  if (wr->opcode == IBV_WR_RDMA_WRITE || wr->opcode == IBV_WR_RDMA_WRITE_WITH_IMM || wr->opcode == IBV_WR_RDMA_READ) {
    w->raddr = wr->wr.rdma.remote_addr;
    w->rkey = wr->wr.rdma.rkey;
  } else if (wr->opcode == IBV_WR_ATOMIC_CMP_AND_SWP || wr->opcode == IBV_WR_ATOMIC_FETCH_AND_ADD) {
    w->raddr = wr->wr.atomic.remote_addr;
    w->rkey = wr->wr.atomic.rkey;
    w->cmp = wr->wr.atomic.compare_add;
    w->swap = wr->opcode == IBV_WR_ATOMIC_CMP_AND_SWP ? wr->wr.atomic.swap : wr->wr.atomic.compare_add;
  }
  if (qp->ex.qp_base.qp_type == IBV_QPT_UD) {
    if (!wr->wr.ud.ah) return EINVAL;
    SetUdDest(qp, w, wr->wr.ud.ah, wr->wr.ud.remote_qpn, wr->wr.ud.remote_qkey);
  }
  if (wr->send_flags & IBV_SEND_INLINE) {
    uint64_t total = 0;
    for (int i = 0; i < wr->num_sge; i++) total += wr->sg_list[i].length;
    if (total > qp->cap.max_inline_data) return EINVAL;
    char* dst = reinterpret_cast<char*>(&w->sge[0]);  // inline bytes right after (num_sge = 0)
    w->num_sge = 0;
    uint64_t off = 0;
    for (int i = 0; i < wr->num_sge; i++) {
      memcpy(dst + off, reinterpret_cast<void*>(wr->sg_list[i].addr), wr->sg_list[i].length);
      off += wr->sg_list[i].length;
    }
    w->inline_len = uint32_t(total);
    if (!total) w->inline_len = 0;
  } else {
    w->num_sge = uint32_t(wr->num_sge);
    if (wr->num_sge) memcpy(w->sge, wr->sg_list, sizeof(struct ibv_sge) * size_t(wr->num_sge));
  }
  if (qp->st == QpState::kErr) {
    qp->sq_head++;
    qp->sq_tx = qp->sq_head;
    CompleteSendLocked(qp, w, IBV_WC_WR_FLUSH_ERR);
    return 0;
  }
  qp->sq_head++;
  if (qp->ex.qp_base.qp_type == IBV_QPT_UD) {
    qp->sq_tx = qp->sq_head;
    UdTransmit(qp, w);
  } else {
    CheckWqe(qp, w);
  }
  return 0;
}

int PostSend(struct ibv_qp* iq, struct ibv_send_wr* wr, struct ibv_send_wr** bad) {
  Qp* qp = ToQp(iq);
  std::lock_guard<std::mutex> g(qp->mu);
  if (qp->st != QpState::kRts && qp->st != QpState::kErr) {
    *bad = wr;
    return EINVAL;
  }
  for (; wr; wr = wr->next) {
    int r = PostOne(qp, wr);
    if (r) {
      *bad = wr;
      EngineTxLocked(qp);
      return r;
    }
  }
  EngineTxLocked(qp);
  return 0;
}

int FillRecv(RecvWqe* w, struct ibv_recv_wr* wr, uint32_t max_sge, struct ibv_pd* pd) {
  if (wr->num_sge < 0 || uint32_t(wr->num_sge) > max_sge) return EINVAL;
  w->wr_id = wr->wr_id;
  w->num_sge = uint32_t(wr->num_sge);
  w->status = 0;
  if (wr->num_sge) memcpy(w->sge, wr->sg_list, sizeof(struct ibv_sge) * size_t(wr->num_sge));
  for (int i = 0; i < wr->num_sge; i++) {
    const struct ibv_sge& s = wr->sg_list[i];
    if (!s.length) continue;
    Mr* m = LookupKey(s.lkey);
    if (!m || (pd && m->mr.pd != pd) || !(m->access & IBV_ACCESS_LOCAL_WRITE) || !MrPtr(m, s.addr, s.length))
      w->status = IBV_WC_LOC_PROT_ERR;
  }
  return 0;
}

int PostRecv(struct ibv_qp* iq, struct ibv_recv_wr* wr, struct ibv_recv_wr** bad) {
  Qp* qp = ToQp(iq);
  std::lock_guard<std::mutex> g(qp->mu);
  if (qp->srq || qp->st == QpState::kReset) {
    *bad = wr;
    return EINVAL;
  }
  for (; wr; wr = wr->next) {
    if (qp->rq_count >= qp->rq_cap) {
      *bad = wr;
      return ENOMEM;
    }
    RecvWqe* w = RqAt(qp, qp->rq_head + qp->rq_count);
    int r = FillRecv(w, wr, qp->cap.max_recv_sge, qp->ex.qp_base.pd);
    if (r) {
      *bad = wr;
      return r;
    }
    qp->rq_count++;
    if (qp->st == QpState::kErr) QpFlushLocked(qp);
  }
  EngineKick(qp);
  return 0;
}

int PostSrqRecv(struct ibv_srq* is, struct ibv_recv_wr* wr, struct ibv_recv_wr** bad) {
  Srq* s = ToSrq(is);
  {
    std::lock_guard<std::mutex> g(s->mu);
    for (; wr; wr = wr->next) {
      if (s->count >= s->cap) {
        *bad = wr;
        return ENOMEM;
      }
      RecvWqe* w = SrqAt(s, s->head + s->count);
      int r = FillRecv(w, wr, s->max_sge, s->srq.pd);
      if (r) {
        *bad = wr;
        return r;
      }
      s->count++;
    }
  }
  EngineKickSrq(s);
  return 0;
}

// ------------------------------------------------------------ ibv_wr_* ----
SendWqe* WrNew(struct ibv_qp_ex* x, uint32_t opcode) {
  Qp* qp = ToQp(x);
  if (qp->wr_batch_err) return nullptr;
  if (qp->sq_head - qp->sq_done >= qp->sq_cap) {
    qp->wr_batch_err = true;
    return nullptr;
  }
  SendWqe* w = SqAt(qp, qp->sq_head);
  if (BuildWqe(qp, w, x->wr_id, opcode, x->wr_flags)) {
    qp->wr_batch_err = true;
    return nullptr;
  }
  qp->sq_head++;
  return w;
}
SendWqe* WrCur(struct ibv_qp_ex* x) {
  Qp* qp = ToQp(x);
  if (qp->wr_batch_err || qp->sq_head == qp->wr_batch_start) return nullptr;
  return SqAt(qp, qp->sq_head - 1);
}
void WrStart(struct ibv_qp_ex* x) {
  Qp* qp = ToQp(x);
  qp->mu.lock();
  qp->wr_batch_start = qp->sq_head;
  qp->wr_batch_err = false;
}
int WrComplete(struct ibv_qp_ex* x) {
  Qp* qp = ToQp(x);
  int r = 0;
  if (qp->wr_batch_err || (qp->st != QpState::kRts && qp->st != QpState::kErr)) {
    qp->sq_head = qp->wr_batch_start;
    r = qp->wr_batch_err ? ENOMEM : EINVAL;
  } else {
    bool ud = qp->ex.qp_base.qp_type == IBV_QPT_UD;
    for (uint32_t i = qp->wr_batch_start; i != qp->sq_head; i++) {
      SendWqe* w = SqAt(qp, i);
      if (qp->st == QpState::kErr) {
        qp->sq_tx = i + 1;
        CompleteSendLocked(qp, w, IBV_WC_WR_FLUSH_ERR);
      } else if (ud) {
        qp->sq_tx = i + 1;
        UdTransmit(qp, w);
      } else {
        CheckWqe(qp, w);
      }
    }
    EngineTxLocked(qp);
  }
  qp->mu.unlock();
  return r;
}
void WrAbort(struct ibv_qp_ex* x) {
  Qp* qp = ToQp(x);
  qp->sq_head = qp->wr_batch_start;
  qp->mu.unlock();
}
void WrSend(struct ibv_qp_ex* x) { WrNew(x, IBV_WR_SEND); }
void WrSendImm(struct ibv_qp_ex* x, __be32 imm) {
  if (SendWqe* w = WrNew(x, IBV_WR_SEND_WITH_IMM)) w->imm = imm;
}
void WrWrite(struct ibv_qp_ex* x, uint32_t rkey, uint64_t addr) {
  if (SendWqe* w = WrNew(x, IBV_WR_RDMA_WRITE)) {
    w->rkey = rkey;
    w->raddr = addr;
  }
}
void WrWriteImm(struct ibv_qp_ex* x, uint32_t rkey, uint64_t addr, __be32 imm) {
  if (SendWqe* w = WrNew(x, IBV_WR_RDMA_WRITE_WITH_IMM)) {
    w->rkey = rkey;
    w->raddr = addr;
    w->imm = imm;
  }
}
void WrRead(struct ibv_qp_ex* x, uint32_t rkey, uint64_t addr) {
  if (SendWqe* w = WrNew(x, IBV_WR_RDMA_READ)) {
    w->rkey = rkey;
    w->raddr = addr;
  }
}
void WrCas(struct ibv_qp_ex* x, uint32_t rkey, uint64_t addr, uint64_t cmp, uint64_t swap) {
  if (SendWqe* w = WrNew(x, IBV_WR_ATOMIC_CMP_AND_SWP)) {
    w->rkey = rkey;
    w->raddr = addr;
    w->cmp = cmp;
    w->swap = swap;
  }
}
void WrFaa(struct ibv_qp_ex* x, uint32_t rkey, uint64_t addr, uint64_t add) {
  if (SendWqe* w = WrNew(x, IBV_WR_ATOMIC_FETCH_AND_ADD)) {
    w->rkey = rkey;
    w->raddr = addr;
    w->swap = add;
  }
}
void WrUdAddr(struct ibv_qp_ex* x, struct ibv_ah* ah, uint32_t qpn, uint32_t qkey) {
  if (SendWqe* w = WrCur(x)) SetUdDest(ToQp(x), w, ah, qpn, qkey);
}
void WrSge(struct ibv_qp_ex* x, uint32_t lkey, uint64_t addr, uint32_t length) {
  SendWqe* w = WrCur(x);
  if (!w) return;
  Qp* qp = ToQp(x);
  if (qp->cap.max_send_sge < 1) {
    qp->wr_batch_err = true;
    return;
  }
  w->num_sge = 1;
  w->inline_len = 0;
  w->sge[0].addr = addr;
  w->sge[0].length = length;
  w->sge[0].lkey = lkey;
}
void WrSgeList(struct ibv_qp_ex* x, size_t n, const struct ibv_sge* l) {
  SendWqe* w = WrCur(x);
  if (!w) return;
  Qp* qp = ToQp(x);
  if (n > qp->cap.max_send_sge) {
    qp->wr_batch_err = true;
    return;
  }
  w->num_sge = uint32_t(n);
  w->inline_len = 0;
  if (n) memcpy(w->sge, l, n * sizeof(struct ibv_sge));
}
void WrInlineList(struct ibv_qp_ex* x, size_t n, const struct ibv_data_buf* b) {
  SendWqe* w = WrCur(x);
  if (!w) return;
  Qp* qp = ToQp(x);
  size_t total = 0;
  for (size_t i = 0; i < n; i++) total += b[i].length;
  if (total > qp->cap.max_inline_data) {
    qp->wr_batch_err = true;
    return;
  }
  char* dst = reinterpret_cast<char*>(&w->sge[0]);
  w->num_sge = 0;
  size_t off = 0;
  for (size_t i = 0; i < n; i++) {
    memcpy(dst + off, b[i].addr, b[i].length);
    off += b[i].length;
  }
  w->inline_len = uint32_t(total);
  w->send_flags |= IBV_SEND_INLINE;
}
void WrInline(struct ibv_qp_ex* x, void* addr, size_t len) {
  struct ibv_data_buf b = {addr, len};
  WrInlineList(x, 1, &b);
}

// ------------------------------------------------------------ QP create ----
struct ibv_qp* CreateQp(struct ibv_context* c, struct ibv_qp_init_attr_ex* a) {
  uint32_t known = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;
  if (a->comp_mask & ~known) {
    errno = EOPNOTSUPP;
    return nullptr;
  }
  if (!(a->comp_mask & IBV_QP_INIT_ATTR_PD) || !a->pd) {
    errno = EINVAL;
    return nullptr;
  }
  if (a->qp_type != IBV_QPT_RC && a->qp_type != IBV_QPT_UC && a->qp_type != IBV_QPT_UD) {
    errno = EOPNOTSUPP;
    return nullptr;
  }
  uint64_t ops_ok = IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_SEND_WITH_IMM | IBV_QP_EX_WITH_RDMA_WRITE |
                    IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM | IBV_QP_EX_WITH_RDMA_READ |
                    IBV_QP_EX_WITH_ATOMIC_CMP_AND_SWP | IBV_QP_EX_WITH_ATOMIC_FETCH_AND_ADD;
  if ((a->comp_mask & IBV_QP_INIT_ATTR_SEND_OPS_FLAGS) && (a->send_ops_flags & ~ops_ok)) {
    errno = EOPNOTSUPP;
    return nullptr;
  }
  struct ibv_qp_cap& cap = a->cap;
  if (!a->send_cq || (!a->recv_cq && !a->srq) || cap.max_send_wr > kMaxQpWr || cap.max_recv_wr > kMaxQpWr ||
      cap.max_send_sge > kMaxSge || cap.max_recv_sge > kMaxSge || cap.max_inline_data > kMaxInline ||
      (a->srq && a->qp_type == IBV_QPT_UD && false)) {
    errno = EINVAL;
    return nullptr;
  }
  Qp* qp = new (std::nothrow) Qp;
  if (!qp) {
    errno = ENOMEM;
    return nullptr;
  }
  memset(&qp->ex, 0, sizeof qp->ex);
  qp->ctx = ToCtx(c);
  qp->cap = cap;
  if (qp->cap.max_send_wr < 1) qp->cap.max_send_wr = 1;
  qp->sq_cap = qp->cap.max_send_wr;
  size_t inl = qp->cap.max_inline_data;
  size_t sges = sizeof(struct ibv_sge) * qp->cap.max_send_sge;
  qp->sq_slot = uint32_t((sizeof(SendWqe) + (sges > inl ? sges : inl) + 15) & ~size_t(15));
  qp->sq = static_cast<char*>(calloc(qp->sq_cap, qp->sq_slot));
  if (!a->srq) {
    qp->rq_cap = qp->cap.max_recv_wr ? qp->cap.max_recv_wr : 1;
    qp->rq_slot = uint32_t(sizeof(RecvWqe) + sizeof(struct ibv_sge) * (qp->cap.max_recv_sge ? qp->cap.max_recv_sge : 1));
    qp->rq = static_cast<char*>(calloc(qp->rq_cap, qp->rq_slot));
  } else {
    qp->cap.max_recv_wr = 0;
    qp->cap.max_recv_sge = 0;
  }
  qp->resp_cap = 2 * kMaxRdAtom + 8;
  qp->resp = static_cast<Qp::Resp*>(calloc(qp->resp_cap, sizeof(Qp::Resp)));
  if (!qp->sq || (!a->srq && !qp->rq) || !qp->resp) {
    free(qp->sq);
    free(qp->rq);
    free(qp->resp);
    delete qp;
    errno = ENOMEM;
    return nullptr;
  }
  qp->scq = ToCq(a->send_cq);
  qp->rcq = a->recv_cq ? ToCq(a->recv_cq) : qp->scq;
  qp->srq = a->srq ? ToSrq(a->srq) : nullptr;
  qp->sq_sig_all = a->sq_sig_all != 0;
  struct ibv_qp& b = qp->ex.qp_base;
  b.context = c;
  b.qp_context = a->qp_context;
  b.pd = a->pd;
  b.send_cq = a->send_cq;
  b.recv_cq = a->recv_cq;
  b.srq = a->srq;
  b.state = IBV_QPS_RESET;
  b.qp_type = a->qp_type;
  pthread_mutex_init(&b.mutex, nullptr);
  pthread_cond_init(&b.cond, nullptr);
  qp->ex.comp_mask = 0;
  qp->ex.wr_send = WrSend;
  qp->ex.wr_send_imm = WrSendImm;
  qp->ex.wr_rdma_write = WrWrite;
  qp->ex.wr_rdma_write_imm = WrWriteImm;
  qp->ex.wr_rdma_read = WrRead;
  qp->ex.wr_atomic_cmp_swp = WrCas;
  qp->ex.wr_atomic_fetch_add = WrFaa;
  qp->ex.wr_set_ud_addr = WrUdAddr;
  qp->ex.wr_set_sge = WrSge;
  qp->ex.wr_set_sge_list = WrSgeList;
  qp->ex.wr_set_inline_data = WrInline;
  qp->ex.wr_set_inline_data_list = WrInlineList;
  qp->ex.wr_start = WrStart;
  qp->ex.wr_complete = WrComplete;
  qp->ex.wr_abort = WrAbort;
  uint32_t qpn = 0;
  int r = EngineAllocQpn(qp, &qpn);
  if (r) {
    free(qp->sq);
    free(qp->rq);
    free(qp->resp);
    delete qp;
    errno = r;
    return nullptr;
  }
  b.qp_num = qpn;
  a->cap = qp->cap;
  return &b;
}

struct ibv_qp* CreateQpEx(struct ibv_context* c, struct ibv_qp_init_attr_ex* a) { return CreateQp(c, a); }

}  // namespace

void FillContextOps(Context* ctx) {
  struct ibv_context_ops& o = ctx->vctx.context.ops;
  o.poll_cq = PollCq;
  o.req_notify_cq = ReqNotify;
  o.post_send = PostSend;
  o.post_recv = PostRecv;
  o.post_srq_recv = PostSrqRecv;
  ctx->vctx.create_cq_ex = CreateCqEx;
  ctx->vctx.create_qp_ex = CreateQpEx;
}

}  // namespace softrdma

using namespace softrdma;

// ---------------------------------------------------------------- PD ------
SR_EXPORT struct ibv_pd* ibv_alloc_pd(struct ibv_context* c) {
  Pd* p = new (std::nothrow) Pd;
  if (!p) {
    errno = ENOMEM;
    return nullptr;
  }
  memset(&p->pd, 0, sizeof p->pd);
  p->pd.context = c;
  return &p->pd;
}

SR_EXPORT int ibv_dealloc_pd(struct ibv_pd* pd) {
  delete reinterpret_cast<Pd*>(pd);
  return 0;
}

SR_EXPORT struct ibv_pd* ibv_import_pd(struct ibv_context*, uint32_t) {
  errno = EOPNOTSUPP;
  return nullptr;
}
SR_EXPORT void ibv_unimport_pd(struct ibv_pd*) {}

// ---------------------------------------------------------------- MR ------
static bool RangeMapped(void* addr, size_t len) {
  if (!len) return true;
  long pg = sysconf(_SC_PAGESIZE);
  uintptr_t b = reinterpret_cast<uintptr_t>(addr) & ~uintptr_t(pg - 1);
  uintptr_t e = reinterpret_cast<uintptr_t>(addr) + len;
  unsigned char vec[1024];
  while (b < e) {
    size_t n = (e - b + size_t(pg) - 1) / size_t(pg);
    if (n > sizeof vec) n = sizeof vec;
    if (mincore(reinterpret_cast<void*>(b), n * size_t(pg), vec) != 0 && errno == ENOMEM) return false;
    b += n * size_t(pg);
  }
  return true;
}

SR_EXPORT struct ibv_mr* ibv_reg_mr_iova2(struct ibv_pd* pd, void* addr, size_t length, uint64_t iova,
                                          unsigned int access) {
  const unsigned known = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ |
                         IBV_ACCESS_REMOTE_ATOMIC | IBV_ACCESS_RELAXED_ORDERING;
  access &= ~unsigned(IBV_ACCESS_OPTIONAL_RANGE) | IBV_ACCESS_RELAXED_ORDERING;
  if ((access & ~known) ||
      ((access & (IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC)) && !(access & IBV_ACCESS_LOCAL_WRITE))) {
    errno = EINVAL;
    return nullptr;
  }
  if (!pd || (length && !addr)) {
    errno = EINVAL;
    return nullptr;
  }
  if (!RangeMapped(addr, length)) {
    errno = EFAULT;
    return nullptr;
  }
  Mr* m = new (std::nothrow) Mr;
  if (!m) {
    errno = ENOMEM;
    return nullptr;
  }
  memset(&m->mr, 0, sizeof m->mr);
  m->mr.context = pd->context;
  m->mr.pd = pd;
  m->mr.addr = addr;
  m->mr.length = length;
  m->iova = iova;
  m->access = int(access);
  m->valid = false;
  uint32_t key = KeyAlloc(m);
  if (!key) {
    delete m;
    errno = ENOMEM;
    return nullptr;
  }
  m->mr.lkey = m->mr.rkey = key;
  m->mr.handle = key;
  m->valid.store(true, std::memory_order_release);
  return &m->mr;
}

SR_EXPORT struct ibv_mr* ibv_reg_mr(struct ibv_pd* pd, void* addr, size_t length, int access) {
  return ibv_reg_mr_iova2(pd, addr, length, reinterpret_cast<uintptr_t>(addr), unsigned(access));
}

SR_EXPORT struct ibv_mr* ibv_reg_mr_iova(struct ibv_pd* pd, void* addr, size_t length, uint64_t iova, int access) {
  return ibv_reg_mr_iova2(pd, addr, length, iova, unsigned(access));
}

SR_EXPORT struct ibv_mr* ibv_reg_dmabuf_mr(struct ibv_pd*, uint64_t, size_t, uint64_t, int, int) {
  errno = EOPNOTSUPP;
  return nullptr;
}

SR_EXPORT int ibv_dereg_mr(struct ibv_mr* mr) {
  Mr* m = reinterpret_cast<Mr*>(mr);
  m->valid.store(false, std::memory_order_release);
  KeyFree(mr->lkey);
  // The progress thread may still hold the pointer for one pass.
  delete m;
  return 0;
}

SR_EXPORT int ibv_rereg_mr(struct ibv_mr*, int, struct ibv_pd*, void*, size_t, int) {
  errno = EOPNOTSUPP;
  return IBV_REREG_MR_ERR_INPUT;
}

SR_EXPORT struct ibv_mr* ibv_import_mr(struct ibv_pd*, uint32_t) {
  errno = EOPNOTSUPP;
  return nullptr;
}
SR_EXPORT void ibv_unimport_mr(struct ibv_mr*) {}
SR_EXPORT struct ibv_dm* ibv_import_dm(struct ibv_context*, uint32_t) {
  errno = EOPNOTSUPP;
  return nullptr;
}
SR_EXPORT void ibv_unimport_dm(struct ibv_dm*) {}

// ---------------------------------------------------------------- CQ ------
SR_EXPORT struct ibv_cq* ibv_create_cq(struct ibv_context* c, int cqe, void* cq_context,
                                       struct ibv_comp_channel* ch, int vec) {
  Cq* cq = NewCq(c, cqe, cq_context, ch, vec, 0);
  return cq ? reinterpret_cast<struct ibv_cq*>(&cq->ex) : nullptr;
}

SR_EXPORT int ibv_resize_cq(struct ibv_cq* c, int cqe) {
  Cq* cq = reinterpret_cast<Cq*>(c);
  std::lock_guard<std::mutex> g(cq->mu);
  if (cqe < 1 || uint32_t(cqe) > kMaxCqe || uint32_t(cqe) < cq->count) return EINVAL;
  struct ibv_wc* r = static_cast<struct ibv_wc*>(calloc(size_t(cqe), sizeof(struct ibv_wc)));
  if (!r) return ENOMEM;
  for (uint32_t i = 0; i < cq->count; i++) r[i] = cq->ring[(cq->head + i) % cq->cap];
  free(cq->ring);
  cq->ring = r;
  cq->head = 0;
  cq->cap = uint32_t(cqe);
  cq->ex.cqe = cqe;
  return 0;
}

SR_EXPORT int ibv_destroy_cq(struct ibv_cq* c) {
  Cq* cq = reinterpret_cast<Cq*>(c);
  struct ibv_comp_channel* ch = cq->ex.channel;
  // Wait until every delivered event has been acknowledged.
  pthread_mutex_lock(&c->mutex);
  c->cq_context = c->cq_context;
  pthread_mutex_unlock(&c->mutex);
  if (ch) __atomic_sub_fetch(&ch->refcnt, 1, __ATOMIC_ACQ_REL);
  free(cq->ring);
  delete cq;
  return 0;
}

// ---------------------------------------------------------------- SRQ -----
SR_EXPORT struct ibv_srq* ibv_create_srq(struct ibv_pd* pd, struct ibv_srq_init_attr* a) {
  if (a->attr.max_wr < 1 || a->attr.max_wr > kMaxSrqWr || a->attr.max_sge > kMaxSge ||
      a->attr.srq_limit > a->attr.max_wr) {
    errno = EINVAL;
    return nullptr;
  }
  Srq* s = new (std::nothrow) Srq;
  if (!s) {
    errno = ENOMEM;
    return nullptr;
  }
  memset(&s->srq, 0, sizeof s->srq);
  s->cap = a->attr.max_wr;
  s->max_sge = a->attr.max_sge ? a->attr.max_sge : 1;
  s->slot_size = uint32_t(sizeof(RecvWqe) + sizeof(struct ibv_sge) * s->max_sge);
  s->slots = static_cast<char*>(calloc(s->cap, s->slot_size));
  if (!s->slots) {
    delete s;
    errno = ENOMEM;
    return nullptr;
  }
  s->limit = a->attr.srq_limit;
  s->srq.context = pd->context;
  s->srq.srq_context = a->srq_context;
  s->srq.pd = pd;
  pthread_mutex_init(&s->srq.mutex, nullptr);
  pthread_cond_init(&s->srq.cond, nullptr);
  a->attr.max_sge = s->max_sge;
  return &s->srq;
}

SR_EXPORT int ibv_modify_srq(struct ibv_srq* is, struct ibv_srq_attr* a, int mask) {
  Srq* s = reinterpret_cast<Srq*>(is);
  std::lock_guard<std::mutex> g(s->mu);
  if (mask & IBV_SRQ_MAX_WR) return EINVAL;  // resizing is not offered (no IBV_DEVICE_SRQ_RESIZE)
  if (mask & IBV_SRQ_LIMIT) {
    if (a->srq_limit > s->cap) return EINVAL;
    s->limit = a->srq_limit;
  }
  return 0;
}

SR_EXPORT int ibv_query_srq(struct ibv_srq* is, struct ibv_srq_attr* a) {
  Srq* s = reinterpret_cast<Srq*>(is);
  std::lock_guard<std::mutex> g(s->mu);
  a->max_wr = s->cap;
  a->max_sge = s->max_sge;
  a->srq_limit = s->limit;
  return 0;
}

SR_EXPORT int ibv_destroy_srq(struct ibv_srq* is) {
  Srq* s = reinterpret_cast<Srq*>(is);
  free(s->slots);
  delete s;
  return 0;
}

// ---------------------------------------------------------------- QP ------
SR_EXPORT struct ibv_qp* ibv_create_qp(struct ibv_pd* pd, struct ibv_qp_init_attr* a) {
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
  struct ibv_qp* q = CreateQp(pd->context, &x);
  if (q) a->cap = x.cap;
  return q;
}

SR_EXPORT struct ibv_qp_ex* ibv_qp_to_qp_ex(struct ibv_qp* q) { return &reinterpret_cast<Qp*>(q)->ex; }

static bool Has(int mask, int bits) { return (mask & bits) == bits; }

SR_EXPORT int ibv_modify_qp(struct ibv_qp* iq, struct ibv_qp_attr* a, int mask) {
  Qp* qp = reinterpret_cast<Qp*>(iq);
  std::lock_guard<std::mutex> g(qp->mu);
  QpState cur = qp->st;
  if ((mask & IBV_QP_CUR_STATE) && a->cur_qp_state != iq->state) return EINVAL;
  QpState next = cur;
  if (mask & IBV_QP_STATE) {
    switch (a->qp_state) {
      case IBV_QPS_RESET: next = QpState::kReset; break;
      case IBV_QPS_INIT: next = QpState::kInit; break;
      case IBV_QPS_RTR: next = QpState::kRtr; break;
      case IBV_QPS_RTS: next = QpState::kRts; break;
      case IBV_QPS_ERR: next = QpState::kErr; break;
      default: return EINVAL;  // SQD/SQE are not offered
    }
  }
  uint32_t t = iq->qp_type;
  bool conn = t == IBV_QPT_RC || t == IBV_QPT_UC;
  // Required attributes per transition (IB spec 11.2.5, table 91 and on).
  if (next == QpState::kInit && cur == QpState::kReset) {
    if (!Has(mask, IBV_QP_PKEY_INDEX | IBV_QP_PORT)) return EINVAL;
    if (conn && !(mask & IBV_QP_ACCESS_FLAGS)) return EINVAL;
    if (t == IBV_QPT_UD && !(mask & IBV_QP_QKEY)) return EINVAL;
  } else if (next == QpState::kRtr && cur == QpState::kInit) {
    if (conn && !Has(mask, IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN)) return EINVAL;
    if (t == IBV_QPT_RC && !Has(mask, IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER)) return EINVAL;
  } else if (next == QpState::kRts && cur == QpState::kRtr) {
    if (!(mask & IBV_QP_SQ_PSN)) return EINVAL;
    if (t == IBV_QPT_RC && !Has(mask, IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_MAX_QP_RD_ATOMIC))
      return EINVAL;
  } else if (next == cur && (cur == QpState::kInit || cur == QpState::kRts || cur == QpState::kErr ||
                             cur == QpState::kReset)) {
    // INIT->INIT, RTS->RTS, ERR->ERR, RESET->RESET
  } else if (next != QpState::kReset && next != QpState::kErr) {
    return EINVAL;
  }
  if ((mask & IBV_QP_PORT) && a->port_num != 1) return EINVAL;
  if ((mask & IBV_QP_PKEY_INDEX) && a->pkey_index != 0) return EINVAL;
  if ((mask & IBV_QP_MAX_QP_RD_ATOMIC) && a->max_rd_atomic > kMaxRdAtom) return EINVAL;
  if ((mask & IBV_QP_MAX_DEST_RD_ATOMIC) && a->max_dest_rd_atomic > kMaxRdAtom) return EINVAL;
  if ((mask & IBV_QP_PATH_MTU) && (a->path_mtu < IBV_MTU_256 || a->path_mtu > IBV_MTU_4096)) return EINVAL;
  uint32_t dest_ip = qp->dest_ip;
  if (mask & IBV_QP_AV) {
    if (t == IBV_QPT_UD) return EINVAL;
    if (a->ah_attr.port_num && a->ah_attr.port_num != 1) return EINVAL;
    if (host().mode == Personality::kRoce && !a->ah_attr.is_global) return EINVAL;  // GRH required
    if (host().mode == Personality::kIb && !a->ah_attr.dlid && !a->ah_attr.is_global) return EINVAL;
    if (a->ah_attr.is_global && a->ah_attr.grh.sgid_index >= (host().mode == Personality::kIb ? 1 : kGidTblLen))
      return EINVAL;
    dest_ip = ResolveAv(a->ah_attr);
  }
  // Apply.
  if (mask & IBV_QP_ACCESS_FLAGS) qp->attr.qp_access_flags = a->qp_access_flags;
  if (mask & IBV_QP_PKEY_INDEX) qp->attr.pkey_index = a->pkey_index;
  if (mask & IBV_QP_PORT) qp->attr.port_num = a->port_num;
  if (mask & IBV_QP_QKEY) qp->attr.qkey = a->qkey;
  if (mask & IBV_QP_AV) {
    qp->attr.ah_attr = a->ah_attr;
    qp->dest_ip = dest_ip;
  }
  if (mask & IBV_QP_PATH_MTU) qp->attr.path_mtu = a->path_mtu;
  if (mask & IBV_QP_DEST_QPN) qp->attr.dest_qp_num = a->dest_qp_num & 0xffffff;
  if (mask & IBV_QP_RQ_PSN) qp->attr.rq_psn = a->rq_psn & 0xffffff;
  if (mask & IBV_QP_MAX_DEST_RD_ATOMIC) qp->attr.max_dest_rd_atomic = a->max_dest_rd_atomic;
  if (mask & IBV_QP_MIN_RNR_TIMER) qp->attr.min_rnr_timer = a->min_rnr_timer;
  if (mask & IBV_QP_SQ_PSN) {
    qp->attr.sq_psn = a->sq_psn & 0xffffff;
    qp->next_psn = qp->attr.sq_psn;
    qp->ack_valid = false;
  }
  if (mask & IBV_QP_TIMEOUT) qp->attr.timeout = a->timeout;
  if (mask & IBV_QP_RETRY_CNT) qp->attr.retry_cnt = a->retry_cnt;
  if (mask & IBV_QP_RNR_RETRY) qp->attr.rnr_retry = a->rnr_retry;
  if (mask & IBV_QP_MAX_QP_RD_ATOMIC) qp->attr.max_rd_atomic = a->max_rd_atomic;
  if (mask & IBV_QP_SQ_PSN) qp->attr.sq_psn = a->sq_psn & 0xffffff;
  if (!(mask & IBV_QP_STATE) || next == cur) return 0;
  if (next == QpState::kErr) {
    QpToErrorLocked(qp);
    return 0;
  }
  if (next == QpState::kReset) {
    qp->st = QpState::kReset;
    iq->state = IBV_QPS_RESET;
    EngineQpStateChanged(qp);
    qp->sq_head = qp->sq_tx = qp->sq_done = 0;
    qp->rq_head = qp->rq_count = 0;
    qp->rd_outstanding = 0;
    qp->resp_head = qp->resp_count = 0;
    qp->first_unacked_ns = 0;
    qp->next_connect_ns = 0;
    qp->peer_lost = false;
    qp->goto_err_after_resp = false;
    return 0;
  }
  qp->st = next;
  iq->state = a->qp_state;
  EngineQpStateChanged(qp);
  return 0;
}

SR_EXPORT int ibv_query_qp(struct ibv_qp* iq, struct ibv_qp_attr* a, int, struct ibv_qp_init_attr* init) {
  Qp* qp = reinterpret_cast<Qp*>(iq);
  std::lock_guard<std::mutex> g(qp->mu);
  *a = qp->attr;
  a->qp_state = iq->state;
  a->cur_qp_state = iq->state;
  a->cap = qp->cap;
  a->path_mig_state = IBV_MIG_MIGRATED;
  a->sq_draining = 0;
  if (init) {
    memset(init, 0, sizeof *init);
    init->qp_context = iq->qp_context;
    init->send_cq = iq->send_cq;
    init->recv_cq = iq->recv_cq;
    init->srq = iq->srq;
    init->cap = qp->cap;
    init->qp_type = iq->qp_type;
    init->sq_sig_all = qp->sq_sig_all;
  }
  return 0;
}

SR_EXPORT int ibv_query_qp_data_in_order(struct ibv_qp*, enum ibv_wr_opcode, uint32_t) { return 0; }

SR_EXPORT int ibv_destroy_qp(struct ibv_qp* iq) {
  Qp* qp = reinterpret_cast<Qp*>(iq);
  {
    std::lock_guard<std::mutex> g(qp->mu);
    if (qp->st != QpState::kReset && qp->st != QpState::kErr) {
      qp->st = QpState::kReset;
      iq->state = IBV_QPS_RESET;
    }
    qp->st = QpState::kReset;
    EngineQpStateChanged(qp);
  }
  EngineFreeQpn(iq->qp_num);
  free(qp->sq);
  free(qp->rq);
  free(qp->resp);
  delete qp;
  return 0;
}

SR_EXPORT int ibv_query_ece(struct ibv_qp*, struct ibv_ece*) { return EOPNOTSUPP; }
SR_EXPORT int ibv_set_ece(struct ibv_qp*, struct ibv_ece*) { return EOPNOTSUPP; }
SR_EXPORT int ibv_attach_mcast(struct ibv_qp*, const union ibv_gid*, uint16_t) { return EOPNOTSUPP; }
SR_EXPORT int ibv_detach_mcast(struct ibv_qp*, const union ibv_gid*, uint16_t) { return EOPNOTSUPP; }

// ---------------------------------------------------------------- AH ------
SR_EXPORT struct ibv_ah* ibv_create_ah(struct ibv_pd* pd, struct ibv_ah_attr* attr) {
  if ((attr->port_num && attr->port_num != 1) ||
      (host().mode == Personality::kRoce && !attr->is_global) ||
      (host().mode == Personality::kIb && !attr->dlid && !attr->is_global)) {
    errno = EINVAL;
    return nullptr;
  }
  Ah* a = new (std::nothrow) Ah;
  if (!a) {
    errno = ENOMEM;
    return nullptr;
  }
  memset(&a->ah, 0, sizeof a->ah);
  a->ah.context = pd->context;
  a->ah.pd = pd;
  a->attr = *attr;
  a->ip = ResolveAv(*attr);
  return &a->ah;
}

SR_EXPORT int ibv_destroy_ah(struct ibv_ah* ah) {
  delete reinterpret_cast<Ah*>(ah);
  return 0;
}

SR_EXPORT int ibv_init_ah_from_wc(struct ibv_context*, uint8_t port, struct ibv_wc* wc, struct ibv_grh* grh,
                                  struct ibv_ah_attr* ah) {
  memset(ah, 0, sizeof *ah);
  ah->port_num = port;
  ah->dlid = wc->slid;
  ah->sl = wc->sl;
  ah->src_path_bits = wc->dlid_path_bits;
  if (wc->wc_flags & IBV_WC_GRH) {
    if (!grh) return -1;
    ah->is_global = 1;
    memcpy(ah->grh.dgid.raw, grh->sgid.raw, 16);
    ah->grh.sgid_index = 0;
    for (int i = 0; i < kGidTblLen; i++)
      if (memcmp(host().gid[i].raw, grh->dgid.raw, 16) == 0) ah->grh.sgid_index = uint8_t(i);
    ah->grh.hop_limit = 0xff;
    uint32_t vtf = ntohl(grh->version_tclass_flow);
    ah->grh.flow_label = vtf & 0xfffff;
    ah->grh.traffic_class = uint8_t((vtf >> 20) & 0xff);
  } else if (host().mode == Personality::kRoce) {
    return -1;
  }
  return 0;
}

SR_EXPORT struct ibv_ah* ibv_create_ah_from_wc(struct ibv_pd* pd, struct ibv_wc* wc, struct ibv_grh* grh,
                                               uint8_t port) {
  struct ibv_ah_attr a;
  if (ibv_init_ah_from_wc(pd->context, port, wc, grh, &a)) {
    errno = EINVAL;
    return nullptr;
  }
  return ibv_create_ah(pd, &a);
}

SR_EXPORT int ibv_resolve_eth_l2_from_gid(struct ibv_context*, struct ibv_ah_attr* attr, uint8_t eth_mac[6],
                                          uint16_t* vid) {
  uint32_t ip = ResolveAv(*attr);
  eth_mac[0] = 0x02;
  eth_mac[1] = 0x53;
  eth_mac[2] = uint8_t(ip >> 24);
  eth_mac[3] = uint8_t(ip >> 16);
  eth_mac[4] = uint8_t(ip >> 8);
  eth_mac[5] = uint8_t(ip);
  if (vid) *vid = 0xffff;
  return 0;
}
