// The job's SysV IPC objects and POSIX shared memory files, made again inside
// the replay's namespaces (called in the launcher's child after unshare, so
// these return an error text instead of throwing).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "ibdbg/proto.h"

namespace ibdbg::replay {

struct IpcObject {
  ibdbg_ipc_object o{};
  std::string data;
};

// In a new IPC namespace: every SysV object with its captured id, key, mode
// and contents.  "" on success.
std::string RecreateSysv(const std::vector<IpcObject>& objs);

// A private tmpfs on /dev/shm (the mount namespace must be ours) holding the
// captured files; each descriptor placeholders[path] becomes that file, open
// read-write.  "" on success.
std::string MakeDevShm(const std::vector<IpcObject>& files, const std::map<std::string, int>& placeholders);

// Whether a path names a file of /dev/shm.
inline bool InDevShm(const std::string& p) { return p.rfind("/dev/shm/", 0) == 0 && p.size() > 9; }

}  // namespace ibdbg::replay
