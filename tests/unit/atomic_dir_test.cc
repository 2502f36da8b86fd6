#include "ibdbg/atomic_dir.h"

#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>

#include "test_util.h"

namespace ibdbg::image {
namespace {

using test::Exists;
using test::ReadFile;
using test::TempDir;

std::vector<std::string> List(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") out.push_back(n);
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

mode_t Mode(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(lstat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

void Put(AtomicDir& dir, const std::string& name, const std::string& content) {
  int fd = dir.CreateFile(name);
  ASSERT_EQ(write(fd, content.data(), content.size()), static_cast<ssize_t>(content.size()));
  close(fd);
}

std::string Content(const std::string& path) {
  auto v = ReadFile(path);
  return {v.begin(), v.end()};
}

TEST(AtomicDir, CommitPublishesFiles) {
  TempDir tmp;
  std::string final_path = tmp / "image";
  {
    AtomicDir dir(final_path);
    EXPECT_EQ(Mode(dir.temp_path()), 0700u);
    EXPECT_EQ(dir.temp_path().rfind(tmp / ".image.tmp.", 0), 0u) << dir.temp_path();
    Put(dir, "core.img", "hello");
    Put(dir, "meta.json", "{}");
    EXPECT_THROW(dir.CreateFile("core.img"), ImageError);
    EXPECT_THROW(dir.CreateFile("../escape"), ImageError);
    EXPECT_THROW(dir.CreateFile(""), ImageError);
    // Entries made behind our back are synced and published too.
    ASSERT_EQ(mkdir((dir.temp_path() + "/sub").c_str(), 0700), 0);
    EXPECT_FALSE(Exists(final_path));
    dir.Commit();
    EXPECT_TRUE(dir.committed());
    EXPECT_THROW(dir.Commit(), ImageError);
  }
  EXPECT_EQ(List(tmp.path()), std::vector<std::string>{"image"});
  EXPECT_EQ(List(final_path), (std::vector<std::string>{"core.img", "meta.json", "sub"}));
  EXPECT_EQ(Mode(final_path + "/core.img"), 0600u);
  EXPECT_EQ(Mode(final_path), 0700u);
  EXPECT_EQ(Content(final_path + "/core.img"), "hello");
}

TEST(AtomicDir, AbandonedDirLeavesNothing) {
  TempDir tmp;
  {
    AtomicDir dir(tmp / "image");
    Put(dir, "a", "x");
    ASSERT_EQ(mkdir((dir.temp_path() + "/nested").c_str(), 0700), 0);
    ASSERT_EQ(symlink("/etc/passwd", (dir.temp_path() + "/nested/link").c_str()), 0);
  }
  EXPECT_TRUE(List(tmp.path()).empty());
  EXPECT_TRUE(Exists("/etc/passwd"));
}

TEST(AtomicDir, ExistingTargetIsNotReplacedByDefault) {
  TempDir tmp;
  std::string final_path = tmp / "image";
  ASSERT_EQ(mkdir(final_path.c_str(), 0700), 0);
  test::WriteFile(final_path + "/old", "old", 3);
  {
    AtomicDir dir(final_path);
    Put(dir, "new", "new");
    try {
      dir.Commit();
      FAIL() << "commit over an existing dir succeeded";
    } catch (const ImageError& e) {
      EXPECT_EQ(std::string(e.what()), final_path + ": already exists (refusing to overwrite)");
    }
    EXPECT_FALSE(dir.committed());
  }
  EXPECT_EQ(List(tmp.path()), std::vector<std::string>{"image"});
  EXPECT_EQ(List(final_path), std::vector<std::string>{"old"});
  EXPECT_EQ(Content(final_path + "/old"), "old");

  // An empty directory must not be silently replaced either.
  std::string empty = tmp / "empty";
  ASSERT_EQ(mkdir(empty.c_str(), 0700), 0);
  AtomicDir dir2(empty);
  EXPECT_THROW(dir2.Commit(), ImageError);
}

TEST(AtomicDir, ReplaceSwapsAndRemovesOldTree) {
  TempDir tmp;
  std::string final_path = tmp / "image";
  {
    AtomicDir first(final_path);
    Put(first, "old", "old");
    first.Commit();
  }
  {
    AtomicDir second(final_path);
    Put(second, "new", "new");
    second.Commit(/*replace_existing=*/true);
  }
  EXPECT_EQ(List(tmp.path()), std::vector<std::string>{"image"});
  EXPECT_EQ(List(final_path), std::vector<std::string>{"new"});
  // Replacing a path that doesn't exist yet is a plain create.
  {
    AtomicDir third(tmp / "fresh");
    third.Commit(true);
  }
  EXPECT_TRUE(Exists(tmp / "fresh"));
}

TEST(AtomicDir, CreatesMissingParents) {
  TempDir tmp;
  std::string final_path = tmp / "a/b/c/image/";
  {
    AtomicDir dir(final_path);
    Put(dir, "f", "1");
    dir.Commit();
  }
  EXPECT_EQ(Mode(tmp / "a/b"), 0700u);
  EXPECT_EQ(Content(tmp / "a/b/c/image/f"), "1");
}

TEST(AtomicDir, BadPaths) {
  TempDir tmp;
  test::WriteFile(tmp / "file", "x", 1);
  EXPECT_THROW(AtomicDir(tmp / "file/image"), ImageError);
  EXPECT_THROW(AtomicDir(tmp / ".."), ImageError);
  EXPECT_THROW(AtomicDir(""), ImageError);
}

}  // namespace
}  // namespace ibdbg::image
