#!/bin/bash
# Real programs, captured mid-work, killed, replayed: each must print what an
# uninterrupted run prints.
#   programs.sh BUILD_DIR pipeline|python [--as-user]
#  pipeline: a bash pipeline in the middle of streaming (seq | awk | sort | tail)
#  python:   a multi-threaded python3 program (4 threads hashing)
set -u
. "$(dirname "$0")/lib.sh"
build=$(cd "$1" && pwd) what=$2
shift 2
as_user=0
[ "${1:-}" = --as-user ] && as_user=1
ibdbg=$build/bin/ibdbg
e2e_setup prog $as_user
fail_name=$what fail_tail=20 fail_logs=('*.out' '*/coordinator.log')

case $what in
  pipeline)
    # The progress line comes from awk's stderr part-way through the stream.
    job=(bash -c 'seq 1 4000000 | awk "NR == 200000 { print \"progress\" > \"/dev/stderr\"; fflush() } { print (\$1 * 7919) % 1000003 }" | sort -n | uniq -c | sort -n | tail -3 | md5sum')
    ;;
  python)
    cat > "$work/threads.py" <<'PY'
import hashlib, sys, threading, time
results = {}
def work(i):
    h = hashlib.sha256()
    for k in range(300000):
        h.update(b"%d-%d" % (i, k))
        if k == 30000 and i == 0:
            print("progress", flush=True)
        if k % 20000 == 0:
            time.sleep(0.01)
    results[i] = h.hexdigest()[:16]
threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print("result", sorted(results.items()), flush=True)
PY
    job=(/usr/bin/python3 "$work/threads.py")
    ;;
  *) echo "unknown program $what" >&2; exit 2 ;;
esac
cd "$work"
touch plain.out run.out replay.out
[ $as_user = 1 ] && chown -R nobody:nogroup "$work"
"${as[@]}" "${job[@]}" > plain.out 2>&1 || fail "the uninterrupted run failed"
want=$(grep -v progress plain.out)
[ -n "$want" ] || fail "the uninterrupted run printed nothing"

( "${as[@]}" "$ibdbg" run --dir "$work/job" -- "${job[@]}" > run.out 2>&1 ) &
runner=$!
wait_for run.out progress 60 || fail "the job did not get going"
img=$("${as[@]}" "$ibdbg" capture --dir "$work/job" --stop) || fail "capture failed"
wait $runner
grep -q "$want" run.out && fail "the captured job ran to its end instead of stopping"
timeout 120 "${as[@]}" "$ibdbg" replay "$img" --dir "$work/job2" > replay.out 2>&1 || fail "the replay failed"
# The job's own output reopens the captured run's file at its offset.
got=$(cat run.out replay.out | grep -v '^ibdbg: \|progress')
[ "$got" = "$want" ] || fail "the replayed job printed '$got', an uninterrupted one '$want'"
echo "PASS($what)"
