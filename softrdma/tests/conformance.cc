// Verbs conformance checks for an RDMA device: semantics and error paths that
// any device (softrdma, or rxe in the SoftRoCE tier) must show the same way.
// Plain libibverbs API only; one process with queue pairs connected to each
// other, or (-l / -c) two processes, one side each.
//
// usage: softrdma_conformance [-d DEVICE] [-g GID_INDEX] [-t TEST] [-S] [-l | -c HOST] [-p PORT]
//   (exit 0 = all passed)
//   -S: strict, hold rxe to the specification too (its known deviations then fail)
//   -l / -c HOST: two processes (two hosts): the remote_* groups, with the responder
//   side in the -l process and the requester side in the -c process, which meet on
//   TCP port PORT (default 18600) to exchange QP numbers, GIDs, keys and to
//   synchronise.  Both print ok/FAIL per group and must exit 0.
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <infiniband/verbs.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <string>
#include <thread>
#include <vector>

namespace {

int g_pass = 0, g_fail = 0;
const char* g_test = "";
// The last completion polled, so that a failed check says what the device did.
struct ibv_wc g_last_wc;
bool g_have_wc = false;

// rxe (the kernel's SoftRoCE; tests/vm runs Linux 6.1 with rdma-core 44) departs
// from the specification in a few places, each listed with its cause in
// softrdma/README.md.  On rxe those checks expect rxe's own behaviour, exactly,
// so that a change in rxe is noticed as well; every other device, softrdma
// included, is held to the specification.
constexpr uint32_t kRxeVendorId = 0xffffff;  // RXE_VENDOR_ID (drivers/infiniband/sw/rxe/rxe_param.h)
bool g_rxe = false;
int g_deviations = 0;

// `rxe_device`: whether the device whose verdict is checked is rxe (in the
// two-process mode a responder's verdict is the peer's device's).
bool RxeDeviationOn(bool rxe_device, const char* what) {
  if (!rxe_device) return false;
  printf("     (rxe deviation: %s)\n", what);
  g_deviations++;
  return true;
}
bool RxeDeviation(const char* what) { return RxeDeviationOn(g_rxe, what); }
const char kRxeLongSend[] = "a SEND longer than the receive: Remote Operational Error NAK (REM_OP_ERR / LOC_QP_OP_ERR)";

void ReportLast() {
  if (g_have_wc)
    fprintf(stderr, "    last completion: wr_id %llu, status %s, opcode %d, byte_len %u\n",
            (unsigned long long)g_last_wc.wr_id, ibv_wc_status_str(g_last_wc.status), int(g_last_wc.opcode),
            g_last_wc.byte_len);
  g_have_wc = false;
}

#define CHECK(cond)                                                                     \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      fprintf(stderr, "  %s: check failed at line %d: %s\n", g_test, __LINE__, #cond); \
      ReportLast();                                                                     \
      return false;                                                                     \
    }                                                                                   \
  } while (0)

struct ibv_context* ctx;
struct ibv_pd* pd;
struct ibv_port_attr port;
int gid_index = 1;
bool eth = false;
union ibv_gid my_gid;
// Where connected QPs point: our own port, or the peer process's in the two-process mode.
union ibv_gid dest_gid;
uint16_t dest_lid;

constexpr size_t kBuf = 1 << 20;

struct Side {
  struct ibv_cq* scq = nullptr;
  struct ibv_cq* rcq = nullptr;
  struct ibv_comp_channel* ch = nullptr;
  struct ibv_qp* qp = nullptr;
  char* buf = nullptr;
  struct ibv_mr* mr = nullptr;
};

struct Pair {
  Side a, b;
};

uint64_t NowMs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000 + uint64_t(ts.tv_nsec) / 1000000;
}

// Polls one completion within timeout_ms; false on timeout.
bool Poll1(struct ibv_cq* cq, struct ibv_wc* wc, int timeout_ms = 3000) {
  uint64_t end = NowMs() + uint64_t(timeout_ms);
  for (;;) {
    int n = ibv_poll_cq(cq, 1, wc);
    if (n < 0) return false;
    if (n == 1) {
      g_last_wc = *wc;
      g_have_wc = true;
      return true;
    }
    if (NowMs() > end) return false;
    usleep(50);
  }
}

bool NoCompletion(struct ibv_cq* cq, int ms) {
  struct ibv_wc wc;
  return !Poll1(cq, &wc, ms);
}

void FillAv(struct ibv_ah_attr* av) {
  memset(av, 0, sizeof *av);
  av->port_num = 1;
  av->dlid = dest_lid;
  if (eth || gid_index >= 0) {
    av->is_global = eth ? 1 : 0;
    if (eth) {
      av->grh.dgid = dest_gid;
      av->grh.sgid_index = uint8_t(gid_index);
      av->grh.hop_limit = 1;
    }
  }
}

bool MakeSide(Side* s, enum ibv_qp_type type, int access, struct ibv_srq* srq = nullptr, int cqe = 64) {
  s->ch = ibv_create_comp_channel(ctx);
  s->scq = ibv_create_cq(ctx, cqe, nullptr, nullptr, 0);
  s->rcq = ibv_create_cq(ctx, cqe, nullptr, s->ch, 0);
  if (!s->ch || !s->scq || !s->rcq) return false;
  s->buf = static_cast<char*>(aligned_alloc(4096, kBuf));
  memset(s->buf, 0, kBuf);
  s->mr = ibv_reg_mr(pd, s->buf, kBuf, access);
  if (!s->mr) return false;
  struct ibv_qp_init_attr ia;
  memset(&ia, 0, sizeof ia);
  ia.send_cq = s->scq;
  ia.recv_cq = s->rcq;
  ia.srq = srq;
  ia.qp_type = type;
  ia.cap.max_send_wr = 32;
  ia.cap.max_recv_wr = srq ? 0 : 32;
  ia.cap.max_send_sge = 4;
  ia.cap.max_recv_sge = srq ? 0 : 4;
  ia.cap.max_inline_data = 64;
  s->qp = ibv_create_qp(pd, &ia);
  return s->qp != nullptr;
}

void FreeSide(Side* s) {
  if (s->qp) ibv_destroy_qp(s->qp);
  if (s->mr) ibv_dereg_mr(s->mr);
  if (s->scq) ibv_destroy_cq(s->scq);
  if (s->rcq) ibv_destroy_cq(s->rcq);
  if (s->ch) ibv_destroy_comp_channel(s->ch);
  free(s->buf);
  *s = Side();
}

int ToInit(struct ibv_qp* qp, int access) {
  struct ibv_qp_attr a;
  memset(&a, 0, sizeof a);
  a.qp_state = IBV_QPS_INIT;
  a.pkey_index = 0;
  a.port_num = 1;
  int mask = IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT;
  if (qp->qp_type == IBV_QPT_UD) {
    a.qkey = 0x11111111;
    mask |= IBV_QP_QKEY;
  } else {
    a.qp_access_flags = access;
    mask |= IBV_QP_ACCESS_FLAGS;
  }
  return ibv_modify_qp(qp, &a, mask);
}

int ToRtr(struct ibv_qp* qp, uint32_t dest) {
  struct ibv_qp_attr a;
  memset(&a, 0, sizeof a);
  a.qp_state = IBV_QPS_RTR;
  int mask = IBV_QP_STATE;
  if (qp->qp_type != IBV_QPT_UD) {
    a.path_mtu = IBV_MTU_1024;
    a.dest_qp_num = dest;
    a.rq_psn = 0;
    FillAv(&a.ah_attr);
    mask |= IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN;
    if (qp->qp_type == IBV_QPT_RC) {
      a.max_dest_rd_atomic = 4;
      a.min_rnr_timer = 1;
      mask |= IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER;
    }
  }
  return ibv_modify_qp(qp, &a, mask);
}

int ToRts(struct ibv_qp* qp, int rnr_retry = 7) {
  struct ibv_qp_attr a;
  memset(&a, 0, sizeof a);
  a.qp_state = IBV_QPS_RTS;
  a.sq_psn = 0;
  int mask = IBV_QP_STATE | IBV_QP_SQ_PSN;
  if (qp->qp_type == IBV_QPT_RC) {
    a.timeout = 14;
    a.retry_cnt = 7;
    a.rnr_retry = uint8_t(rnr_retry);
    a.max_rd_atomic = 4;
    mask |= IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_MAX_QP_RD_ATOMIC;
  }
  return ibv_modify_qp(qp, &a, mask);
}

const int kAllAccess =
    IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC;

bool Connect(Pair* p, enum ibv_qp_type t, int qp_access = kAllAccess, int mr_access = kAllAccess, int rnr = 7) {
  if (!MakeSide(&p->a, t, mr_access) || !MakeSide(&p->b, t, mr_access)) return false;
  if (ToInit(p->a.qp, qp_access) || ToInit(p->b.qp, qp_access)) return false;
  if (ToRtr(p->a.qp, p->b.qp->qp_num) || ToRtr(p->b.qp, p->a.qp->qp_num)) return false;
  if (ToRts(p->a.qp, rnr) || ToRts(p->b.qp, rnr)) return false;
  return true;
}

void Free(Pair* p) {
  FreeSide(&p->a);
  FreeSide(&p->b);
}

int PostRecv(Side* s, uint64_t id, size_t off, uint32_t len, uint32_t lkey = 0) {
  struct ibv_sge sge = {reinterpret_cast<uintptr_t>(s->buf + off), len, lkey ? lkey : s->mr->lkey};
  struct ibv_recv_wr wr, *bad;
  memset(&wr, 0, sizeof wr);
  wr.wr_id = id;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  return ibv_post_recv(s->qp, &wr, &bad);
}

int Post(Side* s, enum ibv_wr_opcode op, uint64_t id, size_t off, uint32_t len, uint64_t raddr = 0,
         uint32_t rkey = 0, int flags = IBV_SEND_SIGNALED, uint32_t lkey = 0) {
  struct ibv_sge sge = {reinterpret_cast<uintptr_t>(s->buf + off), len, lkey ? lkey : s->mr->lkey};
  struct ibv_send_wr wr, *bad;
  memset(&wr, 0, sizeof wr);
  wr.wr_id = id;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = op;
  wr.send_flags = unsigned(flags);
  wr.wr.rdma.remote_addr = raddr;
  wr.wr.rdma.rkey = rkey;
  if (op == IBV_WR_SEND_WITH_IMM || op == IBV_WR_RDMA_WRITE_WITH_IMM) wr.imm_data = htobe32(0xabcd1234);
  return ibv_post_send(s->qp, &wr, &bad);
}

uint64_t Addr(Side* s, size_t off) { return reinterpret_cast<uintptr_t>(s->buf + off); }

// ---------------------------------------------------------------- tests --
bool TestDevice() {
  struct ibv_device_attr da;
  CHECK(ibv_query_device(ctx, &da) == 0);
  CHECK(da.phys_port_cnt >= 1);
  CHECK(da.max_qp_wr > 0 && da.max_sge > 0 && da.max_cqe > 0);
  CHECK(port.state == IBV_PORT_ACTIVE);
  __be16 pkey;
  CHECK(ibv_query_pkey(ctx, 1, 0, &pkey) == 0);
  CHECK((be16toh(pkey) & 0x7fff) == 0x7fff);
  union ibv_gid g;
  CHECK(ibv_query_gid(ctx, 1, 0, &g) == 0);
  CHECK(ibv_query_gid(ctx, 1, port.gid_tbl_len + 5, &g) != 0);
  struct ibv_port_attr pa;
  CHECK(ibv_query_port(ctx, 2 + da.phys_port_cnt, &pa) != 0);
  return true;
}

bool TestMrRules() {
  static char b[8192];
  // remote write without local write is invalid
  struct ibv_mr* m = ibv_reg_mr(pd, b, sizeof b, IBV_ACCESS_REMOTE_WRITE);
  CHECK(m == nullptr);
  m = ibv_reg_mr(pd, b, sizeof b, IBV_ACCESS_REMOTE_ATOMIC);
  CHECK(m == nullptr);
  m = ibv_reg_mr(pd, b, sizeof b, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ);
  CHECK(m != nullptr);
  CHECK(m->lkey != 0 || m->rkey != 0);
  CHECK(ibv_dereg_mr(m) == 0);
  // unmapped memory cannot be registered
  void* p = mmap(nullptr, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK(p != MAP_FAILED);
  munmap(p, 1 << 16);
  m = ibv_reg_mr(pd, p, 1 << 16, IBV_ACCESS_LOCAL_WRITE);
  CHECK(m == nullptr);
  return true;
}

bool TestStateMachine() {
  Side s;
  CHECK(MakeSide(&s, IBV_QPT_RC, kAllAccess));
  struct ibv_qp_attr a;
  struct ibv_qp_init_attr ia;
  CHECK(ibv_query_qp(s.qp, &a, IBV_QP_STATE, &ia) == 0 && a.qp_state == IBV_QPS_RESET);
  // posting a send before RTS fails at once
  CHECK(Post(&s, IBV_WR_SEND, 1, 0, 8) != 0);
  // RESET -> RTR is not a valid transition
  CHECK(ToRtr(s.qp, s.qp->qp_num) != 0);
  CHECK(ToInit(s.qp, kAllAccess) == 0);
  CHECK(ibv_query_qp(s.qp, &a, IBV_QP_STATE, &ia) == 0 && a.qp_state == IBV_QPS_INIT);
  // INIT -> RTR without the required attributes fails
  memset(&a, 0, sizeof a);
  a.qp_state = IBV_QPS_RTR;
  CHECK(ibv_modify_qp(s.qp, &a, IBV_QP_STATE) != 0);
  // receives may be posted in INIT; they are flushed when the QP goes to error
  CHECK(PostRecv(&s, 7, 0, 64) == 0);
  CHECK(PostRecv(&s, 8, 64, 64) == 0);
  memset(&a, 0, sizeof a);
  a.qp_state = IBV_QPS_ERR;
  CHECK(ibv_modify_qp(s.qp, &a, IBV_QP_STATE) == 0);
  struct ibv_wc wc;
  CHECK(Poll1(s.rcq, &wc) && wc.wr_id == 7 && wc.status == IBV_WC_WR_FLUSH_ERR);
  CHECK(Poll1(s.rcq, &wc) && wc.wr_id == 8 && wc.status == IBV_WC_WR_FLUSH_ERR);
  // the send refused in RESET was not queued: there is nothing to flush
  if (RxeDeviation("a send refused in RESET (EINVAL) stays queued and is flushed when the QP enters the error state"))
    CHECK(Poll1(s.scq, &wc) && wc.wr_id == 1 && wc.status == IBV_WC_WR_FLUSH_ERR);
  CHECK(NoCompletion(s.scq, 100));
  // posted in the error state: flushed too
  CHECK(PostRecv(&s, 9, 0, 64) == 0);
  if (RxeDeviation("a receive posted in the error state is flushed only once the kernel next runs the QP (here ERR->ERR)")) {
    CHECK(NoCompletion(s.rcq, 300));
    CHECK(ibv_modify_qp(s.qp, &a, IBV_QP_STATE) == 0);
  }
  CHECK(Poll1(s.rcq, &wc) && wc.wr_id == 9 && wc.status == IBV_WC_WR_FLUSH_ERR);
  CHECK(Post(&s, IBV_WR_SEND, 10, 0, 8) == 0);
  CHECK(Poll1(s.scq, &wc) && wc.wr_id == 10 && wc.status == IBV_WC_WR_FLUSH_ERR);
  // ERR -> RESET -> INIT works again
  a.qp_state = IBV_QPS_RESET;
  CHECK(ibv_modify_qp(s.qp, &a, IBV_QP_STATE) == 0);
  CHECK(ToInit(s.qp, kAllAccess) == 0);
  FreeSide(&s);
  return true;
}

bool TestSendRecv() {
  Pair p;
  CHECK(Connect(&p, IBV_QPT_RC));
  struct ibv_wc wc;
  for (int i = 0; i < 100; i++) p.a.buf[i] = char(i * 7);
  CHECK(PostRecv(&p.b, 100, 0, 4096) == 0);
  CHECK(Post(&p.a, IBV_WR_SEND_WITH_IMM, 1, 0, 100) == 0);
  CHECK(Poll1(p.a.scq, &wc) && wc.status == IBV_WC_SUCCESS && wc.wr_id == 1 && wc.opcode == IBV_WC_SEND);
  CHECK(Poll1(p.b.rcq, &wc) && wc.status == IBV_WC_SUCCESS && wc.wr_id == 100);
  CHECK(wc.opcode == IBV_WC_RECV && wc.byte_len == 100 && (wc.wc_flags & IBV_WC_WITH_IMM));
  CHECK(be32toh(wc.imm_data) == 0xabcd1234 && wc.qp_num == p.b.qp->qp_num);
  CHECK(memcmp(p.a.buf, p.b.buf, 100) == 0);
  // zero-length send
  CHECK(PostRecv(&p.b, 101, 0, 16) == 0);
  CHECK(Post(&p.a, IBV_WR_SEND, 2, 0, 0) == 0);
  CHECK(Poll1(p.b.rcq, &wc) && wc.status == IBV_WC_SUCCESS && wc.byte_len == 0);
  CHECK(Poll1(p.a.scq, &wc) && wc.status == IBV_WC_SUCCESS);
  // inline send: the buffer may be reused at once
  strcpy(p.a.buf + 200, "inline payload");
  CHECK(PostRecv(&p.b, 102, 1000, 64) == 0);
  CHECK(Post(&p.a, IBV_WR_SEND, 3, 200, 15, 0, 0, IBV_SEND_SIGNALED | IBV_SEND_INLINE, 0xdeadbeef) == 0);
  memset(p.a.buf + 200, 0, 15);
  CHECK(Poll1(p.b.rcq, &wc) && wc.status == IBV_WC_SUCCESS && wc.byte_len == 15);
  CHECK(strcmp(p.b.buf + 1000, "inline payload") == 0);
  CHECK(Poll1(p.a.scq, &wc) && wc.status == IBV_WC_SUCCESS);
  // a large message across several receive SGEs
  for (size_t i = 0; i < 300000; i++) p.a.buf[i] = char(i * 13 + 1);
  struct ibv_sge sges[3] = {{Addr(&p.b, 0), 100000, p.b.mr->lkey},
                            {Addr(&p.b, 500000), 100000, p.b.mr->lkey},
                            {Addr(&p.b, 700000), 150000, p.b.mr->lkey}};
  struct ibv_recv_wr rwr, *rbad;
  memset(&rwr, 0, sizeof rwr);
  rwr.wr_id = 103;
  rwr.sg_list = sges;
  rwr.num_sge = 3;
  CHECK(ibv_post_recv(p.b.qp, &rwr, &rbad) == 0);
  CHECK(Post(&p.a, IBV_WR_SEND, 4, 0, 300000) == 0);
  CHECK(Poll1(p.b.rcq, &wc) && wc.status == IBV_WC_SUCCESS && wc.byte_len == 300000);
  CHECK(memcmp(p.b.buf, p.a.buf, 100000) == 0);
  CHECK(memcmp(p.b.buf + 500000, p.a.buf + 100000, 100000) == 0);
  CHECK(memcmp(p.b.buf + 700000, p.a.buf + 200000, 100000) == 0);
  CHECK(Poll1(p.a.scq, &wc) && wc.status == IBV_WC_SUCCESS);
  // unsignaled sends produce no completion
  CHECK(PostRecv(&p.b, 104, 0, 64) == 0);
  CHECK(Post(&p.a, IBV_WR_SEND, 5, 0, 8, 0, 0, 0) == 0);
  CHECK(Poll1(p.b.rcq, &wc) && wc.status == IBV_WC_SUCCESS);
  CHECK(NoCompletion(p.a.scq, 100));
  Free(&p);
  return true;
}

bool TestRdma() {
  Pair p;
  CHECK(Connect(&p, IBV_QPT_RC));
  struct ibv_wc wc;
  for (int i = 0; i < 4096; i++) p.a.buf[i] = char(i ^ 0x5a);
  CHECK(Post(&p.a, IBV_WR_RDMA_WRITE, 1, 0, 4096, Addr(&p.b, 8192), p.b.mr->rkey) == 0);
  CHECK(Poll1(p.a.scq, &wc) && wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_RDMA_WRITE);
  CHECK(memcmp(p.b.buf + 8192, p.a.buf, 4096) == 0);
  CHECK(NoCompletion(p.b.rcq, 50));  // a plain write consumes no receive
  // write with immediate consumes a receive and reports the length
  CHECK(PostRecv(&p.b, 50, 0, 16) == 0);
  CHECK(Post(&p.a, IBV_WR_RDMA_WRITE_WITH_IMM, 2, 0, 1000, Addr(&p.b, 20000), p.b.mr->rkey) == 0);
  CHECK(Poll1(p.b.rcq, &wc) && wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_RECV_RDMA_WITH_IMM);
  CHECK(be32toh(wc.imm_data) == 0xabcd1234 && wc.wr_id == 50);
  CHECK(memcmp(p.b.buf + 20000, p.a.buf, 1000) == 0);
  CHECK(Poll1(p.a.scq, &wc) && wc.status == IBV_WC_SUCCESS);
  // read
  for (int i = 0; i < 5000; i++) p.b.buf[100000 + i] = char(i * 3);
  CHECK(Post(&p.a, IBV_WR_RDMA_READ, 3, 300000, 5000, Addr(&p.b, 100000), p.b.mr->rkey) == 0);
  CHECK(Poll1(p.a.scq, &wc) && wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_RDMA_READ);
  CHECK(wc.byte_len == 5000);
  CHECK(memcmp(p.a.buf + 300000, p.b.buf + 100000, 5000) == 0);
  // atomics
  uint64_t* t = reinterpret_cast<uint64_t*>(p.b.buf + 4096 * 10);
  *t = 40;
  struct ibv_sge sge = {Addr(&p.a, 600000), 8, p.a.mr->lkey};
  struct ibv_send_wr wr, *bad;
  memset(&wr, 0, sizeof wr);
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.send_flags = IBV_SEND_SIGNALED;
  wr.opcode = IBV_WR_ATOMIC_FETCH_AND_ADD;
  wr.wr.atomic.remote_addr = reinterpret_cast<uintptr_t>(t);
  wr.wr.atomic.rkey = p.b.mr->rkey;
  wr.wr.atomic.compare_add = 2;
  wr.wr_id = 4;
  CHECK(ibv_post_send(p.a.qp, &wr, &bad) == 0);
  CHECK(Poll1(p.a.scq, &wc) && wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_FETCH_ADD);
  CHECK(*reinterpret_cast<uint64_t*>(p.a.buf + 600000) == 40 && *t == 42);
  wr.opcode = IBV_WR_ATOMIC_CMP_AND_SWP;
  wr.wr.atomic.compare_add = 41;  // does not match: no swap
  wr.wr.atomic.swap = 7;
  CHECK(ibv_post_send(p.a.qp, &wr, &bad) == 0);
  CHECK(Poll1(p.a.scq, &wc) && wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_COMP_SWAP);
  CHECK(*reinterpret_cast<uint64_t*>(p.a.buf + 600000) == 42 && *t == 42);
  wr.wr.atomic.compare_add = 42;
  CHECK(ibv_post_send(p.a.qp, &wr, &bad) == 0);
  CHECK(Poll1(p.a.scq, &wc) && wc.status == IBV_WC_SUCCESS);
  CHECK(*reinterpret_cast<uint64_t*>(p.a.buf + 600000) == 42 && *t == 7);
  // many fetch-and-adds from both sides stay atomic with respect to each other
  *t = 0;
  for (int i = 0; i < 200; i++) {
    wr.opcode = IBV_WR_ATOMIC_FETCH_AND_ADD;
    wr.wr.atomic.compare_add = 1;
    CHECK(ibv_post_send(p.a.qp, &wr, &bad) == 0);
    CHECK(Poll1(p.a.scq, &wc) && wc.status == IBV_WC_SUCCESS);
  }
  CHECK(*t == 200);
  Free(&p);
  return true;
}

// Runs one request that must fail on the requester with `want`; the QP is then
// in error and the next request is flushed.
bool ExpectRemoteError(Pair* p, enum ibv_wr_opcode op, uint64_t raddr, uint32_t rkey, uint32_t len,
                       enum ibv_wc_status want) {
  struct ibv_wc wc;
  if (op == IBV_WR_ATOMIC_FETCH_AND_ADD) {
    struct ibv_sge sge = {Addr(&p->a, 0), 8, p->a.mr->lkey};
    struct ibv_send_wr wr, *bad;
    memset(&wr, 0, sizeof wr);
    wr.sg_list = &sge;
    wr.num_sge = 1;
    wr.send_flags = IBV_SEND_SIGNALED;
    wr.opcode = op;
    wr.wr.atomic.remote_addr = raddr;
    wr.wr.atomic.rkey = rkey;
    wr.wr.atomic.compare_add = 1;
    CHECK(ibv_post_send(p->a.qp, &wr, &bad) == 0);
  } else {
    CHECK(Post(&p->a, op, 1, 0, len, raddr, rkey) == 0);
  }
  CHECK(Poll1(p->a.scq, &wc));
  if (wc.status != want)
    fprintf(stderr, "  %s: got %s, want %s\n", g_test, ibv_wc_status_str(wc.status), ibv_wc_status_str(want));
  CHECK(wc.status == want);
  CHECK(Post(&p->a, IBV_WR_SEND, 2, 0, 8) == 0);
  CHECK(Poll1(p->a.scq, &wc) && wc.status == IBV_WC_WR_FLUSH_ERR && wc.wr_id == 2);
  return true;
}

bool TestRemoteErrors() {
  {
    Pair p;  // bad rkey: remote access error, and nothing is written
    CHECK(Connect(&p, IBV_QPT_RC));
    memset(p.a.buf, 0x77, 64);
    CHECK(ExpectRemoteError(&p, IBV_WR_RDMA_WRITE, Addr(&p.b, 0), p.b.mr->rkey + 0x1000, 64,
                            IBV_WC_REM_ACCESS_ERR));
    CHECK(p.b.buf[0] == 0);
    Free(&p);
  }
  {
    Pair p;  // out of the MR's bounds
    CHECK(Connect(&p, IBV_QPT_RC));
    CHECK(ExpectRemoteError(&p, IBV_WR_RDMA_WRITE, Addr(&p.b, kBuf - 32), p.b.mr->rkey, 64,
                            IBV_WC_REM_ACCESS_ERR));
    Free(&p);
  }
  {
    Pair p;  // MR without remote write
    CHECK(Connect(&p, IBV_QPT_RC, kAllAccess, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ));
    CHECK(ExpectRemoteError(&p, IBV_WR_RDMA_WRITE, Addr(&p.b, 0), p.b.mr->rkey, 64, IBV_WC_REM_ACCESS_ERR));
    CHECK(p.b.buf[0] == 0);
    Free(&p);
  }
  {
    Pair p;  // MR without remote read
    CHECK(Connect(&p, IBV_QPT_RC, kAllAccess, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE));
    CHECK(ExpectRemoteError(&p, IBV_WR_RDMA_READ, Addr(&p.b, 0), p.b.mr->rkey, 64, IBV_WC_REM_ACCESS_ERR));
    Free(&p);
  }
  {
    Pair p;  // MR without remote atomic
    CHECK(Connect(&p, IBV_QPT_RC, kAllAccess, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE));
    CHECK(ExpectRemoteError(&p, IBV_WR_ATOMIC_FETCH_AND_ADD, Addr(&p.b, 0), p.b.mr->rkey, 8,
                            IBV_WC_REM_ACCESS_ERR));
    Free(&p);
  }
  {
    Pair p;  // receive buffer too small: remote invalid request, local length error there
    CHECK(Connect(&p, IBV_QPT_RC));
    CHECK(PostRecv(&p.b, 9, 0, 16) == 0);
    CHECK(PostRecv(&p.b, 10, 0, 16) == 0);
    bool rxe = RxeDeviation(kRxeLongSend);
    CHECK(ExpectRemoteError(&p, IBV_WR_SEND, 0, 0, 64, rxe ? IBV_WC_REM_OP_ERR : IBV_WC_REM_INV_REQ_ERR));
    struct ibv_wc wc;
    CHECK(Poll1(p.b.rcq, &wc) && wc.wr_id == 9 && wc.status == (rxe ? IBV_WC_LOC_QP_OP_ERR : IBV_WC_LOC_LEN_ERR));
    CHECK(Poll1(p.b.rcq, &wc) && wc.wr_id == 10 && wc.status == IBV_WC_WR_FLUSH_ERR);
    Free(&p);
  }
  return true;
}

bool TestLocalErrors() {
  Pair p;
  CHECK(Connect(&p, IBV_QPT_RC));
  struct ibv_wc wc;
  CHECK(PostRecv(&p.b, 1, 0, 64) == 0);
  // bad lkey: local protection error, then the QP is in error
  CHECK(Post(&p.a, IBV_WR_SEND, 5, 0, 64, 0, 0, IBV_SEND_SIGNALED, p.a.mr->lkey ^ 0x5500) == 0);
  bool rxe = RxeDeviation("a send with an invalid lkey completes with LOC_QP_OP_ERR");
  CHECK(Poll1(p.a.scq, &wc) && wc.wr_id == 5 && wc.status == (rxe ? IBV_WC_LOC_QP_OP_ERR : IBV_WC_LOC_PROT_ERR));
  CHECK(Post(&p.a, IBV_WR_SEND, 6, 0, 8) == 0);
  CHECK(Poll1(p.a.scq, &wc) && wc.wr_id == 6 && wc.status == IBV_WC_WR_FLUSH_ERR);
  Free(&p);
  // sge beyond the local MR
  Pair q;
  CHECK(Connect(&q, IBV_QPT_RC));
  CHECK(PostRecv(&q.b, 1, 0, 64) == 0);
  CHECK(Post(&q.a, IBV_WR_SEND, 7, kBuf - 8, 64) == 0);
  CHECK(Poll1(q.a.scq, &wc) && wc.wr_id == 7 && wc.status == IBV_WC_LOC_PROT_ERR);
  Free(&q);
  return true;
}

bool TestRnrWait() {
  Pair p;
  CHECK(Connect(&p, IBV_QPT_RC));
  struct ibv_wc wc;
  CHECK(Post(&p.a, IBV_WR_SEND, 1, 0, 32) == 0);
  // No receive yet: the sender keeps retrying (rnr_retry 7 = forever).
  CHECK(NoCompletion(p.a.scq, 200));
  CHECK(PostRecv(&p.b, 2, 0, 64) == 0);
  CHECK(Poll1(p.b.rcq, &wc) && wc.status == IBV_WC_SUCCESS && wc.byte_len == 32);
  CHECK(Poll1(p.a.scq, &wc) && wc.status == IBV_WC_SUCCESS);
  Free(&p);
  // rnr_retry 0: the send fails with RNR retry exceeded
  Pair q;
  CHECK(Connect(&q, IBV_QPT_RC, kAllAccess, kAllAccess, 0));
  CHECK(Post(&q.a, IBV_WR_SEND, 3, 0, 32) == 0);
  CHECK(Poll1(q.a.scq, &wc, 5000) && wc.status == IBV_WC_RNR_RETRY_EXC_ERR);
  Free(&q);
  return true;
}

bool WaitReadable(int fd, int ms) {
  struct pollfd pfd = {fd, POLLIN, 0};
  return poll(&pfd, 1, ms) == 1 && (pfd.revents & POLLIN);
}

bool TestCompletionChannel() {
  Pair p;
  CHECK(Connect(&p, IBV_QPT_RC));
  struct ibv_wc wc;
  CHECK(ibv_req_notify_cq(p.b.rcq, 0) == 0);
  CHECK(!WaitReadable(p.b.ch->fd, 50));
  CHECK(PostRecv(&p.b, 1, 0, 64) == 0);
  CHECK(Post(&p.a, IBV_WR_SEND, 1, 0, 8) == 0);
  CHECK(WaitReadable(p.b.ch->fd, 3000));
  struct ibv_cq* cq;
  void* cctx;
  CHECK(ibv_get_cq_event(p.b.ch, &cq, &cctx) == 0 && cq == p.b.rcq);
  ibv_ack_cq_events(cq, 1);
  CHECK(Poll1(p.b.rcq, &wc) && wc.status == IBV_WC_SUCCESS);
  CHECK(Poll1(p.a.scq, &wc) && wc.status == IBV_WC_SUCCESS);
  // not armed: no event
  CHECK(PostRecv(&p.b, 2, 0, 64) == 0);
  CHECK(Post(&p.a, IBV_WR_SEND, 2, 0, 8) == 0);
  CHECK(Poll1(p.b.rcq, &wc) && wc.status == IBV_WC_SUCCESS);
  CHECK(Poll1(p.a.scq, &wc));
  CHECK(!WaitReadable(p.b.ch->fd, 100));
  // solicited only: an unsolicited send does not wake, a solicited one does
  CHECK(ibv_req_notify_cq(p.b.rcq, 1) == 0);
  CHECK(PostRecv(&p.b, 3, 0, 64) == 0);
  CHECK(PostRecv(&p.b, 4, 0, 64) == 0);
  CHECK(Post(&p.a, IBV_WR_SEND, 3, 0, 8) == 0);
  CHECK(Poll1(p.a.scq, &wc));
  CHECK(!WaitReadable(p.b.ch->fd, 200));
  CHECK(Post(&p.a, IBV_WR_SEND, 4, 0, 8, 0, 0, IBV_SEND_SIGNALED | IBV_SEND_SOLICITED) == 0);
  CHECK(WaitReadable(p.b.ch->fd, 3000));
  CHECK(ibv_get_cq_event(p.b.ch, &cq, &cctx) == 0 && cq == p.b.rcq);
  ibv_ack_cq_events(cq, 1);
  CHECK(Poll1(p.b.rcq, &wc) && wc.wr_id == 3);
  CHECK(Poll1(p.b.rcq, &wc) && wc.wr_id == 4 && (wc.wc_flags & IBV_WC_WITH_IMM) == 0);
  CHECK(Poll1(p.a.scq, &wc));
  Free(&p);
  return true;
}

bool TestCqOverrun() {
  Pair p;
  CHECK(Connect(&p, IBV_QPT_RC));
  struct ibv_cq* small = ibv_create_cq(ctx, 1, nullptr, nullptr, 0);
  CHECK(small);
  int n = small->cqe + 2;
  struct ibv_qp_init_attr ia;
  memset(&ia, 0, sizeof ia);
  ia.send_cq = small;
  ia.recv_cq = small;
  ia.qp_type = IBV_QPT_RC;
  ia.cap.max_send_wr = uint32_t(n);
  ia.cap.max_recv_wr = 1;
  ia.cap.max_send_sge = 1;
  ia.cap.max_recv_sge = 1;
  struct ibv_qp* q = ibv_create_qp(pd, &ia);
  CHECK(q);
  CHECK(ToInit(q, kAllAccess) == 0);
  // q in error: each posted send is flushed into the small CQ until it overruns
  struct ibv_qp_attr a;
  memset(&a, 0, sizeof a);
  a.qp_state = IBV_QPS_ERR;
  CHECK(ibv_modify_qp(q, &a, IBV_QP_STATE) == 0);
  for (int i = 0; i < n; i++) {
    struct ibv_sge sge = {Addr(&p.a, 0), 8, p.a.mr->lkey};
    struct ibv_send_wr wr, *bad;
    memset(&wr, 0, sizeof wr);
    wr.sg_list = &sge;
    wr.num_sge = 1;
    wr.opcode = IBV_WR_SEND;
    wr.send_flags = IBV_SEND_SIGNALED;
    ibv_post_send(q, &wr, &bad);
  }
  CHECK(WaitReadable(ctx->async_fd, 3000));
  struct ibv_async_event ev;
  CHECK(ibv_get_async_event(ctx, &ev) == 0);
  CHECK(ev.event_type == IBV_EVENT_CQ_ERR && ev.element.cq == small);
  ibv_ack_async_event(&ev);
  ibv_destroy_qp(q);
  ibv_destroy_cq(small);
  Free(&p);
  return true;
}

bool TestUc() {
  Pair p;
  CHECK(Connect(&p, IBV_QPT_UC));
  struct ibv_wc wc;
  memcpy(p.a.buf, "uc-data", 8);
  CHECK(Post(&p.a, IBV_WR_RDMA_WRITE, 1, 0, 8, Addr(&p.b, 4000), p.b.mr->rkey) == 0);
  CHECK(Poll1(p.a.scq, &wc) && wc.status == IBV_WC_SUCCESS);
  CHECK(PostRecv(&p.b, 2, 0, 64) == 0);
  CHECK(Post(&p.a, IBV_WR_SEND, 3, 0, 8) == 0);
  CHECK(Poll1(p.b.rcq, &wc) && wc.status == IBV_WC_SUCCESS && wc.byte_len == 8);
  CHECK(memcmp(p.b.buf + 4000, "uc-data", 8) == 0 && memcmp(p.b.buf, "uc-data", 8) == 0);
  CHECK(Poll1(p.a.scq, &wc) && wc.status == IBV_WC_SUCCESS);
  // UC has no reads. Two outcomes are allowed: ibv_post_send refuses the WR, or
  // it is completed with IBV_WC_LOC_QP_OP_ERR (ibv_poll_cq(3): "an opcode which
  // isn't supported by the transport type of the QP"), after which the QP is in
  // error like after any completion error. Either way nothing is read.
  memset(p.b.buf + 8192, 0x5c, 8);
  if (Post(&p.a, IBV_WR_RDMA_READ, 4, 8192, 8, Addr(&p.b, 8192), p.b.mr->rkey) == 0) {
    CHECK(Poll1(p.a.scq, &wc) && wc.wr_id == 4 && wc.status == IBV_WC_LOC_QP_OP_ERR);
    CHECK(Post(&p.a, IBV_WR_SEND, 5, 0, 8) == 0);
    CHECK(Poll1(p.a.scq, &wc) && wc.wr_id == 5 && wc.status == IBV_WC_WR_FLUSH_ERR);
  } else {  // refused: nothing happened, the QP still works
    CHECK(NoCompletion(p.a.scq, 100));
    CHECK(PostRecv(&p.b, 6, 0, 64) == 0);
    CHECK(Post(&p.a, IBV_WR_SEND, 6, 0, 8) == 0);
    CHECK(Poll1(p.a.scq, &wc) && wc.wr_id == 6 && wc.status == IBV_WC_SUCCESS);
    CHECK(Poll1(p.b.rcq, &wc) && wc.wr_id == 6 && wc.status == IBV_WC_SUCCESS);
  }
  CHECK(p.a.buf[8192] == 0);
  Free(&p);
  return true;
}

bool TestUd() {
  Side a, b;
  CHECK(MakeSide(&a, IBV_QPT_UD, kAllAccess) && MakeSide(&b, IBV_QPT_UD, kAllAccess));
  CHECK(ToInit(a.qp, 0) == 0 && ToInit(b.qp, 0) == 0);
  CHECK(ToRtr(a.qp, 0) == 0 && ToRtr(b.qp, 0) == 0);
  CHECK(ToRts(a.qp) == 0 && ToRts(b.qp) == 0);
  struct ibv_ah_attr av;
  FillAv(&av);
  if (!eth) {
    av.is_global = 1;  // use a GRH on IB too, so that it is delivered
    av.grh.dgid = my_gid;
    av.grh.sgid_index = 0;
    av.grh.hop_limit = 1;
  }
  struct ibv_ah* ah = ibv_create_ah(pd, &av);
  CHECK(ah);
  struct ibv_wc wc;
  CHECK(PostRecv(&b, 1, 0, 40 + 256) == 0);
  memcpy(a.buf, "datagram!", 10);
  struct ibv_sge sge = {Addr(&a, 0), 10, a.mr->lkey};
  struct ibv_send_wr wr, *bad;
  memset(&wr, 0, sizeof wr);
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = IBV_WR_SEND_WITH_IMM;
  wr.imm_data = htobe32(77);
  wr.send_flags = IBV_SEND_SIGNALED;
  wr.wr.ud.ah = ah;
  wr.wr.ud.remote_qpn = b.qp->qp_num;
  wr.wr.ud.remote_qkey = 0x11111111;
  CHECK(ibv_post_send(a.qp, &wr, &bad) == 0);
  CHECK(Poll1(a.scq, &wc) && wc.status == IBV_WC_SUCCESS);
  CHECK(Poll1(b.rcq, &wc) && wc.status == IBV_WC_SUCCESS && wc.wr_id == 1);
  CHECK(wc.byte_len == 10 + 40 && (wc.wc_flags & IBV_WC_GRH) && wc.src_qp == a.qp->qp_num);
  CHECK((wc.wc_flags & IBV_WC_WITH_IMM) && be32toh(wc.imm_data) == 77);
  CHECK(memcmp(b.buf + 40, "datagram!", 10) == 0);
  // the sender can be answered from the completion
  struct ibv_ah* back = ibv_create_ah_from_wc(pd, &wc, reinterpret_cast<struct ibv_grh*>(b.buf), 1);
  CHECK(back);
  ibv_destroy_ah(back);
  // wrong qkey: dropped
  CHECK(PostRecv(&b, 2, 0, 40 + 256) == 0);
  wr.wr.ud.remote_qkey = 0x2222;
  CHECK(ibv_post_send(a.qp, &wr, &bad) == 0);
  CHECK(Poll1(a.scq, &wc) && wc.status == IBV_WC_SUCCESS);
  CHECK(NoCompletion(b.rcq, 200));
  // the right qkey again: delivered into that receive
  wr.wr.ud.remote_qkey = 0x11111111;
  CHECK(ibv_post_send(a.qp, &wr, &bad) == 0);
  CHECK(Poll1(a.scq, &wc) && wc.status == IBV_WC_SUCCESS);
  CHECK(Poll1(b.rcq, &wc) && wc.status == IBV_WC_SUCCESS && wc.wr_id == 2 && wc.byte_len == 10 + 40);
  // Larger than the port's MTU: IBA C10-93.1.1, "the CI shall not emit any
  // packets for this message. Further, the CI shall not generate an error due to
  // this condition." The receive (room for two MTUs) stays posted, so the next
  // datagram lands in it.
  struct ibv_port_attr pa;
  CHECK(ibv_query_port(ctx, 1, &pa) == 0);
  uint32_t mtu = 128u << pa.active_mtu;
  CHECK(PostRecv(&b, 3, 8192, 40 + 2 * mtu) == 0);
  sge.length = mtu + 1;
  CHECK(ibv_post_send(a.qp, &wr, &bad) == 0);
  CHECK(Poll1(a.scq, &wc) && wc.status == IBV_WC_SUCCESS);
  CHECK(NoCompletion(b.rcq, 300));
  sge.length = 10;
  CHECK(ibv_post_send(a.qp, &wr, &bad) == 0);
  CHECK(Poll1(a.scq, &wc) && wc.status == IBV_WC_SUCCESS);
  CHECK(Poll1(b.rcq, &wc) && wc.status == IBV_WC_SUCCESS && wc.wr_id == 3 && wc.byte_len == 10 + 40);
  ibv_destroy_ah(ah);
  FreeSide(&a);
  FreeSide(&b);
  return true;
}

bool TestSrq() {
  struct ibv_srq_init_attr sa;
  memset(&sa, 0, sizeof sa);
  sa.attr.max_wr = 16;
  sa.attr.max_sge = 1;
  struct ibv_srq* srq = ibv_create_srq(pd, &sa);
  CHECK(srq);
  Side a, b1, b2;
  CHECK(MakeSide(&a, IBV_QPT_RC, kAllAccess));
  CHECK(MakeSide(&b1, IBV_QPT_RC, kAllAccess, srq) && MakeSide(&b2, IBV_QPT_RC, kAllAccess, srq));
  Side a2;
  CHECK(MakeSide(&a2, IBV_QPT_RC, kAllAccess));
  CHECK(ToInit(a.qp, kAllAccess) == 0 && ToInit(b1.qp, kAllAccess) == 0);
  CHECK(ToInit(a2.qp, kAllAccess) == 0 && ToInit(b2.qp, kAllAccess) == 0);
  CHECK(ToRtr(a.qp, b1.qp->qp_num) == 0 && ToRtr(b1.qp, a.qp->qp_num) == 0);
  CHECK(ToRtr(a2.qp, b2.qp->qp_num) == 0 && ToRtr(b2.qp, a2.qp->qp_num) == 0);
  CHECK(ToRts(a.qp) == 0 && ToRts(b1.qp) == 0 && ToRts(a2.qp) == 0 && ToRts(b2.qp) == 0);
  for (int i = 0; i < 4; i++) {
    struct ibv_sge sge = {Addr(&b1, size_t(i) * 256), 256, b1.mr->lkey};
    struct ibv_recv_wr wr, *bad;
    memset(&wr, 0, sizeof wr);
    wr.wr_id = uint64_t(100 + i);
    wr.sg_list = &sge;
    wr.num_sge = 1;
    CHECK(ibv_post_srq_recv(srq, &wr, &bad) == 0);
  }
  // arm the limit: fewer than 3 left raises the event
  struct ibv_srq_attr lim;
  lim.srq_limit = 3;
  CHECK(ibv_modify_srq(srq, &lim, IBV_SRQ_LIMIT) == 0);
  struct ibv_wc wc;
  CHECK(Post(&a, IBV_WR_SEND, 1, 0, 16) == 0);
  CHECK(Poll1(b1.rcq, &wc) && wc.status == IBV_WC_SUCCESS && wc.wr_id == 100 && wc.qp_num == b1.qp->qp_num);
  CHECK(Post(&a2, IBV_WR_SEND, 2, 0, 16) == 0);
  CHECK(Poll1(b2.rcq, &wc) && wc.status == IBV_WC_SUCCESS && wc.wr_id == 101 && wc.qp_num == b2.qp->qp_num);
  CHECK(WaitReadable(ctx->async_fd, 3000));
  struct ibv_async_event ev;
  CHECK(ibv_get_async_event(ctx, &ev) == 0 && ev.event_type == IBV_EVENT_SRQ_LIMIT_REACHED && ev.element.srq == srq);
  ibv_ack_async_event(&ev);
  CHECK(Poll1(a.scq, &wc) && Poll1(a2.scq, &wc));
  FreeSide(&a);
  FreeSide(&a2);
  FreeSide(&b1);
  FreeSide(&b2);
  CHECK(ibv_destroy_srq(srq) == 0);
  return true;
}

bool TestExtendedVerbs() {
  Side a, b;
  CHECK(MakeSide(&b, IBV_QPT_RC, kAllAccess));
  // a: created with the extended verbs
  struct ibv_cq_init_attr_ex ca;
  memset(&ca, 0, sizeof ca);
  ca.cqe = 32;
  ca.wc_flags = IBV_WC_EX_WITH_BYTE_LEN | IBV_WC_EX_WITH_QP_NUM;
  struct ibv_cq_ex* cqx = ibv_create_cq_ex(ctx, &ca);
  CHECK(cqx);
  a.scq = ibv_cq_ex_to_cq(cqx);
  a.buf = static_cast<char*>(aligned_alloc(4096, kBuf));
  a.mr = ibv_reg_mr(pd, a.buf, kBuf, kAllAccess);
  struct ibv_qp_init_attr_ex qa;
  memset(&qa, 0, sizeof qa);
  qa.send_cq = a.scq;
  qa.recv_cq = a.scq;
  qa.qp_type = IBV_QPT_RC;
  qa.cap.max_send_wr = 16;
  qa.cap.max_recv_wr = 16;
  qa.cap.max_send_sge = 1;
  qa.cap.max_recv_sge = 1;
  qa.comp_mask = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;
  qa.pd = pd;
  qa.send_ops_flags = IBV_QP_EX_WITH_RDMA_WRITE | IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_RDMA_READ;
  a.qp = ibv_create_qp_ex(ctx, &qa);
  CHECK(a.qp);
  struct ibv_qp_ex* qx = ibv_qp_to_qp_ex(a.qp);
  CHECK(qx);
  CHECK(ToInit(a.qp, kAllAccess) == 0 && ToInit(b.qp, kAllAccess) == 0);
  CHECK(ToRtr(a.qp, b.qp->qp_num) == 0 && ToRtr(b.qp, a.qp->qp_num) == 0);
  CHECK(ToRts(a.qp) == 0 && ToRts(b.qp) == 0);
  memcpy(a.buf, "via ibv_wr_*", 13);
  ibv_wr_start(qx);
  qx->wr_id = 11;
  qx->wr_flags = IBV_SEND_SIGNALED;
  ibv_wr_rdma_write(qx, b.mr->rkey, Addr(&b, 512));
  ibv_wr_set_sge(qx, a.mr->lkey, Addr(&a, 0), 13);
  qx->wr_id = 12;
  ibv_wr_send(qx);
  ibv_wr_set_sge(qx, a.mr->lkey, Addr(&a, 0), 13);
  CHECK(PostRecv(&b, 5, 0, 64) == 0);
  CHECK(ibv_wr_complete(qx) == 0);
  struct ibv_wc wc;
  CHECK(Poll1(b.rcq, &wc) && wc.status == IBV_WC_SUCCESS && wc.byte_len == 13);
  CHECK(memcmp(b.buf + 512, "via ibv_wr_*", 13) == 0 && memcmp(b.buf, "via ibv_wr_*", 13) == 0);
  // both completions through start/next/end_poll, in order
  bool rxe = RxeDeviation(
      "rdma-core < 55: ibv_end_poll after ibv_next_poll gave ENOENT consumes one entry too many; "
      "one entry per ibv_start_poll/ibv_end_poll instead");
  int seen = 0;
  uint64_t end = NowMs() + 3000;
  while (seen < 2 && NowMs() < end) {
    struct ibv_poll_cq_attr pa = {0};
    if (ibv_start_poll(cqx, &pa) != 0) {
      usleep(100);
      continue;
    }
    do {
      if (cqx->status != IBV_WC_SUCCESS) break;
      if (seen == 0 && cqx->wr_id == 11 && ibv_wc_read_opcode(cqx) == IBV_WC_RDMA_WRITE) seen++;
      else if (seen == 1 && cqx->wr_id == 12 && ibv_wc_read_opcode(cqx) == IBV_WC_SEND &&
               ibv_wc_read_qp_num(cqx) == a.qp->qp_num)
        seen++;
      else break;
    } while (!rxe && ibv_next_poll(cqx) == 0);
    ibv_end_poll(cqx);
  }
  CHECK(seen == 2);
  struct ibv_poll_cq_attr pa = {0};
  CHECK(ibv_start_poll(cqx, &pa) == ENOENT);
  // an aborted batch posts nothing: no completion, nothing reaches the peer, and
  // the next batch sends only its own request
  CHECK(PostRecv(&b, 6, 4096, 64) == 0);
  memcpy(a.buf + 64, "aborted", 8);
  ibv_wr_start(qx);
  qx->wr_id = 13;
  ibv_wr_send(qx);
  ibv_wr_set_sge(qx, a.mr->lkey, Addr(&a, 64), 8);
  ibv_wr_abort(qx);
  CHECK(NoCompletion(a.scq, 100));
  CHECK(NoCompletion(b.rcq, 100));
  memcpy(a.buf + 128, "after abort", 12);
  ibv_wr_start(qx);
  qx->wr_id = 14;
  ibv_wr_send(qx);
  ibv_wr_set_sge(qx, a.mr->lkey, Addr(&a, 128), 12);
  CHECK(ibv_wr_complete(qx) == 0);
  CHECK(Poll1(b.rcq, &wc) && wc.status == IBV_WC_SUCCESS && wc.wr_id == 6 && wc.byte_len == 12);
  CHECK(memcmp(b.buf + 4096, "after abort", 12) == 0);
  CHECK(Poll1(a.scq, &wc) && wc.status == IBV_WC_SUCCESS && wc.wr_id == 14);
  CHECK(NoCompletion(a.scq, 50) && NoCompletion(b.rcq, 50));
  FreeSide(&a);
  FreeSide(&b);
  return true;
}


// ------------------------------------------------- two processes (-l / -c) --
// The responder side ("b") lives in the -l process, the requester side ("a") in
// the -c process; the checks on each side are the ones the single-process groups
// make, split where the data or the completion is.
bool g_listener = false;
int g_peer = -1;
bool g_peer_rxe = false;  // the peer's device is rxe and the peer expects its deviations
uint32_t g_group = 0;      // the group's number, part of every step's tag

struct Wire {
  uint32_t tag, qpn, rkey, lid, rxe;
  uint64_t addr;
  uint8_t gid[16];
};

bool FullIo(bool out, void* p, size_t n) {
  char* c = static_cast<char*>(p);
  while (n) {
    struct pollfd pfd = {g_peer, short(out ? POLLOUT : POLLIN), 0};
    if (poll(&pfd, 1, 60000) != 1) return false;  // the peer is stuck or gone
    ssize_t r = out ? send(g_peer, c, n, MSG_NOSIGNAL) : recv(g_peer, c, n, 0);
    if (r <= 0) return false;
    c += r;
    n -= size_t(r);
  }
  return true;
}

// Exchanges one message; both sides must send the same tag (a barrier).
bool Exchange(uint32_t tag, Wire* mine, Wire* theirs) {
  Wire m = mine ? *mine : Wire();
  tag |= g_group << 16;
  m.tag = tag;
  Wire t;
  if (!FullIo(true, &m, sizeof m) || !FullIo(false, &t, sizeof t)) {
    fprintf(stderr, "  %s: the peer process went away at step %u\n", g_test, tag & 0xffff);
    return false;
  }
  if (t.tag != tag) {
    fprintf(stderr, "  %s: the peer is at group %u step %u, we are at group %u step %u\n", g_test, t.tag >> 16,
            t.tag & 0xffff, tag >> 16, tag & 0xffff);
    return false;
  }
  if (theirs) *theirs = t;
  return true;
}
bool Sync(uint32_t tag) { return Exchange(tag, nullptr, nullptr); }

// One RC QP connected to the peer's; `peer` gets the peer's buffer address and rkey.
bool ConnectRemote(Side* s, int mr_access, Wire* peer, int rnr = 7) {
  if (!MakeSide(s, IBV_QPT_RC, mr_access) || ToInit(s->qp, kAllAccess)) return false;
  Wire m;
  memset(&m, 0, sizeof m);
  m.qpn = s->qp->qp_num;
  m.rkey = s->mr->rkey;
  m.addr = Addr(s, 0);
  if (!Exchange(100, &m, peer)) return false;
  if (ToRtr(s->qp, peer->qpn) || ToRts(s->qp, rnr)) return false;
  return Sync(101);  // both in RTS before any request travels
}

char Pat(size_t i, int seed) { return char(i * size_t(seed) + 1); }

bool RemoteData() {
  Side s;
  Wire peer;
  CHECK(ConnectRemote(&s, kAllAccess, &peer));
  struct ibv_wc wc;
  uint64_t* counter = reinterpret_cast<uint64_t*>(s.buf + 40960);
  if (g_listener) {
    CHECK(PostRecv(&s, 100, 0, 4096) == 0);
    for (size_t i = 0; i < 5000; i++) s.buf[100000 + i] = Pat(i, 3);
    *counter = 0;
    CHECK(Sync(1));
    CHECK(Poll1(s.rcq, &wc, 10000) && wc.status == IBV_WC_SUCCESS && wc.wr_id == 100);
    CHECK(wc.opcode == IBV_WC_RECV && wc.byte_len == 100 && (wc.wc_flags & IBV_WC_WITH_IMM));
    CHECK(be32toh(wc.imm_data) == 0xabcd1234 && wc.qp_num == s.qp->qp_num);
    for (size_t i = 0; i < 100; i++) CHECK(s.buf[i] == Pat(i, 7));
    CHECK(Sync(2));  // the requester wrote, read and added
    for (size_t i = 0; i < 4096; i++) CHECK(s.buf[8192 + i] == Pat(i, 5));
    CHECK(*counter == 200);
    CHECK(NoCompletion(s.rcq, 50));  // writes, reads and atomics consume no receive
  } else {
    for (size_t i = 0; i < 4096; i++) s.buf[i] = Pat(i, 7);
    CHECK(Sync(1));
    CHECK(Post(&s, IBV_WR_SEND_WITH_IMM, 1, 0, 100) == 0);
    CHECK(Poll1(s.scq, &wc, 10000) && wc.status == IBV_WC_SUCCESS && wc.wr_id == 1 && wc.opcode == IBV_WC_SEND);
    for (size_t i = 0; i < 4096; i++) s.buf[i] = Pat(i, 5);
    CHECK(Post(&s, IBV_WR_RDMA_WRITE, 2, 0, 4096, peer.addr + 8192, peer.rkey) == 0);
    CHECK(Poll1(s.scq, &wc, 10000) && wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_RDMA_WRITE);
    CHECK(Post(&s, IBV_WR_RDMA_READ, 3, 300000, 5000, peer.addr + 100000, peer.rkey) == 0);
    CHECK(Poll1(s.scq, &wc, 10000) && wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_RDMA_READ);
    CHECK(wc.byte_len == 5000);
    for (size_t i = 0; i < 5000; i++) CHECK(s.buf[300000 + i] == Pat(i, 3));
    struct ibv_sge sge = {Addr(&s, 600000), 8, s.mr->lkey};
    struct ibv_send_wr wr, *bad;
    memset(&wr, 0, sizeof wr);
    wr.sg_list = &sge;
    wr.num_sge = 1;
    wr.send_flags = IBV_SEND_SIGNALED;
    wr.opcode = IBV_WR_ATOMIC_FETCH_AND_ADD;
    wr.wr.atomic.remote_addr = peer.addr + 40960;
    wr.wr.atomic.rkey = peer.rkey;
    wr.wr.atomic.compare_add = 1;
    for (uint64_t i = 0; i < 200; i++) {
      CHECK(ibv_post_send(s.qp, &wr, &bad) == 0);
      CHECK(Poll1(s.scq, &wc, 10000) && wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_FETCH_ADD);
      CHECK(*reinterpret_cast<uint64_t*>(s.buf + 600000) == i);
    }
    CHECK(Sync(2));
  }
  CHECK(Sync(3));
  FreeSide(&s);
  return true;
}

// The requester's request fails with `want` (the remote side's verdict); its QP
// is then in error and the next request is flushed. The responder's memory is
// checked untouched by the caller.
bool RemoteRequestFails(Side* s, enum ibv_wr_opcode op, uint64_t raddr, uint32_t rkey, uint32_t len,
                        enum ibv_wc_status want) {
  struct ibv_wc wc;
  memset(s->buf, 0x77, len);
  CHECK(Post(s, op, 1, 0, len, raddr, rkey) == 0);
  CHECK(Poll1(s->scq, &wc, 10000) && wc.wr_id == 1);
  if (wc.status != want)
    fprintf(stderr, "  %s: got %s, want %s\n", g_test, ibv_wc_status_str(wc.status), ibv_wc_status_str(want));
  CHECK(wc.status == want);
  CHECK(Post(s, IBV_WR_SEND, 2, 0, 8) == 0);
  CHECK(Poll1(s->scq, &wc) && wc.status == IBV_WC_WR_FLUSH_ERR && wc.wr_id == 2);
  return true;
}

bool RemoteErrors() {
  struct ibv_wc wc;
  {
    Side s;  // bad rkey: remote access error, and nothing is written
    Wire peer;
    CHECK(ConnectRemote(&s, kAllAccess, &peer));
    if (!g_listener)
      CHECK(RemoteRequestFails(&s, IBV_WR_RDMA_WRITE, peer.addr, peer.rkey + 0x1000, 64, IBV_WC_REM_ACCESS_ERR));
    CHECK(Sync(1));
    if (g_listener) CHECK(s.buf[0] == 0);
    FreeSide(&s);
  }
  {
    Side s;  // responder's MR without remote write
    Wire peer;
    CHECK(ConnectRemote(&s, g_listener ? IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ : kAllAccess, &peer));
    if (!g_listener)
      CHECK(RemoteRequestFails(&s, IBV_WR_RDMA_WRITE, peer.addr, peer.rkey, 64, IBV_WC_REM_ACCESS_ERR));
    CHECK(Sync(2));
    if (g_listener) CHECK(s.buf[0] == 0);
    FreeSide(&s);
  }
  {
    Side s;  // responder's MR without remote read
    Wire peer;
    CHECK(ConnectRemote(&s, g_listener ? IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE : kAllAccess, &peer));
    if (!g_listener)
      CHECK(RemoteRequestFails(&s, IBV_WR_RDMA_READ, peer.addr, peer.rkey, 64, IBV_WC_REM_ACCESS_ERR));
    CHECK(Sync(3));
    FreeSide(&s);
  }
  {
    Side s;  // receive too small: remote invalid request, local length error there
    Wire peer;
    CHECK(ConnectRemote(&s, kAllAccess, &peer));
    if (g_listener) {
      CHECK(PostRecv(&s, 9, 0, 16) == 0);
      CHECK(PostRecv(&s, 10, 0, 16) == 0);
    }
    CHECK(Sync(4));
    // the verdict is the responder's device's
    bool rxe = RxeDeviationOn(g_listener ? g_rxe : g_peer_rxe, kRxeLongSend);
    if (!g_listener)
      CHECK(RemoteRequestFails(&s, IBV_WR_SEND, 0, 0, 64, rxe ? IBV_WC_REM_OP_ERR : IBV_WC_REM_INV_REQ_ERR));
    if (g_listener) {
      CHECK(Poll1(s.rcq, &wc, 10000) && wc.wr_id == 9 &&
            wc.status == (rxe ? IBV_WC_LOC_QP_OP_ERR : IBV_WC_LOC_LEN_ERR));
      CHECK(Poll1(s.rcq, &wc) && wc.wr_id == 10 && wc.status == IBV_WC_WR_FLUSH_ERR);
    }
    CHECK(Sync(5));
    FreeSide(&s);
  }
  return true;
}

bool RemoteRnr() {
  struct ibv_wc wc;
  {
    Side s;  // rnr_retry 7: the sender waits until the receive is posted
    Wire peer;
    CHECK(ConnectRemote(&s, kAllAccess, &peer));
    if (g_listener) {
      CHECK(Sync(1));  // the send is on its way, unanswered
      usleep(200000);
      CHECK(PostRecv(&s, 2, 0, 64) == 0);
      CHECK(Poll1(s.rcq, &wc, 10000) && wc.status == IBV_WC_SUCCESS && wc.byte_len == 32);
    } else {
      CHECK(Post(&s, IBV_WR_SEND, 1, 0, 32) == 0);
      CHECK(Sync(1));
      CHECK(Poll1(s.scq, &wc, 10000) && wc.status == IBV_WC_SUCCESS);
    }
    CHECK(Sync(2));
    FreeSide(&s);
  }
  {
    Side s;  // rnr_retry 0: RNR retry exceeded, and the QP is in error
    Wire peer;
    CHECK(ConnectRemote(&s, kAllAccess, &peer, 0));
    if (!g_listener) CHECK(RemoteRequestFails(&s, IBV_WR_SEND, 0, 0, 32, IBV_WC_RNR_RETRY_EXC_ERR));
    CHECK(Sync(3));
    if (g_listener) CHECK(NoCompletion(s.rcq, 50));
    FreeSide(&s);
  }
  return true;
}

int ListenOrConnect(const char* host, const char* port_s) {
  struct addrinfo hints, *ai = nullptr;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = host ? 0 : AI_PASSIVE;
  if (getaddrinfo(host, port_s, &hints, &ai) != 0) {
    fprintf(stderr, "cannot resolve %s\n", host ? host : "the listening address");
    return -1;
  }
  int one = 1, fd = -1;
  if (!host) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, ai->ai_addr, ai->ai_addrlen) != 0 || listen(l, 1) != 0) {
      fprintf(stderr, "cannot listen on port %s: %s\n", port_s, strerror(errno));
      freeaddrinfo(ai);
      return -1;
    }
    struct sockaddr_in sin;
    socklen_t sl = sizeof sin;
    getsockname(l, reinterpret_cast<struct sockaddr*>(&sin), &sl);
    printf("listening on port %u\n", ntohs(sin.sin_port));  // -p 0: the one the kernel chose
    fflush(stdout);
    struct pollfd pfd = {l, POLLIN, 0};
    if (poll(&pfd, 1, 120000) == 1) fd = accept(l, nullptr, nullptr);
    close(l);
  } else {
    // The listener may not be up yet: try for up to a minute.
    for (int i = 0; i < 600 && fd < 0; i++) {
      fd = socket(AF_INET, SOCK_STREAM, 0);
      if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        close(fd);
        fd = -1;
        usleep(100000);
      }
    }
  }
  freeaddrinfo(ai);
  if (fd < 0) fprintf(stderr, "no peer process on port %s\n", port_s);
  else setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

struct Test {
  const char* name;
  bool (*fn)();
};
const Test kTests[] = {
    {"device", TestDevice},
    {"mr_rules", TestMrRules},
    {"qp_state_machine", TestStateMachine},
    {"rc_send_recv", TestSendRecv},
    {"rc_rdma_atomics", TestRdma},
    {"rc_remote_errors", TestRemoteErrors},
    {"rc_local_errors", TestLocalErrors},
    {"rc_rnr", TestRnrWait},
    {"completion_channel", TestCompletionChannel},
    {"cq_overrun", TestCqOverrun},
    {"uc", TestUc},
    {"ud", TestUd},
    {"srq", TestSrq},
    {"extended_verbs", TestExtendedVerbs},
};
const Test kRemoteTests[] = {
    {"remote_rc_data", RemoteData},
    {"remote_errors", RemoteErrors},
    {"remote_rnr", RemoteRnr},
};

}  // namespace

int main(int argc, char** argv) {
  const char* devname = nullptr;
  const char* only = nullptr;
  bool strict = false;
  bool listener = false;
  const char* peer_host = nullptr;
  const char* port_s = "18600";
  int opt;
  while ((opt = getopt(argc, argv, "d:g:t:Slc:p:")) != -1) {
    if (opt == 'd') devname = optarg;
    else if (opt == 'g') gid_index = atoi(optarg);
    else if (opt == 't') only = optarg;
    else if (opt == 'S') strict = true;
    else if (opt == 'l') listener = true;
    else if (opt == 'c') peer_host = optarg;
    else if (opt == 'p') port_s = optarg;
    else {
      fprintf(stderr, "usage: %s [-d DEVICE] [-g GID_INDEX] [-t TEST] [-S] [-l | -c HOST] [-p PORT]\n", argv[0]);
      return 2;
    }
  }
  int n = 0;
  struct ibv_device** list = ibv_get_device_list(&n);
  if (!list || n == 0) {
    fprintf(stderr, "no RDMA device\n");
    return 1;
  }
  struct ibv_device* dev = list[0];
  for (int i = 0; devname && i < n; i++)
    if (!strcmp(ibv_get_device_name(list[i]), devname)) dev = list[i];
  ctx = ibv_open_device(dev);
  if (!ctx) {
    fprintf(stderr, "cannot open %s\n", ibv_get_device_name(dev));
    return 1;
  }
  pd = ibv_alloc_pd(ctx);
  ibv_query_port(ctx, 1, &port);
  eth = port.link_layer == IBV_LINK_LAYER_ETHERNET;
  if (!eth) gid_index = 0;
  ibv_query_gid(ctx, 1, gid_index, &my_gid);
  struct ibv_device_attr da;
  if (ibv_query_device(ctx, &da) == 0 && da.vendor_id == kRxeVendorId && !strict) g_rxe = true;
  printf("device %s, %s link layer%s\n", ibv_get_device_name(dev), eth ? "Ethernet" : "InfiniBand",
         g_rxe ? ", rxe: its known deviations expected (-S: none)" : "");
  dest_gid = my_gid;
  dest_lid = port.lid;
  bool remote = listener || peer_host;
  if (remote) {
    g_listener = listener;
    g_test = "connect";
    g_peer = ListenOrConnect(listener ? nullptr : peer_host, port_s);
    Wire m, t;
    memset(&m, 0, sizeof m);
    memcpy(m.gid, my_gid.raw, 16);
    m.lid = port.lid;
    m.rxe = g_rxe;
    if (g_peer < 0 || !Exchange(0, &m, &t)) return 1;
    g_peer_rxe = t.rxe != 0;
    memcpy(dest_gid.raw, t.gid, 16);
    dest_lid = uint16_t(t.lid);
    char txt[INET6_ADDRSTRLEN];
    printf("%s side; peer GID %s, LID %u\n", listener ? "responder" : "requester",
           inet_ntop(AF_INET6, dest_gid.raw, txt, sizeof txt), dest_lid);
  }
  const Test* begin = remote ? kRemoteTests : kTests;
  const Test* end = remote ? kRemoteTests + sizeof kRemoteTests / sizeof *kRemoteTests
                           : kTests + sizeof kTests / sizeof *kTests;
  for (const Test* tp = begin; tp != end; tp++) {
    const Test& t = *tp;
    g_group = uint32_t(tp - begin) + 1;
    if (only && strcmp(only, t.name)) continue;
    g_test = t.name;
    g_have_wc = false;
    bool ok = t.fn();
    printf("%s %s\n", ok ? "ok  " : "FAIL", t.name);
    fflush(stdout);
    (ok ? g_pass : g_fail)++;
    if (!ok && remote) break;  // the two processes no longer agree on the step
  }
  ibv_dealloc_pd(pd);
  ibv_close_device(ctx);
  ibv_free_device_list(list);
  printf("%d passed, %d failed", g_pass, g_fail);
  if (g_rxe) printf(", %d known rxe deviations seen", g_deviations);
  printf("\n");
  return g_fail ? 1 : 0;
}
