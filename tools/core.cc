#include "core.h"

#include <elf.h>
#include <fcntl.h>
#include <sys/procfs.h>
#include <sys/stat.h>
#include <sys/user.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "ibdbg/image_file.h"
#include "ibdbg/manifest.h"

namespace ibdbg::tools {
namespace {

using image::RecordHeader;
using image::RecordType;

constexpr uint64_t kPage = image::kPageSize;
// The kernel's signal frame: ucontext is uc_flags, uc_link, uc_stack (24
// bytes), the sigcontext (gregs[23], fpstate pointer, 8 reserved words),
// then the 8-byte signal mask.
constexpr size_t kUcGregs = 40;
constexpr size_t kUcFpstate = kUcGregs + 23 * 8;
constexpr size_t kUcSigmask = kUcFpstate + 8 + 8 * 8;
constexpr size_t kUcSize = kUcSigmask + 8;
// struct _fpx_sw_bytes in the fxsave area's software-reserved bytes of a
// signal frame; a core keeps XCR0 there instead (the kernel's ptrace layout).
constexpr size_t kSwBytes = 464;
constexpr uint32_t kFpXstateMagic1 = 0x46505853, kFpXstateMagic2 = 0x46505845;
constexpr uint32_t kMaxXstate = 1u << 20;

static_assert(sizeof(user_regs_struct) == sizeof(CoreThread::regs));
static_assert(sizeof(elf_prstatus) == 336);
static_assert(sizeof(elf_prpsinfo) == 136);

[[noreturn]] void Fail(const std::string& what) { throw std::runtime_error(what); }

std::string Hex(uint64_t v) {
  char b[24];
  snprintf(b, sizeof b, "0x%llx", (unsigned long long)v);
  return b;
}

template <typename T>
T Get(const uint8_t* p) {
  T v;
  memcpy(&v, p, sizeof v);
  return v;
}

void AddNote(std::vector<uint8_t>& out, const char* name, uint32_t type, const void* desc, size_t len) {
  Elf64_Nhdr h{};
  h.n_namesz = (uint32_t)strlen(name) + 1;
  h.n_descsz = (uint32_t)len;
  h.n_type = type;
  auto put = [&](const void* p, size_t n) {
    const uint8_t* b = (const uint8_t*)p;
    out.insert(out.end(), b, b + n);
    out.resize((out.size() + 3) & ~size_t(3), 0);
  };
  put(&h, sizeof h);
  put(name, h.n_namesz);
  put(desc, len);
}

bool AllZero(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i]) return false;
  return true;
}

}  // namespace

std::vector<uint8_t> BuildCoreNotes(const CoreNotesInput& in) {
  std::vector<uint8_t> out;
  auto thread_notes = [&](const CoreThread& t, bool first) {
    elf_prstatus st{};
    st.pr_pid = t.tid;
    st.pr_ppid = in.proc.ppid;
    st.pr_pgrp = in.proc.pgid;
    st.pr_sid = in.proc.sid;
    st.pr_sighold = t.sigmask;
    memcpy(&st.pr_reg, t.regs, sizeof st.pr_reg);
    st.pr_fpvalid = t.have_fp;
    AddNote(out, "CORE", NT_PRSTATUS, &st, sizeof st);
    if (first) {
      elf_prpsinfo ps{};
      ps.pr_state = 1;  // sleeping, as every thread was: stopped in a signal handler
      ps.pr_sname = 'S';
      ps.pr_pid = in.proc.pid;
      ps.pr_ppid = in.proc.ppid;
      ps.pr_pgrp = in.proc.pgid;
      ps.pr_sid = in.proc.sid;
      memcpy(ps.pr_fname, in.proc.comm, std::min(sizeof ps.pr_fname, sizeof in.proc.comm));
      ps.pr_fname[sizeof ps.pr_fname - 1] = 0;
      memcpy(ps.pr_psargs, in.psargs.data(), std::min(in.psargs.size(), sizeof ps.pr_psargs - 1));
      AddNote(out, "CORE", NT_PRPSINFO, &ps, sizeof ps);
      uint32_t words = std::min<uint32_t>(in.proc.auxv_words, IBDBG_AUXV_WORDS) & ~1u;
      if (words) {
        std::vector<uint64_t> auxv(in.proc.auxv, in.proc.auxv + words);
        if (auxv[words - 2] != AT_NULL) auxv.insert(auxv.end(), {AT_NULL, 0});
        AddNote(out, "CORE", NT_AUXV, auxv.data(), auxv.size() * 8);
      }
      if (!in.files.empty()) {
        std::vector<uint8_t> f;
        auto u64 = [&](uint64_t v) { f.insert(f.end(), (uint8_t*)&v, (uint8_t*)&v + 8); };
        u64(in.files.size());
        u64(kPage);
        for (const auto& m : in.files) {
          u64(m.start);
          u64(m.end);
          u64(m.page_offset);
        }
        for (const auto& m : in.files) f.insert(f.end(), m.path.c_str(), m.path.c_str() + m.path.size() + 1);
        AddNote(out, "CORE", NT_FILE, f.data(), f.size());
      }
    }
    if (t.have_fp) {
      AddNote(out, "CORE", NT_FPREGSET, t.fxsave, sizeof t.fxsave);
      if (!t.xstate.empty()) AddNote(out, "LINUX", NT_X86_XSTATE, t.xstate.data(), t.xstate.size());
    }
  };
  for (size_t i = 0; i < in.threads.size(); i++) thread_notes(in.threads[i], i == 0);
  return out;
}

namespace {

// ---- reading the image ---------------------------------------------------------
struct Meta {
  nlohmann::json header;
  ibdbg_process_info proc{};
  bool have_proc = false;
  std::vector<ibdbg_thread_info> threads;
  std::vector<ibdbg_image_vma> vmas;
  std::set<std::string> shm_files;  // /dev/shm files an IPC record holds (or names the holder of)
};

// The records before the memory: every image writes its pages last.
Meta ReadMeta(const std::string& path) {
  Meta m;
  image::ImageReader r(path);
  RecordHeader h;
  std::vector<uint8_t> data;
  auto load = [&](void* dst, size_t size, const char* what) {
    r.ReadPayload(data);
    if (data.size() != size)
      Fail(path + ": " + what + " record of " + std::to_string(data.size()) + " bytes (expected " +
           std::to_string(size) + "): an image of another ibdbg version");
    memcpy(dst, data.data(), size);
  };
  while (r.NextHeader(h)) {
    switch ((RecordType)h.type) {
      case RecordType::Header:
        r.ReadPayload(data);
        m.header = nlohmann::json::parse(data.begin(), data.end(), nullptr, false);
        break;
      case RecordType::Process:
        load(&m.proc, sizeof m.proc, "process");
        m.have_proc = true;
        break;
      case RecordType::Thread:
        m.threads.emplace_back();
        load(&m.threads.back(), sizeof m.threads.back(), "thread");
        break;
      case RecordType::Vma:
        m.vmas.emplace_back();
        load(&m.vmas.back(), sizeof m.vmas.back(), "vma");
        m.vmas.back().path[sizeof m.vmas.back().path - 1] = 0;
        break;
      case RecordType::Ipc: {
        r.ReadPayload(data);
        ibdbg_ipc_object o;
        if (data.size() < sizeof o) break;
        memcpy(&o, data.data(), sizeof o);
        o.path[sizeof o.path - 1] = 0;
        if (o.kind == IBDBG_IPC_SHMFILE) m.shm_files.insert(o.path);
        break;
      }
      case RecordType::Pages:
        return m;
      default:
        break;
    }
  }
  return m;
}

// The images that hold a process's memory, the oldest first: pages of a later
// one replace the earlier's.  One image today; an incremental capture (an
// image with a parent) lists its ancestors here.
std::vector<std::string> MemoryImages(const std::string& image_path) { return {image_path}; }

// Every page of the process's memory that the image stores, record by record
// (bounded memory whatever the image's size): `want(addr, len)` decides from
// a record's header whether its bytes are needed; `got` receives them.  All
// page reading goes through here.
void ForEachPages(const std::string& image_path, const std::function<bool(uint64_t, uint64_t)>& want,
                  const std::function<void(uint64_t, const uint8_t*, size_t)>& got) {
  std::vector<uint8_t> data;
  for (const std::string& path : MemoryImages(image_path)) {
    image::ImageReader r(path);
    RecordHeader h;
    while (r.NextHeader(h)) {
      if ((RecordType)h.type != RecordType::Pages || !h.raw_len || !want(h.arg, h.raw_len)) continue;
      r.ReadPayload(data);
      got(h.arg, data.data(), data.size());
    }
  }
}

// Bytes of the process's memory wanted for the notes: what the image holds,
// zero elsewhere (the image leaves out zero pages of anonymous memory).
struct MemWant {
  uint64_t addr = 0;
  std::vector<uint8_t> buf;
  bool found = false;
};

void Gather(const std::string& path, std::vector<MemWant>& wants,
            const std::function<void(uint64_t, uint64_t)>& each_record = nullptr) {
  auto hits = [](const MemWant& w, uint64_t a, uint64_t len) {
    return !w.buf.empty() && w.addr < a + len && a < w.addr + w.buf.size();
  };
  ForEachPages(
      path,
      [&](uint64_t a, uint64_t len) {
        if (each_record) each_record(a, len);
        for (const auto& w : wants)
          if (hits(w, a, len)) return true;
        return false;
      },
      [&](uint64_t a, const uint8_t* data, size_t len) {
        for (auto& w : wants) {
          if (!hits(w, a, len)) continue;
          uint64_t from = std::max(a, w.addr), to = std::min(a + len, w.addr + w.buf.size());
          memcpy(w.buf.data() + (from - w.addr), data + (from - a), to - from);
          w.found = true;
        }
      });
}

// ---- the output ------------------------------------------------------------------
class OutFile {
 public:
  explicit OutFile(const std::string& final_path) : final_(final_path) {
    std::string tmpl = final_path + ".tmp.XXXXXX";
    std::vector<char> b(tmpl.begin(), tmpl.end());
    b.push_back(0);
    fd_ = mkostemp(b.data(), O_CLOEXEC);
    if (fd_ < 0) Fail("cannot create a file beside " + final_path + ": " + strerror(errno));
    tmp_ = b.data();
  }
  ~OutFile() {
    if (fd_ >= 0) close(fd_);
    if (!tmp_.empty()) unlink(tmp_.c_str());
  }
  void Write(uint64_t off, const void* p, size_t n) {
    const uint8_t* b = (const uint8_t*)p;
    while (n) {
      ssize_t w = pwrite(fd_, b, n, (off_t)off);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) Fail("writing " + tmp_ + ": " + (w < 0 ? strerror(errno) : "no space"));
      b += w;
      off += (uint64_t)w;
      n -= (size_t)w;
    }
  }
  // Zero pages are left as holes: a sparse file reads them as zero.
  void WriteSparse(uint64_t off, const uint8_t* p, size_t n) {
    size_t run = 0;
    for (size_t at = 0; at < n; at += kPage) {
      size_t len = std::min<size_t>(kPage, n - at);
      if (AllZero(p + at, len)) {
        if (run < at) Write(off + run, p + run, at - run);
        run = at + len;
      }
    }
    if (run < n) Write(off + run, p + run, n - run);
  }
  void SetSize(uint64_t size) {
    if (ftruncate(fd_, (off_t)size) != 0) Fail("cannot size " + tmp_ + ": " + strerror(errno));
  }
  void Commit(bool replace) {
    if (fsync(fd_) != 0) Fail("fsync " + tmp_ + ": " + strerror(errno));
    if (close(fd_) != 0) {
      fd_ = -1;
      Fail("closing " + tmp_ + ": " + strerror(errno));
    }
    fd_ = -1;
    // Without --force an output that appeared meanwhile is not replaced either.
    int r = replace ? rename(tmp_.c_str(), final_.c_str())
                    : renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, final_.c_str(), RENAME_NOREPLACE);
    if (r != 0) {
      if (errno == EEXIST) Fail(final_ + " exists (use --force to replace it)");
      Fail("cannot rename " + tmp_ + " to " + final_ + ": " + strerror(errno));
    }
    tmp_.clear();
    std::string dir = final_.find('/') == std::string::npos ? "." : final_.substr(0, final_.rfind('/'));
    int dfd = open(dir.empty() ? "/" : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      fsync(dfd);
      close(dfd);
    }
  }

 private:
  std::string final_, tmp_;
  int fd_ = -1;
};

struct Segment {
  ibdbg_image_vma v{};
  bool has_pages = false;  // the image stores some of its pages
  bool dump = false;       // its bytes are in the core
  bool head = false;       // only its first page is (an ELF file's header)
  bool prefilled = false;  // written before the pages (from the file or an IPC record)
  uint64_t offset = 0;     // in the core
  uint64_t len() const { return v.end - v.start; }
  uint64_t filesz() const { return dump ? len() : head ? kPage : 0; }
};

bool Dumped(const Segment& s, const std::set<std::string>& shm_files) {
  // Reserved address space (PROT_NONE guards, huge reservations) the process
  // never wrote: like the kernel, no bytes (zero pages are not stored either,
  // so only large or inaccessible regions are left out this way).  Shared
  // memory may be held by an IPC record instead of pages: always dumped.
  if (s.v.kind == IBDBG_IVMA_ANON && !s.has_pages && (s.v.prot == 0 || s.len() > (1ull << 30))) return false;
  switch (s.v.kind) {
    case IBDBG_IVMA_ANON:
    case IBDBG_IVMA_HEAP:
    case IBDBG_IVMA_STACK:
    case IBDBG_IVMA_VDSO:
    case IBDBG_IVMA_FILE_DELETED:
    case IBDBG_IVMA_SHARED_ANON:
    case IBDBG_IVMA_SYSV_SHM: return true;
    // A mapping of a file that the process has not written is the file's:
    // like the kernel, the core leaves it to the debugger to read the file.
    case IBDBG_IVMA_FILE: return s.has_pages;
    case IBDBG_IVMA_FILE_SHARED: return s.has_pages || shm_files.count(s.v.path);
    default: return false;  // [vvar]: the kernel's, never dumped
  }
}

// Where a byte of the process's memory lies in the core: segment index, or -1.
class SegmentIndex {
 public:
  explicit SegmentIndex(std::vector<Segment>& segs) : segs_(segs) {}
  Segment* Find(uint64_t addr) {
    auto it = std::upper_bound(segs_.begin(), segs_.end(), addr,
                               [](uint64_t a, const Segment& s) { return a < s.v.start; });
    if (it == segs_.begin()) return nullptr;
    --it;
    return addr < it->v.end ? &*it : nullptr;
  }

 private:
  std::vector<Segment>& segs_;
};

// A shared memory object's bytes at offset `obj_off` of it, into every
// segment that maps that part.
void PlaceObjectBytes(OutFile& out, std::vector<Segment>& segs, const std::function<bool(const Segment&)>& maps_it,
                      uint64_t obj_off, const uint8_t* data, uint64_t n) {
  for (Segment& s : segs) {
    if (!s.dump || !maps_it(s)) continue;
    uint64_t from = std::max(obj_off, s.v.offset), to = std::min(obj_off + n, s.v.offset + s.len());
    if (from >= to) continue;
    out.WriteSparse(s.offset + (from - s.v.offset), data + (from - obj_off), to - from);
    s.prefilled = true;
  }
}

// The shared memory whose bytes an IPC record holds rather than pages: SysV
// segments, whole memory objects (memfd, shared anonymous, deleted files) and
// /dev/shm files.  Returns the objects that name another image as holder.
std::set<std::string> PlaceIpcObjects(const std::string& path, OutFile& out, std::vector<Segment>& segs,
                                      std::set<std::string>* only) {
  std::set<std::string> elsewhere;
  image::ImageReader r(path);
  RecordHeader h;
  std::vector<uint8_t> data;
  while (r.NextHeader(h)) {
    if ((RecordType)h.type == RecordType::Pages) break;
    if ((RecordType)h.type != RecordType::Ipc) continue;
    r.ReadPayload(data);
    if (data.size() < sizeof(ibdbg_ipc_object)) continue;
    ibdbg_ipc_object o;
    memcpy(&o, data.data(), sizeof o);
    o.path[sizeof o.path - 1] = 0;
    const uint8_t* bytes = data.data() + sizeof o;
    uint64_t nbytes = data.size() - sizeof o;
    std::string key = std::to_string(o.kind) + ":" +
                      (o.kind == IBDBG_IPC_SHMFILE ? std::string(o.path)
                       : o.kind == IBDBG_IPC_SHMEM ? std::to_string(o.dev) + ":" + std::to_string(o.ino)
                                                   : std::to_string(o.id));
    if (only && !only->count(key)) continue;
    if (o.flags & IBDBG_IPC_ELSEWHERE) {
      elsewhere.insert(key);
      continue;
    }
    if (only) only->erase(key);
    switch (o.kind) {
      case IBDBG_IPC_SHM:
        PlaceObjectBytes(
            out, segs, [&](const Segment& s) { return s.v.kind == IBDBG_IVMA_SYSV_SHM && s.v.inode == (uint64_t)o.id; },
            0, bytes, std::min<uint64_t>(nbytes, o.size));
        break;
      case IBDBG_IPC_SHMFILE:
        PlaceObjectBytes(
            out, segs, [&](const Segment& s) { return s.v.kind == IBDBG_IVMA_FILE_SHARED && o.path == std::string(s.v.path); },
            0, bytes, nbytes);
        break;
      case IBDBG_IPC_SHMEM: {
        auto maps_it = [&](const Segment& s) {
          return s.v.kind == IBDBG_IVMA_SHARED_ANON && s.v.inode == o.ino &&
                 (((uint64_t)s.v.dev_major << 32) | s.v.dev_minor) == o.dev;
        };
        for (uint64_t at = 0; at + 16 <= nbytes;) {
          uint64_t off = Get<uint64_t>(bytes + at), len = Get<uint64_t>(bytes + at + 8);
          at += 16;
          if (len > nbytes - at) break;
          PlaceObjectBytes(out, segs, maps_it, off, bytes + at, len);
          at += len;
        }
        break;
      }
      default: break;
    }
  }
  return elsewhere;
}

// The file of a mapping as it was at the capture (size and mtime as recorded),
// or -1 with the reason.
int OpenAsCaptured(const Segment& s, std::string* why) {
  int fd = open(s.v.path, O_RDONLY | O_CLOEXEC);
  struct stat st {};
  if (fd < 0 || fstat(fd, &st) != 0) {
    *why = std::string(s.v.path) + ": " + strerror(errno);
    if (fd >= 0) close(fd);
    return -1;
  }
  int64_t mtime = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
  if ((s.v.file_size || s.v.file_mtime_ns) && ((uint64_t)st.st_size != s.v.file_size || mtime != s.v.file_mtime_ns)) {
    *why = std::string(s.v.path) + " changed since the capture";
    close(fd);
    return -1;
  }
  return fd;
}

// The first page of an ELF file mapped from its start, which the kernel puts
// in its cores too: gdb matches the build ids in it with the files it loads.
bool ElfHead(const Segment& s) {
  if (s.v.kind != IBDBG_IVMA_FILE || s.v.offset != 0 || s.has_pages || s.len() < kPage) return false;
  std::string why;
  int fd = OpenAsCaptured(s, &why);
  if (fd < 0) return false;
  char magic[SELFMAG] = {};
  bool elf = pread(fd, magic, sizeof magic, 0) == (ssize_t)sizeof magic && memcmp(magic, ELFMAG, SELFMAG) == 0;
  close(fd);
  return elf;
}

// A private file mapping's pages the process did not write are the file's
// (the first `len` bytes of the mapping).
void FillFromFile(OutFile& out, Segment& s, uint64_t len, std::vector<std::string>& warnings) {
  std::string why;
  int fd = OpenAsCaptured(s, &why);
  if (fd < 0) {
    warnings.push_back(why + "; the pages of its mapping at " + Hex(s.v.start) +
                       " the process had not written are zero in the core");
    return;
  }
  struct stat st {};
  fstat(fd, &st);
  std::vector<uint8_t> buf(1 << 20);
  for (uint64_t at = 0; at < len && s.v.offset + at < (uint64_t)st.st_size;) {
    size_t want = (size_t)std::min<uint64_t>(buf.size(), len - at);
    ssize_t n = pread(fd, buf.data(), want, (off_t)(s.v.offset + at));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.WriteSparse(s.offset + at, buf.data(), (size_t)n);
    at += (uint64_t)n;
  }
  close(fd);
  s.prefilled = true;
}

// gdb before 14 reads an XSAVE note in Intel's layout only, as long as
// X86_XSTATE_SIZE(XCR0) says; AMD Zen 1-3 keep PKRU at 2432 of a 2440-byte
// area (which gdb 14 recognizes by its size).  Such an area is given Intel's
// layout (PKRU at 2688, 2696 bytes), which every gdb reads; others stay as
// the CPU wrote them.
std::vector<uint8_t> GdbXsaveLayout(std::vector<uint8_t> x, uint64_t xcr0) {
  constexpr uint64_t kAvx = 1u << 2, kMpx = 3u << 3, kAvx512 = 7u << 5, kPkru = 1u << 9;
  if (x.size() != 2440 || (xcr0 & (kMpx | kAvx512)) || !(xcr0 & kPkru) || !(xcr0 & kAvx)) return x;
  std::vector<uint8_t> intel(2696, 0);
  memcpy(intel.data(), x.data(), 832);  // legacy area, header, AVX
  memcpy(intel.data() + 2688, x.data() + 2432, 8);
  return intel;
}

// Registers of a thread from its signal frame (ibdbg_thread_info::uc_addr).
CoreThread ThreadState(const ibdbg_thread_info& t, const uint8_t* uc) {
  CoreThread c;
  c.tid = t.tid;
  user_regs_struct r{};
  if (uc) {
    auto g = [&](int i) { return Get<uint64_t>(uc + kUcGregs + 8 * i); };
    r.r8 = g(0), r.r9 = g(1), r.r10 = g(2), r.r11 = g(3), r.r12 = g(4), r.r13 = g(5), r.r14 = g(6), r.r15 = g(7);
    r.rdi = g(8), r.rsi = g(9), r.rbp = g(10), r.rbx = g(11), r.rdx = g(12), r.rax = g(13), r.rcx = g(14);
    r.rsp = g(15), r.rip = g(16), r.eflags = g(17);
    uint64_t csgsfs = g(18);
    r.cs = csgsfs & 0xffff;
    r.ss = (csgsfs >> 48) & 0xffff;
    c.sigmask = Get<uint64_t>(uc + kUcSigmask);
  } else {
    // No frame to read: where the thread was, as far as the record says.
    r.rip = t.resume_rip;
    r.rsp = t.resume_rsp;
    r.cs = 0x33;
  }
  if (!r.ss) r.ss = 0x2b;  // __USER_DS: frames of older kernels do not save it
  r.orig_rax = (uint64_t)-1;
  r.fs_base = t.fs_base;
  memcpy(c.regs, &r, sizeof r);
  return c;
}

std::string Describe(const image::ManifestProcess& p, bool hosts) {
  std::string s = (hosts ? p.host + ":" : "") + std::to_string(p.pid);
  if (p.rank >= 0) s += " (rank " + std::to_string(p.rank) + ")";
  return s;
}

std::string ListProcesses(const image::Manifest& m) {
  std::set<std::string> hosts;
  for (const auto& p : m.processes) hosts.insert(p.host);
  std::string s;
  size_t n = 0;
  for (const auto& p : m.processes) {
    if (n++ == 32) {
      s += ", ... (" + std::to_string(m.processes.size()) + " in all)";
      break;
    }
    s += (s.empty() ? "" : ", ") + Describe(p, hosts.size() > 1);
  }
  return s;
}

const image::ManifestProcess& Choose(const image::Manifest& m, const CoreOptions& o, const std::string& shown) {
  if (o.rank >= 0 && o.pid > 0) Fail("give --rank or --pid, not both");
  if (m.processes.empty()) Fail(shown + ": the image has no processes");
  std::vector<const image::ManifestProcess*> hit;
  if (o.rank >= 0) {
    for (const auto& p : m.processes)
      if (p.rank == o.rank) hit.push_back(&p);
    if (hit.empty()) {
      std::set<int> ranks;
      for (const auto& p : m.processes)
        if (p.rank >= 0) ranks.insert(p.rank);
      std::string list;
      for (int r : ranks) list += (list.empty() ? "" : ", ") + std::to_string(r);
      Fail(shown + " has no process of rank " + std::to_string(o.rank) +
           (ranks.empty() ? " (no process in it has a known MPI rank; processes: " + ListProcesses(m) + ")"
                          : " (ranks: " + list + ")"));
    }
  } else if (o.pid > 0) {
    for (const auto& p : m.processes)
      if (p.pid == o.pid) hit.push_back(&p);
    if (hit.empty())
      Fail(shown + " has no process with pid " + std::to_string(o.pid) + " (processes: " + ListProcesses(m) + ")");
  } else {
    if (m.processes.size() > 1)
      Fail(shown + " holds " + std::to_string(m.processes.size()) +
           " processes: choose one with --pid or --rank (processes: " + ListProcesses(m) + ")");
    hit.push_back(&m.processes[0]);
  }
  if (hit.size() > 1) {
    std::string list;
    for (auto* p : hit) list += (list.empty() ? "" : ", ") + Describe(*p, true);
    Fail(shown + ": " + std::to_string(hit.size()) + " processes match (" + list + "): choose with " +
         (o.rank >= 0 ? "--pid" : "--rank"));
  }
  return *hit[0];
}

}  // namespace

CoreResult WriteCore(const CoreOptions& o) {
  if (o.output.empty()) Fail("no output file given (-o FILE)");
  CoreResult res;
  const image::Manifest m = image::ReadManifest(o.image);
  const std::string dir = image::ResolveImageDir(o.image);
  const image::ManifestProcess& mp = Choose(m, o, o.image);
  struct stat ost {};
  if (lstat(o.output.c_str(), &ost) == 0) {
    if (S_ISDIR(ost.st_mode)) Fail(o.output + " is a directory");
    if (!o.force) Fail(o.output + " exists (use --force to replace it)");
  }
  const std::string img = dir + "/" + mp.image;
  res.pid = mp.pid;
  res.rank = mp.rank;

  Meta meta = ReadMeta(img);
  if (!meta.have_proc) Fail(img + ": no process record (truncated image?)");
  if (meta.threads.empty()) Fail(img + ": no thread records (truncated image?)");

  std::vector<Segment> segs;
  for (const auto& v : meta.vmas) {
    if (v.end <= v.start || (v.start | v.end) % kPage) Fail(img + ": vma " + Hex(v.start) + " has a bad range");
    segs.push_back({});
    segs.back().v = v;
  }
  std::sort(segs.begin(), segs.end(), [](const Segment& a, const Segment& b) { return a.v.start < b.v.start; });
  for (size_t i = 1; i < segs.size(); i++)
    if (segs[i].v.start < segs[i - 1].v.end) Fail(img + ": vmas at " + Hex(segs[i].v.start) + " overlap");
  SegmentIndex index(segs);

  // The main thread first (gdb's current thread), ibdbg's own last.
  std::vector<ibdbg_thread_info> threads = meta.threads;
  auto order = [](const ibdbg_thread_info& t) {
    return (t.flags & IBDBG_THREAD_MAIN) ? 0 : (t.flags & (IBDBG_THREAD_CKPT | IBDBG_THREAD_BACKEND)) ? 2 : 1;
  };
  std::stable_sort(threads.begin(), threads.end(),
                   [&](const ibdbg_thread_info& a, const ibdbg_thread_info& b) { return order(a) < order(b); });

  // Memory the notes need, in rounds: each thread's signal frame, then the
  // FPU state it points to, then that state's full size.  A round reads only
  // the records that hold those bytes.
  const ibdbg_process_info& proc = meta.proc;
  std::vector<MemWant> round1(threads.size() + 1);  // the frames, then the command line
  for (size_t i = 0; i < threads.size(); i++)
    if (threads[i].uc_addr && index.Find(threads[i].uc_addr)) {
      round1[i].addr = threads[i].uc_addr;
      round1[i].buf.resize(kUcSize);
    }
  MemWant& args = round1.back();
  if (proc.arg_end > proc.arg_start && index.Find(proc.arg_start)) {
    args.addr = proc.arg_start;
    args.buf.resize(std::min<uint64_t>(proc.arg_end - proc.arg_start, ELF_PRARGSZ));
  }
  Gather(img, round1, [&](uint64_t a, uint64_t len) {
    for (uint64_t p = a; p < a + len;) {
      Segment* s = index.Find(p);
      if (!s) break;
      s->has_pages = true;
      p = s->v.end;
    }
  });
  std::vector<MemWant> fx(threads.size());
  for (size_t i = 0; i < threads.size(); i++) {
    if (!round1[i].found) continue;
    uint64_t fp = Get<uint64_t>(round1[i].buf.data() + kUcFpstate);
    if (fp && index.Find(fp)) {
      fx[i].addr = fp;
      fx[i].buf.resize(512);
    }
  }
  Gather(img, fx);
  std::vector<MemWant> xs(threads.size());
  for (size_t i = 0; i < threads.size(); i++) {
    if (!fx[i].found) continue;
    const uint8_t* sw = fx[i].buf.data() + kSwBytes;
    uint32_t size = Get<uint32_t>(sw + 16);
    if (Get<uint32_t>(sw) == kFpXstateMagic1 && size > 512 && size <= kMaxXstate &&
        Get<uint32_t>(sw + 4) == size + 4) {
      xs[i].addr = fx[i].addr;
      xs[i].buf.resize(size + 4);
    }
  }
  Gather(img, xs);

  CoreNotesInput in;
  in.proc = proc;
  for (size_t i = 0; i < threads.size(); i++) {
    CoreThread c = ThreadState(threads[i], round1[i].found ? round1[i].buf.data() : nullptr);
    if (!round1[i].found && threads[i].uc_addr)
      res.warnings.push_back("thread " + std::to_string(threads[i].tid) + ": its signal frame at " +
                             Hex(threads[i].uc_addr) + " is not in the image; only its rip and rsp are known");
    if (fx[i].found) {
      c.have_fp = true;
      memcpy(c.fxsave, fx[i].buf.data(), 512);
      memset(c.fxsave + kSwBytes, 0, 512 - kSwBytes);
      if (xs[i].found && Get<uint32_t>(xs[i].buf.data() + xs[i].buf.size() - 4) == kFpXstateMagic2) {
        uint64_t xcr0 = Get<uint64_t>(fx[i].buf.data() + kSwBytes + 8);
        c.xstate = GdbXsaveLayout(std::vector<uint8_t>(xs[i].buf.begin(), xs[i].buf.end() - 4), xcr0);
        memset(c.xstate.data() + kSwBytes, 0, 512 - kSwBytes);
        memcpy(c.xstate.data() + kSwBytes, &xcr0, 8);
      }
    }
    in.threads.push_back(std::move(c));
  }
  if (args.found) {
    std::string s(args.buf.begin(), args.buf.end());
    for (char& ch : s)
      if (!ch) ch = ' ';
    while (!s.empty() && s.back() == ' ') s.pop_back();
    in.psargs = s;
  }
  for (const Segment& s : segs) {
    bool file = s.v.kind == IBDBG_IVMA_FILE || s.v.kind == IBDBG_IVMA_FILE_SHARED ||
                s.v.kind == IBDBG_IVMA_FILE_DELETED || s.v.kind == IBDBG_IVMA_SYSV_SHM ||
                (s.v.kind == IBDBG_IVMA_SHARED_ANON && s.v.path[0] == '/');
    if (!file || !s.v.path[0]) continue;
    in.files.push_back({s.v.start, s.v.end, s.v.offset / kPage,
                        std::string(s.v.path) + (s.v.deleted ? " (deleted)" : "")});
  }
  std::vector<uint8_t> notes = BuildCoreNotes(in);

  // Layout, as the kernel's: ELF header, program headers (PT_NOTE, then one
  // PT_LOAD per mapping in address order), the notes, then from a page
  // boundary each dumped mapping's bytes.
  uint64_t phnum = 1 + segs.size();
  bool xnum = phnum >= PN_XNUM;
  uint64_t notes_off = sizeof(Elf64_Ehdr) + phnum * sizeof(Elf64_Phdr);
  uint64_t shdr_off = (notes_off + notes.size() + 7) & ~7ull;
  uint64_t data_off = ((xnum ? shdr_off + sizeof(Elf64_Shdr) : notes_off + notes.size()) + kPage - 1) & ~(kPage - 1);
  uint64_t at = data_off;
  for (Segment& s : segs) {
    s.dump = Dumped(s, meta.shm_files);
    s.head = !s.dump && ElfHead(s);
    s.offset = at;
    at += s.filesz();
  }
  const uint64_t total = at;

  Elf64_Ehdr eh{};
  memcpy(eh.e_ident, ELFMAG, SELFMAG);
  eh.e_ident[EI_CLASS] = ELFCLASS64;
  eh.e_ident[EI_DATA] = ELFDATA2LSB;
  eh.e_ident[EI_VERSION] = EV_CURRENT;
  eh.e_ident[EI_OSABI] = ELFOSABI_NONE;
  eh.e_type = ET_CORE;
  eh.e_machine = EM_X86_64;
  eh.e_version = EV_CURRENT;
  eh.e_phoff = sizeof eh;
  eh.e_ehsize = sizeof eh;
  eh.e_phentsize = sizeof(Elf64_Phdr);
  eh.e_phnum = xnum ? PN_XNUM : (uint16_t)phnum;
  std::vector<Elf64_Phdr> ph(phnum);
  ph[0].p_type = PT_NOTE;
  ph[0].p_offset = notes_off;
  ph[0].p_filesz = notes.size();
  ph[0].p_align = 4;
  for (size_t i = 0; i < segs.size(); i++) {
    const Segment& s = segs[i];
    Elf64_Phdr& p = ph[i + 1];
    p.p_type = PT_LOAD;
    p.p_offset = s.offset;
    p.p_vaddr = s.v.start;
    p.p_filesz = s.filesz();
    p.p_memsz = s.len();
    p.p_flags = ((s.v.prot & 1) ? PF_R : 0) | ((s.v.prot & 2) ? PF_W : 0) | ((s.v.prot & 4) ? PF_X : 0);
    p.p_align = kPage;
  }

  OutFile out(o.output);
  out.SetSize(total);
  out.Write(0, &eh, sizeof eh);
  out.Write(sizeof eh, ph.data(), ph.size() * sizeof ph[0]);
  out.Write(notes_off, notes.data(), notes.size());
  if (xnum) {
    // Extended numbering: the real count in the one section header's sh_info.
    Elf64_Shdr sh{};
    sh.sh_info = (uint32_t)phnum;
    out.Write(shdr_off, &sh, sizeof sh);
    eh.e_shoff = shdr_off;
    eh.e_shnum = 1;
    eh.e_shentsize = sizeof sh;
    out.Write(0, &eh, sizeof eh);
  }

  for (Segment& s : segs)
    if (s.filesz() && s.v.kind == IBDBG_IVMA_FILE) FillFromFile(out, s, s.filesz(), res.warnings);
  std::set<std::string> elsewhere = PlaceIpcObjects(img, out, segs, nullptr);
  // Objects another process's image holds the bytes of.
  for (const auto& other : m.processes) {
    if (elsewhere.empty()) break;
    if (&other == &mp) continue;
    PlaceIpcObjects(dir + "/" + other.image, out, segs, &elsewhere);
  }
  for (const std::string& k : elsewhere)
    res.warnings.push_back("shared memory " + k.substr(k.find(':') + 1) +
                           ": no image of this capture holds its bytes; zero in the core");

  uint64_t outside = 0;
  ForEachPages(
      img, [](uint64_t, uint64_t) { return true; },
      [&](uint64_t a, const uint8_t* data, size_t len) {
        for (uint64_t p = a; p < a + len;) {
          Segment* s = index.Find(p);
          if (!s || !s->dump) {
            outside += kPage;
            p += kPage;
            continue;
          }
          uint64_t to = std::min<uint64_t>(a + len, s->v.end);
          const uint8_t* src = data + (p - a);
          if (s->prefilled)
            out.Write(s->offset + (p - s->v.start), src, to - p);
          else
            out.WriteSparse(s->offset + (p - s->v.start), src, to - p);
          p = to;
        }
      });
  if (outside) res.warnings.push_back(std::to_string(outside / kPage) + " stored pages lie outside the core's mappings");

  out.Commit(o.force);
  res.path = o.output;
  res.threads = threads.size();
  res.segments = segs.size();
  res.file_bytes = total;
  return res;
}

}  // namespace ibdbg::tools
