#!/bin/bash
# One end-to-end case: run a test program under `ibdbg run`, capture it while
# it waits, kill it, replay the image (optionally capturing and replaying the
# replay again, for several generations), then let it check itself.
#
#   run_case.sh BUILD_DIR PROGRAM [--as-user] [--generations N] [--keep] [--max-image-mb N]
#               [--outside SCRIPT] [--expect-log PATTERN] [--run-on] [--lazy]
#
# --as-user runs every ibdbg command as the unprivileged user nobody.
# --max-image-mb fails if any captured image takes more than N MiB on disk.
# --outside starts `python3 SCRIPT WORK` first, outside the job, and waits for
#   WORK/outside.port (peers for the program to connect to).
# --expect-log fails unless the last replay's output has a line matching PATTERN.
# --run-on captures once without --stop first: the job must run on intact
# (bytes a capture takes out of pipes, FIFOs and ttys go back) until the real one.
# --image-while-running replays an image taken without --stop (a forked
# capture: the job runs on while its memory is written from a frozen copy);
# the job is stopped afterwards by another capture, whose image is not used.
# --lazy replays with `ibdbg replay --lazy` (pages on demand).
set -u
. "$(dirname "$0")/lib.sh"
build=$1 prog=$2
shift 2
as_user=0 generations=1 twice=0 max_image_mb=0 outside="" expect_log="" run_on=0 while_running=0 replay_opts=()
while [ $# -gt 0 ]; do
  case $1 in
    --as-user) as_user=1 ;;
    --generations) generations=$2; shift ;;
    --keep) KEEP=1 ;;
    --twice) twice=1 ;;
    --max-image-mb) max_image_mb=$2; shift ;;
    --outside) outside=$2; shift ;;
    --expect-log) expect_log=$2; shift ;;
    --run-on) run_on=1 ;;
    --image-while-running) while_running=1 ;;
    --lazy) replay_opts+=(--lazy) ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
ibdbg=$build/bin/ibdbg
exe=$build/tests/e2e/zdtm-$prog
e2e_setup "$prog" $as_user
outside_pid=""
cleanup() {
  [ -n "$outside_pid" ] && { kill -KILL "$outside_pid"; wait "$outside_pid"; } 2>/dev/null
  e2e_kill_work
  # IPC objects and /dev/shm files of the killed original outlive it.
  if [ -f "$work/ipc-cleanup" ]; then
    while read -r k id; do
      case $k in m|s|q) ipcrm -"$k" "$id" 2>/dev/null ;; f) rm -f "/dev/shm/${id##*/}" ;; esac
    done < "$work/ipc-cleanup"
  fi
  e2e_remove_work
}
trap cleanup EXIT
fail_name=$prog fail_tail=30 fail_logs=('out.*' '*/coordinator.log')

capture() { # job dir -> prints image path; retries until the replayed process has reconnected
  local out
  for _ in $(seq 100); do
    if out=$("${as[@]}" "$ibdbg" capture --dir "$1" --stop 2>&1); then echo "$out"; return 0; fi
    case $out in *"no running processes"*|*"no running coordinator"*|*"not an ibdbg job directory"*|*"has no secret"*) sleep 0.1 ;; *) echo "$out" >&2; return 1 ;; esac
  done
  echo "$out" >&2
  return 1
}
check_size() { # image
  [ "$max_image_mb" -gt 0 ] || return 0
  local mb
  mb=$(du -sm "$1" | cut -f1)
  [ "$mb" -le "$max_image_mb" ] || fail "image $1 takes $mb MiB, more than $max_image_mb"
}

go=$work/go
if [ -n "$outside" ]; then
  python3 "$outside" "$work" > "$work/out.outside" 2>&1 &
  outside_pid=$!
  for _ in $(seq 200); do [ -f "$work/outside.port" ] && break; sleep 0.05; done
  [ -f "$work/outside.port" ] || fail "the outside peer did not start"
fi
( "${as[@]}" "$ibdbg" run --dir "$work/job0" -- "$exe" "$go" 2>&1 | cat > "$work/out.0" ) &
runner=$!
wait_for "$work/out.0" READY 30 || fail "the program did not get ready"
if [ $run_on = 1 ]; then
  "${as[@]}" "$ibdbg" capture --dir "$work/job0" > "$work/runon.out" 2>&1 || { cat "$work/runon.out"; fail "capture without --stop failed"; }
  kill -0 $runner 2>/dev/null || fail "the job stopped after a capture without --stop"
fi
if [ $while_running = 1 ]; then
  img=$("${as[@]}" "$ibdbg" capture --dir "$work/job0" 2> "$work/forked.err") || { cat "$work/forked.err"; fail "capture without --stop failed"; }
  grep -q "runs on" "$work/forked.err" || { cat "$work/forked.err"; fail "the capture was not a forked one (the job did not run on during it)"; }
  kill -0 $runner 2>/dev/null || fail "the job stopped after a capture without --stop"
  capture "$work/job0" > /dev/null || fail "capture --stop failed"
else
  img=$(capture "$work/job0") || fail "capture failed"
fi
wait_bounded $runner 30 || fail "the captured job did not stop"

[ -d "$img" ] || fail "no image at '$img'"
check_size "$img"
"$ibdbg" inspect "$img" > "$work/inspect.txt" || fail "inspect failed"

# Files a program asks to lose between capture and replay (as on another
# machine): the replay must make them again from the image.
remove_listed() {
  [ -f "$work/remove-before-replay" ] || return 0
  while read -r f; do rm -f "$f"; done < "$work/remove-before-replay"
}

for g in $(seq 1 "$generations"); do
  remove_listed
  ( "${as[@]}" "$ibdbg" replay "$img" "${replay_opts[@]}" --dir "$work/job$g" 2>&1 | cat > "$work/out.$g" ) &
  replayer=$!
  if [ "$g" -lt "$generations" ]; then
    img=$(capture "$work/job$g") || fail "capture of generation $g failed"
    wait_bounded $replayer 30 || fail "generation $g did not stop after its capture"

    check_size "$img"
  fi
done
touch "$go"
chmod 666 "$go"
wait_bounded $replayer 40 || fail "the replayed job did not finish"

last=$work/out.$generations
wait_for "$last" "PASS\|FAIL" 30 || fail "no verdict after replay"
grep -q "^PASS" "$last" || fail "the replayed program reports failure"
[ -z "$expect_log" ] || grep -q -- "$expect_log" "$last" || fail "the replay did not say: $expect_log"
if [ $twice = 1 ]; then
  # The same image once more, after the first replay is gone.
  ( "${as[@]}" "$ibdbg" replay "$img" --dir "$work/again" 2>&1 | cat > "$work/out.again" ) &
  wait $!
  grep -q "^PASS" "$work/out.again" || fail "the second replay of the same image failed"
fi
tw=""; [ $twice = 1 ] && tw=", replayed twice"
echo "ok: $prog (generations $generations$tw${as[*]:+, unprivileged})"
