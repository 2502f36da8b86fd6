// The objects of a job's IPC namespace that one of its processes uses (SysV
// shared memory, semaphores, message queues) and the POSIX shared memory
// files (/dev/shm) it has open or mapped: written as RecordType::Ipc records
// with their contents, read without consuming anything.
#pragma once

#include <sys/types.h>

#include <set>
#include <string>
#include <utility>

#include "ibdbg/image_file.h"

namespace ibdbg::capture {

// Throws std::runtime_error (one line) if an object cannot be read.  Adds to
// *whole the (dev << 32 | minor-style dev, inode) of memory objects stored
// whole, whose mappings need no pages.
// With `stored`, an object already in it (by its identity) is written with
// IBDBG_IPC_ELSEWHERE and no bytes, and every object written whole is added.
void WriteIpcObjects(pid_t pid, image::ImageWriter& w, std::set<std::pair<uint64_t, uint64_t>>* whole,
                     std::set<std::string>* stored = nullptr);

// Whether a mapping's path is a file of /dev/shm, whose contents an
// IBDBG_IPC_SHMFILE record carries.
bool IsDevShmPath(const std::string& path);

}  // namespace ibdbg::capture
