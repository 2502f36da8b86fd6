#!/bin/bash
# What cannot be carried is refused at capture with one clear line; the job
# runs on, and no image appears.   refuse.sh BUILD_DIR
set -u
. "$(dirname "$0")/lib.sh"
build=$1
ibdbg=$build/bin/ibdbg
e2e_setup refuse 0
# The whole of each output: a refusal is one line.
fail_name=refuse fail_tail=+1 fail_logs=('*.out')
# On a stream socket, then behind a message on a datagram socket.
for mode in stream dgram; do
  rm -f "$work/go"
  ( "$ibdbg" run --dir "$work/job-$mode" -- "$build/tests/e2e/zdtm-scmrights" "$work/go" $mode > "$work/run.out" 2>&1 ) &
  wait_for "$work/run.out" READY 20
  "$ibdbg" capture --dir "$work/job-$mode" > "$work/cap.out" 2>&1 && fail "$mode: a capture with descriptors in flight succeeded"
  [ "$(wc -l < "$work/cap.out")" = 1 ] || fail "$mode: the refusal is not one line"
  grep -q "SCM_RIGHTS" "$work/cap.out" || fail "$mode: the refusal does not say why"
  ls "$work/job-$mode/images" | grep -q '^ckpt-' && fail "$mode: an image appeared"
  touch "$work/go"
  wait
  grep -q "^PASS" "$work/run.out" || fail "$mode: the job did not run on after the refused capture"
done
echo "ok: captures that cannot be carried are refused cleanly"
