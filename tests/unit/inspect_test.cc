#include "inspect.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_image_builder.h"
#include "test_util.h"

namespace ibdbg::tools {
namespace {

using nlohmann::json;
using test::TempDir;

std::string InspectError(const std::string& image, bool as_json = false) {
  try {
    InspectImage(image, as_json);
  } catch (const ImageError& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    return msg;
  }
  return "";
}

bool Has(const std::string& text, const std::string& what) {
  return text.find(what) != std::string::npos;
}

TEST(Inspect, Text) {
  TempDir t;
  test::BuildImage(t / "img", {test::DefaultProcess(1234)});
  std::string out = InspectImage(t / "img", false);
  SCOPED_TRACE(out);
  EXPECT_TRUE(Has(out, "job        job-0123"));
  EXPECT_TRUE(Has(out, "by ibdbg 0.1.0"));
  EXPECT_TRUE(Has(out, "kernel 6.1.0-test (x86_64)"));
  EXPECT_TRUE(Has(out, "provenance original capture"));
  EXPECT_TRUE(Has(out, "process 1234 (proc-1234.img"));
  EXPECT_TRUE(Has(out, "exe        /usr/bin/app"));
  EXPECT_TRUE(Has(out, "cwd        /home/user/work"));
  EXPECT_TRUE(Has(out, "comm       app, generation 0"));
  // Threads with their roles and where they resume.
  EXPECT_TRUE(Has(out, "main"));
  EXPECT_TRUE(Has(out, "ibdbg-ckpt"));
  EXPECT_TRUE(Has(out, "rip 0x401234"));
  // Memory map lines.
  EXPECT_TRUE(Has(out, "7f0000020000-7f0000023000"));
  EXPECT_TRUE(Has(out, "12.0 KiB rw-p anon         3 pages (12.0 KiB)"));
  EXPECT_TRUE(Has(out, "r-xp file         -  /usr/lib/libfoo.so"));
  EXPECT_TRUE(Has(out, "/tmp/gone.so (deleted)"));
  EXPECT_TRUE(Has(out, "[heap]"));
  EXPECT_TRUE(Has(out, "memory (7 mappings"));
  EXPECT_TRUE(Has(out, "7 pages stored = 28.0 KiB"));
  // Files.
  EXPECT_TRUE(Has(out, "fd 1  file  O_WRONLY|O_APPEND|O_CLOEXEC  offset 42  /usr/lib/data.log"));
  EXPECT_TRUE(Has(out, "fd 0  tty  O_RDWR"));
  EXPECT_TRUE(Has(out, "fd 3  pipe  O_RDONLY  offset 0  pipe:[12345]  pipe 12345  10 B stored"));
  EXPECT_TRUE(Has(out, "/tmp/scratch (deleted)"));
  // Signals and timers.
  EXPECT_TRUE(Has(out, "SIGINT (2)  0x401500  SA_SIGINFO|SA_RESTART"));
  EXPECT_TRUE(Has(out, "SIGPIPE (13)  SIG_IGN"));
  EXPECT_TRUE(Has(out, "[ibdbg checkpoint signal]"));
  EXPECT_FALSE(Has(out, "SIGTERM"));
  EXPECT_TRUE(Has(out, "real  value 1.500000s  interval 2.000000s"));
  EXPECT_TRUE(Has(out, "total      1 processes, 2 threads"));
}

TEST(Inspect, Json) {
  TempDir t;
  test::BuildImage(t / "img", {test::DefaultProcess(1234), test::DefaultProcess(99)});
  json j = json::parse(InspectImage(t / "img/proc-99.img", true));
  EXPECT_EQ(j["kind"], "capture");
  EXPECT_EQ(j["job_id"], "job-0123");
  EXPECT_EQ(j["ibdbg_version"], "0.1.0");
  EXPECT_EQ(j["kernel"], "6.1.0-test");
  EXPECT_TRUE(j["provenance"].empty());
  ASSERT_EQ(j["processes"].size(), 2u);
  const json& p = j["processes"][0];
  EXPECT_EQ(p["pid"], 1234);
  EXPECT_EQ(p["exe"], "/usr/bin/app");
  EXPECT_EQ(p["cwd"], "/home/user/work");
  ASSERT_EQ(p["threads"].size(), 2u);
  EXPECT_EQ(p["threads"][0]["main"], true);
  EXPECT_EQ(p["threads"][1]["ckpt"], true);
  ASSERT_EQ(p["vmas"].size(), 7u);
  EXPECT_EQ(p["vmas"][4]["start"], "0x7f0000020000");
  EXPECT_EQ(p["vmas"][4]["pages"], 3);
  EXPECT_EQ(p["vmas"][4]["prot"], "rw-p");
  EXPECT_EQ(p["vmas"][2]["path"], "/usr/lib/libfoo.so");
  ASSERT_EQ(p["fds"].size(), 4u);
  EXPECT_EQ(p["fds"][1]["flags"], json({"O_WRONLY", "O_APPEND", "O_CLOEXEC"}));
  EXPECT_EQ(p["fds"][3]["deleted"], true);
  EXPECT_EQ(p["fds"][3]["data_bytes"], 10);
  EXPECT_EQ(p["signal_handlers"].size(), 3u);
  EXPECT_EQ(p["itimers"].size(), 1u);
  EXPECT_EQ(p["totals"]["page_bytes"], 7 * 4096);
  EXPECT_EQ(j["totals"]["processes"], 2);
  EXPECT_EQ(j["totals"]["page_bytes"], 2 * 7 * 4096);
  for (const char* key : {"image", "format", "kind", "ibdbg_version", "job_id", "created",
                          "created_ns", "host", "kernel", "machine", "provenance", "processes",
                          "totals"})
    EXPECT_TRUE(j.contains(key)) << key;
}

TEST(Inspect, CorruptedPage) {
  TempDir t;
  test::BuildImage(t / "img", {test::DefaultProcess(1234)});
  std::string path = t / "img/proc-1234.img";
  test::FlipByte(path, test::FindRecord(path, image::RecordType::Pages) + 48 + 5);
  std::string e = InspectError(t / "img");
  EXPECT_NE(e.find("proc-1234.img: corrupted record"), std::string::npos) << e;
  EXPECT_NE(InspectError(t / "img", true), "");
}

TEST(Inspect, TruncatedAndMissingProcessImage) {
  TempDir t;
  test::BuildImage(t / "img", {test::DefaultProcess(1234), test::DefaultProcess(5)});
  auto b = test::ReadFile(t / "img/proc-5.img");
  b.resize(b.size() - 10);
  test::WriteFile(t / "img/proc-5.img", b);
  EXPECT_NE(InspectError(t / "img").find("proc-5.img"), std::string::npos);
  unlink((t / "img/proc-5.img").c_str());
  EXPECT_NE(InspectError(t / "img").find("No such file"), std::string::npos);
}

TEST(Inspect, NotAnImage) {
  TempDir t;
  EXPECT_NE(InspectError(t.path()).find("not an ibdbg image (no manifest.json)"),
            std::string::npos);
}

TEST(Inspect, PidMismatch) {
  TempDir t;
  test::BuildImage(t / "img", {test::DefaultProcess(1234)});
  test::TempDir other;
  test::BuildImage(other / "img", {test::DefaultProcess(555)});
  // A process image swapped in from another capture.
  test::WriteFile(t / "img/proc-1234.img", test::ReadFile(other / "img/proc-555.img"));
  EXPECT_NE(InspectError(t / "img").find("holds pid 555 but the manifest says 1234"),
            std::string::npos);
}

TEST(Inspect, PagesOutsideMappings) {
  TempDir t;
  auto p = test::DefaultProcess(1234);
  p.vmas[4].end = p.vmas[4].start + 4096;  // 3 pages stored, 1 mapped
  test::BuildImage(t / "img", {p});
  EXPECT_NE(InspectError(t / "img").find("lie outside every mapping"), std::string::npos);
}

TEST(Inspect, UnknownRecordsAreSkipped) {
  TempDir t;
  auto p = test::DefaultProcess(1234);
  p.extra.push_back({999, 7, "future data"});
  test::BuildImage(t / "img", {p});
  json j = json::parse(InspectImage(t / "img", true));
  EXPECT_EQ(j["processes"][0]["totals"]["other_records"], 1);
}

// A verbs record (capture/verbs): one RC QP and its MR, as the layer writes them.
std::string VerbsRecord(uint32_t nobjs_claimed) {
  ibdbg_verbs_hdr h{};
  h.magic = IBDBG_VERBS_MAGIC;
  h.nobjs = nobjs_claimed;
  std::snprintf(h.backend, sizeof h.backend, "/usr/lib/softrdma/libibverbs.so.1");
  h.nbackend_tids = 1;
  h.backend_tids[0] = 4321;
  h.nbackend_fds = 2;
  h.backend_fds[0] = 7, h.backend_fds[1] = 9;
  h.link_layer = 1;
  ibdbg_verbs_obj o[4]{};
  o[2].kind = IBDBG_VERBS_CONTEXT;
  o[2].handle = 0x4000;
  std::snprintf(o[2].name, sizeof o[2].name, "softrdma0");
  o[2].u[IBDBG_VCTX_LINK_LAYER] = 1, o[2].u[IBDBG_VCTX_LID] = 7, o[2].u[IBDBG_VCTX_ACTIVE_MTU] = 5;
  o[3].kind = IBDBG_VERBS_RECV;
  o[3].handle = 0x7000;
  o[3].parent[0] = 0x6000;
  o[3].u[0] = 0x2a, o[3].u[1] = 1, o[3].u[2] = 0x7f0000020000, o[3].u[3] = 4096 | (0x101ull << 32);
  o[0].kind = IBDBG_VERBS_MR;
  o[0].handle = 0x5000;
  o[0].u[0] = 0x7f0000020000, o[0].u[1] = 4096, o[0].u[2] = 7, o[0].u[3] = 0x101, o[0].u[4] = 0x102;
  o[1].kind = IBDBG_VERBS_QP;
  o[1].handle = 0x6000;
  o[1].u[IBDBG_VQP_QPN] = 0x84ef01, o[1].u[IBDBG_VQP_TYPE] = 2, o[1].u[IBDBG_VQP_STATE] = 3;
  o[1].u[IBDBG_VQP_DEST_QPN] = 0xd7f301, o[1].u[IBDBG_VQP_RECVS_POSTED] = 12;
  o[1].u[IBDBG_VQP_PATH_MTU] = 3, o[1].u[IBDBG_VQP_IS_GLOBAL] = 1, o[1].u[IBDBG_VQP_SGID_INDEX] = 1;
  o[1].gid[10] = 0xff, o[1].gid[11] = 0xff, o[1].gid[12] = 10, o[1].gid[15] = 2;
  std::string s((const char*)&h, sizeof h);
  s.append((const char*)o, sizeof o);
  return s;
}

TEST(Inspect, VerbsRecord) {
  TempDir t;
  auto p = test::DefaultProcess(1234);
  p.extra.push_back({(uint32_t)image::RecordType::Verbs, 0, VerbsRecord(4)});
  test::BuildImage(t / "img", {p});
  std::string out = InspectImage(t / "img", false);
  SCOPED_TRACE(out);
  EXPECT_TRUE(Has(out, "context 0x4000  device softrdma0"));
  EXPECT_TRUE(Has(out, "link_layer infiniband  lid 7  active_mtu 4096"));
  EXPECT_TRUE(Has(out, "recv 0x7000  owner 0x6000  wr_id 0x2a"));
  EXPECT_TRUE(Has(out, "verbs (4 objects, backend /usr/lib/softrdma/libibverbs.so.1)"));
  EXPECT_TRUE(Has(out, "backend threads: 4321  backend fds: 7,9"));
  EXPECT_TRUE(Has(out, "mr 0x5000  addr 0x7f0000020000  length 4096  access 0x7  lkey 0x101  rkey 0x102"));
  EXPECT_TRUE(Has(out, "qp 0x6000  qpn 0x84ef01  RC  RTS  dest_qpn 0xd7f301"));
  EXPECT_TRUE(Has(out, "receives posted 12"));
  json j = json::parse(InspectImage(t / "img", true));
  const json& v = j["processes"][0]["verbs"];
  EXPECT_EQ(v["objects"][1]["state"], "RTS");
  EXPECT_EQ(v["link_layer"], "infiniband");
  EXPECT_EQ(v["objects"][1]["path_mtu"], 1024);
  EXPECT_EQ(v["objects"][1]["sgid_index"], 1);
  EXPECT_EQ(v["objects"][1]["dgid"], "0000:0000:0000:0000:0000:ffff:0a00:0002");
  EXPECT_EQ(v["objects"][3]["sges"][0]["length"], 4096);
  EXPECT_EQ(v["objects"][3]["sges"][0]["lkey"], "0x101");
}

TEST(Inspect, DamagedVerbsRecordIsAnError) {
  TempDir t;
  auto p = test::DefaultProcess(1234);
  p.extra.push_back({(uint32_t)image::RecordType::Verbs, 0, VerbsRecord(5)});  // claims one more object
  test::BuildImage(t / "img", {p});
  EXPECT_NE(InspectError(t / "img").find("verbs record is damaged"), std::string::npos);
}

TEST(Inspect, OddPathsStayOnOneLine) {
  TempDir t;
  auto p = test::DefaultProcess(1234);
  p.vmas[2].path = "/usr/lib/evil\nprocess 1 (fake)";
  p.fds[1].path = "/tmp/\xff\xfe";  // not UTF-8
  test::BuildImage(t / "img", {p});
  std::string out = InspectImage(t / "img", false);
  EXPECT_NE(out.find("/usr/lib/evil\\x0aprocess 1 (fake)"), std::string::npos);
  EXPECT_EQ(out.find("\nprocess 1 "), std::string::npos);
  EXPECT_NO_THROW(json::parse(InspectImage(t / "img", true)));
}

}  // namespace
}  // namespace ibdbg::tools
