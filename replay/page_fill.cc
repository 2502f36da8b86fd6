#include "page_fill.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>

namespace ibdbg::replay {

using image::RecordHeader;
using image::RecordType;

// ---- PageFile -------------------------------------------------------------------

PageFile::PageFile(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw image::ImageError(path + ": cannot open: " + strerror(errno));
  struct stat st;
  if (fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd_);
    throw image::ImageError(path + ": not a regular file");
  }
  size_ = (uint64_t)st.st_size;
}

PageFile::~PageFile() {
  if (fd_ >= 0) ::close(fd_);
}

void PageFile::Corrupted(uint64_t off, const char* why) const {
  throw image::ImageError(path_ + ": corrupted record at offset " + std::to_string(off) + " (" + why + ")");
}

void PageFile::Prefetch(uint64_t off, uint64_t len) const {
  if (off < size_) posix_fadvise(fd_, (off_t)off, (off_t)std::min(len, size_ - off), POSIX_FADV_WILLNEED);
}

void PageFile::Random() const { posix_fadvise(fd_, 0, 0, POSIX_FADV_RANDOM); }

static void PreadAll(int fd, void* buf, size_t len, uint64_t off, const PageFile& f) {
  char* p = (char*)buf;
  while (len) {
    ssize_t r = pread(fd, p, len, (off_t)off);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) f.Corrupted(off, r == 0 ? "truncated" : "read error");
    p += r, len -= (size_t)r, off += (uint64_t)r;
  }
}

RecordHeader PageFile::Header(uint64_t off) const {
  RecordHeader h{};
  if (off + sizeof h > size_) Corrupted(off, "truncated");
  PreadAll(fd_, &h, sizeof h, off, *this);
  if (XXH3_64bits(&h, image::kHashedHeaderBytes) != h.header_hash) Corrupted(off, "header checksum mismatch");
  if (h.stored_len > image::kMaxRecordLen || h.raw_len > image::kMaxRecordLen) Corrupted(off, "record length out of range");
  if (h.flags & ~image::kKnownRecordFlags) Corrupted(off, "unknown record flags");
  if (!(h.flags & image::kRecordFlagZstd) && h.stored_len != h.raw_len) Corrupted(off, "raw record length mismatch");
  if (h.stored_len > size_ - off - sizeof h) Corrupted(off, "truncated");
  return h;
}

void PageFile::Payload(const RecordHeader& h, uint64_t off, std::vector<uint8_t>& stored,
                       std::vector<uint8_t>& out) const {
  const bool zstd = h.flags & image::kRecordFlagZstd;
  std::vector<uint8_t>& s = zstd ? stored : out;
  s.resize(h.stored_len);
  PreadAll(fd_, s.data(), s.size(), off + sizeof h, *this);
  if (XXH3_64bits(s.data(), s.size()) != h.payload_hash) Corrupted(off, "checksum mismatch");
  if (!zstd) return;
  if (ZSTD_getFrameContentSize(s.data(), s.size()) != h.raw_len) Corrupted(off, "compressed size mismatch");
  out.resize(h.raw_len);
  thread_local ZSTD_DCtx* dctx = ZSTD_createDCtx();
  size_t n = ZSTD_decompressDCtx(dctx, out.data(), out.size(), s.data(), s.size());
  if (ZSTD_isError(n) || n != h.raw_len) Corrupted(off, "decompression failed");
}

// ---- eager fill -------------------------------------------------------------------

namespace {

struct Job {
  RecordHeader h;
  uint64_t off;
  bool copy = false;
  std::vector<uint8_t> stored, out;
};

// A bounded queue of jobs plus a free list, so that buffers are reused
// instead of faulted in anew for every record.
struct Pipe {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::unique_ptr<Job>> ready, free;
  bool closed = false;
  std::string error;
};

void WriteInto(pid_t pid, uint64_t addr, const std::vector<uint8_t>& data) {
  size_t off = 0;
  while (off < data.size()) {
    iovec local = {(void*)(data.data() + off), data.size() - off};
    iovec remote = {(void*)(addr + off), data.size() - off};
    ssize_t n = process_vm_writev(pid, &local, 1, &remote, 1, 0);
    if (n <= 0) {
      char where[64];
      snprintf(where, sizeof where, " at %#llx", (unsigned long long)(addr + off));
      throw std::runtime_error(std::string("replay failed: cannot write the process's memory") + where + ": " +
                               strerror(errno));
    }
    off += (size_t)n;
  }
}

void CopyInto(int uffd, uint64_t addr, const std::vector<uint8_t>& data) {
  uint64_t done = 0;
  while (done < data.size()) {
    uffdio_copy c{};
    c.dst = addr + done;
    c.src = (uint64_t)(data.data() + done);
    c.len = data.size() - done;
    int r = ioctl(uffd, UFFDIO_COPY, &c);
    if (c.copy > 0) done += (uint64_t)c.copy;
    if (r == 0 || c.copy > 0) continue;
    int err = c.copy < 0 ? (int)-c.copy : errno;
    char where[64];
    snprintf(where, sizeof where, " at %#llx", (unsigned long long)(addr + done));
    throw std::runtime_error(std::string("replay failed: cannot copy into the process's memory") + where + ": " +
                             strerror(err));
  }
}

}  // namespace

FillResult FillPages(const PageFile& f, uint64_t first_offset, uint64_t first_index, pid_t pid,
                     const PageClassifier& classify, int threads, bool walk_ahead, int uffd) {
  FillResult res;
  Pipe q;
  const size_t depth = (size_t)threads * 2 + 2;
  for (size_t i = 0; i < depth; i++) q.free.push_back(std::make_unique<Job>());
  std::atomic<uint64_t> bytes{0};
  auto fail = [&](const std::string& e) {
    std::lock_guard<std::mutex> l(q.mu);
    if (q.error.empty()) q.error = e;
    q.closed = true;
    q.cv.notify_all();
  };
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; t++)
    workers.emplace_back([&]() {
      for (;;) {
        std::unique_ptr<Job> j;
        {
          std::unique_lock<std::mutex> l(q.mu);
          q.cv.wait(l, [&] { return !q.ready.empty() || q.closed; });
          if (q.ready.empty() || !q.error.empty()) return;
          j = std::move(q.ready.front());
          q.ready.pop_front();
        }
        try {
          f.Payload(j->h, j->off, j->stored, j->out);
          if (j->copy)
            CopyInto(uffd, j->h.arg, j->out);
          else
            WriteInto(pid, j->h.arg, j->out);
          bytes += j->out.size();
        } catch (const std::exception& e) {
          fail(e.what());
          return;
        }
        std::lock_guard<std::mutex> l(q.mu);
        q.free.push_back(std::move(j));
        q.cv.notify_all();
      }
    });
  try {
    uint64_t off = first_offset, index = first_index, predicted_to = 0, last_len = ~0ull;
    for (;;) {
      RecordHeader h = f.Header(off);
      if (walk_ahead && h.type == (uint32_t)RecordType::Pages &&
          (h.stored_len != last_len || off + sizeof h >= predicted_to)) {
        // Full page records all have the same size (plain, or incompressible).
        last_len = h.stored_len;
        uint64_t step = sizeof h + h.stored_len, at = off + step;
        for (int i = 0; i < 64; i++, at += step) f.Prefetch(at, sizeof h);
        predicted_to = at;
      }
      if (h.type == (uint32_t)RecordType::End) {
        if (h.stored_len != 0) f.Corrupted(off, "end record has a payload");
        if (h.arg != index) f.Corrupted(off, "end record counts other records");
        if (off + sizeof h != f.size()) f.Corrupted(off, "data after the end record");
        break;
      }
      uint64_t here = off;
      off += sizeof h + h.stored_len;
      index++;
      if (h.type != (uint32_t)RecordType::Pages) continue;
      PageUse use = classify(h.arg, h.raw_len);
      if (use == PageUse::Skip) continue;
      if (use == PageUse::Lazy) {
        res.lazy.push_back({h.arg, h.raw_len, here});
        continue;
      }
      std::unique_ptr<Job> j;
      {
        std::unique_lock<std::mutex> l(q.mu);
        q.cv.wait(l, [&] { return !q.free.empty() || !q.error.empty(); });
        if (!q.error.empty()) break;
        j = std::move(q.free.front());
        q.free.pop_front();
      }
      j->h = h;
      j->off = here;
      j->copy = use == PageUse::Copy;
      std::lock_guard<std::mutex> l(q.mu);
      q.ready.push_back(std::move(j));
      q.cv.notify_all();
    }
  } catch (const std::exception& e) {
    fail(e.what());
  }
  {
    std::lock_guard<std::mutex> l(q.mu);
    q.closed = true;
    q.cv.notify_all();
  }
  for (auto& w : workers) w.join();
  if (!q.error.empty()) throw std::runtime_error(q.error);
  res.bytes = bytes;
  return res;
}

// ---- lazy: the page server ----------------------------------------------------------

std::string LazyRefusal() {
  // Following fork() (UFFD_FEATURE_EVENT_FORK) needs CAP_SYS_PTRACE, and
  // without it and vm.unprivileged_userfaultfd=1 only faults from user mode
  // reach the server: a system call writing into a page not yet loaded would
  // fail with EFAULT.  Either would be a replay that silently misbehaves.
  if (geteuid() == 0) return "";
  return "--lazy needs root (CAP_SYS_PTRACE): an ordinary user's userfaultfd cannot follow fork() and, "
         "with vm.unprivileged_userfaultfd=0, cannot serve page faults of system calls; replay without --lazy";
}

namespace {

// A range still to be copied: [addr, addr + len) gets the bytes of the
// record at `rec` starting at `skip`.
struct Piece {
  uint64_t len, rec, skip;
};

struct Mm {
  int uffd = -1;
  pid_t pid = 0;
  std::shared_ptr<PageFile> f;
  std::map<uint64_t, Piece> pending;  // by address
  std::deque<uint64_t> faults;        // read, not answered yet
};

constexpr uint64_t kPage = 4096;

// Removes [s, e) from `m`, splitting pieces at its ends.
void Cut(std::map<uint64_t, Piece>& m, uint64_t s, uint64_t e) {
  auto it = m.upper_bound(s);
  if (it != m.begin()) --it;
  while (it != m.end() && it->first < e) {
    uint64_t a = it->first;
    Piece p = it->second;
    if (a + p.len <= s) {
      ++it;
      continue;
    }
    it = m.erase(it);
    if (a < s) m[a] = {s - a, p.rec, p.skip};
    if (a + p.len > e) m[e] = {a + p.len - e, p.rec, p.skip + (e - a)};
  }
}

}  // namespace

struct PageServer::Impl {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Mm> mms;  // touched only by the server thread once started
  std::thread th;
  std::atomic<bool> stop{false};
  bool finished = false;
  std::chrono::steady_clock::time_point t0, t1;
  std::atomic<uint64_t> bytes{0};
  std::function<void()> on_done;
  // The last record loaded, decompressed.
  const PageFile* cached_file = nullptr;
  uint64_t cached_off = ~0ull;
  std::vector<uint8_t> stored, data;

  const std::vector<uint8_t>& Load(const PageFile& f, uint64_t off) {
    if (cached_file != &f || cached_off != off) {
      cached_off = ~0ull;
      RecordHeader h = f.Header(off);
      f.Payload(h, off, stored, data);
      cached_file = &f;
      cached_off = off;
    }
    return data;
  }

  // Copies the piece at `it` of `m`.  Returns false when events must be
  // read first (the process's mappings are changing).
  bool CopyPiece(Mm& m, std::map<uint64_t, Piece>::iterator it) {
    uint64_t a = it->first;
    Piece p = it->second;
    const std::vector<uint8_t>& d = Load(*m.f, p.rec);
    if (p.skip + p.len > d.size()) m.f->Corrupted(p.rec, "pages beyond the record");
    uint64_t done = 0;
    while (done < p.len) {
      uffdio_copy c{};
      c.dst = a + done;
      c.src = (uint64_t)(d.data() + p.skip + done);
      c.len = p.len - done;
      c.mode = 0;
      int r = ioctl(m.uffd, UFFDIO_COPY, &c);
      if (c.copy > 0) {
        done += (uint64_t)c.copy;
        bytes += (uint64_t)c.copy;
      }
      if (r == 0) break;
      if (c.copy > 0) continue;
      int err = c.copy < 0 ? (int)-c.copy : errno;
      if (err == EAGAIN) {
        // What is copied stays copied; the rest waits for the events.
        m.pending.erase(it);
        if (done < p.len) m.pending[a + done] = {p.len - done, p.rec, p.skip + done};
        return false;
      }
      if (err == ESRCH) {  // the process is gone
        m.pending.clear();
        return true;
      }
      // EEXIST: that page is present already; ENOENT/EFAULT: not mapped or
      // not registered any more.  Either way it is not ours to fill.
      if (err != EEXIST && err != ENOENT && err != EFAULT)
        throw std::runtime_error(std::string("cannot copy a page into the process (UFFDIO_COPY): ") + strerror(err));
      done += kPage;
    }
    m.pending.erase(it);
    return true;
  }

  // Serves a fault at `addr`; false: read events first.
  bool Fault(Mm& m, uint64_t addr) {
    addr &= ~(kPage - 1);
    auto it = m.pending.upper_bound(addr);
    if (it != m.pending.begin()) {
      --it;
      if (addr < it->first + it->second.len) return CopyPiece(m, it);
    }
    // Not in the image (never touched) or filled meanwhile.
    uffdio_zeropage z{};
    z.range.start = addr;
    z.range.len = kPage;
    if (ioctl(m.uffd, UFFDIO_ZEROPAGE, &z) == 0) return true;
    int err = z.zeropage < 0 ? (int)-z.zeropage : errno;
    if (err == EAGAIN) return false;
    if (err != EEXIST && err != ENOENT && err != EFAULT && err != ESRCH)
      throw std::runtime_error(std::string("cannot give the process a zero page (UFFDIO_ZEROPAGE): ") + strerror(err));
    uffdio_range w{addr, kPage};
    ioctl(m.uffd, UFFDIO_WAKE, &w);
    return true;
  }

  void Event(size_t mi, const uffd_msg& msg) {
    Mm& m = mms[mi];
    switch (msg.event) {
      case UFFD_EVENT_FORK: {
        Mm child;
        child.uffd = (int)msg.arg.fork.ufd;
        fcntl(child.uffd, F_SETFL, O_NONBLOCK);
        fcntl(child.uffd, F_SETFD, FD_CLOEXEC);
        child.f = m.f;
        child.pending = m.pending;
        mms.push_back(std::move(child));  // m may dangle from here
        break;
      }
      case UFFD_EVENT_REMAP: {
        uint64_t from = msg.arg.remap.from, to = msg.arg.remap.to, len = msg.arg.remap.len;
        std::map<uint64_t, Piece> moved;
        for (auto it = m.pending.lower_bound(from); it != m.pending.end() && it->first < from + len; ++it)
          moved[to + (it->first - from)] = it->second;
        Cut(m.pending, from, from + len);
        Cut(m.pending, to, to + len);
        for (auto& [a, p] : moved) m.pending[a] = p;
        break;
      }
      case UFFD_EVENT_REMOVE:
      case UFFD_EVENT_UNMAP:
        Cut(m.pending, msg.arg.remove.start, msg.arg.remove.end);
        break;
      default: break;
    }
  }

  // Reads what the process has queued: events take effect at once, faults
  // wait in its queue.  Then answers the faults in order; false when one
  // must wait for an event still to come (its mapping is changing).
  bool Drain(size_t mi) {
    uffd_msg msgs[32];
    for (;;) {
      ssize_t n = read(mms[mi].uffd, msgs, sizeof msgs);
      if (n <= 0) break;
      for (ssize_t i = 0; i < n / (ssize_t)sizeof msgs[0]; i++) {
        if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
          mms[mi].faults.push_back(msgs[i].arg.pagefault.address);
        else
          Event(mi, msgs[i]);
      }
    }
    Mm& m = mms[mi];
    while (!m.faults.empty()) {
      if (!Fault(m, m.faults.front())) return false;
      m.faults.pop_front();
    }
    return true;
  }

  void Run() {
    size_t rr = 0;
    bool waiting = false;
    while (!stop) {
      // Retire processes with nothing left: closing their userfaultfd makes
      // their remaining missing pages (never in the image) plain zero fill.
      for (size_t i = 0; i < mms.size();) {
        if (mms[i].pending.empty() && Drain(i) && mms[i].pending.empty()) {
          close(mms[i].uffd);
          mms.erase(mms.begin() + (long)i);
          continue;
        }
        i++;
      }
      if (mms.empty()) break;
      std::vector<pollfd> pf;
      for (auto& m : mms) pf.push_back({m.uffd, POLLIN, 0});
      poll(pf.data(), pf.size(), waiting ? 1 : 0);
      waiting = false;
      for (size_t i = 0; i < mms.size(); i++)
        if (!Drain(i)) waiting = true;
      if (waiting) continue;
      // One record's worth in the background, round robin.
      rr = (rr + 1) % mms.size();
      Mm& m = mms[rr];
      if (!m.pending.empty() && !CopyPiece(m, m.pending.begin())) waiting = true;
    }
    std::function<void()> f;
    {
      std::lock_guard<std::mutex> l(mu);
      t1 = std::chrono::steady_clock::now();
      finished = true;
      cv.notify_all();
      if (!stop) f = std::move(on_done);
    }
    if (f) f();
  }
};

PageServer::PageServer() : impl_(std::make_unique<Impl>()) {}

PageServer::~PageServer() {
  // Processes that are gone end the server by themselves (ESRCH); only
  // ones still running (the replay gave up on them) are left unfilled.
  if (impl_->th.joinable()) {
    std::unique_lock<std::mutex> l(impl_->mu);
    impl_->cv.wait_for(l, std::chrono::seconds(5), [&] { return impl_->finished; });
  }
  impl_->stop = true;
  if (impl_->th.joinable()) impl_->th.join();
  for (auto& m : impl_->mms) close(m.uffd);
}

void PageServer::Add(pid_t pid, int uffd, std::shared_ptr<PageFile> f, std::vector<PageRun> runs) {
  Mm m;
  m.uffd = uffd;
  m.pid = pid;
  m.f = std::move(f);
  for (auto& r : runs) m.pending[r.addr] = {r.len, r.offset, 0};
  impl_->mms.push_back(std::move(m));
}

void PageServer::Start() {
  impl_->t0 = std::chrono::steady_clock::now();
  impl_->th = std::thread([this] {
    try {
      impl_->Run();
    } catch (const std::exception& e) {
      // A record that turns out damaged now cannot be put right: the
      // processes would run on with pages missing, so they do not run on.
      fprintf(stderr, "ibdbg: lazy replay failed: %s; killing the replayed processes\n", e.what());
      for (auto& m : impl_->mms)
        if (m.pid > 0) kill(m.pid, SIGKILL);
      std::lock_guard<std::mutex> l(impl_->mu);
      impl_->t1 = std::chrono::steady_clock::now();
      impl_->finished = true;
      impl_->cv.notify_all();
    }
  });
}

void PageServer::WaitDone() {
  std::unique_lock<std::mutex> l(impl_->mu);
  impl_->cv.wait(l, [&] { return impl_->finished; });
}

void PageServer::OnDone(std::function<void()> f) {
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    if (!impl_->finished) {
      impl_->on_done = std::move(f);
      return;
    }
  }
  f();
}

bool PageServer::done() const {
  std::lock_guard<std::mutex> l(impl_->mu);
  return impl_->finished;
}

double PageServer::fill_ms() const {
  std::lock_guard<std::mutex> l(impl_->mu);
  return std::chrono::duration<double, std::milli>(impl_->t1 - impl_->t0).count();
}

uint64_t PageServer::bytes() const { return impl_->bytes; }

}  // namespace ibdbg::replay
