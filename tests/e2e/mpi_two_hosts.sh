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
mpi2_name=mpi2 mpi2_rounds=1000 mpi2_fail_tail=25
. "$(dirname "$0")/mpi2_lib.sh"
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
