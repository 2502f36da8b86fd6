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
mpi2_name=gdb2 mpi2_rounds=600 mpi2_fail_tail=40
. "$(dirname "$0")/mpi2_lib.sh"
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
