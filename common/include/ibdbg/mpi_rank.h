#pragma once

// The MPI rank of a process as its launcher told it, from its environment.
// Read by the agent from /proc/PID/environ (outside the process), recorded in
// the image manifest as processes[].rank.

#include <sys/types.h>

#include <optional>
#include <string_view>

namespace ibdbg {

// `environ` is the NUL-separated NAME=VALUE list of /proc/PID/environ.  The
// world rank is the first of OMPI_COMM_WORLD_RANK (Open MPI), PMIX_RANK,
// PMI_RANK (MPICH's hydra, Intel MPI) holding a non-negative decimal integer;
// SLURM_PROCID (srun's task number, the rank of a job started by srun alone)
// only when none of those is set.  Local ids such as MPI_LOCALRANKID or
// OMPI_COMM_WORLD_LOCAL_RANK are never a world rank.  nullopt: not known.
std::optional<int> MpiRankFromEnviron(std::string_view environ);

// The same for a live process (nullopt also when its environment cannot be read).
std::optional<int> ProcessMpiRank(pid_t pid);

}  // namespace ibdbg
