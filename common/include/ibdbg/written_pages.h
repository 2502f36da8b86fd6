#pragma once

// Which pages of a process were written since the last look, for incremental
// capture (issue 7). This kernel has no soft-dirty bits, so the record is kept
// by a userfaultfd in asynchronous write-protect mode (UFFD_FEATURE_WP_ASYNC:
// no handler thread, the kernel only notes the write and lets it through) and
// read, and re-armed, with the PAGEMAP_SCAN ioctl on /proc/PID/pagemap, which
// works from another process (the agent) and for an unprivileged user:
// UFFD_USER_MODE_ONLY is enough because asynchronous write protection never
// calls the fault handler, so writes made by the kernel (read() into the
// page) are recorded too.
//
// The constants are spelled out because the installed UAPI headers predate
// them (Linux 6.7).

#include <cstdint>
#include <string>
#include <vector>

namespace ibdbg {

constexpr uint64_t kUffdFeatureWpUnpopulated = 1ull << 13;
constexpr uint64_t kUffdFeatureWpAsync = 1ull << 15;

struct PageRange {
  uint64_t start = 0, end = 0;  // [start, end), page aligned
};

// A userfaultfd of the calling process ready for asynchronous write
// protection: user-mode-only (allowed without privilege), close-on-exec.
// Returns the descriptor, or -1 with *err set (e.g. a kernel older than 6.7).
int OpenWriteTracker(std::string* err);

// Registers [start, start+len) of the tracker's process for write protection.
// A range already registered with another userfaultfd (the application's, or a
// lazy replay's page server) is refused by the kernel: the caller then has to
// store that range whole. Returns false with *err set.
bool TrackWrites(int uffd, uint64_t start, uint64_t len, std::string* err);

// Appends to *out the pages of [start, end) written since they were last
// armed (a page never armed counts as written), merged into ranges, and when
// rearm is true write-protects them again in the same walk, so no write is
// lost between reading and re-arming. The whole of [start, end) must be
// tracked (TrackWrites): an untracked part is an error, not "unwritten" --
// store such ranges whole instead. pagemap_fd is /proc/PID/pagemap of the tracked
// process (open for reading). Returns false with *err set.
bool ScanWrittenPages(int pagemap_fd, uint64_t start, uint64_t end, bool rearm,
                      std::vector<PageRange>* out, std::string* err);

// Appends to *out the pages of [start, end) that exist (present or swapped
// out), merged into ranges: the pages a process has, whatever it wrote.
bool ScanPresentPages(int pagemap_fd, uint64_t start, uint64_t end, std::vector<PageRange>* out, std::string* err);

}  // namespace ibdbg
