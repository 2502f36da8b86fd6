// ibdbg: capture, translate and replay jobs, with a debugger attached.
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "agent.h"
#include "caps.h"
#include "core.h"
#include "ibdbg/atomic_dir.h"
#include "ibdbg/error.h"
#include "ibdbg/image_chain.h"
#include "ibdbg/image_file.h"
#include "ibdbg/manifest.h"
#include "ibdbg/proto.h"
#include "ibdbg/version.h"
#include "inspect.h"
#include "job.h"
#include "replay/launcher.h"
#include "replay/page_fill.h"
#include "translate/translate.h"
#ifdef IBDBG_HAVE_SOFTRDMA
#include "launcher.h"
#endif

using namespace ibdbg;
using namespace ibdbg::tools;
using namespace ibdbg::image;
using namespace ibdbg::translate;

namespace {

bool Exists(const std::string& p) {
  struct stat sb;
  return stat(p.c_str(), &sb) == 0;
}

// Finds a sibling file of the installed or built ibdbg.
std::string FindHelper(const std::vector<std::string>& rels, const char* env) {
  if (env) {
    if (const char* e = getenv(env); e && *e) return e;
  }
  std::string base = SelfDir();
  for (const auto& r : rels)
    if (Exists(base + "/" + r)) return base + "/" + r;
  throw std::runtime_error("cannot find " + rels.front() + " next to " + base + " (broken installation?)");
}

std::string CaptureLibrary() {
  return FindHelper({"../lib/libibdbg_capture.so", "../lib/ibdbg/libibdbg_capture.so",
                     "../lib/x86_64-linux-gnu/ibdbg/libibdbg_capture.so"},
                    "IBDBG_CAPTURE_LIB");
}
// The verbs layer, preloaded after the capture library; optional (a build
// without libibverbs' headers has none).
std::string VerbsLibrary() {
  try {
    return FindHelper({"../lib/libibdbg_verbs.so", "../lib/ibdbg/libibdbg_verbs.so",
                       "../lib/x86_64-linux-gnu/ibdbg/libibdbg_verbs.so"},
                      "IBDBG_VERBS_LIB");
  } catch (const std::exception&) {
    return "";
  }
}
std::string Restorer() {
  return FindHelper({"ibdbg-restore", "../libexec/ibdbg/ibdbg-restore"}, "IBDBG_RESTORER");
}
std::string GdbScript() { return FindHelper({"../share/ibdbg/ibdbg.py"}, "IBDBG_GDB_SCRIPT"); }

// --job ID, --dir DIR, $IBDBG_JOB_DIR, or the only job with a live coordinator.
JobDir ResolveJob(const std::string& id, const std::string& dir) {
  if (!dir.empty()) return LoadJob(dir);
  if (!id.empty()) return LoadJob(DirForJobId(id));
  if (const char* e = getenv("IBDBG_JOB_DIR"); e && *e) return LoadJob(e);
  std::vector<JobDir> live;
  std::string jobs = IbdbgHome() + "/jobs";
  if (DIR* d = opendir(jobs.c_str())) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] == '.') continue;
      try {
        JobDir j = LoadJob(DirForJobId(e->d_name));
        auto a = ReadCoordinatorAddr(j);
        if (a && a->pid > 0 && kill(a->pid, 0) == 0) live.push_back(j);
      } catch (const std::exception&) {
      }
    }
    closedir(d);
  }
  if (live.size() == 1) return live[0];
  if (live.empty()) throw std::runtime_error("no running job found; name one with --job ID or --dir DIR");
  throw std::runtime_error("several jobs are running; name one with --job ID or --dir DIR");
}

JobDir NewOrNamedJob(const std::string& dir) {
  if (!dir.empty()) return OpenOrCreateJob(dir);
  std::string id = RandomHex(4);
  return OpenOrCreateJob(IbdbgHome() + "/jobs/" + id, id);
}

// Replaces this (forked) process with argv; never returns.
[[noreturn]] void ExecOrExit(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back((char*)a.c_str());
  argv.push_back(nullptr);
  execvp(argv[0], argv.data());
  fprintf(stderr, "ibdbg: cannot run %s: %s\n", argv[0], strerror(errno));
  _exit(127);
}

// An incremental image (common/include/ibdbg/image_chain.h) replays from the
// full image its chain resolves to, written first into a scratch file (raw,
// not compressed, not synced: it is read once), and removed when no longer
// needed.  An eager replay has all its pages in place when LaunchJob returns:
// its scratch goes to /dev/shm when there is room (on disk, the kernel would
// throttle the writing of a large one to the disk's speed) and is removed
// then (Release).  A lazy one reads it until every page is present: in the
// replay's job directory, removed when the replay ends.  A parent that is
// missing or changed is refused here, before anything runs.
class FlatImages {
 public:
  ~FlatImages() { Release(); }
  void Release() {
    for (auto& d : dirs_) RemoveTree(AT_FDCWD, d);
    dirs_.clear();
  }
  std::vector<std::string> Of(const std::vector<std::string>& files, const std::string& job_dir, bool in_memory) {
    std::vector<std::string> out;
    for (const std::string& f : files) {
      std::vector<std::string> chain = ResolveChain(f);
      if (chain.size() == 1) {
        out.push_back(f);
        continue;
      }
      std::string path;
      if (in_memory) {
        try {
          path = Flatten(chain, f, "/dev/shm/ibdbg-flat", shm_);
        } catch (const std::exception&) {
          path.clear();  // no room there: on disk
        }
      }
      if (path.empty()) path = Flatten(chain, f, job_dir + "/flat", disk_);
      out.push_back(path);
    }
    return out;
  }

 private:
  std::string Flatten(const std::vector<std::string>& chain, const std::string& f, const std::string& base,
                      std::string& dir) {
    if (dir.empty()) {
      std::string tmpl = base + ".XXXXXX";
      if (!mkdtemp(tmpl.data())) throw std::runtime_error(ErrnoMessage("cannot make " + tmpl));
      dir = tmpl;
      dirs_.push_back(dir);
    }
    std::string path = dir + "/" + f.substr(f.rfind('/') + 1);
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) throw std::runtime_error(ErrnoMessage("cannot create " + path));
    WriterOptions wo;
    wo.zstd_level = 0;
    wo.sync = false;
    try {
      FlattenChain(chain, fd, wo);
    } catch (...) {
      close(fd);
      unlink(path.c_str());
      throw;
    }
    close(fd);
    return path;
  }
  std::string shm_, disk_;
  std::vector<std::string> dirs_;
};

int CmdRun(const std::string& dir, int interval, int keep, const std::string& listen, const std::string& remote_shell,
           const std::string& via, const std::vector<std::string>& cmd) {
  if (cmd.empty()) throw std::runtime_error("nothing to run: ibdbg run [--dir DIR] -- CMD ARGS...");
  std::string lib = CaptureLibrary();
  JobDir job;
  if (via.empty()) {
    job = NewOrNamedJob(dir);
    EnsureCoordinator(job, SelfExe(), listen);
  } else {
    // A part of a job on another host, started through the job's remote
    // shell: its coordinator runs there already.
    if (dir.empty()) throw std::runtime_error("--via needs --dir");
    job = LoadJob(dir);
  }
  Agent agent(job, via);
  if (keep > 0 && interval <= 0) throw std::runtime_error("--keep goes with --interval");
  if (interval > 0) {
    LineConn c = ConnectCoordinator(job, "client");
    c.Send({{"op", "interval"}, {"seconds", interval}, {"keep", keep}});
  }
  // Orphans of the job stay ours, so we stay their ancestor.
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  fprintf(stderr, "ibdbg: job %s, images in %s/images\n", job.job_id.c_str(), job.dir.c_str());
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    std::string preload = lib;
    // Right after ours and before the job's own preloads (softrdma's
    // libibverbs): the verbs layer must come before the backend it forwards to.
    if (std::string verbs = VerbsLibrary(); !verbs.empty()) preload += ":" + verbs;
    if (const char* old = getenv("LD_PRELOAD"); old && *old) preload += std::string(":") + old;
    setenv("LD_PRELOAD", preload.c_str(), 1);
    setenv("IBDBG_AGENT", agent.socket_name().c_str(), 1);
    setenv("IBDBG_JOB_DIR", job.dir.c_str(), 1);
    setenv("IBDBG_JOB_ID", job.job_id.c_str(), 1);
    // What the job runs through its remote shell runs under an agent of ours
    // on the other host (see capture/README.md).
    setenv("IBDBG_REMOTE_SHELL", remote_shell.c_str(), 1);
    setenv("IBDBG_EXE", SelfExe().c_str(), 1);
    // Images that replay on other CPUs: with lazy binding, ld.so resolves
    // symbols later through a trampoline that saves registers with the best
    // instruction of the capturing CPU (XSAVEC), which another CPU may lack.
    setenv("LD_BIND_NOW", "1", 0);
    signal(SIGINT, SIG_DFL);
    signal(SIGQUIT, SIG_DFL);
    // `ibdbg run -- ssh HOST CMD`: the job's first process is its remote
    // shell.  Started by sh, it is exec'd with the capture library loaded,
    // whose exec wrapper sends CMD to an agent on HOST (capture/README.md),
    // as for every remote shell the job starts later.
    std::string base = cmd[0].substr(cmd[0].rfind('/') + 1);
    std::vector<std::string> run = cmd;
    if (base == remote_shell.substr(remote_shell.rfind('/') + 1))
      run.insert(run.begin(), {"/bin/sh", "-c", "exec \"$@\"", "sh"});
    ExecOrExit(run);
  }
  // The job decides what an interrupt means; we only outlive it.
  signal(SIGINT, SIG_IGN);
  signal(SIGQUIT, SIG_IGN);
  agent.Watch(pid);
  return agent.Loop();
}

int CmdCapture(const std::string& id, const std::string& dir, bool stop, int level, int threads, bool forked,
               bool incremental) {
  JobDir job = ResolveJob(id, dir);
  LineConn c = ConnectCoordinator(job, "client");
  json options = json::object();
  if (level >= 0) options["zstd_level"] = level;
  if (threads >= 0) options["zstd_threads"] = threads;
  options["forked"] = forked;
  if (incremental) options["incremental"] = true;
  c.Send({{"op", "capture"}, {"stop", stop}, {"options", options}});
  auto r = c.Recv(-1);
  // A forked capture: the job runs on before its image is complete.
  while (r && r->value("op", "") == "running") {
    std::cerr << "ibdbg: the job runs on (stopped " << r->value("stopped_ms", 0)
              << " ms); writing its memory from frozen copies\n";
    r = c.Recv(-1);
  }
  if (!r) throw std::runtime_error("the coordinator went away during the capture");
  if (!r->value("ok", false)) throw std::runtime_error(r->value("error", std::string("capture failed")));
  for (auto& n : r->value("notes", json::array())) std::cerr << "ibdbg: " << n.get<std::string>() << "\n";
  std::cout << r->value("image", std::string()) << "\n";
  return 0;
}

int CmdStatus(const std::string& id, const std::string& dir) {
  JobDir job = ResolveJob(id, dir);
  LineConn c = ConnectCoordinator(job, "client");
  c.Send({{"op", "status"}});
  auto r = c.Recv(10000);
  if (!r || !r->value("ok", false)) throw std::runtime_error("the coordinator did not answer");
  std::cout << "job " << r->value("job_id", "") << "  dir " << r->value("dir", "")
            << "  coordinator pid " << r->value("coordinator_pid", 0)
            << (r->value("capturing", false) ? "  (capturing)" : "") << "\n";
  for (auto& a : (*r)["agents"]) {
    for (auto& p : a["procs"])
      std::cout << "  process " << p.value("pid", 0) << " on " << a.value("host", "")
                << (p.contains("rank") ? "  rank " + std::to_string(p.value("rank", -1)) : std::string()) << "  "
                << p.value("exe", "") << "\n";
  }
  auto imgs = (*r)["images"];
  std::cout << imgs.size() << " image(s)\n";
  for (auto& i : imgs) std::cout << "  " << i.get<std::string>() << "\n";
  return 0;
}

std::vector<std::string> SplitCommands(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == ';' || c == '\n') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

// ---- replays of jobs that span hosts ------------------------------------------
// A job captured on several hosts is one part per host (its processes, and
// the agent that served them).  Each part replays under an agent of its own,
// in namespaces of its own, on the host --host maps it to (default: the host
// it was captured on), started there through the remote shell.  A part that
// another part's process started through the job's remote shell (an mpirun's
// ssh to its daemons) is started again by a stand-in with that process's pid.

struct ReplayTarget {
  std::map<std::string, std::string> hosts;  // OLD -> NEW
  std::string remote_shell = "ssh";
  bool lazy = false;  // --lazy: pages on demand (replay/page_fill.h)
  std::string device;  // --device softrdma:MODE | DEVNAME: the verbs device of the replay
  bool gdb = false;   // every part parks its processes for one gdb session
  std::string Where(const std::string& part) const {
    auto it = hosts.find(part);
    return it == hosts.end() ? part : it->second;
  }
};

// ---- gdb on a whole job --------------------------------------------------------
// Every process of the replayed job waits, parked in the restorer, for one gdb
// session that attaches to each (one inferior per process) and steps its
// threads to their capture point (gdb/ibdbg.py: ibdbg-attach-job).

enum class GdbMode { kNone, kInteractive, kBatch, kMi };

struct GdbRequest {
  GdbMode mode = GdbMode::kNone;
  std::string batch;  // --gdb-batch's commands
  bool any() const { return mode != GdbMode::kNone; }
};

// One process of the job as gdb reaches it.
struct GdbProc {
  std::string host;        // where it was captured
  pid_t pid = -1;          // as the host it runs on sees it
  pid_t image_pid = -1;    // the captured pid
  uint64_t insn = 0;       // the restorer's rt_sigreturn instruction
  std::string exe;
  std::string connection;  // "" to attach here, else `target remote` with the pid after it
};

// What ibdbg-attach-job reads: the processes and our metadata.
std::string WriteGdbSession(const JobDir& job, const std::string& idir, const std::vector<GdbProc>& procs,
                            const ReplayTarget& t) {
  json s;
  s["ibdbg"] = SelfExe();
  s["image"] = idir;
  s["replay_job"] = job.job_id;
  s["replay_dir"] = job.dir;
  json where = json::object();
  for (auto& [o, n] : t.hosts) where[o] = n;
  s["where"] = where;
  json ps = json::array();
  for (auto& p : procs)
    ps.push_back({{"host", p.host}, {"pid", p.pid}, {"image_pid", p.image_pid}, {"insn", p.insn}, {"exe", p.exe},
                  {"connection", p.connection}});
  s["processes"] = ps;
  std::string path = job.dir + "/gdb-session.json";
  std::string tmp = path + ".tmp";
  FILE* f = fopen(tmp.c_str(), "w");
  if (!f) throw std::runtime_error("cannot write " + tmp + ": " + strerror(errno));
  std::string text = s.dump(2) + "\n";
  bool ok = fwrite(text.data(), 1, text.size(), f) == text.size();
  ok = fclose(f) == 0 && ok;
  if (!ok || rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error("cannot write " + path);
  return path;
}

// Runs gdb on the job's processes; true if it ended well (each process then
// runs on, detached).
bool RunGdbOnJob(const GdbRequest& g, const std::string& session) {
  std::vector<std::string> args = {"gdb", "-q", "-nx"};
  if (g.mode == GdbMode::kBatch) args.push_back("-batch");
  if (g.mode == GdbMode::kMi) args.push_back("-i=mi");
  // The replay has its own mount namespace (for its /proc): read files from ours,
  // which needs no privilege, instead of gdb's default "target:" sysroot.
  for (const char* c : {"set pagination off", "set confirm off", "set sysroot /"}) args.insert(args.end(), {"-iex", c});
  args.insert(args.end(), {"-x", GdbScript(), "-ex", "ibdbg-attach-job " + session});
  if (g.mode == GdbMode::kBatch) {
    for (auto& c : SplitCommands(g.batch)) args.insert(args.end(), {"-ex", c});
    args.insert(args.end(), {"-ex", "ibdbg-detach-all"});
  }
  pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    signal(SIGINT, SIG_DFL);
    signal(SIGQUIT, SIG_DFL);
    ExecOrExit(args);
  }
  int st;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

struct JobPart {
  std::string name;  // the host it was captured on
  std::vector<std::string> files;
  std::string via;   // "HOST:PID:PPID" of the process that started it, or ""
};

std::string ThisHost() {
  char h[256] = "";
  gethostname(h, sizeof h - 1);
  return h;
}

// This machine's boot and this pid namespace: a part replayed where both are
// the front's (a "host" that is a network namespace here) is attached plainly
// by its pids.
std::string MachineAndPidns() {
  std::string boot;
  if (FILE* f = fopen("/proc/sys/kernel/random/boot_id", "r")) {
    char b[64] = "";
    if (fgets(b, sizeof b, f)) boot = b;
    fclose(f);
    while (!boot.empty() && boot.back() == '\n') boot.pop_back();
  }
  struct stat sb;
  if (boot.empty() || stat("/proc/self/ns/pid", &sb) != 0) return "";
  return boot + ":" + std::to_string(sb.st_dev) + ":" + std::to_string(sb.st_ino);
}

std::map<std::string, JobPart> PartsOf(const std::string& idir, const Manifest& m) {
  std::map<std::string, JobPart> parts;
  for (auto& p : m.processes) {
    JobPart& jp = parts[p.host];
    jp.name = p.host;
    jp.files.push_back(idir + "/" + p.image);
  }
  for (auto& h : m.hosts) {
    std::string name = h.value("name", ""), via = h.value("via", "");
    if (parts.count(name) && !via.empty()) parts[name].via = via;
  }
  return parts;
}

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// The command that starts part `name` on its host, from a process on `from`.
std::vector<std::string> PartCommand(const std::string& idir, const std::string& job_dir, const ReplayTarget& t,
                                     const JobPart& part, const std::string& from) {
  std::vector<std::string> cmd = {SelfExe(), "replay", idir, "--part", part.name, "--dir", job_dir,
                                  "--remote-shell", t.remote_shell};
  for (auto& [o, n] : t.hosts) cmd.insert(cmd.end(), {"--host", o + "=" + n});
  if (!t.device.empty()) cmd.insert(cmd.end(), {"--device", t.device});
  if (!part.via.empty()) cmd.insert(cmd.end(), {"--via", part.via});
  if (t.gdb) cmd.push_back("--gdb-parked");
  std::string where = t.Where(part.name);
  if (where == from) return cmd;
  std::string line = "exec";
  for (auto& c : cmd) line += " " + ShellQuote(c);
  return {t.remote_shell, where, line};
}

// Parses "HOST:PID:PPID".
bool ParseVia(const std::string& via, std::string* host, pid_t* pid, pid_t* ppid) {
  size_t b = via.rfind(':');
  if (b == std::string::npos || b == 0) return false;
  size_t a = via.rfind(':', b - 1);
  if (a == std::string::npos) return false;
  *host = via.substr(0, a);
  *pid = atoi(via.c_str() + a + 1);
  *ppid = atoi(via.c_str() + b + 1);
  return *pid > 0 && *ppid > 0;
}

// The device a replay of verbs objects opens, until `ibdbg replay --device`
// sets it: IBDBG_VERBS_DEVICE ("" = as recorded, softrdma:ib, softrdma:roce,
// or a device name).
std::string VerbsDeviceFromEnv() {
  const char* d = getenv("IBDBG_VERBS_DEVICE");
  return d ? d : "";
}

int CmdReplayPart(const std::string& image, const std::string& dir, const std::string& part_name,
                  const std::string& via, const std::string& device, bool gdb_parked) {
  std::string idir = ResolveImageDir(image);
  Manifest m = ReadManifest(idir);
  auto parts = PartsOf(idir, m);
  if (!parts.count(part_name)) throw std::runtime_error(idir + " has no part captured on host " + part_name);
  if (dir.empty()) throw std::runtime_error("--part needs --dir");
  JobDir job = LoadJob(dir);
  Agent agent(job, via, part_name);
  replay::ReplayOptions ro;
  ro.verbs_device = device;
  ro.restorer = Restorer();
  ro.agent = agent.socket_name();
  ro.job_dir = job.dir;
  for (auto& [n, p] : parts) {
    if (n == part_name) continue;
    ro.peer_images.insert(ro.peer_images.end(), p.files.begin(), p.files.end());
    std::string vhost;
    pid_t vpid, vppid;
    // Its starter comes back as a stand-in that ends as that part ends (the
    // part itself is started by the replay's front, with all others, so that
    // no part waits for another to be spawned).
    if (ParseVia(p.via, &vhost, &vpid, &vppid) && vhost == part_name)
      ro.standins.push_back({vpid, vppid, {SelfExe(), "replay", idir, "--dir", job.dir, "--wait-part", p.name}});
  }
  // The name service: a connection of our own to the coordinator.
  auto ns = std::make_shared<LineConn>(ConnectCoordinator(job, "client"));
  sockaddr_in me{};
  socklen_t ml = sizeof me;
  getsockname(ns->fd(), (sockaddr*)&me, &ml);
  char ip[64] = "127.0.0.1";
  inet_ntop(AF_INET, &me.sin_addr, ip, sizeof ip);
  ro.reach_addr = ip;
  ro.verbs_device = VerbsDeviceFromEnv();
  ro.ns_put = [ns](const std::string& k, const std::string& v) {
    ns->Send({{"op", "ns_put"}, {"key", k}, {"value", v}});
    auto r = ns->Recv(30000);
    if (!r) throw std::runtime_error("the coordinator went away");
  };
  ro.ns_get = [ns](const std::string& k) {
    ns->Send({{"op", "ns_get"}, {"key", k}});
    auto r = ns->Recv(120000);
    if (!r) throw std::runtime_error("no other part of the job offered connection " + k.substr(4) + " in time");
    return r->value("value", std::string());
  };
  ro.gdb = gdb_parked;
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  FlatImages flat;
  replay::Launched L = replay::LaunchJob(flat.Of(parts[part_name].files, job.dir, true), ro);
  flat.Release();  // every page is in place (parts replay eagerly)
  agent.verbs_records = L.verbs_records;
  agent.verbs_device = ro.verbs_device;
  fprintf(stderr, "ibdbg: part %s of %s replaying on %s: %zu processes (job %s)\n", part_name.c_str(), idir.c_str(),
          ThisHost().c_str(), parts[part_name].files.size(), job.job_id.c_str());
  fflush(stderr);
  if (gdb_parked) {
    // The replay's front attaches gdb to them, here or through the remote shell.
    json procs = json::array();
    for (auto& p : L.procs) {
      if (!replay::WaitParked(p.pid, 10000))
        fprintf(stderr, "ibdbg: warning: the threads of pid %d did not all park in time\n", p.image_pid);
      procs.push_back({{"pid", p.pid}, {"image_pid", p.image_pid}, {"insn", p.sigreturn_insn}, {"exe", p.exe}});
    }
    ro.ns_put("gdb:" + part_name, json{{"host", ThisHost()}, {"machine", MachineAndPidns()}, {"procs", procs}}.dump());
  }
  signal(SIGINT, SIG_IGN);
  signal(SIGQUIT, SIG_IGN);
  agent.Watch(L.launcher_child);
  return agent.Loop();
}

// The stand-in of a process that started a part through the remote shell:
// it ends when that part does, with its status.
int CmdWaitPart(const std::string& dir, const std::string& part) {
  JobDir job = LoadJob(dir);
  LineConn c = ConnectCoordinator(job, "client");
  c.Send({{"op", "wait_part"}, {"part", part}});
  auto r = c.Recv(-1);
  if (!r) return 255;
  return r->value("status", 255);
}

// The replay of a job of several parts: starts each on its host.
// gdb on the parts' processes, which wait parked: each part says which they
// are through the coordinator's name service.  A part replayed here is
// attached plainly, one elsewhere through a gdbserver the remote shell starts
// there (one connection per host, gdb 13's multi-target).
bool GdbOnParts(const GdbRequest& g, const JobDir& job, const std::string& idir, std::map<std::string, JobPart>& parts,
                const ReplayTarget& t) {
  std::string here = ThisHost();
  Manifest m = ReadManifest(idir);
  LineConn c = ConnectCoordinator(job, "client");
  std::map<std::pair<std::string, pid_t>, GdbProc> found;
  std::map<std::string, std::vector<pid_t>> pids_on;  // where -> pids, to end them if gdb fails
  bool ok = true;
  for (auto& [n, p] : parts) {
    c.Send({{"op", "ns_get"}, {"key", "gdb:" + n}});
    auto r = c.Recv(120000);
    if (!r) {
      fprintf(stderr, "ibdbg: part %s did not come up parked for gdb in time\n", n.c_str());
      ok = false;
      continue;
    }
    json v = json::parse(r->value("value", std::string("{}")));
    std::string where = t.Where(n);
    std::string machine = v.value("machine", "");
    bool plain = where == here || (!machine.empty() && machine == MachineAndPidns());
    std::string conn = plain ? "" : "| " + t.remote_shell + " " + where + " gdbserver --attach -";
    if (plain) where = here;
    for (auto& q : v["procs"]) {
      GdbProc gp{n, q.value("pid", -1), q.value("image_pid", -1), q.value("insn", (uint64_t)0), q.value("exe", ""),
                 conn};
      found[{n, gp.image_pid}] = gp;
      pids_on[where].push_back(gp.pid);
    }
  }
  if (ok) {
    // In the image's order, as for a job of one host.
    std::vector<GdbProc> procs;
    for (auto& mp : m.processes) {
      auto it = found.find({mp.host, mp.pid});
      if (it != found.end()) procs.push_back(it->second);
    }
    try {
      ok = RunGdbOnJob(g, WriteGdbSession(job, idir, procs, t));
    } catch (const std::exception& e) {
      fprintf(stderr, "ibdbg: %s\n", e.what());
      ok = false;
    }
  }
  if (!ok) {
    fprintf(stderr, "ibdbg: gdb failed; the replayed job is left stopped and is killed now\n");
    for (auto& [where, pids] : pids_on) {
      if (where == here) {
        for (pid_t pid : pids) kill(pid, SIGKILL);
        continue;
      }
      std::string line = "kill -KILL";
      for (pid_t pid : pids) line += " " + std::to_string(pid);
      pid_t k = fork();
      if (k == 0) ExecOrExit({t.remote_shell, where, line});
      if (k > 0) waitpid(k, nullptr, 0);
    }
  }
  return ok;
}

int CmdReplayParts(const std::string& idir, std::map<std::string, JobPart>& parts, const std::string& dir,
                   const std::string& listen, const ReplayTarget& t, const GdbRequest& g) {
  std::string here = ThisHost();
  bool remote = false;
  for (auto& [n, p] : parts) remote |= t.Where(n) != here;
  if (remote && listen.rfind("127.", 0) == 0)
    throw std::runtime_error("parts of the job replay on other hosts: give --listen ADDR, an address of this host "
                             "they reach");
  JobDir job = NewOrNamedJob(dir);
  EnsureCoordinator(job, SelfExe(), listen);
  fprintf(stderr, "ibdbg: replaying %s: %zu parts (job %s, images in %s/images)\n", idir.c_str(), parts.size(),
          job.job_id.c_str(), job.dir.c_str());
  fflush(stderr);
  std::vector<pid_t> kids;
  for (auto& [n, p] : parts) {
    std::vector<std::string> cmd = PartCommand(idir, job.dir, t, p, here);
    pid_t c = fork();
    if (c < 0) throw std::runtime_error("fork failed");
    if (c == 0) {
      // gdb owns the terminal (or the IDE's MI channel): a remote shell must
      // not read what is typed to gdb.
      if (g.any()) {
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0) dup2(nul, 0), close(nul);
      }
      ExecOrExit(cmd);
    }
    kids.push_back(c);
  }
  signal(SIGINT, SIG_IGN);
  signal(SIGQUIT, SIG_IGN);
  if (g.any()) GdbOnParts(g, job, idir, parts, t);
  int status = 0;
  for (size_t i = 0; i < kids.size(); i++) {
    int st;
    while (waitpid(kids[i], &st, 0) < 0 && errno == EINTR) {
    }
    if (i == 0) status = st;
  }
  return ExitCode(status);
}

// The link layer a verbs image's record says it is for (0: no verbs state, or
// unknown), from every process's record.
uint32_t ImageLinkLayer(const std::string& idir, const Manifest& m) {
  for (auto& p : m.processes) {
    ImageReader r(idir + "/" + p.image);
    RecordHeader h;
    std::vector<uint8_t> data;
    while (r.NextHeader(h)) {
      if (h.type != static_cast<uint32_t>(RecordType::Verbs)) {
        r.SkipPayload();
        continue;
      }
      r.ReadPayload(data);
      ibdbg_verbs_hdr vh;
      if (data.size() < sizeof vh) throw std::runtime_error(idir + "/" + p.image + ": verbs record is damaged");
      std::memcpy(&vh, data.data(), sizeof vh);
      if (vh.link_layer) return vh.link_layer;
    }
  }
  return 0;
}

// --device: "softrdma:roce", "softrdma:ib" or a device name of this host.
uint32_t TargetLinkLayer(const std::string& device) {
  if (device == "softrdma:roce") return kLinkEthernet;
  if (device == "softrdma:ib") return kLinkInfiniBand;
  if (device.rfind("softrdma:", 0) == 0)
    throw std::runtime_error("bad --device " + device + ": softrdma's modes are softrdma:roce and softrdma:ib");
  return DeviceLinkLayer(device);
}

// A verbs image replays on a device of the fabric it is for; the other one
// needs `ibdbg translate` first.  Checked before anything starts.
void CheckFabric(const std::string& idir, const Manifest& m, const std::string& device) {
  if (device.empty()) return;
  uint32_t have = ImageLinkLayer(idir, m);
  if (!have) return;
  uint32_t want = TargetLinkLayer(device);
  if (have == want) return;
  throw std::runtime_error(idir + " holds " + LinkLayerName(have) + " verbs state but " + device + " is " +
                           LinkLayerName(want) + ": run `ibdbg translate " + idir + " -o OUT --fabric " +
                           (want == kLinkEthernet ? "roce" : "ib") + "` and replay OUT");
}

int CmdReplay(const std::string& image, const std::string& dir, const GdbRequest& g, const std::string& listen,
              const ReplayTarget& t) {
  std::string idir = ResolveImageDir(image);
  Manifest m = ReadManifest(idir);
  CheckFabric(idir, m, t.device);
  auto parts = PartsOf(idir, m);
  for (auto& [old_host, new_host] : t.hosts)
    if (!parts.count(old_host)) {
      std::string have;
      for (auto& [n, p] : parts) have += (have.empty() ? "" : ", ") + n;
      throw std::runtime_error("--host " + old_host + "=" + new_host + ": the image has no processes of host " +
                               old_host + " (it has: " + have + ")");
    }
  if (parts.size() > 1 || (parts.size() == 1 && t.Where(parts.begin()->first) != parts.begin()->first &&
                           t.Where(parts.begin()->first) != ThisHost())) {
    if (t.lazy) throw std::runtime_error("--lazy replays jobs of one host; this one spans " + std::to_string(parts.size()));
    ReplayTarget tg = t;
    tg.gdb = g.any();
    if (g.any()) GdbScript();  // a broken installation fails before anything runs
    return CmdReplayParts(idir, parts, dir, listen, tg, g);
  }
  std::vector<std::string> files;
  for (auto& p : m.processes) files.push_back(idir + "/" + p.image);
  // Before anything else: a missing or changed parent is the one error.
  for (auto& f : files) ResolveChain(f);
  std::string restorer = Restorer();
  bool with_gdb = g.any();
  if (with_gdb) GdbScript();  // a broken installation fails before anything runs
  JobDir job = NewOrNamedJob(dir);
  EnsureCoordinator(job, SelfExe());
  Agent agent(job, "");
  replay::ReplayOptions ro;
  ro.restorer = restorer;
  ro.agent = agent.socket_name();
  ro.job_dir = job.dir;
  ro.gdb = with_gdb;
  ro.lazy = t.lazy;
  // --device, else IBDBG_VERBS_DEVICE (the tests' way to reach the layer's own check)
  ro.verbs_device = !t.device.empty() ? t.device : VerbsDeviceFromEnv();
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  FlatImages flat;
  replay::Launched L = replay::LaunchJob(flat.Of(files, job.dir, !t.lazy), ro);
  if (!L.pages) flat.Release();  // eager: every page is in place
  agent.verbs_records = L.verbs_records;
  agent.verbs_device = ro.verbs_device;
  if (L.pages) {
    // A capture must see every page: it waits for the rest to arrive.
    agent.before_capture = [pages = L.pages] { pages->WaitDone(); };
    L.pages->OnDone([pages = L.pages.get()] {
      fprintf(stderr, "ibdbg: lazy replay: every page present (%.1f MiB from the page server in %.1f ms)\n",
              pages->bytes() / 1048576.0, pages->fill_ms());
    });
  }
  if (files.size() == 1)
    fprintf(stderr, "ibdbg: replaying %s as pid %d (job %s, images in %s/images)\n", idir.c_str(), L.image_pid,
            job.job_id.c_str(), job.dir.c_str());
  else
    fprintf(stderr, "ibdbg: replaying %s: %zu processes, pid %d first (job %s, images in %s/images)\n",
            idir.c_str(), files.size(), L.image_pid, job.job_id.c_str(), job.dir.c_str());
  fflush(stderr);
  signal(SIGINT, SIG_IGN);
  signal(SIGQUIT, SIG_IGN);
  if (with_gdb) {
    std::vector<GdbProc> procs;
    for (size_t i = 0; i < L.procs.size(); i++) {
      auto& p = L.procs[i];
      if (!replay::WaitParked(p.pid, 10000))
        fprintf(stderr, "ibdbg: warning: the threads of pid %d did not all park in time\n", p.image_pid);
      procs.push_back({i < m.processes.size() ? m.processes[i].host : ThisHost(), p.pid, p.image_pid,
                       p.sigreturn_insn, p.exe, ""});
    }
    bool ok = false;
    try {
      ok = RunGdbOnJob(g, WriteGdbSession(job, idir, procs, t));
    } catch (const std::exception& e) {
      fprintf(stderr, "ibdbg: %s\n", e.what());
    }
    if (!ok) {
      // A process gdb did not release waits, parked, forever.
      fprintf(stderr, "ibdbg: gdb failed; the replayed job (%zu processes) is left stopped and is killed now\n",
              L.procs.size());
      for (auto& p : L.procs) kill(p.pid, SIGKILL);
    }
  }
  agent.Watch(L.launcher_child);
  return agent.Loop();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ibdbg " IBDBG_VERSION
               ": capture a running job, translate its image for another machine, replay it under a debugger"};
  app.require_subcommand(1);
  app.set_version_flag("--version", IBDBG_VERSION);

  std::string dir, job_id, image, out;
  int interval = 0, keep = 0, level = -1, zthreads = -1;
  bool stop = false, json_out = false, gdb = false, dry_run = false, no_fork = false, incremental = false;
  std::string gdb_batch, listen = "127.0.0.1", remote_shell = "ssh", via;
  std::vector<std::string> cmd, map_paths;

  auto* run = app.add_subcommand("run", "Run CMD capturable (the capture library is preloaded); exits with its status");
  run->add_option("--dir", dir, "Job directory (a second run with the same DIR joins the job)");
  run->add_option("--interval", interval, "Capture every SECONDS (incremental after the first)")
      ->check(CLI::PositiveNumber);
  run->add_option("--keep", keep,
                  "With --interval: keep the newest N images of the series (and the images they need), remove "
                  "older ones; a full capture every N")
      ->check(CLI::PositiveNumber);
  run->add_option("--listen", listen,
                  "Address the job's coordinator listens on (default 127.0.0.1; an address other hosts reach for jobs "
                  "that span hosts)");
  run->add_option("--remote-shell", remote_shell,
                  "The program the job uses to run commands on other hosts, as one uses ssh (default ssh): what it "
                  "starts there is captured too");
  run->add_option("--via", via, "")->group("");  // internal: HOST:PID that started this part of the job
  run->add_option("cmd", cmd, "Command and arguments (after --)")->required();
  run->footer("Example: ibdbg run --dir /tmp/job -- ./solver input.dat");

  auto* capture = app.add_subcommand("capture", "Take an image of the whole job now and print its path");
  capture->add_option("--job", job_id, "Job id printed by ibdbg run");
  capture->add_option("--dir", dir, "Job directory");
  capture->add_flag("--stop", stop, "Stop the job once the image is safely written");
  capture->add_option("--level", level, "zstd level, 0 = store uncompressed (default 3)")->check(CLI::Range(0, 19));
  capture->add_flag("--no-fork", no_fork,
                    "Keep the job stopped while its memory is written (default: it runs on as soon as each process "
                    "has a frozen copy-on-write copy, which the memory is written from)");
  capture->add_flag("--incremental", incremental,
                    "Store only the pages written since the job's last capture (the image needs that one to replay)");
  capture->add_option("--threads", zthreads, "Compression threads per process (default: all cores)")
      ->check(CLI::Range(1, 256));
  capture->footer("Example: ibdbg capture --dir /tmp/job");

  auto* translate = app.add_subcommand("translate", "Validate an image and write one for another target");
  translate->add_option("image", image, "Image directory")->required();
  translate->add_option("-o,--output", out, "New image directory (must not exist)")->required();
  translate->add_option("--map-path", map_paths, "Rewrite file paths starting with OLD to NEW (OLD=NEW)");
  std::string fabric, target_caps;
  std::vector<std::string> device_maps, xhost_maps;
  int ranks_per_host = 0, mtu = 0;
  translate->add_option("--fabric", fabric,
                        "Rewrite the verbs state for this fabric: roce (RoCE v2 over IPv4, as rxe) or ib")
      ->check(CLI::IsMember({"roce", "ib"}));
  translate->add_option("--target-caps", target_caps,
                        "The target's devices and limits, as `ibdbg caps` printed them there (default: built-in "
                        "values for the fabric; translate/README.md)");
  translate->add_option("--device", device_maps, "Use device NEW where the capture used OLD (OLD=NEW)");
  translate->add_option("--host", xhost_maps,
                        "Processes captured on host OLD replay on host NEW (OLD=NEW; several OLD may share a NEW)");
  translate->add_option("--ranks-per-host", ranks_per_host,
                        "Then pack the job's hosts, whole and in capture order, K processes per host")
      ->check(CLI::PositiveNumber);
  translate->add_option("--mtu", mtu, "Path MTU of the connected QPs on the target (bytes; default: the captured "
                                      "one, clamped to the target's active MTU)")
      ->check(CLI::IsMember({256, 512, 1024, 2048, 4096}));
  translate->add_flag("--dry-run", dry_run, "Print the rewrite object by object (old -> new); write nothing");
  translate->footer("Example: ibdbg translate /tmp/job/images/latest -o /tmp/img2 --map-path /home/a=/home/b\n"
                    "         ibdbg translate IMG -o IMG-roce --fabric roce --target-caps caps.json --dry-run");

  auto* replay = app.add_subcommand("replay", "Restart an image (optionally under gdb, stopped at its capture point)");
  replay->add_option("image", image, "Image directory")->required();
  ReplayTarget target;
  std::vector<std::string> host_maps;
  std::string part;
  replay->add_option("--host", host_maps,
                     "Replay the processes captured on host OLD on host NEW (OLD=NEW; default: where they were)");
  replay->add_option("--remote-shell", target.remote_shell,
                     "How to run commands on other hosts, used as one uses ssh (default ssh)");
  replay->add_option("--listen", listen,
                     "Address the replayed job's coordinator listens on (needed when parts go to other hosts)");
  replay->add_option("--part", part, "")->group("");  // internal: replay this host's part only
  replay->add_option("--via", via, "")->group("");    // internal: the part's starter
  std::string wait_part;
  replay->add_option("--wait-part", wait_part, "")->group("");  // internal: a starter's stand-in
  bool gdb_parked = false;
  replay->add_flag("--gdb-parked", gdb_parked, "")->group("");  // internal: a part waits for the front's gdb
  bool gdb_mi = false;
  replay->add_flag("--gdb", gdb,
                   "Attach gdb, interactive, to every process of the job (one inferior each), stopped where it was "
                   "captured");
  replay->add_option("--gdb-batch", gdb_batch,
                     "Run these gdb commands (';'-separated) with every process attached, then let the job run on");
  replay->add_flag("--gdb-mi", gdb_mi, "As --gdb, speaking GDB/MI on stdin/stdout (for an IDE; examples/vscode)");
  replay->add_option("--dir", dir, "Job directory for the replayed job (default: a new one)");
  replay->add_option("--device", target.device,
                     "The verbs device to replay on: softrdma:roce, softrdma:ib or a device name of this host; an "
                     "image of the other fabric is refused (translate it first)");
  replay->add_flag("--lazy", target.lazy,
                   "Run at once; memory arrives on demand and in the background (userfaultfd; needs root)");
  replay->footer("Example: ibdbg replay /tmp/job/images/latest --gdb-batch 'thread apply all bt'");

  auto* inspect = app.add_subcommand("inspect", "Describe an image: processes, threads, memory, files, provenance");
  inspect->add_option("image", image, "Image directory")->required();
  inspect->add_flag("--json", json_out, "Machine-readable output");
  bool verbs_only = false;
  inspect->add_flag("--verbs", verbs_only, "Only the verbs state of each process");

  auto* caps = app.add_subcommand("caps", "Print this host's verbs devices and their limits as JSON (for translate "
                                          "--target-caps)");
  caps->footer("Example: ibdbg softrdma --mode roce -- ibdbg caps > roce-caps.json");

  CoreOptions core_opts;
  auto* core = app.add_subcommand("core", "Write one process of an image as an ELF core file (gdb PROGRAM FILE)");
  core->add_option("image", core_opts.image, "Image directory")->required();
  core->add_option("-o,--output", core_opts.output, "Core file to write (must not exist, unless --force)")->required();
  auto* c_rank = core->add_option("--rank", core_opts.rank, "The process of this MPI rank")->check(CLI::NonNegativeNumber);
  auto* c_pid = core->add_option("--pid", core_opts.pid, "The process with this pid (as captured)")->check(CLI::PositiveNumber);
  c_rank->excludes(c_pid);
  core->add_flag("--force", core_opts.force, "Replace the output file if it exists");
  core->footer("Example: ibdbg core /tmp/job/images/latest --rank 3 -o rank3.core && gdb ./solver rank3.core");

  auto* status = app.add_subcommand("status", "Show a job's processes and images");
  status->add_option("--job", job_id, "Job id");
  status->add_option("--dir", dir, "Job directory");

#ifdef IBDBG_HAVE_SOFTRDMA
  std::string sr_mode = "roce";
  auto* sr = app.add_subcommand("softrdma", "Run CMD with softrdma, the user-space RDMA device, as its only verbs device");
  sr->add_option("--mode", sr_mode, "ib or roce (default roce)")->check(CLI::IsMember({"ib", "roce"}));
  sr->add_option("cmd", cmd, "Command and arguments (after --)")->required();
  sr->footer("Example: ibdbg softrdma --mode ib -- ibv_rc_pingpong -c");
#endif
  auto* coord = app.add_subcommand("coordinator", "");  // internal: started by run/replay
  coord->group("");
  coord->add_option("--dir", dir)->required();
  coord->add_option("--listen", listen);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  signal(SIGPIPE, SIG_IGN);
  try {
    if (*run) return CmdRun(dir, interval, keep, listen, remote_shell, via, cmd);
    if (*capture) return CmdCapture(job_id, dir, stop, level, zthreads, !no_fork, incremental);
    if (*status) return CmdStatus(job_id, dir);
    if (*replay) {
      for (auto& hm : host_maps) {
        size_t eq = hm.find('=');
        if (eq == std::string::npos || eq == 0 || eq + 1 == hm.size())
          throw std::runtime_error("bad --host " + hm + ": expected OLD=NEW");
        target.hosts[hm.substr(0, eq)] = hm.substr(eq + 1);
      }
      if (!wait_part.empty()) return CmdWaitPart(dir, wait_part);
      if (!part.empty()) {
        if (!target.device.empty()) TargetLinkLayer(target.device);  // a bad --device is said before anything starts
        return CmdReplayPart(image, dir, part, via, target.device, gdb_parked);
      }
      GdbRequest g;
      int modes = (int)gdb + (int)(replay->count("--gdb-batch") > 0) + (int)gdb_mi;
      if (modes > 1) throw std::runtime_error("--gdb, --gdb-batch and --gdb-mi exclude each other: give one");
      if (replay->count("--gdb-batch") && SplitCommands(gdb_batch).empty())
        throw std::runtime_error("--gdb-batch needs gdb commands, e.g. --gdb-batch 'info ibdbg;thread apply all bt'");
      if (gdb) g.mode = GdbMode::kInteractive;
      if (replay->count("--gdb-batch")) g.mode = GdbMode::kBatch, g.batch = gdb_batch;
      if (gdb_mi) g.mode = GdbMode::kMi;
      return CmdReplay(image, dir, g, listen, target);
    }
    if (*inspect) {
      std::cout << (verbs_only ? tools::InspectVerbs(image, json_out) : tools::InspectImage(image, json_out));
      return 0;
    }
    if (*caps) {
      std::cout << CapsJson();
      return 0;
    }
    if (*core) {
      CoreResult r = WriteCore(core_opts);
      for (auto& w : r.warnings) std::cerr << "ibdbg: warning: " << w << "\n";
      std::cerr << "ibdbg: core of process " << r.pid << (r.rank >= 0 ? " (rank " + std::to_string(r.rank) + ")" : "")
                << ": " << r.threads << " threads, " << r.segments << " mappings\n";
      std::cout << r.path << "\n";
      return 0;
    }
    if (*translate) {
      TranslateOptions to;
      for (auto& m : map_paths) to.map_paths.push_back(ParseMapping(m));
      to.dry_run = dry_run;
      if (!fabric.empty()) to.fabric.link_layer = ParseFabric(fabric);
      if (!target_caps.empty()) {
        if (fabric.empty()) throw std::runtime_error("--target-caps needs --fabric");
        std::ifstream f(target_caps);
        if (!f) throw std::runtime_error("cannot read " + target_caps);
        std::stringstream ss;
        ss << f.rdbuf();
        to.fabric.target_caps = ParseCaps(ss.str(), target_caps);
        // The provenance names the file wherever translate ran from.
        char real[PATH_MAX];
        to.fabric.target_caps_file = realpath(target_caps.c_str(), real) ? real : target_caps;
      }
      if (mtu && fabric.empty()) throw std::runtime_error("--mtu needs --fabric");
      to.fabric.mtu = mtu;
      for (auto& d : device_maps) to.fabric.devices.push_back(ParseNameMapping(d, "--device"));
      for (auto& h : xhost_maps) to.hosts.hosts.push_back(ParseNameMapping(h, "--host"));
      to.hosts.ranks_per_host = ranks_per_host;
      TranslateResult r = TranslateImage(image, out, to);
      if (dry_run) {
        std::cout << RenderDiff(r);
      } else {
        for (auto& c : r.changes) std::cout << c << "\n";
      }
      for (auto& w : r.warnings) std::cerr << "ibdbg: warning: " << w << "\n";
      if (!dry_run) std::cout << out << "\n";
      return 0;
    }
    if (*coord) return RunCoordinator(dir, listen, true);
#ifdef IBDBG_HAVE_SOFTRDMA
    if (*sr) return softrdma::RunSoftRdma(sr_mode, cmd);
#endif
  } catch (const std::exception& e) {
    // One line per reason (translate's refusals may give several).
    std::string what = e.what();
    size_t pos = 0;
    do {
      size_t nl = what.find('\n', pos);
      fprintf(stderr, "ibdbg: %s\n", what.substr(pos, nl == std::string::npos ? nl : nl - pos).c_str());
      pos = nl == std::string::npos ? nl : nl + 1;
    } while (pos != std::string::npos);
    return 1;
  }
  return 0;
}
