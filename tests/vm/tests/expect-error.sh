#!/bin/bash
# Host side: expect-error.sh PATTERN COMMAND ARGS...: COMMAND (an ibdbg-vm invocation) must fail
# quickly with a non-zero status other than the command's and one line on stderr matching PATTERN.
set -u
pattern=$1
shift
start=$(date +%s)
err=$("$@" 2>&1 >/dev/null)
rc=$?
elapsed=$(($(date +%s) - start))
echo "status $rc after ${elapsed}s; stderr:"
echo "$err"
[ "$rc" -ne 0 ] || { echo "FAIL: exit status 0"; exit 1; }
[ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] || { echo "FAIL: stderr is not one line"; exit 1; }
grep -Eq "$pattern" <<<"$err" || { echo "FAIL: stderr does not match /$pattern/"; exit 1; }
[ "$elapsed" -lt 30 ] || { echo "FAIL: took ${elapsed}s"; exit 1; }
echo "passed"
