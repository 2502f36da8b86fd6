// The command line: every bad input gets one clear line on stderr and a
// non-zero exit; images are never touched by a failing command.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

#include "test_image_builder.h"
#include "test_util.h"

namespace ibdbg::test {
namespace {

struct Result {
  int status = -1;
  std::string out, err;
};

// Runs ibdbg with the given shell-quoted arguments.
Result Ibdbg(const std::string& args) {
  TempDir t;
  std::string out = t.path() + "/out", err = t.path() + "/err";
  std::string cmd = std::string("IBDBG_HOME=") + t.path() + "/home " + IBDBG_BIN + " " + args + " >" + out +
                    " 2>" + err + " </dev/null";
  int st = std::system(cmd.c_str());
  Result r;
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
  auto o = ReadFile(out), e = ReadFile(err);
  r.out.assign(o.begin(), o.end());
  r.err.assign(e.begin(), e.end());
  return r;
}

size_t Lines(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

void ExpectOneLineError(const Result& r, const std::string& fragment) {
  EXPECT_NE(r.status, 0);
  EXPECT_EQ(Lines(r.err), 1u) << r.err;
  EXPECT_NE(r.err.find(fragment), std::string::npos) << r.err;
}

TEST(Cli, HelpListsEveryCommand) {
  Result r = Ibdbg("--help");
  EXPECT_EQ(r.status, 0);
  for (const char* c : {"run", "capture", "translate", "replay", "inspect", "status"})
    EXPECT_NE(r.out.find(c), std::string::npos) << c;
  EXPECT_EQ(r.out.find("coordinator"), std::string::npos) << "internal command shown";
  Result sub = Ibdbg("replay --help");
  EXPECT_EQ(sub.status, 0);
  EXPECT_NE(sub.out.find("--gdb-batch"), std::string::npos);
  EXPECT_NE(sub.out.find("--gdb-mi"), std::string::npos);
  EXPECT_EQ(sub.out.find("--gdb-parked"), std::string::npos) << "internal option shown";
}

TEST(Cli, NoCommandIsAnError) { EXPECT_NE(Ibdbg("").status, 0); }

TEST(Cli, UnknownOptionIsAnError) { EXPECT_NE(Ibdbg("capture --bogus").status, 0); }

TEST(Cli, GdbModesExcludeEachOther) {
  for (const char* args : {"replay /x --gdb --gdb-batch bt", "replay /x --gdb --gdb-mi", "replay /x --gdb-batch bt --gdb-mi"})
    ExpectOneLineError(Ibdbg(args), "exclude each other");
  ExpectOneLineError(Ibdbg("replay /x --gdb-batch ';'"), "--gdb-batch needs gdb commands");
}

TEST(Cli, MissingImage) {
  ExpectOneLineError(Ibdbg("replay /nonexistent/image"), "/nonexistent/image");
  ExpectOneLineError(Ibdbg("inspect /nonexistent/image"), "/nonexistent/image");
  ExpectOneLineError(Ibdbg("translate /nonexistent/image -o /tmp/ibdbg-never-written"), "/nonexistent/image");
}

TEST(Cli, NoSuchJob) {
  ExpectOneLineError(Ibdbg("capture --job deadbeef"), "deadbeef");
  ExpectOneLineError(Ibdbg("status --job deadbeef"), "deadbeef");
  ExpectOneLineError(Ibdbg("capture --job '../../etc'"), "bad job id");
}

TEST(Cli, NoRunningJob) { ExpectOneLineError(Ibdbg("capture"), "no running job"); }

class CliImage : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = tmp_.path() + "/img";
    BuildImage(dir_, {DefaultProcess(4321)});
    img_ = dir_ + "/proc-4321.img";
  }
  TempDir tmp_;
  std::string dir_, img_;
};

TEST_F(CliImage, InspectGoodImage) {
  Result r = Ibdbg("inspect " + dir_);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("4321"), std::string::npos);
  Result j = Ibdbg("inspect --json " + dir_);
  EXPECT_EQ(j.status, 0);
  EXPECT_NO_THROW({ auto parsed = nlohmann::json::parse(j.out); (void)parsed; });
}

TEST_F(CliImage, ReplayHostMappings) {
  ExpectOneLineError(Ibdbg("replay " + dir_ + " --host nohost"), "expected OLD=NEW");
  ExpectOneLineError(Ibdbg("replay " + dir_ + " --host =b"), "expected OLD=NEW");
  ExpectOneLineError(Ibdbg("replay " + dir_ + " --host elsewhere=b"), "no processes of host elsewhere");
}

TEST_F(CliImage, TruncatedImage) {
  auto bytes = ReadFile(img_);
  bytes.resize(bytes.size() / 2);
  WriteFile(img_, bytes);
  ExpectOneLineError(Ibdbg("inspect " + dir_), "truncated");
  ExpectOneLineError(Ibdbg("replay " + dir_), "proc-4321.img");
  ExpectOneLineError(Ibdbg("translate " + dir_ + " -o " + tmp_.path() + "/out"), "proc-4321.img");
  EXPECT_TRUE(ListDir(tmp_.path()) == std::vector<std::string>{"img"}) << "translate left something behind";
}

TEST_F(CliImage, CorruptedImage) {
  FlipByte(img_, FindRecord(img_, image::RecordType::Process) + 60);
  ExpectOneLineError(Ibdbg("inspect " + dir_), "corrupted");
  ExpectOneLineError(Ibdbg("replay " + dir_), "corrupted");
}

TEST_F(CliImage, ForeignFile) {
  WriteFile(img_, std::vector<uint8_t>(4096, 'x'));
  ExpectOneLineError(Ibdbg("inspect " + dir_), "not an ibdbg image");
  ExpectOneLineError(Ibdbg("replay " + dir_), "not an ibdbg image");
}

TEST_F(CliImage, FutureVersion) {
  auto bytes = ReadFile(img_);
  bytes[8] = 99;  // format_version follows the 8-byte magic
  WriteFile(img_, bytes);
  ExpectOneLineError(Ibdbg("inspect " + dir_), "newer");
  ExpectOneLineError(Ibdbg("replay " + dir_), "newer");
}

TEST_F(CliImage, TranslateNeverOverwrites) {
  std::string out = tmp_.path() + "/out";
  ASSERT_EQ(Ibdbg("translate " + dir_ + " -o " + out).status, 0);
  auto before = ReadFile(out + "/proc-4321.img");
  ExpectOneLineError(Ibdbg("translate " + dir_ + " -o " + out + " --map-path /usr=/opt"), "exists");
  EXPECT_EQ(ReadFile(out + "/proc-4321.img"), before);
  ExpectOneLineError(Ibdbg("translate " + dir_ + " -o " + tmp_.path() + "/o2 --map-path usr=/opt"), "usr");
}

}  // namespace
}  // namespace ibdbg::test
