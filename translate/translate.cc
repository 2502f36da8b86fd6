#include "translate.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "ibdbg/atomic_dir.h"
#include "ibdbg/image_chain.h"
#include "ibdbg/image_file.h"
#include "ibdbg/manifest.h"
#include "ibdbg/proto.h"
#include "ibdbg/version.h"

namespace ibdbg::translate {

namespace {

using image::RecordHeader;
using image::RecordType;
using ojson = nlohmann::ordered_json;

std::string Hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
  return buf;
}

template <size_t N>
std::string CStr(const char (&a)[N]) {
  return std::string(a, strnlen(a, N));
}

// Returns an error description, or "" if `p` is usable as either side of a
// mapping.
std::string CheckMappingPath(const std::string& p, const char* which) {
  if (p.empty()) return std::string(which) + " is empty";
  if (p[0] != '/') return std::string(which) + " must be an absolute path";
  if (p.find('\0') != std::string::npos) return std::string(which) + " contains a NUL byte";
  size_t pos = 0;
  while (pos <= p.size()) {
    size_t next = p.find('/', pos);
    if (next == std::string::npos) next = p.size();
    if (p.compare(pos, next - pos, "..") == 0 && next - pos == 2)
      return std::string(which) + " must not contain '..'";
    pos = next + 1;
  }
  return "";
}

std::string StripTrailingSlashes(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

Mapping Normalize(const Mapping& m, const std::string& shown) {
  for (auto [p, which] : {std::pair{&m.first, "OLD"}, std::pair{&m.second, "NEW"}}) {
    std::string err = CheckMappingPath(*p, which);
    if (!err.empty()) throw ImageError("invalid path mapping '" + shown + "': " + err);
  }
  return {StripTrailingSlashes(m.first), StripTrailingSlashes(m.second)};
}

// Lexically absolute, without "." / ".." / repeated slashes; then the
// existing parent is canonicalized so symlinked parents compare equal.
std::string AbsoluteForCompare(const std::string& p) {
  std::string abs = p;
  if (abs.empty() || abs[0] != '/') {
    std::unique_ptr<char, decltype(&std::free)> cwd(::getcwd(nullptr, 0), &std::free);
    if (!cwd) throw ImageError(ErrnoMessage("cannot get the current directory"));
    abs = std::string(cwd.get()) + "/" + abs;
  }
  std::vector<std::string> parts;
  size_t pos = 0;
  while (pos < abs.size()) {
    size_t next = abs.find('/', pos);
    if (next == std::string::npos) next = abs.size();
    std::string c = abs.substr(pos, next - pos);
    if (c == "..") {
      if (!parts.empty()) parts.pop_back();
    } else if (!c.empty() && c != ".") {
      parts.push_back(c);
    }
    pos = next + 1;
  }
  if (parts.empty()) return "/";
  std::string parent;
  for (size_t i = 0; i + 1 < parts.size(); ++i) parent += "/" + parts[i];
  if (parent.empty()) parent = "/";
  std::unique_ptr<char, decltype(&std::free)> real(::realpath(parent.c_str(), nullptr),
                                                   &std::free);
  if (real) parent = real.get();
  return (parent == "/" ? "" : parent) + "/" + parts.back();
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  void Close(const std::string& shown) {
    int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) throw ImageError(ErrnoMessage("closing " + shown));
  }

 private:
  int fd_;
};

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

// ---- the verbs state ------------------------------------------------------

// enum ibv_qp_attr_mask / ibv_access_flags / ibv_qp_type values the record
// holds (proto.h keeps ibdbg free of libibverbs' headers).
constexpr uint64_t kQpAttrAv = 1 << 7, kQpAttrPathMtu = 1 << 8;
constexpr uint64_t kAccessRemoteAtomic = 1 << 3;
constexpr uint64_t kQpRc = 2, kQpUc = 3, kQpUd = 4;
constexpr uint64_t kRtr = 2;
// A RoCE v2 path gets an IP TTL: what rdma-core's tools use by default.
constexpr uint64_t kRoceHopLimit = 64;

std::string GidString(const uint8_t* g) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x",
                g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11], g[12], g[13], g[14],
                g[15]);
  return buf;
}

bool IsIpv4Mapped(const std::array<uint8_t, 16>& g) {
  for (int i = 0; i < 10; i++)
    if (g[i]) return false;
  return g[10] == 0xff && g[11] == 0xff;
}

std::string Join(const std::vector<std::string>& v, const char* sep) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : sep) + s;
  return out;
}

// Rewrites one process's verbs record for the target (translate/README.md:
// the fields "as the application saw" stay, "the target path" is rewritten).
class VerbsRewriter {
 public:
  VerbsRewriter(const FabricOptions& f, int pid, TranslateResult* report, std::vector<std::string>* refusals)
      : f_(f), pid_(pid), report_(report), refusals_(refusals) {}

  void Rewrite(std::vector<uint8_t>& data, const std::string& path) {
    if (data.size() < sizeof(ibdbg_verbs_hdr)) throw ImageError(path + ": verbs record is damaged");
    ibdbg_verbs_hdr h;
    std::memcpy(&h, data.data(), sizeof h);
    if (h.magic != IBDBG_VERBS_MAGIC || data.size() != sizeof h + (uint64_t)h.nobjs * sizeof(ibdbg_verbs_obj))
      throw ImageError(path + ": verbs record is damaged");
    if (!f_.link_layer && f_.devices.empty()) return;
    objs_.resize(h.nobjs);
    if (h.nobjs) std::memcpy(objs_.data(), data.data() + sizeof h, h.nobjs * sizeof(ibdbg_verbs_obj));

    uint32_t from = h.link_layer;
    for (const auto& o : objs_)
      if (!from && o.kind == IBDBG_VERBS_CONTEXT) from = (uint32_t)o.u[IBDBG_VCTX_LINK_LAYER];
    to_ = f_.link_layer ? f_.link_layer : from;
    from_ = from;
    if (f_.link_layer && !from) {
      Refuse(Pid() + " verbs: the record does not say which link layer it was captured on");
      return;
    }
    if (f_.link_layer) {
      uint64_t ll = from;
      Set(Pid() + " verbs", "link_layer", ll, to_, &LinkText);
      h.link_layer = (uint32_t)ll;
      h.translated = 1;
    }
    for (auto& o : objs_)
      if (o.kind == IBDBG_VERBS_CONTEXT) Context(o);
    // --device alone renames; the limits and paths are those of a fabric.
    if (f_.link_layer) Objects();
    std::memcpy(data.data(), &h, sizeof h);
    if (h.nobjs) std::memcpy(data.data() + sizeof h, objs_.data(), h.nobjs * sizeof(ibdbg_verbs_obj));
  }

 private:
  void Objects() {
    for (const auto& o : objs_)
      if (o.kind == IBDBG_VERBS_PD) pd_ctx_[o.handle] = o.parent[0];
    for (auto& o : objs_) {
      switch (o.kind) {
        case IBDBG_VERBS_QP: Qp(o); break;
        case IBDBG_VERBS_AH: Ah(o); break;
        case IBDBG_VERBS_CQ: Cq(o); break;
        case IBDBG_VERBS_SRQ: Srq(o); break;
      }
    }
  }

  static std::string NumText(uint64_t v) { return std::to_string(v); }
  static std::string LinkText(uint64_t v) { return LinkLayerName((uint32_t)v); }
  static std::string MtuText(uint64_t v) { return std::to_string(MtuBytes(v)); }

  std::string Pid() const { return "pid " + std::to_string(pid_); }
  void Refuse(const std::string& why) {
    if (refusals_ && std::find(refusals_->begin(), refusals_->end(), why) == refusals_->end())
      refusals_->push_back(why);
  }
  void Warn(const std::string& w) {
    if (report_ && std::find(report_->warnings.begin(), report_->warnings.end(), w) == report_->warnings.end())
      report_->warnings.push_back(w);
  }
  void Set(const std::string& obj, const char* field, uint64_t& value, uint64_t now,
           std::string (*text)(uint64_t) = &NumText) {
    if (value == now) return;
    if (report_) report_->changes.push_back(obj + ": " + field + " " + text(value) + " -> " + text(now));
    value = now;
  }
  void Limit(const std::string& obj, const char* what, uint64_t used, uint64_t allowed, const TargetCaps& c) {
    if (used > allowed)
      Refuse(obj + " uses " + what + " " + std::to_string(used) + "; the target" +
             (c.device.empty() ? "" : " (" + c.device + ")") + " allows " + std::to_string(allowed));
  }

  void Context(ibdbg_verbs_obj& o) {
    const std::string obj = Pid() + " context " + Hex(o.handle);
    std::string name = CStr(o.name);
    for (const auto& [old_name, new_name] : f_.devices)
      if (name == old_name) {
        if (report_) report_->changes.push_back(obj + ": device " + name + " -> " + new_name);
        name = new_name;
        break;
      }
    const TargetCaps* caps = nullptr;
    if (f_.target_caps.empty()) {
      caps = &Defaults();
    } else {
      for (const auto& c : f_.target_caps)
        if (c.device == name) caps = &c;
      if (!caps && f_.target_caps.size() == 1 && f_.devices.empty()) {
        // One device on the target: that is where the replay opens it.
        caps = &f_.target_caps[0];
        if (report_) report_->changes.push_back(obj + ": device " + name + " -> " + caps->device);
        name = caps->device;
      }
      if (!caps) {
        std::vector<std::string> have;
        for (const auto& c : f_.target_caps) have.push_back(c.device);
        Refuse(obj + " uses device " + name + "; the target has " + Join(have, ", ") + ": give --device " +
               name + "=NEW");
        return;
      }
    }
    if (f_.link_layer && caps->link_layer != to_)
      Refuse(obj + ": target device " + caps->device + " is " + LinkLayerName(caps->link_layer) + ", not " +
             LinkLayerName(to_));
    if (name.size() >= sizeof o.name) {
      Refuse(obj + ": device name " + name + " is too long");
      return;
    }
    std::memset(o.name, 0, sizeof o.name);
    std::memcpy(o.name, name.data(), name.size());
    ctx_caps_[o.handle] = caps;
    ctx_mtu_[o.handle] = o.u[IBDBG_VCTX_ACTIVE_MTU];
    if (f_.mtu && MtuEnum(f_.mtu) > caps->active_mtu)
      Refuse("--mtu " + std::to_string(f_.mtu) + " exceeds the active MTU " + MtuText(caps->active_mtu) +
             " of the target" + (caps->device.empty() ? "" : " " + caps->device));
  }

  const TargetCaps& Defaults() {
    if (!defaults_) defaults_ = DefaultCaps(to_);
    return *defaults_;
  }
  // The context an object belongs to (through its PD), and that context's target.
  uint64_t CtxOf(const ibdbg_verbs_obj& o) const {
    if (o.kind == IBDBG_VERBS_CQ) return o.parent[0];
    auto it = pd_ctx_.find(o.parent[0]);
    return it == pd_ctx_.end() ? 0 : it->second;
  }
  const TargetCaps& CapsOf(const ibdbg_verbs_obj& o) {
    auto it = ctx_caps_.find(CtxOf(o));
    if (it != ctx_caps_.end()) return *it->second;
    if (!ctx_caps_.empty()) return *ctx_caps_.begin()->second;
    return f_.target_caps.empty() ? Defaults() : f_.target_caps[0];
  }

  // The GID index a path uses on the target: RoCE v2 over IPv4 on Ethernet
  // (as rxe offers it), the port GID on InfiniBand.
  std::optional<uint32_t> SgidIndex(const TargetCaps& c) {
    if (to_ == kLinkInfiniBand) return c.gids.empty() ? 0 : c.gids[0].index;
    for (const auto& g : c.gids)
      if (g.type == "RoCE v2" && IsIpv4Mapped(g.gid)) return g.index;
    for (const auto& g : c.gids)
      if (g.type == "RoCE v2") return g.index;
    Refuse("the target" + (c.device.empty() ? std::string() : " " + c.device) +
           " has no RoCE v2 GID (its GID table has " + std::to_string(c.gids.size()) + " entries)");
    return std::nullopt;
  }

  // The path of a connected QP or an AH: GRH, SGID index, service level and
  // traffic class for the target fabric.
  void Path(const std::string& obj, const TargetCaps& c, uint64_t* u, int is_global, int sgid, int hop, int tc,
            int flow, int sl) {
    if (to_ == kLinkEthernet) {
      if (u[sl] > 7) {
        Refuse(obj + " uses SL " + std::to_string(u[sl]) + "; RoCE carries priorities 0-7 only");
        return;
      }
      auto idx = SgidIndex(c);
      if (!u[is_global]) {
        Set(obj, "is_global", u[is_global], 1);
        Set(obj, "hop_limit", u[hop], kRoceHopLimit);
        // The SL becomes the DSCP class selector (tc = DSCP << 2).
        Set(obj, "traffic_class", u[tc], u[sl] << 5);
      }
      if (idx) Set(obj, "sgid_index", u[sgid], *idx);
    } else if (to_ == kLinkInfiniBand && from_ == kLinkEthernet && u[is_global]) {
      // Within one InfiniBand subnet the path is the LID; the class
      // selector of the DSCP becomes the SL.
      if (!u[sl]) Set(obj, "sl", u[sl], (u[tc] >> 5) & 7);
      Set(obj, "is_global", u[is_global], 0);
      Set(obj, "sgid_index", u[sgid], 0);
      Set(obj, "hop_limit", u[hop], 0);
      Set(obj, "traffic_class", u[tc], 0);
      Set(obj, "flow_label", u[flow], 0);
    }
  }

  void Qp(ibdbg_verbs_obj& o) {
    uint64_t* u = o.u;
    const std::string obj = Pid() + " QP " + Hex(u[IBDBG_VQP_QPN]);
    const TargetCaps& c = CapsOf(o);
    Limit(obj, "max_inline_data", u[IBDBG_VQP_MAX_INLINE], c.max_inline_data, c);
    Limit(obj, "max_send_sge", u[IBDBG_VQP_MAX_SEND_SGE], c.max_sge, c);
    Limit(obj, "max_recv_sge", u[IBDBG_VQP_MAX_RECV_SGE], c.max_sge, c);
    Limit(obj, "max_send_wr", u[IBDBG_VQP_MAX_SEND_WR], c.max_qp_wr, c);
    Limit(obj, "max_recv_wr", u[IBDBG_VQP_MAX_RECV_WR], c.max_qp_wr, c);
    Limit(obj, "max_rd_atomic", u[IBDBG_VQP_MAX_RD_ATOMIC], c.max_qp_init_rd_atom, c);
    Limit(obj, "max_dest_rd_atomic", u[IBDBG_VQP_MAX_DEST_RD_ATOMIC], c.max_qp_rd_atom, c);
    if ((u[IBDBG_VQP_ACCESS_FLAGS] & kAccessRemoteAtomic) && !c.atomic_cap)
      Refuse(obj + " allows remote atomics; the target" + (c.device.empty() ? "" : " (" + c.device + ")") +
             " has none");
    uint64_t type = u[IBDBG_VQP_TYPE];
    uint32_t mtu = f_.mtu ? MtuEnum(f_.mtu) : c.active_mtu;
    if (type == kQpUd) {
      auto it = ctx_mtu_.find(CtxOf(o));
      uint64_t was = it == ctx_mtu_.end() ? 0 : it->second;
      if (was > mtu)
        Warn(obj + " (UD): messages larger than " + MtuText(mtu) + " bytes fail on the target (the captured port's MTU was " +
             MtuText(was) + ")");
    }
    if (type != kQpRc && type != kQpUc) return;
    bool has_path = (u[IBDBG_VQP_ATTR_MASK] & kQpAttrAv) || u[IBDBG_VQP_STATE] >= kRtr;
    if (!has_path) return;
    if (u[IBDBG_VQP_PORT] > c.phys_port_cnt) Set(obj, "port", u[IBDBG_VQP_PORT], 1);
    Path(obj, c, u, IBDBG_VQP_IS_GLOBAL, IBDBG_VQP_SGID_INDEX, IBDBG_VQP_HOP_LIMIT, IBDBG_VQP_TRAFFIC_CLASS,
         IBDBG_VQP_FLOW_LABEL, IBDBG_VQP_SL);
    if ((u[IBDBG_VQP_ATTR_MASK] & kQpAttrPathMtu) || u[IBDBG_VQP_PATH_MTU]) {
      uint64_t now = f_.mtu ? mtu : std::min<uint64_t>(u[IBDBG_VQP_PATH_MTU], mtu);
      Set(obj, "path_mtu", u[IBDBG_VQP_PATH_MTU], now, &MtuText);
    }
  }

  void Ah(ibdbg_verbs_obj& o) {
    const std::string obj = Pid() + " AH " + Hex(o.handle);
    const TargetCaps& c = CapsOf(o);
    if (o.u[IBDBG_VAH_PORT] > c.phys_port_cnt) Set(obj, "port", o.u[IBDBG_VAH_PORT], 1);
    Path(obj, c, o.u, IBDBG_VAH_IS_GLOBAL, IBDBG_VAH_SGID_INDEX, IBDBG_VAH_HOP_LIMIT, IBDBG_VAH_TRAFFIC_CLASS,
         IBDBG_VAH_FLOW_LABEL, IBDBG_VAH_SL);
  }

  void Cq(ibdbg_verbs_obj& o) {
    const TargetCaps& c = CapsOf(o);
    Limit(Pid() + " CQ " + Hex(o.handle), "cqe", o.u[0], c.max_cqe, c);
  }

  void Srq(ibdbg_verbs_obj& o) {
    const TargetCaps& c = CapsOf(o);
    const std::string obj = Pid() + " SRQ " + Hex(o.handle);
    Limit(obj, "max_wr", o.u[0], c.max_srq_wr, c);
    Limit(obj, "max_sge", o.u[1], c.max_srq_sge, c);
  }

  const FabricOptions& f_;
  int pid_;
  TranslateResult* report_;
  std::vector<std::string>* refusals_;
  std::vector<ibdbg_verbs_obj> objs_;
  uint32_t from_ = 0, to_ = 0;
  std::optional<TargetCaps> defaults_;
  std::map<uint64_t, const TargetCaps*> ctx_caps_;
  std::map<uint64_t, uint64_t> ctx_mtu_;
  std::map<uint64_t, uint64_t> pd_ctx_;
};

// Translates one process image. With `out` null it only reads, verifies and
// reports; the same code path then writes, so a dry run reports exactly what
// a real run does.
class ProcessTranslator {
 public:
  ProcessTranslator(const std::string& path, const image::ManifestProcess& mp,
                    const PathMapper& mapper, const FabricOptions& fabric, TranslateResult* report,
                    std::vector<std::string>* refusals)
      : path_(path), mp_(mp), mapper_(mapper), fabric_(fabric), report_(report), refusals_(refusals) {}

  void Run(image::ImageWriter* out) {
    out_ = out;
    image::ImageReader reader(path_);
    RecordHeader h;
    std::vector<uint8_t> data;
    bool have_proc = false;
    uint64_t unknown = 0;
    while (reader.NextHeader(h)) {
      reader.ReadPayload(data);
      switch (static_cast<RecordType>(h.type)) {
        case RecordType::Header:
          Header(h, data);
          break;
        case RecordType::Process:
          if (have_proc) throw ImageError(path_ + ": more than one process record");
          have_proc = true;
          Process(h, data);
          break;
        case RecordType::Vma:
          Vma(h, data);
          break;
        case RecordType::Fd:
          FdRecord(h, data);
          break;
        case RecordType::Pages:
          if (h.arg % image::kPageSize || data.size() % image::kPageSize ||
              h.arg + data.size() < h.arg)
            throw ImageError(path_ + ": pages at " + Hex(h.arg) + " are not page-aligned");
          if (out_) out_->AddPages(h.arg, data.data(), data.size());
          break;
        case RecordType::Verbs:
          VerbsRewriter(fabric_, mp_.pid, report_, refusals_).Rewrite(data, path_);
          Copy(h, data);
          break;
        case RecordType::Thread:
        case RecordType::Signals:
        case RecordType::Json:
        case RecordType::Ipc:  // its /dev/shm paths name the replay's own /dev/shm
          Copy(h, data);
          break;
        default:
          // Newer ibdbg versions may add records; carrying them over keeps
          // the image whole, but any paths inside stay as they were.
          ++unknown;
          Copy(h, data);
          break;
      }
    }
    if (!have_proc) throw ImageError(path_ + ": no process record");
    if (unknown && report_)
      report_->warnings.push_back("pid " + std::to_string(mp_.pid) + ": " +
                                  std::to_string(unknown) +
                                  " record(s) of unknown type copied unchanged");
  }

 private:
  void Copy(const RecordHeader& h, const std::vector<uint8_t>& data) {
    if (out_) out_->AddRecord(static_cast<RecordType>(h.type), h.arg, data.data(), data.size());
  }

  // Rewrites a path if a mapping applies; `label` names it in the report.
  template <size_t N>
  void MapField(char (&field)[N], const std::string& label) {
    std::string old = CStr(field);
    std::optional<std::string> now = mapper_.Map(old);
    if (!now || *now == old) return;
    if (now->size() >= N)
      throw ImageError(Label(label) + ": " + old + " would become " +
                       std::to_string(now->size()) + " bytes long (at most " +
                       std::to_string(N - 1) + ")");
    std::memset(field, 0, N);
    std::memcpy(field, now->data(), now->size());
    if (report_) report_->changes.push_back(Label(label) + ": " + old + " -> " + *now);
  }

  std::string Label(const std::string& what) const {
    return "pid " + std::to_string(mp_.pid) + " " + what;
  }

  void Header(const RecordHeader& h, const std::vector<uint8_t>& data) {
    ojson j;
    try {
      j = ojson::parse(data.begin(), data.end());
    } catch (const ojson::exception&) {
      throw ImageError(path_ + ": header record is not valid JSON");
    }
    if (!j.is_object()) throw ImageError(path_ + ": header record is not a JSON object");
    // Mirrors Process.exe, which is what gets reported.
    auto it = j.find("exe");
    if (it != j.end() && it->is_string()) {
      if (auto now = mapper_.Map(it->get<std::string>())) *it = *now;
    }
    if (out_) {
      std::string text = j.dump(-1, ' ', false, ojson::error_handler_t::replace);
      out_->AddRecord(RecordType::Header, h.arg, text);
    }
  }

  void Process(const RecordHeader& h, const std::vector<uint8_t>& data) {
    auto p = Load<ibdbg_process_info>(data, path_, "process");
    if (p.proto_version > IBDBG_PROTO_VERSION)
      throw ImageError(path_ + ": process record version " + std::to_string(p.proto_version) +
                       " is newer than this ibdbg supports (" +
                       std::to_string(IBDBG_PROTO_VERSION) + ")");
    if (p.pid != mp_.pid)
      throw ImageError(path_ + ": holds pid " + std::to_string(p.pid) +
                       " but the manifest says " + std::to_string(mp_.pid));
    MapField(p.exe, "exe");
    MapField(p.cwd, "cwd");
    if (out_) out_->AddRecord(RecordType::Process, h.arg, &p, sizeof p);
  }

  void Vma(const RecordHeader& h, const std::vector<uint8_t>& data) {
    auto v = Load<ibdbg_image_vma>(data, path_, "vma");
    MapField(v.path, "vma " + Hex(v.start));
    if (out_) out_->AddRecord(RecordType::Vma, h.arg, &v, sizeof v);
  }

  void FdRecord(const RecordHeader& h, const std::vector<uint8_t>& data) {
    auto f = Load<ibdbg_fd_info>(data, path_, "fd", true);
    MapField(f.path, "fd " + std::to_string(f.fd));
    if (!out_) return;
    std::vector<uint8_t> rec(data);
    std::memcpy(rec.data(), &f, sizeof f);
    out_->AddRecord(RecordType::Fd, h.arg, rec.data(), rec.size());
  }

  const std::string& path_;
  const image::ManifestProcess& mp_;
  const PathMapper& mapper_;
  const FabricOptions& fabric_;
  TranslateResult* report_;
  std::vector<std::string>* refusals_;
  image::ImageWriter* out_ = nullptr;
};

void CheckOutput(const std::string& in_dir, const std::string& out_dir) {
  std::string abs = AbsoluteForCompare(out_dir);
  struct stat st;
  if (::lstat(out_dir.c_str(), &st) == 0) {
    std::unique_ptr<char, decltype(&std::free)> real(::realpath(out_dir.c_str(), nullptr),
                                                     &std::free);
    if ((real && in_dir == real.get()) || abs == in_dir)
      throw ImageError(out_dir + " is the input image; refusing to overwrite");
    throw ImageError(out_dir + " exists; refusing to overwrite");
  }
  if (errno != ENOENT) throw ImageError(ErrnoMessage("cannot check " + out_dir));
  if (abs == in_dir || abs.compare(0, in_dir.size() + 1, in_dir + "/") == 0)
    throw ImageError(out_dir + " is inside the input image " + in_dir);
}

// ---- hosts -----------------------------------------------------------------

// Where each process replays: --host renames (several OLD may share a NEW),
// then --ranks-per-host packs whole hosts, in capture order, K processes per
// target host, each pack named after its first host.
struct HostPlan {
  std::map<std::string, std::string> to;  // captured host -> target host
  nlohmann::json hosts = nlohmann::json::array();
};

HostPlan PlanHosts(const image::Manifest& m, const HostOptions& o, TranslateResult* report,
                   std::vector<std::string>* refusals) {
  HostPlan plan;
  std::vector<std::string> order;  // captured hosts, in capture order
  std::map<std::string, int> count;
  for (const auto& p : m.processes) {
    if (!count.count(p.host)) order.push_back(p.host);
    count[p.host]++;
  }
  for (const auto& h : order) plan.to[h] = h;
  if (o.hosts.empty() && o.ranks_per_host <= 0) {
    plan.hosts = m.hosts;
    return plan;
  }
  std::set<std::string> given;
  for (const auto& [from, to] : o.hosts) {
    if (!given.insert(from).second) {
      refusals->push_back("--host " + from + " is given more than once");
      continue;
    }
    if (!count.count(from)) {
      refusals->push_back("--host " + from + "=" + to + ": the image has no processes on host " + from +
                          " (it has: " + Join(order, ", ") + ")");
      continue;
    }
    plan.to[from] = to;
  }
  if (o.ranks_per_host > 0) {
    std::vector<std::string> targets;  // after --host, in order
    std::map<std::string, int> n;
    for (const auto& h : order) {
      const std::string& t = plan.to[h];
      if (!n.count(t)) targets.push_back(t);
      n[t] += count[h];
    }
    std::map<std::string, std::string> pack;
    std::string leader;
    int filled = 0;
    for (const auto& t : targets) {
      if (n[t] > o.ranks_per_host) {
        refusals->push_back("--ranks-per-host " + std::to_string(o.ranks_per_host) + ": host " + t + " holds " +
                            std::to_string(n[t]) + " processes, and a host's processes are not split (they may "
                            "share a process tree, pipes and memory)");
        continue;
      }
      if (leader.empty() || filled + n[t] > o.ranks_per_host) {
        leader = t;
        filled = 0;
      }
      filled += n[t];
      pack[t] = leader;
    }
    for (auto& [h, t] : plan.to)
      if (pack.count(t)) t = pack[t];
  }
  // Parts started through the remote shell replay as they were started: one
  // part per starter's ssh, so such a part cannot share its host.
  std::map<std::string, std::string> via;
  for (const auto& h : m.hosts)
    if (h.is_object()) via[h.value("name", "")] = h.value("via", "");
  std::map<std::string, std::vector<std::string>> members;
  for (const auto& h : order) members[plan.to[h]].push_back(h);
  for (const auto& [t, hs] : members) {
    if (hs.size() < 2) continue;
    for (const auto& h : hs)
      if (!via[h].empty())
        refusals->push_back("host " + h + " was started through the job's remote shell (by " +
                            via[h].substr(0, via[h].rfind(':')) + "), so it cannot share host " + t +
                            " with " + Join(hs, ", ") + " yet");
  }
  for (const auto& h : order) {
    if (plan.to[h] != h && report)
      report->changes.push_back("host " + h + ": " + std::to_string(count[h]) + " process(es) -> " + plan.to[h]);
  }
  // One manifest entry per target host: its first captured host's, renamed.
  std::set<std::string> done;
  for (const auto& h : order) {
    const std::string& t = plan.to[h];
    if (!done.insert(t).second) continue;
    nlohmann::json e = {{"name", t}};
    for (const auto& x : m.hosts)
      if (x.is_object() && x.value("name", "") == h) e = x;
    e["name"] = t;
    if (e.contains("via") && e["via"].is_string()) {
      // "HOST:PID:PPID": its host is where the starter now runs.
      std::string v = e["via"].get<std::string>();
      size_t b = v.rfind(':');
      size_t a = b == std::string::npos || b == 0 ? std::string::npos : v.rfind(':', b - 1);
      if (a != std::string::npos && plan.to.count(v.substr(0, a))) e["via"] = plan.to[v.substr(0, a)] + v.substr(a);
    }
    plan.hosts.push_back(std::move(e));
  }
  return plan;
}

}  // namespace

TranslateRefused::TranslateRefused(std::vector<std::string> reasons)
    : ImageError(Join(reasons, "\n")), reasons_(std::move(reasons)) {}

const char* LinkLayerName(uint32_t l) {
  return l == kLinkInfiniBand ? "infiniband" : l == kLinkEthernet ? "ethernet" : "unknown";
}

uint32_t MtuEnum(uint64_t bytes) {
  for (uint32_t m = 1; m <= 5; m++)
    if ((128ull << m) == bytes) return m;
  return 0;
}
uint32_t MtuBytes(uint64_t m) { return m >= 1 && m <= 5 ? 128u << m : 0; }

uint32_t ParseFabric(const std::string& name) {
  if (name == "roce" || name == "ethernet") return kLinkEthernet;
  if (name == "ib" || name == "infiniband") return kLinkInfiniBand;
  throw ImageError("unknown fabric '" + name + "': expected roce or ib");
}

TargetCaps DefaultCaps(uint32_t link_layer) {
  TargetCaps c;
  c.link_layer = link_layer;
  c.phys_port_cnt = 1;
  c.atomic_cap = 1;
  if (link_layer == kLinkEthernet) {
    // rxe (drivers/infiniband/sw/rxe/rxe_param.h), the smaller of Linux 5.x's
    // and 6.x's values, on a 1500-byte Ethernet; GID index 1 is the IPv4
    // address as RoCE v2 (as softrdma --mode roce has it).
    c.active_mtu = 3;  // 1024
    GidEntry g0, g1;
    g0.index = 0, g0.type = "RoCE v2", g0.gid[0] = 0xfe, g0.gid[1] = 0x80;
    g1.index = 1, g1.type = "RoCE v2", g1.gid[10] = 0xff, g1.gid[11] = 0xff;
    c.gids = {g0, g1};
    c.max_inline_data = 512;
    c.max_sge = 32;
    c.max_qp_wr = 16384;
    c.max_cqe = 32767;
    c.max_qp_rd_atom = 128;
    c.max_qp_init_rd_atom = 128;
    c.max_srq_wr = 16384;
    c.max_srq_sge = 27;
  } else {
    // A ConnectX-class InfiniBand port; max_inline_data conservatively low
    // (providers do not report it; `ibdbg caps` probes the real one).
    c.active_mtu = 5;  // 4096
    GidEntry g0;
    g0.index = 0, g0.type = "IB", g0.gid[0] = 0xfe, g0.gid[1] = 0x80;
    c.gids = {g0};
    c.max_inline_data = 256;
    c.max_sge = 30;
    c.max_qp_wr = 32768;
    c.max_cqe = 4194303;
    c.max_qp_rd_atom = 16;
    c.max_qp_init_rd_atom = 16;
    c.max_srq_wr = 32767;
    c.max_srq_sge = 31;
  }
  return c;
}

std::vector<TargetCaps> ParseCaps(const std::string& text, const std::string& where) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception&) {
    throw ImageError(where + ": not valid JSON (expected the output of `ibdbg caps`)");
  }
  if (!j.is_object() || !j.contains("devices") || !j["devices"].is_array())
    throw ImageError(where + ": no \"devices\" list (expected the output of `ibdbg caps`)");
  std::vector<TargetCaps> out;
  for (const auto& d : j["devices"]) {
    TargetCaps c;
    if (!d.is_object() || !d.contains("name") || !d["name"].is_string())
      throw ImageError(where + ": a device without a name");
    c.device = d["name"].get<std::string>();
    auto num = [&](const char* key) -> uint64_t {
      if (!d.contains(key) || !d[key].is_number_unsigned())
        throw ImageError(where + ": device " + c.device + " has no " + key);
      return d[key].get<uint64_t>();
    };
    std::string ll = d.value("link_layer", "");
    if (ll != "ethernet" && ll != "infiniband")
      throw ImageError(where + ": device " + c.device + " has link layer '" + ll + "'");
    c.link_layer = ParseFabric(ll);
    c.active_mtu = MtuEnum(num("active_mtu"));
    if (!c.active_mtu) throw ImageError(where + ": device " + c.device + " has an invalid active_mtu");
    c.phys_port_cnt = d.contains("phys_port_cnt") ? (uint32_t)num("phys_port_cnt") : 1;
    c.max_inline_data = num("max_inline_data");
    c.max_sge = num("max_sge");
    c.max_qp_wr = num("max_qp_wr");
    c.max_cqe = num("max_cqe");
    c.max_qp_rd_atom = num("max_qp_rd_atom");
    c.max_qp_init_rd_atom = num("max_qp_init_rd_atom");
    c.max_srq_wr = num("max_srq_wr");
    c.max_srq_sge = num("max_srq_sge");
    c.atomic_cap = d.contains("atomic_cap") ? (uint32_t)num("atomic_cap") : 1;
    if (d.contains("gids") && d["gids"].is_array())
      for (const auto& g : d["gids"]) {
        GidEntry e;
        e.index = g.value("index", 0u);
        e.type = g.value("type", "");
        std::string t = g.value("gid", "");
        unsigned v[16];
        if (std::sscanf(t.c_str(), "%2x%2x:%2x%2x:%2x%2x:%2x%2x:%2x%2x:%2x%2x:%2x%2x:%2x%2x", &v[0], &v[1], &v[2],
                        &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9], &v[10], &v[11], &v[12], &v[13], &v[14],
                        &v[15]) != 16)
          throw ImageError(where + ": device " + c.device + " has a GID '" + t + "' that is not 8 groups of 4 hex digits");
        for (int i = 0; i < 16; i++) e.gid[i] = (uint8_t)v[i];
        c.gids.push_back(e);
      }
    out.push_back(std::move(c));
  }
  if (out.empty()) throw ImageError(where + ": lists no device");
  return out;
}

std::string RenderDiff(const TranslateResult& r) {
  std::string out, last;
  for (const std::string& c : r.changes) {
    size_t colon = c.find(": ");
    std::string obj = colon == std::string::npos ? c : c.substr(0, colon);
    std::string what = colon == std::string::npos ? "" : c.substr(colon + 2);
    if (obj != last) out += obj + "\n";
    last = obj;
    if (!what.empty()) out += "    " + what + "\n";
  }
  if (r.changes.empty()) out = "no changes\n";
  return out;
}

Mapping ParseNameMapping(const std::string& spec, const char* option) {
  size_t eq = spec.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
    throw ImageError(std::string("bad ") + option + " " + spec + ": expected OLD=NEW");
  return {spec.substr(0, eq), spec.substr(eq + 1)};
}

Mapping ParseMapping(const std::string& spec) {
  size_t eq = spec.find('=');
  if (eq == std::string::npos)
    throw ImageError("invalid path mapping '" + spec + "': expected OLD=NEW");
  return Normalize({spec.substr(0, eq), spec.substr(eq + 1)}, spec);
}

PathMapper::PathMapper(std::vector<Mapping> maps) {
  for (const Mapping& m : maps) {
    Mapping n = Normalize(m, m.first + "=" + m.second);
    for (const Mapping& g : given_)
      if (g.first == n.first)
        throw ImageError("path mapping for " + n.first + " given more than once");
    given_.push_back(std::move(n));
  }
  longest_first_ = given_;
  std::stable_sort(longest_first_.begin(), longest_first_.end(),
                   [](const Mapping& a, const Mapping& b) { return a.first.size() > b.first.size(); });
}

std::optional<std::string> PathMapper::Map(const std::string& path) const {
  for (const auto& [from, to] : longest_first_) {
    // "/" is the one prefix that already ends at a component boundary.
    if (path == from) return to;
    const std::string base = from == "/" ? "" : from;
    if (path.size() <= base.size() || path[base.size()] != '/' ||
        path.compare(0, base.size(), base) != 0)
      continue;
    std::string rest = path.substr(base.size());
    std::string out = (to == "/" && !rest.empty() ? "" : to) + rest;
    return out.empty() ? "/" : out;
  }
  return std::nullopt;
}

// An incremental image (image_chain.h) has pages in its parents: the
// translation is of the full image its chain resolves to, made once into a
// private scratch directory, so that the output needs no parent.
class FlatInputs {
 public:
  ~FlatInputs() {
    if (!dir_.empty()) image::RemoveTree(AT_FDCWD, dir_);
  }
  std::string Get(const std::string& path) {
    auto it = done_.find(path);
    if (it != done_.end()) return it->second;
    std::vector<std::string> chain = image::ResolveChain(path);
    if (chain.size() == 1) return done_[path] = path;
    if (dir_.empty()) {
      const char* t = getenv("TMPDIR");
      std::string tmpl = std::string(t && *t ? t : "/tmp") + "/ibdbg-flat.XXXXXX";
      if (!mkdtemp(tmpl.data())) throw ImageError(ErrnoMessage("cannot make a scratch directory"));
      dir_ = tmpl;
    }
    std::string out = dir_ + "/" + std::to_string(done_.size()) + ".img";
    Fd fd(::open(out.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (fd.get() < 0) throw ImageError(ErrnoMessage("cannot create " + out));
    image::FlattenChain(chain, fd.get());
    fd.Close(out);
    return done_[path] = out;
  }

 private:
  std::string dir_;
  std::map<std::string, std::string> done_;
};

TranslateResult TranslateImage(const std::string& in_image, const std::string& out_dir,
                               const TranslateOptions& opts) {
  PathMapper mapper(opts.map_paths);
  FlatInputs flat;
  // No mappings is a plain validated copy: still a target image with provenance.
  const std::string in_dir = image::ResolveImageDir(in_image);
  const image::Manifest in = image::ReadManifest(in_dir);
  if (out_dir.empty()) {
    if (!opts.dry_run) throw ImageError("no output image given");
  } else {
    CheckOutput(in_dir, out_dir);
  }
  if (opts.fabric.mtu && !MtuEnum(opts.fabric.mtu))
    throw ImageError("--mtu " + std::to_string(opts.fabric.mtu) + ": expected 256, 512, 1024, 2048 or 4096");

  // First pass: verify everything and collect the report, writing nothing,
  // so a damaged input, or one that cannot be carried to the target, is
  // refused before any output exists.
  TranslateResult result;
  std::vector<std::string> refusals;
  HostPlan hosts = PlanHosts(in, opts.hosts, &result, &refusals);
  for (const image::ManifestProcess& mp : in.processes) {
    std::string path = flat.Get(in_dir + "/" + mp.image);
    ProcessTranslator(path, mp, mapper, opts.fabric, &result, &refusals).Run(nullptr);
  }
  if (!refusals.empty()) throw TranslateRefused(refusals);
  if (opts.dry_run) return result;

  const std::string checksum = image::ImageChecksum(in_dir);
  image::Manifest out;
  out.ibdbg_version = IBDBG_VERSION;
  out.job_id = in.job_id;
  out.created_ns = image::RealtimeNs();
  out.created = image::FormatIsoTime(out.created_ns);
  out.kind = "translate";
  out.captured = in.captured.empty() ? in.created : in.captured;
  out.hosts = hosts.hosts;
  nlohmann::json specs = nlohmann::json::array();
  for (const Mapping& m : mapper.mappings()) specs.push_back(m.first + "=" + m.second);
  nlohmann::json options = {{"map_path", specs}};
  const FabricOptions& f = opts.fabric;
  if (f.link_layer) {
    options["fabric"] = f.link_layer == kLinkEthernet ? "roce" : "ib";
    options["target_caps"] = f.target_caps_file.empty() ? std::string("defaults") : f.target_caps_file;
  }
  if (!f.devices.empty()) {
    nlohmann::json d = nlohmann::json::array();
    for (const auto& [o, n] : f.devices) d.push_back(o + "=" + n);
    options["device"] = d;
  }
  if (f.mtu) options["mtu"] = f.mtu;
  if (!opts.hosts.hosts.empty()) {
    nlohmann::json d = nlohmann::json::array();
    for (const auto& [o, n] : opts.hosts.hosts) d.push_back(o + "=" + n);
    options["host"] = d;
  }
  if (opts.hosts.ranks_per_host > 0) options["ranks_per_host"] = opts.hosts.ranks_per_host;
  out.parent = {{"image", in_dir}, {"checksum", checksum}, {"options", options}};

  image::AtomicDir dir(out_dir);
  for (const image::ManifestProcess& mp : in.processes) {
    std::string path = flat.Get(in_dir + "/" + mp.image);
    std::string shown = dir.temp_path() + "/" + mp.image;
    Fd fd(dir.CreateFile(mp.image));
    image::ManifestProcess np = mp;
    {
      image::ImageWriter w(fd.get());
      ProcessTranslator(path, mp, mapper, opts.fabric, nullptr, nullptr).Run(&w);
      w.Finish();
      np.bytes = w.bytes_written();
    }
    fd.Close(shown);
    if (auto exe = mapper.Map(np.exe)) np.exe = *exe;
    np.host = hosts.to.count(np.host) ? hosts.to[np.host] : np.host;
    out.processes.push_back(std::move(np));
  }
  {
    Fd fd(dir.CreateFile(image::kManifestName));
    image::WriteManifestFd(fd.get(), out, dir.temp_path() + "/" + image::kManifestName);
    fd.Close(image::kManifestName);
  }
  dir.Commit(false);
  return result;
}

}  // namespace ibdbg::translate
