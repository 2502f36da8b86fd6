#!/bin/bash
# translate --map-path carries an image to a machine where the program lives
# elsewhere: the original image no longer replays (clear error), the
# translated one does and finishes correctly.   translate_replay.sh BUILD_DIR
set -u
. "$(dirname "$0")/lib.sh"
build=$1
ibdbg=$build/bin/ibdbg
e2e_setup translate 0
fail_name=translate fail_tail=30 fail_logs=('*.out')

mkdir -p "$work/site-a"
cp "$build/bin/heat" "$work/site-a/heat"
( "$ibdbg" run --dir "$work/job" -- "$work/site-a/heat" 2 300 10000 2>&1 | cat > "$work/run.out" ) &
wait_for "$work/run.out" "step 50" 10
img=$("$ibdbg" capture --dir "$work/job" --stop) || fail "capture failed"
wait
mv "$work/site-a" "$work/site-b"
"$ibdbg" replay "$img" --dir "$work/j1" > "$work/orig.out" 2>&1 && fail "the untranslated image replayed although its program moved"
[ "$(grep -c . "$work/orig.out")" = 1 ] || fail "the error is not one line"
grep -q "site-a/heat" "$work/orig.out" || fail "the error does not name the missing file"
"$ibdbg" translate "$img" -o "$work/img-b" --map-path "$work/site-a=$work/site-b" --dry-run > "$work/dry.out" || fail "dry run failed"
[ -e "$work/img-b" ] && fail "dry run wrote an image"
grep -q "site-b/heat" "$work/dry.out" || fail "dry run does not show the rewrite"
"$ibdbg" translate "$img" -o "$work/img-b" --map-path "$work/site-a=$work/site-b" > "$work/tr.out" || fail "translate failed"
"$ibdbg" translate "$img" -o "$work/img-b" --map-path "$work/site-a=$work/site-b" > "$work/tr2.out" 2>&1 && fail "translate overwrote an existing image"
"$ibdbg" inspect "$work/img-b" > "$work/inspect.out" || fail "inspect of the translated image failed"
grep -q "$img" "$work/inspect.out" || fail "inspect does not show where the image came from"
"$ibdbg" replay "$work/img-b" --dir "$work/j2" > "$work/replay.out" 2>&1 || fail "replay of the translated image failed"
grep -q "checksum .* OK" "$work/replay.out" "$work/run.out" || fail "no correct result after replay"
echo "ok: translate --map-path and replay"
