// The objects of a job's IPC namespace that one of its processes uses (SysV
// shared memory, semaphores, message queues) and the POSIX shared memory
// files (/dev/shm) it has open or mapped: written as RecordType::Ipc records
// with their contents, read without consuming anything.
#pragma once

#include <sys/types.h>

#include <string>

#include "ibdbg/image_file.h"

namespace ibdbg::capture {

// Throws std::runtime_error (one line) if an object cannot be read.
void WriteIpcObjects(pid_t pid, image::ImageWriter& w);

// Whether a mapping's path is a file of /dev/shm, whose contents an
// IBDBG_IPC_SHMFILE record carries.
bool IsDevShmPath(const std::string& path);

}  // namespace ibdbg::capture
