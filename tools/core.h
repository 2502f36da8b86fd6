#pragma once

// `ibdbg core`: one process of an image as an ELF core file, the kind the
// kernel writes, for gdb PROGRAM CORE (or any tool that reads cores).

#include <cstdint>
#include <string>
#include <vector>

#include "ibdbg/proto.h"

namespace ibdbg::tools {

struct CoreOptions {
  std::string image;   // image directory (or a file in it)
  std::string output;  // the core file to write
  int rank = -1;       // choose the process by its MPI rank (manifest), or
  int pid = 0;         // ... by its captured pid; neither: the only process
  bool force = false;  // replace an existing output
};

struct CoreResult {
  std::string path;
  int pid = 0;
  int rank = -1;
  size_t threads = 0;
  size_t segments = 0;    // PT_LOAD
  uint64_t file_bytes = 0;  // apparent size (the file is sparse)
  std::vector<std::string> warnings;
};

// Writes the core to a temporary file beside `output` and renames it into
// place once complete and synced.  Throws std::runtime_error (one line).
CoreResult WriteCore(const CoreOptions& opts);

// ---- the note segment, separately for tests ------------------------------------
// One thread's state as the core shows it.
struct CoreThread {
  int32_t tid = 0;
  uint64_t regs[27] = {};  // user_regs_struct order (r15 ... gs)
  uint64_t sigmask = 0;
  bool have_fp = false;
  uint8_t fxsave[512] = {};
  std::vector<uint8_t> xstate;  // the XSAVE area, XCR0 at byte 464; empty: none
};

struct CoreFileMapping {
  uint64_t start, end, page_offset;
  std::string path;
};

struct CoreNotesInput {
  ibdbg_process_info proc{};
  std::string psargs;  // the start of the command line, spaces between arguments
  std::vector<CoreThread> threads;  // the first is the one gdb selects
  std::vector<CoreFileMapping> files;
};

// PT_NOTE contents in the kernel's order: the first thread's NT_PRSTATUS,
// NT_PRPSINFO, NT_AUXV, NT_FILE, its NT_FPREGSET and NT_X86_XSTATE; then every
// other thread's NT_PRSTATUS, NT_FPREGSET, NT_X86_XSTATE.
std::vector<uint8_t> BuildCoreNotes(const CoreNotesInput& in);

}  // namespace ibdbg::tools
