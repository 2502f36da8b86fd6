#!/bin/bash
# The translate path of verbs.translate for more programs than
# ibv_rc_pingpong, unprivileged, on softrdma:
#   translate_progs.sh BUILD [CASE...]   (CASE: srq write atomic ud; default srq write atomic)
# For each: server and client in one job, captured with --stop mid-traffic
# under `ibdbg softrdma --mode ib` (LIDs, no GRH; so no -g/-x: there is no
# RoCE GID to name), `ibdbg translate --fabric roce`, replayed with
# `--device softrdma:roce`; both programs must end with status 0 and print
# their own end line (the pingpongs' "N iters in" after their data check -c,
# perftest's result row) after the replay, and neither before the capture.
# (ud is not in the default set: see translate_progs in CMakeLists.txt.)
set -u
build=$1; shift
cases=${*:-srq write atomic}
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../e2e/lib.sh"
ibdbg=$build/bin/ibdbg
command -v ibv_srq_pingpong >/dev/null || { echo "SKIP: ibverbs-utils not installed"; exit 77; }
command -v ib_write_bw >/dev/null && command -v ib_atomic_bw >/dev/null || { echo "SKIP: perftest not installed"; exit 77; }
"$ibdbg" softrdma --help >/dev/null 2>&1 || { echo "SKIP: ibdbg built without softrdma"; exit 77; }
fail_name=verbs.translate_progs fail_logs=('*.run' '*.srv' '*.cli' '*.replay')
e2e_setup "verbs-translate-progs" 0
cd "$work"
export SOFTRDMA_IP=127.0.0.1
port=$(( 25000 + ($$ * 7 + RANDOM) % 7000 ))

# tr_pair NAME END-LINE-REGEX CMD...: see the top.  Each side writes a file of
# its own (a replay gives each descriptor its offset back).
tr_pair() {
  local name=$1 endre=$2; shift 2
  port=$((port + 1))
  local cmd="$* -p $port" w=$work/$name
  ( timeout 280 "$ibdbg" softrdma --mode ib -- "$ibdbg" run --dir "$w-job" -- sh -c \
      "stdbuf -oL $cmd > $w.srv 2>&1 & sleep 0.5; stdbuf -oL $cmd 127.0.0.1 > $w.cli 2>&1; echo client=\$? >> $w.st; wait \$!; echo server=\$? >> $w.st" \
      > $name.run 2>&1; echo "rc=$?" >> $name.run ) &
  local runner=$! started=0
  for _ in $(seq 600); do
    started=$(cat $name.srv $name.cli 2>/dev/null | grep -c "remote address")
    [ "$started" -ge 2 ] && break
    sleep 0.05
  done
  [ "$started" -ge 2 ] || fail "$name: the pair did not start: $(cat $name.run $name.srv $name.cli 2>&1 | tail -5)"
  # Let the traffic run a moment: the capture must find messages in flight.
  sleep 0.3
  local img
  img=$("$ibdbg" capture --stop --dir "$w-job" 2>$name.cap) || fail "$name: capture failed: $(cat $name.cap)"
  wait_bounded $runner 60 || fail "$name: the job did not stop after capture --stop"
  [ -s $name.st ] && fail "$name: the pair ended before the capture (more iterations needed here?)"
  cat $name.srv $name.cli | grep -Eq "$endre" && fail "$name: an end line was printed before the capture"
  "$ibdbg" inspect "$img" --verbs --json > $name.verbs.json || fail "$name: inspect --verbs --json failed"
  python3 - $name.verbs.json > $name.lls <<'PY' || fail "$name: the record is not an InfiniBand one: $(cat $name.lls)"
import json, sys
d = json.load(open(sys.argv[1]))
v = [p["verbs"] for p in d["processes"] if p["verbs"]]
lls = sorted(set(x["link_layer"] for x in v))
qps = [o for x in v for o in x["objects"] if o["kind"] == "qp"]
print(lls, len(qps))
sys.exit(0 if lls == ["infiniband"] and len(qps) >= 2 and not any("sgid_index" in o for o in qps) else 1)
PY
  "$ibdbg" translate "$img" -o "$w-roce" --fabric roce > $name.tr 2>&1 || fail "$name: translate failed: $(cat $name.tr)"
  timeout 200 "$ibdbg" replay "$w-roce" --device softrdma:roce --dir "$w-replay" > $name.replay 2>&1
  local rc=$?
  [ $rc = 0 ] || fail "$name: the translated replay failed (rc=$rc): $(tail -3 $name.replay; tail -3 $name.srv $name.cli)"
  grep -q "^client=0$" $name.st && grep -q "^server=0$" $name.st ||
    fail "$name: the replayed pair failed (a data check, or a lost message): $(cat $name.st; tail -3 $name.srv $name.cli)"
  grep -Eq "$endre" $name.srv && grep -Eq "$endre" $name.cli ||
    fail "$name: the replayed pair did not both print their end line: $(tail -3 $name.srv $name.cli)"
  echo "$name: ok"
}

for c in $cases; do
  case $c in
  srq) tr_pair srq "^20000 iters in" ibv_srq_pingpong -c -n 20000 ;;
  ud) tr_pair ud "^20000 iters in" ibv_ud_pingpong -c -n 20000 ;;
  # perftest's result row: size, iterations, then the bandwidths.
  write) tr_pair write_bw "^ *4096 +100000 +[0-9.]+ +[0-9.]+" ib_write_bw -n 100000 -s 4096 ;;
  atomic) tr_pair atomic_bw "^ *8 +200000 +[0-9.]+ +[0-9.]+" ib_atomic_bw -n 200000 ;;
  *) fail "unknown case $c" ;;
  esac
done
echo PASS
