# Sourced by the tests of Open MPI's ring on two namespace hosts
# (mpi_two_hosts.sh, gdb_two_hosts.sh), after they set mpi2_name (work
# directory and failure name), mpi2_rounds and mpi2_fail_tail: with "$@" of
# the test (BUILD_DIR [--as-user]), it makes the hosts h1, h2, h3, checks an
# uninterrupted run (its line in $want), starts the job under `ibdbg run` from
# h3, captures it with --stop once it runs ($img) and waits for it to end.
. "$(dirname "$0")/lib.sh"
e2e_close_leaked_fds
build=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
if [ "${2:-}" = --as-user ]; then
  e2e_make_work "$mpi2_name"
  chown nobody:nogroup "$work"
  trap e2e_cleanup EXIT
  "${e2e_nobody[@]}" env HOME="$work" IBDBG_WORK="$work" \
    unshare --user --map-root-user -- "$0" "$build" --inside
  exit $?
fi
if [ "${2:-}" = --inside ]; then
  work=$IBDBG_WORK
else
  e2e_make_work "$mpi2_name"
  trap e2e_cleanup EXIT
fi
export IBDBG_HOME="$work/home" TMPDIR="$work/tmp"
mkdir -p "$TMPDIR"
ibdbg=$build/bin/ibdbg ring=$build/bin/ring
fail_name=$mpi2_name fail_tail=$mpi2_fail_tail fail_logs=('*.out' '*/coordinator.log')
[ -x "$ring" ] || fail "$ring is missing (Open MPI's libopenmpi-dev was not found at build time: tools/deps.sh installs it)"
bash "$here/../hosts/hosts.sh" up "$work/hosts" 3 || fail "cannot make the test hosts"
trap 'bash "$here/../hosts/hosts.sh" down "$work/hosts"; e2e_cleanup' EXIT
rsh=$work/hosts/nshost
net=(--mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24)
mpirun="mpirun --allow-run-as-root --oversubscribe --host h1:2,h2:2 -np 4 --mca plm_rsh_agent $rsh
        --mca btl tcp,self,vader --mca mpi_yield_when_idle 1 ${net[*]} --mca orte_tmpdir_base $TMPDIR"
mpirun=$(echo $mpirun)
rounds=$mpi2_rounds
"$rsh" h1 "$mpirun $ring $rounds 0" > "$work/plain.out" 2>&1 || fail "the uninterrupted run failed"
want=$(grep '^ring: 4 ranks' "$work/plain.out")
case $want in *" OK") ;; *) fail "the uninterrupted run did not check out: $want" ;; esac

"$rsh" h3 "$ibdbg run --dir $work/job --listen 10.77.0.3 --remote-shell $rsh -- $rsh h1 $mpirun $ring $rounds 2000" \
  > "$work/run.out" 2>&1 &
runner=$!
wait_for "$work/run.out" "ring: running" 60 || fail "the job did not get going"
img=$("$rsh" h3 "$ibdbg capture --dir $work/job --stop") || fail "capture failed"
wait $runner
