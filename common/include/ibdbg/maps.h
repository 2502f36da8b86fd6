#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ibdbg/error.h"

namespace ibdbg {

enum class MapKind {
  Anon,          // no path
  File,          // any path, including deleted files, SysV shm, memfd, /dev/zero
  Heap,          // [heap]
  Stack,         // [stack] (and old kernels' [stack:TID])
  Vdso,          // [vdso]
  Vvar,          // [vvar]
  VvarVclock,    // [vvar_vclock]
  Vsyscall,      // [vsyscall]
  OtherSpecial,  // any other [bracketed] name, e.g. [anon:foo], [uprobes]
};

const char* MapKindName(MapKind kind);

struct MapEntry {
  uint64_t start = 0, end = 0;
  bool r = false, w = false, x = false, shared = false;
  uint64_t offset = 0;
  uint32_t dev_major = 0, dev_minor = 0;
  uint64_t inode = 0;
  // As the kernel prints it, minus " (deleted)". The kernel escapes '\n' in
  // file names as "\012"; that is left as is because it is ambiguous.
  std::string path;
  bool deleted = false;
  MapKind kind = MapKind::Anon;

  uint64_t size() const { return end - start; }
};

// Parses the text of /proc/PID/maps. Throws ImageError naming the 1-based
// line number of the first malformed line. Blank lines are ignored.
std::vector<MapEntry> ParseMaps(std::string_view text);

// Reads and parses /proc/PID/maps. Throws ImageError.
std::vector<MapEntry> ReadMaps(pid_t pid);

}  // namespace ibdbg
