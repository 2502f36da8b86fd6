// Pseudo-terminal pairs: what the capture records of one and how the replay
// (and a capture that lets the job run on) puts its bytes in flight back.
// Used by the agent and the launcher; no exceptions (the launcher calls it
// between fork and exec): failures come back as a one-line message.
#pragma once

#include <sys/types.h>

#include <string>

#include "ibdbg/proto.h"

namespace ibdbg::pty {

// The pair's index, lock, packet mode, settings and window size, from a
// descriptor of its master.  False (with *err) if it is no pty master.
bool ReadState(int master, ibdbg_pty_state* st, std::string* err);

// The device number of the devpts instance the pair's slave lives in (0 when
// the slave cannot be opened, e.g. locked).  Opens the slave briefly: see
// the README for the one case where that shows.
uint64_t SlaveDev(int master);

// Takes the bytes in flight out of the pair: *out what the slave wrote and
// the master has not read, *in what was written to the master and the slave
// has not read.  This consumes them: Refill puts them back.
bool Drain(int master, const ibdbg_pty_state& st, std::string* out, std::string* in, std::string* err);

// Writes out/in into the pair so that each end reads them unchanged (the
// line discipline's processing is switched off meanwhile), then applies
// st's settings and window size when st says they are valid.
bool Refill(int master, const ibdbg_pty_state& st, const std::string& out, const std::string& in,
            std::string* err);

// The index N of a Unix98 pty slave device number (/dev/pts/N), or -1.
long SlaveIndex(dev_t rdev);

}  // namespace ibdbg::pty
