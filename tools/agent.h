// The per-host agent: the parent of the job's processes on this host.
//
// Capture libraries connect to it over an abstract unix socket; it joins the
// job's coordinator and, on its word, stops its processes and writes their
// images from outside (through /proc), then lets them run on or kills them.
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "capture/agent/process_image.h"
#include "job.h"

namespace ibdbg::tools {

class Agent {
 public:
  // `via`: "HOST:PID" of the process that started this agent through the
  // job's remote shell on another host ("" for the first agent of a job).
  // `part`: the name of the job's part this agent replays (its original
  // host's name), "" for an agent of `ibdbg run`.
  Agent(const JobDir& job, const std::string& via, const std::string& part = "");
  ~Agent();
  // "@ibdbg-<job>-<pid>-<rand>": what IBDBG_AGENT / the restart info carry.
  const std::string& socket_name() const { return name_; }
  // The loop ends when this child exits; its status becomes Loop's result.
  void Watch(pid_t child);
  // Serves until the watched child exits; returns its exit code (128+signal
  // if killed).
  int Loop();
  // Runs before every capture (a lazy replay waits for its pages there).
  std::function<void()> before_capture;
  // A replay of verbs objects: image pid -> the process's verbs record, and
  // the device to rebuild them on (replay::ReplayOptions::verbs_device).
  std::map<pid_t, std::string> verbs_records;
  std::string verbs_device;

 private:
  struct Lib {
    int fd = -1;
    pid_t pid = 0;
    pid_t own_pid = 0;  // as the process sees itself (its image pid after a replay)
    std::string exe;
    int rank = -1;  // MPI rank from its environment; -1 unknown
    std::vector<capture::PipeRefill> refills;
    bool suspended = false;
    bool held = false;  // presuspended: RESUME releases it if no SUSPEND follows
    // Incremental capture: the process's write tracker (a userfaultfd it made
    // and handed over, -1: none yet), the capture whose pause last armed it,
    // and the image that capture wrote of it (file name, ImageFileId).
    int tracker = -1;
    std::string tracker_error;  // why there is none (asked once)
    std::string armed_capture;
    std::string last_file, last_id;
  };
  void AcceptLib();
  void SendProcs();
  // A capture in steps, each ending in a barrier at the coordinator: every
  // process holds its verbs posts until its own sends completed (DoPresuspend;
  // capture/verbs/README.md), every process drains its CQs and stops (and
  // its TCP sends drain), then every agent writes.
  void DoPresuspend();
  void DoSuspend();
  void DoWrite(const std::string& dir, const std::string& job_id, const json& options);
  // A forked capture: DoWrite has written what needs the stopped processes
  // and each has forked a frozen copy (coordinator told "forked"); once every
  // agent is there, the coordinator says "detach": the processes run on and
  // their memory is written from the copies.
  void DoDetach();
  void DropCopies();
  void ForgetLib(int fd);
  // The image is complete: the next incremental capture of it may name it.
  void Completed(int lib_fd, const std::string& file, const std::string& path);
  void SendCaptured(const json& procs, const std::string& err);
  void Resume(bool kill);
  std::vector<pid_t> UnregisteredDescendants();
  // A message a library sent outside a capture (a replayed process's verbs
  // layer: its record, the name service); false when it went away.
  bool LibMessage(int fd);
  void NsReply(const json& m);

  JobDir job_;
  std::string via_;
  std::string part_;
  std::string name_;
  std::map<int, capture::ProcessMeta> metas_;  // of the capture under way
  // Images of a forked capture waiting for "detach".
  struct Pending {
    int out = -1;
    std::string file;
    capture::ImageInProgressPtr img;
    int copy_pidfd = -1;  // the frozen copy, or -1: the process itself (stopped until written)
    pid_t copy = 0;
    json proc;
    int lib_fd = -1;
    std::string path;
  };
  std::vector<Pending> pending_;
  int lfd_ = -1;
  LineConn coord_;
  std::map<int, Lib> libs_;
  // The name service of the job for the libraries: a connection of its own
  // (an ns_get waits at the coordinator), and who waits for which key.
  LineConn ns_;
  std::multimap<std::string, int> ns_waiting_;
  pid_t child_ = -1;
  int pidfd_ = -1;
};

// Exit code of a wait status, shell style.
int ExitCode(int status);

}  // namespace ibdbg::tools
