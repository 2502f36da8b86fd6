// Yardstick for incremental capture (issue 7): how long finding and reading
// the pages written since the last capture takes against reading all of them,
// the memory part of a full capture. A process of SIZE MiB (filled with
// random bytes) is tracked with ibdbg/written_pages.h, PERCENT of its pages
// are written, and a second process -- where the agent is -- scans its
// pagemap (and re-arms it) and reads the written pages through /proc/PID/mem;
// then it reads the whole region the same way. Not a full capture (no image
// is written, nothing compressed): it bounds what the incremental path costs.
//   written_scan [SIZE_MIB=1024] [PERCENT=1]
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "ibdbg/written_pages.h"

namespace {
double Since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}
}  // namespace

int main(int argc, char** argv) {
  const size_t mib = argc > 1 ? strtoul(argv[1], nullptr, 10) : 1024;
  const double percent = argc > 2 ? strtod(argv[2], nullptr) : 1.0;
  const size_t page = 4096, len = mib << 20, pages = len / page;
  auto* m = static_cast<uint8_t*>(mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (m == MAP_FAILED) return perror("mmap"), 1;
  std::mt19937_64 rng(7);
  for (size_t i = 0; i < len / 8; i++) reinterpret_cast<uint64_t*>(m)[i] = rng();
  std::string err;
  int uffd = ibdbg::OpenWriteTracker(&err);
  if (uffd < 0 || !ibdbg::TrackWrites(uffd, (uint64_t)m, len, &err)) return fprintf(stderr, "%s\n", err.c_str()), 1;
  int go[2], done[2];
  if (pipe(go) || pipe(done)) return perror("pipe"), 1;
  const size_t every = std::max<size_t>(1, (size_t)(100 / percent));
  const size_t want = (pages + every - 1) / every;
  pid_t target = getpid();
  pid_t agent = fork();
  if (agent == 0) {
    char c;
    std::string base = "/proc/" + std::to_string(target);
    int pm = open((base + "/pagemap").c_str(), O_RDONLY), mem = open((base + "/mem").c_str(), O_RDONLY);
    std::vector<ibdbg::PageRange> r;
    if (pm < 0 || mem < 0 || !ibdbg::ScanWrittenPages(pm, (uint64_t)m, (uint64_t)m + len, true, &r, &err))
      return fprintf(stderr, "agent: %s\n", err.c_str()), _exit(1), 1;
    if (write(done[1], "a", 1) != 1 || read(go[0], &c, 1) != 1) _exit(1);
    std::vector<uint8_t> buf(len);
    r.clear();
    auto t = std::chrono::steady_clock::now();
    if (!ibdbg::ScanWrittenPages(pm, (uint64_t)m, (uint64_t)m + len, true, &r, &err)) _exit(1);
    double scan_ms = Since(t);
    size_t got = 0;
    for (const auto& x : r) got += pread(mem, buf.data() + got, x.end - x.start, (off_t)x.start);
    double incr_ms = Since(t);
    t = std::chrono::steady_clock::now();
    for (size_t off = 0; off < len; off += 64 << 20)
      if (pread(mem, buf.data() + off, std::min<size_t>(64 << 20, len - off), (off_t)((uint64_t)m + off)) < 0) _exit(1);
    double full_ms = Since(t);
    printf("region %zu MiB, %.2f%% pages written: %zu pages found in %zu ranges\n", mib, percent, got / page, r.size());
    printf("incremental: scan+re-arm %.2f ms, scan+read written %.2f ms\n", scan_ms, incr_ms);
    printf("full read: %.2f ms; incremental/full = %.2f%%\n", full_ms, 100 * incr_ms / full_ms);
    fflush(stdout);
    if (got / page != want) {
      // A scan that misses a write would make a broken image: never a number.
      fprintf(stderr, "error: %zu pages written, %zu found\n", want, got / page);
      _exit(1);
    }
    _exit(0);
  }
  char c;
  if (read(done[0], &c, 1) != 1) return 1;
  for (size_t i = 0; i < pages; i += every) m[i * page + (rng() % page)] ^= 0x5a;
  if (write(go[1], "g", 1) != 1) return 1;
  int st = 0;
  waitpid(agent, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}
