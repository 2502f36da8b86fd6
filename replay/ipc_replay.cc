#include "ipc_replay.h"

#include <fcntl.h>
#include <sys/ipc.h>
#include <sys/mount.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace ibdbg::replay {
namespace {

std::string Err(const std::string& what) { return what + ": " + strerror(errno); }

bool WriteText(const char* path, const std::string& s) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = write(fd, s.data(), s.size()) == (ssize_t)s.size();
  close(fd);
  return ok;
}

uint64_t ReadNumber(const char* path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[32] = {0};
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  return n > 0 ? strtoull(buf, nullptr, 10) : 0;
}

bool WriteAllAt(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = pwrite(fd, data.data() + off, data.size() - off, (off_t)off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += (size_t)n;
  }
  return true;
}

union SemUn {
  int val;
  semid_ds* buf;
  unsigned short* array;
};

std::string MakeOne(const IpcObject& ob) {
  const ibdbg_ipc_object& o = ob.o;
  const char* next = o.kind == IBDBG_IPC_SHM ? "/proc/sys/kernel/shm_next_id"
                     : o.kind == IBDBG_IPC_SEM ? "/proc/sys/kernel/sem_next_id"
                                               : "/proc/sys/kernel/msg_next_id";
  const char* what = o.kind == IBDBG_IPC_SHM ? "SysV shared memory segment"
                     : o.kind == IBDBG_IPC_SEM ? "SysV semaphore set"
                                               : "SysV message queue";
  std::string name = std::string(what) + " " + std::to_string(o.id);
  // The application knows its objects by id: the kernel hands out exactly
  // the next id we name (a new IPC namespace has none of its own yet).
  if (!WriteText(next, std::to_string(o.id)))
    return Err("cannot choose the id of " + name + " (" + next + ")");
  key_t key = (o.flags & IBDBG_IPC_REMOVED) ? IPC_PRIVATE : (key_t)o.key;
  int flags = (int)(o.mode & 0777) | IPC_CREAT | IPC_EXCL;
  int id = -1;
  if (o.kind == IBDBG_IPC_SHM) {
    id = shmget(key, o.size, flags);
    if (id < 0) return Err("cannot recreate " + name);
    void* a = shmat(id, nullptr, 0);
    if (a == (void*)-1) return Err("cannot fill " + name);
    memcpy(a, ob.data.data(), std::min<size_t>(ob.data.size(), o.size));
    shmdt(a);
  } else if (o.kind == IBDBG_IPC_SEM) {
    id = semget(key, (int)o.count, flags);
    if (id < 0) return Err("cannot recreate " + name);
    std::vector<unsigned short> vals(o.count);
    memcpy(vals.data(), ob.data.data(), std::min(ob.data.size(), vals.size() * sizeof vals[0]));
    SemUn u;
    u.array = vals.data();
    if (o.count && semctl(id, 0, SETALL, u) != 0) return Err("cannot set the values of " + name);
  } else if (o.kind == IBDBG_IPC_MSG) {
    // Limits the original system had raised (a larger queue, longer
    // messages) are this namespace's own to raise.
    uint64_t longest = 0, total = 0;
    for (size_t off = 0; off + 16 <= ob.data.size();) {
      uint64_t len;
      memcpy(&len, ob.data.data() + off + 8, 8);
      longest = std::max(longest, len);
      total += len;
      off += 16 + std::min<uint64_t>(len, ob.data.size() - off - 16);
    }
    if (ReadNumber("/proc/sys/kernel/msgmax") < longest) WriteText("/proc/sys/kernel/msgmax", std::to_string(longest));
    uint64_t want = std::max<uint64_t>(o.size, total);
    if (ReadNumber("/proc/sys/kernel/msgmnb") < want) WriteText("/proc/sys/kernel/msgmnb", std::to_string(want));
    id = msgget(key, flags);
    if (id < 0) return Err("cannot recreate " + name);
    msqid_ds ds{};
    // A larger limit than this system's default needs privilege: the
    // messages fit anyway if they fitted there.
    if (msgctl(id, IPC_STAT, &ds) == 0 && ds.msg_qbytes != o.size) {
      ds.msg_qbytes = o.size;
      msgctl(id, IPC_SET, &ds);
    }
    std::vector<char> buf;
    size_t off = 0;
    while (off + 16 <= ob.data.size()) {
      int64_t type;
      uint64_t len;
      memcpy(&type, ob.data.data() + off, 8);
      memcpy(&len, ob.data.data() + off + 8, 8);
      off += 16;
      if (len > ob.data.size() - off) return "corrupted image: message of " + name + " is cut short";
      buf.resize(sizeof(long) + len);
      long t = (long)type;
      memcpy(buf.data(), &t, sizeof t);
      memcpy(buf.data() + sizeof(long), ob.data.data() + off, len);
      off += len;
      if (msgsnd(id, buf.data(), len, IPC_NOWAIT) != 0) return Err("cannot put a message back into " + name);
    }
  }
  if (id != o.id)
    return name + " came back as id " + std::to_string(id) + " (this kernel does not honour " + next + ")";
  return "";
}

}  // namespace

std::string RecreateSysv(const std::vector<IpcObject>& objs) {
  for (const auto& ob : objs) {
    if (ob.o.kind != IBDBG_IPC_SHM && ob.o.kind != IBDBG_IPC_SEM && ob.o.kind != IBDBG_IPC_MSG) continue;
    std::string e = MakeOne(ob);
    if (!e.empty()) return e;
  }
  return "";
}

std::string MakeDevShm(const std::vector<IpcObject>& files, const std::map<std::string, int>& placeholders) {
  bool any = false;
  for (const auto& f : files) any = any || f.o.kind == IBDBG_IPC_SHMFILE;
  if (!any) return "";
  // Our mounts must not reach the system's (a root replay has no user
  // namespace that would keep them apart).
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) return Err("cannot make the replay's mounts private");
  if (mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") != 0)
    return Err("cannot give the replay its own /dev/shm");
  for (const auto& f : files) {
    if (f.o.kind != IBDBG_IPC_SHMFILE) continue;
    std::string path = f.o.path;
    if (!InDevShm(path) || path.find("/../") != std::string::npos) return "corrupted image: shared memory file " + path;
    for (size_t s = 9; (s = path.find('/', s)) != std::string::npos; s++) mkdir(path.substr(0, s).c_str(), 01777);
    int fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return Err("cannot recreate " + path);
    if (!WriteAllAt(fd, f.data) || ftruncate(fd, (off_t)f.o.size) != 0) return Err("cannot refill " + path);
    if (fchown(fd, f.o.uid, f.o.gid) != 0) {
    }
    fchmod(fd, f.o.mode & 07777);
    auto it = placeholders.find(path);
    if (it != placeholders.end() && dup2(fd, it->second) < 0) return Err("cannot hand " + path + " on");
    close(fd);
  }
  return "";
}

}  // namespace ibdbg::replay
