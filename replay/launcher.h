// The replay launcher: turns a process image back into a running process.
//
// It reads the image, gives the process its own pid again inside fresh user
// and pid namespaces (no privilege needed), puts its descriptors, cwd and
// limits in place, execs the no-libc restorer, feeds it the plan and then the
// memory (process_vm_writev), and, with gdb, hands the stopped threads over.
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace ibdbg::replay {

class PageServer;

struct ReplayOptions {
  std::string restorer;     // path of ibdbg-restore
  std::string agent;        // socket name the replayed library reconnects to
  std::string job_dir;
  bool gdb = false;         // park every process's threads for gdb instead of running them
  bool verbose = false;
  // Pages of private anonymous memory arrive on demand (userfaultfd) and in
  // the background instead of before the process runs; root only.
  bool lazy = false;
  // `ibdbg replay --device`: the verbs device the replay loads ("softrdma:roce",
  // "softrdma:ib" or a device name); "" = the recorded one.  The agent hands
  // it to each process with its verbs record.
  std::string verbs_device;

  // ---- a job of several parts (hosts); none of this is needed for one ----
  // The images of the job's other parts: a TCP connection between one of our
  // processes and one of theirs is made anew between the hosts the parts now
  // run on, through the coordinator's name service.
  std::vector<std::string> peer_images;
  std::function<void(const std::string& key, const std::string& value)> ns_put;
  std::function<std::string(const std::string& key)> ns_get;  // waits; throws when it cannot
  std::string reach_addr;  // an IPv4 address of this host the other parts reach
  // Processes not in the image that started another part through the remote
  // shell: made again with their pid, as children of `ppid`, running argv
  // (which starts that part again).
  struct StandIn {
    pid_t pid = 0, ppid = 0;
    std::vector<std::string> argv;
  };
  std::vector<StandIn> standins;
};

struct Launched {
  pid_t launcher_child = -1;  // our direct child; exits with the process's status
  pid_t pid = -1;             // the replayed process, as this namespace sees it
  pid_t image_pid = -1;       // its pid inside its namespace (= the captured one)
  uint64_t sigreturn_insn = 0;  // for gdb: where parked threads resume
  std::string exe;
  std::vector<pid_t> pids;      // every replayed process, as this namespace sees it
  // Lazy replay: serves the pages until all are present (see page_fill.h).
  std::shared_ptr<PageServer> pages;
  // Every replayed process, in the order of the image files given (gdb
  // attaches to each and steps its threads over rt_sigreturn).
  struct Proc {
    pid_t pid = -1;        // as this namespace sees it
    pid_t image_pid = -1;  // the captured one
    uint64_t sigreturn_insn = 0;
    std::string exe;
  };
  std::vector<Proc> procs;
  // Image pid -> the process's verbs record as the image has it (after any
  // `ibdbg translate`); the agent hands it to the process at replay.
  std::map<pid_t, std::string> verbs_records;
};

// Starts the single process of `image_file` (a proc-*.img).  Throws
// std::runtime_error (one line) if it cannot; nothing is left running then.
Launched LaunchProcess(const std::string& image_file, const ReplayOptions& opts);

// Starts every process of an image (its proc-*.img files) as the tree they
// formed, in one pid namespace, sharing the pipes and shared memory they
// shared.  The first root process (lowest pid without a parent in the image)
// is the one whose exit status is the job's; with opts.gdb every process
// waits, parked, for a debugger (Launched::procs).
Launched LaunchJob(const std::vector<std::string>& image_files, const ReplayOptions& opts);

// Waits until every thread of `pid` sits parked in the restorer.
bool WaitParked(pid_t pid, int timeout_ms);

}  // namespace ibdbg::replay
