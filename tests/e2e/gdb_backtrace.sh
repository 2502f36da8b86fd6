#!/bin/bash
# Replay under gdb: every thread's backtrace shows the application's own
# frames at the capture point (not the restorer's), and after gdb detaches the
# example finishes with the right result.   gdb_backtrace.sh BUILD_DIR [--as-user]
set -u
. "$(dirname "$0")/lib.sh"
build=$1
ibdbg=$build/bin/ibdbg
as_user=0; [ "${2:-}" = --as-user ] && as_user=1
e2e_setup gdb $as_user
fail_name=gdb fail_tail=40 fail_logs=('*.out')

( "${as[@]}" "$ibdbg" run --dir "$work/job" -- "$build/bin/heat" 4 400 10000 2>&1 | cat > "$work/run.out" ) &
wait_for "$work/run.out" "step 50" 10 || fail "heat did not start"
img=$("${as[@]}" "$ibdbg" capture --dir "$work/job" --stop) || fail "capture failed"
wait
"${as[@]}" "$ibdbg" replay "$img" --dir "$work/job2" --gdb-batch 'info threads;thread apply all bt' > "$work/replay.out" 2>&1
rc=$?
out=$work/replay.out
[ $rc = 0 ] || fail "replay exited with $rc"
grep -q "thread(s) at their capture point" "$out" || fail "gdb did not release the threads"
[ "$(grep -c 'in worker_main\|worker_main (' "$out")" -ge 4 ] || fail "not every worker shows worker_main"
grep -q "in main (\|^#[0-9].* main (" "$out" || fail "the main thread does not show main()"
grep -q "heat.c:" "$out" || fail "no source lines of the example: symbols not loaded"
grep -q "park_and_sigreturn\|restorer_main\|thread_main" "$out" && fail "restorer frames in the backtrace"
grep -qE "^#0 +0x00003f" "$out" && fail "a thread stands in the restorer's code"
grep -q "checksum .* OK" "$out" || fail "the example did not finish with the right result"
echo "ok: gdb backtrace at the capture point${as[*]:+ (unprivileged)}"
