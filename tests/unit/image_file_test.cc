#include "ibdbg/image_file.h"

#include <gtest/gtest.h>
#include <xxhash.h>

#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <tuple>

#include "test_util.h"

namespace ibdbg::image {
namespace {

using test::ReadFile;
using test::TempDir;
using test::WriteFile;

constexpr std::string_view kHeaderJson = R"({"pid":1234,"arch":"x86_64"})";

std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; i += 8) {
    uint64_t x = rng();
    std::memcpy(v.data() + i, &x, std::min<size_t>(8, n - i));
  }
  return v;
}

std::vector<uint8_t> TextBytes(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>("hello, image world\n"[i % 19]);
  return v;
}

struct Stats {
  uint64_t bytes = 0, raw = 0, records = 0;
};

std::string WriteImage(const std::string& path, WriterOptions opts,
                       const std::function<void(ImageWriter&)>& fill, Stats* stats = nullptr) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  EXPECT_GE(fd, 0);
  {
    ImageWriter w(fd, opts);
    w.AddRecord(RecordType::Header, 0, kHeaderJson);
    fill(w);
    w.Finish();
    if (stats) *stats = {w.bytes_written(), w.raw_bytes(), w.records_written()};
  }
  close(fd);
  return path;
}

std::string ErrorOf(const std::string& path) {
  try {
    VerifyImageFile(path);
  } catch (const ImageError& e) {
    return e.what();
  }
  return "";
}

std::vector<uint8_t> Bytes(std::string_view s) { return {s.begin(), s.end()}; }

// Builds a record with valid checksums around arbitrary (possibly bogus)
// fields, to reach the validation that sits behind the checksums.
std::vector<uint8_t> RawRecord(uint32_t type, uint32_t flags, uint64_t arg,
                               const std::vector<uint8_t>& stored, uint64_t raw_len,
                               uint64_t stored_len_override = ~0ull) {
  RecordHeader h{};
  h.type = type;
  h.flags = flags;
  h.arg = arg;
  h.stored_len = stored_len_override != ~0ull ? stored_len_override : stored.size();
  h.raw_len = raw_len;
  h.payload_hash = XXH3_64bits(stored.data(), stored.size());
  h.header_hash = XXH3_64bits(&h, kHashedHeaderBytes);
  std::vector<uint8_t> out(sizeof h);
  std::memcpy(out.data(), &h, sizeof h);
  out.insert(out.end(), stored.begin(), stored.end());
  return out;
}

std::vector<uint8_t> FileHeaderBytes(uint32_t version = kFormatVersion) {
  FileHeader fh{};
  std::memcpy(fh.magic, kMagic, sizeof kMagic);
  fh.format_version = version;
  std::vector<uint8_t> out(sizeof fh);
  std::memcpy(out.data(), &fh, sizeof fh);
  return out;
}

void Append(std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
}

std::vector<uint8_t> HeaderRecord() {
  return RawRecord(1, 0, 0, Bytes(kHeaderJson), kHeaderJson.size());
}

TEST(ImageFile, RoundTripRecords) {
  TempDir dir;
  std::vector<uint8_t> proc = RandomBytes(333, 1);
  std::vector<uint8_t> big_text = TextBytes(100000);
  Stats stats;
  auto path = WriteImage(dir / "img", {}, [&](ImageWriter& w) {
    w.AddRecord(RecordType::Process, 42, proc.data(), proc.size());
    w.AddRecord(RecordType::Thread, 7, nullptr, 0);
    w.AddRecord(RecordType::Json, 0, big_text.data(), big_text.size());
    w.AddRecord(RecordType::Fd, 3, big_text.data(), big_text.size(), /*compress=*/false);
  }, &stats);
  EXPECT_EQ(stats.records, 5u);

  ImageReader r(path);
  EXPECT_EQ(r.format_version(), 1u);
  Record rec;
  ASSERT_TRUE(r.Next(rec));
  EXPECT_EQ(rec.type, RecordType::Header);
  EXPECT_EQ(rec.offset, sizeof(FileHeader));
  EXPECT_EQ(std::string(rec.data.begin(), rec.data.end()), kHeaderJson);
  ASSERT_TRUE(r.Next(rec));
  EXPECT_EQ(rec.type, RecordType::Process);
  EXPECT_EQ(rec.arg, 42u);
  EXPECT_EQ(rec.data, proc);
  ASSERT_TRUE(r.Next(rec));
  EXPECT_EQ(rec.type, RecordType::Thread);
  EXPECT_EQ(rec.arg, 7u);
  EXPECT_TRUE(rec.data.empty());
  ASSERT_TRUE(r.Next(rec));
  EXPECT_EQ(rec.type, RecordType::Json);
  EXPECT_EQ(rec.data, big_text);
  ASSERT_TRUE(r.Next(rec));
  EXPECT_EQ(rec.type, RecordType::Fd);
  EXPECT_EQ(rec.data, big_text);
  EXPECT_FALSE(r.Next(rec));
  EXPECT_FALSE(r.Next(rec));  // stays at the end
}

TEST(ImageFile, CompressionFlagsAndSizes) {
  TempDir dir;
  std::vector<uint8_t> text = TextBytes(50000);
  std::vector<uint8_t> noise = RandomBytes(50000, 2);
  Stats stats;
  auto path = WriteImage(dir / "img", {}, [&](ImageWriter& w) {
    w.AddRecord(RecordType::Json, 0, text.data(), text.size());
    w.AddRecord(RecordType::Json, 1, noise.data(), noise.size());
    w.AddRecord(RecordType::Json, 2, text.data(), text.size(), false);
  }, &stats);
  EXPECT_EQ(stats.raw, kHeaderJson.size() + 150000);
  EXPECT_EQ(ReadFile(path).size(), stats.bytes);

  ImageReader r(path);
  RecordHeader h;
  ASSERT_TRUE(r.NextHeader(h));  // header
  ASSERT_TRUE(r.NextHeader(h));
  EXPECT_TRUE(h.flags & kRecordFlagZstd);
  EXPECT_LT(h.stored_len, text.size() / 10);
  ASSERT_TRUE(r.NextHeader(h));
  EXPECT_FALSE(h.flags & kRecordFlagZstd);
  EXPECT_EQ(h.stored_len, noise.size());
  ASSERT_TRUE(r.NextHeader(h));
  EXPECT_FALSE(h.flags & kRecordFlagZstd);
  EXPECT_FALSE(r.NextHeader(h));
}

class PagesRoundTrip : public ::testing::TestWithParam<std::tuple<int, int, size_t>> {};

TEST_P(PagesRoundTrip, Works) {
  auto [threads, level, chunk] = GetParam();
  TempDir dir;
  // Alternating compressible and random stretches so both storage modes occur.
  constexpr size_t kRegion = 3 << 20;
  std::vector<uint8_t> region(kRegion);
  for (size_t off = 0; off < kRegion; off += 256 * 1024) {
    auto part = (off / (256 * 1024)) % 2 ? RandomBytes(256 * 1024, static_cast<uint32_t>(off))
                                          : TextBytes(256 * 1024);
    std::memcpy(region.data() + off, part.data(), part.size());
  }
  std::vector<uint8_t> zeros(8 * kPageSize, 0);
  const uint64_t base = 0x7f0000000000, zbase = 0x400000;

  WriterOptions opts;
  opts.threads = threads;
  opts.zstd_level = level;
  opts.chunk = chunk;
  Stats stats;
  auto path = WriteImage(dir / "img", opts, [&](ImageWriter& w) {
    w.AddPages(base, region.data(), region.size());
    w.AddRecord(RecordType::Vma, 9, "between");
    w.AddPages(zbase, zeros.data(), zeros.size());
  }, &stats);
  EXPECT_EQ(stats.raw, kHeaderJson.size() + region.size() + 7 + zeros.size());
  EXPECT_EQ(stats.bytes, ReadFile(path).size());

  ImageReader r(path);
  RecordHeader h;
  std::vector<uint8_t> payload, got_region, got_zeros;
  uint64_t expect_addr = base;
  size_t compressed = 0, stored_raw = 0, vma_seen = 0;
  while (r.NextHeader(h)) {
    if (h.type == static_cast<uint32_t>(RecordType::Pages)) {
      EXPECT_LE(h.raw_len, std::max<size_t>(chunk / kPageSize * kPageSize, kPageSize));
      (h.flags & kRecordFlagZstd ? compressed : stored_raw)++;
      if (vma_seen) {
        EXPECT_EQ(h.arg, zbase + got_zeros.size());
        r.ReadPayload(payload);
        got_zeros.insert(got_zeros.end(), payload.begin(), payload.end());
      } else {
        EXPECT_EQ(h.arg, expect_addr);  // submission order is preserved
        r.ReadPayload(payload);
        got_region.insert(got_region.end(), payload.begin(), payload.end());
        expect_addr += payload.size();
      }
    } else if (h.type == static_cast<uint32_t>(RecordType::Vma)) {
      ++vma_seen;
      r.SkipPayload();
    }
  }
  EXPECT_EQ(vma_seen, 1u);
  EXPECT_TRUE(got_region == region);
  EXPECT_TRUE(got_zeros == zeros);
  if (level > 0) {
    EXPECT_GT(compressed, 0u);
    if (chunk <= 256 * 1024) {
      EXPECT_GT(stored_raw, 0u);
    }
  } else {
    EXPECT_EQ(compressed, 0u);
  }
  EXPECT_NO_THROW(VerifyImageFile(path));
}

INSTANTIATE_TEST_SUITE_P(Variants, PagesRoundTrip,
                         ::testing::Values(std::make_tuple(1, 3, size_t{1} << 20),
                                           std::make_tuple(2, 3, size_t{64} << 10),
                                           std::make_tuple(4, 1, size_t{4096}),
                                           std::make_tuple(0, 3, size_t{100000}),
                                           std::make_tuple(2, 0, size_t{64} << 10),
                                           std::make_tuple(2, -5, size_t{64} << 10)));

TEST(ImageFile, AddPagesCopiesCallerBuffer) {
  TempDir dir;
  std::vector<uint8_t> buf = TextBytes(16 * kPageSize);
  const std::vector<uint8_t> original = buf;
  WriterOptions opts;
  opts.threads = 2;
  opts.chunk = kPageSize;
  auto path = WriteImage(dir / "img", opts, [&](ImageWriter& w) {
    w.AddPages(0x1000, buf.data(), buf.size());
    std::fill(buf.begin(), buf.end(), 0xAB);
    w.AddPages(0x100000, buf.data(), buf.size());
  });
  ImageReader r(path);
  Record rec;
  std::vector<uint8_t> first;
  while (r.Next(rec))
    if (rec.type == RecordType::Pages && rec.arg < 0x100000)
      first.insert(first.end(), rec.data.begin(), rec.data.end());
  EXPECT_TRUE(first == original);
}

TEST(ImageFile, WriterRejectsMisuse) {
  TempDir dir;
  int fd = open((dir / "img").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  {
    ImageWriter w(fd, {});
    std::vector<uint8_t> page(kPageSize);
    EXPECT_THROW(w.AddPages(0x1000, page.data(), page.size()), ImageError);  // before header
    EXPECT_THROW(w.AddRecord(RecordType::Json, 0, "x"), ImageError);
    w.AddRecord(RecordType::Header, 0, kHeaderJson);
    EXPECT_THROW(w.AddPages(0x1001, page.data(), page.size()), ImageError);
    EXPECT_THROW(w.AddPages(0x1000, page.data(), 100), ImageError);
    EXPECT_THROW(w.AddRecord(RecordType::End, 0, "x"), ImageError);
    w.Finish();
    w.Finish();
    EXPECT_THROW(w.AddRecord(RecordType::Json, 0, "x"), ImageError);
  }
  close(fd);
  EXPECT_EQ(ErrorOf(dir / "img"), "");
}

TEST(ImageFile, WriteErrorsThrowWithStrerror) {
  int fd = open("/dev/full", O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  try {
    ImageWriter w(fd, {});
    FAIL() << "expected an error";
  } catch (const ImageError& e) {
    EXPECT_NE(std::string(e.what()).find("No space left on device"), std::string::npos)
        << e.what();
  }
  close(fd);
}

TEST(ImageFile, WriteErrorMidStreamIsSticky) {
  // A full non-blocking pipe fails with EAGAIN once its buffer is full.
  int p[2];
  ASSERT_EQ(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
  std::vector<uint8_t> noise = RandomBytes(1 << 20, 3);
  {
    WriterOptions opts;
    opts.threads = 2;
    opts.chunk = 64 << 10;
    ImageWriter w(p[1], opts);
    w.AddRecord(RecordType::Header, 0, kHeaderJson);
    bool threw = false;
    try {
      for (int i = 0; i < 8; ++i) w.AddPages(0x10000000 + i * noise.size(), noise.data(), noise.size());
      w.Finish();
    } catch (const ImageError& e) {
      threw = true;
      EXPECT_NE(std::string(e.what()).find("writing image"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(threw);
    EXPECT_THROW(w.AddRecord(RecordType::Json, 0, "x"), ImageError);
    EXPECT_THROW(w.Finish(), ImageError);
  }  // destructor joins workers without hanging or throwing
  close(p[0]);
  close(p[1]);
}

TEST(ImageFile, DestroyedWithoutFinishHasNoEnd) {
  TempDir dir;
  std::string path = dir / "img";
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  {
    ImageWriter w(fd, {});
    w.AddRecord(RecordType::Header, 0, kHeaderJson);
    std::vector<uint8_t> pages = TextBytes(64 * kPageSize);
    w.AddPages(0, pages.data(), pages.size());
  }
  close(fd);
  std::string err = ErrorOf(path);
  EXPECT_NE(err.find("no end record"), std::string::npos) << err;
}

// A small image with every record shape, for exhaustive damage tests.
std::string SmallImage(const TempDir& dir) {
  WriterOptions opts;
  opts.chunk = kPageSize;
  opts.threads = 2;
  std::vector<uint8_t> text = TextBytes(3 * kPageSize);
  std::vector<uint8_t> noise = RandomBytes(2 * kPageSize, 4);
  return WriteImage(dir / "small", opts, [&](ImageWriter& w) {
    w.AddRecord(RecordType::Process, 0, "process-blob");
    w.AddRecord(RecordType::Thread, 1, nullptr, 0);
    w.AddPages(0x10000, text.data(), text.size());
    w.AddPages(0x20000, noise.data(), noise.size());
    w.AddRecord(RecordType::Json, 0, R"({"k":"v"})");
  });
}

TEST(ImageFile, TruncationAtEveryOffsetIsAnError) {
  TempDir dir;
  std::string path = SmallImage(dir);
  const size_t size = ReadFile(path).size();
  ASSERT_EQ(ErrorOf(path), "");
  for (size_t len = size; len-- > 0;) {
    ASSERT_EQ(truncate(path.c_str(), static_cast<off_t>(len)), 0);
    std::string err = ErrorOf(path);
    ASSERT_NE(err, "") << "accepted an image cut at " << len;
    ASSERT_EQ(err.find('\n'), std::string::npos);
    ASSERT_EQ(err.rfind(path + ": ", 0), 0u) << err;
  }
}

TEST(ImageFile, TruncationMessages) {
  TempDir dir;
  std::string path = SmallImage(dir);
  std::vector<uint8_t> full = ReadFile(path);
  auto cut = [&](size_t len) {
    WriteFile(path, full.data(), len);
    return ErrorOf(path);
  };
  EXPECT_EQ(cut(0), path + ": empty file, not an ibdbg image");
  EXPECT_EQ(cut(10), path + ": truncated at offset 0 (file header incomplete)");
  EXPECT_EQ(cut(16), path + ": image has no end record (truncated?)");
  EXPECT_EQ(cut(16 + 20), path + ": truncated at offset 16 (record 0 incomplete)");
  EXPECT_EQ(cut(16 + 48 + 3), path + ": truncated at offset 16 (record 0 incomplete)");
  EXPECT_EQ(cut(full.size() - 48), path + ": image has no end record (truncated?)");
}

TEST(ImageFile, EveryFlippedByteIsDetected) {
  TempDir dir;
  std::string path = SmallImage(dir);
  std::vector<uint8_t> data = ReadFile(path);
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  for (size_t i = 0; i < data.size(); ++i) {
    uint8_t b = data[i] ^ 0x20;
    ASSERT_EQ(pwrite(fd, &b, 1, static_cast<off_t>(i)), 1);
    std::string err = ErrorOf(path);
    ASSERT_NE(err, "") << "flip at " << i << " undetected";
    ASSERT_EQ(pwrite(fd, &data[i], 1, static_cast<off_t>(i)), 1);
  }
  close(fd);
  EXPECT_EQ(ErrorOf(path), "");
}

TEST(ImageFile, ChecksumMessages) {
  TempDir dir;
  std::string path = SmallImage(dir);
  std::vector<uint8_t> data = ReadFile(path);
  const size_t rec1 = 16 + 48 + kHeaderJson.size();
  std::vector<uint8_t> bad = data;
  bad[rec1 + 8] ^= 1;  // arg of record 1
  WriteFile(path, bad);
  EXPECT_EQ(ErrorOf(path), path + ": corrupted record 1 at offset " + std::to_string(rec1) +
                               " (header checksum mismatch)");
  bad = data;
  bad[rec1 + 48 + 2] ^= 1;  // payload of record 1
  WriteFile(path, bad);
  EXPECT_EQ(ErrorOf(path), path + ": corrupted record 1 at offset " + std::to_string(rec1) +
                               " (checksum mismatch)");
  // SkipPayload does not verify, so a walk that skips still succeeds.
  ImageReader r(path);
  RecordHeader h;
  size_t n = 0;
  while (r.NextHeader(h)) ++n;
  EXPECT_EQ(n, 9u);
}

TEST(ImageFile, BadMagicVersionAndFiles) {
  TempDir dir;
  WriteFile(dir / "magic", Bytes("NOTANIMAGE-at-all-really"));
  EXPECT_EQ(ErrorOf(dir / "magic"), dir / "magic" + ": not an ibdbg image (bad magic)");
  WriteFile(dir / "short", Bytes("ELF"));
  EXPECT_EQ(ErrorOf(dir / "short"), dir / "short" + ": not an ibdbg image (bad magic)");

  std::vector<uint8_t> v7 = FileHeaderBytes(7);
  Append(v7, HeaderRecord());
  WriteFile(dir / "v7", v7);
  EXPECT_EQ(ErrorOf(dir / "v7"),
            dir / "v7" + ": image format version 7 is newer than this ibdbg supports (1)");

  WriteFile(dir / "empty", nullptr, 0);
  EXPECT_EQ(ErrorOf(dir / "empty"), dir / "empty" + ": empty file, not an ibdbg image");
  EXPECT_EQ(ErrorOf(dir / "missing"), dir / "missing" + ": cannot open: No such file or directory");
  EXPECT_EQ(ErrorOf(dir.path()), dir.path() + ": is a directory, not an ibdbg image");
}

TEST(ImageFile, UnknownRecordTypesAreSkipped) {
  TempDir dir;
  std::vector<uint8_t> blob = TextBytes(5000);
  auto path = WriteImage(dir / "img", {}, [&](ImageWriter& w) {
    w.AddRecord(static_cast<RecordType>(99), 5, blob.data(), blob.size());
    w.AddRecord(RecordType::Json, 6, "{}");
  });
  EXPECT_EQ(ErrorOf(path), "");
  ImageReader r(path);
  Record rec;
  ASSERT_TRUE(r.Next(rec));
  EXPECT_EQ(rec.type, RecordType::Header);
  ASSERT_TRUE(r.Next(rec));
  EXPECT_EQ(rec.type, RecordType::Json);
  EXPECT_EQ(rec.arg, 6u);
  EXPECT_FALSE(r.Next(rec));
  EXPECT_STREQ(RecordTypeName(99), "unknown");
  EXPECT_STREQ(RecordTypeName(5), "pages");
}

TEST(ImageFile, StructuralErrors) {
  TempDir dir;
  auto image = [&](std::initializer_list<std::vector<uint8_t>> records) {
    std::vector<uint8_t> f = FileHeaderBytes();
    for (const auto& r : records) Append(f, r);
    WriteFile(dir / "img", f);
    return ErrorOf(dir / "img");
  };
  const uint32_t kEnd = static_cast<uint32_t>(RecordType::End);
  auto end = [&](uint64_t n) { return RawRecord(kEnd, 0, n, {}, 0); };

  EXPECT_EQ(image({HeaderRecord(), end(1)}), "");
  EXPECT_NE(image({HeaderRecord(), end(2)}).find("end record says 2 records but 1 were found"),
            std::string::npos);
  EXPECT_NE(image({HeaderRecord(), end(1), Bytes("x")}).find("unexpected data after end record"),
            std::string::npos);
  EXPECT_NE(image({HeaderRecord(), end(1), end(2)}).find("unexpected data after end record"),
            std::string::npos);
  EXPECT_NE(image({RawRecord(8, 0, 0, Bytes("{}"), 2), end(1)}).find("first record"),
            std::string::npos);
  EXPECT_NE(image({end(0)}).find("first record"), std::string::npos);

  // Lengths beyond the limit are rejected before anything is allocated.
  EXPECT_NE(image({HeaderRecord(), RawRecord(5, 0, 0, {}, 1ull << 40, 1ull << 40), end(2)})
                .find("length out of range"),
            std::string::npos);
  EXPECT_NE(image({HeaderRecord(), RawRecord(5, 1, 0, Bytes("abc"), ~0ull), end(2)})
                .find("length out of range"),
            std::string::npos);
  // A length that fits the limit but not the file is truncation.
  EXPECT_NE(image({HeaderRecord(), RawRecord(5, 0, 0, {}, 1 << 29, 1 << 29), end(2)})
                .find("truncated at offset"),
            std::string::npos);
  EXPECT_NE(image({HeaderRecord(), RawRecord(5, 0, 0, Bytes("abcd"), 5), end(2)})
                .find("raw record length mismatch"),
            std::string::npos);
  EXPECT_NE(image({HeaderRecord(), RawRecord(5, 4, 0, Bytes("abcd"), 4), end(2)})
                .find("unknown record flags"),
            std::string::npos);
  EXPECT_NE(image({HeaderRecord(), RawRecord(5, 1, 0, Bytes("not zstd"), 8), end(2)})
                .find("corrupted record 1"),
            std::string::npos);

  // A valid zstd frame whose content size disagrees with raw_len.
  std::vector<uint8_t> frame;
  {
    std::string path = dir / "tmp";
    std::vector<uint8_t> text = TextBytes(10000);
    WriteImage(path, {}, [&](ImageWriter& w) {
      w.AddRecord(RecordType::Json, 0, text.data(), text.size());
    });
    ImageReader r(path);
    RecordHeader h;
    r.NextHeader(h);
    r.NextHeader(h);
    ASSERT_TRUE(h.flags & kRecordFlagZstd);
    std::vector<uint8_t> all = ReadFile(path);
    size_t off = r.current_offset() + sizeof(RecordHeader);
    frame.assign(all.begin() + off, all.begin() + off + h.stored_len);
  }
  EXPECT_NE(image({HeaderRecord(), RawRecord(8, 1, 0, frame, 9999), end(2)})
                .find("compressed size mismatch"),
            std::string::npos);
  EXPECT_EQ(image({HeaderRecord(), RawRecord(8, 1, 0, frame, 10000), end(2)}), "");
  // Trailing garbage inside a record's frame.
  std::vector<uint8_t> padded = frame;
  padded.push_back(0);
  EXPECT_NE(image({HeaderRecord(), RawRecord(8, 1, 0, padded, 10000), end(2)})
                .find("bad compressed frame"),
            std::string::npos);
}

TEST(ImageFile, RandomDamageIsAlwaysAnError) {
  TempDir dir;
  std::string path = SmallImage(dir);
  const std::vector<uint8_t> good = ReadFile(path);
  std::mt19937 rng(12345);
  for (int iter = 0; iter < 1500; ++iter) {
    std::vector<uint8_t> bad = good;
    int edits = 1 + static_cast<int>(rng() % 8);
    for (int i = 0; i < edits; ++i) bad[rng() % bad.size()] = static_cast<uint8_t>(rng());
    if (rng() % 4 == 0) bad.resize(rng() % bad.size());
    if (rng() % 8 == 0) bad.push_back(static_cast<uint8_t>(rng()));
    WriteFile(path, bad);
    std::string err = ErrorOf(path);
    if (bad != good) {
      ASSERT_NE(err, "") << "iteration " << iter;
    }
  }
}

// Records with valid checksums but arbitrary fields reach the semantic checks;
// none of them may crash or allocate absurdly.
TEST(ImageFile, ForgedRecordsNeverCrash) {
  TempDir dir;
  std::mt19937_64 rng(777);
  const uint64_t lens[] = {0, 1, 7, 4096, kMaxRecordLen, kMaxRecordLen + 1, ~0ull};
  for (int iter = 0; iter < 2000; ++iter) {
    std::vector<uint8_t> f = FileHeaderBytes();
    Append(f, HeaderRecord());
    int n = 1 + static_cast<int>(rng() % 3);
    for (int i = 0; i < n; ++i) {
      uint32_t types[] = {5, 8, 0x454E44, static_cast<uint32_t>(rng())};
      std::vector<uint8_t> payload = RandomBytes(rng() % 64, static_cast<uint32_t>(rng()));
      if (rng() % 2) payload = {0x28, 0xB5, 0x2F, 0xFD, 0x20, 0x05, 0x29, 0x00, 0x00, 'h', 'e', 'l', 'l', 'o'};
      uint64_t raw = rng() % 2 ? payload.size() : lens[rng() % 7];
      uint64_t stored = rng() % 4 ? ~0ull : lens[rng() % 7];
      Append(f, RawRecord(types[rng() % 4], static_cast<uint32_t>(rng() % 3), rng() % 4,
                          payload, raw, stored));
    }
    WriteFile(dir / "img", f);
    ErrorOf(dir / "img");
  }
}

}  // namespace
}  // namespace ibdbg::image
