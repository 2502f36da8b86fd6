#pragma once

// `ibdbg translate IN OUT --map-path OLD=NEW...`: a copy of an image in which
// file paths are rewritten, for replaying where files live somewhere else.
// The copy records its parent image and the options used (provenance).

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ibdbg/error.h"

namespace ibdbg::translate {

using Mapping = std::pair<std::string, std::string>;  // OLD prefix, NEW prefix

struct TranslateOptions {
  // A path is rewritten by the longest OLD that is a prefix of it at a path
  // component boundary (/usr/lib matches /usr/lib and /usr/lib/x, never
  // /usr/lib64); each path is rewritten at most once.
  std::vector<Mapping> map_paths;
  bool dry_run = false;  // compute and validate, write nothing
};

struct TranslateResult {
  // "pid 123 vma 0x7f0000000000: /old/lib.so -> /new/lib.so", in image order.
  std::vector<std::string> changes;
  // Things the user should know, e.g. records of unknown types that were
  // copied unchanged and so could not have their paths rewritten.
  std::vector<std::string> warnings;
};

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
