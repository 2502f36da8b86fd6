#pragma once

#include <string>

#include "ibdbg/error.h"

namespace ibdbg::image {

// Builds a directory under a hidden sibling name and renames it into place on
// Commit(), so a crash or error never leaves a half-written image directory at
// the final path. Not thread-safe.
class AtomicDir {
 public:
  // Creates "<parent>/.<name>.tmp.XXXXXX" (mode 0700); creates missing parent
  // directories with mode 0700. Throws ImageError.
  explicit AtomicDir(const std::string& final_path);
  // Removes the temporary tree unless committed; never throws.
  ~AtomicDir();
  AtomicDir(const AtomicDir&) = delete;
  AtomicDir& operator=(const AtomicDir&) = delete;

  const std::string& final_path() const { return final_path_; }
  std::string temp_path() const { return parent_ + "/" + temp_name_; }
  bool committed() const { return committed_; }

  // Creates a new file (mode 0600) directly inside the temp directory; name
  // must be a plain file name. Returns an fd the caller must close.
  int CreateFile(const std::string& name);

  // fsyncs every file and directory in the temp tree (including ones not made
  // by CreateFile), renames it to final_path and fsyncs the parent. Without
  // replace_existing an existing final_path is an error and left untouched;
  // with it, the old tree is swapped out atomically and then removed.
  void Commit(bool replace_existing = false);

 private:
  std::string final_path_;
  std::string parent_;
  std::string name_;
  std::string temp_name_;
  int parent_fd_ = -1;
  int temp_fd_ = -1;
  bool committed_ = false;
};

// mkdir -p with the given mode for created components. Throws ImageError.
void MakeDirs(const std::string& path, unsigned mode = 0700);

// rm -rf of dirfd/name without following symlinks; best effort, returns false
// if anything could not be removed.
bool RemoveTree(int dirfd, const std::string& name) noexcept;

}  // namespace ibdbg::image
