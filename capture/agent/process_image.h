// Writing one stopped process into an image file, from outside the process.
//
// The capture library has stopped every thread and sent its metadata blob;
// memory, descriptors and their data are read here through /proc, so the
// writer may use threads, malloc and zstd freely while the process stands still.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <chrono>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "ibdbg/proto.h"

namespace ibdbg::capture {

struct ProcessMeta {
  ibdbg_process_info proc{};
  std::vector<ibdbg_thread_info> threads;
  ibdbg_signal_state sig{};
  std::vector<uint8_t> verbs;  // the verbs layer's record, if it sent one
};

// Throws std::runtime_error on a malformed blob.
ProcessMeta ParseBlob(const std::vector<uint8_t>& blob);

struct WriteOptions {
  int zstd_level = 3;
  int threads = 0;
  std::string job_id;
  std::string ibdbg_version;
  // Shared objects (SysV, /dev/shm files, memory objects) whose bytes an
  // image of the same capture holds already: later images name them only.
  std::set<std::string>* ipc_stored = nullptr;
  // Incremental capture (capture/README.md): the process's write tracker, a
  // userfaultfd it made (-1: none).  Its private regions are registered (the
  // new ones) and their write notes read and re-armed, in the pause.
  int track_uffd = -1;
  // With a tracker armed at the parent's capture: the Header's "parent"
  // (JSON {"image", "id"}), and only pages written since are stored.  Empty:
  // a full image (the tracker is armed all the same).
  std::string parent_ref;
};

struct WriteStats {
  uint64_t file_bytes = 0;
  uint64_t memory_bytes = 0;  // bytes of pages stored (before compression)
  uint64_t vmas = 0;
  uint64_t fds = 0;
  uint64_t tracked_regions = 0;  // regions armed for the next incremental capture
  uint64_t inherited_bytes = 0;  // pages left to the parent image
};

// Bytes taken out of a pipe to store them; they go back when the process
// resumes (pipes have no other way to be read without consuming).
struct PipeRefill {
  PipeRefill() = default;
  PipeRefill(int f, std::string d) : fd(f), data(std::move(d)) {}
  int fd = -1;  // a descriptor of the pipe in the target process
  std::string data;
  bool fifo = false;  // a named FIFO: reopened read-write (a write-only open could block)
  // A pseudo-terminal master: data is what its slave wrote, pty_in what was
  // written to it (ttys cannot be read without consuming either).
  bool pty = false;
  std::string pty_in;
  ibdbg_pty_state pty_state{};
};

// Writes the image of `pid` to out_fd (fdatasync'ed). Throws std::runtime_error
// (one line) if the process cannot be imaged.
WriteStats WriteProcessImage(pid_t pid, const ProcessMeta& meta, int out_fd, const WriteOptions& opts,
                             std::vector<PipeRefill>* refills);

// The same in two steps, for a capture from a frozen copy-on-write fork of
// the process: BeginProcessImage writes, while the process is stopped,
// everything but its memory, and (with for_copy) the memory a fork does not
// copy as it is (shared mappings, deleted files); FinishProcessImage writes the rest of the memory from
// memory_pid (the copy, or the process itself) and fdatasyncs.
struct ImageInProgress;
struct ImageInProgressDeleter {
  void operator()(ImageInProgress* p) const;
};
using ImageInProgressPtr = std::unique_ptr<ImageInProgress, ImageInProgressDeleter>;
ImageInProgressPtr BeginProcessImage(pid_t pid, const ProcessMeta& meta, int out_fd, const WriteOptions& opts,
                                     std::vector<PipeRefill>* refills, bool for_copy);
// Once the copy is made, while the process is still stopped: the regions
// the fork did not copy as they are (MADV_DONTFORK, MADV_WIPEONFORK) are
// written from the process.
void WriteWhatTheCopyLacks(ImageInProgress& img, pid_t copy);
WriteStats FinishProcessImage(ImageInProgress& img, pid_t memory_pid);

// Puts drained pipe data back (best effort).
// Calls fn(fd, sock) for each TCP socket of the process: sock is a copy of
// its descriptor fd (pidfd_getfd), closed afterwards; fn returns false to
// stop.
void ForEachTcpSocket(pid_t pid, const std::function<bool(int fd, int sock)>& fn);

// Waits (until `until`) for the process's TCP connections to have no byte
// unacknowledged by their peers; "" when none is left, else why not.
std::string WaitTcpSent(pid_t pid, std::chrono::steady_clock::time_point until);

void RefillPipes(pid_t pid, const std::vector<PipeRefill>& refills);

}  // namespace ibdbg::capture
