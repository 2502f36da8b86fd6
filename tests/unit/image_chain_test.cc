// Chains of incremental images: which image each page comes from, refusal of
// a missing or changed parent, and the flattened full image.
#include "ibdbg/image_chain.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <map>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace ibdbg::test {
namespace {

using image::kPageSize;
using image::RecordType;

constexpr uint64_t kBase = 0x10000000;
uint64_t P(int n) { return kBase + (uint64_t)n * kPageSize; }

struct Img {
  std::map<int, uint8_t> pages;   // page number -> fill byte
  std::vector<std::pair<int, int>> inherit;  // [first, last) page numbers
  std::string parent, parent_id;
};

void Write(const std::string& path, const Img& img) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  {
    image::WriterOptions wo;
    wo.threads = 1;
    image::ImageWriter w(fd, wo);
    nlohmann::json h = {{"pid", 7}};
    if (!img.parent.empty()) h["parent"] = {{"image", img.parent}, {"id", img.parent_id}};
    w.AddRecord(RecordType::Header, 0, h.dump());
    w.AddRecord(RecordType::Json, 0, nlohmann::json{{"marker", path}}.dump());
    std::vector<uint64_t> inh;
    for (auto [a, b] : img.inherit) inh.insert(inh.end(), {P(a), P(b)});
    if (!inh.empty()) w.AddRecord(RecordType::Inherit, kBase, inh.data(), inh.size() * 8);
    std::vector<uint8_t> page(kPageSize);
    for (auto [n, fill] : img.pages) {
      memset(page.data(), fill, kPageSize);
      w.AddPages(P(n), page.data(), kPageSize);
    }
    w.Finish();
  }
  close(fd);
}

// page address -> fill byte of a (flattened) image, and its markers.
std::map<uint64_t, uint8_t> Pages(const std::string& path, std::string* header = nullptr,
                                  std::vector<std::string>* json = nullptr) {
  std::map<uint64_t, uint8_t> out;
  image::ImageReader r(path);
  image::Record rec;
  while (r.Next(rec)) {
    if (rec.type == RecordType::Header && header) *header = std::string(rec.data.begin(), rec.data.end());
    if (rec.type == RecordType::Json && json) json->push_back(std::string(rec.data.begin(), rec.data.end()));
    if (rec.type == RecordType::Inherit) ADD_FAILURE() << "inherit record in a flattened image";
    if (rec.type != RecordType::Pages) continue;
    for (uint64_t o = 0; o < rec.data.size(); o += kPageSize) out[rec.arg + o] = rec.data[o];
  }
  return out;
}

TEST(ImageChain, RangeArithmetic) {
  image::Ranges a = image::Normalize({{10, 20}, {0, 5}, {5, 8}, {30, 30}});
  ASSERT_EQ(a.size(), 2u);
  EXPECT_EQ(a[0].start, 0u);
  EXPECT_EQ(a[0].end, 8u);
  image::Ranges b = {{4, 12}, {18, 40}};
  image::Ranges i = image::Intersect(a, b);
  ASSERT_EQ(i.size(), 3u);
  EXPECT_EQ(image::RangeBytes(i), 4u + 2u + 2u);
  image::Ranges s = image::Subtract(a, b);
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].start, 0u);
  EXPECT_EQ(s[0].end, 4u);
  EXPECT_EQ(s[1].start, 12u);
  EXPECT_EQ(s[1].end, 18u);
}

TEST(ImageChain, ThreeLevelsResolveAndFlatten) {
  TempDir d;
  mkdir((d / "a").c_str(), 0700);
  mkdir((d / "b").c_str(), 0700);
  mkdir((d / "c").c_str(), 0700);
  // a: full, pages 0..9 = 0xA0+n.
  Img a;
  for (int n = 0; n < 10; n++) a.pages[n] = (uint8_t)(0xA0 + n);
  Write(d / "a/p.img", a);
  // b: page 2 written, page 3 written with zeros (neither stored nor
  // inherited), page 9 dropped; the rest inherited.
  Img b;
  b.pages[2] = 0xB2;
  b.inherit = {{0, 2}, {4, 9}};
  b.parent = "../a/p.img";
  b.parent_id = image::ImageFileId(d / "a/p.img");
  Write(d / "b/p.img", b);
  // c: page 5 written; 0..5 and 6..8 inherited (so 3 stays zero, 2 is b's).
  Img c;
  c.pages[5] = 0xC5;
  c.inherit = {{0, 5}, {6, 8}};
  c.parent = "../b/p.img";
  c.parent_id = image::ImageFileId(d / "b/p.img");
  Write(d / "c/p.img", c);

  auto chain = image::ResolveChain(d / "c/p.img");
  ASSERT_EQ(chain.size(), 3u);
  EXPECT_FALSE(image::ReadParentRef(chain[2]).has_value());
  auto bytes = image::ChainPageBytes(chain);
  ASSERT_EQ(bytes.size(), 3u);
  EXPECT_EQ(bytes[0], 1 * kPageSize);  // 5
  EXPECT_EQ(bytes[1], 1 * kPageSize);  // 2
  EXPECT_EQ(bytes[2], 5 * kPageSize);  // 0, 1, 4, 6, 7

  int fd = open((d / "flat.img").c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  image::FlattenChain(chain, fd);
  close(fd);
  std::string header;
  std::vector<std::string> json;
  auto got = Pages(d / "flat.img", &header, &json);
  std::map<uint64_t, uint8_t> want = {{P(0), 0xA0}, {P(1), 0xA1}, {P(2), 0xB2}, {P(4), 0xA4},
                                      {P(5), 0xC5}, {P(6), 0xA6}, {P(7), 0xA7}};
  EXPECT_EQ(got, want);
  // The child's own records, not the parents'; no parent any more.
  ASSERT_EQ(json.size(), 1u);
  EXPECT_NE(json[0].find("/c/p.img"), std::string::npos) << json[0];
  auto h = nlohmann::json::parse(header);
  EXPECT_FALSE(h.contains("parent"));
  EXPECT_EQ(h.value("flattened", 0), 3);
  EXPECT_FALSE(image::ReadParentRef(d / "flat.img").has_value());
}

TEST(ImageChain, MissingParentIsRefused) {
  TempDir d;
  Img c;
  c.pages[1] = 1;
  c.inherit = {{0, 1}};
  c.parent = "../gone/p.img";
  c.parent_id = "xxh3:0000000000000000";
  Write(d / "c.img", c);
  try {
    image::ResolveChain(d / "c.img");
    FAIL() << "a missing parent was accepted";
  } catch (const ImageError& e) {
    EXPECT_NE(std::string(e.what()).find("gone/p.img"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos) << e.what();
  }
}

TEST(ImageChain, ChangedParentIsRefused) {
  TempDir d;
  Img a;
  a.pages[0] = 1;
  Write(d / "a.img", a);
  Img c;
  c.inherit = {{0, 1}};
  c.parent = "a.img";
  c.parent_id = image::ImageFileId(d / "a.img");
  Write(d / "c.img", c);
  EXPECT_EQ(image::ResolveChain(d / "c.img").size(), 2u);
  // Another valid image in the parent's place.
  a.pages[0] = 2;
  Write(d / "a.img", a);
  try {
    image::ResolveChain(d / "c.img");
    FAIL() << "a changed parent was accepted";
  } catch (const ImageError& e) {
    EXPECT_NE(std::string(e.what()).find("has changed"), std::string::npos) << e.what();
  }
  // A damaged one.
  auto bytes = ReadFile(d / "a.img");
  bytes[bytes.size() / 2] ^= 0xff;
  WriteFile(d / "a.img", bytes);
  EXPECT_THROW(image::ResolveChain(d / "c.img"), ImageError);
}

TEST(ImageChain, FullImageIsItsOwnChain) {
  TempDir d;
  Img a;
  a.pages[3] = 9;
  Write(d / "a.img", a);
  auto chain = image::ResolveChain(d / "a.img");
  ASSERT_EQ(chain.size(), 1u);
  EXPECT_EQ(image::ChainPageBytes(chain)[0], kPageSize);
  // Ids differ between different contents and are stable for one file.
  EXPECT_EQ(image::ImageFileId(d / "a.img"), image::ImageFileId(d / "a.img"));
  a.pages[3] = 8;
  Write(d / "b.img", a);
  EXPECT_NE(image::ImageFileId(d / "a.img"), image::ImageFileId(d / "b.img"));
}

}  // namespace
}  // namespace ibdbg::test
