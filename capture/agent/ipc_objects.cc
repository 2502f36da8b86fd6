#include "ipc_objects.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <algorithm>
#include <dirent.h>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "ibdbg/maps.h"
#include "ibdbg/proto.h"

namespace ibdbg::capture {
namespace {

[[noreturn]] void Fail(const std::string& what) { throw std::runtime_error(what); }
std::string Errno(const std::string& what) { return what + ": " + strerror(errno); }

struct Obj {
  ibdbg_ipc_object o{};
  std::string data;
};

std::string Link(const std::string& path) {
  char buf[IBDBG_PATH_MAX];
  ssize_t n = readlink(path.c_str(), buf, sizeof buf - 1);
  return n < 0 ? std::string() : std::string(buf, (size_t)n);
}

std::string ReadAll(int fd) {
  std::string out;
  char buf[1 << 16];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
    if (n > 0) out.append(buf, (size_t)n);
  return out;
}

// The rows of a /proc/sysvipc table, as words, without its heading.
std::vector<std::vector<std::string>> Table(const char* path) {
  std::vector<std::vector<std::string>> rows;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return rows;
  std::istringstream in(ReadAll(fd));
  close(fd);
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::vector<std::string> w;
    for (std::string t; ls >> t;) w.push_back(t);
    if (w.size() >= 7) rows.push_back(std::move(w));
  }
  return rows;
}

long Num(const std::string& s) { return strtol(s.c_str(), nullptr, 10); }

std::string ReadFile(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  std::string s = ReadAll(fd);
  close(fd);
  return s;
}

union SemUn {
  int val;
  semid_ds* buf;
  unsigned short* array;
};

void Fill(Obj& ob, uint32_t kind, int id, const ipc_perm& perm) {
  ob.o.kind = kind;
  ob.o.id = id;
  ob.o.key = perm.__key;
  ob.o.mode = perm.mode & 0777;
  ob.o.uid = perm.uid;
  ob.o.gid = perm.gid;
}

// Which objects of an IPC namespace the process uses.  A namespace of its
// own (a replay makes one) holds only the job's objects: all of them.  In a
// namespace shared with the rest of the system (the host's), those the
// process has attached, created or was the last to use (/proc/sysvipc pids;
// a semaphore set has only each semaphore's last changer, which semop,
// SETVAL and SETALL record), and those its user created or changed since the
// process started (objects made once and not touched since still count).
struct Rule {
  bool all = false;
  pid_t pid = 0;
  uid_t uid = 0;
  long since = 0;  // seconds since the epoch
  bool Recent(const std::string& cuid, const std::string& ctime) const {
    return (uid_t)Num(cuid) == uid && Num(ctime) >= since;
  }
};

// In the job's IPC namespace: the objects the rule picks, with contents.
std::vector<Obj> CollectSysv(const Rule& rule, const std::set<int>& attached) {
  std::vector<Obj> out;
  pid_t pid = rule.pid;
  for (auto& r : Table("/proc/sysvipc/shm")) {
    int id = (int)Num(r[1]);
    if (r.size() < 14) continue;
    // Objects the process surely uses must be readable; one only guessed
    // (same user, recent) that is not is left alone.
    bool sure = rule.all || attached.count(id) || Num(r[4]) == pid || Num(r[5]) == pid;
    if (!sure && !rule.Recent(r[9], r[13])) continue;
    shmid_ds ds{};
    if (shmctl(id, IPC_STAT, &ds) != 0) {
      if (!sure) continue;
      Fail(Errno("cannot read SysV shared memory segment " + std::to_string(id)));
    }
    Obj ob;
    Fill(ob, IBDBG_IPC_SHM, id, ds.shm_perm);
    if (ds.shm_perm.mode & SHM_DEST) ob.o.flags |= IBDBG_IPC_REMOVED;
    ob.o.size = ds.shm_segsz;
    void* a = shmat(id, nullptr, SHM_RDONLY);
    if (a == (void*)-1 && !sure) continue;
    if (a == (void*)-1) Fail(Errno("cannot read SysV shared memory segment " + std::to_string(id)));
    ob.data.assign((const char*)a, ds.shm_segsz);
    shmdt(a);
    out.push_back(std::move(ob));
  }
  for (auto& r : Table("/proc/sysvipc/sem")) {
    int id = (int)Num(r[1]);
    if (r.size() < 10) continue;
    semid_ds ds{};
    SemUn u;
    u.buf = &ds;
    if (semctl(id, 0, IPC_STAT, u) != 0) continue;  // not ours to read: not the job's
    bool used = rule.all || rule.Recent(r[6], r[9]);
    for (unsigned i = 0; i < ds.sem_nsems && !used; i++) used = semctl(id, (int)i, GETPID) == pid;
    if (!used) continue;
    Obj ob;
    Fill(ob, IBDBG_IPC_SEM, id, ds.sem_perm);
    ob.o.count = (uint32_t)ds.sem_nsems;
    std::vector<unsigned short> vals(ds.sem_nsems);
    u.array = vals.data();
    if (semctl(id, 0, GETALL, u) != 0) Fail(Errno("cannot read SysV semaphore set " + std::to_string(id)));
    ob.data.assign((const char*)vals.data(), vals.size() * sizeof vals[0]);
    out.push_back(std::move(ob));
  }
  for (auto& r : Table("/proc/sysvipc/msg")) {
    int id = (int)Num(r[1]);
    if (r.size() < 14) continue;
    bool sure = rule.all || Num(r[5]) == pid || Num(r[6]) == pid;
    if (!sure && !rule.Recent(r[9], r[13])) continue;
    msqid_ds ds{};
    if (msgctl(id, IPC_STAT, &ds) != 0) {
      if (!sure) continue;
      Fail(Errno("cannot read SysV message queue " + std::to_string(id)));
    }
    Obj ob;
    Fill(ob, IBDBG_IPC_MSG, id, ds.msg_perm);
    ob.o.size = ds.msg_qbytes;
    ob.o.count = (uint32_t)ds.msg_qnum;
    // MSG_COPY reads the Nth message and leaves it in the queue.
    std::vector<char> buf(sizeof(long) + ds.__msg_cbytes + 1);
    for (unsigned long i = 0; i < ds.msg_qnum; i++) {
      ssize_t n = msgrcv(id, buf.data(), buf.size() - sizeof(long), (long)i, IPC_NOWAIT | MSG_COPY | MSG_NOERROR);
      if (n < 0 && errno == ENOSYS)
        Fail("cannot read SysV message queue " + std::to_string(id) +
             " without taking its messages: this kernel lacks CONFIG_CHECKPOINT_RESTORE (MSG_COPY)");
      if (n < 0) Fail(Errno("cannot read message " + std::to_string(i) + " of SysV message queue " + std::to_string(id)));
      int64_t type = *(long*)buf.data();
      uint64_t len = (uint64_t)n;
      ob.data.append((const char*)&type, sizeof type);
      ob.data.append((const char*)&len, sizeof len);
      ob.data.append(buf.data() + sizeof(long), (size_t)n);
    }
    out.push_back(std::move(ob));
  }
  return out;
}

std::string Serialize(const std::vector<Obj>& v) {
  std::string s;
  for (auto& ob : v) {
    uint64_t len = ob.data.size();
    s.append((const char*)&ob.o, sizeof ob.o);
    s.append((const char*)&len, sizeof len);
    s += ob.data;
  }
  return s;
}

std::vector<Obj> Deserialize(const std::string& s) {
  std::vector<Obj> v;
  size_t off = 0;
  while (off + sizeof(ibdbg_ipc_object) + 8 <= s.size()) {
    Obj ob;
    memcpy(&ob.o, s.data() + off, sizeof ob.o);
    uint64_t len;
    memcpy(&len, s.data() + off + sizeof ob.o, 8);
    off += sizeof ob.o + 8;
    if (len > s.size() - off) Fail("internal: truncated SysV object description");
    ob.data.assign(s.data() + off, len);
    off += len;
    v.push_back(std::move(ob));
  }
  return v;
}

// The job may live in an IPC namespace of its own (a replay makes one): read
// its objects from a child that joins it, through the job's user namespace
// when that is not ours (joining an IPC namespace needs CAP_SYS_ADMIN over it).
std::vector<Obj> CollectSysvOf(pid_t pid, const std::set<int>& attached) {
  std::string base = "/proc/" + std::to_string(pid) + "/ns/";
  std::string ipc = Link(base + "ipc");
  if (ipc.empty()) Fail(Errno("cannot see the IPC namespace of process " + std::to_string(pid)));
  Rule rule;
  rule.pid = pid;
  rule.all = ipc != Link("/proc/self/ns/ipc");
  {
    // The process's effective uid and start time.
    std::string st = ReadFile("/proc/" + std::to_string(pid) + "/status");
    size_t u = st.find("\nUid:");
    if (u != std::string::npos) {
      std::istringstream us(st.substr(u + 5));
      long real = 0, eff = 0;
      us >> real >> eff;
      rule.uid = (uid_t)eff;
    }
    std::string ps = ReadFile("/proc/" + std::to_string(pid) + "/stat");
    size_t rp = ps.rfind(')');
    std::istringstream fs(rp == std::string::npos ? std::string() : ps.substr(rp + 2));
    std::string f;
    unsigned long long start = 0;
    for (int field = 3; fs >> f; field++)
      if (field == 22) {
        start = strtoull(f.c_str(), nullptr, 10);
        break;
      }
    std::string sys = ReadFile("/proc/stat");
    size_t b = sys.find("\nbtime ");
    long btime = b == std::string::npos ? 0 : atol(sys.c_str() + b + 7);
    rule.since = btime + (long)(start / (unsigned long long)sysconf(_SC_CLK_TCK));
  }
  if (!rule.all) return CollectSysv(rule, attached);
  bool other_user = Link(base + "user") != Link("/proc/self/ns/user");
  int ufd = other_user ? open((base + "user").c_str(), O_RDONLY | O_CLOEXEC) : -1;
  int ifd = open((base + "ipc").c_str(), O_RDONLY | O_CLOEXEC);
  int p[2];
  if (ifd < 0 || (other_user && ufd < 0) || pipe2(p, O_CLOEXEC) != 0) {
    if (ufd >= 0) close(ufd);
    if (ifd >= 0) close(ifd);
    Fail(Errno("cannot open the IPC namespace of process " + std::to_string(pid)));
  }
  pid_t c = fork();
  if (c == 0) {
    close(p[0]);
    std::string out;
    try {
      if (other_user && setns(ufd, CLONE_NEWUSER) != 0) Fail(Errno("cannot join the job's user namespace"));
      if (setns(ifd, CLONE_NEWIPC) != 0) Fail(Errno("cannot join the job's IPC namespace"));
      out = "O" + Serialize(CollectSysv(rule, attached));
    } catch (const std::exception& e) {
      out = std::string("E") + e.what();
    }
    size_t off = 0;
    while (off < out.size()) {
      ssize_t n = write(p[1], out.data() + off, out.size() - off);
      if (n <= 0) break;
      off += (size_t)n;
    }
    _exit(0);
  }
  close(p[1]);
  if (ufd >= 0) close(ufd);
  close(ifd);
  std::string got = c > 0 ? ReadAll(p[0]) : std::string();
  close(p[0]);
  if (c > 0) waitpid(c, nullptr, 0);
  if (got.empty()) Fail("cannot read the SysV IPC objects of process " + std::to_string(pid));
  if (got[0] == 'E') Fail(got.substr(1));
  return Deserialize(got.substr(1));
}

void AddShmFile(pid_t pid, const std::string& path, const std::string& via, std::set<uint64_t>* seen,
                std::vector<Obj>* out) {
  int fd = open(via.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) Fail(Errno("cannot read " + path + " (shared memory of process " + std::to_string(pid) + ")"));
  struct stat sb {};
  fstat(fd, &sb);
  if (!S_ISREG(sb.st_mode) || !seen->insert(sb.st_ino).second) {
    close(fd);
    return;
  }
  Obj ob;
  ob.o.kind = IBDBG_IPC_SHMFILE;
  ob.o.mode = sb.st_mode;
  ob.o.uid = sb.st_uid;
  ob.o.gid = sb.st_gid;
  ob.o.size = (uint64_t)sb.st_size;
  ob.o.dev = ((uint64_t)major(sb.st_dev) << 32) | minor(sb.st_dev);
  ob.o.ino = sb.st_ino;
  snprintf(ob.o.path, sizeof ob.o.path, "%s", path.c_str());
  char buf[1 << 16];
  ssize_t n;
  while ((n = pread(fd, buf, sizeof buf, (off_t)ob.data.size())) > 0) ob.data.append(buf, (size_t)n);
  close(fd);
  out->push_back(std::move(ob));
}

}  // namespace

bool IsDevShmPath(const std::string& path) { return path.rfind("/dev/shm/", 0) == 0 && path.size() > 9; }

// The data extents of a shared memory object, through a mapping of it.
bool AddShmem(const std::string& via, const MapEntry& m, std::vector<Obj>* out) {
  int fd = open(via.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;  // /proc/PID/map_files needs privilege: pages serve
  struct stat sb {};
  if (fstat(fd, &sb) != 0) {
    close(fd);
    return false;
  }
  Obj ob;
  ob.o.kind = IBDBG_IPC_SHMEM;
  ob.o.size = (uint64_t)sb.st_size;
  ob.o.dev = ((uint64_t)m.dev_major << 32) | m.dev_minor;
  ob.o.ino = m.inode;
  snprintf(ob.o.path, sizeof ob.o.path, "%s", m.path.c_str());
  std::vector<char> buf(1 << 20);
  for (off_t pos = 0; pos < sb.st_size;) {
    off_t data = lseek(fd, pos, SEEK_DATA);
    if (data < 0) break;  // only a hole is left
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0) hole = sb.st_size;
    for (off_t at = data; at < hole;) {
      size_t want = (size_t)std::min<off_t>(hole - at, (off_t)buf.size());
      ssize_t n = pread(fd, buf.data(), want, at);
      if (n <= 0) {
        close(fd);
        Fail(Errno("cannot read shared memory " + m.path));
      }
      uint64_t off = (uint64_t)at, len = (uint64_t)n;
      ob.data.append((const char*)&off, 8);
      ob.data.append((const char*)&len, 8);
      ob.data.append(buf.data(), (size_t)n);
      at += n;
    }
    pos = hole;
  }
  close(fd);
  out->push_back(std::move(ob));
  return true;
}

void WriteIpcObjects(pid_t pid, image::ImageWriter& w, std::set<std::pair<uint64_t, uint64_t>>* whole,
                     std::set<std::string>* stored) {
  std::string base = "/proc/" + std::to_string(pid);
  std::vector<MapEntry> maps = ReadMaps(pid);
  std::set<int> attached;
  std::vector<Obj> objs;
  std::set<uint64_t> seen;
  for (const MapEntry& m : maps)
    if (m.kind == MapKind::File && m.shared && m.deleted && m.path.rfind("/SYSV", 0) == 0) attached.insert((int)m.inode);
  // Cheap test first: no SysV tables to read when the namespace has none.
  bool any = !attached.empty();
  for (const char* t : {"/proc/sysvipc/shm", "/proc/sysvipc/sem", "/proc/sysvipc/msg"})
    if (!Table(t).empty()) any = true;
  // Our own namespace's tables say nothing of another one's: ask there.
  if (Link(base + "/ns/ipc") != Link("/proc/self/ns/ipc")) any = true;
  if (any) objs = CollectSysvOf(pid, attached);

  // POSIX shared memory: /dev/shm files open or mapped, by the process's own
  // view of /dev/shm (a replay's is private to it).
  if (DIR* d = opendir((base + "/fd").c_str())) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] == '.') continue;
      std::string l = Link(base + "/fd/" + e->d_name);
      if (IsDevShmPath(l) && l.find(" (deleted)") == std::string::npos)
        AddShmFile(pid, l, base + "/fd/" + e->d_name, &seen, &objs);
    }
    closedir(d);
  }
  for (const MapEntry& m : maps)
    if (m.kind == MapKind::File && !m.deleted && IsDevShmPath(m.path))
      AddShmFile(pid, m.path, base + "/root" + m.path, &seen, &objs);

  // Memory objects behind shared mappings: whole when we may open them, so
  // that pages no process has mapped in (written with write(), or dropped
  // with MADV_DONTNEED) are kept too.  Keyed as /proc/PID/maps names them
  // (a descriptor's stat may not agree, as on overlayfs): only these let the
  // mappings' pages go unstored.
  for (const MapEntry& m : maps) {
    // Deleted files, memfds and MAP_SHARED|MAP_ANONYMOUS ("/dev/zero (deleted)").
    if (m.kind != MapKind::File || !m.shared || !m.deleted || !m.inode || m.path.rfind("/SYSV", 0) == 0) continue;
    std::pair<uint64_t, uint64_t> key(((uint64_t)m.dev_major << 32) | m.dev_minor, m.inode);
    if (whole->count(key)) continue;
    char range[64];
    snprintf(range, sizeof range, "/map_files/%llx-%llx", (unsigned long long)m.start, (unsigned long long)m.end);
    if (AddShmem(base + range, m, &objs)) whole->insert(key);
  }

  for (auto& ob : objs) {
    if (stored) {
      // The identity the replay knows an object by.
      std::string id = std::to_string(ob.o.kind) + ":" +
                       (ob.o.kind == IBDBG_IPC_SHMFILE ? std::string(ob.o.path)
                        : ob.o.kind == IBDBG_IPC_SHMEM ? std::to_string(ob.o.dev) + ":" + std::to_string(ob.o.ino)
                                                       : std::to_string(ob.o.id));
      if (!stored->insert(id).second) {
        ob.o.flags |= IBDBG_IPC_ELSEWHERE;
        ob.data.clear();
      }
    }
    std::string rec((const char*)&ob.o, sizeof ob.o);
    rec += ob.data;
    w.AddRecord(image::RecordType::Ipc, ob.o.kind, rec.data(), rec.size());
  }
}

}  // namespace ibdbg::capture
