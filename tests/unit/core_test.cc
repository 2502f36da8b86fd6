// `ibdbg core` on a synthetic image whose signal frames, FPU state and pages
// are known: the ELF layout, the notes in the kernel's order with the
// registers from the frames, the memory (stored pages, file pages, holes),
// and the refusals.

#include "core.h"

#include <elf.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/procfs.h>
#include <sys/stat.h>
#include <sys/user.h>
#include <unistd.h>

#include <dirent.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>

#include "ibdbg/image_file.h"
#include "ibdbg/manifest.h"
#include "ibdbg/proto.h"
#include "test_util.h"

namespace ibdbg::tools {
namespace {

using test::TempDir;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kStack = 0x7ff000000000, kStackEnd = kStack + 16 * kPage;
constexpr uint64_t kAnon = 0x10000000, kMapped = 0x20000000, kText = 0x400000, kGuard = 0x30000000;
constexpr uint64_t kUcMain = kStack + 2 * kPage + 0x100, kUcWorker = kStack + 6 * kPage + 0x40;
constexpr uint64_t kSysv = 0x40000000, kMemfd = 0x50000000;
constexpr uint64_t kArgs = kStack + 15 * kPage;
constexpr uint32_t kXsize = 832;  // legacy + header + AVX

template <typename T>
void Put(std::vector<uint8_t>& mem, uint64_t addr, T v) {
  memcpy(mem.data() + (addr - kStack), &v, sizeof v);
}

// A signal frame at `uc` whose registers are `base + index` and whose FPU
// state lies above it (with an XSAVE part if `xsave`).
void Frame(std::vector<uint8_t>& mem, uint64_t uc, uint64_t base, bool xsave) {
  for (int i = 0; i < 23; i++) Put<uint64_t>(mem, uc + 40 + 8 * i, base + i);
  Put<uint64_t>(mem, uc + 40 + 18 * 8, 0x002b000000000033ull);  // cs 0x33, ss 0x2b
  uint64_t fp = (uc + 0x400) & ~63ull;
  Put<uint64_t>(mem, uc + 40 + 23 * 8, fp);
  Put<uint64_t>(mem, uc + 296, 0x5a5a0000ull | base);  // signal mask
  for (int i = 0; i < 160; i++) mem[fp - kStack + i] = (uint8_t)(base + i);  // fcw, mxcsr, st0...
  if (xsave) {
    Put<uint32_t>(mem, fp + 464, 0x46505853);
    Put<uint32_t>(mem, fp + 468, kXsize + 4);
    Put<uint64_t>(mem, fp + 472, 7);  // x87 | SSE | AVX
    Put<uint32_t>(mem, fp + 480, kXsize);
    Put<uint64_t>(mem, fp + 512, 7);  // XSTATE_BV
    for (uint32_t i = 576; i < kXsize; i++) mem[fp - kStack + i] = (uint8_t)(0xa0 + i);
    Put<uint32_t>(mem, fp + kXsize, 0x46505845);
  }
}

struct Fixture {
  TempDir t;
  std::string img = t / "img";
  std::string file = t / "mapped.bin";
  std::vector<uint8_t> stack;
  std::vector<uint8_t> file_bytes;

  bool shm = false;  // add shared memory held by IPC records

  void Build(std::vector<int> ranks = {-1}) {
    image::MakeDirs(img);
    // A mapped file: its page 0 stays the file's, page 1 the process wrote.
    file_bytes.assign(2 * kPage, 0);
    for (size_t i = 0; i < file_bytes.size(); i++) file_bytes[i] = (uint8_t)(i * 7 + 1);
    test::WriteFile(file, file_bytes);
    struct stat fst {};
    stat(file.c_str(), &fst);

    stack.assign(kStackEnd - kStack, 0);
    Frame(stack, kUcMain, 0x1000, true);
    Frame(stack, kUcWorker, 0x2000, false);
    const char args[] = "/usr/bin/coreapp\0--flag\0value";
    memcpy(stack.data() + (kArgs - kStack), args, sizeof args);

    image::Manifest m;
    m.ibdbg_version = "test";
    m.job_id = "job-core";
    m.created = "2024-11-25T11:00:01.000Z";
    for (size_t k = 0; k < ranks.size(); k++) {
      int pid = 500 + (int)k * 100;
      std::string name = "proc-" + std::to_string(pid) + ".img";
      WriteImage(img + "/" + name, pid, fst);
      image::ManifestProcess mp;
      mp.pid = pid;
      mp.host = "h";
      mp.image = name;
      mp.threads = 3;
      mp.rank = ranks[k];
      m.processes.push_back(mp);
    }
    image::WriteManifest(img + "/manifest.json", m);
  }

  void WriteImage(const std::string& path, int pid, const struct stat& fst) {
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    image::ImageWriter w(fd, {.zstd_level = 1, .threads = 1});
    w.AddRecord(image::RecordType::Header, 0, nlohmann::json{{"format", 1}, {"pid", pid}}.dump());
    ibdbg_process_info pi{};
    pi.pid = pid;
    pi.ppid = 1;
    pi.pgid = pi.sid = pid;
    pi.arg_start = kArgs;
    pi.arg_end = kArgs + 30;
    uint64_t auxv[] = {AT_PAGESZ, 4096, AT_ENTRY, 0x401000, AT_NULL, 0};
    memcpy(pi.auxv, auxv, sizeof auxv);
    pi.auxv_words = 6;
    strcpy(pi.comm, "coreapp");
    w.AddRecord(image::RecordType::Process, 0, &pi, sizeof pi);
    ibdbg_thread_info t{};
    // The checkpoint thread comes first in the image; the core puts main first.
    t.tid = pid + 2;
    t.flags = IBDBG_THREAD_CKPT;
    t.resume_rip = 0x7777;
    t.resume_rsp = 0x8888;
    w.AddRecord(image::RecordType::Thread, t.tid, &t, sizeof t);
    t = {};
    t.tid = pid;
    t.flags = IBDBG_THREAD_MAIN;
    t.uc_addr = kUcMain;
    t.fs_base = 0xf5f5f5f5;
    w.AddRecord(image::RecordType::Thread, t.tid, &t, sizeof t);
    t.tid = pid + 1;
    t.flags = 0;
    t.uc_addr = kUcWorker;
    t.fs_base = 0xf6f6;
    w.AddRecord(image::RecordType::Thread, t.tid, &t, sizeof t);
    auto vma = [&](uint64_t s, uint64_t e, uint32_t kind, uint32_t prot, const std::string& p) {
      ibdbg_image_vma v{};
      v.start = s;
      v.end = e;
      v.kind = kind;
      v.prot = prot;
      snprintf(v.path, sizeof v.path, "%s", p.c_str());
      if (p == file) {
        v.file_size = (uint64_t)fst.st_size;
        v.file_mtime_ns = (int64_t)fst.st_mtim.tv_sec * 1000000000 + fst.st_mtim.tv_nsec;
      }
      w.AddRecord(image::RecordType::Vma, s, &v, sizeof v);
    };
    vma(kText, kText + 2 * kPage, IBDBG_IVMA_FILE, 5, "/usr/bin/coreapp");
    vma(kAnon, kAnon + 4 * kPage, IBDBG_IVMA_ANON, 3, "");
    vma(kMapped, kMapped + 2 * kPage, IBDBG_IVMA_FILE, 3, file);
    vma(kGuard, kGuard + 16 * kPage, IBDBG_IVMA_ANON, 0, "");
    if (shm) {
      // A SysV segment (id 77) attached from its second page, and a memfd
      // (dev 0:5, inode 4242) whose bytes are extents of the object.
      ibdbg_ipc_object o{};
      o.kind = IBDBG_IPC_SHM;
      o.id = 77;
      o.size = 3 * kPage;
      std::string rec((const char*)&o, sizeof o);
      for (uint64_t i = 0; i < o.size; i++) rec += (char)(i / kPage + 1);
      w.AddRecord(image::RecordType::Ipc, o.kind, rec.data(), rec.size());
      o = {};
      o.kind = IBDBG_IPC_SHMEM;
      o.dev = 5;
      o.ino = 4242;
      o.size = 4 * kPage;
      rec.assign((const char*)&o, sizeof o);
      uint64_t off = 2 * kPage + 8, len = 16;
      rec.append((const char*)&off, 8);
      rec.append((const char*)&len, 8);
      rec.append("memfd-extent-ok!", 16);
      w.AddRecord(image::RecordType::Ipc, o.kind, rec.data(), rec.size());
      ibdbg_image_vma v{};
      v.start = kSysv;
      v.end = kSysv + 2 * kPage;
      v.offset = kPage;
      v.kind = IBDBG_IVMA_SYSV_SHM;
      v.prot = 1;
      v.inode = 77;
      snprintf(v.path, sizeof v.path, "/SYSV00000000");
      w.AddRecord(image::RecordType::Vma, v.start, &v, sizeof v);
      v = {};
      v.start = kMemfd;
      v.end = kMemfd + 4 * kPage;
      v.kind = IBDBG_IVMA_SHARED_ANON;
      v.prot = 3;
      v.shared = 1;
      v.deleted = 1;
      v.inode = 4242;
      v.dev_minor = 5;
      snprintf(v.path, sizeof v.path, "/memfd:buf");
      w.AddRecord(image::RecordType::Vma, v.start, &v, sizeof v);
    }
    vma(0x7ff100000000, 0x7ff100004000, IBDBG_IVMA_VVAR, 1, "[vvar]");
    vma(kStack, kStackEnd, IBDBG_IVMA_STACK, 3, "[stack]");
    std::vector<uint8_t> page(kPage, 0xab);
    w.AddPages(kAnon + kPage, page.data(), kPage);
    std::vector<uint8_t> cow(kPage, 0xcd);
    w.AddPages(kMapped + kPage, cow.data(), kPage);
    w.AddPages(kStack, stack.data(), stack.size());
    w.Finish();
    close(fd);
  }
};

struct Note {
  std::string name;
  uint32_t type;
  std::vector<uint8_t> desc;
};

struct Core {
  std::vector<uint8_t> bytes;
  Elf64_Ehdr eh{};
  std::vector<Elf64_Phdr> ph;
  std::vector<Note> notes;

  explicit Core(const std::string& path) : bytes(test::ReadFile(path)) {
    memcpy(&eh, bytes.data(), sizeof eh);
    ph.resize(eh.e_phnum);
    memcpy(ph.data(), bytes.data() + eh.e_phoff, ph.size() * sizeof ph[0]);
    const Elf64_Phdr& n = ph.at(0);
    for (uint64_t at = n.p_offset; at < n.p_offset + n.p_filesz;) {
      Elf64_Nhdr h;
      memcpy(&h, bytes.data() + at, sizeof h);
      at += sizeof h;
      Note note;
      note.name.assign((const char*)bytes.data() + at, h.n_namesz ? h.n_namesz - 1 : 0);
      at += (h.n_namesz + 3) & ~3u;
      note.type = h.n_type;
      note.desc.assign(bytes.begin() + (long)at, bytes.begin() + (long)(at + h.n_descsz));
      at += (h.n_descsz + 3) & ~3u;
      notes.push_back(std::move(note));
    }
  }
  const Elf64_Phdr& Load(uint64_t vaddr) const {
    for (const auto& p : ph)
      if (p.p_type == PT_LOAD && p.p_vaddr == vaddr) return p;
    throw std::runtime_error("no PT_LOAD at " + std::to_string(vaddr));
  }
  const uint8_t* At(uint64_t vaddr) const {
    for (const auto& p : ph)
      if (p.p_type == PT_LOAD && vaddr >= p.p_vaddr && vaddr < p.p_vaddr + p.p_filesz)
        return bytes.data() + p.p_offset + (vaddr - p.p_vaddr);
    return nullptr;
  }
};

std::string ErrorOf(const CoreOptions& o) {
  try {
    WriteCore(o);
  } catch (const std::exception& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    return msg;
  }
  return "";
}

TEST(Core, LayoutNotesAndMemory) {
  Fixture f;
  f.Build();
  CoreOptions o;
  o.image = f.img;
  o.output = f.t / "out.core";
  CoreResult r = WriteCore(o);
  EXPECT_EQ(r.pid, 500);
  EXPECT_EQ(r.threads, 3u);
  EXPECT_TRUE(r.warnings.empty()) << r.warnings[0];
  Core c(o.output);
  EXPECT_EQ(memcmp(c.eh.e_ident, ELFMAG, SELFMAG), 0);
  EXPECT_EQ(c.eh.e_ident[EI_CLASS], ELFCLASS64);
  EXPECT_EQ(c.eh.e_type, ET_CORE);
  EXPECT_EQ(c.eh.e_machine, EM_X86_64);
  ASSERT_EQ(c.ph.size(), 7u);
  EXPECT_EQ(c.ph[0].p_type, (uint32_t)PT_NOTE);
  // PT_LOADs in address order, page-aligned data after the notes.
  uint64_t last = 0;
  for (size_t i = 1; i < c.ph.size(); i++) {
    EXPECT_EQ(c.ph[i].p_type, (uint32_t)PT_LOAD);
    EXPECT_GT(c.ph[i].p_vaddr, last);
    last = c.ph[i].p_vaddr;
    EXPECT_EQ(c.ph[i].p_offset % kPage, 0u);
    EXPECT_GE(c.ph[i].p_offset, c.ph[0].p_offset + c.ph[0].p_filesz);
  }

  std::vector<uint32_t> types;
  for (const auto& n : c.notes) types.push_back(n.type);
  std::vector<uint32_t> want = {NT_PRSTATUS, NT_PRPSINFO, NT_AUXV,     NT_FILE,   NT_FPREGSET,
                                NT_X86_XSTATE, NT_PRSTATUS, NT_FPREGSET, NT_PRSTATUS};
  ASSERT_EQ(types, want);
  for (const auto& n : c.notes) EXPECT_EQ(n.name, n.type == NT_X86_XSTATE ? "LINUX" : "CORE");

  // The main thread first, its registers from its frame.
  elf_prstatus st;
  ASSERT_EQ(c.notes[0].desc.size(), sizeof st);
  memcpy(&st, c.notes[0].desc.data(), sizeof st);
  user_regs_struct regs;
  memcpy(&regs, &st.pr_reg, sizeof regs);
  EXPECT_EQ(st.pr_pid, 500);
  EXPECT_EQ(regs.r8, 0x1000u);
  EXPECT_EQ(regs.r15, 0x1007u);
  EXPECT_EQ(regs.rdi, 0x1008u);
  EXPECT_EQ(regs.rax, 0x100du);
  EXPECT_EQ(regs.rsp, 0x100fu);
  EXPECT_EQ(regs.rip, 0x1010u);
  EXPECT_EQ(regs.eflags, 0x1011u);
  EXPECT_EQ(regs.cs, 0x33u);
  EXPECT_EQ(regs.ss, 0x2bu);
  EXPECT_EQ(regs.fs_base, 0xf5f5f5f5u);
  EXPECT_EQ(regs.orig_rax, (unsigned long long)-1);
  EXPECT_EQ(st.pr_sighold, 0x5a5a1000u);
  EXPECT_EQ(st.pr_fpvalid, 1);

  elf_prpsinfo ps;
  memcpy(&ps, c.notes[1].desc.data(), sizeof ps);
  EXPECT_STREQ(ps.pr_fname, "coreapp");
  EXPECT_STREQ(ps.pr_psargs, "/usr/bin/coreapp --flag value");
  EXPECT_EQ(c.notes[2].desc.size(), 6u * 8);

  // NT_FILE: the two file mappings.
  const auto& nf = c.notes[3].desc;
  uint64_t count, psz;
  memcpy(&count, nf.data(), 8);
  memcpy(&psz, nf.data() + 8, 8);
  EXPECT_EQ(count, 2u);
  EXPECT_EQ(psz, kPage);
  std::string names(nf.begin() + 16 + 24 * 2, nf.end());
  EXPECT_EQ(names, std::string("/usr/bin/coreapp") + '\0' + f.file + '\0');

  // FPU: the fxsave bytes, and the XSAVE area with XCR0 where gdb reads it.
  ASSERT_EQ(c.notes[4].desc.size(), 512u);
  EXPECT_EQ(c.notes[4].desc[0], 0x00);
  EXPECT_EQ(c.notes[4].desc[100], 100);
  ASSERT_EQ(c.notes[5].desc.size(), kXsize);
  uint64_t xcr0;
  memcpy(&xcr0, c.notes[5].desc.data() + 464, 8);
  EXPECT_EQ(xcr0, 7u);
  EXPECT_EQ(c.notes[5].desc[600], (uint8_t)(0xa0 + 600));

  memcpy(&st, c.notes[6].desc.data(), sizeof st);
  memcpy(&regs, &st.pr_reg, sizeof regs);
  EXPECT_EQ(st.pr_pid, 501);
  EXPECT_EQ(regs.rip, 0x2010u);
  EXPECT_EQ(regs.fs_base, 0xf6f6u);
  // The thread without a frame: what its record says.
  memcpy(&st, c.notes[8].desc.data(), sizeof st);
  memcpy(&regs, &st.pr_reg, sizeof regs);
  EXPECT_EQ(st.pr_pid, 502);
  EXPECT_EQ(regs.rip, 0x7777u);
  EXPECT_EQ(regs.rsp, 0x8888u);
  EXPECT_EQ(st.pr_fpvalid, 0);

  // Memory: an unwritten file mapping is left to the file (no bytes), [vvar]
  // is never dumped; anonymous memory has its stored page and zero around it;
  // a written file mapping has the file's page and the process's page.
  EXPECT_EQ(c.Load(kText).p_filesz, 0u);
  EXPECT_EQ(c.Load(kText).p_memsz, 2 * kPage);
  EXPECT_EQ(c.Load(kText).p_flags, (uint32_t)(PF_R | PF_X));
  EXPECT_EQ(c.Load(0x7ff100000000).p_filesz, 0u);
  EXPECT_EQ(c.Load(kGuard).p_filesz, 0u);  // PROT_NONE, never written
  EXPECT_EQ(c.Load(kGuard).p_memsz, 16 * kPage);
  EXPECT_EQ(c.Load(kGuard).p_flags, 0u);
  EXPECT_EQ(c.Load(kAnon).p_filesz, 4 * kPage);
  EXPECT_EQ(c.Load(kAnon).p_flags, (uint32_t)(PF_R | PF_W));
  EXPECT_EQ(c.At(kAnon)[0], 0);
  EXPECT_EQ(c.At(kAnon + kPage)[17], 0xab);
  EXPECT_EQ(c.At(kAnon + 3 * kPage)[5], 0);
  EXPECT_EQ(memcmp(c.At(kMapped), f.file_bytes.data(), kPage), 0);
  EXPECT_EQ(c.At(kMapped + kPage)[9], 0xcd);
  EXPECT_EQ(memcmp(c.At(kStack), f.stack.data(), f.stack.size()), 0);
  EXPECT_EQ(c.bytes.size(), c.Load(kStack).p_offset + c.Load(kStack).p_filesz);

  // Sparse: the zero pages of anonymous memory took no blocks.
  struct stat sb;
  ASSERT_EQ(stat(o.output.c_str(), &sb), 0);
  EXPECT_LT((uint64_t)sb.st_blocks * 512, (uint64_t)sb.st_size);
  EXPECT_EQ(sb.st_mode & 0777, 0600u);
}

TEST(Core, SharedMemoryFromIpcRecords) {
  Fixture f;
  f.shm = true;
  f.Build();
  CoreOptions o;
  o.image = f.img;
  o.output = f.t / "out.core";
  CoreResult r = WriteCore(o);
  EXPECT_TRUE(r.warnings.empty()) << r.warnings[0];
  Core c(o.output);
  // The segment's pages 1 and 2 (attached from offset one page).
  ASSERT_EQ(c.Load(kSysv).p_filesz, 2 * kPage);
  EXPECT_EQ(c.At(kSysv)[0], 2);
  EXPECT_EQ(c.At(kSysv + kPage)[kPage - 1], 3);
  ASSERT_EQ(c.Load(kMemfd).p_filesz, 4 * kPage);
  EXPECT_EQ(std::string((const char*)c.At(kMemfd + 2 * kPage + 8), 16), "memfd-extent-ok!");
  EXPECT_EQ(c.At(kMemfd + 2 * kPage)[7], 0);
  EXPECT_EQ(c.At(kMemfd)[0], 0);
  // Both in NT_FILE, the memfd as deleted.
  std::string nf(c.notes[3].desc.begin(), c.notes[3].desc.end());
  EXPECT_NE(nf.find(std::string("/SYSV00000000") + '\0'), std::string::npos);
  EXPECT_NE(nf.find(std::string("/memfd:buf (deleted)") + '\0'), std::string::npos);
}

TEST(Core, FileChangedSinceCapture) {
  Fixture f;
  f.Build();
  std::vector<uint8_t> other(3 * kPage, 1);
  test::WriteFile(f.file, other);
  CoreOptions o;
  o.image = f.img;
  o.output = f.t / "out.core";
  CoreResult r = WriteCore(o);
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].find("changed since the capture"), std::string::npos) << r.warnings[0];
  Core c(o.output);
  EXPECT_EQ(c.At(kMapped)[1], 0);  // not the changed file's bytes
  EXPECT_EQ(c.At(kMapped + kPage)[9], 0xcd);
}

TEST(Core, ExistingOutputAndForce) {
  Fixture f;
  f.Build();
  CoreOptions o;
  o.image = f.img;
  o.output = f.t / "out.core";
  test::WriteFile(o.output, "keep", 4);
  EXPECT_EQ(ErrorOf(o), o.output + " exists (use --force to replace it)");
  EXPECT_EQ(test::ReadFile(o.output).size(), 4u);
  o.force = true;
  WriteCore(o);
  EXPECT_GT(test::ReadFile(o.output).size(), 4u);
  // No temporary file is left beside it.
  std::vector<std::string> names;
  DIR* d = opendir(f.t.path().c_str());
  while (dirent* e = readdir(d))
    if (e->d_name[0] != '.') names.push_back(e->d_name);
  closedir(d);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"img", "mapped.bin", "out.core"}));
  o.output = f.t.path();
  EXPECT_EQ(ErrorOf(o), f.t.path() + " is a directory");
  o.output = f.t / "nodir/out.core";
  EXPECT_NE(ErrorOf(o).find("cannot create a file beside"), std::string::npos);
}

TEST(Core, ChoosingTheProcess) {
  Fixture f;
  f.Build({1, 0, -1});
  CoreOptions o;
  o.image = f.img;
  o.output = f.t / "out.core";
  EXPECT_EQ(ErrorOf(o), f.img +
                            " holds 3 processes: choose one with --pid or --rank (processes: 500 (rank 1), 600 "
                            "(rank 0), 700)");
  o.rank = 5;
  EXPECT_EQ(ErrorOf(o), f.img + " has no process of rank 5 (ranks: 0, 1)");
  o.rank = 0;
  EXPECT_EQ(WriteCore(o).pid, 600);
  Core c(o.output);
  elf_prstatus st;
  memcpy(&st, c.notes[0].desc.data(), sizeof st);
  EXPECT_EQ(st.pr_pid, 600);
  o.rank = -1;
  o.pid = 701;
  o.force = true;
  EXPECT_EQ(ErrorOf(o), f.img + " has no process with pid 701 (processes: 500 (rank 1), 600 (rank 0), 700)");
  o.pid = 700;
  EXPECT_EQ(WriteCore(o).rank, -1);
  o.rank = 1;
  EXPECT_EQ(ErrorOf(o), "give --rank or --pid, not both");
  o.pid = 0;
  o.image = f.t / "nothing";
  EXPECT_NE(ErrorOf(o).find("nothing"), std::string::npos);
}

TEST(Core, NoteEncoding) {
  // Each note: header, name padded to 4, descriptor padded to 4.
  CoreNotesInput in;
  in.proc.pid = 9;
  CoreThread t;
  t.tid = 9;
  in.threads.push_back(t);
  in.files.push_back({0x1000, 0x3000, 2, "/a"});
  std::vector<uint8_t> n = BuildCoreNotes(in);
  size_t want = (12 + 8 + sizeof(elf_prstatus)) + (12 + 8 + sizeof(elf_prpsinfo)) + (12 + 8 + 16 + 24 + 4);
  EXPECT_EQ(n.size(), want);
  Elf64_Nhdr h;
  memcpy(&h, n.data(), sizeof h);
  EXPECT_EQ(h.n_namesz, 5u);
  EXPECT_EQ(h.n_descsz, sizeof(elf_prstatus));
  EXPECT_EQ(h.n_type, (uint32_t)NT_PRSTATUS);
  EXPECT_EQ(std::string((const char*)n.data() + 12, 5), std::string("CORE\0", 5));
}

}  // namespace
}  // namespace ibdbg::tools
