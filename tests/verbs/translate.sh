#!/bin/bash
# ibdbg translate of a verbs image (issue 8), unprivileged, on softrdma.
#   translate.sh BUILD
# `ibdbg caps` under softrdma ib and roce; ibv_rc_pingpong captured under
# `ibdbg softrdma --mode ib` and `ibdbg run` composed in both orders (the
# record says infiniband, LIDs, no GRH); translate --fabric roce as a dry run
# (a diff, nothing written) and for real with the roce caps (inspect: fabric
# ethernet, GRH on the QPs, the provenance); replays on the other fabric are
# refused in one line that says to translate, before anything else; the
# translated image replays on softrdma roce and the pair finishes its check.
set -u
build=$1
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../e2e/lib.sh"
ibdbg=$build/bin/ibdbg
command -v ibv_rc_pingpong >/dev/null || { echo "SKIP: ibverbs-utils not installed"; exit 77; }
"$ibdbg" softrdma --help >/dev/null 2>&1 || { echo "SKIP: ibdbg built without softrdma"; exit 77; }
fail_name=verbs.translate
e2e_setup "verbs-translate" 0
cd "$work"
export SOFTRDMA_IP=127.0.0.1
port=$(( 25000 + ($$ * 7 + RANDOM) % 7000 ))

json() {  # json FILE PYTHON-EXPRESSION-ON-d: prints its value
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

# ---- ibdbg caps ----------------------------------------------------------------
"$ibdbg" softrdma --mode roce -- "$ibdbg" caps > caps-roce.json 2> caps-roce.err || fail "caps (roce) failed: $(cat caps-roce.err)"
"$ibdbg" softrdma --mode ib -- "$ibdbg" caps > caps-ib.json 2> caps-ib.err || fail "caps (ib) failed: $(cat caps-ib.err)"
[ "$(json caps-roce.json 'len(d["devices"])')" = 1 ] || fail "caps (roce) does not list one device: $(cat caps-roce.json)"
[ "$(json caps-roce.json 'd["devices"][0]["name"]')" = softrdma0 ] || fail "caps (roce): not softrdma0"
[ "$(json caps-roce.json 'd["devices"][0]["link_layer"]')" = ethernet ] || fail "caps (roce): link layer"
[ "$(json caps-roce.json '[g for g in d["devices"][0]["gids"] if g["index"] == 1][0]["gid"]')" = \
  0000:0000:0000:0000:0000:ffff:7f00:0001 ] || fail "caps (roce): GID 1 is not 127.0.0.1"
[ "$(json caps-roce.json '[g for g in d["devices"][0]["gids"] if g["index"] == 1][0]["type"]')" = "RoCE v2" ] ||
  fail "caps (roce): GID 1 is not RoCE v2"
# softrdma does not report max_inline_data: the probe finds its 1024.
[ "$(json caps-roce.json 'd["devices"][0]["max_inline_data"]')" = 1024 ] || fail "caps (roce): max_inline_data not probed"
for k in max_sge:32 max_qp_wr:16384 max_cqe:1048575 max_qp_rd_atom:128 max_qp_init_rd_atom:128 max_srq_wr:16384 \
         active_mtu:4096; do
  [ "$(json caps-roce.json "d['devices'][0]['${k%%:*}']")" = "${k#*:}" ] || fail "caps (roce): ${k%%:*} is not ${k#*:}"
done
[ "$(json caps-ib.json 'd["devices"][0]["link_layer"]')" = infiniband ] || fail "caps (ib): link layer"
[ "$(json caps-ib.json 'd["devices"][0]["lid"]')" = 1 ] || fail "caps (ib): LID of 127.0.0.1 is not 1"
[ "$(json caps-ib.json 'd["devices"][0]["gids"][0]["type"]')" = IB ] || fail "caps (ib): GID 0 is not of type IB"

# ---- a capture on InfiniBand, both orders ----------------------------------------
pingpong="stdbuf -oL ibv_rc_pingpong -m 2048 -c -n 30000 -p PORT > NAME.srv 2>&1 & sleep 0.5; stdbuf -oL ibv_rc_pingpong -m 2048 -c -n 30000 -p PORT 127.0.0.1 > NAME.cli 2>&1; wait"
capture_ib() {  # capture_ib NAME softrdma-first|run-first
  local name=$1 order=$2 cmd
  port=$((port + 1))
  cmd=${pingpong//PORT/$port}
  cmd=${cmd//NAME/$work/$name}
  if [ "$order" = softrdma-first ]; then
    ( timeout 280 "$ibdbg" softrdma --mode ib -- "$ibdbg" run --dir "$work/$name" -- sh -c "$cmd" > "$name.out" 2>&1 ) &
  else
    ( timeout 280 "$ibdbg" run --dir "$work/$name" -- "$ibdbg" softrdma --mode ib -- sh -c "$cmd" > "$name.out" 2>&1 ) &
  fi
  local runner=$!
  for _ in $(seq 600); do [ "$(cat "$name".srv "$name".cli 2>/dev/null | grep -c "remote address")" = 2 ] && break; sleep 0.05; done
  [ "$(cat "$name".srv "$name".cli 2>/dev/null | grep -c "remote address")" = 2 ] ||
    fail "$name: the pingpong did not start: $(tail -5 "$name.out" "$name".srv "$name".cli)"
  img=$("$ibdbg" capture --dir "$work/$name" --stop 2> "$name.cap.err") || fail "$name: capture failed: $(cat "$name.cap.err")"
  wait_bounded $runner 60 || fail "$name: the job did not end after capture --stop"
  "$ibdbg" inspect "$img" --verbs --json > "$name.verbs.json" || fail "$name: inspect --verbs --json failed"
  local lls
  lls=$(json "$name.verbs.json" '" ".join(sorted(set(p["verbs"]["link_layer"] for p in d["processes"] if p["verbs"])))')
  [ "$lls" = infiniband ] || fail "$name: the verbs record says link layer '$lls', not infiniband"
  [ "$(json "$name.verbs.json" 'len([o for p in d["processes"] if p["verbs"] for o in p["verbs"]["objects"] if o["kind"] == "qp" and o["type"] == "RC" and o["dlid"] == 1 and "sgid_index" not in o and o["path_mtu"] == 2048])')" = 2 ] ||
    fail "$name: inspect does not show two RC QPs to LID 1 without GRH, path MTU 2048"
  eval "img_$name=\$img"
}
capture_ib ib1 softrdma-first
capture_ib ib2 run-first
img=$img_ib1

# ---- translate -----------------------------------------------------------------
"$ibdbg" translate "$img" -o "$work/roce" --fabric roce --dry-run > dry.out 2> dry.err || fail "dry run failed: $(cat dry.err)"
[ -e "$work/roce" ] && fail "the dry run wrote an image"
grep -q "^pid [0-9]* verbs$" dry.out && grep -q "^    link_layer infiniband -> ethernet$" dry.out || fail "the dry run does not show the link layer: $(cat dry.out)"
[ "$(grep -c "^pid [0-9]* QP 0x[0-9a-f]*$" dry.out)" = 2 ] || fail "the dry run does not show two QPs: $(cat dry.out)"
for f in "is_global 0 -> 1" "sgid_index 0 -> 1" "hop_limit 0 -> 64" "path_mtu 2048 -> 1024"; do
  [ "$(grep -c "^    $f$" dry.out)" = 2 ] || fail "the dry run does not show '$f' for both QPs: $(cat dry.out)"
done
grep -q "UD" dry.err && fail "warnings for a job without UD QPs: $(cat dry.err)"

"$ibdbg" translate "$img" -o "$work/roce" --fabric roce --target-caps caps-roce.json --mtu 1024 > tr.out 2> tr.err ||
  fail "translate failed: $(cat tr.err)"
"$ibdbg" inspect "$work/roce" --verbs > roce.verbs.txt || fail "inspect --verbs of the translation failed"
[ "$(grep -c "^    fabric ethernet (translated" roce.verbs.txt)" = 2 ] || fail "inspect does not show fabric ethernet: $(cat roce.verbs.txt)"
[ "$(grep -Ec '^    qp .*  RC  RTS  dest_qpn 0x[0-9a-f]+  dlid 1 .* mtu 1024 .* grh sgid_index 1 hop_limit 64' roce.verbs.txt)" = 2 ] ||
  fail "inspect does not show GRH and MTU 1024 on both QPs: $(grep '^    qp' roce.verbs.txt)"
grep -q "memory (" roce.verbs.txt && fail "inspect --verbs shows more than the verbs state"
"$ibdbg" inspect "$work/roce" > roce.txt || fail "inspect of the translation failed"
grep -q "^  from $img (capture" roce.txt || fail "inspect does not show the parent image: $(grep -A3 provenance roce.txt)"
grep -q "options  fabric roce, mtu 1024, target_caps $work/caps-roce.json" roce.txt || fail "inspect does not show the options: $(grep -A3 provenance roce.txt)"
grep -q "(matches)" roce.txt || fail "the parent's checksum does not match"

# A target with smaller queues: refused before anything is written, one
# `ibdbg:` line per reason, each naming its object.
python3 - caps-roce.json > caps-small.json <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["devices"][0]["max_cqe"] = 100
d["devices"][0]["max_qp_wr"] = 100
print(json.dumps(d))
PY
"$ibdbg" translate "$img" -o "$work/small" --fabric roce --target-caps caps-small.json > small.out 2> small.err &&
  fail "a translation for a target with too small queues did not refuse"
[ -e "$work/small" ] && fail "a refused translation wrote an image"
[ "$(grep -Ec '^ibdbg: pid [0-9]+ CQ 0x[0-9a-f]+ uses cqe [0-9]+; the target \(softrdma0\) allows 100$' small.err)" = 2 ] ||
  fail "the refusal does not name both CQs: $(cat small.err)"
[ "$(grep -Ec '^ibdbg: pid [0-9]+ QP 0x[0-9a-f]+ uses max_recv_wr [0-9]+; the target \(softrdma0\) allows 100$' small.err)" = 2 ] ||
  fail "the refusal does not name both QPs: $(cat small.err)"
[ "$(grep -vEc '^ibdbg: pid [0-9]+ ' small.err)" = 0 ] || fail "the refusal has other lines: $(cat small.err)"

# ---- replays on the other fabric ----------------------------------------------------
check_refusal() {  # check_refusal IMAGE DEVICE FABRIC-TO-TRANSLATE-TO
  timeout 60 "$ibdbg" replay "$1" --device "$2" --dir "$work/r-$2" > refuse.out 2>&1 && fail "replay of $1 on $2 did not refuse"
  [ "$(grep -c . refuse.out)" = 1 ] || fail "the refusal on $2 is not one line: $(cat refuse.out)"
  grep -q "run \`ibdbg translate .* --fabric $3\`" refuse.out || fail "the refusal on $2 does not say to translate: $(cat refuse.out)"
  [ -e "$work/r-$2" ] && fail "the refused replay on $2 made a job directory"
  return 0
}
check_refusal "$img" softrdma:roce roce
check_refusal "$img_ib2" softrdma:roce roce
check_refusal "$work/roce" softrdma:ib ib
# The mission's path: captured on InfiniBand (softrdma ib: LIDs, no GRH),
# translated for RoCE, replayed on softrdma in its roce personality; the
# pingpong pair finishes there with its own data check (-c).
# (Each side writes a file of its own: two processes sharing one open file
# description get their own offsets back at a replay today.)
[ "$(cat ib1.srv ib1.cli | grep -c "^30000 iters in")" = 0 ] || fail "the captured pair had finished before the capture"
timeout 200 "$ibdbg" replay "$work/roce" --device softrdma:roce --dir "$work/r2" > r2.out 2>&1 ||
  fail "the translated image did not replay on softrdma:roce: $(tail -5 r2.out; tail -3 ib1.srv ib1.cli)"
grep -q "run \`ibdbg translate" r2.out && fail "the translated image was refused for its fabric: $(cat r2.out)"
grep -q "^30000 iters in" ib1.srv && grep -q "^30000 iters in" ib1.cli ||
  fail "the replayed pair did not both finish their data check on RoCE: $(tail -3 ib1.srv ib1.cli)"
timeout 60 "$ibdbg" replay "$img" --device softrdma:eth > bad.out 2>&1 && fail "--device softrdma:eth was accepted"
grep -q "softrdma:roce and softrdma:ib" bad.out || fail "a bad --device is not explained: $(cat bad.out)"
echo PASS
