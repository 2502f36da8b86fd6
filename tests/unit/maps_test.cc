#include "ibdbg/maps.h"

#include <gtest/gtest.h>
#include <unistd.h>

namespace ibdbg {
namespace {

constexpr const char* kMaps =
    "55d4c3a00000-55d4c3a02000 r--p 00000000 fe:01 1835079                    /usr/bin/cat\n"
    "55d4c3a02000-55d4c3a07000 r-xp 00002000 fe:01 1835079                    /usr/bin/cat\n"
    "55d4c4bd2000-55d4c4bf3000 rw-p 00000000 00:00 0                          [heap]\n"
    "7f1e2a000000-7f1e2a021000 rw-p 00000000 00:00 0 \n"
    "7f1e2b000000-7f1e2b001000 rw-s 00000000 00:05 5                          /dev/zero (deleted)\n"
    "7f1e2b001000-7f1e2b002000 rw-s 00000000 00:05 32769                      /SYSV00000000 (deleted)\n"
    "7f1e2b002000-7f1e2b003000 rw-s 00000000 00:01 1026                       /memfd:my buf (deleted)\n"
    "7f1e2b003000-7f1e2b004000 r--p 00001000 103:02 77                        /tmp/with  two spaces.so\n"
    "7f1e2b004000-7f1e2b005000 r--p 00000000 fe:01 78                         /tmp/gone.so (deleted)\n"
    "7f1e2b005000-7f1e2b006000 rw-p 00000000 00:00 0                          [anon:jit cache]\n"
    "7ffd1c8a0000-7ffd1c8c1000 rw-p 00000000 00:00 0                          [stack]\n"
    "7ffd1c8f0000-7ffd1c8f4000 r--p 00000000 00:00 0                          [vvar]\n"
    "7ffd1c8f4000-7ffd1c8f5000 r--p 00000000 00:00 0                          [vvar_vclock]\n"
    "7ffd1c8f5000-7ffd1c8f7000 r-xp 00000000 00:00 0                          [vdso]\n"
    "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]\n";

TEST(Maps, ParsesRealisticLines) {
  auto m = ParseMaps(kMaps);
  ASSERT_EQ(m.size(), 15u);

  EXPECT_EQ(m[0].start, 0x55d4c3a00000u);
  EXPECT_EQ(m[0].end, 0x55d4c3a02000u);
  EXPECT_TRUE(m[0].r);
  EXPECT_FALSE(m[0].w);
  EXPECT_FALSE(m[0].x);
  EXPECT_FALSE(m[0].shared);
  EXPECT_EQ(m[0].dev_major, 0xfeu);
  EXPECT_EQ(m[0].dev_minor, 1u);
  EXPECT_EQ(m[0].inode, 1835079u);
  EXPECT_EQ(m[0].path, "/usr/bin/cat");
  EXPECT_EQ(m[0].kind, MapKind::File);
  EXPECT_FALSE(m[0].deleted);

  EXPECT_TRUE(m[1].x);
  EXPECT_EQ(m[1].offset, 0x2000u);
  EXPECT_EQ(m[2].kind, MapKind::Heap);
  EXPECT_EQ(m[3].kind, MapKind::Anon);
  EXPECT_EQ(m[3].path, "");
  EXPECT_EQ(m[3].size(), 0x21000u);

  for (int i : {4, 5, 6}) {
    EXPECT_TRUE(m[i].shared) << i;
    EXPECT_TRUE(m[i].deleted) << i;
    EXPECT_EQ(m[i].kind, MapKind::File) << i;
  }
  EXPECT_EQ(m[4].path, "/dev/zero");
  EXPECT_EQ(m[5].path, "/SYSV00000000");
  EXPECT_EQ(m[6].path, "/memfd:my buf");

  EXPECT_EQ(m[7].path, "/tmp/with  two spaces.so");
  EXPECT_EQ(m[7].dev_major, 0x103u);
  EXPECT_EQ(m[7].dev_minor, 2u);
  EXPECT_FALSE(m[7].deleted);
  EXPECT_EQ(m[8].path, "/tmp/gone.so");
  EXPECT_TRUE(m[8].deleted);

  EXPECT_EQ(m[9].kind, MapKind::OtherSpecial);
  EXPECT_EQ(m[9].path, "[anon:jit cache]");
  EXPECT_EQ(m[10].kind, MapKind::Stack);
  EXPECT_EQ(m[11].kind, MapKind::Vvar);
  EXPECT_EQ(m[12].kind, MapKind::VvarVclock);
  EXPECT_EQ(m[13].kind, MapKind::Vdso);
  EXPECT_EQ(m[14].kind, MapKind::Vsyscall);
  EXPECT_EQ(m[14].start, 0xffffffffff600000u);
  EXPECT_TRUE(m[14].x);
  EXPECT_FALSE(m[14].r);
}

TEST(Maps, EmptyAndBlankInput) {
  EXPECT_TRUE(ParseMaps("").empty());
  EXPECT_EQ(ParseMaps("\n00400000-00401000 r--p 00000000 00:00 0\n\n").size(), 1u);
}

TEST(Maps, MalformedLinesNameTheLine) {
  const char* bad[] = {
      "garbage",
      "00400000 r--p 00000000 00:00 0",
      "00400000-00401000 rwzp 00000000 00:00 0",
      "00400000-00401000 r--q 00000000 00:00 0",
      "00400000-00401000 r--p 00000000 0000 0",
      "00400000-00401000 r--p 00000000 00:00",
      "00400000-00401000 r--p 00000000 00:00 x /a",
      "00401000-00400000 r--p 00000000 00:00 0",
      "00400000-00401000 r--p 00000000 00:00 0/a",
      "0040000000000000000000-00401000 r--p 00000000 00:00 0",
  };
  for (const char* line : bad) {
    std::string text = std::string("00400000-00401000 r--p 00000000 00:00 0\n") + line + "\n";
    try {
      ParseMaps(text);
      ADD_FAILURE() << "accepted: " << line;
    } catch (const ImageError& e) {
      EXPECT_NE(std::string(e.what()).find("line 2"), std::string::npos) << e.what();
    }
  }
}

TEST(Maps, ReadsOwnMaps) {
  auto maps = ReadMaps(getpid());
  int local = 0;
  auto here = reinterpret_cast<uint64_t>(&local);
  bool found_stack = false, found_code = false;
  for (const auto& e : maps) {
    if (e.kind == MapKind::Stack) {
      found_stack = true;
      EXPECT_TRUE(e.r && e.w);
      EXPECT_TRUE(here >= e.start && here < e.end);  // gtest runs tests on the main thread
    }
    auto code = reinterpret_cast<uint64_t>(&ReadMaps);
    if (code >= e.start && code < e.end) found_code = e.x && e.kind == MapKind::File;
  }
  EXPECT_TRUE(found_stack);
  EXPECT_TRUE(found_code);
  EXPECT_THROW(ReadMaps(-1), ImageError);
}

}  // namespace
}  // namespace ibdbg
