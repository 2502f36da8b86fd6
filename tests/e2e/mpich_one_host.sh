#!/bin/bash
# MPICH on one host (`ibdbg run -- mpiexec.mpich -n 4 ring-mpich`): the same
# test as Open MPI's, in mpi_one_host.sh.
#   mpich_one_host.sh BUILD_DIR [--as-user]
exec "$(dirname "$0")/mpi_one_host.sh" "$1" --mpi mpich "${@:2}"
