#!/bin/bash
# gdb on a job that spans hosts: Open MPI's ring on two namespace hosts (h1:
# mpirun and two ranks, h2: orted and two ranks; see mpi_two_hosts.sh),
# captured, replayed from h3 with --gdb-batch.  Each part waits parked on its
# host and tells the front its pids; these "hosts" are network namespaces of
# this machine, so gdb on h3 attaches to them plainly (a part on another
# machine would be reached through gdbserver).  Every process must be an
# inferior named by its host, every rank stopped in ring.c's main, and after
# gdb lets go the job must print the checksum of an uninterrupted run.
#   gdb_two_hosts.sh BUILD_DIR [--as-user]
set -u
. "$(dirname "$0")/lib.sh"
e2e_close_leaked_fds
build=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
if [ "${2:-}" = --as-user ]; then
  e2e_make_work gdb2
  chown nobody:nogroup "$work"
  trap e2e_cleanup EXIT
  "${e2e_nobody[@]}" env HOME="$work" IBDBG_WORK="$work" \
    unshare --user --map-root-user -- "$0" "$build" --inside
  exit $?
fi
if [ "${2:-}" = --inside ]; then
  work=$IBDBG_WORK
else
  e2e_make_work gdb2
  trap e2e_cleanup EXIT
fi
export IBDBG_HOME="$work/home" TMPDIR="$work/tmp"
mkdir -p "$TMPDIR"
ibdbg=$build/bin/ibdbg ring=$build/bin/ring
fail_name=gdb_two_hosts fail_tail=40 fail_logs=('*.out' '*/coordinator.log')
[ -x "$ring" ] || fail "$ring is missing (Open MPI's libopenmpi-dev was not found at build time: tools/deps.sh installs it)"
bash "$here/../hosts/hosts.sh" up "$work/hosts" 3 || fail "cannot make the test hosts"
trap 'bash "$here/../hosts/hosts.sh" down "$work/hosts"; e2e_cleanup' EXIT
rsh=$work/hosts/nshost
net=(--mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24)
mpirun="mpirun --allow-run-as-root --oversubscribe --host h1:2,h2:2 -np 4 --mca plm_rsh_agent $rsh
        --mca btl tcp,self,vader --mca mpi_yield_when_idle 1 ${net[*]} --mca orte_tmpdir_base $TMPDIR"
mpirun=$(echo $mpirun)
rounds=600
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
timeout 400 "$rsh" h3 "$ibdbg replay $img --dir $work/job2 --listen 10.77.0.3 --remote-shell $rsh \
  --gdb-batch 'info ibdbg;thread apply all bt'" > "$work/replay.out" 2>&1 || fail "the replay under gdb failed"
python3 - "$work/replay.out" "$img" <<'PY' || fail "the gdb session does not show the job as it should"
import json, re, sys
text = open(sys.argv[1]).read()
m = json.load(open(sys.argv[2] + "/manifest.json"))
procs = m["processes"]
starts = re.findall(r"^ibdbg: inferior (\d+) is (\S+)/(?:proc|rank) \d+: pid \d+ \(captured as (\d+)\), (\S+):", text, re.M)
assert len(starts) == len(procs), "%d inferiors for %d processes: %r" % (len(starts), len(procs), starts)
assert sorted((h, int(p)) for _, h, p, _ in starts) == sorted((p["host"], p["pid"]) for p in procs), starts
assert {h for _, h, _, _ in starts} == {"h1", "h2"}, "inferiors not named by both hosts"
ranks = [int(i) for i, _, _, exe in starts if exe.endswith("/ring")]
assert len(ranks) == 4, "ranks: %r" % ranks
blocks = re.split(r"^Thread (\d+)\.\d+ ", text, flags=re.M)
in_main = set()
for k in range(1, len(blocks) - 1, 2):
    if re.search(r"^#\d+ .*\bmain \(.*ring\.c:\d+", blocks[k + 1], re.M):
        in_main.add(int(blocks[k]))
assert set(ranks) <= in_main, "ranks not stopped in ring.c's main: %s of %s" % (sorted(in_main), ranks)
assert re.search(r"^host +h2: \d+ process\(es\), started from h1:", text, re.M), "info ibdbg does not show h2's part"
assert "detached from %d process(es)" % len(procs) in text, "not every process was detached"
PY
got=$(grep '^ring: 4 ranks' "$work/run.out" "$work/replay.out" | head -1 | cut -d: -f2-)
[ "$got" = "$want" ] || fail "the job under gdb printed '$got', the uninterrupted run '$want'"
echo "ok: gdb on a job of two hosts: $got"
