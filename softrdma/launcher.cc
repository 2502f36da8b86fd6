#include "launcher.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <errno.h>

namespace softrdma {

static bool HasLib(const std::string& dir) {
  return !dir.empty() && access((dir + "/libibverbs.so.1").c_str(), R_OK) == 0;
}

std::string SoftRdmaLibDir() {
  const char* e = getenv("IBDBG_SOFTRDMA_DIR");
  if (e && HasLib(e)) return e;
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = 0;
    std::string d(exe);
    d = d.substr(0, d.rfind('/'));
    std::string cand = d + "/../lib/softrdma";
    char real[PATH_MAX];
    if (HasLib(cand) && realpath(cand.c_str(), real)) return real;
  }
#ifdef SOFTRDMA_BUILD_LIBDIR
  if (HasLib(SOFTRDMA_BUILD_LIBDIR)) return SOFTRDMA_BUILD_LIBDIR;
#endif
  return "";
}

static void Prepend(const char* var, const std::string& value, char sep) {
  const char* old = getenv(var);
  std::string v = value;
  if (old && *old) v += sep + std::string(old);
  setenv(var, v.c_str(), 1);
}

// softrdma's libibverbs.so.1, and its librdmacm.so.1 when built: preloaded
// for programs that dlopen them (LD_LIBRARY_PATH serves their NEEDED).
static std::string PreloadList(const std::string& dir) {
  std::string l = dir + "/libibverbs.so.1";
  std::string cm = dir + "/librdmacm.so.1";
  if (access(cm.c_str(), R_OK) == 0) l += " " + cm;
  return l;
}

// Preloads go after ibdbg's capture library and verbs layer when those are
// there already (`ibdbg run -- ibdbg softrdma -- CMD`): the verbs layer must
// come before the backend it forwards to, as when softrdma starts `ibdbg run`.
static void PreloadAfterIbdbg(const std::string& value) {
  const char* old = getenv("LD_PRELOAD");
  std::vector<std::string> items;
  for (const char* c = old ? old : ""; *c;) {
    size_t n = strcspn(c, ": ");
    if (n) items.emplace_back(c, n);
    c += n;
    if (*c) c++;
  }
  auto ends = [](const std::string& s, const char* tail) {
    size_t l = strlen(tail);
    return s.size() >= l && s.compare(s.size() - l, l, tail) == 0;
  };
  size_t at = 0;
  for (size_t i = 0; i < items.size(); i++)
    if (ends(items[i], "libibdbg_capture.so") || ends(items[i], "libibdbg_verbs.so")) at = i + 1;
  if (!at) return Prepend("LD_PRELOAD", value, ' ');
  items.insert(items.begin() + at, value);
  std::string v;
  for (const auto& it : items) v += (v.empty() ? "" : " ") + it;
  setenv("LD_PRELOAD", v.c_str(), 1);
}

int RunSoftRdma(const std::string& mode, const std::vector<std::string>& argv) {
  if (mode != "ib" && mode != "roce") {
    fprintf(stderr, "ibdbg softrdma: --mode must be ib or roce, not '%s'\n", mode.c_str());
    return 2;
  }
  if (argv.empty()) {
    fprintf(stderr, "ibdbg softrdma: no command given\n");
    return 2;
  }
  std::string dir = SoftRdmaLibDir();
  if (dir.empty()) {
    fprintf(stderr, "ibdbg softrdma: libibverbs.so.1 of softrdma not found (set IBDBG_SOFTRDMA_DIR)\n");
    return 127;
  }
  Prepend("LD_LIBRARY_PATH", dir, ':');
  std::string preload = PreloadList(dir);
  // The device's sysfs entries for programs that read them directly (UCX,
  // Open MPI); optional: without it plain verbs programs still work.
  if (access((dir + "/libsoftrdma-sysfs.so").c_str(), R_OK) == 0) preload = dir + "/libsoftrdma-sysfs.so " + preload;
  PreloadAfterIbdbg(preload);
  setenv("SOFTRDMA_MODE", mode.c_str(), 1);
  // Open MPI's openib BTL takes its per-device settings from INI files by
  // vendor/part id; softrdma's is next to the library. mpirun passes OMPI_MCA_*
  // on to every rank, remote ones included. A value the user set stays.
  std::string ini = dir + "/openib-device-params.ini";
  if (access(ini.c_str(), R_OK) == 0) setenv("OMPI_MCA_btl_openib_device_param_files", ini.c_str(), 0);
  // rdma-core's own provider lookup is not involved, but keep its config
  // from pointing programs at kernel devices in librdmacm.
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  execvp(args[0], args.data());
  fprintf(stderr, "ibdbg softrdma: cannot run %s: %s\n", args[0], strerror(errno));
  return 127;
}

}  // namespace softrdma
