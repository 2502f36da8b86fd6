#!/bin/bash
# The coordinator: status, a stranger without the secret is refused and
# logged, and killing the coordinator or the process during a capture aborts
# that capture cleanly: no image appears, earlier images stay whole, the job
# keeps running.   coordinator.sh BUILD_DIR
set -u
. "$(dirname "$0")/lib.sh"
build=$1
ibdbg=$build/bin/ibdbg
prog=$build/tests/e2e/zdtm-bigmem
e2e_setup coord 0
fail_name=coordinator fail_tail=20 fail_logs=('*.out' 'job*/coordinator.log')

# --- periodic captures ---
"$ibdbg" run --dir "$work/jobi" --interval 1 -- "$build/bin/heat" 2 250 10000 > "$work/interval.out" 2>&1 || fail "interval job failed"
n=$(ls "$work/jobi/images" | grep -c '^ckpt-')
[ "$n" -ge 1 ] || fail "--interval 1 made no image in a 2.5 s job"
grep -q "checksum .* OK" "$work/interval.out" || fail "the job went wrong under periodic captures"

# --- a job, its status, a first image ---
( "$ibdbg" run --dir "$work/job" -- "$prog" "$work/go" 1024 2>&1 | cat > "$work/run.out" ) &
wait_for "$work/run.out" READY 60 || fail "the program did not start"
"$ibdbg" status --dir "$work/job" > "$work/status.out" || fail "status failed"
grep -q "zdtm-bigmem" "$work/status.out" || fail "status does not list the process"
first=$("$ibdbg" capture --dir "$work/job") || fail "first capture failed"
sum1=$(cd "$first" && cat manifest.json *.img | md5sum)

# --- a stranger ---
port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$work/job/coordinator.json")
reply=$(python3 - "$port" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(b'{"op":"hello","role":"client","secret":"guess"}\n{"op":"capture"}\n')
print(s.recv(4096).decode().strip())
PY
)
case $reply in *'"ok":false'*) ;; *) fail "a stranger was not refused: $reply" ;; esac
grep -q "refused connection from 127.0.0.1" "$work/job/coordinator.log" || fail "the refusal was not logged"
ls "$work/job/images" | grep -c '^ckpt-' | grep -qx 1 || fail "the stranger's capture happened"

# --- the coordinator dies during a capture ---
( "$ibdbg" capture --dir "$work/job" > "$work/cap2.out" 2>&1; echo "rc=$?" >> "$work/cap2.out" ) &
for _ in $(seq 100); do ls -a "$work/job/images" | grep -q '\.tmp\.' && break; sleep 0.01; done
kill -KILL "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$work/job/coordinator.json")"
wait_for "$work/cap2.out" "rc=" 30 || fail "capture did not return"
grep -q "rc=0" "$work/cap2.out" && fail "a capture succeeded although its coordinator was killed"
# (A forked capture's progress line, that the job runs on, is not part of the error.)
[ "$(grep -v '^rc=' "$work/cap2.out" | grep -vc '^ibdbg: the job runs on')" = 1 ] || fail "the capture error is not one line"
ls "$work/job/images" | grep -c '^ckpt-' | grep -qx 1 || fail "an image appeared from an aborted capture"
[ "$(cd "$first" && cat manifest.json *.img | md5sum)" = "$sum1" ] || fail "the earlier image changed"
sleep 0.5
pgrep -f "zdtm-bigmem $work/go" > /dev/null || fail "the job died with its coordinator"
touch "$work/go"
wait_for "$work/run.out" "PASS\|FAIL" 60 || fail "the job did not finish"
grep -q "^PASS" "$work/run.out" || fail "the job went wrong after the aborted capture"
wait

# --- the process dies during a capture ---
rm -f "$work/go2"
( "$ibdbg" run --dir "$work/job2" -- "$prog" "$work/go2" 1024 2>&1 | cat > "$work/run2.out" ) &
wait_for "$work/run2.out" READY 60 || fail "the second program did not start"
( "$ibdbg" capture --dir "$work/job2" > "$work/cap3.out" 2>&1; echo "rc=$?" >> "$work/cap3.out" ) &
for _ in $(seq 100); do ls -a "$work/job2/images" | grep -q '\.tmp\.' && break; sleep 0.01; done
pkill -KILL -f "zdtm-bigmem $work/go2"
wait_for "$work/cap3.out" "rc=" 30 || fail "capture did not return after its process died"
grep -q "rc=0" "$work/cap3.out" && fail "a capture succeeded although its process was killed"
ls -A "$work/job2/images" | grep -q . && fail "an aborted capture left files behind"
wait
echo "ok: coordinator status, secret, aborted captures"
