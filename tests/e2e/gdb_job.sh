#!/bin/bash
# gdb on a whole job: a parent and three forked workers, captured, replayed
# with --gdb-batch.  Every process must be an inferior of the one gdb session,
# named in `info ibdbg`, stopped at its own function (worker_wait for the
# workers, parent_wait for the parent) with its own memory (each worker's
# token), and after gdb detaches all of them the job ends well with ibdbg's
# exit status its own.  Bad combinations of the gdb options get one line.
#   gdb_job.sh BUILD_DIR [--as-user]
set -u
. "$(dirname "$0")/lib.sh"
build=$1
ibdbg=$build/bin/ibdbg
exe=$build/tests/e2e/zdtm-gdbjob
as_user=0; [ "${2:-}" = --as-user ] && as_user=1
e2e_setup gdbjob $as_user
fail_name=gdb_job fail_tail=60 fail_logs=('*.out')

# Bad input: one line, non-zero, nothing replayed.
for bad in "--gdb --gdb-mi" "--gdb --gdb-batch bt" "--gdb-batch bt --gdb-mi" "--gdb-batch ;"; do
  # shellcheck disable=SC2086
  "$ibdbg" replay "$work/nosuch" $bad > "$work/bad.out" 2>&1 && fail "replay $bad succeeded"
  [ "$(wc -l < "$work/bad.out")" = 1 ] || fail "replay $bad did not answer in one line"
  grep -q "^ibdbg: " "$work/bad.out" || fail "replay $bad: not ibdbg's own message"
done

go=$work/go
# The job's output file is reopened by the replay, as whoever runs it.
touch "$work/run.out"
[ $as_user = 1 ] && chown nobody:nogroup "$work/run.out"
( "${as[@]}" "$ibdbg" run --dir "$work/job" -- "$exe" "$go" > "$work/run.out" 2>&1 ) &
wait_for "$work/run.out" "READY" 20 || fail "the job did not start"
img=$("${as[@]}" "$ibdbg" capture --dir "$work/job" --stop) || fail "capture failed"
wait
# The word to go on is there before the replay: only gdb's release lets the
# processes see it.
touch "$go"
"${as[@]}" "$ibdbg" replay "$img" --dir "$work/job2" \
  --gdb-batch 'info ibdbg;thread apply all bt;ibdbg-each print worker_token;info verbs all' > "$work/replay.out" 2>&1
rc=$?
out=$work/replay.out
[ $rc = 0 ] || fail "replay exited with $rc"
python3 - "$out" "$img" <<'PY' || fail "the gdb session does not show the job as it should"
import json, re, sys
text = open(sys.argv[1]).read()
m = json.load(open(sys.argv[2] + "/manifest.json"))
n = len(m["processes"])
assert n == 4, "the image holds %d processes, not 4" % n
# One line per inferior at the start, each with its name.
starts = re.findall(r"^ibdbg: inferior (\d+) is (\S+/proc \d+): pid (\d+) \(captured as (\d+)\)", text, re.M)
assert len(starts) == n, "inferiors are not named HOST/proc INDEX: %r" % starts
infs = {int(i) for i, _, _, _ in starts}
assert infs == set(range(1, n + 1)), infs
pids = {int(p) for _, _, _, p in starts}
assert pids == {p["pid"] for p in m["processes"]}, (pids, m["processes"])
# info ibdbg: the image and a row per inferior, with its name and pids.
assert re.search(r"^image +/.*ckpt-", text, re.M), "info ibdbg printed no image"
rows = re.findall(r"^[ *] +(\d+)  (\S+/proc \d+) +\S+ +- +(\d+) +(\d+) ", text, re.M)
assert sorted((int(i), nm, int(p), int(ip)) for i, nm, p, ip in rows) == \
    sorted((int(i), nm, int(p), int(ip)) for i, nm, p, ip in starts), "info ibdbg rows %r" % rows
# thread apply all bt: each inferior's thread at its function.
blocks = re.split(r"^Thread (\d+)\.(\d+) ", text, flags=re.M)
where = {}
for k in range(1, len(blocks) - 2, 3):
    inf, body = int(blocks[k]), blocks[k + 2]
    frames = [l for l in body.splitlines() if l.startswith("#")]
    where.setdefault(inf, []).append(frames)
assert set(where) == infs, "backtraces for inferiors %s, expected %s" % (sorted(where), sorted(infs))
parents = [i for i, f in where.items() if any("parent_wait" in l for fr in f for l in fr)]
workers = [i for i, f in where.items() if any("worker_wait" in l for fr in f for l in fr)]
assert len(parents) == 1 and len(workers) == 3, "parent_wait in %s, worker_wait in %s" % (parents, workers)
assert "gdbjob.c:" in text, "no source lines: symbols not loaded"
for bad in ("park_and_sigreturn", "restorer_main", "thread_main"):
    assert bad not in text, "restorer frames in the output"
assert not re.search(r"^#0 +0x00003f", text, re.M), "a thread stands in the restorer's code"
# ibdbg-each: every worker's own memory.
tokens = sorted(int(v) for v in re.findall(r"^\$\d+ = (\d+)", text, re.M))
assert tokens == [0, 1001, 1002, 1003], "worker tokens %s" % tokens
assert "detached from %d process(es)" % n in text, "not every process was detached"
# info verbs all: this job has none (the decoding is checked below).
assert len(re.findall(r"^inferior \d+ \(\S+/proc \d+, pid \d+\): no verbs state$", text, re.M)) == n, \
    "info verbs all does not answer for every inferior"
PY
# info verbs's formatting of `ibdbg inspect --json`'s verbs record, on a record
# of every kind of object.
cat > "$work/verbs.json" <<'EOF'
{"backend": "softrdma", "posts_blocked": false, "backend_threads": [], "backend_fds": [], "objects": [
 {"kind": "context", "handle": "0x1", "device": "softrdma0", "cmd_fd": 5, "async_fd": 6},
 {"kind": "pd", "handle": "0x2", "context": "0x1"},
 {"kind": "mr", "handle": "0x3", "pd": "0x2", "addr": "0x7f0000001000", "length": 4096, "access": "0x7",
  "lkey": "0x11", "rkey": "0x12"},
 {"kind": "cq", "handle": "0x4", "cqe": 16, "buffered": 2, "extended": false},
 {"kind": "srq", "handle": "0x6", "pd": "0x2", "max_wr": 64, "max_sge": 1, "srq_limit": 0, "recvs_posted": 5},
 {"kind": "qp", "handle": "0x5", "qpn": "0x42", "type": "RC", "state": "RTS", "pd": "0x2", "send_cq": "0x4",
  "recv_cq": "0x4", "srq": "0x6", "max_send_wr": 16, "max_recv_wr": 16, "dest_qpn": "0x43", "dlid": 1, "port": 1,
  "sq_psn": 100, "rq_psn": 200, "qkey": "0x0", "sends_outstanding": 3, "recvs_posted": 0, "wr_api": false}]}
EOF
gdb -q -nx -batch -x "$build/share/ibdbg/ibdbg.py" \
  -ex "python import json; print(chr(10).join(format_verbs(json.load(open('$work/verbs.json')))))" > "$work/verbs.out" 2>&1
for want in "device softrdma0" "PD 0x2" \
            "MR 0x3  pd 0x2  \[0x7f0000001000, 0x7f0000002000) 4096 bytes  access LOCAL_WRITE|REMOTE_WRITE|REMOTE_READ" \
            "CQ 0x4  cqe 16  2 completion(s) buffered" "SRQ 0x6 .* 5 receive(s) posted" \
            "QP 0x5  qpn 0x42  RC  RTS  peer qpn 0x43 lid 1 port 1  sq_psn 100 rq_psn 200  3 send(s) outstanding"; do
  grep -q -- "$want" "$work/verbs.out" || fail "info verbs does not show '$want'"
done
grep -q "^PASS" "$work/run.out" || fail "the job did not end well after gdb let it go"
# Names by MPI rank where the manifest gives one (`rank` in a process entry),
# by index where it does not.
mkdir -p "$work/ranked"
cat > "$work/ranked/manifest.json" <<'EOF'
{"processes": [{"pid": 10, "host": "a", "exe": "/bin/mpirun"}, {"pid": 11, "host": "a", "rank": 0},
               {"pid": 12, "host": "b", "rank": 1}]}
EOF
cat > "$work/ranked/session.json" <<EOF
{"image": "$work/ranked", "processes": [{"host": "a", "pid": 100, "image_pid": 10, "insn": 0},
  {"host": "a", "pid": 101, "image_pid": 11, "insn": 0}, {"host": "b", "pid": 102, "image_pid": 12, "insn": 0}]}
EOF
gdb -q -nx -batch -x "$build/share/ibdbg/ibdbg.py" \
  -ex "python print('names:', [p['name'] for p in load_session('$work/ranked/session.json')['processes']])" \
  > "$work/names.out" 2>&1
grep -qF "names: ['a/proc 0', 'a/rank 0', 'b/rank 1']" "$work/names.out" || fail "inferiors are not named by rank: $(cat "$work/names.out")"
echo "ok: gdb on a whole job of 4 processes${as[*]:+ (unprivileged)}"
