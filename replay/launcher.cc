#include "launcher.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "ibdbg/atomic_dir.h"
#include "ibdbg/sockaddr.h"
#include "ibdbg/image_file.h"
#include "ibdbg/maps.h"
#include "ibdbg/proto.h"
#include "ibdbg/pty.h"
#include "ibdbg/restorer_layout.h"
#include "ipc_replay.h"
#include "page_fill.h"

namespace ibdbg::replay {
namespace {

[[noreturn]] void Fail(const std::string& s) { throw std::runtime_error(s); }

// The directories above a file the replay makes again (a job's scratch
// directory that it removed when it ended, or that another machine lacks):
// private to the user, as such directories are.
void MakeParentDirs(const std::string& path) { image::MakeDirs(path.substr(0, path.rfind('/')), 0700); }

struct FdRecord {
  ibdbg_fd_info info;
  std::string data;
};

struct ImageMeta {
  std::vector<std::pair<pid_t, int>> zombies;  // children to collect: pid, wait status
  ibdbg_process_info proc{};
  std::vector<ibdbg_thread_info> threads;
  ibdbg_signal_state sig{};
  std::vector<ibdbg_image_vma> vmas;
  std::vector<FdRecord> fds;
  long ctty_index = -1;  // the pty slave that is the controlling terminal, if any
  pid_t ctty_fg = 0;     // that terminal's foreground process group
  std::vector<IpcObject> ipc;  // SysV objects and /dev/shm files it uses
  std::string verbs;           // the verbs record (ibdbg_verbs_hdr + objects), as the image has it
  std::vector<ibdbg_fd_info> dropped_conns;  // the verbs backend's connections, not made again
};

// The verbs backend of the captured process is dead (capture/verbs/README.md:
// a fresh one is loaded at replay): its threads are not made again, and its
// descriptors are not either, except that the numbers the application sees
// (completion channels, a context's async_fd and cmd_fd) are held by
// /dev/null until the verbs layer dup2s the fresh backend's onto them.
void DropVerbsBackend(const std::string& path, ImageMeta& m) {
  if (m.verbs.empty()) return;
  if (m.verbs.size() < sizeof(ibdbg_verbs_hdr)) Fail(path + ": verbs record of another format");
  ibdbg_verbs_hdr h;
  memcpy(&h, m.verbs.data(), sizeof h);
  if (h.magic != IBDBG_VERBS_MAGIC || h.nbackend_fds > IBDBG_VERBS_MAX_FDS ||
      m.verbs.size() != sizeof h + (size_t)h.nobjs * sizeof(ibdbg_verbs_obj))
    Fail(path + ": verbs record of another format");
  std::set<int> backend(h.backend_fds, h.backend_fds + h.nbackend_fds), visible;
  for (uint32_t i = 0; i < h.nobjs; i++) {
    ibdbg_verbs_obj o;
    memcpy(&o, m.verbs.data() + sizeof h + i * sizeof o, sizeof o);
    if (o.kind == IBDBG_VERBS_CHANNEL) visible.insert((int)(int64_t)o.u[0]);
    if (o.kind == IBDBG_VERBS_CONTEXT) {
      visible.insert((int)(int64_t)o.u[IBDBG_VCTX_CMD_FD]);
      visible.insert((int)(int64_t)o.u[IBDBG_VCTX_ASYNC_FD]);
    }
  }
  std::vector<FdRecord> keep;
  for (auto& f : m.fds) {
    if (!backend.count(f.info.fd) && !visible.count(f.info.fd)) {
      keep.push_back(std::move(f));
      continue;
    }
    if (f.info.kind == IBDBG_FD_SOCKET_CONN) m.dropped_conns.push_back(f.info);
    if (!visible.count(f.info.fd)) continue;
    FdRecord r;
    r.info = f.info;
    r.info.kind = IBDBG_FD_DEVNULL;
    r.info.path[0] = 0;
    keep.push_back(std::move(r));
  }
  m.fds = std::move(keep);
  std::vector<ibdbg_thread_info> threads;
  for (auto& t : m.threads)
    if (!(t.flags & IBDBG_THREAD_BACKEND)) threads.push_back(t);
  m.threads = std::move(threads);
}

// The other end of a backend's connection that a backend thread accepted
// after the verbs calls (not listed in the record) is the backend's too.
void DropVerbsPeerConns(std::vector<ImageMeta*>& ms) {
  std::vector<ibdbg_fd_info> dropped;
  for (auto* m : ms) dropped.insert(dropped.end(), m->dropped_conns.begin(), m->dropped_conns.end());
  if (dropped.empty()) return;
  for (auto* m : ms) {
    std::vector<FdRecord> keep;
    for (auto& f : m->fds) {
      bool peer = false;
      if (f.info.kind == IBDBG_FD_SOCKET_CONN && f.info.sock_family != AF_UNIX)
        for (auto& d : dropped)
          if (d.sock_family == f.info.sock_family && d.sock_addr_len == f.info.peer_addr_len &&
              d.peer_addr_len == f.info.sock_addr_len &&
              memcmp(d.sock_addr, f.info.peer_addr, d.sock_addr_len) == 0 &&
              memcmp(d.peer_addr, f.info.sock_addr, d.peer_addr_len) == 0)
            peer = true;
      if (!peer) keep.push_back(std::move(f));
    }
    m->fds = std::move(keep);
  }
}

// Reads every record up to the first page record.
void ReadMeta(image::ImageReader& r, ImageMeta& m, image::Record& first_pages, bool* have_pages) {
  bool have_proc = false, have_sig = false;
  image::Record rec;
  *have_pages = false;
  while (r.Next(rec)) {
    switch (rec.type) {
      case image::RecordType::Process:
        if (rec.data.size() != sizeof m.proc) Fail(r.path() + ": process record of another format");
        memcpy(&m.proc, rec.data.data(), sizeof m.proc);
        have_proc = true;
        break;
      case image::RecordType::Thread: {
        if (rec.data.size() != sizeof(ibdbg_thread_info)) Fail(r.path() + ": thread record of another format");
        ibdbg_thread_info t;
        memcpy(&t, rec.data.data(), sizeof t);
        m.threads.push_back(t);
        break;
      }
      case image::RecordType::Signals:
        if (rec.data.size() != sizeof m.sig) Fail(r.path() + ": signal record of another format");
        memcpy(&m.sig, rec.data.data(), sizeof m.sig);
        have_sig = true;
        break;
      case image::RecordType::Vma: {
        if (rec.data.size() != sizeof(ibdbg_image_vma)) Fail(r.path() + ": memory region record of another format");
        ibdbg_image_vma v;
        memcpy(&v, rec.data.data(), sizeof v);
        v.path[sizeof v.path - 1] = 0;
        if (v.start >= v.end || (v.start | v.end) & 4095) Fail(r.path() + ": corrupted memory region record");
        m.vmas.push_back(v);
        break;
      }
      case image::RecordType::Fd: {
        if (rec.data.size() < sizeof(ibdbg_fd_info)) Fail(r.path() + ": descriptor record of another format");
        FdRecord f;
        memcpy(&f.info, rec.data.data(), sizeof f.info);
        f.info.path[sizeof f.info.path - 1] = 0;
        f.data.assign((const char*)rec.data.data() + sizeof f.info, rec.data.size() - sizeof f.info);
        m.fds.push_back(std::move(f));
        break;
      }
      case image::RecordType::Json:
        try {
          auto j = nlohmann::json::parse(rec.data.begin(), rec.data.end());
          if (j.contains("zombies"))
            for (auto& z : j["zombies"]) m.zombies.push_back({z.at("pid").get<pid_t>(), z.at("status").get<int>()});
          if (j.contains("ctty")) {
            m.ctty_index = j["ctty"].at("index").get<long>();
            m.ctty_fg = j["ctty"].value("fg", 0);
          }
        } catch (const std::exception&) {
          Fail(r.path() + ": malformed JSON record");
        }
        break;
      case image::RecordType::Ipc: {
        if (rec.data.size() < sizeof(ibdbg_ipc_object)) Fail(r.path() + ": IPC object record of another format");
        IpcObject o;
        memcpy(&o.o, rec.data.data(), sizeof o.o);
        o.o.path[sizeof o.o.path - 1] = 0;
        o.data.assign((const char*)rec.data.data() + sizeof o.o, rec.data.size() - sizeof o.o);
        m.ipc.push_back(std::move(o));
        break;
      }
      case image::RecordType::Verbs:
        // The verbs layer rebuilds the objects in the process (it gets this
        // record from the agent); here only the backend's threads and
        // descriptors are left out (DropVerbsBackend).
        m.verbs.assign((const char*)rec.data.data(), rec.data.size());
        break;
      case image::RecordType::Pages:
        first_pages = std::move(rec);
        *have_pages = true;
        goto done;
      default: break;
    }
  }
done:
  if (!have_proc || !have_sig || m.threads.empty()) Fail(r.path() + ": image lacks process state (truncated?)");
  if (m.proc.proto_version != IBDBG_PROTO_VERSION) Fail(r.path() + ": process state of another format version");
  DropVerbsBackend(r.path(), m);
}

// Objects that several processes of the image share, made once by the
// launcher and inherited by every process of the replay.
struct Shared {
  std::vector<ReplayOptions::StandIn> standins;  // see ReplayOptions
  std::map<uint64_t, std::pair<int, int>> pipes;                 // pipe inode -> (read, write)
  std::map<std::pair<uint64_t, uint64_t>, int> shmem;             // (dev, inode) -> memfd
  std::map<uint64_t, int> socks;                                  // socket inode -> its new connected end
  // Pseudo-terminal pairs made inside the job, by index.  fd is a stand-in
  // until the replay's own devpts instance exists; then it is the master.
  struct Pty {
    ibdbg_pty_state st{};
    std::string out, in;  // bytes in flight, as Refill takes them
    bool has_slaves = false;
    int fd = -1;
  };
  std::map<uint32_t, Pty> ptys;
  std::map<std::string, int> fifos;  // FIFO path -> a read-write descriptor holding its bytes
  std::vector<IpcObject> ipc;               // each SysV object and /dev/shm file once
  std::map<std::string, int> shm_files;     // /dev/shm path -> placeholder, the file once it exists
};

// Everything one process needs after fork, prepared while we may still throw.
struct Prepared {
  ImageMeta m;
  std::string image_file;
  std::unique_ptr<image::ImageReader> reader;
  image::Record first_pages;
  bool have_pages = false;
  std::vector<ibdbg_plan_vma> vmas;
  std::vector<ibdbg_plan_thread> threads;
  std::vector<int> launcher_fds;  // become close_from + i in the child
  std::vector<int32_t> cloexec;
  int close_from = 0;
  int exe_fd = -1;
  int plan_r = -1, plan_w = -1, status_r = -1, status_w = -1;
  int parent = -1;  // index of the parent process in the image, -1 for a root
  std::vector<int> children;
  pid_t outer_pid = -1;
  std::unique_ptr<ibdbg_plan_hdr> hdr;
  bool vdso_patch = false;
  uint64_t vdso_old = 0;
};

int TargetOf(const Prepared& p, int fd) {
  for (size_t i = 0; i < p.launcher_fds.size(); i++)
    if (p.launcher_fds[i] == fd) return p.close_from + (int)i;
  return -1;
}

int AddLauncherFd(Prepared& p, int fd) {
  for (int f : p.launcher_fds)
    if (f == fd) return fd;
  p.launcher_fds.push_back(fd);
  return fd;
}

// Whether this kernel's vdso block (ours is the restorer's) has the shape the
// image's had: same pieces, sizes and distances.  IBDBG_VDSO_PATCH=1 forces
// the other way (to test it on one kernel).
bool VdsoNeedsPatch(const ImageMeta& m) {
  if (const char* f = getenv("IBDBG_VDSO_PATCH"); f && *f == '1') return true;
  std::vector<std::pair<uint32_t, std::pair<uint64_t, uint64_t>>> img, own;
  auto kind_of = [](MapKind k) -> uint32_t {
    return k == MapKind::Vdso ? IBDBG_IVMA_VDSO : k == MapKind::Vvar ? IBDBG_IVMA_VVAR
           : k == MapKind::VvarVclock ? IBDBG_IVMA_VVAR_VCLOCK : 0;
  };
  for (const auto& v : m.vmas)
    if (v.kind == IBDBG_IVMA_VDSO || v.kind == IBDBG_IVMA_VVAR || v.kind == IBDBG_IVMA_VVAR_VCLOCK)
      img.push_back({v.kind, {v.start, v.end}});
  for (const auto& e : ReadMaps(getpid()))
    if (uint32_t k = kind_of(e.kind)) own.push_back({k, {e.start, e.end}});
  if (img.empty()) return false;
  if (img.size() != own.size()) return true;
  std::sort(img.begin(), img.end(), [](auto& a, auto& b) { return a.second.first < b.second.first; });
  std::sort(own.begin(), own.end(), [](auto& a, auto& b) { return a.second.first < b.second.first; });
  for (size_t i = 0; i < img.size(); i++)
    if (img[i].first != own[i].first ||
        img[i].second.second - img[i].second.first != own[i].second.second - own[i].second.first ||
        img[i].second.first - img[0].second.first != own[i].second.first - own[0].second.first)
      return true;
  return false;
}

void BuildVmas(Prepared& p, Shared& sh) {
  const ImageMeta& m = p.m;
  p.vdso_patch = VdsoNeedsPatch(m);
  std::map<std::string, int> opened;
  for (const auto& v : m.vmas) {
    if (v.start < IBDBG_RESTORER_END && v.end > IBDBG_RESTORER_BASE)
      Fail("the image uses addresses reserved for the restorer (0x3f0000000000-0x3f1000000000)");
    ibdbg_plan_vma pv{};
    pv.start = v.start;
    pv.end = v.end;
    pv.prot = v.prot;
    pv.fd = -1;
    switch (v.kind) {
      case IBDBG_IVMA_VDSO:
        if (p.vdso_patch) {
          // The captured code comes back from the image, then jumps to ours.
          pv.kind = IBDBG_VMA_ANON | IBDBG_VMA_FILL;
          pv.flags = MAP_PRIVATE;
          p.vdso_old = v.start;
        } else {
          pv.kind = IBDBG_VMA_VDSO;
        }
        break;
      case IBDBG_IVMA_VVAR:
      case IBDBG_IVMA_VVAR_VCLOCK:
        if (p.vdso_patch) {
          // Only the captured vdso read these; it no longer does.
          pv.kind = IBDBG_VMA_ANON;
          pv.flags = MAP_PRIVATE;
          pv.prot = PROT_READ;
        } else {
          pv.kind = v.kind == IBDBG_IVMA_VVAR ? IBDBG_VMA_VVAR : IBDBG_VMA_VVAR_VCLOCK;
        }
        break;
      case IBDBG_IVMA_STACK:
        pv.kind = IBDBG_VMA_ANON | IBDBG_VMA_FILL | IBDBG_VMA_GROWSDOWN;
        pv.flags = MAP_PRIVATE;
        break;
      case IBDBG_IVMA_ANON:
      case IBDBG_IVMA_HEAP:
      case IBDBG_IVMA_FILE_DELETED:
        pv.kind = IBDBG_VMA_ANON | IBDBG_VMA_FILL;
        pv.flags = MAP_PRIVATE;
        break;
      case IBDBG_IVMA_SYSV_SHM: {
        bool removed = false, found = false;
        for (const auto& o : sh.ipc)
          if (o.o.kind == IBDBG_IPC_SHM && o.o.id == (int32_t)v.inode) {
            found = true;
            removed = o.o.flags & IBDBG_IPC_REMOVED;
          }
        if (!found) Fail("the image maps SysV shared memory segment " + std::to_string(v.inode) + " but does not hold it");
        pv.kind = IBDBG_VMA_SYSV | (removed ? IBDBG_VMA_SHM_RMID : 0);
        pv.flags = (uint32_t)v.inode;
        pv.offset = v.offset;
        break;
      }
      case IBDBG_IVMA_FILE:
      case IBDBG_IVMA_FILE_SHARED: {
        bool shared = v.kind == IBDBG_IVMA_FILE_SHARED;
        bool rw = shared && (v.prot & PROT_WRITE);
        std::string key = std::string(v.path) + (rw ? "#rw" : "#ro");
        auto it = opened.find(key);
        auto shm = sh.shm_files.find(v.path);
        // Writable shared mappings of other files: the image has their pages
        // and writes them back through the mapping (see capture/README.md).
        bool kept = rw && shm == sh.shm_files.end() && v.file_size > 0;
        int fd;
        if (shm != sh.shm_files.end()) {
          fd = shm->second;
        } else if (kept && it == opened.end()) {
          MakeParentDirs(v.path);
          fd = open(v.path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
          if (fd < 0) Fail(std::string("cannot open ") + v.path + " (mapped shared by the process): " + strerror(errno));
          struct stat sb;
          if (fstat(fd, &sb) == 0 && (uint64_t)sb.st_size < v.file_size && ftruncate(fd, (off_t)v.file_size) != 0)
            Fail(std::string("cannot restore the size of ") + v.path + ": " + strerror(errno));
          opened[key] = fd;
        } else if (it != opened.end()) {
          fd = it->second;
        } else {
          fd = open(v.path, (rw ? O_RDWR : O_RDONLY) | O_CLOEXEC);
          if (fd < 0) Fail(std::string("cannot open ") + v.path + " (mapped by the process): " + strerror(errno));
          struct stat sb;
          if (fstat(fd, &sb) == 0 && v.file_size && (uint64_t)sb.st_size < v.offset + (v.end - v.start) &&
              (uint64_t)sb.st_size != v.file_size)
            Fail(std::string(v.path) + " changed since the capture (size " + std::to_string(sb.st_size) + ", was " +
                 std::to_string(v.file_size) + "); map it with: ibdbg translate --map-path");
          opened[key] = fd;
        }
        AddLauncherFd(p, fd);
        pv.kind = IBDBG_VMA_FILE | (shared && !kept ? 0 : IBDBG_VMA_FILL);
        pv.flags = shared ? MAP_SHARED : MAP_PRIVATE;
        pv.fd = fd;  // renumbered below
        pv.offset = v.offset;
        break;
      }
      case IBDBG_IVMA_SHARED_ANON: {
        // One object for every mapping of it, in this process or another.
        auto key = std::make_pair(((uint64_t)v.dev_major << 32) | v.dev_minor, v.inode);
        int fd;
        auto it = v.inode ? sh.shmem.find(key) : sh.shmem.end();
        if (it != sh.shmem.end()) {
          fd = it->second;
        } else {
          fd = (int)syscall(SYS_memfd_create, "ibdbg-shared", MFD_CLOEXEC);
          if (fd < 0) Fail("cannot create shared memory for replay");
          if (v.inode) sh.shmem[key] = fd;
        }
        struct stat sb;
        uint64_t need = v.offset + (v.end - v.start);
        if (fstat(fd, &sb) != 0 || ((uint64_t)sb.st_size < need && ftruncate(fd, (off_t)need) != 0))
          Fail("cannot size shared memory for replay");
        AddLauncherFd(p, fd);
        pv.kind = IBDBG_VMA_FILE | IBDBG_VMA_FILL;
        pv.flags = MAP_SHARED;
        pv.fd = fd;
        pv.offset = v.offset;
        break;
      }
      default: Fail("unknown memory region kind in the image");
    }
    p.vmas.push_back(pv);
  }
}

// Private anonymous regions are registered with a userfaultfd of the
// restorer: in a lazy replay their pages arrive on demand, in an eager one
// the launcher copies them in with UFFDIO_COPY (see FillPages).
void MarkFastFill(Prepared& p) {
  for (size_t i = 0; i < p.vmas.size() && i < p.m.vmas.size(); i++) {
    ibdbg_plan_vma& pv = p.vmas[i];
    const ibdbg_image_vma& v = p.m.vmas[i];
    if ((pv.kind & 0xff) != IBDBG_VMA_ANON || !(pv.kind & IBDBG_VMA_FILL) || pv.flags != MAP_PRIVATE) continue;
    if (p.vdso_patch && v.start == p.vdso_old) continue;  // the restorer patches it before 'D'
    pv.kind |= IBDBG_VMA_LAZY;
  }
}

void BuildThreads(const ImageMeta& m, Prepared& p) {
  bool main_found = false;
  for (const auto& t : m.threads) {
    ibdbg_plan_thread pt{};
    pt.tid = t.tid;
    pt.flags = t.flags;
    pt.fs_base = t.fs_base;
    pt.uc_addr = t.uc_addr;
    pt.clear_child_tid = t.clear_child_tid;
    pt.rseq_addr = t.rseq_addr;
    pt.rseq_len = t.rseq_len;
    pt.rseq_sig = t.rseq_sig;
    pt.altstack_sp = t.altstack_sp;
    pt.altstack_size = t.altstack_size;
    pt.altstack_flags = t.altstack_flags;
    memcpy(pt.name, t.name, sizeof pt.name);
    pt.name[sizeof pt.name - 1] = 0;
    if (t.flags & IBDBG_THREAD_MAIN) main_found = true;
    if (t.tid <= 1) Fail("the image names thread id " + std::to_string(t.tid) + ", which cannot be recreated");
    p.threads.push_back(pt);
  }
  (void)main_found;
}

// ---- in the child, before exec: no exceptions, report through the status pipe
[[noreturn]] void ChildFail(int status_fd, const std::string& msg) {
  std::string s = "F" + msg;
  s.push_back('\0');
  if (write(status_fd, s.data(), s.size()) < 0) {
  }
  _exit(127);
}

// Fields of a /proc fdinfo text.
uint64_t FdinfoHex(const std::string& t, const char* key) {
  size_t p = t.find(key);
  return p == std::string::npos ? 0 : strtoull(t.c_str() + p + strlen(key), nullptr, 16);
}
uint64_t FdinfoDec(const std::string& t, const char* key) {
  size_t p = t.find(key);
  return p == std::string::npos ? 0 : strtoull(t.c_str() + p + strlen(key), nullptr, 10);
}
void FdinfoPair(const std::string& t, const char* key, timespec* ts) {
  size_t p = t.find(key);
  long long a = 0, b = 0;
  if (p != std::string::npos && sscanf(t.c_str() + p + strlen(key), " (%lld, %lld)", &a, &b) == 2) {
    ts->tv_sec = a;
    ts->tv_nsec = b;
  }
}

// The pty state at the head of a pty record's data.
bool PtyStateOf(const FdRecord& f, ibdbg_pty_state* st) {
  if (f.data.size() < sizeof *st) return false;
  memcpy(st, f.data.data(), sizeof *st);
  return true;
}

int OpenPtyFd(const FdRecord& f, const Prepared& p, const Shared& sh, int status_fd) {
  ibdbg_pty_state st;
  auto it = PtyStateOf(f, &st) ? sh.ptys.find(st.index) : sh.ptys.end();
  if (it == sh.ptys.end()) ChildFail(status_fd, "internal: pseudo-terminal missing from the plan");
  int master = TargetOf(p, it->second.fd);
  if (f.info.kind == IBDBG_FD_PTY_MASTER) return dup(master);
  // A slave of its own (not a dup): each open of it had its own flags.
  int fd = ioctl(master, TIOCGPTPEER, (f.info.open_flags & O_ACCMODE) | O_NOCTTY);
  if (fd < 0)
    ChildFail(status_fd, "cannot open /dev/pts/" + std::to_string(st.index) + " (fd " + std::to_string(f.info.fd) +
                             "): " + strerror(errno));
  return fd;
}

int OpenImageFd(const FdRecord& f, const Prepared& p, const Shared& sh, int status_fd) {
  const ibdbg_fd_info& fi = f.info;
  int fd = -1;
  int acc = fi.open_flags & O_ACCMODE;
  switch (fi.kind) {
    case IBDBG_FD_FILE: {
      auto kept = fi.deleted == 1 && fi.file_ino ? sh.shmem.find({fi.file_dev, fi.file_ino}) : sh.shmem.end();
      if (kept != sh.shmem.end()) {
        // One object for every descriptor and mapping of it: a new open of it.
        std::string via = "/proc/self/fd/" + std::to_string(TargetOf(p, kept->second));
        fd = open(via.c_str(), fi.open_flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY | O_NOFOLLOW));
        if (fd < 0) ChildFail(status_fd, std::string("cannot reopen deleted file ") + fi.path + ": " + strerror(errno));
      } else if (fi.deleted == 1) {
        std::string dir = fi.path;
        dir = dir.substr(0, dir.rfind('/'));
        fd = open(dir.empty() ? "/" : dir.c_str(), O_TMPFILE | O_RDWR, fi.mode & 07777);
        if (fd < 0) fd = open("/tmp", O_TMPFILE | O_RDWR, 0600);
        if (fd < 0) ChildFail(status_fd, std::string("cannot recreate deleted file ") + fi.path + ": " + strerror(errno));
        size_t off = 0;
        while (off < f.data.size()) {
          ssize_t n = pwrite(fd, f.data.data() + off, f.data.size() - off, (off_t)off);
          if (n <= 0) ChildFail(status_fd, std::string("cannot refill deleted file ") + fi.path);
          off += (size_t)n;
        }
      } else {
        int flags = fi.open_flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY);
        fd = open(fi.path, flags);
        if (fd < 0)
          ChildFail(status_fd, "cannot reopen " + std::string(fi.path) + " (fd " + std::to_string(fi.fd) +
                                   "): " + strerror(errno));
      }
      if (!S_ISDIR(fi.mode) && !S_ISFIFO(fi.mode)) lseek(fd, (off_t)fi.offset, SEEK_SET);
      break;
    }
    case IBDBG_FD_DEVNULL:
      fd = open(fi.path, fi.open_flags & ~(O_CREAT | O_EXCL | O_TRUNC));
      if (fd < 0) fd = open("/dev/null", O_RDWR);
      break;
    case IBDBG_FD_TTY:
      fd = isatty(0) ? dup(0) : open("/dev/null", O_RDWR);
      break;
    case IBDBG_FD_PTY_MASTER:
    case IBDBG_FD_PTY_SLAVE:
      fd = OpenPtyFd(f, p, sh, status_fd);
      break;
    case IBDBG_FD_FIFO: {
      auto it = sh.fifos.find(fi.path);
      if (it == sh.fifos.end()) ChildFail(status_fd, "internal: FIFO missing from the plan");
      // An open of the same FIFO (the launcher's end makes it a reader and a
      // writer, so neither direction blocks), with this descriptor's mode.
      std::string self = "/proc/self/fd/" + std::to_string(TargetOf(p, it->second));
      fd = open(self.c_str(), acc | O_NONBLOCK);
      if (fd < 0)
        ChildFail(status_fd, "cannot reopen FIFO " + std::string(fi.path) + " (fd " + std::to_string(fi.fd) +
                                 "): " + strerror(errno));
      break;
    }
    case IBDBG_FD_PIPE: {
      auto it = sh.pipes.find(fi.pipe_id);
      if (it == sh.pipes.end()) ChildFail(status_fd, "internal: pipe missing from the plan");
      int src = TargetOf(p, acc == O_WRONLY ? it->second.second : it->second.first);
      fd = dup(src);
      break;
    }
    case IBDBG_FD_SOCKET_CONN: {
      auto it = sh.socks.find(fi.sock_id);
      if (it != sh.socks.end()) {
        fd = dup(TargetOf(p, it->second));
        break;
      }
      // Its peer was outside the job: the application sees it closed.
      int sp[2];
      if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) != 0) ChildFail(status_fd, "socketpair failed");
      close(sp[1]);
      fd = sp[0];
      break;
    }
    case IBDBG_FD_SOCKET_DGRAM: {
      auto it = sh.socks.find(fi.sock_id);
      if (it == sh.socks.end()) ChildFail(status_fd, "internal: datagram socket missing from the plan");
      fd = dup(TargetOf(p, it->second));
      break;
    }
    case IBDBG_FD_SOCKET_LISTEN: {
      auto it = sh.socks.find(fi.sock_id);
      if (it == sh.socks.end()) ChildFail(status_fd, "internal: listening socket missing from the plan");
      fd = dup(TargetOf(p, it->second));
      break;
    }
    case IBDBG_FD_EVENTFD: {
      uint64_t count = FdinfoHex(f.data, "eventfd-count:");
      // No CLOEXEC here: the restorer is exec'd next; it applies the image's flags.
      int fl = ((fi.open_flags & O_NONBLOCK) ? EFD_NONBLOCK : 0) |
               (FdinfoHex(f.data, "eventfd-semaphore:") ? EFD_SEMAPHORE : 0);
      fd = eventfd(0, fl);
      if (fd >= 0 && count && write(fd, &count, sizeof count) != sizeof count)
        ChildFail(status_fd, "cannot refill an eventfd");
      break;
    }
    case IBDBG_FD_TIMERFD: {
      int clk = (int)FdinfoDec(f.data, "clockid:");
      fd = timerfd_create(clk, ((fi.open_flags & O_NONBLOCK) ? TFD_NONBLOCK : 0));
      struct itimerspec its = {};
      FdinfoPair(f.data, "it_value:", &its.it_value);
      FdinfoPair(f.data, "it_interval:", &its.it_interval);
      // Remaining time as the kernel showed it, relative.  A periodic timer
      // that expired unread shows no time left (the kernel re-arms it on
      // read): it fires at once here and goes on; an expired one-shot stays
      // disarmed.  Expirations not yet read count as one.
      bool expired = !its.it_value.tv_sec && !its.it_value.tv_nsec;
      if (expired && (its.it_interval.tv_sec || its.it_interval.tv_nsec || FdinfoDec(f.data, "ticks:")))
        its.it_value.tv_nsec = 1;
      if (fd >= 0 && (its.it_value.tv_sec || its.it_value.tv_nsec)) timerfd_settime(fd, 0, &its, nullptr);
      break;
    }
    case IBDBG_FD_SIGNALFD: {
      sigset_t mask;
      sigemptyset(&mask);
      uint64_t bits = FdinfoHex(f.data, "sigmask:");
      for (int sig = 1; sig <= 64; sig++)
        if (bits >> (sig - 1) & 1) sigaddset(&mask, sig);
      fd = signalfd(-1, &mask, ((fi.open_flags & O_NONBLOCK) ? SFD_NONBLOCK : 0));
      break;
    }
    case IBDBG_FD_EPOLL: {
      fd = epoll_create1(0);
      if (fd < 0) ChildFail(status_fd, "cannot create an epoll instance");
      // "tfd: N events: HEX data: HEX" per watched descriptor, all made by now.
      size_t pos = 0;
      while ((pos = f.data.find("tfd:", pos)) != std::string::npos) {
        int tfd = -1;
        unsigned events = 0;
        unsigned long long data = 0;
        if (sscanf(f.data.c_str() + pos, "tfd: %d events: %x data: %llx", &tfd, &events, &data) == 3) {
          epoll_event ev{};
          ev.events = events;
          ev.data.u64 = data;
          if (epoll_ctl(fd, EPOLL_CTL_ADD, tfd, &ev) != 0)
            ChildFail(status_fd, "cannot watch fd " + std::to_string(tfd) + " with epoll fd " + std::to_string(fi.fd) +
                                     ": " + strerror(errno));
        }
        pos += 4;
      }
      break;
    }
    default: {
      // A connection we cannot carry: the application sees it closed.
      int sp[2];
      if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) != 0) ChildFail(status_fd, "socketpair failed");
      close(sp[1]);
      fd = sp[0];
      break;
    }
  }
  return fd;
}

// Whether a pipe has both ends somewhere in the image (else the replaying
// terminal's or launcher's stream stands in for a standard stream).
bool PipeComplete(const std::vector<std::unique_ptr<Prepared>>& all, uint64_t id) {
  bool r = false, w = false;
  for (auto& q : all)
    for (const auto& g : q->m.fds)
      if (g.info.kind == IBDBG_FD_PIPE && g.info.pipe_id == id)
        ((g.info.open_flags & O_ACCMODE) == O_WRONLY ? w : r) = true;
  return r && w;
}

// Whether a standard stream is a connection with both ends in the job, which
// the replay recreates (MPICH's hydra_pmi_proxy has one to a rank as its
// stdin).  One to a peer outside stays the replaying terminal's stream.
bool SocketInJob(const ibdbg_fd_info& fi, const Shared& sh) {
  return fi.kind == IBDBG_FD_SOCKET_CONN && sh.socks.count(fi.sock_id);
}

// The epoll instances in the order they can be rebuilt: one that watches
// another epoll instance (UCX nests its event sets) comes after it.
std::vector<const FdRecord*> EpollCreationOrder(const std::vector<FdRecord>& fds) {
  std::map<int, const FdRecord*> epolls;
  for (const auto& f : fds)
    if (f.info.kind == IBDBG_FD_EPOLL) epolls[f.info.fd] = &f;
  std::vector<const FdRecord*> order;
  std::set<int> done;
  // The kernel refuses epoll loops, so this depth-first walk ends; the
  // visiting set only guards against a corrupt image.
  std::set<int> visiting;
  std::function<void(const FdRecord*)> visit = [&](const FdRecord* f) {
    if (done.count(f->info.fd) || !visiting.insert(f->info.fd).second) return;
    size_t pos = 0;
    while ((pos = f->data.find("tfd:", pos)) != std::string::npos) {
      int tfd = -1;
      if (sscanf(f->data.c_str() + pos, "tfd: %d", &tfd) == 1) {
        auto it = epolls.find(tfd);
        if (it != epolls.end()) visit(it->second);
      }
      pos += 4;
    }
    done.insert(f->info.fd);
    order.push_back(f);
  };
  for (const auto& [fd, f] : epolls) visit(f);
  return order;
}

void SetupDescriptors(Prepared& p, const Shared& sh, const std::vector<std::unique_ptr<Prepared>>& all) {
  int status_fd = p.status_w;
  // 1. Our descriptors go to close_from + i (two hops: no overlap), and every
  //    other inherited one (other processes' plans, unused objects) goes.
  int n = (int)p.launcher_fds.size();
  int hop = p.close_from + n + 16;
  std::vector<int> tmp(n);
  for (int i = 0; i < n; i++) {
    tmp[i] = fcntl(p.launcher_fds[i], F_DUPFD, hop);
    if (tmp[i] < 0) ChildFail(status_fd, std::string("cannot move a descriptor: ") + strerror(errno));
  }
  int hop_end = hop;
  for (int t : tmp) hop_end = std::max(hop_end, t + 1);
  syscall(SYS_close_range, 3, hop - 1, 0);
  syscall(SYS_close_range, hop_end, ~0u, 0);
  for (int i = 0; i < n; i++) {
    if (dup2(tmp[i], p.close_from + i) < 0) ChildFail(status_fd, "cannot place a descriptor");
  }
  for (int i = 0; i < n; i++)
    if (tmp[i] >= p.close_from + n) close(tmp[i]);
  status_fd = TargetOf(p, p.status_w);
  // 2. The image's descriptors, in ascending order (so no later one is
  //    clobbered); epoll instances last, once what they watch exists.
  std::vector<const FdRecord*> ordered;
  for (const auto& f : p.m.fds)
    if (f.info.kind != IBDBG_FD_EPOLL) ordered.push_back(&f);
  for (const FdRecord* f : EpollCreationOrder(p.m.fds)) ordered.push_back(f);
  for (const FdRecord* fp : ordered) {
    const FdRecord& f = *fp;
    const ibdbg_fd_info& fi = f.info;
    if (fi.fd < 0 || fi.fd >= p.close_from) continue;
    if (fi.fd <= 2 && fi.kind != IBDBG_FD_FILE && fi.kind != IBDBG_FD_DEVNULL && fi.kind != IBDBG_FD_FIFO &&
        fi.kind != IBDBG_FD_PTY_MASTER && fi.kind != IBDBG_FD_PTY_SLAVE &&
        !(fi.kind == IBDBG_FD_PIPE && PipeComplete(all, fi.pipe_id)) && !SocketInJob(fi, sh))
      continue;  // ours serves
    int fd = OpenImageFd(f, p, sh, status_fd);
    if (fd < 0) ChildFail(status_fd, "cannot recreate fd " + std::to_string(fi.fd));
    if (fd != fi.fd) {
      if (dup2(fd, fi.fd) < 0) ChildFail(status_fd, "cannot place fd " + std::to_string(fi.fd));
      close(fd);
    }
    int keep = fi.open_flags & (O_APPEND | O_NONBLOCK | O_ASYNC | O_DIRECT | O_NOATIME);
    fcntl(fi.fd, F_SETFL, keep);
  }
}

void RaiseAmbient(int cap) {
  __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct d[2];
  if (syscall(SYS_capget, &h, d) != 0) return;
  d[cap / 32].inheritable |= 1u << (cap % 32);
  if (syscall(SYS_capset, &h, d) != 0) return;
  prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0);
}

[[noreturn]] void ExecRestorer(Prepared& p, const Shared& sh, const std::vector<std::unique_ptr<Prepared>>& all,
                               const std::string& restorer) {
  SetupDescriptors(p, sh, all);
  int status_target = TargetOf(p, p.status_w);
  const ImageMeta& m = p.m;
  if (chdir(m.proc.cwd) != 0 && chdir("/") != 0) {
  }
  umask(m.proc.umask & 0777);
  for (int r = 0; r < 16; r++) {
    if (r == RLIMIT_NOFILE && m.proc.rlimits[r].cur < (uint64_t)(p.close_from + p.launcher_fds.size() + 32)) continue;
    struct rlimit rl = {m.proc.rlimits[r].cur, m.proc.rlimits[r].max};
    if (rl.rlim_cur || rl.rlim_max) setrlimit(r, &rl);
  }
  if (geteuid() != 0) RaiseAmbient(CAP_CHECKPOINT_RESTORE);
  std::string fdarg = std::to_string(TargetOf(p, p.plan_r));
  char* argv[] = {(char*)"ibdbg-restore", fdarg.data(), nullptr};
  char* envp[] = {nullptr};
  execve(restorer.c_str(), argv, envp);
  ChildFail(status_target, "cannot run the restorer " + restorer + ": " + strerror(errno));
}

bool WriteMaps(pid_t self_uid, gid_t self_gid) {
  auto put = [](const char* path, const std::string& s) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return false;
    bool ok = write(fd, s.data(), s.size()) == (ssize_t)s.size();
    close(fd);
    return ok;
  };
  put("/proc/self/setgroups", "deny");
  return put("/proc/self/uid_map", std::to_string(self_uid) + " " + std::to_string(self_uid) + " 1\n") &&
         put("/proc/self/gid_map", std::to_string(self_gid) + " " + std::to_string(self_gid) + " 1\n");
}

long CloneWithPid(pid_t want) {
  struct clone_args ca;
  memset(&ca, 0, sizeof ca);
  ca.exit_signal = SIGCHLD;
  ca.set_tid = (uint64_t)&want;
  ca.set_tid_size = 1;
  return syscall(SYS_clone3, &ca, sizeof ca);
}

// A new session (just made, no terminal yet) whose terminal was a pair of
// the job's gets its slave again, before the processes of the session are
// forked: they inherit it (TIOCSCTTY gives it to the caller only).
void SetControllingPty(const Prepared& p, const Shared& sh, int status_fd) {
  if (p.m.ctty_index < 0) return;
  auto it = sh.ptys.find((uint32_t)p.m.ctty_index);
  if (it == sh.ptys.end()) return;  // a terminal from outside the job
  int s = ioctl(it->second.fd, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (s < 0 || ioctl(s, TIOCSCTTY, 0) != 0)
    ChildFail(status_fd, "cannot make /dev/pts/" + std::to_string(p.m.ctty_index) +
                             " the controlling terminal of session " + std::to_string(p.m.proc.sid) + ": " +
                             strerror(errno));
  close(s);
}

// The leader of the group that was in the foreground of its session's pty
// puts it there again (the session's leader took the terminal before this
// process was forked, so it is this process's terminal too).
void SetForegroundGroup(const Prepared& p, const Shared& sh, int status_fd) {
  const ibdbg_process_info& pi = p.m.proc;
  if (p.m.ctty_index < 0 || p.m.ctty_fg != pi.pid || pi.pgid != pi.pid || pi.sid == pi.pid) return;
  auto it = sh.ptys.find((uint32_t)p.m.ctty_index);
  if (it == sh.ptys.end()) return;
  int s = ioctl(it->second.fd, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
  pid_t tty_sid = 0;
  if (s >= 0 && (ioctl(s, TIOCGSID, &tty_sid) != 0 || tty_sid != getsid(0))) {
    close(s);  // the session did not get its terminal back (its leader is not in the image)
    return;
  }
  // A background group may take the terminal only while not stopped for it.
  sigset_t ttou, old;
  sigemptyset(&ttou);
  sigaddset(&ttou, SIGTTOU);
  sigprocmask(SIG_BLOCK, &ttou, &old);
  bool ok = s >= 0 && tcsetpgrp(s, pi.pid) == 0;
  int e = errno;
  sigprocmask(SIG_SETMASK, &old, nullptr);
  if (s >= 0) close(s);
  if (!ok)
    ChildFail(status_fd, "cannot put process group " + std::to_string(pi.pid) + " in the foreground of /dev/pts/" +
                             std::to_string(p.m.ctty_index) + ": " + strerror(e));
}

// A starter of another part: nothing of the launcher's, nothing of ours.
[[noreturn]] void ExecStandIn(const ReplayOptions::StandIn& si) {
  prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
  syscall(SYS_close_range, 3, ~0u, 0);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  for (int sig = 1; sig < NSIG; sig++) signal(sig, SIG_DFL);
  int devnull = open("/dev/null", O_RDONLY);
  if (devnull >= 0) dup2(devnull, 0), close(devnull);
  std::vector<char*> argv;
  for (auto& a : si.argv) argv.push_back((char*)a.c_str());
  argv.push_back(nullptr);
  execvp(argv[0], argv.data());
  fprintf(stderr, "ibdbg: cannot run %s: %s\n", argv[0], strerror(errno));
  _exit(127);
}

// Becomes process i of the image: its session and group first, then its
// children (so that they inherit both and have it as parent), then itself.
[[noreturn]] void SpawnNode(int i, const Shared& sh, std::vector<std::unique_ptr<Prepared>>& all,
                            const std::string& restorer) {
  Prepared& p = *all[i];
  const ibdbg_process_info& pi = p.m.proc;
  bool session_in_image = false, group_in_image = false;
  for (auto& q : all) {
    if (q->m.proc.pid == pi.sid) session_in_image = true;
    if (q->m.proc.pid == pi.pgid) group_in_image = true;
  }
  if (pi.sid == pi.pid) {
    setsid();
    SetControllingPty(p, sh, p.status_w);
  } else if (pi.pgid == pi.pid) setpgid(0, 0);
  else if (group_in_image && !session_in_image) setpgid(0, pi.pgid);
  else if (group_in_image) setpgid(0, pi.pgid);
  SetForegroundGroup(p, sh, p.status_w);
  // Children that had exited uncollected exit again, with their pid and status.
  for (auto& [zpid, status] : p.m.zombies) {
    long r = CloneWithPid(zpid);
    if (r == 0) {
      if (WIFSIGNALED(status)) {
        signal(WTERMSIG(status), SIG_DFL);
        kill(getpid(), WTERMSIG(status));
        kill(getpid(), SIGKILL);
      }
      _exit(WEXITSTATUS(status));
    }
  }
  // Starters of other parts of the job (a remote shell it ran) start them again.
  for (auto& si : sh.standins) {
    if (si.ppid != pi.pid) continue;
    long r = CloneWithPid(si.pid);
    if (r < 0) ChildFail(p.status_w, "cannot recreate pid " + std::to_string(si.pid) + ": " + strerror(errno));
    if (r == 0) ExecStandIn(si);
  }
  for (int c : p.children) {
    long r = CloneWithPid(all[c]->m.proc.pid);
    if (r < 0) ChildFail(all[c]->status_w, "cannot recreate pid " + std::to_string(all[c]->m.proc.pid) + ": " +
                                               strerror(errno));
    if (r == 0) SpawnNode(c, sh, all, restorer);
  }
  ExecRestorer(p, sh, all, restorer);
}

// Pid 1 of the replay's pid namespace: starts the image's root processes
// with their own pids and reaps until they are gone.
[[noreturn]] void RunInit(const Shared& sh, std::vector<std::unique_ptr<Prepared>>& all, const std::vector<int>& roots,
                          const std::string& restorer) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  // /proc of the new namespace, so /proc/<pid> and /proc/self agree with getpid().
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr);
  std::vector<long> started;
  // A session made inside the job whose leader is gone (a daemon's double
  // fork): a stand-in with the leader's pid makes it again, starts its
  // members, and goes.  The job's outer session (the one the first process
  // came with) stays the replaying terminal's.
  pid_t outer_sid = all[roots[0]]->m.proc.sid;
  std::map<pid_t, std::vector<int>> lost_sessions;
  std::vector<int> plain;
  for (int r : roots) {
    const ibdbg_process_info& pi = all[r]->m.proc;
    bool in_image = false;
    for (auto& q : all)
      if (q->m.proc.pid == pi.sid) in_image = true;
    if (pi.sid != pi.pid && pi.sid != outer_sid && pi.sid > 1 && !in_image) lost_sessions[pi.sid].push_back(r);
    else plain.push_back(r);
  }
  for (auto& [sid, members] : lost_sessions) {
    long helper = CloneWithPid(sid);
    if (helper < 0) continue;  // its pid is taken: the members join init's session
    if (helper == 0) {
      setsid();
      for (int r : members) {
        long child = CloneWithPid(all[r]->m.proc.pid);
        if (child < 0)
          ChildFail(all[r]->status_w, "cannot recreate pid " + std::to_string(all[r]->m.proc.pid) + ": " + strerror(errno));
        if (child == 0) SpawnNode(r, sh, all, restorer);
      }
      _exit(0);
    }
  }
  for (int r : plain) {
    long child = CloneWithPid(all[r]->m.proc.pid);
    if (child < 0)
      ChildFail(all[r]->status_w, "cannot recreate pid " + std::to_string(all[r]->m.proc.pid) + ": " + strerror(errno));
    if (child == 0) SpawnNode(r, sh, all, restorer);
    started.push_back(child);
  }
  if (started.empty()) started.push_back(-1);
  // Nothing of the launcher's stays open here.
  syscall(SYS_close_range, 3, ~0u, 0);
  int status = 0;
  for (;;) {
    int st;
    pid_t r = waitpid(-1, &st, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) break;
    if (r == started[0]) status = st;
  }
  if (WIFEXITED(status)) _exit(WEXITSTATUS(status));
  _exit(128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 1));
}

std::vector<pid_t> Children(pid_t pid) {
  std::vector<pid_t> out;
  DIR* d = opendir(("/proc/" + std::to_string(pid) + "/task").c_str());
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream f("/proc/" + std::to_string(pid) + "/task/" + e->d_name + "/children");
    pid_t c;
    while (f >> c) out.push_back(c);
  }
  closedir(d);
  return out;
}

pid_t FirstChild(pid_t pid) {
  auto c = Children(pid);
  return c.empty() ? -1 : c[0];
}

// The innermost pid of `outer` (the last NSpid field).
pid_t InnerPid(pid_t outer) {
  std::ifstream f("/proc/" + std::to_string(outer) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("NSpid:", 0) != 0) continue;
    std::istringstream ss(line.substr(6));
    pid_t v = -1, last = -1;
    while (ss >> v) last = v;
    return last;
  }
  return -1;
}

// Reads the restorer's progress: 'M', 'P'+addr or 'F'+message.
char ReadStatus(int fd, uint64_t* addr, std::string* msg, int timeout_ms) {
  pollfd pf = {fd, POLLIN, 0};
  if (poll(&pf, 1, timeout_ms) <= 0) return 0;
  char c = 0;
  if (read(fd, &c, 1) != 1) return 0;
  if (c == IBDBG_RST_PARKED) {
    size_t got = 0;
    while (got < 8) {
      ssize_t n = read(fd, (char*)addr + got, 8 - got);
      if (n <= 0) return 0;
      got += (size_t)n;
    }
  } else if (c == IBDBG_RST_FAILED) {
    char ch;
    while (read(fd, &ch, 1) == 1 && ch) msg->push_back(ch);
  }
  return c;
}

bool WriteAll(int fd, const void* d, size_t len) {
  const char* c = (const char*)d;
  while (len) {
    ssize_t n = write(fd, c, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    c += n, len -= (size_t)n;
  }
  return true;
}

bool SendAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = send(fd, data.data() + off, data.size() - off, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += (size_t)n;
  }
  return true;
}

void SetSockOpts(int fd, const ibdbg_fd_info& fi) {
  int one = 1;
  if (fi.sock_opts & IBDBG_SOCKOPT_NODELAY) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (fi.sock_opts & IBDBG_SOCKOPT_KEEPALIVE) setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
}

// An IPv4 or IPv6 address made to mean any port.
void SetAnyPort(sockaddr_storage& s) {
  if (s.ss_family == AF_INET) ((sockaddr_in*)&s)->sin_port = 0;
  else ((sockaddr_in6*)&s)->sin6_port = 0;
}

// An IPv4 or IPv6 address made to name loopback, or else every address of
// this host.
void SetHost(sockaddr_storage& s, bool loopback) {
  if (s.ss_family == AF_INET) ((sockaddr_in*)&s)->sin_addr.s_addr = htonl(loopback ? INADDR_LOOPBACK : INADDR_ANY);
  else ((sockaddr_in6*)&s)->sin6_addr = loopback ? in6addr_loopback : in6addr_any;
}

// Connects two fresh TCP sockets through a listener of ours at `laddr` and
// the client bound to `caddr` (nullptr: any).  Returns false with errno set.
bool TcpPairAt(int family, const sockaddr* laddr, socklen_t llen, const sockaddr* caddr, socklen_t clen,
               std::pair<int, int>* out) {
  int one = 1;
  int lst = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int cl = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  setsockopt(lst, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(cl, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_storage bound{};
  socklen_t blen = sizeof bound;
  bool ok = lst >= 0 && cl >= 0 && bind(lst, laddr, llen) == 0 && listen(lst, 1) == 0 &&
            getsockname(lst, (sockaddr*)&bound, &blen) == 0 && (!caddr || bind(cl, caddr, clen) == 0) &&
            connect(cl, (const sockaddr*)&bound, blen) == 0;
  int acc = ok ? accept4(lst, nullptr, nullptr, SOCK_CLOEXEC) : -1;
  int saved = errno;
  if (lst >= 0) close(lst);
  if (acc < 0) {
    if (cl >= 0) close(cl);
    errno = saved;
    return false;
  }
  *out = {acc, cl};
  return true;
}

// A TCP connection between two ends of the image: at the captured addresses
// when they are free, so that getsockname/getpeername say what they said.
// They are not when the captured job still runs, or its connections linger
// in TIME_WAIT; then the pair is made on fresh ports (of the same addresses
// when this host has them, else of loopback): the application keeps its
// stream, only the port numbers it could ask for differ.
std::pair<int, int> ConnectTcp(const ibdbg_fd_info& a, const ibdbg_fd_info& b) {
  std::pair<int, int> fds;
  if (TcpPairAt(a.sock_family, (const sockaddr*)a.sock_addr, a.sock_addr_len, (const sockaddr*)b.sock_addr,
                b.sock_addr_len, &fds))
    return fds;
  int first = errno;
  sockaddr_storage la{}, ca{};
  memcpy(&la, a.sock_addr, a.sock_addr_len);
  memcpy(&ca, b.sock_addr, b.sock_addr_len);
  SetAnyPort(la);
  SetAnyPort(ca);
  bool ok = TcpPairAt(a.sock_family, (sockaddr*)&la, a.sock_addr_len, (sockaddr*)&ca, b.sock_addr_len, &fds);
  if (!ok) {
    // Addresses of another host: loopback carries the stream as well.
    sockaddr_storage lo{};
    lo.ss_family = (sa_family_t)a.sock_family;
    SetHost(lo, true);
    ok = TcpPairAt(a.sock_family, (sockaddr*)&lo, a.sock_addr_len, nullptr, 0, &fds);
  }
  std::string from = SockAddrText(b.sock_addr, b.sock_addr_len), to = SockAddrText(a.sock_addr, a.sock_addr_len);
  if (!ok) Fail("cannot reconnect TCP " + from + " -> " + to + ": " + strerror(errno));
  fprintf(stderr, "ibdbg: TCP %s -> %s reconnected on other ports (%s)\n", from.c_str(), to.c_str(), strerror(first));
  return fds;
}

// Binds fd to the captured address.  A unix path still occupied by the
// captured process's socket file is reclaimed: it is stale unless someone
// answers on it.
int BindReclaiming(int fd, const ibdbg_fd_info& fi) {
  int r = bind(fd, (const sockaddr*)fi.sock_addr, fi.sock_addr_len);
  const sockaddr_un* un = (const sockaddr_un*)fi.sock_addr;
  bool unix_path = fi.sock_family == AF_UNIX && fi.sock_addr_len > sizeof(sa_family_t) && un->sun_path[0];
  if (r == 0 || errno != EADDRINUSE || !unix_path) return r;
  int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  bool live = connect(probe, (const sockaddr*)fi.sock_addr, fi.sock_addr_len) == 0;
  close(probe);
  if (!live) unlink(un->sun_path);
  return bind(fd, (const sockaddr*)fi.sock_addr, fi.sock_addr_len);
}

// A unix stream connection whose accepted end is named like `named`: returns
// (accepted end, connecting end).
std::pair<int, int> ConnectUnixNamed(const ibdbg_fd_info& named) {
  const sockaddr_un* un = (const sockaddr_un*)named.sock_addr;
  bool path = un->sun_path[0] != 0;
  int lst = socket(AF_UNIX, named.sock_type | SOCK_CLOEXEC, 0);
  if (BindReclaiming(lst, named) != 0 || listen(lst, 1) != 0)
    Fail(std::string("cannot reconnect unix socket ") + (path ? un->sun_path : "(abstract)") + ": " + strerror(errno) +
         " (is the captured job still running?)");
  int cl = socket(AF_UNIX, named.sock_type | SOCK_CLOEXEC, 0);
  if (connect(cl, (const sockaddr*)named.sock_addr, named.sock_addr_len) != 0)
    Fail(std::string("cannot reconnect unix socket: ") + strerror(errno));
  int acc = accept4(lst, nullptr, nullptr, SOCK_CLOEXEC);
  close(lst);
  // The application's own listener (if any) binds the name again afterwards.
  if (path) unlink(un->sun_path);
  if (acc < 0) Fail(std::string("cannot reconnect unix socket: ") + strerror(errno));
  return {acc, cl};
}

// Each queued message of a message socket's record, in order.
template <typename F>
bool ForEachMessage(const std::string& data, F f) {
  size_t off = 0;
  while (off < data.size()) {
    ibdbg_sock_msg h;
    if (data.size() - off < sizeof h) return false;
    memcpy(&h, data.data() + off, sizeof h);
    off += sizeof h;
    if (h.addr_len > sizeof(sockaddr_storage) || data.size() - off < (uint64_t)h.addr_len + h.len) return false;
    if (!f((const uint8_t*)data.data() + off, h.addr_len, data.data() + off + h.addr_len, h.len)) return false;
    off += h.addr_len + h.len;
  }
  return true;
}

// What one end of a connection had not read, sent again from the other end
// `fd`: a byte stream, or messages with their boundaries.
bool SendQueued(int fd, const ibdbg_fd_info& reader, const std::string& data) {
  if (reader.sock_type != SOCK_SEQPACKET) return SendAll(fd, data);
  return ForEachMessage(data, [&](const uint8_t*, uint32_t, const char* msg, uint32_t len) {
    return send(fd, msg, len, MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)len;
  });
}

void ApplyShutdown(int fd, const ibdbg_fd_info& fi) {
  bool rd = fi.sock_opts & IBDBG_SOCKOPT_SHUT_RD, wr = fi.sock_opts & IBDBG_SOCKOPT_SHUT_WR;
  if (rd || wr) shutdown(fd, rd && wr ? SHUT_RDWR : rd ? SHUT_RD : SHUT_WR);
}

void MakeConnections(const std::vector<std::unique_ptr<Prepared>>& all, Shared& sh, std::vector<int>& ours) {
  std::map<uint64_t, const FdRecord*> ends;
  for (auto& p : all)
    for (auto& f : p->m.fds)
      if (f.info.kind == IBDBG_FD_SOCKET_CONN && f.info.sock_id) ends.emplace(f.info.sock_id, &f);
  for (auto& [id, a] : ends) {
    if (sh.socks.count(id)) continue;
    const FdRecord* b = nullptr;
    if (a->info.sock_family == AF_UNIX) {
      auto it = ends.find(a->info.peer_id);
      if (it != ends.end() && it->first != id) b = it->second;
    } else {
      for (auto& [id2, c] : ends)
        if (id2 != id && c->info.sock_family == a->info.sock_family &&
            c->info.sock_addr_len == a->info.peer_addr_len && c->info.peer_addr_len == a->info.sock_addr_len &&
            memcmp(c->info.sock_addr, a->info.peer_addr, c->info.sock_addr_len) == 0 &&
            memcmp(c->info.peer_addr, a->info.sock_addr, c->info.peer_addr_len) == 0)
          b = c;
    }
    if (!b || sh.socks.count(b->info.sock_id)) continue;
    std::pair<int, int> fds;
    if (a->info.sock_family == AF_UNIX) {
      // The end with a name (the accepted side of a named server) keeps it:
      // connect through a listener of our own at that name.
      const FdRecord* named = a->info.sock_addr_len > sizeof(sa_family_t) ? a
                              : b->info.sock_addr_len > sizeof(sa_family_t) ? b : nullptr;
      if (named) {
        auto [n_fd, o_fd] = ConnectUnixNamed(named->info);
        fds = named == a ? std::make_pair(n_fd, o_fd) : std::make_pair(o_fd, n_fd);
      } else {
        int sp[2];
        if (socketpair(AF_UNIX, a->info.sock_type | SOCK_CLOEXEC, 0, sp) != 0) Fail("cannot create a socket pair");
        fds = {sp[0], sp[1]};
      }
    } else {
      fds = ConnectTcp(a->info, b->info);
    }
    SetSockOpts(fds.first, a->info);
    SetSockOpts(fds.second, b->info);
    // What each end had not read goes in from the other end.
    if (!SendQueued(fds.second, a->info, a->data) || !SendQueued(fds.first, b->info, b->data))
      Fail("a connection held more unread bytes than a new one takes");
    // Half-closed connections close the same halves, after the bytes in flight.
    ApplyShutdown(fds.first, a->info);
    ApplyShutdown(fds.second, b->info);
    sh.socks[id] = fds.first;
    sh.socks[b->info.sock_id] = fds.second;
    ours.push_back(fds.first);
    ours.push_back(fds.second);
  }
  // Listening sockets, once each (a forked child shares its parent's), after
  // the connections: those may use the same port.
  for (auto& p : all)
    for (auto& f : p->m.fds) {
      const ibdbg_fd_info& fi = f.info;
      if (fi.kind != IBDBG_FD_SOCKET_LISTEN || sh.socks.count(fi.sock_id)) continue;
      int fd = socket(fi.sock_family, fi.sock_type | SOCK_CLOEXEC, 0);
      int one = 1;
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      // Before bind: an IPv6 listener that takes IPv4 too would clash with
      // an IPv4 listener of the same port.
      if (fi.sock_opts & IBDBG_SOCKOPT_V6ONLY) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
      bool bound = fd >= 0 && BindReclaiming(fd, fi) == 0;
      if (fd >= 0 && !bound && (fi.sock_family == AF_INET || fi.sock_family == AF_INET6) &&
          (errno == EADDRINUSE || errno == EADDRNOTAVAIL)) {
        // Its port is another's here (parts of a job from several hosts on
        // one), or its address is another host's: the same port on every
        // address, else any port.  Who connected already stays connected;
        // only a newcomer that knows the old address misses it.
        int first = errno;
        sockaddr_storage a{};
        memcpy(&a, fi.sock_addr, fi.sock_addr_len);
        if (first == EADDRNOTAVAIL) {
          SetHost(a, false);
          bound = bind(fd, (sockaddr*)&a, fi.sock_addr_len) == 0;
        }
        if (!bound) {
          SetAnyPort(a);
          bound = bind(fd, (sockaddr*)&a, fi.sock_addr_len) == 0;
        }
        sockaddr_storage got{};
        socklen_t gl = sizeof got;
        if (bound && getsockname(fd, (sockaddr*)&got, &gl) == 0)
          fprintf(stderr, "ibdbg: pid %d fd %d listens on %s instead of %s (%s)\n", (int)p->m.proc.pid, fi.fd,
                  SockAddrText(&got, gl).c_str(), SockAddrText(fi.sock_addr, fi.sock_addr_len).c_str(),
                  strerror(first));
      }
      if (!bound || listen(fd, fi.sock_backlog ? fi.sock_backlog : 128) != 0)
        Fail("cannot listen again on the socket of pid " + std::to_string(p->m.proc.pid) + " fd " +
             std::to_string(fi.fd) + ": " + strerror(errno) + " (is the captured job still running?)");
      sh.socks[fi.sock_id] = fd;
      ours.push_back(fd);
    }
}

// Scratch files of the job that are gone (it removed its session directory
// when it ended, or this is another machine) are made again from the image,
// before anything opens or maps them.
void RemakeScratchFiles(const std::vector<std::unique_ptr<Prepared>>& all) {
  for (auto& p : all)
    for (auto& f : p->m.fds) {
      const ibdbg_fd_info& fi = f.info;
      struct stat sb;
      if (fi.kind != IBDBG_FD_FILE || fi.deleted != IBDBG_FD_SCRATCH_COPY || stat(fi.path, &sb) == 0) continue;
      MakeParentDirs(fi.path);
      int fd = open(fi.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, fi.mode & 07777);
      if (fd < 0) continue;  // made by another record of it meanwhile, or not ours to make: reopen says
      bool ok = WriteAll(fd, f.data.data(), f.data.size());
      close(fd);
      if (!ok) Fail(std::string("cannot make ") + fi.path + " again: " + strerror(errno));
    }
}

// Connections between one of our processes and one of another part's (a
// process captured on another host): the end whose address sorts first
// listens on this host and publishes where through the coordinator, the
// other looks that up and connects, naming the connection first.  Each end
// then sends what the other had not read (its record is in the other part's
// image, which we read).  Listeners all publish before anyone waits, so no
// two parts wait on each other.
void MakeCrossPart(const std::vector<std::unique_ptr<Prepared>>& all, Shared& sh, std::vector<int>& ours,
                   const ReplayOptions& opts) {
  if (opts.peer_images.empty()) return;
  auto inet = [](const ibdbg_fd_info& fi) {
    return fi.kind == IBDBG_FD_SOCKET_CONN && (fi.sock_family == AF_INET || fi.sock_family == AF_INET6) &&
           fi.peer_addr_len;
  };
  auto local = [](const ibdbg_fd_info& fi) { return SockAddrText(fi.sock_addr, fi.sock_addr_len); };
  auto peer = [](const ibdbg_fd_info& fi) { return SockAddrText(fi.peer_addr, fi.peer_addr_len); };
  std::map<std::string, FdRecord> theirs;  // "local|peer" of the other parts' ends
  for (auto& file : opts.peer_images) {
    image::ImageReader r(file);
    ImageMeta m;
    image::Record first;
    bool have_pages;
    ReadMeta(r, m, first, &have_pages);
    for (auto& f : m.fds)
      if (inet(f.info)) theirs.emplace(local(f.info) + "|" + peer(f.info), f);
  }
  struct End {
    const FdRecord* mine;
    const FdRecord* peer;
    std::string key;
    bool listens;
    int fd = -1;
  };
  std::vector<End> ends;
  std::set<uint64_t> seen;
  for (auto& p : all)
    for (auto& f : p->m.fds) {
      if (!inet(f.info) || sh.socks.count(f.info.sock_id) || !seen.insert(f.info.sock_id).second) continue;
      std::string l = local(f.info), r = peer(f.info);
      auto it = theirs.find(r + "|" + l);
      if (it == theirs.end()) continue;  // a peer outside the job
      bool listens = l < r;
      ends.push_back({&f, &it->second, "tcp " + (listens ? l + "|" + r : r + "|" + l), listens});
    }
  if (ends.empty()) return;
  if (!opts.ns_put || !opts.ns_get) Fail("connections to other parts of the job, but no coordinator to meet them");
  for (auto& e : ends) {
    if (!e.listens) continue;
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    socklen_t al = sizeof a;
    if (lfd < 0 || bind(lfd, (sockaddr*)&a, sizeof a) != 0 || listen(lfd, 1) != 0 ||
        getsockname(lfd, (sockaddr*)&a, &al) != 0)
      Fail(std::string("cannot listen for a connection between hosts: ") + strerror(errno));
    e.fd = lfd;
    opts.ns_put(e.key, opts.reach_addr + ":" + std::to_string(ntohs(a.sin_port)));
  }
  auto send_key = [](int fd, const std::string& key) {
    uint16_t n = (uint16_t)key.size();
    return WriteAll(fd, &n, sizeof n) && WriteAll(fd, key.data(), key.size());
  };
  for (auto& e : ends) {
    if (e.listens) continue;
    std::string where = opts.ns_get(e.key);
    size_t colon = where.rfind(':');
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)atoi(where.c_str() + colon + 1));
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (colon == std::string::npos || inet_pton(AF_INET, where.substr(0, colon).c_str(), &a.sin_addr) != 1 || fd < 0 ||
        connect(fd, (sockaddr*)&a, sizeof a) != 0 || !send_key(fd, e.key))
      Fail("cannot reconnect " + e.key.substr(4) + " through " + where + ": " + strerror(errno));
    e.fd = fd;
  }
  for (auto& e : ends) {
    if (!e.listens) continue;
    pollfd pf = {e.fd, POLLIN, 0};
    int acc = poll(&pf, 1, 60000) == 1 ? accept4(e.fd, nullptr, nullptr, SOCK_CLOEXEC) : -1;
    close(e.fd);
    uint16_t n = 0;
    std::string key;
    bool ok = acc >= 0 && recv(acc, &n, sizeof n, MSG_WAITALL) == (ssize_t)sizeof n;
    if (ok) {
      key.resize(n);
      ok = recv(acc, key.data(), n, MSG_WAITALL) == (ssize_t)n && key == e.key;
    }
    if (!ok) Fail("the other host did not reconnect " + e.key.substr(4) + " in time");
    e.fd = acc;
  }
  for (auto& e : ends) {
    SetSockOpts(e.fd, e.mine->info);
    if (!SendAll(e.fd, e.peer->data)) Fail("a connection held more unread bytes than a new one takes");
    ApplyShutdown(e.fd, e.mine->info);
    sh.socks[e.mine->info.sock_id] = e.fd;
    ours.push_back(e.fd);
  }
}

// A unix datagram name held by a socket file nobody answers on any more (the
// captured process's) is taken back; a live one is not.
int BindDgram(int fd, const ibdbg_fd_info& fi) {
  int r = bind(fd, (const sockaddr*)fi.sock_addr, fi.sock_addr_len);
  const sockaddr_un* un = (const sockaddr_un*)fi.sock_addr;
  if (r == 0 || errno != EADDRINUSE || fi.sock_family != AF_UNIX || !un->sun_path[0]) return r;
  int probe = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  bool stale = connect(probe, (const sockaddr*)fi.sock_addr, fi.sock_addr_len) != 0 && errno == ECONNREFUSED;
  close(probe);
  if (!stale) {
    errno = EADDRINUSE;
    return -1;
  }
  unlink(un->sun_path);
  return bind(fd, (const sockaddr*)fi.sock_addr, fi.sock_addr_len);
}

bool HasName(const ibdbg_fd_info& fi) {
  if (fi.sock_family == AF_UNIX) return fi.sock_addr_len > sizeof(sa_family_t);
  if (fi.sock_family == AF_INET) return ((const sockaddr_in*)fi.sock_addr)->sin_port != 0;
  if (fi.sock_family == AF_INET6) return ((const sockaddr_in6*)fi.sock_addr)->sin6_port != 0;
  return false;
}

// Whether a UDP socket bound to `bound` sends from `from` (same port, and the
// same address unless it is bound to every address).
bool InetSendsFrom(const ibdbg_fd_info& s, const uint8_t* from, uint32_t len) {
  if (s.sock_family == AF_INET && len >= sizeof(sockaddr_in)) {
    sockaddr_in a, b;
    memcpy(&a, s.sock_addr, sizeof a);
    memcpy(&b, from, sizeof b);
    return b.sin_family == AF_INET && a.sin_port == b.sin_port &&
           (a.sin_addr.s_addr == htonl(INADDR_ANY) || a.sin_addr.s_addr == b.sin_addr.s_addr);
  }
  if (s.sock_family == AF_INET6 && len >= sizeof(sockaddr_in6)) {
    sockaddr_in6 a, b;
    memcpy(&a, s.sock_addr, sizeof a);
    memcpy(&b, from, sizeof b);
    return b.sin6_family == AF_INET6 && a.sin6_port == b.sin6_port &&
           (IN6_IS_ADDR_UNSPECIFIED(&a.sin6_addr) || memcmp(&a.sin6_addr, &b.sin6_addr, sizeof a.sin6_addr) == 0);
  }
  return false;
}

// Unix datagram and UDP sockets.  All are made and bound first; then every
// queued message is sent again, in order, from its sender's address (the
// sender itself when it is in the image); only then do the connected ones
// connect, as a connected socket takes messages from its peer alone.
void MakeDgrams(const std::vector<std::unique_ptr<Prepared>>& all, Shared& sh, std::vector<int>& ours) {
  struct D {
    const FdRecord* rec;
    pid_t pid;
    int fd = -1;
    D* pair = nullptr;  // an unnamed unix pair: the other end
  };
  std::map<uint64_t, D> socks;
  for (auto& p : all)
    for (auto& f : p->m.fds)
      if (f.info.kind == IBDBG_FD_SOCKET_DGRAM && f.info.sock_id && !sh.socks.count(f.info.sock_id))
        socks.emplace(f.info.sock_id, D{&f, p->m.proc.pid});
  auto where = [](const D& d) {
    return "pid " + std::to_string(d.pid) + " fd " + std::to_string(d.rec->info.fd);
  };
  auto own = [&](int fd) {
    if (fd >= 0) ours.push_back(fd);
    return fd;
  };
  for (auto& [id, d] : socks) {
    if (d.fd >= 0) continue;
    const ibdbg_fd_info& fi = d.rec->info;
    if (fi.sock_family == AF_UNIX && fi.peer_id && !HasName(fi)) {
      auto it = socks.find(fi.peer_id);
      if (it != socks.end() && it->first != id && it->second.rec->info.peer_id == id &&
          !HasName(it->second.rec->info)) {
        int sp[2];
        if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sp) != 0) Fail("cannot create a socket pair");
        d.fd = own(sp[0]);
        it->second.fd = own(sp[1]);
        d.pair = &it->second;
        it->second.pair = &d;
        continue;
      }
    }
    d.fd = own(socket(fi.sock_family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (d.fd < 0) Fail("cannot create the datagram socket of " + where(d) + ": " + strerror(errno));
    int one = 1;
    if (fi.sock_opts & IBDBG_SOCKOPT_REUSEADDR) setsockopt(d.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fi.sock_opts & IBDBG_SOCKOPT_REUSEPORT) setsockopt(d.fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (fi.sock_opts & IBDBG_SOCKOPT_BROADCAST) setsockopt(d.fd, SOL_SOCKET, SO_BROADCAST, &one, sizeof one);
    if (HasName(fi) && BindDgram(d.fd, fi) != 0)
      Fail("cannot bind the datagram socket of " + where(d) + " to " + SockAddrText(fi.sock_addr, fi.sock_addr_len) +
           ": " + strerror(errno) + " (is the captured job still running?)");
  }
  for (auto& [id, d] : socks) {
    const ibdbg_fd_info& fi = d.rec->info;
    if (d.rec->data.empty()) continue;
    if (!d.pair && !HasName(fi))
      Fail(where(d) + ": messages are queued on an unnamed datagram socket that no sender can reach again");
    bool ok = ForEachMessage(d.rec->data, [&](const uint8_t* from, uint32_t from_len, const char* msg, uint32_t len) {
      int sfd = -1, tmp = -1;
      if (d.pair) {
        sfd = d.pair->fd;
      } else if (from_len) {
        for (auto& [id2, e] : socks) {
          const ibdbg_fd_info& s = e.rec->info;
          bool same = s.sock_family == AF_UNIX
                          ? s.sock_addr_len == from_len && memcmp(s.sock_addr, from, from_len) == 0
                          : HasName(s) && InetSendsFrom(s, from, from_len);
          if (same) sfd = e.fd;
        }
      }
      if (sfd < 0) {
        // A sender outside the image, or gone: a stand-in with its address.
        tmp = socket(fi.sock_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        auto sender = std::make_unique<ibdbg_fd_info>();
        memset(sender.get(), 0, sizeof *sender);
        sender->sock_family = fi.sock_family;
        memcpy(sender->sock_addr, from, std::min<size_t>(from_len, sizeof sender->sock_addr));
        sender->sock_addr_len = from_len;
        if (from_len && BindDgram(tmp, *sender) != 0) {
          if (fi.sock_family != AF_UNIX) {
            fprintf(stderr, "ibdbg replay: %s: a datagram queued from %s cannot be sent again from that address (%s); dropped\n",
                    where(d).c_str(), SockAddrText(from, from_len).c_str(), strerror(errno));
            close(tmp);
            return true;
          }
          fprintf(stderr, "ibdbg replay: %s: a message queued from %s comes from an unnamed socket now (%s)\n",
                  where(d).c_str(), SockAddrText(from, from_len).c_str(), strerror(errno));
          from_len = 0;
        }
        sfd = tmp;
      }
      // Where to: its bound address; for one bound to every address, the
      // sender's own (a local one), so the source stays what it was.
      sockaddr_storage to{};
      memcpy(&to, fi.sock_addr, std::min<size_t>(fi.sock_addr_len, sizeof to));
      if (fi.sock_family == AF_INET) {
        sockaddr_in* in = (sockaddr_in*)&to;
        if (in->sin_addr.s_addr == htonl(INADDR_ANY))
          in->sin_addr.s_addr = from_len >= sizeof(sockaddr_in) && ((const sockaddr_in*)from)->sin_addr.s_addr
                                    ? ((const sockaddr_in*)from)->sin_addr.s_addr
                                    : htonl(INADDR_LOOPBACK);
      } else if (fi.sock_family == AF_INET6) {
        sockaddr_in6* in = (sockaddr_in6*)&to;
        if (IN6_IS_ADDR_UNSPECIFIED(&in->sin6_addr))
          in->sin6_addr = from_len >= sizeof(sockaddr_in6) && !IN6_IS_ADDR_UNSPECIFIED(&((const sockaddr_in6*)from)->sin6_addr)
                              ? ((const sockaddr_in6*)from)->sin6_addr
                              : in6addr_loopback;
      }
      ssize_t n = d.pair ? send(sfd, msg, len, MSG_DONTWAIT | MSG_NOSIGNAL)
                         : sendto(sfd, msg, len, MSG_DONTWAIT | MSG_NOSIGNAL, (const sockaddr*)&to, fi.sock_addr_len);
      int err = errno;
      if (tmp >= 0) {
        close(tmp);
        const sockaddr_un* un = (const sockaddr_un*)from;
        if (fi.sock_family == AF_UNIX && from_len > sizeof(sa_family_t) && un->sun_path[0]) unlink(un->sun_path);
      }
      if (n != (ssize_t)len)
        Fail(where(d) + ": cannot queue a message again (" + std::string(n < 0 ? strerror(err) : "short send") + ")");
      return true;
    });
    if (!ok) Fail(where(d) + ": corrupted message queue in the image");
  }
  for (auto& [id, d] : socks) {
    const ibdbg_fd_info& fi = d.rec->info;
    if (!d.pair && fi.sock_family == AF_UNIX && fi.peer_addr_len <= sizeof(sa_family_t) && socks.count(fi.peer_id))
      Fail(where(d) + ": a unix datagram socket connected to an unnamed one that is not its pair cannot be connected again");
    if (!d.pair && fi.peer_addr_len > sizeof(sa_family_t)) {
      bool outside = fi.sock_family == AF_UNIX && !socks.count(fi.peer_id);
      if (outside) {
        // Its peer (a system daemon, say) is not part of the replay.
        fprintf(stderr, "ibdbg replay: %s: unix datagram socket connected to %s outside the job: it is closed now\n",
                where(d).c_str(), SockAddrText(fi.peer_addr, fi.peer_addr_len).c_str());
        shutdown(d.fd, SHUT_RDWR);
      } else if (connect(d.fd, (const sockaddr*)fi.peer_addr, fi.peer_addr_len) != 0) {
        Fail("cannot connect the datagram socket of " + where(d) + " to " +
             SockAddrText(fi.peer_addr, fi.peer_addr_len) + " again: " + strerror(errno));
      }
    }
    ApplyShutdown(d.fd, fi);
    sh.socks[id] = d.fd;
  }
}

// A TCP connection over loopback whose far end is gone (for a connection
// whose peer was outside the job): returns the near end and the far one.
std::pair<int, int> LoopbackPair(int family) {
  int lst = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_storage a{};
  socklen_t al;
  if (family == AF_INET6) {
    sockaddr_in6* in = (sockaddr_in6*)&a;
    in->sin6_family = AF_INET6;
    in->sin6_addr = in6addr_loopback;
    al = sizeof *in;
  } else {
    sockaddr_in* in = (sockaddr_in*)&a;
    in->sin_family = AF_INET;
    in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    al = sizeof *in;
  }
  int cl = -1, acc = -1;
  if (lst >= 0 && bind(lst, (sockaddr*)&a, al) == 0 && listen(lst, 1) == 0 && getsockname(lst, (sockaddr*)&a, &al) == 0) {
    cl = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (cl >= 0 && connect(cl, (sockaddr*)&a, al) == 0) acc = accept4(lst, nullptr, nullptr, SOCK_CLOEXEC);
  }
  if (lst >= 0) close(lst);
  if (acc < 0) {
    if (cl >= 0) close(cl);
    return {-1, -1};
  }
  return {cl, acc};
}

// Connections whose other end was not in the image: the application reads
// what had reached it, then end of file; writing fails (EPIPE).  Never a hang,
// never another peer.  One line each on stderr says so.
void MakeOutsideEnds(const std::vector<std::unique_ptr<Prepared>>& all, Shared& sh, std::vector<int>& ours) {
  for (auto& p : all)
    for (auto& f : p->m.fds) {
      const ibdbg_fd_info& fi = f.info;
      if (fi.kind != IBDBG_FD_SOCKET_CONN || !fi.sock_id || sh.socks.count(fi.sock_id)) continue;
      bool inet = fi.sock_family == AF_INET || fi.sock_family == AF_INET6;
      // TCP stays TCP (a loopback connection its peer has closed); unix keeps its type.
      auto [keep, far] = inet ? LoopbackPair(fi.sock_family) : std::make_pair(-1, -1);
      if (keep < 0) {
        int sp[2];
        int type = fi.sock_family == AF_UNIX ? fi.sock_type : SOCK_STREAM;
        if (socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sp) != 0) Fail("cannot create a socket pair");
        keep = sp[0];
        far = sp[1];
      }
      if (!SendQueued(far, fi, f.data)) Fail("a connection held more unread bytes than a new one takes");
      close(far);
      if (inet) {
        // Its FIN arrives at once over loopback; ours makes writes fail at once.
        pollfd pf = {keep, POLLRDHUP, 0};
        poll(&pf, 1, 1000);
        shutdown(keep, SHUT_WR);
      }
      const char* what = inet ? "TCP" : fi.sock_type == SOCK_SEQPACKET ? "unix seqpacket" : "unix stream";
      if (inet && !fi.peer_addr_len)
        fprintf(stderr, "ibdbg replay: pid %d fd %d: %s connection had ended before the capture: it is closed now\n",
                (int)p->m.proc.pid, fi.fd, what);
      else
        fprintf(stderr, "ibdbg replay: pid %d fd %d: %s connection to %s was outside the job: it is closed now\n",
                (int)p->m.proc.pid, fi.fd, what, SockAddrText(fi.peer_addr, fi.peer_addr_len).c_str());
      sh.socks[fi.sock_id] = keep;
      ours.push_back(keep);
    }
}

// The job's pty pairs, from the images: each master once (a forked child
// shares its parent's), with the bytes every record of it carried; slaves
// whose master is not in the job are the job's terminal (IBDBG_FD_TTY).
void PlanPtys(std::vector<std::unique_ptr<Prepared>>& all, Shared& sh, std::vector<int>& ours) {
  for (auto& p : all)
    for (auto& f : p->m.fds) {
      if (f.info.kind != IBDBG_FD_PTY_MASTER) continue;
      ibdbg_pty_state st;
      if (!PtyStateOf(f, &st) || f.data.size() != sizeof st + (uint64_t)st.out_len + st.in_len)
        Fail(p->image_file + ": corrupted pseudo-terminal record (fd " + std::to_string(f.info.fd) + ")");
      auto [it, fresh] = sh.ptys.try_emplace(st.index);
      Shared::Pty& pt = it->second;
      if (fresh) pt.st = st;
      else if (pt.st.devpts_dev && st.devpts_dev && pt.st.devpts_dev != st.devpts_dev)
        Fail("the job has two pseudo-terminals numbered " + std::to_string(st.index) +
             " (of two devpts instances); ibdbg replays them into one");
      pt.out.append(f.data, sizeof st, st.out_len);
      pt.in.append(f.data, sizeof st + st.out_len, st.in_len);
    }
  for (auto& p : all)
    for (auto& f : p->m.fds) {
      if (f.info.kind != IBDBG_FD_PTY_SLAVE) continue;
      ibdbg_pty_state st;
      auto it = PtyStateOf(f, &st) ? sh.ptys.find(st.index) : sh.ptys.end();
      if (it == sh.ptys.end() || (st.devpts_dev && it->second.st.devpts_dev && st.devpts_dev != it->second.st.devpts_dev)) {
        f.info.kind = IBDBG_FD_TTY;
        continue;
      }
      it->second.has_slaves = true;
    }
  for (auto& [idx, pt] : sh.ptys) {
    // A placeholder that fixes the descriptor number in every process; the
    // master takes its place once the replay's namespaces exist.
    pt.fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (pt.fd < 0) Fail(std::string("cannot open /dev/null: ") + strerror(errno));
    ours.push_back(pt.fd);
  }
}

// In the replay's fresh mount namespace, before any process of the job: a
// devpts instance of its own, where pairs are made in index order so that
// each slave is /dev/pts/N with its captured N (numbers not in the job are
// made and dropped).
void MakePtys(const Shared& sh, int status_fd) {
  if (sh.ptys.empty()) return;
  mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr);
  if (mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666") != 0)
    ChildFail(status_fd, std::string("cannot mount a devpts instance for the job's pseudo-terminals: ") +
                             strerror(errno));
  // /dev/ptmx opens the instance at /dev/pts beside it (Linux >= 4.7); where
  // it does not, that instance's own ptmx does.
  const char* ptmx = "/dev/ptmx";
  std::vector<int> dropped;
  uint32_t last = sh.ptys.rbegin()->first;
  for (uint32_t i = 0; i <= last; i++) {
    int m = open(ptmx, O_RDWR | O_NOCTTY | O_CLOEXEC);
    unsigned idx = ~0u;
    if (m >= 0) ioctl(m, TIOCGPTN, &idx);
    if (m < 0 || idx != i) {
      if (m >= 0) close(m);
      if (i == 0 && strcmp(ptmx, "/dev/ptmx") == 0) {
        ptmx = "/dev/pts/ptmx";
        i--;
        continue;
      }
      ChildFail(status_fd, "cannot recreate pseudo-terminal " + std::to_string(i) + " (" +
                               (m < 0 ? std::string(strerror(errno)) : "got number " + std::to_string(idx)) + ")");
    }
    auto it = sh.ptys.find(i);
    if (it == sh.ptys.end()) {
      dropped.push_back(m);
      continue;
    }
    const Shared::Pty& pt = it->second;
    int zero = 0, one = 1;
    ioctl(m, TIOCSPTLCK, &zero);
    std::string err;
    if (!pty::Refill(m, pt.st, pt.out, pt.in, &err)) ChildFail(status_fd, "/dev/pts/" + std::to_string(i) + ": " + err);
    if (pt.st.flags & IBDBG_PTY_PACKET) ioctl(m, TIOCPKT, &one);
    // Locked again only if no slave is to be opened (a lock stops that too).
    if ((pt.st.flags & IBDBG_PTY_LOCKED) && !pt.has_slaves) ioctl(m, TIOCSPTLCK, &one);
    if (dup3(m, pt.fd, O_CLOEXEC) < 0) ChildFail(status_fd, "cannot place a pseudo-terminal master");
    close(m);
  }
  for (int m : dropped) close(m);
}

// Named FIFOs: made again where missing, opened read-write by the launcher
// (an open that never blocks), refilled with the bytes they held.  The
// processes open them again through that descriptor.
void MakeFifos(const std::vector<std::unique_ptr<Prepared>>& all, Shared& sh, std::vector<int>& ours) {
  for (auto& p : all)
    for (auto& f : p->m.fds) {
      const ibdbg_fd_info& fi = f.info;
      if (fi.kind != IBDBG_FD_FIFO) continue;
      auto it = sh.fifos.find(fi.path);
      if (it == sh.fifos.end()) {
        struct stat sb;
        bool made = false;
        if (stat(fi.path, &sb) != 0) {
          MakeParentDirs(fi.path);
          if (mkfifo(fi.path, fi.mode & 07777) != 0)
            Fail(std::string("cannot make FIFO ") + fi.path + " again: " + strerror(errno));
          made = true;
        } else if (!S_ISFIFO(sb.st_mode)) {
          Fail(std::string(fi.path) + " is no longer a FIFO (it was one at the capture)");
        }
        int fd = open(fi.path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0) Fail(std::string("cannot open FIFO ") + fi.path + ": " + strerror(errno));
        // Deleted while open at the capture: no name again.
        if (made && fi.deleted) unlink(fi.path);
        it = sh.fifos.emplace(fi.path, fd).first;
        ours.push_back(fd);
      }
      if (!f.data.empty()) {
        if (f.data.size() > 65536) fcntl(it->second, F_SETPIPE_SZ, (int)f.data.size());
        if (!WriteAll(it->second, f.data.data(), f.data.size()))
          Fail("FIFO " + std::string(fi.path) + " held more bytes at capture than it can here (" +
               std::to_string(f.data.size()) + ")");
      }
    }
}

// Objects of the job's IPC namespace and shared files, once for the whole
// job: SysV objects by id, /dev/shm files by name (a placeholder descriptor
// now, the file itself once the replay's /dev/shm exists), deleted files and
// memfds by device and inode, so that every descriptor and shared mapping of
// one stays one object.
void GatherSharedObjects(std::vector<std::unique_ptr<Prepared>>& all, Shared& sh, std::vector<int>& ours) {
  // Each object once, from the image that holds its bytes (the others name
  // it with IBDBG_IPC_ELSEWHERE).
  std::vector<std::string> order;
  std::map<std::string, const IpcObject*> best;
  for (auto& p : all)
    for (auto& o : p->m.ipc) {
      std::string id = std::to_string(o.o.kind) + ":" +
                       (o.o.kind == IBDBG_IPC_SHMFILE ? std::string(o.o.path)
                        : o.o.kind == IBDBG_IPC_SHMEM ? std::to_string(o.o.dev) + ":" + std::to_string(o.o.ino)
                                                      : std::to_string(o.o.id));
      auto [it, fresh] = best.emplace(id, &o);
      if (fresh) order.push_back(id);
      else if ((it->second->o.flags & IBDBG_IPC_ELSEWHERE) && !(o.o.flags & IBDBG_IPC_ELSEWHERE)) it->second = &o;
    }
  std::vector<const IpcObject*> shmem;
  for (const auto& id : order) {
    const IpcObject& o = *best[id];
    if (o.o.flags & IBDBG_IPC_ELSEWHERE)
      Fail("the image names " + std::string(o.o.kind == IBDBG_IPC_SHMFILE || o.o.kind == IBDBG_IPC_SHMEM ? o.o.path : "a SysV object") +
           " (" + id + ") but none of its processes holds its contents: replay every process of the capture");
    if (o.o.kind == IBDBG_IPC_SHMEM) {
      shmem.push_back(&o);  // below, with the deleted files
      continue;
    }
    if (o.o.kind == IBDBG_IPC_SHMFILE) {
      int ph = open("/dev/null", O_RDWR | O_CLOEXEC);
      if (ph < 0) Fail("cannot open /dev/null");
      sh.shm_files[o.o.path] = ph;
      ours.push_back(ph);
    }
    sh.ipc.push_back(o);
  }
  for (auto& p : all)
    for (auto& f : p->m.fds) {
      const ibdbg_fd_info& fi = f.info;
      if (fi.kind != IBDBG_FD_FILE || fi.deleted != 1 || !fi.file_ino) continue;
      std::pair<uint64_t, uint64_t> key(fi.file_dev, fi.file_ino);
      if (sh.shmem.count(key)) continue;
      std::string path = fi.path;
      int fd = -1;
      if (path.rfind("/memfd:", 0) == 0 || InDevShm(path)) {
        // Memory it was: memory it stays, under its old name.
        std::string name = path.rfind("/memfd:", 0) == 0 ? path.substr(7) : path.substr(path.rfind('/') + 1);
        fd = (int)syscall(SYS_memfd_create, name.substr(0, 240).c_str(), MFD_CLOEXEC);
      } else {
        std::string dir = path.substr(0, path.rfind('/'));
        fd = open(dir.empty() ? "/" : dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, fi.mode & 07777);
        if (fd < 0) fd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
      }
      if (fd < 0) Fail("cannot recreate deleted file " + path + ": " + strerror(errno));
      size_t off = 0;
      while (off < f.data.size()) {
        ssize_t n = pwrite(fd, f.data.data() + off, f.data.size() - off, (off_t)off);
        if (n <= 0) Fail("cannot refill deleted file " + path + ": " + strerror(errno));
        off += (size_t)n;
      }
      if (ftruncate(fd, (off_t)std::max<uint64_t>(fi.size, f.data.size())) != 0) {
      }
      sh.shmem[key] = fd;
    }
  // Memory objects stored whole from their mappings.
  for (const IpcObject* op : shmem) {
    const IpcObject& o = *op;
    std::pair<uint64_t, uint64_t> key(o.o.dev, o.o.ino);
    if (sh.shmem.count(key)) continue;
    std::string path = o.o.path;
    std::string name = path.rfind("/memfd:", 0) == 0 ? path.substr(7)
                       : path == "/dev/zero"        ? std::string("ibdbg-shared")
                                                    : path.substr(path.rfind('/') + 1);
    int fd = (int)syscall(SYS_memfd_create, name.substr(0, 240).c_str(), MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)o.o.size) != 0) Fail("cannot recreate shared memory " + path);
    size_t off = 0;
    while (off + 16 <= o.data.size()) {
      uint64_t at, len;
      memcpy(&at, o.data.data() + off, 8);
      memcpy(&len, o.data.data() + off + 8, 8);
      off += 16;
      if (len > o.data.size() - off) Fail("corrupted image: shared memory record of " + path);
      for (uint64_t done = 0; done < len;) {
        ssize_t n = pwrite(fd, o.data.data() + off + done, len - done, (off_t)(at + done));
        if (n <= 0) Fail("cannot refill shared memory " + path + ": " + strerror(errno));
        done += (uint64_t)n;
      }
      off += len;
    }
    sh.shmem[key] = fd;
  }
}

// The shared objects process p reaches through descriptors.
void AddSharedObjectFds(Prepared& p, const Shared& sh) {
  for (auto& f : p.m.fds)
    if (f.info.kind == IBDBG_FD_FILE && f.info.deleted && f.info.file_ino) {
      auto it = sh.shmem.find({f.info.file_dev, f.info.file_ino});
      if (it != sh.shmem.end()) AddLauncherFd(p, it->second);
    }
}

}  // namespace

// Writes the process's pages (on worker threads, reading ahead); in a lazy
// replay hands the LAZY regions' records and the process's userfaultfd to
// the page server instead.
void FillPagesOf(Prepared& p, PageServer* server, bool times) {
  auto t0 = std::chrono::steady_clock::now();
  bool vdso_filled = false;
  int ufd = -1;
  auto classify = [&](uint64_t a, uint64_t len) {
    for (auto& v : p.m.vmas)
      if (v.kind == IBDBG_IVMA_VDSO && a >= v.start && a < v.end) {
        vdso_filled = true;
        if (!p.vdso_patch) return PageUse::Skip;  // the kernel's own vdso serves
      }
    for (auto& v : p.vmas)
      if ((v.kind & IBDBG_VMA_FILL) && a >= v.start && a + len <= v.end) {
        if (!(v.kind & IBDBG_VMA_LAZY) || ufd < 0) return PageUse::Write;
        return server ? PageUse::Lazy : PageUse::Copy;
      }
    Fail(p.image_file + ": corrupted image (pages outside any memory region)");
  };
  // The restorer's userfaultfd (an eager replay without one, as where the
  // kernel has none, writes with process_vm_writev).
  int pidfd = (int)syscall(SYS_pidfd_open, p.outer_pid, 0);
  ufd = pidfd < 0 ? -1 : (int)syscall(SYS_pidfd_getfd, pidfd, p.hdr->lazy_uffd_fd, 0);
  int getfd_errno = errno;
  if (pidfd >= 0) close(pidfd);
  if (ufd >= 0) fcntl(ufd, F_SETFD, FD_CLOEXEC);
  if (server && ufd < 0)
    Fail(std::string("replay failed: cannot take the process's userfaultfd: ") + strerror(getfd_errno));
  FillResult r;
  std::shared_ptr<PageFile> file;
  if (p.have_pages) {
    file = std::make_shared<PageFile>(p.image_file);
    uint64_t index = p.reader->current_index();
    p.reader.reset();
    int threads = (int)std::clamp(std::thread::hardware_concurrency(), 1u, 4u);
    try {
      if (server) file->Random();
      r = FillPages(*file, p.first_pages.offset, index, p.outer_pid, classify, threads, server != nullptr, ufd);
    } catch (const std::exception& e) {
      if (ufd >= 0) close(ufd);
      std::string m = e.what();
      Fail(m.rfind("replay failed", 0) == 0 ? m + " (pid " + std::to_string(p.m.proc.pid) + ")" : m);
    }
  }
  p.reader.reset();
  p.first_pages.data.clear();
  if (p.vdso_patch && !vdso_filled)
    Fail(p.image_file + ": captured on another kernel by an ibdbg that did not keep the vdso; cannot replay here");
  uint64_t lazy_bytes = 0;
  for (auto& run : r.lazy) lazy_bytes += run.len;
  if (server)
    server->Add(p.outer_pid, ufd, file, std::move(r.lazy));
  else if (ufd >= 0)
    close(ufd);  // with the restorer's own (closed after 'D'), the regions are plain memory again
  if (times) {
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    fprintf(stderr, "ibdbg: pid %d: %.1f MiB of memory written in %.1f ms (%.2f GB/s), %.1f MiB left to the page server\n",
            (int)p.m.proc.pid, r.bytes / 1048576.0, ms, ms > 0 ? r.bytes / ms / 1e6 : 0.0, lazy_bytes / 1048576.0);
  }
}

Launched LaunchJob(const std::vector<std::string>& image_files, const ReplayOptions& opts) {
  if (image_files.empty()) Fail("the image has no processes");
  const auto launch_t0 = std::chrono::steady_clock::now();
  if (opts.lazy)
    if (std::string why = LazyRefusal(); !why.empty()) Fail(why);
  std::vector<std::unique_ptr<Prepared>> all;
  std::map<pid_t, int> by_pid;
  for (const auto& file : image_files) {
    auto p = std::make_unique<Prepared>();
    p->image_file = file;
    p->reader = std::make_unique<image::ImageReader>(file);
    ReadMeta(*p->reader, p->m, p->first_pages, &p->have_pages);
    if (p->m.proc.pid <= 1) Fail(file + ": the image names pid " + std::to_string(p->m.proc.pid));
    if (!by_pid.emplace(p->m.proc.pid, (int)all.size()).second)
      Fail("two processes of the image have pid " + std::to_string(p->m.proc.pid) +
           " (images of several hosts replay onto one in a later version)");
    all.push_back(std::move(p));
  }
  {
    std::vector<ImageMeta*> ms;
    for (auto& p : all) ms.push_back(&p->m);
    DropVerbsPeerConns(ms);
  }
  // The process tree: parents that are in the image keep their children.
  std::vector<int> roots;
  for (size_t i = 0; i < all.size(); i++) {
    auto it = by_pid.find(all[i]->m.proc.ppid);
    if (it != by_pid.end() && it->second != (int)i) {
      all[i]->parent = it->second;
      all[it->second]->children.push_back((int)i);
    } else {
      roots.push_back((int)i);
    }
  }
  // Processes in pid order make the tree order stable.
  std::sort(roots.begin(), roots.end(), [&](int a, int b) { return all[a]->m.proc.pid < all[b]->m.proc.pid; });

  struct rlimit nofile;
  getrlimit(RLIMIT_NOFILE, &nofile);
  if (nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
  }
  signal(SIGPIPE, SIG_IGN);

  // Shared objects: pipes (with the bytes that were in them) and shared memory.
  Shared sh;
  std::vector<int> ours;  // every descriptor we opened, closed once the replay is under way
  for (auto& p : all)
    for (auto& f : p->m.fds) {
      if (f.info.kind != IBDBG_FD_PIPE) continue;
      auto it = sh.pipes.find(f.info.pipe_id);
      if (it == sh.pipes.end()) {
        int pp[2];
        if (pipe2(pp, O_CLOEXEC) != 0) Fail("cannot create pipes");
        it = sh.pipes.emplace(f.info.pipe_id, std::make_pair(pp[0], pp[1])).first;
        ours.push_back(pp[0]);
        ours.push_back(pp[1]);
        // The capacity it had (pipe records say it in `size`).
        if (f.info.size && f.info.size != (uint64_t)fcntl(pp[1], F_GETPIPE_SZ))
          fcntl(pp[1], F_SETPIPE_SZ, (int)f.info.size);
      }
      if (!f.data.empty()) {
        int w = it->second.second;
        if (f.data.size() > (size_t)fcntl(w, F_GETPIPE_SZ)) fcntl(w, F_SETPIPE_SZ, (int)f.data.size());
        int fl = fcntl(w, F_GETFL);
        fcntl(w, F_SETFL, fl | O_NONBLOCK);
        bool ok = WriteAll(w, f.data.data(), f.data.size());
        fcntl(w, F_SETFL, fl);
        if (!ok) Fail("a pipe held more bytes at capture than a pipe here can (" + std::to_string(f.data.size()) + ")");
      }
    }
  // Connections with both ends in the image come back connected, with the
  // bytes each end had not read yet.
  MakeConnections(all, sh, ours);
  MakeDgrams(all, sh, ours);
  sh.standins = opts.standins;
  MakeCrossPart(all, sh, ours, opts);
  MakeOutsideEnds(all, sh, ours);
  PlanPtys(all, sh, ours);
  MakeFifos(all, sh, ours);
  GatherSharedObjects(all, sh, ours);
  RemakeScratchFiles(all);
  for (auto& pp : all) {
    Prepared& p = *pp;
    BuildVmas(p, sh);
    MarkFastFill(p);
    BuildThreads(p.m, p);
    AddSharedObjectFds(p, sh);
    for (auto& f : p.m.fds) {
      if (f.info.kind == IBDBG_FD_PIPE) {
        AddLauncherFd(p, sh.pipes[f.info.pipe_id].first);
        AddLauncherFd(p, sh.pipes[f.info.pipe_id].second);
      }
      if ((f.info.kind == IBDBG_FD_SOCKET_CONN || f.info.kind == IBDBG_FD_SOCKET_LISTEN ||
           f.info.kind == IBDBG_FD_SOCKET_DGRAM) &&
          sh.socks.count(f.info.sock_id))
        AddLauncherFd(p, sh.socks[f.info.sock_id]);
      if (f.info.kind == IBDBG_FD_FIFO) AddLauncherFd(p, sh.fifos[f.info.path]);
    }
    // Every process may need a pair's master: for its descriptors or its terminal.
    for (auto& [idx, pt] : sh.ptys) AddLauncherFd(p, pt.fd);
    int maxfd = 2;
    for (auto& f : p.m.fds) maxfd = std::max(maxfd, f.info.fd);
    p.close_from = std::max(maxfd + 1, 64);
    int pl[2], st[2];
    if (pipe2(pl, O_CLOEXEC) != 0 || pipe2(st, O_CLOEXEC) != 0) Fail("cannot create pipes");
    p.plan_r = AddLauncherFd(p, pl[0]);
    p.plan_w = pl[1];
    p.status_r = st[0];
    p.status_w = AddLauncherFd(p, st[1]);
    ours.insert(ours.end(), {pl[0], st[1]});
    p.exe_fd = open(p.m.proc.exe, O_RDONLY | O_CLOEXEC);
    if (p.exe_fd >= 0) AddLauncherFd(p, p.exe_fd), ours.push_back(p.exe_fd);
    for (auto& v : p.vmas)
      if (v.fd >= 0) ours.push_back(v.fd);
    if ((int)(p.close_from + p.launcher_fds.size() * 2 + 64) > (int)nofile.rlim_cur)
      Fail("the image uses descriptor numbers above this system's limit");
    for (auto& f : p.m.fds)
      if ((f.info.fd_flags & FD_CLOEXEC) && f.info.fd < p.close_from) p.cloexec.push_back(f.info.fd);

    // The plan, with the descriptor numbers the restorer will see.
    p.hdr = std::make_unique<ibdbg_plan_hdr>();
    ibdbg_plan_hdr* hdr = p.hdr.get();
    memset(hdr, 0, sizeof *hdr);
    hdr->magic = IBDBG_PLAN_MAGIC;
    hdr->nvmas = (uint32_t)p.vmas.size();
    hdr->nthreads = (uint32_t)p.threads.size();
    hdr->status_fd = TargetOf(p, p.status_w);
    hdr->exe_fd = p.exe_fd >= 0 ? TargetOf(p, p.exe_fd) : -1;
    hdr->gdb_mode = opts.gdb;
    hdr->close_from = p.close_from;
    hdr->ncloexec = (uint32_t)p.cloexec.size();
    hdr->vdso_patch = p.vdso_patch;
    if (const char* f = getenv("IBDBG_FP_LEGACY"); f && *f == '1') hdr->fp_legacy = 1;
    hdr->vdso_old = p.vdso_old;
    hdr->restart_info_addr = p.m.proc.restart_info_addr;
    hdr->restart_info.magic = IBDBG_RESTART_MAGIC;
    hdr->restart_info.generation = p.m.proc.generation + 1;
    hdr->restart_info.gdb_mode = hdr->gdb_mode;
    snprintf(hdr->restart_info.agent, sizeof hdr->restart_info.agent, "%s", opts.agent.c_str());
    snprintf(hdr->restart_info.job_dir, sizeof hdr->restart_info.job_dir, "%s", opts.job_dir.c_str());
    hdr->proc = p.m.proc;
    hdr->sig = p.m.sig;
    // A number free in the restorer: above the launcher's descriptors.
    hdr->lazy_uffd_fd = p.close_from + (int)p.launcher_fds.size();
    hdr->uffd_fill_only = !opts.lazy;
    for (auto& v : p.vmas)
      if (v.fd >= 0) v.fd = TargetOf(p, v.fd);
  }
  for (auto& [k, fd] : sh.shmem) ours.push_back(fd);
  std::sort(ours.begin(), ours.end());
  ours.erase(std::unique(ours.begin(), ours.end()), ours.end());

  pid_t child = fork();
  if (child < 0) Fail("fork failed");
  if (child == 0) {
    // Fresh namespaces: a user namespace (unless we are root) in which we may
    // choose pids, a pid namespace to choose them in, a mount namespace for
    // its /proc.
    int st0 = all[roots[0]]->status_w;
    for (auto& p : all) close(p->plan_w), close(p->status_r);
    uid_t uid = geteuid();
    gid_t gid = getegid();
    // An IPC namespace of its own, so that the job's SysV objects come back
    // with their ids and keys, which nothing else there holds.
    // A UTS namespace too: the job keeps the host name it was captured on
    // (a part replayed on another host still calls itself what MPI and its
    // peers knew it as).
    int flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | (uid != 0 ? CLONE_NEWUSER : 0);
    if (unshare(flags) != 0)
      ChildFail(st0, std::string("cannot create namespaces for the replay (unshare: ") + strerror(errno) +
                         "); are unprivileged user namespaces disabled?");
    if (uid != 0 && !WriteMaps(uid, gid)) ChildFail(st0, "cannot write the user namespace's id maps");
    const char* hn = all[roots[0]]->m.proc.hostname;
    if (hn[0]) sethostname(hn, strnlen(hn, sizeof all[roots[0]]->m.proc.hostname));
    MakePtys(sh, st0);
    std::string ipc_err = RecreateSysv(sh.ipc);
    if (ipc_err.empty()) ipc_err = MakeDevShm(sh.ipc, sh.shm_files);
    if (!ipc_err.empty()) ChildFail(st0, ipc_err);
    pid_t init = fork();
    if (init < 0) ChildFail(st0, "fork failed");
    if (init == 0) RunInit(sh, all, roots, opts.restorer);
    syscall(SYS_close_range, 3, ~0u, 0);
    int st = 0;
    while (waitpid(init, &st, 0) < 0 && errno == EINTR) {
    }
    _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
  }
  for (int fd : ours) close(fd);
  Launched L;
  for (auto& p : all)
    if (!p->m.verbs.empty()) L.verbs_records[p->m.proc.pid] = p->m.verbs;
  L.launcher_child = child;
  Prepared& root = *all[roots[0]];
  L.image_pid = root.m.proc.pid;
  L.exe = root.m.proc.exe;
  auto cleanup = [&]() {
    for (auto& p : all) {
      if (p->plan_w >= 0) close(p->plan_w);
      if (p->status_r >= 0) close(p->status_r);
      p->plan_w = p->status_r = -1;
    }
  };
  try {
    uint64_t addr = 0;
    std::string msg;
    // Plans, then every process's regions exist.
    for (auto& pp : all) {
      Prepared& p = *pp;
      bool ok = WriteAll(p.plan_w, p.hdr.get(), sizeof *p.hdr) &&
                WriteAll(p.plan_w, p.vmas.data(), p.vmas.size() * sizeof p.vmas[0]) &&
                WriteAll(p.plan_w, p.threads.data(), p.threads.size() * sizeof p.threads[0]) &&
                WriteAll(p.plan_w, p.cloexec.data(), p.cloexec.size() * sizeof(int32_t));
      char c = ReadStatus(p.status_r, &addr, &msg, ok ? 30000 : 5000);
      if (c == 0 && !ok) {
        // Another process's failure may be the reason: it reported on its own pipe.
        for (auto& q : all)
          if (ReadStatus(q->status_r, &addr, &msg, 0) == IBDBG_RST_FAILED) Fail("replay failed: " + msg);
      }
      if (c == IBDBG_RST_FAILED) Fail("replay failed: " + msg);
      if (c != IBDBG_RST_MAPPED) {
        for (auto& q : all)
          if (ReadStatus(q->status_r, &addr, &msg, 0) == IBDBG_RST_FAILED) Fail("replay failed: " + msg);
        Fail("replay failed: the restorer of pid " + std::to_string(p.m.proc.pid) + " stopped early");
      }
    }
    // Each process as we see it: walk the tree below our child.
    std::map<pid_t, pid_t> outer_of;
    std::vector<pid_t> todo = {child};
    while (!todo.empty()) {
      pid_t x = todo.back();
      todo.pop_back();
      for (pid_t c : Children(x)) {
        outer_of[InnerPid(c)] = c;
        todo.push_back(c);
      }
    }
    for (auto& p : all) {
      auto it = outer_of.find(p->m.proc.pid);
      if (it == outer_of.end()) Fail("replay failed: cannot find restored process " + std::to_string(p->m.proc.pid));
      p->outer_pid = it->second;
      L.pids.push_back(it->second);
    }
    L.pid = root.outer_pid;
    const auto mapped_t = std::chrono::steady_clock::now();
    // Memory, straight into each process.
    std::shared_ptr<PageServer> server = opts.lazy ? std::make_shared<PageServer>() : nullptr;
    const char* times = getenv("IBDBG_REPLAY_TIMES");
    for (auto& pp : all) {
      Prepared& p = *pp;
      FillPagesOf(p, server.get(), times && *times == '1');
    }
    if (server) {
      server->Start();
      L.pages = server;
    }
    // Only once every process's memory is in: memory shared between them
    // (SysV segments, MPI's shared-memory queues) holds pages each of them
    // stored, and a process running early would see its peers' part stale,
    // or have what it writes there overwritten by a later fill.
    for (auto& pp : all) {
      char d = IBDBG_RST_FILLED;
      if (write(pp->plan_w, &d, 1) != 1) Fail("replay failed: the restorer went away");
    }
    for (auto& pp : all) {
      char c = ReadStatus(pp->status_r, &addr, &msg, 30000);
      if (c == IBDBG_RST_FAILED) Fail("replay failed: " + msg);
      if (c != IBDBG_RST_PARKED) Fail("replay failed: the restorer stopped early");
      L.sigreturn_insn = addr;
      L.procs.push_back({pp->outer_pid, pp->m.proc.pid, addr, pp->m.proc.exe});
    }
    if (times && *times == '1') {
      auto ms = [&](std::chrono::steady_clock::time_point t) {
        return std::chrono::duration<double, std::milli>(t - launch_t0).count();
      };
      fprintf(stderr, "ibdbg: replay launched: regions mapped after %.1f ms, processes running after %.1f ms\n",
              ms(mapped_t), ms(std::chrono::steady_clock::now()));
    }
  } catch (...) {
    kill(child, SIGKILL);
    pid_t init = FirstChild(child);
    if (init > 0) kill(init, SIGKILL);
    waitpid(child, nullptr, 0);
    cleanup();
    throw;
  }
  cleanup();
  return L;
}

Launched LaunchProcess(const std::string& image_file, const ReplayOptions& opts) {
  return LaunchJob({image_file}, opts);
}

bool WaitParked(pid_t pid, int timeout_ms) {
  for (int waited = 0; waited < timeout_ms; waited += 5) {
    DIR* d = opendir(("/proc/" + std::to_string(pid) + "/task").c_str());
    if (!d) return false;
    bool all = true;
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] == '.') continue;
      std::ifstream f("/proc/" + std::to_string(pid) + "/task/" + e->d_name + "/syscall");
      long nr = -1;
      if (!(f >> nr) || nr != SYS_futex) all = false;
    }
    closedir(d);
    if (all) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

}  // namespace ibdbg::replay
