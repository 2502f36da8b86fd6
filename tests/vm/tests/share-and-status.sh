#!/bin/bash
# Host side: one guest writes into a --share directory; the file is on the host afterwards.  The
# command's exit status, stdout, stderr, working directory and PATH come through.
set -u
vm=$1
dir=$(mktemp -d "$PWD/share.XXXXXX")
trap 'rm -rf "$dir"' EXIT
out=$("$vm" --share "$dir" -- bash -c '
	echo "written by $(hostname) in $PWD with PATH=$PATH" > "$1/result"
	echo to-stdout; echo to-stderr >&2; exit 3' bash "$dir" 2>"$dir.err")
rc=$?
err=$(cat "$dir.err"); rm -f "$dir.err"
echo "status $rc, stdout [$out], stderr [$err]"
fail() { echo "FAIL: $*"; exit 1; }
[ "$rc" -eq 3 ] || fail "exit status $rc, expected 3"
[ "$out" = to-stdout ] || fail "stdout"
grep -qx to-stderr <<<"$err" || fail "stderr"
[ -f "$dir/result" ] || fail "no $dir/result on the host"
cat "$dir/result"
[ "$(cat "$dir/result")" = "written by vm1 in $PWD with PATH=$PATH" ] || fail "content of result"
echo "passed"
