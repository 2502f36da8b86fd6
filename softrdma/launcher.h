// Runs a command with softrdma as its only verbs device (`ibdbg softrdma`).
#pragma once
#include <string>
#include <vector>

namespace softrdma {

// mode: "ib" or "roce". argv: the command and its arguments.
// Sets LD_LIBRARY_PATH/LD_PRELOAD to the directory holding softrdma's
// libibverbs.so.1 and SOFTRDMA_MODE, then execs argv (PATH is searched).
// Returns only on failure: 2 for bad arguments, 127 when the library or the
// command cannot be found (a message is printed on stderr).
int RunSoftRdma(const std::string& mode, const std::vector<std::string>& argv);

// Where softrdma's libibverbs.so.1 lives: $IBDBG_SOFTRDMA_DIR, then
// <dir of this executable>/../lib/softrdma, then the build tree. "" if none.
std::string SoftRdmaLibDir();

}  // namespace softrdma
