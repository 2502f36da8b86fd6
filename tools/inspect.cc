#include "inspect.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "ibdbg/sockaddr.h"
#include "ibdbg/image_chain.h"
#include "ibdbg/image_file.h"
#include "ibdbg/manifest.h"
#include "ibdbg/proto.h"

namespace ibdbg::tools {

namespace {

using ojson = nlohmann::ordered_json;
using image::RecordHeader;
using image::RecordType;

// A chain longer than this is almost certainly a loop of copied images.
constexpr int kMaxProvenanceDepth = 64;

template <size_t N>
std::string CStr(const char (&a)[N]) {
  return std::string(a, strnlen(a, N));
}

std::string Hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
  return buf;
}

std::string HumanBytes(uint64_t n) {
  static const char* const kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (n < 1024) return std::to_string(n) + " B";
  double v = static_cast<double>(n) / 1024;
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f %s", v, kUnits[u]);
  return buf;
}

// File names may hold anything but NUL; in the text view each item must stay
// on one line and not be able to forge lines of its own.
std::string Printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::string SignalName(int signo) {
  static const char* const kNames[] = {
      nullptr,  "SIGHUP",  "SIGINT",    "SIGQUIT", "SIGILL",  "SIGTRAP", "SIGABRT",
      "SIGBUS", "SIGFPE",  "SIGKILL",   "SIGUSR1", "SIGSEGV", "SIGUSR2", "SIGPIPE",
      "SIGALRM", "SIGTERM", "SIGSTKFLT", "SIGCHLD", "SIGCONT", "SIGSTOP", "SIGTSTP",
      "SIGTTIN", "SIGTTOU", "SIGURG",   "SIGXCPU", "SIGXFSZ", "SIGVTALRM", "SIGPROF",
      "SIGWINCH", "SIGIO",  "SIGPWR",    "SIGSYS"};
  if (signo >= 1 && signo <= 31) return kNames[signo];
  // glibc reserves 32 and 33 for itself, so its SIGRTMIN is 34.
  if (signo >= 34 && signo <= 64) return "SIGRTMIN+" + std::to_string(signo - 34);
  return "SIG" + std::to_string(signo);
}

std::string Join(const std::vector<std::string>& v, const char* sep) {
  std::string out;
  for (const std::string& s : v) {
    if (!out.empty()) out += sep;
    out += s;
  }
  return out;
}

std::vector<std::string> SigactionFlags(uint64_t f) {
  // Kernel x86-64 values; SA_RESTORER is always set by libc and says nothing.
  static const std::pair<uint64_t, const char*> kFlags[] = {
      {0x00000001, "SA_NOCLDSTOP"}, {0x00000002, "SA_NOCLDWAIT"}, {0x00000004, "SA_SIGINFO"},
      {0x08000000, "SA_ONSTACK"},   {0x10000000, "SA_RESTART"},   {0x40000000, "SA_NODEFER"},
      {0x80000000, "SA_RESETHAND"}, {0x04000000, nullptr}};
  std::vector<std::string> out;
  for (const auto& [bit, name] : kFlags) {
    if (!(f & bit)) continue;
    f &= ~bit;
    if (name) out.push_back(name);
  }
  if (f) out.push_back(Hex(f));
  return out;
}

std::vector<std::string> OpenFlags(int32_t open_flags, int32_t fd_flags) {
  std::vector<std::string> out;
  uint32_t f = static_cast<uint32_t>(open_flags);
  if (f & O_PATH) {
    out.push_back("O_PATH");
    f &= ~static_cast<uint32_t>(O_PATH);
  } else {
    switch (f & O_ACCMODE) {
      case O_RDONLY: out.push_back("O_RDONLY"); break;
      case O_WRONLY: out.push_back("O_WRONLY"); break;
      case O_RDWR: out.push_back("O_RDWR"); break;
      default: out.push_back("O_ACCMODE=3"); break;
    }
  }
  f &= ~static_cast<uint32_t>(O_ACCMODE);
  auto take = [&](uint32_t bits, const char* name) {
    if ((f & bits) != bits) return;
    f &= ~bits;
    if (name) out.push_back(name);
  };
  take(O_SYNC, "O_SYNC");  // includes the O_DSYNC bit
  take(O_DSYNC, "O_DSYNC");
  take(O_APPEND, "O_APPEND");
  take(O_NONBLOCK, "O_NONBLOCK");
  take(O_DIRECT, "O_DIRECT");
  take(O_NOATIME, "O_NOATIME");
  take(O_ASYNC, "O_ASYNC");
  take(O_DIRECTORY, "O_DIRECTORY");
  take(O_NOFOLLOW, "O_NOFOLLOW");
  take(O_TMPFILE & ~O_DIRECTORY, "O_TMPFILE");
  take(0100000, nullptr);  // O_LARGEFILE: always set by the kernel on 64-bit
  if (f) out.push_back(Hex(f));
  if (fd_flags & FD_CLOEXEC) out.push_back("O_CLOEXEC");
  return out;
}

const char* VmaKindName(uint32_t kind) {
  switch (kind) {
    case IBDBG_IVMA_ANON: return "anon";
    case IBDBG_IVMA_FILE: return "file";
    case IBDBG_IVMA_FILE_SHARED: return "file-shared";
    case IBDBG_IVMA_SHARED_ANON: return "shared-anon";
    case IBDBG_IVMA_VDSO: return "vdso";
    case IBDBG_IVMA_VVAR: return "vvar";
    case IBDBG_IVMA_VVAR_VCLOCK: return "vvar-vclock";
    case IBDBG_IVMA_HEAP: return "heap";
    case IBDBG_IVMA_STACK: return "stack";
    case IBDBG_IVMA_FILE_DELETED: return "file-deleted";
    case IBDBG_IVMA_SYSV_SHM: return "sysv-shm";
  }
  return "unknown";
}

const char* FdKindName(uint32_t kind) {
  switch (kind) {
    case IBDBG_FD_FILE: return "file";
    case IBDBG_FD_TTY: return "tty";
    case IBDBG_FD_PIPE: return "pipe";
    case IBDBG_FD_DEVNULL: return "device";
    case IBDBG_FD_SOCKET_LISTEN: return "socket-listen";
    case IBDBG_FD_OTHER: return "other";
    case IBDBG_FD_EVENTFD: return "eventfd";
    case IBDBG_FD_TIMERFD: return "timerfd";
    case IBDBG_FD_SIGNALFD: return "signalfd";
    case IBDBG_FD_EPOLL: return "epoll";
    case IBDBG_FD_SOCKET_CONN: return "socket-conn";
    case IBDBG_FD_SOCKET_DGRAM: return "socket-dgram";
    case IBDBG_FD_PTY_MASTER: return "pty-master";
    case IBDBG_FD_PTY_SLAVE: return "pty-slave";
    case IBDBG_FD_FIFO: return "fifo";
  }
  return "unknown";
}

std::string Prot(uint32_t prot, uint32_t shared) {
  std::string s;
  s += (prot & 1) ? 'r' : '-';
  s += (prot & 2) ? 'w' : '-';
  s += (prot & 4) ? 'x' : '-';
  s += shared ? 's' : 'p';
  return s;
}

std::string Seconds(int64_t sec, int64_t usec) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%" PRId64 ".%06" PRId64 "s", sec, usec);
  return buf;
}

// Binary records are written as the structs are; a size mismatch means a
// damaged or foreign image, never something to reinterpret.
template <class T>
T Load(const std::vector<uint8_t>& data, const std::string& path, const char* what,
       bool trailing_data_ok = false) {
  if (data.size() < sizeof(T) || (!trailing_data_ok && data.size() != sizeof(T)))
    throw ImageError(path + ": " + what + " record has " + std::to_string(data.size()) +
                     " bytes, expected " + std::to_string(sizeof(T)));
  T t;
  std::memcpy(&t, data.data(), sizeof t);
  return t;
}

// The header is free-form JSON from whichever ibdbg wrote it; a field of an
// unexpected type is shown as absent rather than trusted.
std::string HeaderString(const ojson& header, const char* key, const std::string& dflt = "") {
  auto it = header.find(key);
  return it != header.end() && it->is_string() ? it->get<std::string>() : dflt;
}

struct PageRun {
  uint64_t start, len;
};

const char* VerbsKindName(uint32_t k) {
  switch (k) {
    case IBDBG_VERBS_CONTEXT: return "context";
    case IBDBG_VERBS_PD: return "pd";
    case IBDBG_VERBS_MR: return "mr";
    case IBDBG_VERBS_CQ: return "cq";
    case IBDBG_VERBS_QP: return "qp";
    case IBDBG_VERBS_SRQ: return "srq";
    case IBDBG_VERBS_AH: return "ah";
    case IBDBG_VERBS_CHANNEL: return "channel";
    case IBDBG_VERBS_RECV: return "recv";
  }
  return "unknown";
}

const char* LinkLayerName(uint64_t l) {
  switch (l) {
    case 0: return "unknown";
    case 1: return "infiniband";  // IBV_LINK_LAYER_INFINIBAND
    case 2: return "ethernet";    // IBV_LINK_LAYER_ETHERNET
  }
  return "other";
}

// enum ibv_mtu (1..5) to bytes; 0 when unset.
uint64_t MtuBytes(uint64_t m) { return m >= 1 && m <= 5 ? 128ull << m : 0; }

const char* QpStateName(uint64_t s) {
  static const char* const k[] = {"RESET", "INIT", "RTR", "RTS", "SQD", "SQE", "ERR"};
  return s < 7 ? k[s] : "?";
}
const char* QpTypeName(uint64_t t) {
  return t == 2 ? "RC" : t == 3 ? "UC" : t == 4 ? "UD" : t == 8 ? "RAW_PACKET" : "?";
}

std::string GidText(const uint8_t* g) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x", g[0], g[1],
                g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]);
  return buf;
}

// The verbs layer's record (capture/verbs): every object with its state.
ojson VerbsJson(const std::vector<uint8_t>& data, const std::string& path) {
  auto h = Load<ibdbg_verbs_hdr>(data, path, "verbs", true);
  if (h.magic != IBDBG_VERBS_MAGIC || data.size() != sizeof h + (uint64_t)h.nobjs * sizeof(ibdbg_verbs_obj))
    throw ImageError(path + ": verbs record is damaged");
  ojson v;
  v["backend"] = CStr(h.backend);
  v["posts_blocked"] = h.posts_blocked;
  v["link_layer"] = LinkLayerName(h.link_layer);
  if (h.translated) v["translated"] = true;
  if (h.refused[0]) v["refused"] = CStr(h.refused);
  if (h.nbackend_tids > IBDBG_VERBS_MAX_TIDS || h.nbackend_fds > IBDBG_VERBS_MAX_FDS)
    throw ImageError(path + ": verbs record is damaged");
  v["backend_threads"] = std::vector<int32_t>(h.backend_tids, h.backend_tids + h.nbackend_tids);
  v["backend_fds"] = std::vector<int32_t>(h.backend_fds, h.backend_fds + h.nbackend_fds);
  ojson objs = ojson::array();
  for (uint32_t i = 0; i < h.nobjs; i++) {
    ibdbg_verbs_obj o;
    std::memcpy(&o, data.data() + sizeof h + i * sizeof o, sizeof o);
    ojson e;
    e["kind"] = VerbsKindName(o.kind);
    e["handle"] = Hex(o.handle);
    const uint64_t* u = o.u;
    switch (o.kind) {
      case IBDBG_VERBS_CONTEXT:
        e["device"] = CStr(o.name);
        e["cmd_fd"] = (int64_t)u[IBDBG_VCTX_CMD_FD];
        e["async_fd"] = (int64_t)u[IBDBG_VCTX_ASYNC_FD];
        if (u[IBDBG_VCTX_LINK_LAYER]) {
          e["link_layer"] = LinkLayerName(u[IBDBG_VCTX_LINK_LAYER]);
          e["lid"] = u[IBDBG_VCTX_LID];
          e["active_mtu"] = MtuBytes(u[IBDBG_VCTX_ACTIVE_MTU]);
          e["gid"] = GidText(o.gid);
        }
        break;
      case IBDBG_VERBS_PD: e["context"] = Hex(o.parent[0]); break;
      case IBDBG_VERBS_MR:
        e["pd"] = Hex(o.parent[0]);
        e["addr"] = Hex(u[0]);
        e["length"] = u[1];
        e["access"] = Hex(u[2]);
        e["lkey"] = Hex(u[3]);
        e["rkey"] = Hex(u[4]);
        break;
      case IBDBG_VERBS_CHANNEL: e["fd"] = (int64_t)u[0]; break;
      case IBDBG_VERBS_CQ:
        e["cqe"] = u[0];
        e["buffered"] = u[1];
        e["extended"] = u[2] != 0;
        // Successful completions the layer took from the backend (returned to
        // the application or buffered by the capture).
        e["sends_taken"] = u[3];
        e["recvs_taken"] = u[4];
        if (o.parent[1]) e["channel"] = Hex(o.parent[1]);
        break;
      case IBDBG_VERBS_SRQ:
        e["pd"] = Hex(o.parent[0]);
        e["max_wr"] = u[0];
        e["max_sge"] = u[1];
        e["srq_limit"] = u[2];
        e["recvs_posted"] = (int64_t)u[3];
        break;
      case IBDBG_VERBS_AH:
        e["pd"] = Hex(o.parent[0]);
        e["dlid"] = u[IBDBG_VAH_DLID];
        e["port"] = u[IBDBG_VAH_PORT];
        e["sl"] = u[IBDBG_VAH_SL];
        if (u[IBDBG_VAH_IS_GLOBAL]) {
          e["dgid"] = GidText(o.gid);
          e["sgid_index"] = u[IBDBG_VAH_SGID_INDEX];
          e["hop_limit"] = u[IBDBG_VAH_HOP_LIMIT];
          e["traffic_class"] = u[IBDBG_VAH_TRAFFIC_CLASS];
          e["flow_label"] = u[IBDBG_VAH_FLOW_LABEL];
        }
        break;
      case IBDBG_VERBS_RECV: {
        e["owner"] = Hex(o.parent[0]);
        e["wr_id"] = Hex(u[0]);
        if (u[1] > IBDBG_VERBS_RECV_MAX_SGE) throw ImageError(path + ": verbs record is damaged");
        ojson sges = ojson::array();
        for (uint64_t i = 0; i < u[1]; i++) {
          ojson g;
          g["addr"] = Hex(u[2 + 2 * i]);
          g["length"] = u[3 + 2 * i] & 0xffffffffu;
          g["lkey"] = Hex(u[3 + 2 * i] >> 32);
          sges.push_back(std::move(g));
        }
        e["sges"] = std::move(sges);
        break;
      }
      case IBDBG_VERBS_QP:
        e["qpn"] = Hex(u[IBDBG_VQP_QPN]);
        e["type"] = QpTypeName(u[IBDBG_VQP_TYPE]);
        e["state"] = QpStateName(u[IBDBG_VQP_STATE]);
        e["pd"] = Hex(o.parent[0]);
        e["send_cq"] = Hex(o.parent[1]);
        e["recv_cq"] = Hex(o.parent[2]);
        if (o.parent[3]) e["srq"] = Hex(o.parent[3]);
        e["max_send_wr"] = u[IBDBG_VQP_MAX_SEND_WR];
        e["max_recv_wr"] = u[IBDBG_VQP_MAX_RECV_WR];
        e["dest_qpn"] = Hex(u[IBDBG_VQP_DEST_QPN]);
        e["dlid"] = u[IBDBG_VQP_DLID];
        e["port"] = u[IBDBG_VQP_PORT];
        e["sq_psn"] = u[IBDBG_VQP_SQ_PSN];
        e["rq_psn"] = u[IBDBG_VQP_RQ_PSN];
        e["qkey"] = Hex(u[IBDBG_VQP_QKEY]);
        e["sends_outstanding"] = (int64_t)u[IBDBG_VQP_SENDS_OUTSTANDING];
        e["recvs_posted"] = (int64_t)u[IBDBG_VQP_RECVS_POSTED];
        e["wr_api"] = (o.flags & 1) != 0;
        e["attr_mask"] = Hex(u[IBDBG_VQP_ATTR_MASK]);
        e["path_mtu"] = MtuBytes(u[IBDBG_VQP_PATH_MTU]);
        e["access_flags"] = Hex(u[IBDBG_VQP_ACCESS_FLAGS]);
        e["sl"] = u[IBDBG_VQP_SL];
        e["max_inline"] = u[IBDBG_VQP_MAX_INLINE];
        e["max_send_sge"] = u[IBDBG_VQP_MAX_SEND_SGE];
        e["max_recv_sge"] = u[IBDBG_VQP_MAX_RECV_SGE];
        e["timeout"] = u[IBDBG_VQP_TIMEOUT];
        e["retry_cnt"] = u[IBDBG_VQP_RETRY_CNT];
        e["rnr_retry"] = u[IBDBG_VQP_RNR_RETRY];
        e["min_rnr_timer"] = u[IBDBG_VQP_MIN_RNR_TIMER];
        e["max_rd_atomic"] = u[IBDBG_VQP_MAX_RD_ATOMIC];
        e["max_dest_rd_atomic"] = u[IBDBG_VQP_MAX_DEST_RD_ATOMIC];
        if (u[IBDBG_VQP_IS_GLOBAL]) {
          e["dgid"] = GidText(o.gid);
          e["sgid_index"] = u[IBDBG_VQP_SGID_INDEX];
          e["hop_limit"] = u[IBDBG_VQP_HOP_LIMIT];
          e["traffic_class"] = u[IBDBG_VQP_TRAFFIC_CLASS];
          e["flow_label"] = u[IBDBG_VQP_FLOW_LABEL];
        }
        break;
    }
    objs.push_back(std::move(e));
  }
  v["objects"] = std::move(objs);
  return v;
}

std::string VerbsLine(const ojson& e) {
  std::string k = e["kind"].get<std::string>();
  std::string l = "    " + k + " " + e["handle"].get<std::string>();
  auto add = [&](const char* key, const char* label) {
    if (e.contains(key)) {
      const ojson& x = e[key];
      l += std::string("  ") + label + " " + (x.is_string() ? x.get<std::string>() : x.dump());
    }
  };
  if (k == "qp") {
    l += "  qpn " + e["qpn"].get<std::string>() + "  " + e["type"].get<std::string>() + "  " + e["state"].get<std::string>();
    add("dest_qpn", "dest_qpn");
    add("dlid", "dlid");
    add("dgid", "dgid");
    add("path_mtu", "mtu");
    add("sl", "sl");
    if (e.contains("sgid_index"))
      l += "  grh sgid_index " + e["sgid_index"].dump() + " hop_limit " + e["hop_limit"].dump() + " traffic_class " +
           e["traffic_class"].dump();
    add("sq_psn", "sq_psn");
    add("rq_psn", "rq_psn");
    add("sends_outstanding", "sends outstanding");
    add("recvs_posted", "receives posted");
    add("srq", "srq");
    if (e["wr_api"].get<bool>()) l += "  ibv_wr_*";
    return l;
  }
  for (const char* key : {"device", "cmd_fd", "async_fd", "fd", "addr", "length", "access", "lkey", "rkey", "cqe",
                          "buffered", "sends_taken", "recvs_taken", "channel", "max_wr", "srq_limit", "recvs_posted",
                          "link_layer", "lid", "active_mtu", "gid", "dlid", "dgid", "owner", "wr_id"})
    add(key, key);
  if (k == "ah" && e.contains("sgid_index"))
    l += "  grh sgid_index " + e["sgid_index"].dump() + " hop_limit " + e["hop_limit"].dump() + " traffic_class " +
         e["traffic_class"].dump();
  if (e.contains("extended") && e["extended"].get<bool>()) l += "  extended";
  return l;
}

std::string S(const ojson& j);

std::string VerbsText(const ojson& v) {
  std::string o;
  auto line = [&](const std::string& s) { o += s + "\n"; };
  line("  verbs (" + S(v["objects"].size()) + " objects, backend " + v["backend"].get<std::string>() + ")");
  // The fabric the record's paths are for: what a replay checks the device against.
  line("    fabric " + v["link_layer"].get<std::string>() +
       (v.contains("translated") ? " (translated: QP and AH paths are the target's; ids as the application saw)"
                                 : ""));
  if (v.contains("refused")) line("    unsupported feature used: " + v["refused"].get<std::string>());
  std::vector<std::string> tids, bfds;
  for (const auto& x : v["backend_threads"]) tids.push_back(x.dump());
  for (const auto& x : v["backend_fds"]) bfds.push_back(x.dump());
  line("    backend threads: " + (tids.empty() ? std::string("-") : Join(tids, ",")) +
       "  backend fds: " + (bfds.empty() ? std::string("-") : Join(bfds, ",")));
  for (const auto& e : v["objects"]) line(VerbsLine(e));
  return o;
}

// An incremental image (image_chain.h): its parent, and how many pages each
// image of its chain gives it; null for a full image.
ojson IncrementalJson(const std::string& path) {
  auto ref = image::ReadParentRef(path);
  if (!ref) return nullptr;
  ojson inc;
  inc["parent"] = ref->image;
  inc["parent_id"] = ref->id;
  try {
    std::vector<std::string> chain = image::ResolveChain(path);
    std::vector<uint64_t> bytes = image::ChainPageBytes(chain);
    ojson levels = ojson::array();
    for (size_t i = 0; i < chain.size(); i++) {
      ojson l;
      l["image"] = i == 0 ? std::string("(this image)") : chain[i];
      l["pages"] = bytes[i] / image::kPageSize;
      levels.push_back(std::move(l));
    }
    inc["chain"] = std::move(levels);
    inc["ok"] = true;
  } catch (const std::exception& e) {
    inc["ok"] = false;
    inc["error"] = e.what();
  }
  return inc;
}

ojson ReadProcess(const std::string& dir, const image::ManifestProcess& mp) {
  const std::string path = dir + "/" + mp.image;
  image::ImageReader reader(path);

  ojson header;
  bool have_proc = false, have_sig = false;
  ibdbg_process_info proc{};
  ibdbg_signal_state sig{};
  std::vector<ibdbg_thread_info> threads;
  std::vector<ibdbg_image_vma> vmas;
  std::vector<PageRun> pages;
  ojson fds = ojson::array();
  ojson ipc = ojson::array();
  ojson verbs;
  uint64_t records = 0, other_records = 0, fd_data_bytes = 0;

  RecordHeader h;
  std::vector<uint8_t> data;
  while (reader.NextHeader(h)) {
    // Every payload is read so that its checksum and compression are
    // verified; a damaged page must not go unnoticed.
    reader.ReadPayload(data);
    ++records;
    switch (static_cast<RecordType>(h.type)) {
      case RecordType::Header: {
        if (records != 1) throw ImageError(path + ": more than one header record");
        try {
          header = ojson::parse(data.begin(), data.end());
        } catch (const ojson::exception&) {
          throw ImageError(path + ": header record is not valid JSON");
        }
        if (!header.is_object()) throw ImageError(path + ": header record is not a JSON object");
        break;
      }
      case RecordType::Process:
        if (have_proc) throw ImageError(path + ": more than one process record");
        proc = Load<ibdbg_process_info>(data, path, "process");
        have_proc = true;
        break;
      case RecordType::Thread:
        threads.push_back(Load<ibdbg_thread_info>(data, path, "thread"));
        break;
      case RecordType::Signals:
        if (have_sig) throw ImageError(path + ": more than one signals record");
        sig = Load<ibdbg_signal_state>(data, path, "signals");
        have_sig = true;
        break;
      case RecordType::Vma: {
        auto v = Load<ibdbg_image_vma>(data, path, "vma");
        if (v.end <= v.start)
          throw ImageError(path + ": vma " + Hex(v.start) + " has an empty or inverted range");
        vmas.push_back(v);
        break;
      }
      case RecordType::Pages:
        if (h.raw_len) pages.push_back({h.arg, h.raw_len});
        break;
      case RecordType::Fd: {
        auto f = Load<ibdbg_fd_info>(data, path, "fd", true);
        uint64_t extra = data.size() - sizeof f;
        fd_data_bytes += extra;
        ojson e;
        e["fd"] = f.fd;
        e["kind"] = FdKindName(f.kind);
        e["flags"] = OpenFlags(f.open_flags, f.fd_flags);
        e["offset"] = f.offset;
        e["path"] = CStr(f.path);
        e["deleted"] = f.deleted == 1;
        if (f.deleted == IBDBG_FD_SCRATCH_COPY) e["scratch_copy"] = true;
        e["size"] = f.size;
        e["data_bytes"] = extra;
        if (f.kind == IBDBG_FD_PIPE) e["pipe_id"] = f.pipe_id;
        if ((f.kind == IBDBG_FD_PTY_MASTER || f.kind == IBDBG_FD_PTY_SLAVE) && extra >= sizeof(ibdbg_pty_state)) {
          ibdbg_pty_state st;
          std::memcpy(&st, data.data() + sizeof f, sizeof st);
          e["pty_index"] = st.index;
          if (st.flags & IBDBG_PTY_TERMIOS)
            e["pty_winsize"] = std::to_string(st.winsize[0]) + "x" + std::to_string(st.winsize[1]);
          if (st.flags & IBDBG_PTY_LOCKED) e["pty_locked"] = true;
          if (st.flags & IBDBG_PTY_PACKET) e["pty_packet"] = true;
          if (f.kind == IBDBG_FD_PTY_MASTER) {
            e["pty_out_bytes"] = st.out_len;
            e["pty_in_bytes"] = st.in_len;
          }
        }
        if (f.kind == IBDBG_FD_SOCKET_LISTEN) {
          e["socket_family"] = f.sock_family;
          e["socket_type"] = f.sock_type;
          e["socket_backlog"] = f.sock_backlog;
        }
        if (f.sock_addr_len) e["socket_address"] = SockAddrText(f.sock_addr, f.sock_addr_len);
        if (f.peer_addr_len) e["socket_peer"] = SockAddrText(f.peer_addr, f.peer_addr_len);
        // Which ends a replay pairs up (unix sockets name their peer's inode).
        if (f.kind == IBDBG_FD_SOCKET_CONN && f.sock_id) e["socket_id"] = f.sock_id;
        if (f.kind == IBDBG_FD_SOCKET_CONN && f.peer_id) e["socket_peer_id"] = f.peer_id;
        if (f.kind == IBDBG_FD_SOCKET_DGRAM || (f.kind == IBDBG_FD_SOCKET_CONN && f.sock_type == SOCK_SEQPACKET)) {
          // Queued messages: a header, the sender's address, the payload, each.
          uint64_t n = 0, off = sizeof f;
          while (off + sizeof(ibdbg_sock_msg) <= data.size()) {
            ibdbg_sock_msg m;
            memcpy(&m, data.data() + off, sizeof m);
            off += sizeof m + (uint64_t)m.addr_len + m.len;
            n++;
          }
          e["messages"] = n;
        }
        if (f.sock_opts & (IBDBG_SOCKOPT_SHUT_RD | IBDBG_SOCKOPT_SHUT_WR))
          e["shutdown"] = (f.sock_opts & IBDBG_SOCKOPT_SHUT_RD) && (f.sock_opts & IBDBG_SOCKOPT_SHUT_WR) ? "rdwr"
                          : (f.sock_opts & IBDBG_SOCKOPT_SHUT_RD)                                        ? "rd"
                                                                                                         : "wr";
        fds.push_back(std::move(e));
        break;
      }
      case RecordType::Ipc: {
        auto o = Load<ibdbg_ipc_object>(data, path, "ipc", true);
        ojson e;
        e["kind"] = o.kind == IBDBG_IPC_SHM ? "sysv-shm" : o.kind == IBDBG_IPC_SEM ? "sysv-sem"
                    : o.kind == IBDBG_IPC_MSG ? "sysv-msg" : o.kind == IBDBG_IPC_SHMFILE ? "shm-file" : o.kind == IBDBG_IPC_SHMEM ? "shared-memory" : "unknown";
        if (o.kind == IBDBG_IPC_SHMFILE || o.kind == IBDBG_IPC_SHMEM) {
          e["path"] = CStr(o.path);
        } else {
          e["id"] = o.id;
          e["key"] = Hex((uint32_t)o.key);
          e["removed"] = (o.flags & IBDBG_IPC_REMOVED) != 0;
        }
        char mode[16];
        std::snprintf(mode, sizeof mode, "0%o", o.mode & 07777);
        e["mode"] = mode;
        e["size"] = o.size;
        e["count"] = o.count;
        e["data_bytes"] = data.size() - sizeof o;
        e["elsewhere"] = (o.flags & IBDBG_IPC_ELSEWHERE) != 0;
        ipc.push_back(std::move(e));
        break;
      }
      case RecordType::Verbs:
        verbs = VerbsJson(data, path);
        break;
      default:
        ++other_records;
        break;
    }
  }

  if (!have_proc) throw ImageError(path + ": no process record");
  if (proc.proto_version > IBDBG_PROTO_VERSION)
    throw ImageError(path + ": process record version " + std::to_string(proc.proto_version) +
                     " is newer than this ibdbg supports (" +
                     std::to_string(IBDBG_PROTO_VERSION) + ")");
  if (proc.pid != mp.pid)
    throw ImageError(path + ": holds pid " + std::to_string(proc.pid) +
                     " but the manifest says " + std::to_string(mp.pid));
  if (header.contains("pid") && header["pid"].is_number_integer() &&
      header["pid"].get<int64_t>() != proc.pid)
    throw ImageError(path + ": header says pid " + header["pid"].dump() +
                     " but the process record says " + std::to_string(proc.pid));

  // Attribute stored pages to the mappings they belong to.
  std::sort(vmas.begin(), vmas.end(),
            [](const auto& a, const auto& b) { return a.start < b.start; });
  for (size_t i = 1; i < vmas.size(); ++i)
    if (vmas[i].start < vmas[i - 1].end)
      throw ImageError(path + ": vmas " + Hex(vmas[i - 1].start) + " and " + Hex(vmas[i].start) +
                       " overlap");
  std::vector<uint64_t> vma_bytes(vmas.size(), 0);
  uint64_t page_bytes = 0;
  for (const PageRun& run : pages) {
    uint64_t end = run.start + run.len;
    if (end < run.start) throw ImageError(path + ": pages at " + Hex(run.start) + " wrap around");
    page_bytes += run.len;
    auto it = std::upper_bound(vmas.begin(), vmas.end(), run.start,
                               [](uint64_t a, const auto& v) { return a < v.start; });
    size_t i = it == vmas.begin() ? 0 : static_cast<size_t>(it - vmas.begin()) - 1;
    uint64_t covered = 0;
    for (; i < vmas.size() && vmas[i].start < end; ++i) {
      uint64_t lo = std::max(run.start, vmas[i].start), hi = std::min(end, vmas[i].end);
      if (lo < hi) {
        vma_bytes[i] += hi - lo;
        covered += hi - lo;
      }
    }
    if (covered != run.len)
      throw ImageError(path + ": pages at " + Hex(run.start) + " (" + HumanBytes(run.len) +
                       ") lie outside every mapping");
  }

  ojson p;
  p["pid"] = proc.pid;
  if (mp.rank >= 0) p["rank"] = mp.rank;
  p["image"] = mp.image;
  struct stat st;
  p["image_bytes"] = ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
  p["host"] = HeaderString(header, "host", CStr(proc.hostname));
  p["kernel"] = HeaderString(header, "kernel");
  p["machine"] = HeaderString(header, "machine");
  p["time"] = HeaderString(header, "time");
  p["ibdbg_version"] = HeaderString(header, "ibdbg_version");
  p["exe"] = CStr(proc.exe);
  p["cwd"] = CStr(proc.cwd);
  p["comm"] = CStr(proc.comm);
  p["generation"] = proc.generation;
  p["ppid"] = proc.ppid;
  p["pgid"] = proc.pgid;
  p["sid"] = proc.sid;
  char umask[8];
  std::snprintf(umask, sizeof umask, "%04o", proc.umask & 07777);
  p["umask"] = umask;

  ojson tj = ojson::array();
  for (const auto& t : threads) {
    ojson e;
    e["tid"] = t.tid;
    e["name"] = CStr(t.name);
    e["main"] = (t.flags & IBDBG_THREAD_MAIN) != 0;
    e["ckpt"] = (t.flags & IBDBG_THREAD_CKPT) != 0;
    if (t.flags & IBDBG_THREAD_BACKEND) e["backend"] = true;
    e["resume_rip"] = Hex(t.resume_rip);
    e["resume_rsp"] = Hex(t.resume_rsp);
    tj.push_back(std::move(e));
  }
  p["threads"] = std::move(tj);

  ojson vj = ojson::array();
  uint64_t mapped = 0;
  for (size_t i = 0; i < vmas.size(); ++i) {
    const auto& v = vmas[i];
    mapped += v.end - v.start;
    ojson e;
    e["start"] = Hex(v.start);
    e["end"] = Hex(v.end);
    e["size"] = v.end - v.start;
    e["prot"] = Prot(v.prot, v.shared);
    e["kind"] = VmaKindName(v.kind);
    e["path"] = CStr(v.path);
    e["offset"] = v.offset;
    e["deleted"] = v.deleted != 0;
    e["pages"] = vma_bytes[i] / image::kPageSize;
    e["page_bytes"] = vma_bytes[i];
    vj.push_back(std::move(e));
  }
  p["vmas"] = std::move(vj);
  p["fds"] = std::move(fds);
  p["ipc"] = std::move(ipc);
  if (!verbs.is_null()) p["verbs"] = std::move(verbs);

  ojson handlers = ojson::array(), timers = ojson::array(), pending = ojson::array();
  if (have_sig) {
    for (int i = 0; i < IBDBG_NSIG; ++i) {
      const auto& a = sig.act[i];
      if (a.handler == 0) continue;  // SIG_DFL
      ojson e;
      e["signo"] = i + 1;
      e["name"] = SignalName(i + 1);
      e["handler"] = a.handler == 1 ? std::string("SIG_IGN") : Hex(a.handler);
      e["flags"] = SigactionFlags(a.flags);
      e["mask"] = Hex(a.mask);
      e["ibdbg"] = sig.ckpt_signal != 0 && static_cast<uint32_t>(i + 1) == sig.ckpt_signal;
      handlers.push_back(std::move(e));
    }
    static const char* const kTimers[] = {"real", "virtual", "prof"};
    for (int i = 0; i < 3; ++i) {
      const auto& t = sig.itimer[i];
      if (!t.value_sec && !t.value_usec && !t.interval_sec && !t.interval_usec) continue;
      ojson e;
      e["which"] = kTimers[i];
      e["value"] = Seconds(t.value_sec, t.value_usec);
      e["interval"] = Seconds(t.interval_sec, t.interval_usec);
      timers.push_back(std::move(e));
    }
    if (sig.npending > IBDBG_MAX_PENDING)
      throw ImageError(path + ": signals record claims " + std::to_string(sig.npending) +
                       " pending signals (at most " + std::to_string(IBDBG_MAX_PENDING) + ")");
    for (uint32_t i = 0; i < sig.npending; ++i) {
      ojson e;
      e["tid"] = sig.pending[i].tid;
      e["signo"] = sig.pending[i].signo;
      e["name"] = SignalName(sig.pending[i].signo);
      pending.push_back(std::move(e));
    }
  }
  p["signal_handlers"] = std::move(handlers);
  p["itimers"] = std::move(timers);
  p["pending_signals"] = std::move(pending);

  ojson tot;
  tot["threads"] = threads.size();
  tot["vmas"] = vmas.size();
  tot["mapped_bytes"] = mapped;
  tot["pages"] = page_bytes / image::kPageSize;
  tot["page_bytes"] = page_bytes;
  tot["fds"] = p["fds"].size();
  tot["fd_data_bytes"] = fd_data_bytes;
  tot["records"] = records;
  tot["other_records"] = other_records;
  p["totals"] = std::move(tot);
  if (ojson inc = IncrementalJson(path); !inc.is_null()) p["incremental"] = std::move(inc);
  return p;
}

ojson ToOrdered(const nlohmann::json& j) {
  return ojson::parse(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

// Follows parent links back towards the original capture, as far as the
// parents still exist.
ojson Provenance(const image::Manifest& m, const std::string& dir) {
  ojson chain = ojson::array();
  std::set<std::string> seen{dir};
  nlohmann::json parent = m.parent;
  for (int depth = 0; parent.is_object() && depth < kMaxProvenanceDepth; ++depth) {
    ojson e;
    std::string pimage = parent.value("image", "");
    std::string recorded = parent.value("checksum", "");
    e["image"] = pimage;
    e["checksum"] = recorded;
    e["options"] = parent.contains("options") ? ToOrdered(parent["options"]) : ojson::object();
    if (parent.contains("captured")) e["captured"] = ToOrdered(parent["captured"]);
    nlohmann::json next;
    struct stat st;
    if (pimage.empty() || ::stat(pimage.c_str(), &st) != 0) {
      e["found"] = false;
    } else {
      e["found"] = true;
      try {
        std::string pdir = image::ResolveImageDir(pimage);
        image::Manifest pm = image::ReadManifest(pdir);
        std::string now = image::ImageChecksum(pdir);
        e["checksum_now"] = now;
        e["checksum_ok"] = now == recorded;
        e["kind"] = pm.kind;
        e["created"] = pm.created;
        e["job_id"] = pm.job_id;
        e["ibdbg_version"] = pm.ibdbg_version;
        if (!seen.insert(pdir).second) {
          e["error"] = "provenance loops back to " + pdir;
        } else {
          next = pm.parent;
        }
      } catch (const ImageError& err) {
        e["error"] = err.what();
      }
    }
    chain.push_back(std::move(e));
    parent = std::move(next);
  }
  return chain;
}

std::string OptionsText(const ojson& options) {
  std::vector<std::string> parts;
  for (auto it = options.begin(); it != options.end(); ++it) {
    if (it.value().is_array()) {
      for (const auto& v : it.value())
        parts.push_back(it.key() + " " + (v.is_string() ? v.get<std::string>() : v.dump()));
    } else {
      parts.push_back(it.key() + " " +
                      (it.value().is_string() ? it.value().get<std::string>() : it.value().dump()));
    }
  }
  return parts.empty() ? "none" : Join(parts, ", ");
}

std::string S(const ojson& j) {
  if (j.is_string()) return Printable(j.get<std::string>());
  return j.dump();
}

std::string RenderText(const ojson& doc) {
  std::string o;
  auto line = [&](const std::string& s) { o += s + "\n"; };
  line("image      " + S(doc["image"]));
  line("kind       " + S(doc["kind"]) + " (manifest format " + S(doc["format"]) + ")");
  line("created    " + S(doc["created"]) + " by ibdbg " + S(doc["ibdbg_version"]));
  if (doc.contains("captured")) line("captured   " + S(doc["captured"]));
  line("job        " + S(doc["job_id"]));
  if (!doc["host"].get<std::string>().empty())
    line("host       " + S(doc["host"]) + ", kernel " + S(doc["kernel"]) + " (" +
         S(doc["machine"]) + ")");
  if (doc.contains("hosts") && doc["hosts"].size() > 1)
    for (const auto& h : doc["hosts"]) {
      std::string l = "part       host " + S(h["name"]) + ": " + S(h["processes"]) + " processes";
      if (h.contains("started_by")) {
        // HOST:PID:PPID of the process whose remote shell started it.
        std::string v = h["started_by"].get<std::string>();
        size_t b = v.rfind(':');
        l += ", started from " + v.substr(0, b == std::string::npos ? v.size() : b) + " (pid) through the remote shell";
      }
      line(l);
    }
  const ojson& chain = doc["provenance"];
  if (chain.empty()) {
    line("provenance original capture");
  } else {
    line("provenance");
    std::string indent = "  ";
    for (const auto& e : chain) {
      std::string l = indent + "from " + S(e["image"]);
      if (!e["found"].get<bool>()) {
        l += " (not found)";
      } else if (e.contains("error")) {
        l += " (unreadable: " + S(e["error"]) + ")";
      } else {
        l += " (" + S(e["kind"]) + ", created " + S(e["created"]) + ")";
      }
      line(l);
      std::string ck = indent + "  checksum " + S(e["checksum"]);
      if (e.contains("checksum_ok"))
        ck += e["checksum_ok"].get<bool>() ? " (matches)"
                                          : " (MISMATCH: now " + S(e["checksum_now"]) + ")";
      line(ck);
      line(indent + "  options  " + Printable(OptionsText(e["options"])));
      indent += "  ";
    }
  }

  for (const auto& p : doc["processes"]) {
    const ojson& t = p["totals"];
    line("");
    line("process " + S(p["pid"]) + " (" + S(p["image"]) + ", " +
         HumanBytes(p["image_bytes"].get<uint64_t>()) + ")");
    if (p.contains("rank")) line("  rank       " + S(p["rank"]));
    line("  exe        " + S(p["exe"]));
    line("  cwd        " + S(p["cwd"]));
    line("  comm       " + S(p["comm"]) + ", generation " + S(p["generation"]) + ", ppid " +
         S(p["ppid"]) + ", umask " + S(p["umask"]));
    line("  captured   " + S(p["time"]) + " on " + S(p["host"]) + " by ibdbg " +
         S(p["ibdbg_version"]));
    if (p.contains("incremental")) {
      const ojson& inc = p["incremental"];
      line("  incremental: pages written since its parent " + S(inc["parent"]) + " (" + S(inc["parent_id"]) + ")");
      if (!inc["ok"].get<bool>()) {
        line("    PARENT CHAIN BROKEN: " + S(inc["error"]));
      } else {
        line("    chain of " + std::to_string(inc["chain"].size()) + " images; pages of the replayed memory:");
        for (const auto& l : inc["chain"]) line("      " + S(l["pages"]) + " from " + S(l["image"]));
      }
    }

    line("  threads (" + S(t["threads"]) + ")");
    for (const auto& th : p["threads"]) {
      std::vector<std::string> flags;
      if (th["main"].get<bool>()) flags.push_back("main");
      if (th["ckpt"].get<bool>()) flags.push_back("ckpt");
      if (th.contains("backend")) flags.push_back("backend");
      char buf[512];
      std::snprintf(buf, sizeof buf, "    %-8s %-16s %-10s rip %-18s rsp %s",
                    S(th["tid"]).c_str(), S(th["name"]).c_str(),
                    flags.empty() ? "-" : Join(flags, ",").c_str(), S(th["resume_rip"]).c_str(),
                    S(th["resume_rsp"]).c_str());
      line(buf);
    }

    line("  memory (" + S(t["vmas"]) + " mappings, " +
         HumanBytes(t["mapped_bytes"].get<uint64_t>()) + " mapped, " + S(t["pages"]) +
         " pages stored = " + HumanBytes(t["page_bytes"].get<uint64_t>()) + ")");
    for (const auto& v : p["vmas"]) {
      char buf[256];
      std::snprintf(buf, sizeof buf, "    %16s-%-16s %10s %s %-12s", S(v["start"]).c_str() + 2,
                    S(v["end"]).c_str() + 2, HumanBytes(v["size"].get<uint64_t>()).c_str(),
                    S(v["prot"]).c_str(), S(v["kind"]).c_str());
      std::string l = buf;
      uint64_t pages = v["pages"].get<uint64_t>();
      l += pages ? " " + std::to_string(pages) + (pages == 1 ? " page (" : " pages (") +
                       HumanBytes(v["page_bytes"].get<uint64_t>()) + ")"
                 : " -";
      if (!v["path"].get<std::string>().empty()) l += "  " + S(v["path"]);
      if (v["deleted"].get<bool>()) l += " (deleted)";
      line(l);
    }

    line("  files (" + S(t["fds"]) + ")");
    for (const auto& f : p["fds"]) {
      std::vector<std::string> flags;
      for (const auto& x : f["flags"]) flags.push_back(x.get<std::string>());
      std::string l = "    fd " + S(f["fd"]) + "  " + S(f["kind"]) + "  " + Join(flags, "|") +
                      "  offset " + S(f["offset"]);
      if (!f["path"].get<std::string>().empty()) l += "  " + S(f["path"]);
      if (f["deleted"].get<bool>()) l += " (deleted)";
      if (f.contains("scratch_copy")) l += " (scratch: content kept)";
      if (f.contains("pipe_id")) l += "  pipe " + S(f["pipe_id"]);
      if (f.contains("socket_address")) l += "  " + S(f["socket_address"]);
      if (f.contains("socket_peer")) l += " -> " + S(f["socket_peer"]);
      if (f.contains("pty_index")) l += "  pts " + S(f["pty_index"]);
      if (f.contains("pty_winsize")) l += "  " + S(f["pty_winsize"]);
      if (f.contains("pty_locked")) l += "  locked";
      if (f.contains("pty_packet")) l += "  packet";
      if (f.contains("pty_out_bytes"))
        l += "  in flight " + S(f["pty_out_bytes"]) + " out/" + S(f["pty_in_bytes"]) + " in";
      if (f.contains("socket_backlog")) l += "  backlog " + S(f["socket_backlog"]);
      if (f.contains("messages") && f["messages"].get<uint64_t>()) l += "  " + S(f["messages"]) + " messages queued";
      if (f.contains("shutdown")) l += "  shut " + f["shutdown"].get<std::string>();
      uint64_t data = f["data_bytes"].get<uint64_t>();
      if (data) l += "  " + HumanBytes(data) + " stored";
      line(l);
    }

    if (p.contains("ipc") && !p["ipc"].empty()) {
      line("  ipc objects and shared memory files");
      for (const auto& o : p["ipc"]) {
        std::string l = "    " + S(o["kind"]);
        if (o.contains("path")) l += "  " + S(o["path"]);
        else l += "  id " + S(o["id"]) + "  key " + S(o["key"]) + (o["removed"].get<bool>() ? "  (removed)" : "");
        l += "  mode " + S(o["mode"]);
        if (S(o["kind"]) == "sysv-sem") l += "  " + S(o["count"]) + " semaphores";
        else if (S(o["kind"]) == "sysv-msg") l += "  " + S(o["count"]) + " messages";
        else l += "  size " + S(o["size"]);
        l += o["elsewhere"].get<bool>() ? std::string("  contents in another process's image")
                                        : "  " + HumanBytes(o["data_bytes"].get<uint64_t>()) + " stored";
        line(l);
      }
    }
    if (p.contains("verbs")) o += VerbsText(p["verbs"]);
    if (!p["signal_handlers"].empty()) {
      line("  signal handlers");
      for (const auto& s : p["signal_handlers"]) {
        std::vector<std::string> flags;
        for (const auto& x : s["flags"]) flags.push_back(x.get<std::string>());
        std::string l = "    " + S(s["name"]) + " (" + S(s["signo"]) + ")  " + S(s["handler"]);
        if (!flags.empty()) l += "  " + Join(flags, "|");
        if (s["mask"].get<std::string>() != "0x0") l += "  mask " + S(s["mask"]);
        if (s["ibdbg"].get<bool>()) l += "  [ibdbg checkpoint signal]";
        line(l);
      }
    }
    if (!p["itimers"].empty()) {
      line("  itimers");
      for (const auto& it : p["itimers"])
        line("    " + S(it["which"]) + "  value " + S(it["value"]) + "  interval " +
             S(it["interval"]));
    }
    if (!p["pending_signals"].empty()) {
      line("  pending signals");
      for (const auto& s : p["pending_signals"])
        line("    " + S(s["name"]) + " (" + S(s["signo"]) + ") " +
             (s["tid"].get<int>() ? "for thread " + S(s["tid"]) : std::string("process-wide")));
    }
    line("  totals     " + S(t["threads"]) + " threads, " + S(t["vmas"]) + " mappings, " +
         S(t["pages"]) + " pages (" + HumanBytes(t["page_bytes"].get<uint64_t>()) + "), " +
         S(t["fds"]) + " files (" + HumanBytes(t["fd_data_bytes"].get<uint64_t>()) +
         " of file data), " + S(t["records"]) + " records");
  }

  const ojson& t = doc["totals"];
  line("");
  line("total      " + S(t["processes"]) + " processes, " + S(t["threads"]) + " threads, " +
       HumanBytes(t["mapped_bytes"].get<uint64_t>()) + " mapped, " +
       HumanBytes(t["page_bytes"].get<uint64_t>()) + " of pages, " +
       HumanBytes(t["image_bytes"].get<uint64_t>()) + " on disk");
  return o;
}

}  // namespace

std::string InspectImage(const std::string& image, bool as_json) {
  const std::string dir = image::ResolveImageDir(image);
  const image::Manifest m = image::ReadManifest(dir);

  ojson doc;
  doc["image"] = dir;
  doc["format"] = m.format;
  doc["kind"] = m.kind;
  doc["ibdbg_version"] = m.ibdbg_version;
  doc["job_id"] = m.job_id;
  doc["created"] = m.created;
  doc["created_ns"] = m.created_ns;
  if (!m.captured.empty()) doc["captured"] = m.captured;
  doc["host"] = "";
  doc["kernel"] = "";
  doc["machine"] = "";
  doc["provenance"] = Provenance(m, dir);

  ojson procs = ojson::array();
  uint64_t threads = 0, vmas = 0, mapped = 0, page_bytes = 0, fds = 0, image_bytes = 0;
  for (const image::ManifestProcess& mp : m.processes) {
    ojson p = ReadProcess(dir, mp);
    const ojson& t = p["totals"];
    threads += t["threads"].get<uint64_t>();
    vmas += t["vmas"].get<uint64_t>();
    mapped += t["mapped_bytes"].get<uint64_t>();
    page_bytes += t["page_bytes"].get<uint64_t>();
    fds += t["fds"].get<uint64_t>();
    image_bytes += p["image_bytes"].get<uint64_t>();
    procs.push_back(std::move(p));
  }
  // A job usually runs on one machine; the first process speaks for it and
  // each process still shows its own host.
  if (!procs.empty()) {
    doc["host"] = procs[0]["host"];
    doc["kernel"] = procs[0]["kernel"];
    doc["machine"] = procs[0]["machine"];
  }
  // Jobs across hosts: each host's part, and which process started it.
  ojson hosts = ojson::array();
  for (const auto& h : m.hosts) {
    ojson e;
    e["name"] = h.value("name", "");
    e["kernel"] = h.value("kernel", "");
    size_t n = 0;
    for (const auto& p : procs)
      if (p["host"] == e["name"]) n++;
    e["processes"] = n;
    if (h.contains("via")) e["started_by"] = h.value("via", "");
    hosts.push_back(std::move(e));
  }
  doc["hosts"] = std::move(hosts);
  doc["processes"] = std::move(procs);
  ojson tot;
  tot["processes"] = m.processes.size();
  tot["threads"] = threads;
  tot["vmas"] = vmas;
  tot["mapped_bytes"] = mapped;
  tot["pages"] = page_bytes / image::kPageSize;
  tot["page_bytes"] = page_bytes;
  tot["fds"] = fds;
  tot["image_bytes"] = image_bytes;
  doc["totals"] = std::move(tot);

  if (as_json) return doc.dump(2, ' ', false, ojson::error_handler_t::replace) + "\n";
  return RenderText(doc);
}

std::string InspectVerbs(const std::string& image, bool as_json) {
  const std::string dir = image::ResolveImageDir(image);
  const image::Manifest m = image::ReadManifest(dir);
  ojson doc;
  doc["image"] = dir;
  ojson procs = ojson::array();
  std::string text = "image      " + Printable(dir) + "\n";
  for (const image::ManifestProcess& mp : m.processes) {
    ojson p = ReadProcess(dir, mp);
    ojson e;
    e["pid"] = p["pid"];
    e["host"] = mp.host;
    text += "\nprocess " + S(p["pid"]) + " on " + Printable(mp.host) + "\n";
    if (p.contains("verbs")) {
      text += VerbsText(p["verbs"]);
      e["verbs"] = std::move(p["verbs"]);
    } else {
      text += "  no verbs state\n";
      e["verbs"] = nullptr;
    }
    procs.push_back(std::move(e));
  }
  doc["processes"] = std::move(procs);
  if (as_json) return doc.dump(2, ' ', false, ojson::error_handler_t::replace) + "\n";
  return text;
}

}  // namespace ibdbg::tools
