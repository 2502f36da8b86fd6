#include "job.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <memory>
#include <set>
#include <chrono>
#include <cstring>
#include <ctime>
#include <dirent.h>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "ibdbg/atomic_dir.h"
#include "ibdbg/image_chain.h"
#include "ibdbg/manifest.h"
#include "ibdbg/version.h"

namespace ibdbg::tools {

[[noreturn]] static void Fail(const std::string& s) { throw std::runtime_error(s); }

std::string RandomHex(size_t bytes) {
  std::string raw(bytes, '\0');
  if (getrandom(raw.data(), bytes, 0) != (ssize_t)bytes) Fail("getrandom failed");
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : raw) out += hex[c >> 4], out += hex[c & 15];
  return out;
}

std::string NowIso() {
  time_t t = time(nullptr);
  struct tm tm;
  gmtime_r(&t, &tm);
  char buf[64];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string SelfExe() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "ibdbg";
  return std::string(buf, (size_t)n);
}

std::string SelfDir() {
  std::string e = SelfExe();
  return e.substr(0, e.rfind('/'));
}

std::string IbdbgHome() {
  if (const char* h = getenv("IBDBG_HOME"); h && *h) return h;
  const char* home = getenv("HOME");
  return std::string(home && *home ? home : "/tmp") + "/.local/share/ibdbg";
}

std::string DirForJobId(const std::string& id) {
  for (char c : id)
    if (!isalnum((unsigned char)c) && c != '-') Fail("bad job id '" + id + "'");
  std::string link = IbdbgHome() + "/jobs/" + id;
  char buf[4096];
  ssize_t n = readlink(link.c_str(), buf, sizeof buf - 1);
  if (n > 0) return std::string(buf, (size_t)n);
  struct stat sb;
  if (stat(link.c_str(), &sb) == 0) return link;
  Fail("no job with id " + id + " (looked in " + IbdbgHome() + "/jobs)");
}

static std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  if (!f) return {};
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

static void WriteFileAtomic(const std::string& path, const std::string& text, mode_t mode) {
  std::string tmp = path + ".tmp." + RandomHex(4);
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) Fail("cannot write " + tmp + ": " + strerror(errno));
  bool ok = write(fd, text.data(), text.size()) == (ssize_t)text.size() && fsync(fd) == 0;
  close(fd);
  if (!ok || rename(tmp.c_str(), path.c_str()) != 0) {
    unlink(tmp.c_str());
    Fail("cannot write " + path + ": " + strerror(errno));
  }
}

JobDir LoadJob(const std::string& dir) {
  JobDir j;
  j.dir = dir;
  std::string meta = ReadFile(dir + "/job.json");
  if (meta.empty()) Fail(dir + ": not an ibdbg job directory (no job.json)");
  try {
    j.job_id = json::parse(meta).at("job_id").get<std::string>();
  } catch (const std::exception&) {
    Fail(dir + "/job.json: malformed");
  }
  struct stat sb;
  if (stat((dir + "/secret").c_str(), &sb) != 0) Fail(dir + ": job has no secret file");
  if (sb.st_mode & 077) Fail(dir + "/secret: must not be readable by others (mode 0600)");
  j.secret = ReadFile(dir + "/secret");
  while (!j.secret.empty() && isspace((unsigned char)j.secret.back())) j.secret.pop_back();
  if (j.secret.empty()) Fail(dir + "/secret: empty");
  return j;
}

JobDir OpenOrCreateJob(const std::string& dir_in, const std::string& preferred_id) {
  std::string dir = dir_in;
  image::MakeDirs(dir, 0700);
  char real[4096];
  if (realpath(dir.c_str(), real)) dir = real;
  struct stat sb;
  if (stat((dir + "/job.json").c_str(), &sb) != 0) {
    // Two runs may race to create the job: O_EXCL on the secret decides.
    std::string secret = RandomHex(32);
    int fd = open((dir + "/secret").c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) {
      std::string text = secret + "\n";
      if (write(fd, text.data(), text.size()) != (ssize_t)text.size()) Fail("cannot write the job secret");
      fsync(fd);
      close(fd);
      json meta = {{"job_id", preferred_id.empty() ? RandomHex(4) : preferred_id}, {"created", NowIso()}};
      WriteFileAtomic(dir + "/job.json", meta.dump(2) + "\n", 0600);
    } else {
      for (int i = 0; i < 100 && stat((dir + "/job.json").c_str(), &sb) != 0; i++)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  JobDir j = LoadJob(dir);
  image::MakeDirs(dir + "/images", 0700);
  image::MakeDirs(IbdbgHome() + "/jobs", 0700);
  std::string link = IbdbgHome() + "/jobs/" + j.job_id;
  if (link != dir) {
    unlink(link.c_str());
    symlink(dir.c_str(), link.c_str());
  }
  return j;
}

std::optional<CoordinatorAddr> ReadCoordinatorAddr(const JobDir& job) {
  std::string text = ReadFile(job.dir + "/coordinator.json");
  if (text.empty()) return std::nullopt;
  try {
    json j = json::parse(text);
    CoordinatorAddr a;
    a.host = j.at("host").get<std::string>();
    a.port = j.at("port").get<int>();
    a.pid = j.value("pid", 0);
    return a;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// ---- LineConn -----------------------------------------------------------------
LineConn::~LineConn() { Close(); }
LineConn& LineConn::operator=(LineConn&& o) noexcept {
  if (this != &o) {
    Close();
    fd_ = o.fd_;
    buf_ = std::move(o.buf_);
    o.fd_ = -1;
  }
  return *this;
}
void LineConn::Close() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}
bool LineConn::Send(const json& j) {
  if (fd_ < 0) return false;
  std::string s = j.dump() + "\n";
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = send(fd_, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += (size_t)n;
  }
  return true;
}
bool LineConn::Fill() {
  char buf[65536];
  ssize_t n = recv(fd_, buf, sizeof buf, 0);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return true;
  if (n <= 0) return false;
  buf_.append(buf, (size_t)n);
  if (buf_.size() > (64u << 20)) return false;  // a peer that never ends its line
  return true;
}
std::optional<json> LineConn::Pop() {
  for (;;) {
    size_t nl = buf_.find('\n');
    if (nl == std::string::npos) return std::nullopt;
    std::string line = buf_.substr(0, nl);
    buf_.erase(0, nl + 1);
    try {
      json j = json::parse(line);
      if (j.is_object()) return j;
    } catch (const std::exception&) {
    }
    // A malformed line is dropped; the peer learns nothing from us.
  }
}
std::optional<json> LineConn::Recv(int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    if (auto j = Pop()) return j;
    if (fd_ < 0) return std::nullopt;
    int wait = -1;
    if (timeout_ms >= 0) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      wait = (int)left.count();
    }
    pollfd p = {fd_, POLLIN, 0};
    int r = poll(&p, 1, wait);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return std::nullopt;
    if (!Fill()) return Pop();
  }
}

static int ConnectTcp(const std::string& host, int port, int timeout_ms) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1) {
    close(fd);
    return -1;
  }
  int flags = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  int r = connect(fd, (sockaddr*)&a, sizeof a);
  if (r != 0 && errno == EINPROGRESS) {
    pollfd p = {fd, POLLOUT, 0};
    if (poll(&p, 1, timeout_ms) == 1) {
      int err = 0;
      socklen_t l = sizeof err;
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
      r = err ? -1 : 0;
    }
  }
  if (r != 0) {
    close(fd);
    return -1;
  }
  fcntl(fd, F_SETFL, flags);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

LineConn ConnectCoordinator(const JobDir& job, const std::string& role, int timeout_ms, const std::string& part) {
  auto addr = ReadCoordinatorAddr(job);
  if (!addr) Fail("job " + job.job_id + " has no running coordinator (is the job still running?)");
  int fd = ConnectTcp(addr->host, addr->port, timeout_ms);
  if (fd < 0)
    Fail("cannot reach the coordinator of job " + job.job_id + " at " + addr->host + ":" + std::to_string(addr->port));
  LineConn c(fd);
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  json hello = {{"op", "hello"}, {"role", role}, {"secret", job.secret}, {"host", host}, {"pid", getpid()}};
  if (!part.empty()) hello["part"] = part;
  c.Send(hello);
  auto r = c.Recv(timeout_ms);
  if (!r || !r->value("ok", false))
    Fail("the coordinator of job " + job.job_id + " refused us" + (r ? ": " + r->value("error", std::string()) : ""));
  return c;
}

void EnsureCoordinator(const JobDir& job, const std::string& self_exe, const std::string& listen) {
  try {
    ConnectCoordinator(job, "probe", 1000);
    return;
  } catch (const std::exception&) {
  }
  // One starter at a time; the lock dies with its holder.
  std::string lock = job.dir + "/coordinator.lock";
  int lfd = open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lfd >= 0) lockf(lfd, F_LOCK, 0);
  try {
    ConnectCoordinator(job, "probe", 1000);
    if (lfd >= 0) close(lfd);
    return;
  } catch (const std::exception&) {
  }
  unlink((job.dir + "/coordinator.json").c_str());
  pid_t pid = fork();
  if (pid < 0) Fail("fork failed");
  if (pid == 0) {
    // Detached: a daemon that outlives the run that started it.
    setsid();
    if (fork() != 0) _exit(0);
    int devnull = open("/dev/null", O_RDWR);
    dup2(devnull, 0);
    dup2(devnull, 1);
    int log = open((job.dir + "/coordinator.log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    dup2(log >= 0 ? log : devnull, 2);
    execl(self_exe.c_str(), self_exe.c_str(), "coordinator", "--dir", job.dir.c_str(), "--listen", listen.c_str(),
          (char*)nullptr);
    _exit(127);
  }
  int st;
  waitpid(pid, &st, 0);
  for (int i = 0; i < 250; i++) {
    if (ReadCoordinatorAddr(job)) {
      try {
        ConnectCoordinator(job, "probe", 1000);
        if (lfd >= 0) close(lfd);
        return;
      } catch (const std::exception&) {
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (lfd >= 0) close(lfd);
  Fail("the coordinator did not start (see " + job.dir + "/coordinator.log)");
}

// ---- the coordinator ---------------------------------------------------------
namespace {

struct Peer {
  LineConn conn;
  std::string role;  // "" until hello
  std::string part;  // a replayed part's agent: the part's name
  int exit_status = 255;  // what an agent reported its job part ended with
  std::string host;
  int pid = 0;
  std::string addr;
  json procs = json::array();
};

struct Capture {
  std::unique_ptr<image::AtomicDir> dir;
  std::string name;
  int client_fd = -1;
  bool stop = false;
  json options = json::object();  // compression settings for the agents
  std::vector<int> waiting;  // agent fds
  std::vector<int> agents;   // every agent asked
  // Past the first barrier: every process holds its verbs posts, its own
  // sends complete (capture/verbs/README.md); now each drains and stops.
  bool suspending = false;
  bool writing = false;      // past the barrier: every process stopped
  // A forked capture: every agent has its processes' frozen copies (a second
  // barrier: no process runs on before every one has its copy, or the
  // images would not be of one moment) and writes their memory from them.
  bool forked = false, detached = false;
  std::chrono::steady_clock::time_point started;
  json procs = json::array();
  json hosts = json::array();
  std::chrono::steady_clock::time_point deadline;
  std::string error;
  // Incremental capture: this capture's id (the agents arm their trackers
  // under it), whether it builds on the last one, and how many incremental
  // captures lie between it and a full one.
  std::string id;
  bool incremental = false;
  int depth = 0;
  bool series = false;  // made by --interval
};

// Answers a peer may ask for before another peer has given them: a question
// waits until its key is posted.  Serves the replay's name service and the
// wait for a replayed part's end.
struct Board {
  std::map<std::string, json> posted;
  std::multimap<std::string, int> asking;  // key -> fds of the peers that wait

  template <typename Send>
  void Post(const std::string& key, const json& answer, Send send) {
    posted[key] = answer;
    auto range = asking.equal_range(key);
    for (auto it = range.first; it != range.second; ++it) send(it->second, answer);
    asking.erase(key);
  }
  template <typename Send>
  void Ask(const std::string& key, int fd, Send send) {
    if (auto it = posted.find(key); it != posted.end())
      send(fd, it->second);
    else
      asking.emplace(key, fd);
  }
  void Forget(int fd) {
    for (auto it = asking.begin(); it != asking.end();) it = it->second == fd ? asking.erase(it) : std::next(it);
  }
};

// Constant time, so that response timing tells a stranger nothing.
bool SameSecret(const std::string& a, const std::string& b) {
  unsigned char d = 0;
  for (size_t i = 0; i < a.size(); i++) d |= (unsigned char)(a[i] ^ b[i]);
  return d == 0;
}

void Log(const std::string& s) {
  fprintf(stderr, "%s coordinator[%d]: %s\n", NowIso().c_str(), getpid(), s.c_str());
  fflush(stderr);
}

std::string ImageName(const std::string& images_dir) {
  int seq = 0;
  if (DIR* d = opendir(images_dir.c_str())) {
    while (dirent* e = readdir(d)) {
      int n = 0;
      if (sscanf(e->d_name, "ckpt-%d-", &n) == 1 && n > seq) seq = n;
    }
    closedir(d);
  }
  time_t t = time(nullptr);
  struct tm tm;
  localtime_r(&t, &tm);
  char buf[64];
  strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", &tm);
  char name[96];
  snprintf(name, sizeof name, "ckpt-%03d-%s", seq + 1, buf);
  return name;
}

// The image directories (of `images_dir`) that an image's processes take
// pages from: their parents, named "../NAME/proc-N.img".
std::set<std::string> ParentDirs(const std::string& image_dir) {
  std::set<std::string> out;
  for (const std::string& f : image::ListImageFiles(image_dir)) {
    auto ref = image::ReadParentRef(image_dir + "/" + f);
    if (!ref) continue;
    if (ref->image.rfind("../", 0) != 0 || ref->image.find('/', 3) == std::string::npos)
      throw std::runtime_error(image_dir + "/" + f + ": parent outside the images directory");
    out.insert(ref->image.substr(3, ref->image.find('/', 3) - 3));
  }
  return out;
}

// `ibdbg run --interval S --keep N`: of the series' images the newest N stay,
// and so does every image a remaining one needs (its chain of parents); the
// others go, each renamed out of the way first so that no half-removed image
// is ever seen under its name.
void PruneSeries(const std::string& images_dir, std::vector<std::string>& series, int keep) {
  if (keep <= 0 || (int)series.size() <= keep) return;
  std::set<std::string> doomed(series.begin(), series.end() - keep);
  std::set<std::string> needed, todo;
  if (DIR* d = opendir(images_dir.c_str())) {
    while (dirent* e = readdir(d))
      if ((strncmp(e->d_name, "ckpt-", 5) == 0 || strncmp(e->d_name, "replay-", 7) == 0) && !doomed.count(e->d_name))
        todo.insert(e->d_name);
    closedir(d);
  }
  while (!todo.empty()) {
    std::string n = *todo.begin();
    todo.erase(todo.begin());
    for (const std::string& p : ParentDirs(images_dir + "/" + n))
      if (needed.insert(p).second) todo.insert(p);
  }
  int dfd = open(images_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return;
  for (auto it = series.begin(); it != series.end();) {
    if (!doomed.count(*it) || needed.count(*it)) {
      ++it;
      continue;
    }
    std::string gone = "." + *it + ".tmp.del" + RandomHex(3);
    if (renameat(dfd, it->c_str(), dfd, gone.c_str()) == 0) image::RemoveTree(dfd, gone);
    it = series.erase(it);
  }
  close(dfd);
}

json ListImages(const std::string& images_dir) {
  json out = json::array();
  std::vector<std::string> names;
  if (DIR* d = opendir(images_dir.c_str())) {
    while (dirent* e = readdir(d))
      if (strncmp(e->d_name, "ckpt-", 5) == 0 || strncmp(e->d_name, "replay-", 7) == 0) names.push_back(e->d_name);
    closedir(d);
  }
  std::sort(names.begin(), names.end());
  for (auto& n : names) out.push_back(images_dir + "/" + n);
  return out;
}

}  // namespace

int RunCoordinator(const std::string& dir, const std::string& listen_host, bool daemonize) {
  (void)daemonize;
  JobDir job = LoadJob(dir);
  signal(SIGPIPE, SIG_IGN);
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  if (inet_pton(AF_INET, listen_host.c_str(), &a.sin_addr) != 1) Fail("bad listen address " + listen_host);
  if (bind(lfd, (sockaddr*)&a, sizeof a) != 0 || listen(lfd, 64) != 0) Fail(std::string("cannot listen: ") + strerror(errno));
  socklen_t al = sizeof a;
  getsockname(lfd, (sockaddr*)&a, &al);
  int port = ntohs(a.sin_port);
  std::string host = listen_host == "0.0.0.0" ? "127.0.0.1" : listen_host;
  json addr = {{"host", host}, {"port", port}, {"pid", getpid()}};
  WriteFileAtomic(job.dir + "/coordinator.json", addr.dump() + "\n", 0600);
  Log("job " + job.job_id + " listening on " + host + ":" + std::to_string(port));

  // Temporary image directories of a coordinator that died mid-capture.
  if (DIR* d = opendir((job.dir + "/images").c_str())) {
    std::vector<std::string> stale;
    while (dirent* e = readdir(d))
      if (e->d_name[0] == '.' && strstr(e->d_name, ".tmp.")) stale.push_back(e->d_name);
    closedir(d);
    int dfd = open((job.dir + "/images").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    for (auto& n : stale) {
      image::RemoveTree(dfd, n);
      Log("removed the leftovers of an interrupted capture: " + n);
    }
    if (dfd >= 0) close(dfd);
  }

  std::map<int, Peer> peers;
  std::optional<Capture> cap;
  // The replay's name service: parts of a job on different hosts publish
  // where the new end of a connection between them listens, and look it up.
  Board names;
  // Replayed parts whose agent is gone, with their exit status.
  Board parts_done;
  auto send_to = [&](int to, const json& j) {
    if (peers.count(to)) peers[to].conn.Send(j);
  };
  bool had_agent = false;
  auto idle_since = std::chrono::steady_clock::now();
  int interval_s = 0, keep = 0;
  auto next_interval = std::chrono::steady_clock::time_point::max();
  // The last complete capture, which an incremental one builds on.
  std::string last_name, last_id;
  int last_depth = 0;
  std::vector<std::string> series;  // images of --interval, oldest first
  const std::string images_dir = job.dir + "/images";

  auto finish_capture = [&](bool ok) {
    json reply;
    if (ok) {
      try {
        image::Manifest mf;
        mf.ibdbg_version = IBDBG_VERSION;
        mf.job_id = job.job_id;
        mf.created_ns = image::RealtimeNs();
        mf.created = image::FormatIsoTime(mf.created_ns);
        mf.kind = "capture";
        for (auto& pr : cap->procs) {
          image::ManifestProcess mp;
          mp.pid = pr.value("pid", 0);
          mp.host = pr.value("host", "");
          mp.exe = pr.value("exe", "");
          mp.image = pr.value("image", "");
          mp.bytes = pr.value("bytes", (uint64_t)0);
          mp.memory_bytes = pr.value("memory_bytes", (uint64_t)0);
          mp.threads = pr.value("threads", 0);
          mp.rank = pr.value("rank", -1);
          mf.processes.push_back(mp);
        }
        mf.hosts = cap->hosts;
        int fd = cap->dir->CreateFile(image::kManifestName);
        try {
          image::WriteManifestFd(fd, mf, cap->dir->temp_path() + "/" + image::kManifestName);
        } catch (...) {
          close(fd);
          throw;
        }
        close(fd);
        cap->dir->Commit(false);
        std::string latest = images_dir + "/latest";
        std::string tmp = latest + ".tmp." + RandomHex(4);
        if (symlink(cap->name.c_str(), tmp.c_str()) == 0) rename(tmp.c_str(), latest.c_str());
        reply = {{"ok", true}, {"image", cap->dir->final_path()}, {"incremental", cap->incremental}};
        json notes = json::array();
        for (auto& pr : cap->procs)
          if (pr.contains("full"))
            notes.push_back("process " + std::to_string(pr.value("pid", 0)) + ": a full image: " +
                            pr.value("full", std::string()));
        if (!notes.empty()) reply["notes"] = notes;
        Log(std::string(cap->incremental ? "captured (incremental) " : "captured ") + cap->dir->final_path());
        last_name = cap->name;
        last_id = cap->id;
        last_depth = cap->depth;
        if (cap->series) {
          series.push_back(cap->name);
          try {
            PruneSeries(images_dir, series, keep);
          } catch (const std::exception& e) {
            Log(std::string("--keep: nothing removed: ") + e.what());
          }
        }
      } catch (const std::exception& e) {
        ok = false;
        cap->error = e.what();
      }
    }
    if (!ok) {
      reply = {{"ok", false}, {"error", "capture failed: " + cap->error}};
      Log(reply["error"].get<std::string>());
      cap->dir.reset();  // removes the temporary directory
    }
    for (auto& [fd, p] : peers)
      if (p.role == "agent") p.conn.Send({{"op", ok && cap->stop ? "kill" : "resume"}});
    if (cap->client_fd >= 0 && peers.count(cap->client_fd)) peers[cap->client_fd].conn.Send(reply);
    cap.reset();
  };
  // One barrier of a capture: an agent's answer counts once; true when the
  // last one arrived and all went well (a failure ends the capture here).
  auto arrive = [&](int fd, const json& m) {
    auto it = std::find(cap->waiting.begin(), cap->waiting.end(), fd);
    if (it == cap->waiting.end()) return false;
    cap->waiting.erase(it);
    if (!m.value("ok", false)) cap->error = m.value("error", std::string("an agent failed"));
    if (!cap->waiting.empty()) return false;
    if (!cap->error.empty()) {
      finish_capture(false);
      return false;
    }
    return true;
  };
  // The next phase, to every agent of the capture still connected.
  auto broadcast = [&](const json& msg) {
    for (int afd : cap->agents)
      if (peers.count(afd)) {
        peers[afd].conn.Send(msg);
        cap->waiting.push_back(afd);
      }
  };

  auto start_capture = [&](int client_fd, bool stop, const json& options) -> std::optional<std::string> {
    if (cap) return "a capture is already in progress";
    size_t nagents = 0;
    for (auto& [fd, p] : peers)
      if (p.role == "agent") nagents++;
    if (nagents == 0) return "the job has no running processes";
    cap.emplace();
    cap->name = ImageName(images_dir);
    try {
      cap->dir = std::make_unique<image::AtomicDir>(images_dir + "/" + cap->name);
    } catch (const std::exception& e) {
      std::string err = e.what();
      cap.reset();
      return err;
    }
    cap->client_fd = client_fd;
    cap->stop = stop;
    cap->options = options;
    cap->id = RandomHex(8);
    cap->options["capture_id"] = cap->id;
    cap->options["track"] = !stop;
    cap->options.erase("incremental");
    if (options.value("incremental", false)) {
      if (last_name.empty()) {
        cap.reset();
        return "no earlier capture of this job to build an incremental one on (its coordinator has made none "
               "since it started): take a full capture first";
      }
      cap->incremental = true;
      cap->depth = last_depth + 1;
      cap->options["parent"] = {{"name", last_name}, {"capture_id", last_id}};
    }
    // The job runs on while its memory is written from copies; not when it
    // is to stop anyway.
    cap->forked = options.value("forked", true) && !stop;
    cap->options["forked"] = cap->forked;
    cap->started = std::chrono::steady_clock::now();
    cap->deadline = std::chrono::steady_clock::now() + std::chrono::minutes(30);
    // Every agent is asked: one may have processes it has not reported yet.
    for (auto& [fd, p] : peers)
      if (p.role == "agent") {
        p.conn.Send({{"op", "presuspend"}});
        cap->waiting.push_back(fd);
        cap->agents.push_back(fd);
      }
    return std::nullopt;
  };

  for (;;) {
    std::vector<pollfd> pfds = {{lfd, POLLIN, 0}};
    for (auto& [fd, p] : peers) pfds.push_back({fd, POLLIN, 0});
    int r = poll(pfds.data(), pfds.size(), 200);
    if (r < 0 && errno != EINTR) break;
    auto now = std::chrono::steady_clock::now();
    if (pfds[0].revents & POLLIN) {
      sockaddr_in ca{};
      socklen_t cl = sizeof ca;
      int cfd = accept4(lfd, (sockaddr*)&ca, &cl, SOCK_CLOEXEC);
      if (cfd >= 0) {
        char ip[64];
        inet_ntop(AF_INET, &ca.sin_addr, ip, sizeof ip);
        peers[cfd].conn = LineConn(cfd);
        peers[cfd].addr = std::string(ip) + ":" + std::to_string(ntohs(ca.sin_port));
      }
    }
    std::vector<int> dead;
    for (size_t i = 1; i < pfds.size(); i++) {
      if (!pfds[i].revents) continue;
      int fd = pfds[i].fd;
      Peer& p = peers[fd];
      bool alive = p.conn.Fill();
      while (auto m = p.conn.Pop()) {
        std::string op = m->value("op", "");
        if (p.role.empty()) {
          std::string secret = m->value("secret", "");
          bool good = op == "hello" && secret.size() == job.secret.size() &&
                      SameSecret(secret, job.secret);
          if (!good) {
            Log("refused connection from " + p.addr + ": bad or missing secret");
            p.conn.Send({{"ok", false}, {"error", "bad secret"}});
            alive = false;
            break;
          }
          p.role = m->value("role", "client");
          p.host = m->value("host", "");
          p.pid = m->value("pid", 0);
          p.part = m->value("part", "");
          p.conn.Send({{"ok", true}, {"job_id", job.job_id}});
          if (p.role == "agent") {
            had_agent = true;
            Log("agent " + p.host + ":" + std::to_string(p.pid) + " joined");
          }
          continue;
        }
        if (op == "procs" && p.role == "agent") {
          p.procs = m->value("procs", json::array());
        } else if (op == "interval") {
          interval_s = m->value("seconds", 0);
          keep = m->value("keep", 0);
          next_interval = interval_s > 0 ? now + std::chrono::seconds(interval_s)
                                         : std::chrono::steady_clock::time_point::max();
        } else if (op == "presuspended" && cap && !cap->suspending) {
          if (arrive(fd, *m)) {
            // The drain barrier: nothing of anyone's is in flight any more.
            cap->suspending = true;
            broadcast({{"op", "suspend"}});
          }
        } else if (op == "suspended" && cap && cap->suspending && !cap->writing) {
          if (arrive(fd, *m)) {
            // The barrier: the whole job stands still; now it is written.
            cap->writing = true;
            broadcast({{"op", "write"},
                       {"dir", cap->dir->temp_path()},
                       {"job_id", job.job_id},
                       {"options", cap->options}});
          }
        } else if (op == "forked" && cap && cap->writing && cap->forked && !cap->detached) {
          if (arrive(fd, *m)) {
            // Every process has its frozen copy: all may run on together.
            cap->detached = true;
            broadcast({{"op", "detach"}});
            auto stopped = std::chrono::duration_cast<std::chrono::milliseconds>(
                std::chrono::steady_clock::now() - cap->started);
            if (cap->client_fd >= 0 && peers.count(cap->client_fd))
              peers[cap->client_fd].conn.Send({{"op", "running"}, {"stopped_ms", stopped.count()}});
          }
        } else if (op == "captured" && cap && cap->writing) {
          auto it = std::find(cap->waiting.begin(), cap->waiting.end(), fd);
          if (it != cap->waiting.end()) {
            cap->waiting.erase(it);
            if (!m->value("ok", false)) {
              cap->error = m->value("error", std::string("an agent failed"));
            } else {
              for (auto& pr : m->value("procs", json::array())) cap->procs.push_back(pr);
              json h = {{"name", m->value("host", p.host)}, {"kernel", m->value("kernel", "")}};
              if (m->contains("via")) h["via"] = m->value("via", "");
              cap->hosts.push_back(h);
            }
            if (cap->waiting.empty()) {
              if (cap->error.empty() && cap->procs.empty()) cap->error = "the job has no running processes";
              finish_capture(cap->error.empty());
            }
          }
        } else if (op == "capture") {
          if (auto err = start_capture(fd, m->value("stop", false), m->value("options", json::object())))
            p.conn.Send({{"ok", false}, {"error", *err}});
        } else if (op == "exit" && p.role == "agent") {
          p.exit_status = m->value("status", 255);
        } else if (op == "wait_part") {
          parts_done.Ask(m->value("part", ""), fd, send_to);
        } else if (op == "ns_put") {
          std::string key = m->value("key", "");
          names.Post(key, {{"ok", true}, {"key", key}, {"value", m->value("value", "")}}, send_to);
          p.conn.Send({{"ok", true}});
        } else if (op == "ns_get") {
          names.Ask(m->value("key", ""), fd, send_to);
        } else if (op == "status") {
          json agents = json::array();
          for (auto& [afd, ap] : peers)
            if (ap.role == "agent") agents.push_back({{"host", ap.host}, {"pid", ap.pid}, {"procs", ap.procs}});
          p.conn.Send({{"ok", true},
                       {"job_id", job.job_id},
                       {"dir", job.dir},
                       {"coordinator_pid", getpid()},
                       {"capturing", (bool)cap},
                       {"interval", interval_s},
                       {"agents", agents},
                       {"images", ListImages(images_dir)}});
        }
      }
      if (!alive) dead.push_back(fd);
    }
    for (int fd : dead) {
      names.Forget(fd);
      parts_done.Forget(fd);
      Peer& p = peers[fd];
      if (p.role == "agent" && !p.part.empty()) {
        parts_done.Post(p.part, {{"ok", true}, {"status", p.exit_status}}, send_to);
      }
      if (p.role == "agent") Log("agent " + p.host + ":" + std::to_string(p.pid) + " left");
      if (cap) {
        auto it = std::find(cap->waiting.begin(), cap->waiting.end(), fd);
        if (it != cap->waiting.end()) {
          cap->waiting.erase(it);
          cap->error = "agent " + p.host + ":" + std::to_string(p.pid) + " went away during the capture";
          if (cap->waiting.empty()) finish_capture(false);
        }
        if (cap && cap->client_fd == fd) cap->client_fd = -1;
      }
      peers.erase(fd);
    }
    if (cap && now > cap->deadline) {
      cap->error = "timed out";
      finish_capture(false);
    }
    if (!cap && now >= next_interval) {
      // After the first, incremental; with --keep N a full one every N, so
      // that old chains can go.
      bool incr = !last_name.empty() && (keep <= 0 || last_depth + 1 < keep);
      if (!start_capture(-1, false, json{{"incremental", incr}})) cap->series = true;
      next_interval = now + std::chrono::seconds(interval_s);
    }
    bool any_agent = false;
    for (auto& [fd, p] : peers)
      if (p.role == "agent") any_agent = true;
    if (any_agent || !peers.empty()) idle_since = now;
    // Exit once the job is over (or never started).
    auto idle = now - idle_since;
    if ((had_agent && idle > std::chrono::seconds(2)) || (!had_agent && idle > std::chrono::seconds(60))) break;
  }
  // Only our own address: a coordinator started after us may have replaced it.
  if (auto a = ReadCoordinatorAddr(job); a && a->pid == getpid()) unlink((job.dir + "/coordinator.json").c_str());
  Log("job " + job.job_id + " over, coordinator exits");
  return 0;
}

}  // namespace ibdbg::tools
