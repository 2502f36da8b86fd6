// A job: its directory, its coordinator and the line protocol spoken to it.
//
// DIR/job.json        {"job_id", "created"}
// DIR/secret          0600, the token every client must present
// DIR/coordinator.json {"host", "port", "pid"} while a coordinator runs
// DIR/coordinator.log
// DIR/images/NAME/    committed images; DIR/images/latest -> NAME
//
// Messages are JSON objects, one per line, over TCP.  The first line from a
// client is {"op":"hello","role":...,"secret":...}.
#pragma once

#include <sys/types.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace ibdbg::tools {

using json = nlohmann::json;

struct JobDir {
  std::string dir;
  std::string job_id;
  std::string secret;
};

// ~/.local/share/ibdbg (or $IBDBG_HOME): where jobs without --dir live, and
// where jobs/<id> links to every job's directory so --job ID finds it.
std::string IbdbgHome();
// Creates DIR (0700), job.json and the secret if missing; loads them.
JobDir OpenOrCreateJob(const std::string& dir, const std::string& preferred_id = "");
// Loads an existing job (throws if DIR is not one).
JobDir LoadJob(const std::string& dir);
std::string DirForJobId(const std::string& id);

struct CoordinatorAddr {
  std::string host;
  int port = 0;
  pid_t pid = 0;
};
std::optional<CoordinatorAddr> ReadCoordinatorAddr(const JobDir& job);

// A connected JSON-lines peer.
class LineConn {
 public:
  explicit LineConn(int fd = -1) : fd_(fd) {}
  ~LineConn();
  LineConn(LineConn&& o) noexcept : fd_(o.fd_), buf_(std::move(o.buf_)) { o.fd_ = -1; }
  LineConn& operator=(LineConn&& o) noexcept;
  int fd() const { return fd_; }
  bool Send(const json& j);
  // Blocks up to timeout_ms (-1 forever) for one message; nullopt on EOF,
  // error or timeout.
  std::optional<json> Recv(int timeout_ms = -1);
  // For poll loops: read what is there; returns false on EOF/error.
  bool Fill();
  std::optional<json> Pop();  // a complete buffered message, if any
  void Close();

 private:
  int fd_;
  std::string buf_;
};

// Connects and authenticates; throws std::runtime_error (one line) on failure.
// `part`: a replayed part's agent names its part (see tools/main.cc).
LineConn ConnectCoordinator(const JobDir& job, const std::string& role, int timeout_ms = 5000,
                            const std::string& part = "");

// Starts `ibdbg coordinator` for the job unless one answers; waits until it
// does.  self_exe: path of the ibdbg binary.
// listen: the address the coordinator binds (loopback unless the job spans
// hosts).
void EnsureCoordinator(const JobDir& job, const std::string& self_exe, const std::string& listen = "127.0.0.1");

// Runs the coordinator in this process (the hidden `ibdbg coordinator`).
int RunCoordinator(const std::string& dir, const std::string& listen_host, bool daemonize);

std::string RandomHex(size_t bytes);
std::string NowIso();
std::string SelfExe();
std::string SelfDir();  // folder of the running ibdbg binary

}  // namespace ibdbg::tools
