#include "ibdbg/atomic_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace ibdbg::image {

namespace {

int OpenDir(int dirfd, const std::string& name) {
  return ::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

bool IsDirEntry(int dirfd, const dirent* e) {
  if (e->d_type != DT_UNKNOWN) return e->d_type == DT_DIR;
  struct stat st;
  return ::fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
}

// Names in an open directory, excluding "." and "..". Takes ownership of fd.
std::vector<std::pair<std::string, bool>> ListDir(int fd) {
  std::vector<std::pair<std::string, bool>> out;
  DIR* d = ::fdopendir(fd);
  if (!d) {
    ::close(fd);
    return out;
  }
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n == "." || n == "..") continue;
    out.emplace_back(n, IsDirEntry(::dirfd(d), e));
  }
  ::closedir(d);
  return out;
}

// Durability needs the data of every file and every directory entry on disk
// before the rename publishes the tree.
void FsyncTree(int dirfd, const std::string& shown) {
  int dup = ::fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) throw ImageError(ErrnoMessage(shown));
  for (const auto& [name, is_dir] : ListDir(dup)) {
    std::string path = shown + "/" + name;
    if (is_dir) {
      int fd = OpenDir(dirfd, name);
      if (fd < 0) throw ImageError(ErrnoMessage(path));
      try {
        FsyncTree(fd, path);
      } catch (...) {
        ::close(fd);
        throw;
      }
      ::close(fd);
      continue;
    }
    int fd = ::openat(dirfd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
      if (errno == ELOOP) continue;  // symlinks have no data of their own
      throw ImageError(ErrnoMessage(path));
    }
    struct stat st;
    bool regular = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    int rc = regular ? ::fsync(fd) : 0;
    int err = errno;
    ::close(fd);
    if (rc != 0) throw ImageError(ErrnoMessage("fsync " + path, err));
  }
  if (::fsync(dirfd) != 0) throw ImageError(ErrnoMessage("fsync " + shown));
}

bool ValidName(const std::string& n) {
  return !n.empty() && n != "." && n != ".." && n.find('/') == std::string::npos &&
         n.find('\0') == std::string::npos;
}

}  // namespace

void MakeDirs(const std::string& path, unsigned mode) {
  if (path.empty()) return;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    std::string prefix = path.substr(0, pos);
    if (prefix.empty() || prefix.back() == '/') continue;
    if (::mkdir(prefix.c_str(), mode) == 0) continue;
    int err = errno;
    struct stat st;
    if (err == EEXIST && ::stat(prefix.c_str(), &st) == 0) {
      if (S_ISDIR(st.st_mode)) continue;
      throw ImageError(prefix + ": exists and is not a directory");
    }
    throw ImageError(ErrnoMessage("cannot create directory " + prefix, err));
  }
}

bool RemoveTree(int dirfd, const std::string& name) noexcept {
  try {
    if (::unlinkat(dirfd, name.c_str(), 0) == 0 || errno == ENOENT) return true;
    if (errno != EISDIR && errno != EPERM) return false;
    int fd = OpenDir(dirfd, name);
    if (fd < 0) return false;
    bool ok = true;
    int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup >= 0) {
      for (const auto& entry : ListDir(dup)) ok = RemoveTree(fd, entry.first) && ok;
    } else {
      ok = false;
    }
    ::close(fd);
    return ::unlinkat(dirfd, name.c_str(), AT_REMOVEDIR) == 0 && ok;
  } catch (...) {
    return false;
  }
}

AtomicDir::AtomicDir(const std::string& final_path) : final_path_(final_path) {
  std::string p = final_path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  size_t slash = p.rfind('/');
  if (slash == std::string::npos) {
    parent_ = ".";
    name_ = p;
  } else {
    parent_ = slash == 0 ? "/" : p.substr(0, slash);
    name_ = p.substr(slash + 1);
  }
  if (!ValidName(name_)) throw ImageError(final_path + ": not a usable directory name");

  MakeDirs(parent_);
  parent_fd_ = ::open(parent_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (parent_fd_ < 0) throw ImageError(ErrnoMessage("cannot open directory " + parent_));

  std::string tmpl = (parent_ == "/" ? "" : parent_) + "/." + name_ + ".tmp.XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!::mkdtemp(buf.data())) {
    int err = errno;
    ::close(parent_fd_);
    throw ImageError(ErrnoMessage("cannot create temporary directory " + tmpl, err));
  }
  std::string made = buf.data();
  temp_name_ = made.substr(made.rfind('/') + 1);
  temp_fd_ = OpenDir(parent_fd_, temp_name_);
  if (temp_fd_ < 0) {
    int err = errno;
    RemoveTree(parent_fd_, temp_name_);
    ::close(parent_fd_);
    throw ImageError(ErrnoMessage("cannot open " + made, err));
  }
}

AtomicDir::~AtomicDir() {
  if (temp_fd_ >= 0) ::close(temp_fd_);
  if (!committed_) RemoveTree(parent_fd_, temp_name_);
  ::close(parent_fd_);
}

int AtomicDir::CreateFile(const std::string& name) {
  if (committed_) throw ImageError(final_path_ + ": CreateFile after Commit");
  if (!ValidName(name)) throw ImageError("invalid image file name '" + name + "'");
  int fd = ::openat(temp_fd_, name.c_str(),
                    O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) throw ImageError(ErrnoMessage("cannot create " + temp_path() + "/" + name));
  return fd;
}

void AtomicDir::Commit(bool replace_existing) {
  if (committed_) throw ImageError(final_path_ + ": already committed");
  FsyncTree(temp_fd_, temp_path());

  const char* tmp = temp_name_.c_str();
  const char* fin = name_.c_str();
  auto exists_error = [&] {
    return ImageError(final_path_ + ": already exists (refusing to overwrite)");
  };
  auto rename_error = [&](int err) {
    return ImageError(ErrnoMessage("cannot rename " + temp_path() + " to " + final_path_, err));
  };
  // Filesystems without renameat2 flags get a check-then-rename that is not
  // atomic against concurrent creators, which is acceptable for our use.
  auto rename_noreplace = [&] {
    if (::renameat2(parent_fd_, tmp, parent_fd_, fin, RENAME_NOREPLACE) == 0) return;
    int err = errno;
    if (err == EEXIST) throw exists_error();
    if (err != EINVAL && err != ENOSYS) throw rename_error(err);
    struct stat st;
    if (::fstatat(parent_fd_, fin, &st, AT_SYMLINK_NOFOLLOW) == 0) throw exists_error();
    if (::renameat(parent_fd_, tmp, parent_fd_, fin) != 0) throw rename_error(errno);
  };

  std::string old_name;  // where the replaced tree ended up, to be removed
  if (!replace_existing) {
    rename_noreplace();
  } else if (::renameat2(parent_fd_, tmp, parent_fd_, fin, RENAME_EXCHANGE) == 0) {
    old_name = temp_name_;
  } else if (errno == ENOENT) {
    rename_noreplace();
  } else if (errno == EINVAL || errno == ENOSYS) {
    std::string aside = temp_name_ + ".old";
    if (::renameat(parent_fd_, fin, parent_fd_, aside.c_str()) != 0) {
      if (errno != ENOENT) throw rename_error(errno);
    } else {
      old_name = aside;
    }
    if (::renameat(parent_fd_, tmp, parent_fd_, fin) != 0) {
      int err = errno;
      if (!old_name.empty()) ::renameat(parent_fd_, aside.c_str(), parent_fd_, fin);
      throw rename_error(err);
    }
  } else {
    throw rename_error(errno);
  }
  committed_ = true;
  ::close(temp_fd_);
  temp_fd_ = -1;
  int sync_rc = ::fsync(parent_fd_);
  int sync_err = errno;
  // The new tree is already in place; failing to delete the old one only
  // wastes space, so it must not turn a successful commit into an error.
  if (!old_name.empty()) RemoveTree(parent_fd_, old_name);
  if (sync_rc != 0) throw ImageError(ErrnoMessage("fsync " + parent_, sync_err));
}

}  // namespace ibdbg::image
