#pragma once

// The per-process image container: a 16-byte file header followed by a
// stream of checksummed, optionally zstd-compressed records. See
// RecordHeader for the on-disk record layout.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ibdbg/error.h"

namespace ibdbg::image {

inline constexpr char kMagic[8] = {'I', 'B', 'D', 'B', 'G', 'I', 'M', 'G'};
inline constexpr uint32_t kFormatVersion = 1;
inline constexpr uint32_t kRecordFlagZstd = 1u << 0;
inline constexpr uint32_t kKnownRecordFlags = kRecordFlagZstd;
// Anything larger is treated as corruption so a damaged length field can
// never turn into a giant allocation.
inline constexpr uint64_t kMaxRecordLen = 1ull << 30;
inline constexpr uint64_t kPageSize = 4096;

enum class RecordType : uint32_t {
  Header = 1,   // JSON text
  Process = 2,  // binary, opaque to this library
  Thread = 3,
  Vma = 4,
  Pages = 5,  // arg = start address
  Fd = 6,
  Signals = 7,
  Json = 8,  // free-form JSON
  Ipc = 9,   // ibdbg_ipc_object + its bytes
  Verbs = 10,  // ibdbg_verbs_hdr + ibdbg_verbs_obj[] (capture/verbs)
  // An incremental image (Header "parent"): arg = region start; payload =
  // uint64 [start, end) pairs, the pages of the region that are as in the
  // parent image (see image_chain.h).
  Inherit = 11,
  End = 0x454E44,  // arg = number of records before it
};

bool IsKnownRecordType(uint32_t type);
// Lower-case name ("pages"), or "unknown" for types this build doesn't know.
const char* RecordTypeName(uint32_t type);

struct FileHeader {
  char magic[8];
  uint32_t format_version;
  uint32_t flags;
};
static_assert(sizeof(FileHeader) == 16);

struct RecordHeader {
  uint32_t type;
  uint32_t flags;  // kRecordFlagZstd: payload is exactly one zstd frame
  uint64_t arg;
  uint64_t stored_len;    // bytes following this header
  uint64_t raw_len;       // bytes after decompression
  uint64_t payload_hash;  // XXH3_64bits of the stored bytes
  uint64_t header_hash;   // XXH3_64bits of the 40 bytes above
};
static_assert(sizeof(RecordHeader) == 48);
inline constexpr size_t kHashedHeaderBytes = 40;

struct WriterOptions {
  int zstd_level = 3;    // <= 0: store everything raw
  int threads = 0;       // compression workers; 0 = number of cores
  size_t chunk = 1 << 20;  // bytes per Pages record (rounded down to pages)
  // Finish() fdatasyncs; off for scratch files read back at once (a replay's
  // flattened incremental image), which need not reach the disk.
  bool sync = true;
};

// Writes an image to an fd it does not own. Not thread-safe: one thread feeds
// it. Records reach the fd in the order they were added. Any failure throws
// ImageError, after which the writer refuses further use.
//
// A writer that is destroyed without Finish() leaves an image with no End
// record, which readers reject; that is the intended signal for "incomplete".
class ImageWriter {
 public:
  ImageWriter(int fd, WriterOptions opts = {});
  ~ImageWriter();
  ImageWriter(const ImageWriter&) = delete;
  ImageWriter& operator=(const ImageWriter&) = delete;

  // The first record must be RecordType::Header. The data is copied.
  void AddRecord(RecordType type, uint64_t arg, const void* data, size_t len,
                 bool compress = true);
  void AddRecord(RecordType type, uint64_t arg, std::string_view text,
                 bool compress = true) {
    AddRecord(type, arg, text.data(), text.size(), compress);
  }
  // addr and len must be multiples of kPageSize. Blocks while the pipeline is
  // full; the caller's buffer may be reused once this returns.
  void AddPages(uint64_t addr, const void* data, size_t len);
  // Drains the pipeline, writes End and fdatasyncs. A second call is a no-op.
  void Finish();

  // Bytes and records that have reached the fd so far (headers included);
  // exact once Finish() has returned.
  uint64_t bytes_written() const;
  uint64_t records_written() const;
  // Uncompressed payload bytes accepted so far.
  uint64_t raw_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct Record {
  RecordType type{};
  uint64_t arg = 0;
  std::vector<uint8_t> data;  // decompressed payload
  uint64_t offset = 0;        // file offset of the record header
};

// Sequential reader. Errors throw ImageError with one line naming the path.
// Record numbers in messages are 0-based (the first record is record 0).
class ImageReader {
 public:
  explicit ImageReader(const std::string& path);
  ~ImageReader();
  ImageReader(const ImageReader&) = delete;
  ImageReader& operator=(const ImageReader&) = delete;

  uint32_t format_version() const { return version_; }
  const std::string& path() const { return path_; }

  // Next known record with its payload decompressed and verified; records of
  // unknown types are skipped. Returns false once End has been validated.
  bool Next(Record& out);

  // Low-level walk: returns every record header (unknown types included),
  // validated except for its payload; false once End has been validated.
  // Exactly one of ReadPayload/SkipPayload may follow; if neither does, the
  // next NextHeader skips the payload.
  bool NextHeader(RecordHeader& out);
  void ReadPayload(std::vector<uint8_t>& out);  // verifies and decompresses
  void SkipPayload();                            // no verification
  uint64_t current_offset() const { return cur_offset_; }  // of last header
  uint64_t current_index() const { return index_ - 1; }

 private:
  void Open();
  [[noreturn]] void Fail(const std::string& what) const;
  [[noreturn]] void Truncated() const;
  [[noreturn]] void Corrupted(const char* why) const;
  size_t ReadFully(void* buf, size_t len);

  std::string path_;
  int fd_ = -1;
  bool seekable_ = false;
  uint64_t size_ = 0;  // valid when seekable_
  uint64_t offset_ = 0;
  uint32_t version_ = 0;
  uint64_t index_ = 0;  // records seen, including the current one
  uint64_t cur_offset_ = 0;
  RecordHeader cur_{};
  bool pending_ = false;
  bool done_ = false;
  std::vector<uint8_t> scratch_;
  struct Dctx;
  std::unique_ptr<Dctx> dctx_;
};

// Reads and checks every record (all payloads, unknown types included);
// throws ImageError on the first problem.
void VerifyImageFile(const std::string& path);

}  // namespace ibdbg::image
