#!/bin/bash
# Replay under gdb: every thread's backtrace shows the application's own
# frames at the capture point (not the restorer's), and after gdb detaches the
# example finishes with the right result.   gdb_backtrace.sh BUILD_DIR [--as-user]
set -u
# Descriptors the test runner leaks (ctest keeps its log open) would be part of
# the captured process and may not be reopenable by another user.
for fd in /proc/$$/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null; done
build=$1
ibdbg=$build/bin/ibdbg
work=$(mktemp -d /tmp/ibdbg-e2e-gdb.XXXXXX)
chmod 755 "$work"
as=()
if [ "${2:-}" = --as-user ]; then
  chown nobody:nogroup "$work"
  as=(setpriv --reuid=nobody --regid=nogroup --clear-groups env HOME="$work" IBDBG_HOME="$work/home")
else
  export IBDBG_HOME="$work/home"
fi
trap 'pkill -KILL -f "$work" 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
fail() { echo "FAIL(gdb): $*"; for f in "$work"/*.out; do echo "--- $f"; tail -40 "$f"; done; exit 1; }

( "${as[@]}" "$ibdbg" run --dir "$work/job" -- "$build/bin/heat" 4 400 10000 2>&1 | cat > "$work/run.out" ) &
for _ in $(seq 200); do grep -q "step 50" "$work/run.out" 2>/dev/null && break; sleep 0.05; done
grep -q "step 50" "$work/run.out" || fail "heat did not start"
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
