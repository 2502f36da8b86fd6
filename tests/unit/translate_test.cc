#include "translate.h"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
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


// ---- the verbs state: fabric, device limits, hosts ---------------------------

constexpr uint64_t kQpAv = 1 << 7, kQpMtu = 1 << 8;

// A process's verbs record as capture/verbs writes it: one context on an
// InfiniBand port (LID 7, 4096), a PD, a CQ, an RC QP in RTS towards LID 9,
// a UD QP, an AH and an SRQ.  Tests change fields before packing it.
struct VerbsSpec {
  ibdbg_verbs_hdr h{};
  std::vector<ibdbg_verbs_obj> o;
  ibdbg_verbs_obj& Find(uint32_t kind) {
    for (auto& x : o)
      if (x.kind == kind) return x;
    throw std::runtime_error("no such object");
  }
  ibdbg_verbs_obj& Rc() { return o[3]; }
  ibdbg_verbs_obj& Ud() { return o[4]; }
  std::string Pack() {
    h.nobjs = o.size();
    std::string s((const char*)&h, sizeof h);
    s.append((const char*)o.data(), o.size() * sizeof(ibdbg_verbs_obj));
    return s;
  }
};

VerbsSpec IbSpec() {
  VerbsSpec v;
  v.h.magic = IBDBG_VERBS_MAGIC;
  v.h.link_layer = kLinkInfiniBand;
  std::snprintf(v.h.backend, sizeof v.h.backend, "/usr/lib/softrdma/libibverbs.so.1");
  v.o.resize(7);
  auto& ctx = v.o[0];
  ctx.kind = IBDBG_VERBS_CONTEXT, ctx.handle = 0x1000;
  std::snprintf(ctx.name, sizeof ctx.name, "mlx5_0");
  ctx.u[IBDBG_VCTX_LINK_LAYER] = kLinkInfiniBand, ctx.u[IBDBG_VCTX_LID] = 7, ctx.u[IBDBG_VCTX_ACTIVE_MTU] = 5;
  auto& pd = v.o[1];
  pd.kind = IBDBG_VERBS_PD, pd.handle = 0x2000, pd.parent[0] = 0x1000;
  auto& cq = v.o[2];
  cq.kind = IBDBG_VERBS_CQ, cq.handle = 0x3000, cq.parent[0] = 0x1000, cq.u[0] = 501;
  auto& rc = v.o[3];
  rc.kind = IBDBG_VERBS_QP, rc.handle = 0x4000, rc.parent[0] = 0x2000, rc.parent[1] = rc.parent[2] = 0x3000;
  uint64_t* u = rc.u;
  u[IBDBG_VQP_QPN] = 0x11, u[IBDBG_VQP_TYPE] = 2, u[IBDBG_VQP_STATE] = 3;
  u[IBDBG_VQP_MAX_SEND_WR] = 1, u[IBDBG_VQP_MAX_RECV_WR] = 500, u[IBDBG_VQP_MAX_SEND_SGE] = 1;
  u[IBDBG_VQP_MAX_RECV_SGE] = 1, u[IBDBG_VQP_MAX_INLINE] = 64, u[IBDBG_VQP_DEST_QPN] = 0x22;
  u[IBDBG_VQP_DLID] = 9, u[IBDBG_VQP_PORT] = 1, u[IBDBG_VQP_ATTR_MASK] = kQpAv | kQpMtu | 1;
  u[IBDBG_VQP_PATH_MTU] = 5, u[IBDBG_VQP_SL] = 3, u[IBDBG_VQP_MAX_RD_ATOMIC] = 1;
  u[IBDBG_VQP_MAX_DEST_RD_ATOMIC] = 1, u[IBDBG_VQP_ACCESS_FLAGS] = 0xf;  // with remote atomics
  auto& ud = v.o[4];
  ud.kind = IBDBG_VERBS_QP, ud.handle = 0x5000, ud.parent[0] = 0x2000;
  ud.u[IBDBG_VQP_QPN] = 0x33, ud.u[IBDBG_VQP_TYPE] = 4, ud.u[IBDBG_VQP_STATE] = 3, ud.u[IBDBG_VQP_QKEY] = 0x11111111;
  auto& ah = v.o[5];
  ah.kind = IBDBG_VERBS_AH, ah.handle = 0x6000, ah.parent[0] = 0x2000;
  ah.u[IBDBG_VAH_DLID] = 9, ah.u[IBDBG_VAH_PORT] = 1, ah.u[IBDBG_VAH_SL] = 2;
  auto& srq = v.o[6];
  srq.kind = IBDBG_VERBS_SRQ, srq.handle = 0x7000, srq.parent[0] = 0x2000, srq.u[0] = 100, srq.u[1] = 1;
  return v;
}

// The verbs record of a process of an image, unpacked.
VerbsSpec ReadVerbs(const std::string& path) {
  for (auto& [type, arg, data] : Records(path)) {
    if (type != static_cast<uint32_t>(image::RecordType::Verbs)) continue;
    VerbsSpec v;
    memcpy(&v.h, data.data(), sizeof v.h);
    v.o.resize(v.h.nobjs);
    memcpy(v.o.data(), data.data() + sizeof v.h, v.o.size() * sizeof(ibdbg_verbs_obj));
    return v;
  }
  throw std::runtime_error("no verbs record in " + path);
}

std::vector<std::string> RefusalsOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const TranslateRefused& e) {
    return e.reasons();
  }
  return {};
}

TranslateOptions Fabric(uint32_t ll, bool dry_run = false) {
  TranslateOptions o;
  o.fabric.link_layer = ll;
  o.dry_run = dry_run;
  return o;
}

class VerbsTranslateTest : public ::testing::Test {
 protected:
  void Build(VerbsSpec v, std::vector<test::SampleProcess> more = {}) {
    auto p = test::DefaultProcess(1234);
    p.extra.push_back({(uint32_t)image::RecordType::Verbs, 0, v.Pack()});
    more.insert(more.begin(), p);
    test::BuildImage(t_ / "in", more);
    in_ = t_ / "in";
  }
  TempDir t_;
  std::string in_;
};

TEST_F(VerbsTranslateTest, InfiniBandToRoce) {
  VerbsSpec spec = IbSpec();
  Build(spec);
  TranslateResult r = TranslateImage(in_, t_ / "out", Fabric(kLinkEthernet));
  SCOPED_TRACE(::testing::PrintToString(r.changes));
  for (const char* c : {"pid 1234 verbs: link_layer infiniband -> ethernet", "pid 1234 QP 0x11: is_global 0 -> 1",
                        "pid 1234 QP 0x11: hop_limit 0 -> 64", "pid 1234 QP 0x11: traffic_class 0 -> 96",
                        "pid 1234 QP 0x11: sgid_index 0 -> 1", "pid 1234 QP 0x11: path_mtu 4096 -> 1024",
                        "pid 1234 AH 0x6000: is_global 0 -> 1", "pid 1234 AH 0x6000: traffic_class 0 -> 64",
                        "pid 1234 AH 0x6000: sgid_index 0 -> 1"})
    EXPECT_TRUE(Contains(r.changes, c)) << c;
  EXPECT_EQ(r.changes.size(), 10u);
  // The UD QP's messages may not fit the target's smaller MTU.
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].find("QP 0x33 (UD): messages larger than 1024 bytes fail"), std::string::npos);

  VerbsSpec out = ReadVerbs(t_ / "out/proc-1234.img");
  EXPECT_EQ(out.h.link_layer, kLinkEthernet);
  EXPECT_EQ(out.h.translated, 1u);
  const uint64_t* u = out.Rc().u;
  EXPECT_EQ(u[IBDBG_VQP_IS_GLOBAL], 1u);
  EXPECT_EQ(u[IBDBG_VQP_SGID_INDEX], 1u);
  EXPECT_EQ(u[IBDBG_VQP_HOP_LIMIT], 64u);
  EXPECT_EQ(u[IBDBG_VQP_TRAFFIC_CLASS], 3u << 5);
  EXPECT_EQ(u[IBDBG_VQP_PATH_MTU], 3u);
  // As the application saw them: ids, the peer, the SL, the caps.
  EXPECT_EQ(u[IBDBG_VQP_QPN], 0x11u);
  EXPECT_EQ(u[IBDBG_VQP_DEST_QPN], 0x22u);
  EXPECT_EQ(u[IBDBG_VQP_DLID], 9u);
  EXPECT_EQ(u[IBDBG_VQP_SL], 3u);
  EXPECT_EQ(u[IBDBG_VQP_MAX_INLINE], 64u);
  const ibdbg_verbs_obj& ctx = out.Find(IBDBG_VERBS_CONTEXT);
  EXPECT_EQ(ctx.u[IBDBG_VCTX_LINK_LAYER], kLinkInfiniBand);
  EXPECT_EQ(ctx.u[IBDBG_VCTX_LID], 7u);
  EXPECT_STREQ(ctx.name, "mlx5_0");
  const ibdbg_verbs_obj& ah = out.Find(IBDBG_VERBS_AH);
  EXPECT_EQ(ah.u[IBDBG_VAH_IS_GLOBAL], 1u);
  EXPECT_EQ(ah.u[IBDBG_VAH_DLID], 9u);
  // The UD QP has no path of its own: untouched.
  EXPECT_EQ(memcmp(&out.Ud(), &spec.Ud(), sizeof spec.Ud()), 0);
  // And the rest of the image is as it was.
  EXPECT_EQ(Pages(in_ + "/proc-1234.img"), Pages(t_ / "out/proc-1234.img"));
}

TEST_F(VerbsTranslateTest, PathMtu) {
  VerbsSpec spec = IbSpec();
  spec.Rc().u[IBDBG_VQP_PATH_MTU] = 2;  // 512 already fits: no change
  Build(spec);
  TranslateResult r = TranslateImage(in_, "", Fabric(kLinkEthernet, true));
  for (const auto& c : r.changes) EXPECT_EQ(c.find("path_mtu"), std::string::npos) << c;
  // --mtu sets it, within the target's active MTU.
  TranslateOptions o = Fabric(kLinkEthernet, true);
  o.fabric.mtu = 256;
  r = TranslateImage(in_, "", o);
  EXPECT_TRUE(Contains(r.changes, "pid 1234 QP 0x11: path_mtu 512 -> 256"));
  o.fabric.mtu = 2048;
  auto why = RefusalsOf([&] { TranslateImage(in_, t_ / "out", o); });
  EXPECT_EQ(why, std::vector<std::string>{"--mtu 2048 exceeds the active MTU 1024 of the target"});
  o.fabric.mtu = 1000;
  EXPECT_NE(ErrorOf([&] { TranslateImage(in_, t_ / "out", o); }).find("--mtu 1000"), std::string::npos);
  EXPECT_FALSE(test::Exists(t_ / "out"));
}

TEST_F(VerbsTranslateTest, RefusesWhatTheTargetCannotCarry) {
  VerbsSpec spec = IbSpec();
  uint64_t* u = spec.Rc().u;
  u[IBDBG_VQP_MAX_INLINE] = 1024, u[IBDBG_VQP_MAX_SEND_SGE] = 33, u[IBDBG_VQP_MAX_RECV_SGE] = 40;
  u[IBDBG_VQP_MAX_SEND_WR] = 20000, u[IBDBG_VQP_MAX_RECV_WR] = 16385;
  u[IBDBG_VQP_MAX_RD_ATOMIC] = 129, u[IBDBG_VQP_MAX_DEST_RD_ATOMIC] = 200, u[IBDBG_VQP_SL] = 9;
  spec.Find(IBDBG_VERBS_CQ).u[0] = 100000;
  spec.Find(IBDBG_VERBS_SRQ).u[0] = 16385, spec.Find(IBDBG_VERBS_SRQ).u[1] = 28;
  Build(spec);
  auto why = RefusalsOf([&] { TranslateImage(in_, t_ / "out", Fabric(kLinkEthernet)); });
  std::vector<std::string> want = {
      "pid 1234 CQ 0x3000 uses cqe 100000; the target allows 32767",
      "pid 1234 QP 0x11 uses max_inline_data 1024; the target allows 512",
      "pid 1234 QP 0x11 uses max_send_sge 33; the target allows 32",
      "pid 1234 QP 0x11 uses max_recv_sge 40; the target allows 32",
      "pid 1234 QP 0x11 uses max_send_wr 20000; the target allows 16384",
      "pid 1234 QP 0x11 uses max_recv_wr 16385; the target allows 16384",
      "pid 1234 QP 0x11 uses max_rd_atomic 129; the target allows 128",
      "pid 1234 QP 0x11 uses max_dest_rd_atomic 200; the target allows 128",
      "pid 1234 QP 0x11 uses SL 9; RoCE carries priorities 0-7 only",
      "pid 1234 SRQ 0x7000 uses max_wr 16385; the target allows 16384",
      "pid 1234 SRQ 0x7000 uses max_sge 28; the target allows 27",
  };
  std::sort(why.begin(), why.end());
  std::sort(want.begin(), want.end());
  EXPECT_EQ(why, want);
  EXPECT_FALSE(test::Exists(t_ / "out"));
  // A dry run refuses the same way.
  EXPECT_EQ(RefusalsOf([&] { TranslateImage(in_, "", Fabric(kLinkEthernet, true)); }).size(), want.size());
  // The exception's text is those lines.
  try {
    TranslateImage(in_, t_ / "out", Fabric(kLinkEthernet));
    ADD_FAILURE();
  } catch (const ImageError& e) {
    EXPECT_EQ(std::count(e.what(), e.what() + strlen(e.what()), '\n'), (long)want.size() - 1);
  }
}

const char* kRxeCaps = R"({"devices": [{"name": "rxe0", "link_layer": "ethernet", "active_mtu": 1024,
  "gids": [{"index": 0, "gid": "fe80:0000:0000:0000:0250:56ff:fe00:0001", "type": "RoCE v1"},
           {"index": 1, "gid": "fe80:0000:0000:0000:0250:56ff:fe00:0001", "type": "RoCE v2"},
           {"index": 2, "gid": "0000:0000:0000:0000:0000:ffff:0a00:0001", "type": "RoCE v1"},
           {"index": 3, "gid": "0000:0000:0000:0000:0000:ffff:0a00:0001", "type": "RoCE v2"}],
  "max_inline_data": 256, "max_sge": 32, "max_qp_wr": 1048575, "max_cqe": 32767, "max_qp_rd_atom": 128,
  "max_qp_init_rd_atom": 128, "max_srq_wr": 1048575, "max_srq_sge": 27, "atomic_cap": 1}]})";

TEST_F(VerbsTranslateTest, TargetCapsFile) {
  VerbsSpec spec = IbSpec();
  spec.Rc().u[IBDBG_VQP_MAX_INLINE] = 512;
  Build(spec);
  TranslateOptions o = Fabric(kLinkEthernet);
  o.fabric.target_caps = ParseCaps(kRxeCaps, "caps.json");
  o.fabric.target_caps_file = "caps.json";
  // The limits are the file's, and name its device.
  EXPECT_EQ(RefusalsOf([&] { TranslateImage(in_, t_ / "out", o); }),
            std::vector<std::string>{"pid 1234 QP 0x11 uses max_inline_data 512; the target (rxe0) allows 256"});
  spec.Rc().u[IBDBG_VQP_MAX_INLINE] = 256;
  image::RemoveTree(AT_FDCWD, t_ / "in");
  Build(spec);
  TranslateResult r = TranslateImage(in_, t_ / "out", o);
  SCOPED_TRACE(::testing::PrintToString(r.changes));
  // Its one device is where the replay opens the context; RoCE v2 over IPv4 is index 3 there.
  EXPECT_TRUE(Contains(r.changes, "pid 1234 context 0x1000: device mlx5_0 -> rxe0"));
  EXPECT_TRUE(Contains(r.changes, "pid 1234 QP 0x11: sgid_index 0 -> 3"));
  VerbsSpec out = ReadVerbs(t_ / "out/proc-1234.img");
  EXPECT_STREQ(out.Find(IBDBG_VERBS_CONTEXT).name, "rxe0");
  EXPECT_EQ(out.Rc().u[IBDBG_VQP_SGID_INDEX], 3u);
  image::Manifest m = image::ReadManifest(t_ / "out");
  EXPECT_EQ(m.parent["options"]["fabric"], "roce");
  EXPECT_EQ(m.parent["options"]["target_caps"], "caps.json");
}

TEST_F(VerbsTranslateTest, Devices) {
  Build(IbSpec());
  std::string two = kRxeCaps;
  two.insert(two.rfind(']'), R"(, {"name": "rxe1", "link_layer": "ethernet", "active_mtu": 4096, "gids": [],
    "max_inline_data": 256, "max_sge": 32, "max_qp_wr": 100, "max_cqe": 100, "max_qp_rd_atom": 1,
    "max_qp_init_rd_atom": 1, "max_srq_wr": 10, "max_srq_sge": 1})");
  TranslateOptions o = Fabric(kLinkEthernet, true);
  o.fabric.target_caps = ParseCaps(two, "caps.json");
  ASSERT_EQ(o.fabric.target_caps.size(), 2u);
  EXPECT_EQ(RefusalsOf([&] { TranslateImage(in_, "", o); }),
            std::vector<std::string>{
                "pid 1234 context 0x1000 uses device mlx5_0; the target has rxe0, rxe1: give --device mlx5_0=NEW"});
  o.fabric.devices = {{"mlx5_0", "rxe0"}};
  TranslateResult r = TranslateImage(in_, "", o);
  EXPECT_TRUE(Contains(r.changes, "pid 1234 context 0x1000: device mlx5_0 -> rxe0"));
  // rxe1 has no RoCE v2 GID and small queues.
  o.fabric.devices = {{"mlx5_0", "rxe1"}};
  auto why = RefusalsOf([&] { TranslateImage(in_, "", o); });
  EXPECT_TRUE(Contains(why, "the target rxe1 has no RoCE v2 GID (its GID table has 0 entries)"))
      << ::testing::PrintToString(why);
  EXPECT_TRUE(Contains(why, "pid 1234 CQ 0x3000 uses cqe 501; the target (rxe1) allows 100"));
  // A target of the other fabric.
  o.fabric.devices = {};
  o.fabric.link_layer = kLinkInfiniBand;
  o.fabric.target_caps = ParseCaps(kRxeCaps, "caps.json");
  EXPECT_TRUE(Contains(RefusalsOf([&] { TranslateImage(in_, "", o); }),
                       "pid 1234 context 0x1000: target device rxe0 is ethernet, not infiniband"));
  // --device without --fabric renames only.
  TranslateOptions d;
  d.dry_run = true;
  d.fabric.devices = {{"mlx5_0", "mlx5_1"}};
  r = TranslateImage(in_, "", d);
  EXPECT_EQ(r.changes, std::vector<std::string>{"pid 1234 context 0x1000: device mlx5_0 -> mlx5_1"});
}

TEST(ParseCaps, Errors) {
  EXPECT_NE(ErrorOf([] { ParseCaps("nope", "c.json"); }).find("c.json: not valid JSON"), std::string::npos);
  EXPECT_NE(ErrorOf([] { ParseCaps("{}", "c.json"); }).find("no \"devices\""), std::string::npos);
  EXPECT_NE(ErrorOf([] { ParseCaps(R"({"devices": []})", "c.json"); }).find("lists no device"), std::string::npos);
  EXPECT_NE(ErrorOf([] { ParseCaps(R"({"devices": [{"name": "x", "link_layer": "ethernet", "active_mtu": 1024}]})",
                                   "c.json"); })
                .find("device x has no max_inline_data"),
            std::string::npos);
}

TEST_F(VerbsTranslateTest, RoceToInfiniBand) {
  VerbsSpec spec = IbSpec();
  spec.h.link_layer = kLinkEthernet;
  spec.Find(IBDBG_VERBS_CONTEXT).u[IBDBG_VCTX_LINK_LAYER] = kLinkEthernet;
  spec.Find(IBDBG_VERBS_CONTEXT).u[IBDBG_VCTX_ACTIVE_MTU] = 3;
  uint64_t* u = spec.Rc().u;
  u[IBDBG_VQP_SL] = 0, u[IBDBG_VQP_PATH_MTU] = 3, u[IBDBG_VQP_IS_GLOBAL] = 1, u[IBDBG_VQP_SGID_INDEX] = 1;
  u[IBDBG_VQP_HOP_LIMIT] = 64, u[IBDBG_VQP_TRAFFIC_CLASS] = 5 << 5;
  spec.Rc().gid[10] = spec.Rc().gid[11] = 0xff, spec.Rc().gid[15] = 2;
  Build(spec);
  TranslateResult r = TranslateImage(in_, t_ / "out", Fabric(kLinkInfiniBand));
  SCOPED_TRACE(::testing::PrintToString(r.changes));
  for (const char* c : {"pid 1234 verbs: link_layer ethernet -> infiniband", "pid 1234 QP 0x11: sl 0 -> 5",
                        "pid 1234 QP 0x11: is_global 1 -> 0", "pid 1234 QP 0x11: sgid_index 1 -> 0",
                        "pid 1234 QP 0x11: traffic_class 160 -> 0"})
    EXPECT_TRUE(Contains(r.changes, c)) << c;
  for (const auto& c : r.changes) EXPECT_EQ(c.find("path_mtu"), std::string::npos) << c;  // 1024 fits 4096
  EXPECT_TRUE(r.warnings.empty());
  VerbsSpec out = ReadVerbs(t_ / "out/proc-1234.img");
  EXPECT_EQ(out.h.link_layer, kLinkInfiniBand);
  EXPECT_EQ(out.Rc().u[IBDBG_VQP_IS_GLOBAL], 0u);
  EXPECT_EQ(out.Rc().u[IBDBG_VQP_SL], 5u);
  // The peer's GID stays: it names the peer for the replay's address exchange.
  EXPECT_EQ(memcmp(out.Rc().gid, spec.Rc().gid, 16), 0);
}

TEST_F(VerbsTranslateTest, UnknownLinkLayerAndNoFabric) {
  VerbsSpec spec = IbSpec();
  spec.h.link_layer = 0;
  spec.Find(IBDBG_VERBS_CONTEXT).u[IBDBG_VCTX_LINK_LAYER] = 0;
  Build(spec);
  EXPECT_EQ(RefusalsOf([&] { TranslateImage(in_, "", Fabric(kLinkEthernet, true)); }),
            std::vector<std::string>{"pid 1234 verbs: the record does not say which link layer it was captured on"});
  // Without --fabric the record is carried as it is, and is not "unknown".
  TranslateResult r = TranslateImage(in_, t_ / "out", TranslateOptions{});
  EXPECT_TRUE(r.warnings.empty()) << ::testing::PrintToString(r.warnings);
  VerbsSpec out = ReadVerbs(t_ / "out/proc-1234.img");
  EXPECT_EQ(out.Pack(), spec.Pack());
}

TEST_F(VerbsTranslateTest, RemoteAtomicsNeedATargetWithAtomics) {
  Build(IbSpec());
  TranslateOptions o = Fabric(kLinkEthernet, true);
  std::string caps = kRxeCaps;
  caps.replace(caps.find("\"atomic_cap\": 1"), 15, "\"atomic_cap\": 0");
  o.fabric.target_caps = ParseCaps(caps, "c");
  EXPECT_EQ(RefusalsOf([&] { TranslateImage(in_, "", o); }),
            std::vector<std::string>{"pid 1234 QP 0x11 allows remote atomics; the target (rxe0) has none"});
}

TEST_F(VerbsTranslateTest, DryRunDiff) {
  VerbsSpec spec = IbSpec();
  spec.o.resize(5);  // context, PD, CQ, RC QP, UD QP
  Build(spec);
  TranslateResult r = TranslateImage(in_, "", Fabric(kLinkEthernet, true));
  EXPECT_EQ(RenderDiff(r),
            "pid 1234 verbs\n"
            "    link_layer infiniband -> ethernet\n"
            "pid 1234 QP 0x11\n"
            "    is_global 0 -> 1\n"
            "    hop_limit 0 -> 64\n"
            "    traffic_class 0 -> 96\n"
            "    sgid_index 0 -> 1\n"
            "    path_mtu 4096 -> 1024\n");
  EXPECT_FALSE(test::Exists(t_ / "out"));
  EXPECT_EQ(RenderDiff(TranslateResult{}), "no changes\n");
}

TEST_F(VerbsTranslateTest, InspectShowsTheTranslation) {
  Build(IbSpec());
  TranslateOptions o = Fabric(kLinkEthernet);
  o.fabric.mtu = 512;
  TranslateImage(in_, t_ / "out", o);
  std::string text = tools::InspectImage(t_ / "out", false);
  SCOPED_TRACE(text);
  EXPECT_NE(text.find("options  fabric roce, mtu 512, target_caps defaults"), std::string::npos);
  EXPECT_NE(text.find("(matches)"), std::string::npos);
  std::string verbs = tools::InspectVerbs(t_ / "out", false);
  SCOPED_TRACE(verbs);
  EXPECT_NE(verbs.find("    fabric ethernet (translated"), std::string::npos);
  EXPECT_NE(verbs.find("qpn 0x11  RC  RTS  dest_qpn 0x22  dlid 9"), std::string::npos);
  EXPECT_NE(verbs.find("mtu 512  sl 3  grh sgid_index 1 hop_limit 64 traffic_class 96"), std::string::npos);
  EXPECT_EQ(verbs.find("memory ("), std::string::npos);  // only the verbs state
  json j = json::parse(tools::InspectVerbs(t_ / "out", true));
  EXPECT_EQ(j["processes"][0]["verbs"]["link_layer"], "ethernet");
  EXPECT_EQ(j["processes"][0]["verbs"]["translated"], true);
  EXPECT_EQ(j["processes"][0]["verbs"]["objects"][3]["sgid_index"], 1);
  j = json::parse(tools::InspectVerbs(in_, true));
  EXPECT_EQ(j["processes"][0]["verbs"]["link_layer"], "infiniband");
  EXPECT_FALSE(j["processes"][0]["verbs"]["objects"][3].contains("sgid_index"));
}

// ---- hosts --------------------------------------------------------------------

class HostTranslateTest : public ::testing::Test {
 protected:
  // Four hosts a..d; b holds two processes.
  void SetUp() override {
    std::vector<test::SampleProcess> ps;
    int pid = 100;
    for (const char* h : {"a", "b", "b", "c", "d"}) {
      auto p = test::DefaultProcess(pid++);
      p.host = h;
      ps.push_back(p);
    }
    m_ = test::BuildImage(t_ / "in", ps);
  }
  std::map<int, std::string> HostsOf(const std::string& dir) {
    std::map<int, std::string> out;
    for (const auto& p : image::ReadManifest(dir).processes) out[p.pid] = p.host;
    return out;
  }
  TranslateOptions Hosts(std::vector<Mapping> h, int k = 0) {
    TranslateOptions o;
    o.hosts.hosts = std::move(h);
    o.hosts.ranks_per_host = k;
    return o;
  }
  TempDir t_;
  image::Manifest m_;
};

TEST_F(HostTranslateTest, RenameAndMerge) {
  TranslateResult r = TranslateImage(t_ / "in", t_ / "out", Hosts({{"a", "x"}, {"c", "y"}, {"d", "y"}}));
  EXPECT_EQ(HostsOf(t_ / "out"),
            (std::map<int, std::string>{{100, "x"}, {101, "b"}, {102, "b"}, {103, "y"}, {104, "y"}}));
  EXPECT_TRUE(Contains(r.changes, "host d: 1 process(es) -> y")) << ::testing::PrintToString(r.changes);
  image::Manifest m = image::ReadManifest(t_ / "out");
  std::vector<std::string> names;
  for (const auto& h : m.hosts) names.push_back(h["name"]);
  EXPECT_EQ(names, (std::vector<std::string>{"x", "b", "y"}));
  EXPECT_EQ(m.parent["options"]["host"], json({"a=x", "c=y", "d=y"}));
}

TEST_F(HostTranslateTest, RanksPerHostPacksWholeHosts) {
  TranslateImage(t_ / "in", t_ / "out", Hosts({}, 2));
  // a|b b|c d: b's two fill a host; a cannot join them.
  EXPECT_EQ(HostsOf(t_ / "out"),
            (std::map<int, std::string>{{100, "a"}, {101, "b"}, {102, "b"}, {103, "c"}, {104, "c"}}));
  TranslateImage(t_ / "in", t_ / "out3", Hosts({}, 3));
  EXPECT_EQ(HostsOf(t_ / "out3"),
            (std::map<int, std::string>{{100, "a"}, {101, "a"}, {102, "a"}, {103, "c"}, {104, "c"}}));
  // After --host: renamed hosts are packed.
  TranslateImage(t_ / "in", t_ / "out4", Hosts({{"a", "n1"}, {"c", "n2"}}, 5));
  EXPECT_EQ(HostsOf(t_ / "out4"),
            (std::map<int, std::string>{{100, "n1"}, {101, "n1"}, {102, "n1"}, {103, "n1"}, {104, "n1"}}));
}

TEST_F(HostTranslateTest, Refusals) {
  EXPECT_EQ(RefusalsOf([&] { TranslateImage(t_ / "in", t_ / "out", Hosts({{"z", "x"}})); }),
            std::vector<std::string>{"--host z=x: the image has no processes on host z (it has: a, b, c, d)"});
  EXPECT_EQ(RefusalsOf([&] { TranslateImage(t_ / "in", t_ / "out", Hosts({}, 1)); }),
            std::vector<std::string>{"--ranks-per-host 1: host b holds 2 processes, and a host's processes are not "
                                     "split (they may share a process tree, pipes and memory)"});
  EXPECT_EQ(RefusalsOf([&] { TranslateImage(t_ / "in", t_ / "out", Hosts({{"a", "x"}, {"a", "y"}})); }),
            std::vector<std::string>{"--host a is given more than once"});
  // A part started through the remote shell keeps a host of its own.
  image::Manifest m = image::ReadManifest(t_ / "in");
  m.hosts = json::array();
  m.hosts.push_back(json{{"name", "a"}});
  m.hosts.push_back(json{{"name", "b"}, {"via", "a:100:1"}});
  m.hosts.push_back(json{{"name", "c"}});
  ::unlink((t_ / "in/manifest.json").c_str());
  image::WriteManifest(t_ / "in/manifest.json", m);
  EXPECT_EQ(RefusalsOf([&] { TranslateImage(t_ / "in", t_ / "out", Hosts({{"b", "a"}})); }),
            std::vector<std::string>{
                "host b was started through the job's remote shell (by a:100), so it cannot share host a with a, b yet"});
  EXPECT_FALSE(test::Exists(t_ / "out"));
  // Renaming its starter's host keeps the link.
  TranslateImage(t_ / "in", t_ / "out", Hosts({{"a", "x"}}));
  image::Manifest o = image::ReadManifest(t_ / "out");
  EXPECT_EQ(o.hosts[1]["name"], "b");
  EXPECT_EQ(o.hosts[1]["via"], "x:100:1");
}

}  // namespace
}  // namespace ibdbg::translate
