#!/bin/bash
# Incremental capture end to end (progs/incremental.c):
#   full capture -> ~1% of the pages changed -> `capture --incremental`
#   -> a full capture with --stop (the same state, used as a "changed parent")
#   -> inspect shows the chain; a changed, missing or damaged parent is
#      refused with one line naming it; translate writes a full image;
#   -> the incremental image replays (and, as root, --lazy) and the program
#      checks every byte.
# Then `ibdbg run --interval 1 --keep 2`: incremental captures after the
# first, older images removed, no kept image's chain broken.
#
#   incremental.sh BUILD_DIR [--as-user]
set -u
. "$(dirname "$0")/lib.sh"
build=$1
as_user=0
[ "${2:-}" = --as-user ] && as_user=1
ibdbg=$build/bin/ibdbg
exe=$build/tests/e2e/zdtm-incremental
e2e_setup incremental $as_user
fail_name=incremental fail_tail=30 fail_logs=('out.*' '*.err' 'job*/coordinator.log')
go=$work/go
I() { "${as[@]}" "$ibdbg" "$@"; }

( I run --dir "$work/job0" -- "$exe" "$go" 2>&1 | cat > "$work/out.0" ) &
runner=$!
wait_for "$work/out.0" READY 30 || fail "the program did not get ready"

# Nothing to build on yet: refused, one line.
if I capture --dir "$work/job0" --incremental > /dev/null 2> "$work/first.err"; then
  fail "an incremental capture with no earlier one succeeded"
fi
grep -q "no earlier capture" "$work/first.err" || fail "no clear refusal of an incremental capture without a parent"
[ "$(wc -l < "$work/first.err")" = 1 ] || fail "the refusal is not one line"

full=$(I capture --dir "$work/job0" 2> "$work/full.err") || fail "the full capture failed"
touch "$go.step"
chmod 666 "$go.step"
wait_for "$work/out.0" CHANGED 30 || fail "the program did not change its memory"
inc=$(I capture --dir "$work/job0" --incremental 2> "$work/inc.err") || fail "the incremental capture failed"
grep -q "full image" "$work/inc.err" && fail "the incremental capture fell back to a full image: $(cat "$work/inc.err")"
full2=$(I capture --dir "$work/job0" --stop 2> "$work/full2.err") || fail "the last capture failed"
wait_bounded $runner 30 || fail "the captured job did not stop"
[ -d "$full" ] && [ -d "$inc" ] && [ -d "$full2" ] || fail "images missing: $full $inc $full2"

# Much smaller than the full image: ~1% of 36 MiB changed.
full_kb=$(du -sk "$full" | cut -f1) inc_kb=$(du -sk "$inc" | cut -f1)
[ "$inc_kb" -lt $(( full_kb / 4 )) ] || fail "incremental image ${inc_kb} KiB, the full one ${full_kb} KiB"

"$ibdbg" inspect "$inc" > "$work/inspect.out" || fail "inspect of the incremental image failed"
grep -q "incremental: pages written since its parent ../$(basename "$full")/proc-" "$work/inspect.out" ||
  fail "inspect does not name the parent"
grep -q "chain of 2 images" "$work/inspect.out" || fail "inspect does not show the chain"
"$ibdbg" inspect --json "$inc" > "$work/inspect.json" || fail "inspect --json failed"
python3 - "$work/inspect.json" <<'EOF' || fail "inspect --json: wrong page counts of the chain"
import json, sys
d = json.load(open(sys.argv[1]))
inc = d["processes"][0]["incremental"]
here, parent = inc["chain"][0]["pages"], inc["chain"][1]["pages"]
# 60 new + 5 first writes in A, 512 of the new region, a heap page or so:
# under 1000 here; the 8000-odd others of A from the parent.
assert 560 < here < 1000, (here, parent)
assert parent > 7900, (here, parent)
EOF

pimg=$(ls "$full"/proc-*.img | head -1)
cp -p "$pimg" "$work/parent.keep"
refused() { # what -> replay must fail with one line matching $2
  local out
  if out=$(I replay "$inc" --dir "$work/job.bad" 2>&1); then fail "replay with a $1 parent succeeded"; fi
  echo "$out" > "$work/refusal-$1.err"
  echo "$out" | grep -q "$2" || fail "replay with a $1 parent: no clear refusal: $out"
  echo "$out" | grep -q "$(basename "$full")" || fail "replay with a $1 parent: the message does not name it: $out"
  [ "$(echo "$out" | wc -l)" = 1 ] || fail "replay with a $1 parent: more than one line: $out"
}
# Another valid image in the parent's place.
cp "$(ls "$full2"/proc-*.img | head -1)" "$pimg"
refused changed "has changed"
mv "$work/parent.keep" "$pimg.x"
rm -f "$pimg"
refused missing "is missing"
cp -p "$pimg.x" "$pimg"
# A damaged one: a byte in the middle flipped.
size=$(stat -c %s "$pimg")
printf '\x55' | dd of="$pimg" bs=1 seek=$(( size / 2 )) conv=notrunc status=none
cmp -s "$pimg" "$pimg.x" && fail "the parent was not damaged"
refused damaged "damaged\|corrupt\|checksum"
mv "$pimg.x" "$pimg"

# translate follows the chain: a full image, no parent needed.
I translate "$inc" -o "$work/translated" > /dev/null 2> "$work/translate.err" || fail "translate failed"
"$ibdbg" inspect "$work/translated" > "$work/inspect-tr.out" || fail "inspect of the translated image failed"
grep -q "incremental:" "$work/inspect-tr.out" && fail "the translated image still names a parent"

replay_ok() { # name [replay options]
  local n=$1
  shift
  rm -f "$go"
  ( I replay "$@" --dir "$work/job.$n" 2>&1 | cat > "$work/out.$n" ) &
  local r=$!
  sleep 0.5
  touch "$go"
  chmod 666 "$go"
  wait_bounded $r 60 || fail "the $n replay did not finish"
  wait_for "$work/out.$n" "PASS\|FAIL" 10 || fail "no verdict from the $n replay"
  grep -q "^PASS" "$work/out.$n" || fail "the $n replay reports failure"
}
replay_ok incremental "$inc"
replay_ok translated "$work/translated"
[ $as_user = 0 ] && replay_ok lazy "$inc" --lazy

# Periodic captures: incremental after the first, the newest 2 kept (and what
# they need): with a full one every 2, never more than 3 images.
rm -f "$go" "$go.step"
( I run --dir "$work/jobi" --interval 1 --keep 2 -- "$exe" "$go" 2>&1 | cat > "$work/out.interval" ) &
irunner=$!
wait_for "$work/out.interval" READY 30 || fail "the periodic job did not get ready"
for _ in $(seq 300); do
  [ "$(grep -c "captured (incremental)" "$work/jobi/coordinator.log" 2>/dev/null)" -ge 2 ] && break
  sleep 0.1
done
[ "$(grep -c "captured (incremental)" "$work/jobi/coordinator.log")" -ge 2 ] ||
  fail "fewer than 2 incremental periodic captures"
touch "$go.step" "$go"
chmod 666 "$go.step" "$go"
wait_bounded $irunner 30 || fail "the periodic job did not end"
n=$(ls -d "$work/jobi/images"/ckpt-* | wc -l)
[ "$n" -le 3 ] || fail "--keep 2 left $n images"
for d in "$work/jobi/images"/ckpt-*; do
  "$ibdbg" inspect "$d" > "$work/inspect-i.out" 2>&1 || fail "inspect of kept image $d failed"
  grep -q "BROKEN" "$work/inspect-i.out" && fail "kept image $d lost its parent"
done
echo "ok: incremental${as[*]:+ (unprivileged)}"
