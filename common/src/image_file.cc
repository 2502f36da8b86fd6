#include "ibdbg/image_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

namespace ibdbg {

std::string ErrnoMessage(const std::string& what, int err) {
  return what + ": " + std::strerror(err);
}
std::string ErrnoMessage(const std::string& what) { return ErrnoMessage(what, errno); }

}  // namespace ibdbg

namespace ibdbg::image {

static_assert(std::endian::native == std::endian::little,
              "the image format is little-endian and only written natively");

bool IsKnownRecordType(uint32_t type) {
  switch (static_cast<RecordType>(type)) {
    case RecordType::Header:
    case RecordType::Process:
    case RecordType::Thread:
    case RecordType::Vma:
    case RecordType::Pages:
    case RecordType::Fd:
    case RecordType::Signals:
    case RecordType::Json:
    case RecordType::Ipc:
    case RecordType::Verbs:
    case RecordType::Inherit:
    case RecordType::End:
      return true;
  }
  return false;
}

const char* RecordTypeName(uint32_t type) {
  switch (static_cast<RecordType>(type)) {
    case RecordType::Header: return "header";
    case RecordType::Process: return "process";
    case RecordType::Thread: return "thread";
    case RecordType::Vma: return "vma";
    case RecordType::Pages: return "pages";
    case RecordType::Fd: return "fd";
    case RecordType::Signals: return "signals";
    case RecordType::Json: return "json";
    case RecordType::Ipc: return "ipc";
    case RecordType::Verbs: return "verbs";
    case RecordType::Inherit: return "inherit";
    case RecordType::End: return "end";
  }
  return "unknown";
}

namespace {

uint64_t HeaderHash(const RecordHeader& h) {
  return XXH3_64bits(&h, kHashedHeaderBytes);
}

RecordHeader MakeHeader(uint32_t type, uint32_t flags, uint64_t arg, const void* stored,
                        size_t stored_len, uint64_t raw_len) {
  RecordHeader h{};
  h.type = type;
  h.flags = flags;
  h.arg = arg;
  h.stored_len = stored_len;
  h.raw_len = raw_len;
  h.payload_hash = XXH3_64bits(stored, stored_len);
  h.header_hash = HeaderHash(h);
  return h;
}

}  // namespace

// ---------------------------------------------------------------- writer

struct ImageWriter::Impl {
  struct Job {
    uint32_t type = 0;
    uint64_t arg = 0;
    bool compress = false;
    std::vector<uint8_t> input;
    std::vector<uint8_t> output;  // empty when the input is stored raw
    RecordHeader header{};
    bool done = false;
    std::exception_ptr error;
  };

  int fd;
  WriterOptions opts;
  size_t max_in_flight = 2;
  std::vector<std::thread> workers;

  std::mutex mu;
  std::condition_variable work_cv;
  std::condition_variable done_cv;
  std::deque<std::unique_ptr<Job>> queue;  // submission order, written from the front
  std::deque<Job*> todo;                   // not yet picked up by a worker
  bool stop = false;

  uint64_t bytes_written = 0;
  uint64_t raw_bytes = 0;
  uint64_t records = 0;
  uint64_t submitted = 0;
  bool finished = false;
  std::string failure;  // sticky: once set, every call throws it

  void Worker() {
    ZSTD_CCtx* cctx = nullptr;
    for (;;) {
      Job* job;
      {
        std::unique_lock lk(mu);
        work_cv.wait(lk, [&] { return stop || !todo.empty(); });
        if (stop) break;
        job = todo.front();
        todo.pop_front();
      }
      try {
        if (job->compress && !cctx) cctx = ZSTD_createCCtx();
        Encode(*job, cctx);
      } catch (...) {
        job->error = std::current_exception();
      }
      {
        std::lock_guard lk(mu);
        job->done = true;
      }
      done_cv.notify_all();
    }
    ZSTD_freeCCtx(cctx);
  }

  // Whether a chunk looks incompressible (random, encrypted, already
  // compressed data): four 4 KiB samples compressed at the fastest level
  // cost ~2% of compressing it all, which would be wasted time, and zstd is
  // slowest on data it cannot compress.
  static bool LooksIncompressible(ZSTD_CCtx* cctx, const uint8_t* p, size_t n) {
    constexpr size_t kSample = 4096;
    if (n < 16 * kSample) return false;
    uint8_t out[ZSTD_COMPRESSBOUND(kSample)];
    size_t in = 0, kept = 0;
    for (size_t k = 0; k < 4; k++) {
      size_t c = ZSTD_compressCCtx(cctx, out, sizeof out, p + k * (n / 4), kSample, 1);
      if (ZSTD_isError(c)) return false;
      in += kSample;
      kept += c;
    }
    return kept > in - in / 16;
  }

  void Encode(Job& job, ZSTD_CCtx* cctx) const {
    const size_t n = job.input.size();
    if (job.compress && cctx && n > 0 && !LooksIncompressible(cctx, job.input.data(), n)) {
      job.output.resize(ZSTD_compressBound(n));
      size_t c = ZSTD_compressCCtx(cctx, job.output.data(), job.output.size(),
                                   job.input.data(), n, opts.zstd_level);
      // Barely-compressible data costs decompression time on restore for
      // nothing, so it must save at least ~3% to be kept compressed.
      if (!ZSTD_isError(c) && c < n - n / 32) {
        job.output.resize(c);
        job.header = MakeHeader(job.type, kRecordFlagZstd, job.arg, job.output.data(), c, n);
        return;
      }
      job.output = {};
    }
    job.header = MakeHeader(job.type, 0, job.arg, job.input.data(), n, n);
  }

  [[noreturn]] void FailWith(std::string msg) {
    failure = std::move(msg);
    throw ImageError(failure);
  }

  void CheckUsable() {
    if (!failure.empty()) throw ImageError(failure);
    if (finished) throw ImageError("image writer: record added after Finish()");
  }

  void WriteAll(const void* a, size_t alen, const void* b, size_t blen) {
    iovec iov[2] = {{const_cast<void*>(a), alen}, {const_cast<void*>(b), blen}};
    int idx = 0;
    while (idx < 2) {
      if (iov[idx].iov_len == 0) {
        ++idx;
        continue;
      }
      ssize_t w = ::writev(fd, iov + idx, 2 - idx);
      if (w < 0) {
        if (errno == EINTR) continue;
        FailWith(ErrnoMessage("writing image"));
      }
      if (w == 0) FailWith("writing image: write returned 0");
      bytes_written += static_cast<uint64_t>(w);
      size_t left = static_cast<size_t>(w);
      while (idx < 2 && left >= iov[idx].iov_len) {
        left -= iov[idx].iov_len;
        iov[idx].iov_len = 0;
        ++idx;
      }
      if (idx < 2) {
        iov[idx].iov_base = static_cast<char*>(iov[idx].iov_base) + left;
        iov[idx].iov_len -= left;
      }
    }
  }

  void WriteJob(Job& job) {
    if (job.error) {
      try {
        std::rethrow_exception(job.error);
      } catch (const std::exception& e) {
        FailWith(std::string("encoding image record: ") + e.what());
      }
    }
    const std::vector<uint8_t>& payload =
        (job.header.flags & kRecordFlagZstd) ? job.output : job.input;
    WriteAll(&job.header, sizeof job.header, payload.data(), payload.size());
    ++records;
  }

  // Writes finished jobs from the front of the queue; waits for the front job
  // only while more than `limit` jobs are queued.
  void Drain(size_t limit) {
    for (;;) {
      std::unique_ptr<Job> job;
      {
        std::unique_lock lk(mu);
        if (queue.empty()) return;
        if (!queue.front()->done) {
          if (queue.size() <= limit) return;
          done_cv.wait(lk, [&] { return queue.front()->done; });
        }
        job = std::move(queue.front());
        queue.pop_front();
      }
      WriteJob(*job);
    }
  }

  void Submit(uint32_t type, uint64_t arg, const void* data, size_t len, bool compress) {
    Drain(max_in_flight - 1);
    auto job = std::make_unique<Job>();
    job->type = type;
    job->arg = arg;
    job->compress = compress && opts.zstd_level > 0;
    if (len) job->input.assign(static_cast<const uint8_t*>(data),
                               static_cast<const uint8_t*>(data) + len);
    {
      std::lock_guard lk(mu);
      todo.push_back(job.get());
      queue.push_back(std::move(job));
    }
    work_cv.notify_one();
    ++submitted;
    raw_bytes += len;
    Drain(max_in_flight);
  }

  void StopWorkers() noexcept {
    {
      std::lock_guard lk(mu);
      stop = true;
    }
    work_cv.notify_all();
    for (auto& t : workers)
      if (t.joinable()) t.join();
    workers.clear();
  }
};

ImageWriter::ImageWriter(int fd, WriterOptions opts) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.fd = fd;
  m.opts = opts;
  m.opts.zstd_level = std::min(opts.zstd_level, ZSTD_maxCLevel());
  m.opts.chunk = std::clamp<size_t>(opts.chunk / kPageSize * kPageSize, kPageSize,
                                    kMaxRecordLen);
  int threads = opts.threads > 0 ? opts.threads
                                 : static_cast<int>(std::thread::hardware_concurrency());
  threads = std::clamp(threads, 1, 256);
  m.max_in_flight = 2 * static_cast<size_t>(threads);

  FileHeader fh{};
  std::memcpy(fh.magic, kMagic, sizeof kMagic);
  fh.format_version = kFormatVersion;
  m.WriteAll(&fh, sizeof fh, nullptr, 0);

  try {
    for (int i = 0; i < threads; ++i) m.workers.emplace_back([&m] { m.Worker(); });
  } catch (...) {
    m.StopWorkers();
    throw;
  }
}

ImageWriter::~ImageWriter() { impl_->StopWorkers(); }

void ImageWriter::AddRecord(RecordType type, uint64_t arg, const void* data, size_t len,
                            bool compress) {
  Impl& m = *impl_;
  m.CheckUsable();
  if (type == RecordType::End)
    throw ImageError("image writer: the end record is written by Finish()");
  if (m.submitted == 0 && type != RecordType::Header)
    throw ImageError("image writer: the first record must be the header record");
  if (len > kMaxRecordLen)
    throw ImageError("image writer: record of " + std::to_string(len) +
                     " bytes exceeds the 1 GiB limit");
  if (len && !data) throw ImageError("image writer: null record data");
  m.Submit(static_cast<uint32_t>(type), arg, data, len, compress);
}

void ImageWriter::AddPages(uint64_t addr, const void* data, size_t len) {
  Impl& m = *impl_;
  m.CheckUsable();
  if (m.submitted == 0)
    throw ImageError("image writer: the first record must be the header record");
  if (addr % kPageSize || len % kPageSize || addr + len < addr)
    throw ImageError("image writer: pages must be page-aligned (addr " +
                     std::to_string(addr) + ", len " + std::to_string(len) + ")");
  if (len && !data) throw ImageError("image writer: null page data");
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t off = 0; off < len; off += m.opts.chunk) {
    size_t n = std::min(m.opts.chunk, len - off);
    m.Submit(static_cast<uint32_t>(RecordType::Pages), addr + off, p + off, n, true);
  }
}

void ImageWriter::Finish() {
  Impl& m = *impl_;
  if (!m.failure.empty()) throw ImageError(m.failure);
  if (m.finished) return;
  if (m.submitted == 0)
    throw ImageError("image writer: the first record must be the header record");
  m.Drain(0);
  m.StopWorkers();
  RecordHeader end = MakeHeader(static_cast<uint32_t>(RecordType::End), 0, m.records,
                                nullptr, 0, 0);
  m.WriteAll(&end, sizeof end, nullptr, 0);
  // Pipes and character devices can't be synced and don't need to be.
  if (m.opts.sync && ::fdatasync(m.fd) != 0 && errno != EINVAL && errno != EROFS)
    m.FailWith(ErrnoMessage("syncing image"));
  m.finished = true;
}

uint64_t ImageWriter::bytes_written() const { return impl_->bytes_written; }
uint64_t ImageWriter::raw_bytes() const { return impl_->raw_bytes; }
uint64_t ImageWriter::records_written() const { return impl_->records; }

// ---------------------------------------------------------------- reader

struct ImageReader::Dctx {
  ZSTD_DCtx* ctx = ZSTD_createDCtx();
  ~Dctx() { ZSTD_freeDCtx(ctx); }
};

ImageReader::ImageReader(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) Fail(ErrnoMessage("cannot open"));
  try {
    Open();
  } catch (...) {
    // The destructor does not run when a constructor throws.
    ::close(fd_);
    fd_ = -1;
    throw;
  }
}

void ImageReader::Open() {
  struct stat st;
  if (::fstat(fd_, &st) != 0) Fail(ErrnoMessage("cannot stat"));
  if (S_ISDIR(st.st_mode)) Fail("is a directory, not an ibdbg image");
  seekable_ = S_ISREG(st.st_mode);
  size_ = static_cast<uint64_t>(st.st_size);

  FileHeader fh{};
  size_t got = ReadFully(&fh, sizeof fh);
  if (got == 0) Fail("empty file, not an ibdbg image");
  if (std::memcmp(fh.magic, kMagic, std::min(got, sizeof kMagic)) != 0)
    Fail("not an ibdbg image (bad magic)");
  if (got < sizeof fh) Fail("truncated at offset 0 (file header incomplete)");
  if (fh.format_version > kFormatVersion)
    Fail("image format version " + std::to_string(fh.format_version) +
         " is newer than this ibdbg supports (" + std::to_string(kFormatVersion) + ")");
  if (fh.format_version == 0) Fail("invalid image format version 0");
  if (fh.flags != 0) Fail("unsupported image flags " + std::to_string(fh.flags));
  version_ = fh.format_version;
  dctx_ = std::make_unique<Dctx>();
  if (!dctx_->ctx) Fail("out of memory creating a zstd context");
}

ImageReader::~ImageReader() {
  if (fd_ >= 0) ::close(fd_);
}

void ImageReader::Fail(const std::string& what) const { throw ImageError(path_ + ": " + what); }

void ImageReader::Truncated() const {
  Fail("truncated at offset " + std::to_string(cur_offset_) + " (record " +
       std::to_string(index_ - 1) + " incomplete)");
}

void ImageReader::Corrupted(const char* why) const {
  Fail("corrupted record " + std::to_string(index_ - 1) + " at offset " +
       std::to_string(cur_offset_) + " (" + why + ")");
}

size_t ImageReader::ReadFully(void* buf, size_t len) {
  size_t got = 0;
  while (got < len) {
    ssize_t r = ::read(fd_, static_cast<char*>(buf) + got, len - got);
    if (r < 0) {
      if (errno == EINTR) continue;
      Fail(ErrnoMessage("read error at offset " + std::to_string(offset_ + got)));
    }
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  offset_ += got;
  return got;
}

bool ImageReader::NextHeader(RecordHeader& out) {
  if (done_) return false;
  if (pending_) SkipPayload();
  cur_offset_ = offset_;
  ++index_;
  RecordHeader h{};
  size_t got = ReadFully(&h, sizeof h);
  if (got == 0) Fail("image has no end record (truncated?)");
  if (got < sizeof h) Truncated();
  if (HeaderHash(h) != h.header_hash) Corrupted("header checksum mismatch");
  if (h.stored_len > kMaxRecordLen || h.raw_len > kMaxRecordLen)
    Corrupted("record length out of range");
  if (h.flags & ~kKnownRecordFlags) Corrupted("unknown record flags");
  if (!(h.flags & kRecordFlagZstd) && h.stored_len != h.raw_len)
    Corrupted("raw record length mismatch");
  if (seekable_ && h.stored_len > size_ - offset_) Truncated();
  if (index_ == 1 && h.type != static_cast<uint32_t>(RecordType::Header))
    Fail("first record is not a header record (type " + std::to_string(h.type) + ")");

  if (h.type == static_cast<uint32_t>(RecordType::End)) {
    uint64_t before = index_ - 1;
    if (h.stored_len != 0) Corrupted("end record has a payload");
    if (h.arg != before)
      Fail("end record says " + std::to_string(h.arg) + " records but " +
           std::to_string(before) + " were found");
    uint8_t extra;
    if (ReadFully(&extra, 1) != 0)
      Fail("unexpected data after end record at offset " + std::to_string(offset_ - 1));
    done_ = true;
    return false;
  }
  cur_ = h;
  pending_ = true;
  out = h;
  return true;
}

void ImageReader::SkipPayload() {
  if (!pending_) Fail("SkipPayload() without a pending record");
  pending_ = false;
  uint64_t n = cur_.stored_len;
  if (n == 0) return;
  if (seekable_) {
    // NextHeader already checked the payload fits in the file.
    if (::lseek(fd_, static_cast<off_t>(n), SEEK_CUR) < 0)
      Fail(ErrnoMessage("seek error at offset " + std::to_string(offset_)));
    offset_ += n;
    return;
  }
  uint8_t buf[65536];
  while (n > 0) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(n, sizeof buf));
    if (ReadFully(buf, want) != want) Truncated();
    n -= want;
  }
}

void ImageReader::ReadPayload(std::vector<uint8_t>& out) {
  if (!pending_) Fail("ReadPayload() without a pending record");
  pending_ = false;
  const RecordHeader& h = cur_;
  const bool zstd = h.flags & kRecordFlagZstd;
  std::vector<uint8_t>& stored = zstd ? scratch_ : out;
  stored.resize(h.stored_len);
  if (ReadFully(stored.data(), stored.size()) != stored.size()) Truncated();
  if (XXH3_64bits(stored.data(), stored.size()) != h.payload_hash)
    Corrupted("checksum mismatch");
  if (!zstd) return;

  unsigned long long content = ZSTD_getFrameContentSize(stored.data(), stored.size());
  if (content != h.raw_len) Corrupted("compressed size mismatch");
  size_t frame = ZSTD_findFrameCompressedSize(stored.data(), stored.size());
  if (ZSTD_isError(frame) || frame != stored.size()) Corrupted("bad compressed frame");
  out.resize(h.raw_len);
  size_t n = ZSTD_decompressDCtx(dctx_->ctx, out.data(), out.size(), stored.data(),
                                 stored.size());
  if (ZSTD_isError(n) || n != h.raw_len) Corrupted("decompression failed");
}

bool ImageReader::Next(Record& out) {
  RecordHeader h;
  while (NextHeader(h)) {
    if (!IsKnownRecordType(h.type)) {
      SkipPayload();
      continue;
    }
    out.type = static_cast<RecordType>(h.type);
    out.arg = h.arg;
    out.offset = cur_offset_;
    ReadPayload(out.data);
    return true;
  }
  return false;
}

void VerifyImageFile(const std::string& path) {
  ImageReader r(path);
  RecordHeader h;
  std::vector<uint8_t> buf;
  while (r.NextHeader(h)) r.ReadPayload(buf);
}

}  // namespace ibdbg::image
