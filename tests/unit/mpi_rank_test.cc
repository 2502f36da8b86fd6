#include "ibdbg/mpi_rank.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

namespace ibdbg {
namespace {

std::string Env(std::initializer_list<const char*> vars) {
  std::string s;
  for (const char* v : vars) {
    s += v;
    s += '\0';
  }
  return s;
}

TEST(MpiRank, OpenMpi) {
  EXPECT_EQ(MpiRankFromEnviron(Env({"PATH=/bin", "OMPI_COMM_WORLD_LOCAL_RANK=1", "OMPI_COMM_WORLD_RANK=3",
                                    "PMIX_RANK=3"})),
            3);
}

TEST(MpiRank, OpenMpiWinsOverPmix) {
  EXPECT_EQ(MpiRankFromEnviron(Env({"PMIX_RANK=7", "OMPI_COMM_WORLD_RANK=2"})), 2);
}

TEST(MpiRank, PmixAndPmi) {
  EXPECT_EQ(MpiRankFromEnviron(Env({"PMIX_RANK=5"})), 5);
  EXPECT_EQ(MpiRankFromEnviron(Env({"MPI_LOCALRANKID=0", "PMI_RANK=12", "PMI_SIZE=16"})), 12);
  EXPECT_EQ(MpiRankFromEnviron(Env({"PMI_RANK=0"})), 0);
}

TEST(MpiRank, LocalIdsAreNotRanks) {
  EXPECT_EQ(MpiRankFromEnviron(Env({"MPI_LOCALRANKID=2", "OMPI_COMM_WORLD_LOCAL_RANK=2", "PMI_SIZE=4"})),
            std::nullopt);
}

TEST(MpiRank, SlurmOnlyWithoutMpi) {
  EXPECT_EQ(MpiRankFromEnviron(Env({"SLURM_PROCID=4", "HOME=/root"})), 4);
  EXPECT_EQ(MpiRankFromEnviron(Env({"SLURM_PROCID=0", "PMI_RANK=9"})), 9);
  // An MPI variable that is set but unusable still means MPI launched it.
  EXPECT_EQ(MpiRankFromEnviron(Env({"SLURM_PROCID=0", "PMI_RANK=x"})), std::nullopt);
}

TEST(MpiRank, BadValuesAreSkipped) {
  EXPECT_EQ(MpiRankFromEnviron(Env({"OMPI_COMM_WORLD_RANK=", "PMIX_RANK=1"})), 1);
  EXPECT_EQ(MpiRankFromEnviron(Env({"OMPI_COMM_WORLD_RANK=-1"})), std::nullopt);
  EXPECT_EQ(MpiRankFromEnviron(Env({"OMPI_COMM_WORLD_RANK=1x"})), std::nullopt);
  EXPECT_EQ(MpiRankFromEnviron(Env({"OMPI_COMM_WORLD_RANK=99999999999"})), std::nullopt);
  EXPECT_EQ(MpiRankFromEnviron(Env({"OMPI_COMM_WORLD_RANK=2147483647"})), 2147483647);
}

TEST(MpiRank, NamesMatchWhole) {
  // A longer name with the same start, or a value mentioning it, is another variable.
  EXPECT_EQ(MpiRankFromEnviron(Env({"PMI_RANKS=3", "X=PMI_RANK=4", "XPMI_RANK=5"})), std::nullopt);
  EXPECT_EQ(MpiRankFromEnviron(std::string("PMI_RANK=6")), 6);  // no trailing NUL
  EXPECT_EQ(MpiRankFromEnviron(""), std::nullopt);
}

TEST(MpiRank, OwnProcess) {
  // A process that is gone has no rank (the e2e MPI tests read live ones).
  EXPECT_EQ(ProcessMpiRank(0x7ffffff0), std::nullopt);
}

}  // namespace
}  // namespace ibdbg
