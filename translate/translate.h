#pragma once

// `ibdbg translate IN OUT [--map-path OLD=NEW]... [--fabric roce|ib ...]`: a
// copy of an image rewritten for another target: file paths for replaying
// where files live somewhere else, the verbs state for another fabric
// (InfiniBand <-> RoCE) and device, the hosts for another cluster.  The copy
// records its parent image and the options used (provenance).
// translate/README.md says which verbs record fields are rewritten and why.

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ibdbg/error.h"

namespace ibdbg::translate {

using Mapping = std::pair<std::string, std::string>;  // OLD prefix, NEW prefix

// IBV_LINK_LAYER_* values, as the verbs record stores them.
inline constexpr uint32_t kLinkInfiniBand = 1, kLinkEthernet = 2;

struct GidEntry {
  uint32_t index = 0;
  std::array<uint8_t, 16> gid{};
  std::string type;  // "IB", "RoCE v1", "RoCE v2"
};

// A target device's limits, as `ibdbg caps` prints them (port 1).
struct TargetCaps {
  std::string device;  // "" for the built-in defaults (any device)
  uint32_t link_layer = 0;
  uint32_t active_mtu = 0;  // enum ibv_mtu (1 = 256 ... 5 = 4096)
  uint32_t phys_port_cnt = 1;
  std::vector<GidEntry> gids;
  uint64_t max_inline_data = 0, max_sge = 0, max_qp_wr = 0, max_cqe = 0, max_qp_rd_atom = 0,
           max_qp_init_rd_atom = 0, max_srq_wr = 0, max_srq_sge = 0;
  uint32_t atomic_cap = 1;  // enum ibv_atomic_cap; 0 = no atomics
};

// The built-in target for a fabric when no --target-caps is given:
// kLinkEthernet is rxe (SoftRoCE) on a 1500-byte Ethernet, kLinkInfiniBand
// an InfiniBand port of 4096 bytes (translate/README.md lists the values).
TargetCaps DefaultCaps(uint32_t link_layer);
// Every device of an `ibdbg caps` JSON document; `where` names it in errors.
// Throws ImageError (one line).
std::vector<TargetCaps> ParseCaps(const std::string& json_text, const std::string& where);
// "roce" / "ib" (also "ethernet" / "infiniband") to a link layer; throws.
uint32_t ParseFabric(const std::string& name);
const char* LinkLayerName(uint32_t link_layer);  // "infiniband", "ethernet", "unknown"
// enum ibv_mtu <-> bytes (0 when not one of 256..4096).
uint32_t MtuEnum(uint64_t bytes);
uint32_t MtuBytes(uint64_t mtu_enum);

struct FabricOptions {
  uint32_t link_layer = 0;  // 0: the verbs state is not rewritten
  // The target's devices (from --target-caps); empty: DefaultCaps(link_layer).
  std::vector<TargetCaps> target_caps;
  std::string target_caps_file;  // for the provenance
  std::vector<Mapping> devices;  // --device OLD=NEW, device names
  uint32_t mtu = 0;              // --mtu, bytes; 0: the target's active MTU
};

struct HostOptions {
  std::vector<Mapping> hosts;  // --host OLD=NEW, applied first (several OLD may share a NEW)
  int ranks_per_host = 0;      // --ranks-per-host K: then pack whole hosts, K processes each
};

struct TranslateOptions {
  // A path is rewritten by the longest OLD that is a prefix of it at a path
  // component boundary (/usr/lib matches /usr/lib and /usr/lib/x, never
  // /usr/lib64); each path is rewritten at most once.
  std::vector<Mapping> map_paths;
  FabricOptions fabric;
  HostOptions hosts;
  bool dry_run = false;  // compute and validate, write nothing
};

// "OLD=NEW" for --device and --host: both non-empty, no '/' in NEW for hosts.
Mapping ParseNameMapping(const std::string& spec, const char* option);

// What cannot be carried to the target: one line per reason, each naming the
// object ("pid 12 QP 0x11 uses max_inline_data 512; the target allows 256").
// Thrown before anything is written.
class TranslateRefused : public ImageError {
 public:
  explicit TranslateRefused(std::vector<std::string> reasons);
  const std::vector<std::string>& reasons() const { return reasons_; }

 private:
  std::vector<std::string> reasons_;
};

struct TranslateResult {
  // "pid 123 vma 0x7f0000000000: /old/lib.so -> /new/lib.so", in image order;
  // for the verbs state one line per field of each object, "pid 123 QP 0x11:
  // path_mtu 4096 -> 1024", and "host node1: ... -> ..." for the hosts.
  std::vector<std::string> changes;
  // Things the user should know, e.g. records of unknown types that were
  // copied unchanged and so could not have their paths rewritten.
  std::vector<std::string> warnings;
};

// The changes as a diff for review, object by object:
//   pid 123 QP 0x11
//     path_mtu 4096 -> 1024
// (a line for each object, then its fields, old value -> new value).
std::string RenderDiff(const TranslateResult& r);

// "OLD=NEW" (split at the first '='); both absolute, no ".." components;
// trailing slashes dropped. Throws ImageError (one line) on bad syntax.
Mapping ParseMapping(const std::string& spec);

// Applies a set of mappings; validates them as ParseMapping does and rejects
// the same OLD given twice.
class PathMapper {
 public:
  explicit PathMapper(std::vector<Mapping> maps);
  // The rewritten path, or nullopt if no mapping applies.
  std::optional<std::string> Map(const std::string& path) const;
  const std::vector<Mapping>& mappings() const { return given_; }  // as given, normalized

 private:
  std::vector<Mapping> given_;
  std::vector<Mapping> longest_first_;
};

// Reads and verifies the whole input image before writing anything, then
// writes OUT atomically (temporary sibling directory, fsync, rename). Refuses
// an OUT that exists, is the input or lies inside it. With dry_run, OUT may
// be empty. Throws ImageError (one line); on failure nothing is left behind
// except parent directories of OUT that had to be created.
TranslateResult TranslateImage(const std::string& in_image, const std::string& out_dir,
                               const TranslateOptions& opts);

}  // namespace ibdbg::translate
