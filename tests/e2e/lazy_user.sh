#!/bin/bash
# `ibdbg replay --lazy` as an ordinary user is refused with one line that
# says why (userfaultfd: fork and system-call faults need root, the sysctl),
# and nothing runs; the same image replays eagerly.   lazy_user.sh BUILD_DIR
set -u
. "$(dirname "$0")/lib.sh"
build=$1
ibdbg=$build/bin/ibdbg
e2e_setup lazy_user 1
fail_name=lazy_user fail_tail=+1 fail_logs=('*.out')
( "${as[@]}" "$ibdbg" run --dir "$work/job0" -- "$build/tests/e2e/zdtm-bigmem" "$work/go" 16 2>&1 | cat > "$work/run.out" ) &
wait_for "$work/run.out" READY 30 || fail "the program did not get ready"
img=$("${as[@]}" "$ibdbg" capture --dir "$work/job0" --stop 2> "$work/capture.out") || fail "capture failed"
wait
"${as[@]}" "$ibdbg" replay "$img" --lazy --dir "$work/job1" > "$work/lazy.out" 2>&1 && fail "an unprivileged --lazy replay ran"
[ "$(wc -l < "$work/lazy.out")" = 1 ] || fail "the refusal is not one line"
grep -q "vm.unprivileged_userfaultfd" "$work/lazy.out" || fail "the refusal does not name the sysctl"
pgrep -f "$work/go" > /dev/null && fail "a process of the refused replay runs"
( "${as[@]}" "$ibdbg" replay "$img" --dir "$work/job2" 2>&1 | cat > "$work/eager.out" ) &
replayer=$!
touch "$work/go"
wait_bounded $replayer 60 || fail "the eager replay did not finish"
grep -q "^PASS" "$work/eager.out" || fail "the eager replay of the same image failed"
echo "ok: --lazy refused for an ordinary user, eager replay of the same image passes"
