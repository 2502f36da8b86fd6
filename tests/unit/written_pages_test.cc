#include "ibdbg/written_pages.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <set>
#include <string>

namespace ibdbg {
namespace {

constexpr size_t kPage = 4096;

std::set<uint64_t> PagesOf(const std::vector<PageRange>& ranges, uint64_t base) {
  std::set<uint64_t> pages;
  for (const auto& r : ranges)
    for (uint64_t a = r.start; a < r.end; a += kPage) pages.insert((a - base) / kPage);
  return pages;
}

// The tracked process writes, another process (as the agent would) scans its
// pagemap: what matters for capture is that the scan sees every write made
// between two scans -- ordinary stores, stores of zeros and writes done by the
// kernel on the process's behalf -- and nothing else.
TEST(WrittenPages, AnotherProcessSeesExactlyThePagesWrittenSinceTheLastScan) {
  constexpr size_t kPages = 1024;
  char* m = static_cast<char*>(
      mmap(nullptr, kPages * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(m, MAP_FAILED);
  memset(m, 1, kPages * kPage / 2);  // half populated, half never touched
  std::string err;
  int uffd = OpenWriteTracker(&err);
  if (uffd < 0) GTEST_SKIP() << err;
  ASSERT_TRUE(TrackWrites(uffd, (uint64_t)m, kPages * kPage, &err)) << err;

  int to_scanner[2], to_writer[2];
  ASSERT_EQ(pipe(to_scanner), 0);
  ASSERT_EQ(pipe(to_writer), 0);
  pid_t writer = getpid();
  pid_t scanner = fork();
  ASSERT_GE(scanner, 0);
  if (scanner == 0) {
    // Results go back as a byte per check; gtest assertions do not cross fork.
    char c;
    std::string e;
    std::vector<PageRange> r;
    int pm = open(("/proc/" + std::to_string(writer) + "/pagemap").c_str(), O_RDONLY);
    bool ok = pm >= 0;
    // First look: nothing armed yet, so everything counts; this arms it.
    ok = ok && ScanWrittenPages(pm, (uint64_t)m, (uint64_t)m + kPages * kPage, true, &r, &e);
    ok = ok && PagesOf(r, (uint64_t)m).size() == kPages;
    r.clear();
    ok = ok && ScanWrittenPages(pm, (uint64_t)m, (uint64_t)m + kPages * kPage, true, &r, &e) &&
         r.empty();
    if (write(to_writer[1], ok ? "y" : "n", 1) != 1 || read(to_scanner[0], &c, 1) != 1) _exit(2);
    r.clear();
    ok = ScanWrittenPages(pm, (uint64_t)m, (uint64_t)m + kPages * kPage, true, &r, &e);
    std::set<uint64_t> want = {3, 100, 101, 700, 900};
    if (ok && PagesOf(r, (uint64_t)m) != want) {
      e = "written pages found:";
      for (uint64_t p : PagesOf(r, (uint64_t)m)) e += " " + std::to_string(p);
      e += " (want 3 100 101 700 900)";
      ok = false;
    }
    r.clear();
    // Re-armed by the scan that read them.
    ok = ok && ScanWrittenPages(pm, (uint64_t)m, (uint64_t)m + kPages * kPage, true, &r, &e) &&
         r.empty();
    if (!ok) fprintf(stderr, "scanner: %s\n", e.empty() ? "a re-scan found pages" : e.c_str());
    _exit(ok ? 0 : 1);
  }
  char c = 0;
  ASSERT_EQ(read(to_writer[0], &c, 1), 1);
  ASSERT_EQ(c, 'y') << "first scans";
  // A forked capture leaves a copy-on-write copy of the process: writes after
  // it (copy-on-write faults) must still be seen in the original.
  pid_t frozen = fork();
  ASSERT_GE(frozen, 0);
  if (frozen == 0) {
    pause();
    _exit(0);
  }
  m[3 * kPage + 5] = 2;
  memset(m + 100 * kPage, 0, 2 * kPage);  // zeros over ones: still a change
  m[700 * kPage] = 9;                      // a page never populated before
  int zero = open("/dev/zero", O_RDONLY);  // a write made by the kernel
  ASSERT_EQ(read(zero, m + 900 * kPage, kPage), (ssize_t)kPage);
  close(zero);
  (void)m[500 * kPage];  // a read is not a write
  ASSERT_EQ(write(to_scanner[1], "g", 1), 1);
  int status = 0;
  ASSERT_EQ(waitpid(scanner, &status, 0), scanner);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  kill(frozen, SIGKILL);
  waitpid(frozen, &status, 0);
  close(uffd);
  munmap(m, kPages * kPage);
}

TEST(WrittenPages, AnUntrackedRangeIsAnErrorNotClean) {
  char* m = static_cast<char*>(
      mmap(nullptr, 4 * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(m, MAP_FAILED);
  m[0] = 1;
  int pm = open("/proc/self/pagemap", O_RDONLY);
  ASSERT_GE(pm, 0);
  std::vector<PageRange> r;
  std::string err;
  EXPECT_FALSE(ScanWrittenPages(pm, (uint64_t)m, (uint64_t)m + 4 * kPage, true, &r, &err));
  EXPECT_NE(err.find("not tracked"), std::string::npos) << err;
  close(pm);
  munmap(m, 4 * kPage);
}

}  // namespace
}  // namespace ibdbg
