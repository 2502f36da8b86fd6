// softrdma: a user-space RDMA device behind the libibverbs ABI.
// Internal declarations shared by the library's translation units.
//
// The library is loaded into other people's processes: it is built without
// exceptions and RTTI, every symbol is hidden except the verbs ABI (see
// libibverbs.map), and nothing is allocated before the first verbs call.
#pragma once

#include <infiniband/verbs.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <atomic>
#include <mutex>

#undef ibv_query_port
#undef ibv_reg_mr
#undef ibv_reg_mr_iova
#undef ibv_get_device_list

#define SR_EXPORT extern "C" __attribute__((visibility("default")))

namespace softrdma {

// ---------------------------------------------------------------- limits --
// Everything reported by ibv_query_device/ibv_query_port comes from here and
// is what the implementation enforces.
constexpr uint32_t kMaxQpWr = 16384;
constexpr uint32_t kMaxSge = 32;
constexpr uint32_t kMaxInline = 1024;
constexpr uint32_t kMaxCqe = (1u << 20) - 1;
constexpr uint32_t kMaxMr = 1u << 20;       // key index space, 2-level table
constexpr uint32_t kMaxQp = 255u * 255u;     // per process: 255 listeners x 255 QPNs
constexpr uint32_t kMaxCq = 1u << 16;
constexpr uint32_t kMaxPd = 1u << 16;
constexpr uint32_t kMaxSrq = 1u << 16;
constexpr uint32_t kMaxSrqWr = 16384;
constexpr uint32_t kMaxRdAtom = 128;        // outstanding RDMA READ/atomic per QP
constexpr uint32_t kMaxAh = 1u << 20;
constexpr uint64_t kMaxMsg = 1ull << 31;    // RC/UC message size
constexpr uint32_t kMtu = 4096;             // active MTU = UD message limit
constexpr int kGidTblLen = 2;
constexpr int kPkeyTblLen = 1;
constexpr uint32_t kVendorId = 0x0;         // no IEEE OUI: not a vendor's HCA
constexpr uint32_t kVendorPartId = 0x5244;  // "RD"
constexpr uint32_t kHwVer = 1;

enum class Personality { kIb, kRoce };

// ------------------------------------------------------------ addressing --
struct Host {
  Personality mode = Personality::kRoce;
  uint32_t ip = 0;        // host byte order; the address this process listens on
  uint16_t lid = 0;       // ib personality
  uint64_t guid_be = 0;   // node/port GUID, network order; encodes ip
  union ibv_gid gid[kGidTblLen];
};
const Host& host();  // initialised by InitOnce()

// dest IPv4 (host order) of an address vector; 0 if it cannot be resolved.
uint32_t ResolveAv(const struct ibv_ah_attr& av);
// LID -> IPv4 (ib personality); 0 if unknown. And back.
uint32_t LidToIp(uint16_t lid);
uint16_t IpToLid(uint32_t ip);

// QPN layout: (listening TCP port << 8) | slot, slot in 1..255. A QPN alone
// tells which process (port) on the host owns the QP: no directory needed.
inline uint16_t QpnPort(uint32_t qpn) { return uint16_t(qpn >> 8); }

// ---------------------------------------------------------------- wire ----
enum WireOp : uint8_t {
  kOpHello = 1,
  kOpSend = 2,
  kOpWrite = 3,
  kOpReadReq = 4,
  kOpCmpSwap = 5,
  kOpFetchAdd = 6,
  kOpAck = 7,
  kOpNak = 8,
  kOpReadResp = 9,
  kOpAtomicResp = 10,
  kOpUdSend = 11,
  kOpCmaOk = 12,  // responder -> requester: which one-host paths it accepted (syndrome kCmaOk*)
};
enum : uint16_t { kCmaOkCma = 1, kCmaOkShm = 2 };
// kFCma on a request: its payload is not on the stream; `arg0` descriptors
// {address, length} of the requester's memory follow the header instead (for
// a READ: where the data goes). On a HELLO: the requester offers one-copy;
// kFCmaAny: even across network namespaces.
// kFAck on an RC request: `qkey` acknowledges the receiver's own requests up
// to that PSN (an ACK carried by traffic in the other direction).
// kFShm on a request: its payload is in the connection's shared-memory ring
// at position `arg0` (a READ: where the responder puts the data); on a HELLO:
// the requester offers that ring (memfd descriptor number in `len`).
enum WireFlags : uint8_t {
  kFImm = 1, kFSolicited = 2, kFGrh = 4, kFGidMapped = 8, kFCma = 16, kFCmaAny = 32, kFAck = 64, kFShm = 128
};
// READ response syndrome: the data was already placed by the responder
// (cma: in the destination; shm: in the response ring at `arg0`).
constexpr uint16_t kSynCmaPlaced = 1;
constexpr uint16_t kSynShmPlaced = 2;
enum NakCode : uint16_t {
  kNakInvReq = 1,
  kNakAccess = 2,
  kNakOp = 3,
  kNakNoQp = 4,
  kNakRnr = 5,
};
enum ConnKind : uint32_t { kKindRc = 1, kKindUc = 2, kKindUd = 3 };

struct WireHdr {
  uint8_t op;
  uint8_t flags;
  uint16_t syndrome;
  uint32_t len;       // payload bytes that follow (READ_REQ: bytes asked for)
  uint32_t dst_qpn;
  uint32_t src_qpn;
  uint32_t psn;
  uint32_t imm;       // network order, as the application gave it
  uint64_t raddr;     // RDMA address; UD: dgid bytes 0..7
  uint32_t rkey;      // RDMA key; UD and HELLO: source IPv4
  uint32_t qkey;      // UD qkey; HELLO: kind | rnr_retry<<8 | retry<<12 | timeout<<16
  uint64_t arg0;      // atomics: swap/add, response: original; UD: dgid 8..15
  uint64_t arg1;      // atomics: compare
};
static_assert(sizeof(WireHdr) == 56);

// ---------------------------------------------------------------- objects --
struct Context;
struct Qp;
struct Cq;
struct Srq;
struct Conn;

struct Device {
  struct ibv_device dev;  // must be first
};

struct Context {
  struct verbs_context vctx;  // ibv_context is its last member
  int async_wr = -1;          // write end of the async event pipe
};
inline Context* ToCtx(struct ibv_context* c) {
  return reinterpret_cast<Context*>(reinterpret_cast<char*>(c) - offsetof(struct verbs_context, context));
}

struct Channel {
  struct ibv_comp_channel ch;  // must be first
  int wr;                      // write end of the event pipe
};

struct Pd {
  struct ibv_pd pd;
};

struct Mr {
  struct ibv_mr mr;
  uint64_t iova;
  int access;
  std::atomic<bool> valid;
};
// Looks a key up; nullptr if no such (valid) MR.
Mr* LookupKey(uint32_t key);
// Translates [iova, iova+len) of mr to a pointer when the range is inside it.
inline char* MrPtr(Mr* m, uint64_t iova, uint64_t len) {
  if (iova < m->iova || len > m->mr.length || iova - m->iova > m->mr.length - len) return nullptr;
  return static_cast<char*>(m->mr.addr) + (iova - m->iova);
}

struct Ah {
  struct ibv_ah ah;
  struct ibv_ah_attr attr;
  uint32_t ip;
};

struct Cq {
  struct ibv_cq_ex ex;  // must be first: ibv_cq is a prefix of it
  Context* ctx = nullptr;
  std::mutex mu;
  struct ibv_wc* ring = nullptr;
  uint32_t cap = 0, head = 0, count = 0;
  int armed = 0;  // 0 none, 1 any, 2 solicited only
  bool overrun = false;
  bool ex_has_cur = false;
  uint64_t wc_flags_req = 0;
};
// Adds a completion; the caller holds no CQ lock. Returns false on overrun.
bool CqPush(Cq* cq, const struct ibv_wc& wc, bool solicited);

struct RecvWqe {
  uint64_t wr_id;
  uint32_t num_sge;
  uint32_t status;  // 0 or an ibv_wc_status detected at post time
  struct ibv_sge sge[];
};

struct Srq {
  struct ibv_srq srq;
  std::mutex mu;
  char* slots = nullptr;
  uint32_t slot_size = 0, cap = 0, head = 0, count = 0, max_sge = 0;
  uint32_t limit = 0;
  uint32_t events_completed = 0;
};

struct SendWqe {
  uint64_t wr_id;
  uint32_t opcode;  // ibv_wr_opcode
  uint32_t send_flags;
  uint32_t imm;
  uint32_t num_sge;
  uint64_t length;
  uint32_t psn;
  uint32_t status;  // 0 or an ibv_wc_status detected at post time
  uint64_t raddr;
  uint32_t rkey;
  uint32_t inline_len;
  uint64_t cmp, swap;
  // UD destination
  uint32_t ud_ip, ud_qpn, ud_qkey;
  uint8_t ud_grh, ud_sgid_index;
  union ibv_gid ud_dgid;
  struct ibv_sge sge[];  // num_sge entries, then the inline buffer
};

enum class QpState { kReset, kInit, kRtr, kRts, kErr };

struct Qp {
  struct ibv_qp_ex ex;  // must be first: ibv_qp is a prefix of it
  Context* ctx = nullptr;
  std::mutex mu;
  QpState st = QpState::kReset;
  uint32_t slot = 0;  // engine slot
  // attributes
  struct ibv_qp_attr attr {};
  struct ibv_qp_cap cap {};
  bool sq_sig_all = false;
  Cq* scq = nullptr;
  Cq* rcq = nullptr;
  Srq* srq = nullptr;
  uint32_t dest_ip = 0;
  // send queue: ring of fixed-size slots
  char* sq = nullptr;
  uint32_t sq_slot = 0, sq_cap = 0;
  uint32_t sq_head = 0;   // next free (posted count)
  uint32_t sq_tx = 0;     // next to transmit
  uint32_t sq_done = 0;   // oldest not completed
  uint32_t next_psn = 0;
  uint32_t rd_outstanding = 0;
  uint64_t first_unacked_ns = 0;
  // ibv_wr_* batch state
  uint32_t wr_batch_start = 0;
  bool wr_batch_err = false;
  // receive queue
  char* rq = nullptr;
  uint32_t rq_slot = 0, rq_cap = 0, rq_head = 0, rq_count = 0;
  // connections (RC/UC): out carries our requests, in carries the peer's
  Conn* out = nullptr;
  Conn* in = nullptr;
  uint64_t next_connect_ns = 0;
  bool peer_lost = false;  // the peer closed with requests outstanding
  // requester: the peer acknowledged up to ack_psn (explicitly or carried on
  // its requests); WQEs that wait for a READ/atomic response stay until it came
  uint32_t ack_psn = 0;
  bool ack_valid = false;
  // responder: an ACK left queued by an application's poll, to ride on our
  // next request or be sent by the next pass
  bool ack_deferred = false;
  // responder: ordered response queue (acks, read responses, atomic results)
  struct Resp {
    uint8_t op;
    uint16_t syndrome;
    uint32_t psn;
    uint64_t raddr_ptr;  // READ: source pointer
    uint32_t len;
    uint64_t value;      // atomic original value
  };
  Resp* resp = nullptr;
  uint32_t resp_cap = 0, resp_head = 0, resp_count = 0;
  uint32_t resp_sent_off = 0;  // bytes of the head response already written
  bool goto_err_after_resp = false;
  uint32_t events_completed = 0;
  std::atomic<bool> kicked{false};
};

// ---------------------------------------------------------------- engine --
// One per process: listening sockets (one per block of 255 QPNs), the QPN
// table, and a progress thread that owns all socket reception.
bool EngineStart();
int EngineAllocQpn(Qp* qp, uint32_t* qpn);  // returns errno
void EngineFreeQpn(uint32_t qpn);
Qp* EngineLookupQp(uint32_t qpn);
// QP has been modified to RTR/RTS/ERR/RESET: connect, flush, close...
void EngineQpStateChanged(Qp* qp);
// Called with qp->mu held after WQEs were posted: try to transmit now.
void EngineTxLocked(Qp* qp);
// A receive WQE was posted to a QP (or to its SRQ): resume a parked stream.
void EngineKick(Qp* qp);
void EngineKickSrq(Srq* srq);
// An application thread found its CQ empty: do the progress thread's work
// now unless another thread is at it. False when there was nothing to do.
bool EngineProgressFromPoll();
// UD: send one datagram synchronously (blocking send on a cached connection).
int EngineUdSend(Qp* qp, SendWqe* w, const void* data, uint32_t len);
// Called with qp->mu held: move to error, flush both queues.
void QpToErrorLocked(Qp* qp);
void QpFlushLocked(Qp* qp);
// Completion helpers (qp->mu held).
void CompleteSendLocked(Qp* qp, SendWqe* w, enum ibv_wc_status st);
SendWqe* SqAt(Qp* qp, uint32_t idx);
RecvWqe* RqAt(Qp* qp, uint32_t idx);
// Takes one receive WQE into *out (copied); false when none.
bool TakeRecv(Qp* qp, RecvWqe* out, uint32_t max_sge_cap);
bool HasRecv(Qp* qp);
void PostAsync(Context* ctx, enum ibv_event_type type, void* obj);
uint64_t NowNs();

// Descriptors the library opens are marked as its own (owned.cc,
// softrdma_owned_fds); CloseOwned unmarks and closes.
void OwnFd(int fd);
void CloseOwned(int fd);
extern std::atomic<int> g_progress_tid;

extern std::atomic<int> g_debug;
void Log(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
#define SR_LOG(...)                                           \
  do {                                                        \
    if (::softrdma::g_debug.load(std::memory_order_relaxed)) \
      ::softrdma::Log(__VA_ARGS__);                           \
  } while (0)

// Context ops (verbs.cc)
void FillContextOps(Context* ctx);
int QueryPortImpl(struct ibv_context* c, uint8_t port, struct ibv_port_attr* a, size_t len);
int QueryDeviceImpl(struct ibv_context* c, struct ibv_device_attr* a);
bool InitOnce();  // process-wide lazy init (host addressing); false on failure

}  // namespace softrdma
