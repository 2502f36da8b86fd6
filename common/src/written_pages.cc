#include "ibdbg/written_pages.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "ibdbg/error.h"

namespace ibdbg {
namespace {

// <linux/fs.h> of Linux 6.7; absent from the installed headers.
struct PmPageRegion {
  uint64_t start, end, categories;
};
struct PmScanArg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
  uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
constexpr unsigned long kPagemapScan = _IOWR('f', 16, PmScanArg);
constexpr uint64_t kPmScanWpMatching = 1 << 0;
constexpr uint64_t kPmScanCheckWpAsync = 1 << 1;
constexpr uint64_t kPageIsWritten = 1 << 1;
constexpr uint64_t kPageIsPresent = 1 << 3, kPageIsSwapped = 1 << 4;

}  // namespace

int OpenWriteTracker(std::string* err) {
  int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
  if (fd < 0) {
    *err = ErrnoMessage("userfaultfd");
    return -1;
  }
  // WP_UNPOPULATED: a page not yet faulted in is protected too, so its first
  // write is seen (else it would be missed until the next scan arms it).
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = kUffdFeatureWpAsync | kUffdFeatureWpUnpopulated;
  if (ioctl(fd, UFFDIO_API, &api) != 0) {
    *err = ErrnoMessage("userfaultfd: asynchronous write protection (Linux 6.7) not available");
    close(fd);
    return -1;
  }
  return fd;
}

bool TrackWrites(int uffd, uint64_t start, uint64_t len, std::string* err) {
  uffdio_register reg{};
  reg.range.start = start;
  reg.range.len = len;
  reg.mode = UFFDIO_REGISTER_MODE_WP;
  if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) {
    *err = ErrnoMessage("userfaultfd register for write tracking");
    return false;
  }
  return true;
}

namespace {
bool Scan(int pagemap_fd, uint64_t start, uint64_t end, uint64_t flags, uint64_t mask, uint64_t anyof,
          std::vector<PageRange>* out, std::string* err) {
  PmPageRegion vec[512];
  while (start < end) {
    PmScanArg arg{};
    arg.size = sizeof arg;
    arg.flags = flags;
    arg.start = start;
    arg.end = end;
    arg.vec = (uint64_t)(uintptr_t)vec;
    arg.vec_len = sizeof vec / sizeof vec[0];
    arg.category_mask = mask;
    arg.category_anyof_mask = anyof;
    arg.return_mask = mask | anyof;
    long n = ioctl(pagemap_fd, kPagemapScan, &arg);
    if (n < 0) {
      *err = ErrnoMessage(errno == EPERM ? "PAGEMAP_SCAN: range not tracked by an asynchronous write-protect userfaultfd"
                                         : "PAGEMAP_SCAN");
      return false;
    }
    for (long i = 0; i < n; i++) {
      if (!out->empty() && out->back().end == vec[i].start)
        out->back().end = vec[i].end;
      else
        out->push_back({vec[i].start, vec[i].end});
    }
    if (arg.walk_end <= start) break;
    start = arg.walk_end;
  }
  return true;
}
}  // namespace

bool ScanPresentPages(int pagemap_fd, uint64_t start, uint64_t end, std::vector<PageRange>* out, std::string* err) {
  return Scan(pagemap_fd, start, end, 0, 0, kPageIsPresent | kPageIsSwapped, out, err);
}

bool ScanWrittenPages(int pagemap_fd, uint64_t start, uint64_t end, bool rearm,
                      std::vector<PageRange>* out, std::string* err) {
  PmPageRegion vec[512];
  // CHECK_WPASYNC: a range not registered with an asynchronous tracker is an
  // error (EPERM), never a silent "nothing written".
  while (start < end) {
    PmScanArg arg{};
    arg.size = sizeof arg;
    arg.flags = kPmScanCheckWpAsync | (rearm ? kPmScanWpMatching : 0);
    arg.start = start;
    arg.end = end;
    arg.vec = (uint64_t)(uintptr_t)vec;
    arg.vec_len = sizeof vec / sizeof vec[0];
    arg.category_mask = kPageIsWritten;
    arg.return_mask = kPageIsWritten;
    long n = ioctl(pagemap_fd, kPagemapScan, &arg);
    if (n < 0) {
      *err = ErrnoMessage(errno == EPERM ? "PAGEMAP_SCAN: range not tracked by an asynchronous write-protect userfaultfd"
                                         : "PAGEMAP_SCAN");
      return false;
    }
    for (long i = 0; i < n; i++) {
      if (!out->empty() && out->back().end == vec[i].start)
        out->back().end = vec[i].end;
      else
        out->push_back({vec[i].start, vec[i].end});
    }
    if (arg.walk_end <= start) break;
    start = arg.walk_end;
  }
  return true;
}

}  // namespace ibdbg
