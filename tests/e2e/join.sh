#!/bin/bash
# A second `ibdbg run --dir DIR` joins the job: one coordinator, both
# processes in status and in one image; capture --job ID finds the job.
#   join.sh BUILD_DIR
set -u
. "$(dirname "$0")/lib.sh"
build=$1
ibdbg=$build/bin/ibdbg
e2e_setup join 0
fail_name=join fail_tail=20 fail_logs=('*.out' 'job/coordinator.log')

( "$ibdbg" run --dir "$work/job" -- "$build/tests/e2e/zdtm-threads" "$work/go1" > "$work/a.out" 2>&1 ) &
( "$ibdbg" run --dir "$work/job" -- "$build/tests/e2e/zdtm-files" "$work/go2" > "$work/b.out" 2>&1 ) &
wait_for "$work/a.out" READY 30 && wait_for "$work/b.out" READY 30 || fail "programs did not start"
id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["job_id"])' "$work/job/job.json")
grep -q "job $id" "$work/a.out" && grep -q "job $id" "$work/b.out" || fail "the two runs are not one job"
"$ibdbg" status --job "$id" > "$work/status.out" || fail "status --job failed"
[ "$(grep -c '  process ' "$work/status.out")" = 2 ] || fail "status does not list both processes"
[ "$(grep -c 'listening on' "$work/job/coordinator.log")" = 1 ] || fail "more than one coordinator"
img=$("$ibdbg" capture --job "$id") || fail "capture --job failed"
python3 - "$img" <<'PY' || fail "the manifest does not hold both processes"
import json, sys
m = json.load(open(sys.argv[1] + "/manifest.json"))
exes = sorted(p["exe"].rsplit("/", 1)[1] for p in m["processes"])
assert exes == ["zdtm-files", "zdtm-threads"], exes
PY
"$ibdbg" inspect "$img" > "$work/inspect.out" || fail "inspect failed"
[ "$(grep -c '^process ' "$work/inspect.out")" = 2 ] || fail "inspect does not show both processes"
# Both stop, and both come back from one image (unrelated processes: two roots).
img2=$("$ibdbg" capture --job "$id" --stop) || fail "capture --stop failed"
wait
"$ibdbg" replay "$img2" --dir "$work/job2" > "$work/replay.out" 2>&1 &
sleep 1
touch "$work/go1" "$work/go2"
wait
grep -q "^PASS" "$work/a.out" && grep -q "^PASS" "$work/b.out" || fail "the two processes did not both come back"
# ibdbg run exits with its command's status.
"$ibdbg" run --dir "$work/job3" -- sh -c 'exit 7' > /dev/null 2>&1
[ $? = 7 ] || fail "ibdbg run did not exit with its command's status"
"$ibdbg" run --dir "$work/job3" -- /nonexistent/program > "$work/enoent.out" 2>&1 && fail "running a missing program succeeded"
grep -q "cannot run /nonexistent/program" "$work/enoent.out" || fail "no clear error for a missing program"
echo "ok: a second run joins the job"
