#!/bin/bash
# What cannot be carried is refused at capture with one clear line; the job
# runs on, and no image appears.   refuse.sh BUILD_DIR
set -u
for fd in /proc/$$/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null; done
build=$1
ibdbg=$build/bin/ibdbg
work=$(mktemp -d /tmp/ibdbg-e2e-refuse.XXXXXX)
export IBDBG_HOME="$work/home"
trap 'pkill -KILL -f "$work" 2>/dev/null; rm -rf "$work"' EXIT
fail() { echo "FAIL(refuse): $*"; for f in "$work"/*.out; do echo "--- $f"; cat "$f"; done; exit 1; }
# On a stream socket, then behind a message on a datagram socket.
for mode in stream dgram; do
  rm -f "$work/go"
  ( "$ibdbg" run --dir "$work/job-$mode" -- "$build/tests/e2e/zdtm-scmrights" "$work/go" $mode > "$work/run.out" 2>&1 ) &
  for _ in $(seq 400); do grep -q READY "$work/run.out" 2>/dev/null && break; sleep 0.05; done
  "$ibdbg" capture --dir "$work/job-$mode" > "$work/cap.out" 2>&1 && fail "$mode: a capture with descriptors in flight succeeded"
  [ "$(wc -l < "$work/cap.out")" = 1 ] || fail "$mode: the refusal is not one line"
  grep -q "SCM_RIGHTS" "$work/cap.out" || fail "$mode: the refusal does not say why"
  ls "$work/job-$mode/images" | grep -q '^ckpt-' && fail "$mode: an image appeared"
  touch "$work/go"
  wait
  grep -q "^PASS" "$work/run.out" || fail "$mode: the job did not run on after the refused capture"
done
echo "ok: captures that cannot be carried are refused cleanly"
