#include "ibdbg/mpi_rank.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <string>

namespace ibdbg {
namespace {

// Whether `name` is set at all (even to something unusable), and its value.
bool Lookup(std::string_view env, std::string_view name, std::string_view* value) {
  size_t at = 0;
  while (at < env.size()) {
    size_t end = env.find('\0', at);
    if (end == std::string_view::npos) end = env.size();
    std::string_view entry = env.substr(at, end - at);
    if (entry.size() > name.size() && entry.compare(0, name.size(), name) == 0 && entry[name.size()] == '=') {
      *value = entry.substr(name.size() + 1);
      return true;
    }
    at = end + 1;
  }
  return false;
}

std::optional<int> ParseRank(std::string_view v) {
  if (v.empty() || v.size() > 10) return std::nullopt;
  long long x = 0;
  for (char c : v) {
    if (c < '0' || c > '9') return std::nullopt;
    x = x * 10 + (c - '0');
  }
  if (x > INT_MAX) return std::nullopt;
  return static_cast<int>(x);
}

}  // namespace

std::optional<int> MpiRankFromEnviron(std::string_view env) {
  bool mpi_set = false;
  for (std::string_view name : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"}) {
    std::string_view v;
    if (!Lookup(env, name, &v)) continue;
    mpi_set = true;
    if (auto r = ParseRank(v)) return r;
  }
  // An MPI launcher started under srun (one task running mpirun, say) gives
  // its ranks SLURM_PROCID of that task: only a rank when MPI said nothing.
  std::string_view v;
  if (!mpi_set && Lookup(env, "SLURM_PROCID", &v)) return ParseRank(v);
  return std::nullopt;
}

std::optional<int> ProcessMpiRank(pid_t pid) {
  std::string path = "/proc/" + std::to_string(pid) + "/environ";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::string env;
  char buf[16384];
  // An environment is a few KiB; a giant one is read only as far as a limit.
  while (env.size() < (4u << 20)) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    env.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return MpiRankFromEnviron(env);
}

}  // namespace ibdbg
