#pragma once

// Synthetic image directories for tests of the tools that read images, built
// from the same records a capture writes but with made-up, known contents.

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "ibdbg/image_file.h"
#include "ibdbg/manifest.h"
#include "ibdbg/proto.h"
#include "ibdbg/version.h"
#include "test_util.h"

namespace ibdbg::test {

struct SampleVma {
  uint64_t start = 0, end = 0;
  uint32_t prot = 0;  // PROT_* bits
  uint32_t kind = IBDBG_IVMA_ANON;
  std::string path;
  bool shared = false, deleted = false;
  size_t stored_pages = 0;  // pages written from `start`, filled with `fill`
  uint8_t fill = 0;
};

struct SampleFd {
  int fd = 0;
  uint32_t kind = IBDBG_FD_FILE;
  int32_t open_flags = O_RDONLY;
  int32_t fd_flags = 0;
  uint64_t offset = 0;
  std::string path;
  bool deleted = false;
  std::string data;  // stored after the struct (pipe contents, deleted file)
};

struct SampleRecord {  // extra record appended before End, e.g. of an unknown type
  uint32_t type = 0;
  uint64_t arg = 0;
  std::string data;
};

struct SampleProcess {
  int pid = 1234;
  std::string exe = "/usr/bin/app";
  std::string cwd = "/home/user/work";
  std::string comm = "app";
  std::string host = "testhost";
  uint32_t generation = 0;
  std::vector<SampleVma> vmas;
  std::vector<SampleFd> fds;
  std::vector<SampleRecord> extra;
};

inline constexpr uint64_t kPage = image::kPageSize;

template <size_t N>
void SetStr(char (&dst)[N], const std::string& s) {
  std::memset(dst, 0, N);
  std::memcpy(dst, s.data(), std::min(s.size(), N - 1));
}

inline SampleProcess DefaultProcess(int pid = 1234) {
  SampleProcess p;
  p.pid = pid;
  p.vmas = {
      {0x400000, 0x402000, 5, IBDBG_IVMA_FILE, "/usr/bin/app", false, false, 0, 0},
      {0x1000000, 0x1002000, 3, IBDBG_IVMA_HEAP, "[heap]", false, false, 2, 0x11},
      {0x7f0000000000, 0x7f0000002000, 5, IBDBG_IVMA_FILE, "/usr/lib/libfoo.so", false, false,
       0, 0},
      {0x7f0000010000, 0x7f0000011000, 1, IBDBG_IVMA_FILE, "/usr/lib64/libbar.so", false, false,
       0, 0},
      {0x7f0000020000, 0x7f0000023000, 3, IBDBG_IVMA_ANON, "", false, false, 3, 0x22},
      {0x7f0000030000, 0x7f0000031000, 3, IBDBG_IVMA_FILE_DELETED, "/tmp/gone.so", false, true,
       1, 0x33},
      {0x7ffc00000000, 0x7ffc00002000, 3, IBDBG_IVMA_STACK, "[stack]", false, false, 1, 0x44},
  };
  p.fds = {
      {0, IBDBG_FD_TTY, O_RDWR, 0, 0, "/dev/pts/3", false, ""},
      {1, IBDBG_FD_FILE, O_WRONLY | O_APPEND, FD_CLOEXEC, 42, "/usr/lib/data.log", false, ""},
      {3, IBDBG_FD_PIPE, O_RDONLY, 0, 0, "pipe:[12345]", false, "hello pipe"},
      {4, IBDBG_FD_FILE, O_RDWR, 0, 10, "/tmp/scratch", true, "0123456789"},
  };
  return p;
}

inline std::vector<uint8_t> PageBytes(const SampleVma& v) {
  std::vector<uint8_t> out(v.stored_pages * kPage, v.fill);
  for (size_t i = 0; i < out.size(); i += 97) out[i] = static_cast<uint8_t>(i / 97);
  return out;
}

inline void WriteProcessImage(const std::string& path, const SampleProcess& sp,
                              const std::string& job_id) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) throw std::runtime_error("cannot create " + path);
  {
    image::ImageWriter w(fd, {.zstd_level = 1, .threads = 1});
    nlohmann::json hdr = {{"format", 1},
                          {"ibdbg_version", IBDBG_VERSION},
                          {"job_id", job_id},
                          {"host", sp.host},
                          {"kernel", "6.1.0-test"},
                          {"machine", "x86_64"},
                          {"time", "2024-11-25T11:00:00.000Z"},
                          {"time_ns", 1732532400000000000LL},
                          {"pid", sp.pid},
                          {"exe", sp.exe},
                          {"comm", sp.comm},
                          {"generation", sp.generation},
                          {"threads", 2}};
    w.AddRecord(image::RecordType::Header, 0, hdr.dump());

    ibdbg_process_info pi{};
    pi.proto_version = IBDBG_PROTO_VERSION;
    pi.pid = sp.pid;
    pi.ppid = 1;
    pi.pgid = pi.sid = sp.pid;
    pi.umask = 022;
    pi.generation = sp.generation;
    pi.nthreads = 2;
    pi.ckpt_signal = 12;
    SetStr(pi.cwd, sp.cwd);
    SetStr(pi.exe, sp.exe);
    SetStr(pi.comm, sp.comm);
    SetStr(pi.hostname, sp.host);
    w.AddRecord(image::RecordType::Process, 0, &pi, sizeof pi);

    ibdbg_thread_info t{};
    t.tid = sp.pid;
    t.flags = IBDBG_THREAD_MAIN;
    t.resume_rip = 0x401234;
    t.resume_rsp = 0x7ffc00001f00;
    SetStr(t.name, sp.comm);
    w.AddRecord(image::RecordType::Thread, static_cast<uint64_t>(t.tid), &t, sizeof t);
    t = {};
    t.tid = sp.pid + 1;
    t.flags = IBDBG_THREAD_CKPT;
    SetStr(t.name, "ibdbg-ckpt");
    w.AddRecord(image::RecordType::Thread, static_cast<uint64_t>(t.tid), &t, sizeof t);

    ibdbg_signal_state ss{};
    ss.act[2 - 1] = {0x401500, 0x10000000 | 0x4 | 0x04000000, 0x401600, 0};  // SIGINT
    ss.act[13 - 1].handler = 1;                                              // SIGPIPE ignored
    ss.act[12 - 1] = {0x7f0000000100, 0x04000000 | 0x4, 0x401600, 0x2};      // SIGUSR2 ckpt
    ss.ckpt_signal = 12;
    ss.itimer[0] = {2, 0, 1, 500000};
    w.AddRecord(image::RecordType::Signals, 0, &ss, sizeof ss);

    for (const SampleVma& sv : sp.vmas) {
      ibdbg_image_vma v{};
      v.start = sv.start;
      v.end = sv.end;
      v.prot = sv.prot;
      v.kind = sv.kind;
      v.shared = sv.shared;
      v.deleted = sv.deleted;
      v.data_pages = sv.stored_pages;
      SetStr(v.path, sv.path);
      w.AddRecord(image::RecordType::Vma, v.start, &v, sizeof v);
    }
    for (const SampleVma& sv : sp.vmas) {
      if (!sv.stored_pages) continue;
      std::vector<uint8_t> bytes = PageBytes(sv);
      w.AddPages(sv.start, bytes.data(), bytes.size());
    }
    for (const SampleFd& sf : sp.fds) {
      ibdbg_fd_info f{};
      f.fd = sf.fd;
      f.kind = sf.kind;
      f.open_flags = sf.open_flags;
      f.fd_flags = sf.fd_flags;
      f.offset = sf.offset;
      f.size = sf.data.size();
      f.deleted = sf.deleted;
      if (sf.kind == IBDBG_FD_PIPE) f.pipe_id = 12345;
      SetStr(f.path, sf.path);
      std::vector<uint8_t> rec(sizeof f + sf.data.size());
      std::memcpy(rec.data(), &f, sizeof f);
      std::memcpy(rec.data() + sizeof f, sf.data.data(), sf.data.size());
      w.AddRecord(image::RecordType::Fd, static_cast<uint64_t>(sf.fd), rec.data(), rec.size());
    }
    for (const SampleRecord& r : sp.extra)
      w.AddRecord(static_cast<image::RecordType>(r.type), r.arg, r.data);
    w.Finish();
  }
  ::close(fd);
}

// Writes DIR/proc-<pid>.img for each process and DIR/manifest.json.
inline image::Manifest BuildImage(const std::string& dir, const std::vector<SampleProcess>& procs,
                                  const std::string& job_id = "job-0123") {
  image::MakeDirs(dir);
  image::Manifest m;
  m.ibdbg_version = IBDBG_VERSION;
  m.job_id = job_id;
  m.created = "2024-11-25T11:00:01.000Z";
  m.created_ns = 1732532401000000000LL;
  for (const SampleProcess& sp : procs) {
    image::ManifestProcess mp;
    mp.pid = sp.pid;
    mp.host = sp.host;
    mp.exe = sp.exe;
    mp.image = "proc-" + std::to_string(sp.pid) + ".img";
    mp.threads = 2;
    WriteProcessImage(dir + "/" + mp.image, sp, job_id);
    for (const SampleVma& v : sp.vmas) mp.memory_bytes += v.stored_pages * kPage;
    mp.bytes = ReadFile(dir + "/" + mp.image).size();
    m.processes.push_back(mp);
  }
  image::WriteManifest(dir + "/manifest.json", m);
  return m;
}

// File offset of the first record of `type` (its header), or throws.
inline uint64_t FindRecord(const std::string& path, image::RecordType type) {
  image::ImageReader r(path);
  image::RecordHeader h;
  while (r.NextHeader(h))
    if (h.type == static_cast<uint32_t>(type)) return r.current_offset();
  throw std::runtime_error("no such record in " + path);
}

// Flips one byte at `offset` of a file.
inline void FlipByte(const std::string& path, uint64_t offset) {
  std::vector<uint8_t> b = ReadFile(path);
  if (offset >= b.size()) throw std::runtime_error("offset beyond " + path);
  b[offset] ^= 0x5a;
  WriteFile(path, b);
}

inline std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> out;
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot open " + dir);
  DIR* d = ::fdopendir(fd);
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") out.push_back(n);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace ibdbg::test
