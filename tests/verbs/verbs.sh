#!/bin/bash
# The verbs layer (capture/verbs) with softrdma as the backend, unprivileged.
#   verbs.sh BUILD pingpongs    ibv_{rc,ud,srq}_pingpong -c and ib_write_bw pass under
#                               `softrdma-run -- ibdbg run`, with the layer in the path
#                               (its debug counters), and softrdma's conformance program
#                               (ibv_wr_*, ibv_start_poll, channels, async events) passes
#   verbs.sh BUILD unsupported  an unsupported feature is reported once; a capture refuses naming it
#   verbs.sh BUILD capture      ibv_rc_pingpong captured mid-traffic (no --stop): inspect shows
#                               its QPs/MRs/CQs with states; the job runs on and its data check passes
#   verbs.sh BUILD drain        the job-wide drain barrier: a sender and a receiver of ours (drain.c) in one
#                               job, captured 3 times mid-traffic (once --no-fork); each image shows every send the sender's
#                               backend completed among the receives the receiver's layer took (returned or
#                               buffered), nothing in flight, and softrdma's accepted connections as backend
#                               fds; a 4th capture just after the sender posted 4096 unsignaled sends (most
#                               waiting for the receiver's reposts) finds all of them received; the
#                               programs' own checks (order, count) pass after the captures
#   verbs.sh BUILD capture_bw   ib_write_bw -D and ib_send_bw -D (passive server and client in one job)
#                               captured 5 times each: no capture refuses, both programs end well
#   verbs.sh BUILD replay_rc    ibv_rc_pingpong (server and client in one job) captured with --stop
#                               mid-traffic, replayed on a fresh softrdma: both finish their data check
#   verbs.sh BUILD replay_events  the same with ibv_rc_pingpong -e: blocked in ibv_get_cq_event at
#                               the capture, events from the armed CQs after the replay
#   verbs.sh BUILD replay_refuse  a RoCE image replayed on softrdma:ib (IBDBG_VERBS_DEVICE) refuses
#                               in one line naming `ibdbg translate`; on softrdma:roce it replays
#   verbs.sh BUILD replay_ud|replay_srq|replay_write|replay_read|replay_atomic   the same with
#                               ibv_ud_pingpong, ibv_srq_pingpong, ib_write_bw, ib_read_bw, ib_atomic_bw
set -u
build=$1 mode=$2
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../e2e/lib.sh"
ibdbg=$build/bin/ibdbg
srun=$build/bin/softrdma-run
command -v ibv_rc_pingpong >/dev/null || { echo "SKIP: ibverbs-utils not installed"; exit 77; }
[ -x "$srun" ] || { echo "SKIP: softrdma not built"; exit 77; }
fail_name=verbs.$mode
e2e_setup "verbs-$mode" 0
cd "$work"
# A port of our own: other tests (softrdma's) use the programs' default 18515
# and fixed ranges from 21000 to 24999; below 32768, where softrdma's own
# connections take ephemeral ports.
port=$(( 25000 + ($$ * 7 + RANDOM) % 7000 ))

# A server and its client, each its own job; both must end well.
pair() {
  local name=$1; shift
  port=$((port + 1))
  set -- "$@" -p $port
  ( IBDBG_VERBS_DEBUG=1 timeout 60 "$srun" --mode roce --ip 127.0.0.1 -- "$ibdbg" run --dir "$work/$name-s" -- "$@" \
      > "$name.s.out" 2>&1; echo "rc=$?" >> "$name.s.out" ) &
  local srv=$!
  # The client retries until the server listens.
  sleep 0.5
  local rc
  for _ in $(seq 50); do
    IBDBG_VERBS_DEBUG=1 timeout 60 "$srun" --mode roce --ip 127.0.0.1 -- "$ibdbg" run --dir "$work/$name-c" -- "$@" 127.0.0.1 \
      > "$name.c.out" 2>&1
    rc=$?
    [ $rc = 0 ] && break
    grep -q "Couldn't connect\|Unable to connect\|Connection refused" "$name.c.out" || break
    sleep 0.2
  done
  # The client's own status (the loop's would be that of its last break).
  echo "rc=$rc" >> "$name.c.out"
  wait_bounded $srv 60 || fail "$name: the server did not end"
  for side in s c; do
    grep -q "^rc=0" "$name.$side.out" || fail "$name ($side) failed: $(tail -3 "$name.$side.out")"
    # The layer was in the path: it counted the posts (ib_write_bw's server only waits).
    [ "$name-$side" = write_bw-s ] && continue
    grep -Eq "ibdbg: verbs: counters .*post_send=[1-9]" "$name.$side.out" ||
      fail "$name ($side): no post went through the verbs layer"
  done
}

# replay_pair NAME ITERS CMD...: server and client of CMD in one job, captured
# with --stop mid-traffic and replayed: the QPs are made again on a fresh
# softrdma, the receives posted again, and both sides must finish (the
# pingpongs with their own data check, -c), so a lost or doubled message fails
# (a hang, an error completion or a wrong buffer).  Each side writes a file of
# its own (a replay gives each descriptor its offset back).  ITERS: the
# "N iters in" line the pingpongs print at their end (0: none).
replay_pair() {
  local name=$1 iters=$2 keep=0; shift 2
  [ "${!#}" = --keep ] && { keep=1; set -- "${@:1:$#-1}"; }
  port=$((port + 1))
  local cmd="$* -p $port"
  ( IBDBG_VERBS_TRACE=1 timeout 280 "$srun" --mode roce --ip 127.0.0.1 -- "$ibdbg" run --dir "$work/$name-job" -- sh -c \
      "stdbuf -oL $cmd > $name.srv 2>&1 & sleep 0.5; stdbuf -oL $cmd 127.0.0.1 > $name.cli 2>&1; echo client=\$? >> $name.st; wait \$!; echo server=\$? >> $name.st" \
      > $name.run 2>&1; echo "rc=$?" >> $name.run ) &
  local runner=$! started=0
  for _ in $(seq 600); do
    started=$(cat $name.srv $name.cli 2>/dev/null | grep -c "remote address")
    [ "$started" -ge 2 ] && break
    sleep 0.05
  done
  [ "$started" -ge 2 ] || fail "$name: the pair did not start: $(cat $name.run $name.srv $name.cli 2>&1 | tail -5)"
  sleep 0.3
  local img
  img=$("$ibdbg" capture --stop --dir "$work/$name-job" 2>$name.cap) || fail "$name: capture failed: $(cat $name.cap)"
  wait_bounded $runner 60 || fail "$name: the job did not stop after capture --stop"
  [ -s $name.st ] && fail "$name: the pair ended before the capture (more iterations needed here?)"
  "$ibdbg" inspect "$img" > $name.inspect || fail "$name: inspect failed"
  [ "$(grep -Ec '^    qp ' $name.inspect)" -ge 2 ] || fail "$name: inspect shows no QPs"
  [ $keep = 1 ] && return 0
  timeout 200 "$ibdbg" replay "$img" --dir "$work/$name-replay" > $name.replay 2>&1
  local rc=$?
  [ $rc = 0 ] || fail "$name: the replay failed (rc=$rc): $(tail -3 $name.replay; tail -3 $name.srv $name.cli)"
  grep -q "client=0" $name.st && grep -q "server=0" $name.st ||
    fail "$name: the replayed pair failed (a data check, or a lost message): $(cat $name.st; tail -3 $name.srv $name.cli)"
  if [ "$iters" != 0 ]; then
    grep -q "^$iters iters in" $name.srv && grep -q "^$iters iters in" $name.cli ||
      fail "$name: the replayed pair did not both finish: $(tail -3 $name.srv $name.cli)"
  fi
}

case $mode in
pingpongs)
  pair rc ibv_rc_pingpong -g 1 -c -n 100
  pair ud ibv_ud_pingpong -g 1 -c -n 100
  pair srq ibv_srq_pingpong -g 1 -c -n 100
  # The RDMA-write side posts (the server only waits).
  pair write_bw ib_write_bw -x 1 -n 200 -s 65536
  IBDBG_VERBS_DEBUG=1 timeout 120 "$srun" --mode roce --ip 127.0.0.1 -- "$ibdbg" run --dir "$work/conf" -- \
    "$build/bin/softrdma_conformance" > conf.out 2>&1 || fail "softrdma_conformance failed under the verbs layer"
  grep -q "extended_verbs" conf.out && grep -Eq "counters .* wr=[1-9]" conf.out ||
    fail "the conformance program's ibv_wr_* did not go through the verbs layer"
  ;;
unsupported)
  ( timeout 60 "$srun" --mode roce --ip 127.0.0.1 -- "$ibdbg" run --dir "$work/job" -- \
      "$build/tests/verbs/verbs-unsupported" "$work/go" > un.out 2>&1; echo "rc=$?" >> un.out ) &
  runner=$!
  wait_for un.out READY 30 || fail "the program did not start"
  [ "$(grep -c 'on-demand paging.*not supported' un.out)" = 1 ] || fail "the feature was not reported exactly once"
  "$ibdbg" capture --dir "$work/job" > cap.out 2>&1 && fail "a capture of a process that used ODP did not refuse"
  grep -q "on-demand paging" cap.out || fail "the refusal does not name the feature: $(cat cap.out)"
  touch go
  wait_bounded $runner 30 || fail "the program did not end"
  grep -q PASS un.out && grep -q "^rc=0" un.out || fail "the program did not run on after the refused capture"
  ;;
capture)
  # One job: server and client of ibv_rc_pingpong, long enough to be caught mid-traffic.
  ( timeout 280 "$srun" --mode roce --ip 127.0.0.1 -- "$ibdbg" run --dir "$work/job" -- sh -c \
      "stdbuf -oL ibv_rc_pingpong -g 1 -c -n 30000 -p $port & sleep 0.5; stdbuf -oL ibv_rc_pingpong -g 1 -c -n 30000 -p $port 127.0.0.1; echo client=\$?; wait \$!; echo server=\$?" \
      > run.out 2>&1; echo "rc=$?" >> run.out ) &
  runner=$!
  for _ in $(seq 600); do [ "$(grep -c "remote address" run.out)" = 2 ] && break; sleep 0.05; done
  [ "$(grep -c "remote address" run.out)" = 2 ] || fail "the pingpong did not start"
  img=$("$ibdbg" capture --dir "$work/job" 2>cap.err) || fail "capture failed: $(cat cap.err)"
  # Mid-traffic: neither side had finished when the capture was taken.
  grep -q "iters in" run.out && fail "the pingpong ended before the capture (30000 iterations too few here?)"
  "$ibdbg" inspect "$img" > inspect.txt || fail "inspect failed"
  [ "$(grep -Ec '^    qp .*  RC  RTS  dest_qpn 0x' inspect.txt)" = 2 ] || fail "inspect does not show two RC QPs in RTS"
  [ "$(grep -Ec '^    mr .* lkey 0x' inspect.txt)" = 2 ] || fail "inspect does not show the MRs"
  [ "$(grep -Ec '^    cq .* cqe [0-9]+' inspect.txt)" = 2 ] || fail "inspect does not show the CQs"
  grep -q "^    context .*device softrdma0" inspect.txt || fail "inspect does not show the device"
  # softrdma's progress thread and its descriptors are known as the backend's.
  for tid in $(awk '$2 == "softrdma" {print $1}' inspect.txt); do
    grep -Eq "backend threads: ([0-9]+,)*$tid(,|  )" inspect.txt || fail "softrdma's thread $tid is not marked as the backend's"
  done
  [ "$(awk '$2 == "softrdma"' inspect.txt | wc -l)" = 2 ] || fail "inspect does not show softrdma's two progress threads"
  [ -z "$(awk '$2 == "softrdma" && $3 !~ /backend/' inspect.txt)" ] || fail "softrdma's threads are not flagged as the backend's"
  [ -z "$(awk '$2 == "ibv_rc_pingpong" && $3 ~ /backend/' inspect.txt)" ] || fail "an application thread is flagged as the backend's"
  [ "$(grep -Ec "backend fds: [0-9]" inspect.txt)" = 2 ] || fail "no descriptor is marked as the backend's"
  # Each QP's peer is the other one.
  a=$(grep -E '^    qp ' inspect.txt | sed -n 1p | sed -E 's/.*qpn (0x[0-9a-f]+).*dest_qpn (0x[0-9a-f]+).*/\1 \2/')
  b=$(grep -E '^    qp ' inspect.txt | sed -n 2p | sed -E 's/.*qpn (0x[0-9a-f]+).*dest_qpn (0x[0-9a-f]+).*/\2 \1/')
  [ "$a" = "$b" ] || fail "the QPs do not name each other ($a / $b)"
  wait_bounded $runner 280 || fail "the job did not end after the capture"
  grep -q "client=0" run.out && grep -q "server=0" run.out ||
    fail "the pingpong failed after the capture (its data check, or a lost message)"
  ;;
drain)
  prog=$build/tests/verbs/verbs-drain
  ( timeout 280 "$srun" --mode roce --ip 127.0.0.1 -- "$ibdbg" run --dir "$work/job" -- sh -c \
      "stdbuf -oL $prog server $port $work/go & stdbuf -oL $prog client $port $work/go 127.0.0.1 $work/pause; echo client=\$?; wait \$!; echo server=\$?" \
      > run.out 2>&1; echo "rc=$?" >> run.out ) &
  runner=$!
  for _ in $(seq 600); do [ "$(grep -c "^READY" run.out)" = 2 ] && break; sleep 0.05; done
  [ "$(grep -c "^READY" run.out)" = 2 ] || { touch go; fail "the pair did not start: $(tail -3 run.out)"; }
  # check_image JSON [RECEIVES]: prints "RECEIVES_TAKEN BUFFERED" or fails.
  # RECEIVES: what the receiver must have taken (default: the sends the
  # sender's layer took completions of, every send being signaled then).
  check_image() {
    python3 - "$port" "$@" 2>&1 <<'PY'
import json, sys
port, doc = sys.argv[1], json.load(open(sys.argv[2]))
expect = int(sys.argv[3]) if len(sys.argv) > 3 else None
send = recv = None
for p in doc["processes"]:
    v = p.get("verbs")
    if not v:
        continue
    cqs = [o for o in v["objects"] if o["kind"] == "cq"]
    qps = [o for o in v["objects"] if o["kind"] == "qp"]
    if len(cqs) != 1 or len(qps) != 1:
        sys.exit("process %s: %d CQs, %d QPs (1 of each expected)" % (p["pid"], len(cqs), len(qps)))
    cq, qp = cqs[0], qps[0]
    if qp["sends_outstanding"] != 0:
        sys.exit("process %s: %d sends outstanding after the drain" % (p["pid"], qp["sends_outstanding"]))
    if cq["sends_taken"] and not cq["recvs_taken"]:
        send = cq
    elif cq["recvs_taken"] and not cq["sends_taken"]:
        recv = cq
    # Every TCP socket softrdma opened (its listeners, the connections it made
    # and those its progress thread accepted) is the backend's; the program's
    # own socket (on the test's port) is not.
    bfds = set(v["backend_fds"])
    socks = [f for f in p["fds"] if f["kind"].startswith("socket") and "socket_address" in f]
    listen = {f["socket_address"].rsplit(":", 1)[-1] for f in socks if f["kind"] == "socket-listen"}
    accepted = 0
    for f in socks:
        ports = {f["socket_address"].rsplit(":", 1)[-1], f.get("socket_peer", ":").rsplit(":", 1)[-1]}
        ours = port in ports
        if ours == (f["fd"] in bfds):
            sys.exit("process %s: fd %d (%s %s) is %s" % (p["pid"], f["fd"], f["kind"], f["socket_address"],
                     "listed as the backend's" if ours else "softrdma's but not listed as the backend's"))
        if f["kind"] == "socket-conn" and f["socket_address"].rsplit(":", 1)[-1] in listen:
            accepted += 1
    if not accepted:
        sys.exit("process %s: no accepted connection of softrdma's in the image" % p["pid"])
if not send or not recv:
    sys.exit("no sender and receiver CQ in the image")
want = send["sends_taken"] if expect is None else expect
if want != recv["recvs_taken"]:
    sys.exit("the receiver should have taken %d receives (the sender's %s sends), its layer took %d (%d buffered)"
             % (want, "completed" if expect is None else "posted", recv["recvs_taken"], recv["buffered"]))
print(recv["recvs_taken"], recv["buffered"])
PY
  }
  buffered=0
  # At least three captures; more (up to six) until the drain step has caught
  # some of the receiver's completions in its CQ, which depends on timing.
  for i in 1 2 3 4 5 6; do
    [ $i -gt 3 ] && [ $buffered -gt 0 ] && break
    sleep 0.3
    # The second one without a frozen copy (the job stands still until written).
    opt=; [ $i = 2 ] && opt=--no-fork
    img=$("$ibdbg" capture $opt --dir "$work/job" 2>cap$i.err) || { touch go; fail "capture $i failed: $(cat cap$i.err)"; }
    grep -q "client=" run.out && fail "the pair ended before capture $i"
    "$ibdbg" inspect --json "$img" > inspect$i.json || { touch go; fail "inspect $i failed"; }
    out=$(check_image inspect$i.json) || { touch go; fail "capture $i: $out"; }
    echo "capture $i: sends completed = receives taken = ${out% *}, ${out#* } of them buffered by the drain"
    buffered=$((buffered + ${out#* }))
  done
  # The slow consumer leaves completions in its CQ for 50 ms at a time: the
  # drain step, not the application, must have taken some of them.
  [ $buffered -gt 0 ] || { touch go; fail "no capture found the receiver's last completions in its CQ (the drain step was not exercised)"; }
  # Unsignaled sends after the last signaled one, most of them waiting for
  # the slow consumer's reposts: the capture must wait until all are done.
  touch pause
  wait_for run.out "^paused after" 30 || { touch go; fail "the sender did not pause"; }
  n=$(sed -n 's/^paused after \([0-9]*\) sends/\1/p' run.out)
  img=$("$ibdbg" capture --dir "$work/job" 2>cap4.err) || { touch go; fail "capture 4 failed: $(cat cap4.err)"; }
  "$ibdbg" inspect --json "$img" > inspect4.json || { touch go; fail "inspect 4 failed"; }
  out=$(check_image inspect4.json "$n") || { touch go; fail "capture 4 (after $n sends, the last 4096 unsignaled): $out"; }
  echo "capture 4: all $n sends (the last 4096 unsignaled) taken as receives, ${out#* } of them buffered by the drain"
  rm -f pause
  touch go
  wait_bounded $runner 120 || fail "the pair did not end after the captures"
  grep -q "client=0" run.out && grep -q "server=0" run.out && [ "$(grep -c '^PASS' run.out)" = 2 ] ||
    fail "the pair failed after the captures (order, count): $(tail -5 run.out)"
  ;;
capture_bw)
  for prog in ib_write_bw ib_send_bw; do
    port=$((port + 1))
    : > $prog.out
    ( timeout 200 "$srun" --mode roce --ip 127.0.0.1 -- "$ibdbg" run --dir "$work/$prog" -- sh -c \
        "stdbuf -oL $prog -x 1 -s 65536 -D 20 -p $port & for i in \$(seq 100); do ss -ltn | grep -q ':$port ' && break; sleep 0.1; done; stdbuf -oL $prog -x 1 -s 65536 -D 20 -p $port 127.0.0.1; echo client=\$?; wait \$!; echo server=\$?" \
        > $prog.out 2>&1; echo "rc=$?" >> $prog.out ) &
    runner=$!
    for _ in $(seq 600); do [ "$(grep -c "remote address" $prog.out)" = 2 ] && break; sleep 0.05; done
    [ "$(grep -c "remote address" $prog.out)" = 2 ] || fail "$prog did not start: $(tail -3 $prog.out)"
    for i in 1 2 3 4 5; do
      sleep 0.3
      img=$("$ibdbg" capture --dir "$work/$prog" 2>$prog.cap$i.err) || fail "$prog: capture $i refused: $(cat $prog.cap$i.err)"
      grep -q "client=" $prog.out && fail "$prog ended before capture $i was done"
      "$ibdbg" inspect "$img" | grep -q "^    qp .* RTS" || fail "$prog: capture $i has no QP in RTS"
    done
    wait_bounded $runner 120 || fail "$prog did not end after the captures"
    grep -q "client=0" $prog.out && grep -q "server=0" $prog.out && grep -q "^rc=0" $prog.out ||
      fail "$prog failed after the captures: $(tail -5 $prog.out)"
    echo "$prog: 5 captures, both sides ended well"
  done
  ;;
replay_rc) replay_pair rc 20000 ibv_rc_pingpong -g 1 -c -n 20000 ;;
replay_ud) replay_pair ud 20000 ibv_ud_pingpong -g 1 -c -n 20000 ;;
replay_srq) replay_pair srq 20000 ibv_srq_pingpong -g 1 -c -n 20000 ;;
replay_write) replay_pair write_bw 0 ib_write_bw -x 1 -n 300000 -s 4096 ;;
replay_read) replay_pair read_bw 0 ib_read_bw -x 1 -n 300000 -s 4096 ;;
replay_events) replay_pair events 20000 ibv_rc_pingpong -g 1 -c -e -n 20000 ;;
replay_atomic) replay_pair atomic_bw 0 ib_atomic_bw -x 1 -n 1000000 ;;
replay_refuse)
  # A replay onto a device of the other link layer refuses in one line
  # naming `ibdbg translate`; the recorded device given by name replays.
  replay_pair rc_roce 20000 ibv_rc_pingpong -g 1 -c -n 20000 --keep
  img=$(ls -d "$work"/rc_roce-job/images/ckpt-*)
  : > rc_roce.srv; : > rc_roce.cli; : > rc_roce.st
  # (The job's shell reports its children's status in rc_roce.st and ends well.)
  IBDBG_VERBS_DEVICE=softrdma:ib timeout 100 "$ibdbg" replay "$img" --dir "$work/refuse" > refuse.out 2>&1
  grep -q "client=70" rc_roce.st && grep -q "server=70" rc_roce.st || fail "the refused processes did not exit 70: $(cat rc_roce.st)"
  grep -h "ibdbg: replay: verbs: the image is for RoCE and device softrdma0 is InfiniBand: run \`ibdbg translate IMAGE -o OUT --fabric ib\` first" \
    rc_roce.srv rc_roce.cli > /dev/null || fail "the refusal: $(cat refuse.out rc_roce.srv rc_roce.cli | tail -5)"
  grep -q "iters in" rc_roce.srv rc_roce.cli && fail "a refused replay ran on"
  # The recorded fabric, named: the replay runs to its end.
  : > rc_roce.srv; : > rc_roce.cli; : > rc_roce.st
  IBDBG_VERBS_DEVICE=softrdma:roce timeout 200 "$ibdbg" replay "$img" --dir "$work/named" > named.out 2>&1 ||
    fail "the replay on softrdma:roce failed: $(tail -3 named.out)"
  grep -q "client=0" rc_roce.st && grep -q "server=0" rc_roce.st && grep -aq "^20000 iters in" rc_roce.cli ||
    fail "the replay on softrdma:roce did not finish well: $(cat rc_roce.st; tail -3 rc_roce.cli)"
  ;;
*) echo "unknown mode $mode"; exit 2 ;;
esac
echo PASS
