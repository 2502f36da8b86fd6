#include "translate.h"

#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>

#include "ibdbg/manifest.h"
#include "inspect.h"
#include "test_image_builder.h"
#include "test_util.h"

namespace ibdbg::translate {
namespace {

using nlohmann::json;
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

bool Contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

TranslateOptions Opts(std::vector<std::string> specs, bool dry_run = false) {
  TranslateOptions o;
  for (const auto& s : specs) o.map_paths.push_back(ParseMapping(s));
  o.dry_run = dry_run;
  return o;
}

// Every record of an image file as (type, arg, payload), in order.
std::vector<std::tuple<uint32_t, uint64_t, std::vector<uint8_t>>> Records(const std::string& p) {
  std::vector<std::tuple<uint32_t, uint64_t, std::vector<uint8_t>>> out;
  image::ImageReader r(p);
  image::RecordHeader h;
  std::vector<uint8_t> data;
  while (r.NextHeader(h)) {
    r.ReadPayload(data);
    out.emplace_back(h.type, h.arg, data);
  }
  return out;
}

std::map<uint64_t, std::vector<uint8_t>> Pages(const std::string& p) {
  std::map<uint64_t, std::vector<uint8_t>> out;
  for (auto& [type, arg, data] : Records(p))
    if (type == static_cast<uint32_t>(image::RecordType::Pages)) out[arg] = data;
  return out;
}

TEST(ParseMapping, Valid) {
  EXPECT_EQ(ParseMapping("/usr/lib=/opt/lib"), Mapping("/usr/lib", "/opt/lib"));
  EXPECT_EQ(ParseMapping("/usr/lib/=/opt/lib//"), Mapping("/usr/lib", "/opt/lib"));
  EXPECT_EQ(ParseMapping("/a=/b=c"), Mapping("/a", "/b=c"));
  EXPECT_EQ(ParseMapping("/=/chroot"), Mapping("/", "/chroot"));
}

TEST(ParseMapping, Invalid) {
  EXPECT_EQ(ErrorOf([] { ParseMapping("/usr/lib"); }),
            "invalid path mapping '/usr/lib': expected OLD=NEW");
  EXPECT_EQ(ErrorOf([] { ParseMapping("=/x"); }), "invalid path mapping '=/x': OLD is empty");
  EXPECT_EQ(ErrorOf([] { ParseMapping("/x="); }), "invalid path mapping '/x=': NEW is empty");
  EXPECT_EQ(ErrorOf([] { ParseMapping("usr=/x"); }),
            "invalid path mapping 'usr=/x': OLD must be an absolute path");
  EXPECT_EQ(ErrorOf([] { ParseMapping("/x=opt"); }),
            "invalid path mapping '/x=opt': NEW must be an absolute path");
  EXPECT_EQ(ErrorOf([] { ParseMapping("/a/../b=/c"); }),
            "invalid path mapping '/a/../b=/c': OLD must not contain '..'");
  EXPECT_NE(ErrorOf([] { ParseMapping("/a=/c/.."); }), "");
}

TEST(PathMapper, ComponentBoundaryAndLongestFirst) {
  PathMapper m({{"/usr", "/u"}, {"/usr/lib", "/opt/lib"}});
  EXPECT_EQ(m.Map("/usr/lib/libfoo.so"), "/opt/lib/libfoo.so");
  EXPECT_EQ(m.Map("/usr/lib"), "/opt/lib");
  EXPECT_EQ(m.Map("/usr/lib64/libbar.so"), "/u/lib64/libbar.so");
  EXPECT_EQ(m.Map("/usr"), "/u");
  EXPECT_EQ(m.Map("/usrx/a"), std::nullopt);
  EXPECT_EQ(m.Map("[heap]"), std::nullopt);
  EXPECT_EQ(m.Map(""), std::nullopt);

  PathMapper only(std::vector<Mapping>{{"/usr/lib", "/opt/lib"}});
  EXPECT_EQ(only.Map("/usr/lib64/libbar.so"), std::nullopt);
  EXPECT_EQ(only.Map("/usr/libfoo"), std::nullopt);

  PathMapper root(std::vector<Mapping>{{"/", "/chroot"}});
  EXPECT_EQ(root.Map("/etc/passwd"), "/chroot/etc/passwd");
  EXPECT_EQ(root.Map("/"), "/chroot");
  EXPECT_EQ(root.Map("pipe:[1]"), std::nullopt);
  PathMapper to_root(std::vector<Mapping>{{"/jail", "/"}});
  EXPECT_EQ(to_root.Map("/jail/etc"), "/etc");
  EXPECT_EQ(to_root.Map("/jail"), "/");

  EXPECT_NE(ErrorOf([] { PathMapper(std::vector<Mapping>{{"/a", "/b"}, {"/a/", "/c"}}); }).find("more than once"),
            std::string::npos);
  EXPECT_NE(ErrorOf([] { PathMapper(std::vector<Mapping>{{"a", "/b"}}); }).find("absolute"), std::string::npos);
}

class TranslateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto p = test::DefaultProcess(1234);
    auto q = test::DefaultProcess(1300);
    q.exe = "/usr/lib/helper";
    q.vmas[0].path = "/usr/lib/helper";
    q.cwd = "/usr/lib";
    in_manifest_ = test::BuildImage(t_ / "in", {p, q});
    in_ = t_ / "in";
  }

  TempDir t_;
  std::string in_;
  image::Manifest in_manifest_;
};

TEST_F(TranslateTest, RewritesPaths) {
  TranslateResult r = TranslateImage(in_, t_ / "out", Opts({"/usr/lib=/opt/lib"}));
  EXPECT_TRUE(Contains(r.changes,
                       "pid 1234 vma 0x7f0000000000: /usr/lib/libfoo.so -> /opt/lib/libfoo.so"))
      << ::testing::PrintToString(r.changes);
  EXPECT_TRUE(Contains(r.changes, "pid 1234 fd 1: /usr/lib/data.log -> /opt/lib/data.log"));
  EXPECT_TRUE(Contains(r.changes, "pid 1300 exe: /usr/lib/helper -> /opt/lib/helper"));
  EXPECT_TRUE(Contains(r.changes, "pid 1300 cwd: /usr/lib -> /opt/lib"));
  EXPECT_TRUE(Contains(r.changes, "pid 1300 vma 0x400000: /usr/lib/helper -> /opt/lib/helper"));
  for (const std::string& c : r.changes) EXPECT_EQ(c.find("lib64"), std::string::npos) << c;
  EXPECT_EQ(r.changes.size(), 7u) << ::testing::PrintToString(r.changes);
  EXPECT_TRUE(r.warnings.empty());

  json j = json::parse(tools::InspectImage(t_ / "out", true));
  const json& p = j["processes"][0];
  EXPECT_EQ(p["vmas"][2]["path"], "/opt/lib/libfoo.so");
  EXPECT_EQ(p["vmas"][3]["path"], "/usr/lib64/libbar.so");
  EXPECT_EQ(p["vmas"][0]["path"], "/usr/bin/app");
  EXPECT_EQ(p["fds"][1]["path"], "/opt/lib/data.log");
  EXPECT_EQ(p["fds"][1]["offset"], 42);
  EXPECT_EQ(p["fds"][2]["path"], "pipe:[12345]");
  EXPECT_EQ(p["exe"], "/usr/bin/app");
  const json& q = j["processes"][1];
  EXPECT_EQ(q["exe"], "/opt/lib/helper");
  EXPECT_EQ(q["cwd"], "/opt/lib");

  // Everything else survives byte for byte: pages, fd data, threads, signals.
  for (const char* name : {"proc-1234.img", "proc-1300.img"}) {
    auto a = Records(in_ + "/" + name);
    auto b = Records(t_ / "out" + "/" + name);
    EXPECT_EQ(Pages(in_ + "/" + name), Pages(t_ / "out" + "/" + name));
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(std::get<0>(a[i]), std::get<0>(b[i]));
      EXPECT_EQ(std::get<1>(a[i]), std::get<1>(b[i]));
      auto type = static_cast<image::RecordType>(std::get<0>(a[i]));
      if (type == image::RecordType::Thread || type == image::RecordType::Signals ||
          type == image::RecordType::Pages) {
        EXPECT_EQ(std::get<2>(a[i]), std::get<2>(b[i]));
      }
      if (type == image::RecordType::Fd) {
        auto& da = std::get<2>(a[i]);
        auto& db = std::get<2>(b[i]);
        ASSERT_EQ(da.size(), db.size());
        EXPECT_TRUE(std::equal(da.begin() + sizeof(ibdbg_fd_info), da.end(),
                               db.begin() + sizeof(ibdbg_fd_info)));
      }
    }
  }

  // The header's exe follows the process record.
  auto hdr = Records(t_ / "out/proc-1300.img");
  json h = json::parse(std::get<2>(hdr[0]));
  EXPECT_EQ(h["exe"], "/opt/lib/helper");
  EXPECT_EQ(h["pid"], 1300);
}

TEST_F(TranslateTest, ManifestRecordsProvenance) {
  std::string before = image::ImageChecksum(in_);
  TranslateImage(in_, t_ / "out", Opts({"/usr/lib/=/opt/lib", "/usr/bin=/opt/bin"}));
  EXPECT_EQ(image::ImageChecksum(in_), before);  // the input is untouched

  image::Manifest m = image::ReadManifest(t_ / "out");
  EXPECT_EQ(m.kind, "translate");
  EXPECT_EQ(m.job_id, "job-0123");
  EXPECT_EQ(m.ibdbg_version, IBDBG_VERSION);
  EXPECT_EQ(m.captured, in_manifest_.created);
  EXPECT_EQ(m.parent["image"], image::ResolveImageDir(in_));
  EXPECT_EQ(m.parent["checksum"], before);
  EXPECT_EQ(m.parent["options"]["map_path"], json({"/usr/lib=/opt/lib", "/usr/bin=/opt/bin"}));
  ASSERT_EQ(m.processes.size(), 2u);
  EXPECT_EQ(m.processes[0].pid, 1234);
  EXPECT_EQ(m.processes[0].exe, "/opt/bin/app");
  EXPECT_EQ(m.processes[1].exe, "/opt/lib/helper");
  EXPECT_EQ(m.processes[0].memory_bytes, in_manifest_.processes[0].memory_bytes);
  for (const auto& p : m.processes)
    EXPECT_EQ(p.bytes, test::ReadFile(t_ / "out" + "/" + p.image).size());
  EXPECT_EQ(test::ListDir(t_ / "out"),
            (std::vector<std::string>{"manifest.json", "proc-1234.img", "proc-1300.img"}));
  struct stat st;
  ASSERT_EQ(stat((t_ / "out/manifest.json").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(TranslateTest, InspectShowsChain) {
  TranslateImage(in_, t_ / "mid", Opts({"/usr/lib=/opt/lib"}));
  TranslateImage(t_ / "mid", t_ / "out", Opts({"/opt=/srv"}));
  std::string text = tools::InspectImage(t_ / "out", false);
  SCOPED_TRACE(text);
  std::string in_real = image::ResolveImageDir(in_);
  std::string mid_real = image::ResolveImageDir(t_ / "mid");
  EXPECT_NE(text.find("kind       translate"), std::string::npos);
  EXPECT_NE(text.find("captured   " + in_manifest_.created), std::string::npos);
  EXPECT_NE(text.find("  from " + mid_real + " (translate, created "), std::string::npos);
  EXPECT_NE(text.find("    from " + in_real + " (capture, created " + in_manifest_.created + ")"),
            std::string::npos);
  EXPECT_NE(text.find("options  map_path /opt=/srv"), std::string::npos);
  EXPECT_NE(text.find("options  map_path /usr/lib=/opt/lib"), std::string::npos);
  EXPECT_NE(text.find("(matches)"), std::string::npos);
  EXPECT_EQ(text.find("MISMATCH"), std::string::npos);
  EXPECT_NE(text.find("/srv/lib/libfoo.so"), std::string::npos);

  json j = json::parse(tools::InspectImage(t_ / "out", true));
  ASSERT_EQ(j["provenance"].size(), 2u);
  EXPECT_EQ(j["provenance"][0]["image"], mid_real);
  EXPECT_EQ(j["provenance"][0]["found"], true);
  EXPECT_EQ(j["provenance"][0]["checksum_ok"], true);
  EXPECT_EQ(j["provenance"][1]["image"], in_real);
  EXPECT_EQ(j["provenance"][1]["kind"], "capture");

  // A changed parent is flagged, a vanished one is reported, not fatal.
  test::FlipByte(in_ + "/proc-1234.img", 200);
  text = tools::InspectImage(t_ / "out", false);
  EXPECT_NE(text.find("MISMATCH"), std::string::npos) << text;
  ASSERT_TRUE(image::RemoveTree(AT_FDCWD, t_ / "mid"));
  text = tools::InspectImage(t_ / "out", false);
  EXPECT_NE(text.find("from " + mid_real + " (not found)"), std::string::npos) << text;
  j = json::parse(tools::InspectImage(t_ / "out", true));
  ASSERT_EQ(j["provenance"].size(), 1u);
  EXPECT_EQ(j["provenance"][0]["found"], false);
}

TEST_F(TranslateTest, RefusesExistingOutput) {
  image::MakeDirs(t_ / "out");
  test::WriteFile(t_ / "out/keep", "x", 1);
  EXPECT_EQ(ErrorOf([&] { TranslateImage(in_, t_ / "out", Opts({"/usr/lib=/opt/lib"})); }),
            t_ / "out" + " exists; refusing to overwrite");
  EXPECT_EQ(test::ListDir(t_ / "out"), std::vector<std::string>{"keep"});
  EXPECT_EQ(test::ListDir(t_.path()), (std::vector<std::string>{"in", "out"}));

  // Also a dangling symlink, and also in a dry run.
  ASSERT_EQ(symlink("nowhere", (t_ / "link").c_str()), 0);
  EXPECT_NE(ErrorOf([&] { TranslateImage(in_, t_ / "link", Opts({"/a=/b"})); }).find("exists"),
            std::string::npos);
  EXPECT_NE(ErrorOf([&] { TranslateImage(in_, t_ / "out", Opts({"/a=/b"}, true)); }), "");
}

TEST_F(TranslateTest, RefusesInputAsOutput) {
  std::string before = image::ImageChecksum(in_);
  EXPECT_EQ(ErrorOf([&] { TranslateImage(in_, in_, Opts({"/a=/b"})); }),
            in_ + " is the input image; refusing to overwrite");
  EXPECT_NE(ErrorOf([&] { TranslateImage(in_ + "/proc-1234.img", t_ / "./in/", Opts({"/a=/b"})); })
                .find("is the input image"),
            std::string::npos);
  EXPECT_NE(ErrorOf([&] { TranslateImage(in_, in_ + "/sub", Opts({"/a=/b"})); })
                .find("is inside the input image"),
            std::string::npos);
  EXPECT_EQ(image::ImageChecksum(in_), before);
  EXPECT_EQ(test::ListDir(in_),
            (std::vector<std::string>{"manifest.json", "proc-1234.img", "proc-1300.img"}));
}

TEST_F(TranslateTest, CorruptedInputLeavesNothing) {
  std::string path = in_ + "/proc-1300.img";
  test::FlipByte(path, test::FindRecord(path, image::RecordType::Pages) + 48 + 100);
  std::string e = ErrorOf([&] { TranslateImage(in_, t_ / "new/out", Opts({"/usr/lib=/opt/lib"})); });
  EXPECT_NE(e.find("proc-1300.img: corrupted record"), std::string::npos) << e;
  EXPECT_EQ(test::ListDir(t_.path()), std::vector<std::string>{"in"});

  // A failure while writing (the output directory vanishes under us is hard
  // to stage; a missing process image is found during validation too).
  unlink(path.c_str());
  EXPECT_NE(ErrorOf([&] { TranslateImage(in_, t_ / "out", Opts({"/usr/lib=/opt/lib"})); }), "");
  EXPECT_EQ(test::ListDir(t_.path()), std::vector<std::string>{"in"});
}

TEST_F(TranslateTest, PathTooLongRefused) {
  std::string huge = "/" + std::string(4090, 'x');
  std::string e = ErrorOf([&] { TranslateImage(in_, t_ / "out", Opts({"/usr/lib=" + huge})); });
  EXPECT_NE(e.find("/usr/lib/libfoo.so would become 4101 bytes long (at most 4095)"),
            std::string::npos)
      << e;
  EXPECT_EQ(test::ListDir(t_.path()), std::vector<std::string>{"in"});
}

TEST_F(TranslateTest, DryRunWritesNothing) {
  TranslateResult r = TranslateImage(in_, t_ / "out", Opts({"/usr/lib=/opt/lib"}, true));
  EXPECT_EQ(r.changes.size(), 7u);
  EXPECT_EQ(test::ListDir(t_.path()), std::vector<std::string>{"in"});
  r = TranslateImage(in_, "", Opts({"/nothing=/here"}, true));
  EXPECT_TRUE(r.changes.empty());
  EXPECT_NE(ErrorOf([&] { TranslateImage(in_, "", Opts({"/a=/b"})); }), "");
  // Without mappings a translation is a validated copy with provenance.
  r = TranslateImage(in_, t_ / "copy", TranslateOptions{});
  EXPECT_TRUE(r.changes.empty());
  EXPECT_EQ(image::ReadManifest(t_ / "copy").kind, "translate");
}

TEST_F(TranslateTest, UnknownRecordsCopiedWithWarning) {
  TempDir t;
  auto p = test::DefaultProcess(42);
  p.extra.push_back({999, 5, "future"});
  test::BuildImage(t / "in", {p});
  TranslateResult r = TranslateImage(t / "in", t / "out", Opts({"/usr/lib=/opt/lib"}));
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_EQ(r.warnings[0], "pid 42: 1 record(s) of unknown type copied unchanged");
  auto recs = Records(t / "out/proc-42.img");
  auto& last = recs.back();
  EXPECT_EQ(std::get<0>(last), 999u);
  EXPECT_EQ(std::get<1>(last), 5u);
  EXPECT_EQ(std::string(std::get<2>(last).begin(), std::get<2>(last).end()), "future");
}

TEST_F(TranslateTest, NonUtf8Paths) {
  TranslateImage(in_, t_ / "out", Opts({"/usr/lib=/opt/\xff\xfe"}));
  image::Manifest m = image::ReadManifest(t_ / "out");
  EXPECT_TRUE(m.parent["options"]["map_path"].is_array());
  auto recs = Records(t_ / "out/proc-1234.img");
  bool found = false;
  for (auto& [type, arg, data] : recs) {
    if (type != static_cast<uint32_t>(image::RecordType::Vma) || arg != 0x7f0000000000) continue;
    ibdbg_image_vma v;
    ASSERT_EQ(data.size(), sizeof v);
    memcpy(&v, data.data(), sizeof v);
    EXPECT_STREQ(v.path, "/opt/\xff\xfe/libfoo.so");
    found = true;
  }
  EXPECT_TRUE(found);
  EXPECT_NO_THROW(json::parse(tools::InspectImage(t_ / "out", true)));
}

TEST_F(TranslateTest, NotAnImage) {
  EXPECT_NE(ErrorOf([&] { TranslateImage(t_ / "nope", t_ / "out", Opts({"/a=/b"})); }), "");
  EXPECT_NE(ErrorOf([&] { TranslateImage(t_.path(), t_ / "out", Opts({"/a=/b"})); })
                .find("no manifest.json"),
            std::string::npos);
}

}  // namespace
}  // namespace ibdbg::translate
