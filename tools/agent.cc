#include "agent.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <dirent.h>
#include <fstream>
#include <iterator>
#include <set>
#include <cstring>
#include <stdexcept>

#include "ibdbg/mpi_rank.h"
#include "ibdbg/image_chain.h"
#include "ibdbg/proto.h"
#include "ibdbg/version.h"

namespace ibdbg::tools {

int ExitCode(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

namespace {

bool ReadFull(int fd, void* buf, size_t len, int timeout_ms) {
  char* p = (char*)buf;
  while (len) {
    pollfd pf = {fd, POLLIN, 0};
    int r = poll(&pf, 1, timeout_ms);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    ssize_t n = read(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n, len -= (size_t)n;
  }
  return true;
}

bool SendMsg(int fd, uint32_t type) {
  ibdbg_msg_hdr h = {type, 0};
  return send(fd, &h, sizeof h, MSG_NOSIGNAL) == (ssize_t)sizeof h;
}

}  // namespace

Agent::Agent(const JobDir& job, const std::string& via, const std::string& part)
    : job_(job), via_(via), part_(part) {
  // Fixed length, so that a replayed process can rewrite the name in its
  // environment in place.
  char pidhex[16];
  snprintf(pidhex, sizeof pidhex, "%08x", (unsigned)getpid());
  std::string id = job.job_id.substr(0, 8);
  id.resize(8, '0');
  name_ = "@ibdbg-" + id + "-" + pidhex + "-" + RandomHex(4);
  lfd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  memcpy(a.sun_path, name_.data(), name_.size());
  a.sun_path[0] = 0;
  socklen_t len = (socklen_t)(offsetof(sockaddr_un, sun_path) + name_.size());
  if (bind(lfd_, (sockaddr*)&a, len) != 0 || listen(lfd_, 128) != 0)
    throw std::runtime_error(std::string("cannot create the agent socket: ") + strerror(errno));
  coord_ = ConnectCoordinator(job_, "agent", 5000, part_);
}

Agent::~Agent() {
  DropCopies();
  if (lfd_ >= 0) close(lfd_);
  for (auto& [fd, l] : libs_) {
    close(fd);
    if (l.tracker >= 0) close(l.tracker);
  }
  if (pidfd_ >= 0) close(pidfd_);
}

// A library's connection ended (or cannot be answered).  An fd may come
// twice in one round (gone, and waiting for the name service): only once here.
void Agent::ForgetLib(int fd) {
  auto it = libs_.find(fd);
  if (it == libs_.end()) return;
  close(fd);
  if (it->second.tracker >= 0) close(it->second.tracker);
  libs_.erase(it);
  for (auto w = ns_waiting_.begin(); w != ns_waiting_.end();)
    w = w->second == fd ? ns_waiting_.erase(w) : std::next(w);
}

void Agent::Completed(int lib_fd, const std::string& file, const std::string& path) {
  auto it = libs_.find(lib_fd);
  if (it == libs_.end() || it->second.armed_capture.empty()) return;
  try {
    it->second.last_id = image::ImageFileId(path);
    it->second.last_file = file;
  } catch (const std::exception&) {
    it->second.armed_capture.clear();
  }
}

void Agent::Watch(pid_t child) {
  child_ = child;
  pidfd_ = (int)syscall(SYS_pidfd_open, child, 0);
}

void Agent::SendProcs() {
  json procs = json::array();
  for (auto& [fd, l] : libs_) {
    json e = {{"pid", l.pid}, {"exe", l.exe}};
    if (l.rank >= 0) e["rank"] = l.rank;
    procs.push_back(std::move(e));
  }
  coord_.Send({{"op", "procs"}, {"procs", procs}});
}

void Agent::AcceptLib() {
  int fd = accept4(lfd_, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) return;
  ucred cred{};
  socklen_t cl = sizeof cred;
  // Only our own user's processes may join; anyone can reach an abstract name.
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0 || cred.uid != getuid()) {
    close(fd);
    return;
  }
  ibdbg_msg_hdr h;
  ibdbg_hello hello;
  if (!ReadFull(fd, &h, sizeof h, 5000) || h.type != IBDBG_MSG_HELLO || h.len != sizeof hello ||
      !ReadFull(fd, &hello, sizeof hello, 5000)) {
    close(fd);
    return;
  }
  hello.exe[sizeof hello.exe - 1] = 0;
  Lib l;
  l.fd = fd;
  // The peer's pid as this namespace sees it (the library reports its own view).
  l.pid = cred.pid;
  l.own_pid = hello.pid;
  l.exe = hello.exe;
  l.rank = ProcessMpiRank(l.pid).value_or(-1);
  libs_[fd] = l;
  SendProcs();
}

namespace {
std::string ReadLinkStr(const std::string& path) {
  char buf[4096];
  ssize_t n = readlink(path.c_str(), buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, (size_t)n) : std::string();
}

std::vector<pid_t> ChildrenOf(pid_t pid) {
  std::vector<pid_t> out;
  std::string base = "/proc/" + std::to_string(pid) + "/task";
  if (DIR* d = opendir(base.c_str())) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] == '.') continue;
      std::ifstream f(base + "/" + e->d_name + "/children");
      pid_t c;
      while (f >> c) out.push_back(c);
    }
    closedir(d);
  }
  return out;
}

// `ibdbg run` (or a replay's part): an agent of its own.
bool IsAgentProcess(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/cmdline");
  std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  size_t z = all.find('\0');
  if (z == std::string::npos) return false;
  std::string arg1 = all.substr(z + 1, all.find('\0', z + 1) - z - 1);
  return arg1 == "run" || (arg1 == "replay" && all.find(std::string("\0--part\0", 8)) != std::string::npos);
}

char ProcState(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  size_t rp = all.rfind(')');
  return rp != std::string::npos && rp + 2 < all.size() ? all[rp + 2] : '?';
}
}  // namespace

// Our descendants that run application code but have no library connection.
// ibdbg's own processes (a replay's launcher and init, the restorer) and
// zombies do not count.
std::vector<pid_t> Agent::UnregisteredDescendants() {
  std::set<pid_t> known;
  for (auto& [fd, l] : libs_) known.insert(l.pid);
  std::string self = ReadLinkStr("/proc/self/exe");
  std::vector<pid_t> out, todo = ChildrenOf(getpid());
  while (!todo.empty()) {
    pid_t p = todo.back();
    todo.pop_back();
    std::string exe = ReadLinkStr("/proc/" + std::to_string(p) + "/exe");
    // Another agent of the job (a part started through the remote shell)
    // answers for its own processes.
    if (exe == self && IsAgentProcess(p)) continue;
    for (pid_t c : ChildrenOf(p)) todo.push_back(c);
    if (known.count(p) || ProcState(p) == 'Z') continue;
    if (exe.empty() || exe == self || exe.find("/ibdbg-restore") != std::string::npos) continue;
    out.push_back(p);
  }
  return out;
}

void Agent::DoPresuspend() {
  if (before_capture) before_capture();
  for (;;) {
    pollfd lp = {lfd_, POLLIN, 0};
    if (poll(&lp, 1, 0) != 1) break;
    AcceptLib();
  }
  std::string err;
  std::vector<int> asked, exited;
  for (auto& [fd, l] : libs_)
    if (SendMsg(fd, IBDBG_MSG_PRESUSPEND)) asked.push_back(fd);
  // All at once: a process's sends complete only while its peers' backends
  // keep running, so every library works on its own at the same time.
  for (int fd : asked) {
    Lib& l = libs_[fd];
    ibdbg_msg_hdr h;
    if (!ReadFull(fd, &h, sizeof h, 60000)) {
      char st = ProcState(l.pid);
      if (st == 'Z' || st == 'X' || st == '?') {
        exited.push_back(fd);
        continue;
      }
      // It may hold its posts yet: the RESUME that ends this capture releases them.
      l.held = true;
      if (err.empty()) err = "process " + std::to_string(l.pid) + " did not hold its verbs posts in time";
      continue;
    }
    std::string text(h.len < 4096 ? h.len : 0, '\0');
    if (h.len >= 4096 || !ReadFull(fd, text.data(), text.size(), 10000)) {
      l.held = true;
      if (err.empty()) err = "process " + std::to_string(l.pid) + " sent a bad answer";
      continue;
    }
    if (h.type == IBDBG_MSG_PRESUSPENDED) {
      l.held = true;
    } else if (err.empty()) {
      err = "process " + std::to_string(l.pid) + ": " +
            (h.type == IBDBG_MSG_ERROR ? text : std::string("unexpected answer from the capture library"));
    }
  }
  for (int fd : exited) {
    close(fd);
    libs_.erase(fd);
  }
  if (!exited.empty()) SendProcs();
  if (err.empty())
    coord_.Send({{"op", "presuspended"}, {"ok", true}});
  else
    coord_.Send({{"op", "presuspended"}, {"ok", false}, {"error", err}});
}

void Agent::DoSuspend() {
  if (before_capture) before_capture();
  // Libraries that connected a moment ago belong in this capture.
  for (;;) {
    pollfd lp = {lfd_, POLLIN, 0};
    if (poll(&lp, 1, 0) != 1) break;
    AcceptLib();
  }
  std::string err;
  metas_.clear();
  // Stop every library; then any process of ours that has not registered yet
  // (a child forked or exec'd a moment ago) gets a moment to do so, since an
  // image without it would be a torn tree.
  std::set<int> asked;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  for (;;) {
    for (auto& [fd, l] : libs_)
      if (!asked.count(fd)) {
        asked.insert(fd);
        if (SendMsg(fd, IBDBG_MSG_SUSPEND)) l.suspended = true;
      }
    std::vector<pid_t> missing = UnregisteredDescendants();
    if (missing.empty()) break;
    if (std::chrono::steady_clock::now() > deadline) {
      std::string exe = ReadLinkStr("/proc/" + std::to_string(missing[0]) + "/exe");
      err = "process " + std::to_string(missing[0]) + " (" + exe +
            ") is not under capture (statically linked, or the capture library was removed from its environment?)";
      break;
    }
    pollfd lp = {lfd_, POLLIN, 0};
    if (poll(&lp, 1, 20) == 1) AcceptLib();
  }
  std::vector<int> exited;
  for (auto& [fd, l] : libs_) {
    if (!l.suspended) continue;
    ibdbg_msg_hdr h;
    if (!ReadFull(fd, &h, sizeof h, 60000)) {
      l.suspended = false;
      // A process that ended while the others stopped is no part of the
      // image: its parent's image holds it as a zombie, if it is one yet.
      char st = ProcState(l.pid);
      if (st == 'Z' || st == 'X' || st == '?') {
        exited.push_back(fd);
        continue;
      }
      err = "process " + std::to_string(l.pid) + " did not stop in time";
      continue;
    }
    std::vector<uint8_t> blob(h.len);
    if (h.len > (64u << 20) || !ReadFull(fd, blob.data(), h.len, 10000)) {
      err = "process " + std::to_string(l.pid) + " sent no state";
      continue;
    }
    if (h.type == IBDBG_MSG_ERROR) {
      err = "process " + std::to_string(l.pid) + ": " + std::string(blob.begin(), blob.end());
      l.suspended = false;
      continue;
    }
    try {
      metas_[fd] = capture::ParseBlob(blob);
    } catch (const std::exception& e) {
      err = "process " + std::to_string(l.pid) + ": " + e.what();
    }
  }
  for (int fd : exited) {
    ForgetLib(fd);
    metas_.erase(fd);
  }
  if (!exited.empty()) SendProcs();
  // Bytes on their way to other processes of the job (on other hosts too)
  // reach their receive queues while everyone stands still.
  if (err.empty()) {
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    for (auto& [fd, l] : libs_)
      if (l.suspended && err.empty()) err = capture::WaitTcpSent(l.pid, until);
  }
  if (err.empty())
    coord_.Send({{"op", "suspended"}, {"ok", true}});
  else
    coord_.Send({{"op", "suspended"}, {"ok", false}, {"error", err}});
}

namespace {
// Asks a stopped process's library for a frozen copy of it; returns its
// pidfd (and pid, as we see it) or -1 when there is none.
int ForkCopy(int lib_fd, pid_t* copy, std::string* why) {
  if (!SendMsg(lib_fd, IBDBG_MSG_FORK)) {
    *why = "the capture library went away";
    return -1;
  }
  struct {
    ibdbg_msg_hdr h;
    int32_t pid;
  } __attribute__((packed)) m{};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  size_t got = 0;
  int pidfd = -1;
  while (got < sizeof m.h) {
    pollfd pf = {lib_fd, POLLIN, 0};
    if (poll(&pf, 1, 10000) != 1) break;
    iovec iov = {(char*)&m + got, sizeof m.h - got};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control;
    mh.msg_controllen = sizeof control;
    ssize_t n = recvmsg(lib_fd, &mh, MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) memcpy(&pidfd, CMSG_DATA(c), sizeof pidfd);
    got += (size_t)n;
  }
  if (got < sizeof m.h) {
    *why = "no answer from the capture library";
  } else if (m.h.type == IBDBG_MSG_FORKED && m.h.len == sizeof m.pid && ReadFull(lib_fd, &m.pid, sizeof m.pid, 10000) &&
             pidfd >= 0) {
    // Its pid as we see it (the library's is of the job's pid namespace).
    std::ifstream info("/proc/self/fdinfo/" + std::to_string(pidfd));
    std::string line;
    while (std::getline(info, line))
      if (line.rfind("Pid:", 0) == 0) *copy = (pid_t)atoi(line.c_str() + 4);
    if (*copy > 0) return pidfd;
    *why = "the frozen copy is gone";
  } else if (m.h.type == IBDBG_MSG_ERROR) {
    std::string text(m.h.len < 4096 ? m.h.len : 0, '\0');
    ReadFull(lib_fd, text.data(), text.size(), 10000);
    *why = text;
  } else {
    *why = "unexpected answer from the capture library";
  }
  // Only a library that said why it has no copy is still stopped: one of
  // another version may have taken FORK for RESUME, and an image of a
  // running process would be a mix of moments.
  if (m.h.type != IBDBG_MSG_ERROR || got < sizeof m.h) {
    if (pidfd >= 0) close(pidfd);
    throw std::runtime_error("no frozen copy: " + *why);
  }
  if (pidfd >= 0) close(pidfd);
  return -1;
}

// Asks a stopped process's library for a write tracker (incremental
// capture); returns the userfaultfd, or -1 with *why.
int GetTracker(int lib_fd, std::string* why) {
  if (!SendMsg(lib_fd, IBDBG_MSG_TRACK)) throw std::runtime_error("the capture library went away");
  ibdbg_msg_hdr h{};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  size_t got = 0;
  int fd = -1;
  while (got < sizeof h) {
    pollfd pf = {lib_fd, POLLIN, 0};
    if (poll(&pf, 1, 10000) != 1) break;
    iovec iov = {(char*)&h + got, sizeof h - got};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control;
    mh.msg_controllen = sizeof control;
    ssize_t n = recvmsg(lib_fd, &mh, MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) memcpy(&fd, CMSG_DATA(c), sizeof fd);
    got += (size_t)n;
  }
  if (got == sizeof h && h.type == IBDBG_MSG_TRACKER && h.len == 0 && fd >= 0) return fd;
  if (fd >= 0) close(fd);
  if (got == sizeof h && h.type == IBDBG_MSG_ERROR && h.len < 4096) {
    std::string text(h.len, '\0');
    if (ReadFull(lib_fd, text.data(), text.size(), 10000)) {
      *why = text;
      return -1;
    }
  }
  // A library that answered otherwise may not be stopped any more.
  throw std::runtime_error("no answer to the write-tracking request from the capture library");
}

void KillCopy(int pidfd) {
  if (pidfd < 0) return;
  syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0);
  // We are its parent when we are the job's subreaper; otherwise its reaper
  // is (ECHILD here).
  siginfo_t si;
  while (waitid((idtype_t)P_PIDFD, (id_t)pidfd, &si, WEXITED) < 0 && errno == EINTR) {
  }
  close(pidfd);
}
}  // namespace

void Agent::DropCopies() {
  for (auto& p : pending_) {
    KillCopy(p.copy_pidfd);
    p.img.reset();
    if (p.out >= 0) close(p.out);
  }
  pending_.clear();
}

void Agent::DoDetach() {
  // Every process of the job has its copy: the job runs on.
  Resume(false);
  json procs = json::array();
  std::string err;
  for (auto& p : pending_) {
    if (!err.empty()) break;
    if (!p.img) {  // written while stopped (no copy)
      procs.push_back(p.proc);
      continue;
    }
    try {
      auto st = capture::FinishProcessImage(*p.img, p.copy);
      p.proc["bytes"] = st.file_bytes;
      p.proc["memory_bytes"] = st.memory_bytes;
      procs.push_back(p.proc);
      Completed(p.lib_fd, p.file, p.path);
    } catch (const std::exception& e) {
      err = "process " + std::to_string(p.proc.value("pid", 0)) + ": " + e.what();
    }
  }
  DropCopies();
  SendCaptured(procs, err);
}

void Agent::SendCaptured(const json& procs, const std::string& err) {
  struct utsname un {};
  uname(&un);
  if (err.empty()) {
    json reply = {{"op", "captured"},
                  {"ok", true},
                  {"procs", procs},
                  {"kernel", un.release},
                  {"host", part_.empty() ? std::string(un.nodename) : part_}};
    if (!via_.empty()) reply["via"] = via_;
    coord_.Send(reply);
  } else {
    coord_.Send({{"op", "captured"}, {"ok", false}, {"error", err}});
  }
}

void Agent::DoWrite(const std::string& dir, const std::string& job_id, const json& options) {
  json procs = json::array();
  std::string err;
  bool forked = options.value("forked", false);
  // Incremental capture: every capture arms the trackers; one with a
  // "parent" (the job's last complete capture) stores, of each process whose
  // tracker that capture armed, only the pages written since.
  std::string capture_id = options.value("capture_id", "");
  json parent = options.value("parent", json());
  // Arming is for a capture to come: not when the job stops (--stop), nor in
  // a job run with IBDBG_NO_TRACK=1 (an application that registers memory
  // with a userfaultfd of its own would find it taken: EBUSY).
  static const bool no_track = getenv("IBDBG_NO_TRACK") && *getenv("IBDBG_NO_TRACK") == '1';
  bool track = !no_track && !capture_id.empty() && (options.value("track", true) || parent.is_object());
  DropCopies();
  std::set<std::string> ipc_stored;  // shared objects whose bytes one image holds already
  for (auto& [fd, l] : libs_) {
    if (!l.suspended || !metas_.count(fd)) continue;
    // Parts on other hosts have pids of their own: their files say whose.
    std::string file = (via_.empty() ? "proc-" : "proc-" + std::string(metas_[fd].proc.hostname) + "-") +
                       std::to_string(metas_[fd].proc.pid) + ".img";
    std::string path = dir + "/" + file;
    int out = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (out < 0) {
      err = "cannot create " + path + ": " + strerror(errno);
      break;
    }
    try {
      capture::WriteOptions wo;
      wo.job_id = job_id;
      wo.ibdbg_version = IBDBG_VERSION;
      wo.zstd_level = options.value("zstd_level", wo.zstd_level);
      wo.threads = options.value("zstd_threads", wo.threads);
      wo.ipc_stored = &ipc_stored;
      l.refills.clear();
      json proc = {{"pid", metas_[fd].proc.pid},
                   {"host", metas_[fd].proc.hostname},
                   {"exe", metas_[fd].proc.exe},
                   {"image", file},
                   {"threads", metas_[fd].threads.size()}};
      // Read again now: the process may have been replayed since it joined.
      if (auto rank = ProcessMpiRank(l.pid)) proc["rank"] = *rank;
      if (track && l.tracker < 0 && l.tracker_error.empty()) {
        l.tracker = GetTracker(fd, &l.tracker_error);
        if (l.tracker < 0 && l.tracker_error.empty()) l.tracker_error = "no write tracker";
      }
      if (track) wo.track_uffd = l.tracker;
      if (parent.is_object()) {
        std::string pname = parent.value("name", ""), pcap = parent.value("capture_id", "");
        if (!track)
          proc["full"] = "write tracking is off (IBDBG_NO_TRACK=1)";
        else if (l.tracker < 0)
          proc["full"] = "no write tracking (" + l.tracker_error + ")";
        else if (l.armed_capture != pcap || l.last_file.empty())
          proc["full"] = "not in " + pname + " (started, or its image was not completed, since)";
        else
          wo.parent_ref = json{{"image", "../" + pname + "/" + l.last_file}, {"id", l.last_id}}.dump();
        if (!wo.parent_ref.empty()) proc["parent"] = pname;
      }
      // Whatever happens below, the notes since the parent are gone now.
      l.armed_capture.clear();
      l.last_file.clear();
      if (forked) {
        Pending p;
        p.out = out;
        p.file = file;
        p.proc = proc;
        out = -1;
        // In the list at once: a failure below kills its copy (DropCopies).
        pending_.push_back(std::move(p));
        Pending& q = pending_.back();
        q.lib_fd = fd;
        q.path = path;
        q.img = capture::BeginProcessImage(l.pid, metas_[fd], q.out, wo, &l.refills, true);
        if (wo.track_uffd >= 0) l.armed_capture = capture_id;
        std::string why;
        q.copy_pidfd = ForkCopy(fd, &q.copy, &why);
        if (q.copy_pidfd >= 0) capture::WriteWhatTheCopyLacks(*q.img, q.copy);
        // Without a copy (no memory for one) the process stays stopped until
        // its memory is written, as without --forked.
        if (q.copy_pidfd < 0) {
          fprintf(stderr, "ibdbg: process %d: %s; its memory is written while it is stopped\n", (int)l.pid,
                  why.c_str());
          q.copy = l.pid;
          auto st = capture::FinishProcessImage(*q.img, l.pid);
          q.proc["bytes"] = st.file_bytes;
          q.proc["memory_bytes"] = st.memory_bytes;
          q.img.reset();
          Completed(fd, file, path);
        }
      } else {
        auto st = capture::WriteProcessImage(l.pid, metas_[fd], out, wo, &l.refills);
        if (wo.track_uffd >= 0) l.armed_capture = capture_id;
        proc["bytes"] = st.file_bytes;
        proc["memory_bytes"] = st.memory_bytes;
        procs.push_back(proc);
        Completed(fd, file, path);
      }
    } catch (const std::exception& e) {
      err = "process " + std::to_string(l.pid) + ": " + e.what();
    }
    if (out >= 0) close(out);
    if (!err.empty()) break;
  }
  metas_.clear();
  if (!forked || !err.empty()) {
    DropCopies();
    SendCaptured(procs, err);
    return;
  }
  coord_.Send({{"op", "forked"}, {"ok", true}});
}

namespace {
// A stopped job's TCP connections reset instead of closing: a replay on this
// host right away can then reuse their addresses, which closed connections
// would hold in TIME_WAIT for a minute.
void ResetTcpOnExit(pid_t pid) {
  capture::ForEachTcpSocket(pid, [](int, int s) {
    linger lg = {1, 0};
    setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    return true;
  });
}
}  // namespace

void Agent::Resume(bool kill_them) {
  if (kill_them) {
    for (auto& [fd, l] : libs_)
      if (l.suspended) ResetTcpOnExit(l.pid);
    // The job stops whole: every process of it, registered or not.
    for (pid_t p : UnregisteredDescendants()) ::kill(p, SIGKILL);
  }
  for (auto& [fd, l] : libs_) {
    bool held = l.held;
    l.held = false;
    if (!l.suspended) {
      // Presuspended only (the capture ended before its SUSPEND).
      if (held && !kill_them) SendMsg(fd, IBDBG_MSG_RESUME);
      continue;
    }
    l.suspended = false;
    if (kill_them) {
      ::kill(l.pid, SIGKILL);
      continue;
    }
    capture::RefillPipes(l.pid, l.refills);
    l.refills.clear();
    SendMsg(fd, IBDBG_MSG_RESUME);
  }
}

bool Agent::LibMessage(int fd) {
  ibdbg_msg_hdr h;
  ssize_t n = recv(fd, &h, sizeof h, MSG_DONTWAIT | MSG_PEEK);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return true;
  if (n <= 0 || !ReadFull(fd, &h, sizeof h, 5000) || h.len > (1u << 20)) return false;
  std::string body(h.len, '\0');
  if (h.len && !ReadFull(fd, body.data(), h.len, 5000)) return false;
  auto it = libs_.find(fd);
  if (it == libs_.end()) return false;
  try {
    if (h.type == IBDBG_MSG_VERBS_RECORD) {
      auto r = verbs_records.find(it->second.own_pid);
      std::string rec = r == verbs_records.end() ? std::string() : r->second;
      uint32_t dl = (uint32_t)verbs_device.size();
      std::string out((const char*)&dl, 4);
      out += verbs_device + rec;
      ibdbg_msg_hdr rh = {IBDBG_MSG_VERBS_RECORD, (uint32_t)out.size()};
      out.insert(0, (const char*)&rh, sizeof rh);
      return send(fd, out.data(), out.size(), MSG_NOSIGNAL) == (ssize_t)out.size();
    }
    if (h.type == IBDBG_MSG_NS_PUT || h.type == IBDBG_MSG_NS_GET) {
      if (ns_.fd() < 0) ns_ = ConnectCoordinator(job_, "client");
      if (h.type == IBDBG_MSG_NS_PUT) {
        size_t z = body.find('\0');
        if (z == std::string::npos) return false;
        // The coordinator's {"ok"} to a put is told apart from values by its lack of a key.
        ns_.Send({{"op", "ns_put"}, {"key", body.substr(0, z)}, {"value", body.substr(z + 1)}});
      } else {
        ns_waiting_.emplace(body, fd);
        ns_.Send({{"op", "ns_get"}, {"key", body}});
      }
      return true;
    }
  } catch (const std::exception& e) {
    fprintf(stderr, "ibdbg: agent: %s\n", e.what());
    return false;
  }
  return true;  // other messages are not for this moment
}

void Agent::NsReply(const json& m) {
  if (!m.contains("key")) return;
  std::string key = m.value("key", ""), value = m.value("value", "");
  auto it = ns_waiting_.find(key);
  if (it == ns_waiting_.end()) return;
  int fd = it->second;
  ns_waiting_.erase(it);
  ibdbg_msg_hdr h = {IBDBG_MSG_NS_GET, (uint32_t)value.size()};
  std::string out((const char*)&h, sizeof h);
  out += value;
  if (send(fd, out.data(), out.size(), MSG_NOSIGNAL) != (ssize_t)out.size()) {
  }
}

int Agent::Loop() {
  int status = 0;
  bool child_done = child_ < 0;
  while (!child_done) {
    std::vector<pollfd> pf = {{lfd_, POLLIN, 0}, {coord_.fd(), POLLIN, 0}, {pidfd_, POLLIN, 0}};
    for (auto& [fd, l] : libs_) pf.push_back({fd, POLLIN, 0});
    size_t nlib = pf.size();
    if (ns_.fd() >= 0) pf.push_back({ns_.fd(), POLLIN, 0});
    int r = poll(pf.data(), pf.size(), 1000);
    if (r < 0 && errno != EINTR) break;
    if (pf[0].revents & POLLIN) AcceptLib();
    if (pf[1].revents) {
      if (!coord_.Fill()) {
        // Without a coordinator the job runs on, uncapturable; a capture it
        // had started is abandoned and the processes resume.
        coord_.Close();
        DropCopies();
        Resume(false);
      }
      while (auto m = coord_.Pop()) {
        std::string op = m->value("op", "");
        if (op == "presuspend")
          DoPresuspend();
        else if (op == "suspend")
          DoSuspend();
        else if (op == "write")
          DoWrite(m->value("dir", ""), m->value("job_id", job_.job_id), m->value("options", json::object()));
        else if (op == "detach") DoDetach();
        // (Copies still here belong to an abandoned forked capture.)
        else if (op == "resume") DropCopies(), Resume(false);
        else if (op == "kill") DropCopies(), Resume(true);
      }
    }
    std::vector<int> gone;
    for (size_t i = 3; i < nlib; i++) {
      if (!pf[i].revents) continue;
      if (!LibMessage(pf[i].fd)) gone.push_back(pf[i].fd);
    }
    if (pf.size() > nlib && pf[nlib].revents) {
      if (!ns_.Fill()) {
        ns_.Close();
        for (auto& [k, fd] : ns_waiting_) gone.push_back(fd);  // cannot be answered: they fail
        ns_waiting_.clear();
      }
      while (auto m = ns_.Pop()) NsReply(*m);
    }
    for (int fd : gone) ForgetLib(fd);
    if (!gone.empty()) SendProcs();
    if (pidfd_ >= 0 ? (pf[2].revents & POLLIN) != 0 : false) {
      if (waitpid(child_, &status, WNOHANG) == child_) child_done = true;
    } else if (pidfd_ < 0 && waitpid(child_, &status, WNOHANG) == child_) {
      child_done = true;
    }
  }
  // Reap whatever else was ours (we are a subreaper) without waiting on it.
  while (waitpid(-1, nullptr, WNOHANG) > 0) {
  }
  coord_.Send({{"op", "exit"}, {"status", ExitCode(status)}});
  coord_.Close();
  return ExitCode(status);
}

}  // namespace ibdbg::tools
