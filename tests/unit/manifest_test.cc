#include "ibdbg/manifest.h"

#include <gtest/gtest.h>
#include <xxhash.h>

#include "test_image_builder.h"
#include "test_util.h"

namespace ibdbg::image {
namespace {

using test::TempDir;

std::string ErrorOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const ImageError& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    return msg;
  }
  return "";
}

void WriteText(const std::string& path, const std::string& text) {
  test::WriteFile(path, text.data(), text.size());
}

Manifest Sample() {
  Manifest m;
  m.ibdbg_version = "0.1.0";
  m.job_id = "job-42";
  m.created = "2024-11-25T11:00:00.000Z";
  m.created_ns = 1732532400000000000LL;
  m.kind = "translate";
  m.captured = "2024-11-24T10:00:00.000Z";
  m.parent = {{"image", "/images/a"},
              {"checksum", "xxh3:0123456789abcdef"},
              {"options", {{"map_path", {"/a=/b"}}}}};
  ManifestProcess p;
  p.pid = 77;
  p.host = "h1";
  p.exe = "/bin/x";
  p.image = "proc-77.img";
  p.bytes = 123456789012ull;
  p.memory_bytes = 4096;
  p.threads = 3;
  m.processes.push_back(p);
  p.pid = 78;
  p.image = "proc-78.img";
  m.processes.push_back(p);
  return m;
}

TEST(Manifest, Rank) {
  TempDir t;
  Manifest m = Sample();
  m.processes[0].rank = 3;  // the second stays unknown
  WriteManifest(t / "manifest.json", m);
  std::vector<uint8_t> raw = test::ReadFile(t / "manifest.json");
  std::string text(raw.begin(), raw.end());
  EXPECT_NE(text.find("\"rank\": 3"), std::string::npos) << text;
  EXPECT_EQ(text.find("\"rank\"", text.find("proc-78.img")), std::string::npos) << "unknown rank written";
  Manifest r = ReadManifest(t.path());
  EXPECT_EQ(r.processes[0].rank, 3);
  EXPECT_EQ(r.processes[1].rank, -1);
  std::string bad = text;
  bad.replace(bad.find("\"rank\": 3"), 11, "\"rank\": -2");
  EXPECT_NE(ErrorOf([&] { ParseManifest(bad, "m.json"); }).find("'processes[0].rank' is out of range"),
            std::string::npos);
  bad = text;
  bad.replace(bad.find("\"rank\": 3"), 11, "\"rank\": \"3\"");
  EXPECT_NE(ErrorOf([&] { ParseManifest(bad, "m.json"); }).find("'processes[0].rank' must be an integer"),
            std::string::npos);
}

TEST(Manifest, RoundTrip) {
  TempDir t;
  Manifest m = Sample();
  WriteManifest(t / "manifest.json", m);
  struct stat st;
  ASSERT_EQ(stat((t / "manifest.json").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  Manifest r = ReadManifest(t.path());
  EXPECT_EQ(r.format, 1);
  EXPECT_EQ(r.ibdbg_version, m.ibdbg_version);
  EXPECT_EQ(r.job_id, m.job_id);
  EXPECT_EQ(r.created, m.created);
  EXPECT_EQ(r.created_ns, m.created_ns);
  EXPECT_EQ(r.kind, "translate");
  EXPECT_EQ(r.captured, m.captured);
  EXPECT_EQ(r.parent, m.parent);
  ASSERT_EQ(r.processes.size(), 2u);
  EXPECT_EQ(r.processes[0].pid, 77);
  EXPECT_EQ(r.processes[0].host, "h1");
  EXPECT_EQ(r.processes[0].exe, "/bin/x");
  EXPECT_EQ(r.processes[0].image, "proc-77.img");
  EXPECT_EQ(r.processes[0].bytes, 123456789012ull);
  EXPECT_EQ(r.processes[0].memory_bytes, 4096u);
  EXPECT_EQ(r.processes[0].threads, 3);
  EXPECT_EQ(r.processes[1].pid, 78);

  std::string text = ManifestToJson(m);
  EXPECT_EQ(text.rfind("{\n  \"format\": 1,", 0), 0u) << text;
  EXPECT_EQ(ManifestToJson(r), text);
}

TEST(Manifest, CaptureHasNullParent) {
  TempDir t;
  Manifest m = Sample();
  m.kind = "capture";
  m.parent = nullptr;
  m.captured.clear();
  WriteManifest(t / "manifest.json", m);
  Manifest r = ReadManifest(t.path());
  EXPECT_TRUE(r.parent.is_null());
  EXPECT_EQ(r.kind, "capture");
  EXPECT_EQ(ManifestToJson(m).find("parent"), std::string::npos);
}

TEST(Manifest, WriteRefusesExistingFile) {
  TempDir t;
  WriteText(t / "manifest.json", "keep");
  EXPECT_NE(ErrorOf([&] { WriteManifest(t / "manifest.json", Sample()); }), "");
  EXPECT_EQ(test::ReadFile(t / "manifest.json").size(), 4u);
}

TEST(Manifest, Missing) {
  TempDir t;
  EXPECT_EQ(ErrorOf([&] { ReadManifest(t.path()); }),
            t.path() + ": not an ibdbg image (no manifest.json)");
  EXPECT_NE(ErrorOf([&] { ReadManifest(t / "nonexistent"); }).find("No such file"),
            std::string::npos);
  EXPECT_NE(ErrorOf([&] { ReadManifest(""); }), "");
}

TEST(Manifest, BadJson) {
  TempDir t;
  WriteText(t / "manifest.json", "{\"format\": 1,\n\n  oops");
  std::string e = ErrorOf([&] { ReadManifest(t.path()); });
  EXPECT_NE(e.find("manifest.json: invalid JSON"), std::string::npos) << e;
  EXPECT_EQ(e.find("json.exception"), std::string::npos) << e;

  std::remove((t / "manifest.json").c_str());
  WriteText(t / "manifest.json", "[1,2]");
  EXPECT_NE(ErrorOf([&] { ReadManifest(t.path()); }).find("not a JSON object"),
            std::string::npos);
}

TEST(Manifest, FutureFormat) {
  EXPECT_NE(ErrorOf([] { ParseManifest(R"({"format": 2})", "m"); })
                .find("m: format 2 is newer than this ibdbg supports (1)"),
            std::string::npos);
  EXPECT_NE(ErrorOf([] { ParseManifest(R"({"format": 0})", "m"); }).find("invalid format 0"),
            std::string::npos);
  EXPECT_NE(ErrorOf([] { ParseManifest(R"({"format": "1"})", "m"); })
                .find("field 'format' must be an integer"),
            std::string::npos);
}

TEST(Manifest, MissingAndBadFields) {
  nlohmann::json good = nlohmann::json::parse(ManifestToJson(Sample()));
  EXPECT_NO_THROW(ParseManifest(good.dump(), "m"));

  auto err = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = good;
    edit(j);
    return ErrorOf([&] { ParseManifest(j.dump(), "m"); });
  };
  EXPECT_EQ(err([](auto& j) { j.erase("job_id"); }), "m: missing field 'job_id'");
  EXPECT_EQ(err([](auto& j) { j.erase("processes"); }), "m: missing field 'processes'");
  EXPECT_EQ(err([](auto& j) { j["processes"][1].erase("pid"); }),
            "m: missing field 'processes[1].pid'");
  EXPECT_EQ(err([](auto& j) { j["processes"][0]["pid"] = "77"; }),
            "m: field 'processes[0].pid' must be an integer");
  EXPECT_NE(err([](auto& j) { j["processes"][0]["pid"] = -1; }).find("out of range"),
            std::string::npos);
  EXPECT_EQ(err([](auto& j) { j["processes"][0]["image"] = "../x.img"; }),
            "m: field 'processes[0].image' must be a plain file name");
  EXPECT_EQ(err([](auto& j) { j["processes"][0]["bytes"] = -5; }),
            "m: field 'processes[0].bytes' must be a non-negative integer");
  EXPECT_EQ(err([](auto& j) { j["processes"][1]["pid"] = 77; }), "m: process 77 listed twice");
  EXPECT_EQ(err([](auto& j) {
              j["processes"][1]["pid"] = 77;
              j["processes"][1]["host"] = "h2";
            }),
            "");
  EXPECT_EQ(err([](auto& j) { j["processes"][1]["image"] = "proc-77.img"; }),
            "m: image file proc-77.img listed twice");
  EXPECT_EQ(err([](auto& j) { j["parent"] = 5; }), "m: field 'parent' must be an object");
  EXPECT_EQ(err([](auto& j) { j["parent"].erase("checksum"); }),
            "m: missing field 'parent.checksum'");
  EXPECT_EQ(err([](auto& j) { j["processes"] = {1}; }),
            "m: field 'processes[0]' must be an object");
}

TEST(Manifest, ResolveImageDir) {
  TempDir t;
  test::BuildImage(t / "img", {test::DefaultProcess(1234)});
  std::string real = ResolveImageDir(t / "img");
  EXPECT_EQ(real[0], '/');
  EXPECT_EQ(ResolveImageDir(t / "img/"), real);
  EXPECT_EQ(ResolveImageDir(t / "img/proc-1234.img"), real);
  EXPECT_EQ(ResolveImageDir(t / "img/manifest.json"), real);
  ASSERT_EQ(symlink("img", (t / "latest").c_str()), 0);
  EXPECT_EQ(ResolveImageDir(t / "latest"), real);
  EXPECT_EQ(ReadManifest(t / "latest").job_id, "job-0123");
  EXPECT_EQ(ReadManifest(t / "img/proc-1234.img").processes.at(0).pid, 1234);

  WriteText(t / "notes.txt", "x");
  EXPECT_NE(ErrorOf([&] { ResolveImageDir(t / "notes.txt"); }).find("not an ibdbg image"),
            std::string::npos);
  EXPECT_NE(ErrorOf([&] { ResolveImageDir(t / "nope"); }).find("No such file"),
            std::string::npos);
  ASSERT_EQ(symlink("gone", (t / "dangling").c_str()), 0);
  EXPECT_NE(ErrorOf([&] { ResolveImageDir(t / "dangling"); }), "");
}

TEST(Manifest, Checksum) {
  TempDir t;
  test::BuildImage(t / "img", {test::DefaultProcess(20), test::DefaultProcess(1000)});
  std::string sum = ImageChecksum(t / "img");
  ASSERT_EQ(sum.size(), 5u + 16u);
  EXPECT_EQ(sum.substr(0, 5), "xxh3:");

  // Byte-wise name order: proc-1000.img sorts before proc-20.img.
  std::vector<uint8_t> all = test::ReadFile(t / "img/manifest.json");
  for (const char* n : {"proc-1000.img", "proc-20.img"}) {
    auto b = test::ReadFile(t / "img" + "/" + n);
    all.insert(all.end(), b.begin(), b.end());
  }
  char hex[17];
  snprintf(hex, sizeof hex, "%016llx",
           static_cast<unsigned long long>(XXH3_64bits(all.data(), all.size())));
  EXPECT_EQ(sum, std::string("xxh3:") + hex);

  // Other files do not count; image files do.
  WriteText(t / "img/README", "notes");
  EXPECT_EQ(ImageChecksum(t / "img"), sum);
  test::FlipByte(t / "img/proc-20.img", 100);
  EXPECT_NE(ImageChecksum(t / "img"), sum);

  TempDir empty;
  EXPECT_NE(ErrorOf([&] { ImageChecksum(empty.path()); }).find("no manifest.json"),
            std::string::npos);
}

TEST(Manifest, IsoTime) {
  EXPECT_EQ(FormatIsoTime(0), "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(FormatIsoTime(1732532400123456789LL), "2024-11-25T11:00:00.123Z");
  EXPECT_GT(RealtimeNs(), 1732532400000000000LL);
}

}  // namespace
}  // namespace ibdbg::image
