// Moving a process image's pages into a restored process: all at once
// (eager, on several threads) or on demand through userfaultfd (lazy).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ibdbg/image_file.h"

namespace ibdbg::replay {

// Random access to the page records of one image file, each record checked
// (header and payload hashes) and decompressed as ImageReader does.
class PageFile {
 public:
  explicit PageFile(const std::string& path);
  ~PageFile();
  PageFile(const PageFile&) = delete;
  PageFile& operator=(const PageFile&) = delete;
  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }
  // The checked header at `off`; throws ImageError.
  image::RecordHeader Header(uint64_t off) const;
  // The payload of the record whose header `h` sits at `off`, decompressed
  // into `out` (`stored` is scratch).
  void Payload(const image::RecordHeader& h, uint64_t off, std::vector<uint8_t>& stored,
               std::vector<uint8_t>& out) const;
  [[noreturn]] void Corrupted(uint64_t off, const char* why) const;
  // Asks the kernel to read these bytes in the background (never fails).
  void Prefetch(uint64_t off, uint64_t len) const;
  // No readahead: each read brings what it asks for.
  void Random() const;

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

// One page record: `len` bytes for address `addr`, its header at `offset`.
struct PageRun {
  uint64_t addr, len, offset;
};

// What to do with a page record at (addr, len): write it (process_vm_writev),
// copy it through the userfaultfd, skip it, leave it to the page server, or
// throw.
enum class PageUse { Write, Copy, Skip, Lazy };
using PageClassifier = std::function<PageUse(uint64_t addr, uint64_t len)>;

struct FillResult {
  uint64_t bytes = 0;             // written now
  std::vector<PageRun> lazy;      // left for the page server
};

// Walks the records from the page record at `first_offset` (record number
// `first_index`) to the End record, which it checks.  Records classified
// Write are read, checked, decompressed and written into `pid` with
// process_vm_writev on `threads` workers while the next ones are read.
// With `walk_ahead` (a lazy replay, which reads little but every header)
// the headers that probably follow, records of the size just seen, are asked
// for in the background, so that the walk does not wait for one read after
// another.
// Records classified Copy go in with UFFDIO_COPY on `uffd` (registered
// regions, nothing running yet): the kernel allocates each page and copies
// into it, where a first write through process_vm_writev has it zeroed
// first (most of an eager replay's time on the machines measured).
FillResult FillPages(const PageFile& f, uint64_t first_offset, uint64_t first_index, pid_t pid,
                     const PageClassifier& classify, int threads, bool walk_ahead = false, int uffd = -1);

// The lazy replay's page server: owns the userfaultfd of each restored
// process, answers its page faults from the image and copies every other
// page in the background until all are present.  Runs on a thread of its
// own; follows fork (the child's pages come from the same records),
// mremap, munmap and madvise(MADV_DONTNEED) of the processes.
class PageServer {
 public:
  PageServer();
  ~PageServer();  // stops the thread; pages not yet copied are lost then
  // Adds a process: `uffd` is ours (a duplicate of the process's), `runs` its
  // lazy records in `f`.
  void Add(pid_t pid, int uffd, std::shared_ptr<PageFile> f, std::vector<PageRun> runs);
  void Start();
  // Waits until every page is present (or its process is gone).
  void WaitDone();
  // Calls `f` on the server's thread once every page is present (at once
  // if they are).
  void OnDone(std::function<void()> f);
  bool done() const;
  // Milliseconds from Start() to the last page, once done.
  double fill_ms() const;
  uint64_t bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Whether this process may replay lazily; "" if so, else the reason (one line).
std::string LazyRefusal();

}  // namespace ibdbg::replay
