#!/bin/bash
# The user's whole path, timed: capture of a hung job, translate, and replay
# to a gdb prompt with every inferior ready, for jobs of 2, 8 and 64 processes.
#   bench/job_path.sh BUILD_DIR [MIB_PER_PROCESS] [SIZES...]
# The job is bench/hung_job (N processes in a ring waiting for a token nobody
# sends).  "to gdb" is the time from starting `ibdbg replay --gdb-batch` until
# gdb has run `info ibdbg` with every inferior attached and at its capture
# point; "replay total" adds the job finishing after gdb detaches (the bench
# creates the job's go-file after the capture, so the replay runs to its end
# and checks every process's memory).  Goal (issue 8): capture + translate +
# to gdb under 60 s for 64 processes on this 2-core machine.  Numbers only:
# this is a benchmark, not a test.
set -eu
build=$(cd "$1" && pwd)
mib=${2:-8}
shift $(($# >= 2 ? 2 : $#))
sizes=${*:-2 8 64}
ibdbg=$build/bin/ibdbg
prog=$build/bench/hung_job
work=$(mktemp -d "${TMPDIR:-/var/tmp}/ibdbg-jobpath.XXXXXX")
export IBDBG_HOME=$work/home
trap 'pkill -KILL -f "$work" 2>/dev/null; rm -rf "$work"' EXIT
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }

printf '%-10s %-9s %10s %10s %10s %12s %10s %14s\n' processes memory capture translate "to gdb" "replay total" "sum" "image"
for n in $sizes; do
  rm -f "$work/go"
  ("$ibdbg" run --dir "$work/job$n" -- "$prog" "$n" "$mib" "$work/go" > "$work/run$n.out" 2>&1) &
  until grep -q READY "$work/run$n.out" 2>/dev/null; do
    sleep 0.1
    kill -0 $! 2>/dev/null || { echo "the job of $n processes did not start:"; cat "$work/run$n.out"; exit 1; }
  done
  t0=$(now)
  img=$("$ibdbg" capture --dir "$work/job$n" --stop)
  t1=$(now)
  wait
  "$ibdbg" translate "$img" -o "$work/out$n" > "$work/translate$n.out"
  t2=$(now)
  touch "$work/go"
  : > "$work/replay$n.out"
  ("$ibdbg" replay "$work/out$n" --dir "$work/rjob$n" --gdb-batch 'info ibdbg;echo IBDBG-BENCH-READY\n' \
     > "$work/replay$n.out" 2>&1; echo "rc=$?" >> "$work/replay$n.out") &
  until grep -q 'IBDBG-BENCH-READY' "$work/replay$n.out"; do
    sleep 0.05
    if grep -q '^rc=' "$work/replay$n.out" && ! grep -q 'IBDBG-BENCH-READY' "$work/replay$n.out"; then
      echo "replay of $n processes ended before gdb was ready:"; cat "$work/replay$n.out"; exit 1
    fi
  done
  t3=$(now)
  wait
  t4=$(now)
  # The job's stdout is the file it had at capture: the replay appends there.
  grep -q '^PASS' "$work/run$n.out" || { echo "replay of $n processes did not verify:"; tail -5 "$work/run$n.out" "$work/replay$n.out"; exit 1; }
  inferiors=$(grep -c '^ibdbg: inferior [0-9]* is .* at their capture point' "$work/replay$n.out" || true)
  [ "$inferiors" = "$n" ] || { echo "gdb had $inferiors inferiors at their capture point, not $n"; exit 1; }
  printf '%-10s %-9s %9.2fs %9.2fs %9.2fs %11.2fs %9.2fs %13s  (%s inferiors at their capture point)\n' "$n" "$((n * mib)) MiB" \
    "$(secs $t0 $t1)" "$(secs $t1 $t2)" "$(secs $t2 $t3)" "$(secs $t2 $t4)" "$(secs $t0 $t3)" \
    "$(du -sh "$work/out$n" | cut -f1)" "$inferiors"
done
