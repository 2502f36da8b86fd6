#!/bin/bash
# Open MPI across two hosts (network namespaces h1, h2 on a bridge; mpirun
# reaches h2 through an ssh-like remote shell).  The job's coordinator is on a
# third host, h3, where `ibdbg run -- nshost h1 mpirun ...` starts it: no
# process of the job runs there.  The job is captured once, mid-run, on both
# hosts, killed, and replayed from h3
#   (a) on the same hosts, (b) all onto h1, (c) with the hosts swapped,
# each printing the same checksum as an uninterrupted run.
#   mpi_two_hosts.sh BUILD_DIR [--as-user]
# --as-user: everything runs as user nobody, the hosts made inside a user
# namespace of nobody's own (no privilege anywhere).
set -u
. "$(dirname "$0")/lib.sh"
e2e_close_leaked_fds
build=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
if [ "${2:-}" = --as-user ]; then
  e2e_make_work mpi2
  chown nobody:nogroup "$work"
  trap e2e_cleanup EXIT
  "${e2e_nobody[@]}" env HOME="$work" IBDBG_WORK="$work" \
    unshare --user --map-root-user -- "$0" "$build" --inside
  exit $?
fi
if [ "${2:-}" = --inside ]; then
  work=$IBDBG_WORK
else
  e2e_make_work mpi2
  trap e2e_cleanup EXIT
fi
export IBDBG_HOME="$work/home" TMPDIR="$work/tmp"
mkdir -p "$TMPDIR"
ibdbg=$build/bin/ibdbg ring=$build/bin/ring
fail_name=mpi2 fail_tail=25 fail_logs=('*.out' '*/coordinator.log')
[ -x "$ring" ] || fail "$ring is missing (Open MPI's libopenmpi-dev was not found at build time: tools/deps.sh installs it)"
bash "$here/../hosts/hosts.sh" up "$work/hosts" 3 || fail "cannot make the test hosts"
trap 'bash "$here/../hosts/hosts.sh" down "$work/hosts"; e2e_cleanup' EXIT
rsh=$work/hosts/nshost
net=(--mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24)
mpirun="mpirun --allow-run-as-root --oversubscribe --host h1:2,h2:2 -np 4 --mca plm_rsh_agent $rsh
        --mca btl tcp,self,vader --mca mpi_yield_when_idle 1 ${net[*]} --mca orte_tmpdir_base $TMPDIR"
mpirun=$(echo $mpirun)
rounds=1000
"$rsh" h1 "$mpirun $ring $rounds 0" > "$work/plain.out" 2>&1 || fail "the uninterrupted run failed"
want=$(grep '^ring: 4 ranks' "$work/plain.out")
case $want in *" OK") ;; *) fail "the uninterrupted run did not check out: $want" ;; esac

"$rsh" h3 "$ibdbg run --dir $work/job --listen 10.77.0.3 --remote-shell $rsh -- $rsh h1 $mpirun $ring $rounds 2000" \
  > "$work/run.out" 2>&1 &
runner=$!
wait_for "$work/run.out" "ring: running" 60 || fail "the job did not get going"
img=$("$rsh" h3 "$ibdbg capture --dir $work/job --stop") || fail "capture failed"
wait $runner
grep -q '^ring: 4 ranks' "$work/run.out" && fail "the captured job ran to its end instead of stopping"
python3 - "$img" <<'PY' || fail "the image does not hold both hosts' parts"
import json, sys
m = json.load(open(sys.argv[1] + "/manifest.json"))
hosts = sorted(p["host"] for p in m["processes"])
assert hosts.count("h1") >= 3 and hosts.count("h2") >= 3, hosts   # mpirun + 2 ranks; orted + 2 ranks
via = {h["name"]: h.get("via", "") for h in m["hosts"]}
assert via.get("h1", "").startswith("h3:") and via.get("h2", "").startswith("h1:"), via
assert "h3" not in hosts, hosts
# Each rank's MPI rank, two on each host; mpirun and orted have none.
ranks = sorted((p["host"], p["rank"]) for p in m["processes"] if "rank" in p)
assert sorted(r for _, r in ranks) == [0, 1, 2, 3], ranks
assert sorted(h for h, _ in ranks) == ["h1", "h1", "h2", "h2"], ranks
PY
"$ibdbg" inspect "$img" > "$work/inspect.out" || fail "inspect failed"
grep -Eq "^part       host h2: [3-9] processes, started from h1:[0-9]+ \(pid\) through the remote shell" "$work/inspect.out" ||
  fail "inspect does not show h2's part and its starter"
# The job's output file: each replay appends its answer after the capture's offset.
cp "$work/run.out" "$work/run.captured"
replay() { # name from-host listen-address options...
  local name=$1 from=$2 addr=$3; shift 3
  cp "$work/run.captured" "$work/run.out"
  timeout 300 "$rsh" "$from" "$ibdbg replay $img --dir $work/$name --listen $addr --remote-shell $rsh $*" \
    > "$work/$name.out" 2>&1 || fail "replay $name failed"
  local got
  got=$(grep '^ring: 4 ranks' "$work/run.out" "$work/$name.out" | head -1 | cut -d: -f2-)
  [ "$got" = "$want" ] || fail "replay $name printed '$got', the uninterrupted run '$want'"
  echo "replay $name: $got"
}
replay same h3 10.77.0.3
replay onto-h1 h3 10.77.0.3 --host h2=h1
grep -q "part h2 of .* replaying on h1" "$work/onto-h1.out" || fail "part h2 did not replay on h1"
replay swapped h3 10.77.0.3 --host h1=h2 --host h2=h1
grep -q "part h1 of .* replaying on h2" "$work/swapped.out" || fail "part h1 did not replay on h2"
echo "PASS(mpi2): $want"
