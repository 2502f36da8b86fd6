#!/bin/bash
# MPI on one host: `ibdbg run -- mpirun -np 4 --mca btl tcp,self,vader ring`
# (Open MPI) or `ibdbg run -- mpiexec.mpich -n 4 ring-mpich` (MPICH, hydra
# launcher, UCX underneath) is captured mid-run, killed, replayed, and must
# print the same checksum as an uninterrupted run of the same job.  At the end
# each rank also meets a rank it never talked to before the capture.
#   mpi_one_host.sh BUILD_DIR [--as-user] [--mpi openmpi|mpich] [--btl LIST]
set -u
. "$(dirname "$0")/lib.sh"
build=$(cd "$1" && pwd); shift
as_user=0 btl=tcp,self,vader mpi=openmpi
while [ $# -gt 0 ]; do
  case $1 in
    --as-user) as_user=1 ;;
    --btl) btl=$2; shift ;;
    --mpi) mpi=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
ibdbg=$build/bin/ibdbg
case $mpi in
  openmpi) ring=$build/bin/ring ;;
  mpich) ring=$build/bin/ring-mpich ;;
  *) echo "unknown MPI $mpi (openmpi or mpich)" >&2; exit 2 ;;
esac
mpi_root=(--allow-run-as-root); [ $as_user = 1 ] && mpi_root=()
e2e_setup mpi $as_user
fail_name="mpi $mpi" fail_tail=30 fail_logs=('*.out' '*/coordinator.log')
if [ $mpi = openmpi ]; then
  [ -x "$ring" ] || fail "$ring is missing (Open MPI's libopenmpi-dev was not found at build time: tools/deps.sh installs it)"
  command -v mpirun >/dev/null || fail "mpirun not found (tools/deps.sh installs openmpi-bin)"
else
  [ -x "$ring" ] || fail "$ring is missing (mpicc.mpich was not found at build time: tools/deps.sh installs libmpich-dev)"
  command -v mpiexec.mpich >/dev/null || fail "mpiexec.mpich not found (tools/deps.sh installs mpich)"
fi
cd "$work"
# The job's output files are reopened by the replay, as whoever runs it.
touch "$work/plain.out" "$work/run.out" "$work/replay.out"
[ $as_user = 1 ] && chown nobody:nogroup "$work"/*.out
if [ $mpi = openmpi ]; then
  mpirun=(mpirun "${mpi_root[@]}" --oversubscribe -np 4 --mca btl "$btl")
  rounds=3000 sleep_us=2000
else
  # The explicit name: mpirun/mpiexec are whichever MPI the system's
  # alternatives chose.  UCX busy-polls, four ranks share two cores here: a
  # round costs far more than with Open MPI, hence fewer, slower ones.
  mpirun=(mpiexec.mpich -n 4)
  rounds=500 sleep_us=20000
fi
"${as[@]}" "${mpirun[@]}" "$ring" $rounds 0 1024 1 > "$work/plain.out" 2>&1 || fail "the uninterrupted run failed"
want=$(grep '^ring: 4 ranks' "$work/plain.out")
case $want in *" OK") ;; *) fail "the uninterrupted run did not check out: $want" ;; esac

( "${as[@]}" "$ibdbg" run --dir "$work/job" -- "${mpirun[@]}" "$ring" $rounds $sleep_us 1024 1 > "$work/run.out" 2>&1 ) &
runner=$!
wait_for "$work/run.out" "ring: running" 60 || fail "the job did not get going"
# The running job's ranks, as its processes' environments name them.
"${as[@]}" "$ibdbg" status --dir "$work/job" > "$work/status.out" 2>&1 || fail "status failed"
[ "$(grep -o '  rank [0-9]*  ' "$work/status.out" | sort | tr -s ' ')" = "$(printf ' rank %d \n' 0 1 2 3)" ] ||
  fail "status does not show ranks 0 1 2 3 once each"
img=$("${as[@]}" "$ibdbg" capture --dir "$work/job" --stop) || fail "capture failed"
wait $runner
grep -q '^ring: 4 ranks' "$work/run.out" && fail "the captured job ran to its end instead of stopping"
"$ibdbg" inspect "$img" > "$work/inspect.out" || fail "inspect failed"
[ "$(grep -c '^process ' "$work/inspect.out")" -ge 5 ] || fail "the image does not hold mpirun and its 4 ranks"
# Each rank's MPI rank, from its environment at capture: 0..3, once each.
ranks=$(awk '/^  rank /{print $2}' "$work/inspect.out" | sort -n | tr '\n' ' ')
[ "$ranks" = "0 1 2 3 " ] || fail "inspect shows ranks '$ranks', not 0 1 2 3 once each"
# One rank as an ELF core, chosen by its rank: gdb sees the ring program's main.
"${as[@]}" "$ibdbg" core "$img" --rank 2 -o "$work/rank2.core" > "$work/core.out" 2>&1 || fail "core --rank 2 failed"
timeout 120 gdb -nx -batch "$ring" "$work/rank2.core" -ex 'thread apply all bt' > "$work/gdb.out" 2>&1 ||
  fail "gdb failed on the core of rank 2"
grep -q " main (" "$work/gdb.out" || fail "no thread of rank 2's core reaches main"
"${as[@]}" "$ibdbg" core "$img" -o "$work/any.core" > "$work/core.out" 2>&1 && fail "core chose one of several processes"
grep -q "choose one with --pid or --rank" "$work/core.out" || fail "core without a choice did not say how to choose"
timeout 300 "${as[@]}" "$ibdbg" replay "$img" --dir "$work/job2" > "$work/replay.out" 2>&1 || fail "the replay failed"
got=$(grep '^ring: 4 ranks' "$work/replay.out" "$work/run.out" | head -1 | cut -d: -f2-)
[ "$got" = "$want" ] || fail "the replayed job printed '$got', the uninterrupted one '$want'"
echo "PASS(mpi $mpi): $got"
